"""The score-based explanation baselines of benchmarks/explanations.py, against loops here."""
from __future__ import annotations

import sys
import time
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


def test_timing_tables_print_the_load_and_replace_only_their_section(tmp_path, monkeypatch):
    meta = {"date": "2026-11-30", "device": "cpu (cpu, 2 CPU cores)", "ig_steps": 32,
            "batch": 16, "timing_model": "m", "load_before": 3.25, "load_after": 4.5,
            "rounds": 3, "chunk": 256}
    times = {"forward": [0.010, 0.012, 0.011], "contribution": [0.012, 0.013, 0.014],
             "one overridden pass": [0.02, 0.02, 0.03]}
    text = bench.format_timings(times, meta)
    assert "load average (1 min) 3.2 at the start, 4.5 at the end" in text
    assert "| contribution | 13.0 [12.0 - 14.0] | 1.18 |" in text and "Paper model" not in text
    assert "S = 257 overridden passes (S x the median above) | 5140.0 | 467.3 |" in text
    doc = tmp_path / "doc.md"
    doc.write_text(f"a\n{bench.BEGIN}\nscores\n{bench.END}\n{bench.TIMING_BEGIN}\nold\n"
                   f"{bench.TIMING_END}\nz\n")
    monkeypatch.setattr(bench, "DOC", doc)
    bench.write_section(bench.TIMING_BEGIN, bench.TIMING_END, text)
    got = doc.read_text()
    assert "scores" in got and "old" not in got and text in got and got.endswith("z\n")


def test_interleaved_seconds_time_every_call_per_round():
    calls = {"a": (lambda: np.zeros(3), 2), "b": (lambda: time.sleep(0.01), 1)}
    got = bench.interleaved_seconds(calls, rounds=3)
    assert [len(v) for v in got.values()] == [3, 3] and min(got["b"]) >= 0.01
