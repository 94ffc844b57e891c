"""A floor for every tagging number: logistic regression on clip-level log-mel statistics.

Features of one clip (`clip_features`, from the stored (96, T) dB log-mel):
  - per mel band: mean, standard deviation and maximum over time (3 x 96);
  - onset autocorrelation: the onset-strength envelope (half-wave rectified frame-to-frame
    increase of the log-mel, averaged over bands: spectral flux on a dB scale), mean-removed, its
    autocorrelation normalised by lag 0 at lags 1..`MAX_LAG` frames, averaged in pairs of lags
    (64 values covering periods of 16 ms to 2.1 s: 28-3750 BPM), plus the envelope's mean and
    standard deviation (66 values).
Model (`fit`): standardised features, one scikit-learn `LogisticRegression` per tag (one-vs-rest,
L2, C = 1). A tag with a single label value in the training split predicts its training rate.

This is the baseline `tagger-jax evaluate --baseline` (`report_beside`) and training's
`train.test_baseline` (`evaluate`) fit on a training split and score beside the model; both fit
and score through `fit_and_score`.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

# A progress-bar factory: (items, total, desc, unit) -> the items, shown as they are consumed
# (`tagger_jax.progress.Progress.batches`).
Bars = Callable[[Iterable, int, str, str], Iterable]

MAX_LAG = 128  # autocorrelation lags in frames (16 ms each at hop 256 / 16 kHz)


def onset_envelope(mel_db: np.ndarray) -> np.ndarray:
    """(T,) float64 onset strength of a (bands, T) dB log-mel: mean over bands of the positive
    part of the frame-to-frame difference; frame 0 is 0."""
    mel = np.asarray(mel_db, np.float64)
    if mel.ndim != 2 or mel.shape[1] < 2:
        raise ValueError(f"log-mel must be (bands, frames>=2), got {mel.shape}")
    flux = np.maximum(np.diff(mel, axis=1), 0.0).mean(axis=0)
    return np.concatenate([[0.0], flux])


def onset_autocorrelation(envelope: np.ndarray, max_lag: int = MAX_LAG) -> np.ndarray:
    """(max_lag // 2,) float64: autocorrelation of the mean-removed envelope at lags
    1..max_lag, divided by lag 0 (0 for a constant envelope), averaged over pairs of lags.
    Lags beyond the clip are 0."""
    x = np.asarray(envelope, np.float64) - np.mean(envelope)
    n = len(x)
    full = np.correlate(x, x, mode="full")[n - 1:]  # lags 0..n-1
    ac = np.zeros(max_lag + 1)
    ac[:min(n, max_lag + 1)] = full[:max_lag + 1]
    ac = ac[1:] / ac[0] if ac[0] > 0 else np.zeros(max_lag)
    return ac[: 2 * (max_lag // 2)].reshape(-1, 2).mean(axis=1)


def clip_features(mel_db: np.ndarray, max_lag: int = MAX_LAG) -> np.ndarray:
    """(3 * bands + max_lag // 2 + 2,) float64 features of one clip (see the module docstring)."""
    mel = np.asarray(mel_db, np.float64)
    env = onset_envelope(mel)
    return np.concatenate([mel.mean(axis=1), mel.std(axis=1), mel.max(axis=1),
                           onset_autocorrelation(env, max_lag), [env.mean(), env.std()]])


def source_features(source, desc: str = "baseline features", bars: Optional[Bars] = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), labels (N, K) uint8) of every record of a data source with "mel" and
    "tags" (e.g. `tagger_jax.datasets.load_split(...)[0]`), with a progress bar: `bars(items,
    total, desc, unit)` wraps the records (training passes its own, which keeps logs free of
    cursor movements), else a plain tqdm bar."""
    from tqdm.auto import tqdm

    from tagger_jax.progress import bar_interval

    indices = range(len(source))
    shown = (bars(indices, len(source), desc, " clips") if bars is not None
             else tqdm(indices, desc=desc, unit=" clips", leave=False, **bar_interval()))
    feats, labels = [], []
    for i in shown:
        record = source[i]
        feats.append(clip_features(record["mel"]))
        labels.append(np.asarray(record["tags"], np.uint8))
    if not feats:
        raise ValueError("no clips to compute baseline features from")
    return np.stack(feats), np.stack(labels)


@dataclasses.dataclass
class Baseline:
    """A fitted baseline: the scaler and one classifier (or constant rate) per tag."""

    mean: np.ndarray
    scale: np.ndarray
    models: list[Any]  # LogisticRegression or float (constant probability)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, K) float64 probabilities for (N, D) features."""
        x = (np.asarray(features, np.float64) - self.mean) / self.scale
        cols = [m.predict_proba(x)[:, 1] if not isinstance(m, float) else np.full(len(x), m)
                for m in self.models]
        return np.stack(cols, axis=1)


def fit(features: np.ndarray, labels: np.ndarray, c: float = 1.0,
        max_iter: int = 2000) -> Baseline:
    """Fits the baseline on (N, D) features and (N, K) 0/1 labels (errors: mismatched shapes)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features {x.shape} and labels {y.shape} must be (N, D) and (N, K)")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    xs = (x - mean) / scale
    models: list[Any] = []
    for k in range(y.shape[1]):
        col = y[:, k].astype(int)
        if col.min() == col.max():
            models.append(float(col[0]))
            continue
        models.append(LogisticRegression(C=c, max_iter=max_iter).fit(xs, col))
    return Baseline(mean, scale, models)


def constant_tags(labels: np.ndarray, tag_names: Sequence[str]) -> list[str]:
    """The tags with no positive or no negative clip in (N, K) 0/1 `labels`: `fit` gives them a
    constant prediction, so the baseline's ROC-AUC on them is 0.5 by construction."""
    y = np.asarray(labels)
    return [str(t) for k, t in enumerate(tag_names) if y[:, k].min() == y[:, k].max()]


@dataclasses.dataclass
class Scored:
    """A baseline fitted on one split and scored on others (`fit_and_score`)."""

    model: Baseline
    fitted_on: str  # the training split's name, as shown in progress bars and messages
    clips: int  # training clips
    constant_tags: list[str]  # tags with a single label value in the training split (see `fit`)
    metrics: dict[str, dict]  # {split: `tag_metrics` over the tags it shares with the training
    #                           split, in the training split's tag order}


def fit_and_score(train_source, tag_names: Sequence[str], eval_sources: dict[str, Any],
                  eval_tags: Optional[dict[str, Sequence[str]]] = None, fitted_on: str = "train",
                  bars: Optional[Bars] = None, only: Optional[Sequence[str]] = None) -> Scored:
    """Fits the baseline on `train_source` (labels over `tag_names`) and scores it on each of
    `eval_sources` ({split name: source}) over the tags that split shares with `tag_names`.

    `eval_tags`: {split name: its tag names, in its label order} for splits whose tags differ
    from `tag_names` (default: the same tags). `only`: score no tags outside it (e.g. the
    model's, when a split also lists others). `fitted_on` and the split names label the
    progress bars (`bars`: see `source_features`). Raises `tagger_jax.evaluation.EvaluationError`,
    before any feature is computed, when a split shares no tag with the training split.
    """
    from tagger_jax.evaluation import EvaluationError, tag_metrics

    names = [str(t) for t in tag_names]
    shared = {}
    for split in eval_sources:
        theirs = [str(t) for t in (eval_tags or {}).get(split, names)]
        common = [t for t in names if t in set(theirs) and (only is None or t in set(only))]
        if not common:
            raise EvaluationError(f"baseline: {fitted_on} and {split} share no tag")
        shared[split] = (common, theirs)
    x, y = source_features(train_source, f"baseline features ({fitted_on})", bars)
    model = fit(x, y)
    metrics = {}
    for split, source in eval_sources.items():
        common, theirs = shared[split]
        xe, ye = source_features(source, f"baseline features ({split})", bars)
        probs = model.predict_proba(xe)[:, [names.index(t) for t in common]]
        metrics[split] = tag_metrics(probs, ye[:, [theirs.index(t) for t in common]], common)
    return Scored(model, fitted_on, int(len(x)), constant_tags(y, names), metrics)


def evaluate(train_source, eval_sources: dict[str, Any], tag_names: Sequence[str],
             bars: Optional[Bars] = None) -> dict:
    """Fits on `train_source`, returns {split: `tagger_jax.evaluation.tag_metrics` dict} for
    each of `eval_sources` ({split name: source}, labelled over the same `tag_names`), each
    with "constant_tags" added (the tags with a single label value in the train split, whose
    baseline numbers are meaningless); `bars`: see `source_features`. (`fit_and_score` with the
    fit itself.)"""
    scored = fit_and_score(train_source, tag_names, eval_sources, bars=bars)
    for metrics in scored.metrics.values():  # as `report_beside` records them
        metrics["constant_tags"] = list(scored.constant_tags)
    return scored.metrics


def constant_warning(constant: Sequence[str], num_tags: int, fitted_on: str) -> str:
    """The one `warning: baseline:` line naming the tags with a single label value in the
    split the baseline was fitted on (`evaluate --baseline` and training's baseline say it)."""
    return (f"warning: baseline: {len(constant)} of {num_tags} tags have no positive or no "
            f"negative clip in {fitted_on} ({', '.join(constant)}): it predicts a constant for "
            "them, so its numbers there are meaningless")


BASELINE_JSON = "baseline.json"
TRAIN_SOURCES = ("dataset", "model")  # where `report_beside` fits the baseline


def open_train_split(result: dict, train: str = "dataset") -> tuple[str, str, Any, list[str]]:
    """("DATASET/SPLIT", whose split it is in words with its data directory, source, tag names)
    of the split `report_beside` fits on, for an `evaluate_checkpoint` result (or the
    `preflight` dict it passes before predicting: the same "dataset", "data_dir",
    "builder_config" and "model_data" keys). Raises `tagger_jax.evaluation.EvaluationError`
    naming the split when it cannot be opened."""
    from tagger_jax import datasets
    from tagger_jax.evaluation import EvaluationError

    if train not in TRAIN_SOURCES:
        raise EvaluationError(f"baseline: train must be one of {TRAIN_SOURCES}, got {train!r}")
    if train == "model":
        data = result["model_data"]
        train_at = (data["name"], data["train_split"], data["data_dir"], data["builder_config"])
        whose = "the model's training data"
    else:
        train_at = (result["dataset"], "train", result["data_dir"], result.get("builder_config"))
        whose = "the evaluated dataset's train split"
    fitted_on = f"{train_at[0]}/{train_at[1]}"
    try:
        source, tags = datasets.load_split(*train_at)
    except (FileNotFoundError, ValueError) as e:
        hint = ("; fit it on the model's training data with --baseline-train model"
                if train == "dataset" else "")
        raise EvaluationError(f"baseline: cannot open {whose} {fitted_on} in {train_at[2]}: "
                              f"{e}{hint}") from e
    if train_at[2]:  # which copy was read (a data_dir such as "~/..." differs between machines)
        whose = f"{whose}, in {os.path.expanduser(str(train_at[2]))}"
    return fitted_on, whose, source, list(tags)


def report_beside(result: dict, print_fn=print, train: str = "dataset",
                  progress: bool = True) -> dict:
    """Fits the baseline, scores it on the split an `evaluate_checkpoint` result was computed on,
    prints model vs baseline per tag and writes `baseline.json` into the result's output
    directory. Returns the baseline's metrics, with "fitted_on" ("DATASET/SPLIT"),
    "fitted_on_clips" and "constant_tags" added.

    `train`: "dataset" fits on the evaluated dataset's "train" split; "model" fits on the data
    the model was trained on (the result's "model_data": its config's data.name, data_dir,
    builder_config and train_split), so both learned from the same clips. The baseline is scored
    on the tags both its training data and the evaluated split list. Prints which split it was
    fitted on and how many clips, and one warning line naming the tags with a single label value
    there (constant predictions: the baseline is meaningless for them). Both splits' builds are
    held with `datasets.reading` while their clips are read, so a rebuild refuses meanwhile.
    `progress`: the feature bars over the clips. Raises `tagger_jax.evaluation.EvaluationError`
    when a split cannot be opened (naming it) or the two share no tag.
    """
    import json
    from pathlib import Path

    from tagger_jax import datasets
    from tagger_jax.evaluation import EvaluationError, _fmt

    name, split = result["dataset"], result["split"]
    config = result.get("builder_config")
    fitted_on, whose, train_source, train_tags = open_train_split(result, train)
    try:
        evaluated, eval_tags = datasets.load_split(name, split, result["data_dir"], config)
    except (FileNotFoundError, ValueError) as e:
        raise EvaluationError(f"baseline: cannot open {name}/{split}: {e}") from e
    scored_as = f"{name}/{split}"
    # With evaluate --common-tags the split lists tags the model does not: not scored here either.
    model_tags = [row["tag"] for row in result["per_tag"]] if result.get(
        "ignored_dataset_tags") else None
    quiet = None if progress else (lambda items, total, desc, unit: items)
    with datasets.reading(train_source), datasets.reading(evaluated):  # no rebuild meanwhile
        scored = fit_and_score(train_source, train_tags, {scored_as: evaluated},
                               {scored_as: eval_tags}, fitted_on, bars=quiet, only=model_tags)
    metrics = scored.metrics[scored_as]
    tags = [row["tag"] for row in metrics["per_tag"]]
    constant = [t for t in scored.constant_tags if t in set(tags)]
    metrics.update(fitted_on=fitted_on, fitted_on_clips=scored.clips, constant_tags=constant)

    model_roc = {t["tag"]: t["roc_auc"] for t in result["per_tag"]}
    rank = {t: i for i, t in enumerate(model_roc)}  # rows in the model's table's order
    width = max(len(t) for t in tags)
    lines = [f"{'tag':<{width}}  model ROC-AUC  baseline ROC-AUC", "-" * (width + 33)]
    for row in sorted(metrics["per_tag"], key=lambda r: rank.get(r["tag"], len(rank))):
        mark = "  (constant)" if row["tag"] in constant else ""
        lines.append(f"{row['tag']:<{width}}  {_fmt(model_roc.get(row['tag']), 13)}  "
                     f"{_fmt(row['roc_auc'], 16)}{mark}")
    lines.append(f"{'mean':<{width}}  {_fmt(result['roc_auc_mean'], 13)}  "
                 f"{_fmt(metrics['roc_auc_mean'], 16)}")
    out = Path(result["out_dir"]) / BASELINE_JSON
    out.write_text(json.dumps({"dataset": name, "builder_config": config, "split": split,
                               **metrics}, indent=1))
    if print_fn is not None:
        print_fn("\n".join(lines))
        if constant:  # as every warning: on stderr (stdout holds the tables and results)
            print(constant_warning(constant, len(tags), fitted_on), file=sys.stderr)
        print_fn(f"baseline (logistic regression on log-mel statistics) fitted on {fitted_on} "
                 f"({scored.clips} clips, {whose}): ROC-AUC {_fmt(metrics['roc_auc_mean'], 0)}  "
                 f"PR-AUC {_fmt(metrics['pr_auc_mean'], 0)}; wrote {out}")
        if fitted_on == scored_as:  # from a new user's trial: a perfect 1.0, unexplained
            print(f"note: the baseline is scored on {scored_as}, the split it was fitted on: "
                  "its numbers measure how well it fits its own training clips, not a floor for "
                  "the model", file=sys.stderr)  # as every note: on stderr
    return metrics
