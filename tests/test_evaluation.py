"""Evaluation: metrics against scikit-learn, chunk/window averaging, reports, an end-to-end run."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tagger_jax import evaluation as ev

TAGS = ("rock", "piano", "vocal", "quiet", "choir")


# ----------------------------------------------------------------------------------------------
# Metrics.

def test_metrics_equal_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 5)) < [0.05, 0.2, 0.5, 0.7, 0.1]).astype(np.float32)
    # Ties (rounded scores) exercise the tie handling of both metrics.
    probs = np.round(0.3 * labels + rng.random(labels.shape), 2).astype(np.float32)
    m = ev.tag_metrics(probs, labels, TAGS)
    for k, row in enumerate(m["per_tag"]):
        assert row["tag"] == TAGS[k]
        assert row["positives"] == int(labels[:, k].sum())
        assert row["roc_auc"] == pytest.approx(roc_auc_score(labels[:, k], probs[:, k]), abs=1e-12)
        assert row["pr_auc"] == pytest.approx(
            average_precision_score(labels[:, k], probs[:, k]), abs=1e-12)
    assert m["roc_auc_mean"] == pytest.approx(roc_auc_score(labels, probs, average="macro"),
                                              abs=1e-12)
    assert m["pr_auc_mean"] == pytest.approx(
        average_precision_score(labels, probs, average="macro"), abs=1e-12)
    assert (m["num_clips"], m["num_tags"], m["num_excluded"]) == (300, 5, 0)
    assert 0.5 < m["roc_auc_mean"] < 1.0  # informative scores, not chance


def test_metrics_hand_computed():
    # Ranking by score: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-). ROC-AUC = 3 of 4 positive-negative
    # pairs ordered correctly = 0.75. AP = mean precision at each positive = (1/1 + 2/3) / 2.
    labels = np.array([[0, 1], [0, 0], [1, 1], [1, 0]])
    probs = np.array([[0.1, 0.9], [0.4, 0.2], [0.35, 0.7], [0.8, 0.6]])
    m = ev.tag_metrics(probs, labels, ["a", "b"])
    assert m["per_tag"][0]["roc_auc"] == pytest.approx(0.75, abs=1e-15)
    assert m["per_tag"][0]["pr_auc"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-15)
    # Tag b is ranked perfectly: both metrics are 1.
    assert m["per_tag"][1]["roc_auc"] == 1.0 and m["per_tag"][1]["pr_auc"] == 1.0
    assert m["roc_auc_mean"] == pytest.approx(0.875, abs=1e-15)
    assert m["pr_auc_mean"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2, abs=1e-15)


def test_single_valued_tags_are_undefined_and_excluded():
    rng = np.random.default_rng(1)
    labels = (rng.random((50, 5)) < 0.4).astype(np.int64)
    labels[:, 1] = 0  # no positives
    labels[:, 3] = 1  # no negatives
    probs = rng.random(labels.shape)
    with pytest.warns(ev.UndefinedMetricWarning, match="2 of 5 tags"):
        m = ev.tag_metrics(probs, labels, TAGS)
    assert m["excluded_tags"] == ["piano", "quiet"] and m["num_excluded"] == 2
    for k in (1, 3):
        assert m["per_tag"][k]["roc_auc"] is None and m["per_tag"][k]["pr_auc"] is None
    keep = [0, 2, 4]
    assert m["roc_auc_mean"] == pytest.approx(
        roc_auc_score(labels[:, keep], probs[:, keep], average="macro"), abs=1e-12)
    assert m["pr_auc_mean"] == pytest.approx(
        average_precision_score(labels[:, keep], probs[:, keep], average="macro"), abs=1e-12)
    json.dumps(m, allow_nan=False)  # JSON-ready: None, not NaN


def test_all_tags_undefined_gives_no_means():
    with pytest.warns(ev.UndefinedMetricWarning):
        m = ev.tag_metrics(np.full((3, 2), 0.5), np.zeros((3, 2)), ["a", "b"])
    assert m["roc_auc_mean"] is None and m["pr_auc_mean"] is None


@pytest.mark.parametrize("probs, labels, names, match", [
    (np.full((4, 2), np.nan), np.eye(4, 2), ["a", "b"], "NaN"),
    (np.full((4, 2), 0.5), np.full((4, 2), 0.5), ["a", "b"], "0 or 1"),
    (np.full((4, 2), 0.5), np.eye(4, 3), ["a", "b"], "must both be"),
    (np.full((4, 2), 0.5), np.eye(4, 2), ["a"], "tag names"),
    (np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"], "no clips"),
])
def test_metric_input_errors(probs, labels, names, match):
    with pytest.raises(ev.EvaluationError, match=match):
        ev.tag_metrics(probs, labels, names)


# ----------------------------------------------------------------------------------------------
# Prediction: averaging of sigmoid outputs per clip.

class FakeTagger(nn.Module):
    """Logits = scale * x[:, 0, :num_tags]: each window's output is readable from its input."""

    num_tags: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        scale = self.param("scale", nn.initializers.ones, (1,))
        return scale * x[:, 0, :self.num_tags]


