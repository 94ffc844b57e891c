"""The score-based explanation baselines of benchmarks/explanations.py, against loops here."""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

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


# Scoring shared by the chunk and the track level ------------------------------------------------


def test_score_maps_hand_made_cases_and_sklearn_loop():
    from sklearn.metrics import roc_auc_score

    truth = [np.array([0, 0, 1, 1, 1, 0, 0, 0]), np.array([1, 1, 0, 0, 0, 0]),
             np.array([0, 1, 0, 1, 0, 0, 0, 0, 0, 1])]  # lengths differ, as tracks may
    rng = np.random.default_rng(1)
    noisy = [t + rng.normal(0, 0.8, len(t)) for t in truth]
    maps = {"exact": [t.astype(float) for t in truth],
            "constant": [np.full(len(t), 0.3) for t in truth],
            "inverse": [1.0 - t for t in truth], "noisy": noisy}
    detected = np.array([True, False, True])
    curves = {n: np.arange(9, dtype=float).reshape(3, 3) for n in maps}
    rows = bench.score_maps(maps, truth, detected, curves)
    assert rows[("all", "exact")]["pointing"] == 1 and rows[("all", "exact")]["auc"] == 1
    assert rows[("all", "inverse")]["pointing"] == 0 and rows[("all", "inverse")]["auc"] == 0
    assert rows[("all", "constant")]["auc"] == 0.5
    # A constant map ties everywhere: it points at the tag's share of the frames.
    np.testing.assert_allclose(rows[("all", "constant")]["pointing"],
                               np.mean([t.mean() for t in truth]))
    for subset, idx in (("all", [0, 1, 2]), ("detected", [0, 2])):
        r = rows[(subset, "noisy")]
        assert r["pairs"] == len(idx)
        np.testing.assert_allclose(r["auc"], np.mean([roc_auc_score(truth[i], noisy[i])
                                                      for i in idx]))
        np.testing.assert_allclose(r["pointing"],
                                   np.mean([truth[i][np.argmax(noisy[i])] for i in idx]))
        np.testing.assert_allclose(r["deletion"], curves["noisy"][idx].mean())
        np.testing.assert_allclose(r["probability"], curves["noisy"][idx, 0].mean())
    assert np.isnan(bench.score_maps(maps, truth, detected)[("all", "noisy")]["deletion"])
    # The tables show a deletion column only where the curves were computed (no column of nan).
    with_curves = bench.format_score_tables(rows, list(maps), "h")
    without = bench.format_score_tables(bench.score_maps(maps, truth, detected), list(maps), "h")
    assert "deletion: mean p" in with_curves and "nan" not in with_curves
    assert "deletion" not in without and "nan" not in without
    empty = bench.score_maps(maps, truth, np.zeros(3, bool))[("detected", "exact")]
    assert empty["pairs"] == 0 and np.isnan(empty["auc"])
    # The chunk table is the same function on (clips, tags, chunk) masks.
    masks = np.stack([np.stack([truth[0], 1 - truth[0]])] * 2)  # (2 clips, 2 tags, 8)
    pairs = [(0, 0), (1, 1)]
    probs = np.array([[0.9, 0.1], [0.2, 0.4]])
    chunk_maps = {"m": np.stack([noisy[0], noisy[0]])}
    got = bench.localisation_table(chunk_maps, masks, pairs, probs,
                                   {"m": np.ones((2, 3))})
    want = bench.score_maps({"m": list(chunk_maps["m"])}, [masks[0, 0], masks[1, 1]],
                            np.array([True, False]), {"m": np.ones((2, 3))})
    assert got == want and got[("detected", "m")]["pairs"] == 1
    with np.testing.assert_raises(ValueError):
        bench.score_maps({"m": maps["exact"][:2]}, truth, detected)
    # --json: the rows as numbers (it once wrote the markdown as one string), NaN as null.
    import json

    config = types.SimpleNamespace(data=types.SimpleNamespace(data_dir="data"))
    loaded = types.SimpleNamespace(directory=Path("runs/x/best_model"), config=config)
    args = types.SimpleNamespace(split="test", builder_config="", data_dir=None, ig_steps=32)
    numbers = json.loads(json.dumps(bench.score_numbers(
        bench.score_maps(maps, truth, np.zeros(3, bool)), loaded, args, "h", clips=3),
        allow_nan=False))
    assert numbers["meta"] == {"model": "runs/x/best_model", "split": "test",
                               "builder_config": "default", "data_dir": "data", "ig_steps": 32,
                               "heading": "h", "clips": 3}
    assert numbers["rows"]["all/noisy"]["auc"] == rows[("all", "noisy")]["auc"]
    assert numbers["rows"]["detected/exact"] == {"pairs": 0, "pointing": None, "auc": None,
                                                 "deletion": None, "probability": None}


