"""The score-based explanation baselines of benchmarks/explanations.py, against loops here."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import explanations as bench  # noqa: E402


def test_taggram_and_energy_maps():
    rng = np.random.default_rng(0)
    xs = rng.normal(-30, 10, (3, 96, 40)).astype(np.float32)
    # A "model" whose tag-k logit is the window's mean over the band range 8k..8k+8.
    model = types.SimpleNamespace(apply=lambda v, x: jnp.stack(
        [x[:, 8 * k:8 * k + 8].mean(axis=(1, 2)) for k in range(4)], axis=1))
    loaded = types.SimpleNamespace(model=model, variables={})
    pairs = [(0, 1), (2, 3), (1, 0)]
    got = bench.taggram_map(loaded, xs, pairs, window=10, hop=5, batch=4)
    for p, (c, k) in enumerate(pairs):
        starts = range(0, 31, 5)
        probs = {s: 1 / (1 + np.exp(-xs[c, 8 * k:8 * k + 8, s:s + 10].astype(np.float64).mean()))
                 for s in starts}
        want = [np.mean([probs[s] for s in starts if s <= t < s + 10]) for t in range(40)]
        np.testing.assert_allclose(got[p], want, rtol=1e-5)
    np.testing.assert_allclose(bench.energy_map(xs, pairs)[1], xs[2].mean(axis=0), rtol=1e-6)
