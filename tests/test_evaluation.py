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
from tagger_jax import inference

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
# Prediction: a split's records through the inference path, sigmoid outputs averaged per clip.

class FakeTagger(nn.Module):
    """Logits = scale * x[:, 0, :num_tags]: each window's output is readable from its input."""

    num_tags: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        scale = self.param("scale", nn.initializers.ones, (1,))
        return scale * x[:, 0, :self.num_tags]


CHUNK = 8  # FakeTagger's windows: (2, 8)


@pytest.fixture(scope="module")
def fake():
    model = FakeTagger()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 2, CHUNK)))
    return model, variables, inference.make_predict_fn(model)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def _geom():
    from tagger_jax.models import geometry

    return geometry({"architecture": "pons_won"}, 16000, 256, CHUNK)  # chunk = 8 frames


def _records(lengths, seed):
    rng = np.random.default_rng(seed)
    return [{"mel": (3 * rng.normal(size=(2, n))).astype(np.float16),
             "tags": (rng.random(3) < 0.5).astype(np.uint8)} for n in lengths]


def _predict(fake, source, plan, batch_size=3, **kw):
    model, variables, predict = fake
    packer = inference.Packer(lambda x: {"probabilities": predict(variables, x)}, batch_size)
    items = inference.source_inputs(source, "mel", "toy", "test")
    return ev.predict_split(items, plan, _geom(), packer, 3, **kw)