def test_partial_tags_and_centre_chunks():
    mask = np.zeros((4, 20), np.uint8)
    mask[1] = 1
    mask[2, 3:7] = 1
    mask[3, 15:] = 1
    np.testing.assert_array_equal(bench.partial_tags(mask), [2, 3])
    source = [{"mel": np.arange(96 * 20, dtype=np.float32).reshape(96, 20), "tag_mask": mask}]
    xs, masks, pairs = bench.centre_chunks(source, clips=5, chunk=8)  # frames 6..13
    assert xs.shape == (1, 96, 8) and xs[0, 0, 0] == 6 and pairs == [(0, 2)]


def test_track_deletion_curves_against_a_loop():
    rng = np.random.default_rng(0)
    xs = [rng.normal(-30, 10, (96, 23)).astype(np.float32),
          rng.normal(-30, 10, (96, 17)).astype(np.float32)]
    model = types.SimpleNamespace(apply=lambda v, x: jnp.stack(
        [x[:, 8 * k:8 * k + 8].mean(axis=(1, 2)) / 10 + 3 for k in range(3)], axis=1))
    loaded = types.SimpleNamespace(model=model, variables={}, tags=("a", "b", "c"))
    starts = [np.array([0, 8, 15]), np.array([0, 9])]
    pairs = [(0, 1), (1, 2), (0, 0)]
    maps = {"r": [rng.random(x.shape[-1]) for x in (xs[0], xs[1], xs[0])],
            "shared": [xs[0].mean(0), xs[1].mean(0), xs[0].mean(0)]}
    got = bench.track_deletion_curves(loaded, xs, starts, pairs, maps, steps=3, chunk=8,
                                      batch=4, progress=False)
    for name, m in maps.items():
        for p, (c, k) in enumerate(pairs):
            x = xs[c].astype(np.float64)
            order = np.argsort(-m[p], kind="stable")
            for i, count in enumerate(np.rint(np.linspace(0, x.shape[-1], 4)).astype(int)):
                y = x.copy()
                y[:, order[:count]] = x.min()
                want = np.mean([1 / (1 + np.exp(-(y[8 * k:8 * k + 8, s:s + 8].mean() / 10 + 3)))
                                for s in starts[c]])
                np.testing.assert_allclose(got[name][p, i], want, rtol=1e-5)


