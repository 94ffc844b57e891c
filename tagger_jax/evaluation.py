"""Clip-level prediction and per-tag ROC-AUC / PR-AUC, as in the authors' evaluation.

The protocol (docs/evaluation.md): every clip is cut into 16 chunks of the model's length (256
frames for the paper's models) at the authors' starts (`inference.PAPER` windows), the model's
16 sigmoid outputs are averaged (`inference.track_probabilities`), and ROC-AUC and PR-AUC
(average precision) are computed per tag with scikit-learn, then averaged over the tags. The
same averaging serves full tracks covered by sliding windows (`inference.COVER`).

The trainer's validation reuses the pieces: `predict_split` runs a split's records through the
one inference path (`tagger_jax.inference`: the records are inputs like files, their windows
packed into fixed batches for the one jitted predict function), `tag_metrics` turns clip
probabilities into numbers, and `write_report` / `format_table` present them.
`evaluate_checkpoint` wires them to a saved model and a dataset split for `evaluate.py` and
`tagger-jax evaluate`.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

import jax
import numpy as np

from tagger_jax import audio, errors, inference, outputs
from tagger_jax import tags as tags_lib
from tagger_jax.progress import bar_interval

MODES = ("chunks", "full")
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
METRICS_PNG = "metrics.png"
PREDICTIONS_NPZ = "predictions.npz"


class EvaluationError(ValueError, errors.ToolError):
    """Evaluation cannot run as asked (mismatched tags, unreadable records, bad arguments):
    exit status `errors.USAGE`, or `errors.DATA` for a dataset that is not built or lacks the
    split (set on the instance)."""

    exit_status = errors.USAGE


class UndefinedMetricWarning(UserWarning):
    """Some tags have only one label value in the split; their metrics are undefined."""


# --------------------------------------------------------------------------------------------
# Prediction: the dataset split through the one inference path
# --------------------------------------------------------------------------------------------

def predict_split(items: Sequence[inference.Input], plan: inference.WindowPlan,
                  geom: Any, packer: inference.Packer, num_tags: int, *, workers: int = 2,
                  lockstep_window: np.ndarray | None = None,
                  on_input: Callable[[], None] | None = None, num_labels: int | None = None,
                  padded: list[str] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs (clips, tags) float64, labels (clips, tags), record index (clips,)) of a split.

    `items` are this process's share of the split's records (`inference.source_inputs`, then
    `inference.process_share`); they run through `inference.run_inputs` (windows placed by
    `plan`: PAPER for the paper's protocol, COVER for full tracks; packed into `packer`'s fixed
    batches) and each clip's probability is `inference.track_probabilities` of its windows, kept
    in float64. With several processes the shares are gathered, so every process returns all
    clips, sorted by record index. `lockstep_window`: see `inference.run_inputs` (the trainer's
    mesh over hosts). `on_input` is called as each input finishes (a progress bar).
    `num_labels`: label columns of a record (default `num_tags`; a dataset may list fewer).
    `padded`, if given, receives the names of this process's clips shorter than one window
    (repeated to fill it, as `tag` does). Raises EvaluationError if a record cannot be read or
    has no labels (every process raises).
    """
    index: list[int] = []
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    errors: list[str] = []

    def done(p: inference.Prepared, out: dict) -> None:
        if p.labels is None:
            errors.append(f"{p.item.name}: record has no 'tags' labels")
        else:
            index.append(int(p.item.meta["index"]))
            probs.append(inference.track_probabilities(out["probabilities"], np.float64))
            labels.append(np.asarray(p.labels, np.float32))
        if padded is not None and p.padded:
            padded.append(p.item.name)
        if on_input is not None:
            on_input()

    def failed(item: inference.Input, error: BaseException) -> None:
        errors.append(str(error) if str(error).startswith(item.name) else f"{item.name}: {error}")
        if on_input is not None:
            on_input()

    inference.run_inputs(items, plan, geom, packer, done, failed, workers,
                         lockstep_window=lockstep_window)
    local = (np.asarray(index, np.int64),
             np.asarray(probs, np.float64).reshape(-1, num_tags),
             np.asarray(labels, np.float32).reshape(-1, num_labels or num_tags))
    ids, p, y, num_errors = _allgather(local, len(errors))
    if num_errors:
        shown = "; ".join(errors[:3]) if errors else "(on another process)"
        raise EvaluationError(f"{num_errors} record(s) of the split could not be evaluated: "
                              f"{shown}")
    if not len(ids):
        raise EvaluationError("no clips to evaluate (empty split?)")
    if len(np.unique(ids)) != len(ids):
        raise EvaluationError("a record was evaluated by more than one process")
    order = np.argsort(ids, kind="stable")
    return p[order], y[order], ids[order]


