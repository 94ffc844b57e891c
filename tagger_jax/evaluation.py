"""Clip-level prediction and per-tag ROC-AUC / PR-AUC, as in the authors' evaluation.

The protocol (docs/evaluation.md): every clip is cut into 16 chunks of 256 frames (the input
pipeline places them with the authors' formula), the model's 16 sigmoid outputs are averaged, and
ROC-AUC and PR-AUC (average precision) are computed per tag with scikit-learn, then averaged over
the tags. The same averaging serves full tracks cut into a variable number of sliding windows.

The pieces are pure functions so the trainer reuses them for validation: `make_predict_fn` and
`predict_clips` turn batches into clip probabilities, `tag_metrics` turns those into numbers, and
`write_report` / `format_table` present them. `evaluate_checkpoint` wires them to a saved model
and a dataset split for `evaluate.py` and `tagger-jax evaluate`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from tagger_jax import inference

MODES = ("chunks", "full")
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
METRICS_PNG = "metrics.png"
PREDICTIONS_NPZ = "predictions.npz"

PredictFn = Callable[[Any, Any], Any]


class EvaluationError(ValueError):
    """Evaluation cannot run as asked (mismatched tags, malformed batches, bad arguments)."""


class UndefinedMetricWarning(UserWarning):
    """Some tags have only one label value in the split; their metrics are undefined."""


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------

# The one jitted predict function (sigmoid outputs in inference mode), shared with tag, explain
# and embed.
make_predict_fn = inference.make_predict_fn


@dataclasses.dataclass
class _ClipSums:
    """Per-clip sums of window probabilities, window counts and labels (the mergeable state)."""

    clip_ids: np.ndarray  # (n,) int64, sorted, unique
    sums: np.ndarray  # (n, num_tags) float64
    counts: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n, num_tags)


def _host_rows(array: Any) -> np.ndarray:
    """This process's rows of a (possibly multi-host) array, as NumPy.

    A fully addressable array (one host, any sharding) converts directly. Otherwise the local
    shards are concatenated in row order, which are this process's own batch rows when the batch
    was assembled with `jax.make_array_from_process_local_data` over a batch-sharded mesh.
    """
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        shards = {}
        for shard in array.addressable_shards:
            start = (shard.index[0].start or 0) if shard.index else 0
            shards.setdefault(start, shard)
        return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)], axis=0)
    return np.asarray(array)


def _batch_rows(batch: Mapping[str, Any], probs: np.ndarray, num_chunks: int):
    """(window probs, window clip ids, label rows, label clip ids, per-clip layout?) of one batch.

    Two layouts are accepted. Chunk batches: `clip_index` has one entry per clip and x holds
    `num_chunks` consecutive windows per clip. Full-track batches: `clip_index` has one entry per
    window (a clip may span windows and batches). Padding has clip index -1 or mask False.
    """
    clip_index = np.asarray(batch["clip_index"]).astype(np.int64).reshape(-1)
    mask = np.asarray(batch.get("mask", np.ones_like(clip_index, bool)), bool).reshape(-1)
    labels = np.asarray(batch["y"])
    if mask.shape != clip_index.shape or labels.shape[0] != clip_index.shape[0]:
        raise EvaluationError(f"batch has clip_index {clip_index.shape}, mask {mask.shape} and y "
                              f"{labels.shape}: they must have the same leading size")
    if probs.ndim != 2:
        raise EvaluationError(f"the model returned shape {probs.shape}; expected (rows, tags)")
    valid = mask & (clip_index >= 0)
    rows, n = probs.shape[0], clip_index.shape[0]
    if num_chunks > 1 and rows == n * num_chunks:
        per_clip = True
        window_clip = np.repeat(clip_index, num_chunks)
        window_valid = np.repeat(valid, num_chunks)
    elif rows == n:
        per_clip = False
        window_clip, window_valid = clip_index, valid
    else:
        raise EvaluationError(f"batch has {rows} windows for {n} clip indices; expected one "
                              f"index per window or {num_chunks} windows per clip")
    return (probs[window_valid], window_clip[window_valid], labels[valid], clip_index[valid],
            per_clip)


def _clip_labels(ids: np.ndarray, label_clip: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One label row per id in `ids` (sorted, unique); every row given for a clip must agree."""
    label_ids, first = np.unique(label_clip, return_index=True)
    if not np.array_equal(label_ids, ids):
        odd = np.setxor1d(label_ids, ids)[:5]
        raise EvaluationError(f"clips {odd.tolist()} have predictions but no labels, or labels "
                              "but no predictions")
    clip_labels = labels[first]
    if not np.array_equal(clip_labels[np.searchsorted(ids, label_clip)], labels):
        raise EvaluationError("a clip comes with different label rows in different windows")
    return clip_labels