@pytest.mark.slow  # 30 s of CPU: compiles the explain run for a tiny model
def test_track_maps_are_the_explain_runs_stitched_windows(tmp_path):
    """Track-level assembly: the benchmark's maps for a whole record are what the explain run
    stitches, checked against the model run window by window here and averaged by hand."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from model_helpers import save_tiny_model

    from tagger_jax.checkpoint import load_model
    from tagger_jax.explain import methods as M

    tags = ["a", "b", "c"]
    loaded = load_model(save_tiny_model(tmp_path / "model", tags))
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 150), np.uint8)
    mask[0, 20:90] = 1  # partial
    mask[1] = 1  # everywhere: not explained
    mask[2, 100:] = 1  # partial
    source = [{"mel": rng.normal(-40, 12, (96, 150)).astype(np.float32), "tag_mask": mask,
               "tags": np.array([1, 1, 1], np.uint8)},
              {"mel": rng.normal(-40, 12, (96, 150)).astype(np.float32),
               "tag_mask": np.ones((3, 150), np.uint8), "tags": np.ones(3, np.uint8)}]
    methods = ("attention", "contribution")  # gradients: test_track_method_maps_pick_...
    tracks, run = bench.explain_tracks(loaded, source, "toy", "test", 5, tmp_path / "out",
                                       methods=methods, batch=4, progress=False)
    assert len(tracks) == 1 and not run.failed  # the second record has no partial tag
    pairs = bench.track_pairs(tracks)
    assert pairs == [(0, 0), (0, 2)]
    maps = bench.track_method_maps(tracks, pairs)
    # `explain`'s default windows on 150 frames of 64-frame chunks: 0, 64 and one ending at 150.
    x = source[0]["mel"]
    total = {m: np.zeros((3, 150)) for m in methods}
    count = np.zeros(150)
    starts = (0, 64, 86)
    out = M.explain(loaded.model, loaded.variables, np.stack([x[:, s:s + 64] for s in starts]),
                    methods=methods)
    for w, s in enumerate(starts):
        total["attention"][:, s:s + 64] += np.asarray(out["attention"])[w, 1:]
        total["contribution"][:, s:s + 64] += np.asarray(out["contribution"])[w, :, 1:]
        count[s:s + 64] += 1
    for p, (_, k) in enumerate(pairs):
        np.testing.assert_allclose(maps["attention"][p], total["attention"][0] / count,
                                   rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(maps["contribution"][p], total["contribution"][k] / count,
                                   rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(tracks[0]["mask"], mask)
    np.testing.assert_allclose(tracks[0]["res"]["log_mel"], x)
    # A second run reuses the explain results (as `explain` does).
    _, again = bench.explain_tracks(loaded, source, "toy", "test", 5, tmp_path / "out",
                                    methods=methods, batch=4, progress=False)
    assert again.skipped and not again.done


def test_track_method_maps_pick_each_pairs_tag():
    """Contribution maps cover every tag (index by tag); gradient maps only the explained tags
    (index by position in the explained list); attention is shared."""
    t = 7
    res = {"explained_tag_indices": np.array([3, 1]), "attention": np.arange(t, dtype=float),
           "rollout": -np.arange(t, dtype=float),
           "contribution": np.arange(5 * t, dtype=float).reshape(5, t),
           "grad_x_input_time": np.stack([np.full(t, 30.0), np.full(t, 10.0)]),
           "integrated_gradients_time": np.stack([np.full(t, 3.0), np.full(t, 1.0)])}
    tracks = [{"res": res}, {"res": dict(res, explained_tag_indices=np.array([0]))}]
    pairs = bench.track_pairs(tracks)
    assert pairs == [(0, 3), (0, 1), (1, 0)]
    maps = bench.track_method_maps(tracks, pairs)
    assert list(maps) == list(bench.LOCALISATION_METHODS)
    for p, (c, k) in enumerate(pairs):
        np.testing.assert_array_equal(maps["contribution"][p], res["contribution"][k])
        np.testing.assert_array_equal(maps["attention"][p], res["attention"])
        np.testing.assert_array_equal(maps["rollout"][p], res["rollout"])
    assert [m[0] for m in maps["grad_x_input"]] == [30.0, 10.0, 30.0]
    assert [m[0] for m in maps["integrated_gradients"]] == [3.0, 1.0, 3.0]


def test_frame_head_readout_pools_the_frame_sigmoids_as_documented(monkeypatch):
    """benchmarks/frame_head_readout.py: the tag head's score is the mean of the chunks'
    sigmoids; the frame head's the mean (or maximum) over positions, then the mean over the
    16 evaluation chunks (NumPy float64 here)."""
    import tagger_jax.datasets
    from benchmarks import frame_head_readout as fhr
    from tagger_jax import chunking

    rng = np.random.default_rng(2)
    records = [{"mel": rng.normal(-30, 10, (96, 300)).astype(np.float32),
                "tags": np.array([1, 0, 1])} for _ in range(3)]
    w = rng.normal(0, 0.05, (96, 3))

    def apply(variables, x, return_frame_logits):  # (chunks, 96, T) -> tag and frame logits
        frame = jnp.einsum("cmt,mk->ctk", x, jnp.asarray(w, jnp.float32))
        return frame.mean(axis=1) * 2.0, frame

    cfg = types.SimpleNamespace(data=types.SimpleNamespace(
        name="d", data_dir="x", builder_config=""), features=types.SimpleNamespace(chunk_frames=64))
    loaded = types.SimpleNamespace(model=types.SimpleNamespace(apply=apply), variables={},
                                   config=cfg)
    calls = []
    monkeypatch.setattr(tagger_jax.datasets, "load_split",
                        lambda *a: calls.append(a) or (records, ("a", "b", "c")))
    labels, scores = fhr.split_scores(loaded, "test")
    fhr.split_scores(loaded, "test", "elsewhere")  # --data-dir (a trial's copy of the data)
    assert [c[2] for c in calls] == ["x", "elsewhere"]
    np.testing.assert_array_equal(labels, [[1, 0, 1]] * 3)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for i, r in enumerate(records):
        frame = np.einsum("cmt,mk->ctk", chunking.eval_chunks(r["mel"], 64).astype(np.float64), w)
        assert chunking.eval_chunks(r["mel"], 64).shape[0] == 16
        np.testing.assert_allclose(scores[fhr.READOUTS[0]][i], sig(2 * frame.mean(1)).mean(0),
                                   rtol=1e-4)
        np.testing.assert_allclose(scores[fhr.READOUTS[1]][i], sig(frame).mean((0, 1)), rtol=1e-4)
        np.testing.assert_allclose(scores[fhr.READOUTS[2]][i], sig(frame).max(1).mean(0),
                                   rtol=1e-4)