def test_make_predict_fn_is_sigmoid_of_logits(fake):
    model, variables, predict = fake
    x = np.random.default_rng(0).normal(size=(6, 2, CHUNK)).astype(np.float32)
    out = np.asarray(predict(variables, x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _sigmoid(x[:, 0, :3]), rtol=1e-6, atol=1e-7)


def test_paper_windows_average_sigmoids_per_clip(fake):
    """The protocol: the mean of the sigmoids of chunks at i * ((T - chunk) // n) (written out
    here independently), not the sigmoid of the mean logits; clips sorted by record index."""
    num_chunks = 4
    source = _records([40, 8, 23, 5, 61], seed=2)  # 8: one chunk; 5: shorter, repeated
    padded = []  # evaluate's note counts them (tag warned, evaluate said nothing)
    probs, labels, index = _predict(fake, source, inference.WindowPlan(inference.PAPER,
                                                                       num_chunks=num_chunks),
                                    padded=padded)
    assert padded == ["toy:test[3]"]
    assert probs.dtype == np.float64
    np.testing.assert_array_equal(index, np.arange(5))
    for c, rec in enumerate(source):
        mel = rec["mel"].astype(np.float64)
        if mel.shape[1] < CHUNK:
            mel = mel[:, np.arange(CHUNK) % mel.shape[1]]
        hop = (mel.shape[1] - CHUNK) // num_chunks
        first_rows = np.stack([mel[0, i * hop:i * hop + 3] for i in range(num_chunks)])
        np.testing.assert_allclose(probs[c], _sigmoid(first_rows).mean(axis=0), rtol=1e-6,
                                   atol=1e-7)
        if c == 0:
            assert not np.allclose(probs[c], _sigmoid(first_rows.mean(axis=0)), atol=1e-3)
        np.testing.assert_array_equal(labels[c], rec["tags"])


def test_cover_windows_average_over_the_whole_track(fake):
    source = _records([40, 8, 23], seed=3)
    probs, _, _ = _predict(fake, source, inference.WindowPlan(inference.COVER, 5 * 256 / 16000))
    for c, rec in enumerate(source):
        mel = rec["mel"].astype(np.float64)
        T = mel.shape[1]
        starts = sorted(set(list(range(0, T - CHUNK + 1, 5)) + [T - CHUNK]))
        rows = np.stack([mel[0, s:s + 3] for s in starts])
        np.testing.assert_allclose(probs[c], _sigmoid(rows).mean(axis=0), rtol=1e-6, atol=1e-7)


def test_batch_size_does_not_change_clip_probabilities(fake):
    source = _records([40, 8, 23, 5, 61, 17], seed=4)
    plan = inference.WindowPlan(inference.PAPER, num_chunks=4)
    a = _predict(fake, source, plan, batch_size=1)[0]
    b = _predict(fake, source, plan, batch_size=7)[0]
    np.testing.assert_allclose(a, b, rtol=1e-7)


def test_unreadable_records_are_one_error(fake):
    plan = inference.WindowPlan(inference.PAPER, num_chunks=2)
    source = _records([20, 20, 20], seed=5)
    source[1]["mel"] = source[1]["mel"][0]  # 1-D: not the model's input
    with pytest.raises(ev.EvaluationError, match=r"1 record\(s\).*toy:test\[1\]"):
        _predict(fake, source, plan)
    source = _records([20, 20], seed=5)
    del source[0]["tags"]
    with pytest.raises(ev.EvaluationError, match=r"toy:test\[0\]: record has no 'tags'"):
        _predict(fake, source, plan)
    with pytest.raises(ev.EvaluationError, match="no clips"):
        _predict(fake, [], plan)


def test_predict_split_on_a_mesh_and_in_lockstep():
    """Batches split over 4 (host-simulated) devices (as the trainer's validation does: global
    arrays, this process's rows back, lockstep padding): the same clip probabilities."""
    code = textwrap.dedent("""
        import numpy as np, jax, jax.numpy as jnp, flax.linen as nn
        from tagger_jax import evaluation as ev, inference, sharding
        from tagger_jax.models import geometry
        assert jax.device_count() == 4, jax.devices()

        class Fake(nn.Module):
            @nn.compact
            def __call__(self, x, train=False):
                return nn.Dense(3)(x.reshape(x.shape[0], -1))

        model = Fake()
        variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 8)))
        mesh = sharding.make_mesh()
        rep = sharding.replicate(variables, mesh)
        predict = inference.make_predict_fn(model)
        rng = np.random.default_rng(0)
        source = [{"mel": rng.normal(size=(2, n)).astype(np.float32),
                   "tags": np.eye(3)[n % 3]} for n in (30, 9, 41, 12, 8)]
        geom = geometry(None, 16000, 256, 8)
        plan = inference.WindowPlan(inference.PAPER, num_chunks=4)
        items = inference.source_inputs(source, "mel", "toy", "val")
        packer = inference.Packer(lambda x: {"probabilities": predict(rep, x)}, 8,
                                  put=lambda b: sharding.shard_batch(b, mesh),
                                  get=sharding.local_rows)
        a = ev.predict_split(items, plan, geom, packer, 3, lockstep_window=np.zeros((2, 8)))[0]
        plain = inference.Packer(lambda x: {"probabilities": predict(variables, x)}, 3)
        b = ev.predict_split(items, plan, geom, plain, 3)[0]
        np.testing.assert_allclose(a, b, rtol=1e-6)
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# The 16 chunk positions.

def test_sixteen_chunk_starts_follow_the_reference_formula():
    from tagger_jax import chunking

    for length in (1813, 256, 271, 300, 2000, 5000):
        expected = np.arange(16) * ((length - 256) // 16)
        np.testing.assert_array_equal(chunking.eval_chunk_starts(length, 256, 16), expected)
        np.testing.assert_array_equal(
            inference.window_starts(length, 256, windows=inference.PAPER), expected)


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


def test_unknown_dataset_tags_are_refused_and_missing_or_reordered_ones_mapped():
    assert ev.check_tags(TAGS, list(TAGS), "model", "ds") is None
    shuffled = ("rock", "vocal", "piano", "quiet", "choir")
    order = ev.check_tags(TAGS, shuffled, "model", "ds")
    assert list(np.asarray(shuffled)[order]) == list(TAGS)
    with pytest.raises(ev.EvaluationError, match=r"only in the dataset: \['organ'\]"):
        ev.check_tags(TAGS, TAGS[:4] + ("organ",), "model", "ds")
    # A dataset lacking some model tags: -1 marks them, the rest map as before.
    fewer = ("quiet", "rock", "vocal")
    order = ev.check_tags(TAGS, fewer, "model", "ds")
    assert list(order) == [1, -1, 2, 0, -1]
    with pytest.raises(ev.EvaluationError, match="do not match"):
        ev.check_tags(TAGS, ("organ",), "model", "ds")
    # Long lists say how many are left out; a tag differing only in case is pointed at.
    many = tuple(f"t{i}" for i in range(8))
    with pytest.raises(ev.EvaluationError) as e:
        ev.check_tags(TAGS + many, ("Rock", "vocal"), "model", "ds")
    assert "only in the dataset: ['Rock']" in str(e.value)
    assert "model: ['rock', 'piano', 'quiet', 'choir', 't0', ... (7 more)]" in str(e.value)
    assert "differing only in case: 'Rock' (the model has 'rock')" in str(e.value)


def _feature_warnings(stored_features, model_features) -> list[str]:
    """The warnings `_warn_on_feature_mismatch` gives for a build whose metadata holds
    `stored_features` (a stand-in for the datasets module: only get_builder is used)."""
    import types

    builder = types.SimpleNamespace(info=types.SimpleNamespace(
        metadata={"tags": list(TAGS), "features": stored_features}))
    fake_datasets = types.SimpleNamespace(get_builder=lambda name, data_dir, config: builder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev._warn_on_feature_mismatch(fake_datasets, "ds", "/data", None, model_features)
    return [str(w.message) for w in caught]


def test_feature_check_compares_every_mel_setting_and_skips_what_a_build_lacks():
    import dataclasses

    from ml_collections import ConfigDict

    from tagger_jax.audio import FeatureParams

    model = ConfigDict(dataclasses.asdict(FeatureParams()))  # a model's config.features
    build = FeatureParams().mel_settings()  # what a build records now
    assert _feature_warnings(build, model) == []
    # Every mel setting is compared, the STFT padding included.
    for field, other in [("sample_rate", 22050), ("n_fft", 1024), ("hop_length", 512),
                         ("n_mels", 128), ("log_scale", "power_to_db"),
                         ("stft_pad_mode", "reflect")]:
        (message,) = _feature_warnings({**build, field: other}, model)
        assert f"{field}: dataset {other!r}, model {build[field]!r}" in message, message
        assert message.startswith("ds: ") and message.count(": dataset ") == 1
    # Builds made before 'features' held only the mel settings also list chunk_frames and
    # eval_chunks (the defaults): a model reading 512-frame chunks is not a feature mismatch.
    old_build = dataclasses.asdict(FeatureParams())
    assert "chunk_frames" in old_build
    longer = ConfigDict({**dataclasses.asdict(FeatureParams()), "chunk_frames": 512,
                         "eval_chunks": 8})
    assert _feature_warnings(old_build, longer) == []
    # A setting the build does not record is unknown there: no warning, whatever the model has.
    reflect = ConfigDict({**dataclasses.asdict(FeatureParams()), "stft_pad_mode": "reflect"})
    without_pad = {k: v for k, v in build.items() if k != "stft_pad_mode"}
    assert _feature_warnings(without_pad, reflect) == []
    assert _feature_warnings({}, reflect) == []
    # A model config without the field (an older checkpoint) runs with the default, so it is
    # compared as the default.
    old_model = ConfigDict({k: v for k, v in dataclasses.asdict(FeatureParams()).items()
                            if k != "stft_pad_mode"})
    assert _feature_warnings(build, old_model) == []
    assert len(_feature_warnings({**build, "stft_pad_mode": "reflect"}, old_model)) == 1
    assert ev.feature_mismatches({**build, "n_mels": 64}, FeatureParams()) == [
        "n_mels: dataset 64, model 96"]


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
    predict = inference.make_predict_fn(loaded.model)
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
    with warnings.catch_warnings():  # without --hop: one window, recorded in steps (was null)
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)
        assert command.main(["--checkpoint", str(workdir / "best_model"), "--mode", "full",
                             "--out", str(tmp_path / "full_default")]) == 0
    default = json.loads((tmp_path / "full_default" / "metrics.json").read_text())
    assert default["hop_s"] is None and default["hop"] == 256
    mel = source[4]["mel"].astype(np.float32)  # 448 frames: windows at 0, 128 and 192
    x = np.stack([mel[:, s:s + 256] for s in (0, 128, 192)])
    x = np.concatenate([x, np.zeros((5, 96, 256), np.float32)])
    want = np.asarray(predict(loaded.variables, x))[:3].mean(axis=0)
    np.testing.assert_allclose(np.load(tmp_path / "full" / "predictions.npz")["probs"][4], want,
                               rtol=1e-6, atol=1e-7)
    # Without --out, runs with other windows go to folders of their own (a new user's runs
    # with two hops overwrote one folder).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)
        assert command.main(["--checkpoint", str(workdir / "best_model"), "--mode", "full",
                             "--hop", "2.048"]) == 0
        assert command.main(["--checkpoint", str(workdir / "best_model"),
                             "--num-chunks", "3"]) == 0
    made = sorted(p.name for p in (workdir / "best_model" / "evaluation").iterdir())
    assert "tiny_in_memory_test_full_hop2.048" in made and "tiny_in_memory_test_chunks3" in made

    # The default folder (WORKDIR/evaluation/<dataset>_<split>_<mode>) is locked as --out is:
    # a second evaluation into it is refused at once, naming the holder, and writes nothing.
    default = workdir / "evaluation" / "tiny_in_memory_test_chunks"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tagger_jax import outputs\n"
         "with outputs.exclusive(sys.argv[1], 'test', directory=False):\n"
         "    print('held', flush=True); time.sleep(60)", str(default)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert command.main(["--workdir", str(workdir)]) == 5
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(default) in err and f"pid {holder.pid}" in err, err
        assert not default.exists()
    finally:
        holder.kill()
        holder.wait()

    # A dataset with other tags is refused with a clear message and exit status 2.
    other = ("jazz",) + tuple(synth_tags[1:])
    monkeypatch.setattr(datasets, "load_split", lambda *a, **k: (source, other))
    assert command.main(["--checkpoint", str(workdir), "--out", str(tmp_path / "x")]) == 2
    assert "do not match" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_end_to_end_on_a_built_tfds_split(synth_tags, tiny_variables, tmp_path, capsys,
                                          monkeypatch):
    """The real data path: a tiny `synthetic_tags` build, read back through TFDS and grain.
    While the clips are predicted, the build's readers' lock is held: a rebuild refuses."""
    datasets = pytest.importorskip("tagger_jax.datasets")
    pytest.importorskip("tagger_jax.input_pipeline")
    from tagger_jax import checkpoint

    data_config = datasets.SyntheticConfig(name="tiny_eval", num_train=1, num_validation=1,
                                           num_test=6, duration_s=5.0)
    datasets.build("synthetic_tags", tmp_path / "tfds", data_config, num_workers=1)
    config = _tiny_config()
    config.data.update(name="synthetic_tags", data_dir=str(tmp_path / "tfds"))
    checkpoint.save_model(tmp_path / "model", tiny_variables, config, synth_tags)
    # A builder config other than the model's (it trained on the default) gets its own folder.
    out = tmp_path / "model" / "evaluation" / "synthetic_tags-tiny_eval_test_chunks"

    # `evaluate --baseline`'s preflight: its training split is opened before any prediction, so
    # a missing one fails at once and nothing is written.
    from tagger_jax import baseline

    seen = []

    def preflight(resolved):
        seen.append(resolved)
        baseline.open_train_split({**resolved, "dataset": "no_such_dataset"}, "dataset")

    with pytest.raises(ev.EvaluationError, match="baseline: cannot open the evaluated dataset.s "
                                                 "train split no_such_dataset/train"):
        ev.evaluate_checkpoint(tmp_path / "model", builder_config=data_config, print_fn=None,
                               preflight=preflight)
    assert not out.exists()
    assert seen[0]["dataset"] == "synthetic_tags" and seen[0]["split"] == "test"
    assert seen[0]["builder_config"] == "tiny_eval"
    assert seen[0]["model_data"]["name"] == "synthetic_tags"

    from tagger_jax import outputs

    refused = []

    def try_rebuild():  # while a run reads the build
        build = datasets.get_builder("synthetic_tags", tmp_path / "tfds", data_config).data_dir
        with pytest.raises(outputs.BusyError, match="--overwrite") as info:
            datasets.build("synthetic_tags", tmp_path / "tfds", data_config, overwrite=True)
        refused.append(str(info.value).startswith(f"{build}: the build synthetic_tags/tiny_eval"))

    def predict_split(*args, **kwargs):
        try_rebuild()
        return predict(*args, **kwargs)

    predict = ev.predict_split
    monkeypatch.setattr(ev, "predict_split", predict_split)
    out.mkdir(parents=True)
    (out / "baseline.json").write_text("{}")  # an earlier run's, of other data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)  # 6 clips: some tags absent
        result = ev.evaluate_checkpoint(tmp_path / "model", builder_config=data_config,
                                        print_fn=None)
    assert refused == [True]
    monkeypatch.setattr(ev, "predict_split", predict)
    assert not (out / "baseline.json").exists()
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

    # From a new user's trial: --baseline-train without --baseline was ignored, --out wrote into
    # any folder (an unrelated checkout's metrics.json could be replaced), and the closing line
    # did not name predictions.npz.
    from tagger_jax import cli, errors

    argv = ["evaluate", "--checkpoint", str(tmp_path / "model"), "--builder-config", "tiny_eval",
            "--no-progress"]
    assert cli.main(argv + ["--baseline-train", "model"]) == errors.USAGE
    assert "--baseline-train applies with --baseline only" in capsys.readouterr().err
    other = tmp_path / "checkout"
    other.mkdir()
    (other / "README.md").write_text("someone's files")
    assert cli.main(argv + ["--out", str(other)]) == errors.OUTPUT
    assert (f"error: {other}: exists and holds other files than an evaluation's (e.g. "
            "README.md)") in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["README.md"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)
        assert cli.main(argv + ["--out", str(tmp_path / "new")]) == 0
        assert f"{tmp_path / 'new' / 'predictions.npz'})" in capsys.readouterr().out
        assert cli.main(argv + ["--out", str(tmp_path / "new")]) == 0  # an evaluation's: again
    # An interrupt says what is written: nothing while the split is scored (a trial read
    # "finished results are kept" and found no folder), the model's report during the baseline.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ev, "predict_split", interrupted)
        assert cli.main(argv + ["--out", str(tmp_path / "stopped")]) == errors.INTERRUPTED
        assert capsys.readouterr().err.strip().endswith(
            "interrupted; nothing written: the report is written once the whole split is "
            "scored; run it again to start over")
        assert not (tmp_path / "stopped").exists()
        m.setattr(ev, "predict_split", predict)
        m.setattr(baseline, "report_beside", interrupted)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ev.UndefinedMetricWarning)
            assert cli.main(argv + ["--out", str(tmp_path / "new"), "--baseline"]) == \
                errors.INTERRUPTED
        assert capsys.readouterr().err.strip().endswith(
            f"interrupted; the model's report is in {tmp_path / 'new'}; the baseline beside it "
            "was not written (run with --baseline again)")

    # embed and explain --dataset hold the build's readers' lock while they run, too.
    from tagger_jax import embedding
    from tagger_jax.explain import runner

    for module, name in ((embedding, "embed_inputs"), (runner, "explain_inputs")):
        run = getattr(module, name)

        def checked(*args, _run=run, **kwargs):
            try_rebuild()
            return _run(*args, **kwargs)

        monkeypatch.setattr(module, name, checked)
    refused.clear()
    for command in ("embed", "explain"):
        assert cli.main([command, "--checkpoint", str(tmp_path / "model"), "--dataset",
                         "synthetic_tags", "--builder-config", "tiny_eval", "--split", "test",
                         "--limit", "1", "--out", str(tmp_path / command), "--no-progress"]) == 0
    assert refused == [True, True]

    # evaluate --baseline reads the train and evaluated splits after the model's predictions:
    # it holds their readers' lock too.
    class Fitted(Exception):
        pass

    def fit_and_score(*args, **kwargs):
        try_rebuild()
        raise Fitted

    monkeypatch.setattr(baseline, "fit_and_score", fit_and_score)
    refused.clear()
    with pytest.raises(Fitted):
        baseline.report_beside(result, print_fn=None, progress=False)
    assert refused == [True]


def test_evaluate_through_the_inference_path_equals_numpy_and_sklearn(tmp_path, monkeypatch,
                                                                       capfd):
    """`evaluate_checkpoint` (dataset records -> inference windows -> packed batches -> the one
    predict function) against a direct computation: the model applied to each window alone,
    the mean of the sigmoids in float64 NumPy, scikit-learn's ROC-AUC per tag."""
    from model_helpers import save_tiny_model
    from sklearn.exceptions import UndefinedMetricWarning as SkWarning

    from tagger_jax import checkpoint, datasets

    tags = ["a", "b", "c", "d"]
    model_dir = save_tiny_model(tmp_path / "model", tags)
    rng = np.random.default_rng(7)
    source = [{"mel": rng.normal(-30, 10, size=(96, n)).astype(np.float16),
               "tags": np.array([i % 2, (i // 2) % 2, i % 3 == 0, 1], np.uint8)}
              for i, n in enumerate((64, 80, 150, 40, 300, 97, 211, 64))]
    monkeypatch.setattr(datasets, "load_split", lambda *a, **k: (source, tags))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)  # tag d: all positive
        result = ev.evaluate_checkpoint(model_dir, dataset="magnatagatune", batch_size=1,
                                        out_dir=tmp_path / "out", print_fn=None)
    loaded = checkpoint.load_model(model_dir)
    expected = []
    for rec in source:
        mel = rec["mel"].astype(np.float32)
        if mel.shape[1] < 64:
            mel = mel[:, np.arange(64) % mel.shape[1]]
        hop = (mel.shape[1] - 64) // 16
        logits = [np.asarray(loaded.model.apply(loaded.variables, mel[None, :, s:s + 64]))[0]
                  for s in np.arange(16) * hop]
        expected.append(_sigmoid(np.stack(logits)).mean(axis=0))
    expected = np.stack(expected)
    labels = np.stack([r["tags"] for r in source]).astype(int)
    saved = np.load(tmp_path / "out" / "predictions.npz")
    np.testing.assert_allclose(saved["probs"], expected, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkWarning)
        per_tag = [roc_auc_score(labels[:, k], expected[:, k]) for k in range(3)]
    assert result["excluded_tags"] == ["d"]
    for k in range(3):
        assert result["per_tag"][k]["roc_auc"] == pytest.approx(per_tag[k], abs=1e-9)
    assert result["roc_auc_mean"] == pytest.approx(np.mean(per_tag), abs=1e-9)

    # The same records labelled in another tag order (an audio_folder CSV orders its tags by
    # frequency): the labels are read in the model's order, the results are the same.
    reversed_source = [{"mel": r["mel"], "tags": r["tags"][::-1].copy()} for r in source]
    monkeypatch.setattr(datasets, "load_split", lambda *a, **k: (reversed_source, tags[::-1]))
    notes = []
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)
        again = ev.evaluate_checkpoint(model_dir, dataset="magnatagatune", batch_size=1,
                                       out_dir=tmp_path / "out2", print_fn=notes.append)
    # notes on stderr; print_fn (evaluate's stdout) gets the table and the means only
    assert "note: magnatagatune lists the model's 4 tags in another order" in capfd.readouterr().err
    assert not any("note:" in n for n in notes) and notes[0].startswith("tag")
    assert [r["tag"] for r in again["per_tag"]] == tags
    for a, b in zip(again["per_tag"], result["per_tag"]):
        assert a["roc_auc"] == b["roc_auc"] and a["positives"] == b["positives"]

    # A dataset lacking the model's tag "b" (and in another order): the common tags are
    # evaluated as before, "b" is n/a with its reason, and the means are over a and c.
    fewer = [{"mel": r["mel"], "tags": r["tags"][[3, 2, 0]].copy()} for r in source]
    monkeypatch.setattr(datasets, "load_split", lambda *a, **k: (fewer, ["d", "c", "a"]))
    notes = []
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)
        third = ev.evaluate_checkpoint(model_dir, dataset="magnatagatune", batch_size=1,
                                       out_dir=tmp_path / "out3", print_fn=notes.append)
    assert [r["tag"] for r in third["per_tag"]] == tags
    b = third["per_tag"][1]
    assert (b["roc_auc"], b["pr_auc"], b["positives"]) == (None, None, None)
    assert third["excluded_tags"] == ["b", "d"] and third["num_excluded"] == 2
    assert third["excluded_reasons"] == {"b": "not in the dataset"}
    for k in (0, 2):
        assert third["per_tag"][k]["roc_auc"] == result["per_tag"][k]["roc_auc"]
    assert third["roc_auc_mean"] == pytest.approx(np.mean([per_tag[0], per_tag[2]]), abs=1e-9)
    assert capfd.readouterr().err.count("lacks 1 of the model's 4 tags: not evaluated") == 1
    table = next(n for n in notes if n.startswith("tag"))
    assert "(1 tag(s) not evaluated, not in the dataset: b)" in table
    # named once: no n/a row for b (d, a tag with one label value, keeps its row)
    assert [l.split()[0] for l in table.splitlines()[2:5]] == ["a", "c", "d"]
    saved = json.loads((tmp_path / "out3" / "metrics.json").read_text())
    assert saved["excluded_reasons"] == {"b": "not in the dataset"}
    npz = np.load(tmp_path / "out3" / "predictions.npz")
    assert list(npz["tags"]) == ["a", "c", "d"] and npz["labels"].shape == (8, 3)

    # A dataset listing a tag the model does not know ("e"): refused, pointing at
    # --common-tags; with it, e's labels are not read and a, b, c, d score as before.
    more = [{"mel": r["mel"], "tags": np.concatenate([[i % 2], r["tags"]]).astype(np.uint8)}
            for i, r in enumerate(source)]
    monkeypatch.setattr(datasets, "load_split", lambda *a, **k: (more, ["e"] + tags))
    with pytest.raises(ev.EvaluationError, match=r"only in the dataset: \['e'\].*--common-tags"):
        ev.evaluate_checkpoint(model_dir, dataset="magnatagatune", batch_size=1,
                               out_dir=tmp_path / "out4", print_fn=None)
    notes = []
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ev.UndefinedMetricWarning)
        fourth = ev.evaluate_checkpoint(model_dir, dataset="magnatagatune", batch_size=1,
                                        out_dir=tmp_path / "out4", print_fn=notes.append,
                                        common_tags=True, progress=False)
    err = capfd.readouterr().err
    assert "evaluate magnatagatune" not in err  # no bar (--no-progress)
    assert [r["roc_auc"] for r in fourth["per_tag"]] == [r["roc_auc"] for r in result["per_tag"]]
    assert fourth["ignored_dataset_tags"] == ["e"] and fourth["excluded_tags"] == ["d"]
    assert err.count("1 tag(s) the model does not know, not scored (--common-tags): e") == 1


def test_a_model_with_other_tags_is_refused_before_a_self_contained_build(
        synth_tags, tiny_variables, tmp_path):
    """`synthetic_tags` and `soundfont_tags` have the same tags in every build: a model with
    other tags is refused before one is built (a new user's run built 2,000 clips first)."""
    from tagger_jax import checkpoint

    config = _tiny_config()
    config.data.update(name="synthetic_tags", data_dir=str(tmp_path / "tfds"))
    checkpoint.save_model(tmp_path / "model", tiny_variables, config,
                          ("jazz",) + tuple(synth_tags[1:]))
    for name in ("synthetic_tags", "soundfont_tags"):
        with pytest.raises(ev.EvaluationError, match="do not match"):
            ev.evaluate_checkpoint(tmp_path / "model", dataset=name, print_fn=None)
        assert not (tmp_path / "tfds" / name).exists()