def _segment_sums(ids: np.ndarray, values: np.ndarray, num_tags: int):
    """(sorted unique ids, float64 sums of `values` rows per id, inverse index)."""
    unique, inverse = np.unique(ids, return_inverse=True)
    sums = np.zeros((len(unique), num_tags), np.float64)
    np.add.at(sums, inverse, values.astype(np.float64))
    return unique, sums, inverse


def _reduce(window_probs: np.ndarray, window_clip: np.ndarray, labels: np.ndarray,
            label_clip: np.ndarray, num_tags: int) -> _ClipSums:
    """Per-clip sums and window counts of one batch, with the clips' label rows."""
    ids, sums, inverse = _segment_sums(window_clip, window_probs, num_tags)
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.int64)
    return _ClipSums(ids, sums, counts, _clip_labels(ids, label_clip, labels))


def _merge(parts: Sequence[_ClipSums], num_tags: int) -> _ClipSums:
    """Combines partial sums (clips may span batches, in full-track mode)."""
    ids = np.concatenate([p.clip_ids for p in parts])
    unique, sums, inverse = _segment_sums(ids, np.concatenate([p.sums for p in parts]), num_tags)
    counts = np.zeros(len(unique), np.int64)
    np.add.at(counts, inverse, np.concatenate([p.counts for p in parts]))
    labels = _clip_labels(unique, ids, np.concatenate([p.labels for p in parts]))
    return _ClipSums(unique, sums, counts, labels)


def _allgather_sums(local: _ClipSums, num_tags: int) -> _ClipSums:
    """Merges every process's clip sums (each process read its own shard of the split)."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    sizes = multihost_utils.process_allgather(np.array([len(local.clip_ids)], np.int64))
    size = int(np.max(sizes))
    pad = size - len(local.clip_ids)

    def padded(a, fill):
        return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)])

    gathered = [multihost_utils.process_allgather(padded(a, fill)) for a, fill in
                ((local.clip_ids, -1), (local.sums, 0.0), (local.counts, 0),
                 (local.labels.astype(np.float32), 0.0))]
    parts = []
    for p, n in enumerate(np.asarray(sizes).reshape(-1)):
        ids, sums, counts, labels = (np.asarray(g[p])[:n] for g in gathered)
        parts.append(_ClipSums(ids, sums, counts, labels))
    return _merge(parts, num_tags)


def predict_clips(model, variables, batches: Iterable[Mapping[str, Any]], num_chunks: int = 16,
                  *, predict_fn: PredictFn | None = None,
                  put: Callable[[np.ndarray], Any] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs (clips, tags), labels (clips, tags), clip_index (clips,)) averaged over windows.

    Each clip's probability is the mean of the sigmoid outputs of its windows: its `num_chunks`
    evaluation chunks (the paper's protocol) or its sliding windows in full-track mode. Padding
    rows (clip index -1 or mask False) are dropped and clips come back sorted by clip index.

    Args:
      model: the Flax module (ignored when `predict_fn` is given).
      variables: {"params", "batch_stats"}, possibly replicated over a mesh.
      batches: dicts with "x", "y", "clip_index" and optionally "mask" (see `_batch_rows`).
      num_chunks: windows per clip in chunk batches.
      predict_fn: `fn(variables, x) -> probabilities`; defaults to `make_predict_fn(model)`.
        The trainer passes its own compiled function to avoid a second compilation.
      put: places a host batch on devices (e.g. shards it over a mesh); default: as given.
    With several processes each reads its own shard of the split; results are gathered so every
    process returns all clips.
    """
    predict = predict_fn or make_predict_fn(model)
    parts: list[_ClipSums] = []
    seen_chunk_clips: list[np.ndarray] = []
    num_tags = None
    pending = None

    def consume(out, batch):
        nonlocal num_tags
        probs = _host_rows(out)
        wp, wc, lab, lc, per_clip = _batch_rows(batch, probs, num_chunks)
        num_tags = probs.shape[1]
        if per_clip:
            seen_chunk_clips.append(lc)
        parts.append(_reduce(wp, wc, lab, lc, num_tags))

    for batch in batches:
        x = batch["x"]
        out = predict(variables, put(x) if put is not None else x)  # dispatched asynchronously
        if pending is not None:
            consume(*pending)
        pending = (out, batch)
    if pending is not None:
        consume(*pending)
    if num_tags is None:
        raise EvaluationError("no batches to evaluate (empty split?)")
    if seen_chunk_clips:
        ids = np.concatenate(seen_chunk_clips)
        if len(np.unique(ids)) != len(ids):
            raise EvaluationError("a clip index appears in more than one chunk batch row; each "
                                  f"clip must come once with its {num_chunks} chunks")
    total = _allgather_sums(_merge(parts, num_tags), num_tags)
    if not len(total.clip_ids):
        raise EvaluationError("every row of every batch was padding: nothing to evaluate")
    probs = total.sums / total.counts[:, None]
    return probs, total.labels, total.clip_ids


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