@pytest.fixture(scope="module")
def fake():
    model = FakeTagger()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 8)))
    return model, variables, ev.make_predict_fn(model)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def test_make_predict_fn_is_sigmoid_of_logits(fake):
    model, variables, predict = fake
    x = np.random.default_rng(0).normal(size=(6, 2, 8)).astype(np.float32)
    out = np.asarray(predict(variables, x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _sigmoid(x[:, 0, :3]), rtol=1e-6, atol=1e-7)


def _chunk_batches(windows, labels, order, clips_per_batch, num_chunks):
    """Eval-pipeline-shaped batches: clip-major windows, the last batch padded with junk."""
    batches = []
    for b in range(0, len(order), clips_per_batch):
        ids = order[b:b + clips_per_batch]
        pad = clips_per_batch - len(ids)
        x = np.concatenate([windows[i] for i in ids]
                           + [np.full((num_chunks, 2, 8), 1e3, np.float32)] * pad)
        batches.append({
            "x": x,
            "y": np.concatenate([labels[ids], np.ones((pad, labels.shape[1]), np.float32)]),
            "clip_index": np.array(list(ids) + [-1] * pad, np.int32),
            "mask": np.array([True] * len(ids) + [False] * pad)})
    return batches


def test_chunk_mode_averages_sigmoids_drops_padding_and_sorts(fake):
    model, variables, predict = fake
    rng = np.random.default_rng(2)
    num_clips, num_chunks = 5, 4
    windows = rng.normal(size=(num_clips, num_chunks, 2, 8)).astype(np.float32) * 3
    labels = (rng.random((num_clips, 3)) < 0.5).astype(np.float32)
    batches = _chunk_batches(windows, labels, [3, 0, 4, 1, 2], clips_per_batch=2,
                             num_chunks=num_chunks)
    probs, got_labels, clip_index = ev.predict_clips(model, variables, batches, num_chunks)
    # The protocol: the mean of the chunks' sigmoid outputs (not the sigmoid of mean logits).
    expected = _sigmoid(windows[:, :, 0, :3]).mean(axis=1)
    np.testing.assert_array_equal(clip_index, np.arange(num_clips))
    np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(probs, _sigmoid(windows[:, :, 0, :3].mean(axis=1)), atol=1e-3)
    np.testing.assert_array_equal(got_labels, labels)
    # Same result with a caller-supplied predict function and placement function.
    probs2, _, _ = ev.predict_clips(None, variables, batches, num_chunks, predict_fn=predict,
                                    put=jnp.asarray)
    np.testing.assert_allclose(probs2, probs, rtol=1e-7)


def test_full_track_mode_segment_means_over_batches(fake):
    model, variables, _ = fake
    rng = np.random.default_rng(3)
    # Track 7 has 5 windows spread over two batches, track 2 has 1, track 4 has 3; 2 padding rows.
    owner = np.array([7, 7, 7, 2, 7, 7, 4, 4, 4, -1, -1, -1])[:12]
    x = rng.normal(size=(12, 2, 8)).astype(np.float32)
    tags = {7: [1, 0, 0], 2: [0, 1, 1], 4: [1, 1, 0], -1: [0, 0, 0]}
    y = np.array([tags[int(o)] for o in owner], np.float32)
    mask = owner >= 0
    batches = [{"x": x[i:i + 4], "y": y[i:i + 4], "clip_index": owner[i:i + 4].astype(np.int32),
                "mask": mask[i:i + 4]} for i in range(0, 12, 4)]
    probs, labels, clip_index = ev.predict_clips(model, variables, batches, num_chunks=16)
    np.testing.assert_array_equal(clip_index, [2, 4, 7])
    sig = _sigmoid(x[:, 0, :3])
    expected = np.stack([sig[owner == t].mean(axis=0) for t in (2, 4, 7)])
    np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(labels, [tags[2], tags[4], tags[7]])


def test_predict_clips_rejects_malformed_batches(fake):
    model, variables, _ = fake
    x = np.zeros((8, 2, 8), np.float32)
    ok = {"x": x, "y": np.zeros((2, 3)), "clip_index": np.array([0, 1]), "mask": np.ones(2, bool)}
    with pytest.raises(ev.EvaluationError, match="more than one"):
        ev.predict_clips(model, variables, [ok, ok], num_chunks=4)
    with pytest.raises(ev.EvaluationError, match="windows per clip"):
        ev.predict_clips(model, variables, [ok], num_chunks=3)
    bad_labels = {"x": x[:2], "y": np.array([[0, 0, 1], [1, 0, 0]]),
                  "clip_index": np.array([5, 5]), "mask": np.ones(2, bool)}
    with pytest.raises(ev.EvaluationError, match="different label rows"):
        ev.predict_clips(model, variables, [bad_labels], num_chunks=4)
    with pytest.raises(ev.EvaluationError, match="no batches"):
        ev.predict_clips(model, variables, [], num_chunks=4)
    padding = dict(ok, clip_index=np.array([-1, -1]))
    with pytest.raises(ev.EvaluationError, match="padding"):
        ev.predict_clips(model, variables, [padding], num_chunks=4)


def test_predict_on_a_batch_sharded_over_a_mesh():
    """A batch split over 4 (host-simulated) devices: same clip probabilities, sharded output."""
    code = textwrap.dedent("""
        import numpy as np, jax, jax.numpy as jnp, flax.linen as nn
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from tagger_jax import evaluation as ev
        assert jax.device_count() == 4, jax.devices()

        class Fake(nn.Module):
            @nn.compact
            def __call__(self, x, train=False):
                return nn.Dense(3)(x.reshape(x.shape[0], -1))

        model = Fake()
        variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 8)))
        mesh = Mesh(np.array(jax.devices()), ("data",))
        rep = jax.device_put(variables, NamedSharding(mesh, P()))
        put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
        predict = ev.make_predict_fn(model)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(16, 2, 8)).astype(np.float32)
        out = predict(rep, put(x))
        assert out.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 2), out.sharding
        batch = {"x": x, "y": np.eye(2, 3), "clip_index": np.array([1, 0]),
                 "mask": np.ones(2, bool)}
        a = ev.predict_clips(model, rep, [batch], 8, put=put)[0]
        b = ev.predict_clips(model, variables, [batch], 8)[0]
        np.testing.assert_allclose(a, b, rtol=1e-6)
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# The 16 chunk positions (the input pipeline's; skipped if it is not there).

def _frame_coded_record(length: int, num_tags: int = 3) -> dict:
    mel = np.broadcast_to(np.arange(length, dtype=np.float32), (96, length)).copy()
    return {"mel": mel, "tags": np.eye(num_tags, dtype=np.float32)[0]}


def test_sixteen_chunk_starts_follow_the_reference_formula():
    chunking = pytest.importorskip("tagger_jax.chunking")
    for length in (1813, 256, 271, 300, 2000, 5000):
        expected = np.arange(16) * ((length - 256) // 16)
        np.testing.assert_array_equal(chunking.eval_chunk_starts(length, 256, 16), expected)
    input_pipeline = pytest.importorskip("tagger_jax.input_pipeline")
    lengths = [1813, 400, 2000]
    source = [_frame_coded_record(n) for n in lengths]
    batches = list(input_pipeline.eval_batches(source, clips_per_batch=2, num_chunks=16,
                                               chunk_frames=256))
    seen = {}
    for batch in batches:
        x = batch["x"].reshape(len(batch["clip_index"]), 16, 96, 256)
        for c, idx in enumerate(batch["clip_index"]):
            if batch["mask"][c]:
                seen[int(idx)] = x[c, :, 0, 0]  # frame value = frame index
                # Every chunk is 256 consecutive frames.
                np.testing.assert_array_equal(x[c, :, 5, :] - x[c, :, 5, :1],
                                              np.tile(np.arange(256), (16, 1)))
    for idx, n in enumerate(lengths):
        np.testing.assert_array_equal(seen[idx], np.arange(16) * ((n - 256) // 16))


# ----------------------------------------------------------------------------------------------
# Reports.

def _metrics_with_undefined():
    rng = np.random.default_rng(4)
    labels = (rng.random((40, 5)) < 0.5).astype(int)
    labels[:, 4] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)
        return ev.tag_metrics(rng.random((40, 5)), labels, TAGS)


def test_report_files(tmp_path):
    m = _metrics_with_undefined()
    paths = ev.write_report(m, tmp_path / "out", title="test", extra={"split": "test"})
    data = json.loads(paths["json"].read_text())
    assert data["split"] == "test" and data["roc_auc_mean"] == m["roc_auc_mean"]
    assert data["per_tag"][4]["roc_auc"] is None
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["tag"] for r in rows] == list(TAGS)
    assert float(rows[0]["roc_auc"]) == m["per_tag"][0]["roc_auc"]  # full precision
    assert float(rows[2]["pr_auc"]) == m["per_tag"][2]["pr_auc"]
    assert rows[4]["roc_auc"] == "" and int(rows[4]["positives"]) == 0
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_table_lists_every_tag_and_the_means():
    m = _metrics_with_undefined()
    table = ev.format_table(m)
    lines = table.splitlines()
    for row in m["per_tag"]:
        line = next(l for l in lines if l.split()[0] == row["tag"])
        assert line.split()[-1] == str(row["positives"])
        if row["roc_auc"] is not None:
            assert f"{row['roc_auc']:.4f}" in line
    assert "n/a" in table and "choir" in table.splitlines()[-1]
    assert f"{m['roc_auc_mean']:.4f}" in next(l for l in lines if l.startswith("mean"))


def test_tag_mismatch_is_refused():
    ev.check_tags(TAGS, list(TAGS), "model", "ds")
    with pytest.raises(ev.EvaluationError, match="different order.*position 1"):
        ev.check_tags(TAGS, ("rock", "vocal", "piano", "quiet", "choir"), "model", "ds")
    with pytest.raises(ev.EvaluationError, match=r"only in the model: \['choir'\]"):
        ev.check_tags(TAGS, TAGS[:4] + ("organ",), "model", "ds")


# ----------------------------------------------------------------------------------------------
# End to end: one tiny model (compiled once for the whole module), saved with save_model; an
# in-memory split through the CLI entry point, then a real TFDS build of `synthetic_tags`.

NUM_CHUNKS = 4  # chunks per clip in these tests: 2 clips x 4 chunks = 8 rows, also the full-mode
CLIPS_PER_BATCH = 2  # batch of 8 windows, so one compiled shape serves every run here


def _tiny_config():
    from tagger_jax.config_base import base_config

    config = base_config()
    config.model.update(conv_channels=1, attention_channels=16, attention_heads=2,
                        intermediate=16, attention_layers=1)
    config.train.eval_batch_size = CLIPS_PER_BATCH
    config.features.eval_chunks = NUM_CHUNKS
    return config


@pytest.fixture(scope="module")
def synth_tags():
    return pytest.importorskip("tagger_jax.synth").SYNTH_TAGS


@pytest.fixture(scope="module")
def tiny_variables(synth_tags):
    from tagger_jax.models import build_model

    model = build_model(_tiny_config().model, len(synth_tags))
    # Shapes only (model.init compiles slowly on CPU), then random weights and unit variances.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 96, 256))))
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: np.ones(s.shape, s.dtype) if path[-1].key == "var"
        else (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def _tiny_split(tags, num_clips=5, seed=5):
    rng = np.random.default_rng(seed)
    source = []
    for i in range(num_clips):
        multi_hot = np.zeros(len(tags), np.float32)
        multi_hot[[i % 3, 3 + i % 2]] = 1  # tags 0-4 have positives and negatives, 5+ do not
        source.append({"mel": rng.normal(size=(96, 300 + 37 * i)).astype(np.float16),
                       "tags": multi_hot})
    return source


def test_end_to_end_matches_direct_computation(synth_tags, tiny_variables, tmp_path,
                                               monkeypatch, capsys):
    datasets = pytest.importorskip("tagger_jax.datasets")
    pytest.importorskip("tagger_jax.input_pipeline")
    from tagger_jax import checkpoint
    from tagger_jax.commands import evaluate as command

    config = _tiny_config()
    config.data.name = "tiny_in_memory"
    workdir = tmp_path / "run"
    checkpoint.save_model(workdir / "best_model", tiny_variables, config, synth_tags)
    source = _tiny_split(synth_tags)
    calls = []

    def load_split(name, split, data_dir, builder_config=None):
        calls.append((name, split))
        return source, synth_tags

    monkeypatch.setattr(datasets, "load_split", load_split)
    # A training workdir holding best_model/, with the config's defaults filled in.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)
        assert command.main(["--workdir", str(workdir), "--out", str(tmp_path / "chunks")]) == 0
    assert calls == [("tiny_in_memory", "test")]
    out = capsys.readouterr().out
    assert "ROC-AUC" in out and synth_tags[-1] in out and "n/a" in out
    data = json.loads((tmp_path / "chunks" / "metrics.json").read_text())
    assert data["num_clips"] == 5 and data["mode"] == "chunks" and data["num_chunks"] == NUM_CHUNKS
    assert data["num_excluded"] == len(synth_tags) - 5

    # Recomputation: chunks placed by the reference formula, one model call per clip (padded to
    # the compiled batch of 8), the mean of the sigmoids, scikit-learn's ROC-AUC.
    loaded = checkpoint.load_model(workdir)
    predict = ev.make_predict_fn(loaded.model)
    rows = []
    for rec in source:
        mel = rec["mel"].astype(np.float32)
        starts = np.arange(NUM_CHUNKS) * ((mel.shape[1] - 256) // NUM_CHUNKS)
        x = np.stack([mel[:, s:s + 256] for s in starts])
        x = np.concatenate([x, np.zeros_like(x)])
        rows.append(np.asarray(predict(loaded.variables, x))[:NUM_CHUNKS].mean(axis=0))
    expected = np.stack(rows)
    saved = np.load(tmp_path / "chunks" / "predictions.npz")
    np.testing.assert_allclose(saved["probs"], expected, rtol=1e-6, atol=1e-7)
    labels = np.stack([r["tags"] for r in source])
    for k, row in enumerate(data["per_tag"][:5]):
        assert row["roc_auc"] == pytest.approx(roc_auc_score(labels[:, k], expected[:, k]),
                                               abs=1e-6)
    for name in ("metrics.csv", "metrics.png"):
        assert (tmp_path / "chunks" / name).stat().st_size > 0

    # Full-track mode on the same split: 256-frame windows every 2.048 s (128 frames) plus one at
    # the end.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)
        assert command.main(["--checkpoint", str(workdir / "best_model"), "--mode", "full",
                             "--hop", "2.048", "--out", str(tmp_path / "full")]) == 0
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert full["mode"] == "full" and full["num_clips"] == 5 and full["hop"] == 128
    assert full["hop_s"] == 2.048  # --hop is in seconds: 2.048 s = 128 frames of 16 ms
    mel = source[4]["mel"].astype(np.float32)  # 448 frames: windows at 0, 128 and 192
    x = np.stack([mel[:, s:s + 256] for s in (0, 128, 192)])
    x = np.concatenate([x, np.zeros((5, 96, 256), np.float32)])
    want = np.asarray(predict(loaded.variables, x))[:3].mean(axis=0)
    np.testing.assert_allclose(np.load(tmp_path / "full" / "predictions.npz")["probs"][4], want,
                               rtol=1e-6, atol=1e-7)

    # A dataset with other tags is refused with a clear message and exit status 2.
    other = ("jazz",) + tuple(synth_tags[1:])
    monkeypatch.setattr(datasets, "load_split", lambda *a, **k: (source, other))
    assert command.main(["--checkpoint", str(workdir), "--out", str(tmp_path / "x")]) == 2
    assert "do not match" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_end_to_end_on_a_built_tfds_split(synth_tags, tiny_variables, tmp_path):
    """The real data path: a tiny `synthetic_tags` build, read back through TFDS and grain."""
    datasets = pytest.importorskip("tagger_jax.datasets")
    pytest.importorskip("tagger_jax.input_pipeline")
    from tagger_jax import checkpoint

    data_config = datasets.SyntheticConfig(name="tiny_eval", num_train=1, num_validation=1,
                                           num_test=6, duration_s=5.0)
    datasets.build("synthetic_tags", tmp_path / "tfds", data_config, num_workers=1)
    config = _tiny_config()
    config.data.update(name="synthetic_tags", data_dir=str(tmp_path / "tfds"))
    checkpoint.save_model(tmp_path / "model", tiny_variables, config, synth_tags)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)  # 6 clips: some tags absent
        result = ev.evaluate_checkpoint(tmp_path / "model", builder_config=data_config,
                                        print_fn=None)
    out = tmp_path / "model" / "evaluation" / "synthetic_tags_test_chunks"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["num_clips"] == result["num_clips"] == 6
    assert saved["builder_config"] == "tiny_eval" and saved["num_chunks"] == NUM_CHUNKS
    assert [r["tag"] for r in saved["per_tag"]] == list(synth_tags)
    predictions = np.load(out / "predictions.npz")
    np.testing.assert_array_equal(predictions["clip_index"], np.arange(6))
    defined = [r for r in saved["per_tag"] if r["roc_auc"] is not None]
    assert len(defined) == len(synth_tags) - saved["num_excluded"] > 0
    k = synth_tags.index(defined[0]["tag"])
    assert defined[0]["roc_auc"] == pytest.approx(
        roc_auc_score(predictions["labels"][:, k], predictions["probs"][:, k]), abs=1e-12)
