"""How much tempo do the tempo branch's inputs hold, read linearly or not? (docs/training.md)

    python benchmarks/tempo_features.py [--data-dir ~/tensorflow_datasets] [--train-chunks 6]

For `soundfont_tags` (built), fits a classifier per tempo tag (fast, slow) on onset
autocorrelations of the train split's chunks and scores ROC-AUC on `test` and on each unseen-bank
test split (mean of the probabilities of 16 evenly spaced chunks per clip: the validation
protocol). The features are those the model's tempo branch computes (`frontends.TEMPO_BANDS`,
lags 1..`frontends.ONSET_MAX_LAG`), recomputed here in float64 NumPy; longer chunks and the
whole clip (lags up to 128 frames, as the baseline's) show what more context would add.
Readers: a logistic regression (what one dense layer can do), a one-hidden-layer MLP (64 ReLU
units, what `model.tempo_hidden` adds) and gradient-boosted trees (scikit-learn; standardised
features). A few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagger_jax.models.frontends import ONSET_MAX_LAG, TEMPO_BANDS  # noqa: E402

TAGS = ("fast", "slow")
CLIP_MAX_LAG = 128  # the baseline's lags (tagger_jax.baseline.MAX_LAG)
# (label, chunk frames or None for the whole clip, tempo_features value, reader)
ROWS = (
    ("2 s chunk, whole spectrum", 128, "onset_autocorrelation", "linear"),
    ("2 s chunk, whole spectrum + 3 bands", 128, "onset_autocorrelation_bands", "linear"),
    ("4 s chunk, whole spectrum", 256, "onset_autocorrelation", "linear"),
    ("whole 10 s clip, whole spectrum", None, "onset_autocorrelation", "linear"),
    ("2 s chunk, whole spectrum", 128, "onset_autocorrelation", "mlp"),
    ("2 s chunk, whole spectrum", 128, "onset_autocorrelation", "trees"),
    ("2 s chunk, whole spectrum + 3 bands", 128, "onset_autocorrelation_bands", "mlp"),
)


def autocorrelation(envelope: np.ndarray, max_lag: int) -> np.ndarray:
    """(max_lag,) autocorrelation of the mean-removed envelope at lags 1..max_lag / lag 0."""
    x = envelope - envelope.mean()
    full = np.correlate(x, x, mode="full")[len(x) - 1:]
    ac = np.zeros(max_lag + 1)
    ac[:min(len(x), max_lag + 1)] = full[:max_lag + 1]
    return ac[1:] / ac[0] if ac[0] > 0 else np.zeros(max_lag)


def features(mel: np.ndarray, frames: int | None, bands, n_chunks: int) -> np.ndarray:
    """(n_chunks, len(bands) * lags): each band range's onset autocorrelation per chunk (one
    row for the whole clip when `frames` is None)."""
    if frames is None:
        chunks, max_lag = [mel], CLIP_MAX_LAG
    else:
        starts = np.linspace(0, mel.shape[1] - frames, n_chunks).round().astype(int)
        chunks, max_lag = [mel[:, s:s + frames] for s in starts], ONSET_MAX_LAG
    rows = []
    for chunk in chunks:
        flux = np.maximum(np.diff(chunk, axis=1), 0.0)
        rows.append(np.concatenate([
            autocorrelation(np.concatenate([[0.0], flux[lo:hi].mean(axis=0)]), max_lag)
            for lo, hi in bands]))
    return np.asarray(rows)


def reader(kind: str):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if kind == "linear":
        return LogisticRegression(C=1.0, max_iter=3000)
    if kind == "mlp":
        return MLPClassifier((64,), max_iter=300, early_stopping=True, random_state=0)
    return HistGradientBoostingClassifier(random_state=0)


def load(split: str, data_dir: str) -> tuple[list[np.ndarray], np.ndarray]:
    from tagger_jax.datasets import load_split

    source, names = load_split("soundfont_tags", split, data_dir)
    columns = [names.index(t) for t in TAGS]
    mels, labels = [], []
    for i in range(len(source)):
        record = source[i]
        mels.append(np.asarray(record["mel"], np.float64))
        labels.append(np.asarray(record["tags"])[columns])
    return mels, np.asarray(labels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="~/tensorflow_datasets")
    p.add_argument("--train-chunks", type=int, default=6,
                   help="evenly spaced chunks per train clip")
    args = p.parse_args(argv)
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from tagger_jax.datasets import get_builder

    splits = [s for s in get_builder("soundfont_tags", args.data_dir).info.splits
              if s == "test" or s.startswith("test_")]
    print(f"loading soundfont_tags (train, {', '.join(splits)}) from {args.data_dir}", flush=True)
    train = load("train", args.data_dir)
    tests = {s: load(s, args.data_dir) for s in splits}
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = " | ".join(f"{t} {s}" for t in TAGS for s in splits)
    print(f"| features | reader | {header} | seconds |")
    print("|---|---|" + "---:|" * (len(TAGS) * len(splits) + 1))
    for label, frames, kind, how in ROWS:
        start = time.perf_counter()
        bands = TEMPO_BANDS[kind]
        x = np.concatenate([features(m, frames, bands, args.train_chunks) for m in train[0]])
        y = np.repeat(train[1], len(x) // len(train[0]), axis=0)
        scaler = StandardScaler().fit(x)
        test_x = {s: [scaler.transform(features(m, frames, bands, 16)) for m in mels]
                  for s, (mels, _) in tests.items()}
        cells = []
        for k in range(len(TAGS)):
            model = reader(how).fit(scaler.transform(x), y[:, k])
            for s, (_, labels) in tests.items():
                p_clip = [model.predict_proba(xc)[:, 1].mean() for xc in test_x[s]]
                cells.append(f"{roc_auc_score(labels[:, k], p_clip):.3f}")
        print(f"| {label} | {how} | {' | '.join(cells)} | {time.perf_counter() - start:.0f} |",
              flush=True)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