def tag_metrics(probs: np.ndarray, labels: np.ndarray, tag_names: Sequence[str]) -> dict:
    """Per-tag ROC-AUC and PR-AUC (scikit-learn) and their means over the tags.

    A tag whose labels are all 0 or all 1 in the split has no ROC-AUC (and no meaningful average
    precision: 0 with no positives, trivially 1 with no negatives). It is reported as None,
    left out of BOTH means (so they average the same tags) and listed in "excluded_tags", with an
    `UndefinedMetricWarning`. Returns a JSON-ready dict:
    {"num_clips", "num_tags", "roc_auc_mean", "pr_auc_mean", "num_excluded", "excluded_tags",
     "per_tag": [{"tag", "roc_auc", "pr_auc", "positives"}, ...]}.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    tag_names = [str(t) for t in tag_names]
    if probs.ndim != 2 or probs.shape != labels.shape:
        raise EvaluationError(f"probs {probs.shape} and labels {labels.shape} must both be "
                              "(clips, tags)")
    if probs.shape[1] != len(tag_names):
        raise EvaluationError(f"{probs.shape[1]} tag columns but {len(tag_names)} tag names")
    if probs.shape[0] == 0:
        raise EvaluationError("no clips to evaluate")
    if not np.all(np.isfinite(probs)):
        raise EvaluationError(f"{int(np.sum(~np.isfinite(probs)))} predictions are NaN or "
                              "infinite (diverged model?)")
    if not np.all((labels == 0) | (labels == 1)):
        raise EvaluationError("labels must be 0 or 1")
    labels = labels.astype(np.int64)
    positives = labels.sum(axis=0)
    per_tag, excluded = [], []
    for k, name in enumerate(tag_names):
        defined = 0 < positives[k] < len(labels)
        roc = float(roc_auc_score(labels[:, k], probs[:, k])) if defined else None
        pr = float(average_precision_score(labels[:, k], probs[:, k])) if defined else None
        if not defined:
            excluded.append(name)
        per_tag.append({"tag": name, "roc_auc": roc, "pr_auc": pr, "positives": int(positives[k])})
    if excluded:
        shown = ", ".join(excluded[:10]) + (", ..." if len(excluded) > 10 else "")
        warnings.warn(f"{len(excluded)} of {len(tag_names)} tags have only one label value in "
                      f"this split ({shown}); their ROC-AUC and PR-AUC are undefined and left "
                      "out of the means",
                      UndefinedMetricWarning, stacklevel=2)
    rocs = [t["roc_auc"] for t in per_tag if t["roc_auc"] is not None]
    prs = [t["pr_auc"] for t in per_tag if t["pr_auc"] is not None]
    return {
        "num_clips": int(len(labels)),
        "num_tags": len(tag_names),
        "roc_auc_mean": float(np.mean(rocs)) if rocs else None,
        "pr_auc_mean": float(np.mean(prs)) if prs else None,
        "num_excluded": len(excluded),
        "excluded_tags": excluded,
        "per_tag": per_tag,
    }


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------

def _fmt(value: float | None, width: int = 7) -> str:
    return f"{value:{width}.4f}" if value is not None else f"{'n/a':>{width}}"


def format_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table: tag, ROC-AUC, PR-AUC, positives; then the means."""
    rows = metrics["per_tag"]
    width = max([len("tag")] + [len(r["tag"]) for r in rows])
    lines = [f"{'tag':<{width}}  ROC-AUC   PR-AUC  positives",
             "-" * (width + 29)]
    for r in rows:
        lines.append(f"{r['tag']:<{width}}  {_fmt(r['roc_auc'])}  {_fmt(r['pr_auc'])}  "
                     f"{r['positives']:9d}")
    lines.append("-" * (width + 29))
    lines.append(f"{'mean':<{width}}  {_fmt(metrics['roc_auc_mean'])}  "
                 f"{_fmt(metrics['pr_auc_mean'])}  {metrics['num_clips']:6d} clips")
    if metrics["num_excluded"]:
        lines.append(f"({metrics['num_excluded']} tag(s) with a single label value excluded from "
                     f"the means: {', '.join(metrics['excluded_tags'])})")
    return "\n".join(lines)