def _allgather(local: tuple[np.ndarray, np.ndarray, np.ndarray], num_errors: int):
    """Every process's (ids, probs, labels) concatenated, and the total error count."""
    if jax.process_count() == 1:
        return (*local, num_errors)
    from jax.experimental import multihost_utils

    sizes = np.asarray(multihost_utils.process_allgather(
        np.array([len(local[0]), num_errors], np.int64))).reshape(-1, 2)
    size = int(sizes[:, 0].max())

    def padded(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.zeros((size - len(a),) + a.shape[1:], a.dtype)])

    gathered = [np.asarray(multihost_utils.process_allgather(padded(a))) for a in local]
    parts = [[g[p][:n] for g in gathered] for p, n in enumerate(sizes[:, 0])]
    return (*(np.concatenate([part[k] for part in parts]) for k in range(3)),
            int(sizes[:, 1].sum()))


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
    """A plain-text table: tag, ROC-AUC, PR-AUC, positives; then the means, and the excluded
    tags by reason (tags not evaluated, e.g. not in the dataset, have no row: one line names
    them; tags with a single label value keep their n/a row)."""
    reasons = metrics.get("excluded_reasons", {})
    rows = [r for r in metrics["per_tag"] if r["tag"] not in reasons]  # named once, below
    width = max([len("tag")] + [len(r["tag"]) for r in rows])
    lines = [f"{'tag':<{width}}  ROC-AUC   PR-AUC  positives",
             "-" * (width + 29)]
    for r in rows:
        positives = "n/a" if r["positives"] is None else r["positives"]
        lines.append(f"{r['tag']:<{width}}  {_fmt(r['roc_auc'])}  {_fmt(r['pr_auc'])}  "
                     f"{positives:>9}")
    lines.append("-" * (width + 29))
    lines.append(f"{'mean':<{width}}  {_fmt(metrics['roc_auc_mean'])}  "
                 f"{_fmt(metrics['pr_auc_mean'])}  {metrics['num_clips']:6d} clips")
    single = [t for t in metrics["excluded_tags"] if t not in reasons]
    if single:
        lines.append(f"({len(single)} tag(s) with a single label value excluded from the means: "
                     f"{tags_lib.listed(single)})")
    by_reason: dict[str, list[str]] = {}
    for t, why in reasons.items():
        by_reason.setdefault(why, []).append(t)
    for why, tags in by_reason.items():
        lines.append(f"({len(tags)} tag(s) not evaluated, {why}: {tags_lib.listed(tags)})")
    return "\n".join(lines)


