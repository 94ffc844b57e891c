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

This is the baseline `tagger-jax evaluate --baseline` fits on the dataset's training split and
scores beside the model on the evaluated split.
"""
from __future__ import annotations

import dataclasses
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

    indices = range(len(source))
    shown = (bars(indices, len(source), desc, " clips") if bars is not None
             else tqdm(indices, desc=desc, unit=" clips", leave=False))
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


def evaluate(train_source, eval_sources: dict[str, Any], tag_names: Sequence[str],
             bars: Optional[Bars] = None) -> dict:
    """Fits on `train_source`, returns {split: `tagger_jax.evaluation.tag_metrics` dict} for
    each of `eval_sources` ({split name: source}); `bars`: see `source_features`."""
    from tagger_jax.evaluation import tag_metrics

    model = fit(*source_features(train_source, "baseline features (train)", bars))
    out = {}
    for name, source in eval_sources.items():
        x, y = source_features(source, f"baseline features ({name})", bars)
        out[name] = tag_metrics(model.predict_proba(x), y, tag_names)
    return out



BASELINE_JSON = "baseline.json"


def report_beside(result: dict, print_fn=print) -> dict:
    """Fits the baseline on the train split of the dataset an `evaluate_checkpoint` result was
    computed on, scores it on the same split, prints model vs baseline per tag and writes
    `baseline.json` into the result's output directory. Returns the baseline's metrics.
    Raises `tagger_jax.evaluation.EvaluationError` when a split cannot be opened."""
    import json
    from pathlib import Path

    from tagger_jax import datasets
    from tagger_jax.evaluation import EvaluationError, _fmt

    name, split = result["dataset"], result["split"]
    config = result.get("builder_config")
    try:
        train, tags = datasets.load_split(name, "train", result["data_dir"], config)
        evaluated, _ = datasets.load_split(name, split, result["data_dir"], config)
    except (FileNotFoundError, ValueError) as e:
        raise EvaluationError(f"baseline: cannot open {name}: {e}") from e
    metrics = evaluate(train, {split: evaluated}, tags)[split]
    model = {t["tag"]: t["roc_auc"] for t in result["per_tag"]}
    width = max(len(t) for t in tags)
    lines = [f"{'tag':<{width}}  model ROC-AUC  baseline ROC-AUC", "-" * (width + 33)]
    for row in metrics["per_tag"]:
        lines.append(f"{row['tag']:<{width}}  {_fmt(model.get(row['tag']), 13)}  "
                     f"{_fmt(row['roc_auc'], 16)}")
    lines.append(f"{'mean':<{width}}  {_fmt(result['roc_auc_mean'], 13)}  "
                 f"{_fmt(metrics['roc_auc_mean'], 16)}")
    out = Path(result["out_dir"]) / BASELINE_JSON
    out.write_text(json.dumps({"dataset": name, "builder_config": config, "split": split,
                               "fitted_on": "train", **metrics}, indent=1))
    if print_fn is not None:
        print_fn("\n".join(lines))
        print_fn(f"baseline (logistic regression on log-mel statistics, fitted on {name}/train): "
                 f"ROC-AUC {_fmt(metrics['roc_auc_mean'], 0)}  PR-AUC "
                 f"{_fmt(metrics['pr_auc_mean'], 0)}; wrote {out}")
    return metrics