def plot_metrics(metrics: Mapping[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Horizontal bars of both metrics per tag, best ROC-AUC first, with the means as lines.

    Uses a bare Agg `Figure` rather than pyplot, so no global backend or figure state is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(metrics["per_tag"],
                  key=lambda r: (r["roc_auc"] is None, -(r["roc_auc"] or 0.0)))
    n = len(rows)
    fig = Figure(figsize=(8.0, 1.8 + 0.26 * n), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(n)
    roc = [r["roc_auc"] if r["roc_auc"] is not None else 0.0 for r in rows]
    pr = [r["pr_auc"] if r["pr_auc"] is not None else 0.0 for r in rows]
    ax.barh(y - 0.2, roc, height=0.4, color="tab:blue", label="ROC-AUC")
    ax.barh(y + 0.2, pr, height=0.4, color="tab:orange", label="PR-AUC")
    for i, r in enumerate(rows):
        if r["roc_auc"] is None:
            ax.text(0.01, i, "undefined (one label value)", va="center", fontsize=7)
    for value, color, name in ((metrics["roc_auc_mean"], "tab:blue", "ROC-AUC"),
                               (metrics["pr_auc_mean"], "tab:orange", "PR-AUC")):
        if value is not None:
            ax.axvline(value, color=color, linestyle="--", linewidth=1,
                       label=f"mean {name} {value:.3f}")
    ax.set_yticks(y, [f"{r['tag']} ({r['positives']})" for r in rows], fontsize=8,
                  parse_math=False)  # tag names are user text: a `$` is not math
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("score (tag label shows its positive clips)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"Per-tag metrics ({metrics['num_clips']} clips)", fontsize=10,
                 parse_math=False)
    fig.legend(loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_report(metrics: Mapping[str, Any], out_dir: str | os.PathLike, title: str = "",
                 extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Writes metrics.json (with `extra` run facts), metrics.csv (a row per tag) and metrics.png."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / METRICS_JSON, "csv": out / METRICS_CSV, "png": out / METRICS_PNG}
    payload = dict(extra or {})
    payload.update(metrics)
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=False))
    tmp.replace(paths["json"])
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag", "roc_auc", "pr_auc", "positives"])
        for r in metrics["per_tag"]:
            writer.writerow([r["tag"], "" if r["roc_auc"] is None else repr(r["roc_auc"]),
                             "" if r["pr_auc"] is None else repr(r["pr_auc"]), r["positives"]])
    plot_metrics(metrics, paths["png"], title)
    return paths


# --------------------------------------------------------------------------------------------
# A saved model on a dataset split
# --------------------------------------------------------------------------------------------

def check_tags(model_tags: Sequence[str], data_tags: Sequence[str], model_dir: Any,
               dataset: str) -> None:
    """Refuses to score a model whose output columns do not name the dataset's tags in order."""
    model_tags, data_tags = [str(t) for t in model_tags], [str(t) for t in data_tags]
    if model_tags == data_tags:
        return
    if sorted(model_tags) == sorted(data_tags):
        first = next(i for i, (a, b) in enumerate(zip(model_tags, data_tags)) if a != b)
        detail = (f"the same {len(model_tags)} tags in a different order (first difference at "
                  f"position {first}: {model_tags[first]!r} vs {data_tags[first]!r})")
    else:
        only_model = [t for t in model_tags if t not in set(data_tags)][:5]
        only_data = [t for t in data_tags if t not in set(model_tags)][:5]
        detail = (f"{len(model_tags)} model tags vs {len(data_tags)} dataset tags; only in the "
                  f"model: {only_model}; only in the dataset: {only_data}")
    raise EvaluationError(f"{model_dir}: the model's tags do not match dataset {dataset!r}: "
                          f"{detail}. Evaluate on the dataset the model was trained for.")


FEATURE_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "log_scale")


def _warn_on_feature_mismatch(datasets, dataset: str, data_dir: Any, builder_config: Any,
                              model_features: Mapping[str, Any]) -> None:
    """Warns if the dataset's stored mel settings differ from those the model was trained on.

    Only a warning: the numbers are still well defined, but such a model sees inputs from another
    distribution (e.g. power_to_db against the authors' amplitude_to_db doubles every value).
    """
    try:
        builder = datasets.get_builder(dataset, data_dir, builder_config)
        stored = dict((builder.info.metadata or {}).get("features", {}))
    except (ValueError, FileNotFoundError, KeyError, AttributeError, TypeError):
        return  # no metadata to compare (e.g. a source that is not a built TFDS dataset)
    model_features = dict(model_features)
    differ = [f"{k}: dataset {stored[k]!r}, model {model_features[k]!r}" for k in FEATURE_FIELDS
              if k in stored and k in model_features and stored[k] != model_features[k]]
    if differ:
        warnings.warn(f"{dataset}: the dataset's features differ from the model's config "
                      f"({'; '.join(differ)}); the metrics will not be representative",
                      UserWarning, stacklevel=3)


def evaluate_checkpoint(path: str | os.PathLike, *, dataset: str | None = None,
                        split: str | None = None, data_dir: str | None = None,
                        builder_config: Any = None, mode: str = "chunks",
                        out_dir: str | os.PathLike | None = None,
                        batch_size: int | None = None, num_chunks: int | None = None,
                        hop_s: float | None = None, print_fn: Callable[[str], None] | None = print,
                        ) -> dict:
    """Loads a model, predicts a dataset split, writes the report; returns the metrics dict.

    `path` is a model directory or a training workdir with an exported best model. Dataset,
    data directory, split and batch size default to the model's stored config (the test split).
    `builder_config` is a TFDS config name or a `tfds.core.BuilderConfig`. `hop_s`: seconds
    between full-track windows (mode "full"; default one window).
    """
    from tqdm import tqdm

    from tagger_jax import audio, checkpoint
    from tagger_jax.models import geometry

    if mode not in MODES:
        raise EvaluationError(f"mode must be one of {MODES}, got {mode!r}")
    loaded = checkpoint.load_model(path)  # checkpoint errors first, before the data stack loads
    from tagger_jax import datasets, input_pipeline
    cfg = loaded.config
    dataset = dataset or cfg.data.name
    split = split or cfg.data.test_split
    data_dir = data_dir or cfg.data.data_dir
    if builder_config is None and dataset == cfg.data.name:
        builder_config = cfg.data.builder_config or None
    batch_size = int(batch_size or cfg.train.eval_batch_size)
    num_chunks = int(num_chunks or cfg.features.eval_chunks)
    chunk_frames = int(cfg.features.chunk_frames)
    if batch_size <= 0 or num_chunks <= 0:
        raise EvaluationError(f"batch size and chunks must be positive, got {batch_size} and "
                              f"{num_chunks}")
    try:
        if dataset in datasets.SELF_CONTAINED:  # e.g. synthetic_tags: built on first use
            datasets.ensure_built(dataset, data_dir, builder_config)
        source, data_tags = datasets.load_split(dataset, split, data_dir,
                                                builder_config=builder_config)
    except (FileNotFoundError, ValueError) as e:  # not built, unknown name or split
        raise EvaluationError(f"cannot open {dataset}/{split} in {data_dir}: {e}") from e
    check_tags(loaded.tags, data_tags, loaded.directory, dataset)
    _warn_on_feature_mismatch(datasets, dataset, data_dir, builder_config, cfg.features)

    features = audio.features_from_config(cfg.features)
    geom = geometry(cfg.model, features.sample_rate, features.hop_length, chunk_frames)
    input_kind = geom.architecture.dataset_feature
    hop = inference.WindowPlan(hop_s=hop_s).hop_steps(geom) if hop_s is not None else None
    process = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                   input_kind=input_kind)
    if mode == "chunks":
        batches = input_pipeline.eval_batches(source, clips_per_batch=batch_size,
                                              num_chunks=num_chunks, chunk_frames=chunk_frames,
                                              **process)
        total = input_pipeline.eval_num_batches(len(source), batch_size,
                                                process["process_count"])
    else:
        hop_key = "hop_frames" if input_kind == "mel" else "hop_samples"
        batches = input_pipeline.full_track_batches(
            source, windows_per_batch=batch_size * num_chunks, chunk_frames=chunk_frames,
            **{hop_key: hop}, **process)
        total = None
    batches = tqdm(batches, total=total, unit="batch",
                   desc=f"evaluate {dataset}/{split} ({mode})",
                   disable=jax.process_index() != 0)
    probs, labels, clip_index = predict_clips(loaded.model, loaded.variables, batches, num_chunks)
    metrics = tag_metrics(probs, labels, loaded.tags)

    if out_dir is None:
        out_dir = Path(path).expanduser() / "evaluation" / f"{dataset}_{split}_{mode}"
    extra = {"model_dir": str(loaded.directory), "dataset": dataset,
             "builder_config": getattr(builder_config, "name", builder_config), "split": split,
             "data_dir": str(data_dir), "mode": mode,
             "num_chunks": num_chunks if mode == "chunks" else None,
             "hop_s": hop_s if mode == "full" else None,
             "hop": hop if mode == "full" else None, "chunk_frames": chunk_frames,
             "out_dir": str(Path(out_dir).expanduser())}
    if jax.process_index() == 0:
        paths = write_report(metrics, out_dir, extra=extra,
                             title=f"{dataset}/{split} ({mode}), {metrics['num_clips']} clips")
        np.savez_compressed(Path(out_dir).expanduser() / PREDICTIONS_NPZ, probs=probs,
                            labels=labels, clip_index=clip_index,
                            tags=np.asarray(loaded.tags))
        if print_fn is not None:
            print_fn(format_table(metrics))
            print_fn(f"ROC-AUC {_fmt(metrics['roc_auc_mean'], 0)}  PR-AUC "
                     f"{_fmt(metrics['pr_auc_mean'], 0)}  ({metrics['num_clips']} clips; wrote "
                     f"{', '.join(str(p) for p in paths.values())})")
    return {**extra, **metrics}