def plot_metrics(metrics: Mapping[str, Any], path: str | os.PathLike | IO[bytes],
                 title: str = "") -> Path | IO[bytes]:
    """Horizontal bars of both metrics per tag, best ROC-AUC first, with the means as lines, as a
    PNG at `path` or into a binary file object (`write_report` writes it atomically from one).

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
            why = metrics.get("excluded_reasons", {}).get(r["tag"], "undefined (one label value)")
            ax.text(0.01, i, why, va="center", fontsize=7)
    for value, color, name in ((metrics["roc_auc_mean"], "tab:blue", "ROC-AUC"),
                               (metrics["pr_auc_mean"], "tab:orange", "PR-AUC")):
        if value is not None:
            ax.axvline(value, color=color, linestyle="--", linewidth=1,
                       label=f"mean {name} {value:.3f}")
    ax.set_yticks(y, [f"{r['tag']} ({'n/a' if r['positives'] is None else r['positives']})"
                      for r in rows], fontsize=8,
                  parse_math=False)  # tag names are user text: a `$` is not math
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("score (tag label shows its positive clips)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"Per-tag metrics ({metrics['num_clips']} clips)", fontsize=10,
                 parse_math=False)
    fig.legend(loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
    fig.savefig(path, dpi=110, format="png")
    return path


def write_report(metrics: Mapping[str, Any], out_dir: str | os.PathLike, title: str = "",
                 extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Writes metrics.json (with `extra` run facts), metrics.csv (a row per tag) and metrics.png."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / METRICS_JSON, "csv": out / METRICS_CSV, "png": out / METRICS_PNG}
    payload = dict(extra or {})
    payload.update(metrics)
    # Each file whole or not at all, and a failed write (a full disk) names it
    # (`outputs.atomic_write_*`; a trial's full disk got a bare errno line and temporary files).
    outputs.atomic_write_text(paths["json"], json.dumps(payload, indent=2, allow_nan=False))
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["tag", "roc_auc", "pr_auc", "positives"])
    for r in metrics["per_tag"]:
        writer.writerow([r["tag"], "" if r["roc_auc"] is None else repr(r["roc_auc"]),
                         "" if r["pr_auc"] is None else repr(r["pr_auc"]),
                         "" if r["positives"] is None else r["positives"]])
    outputs.atomic_write_text(paths["csv"], table.getvalue())
    figure = io.BytesIO()
    plot_metrics(metrics, figure, title)
    outputs.atomic_write_bytes(paths["png"], figure.getvalue())
    return paths


# --------------------------------------------------------------------------------------------
# A saved model on a dataset split
# --------------------------------------------------------------------------------------------

NOT_IN_DATASET = "not in the dataset"  # why a model tag is not evaluated (`with_unevaluated`)


def _some(names: Sequence[str], most: int = 5) -> str:
    """The first `most` of `names` in brackets, saying how many more there are."""
    shown = ", ".join(repr(t) for t in names[:most])
    more = f", ... ({len(names) - most} more)" if len(names) > most else ""
    return f"[{shown}{more}]"


def check_tags(model_tags: Sequence[str], data_tags: Sequence[str], model_dir: Any,
               dataset: str, common_tags: bool = False) -> np.ndarray | None:
    """The dataset's label columns in the model's tag order: None when both lists are equal,
    else int indices `order` (one per model tag) with data_tags[order[k]] == model_tags[k], and
    order[k] == -1 for a model tag the dataset does not list (it cannot be evaluated: see
    `with_unevaluated`). The dataset may list the tags in another order (e.g. an `audio_folder`
    CSV's `tags` column, ordered by frequency) and may lack some of the model's tags.
    Raises EvaluationError naming them when the dataset lists tags the model does not know
    (their labels would be scored against nothing: likely the wrong model or dataset) unless
    `common_tags` (then those label columns are not read), or when the two share no tag."""
    model_tags, data_tags = [str(t) for t in model_tags], [str(t) for t in data_tags]
    if model_tags == data_tags:
        return None
    if len(set(model_tags)) != len(model_tags) or len(set(data_tags)) != len(data_tags):
        raise EvaluationError(f"{model_dir} or dataset {dataset!r} lists a tag twice")
    only_data = [t for t in data_tags if t not in set(model_tags)]
    common = [t for t in model_tags if t in set(data_tags)]
    if (only_data and not common_tags) or not common:
        only_model = [t for t in model_tags if t not in set(data_tags)]
        detail = (f"{len(model_tags)} model tags vs {len(data_tags)} dataset tags; only in the "
                  f"dataset: {_some(only_data)}; only in the model: {_some(only_model)}")
        folded = {t.lower(): t for t in model_tags}
        near = [f"{t!r} (the model has {folded[t.lower()]!r})" for t in only_data
                if t.lower() in folded]
        if near:
            detail += f"; differing only in case: {', '.join(near[:5])}"
        hint = ("Evaluate on a dataset labelled with (a subset of) the model's tags, or "
                "score the tags both list (evaluate --common-tags)") if common else (
                "Evaluate on a dataset labelled with (a subset of) the model's tags")
        raise EvaluationError(f"{model_dir}: the model's tags do not match dataset {dataset!r}: "
                              f"{detail}. {hint}.")
    return np.asarray([data_tags.index(t) if t in set(data_tags) else -1 for t in model_tags])


def with_unevaluated(metrics: Mapping[str, Any], tag_names: Sequence[str],
                     reasons: Mapping[str, str]) -> dict:
    """`tag_metrics` of some of `tag_names`, completed to all of them in that order: each tag of
    `reasons` ({tag: why}, e.g. `NOT_IN_DATASET`) gets a row with no numbers (None, shown as
    n/a), is added to "excluded_tags" and "num_excluded" and keeps its reason in
    "excluded_reasons". The means are unchanged (they average the evaluated tags)."""
    rows = {r["tag"]: r for r in metrics["per_tag"]}
    per_tag = [rows.get(t) or {"tag": t, "roc_auc": None, "pr_auc": None, "positives": None,
                               "reason": reasons[t]} for t in tag_names]
    excluded = [t for t in tag_names if t in set(metrics["excluded_tags"]) or t in reasons]
    return {**metrics, "num_tags": len(tag_names), "per_tag": per_tag,
            "excluded_tags": excluded, "num_excluded": len(excluded),
            "excluded_reasons": {t: reasons[t] for t in tag_names if t in reasons}}


def feature_mismatches(stored: Mapping[str, Any], model_features: Any) -> list[str]:
    """The log-mel settings on which a dataset build and a model disagree, one line each.

    `stored` is a build's metadata "features" (`TaggingBuilder` writes
    `FeatureParams.mel_settings()`; builds made before that also list chunk_frames and
    eval_chunks, which are ignored: they are a model's, not the records'). `model_features` is
    the model's `config.features` (ConfigDict, dict or FeatureParams; fields it lacks take the
    defaults, as everywhere the model is run). Only `audio.FeatureParams.MEL_FIELDS` are
    compared, and a field the build does not record is skipped: its value is unknown, so a
    difference cannot be shown. Returns e.g. ["stft_pad_mode: dataset 'reflect', model
    'constant'"]; empty when they agree.
    """
    model_mel = audio.features_from_config(model_features).mel_settings()
    return [f"{k}: dataset {stored[k]!r}, model {model_mel[k]!r}"
            for k in audio.FeatureParams.MEL_FIELDS if k in stored and stored[k] != model_mel[k]]


def _warn_on_feature_mismatch(datasets, dataset: str, data_dir: Any, builder_config: Any,
                              model_features: Any) -> None:
    """Warns if the dataset's stored mel settings differ from those the model was trained on.

    Only a warning: the numbers are still well defined, but such a model sees inputs from another
    distribution (e.g. power_to_db against the authors' amplitude_to_db doubles every value).
    """
    try:
        builder = datasets.get_builder(dataset, data_dir, builder_config)
        stored = dict((builder.info.metadata or {}).get("features", {}))
    except (ValueError, FileNotFoundError, KeyError, AttributeError, TypeError):
        return  # no metadata to compare (e.g. a source that is not a built TFDS dataset)
    differ = feature_mismatches(stored, model_features)
    if differ:
        warnings.warn(f"{dataset}: the dataset's features differ from the model's config "
                      f"({'; '.join(differ)}); the metrics will not be representative",
                      UserWarning, stacklevel=3)


def untrained_tags(datasets, dataset: str, data_dir: Any, builder_config: Any,
                   model_tags: Sequence[str]) -> list[str]:
    """The model's tags that the dataset build records as having no clip in its train split
    (metadata "tags_without_train_clips", an audio_folder CSV's tags used only by held-out
    rows): a model trained on that build never learnt them. [] when there is no such record."""
    try:
        return datasets.untrained_tags(datasets.get_builder(dataset, data_dir, builder_config),
                                       model_tags)
    except (ValueError, FileNotFoundError, KeyError, AttributeError, TypeError):
        return []


def trained_on(config: Any, dataset: str, builder_config: Any) -> bool:
    """Whether a model config's training data (`config.data`: name, builder_config) is the build
    `dataset` / `builder_config` (a name, a `tfds.core.BuilderConfig` or None: the default)."""
    asked = getattr(builder_config, "name", builder_config) or None
    return dataset == str(config.data.name) and asked == (
        config.data.get("builder_config") or None)


def evaluate_checkpoint(path: str | os.PathLike, *, dataset: str | None = None,
                        split: str | None = None, data_dir: str | None = None,
                        builder_config: Any = None, mode: str = "chunks",
                        out_dir: str | os.PathLike | None = None,
                        batch_size: int | None = None, num_chunks: int | None = None,
                        hop_s: float | None = None, print_fn: Callable[[str], None] | None = print,
                        preflight: Callable[[dict], Any] | None = None,
                        hold: Callable[[Path], Any] | None = None,
                        common_tags: bool = False, progress: bool = True) -> dict:
    """Loads a model, predicts a dataset split, writes the report; returns the metrics dict.

    `path` is a model directory or a training workdir with an exported best model. Dataset,
    data directory, split and batch size default to the model's stored config (the test split).
    `builder_config` is a TFDS config name or a `tfds.core.BuilderConfig`. `hop_s`: seconds
    between full-track windows (mode "full"; default one window). `preflight`, if given, is
    called with the resolved {"dataset", "split", "data_dir", "builder_config", "model_data"}
    once the split is open and before any prediction, so that a later step's missing input
    (e.g. `evaluate --baseline`'s training split) fails before the model's run. `hold`, if
    given, is called with the output folder (`out_dir`, or the default below) before any
    prediction: `tagger-jax evaluate` takes the folder's lock there, so that two evaluations
    writing one folder cannot mix their files. `common_tags`: a dataset may also list tags the
    model does not know; they are not scored (one note names them; the result's
    "ignored_dataset_tags" lists them). `progress`: the progress bar over clips. `print_fn`
    prints the per-tag table and the means (None: nothing is printed); notes (tags missing or
    reordered, tags without train clips when the model was trained on this build, clips
    shorter than a window) go to stderr. The default folder is
    MODEL/evaluation/<dataset>[-<config>]_<split>_<mode> (the config named when it is not the
    model's own).
    """
    from tqdm import tqdm

    from tagger_jax import checkpoint

    if mode not in MODES:
        raise EvaluationError(f"mode must be one of {MODES}, got {mode!r}")
    loaded = checkpoint.load_model(path)  # checkpoint errors first, before the data stack loads
    from tagger_jax import datasets
    cfg = loaded.config
    dataset = dataset or cfg.data.name
    split = split or cfg.data.test_split
    if not data_dir:
        data_dir, moved = loaded.data_dir()
        if moved and print_fn is not None and jax.process_index() == 0:
            print(moved, file=sys.stderr)
    if data_dir:  # as given, from this directory; models trained since 2026-12-03 store it so
        data_dir = str(Path(str(data_dir)).expanduser().absolute())
    if builder_config is None and dataset == cfg.data.name:
        builder_config = cfg.data.builder_config or None
    batch_size = int(cfg.train.eval_batch_size if batch_size is None else batch_size)
    num_chunks = int(cfg.features.eval_chunks if num_chunks is None else num_chunks)
    if batch_size <= 0 or num_chunks <= 0:
        raise EvaluationError(f"batch size and chunks must be positive, got {batch_size} and "
                              f"{num_chunks}")
    if dataset in datasets.SELF_CONTAINED:  # tags every build has: no build for a wrong model
        check_tags(loaded.tags, datasets.BUILDERS[dataset].TAGS, loaded.directory, dataset,
                   common_tags)
    try:
        if dataset in datasets.SELF_CONTAINED:  # e.g. synthetic_tags: built on first use
            datasets.ensure_built(dataset, data_dir, builder_config, splits=[split])
        source, data_tags = datasets.load_split(dataset, split, data_dir,
                                                builder_config=builder_config)
    except (FileNotFoundError, ValueError) as e:  # not built, unknown name or split
        error = EvaluationError(f"cannot open {dataset}/{split} in {data_dir}: {e}")
        error.exit_status = errors.exit_status(e, default=errors.USAGE)  # not built: DATA
        raise error from e
    order = check_tags(loaded.tags, data_tags, loaded.directory, dataset, common_tags)
    missing = [t for t, k in zip(loaded.tags, order)
               if k < 0] if order is not None else []
    ignored = [t for t in map(str, data_tags) if t not in set(map(str, loaded.tags))]

    def note(text: str) -> None:  # on stderr: stdout keeps the table and the means
        if print_fn is not None and jax.process_index() == 0:
            print(f"note: {text}", file=sys.stderr, flush=True)

    if ignored:
        note(f"{dataset} lists {len(ignored)} tag(s) the model does not know, not scored "
             f"(--common-tags): {', '.join(ignored)}")
    if missing:  # named once, under the table
        note(f"{dataset} lacks {len(missing)} of the model's {len(order)} tags: not evaluated "
             f"(listed after the table); the means are over the {len(order) - len(missing)} "
             "common tags")
    elif order is not None and not ignored:
        note(f"{dataset} lists the model's {len(order)} tags in another order; its labels are "
             "read in the model's order")
    _warn_on_feature_mismatch(datasets, dataset, data_dir, builder_config, cfg.features)
    # Only for a model trained on this build (a trial's soundfont model was told otherwise).
    never = (untrained_tags(datasets, dataset, data_dir, builder_config, loaded.tags)
             if trained_on(cfg, dataset, builder_config) else [])
    if never:  # a new user's trial
        note(f"{len(never)} tag(s) have no clip in this build's train split "
             f"({tags_lib.listed(never)}): a model trained on it never learnt them; their "
             "numbers are in the means")
    model_data = {"name": str(cfg.data.name), "data_dir": str(cfg.data.data_dir),
                  "builder_config": cfg.data.get("builder_config") or None,
                  "train_split": str(cfg.data.get("train_split", "train"))}
    config_name = getattr(builder_config, "name", builder_config)
    if out_dir is None:  # one folder per dataset (and config other than the model's), split, mode
        own = (cfg.data.builder_config or None) if dataset == cfg.data.name else None
        label = dataset if config_name in (None, own) else f"{dataset}-{config_name}"
        # and window setting other than the default: runs with different hops or chunk counts
        # kept overwriting one folder
        windows = (f"_hop{hop_s:g}" if mode == "full" and hop_s is not None else
                   f"{num_chunks}" if mode == "chunks" and num_chunks != int(
                       cfg.features.eval_chunks) else "")
        out_dir = Path(path).expanduser() / "evaluation" / f"{label}_{split}_{mode}{windows}"
    if hold is not None:
        hold(Path(out_dir).expanduser())
    if preflight is not None:
        preflight({"dataset": dataset, "split": split, "data_dir": str(data_dir),
                   "builder_config": getattr(builder_config, "name", builder_config),
                   "model_data": model_data})

    # The split's records through the one inference path, on this process's devices; each
    # process takes its share and the clips are gathered (`predict_split`).
    engine = inference.Engine(loaded, batch_size=batch_size * num_chunks)
    if mode == "chunks":
        plan = inference.WindowPlan(inference.PAPER, num_chunks=num_chunks)
    else:
        plan = inference.WindowPlan(inference.COVER, hop_s)
    plan.checked(engine.geometry)  # a hop longer than a window: an error; a rounded one: a note
    hop = plan.hop_steps(engine.geometry)
    label = f"{dataset}/{config_name}" if config_name else dataset
    items = inference.process_share(inference.source_inputs(
        source, engine.architecture.dataset_feature, label, split))
    desc = inference.share_label(f"evaluate {dataset}/{split} ({mode})")
    padded: list[str] = []
    # The build's readers' lock: `build-dataset --overwrite` refuses while the clips are read.
    with (datasets.reading(source),
          tqdm(total=len(items), unit="clip", desc=desc, **bar_interval(),
               disable=not progress or jax.process_index() != 0) as bar):
        probs, labels, clip_index = predict_split(
            items, plan, engine.geometry, engine.packer(engine.predict_fn()), len(loaded.tags),
            workers=engine.load_workers, on_input=lambda: bar.update(1),
            num_labels=len(data_tags), padded=padded)
    if padded:  # a new user's trial: `tag` warned, evaluate not
        share = "" if jax.process_count() == 1 else " (process 0's share)"
        note(f"{len(padded)} of {len(items)} clip(s) of {split}{share} are shorter than one "
             f"window ({engine.geometry.chunk_s:.3f} s; e.g. {padded[0]}): each was repeated to "
             "fill it, as tag does")
    tags = list(loaded.tags)
    if order is not None:  # the common tags, in the model's order
        keep = order >= 0
        labels, probs = labels[:, order[keep]], probs[:, keep]
        tags = [t for t, k in zip(tags, keep) if k]
    metrics = tag_metrics(probs, labels, tags)
    if missing:
        metrics = with_unevaluated(metrics, loaded.tags, dict.fromkeys(missing, NOT_IN_DATASET))

    extra = {"model_dir": str(loaded.directory), "dataset": dataset,
             "builder_config": config_name, "split": split,
             "data_dir": str(data_dir), "mode": mode,
             "num_chunks": num_chunks if mode == "chunks" else None,
             "hop_s": hop_s if mode == "full" else None,
             # the hop in steps actually used (one chunk when --hop is not given)
             "hop": (hop or engine.geometry.chunk) if mode == "full" else None,
             "chunk_frames": int(cfg.features.chunk_frames),
             "out_dir": str(Path(out_dir).expanduser()),
             # The data the model was trained on (its config), for `--baseline-train model`.
             "model_data": model_data, "ignored_dataset_tags": ignored}
    if jax.process_index() == 0:
        # An earlier run's baseline beside these metrics would describe other data; `evaluate
        # --baseline` writes this run's after them.
        from tagger_jax.baseline import BASELINE_JSON

        (Path(out_dir).expanduser() / BASELINE_JSON).unlink(missing_ok=True)
        if print_fn is not None:  # before the files: a failed write keeps the numbers
            print_fn(format_table(metrics))
        paths = write_report(metrics, out_dir, extra=extra,
                             title=f"{dataset}/{split} ({mode}), {metrics['num_clips']} clips")
        paths["npz"] = Path(out_dir).expanduser() / PREDICTIONS_NPZ
        arrays = io.BytesIO()
        np.savez_compressed(arrays, probs=probs, labels=labels, clip_index=clip_index,
                            tags=np.asarray(tags))
        outputs.atomic_write_bytes(paths["npz"], arrays.getvalue())
        if print_fn is not None:
            print_fn(f"ROC-AUC {_fmt(metrics['roc_auc_mean'], 0)}  PR-AUC "
                     f"{_fmt(metrics['pr_auc_mean'], 0)}  ({metrics['num_clips']} clips; wrote "
                     f"{', '.join(str(p) for p in paths.values())})")
    return {**extra, **metrics}

