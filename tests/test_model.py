"""The Flax model against an independent float64 NumPy forward pass of the authors' model.

Weights are random state dicts with the authors' key names (every tensor random, BatchNorm running
statistics included), imported with `tagger_jax.authors`, so these tests also prove the key
mapping. Tolerances (float32 model vs float64 reference): 1e-5 on sigmoid outputs and attention
probabilities, 2e-5 on logits (observed errors are about 2e-6).
"""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for benchmarks.torch_twin

import numpy_reference as ref  # noqa: E402  (tests/ is on sys.path under pytest)
from benchmarks.torch_twin import random_state_dict  # noqa: E402
from tagger_jax.authors import authors_config, import_state_dict  # noqa: E402
from tagger_jax.models import build_model, input_shape  # noqa: E402
from tagger_jax.models.frontends import PonsFrontEnd  # noqa: E402
from tagger_jax.models.transformer import fixed_cls_vector  # noqa: E402

PROB_TOL = 1e-5
LOGIT_TOL = 2e-5
BATCH, CHUNK = 2, 256
KEY_FILE = Path(__file__).parent / "data" / "authors-state-dict-keys.txt"


def _count(tree) -> int:
    return int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(tree)))


def _abstract_init(model_config, batch=1):
    model = build_model(model_config, 50)
    x = jax.ShapeDtypeStruct((batch, *input_shape(model_config)), jnp.float32)
    return model, x, jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


# ------------------------------------------------------------------ structure (no compilation)

def test_paper_parameter_count():
    _, _, variables = _abstract_init(authors_config("training").model)
    assert _count(variables["params"]) == 6_882_452


def test_released_parameter_count_equals_key_file():
    section = KEY_FILE.read_text().split("## released")[1].splitlines()[1:]
    expected = 0
    for line in section:
        key, shape = line.split(" ", 1)
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            expected += int(np.prod([int(s) for s in shape.strip("()").split(",") if s]))
    _, _, variables = _abstract_init(authors_config("released").model)
    assert _count(variables["params"]) == expected == 6_878_308


@pytest.mark.parametrize("arch, length", [("pons_won", 257), ("lee_won", 271), ("pons_pons", None)])
def test_output_shapes(arch, length):
    cfg = authors_config("training").model
    cfg.architecture = arch
    model, x, variables = _abstract_init(cfg, batch=3)
    assert jax.eval_shape(model.apply, variables, x).shape == (3, 50)
    if length is None:
        with pytest.raises(ValueError, match="no attention"):
            model.apply(variables, jnp.zeros(x.shape), return_attention=True)
        return
    _, attn = jax.eval_shape(lambda v, x: model.apply(v, x, return_attention=True), variables, x)
    assert [a.shape for a in attn] == [(3, 8, length, length), (3, 8, 1, length)]
    _, attn = jax.eval_shape(
        lambda v, x: model.apply(v, x, return_attention=True, full_last_layer=True), variables, x)
    assert [a.shape for a in attn] == [(3, 8, length, length)] * 2


def test_fixed_cls_vector_is_the_authors_seeded_draw():
    saved = np.random.get_state()
    np.random.seed(0)
    expected = np.random.random((1, 512)).astype(np.float32)
    np.random.set_state(saved)
    np.testing.assert_array_equal(fixed_cls_vector(512), expected)
    np.testing.assert_allclose(expected[0, :3], [0.5488135, 0.71518937, 0.60276338], rtol=1e-6)


# ------------------------------------------------------------------ numerics

class Imported:
    """One variant: state dict, imported variables, model, input, compiled calls, reference."""

    def __init__(self, variant: str):
        self.state = random_state_dict(variant, seed=1)
        self.variables, self.config = import_state_dict(self.state, variant)
        self.model = build_model(self.config.model, 50)
        self.x = np.random.default_rng(2).normal(size=(BATCH, 96, CHUNK)).astype(np.float32)
        self.ref = ref.forward(self.state, self.x)
        self.cls_only = jax.jit(lambda v, x: self.model.apply(v, x, return_attention=True))
        self.logits, self.attention = self.cls_only(self.variables, self.x)


@pytest.fixture(scope="module")
def imported():
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = Imported(variant)
        return cache[variant]
    return get


@pytest.fixture(scope="module")
def training(imported):
    return imported("training")


@pytest.mark.parametrize("variant", ["training", "released"])
def test_matches_numpy_reference(imported, variant):
    m = imported(variant)
    np.testing.assert_allclose(m.logits, m.ref["logits"], atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(jax.nn.sigmoid(m.logits), m.ref["probs"], atol=PROB_TOL, rtol=0)
    first, last = m.attention
    np.testing.assert_allclose(first, m.ref["attention"][0], atol=PROB_TOL, rtol=0)
    np.testing.assert_allclose(last, m.ref["attention"][1][:, :, :1], atol=PROB_TOL, rtol=0)
    # The weights must make attention informative, or the comparison above proves little.
    assert m.ref["attention"][1].max(-1).mean() > 10 / 257


def test_full_last_layer_equals_cls_only(training):
    m = training
    full = jax.jit(lambda v, x: m.model.apply(v, x, return_attention=True, full_last_layer=True))
    logits, (first, last) = full(m.variables, m.x)
    # Same math, different XLA programs: float32 rounding differs (observed ~1e-6 on logits).
    np.testing.assert_allclose(logits, m.logits, atol=5e-6, rtol=0)
    np.testing.assert_allclose(first, m.attention[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(last[:, :, :1], m.attention[1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(last, m.ref["attention"][1], atol=PROB_TOL, rtol=0)


@pytest.fixture(scope="module")
def overridden(training):
    m = training
    return jax.jit(lambda v, x, o: m.model.apply(v, x, attention_override=o))


@pytest.mark.parametrize("t", [0, 100])
def test_override_matches_reference(training, overridden, t):
    m = training
    one_hot = ref.one_hot_override(t)
    expected = ref.forward(m.state, m.x, override=one_hot)
    logits = overridden(m.variables, m.x, jnp.asarray(one_hot, jnp.float32))
    np.testing.assert_allclose(logits, expected["logits"], atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(jax.nn.sigmoid(logits), expected["probs"], atol=PROB_TOL, rtol=0)
    assert np.abs(expected["probs"] - m.ref["probs"]).max() > 1e-2  # the override matters


def test_vmap_over_overrides_equals_loop(training, overridden):
    m = training
    overrides = jnp.asarray(np.stack([ref.one_hot_override(t) for t in (0, 57, 256)]), jnp.float32)
    # Variables and input are arguments, not closed-over constants (XLA would constant-fold them).
    batched = jax.jit(jax.vmap(lambda v, x, o: m.model.apply(v, x, attention_override=o),
                               in_axes=(None, None, 0)))
    got = batched(m.variables, m.x, overrides)
    for o, g in zip(overrides, got):
        np.testing.assert_allclose(g, overridden(m.variables, m.x, o), atol=1e-6, rtol=0)
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_jit_equals_eager(training):
    m = training
    eager = m.model.apply(m.variables, m.x)
    np.testing.assert_allclose(eager, m.logits, atol=5e-6, rtol=0)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_frame_head_is_a_linear_map_of_its_sequence_and_leaves_tags_alone(training, layer):
    """model.frame_head with frame_head_layer k: frame logits = the sequence it reads (float64
    reference: k = 0 the front-end's 512-channel sequence, k >= 1 the output of encoder layer
    k - 1 at every position but [CLS]; k = 2, the last layer, computed for every query) times the
    head's kernel plus bias; the tag logits equal those of the model without a head."""
    m = training
    cfg = m.config.model.copy_and_resolve_references()
    cfg.frame_head, cfg.frame_head_layer = True, layer
    model = build_model(cfg, 50)
    rng = np.random.default_rng(3)
    head = {"kernel": rng.normal(0, 0.05, (512, 50)).astype(np.float32),
            "bias": rng.normal(0, 0.1, 50).astype(np.float32)}
    variables = {**m.variables, "params": {**m.variables["params"], "frame_classifier": head}}
    logits, frame_logits = jax.jit(lambda v, x: model.apply(v, x, return_frame_logits=True))(
        variables, m.x)
    np.testing.assert_allclose(logits, m.logits, atol=5e-6, rtol=0)
    if layer == 0:
        seq = ref.front_end(m.x.astype(np.float64), ref._state(m.state)).transpose(0, 2, 1)
    else:
        seq = m.ref["hidden"][layer - 1][:, 1:]
    expected = seq @ head["kernel"].astype(np.float64) + head["bias"]
    assert frame_logits.shape == (BATCH, CHUNK, 50)
    np.testing.assert_allclose(frame_logits, expected, atol=LOGIT_TOL, rtol=0)
    with pytest.raises(ValueError, match="needs frame_head=True"):
        m.model.apply(m.variables, m.x, return_frame_logits=True)
    cfg.frame_head_layer = 3  # past the last layer
    with pytest.raises(ValueError, match=r"model.frame_head_layer must be in 0..model.attention_"
                                         r"layers \(2\), got 3"):
        build_model(cfg, 50)


def test_frame_head_read_by_the_tag_head_has_no_parameters_of_its_own(training):
    """frame_head_readout="tag_head": frame logits = the tag head (tanh pooler, classifier; the
    model's own parameters, float64 reference) applied at every position of the last layer's
    output; the variables are the model's without a head, and the tag logits are unchanged,
    also in training with dropout (the same masks as with the linear readout)."""
    m = training
    cfg = m.config.model.copy_and_resolve_references()
    cfg.frame_head, cfg.frame_head_layer, cfg.frame_head_readout = True, 2, "tag_head"
    model = build_model(cfg, 50)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), m.x[:1]))
    assert set(shapes["params"]) == set(m.variables["params"])  # no frame_classifier
    logits, frame_logits = jax.jit(lambda v, x: model.apply(v, x, return_frame_logits=True))(
        m.variables, m.x)
    np.testing.assert_allclose(logits, m.logits, atol=5e-6, rtol=0)
    p = {k: {n: np.asarray(a, np.float64) for n, a in m.variables["params"][k].items()}
         for k in ("pooler", "classifier")}
    seq = m.ref["hidden"][1][:, 1:]
    expected = (np.tanh(seq @ p["pooler"]["kernel"] + p["pooler"]["bias"])
                @ p["classifier"]["kernel"] + p["classifier"]["bias"])
    assert frame_logits.shape == (BATCH, CHUNK, 50)
    np.testing.assert_allclose(frame_logits, expected, atol=LOGIT_TOL, rtol=0)
    # in training (dropout on, batch statistics) [CLS] draws the masks of the linear readout's
    key = {"dropout": jax.random.key(7)}
    cfg.frame_head_readout = "linear"
    head = {"kernel": np.zeros((512, 50), np.float32), "bias": np.zeros(50, np.float32)}
    linear = build_model(cfg, 50).apply(
        {**m.variables, "params": {**m.variables["params"], "frame_classifier": head}}, m.x,
        train=True, rngs=key, return_frame_logits=True, mutable=["batch_stats"])[0][0]
    (train_logits, _), _ = model.apply(m.variables, m.x, train=True, rngs=key,
                                       return_frame_logits=True, mutable=["batch_stats"])
    np.testing.assert_allclose(train_logits, linear, atol=5e-6, rtol=0)
    assert m.config.model.classifier_dropout > 0
    cfg.frame_head_readout = "pooled"
    with pytest.raises(ValueError, match=r"model.frame_head_readout must be one of \('linear', "
                                         r"'tag_head'\), got 'pooled'"):
        build_model(cfg, 50)
    cfg.frame_head, cfg.frame_head_readout = False, "tag_head"
    with pytest.raises(ValueError, match=r"model.frame_head_readout='tag_head' needs "
                                         r"model.frame_head=True"):
        build_model(cfg, 50)


@pytest.mark.parametrize("timbre_norm", ["chunk_peak", "frame_peak"])
def test_timbre_norm_matches_reference_and_makes_timbre_branches_level_invariant(training,
                                                                                 timbre_norm):
    """model.timbre_norm: the front-end sequence equals the float64 reference with the vertical
    branches' input shifted to its peak; a level change (+20 dB on every bin) then leaves the
    vertical (timbre) channels unchanged while the horizontal ones (level, onsets) still see it."""
    m = training
    cfg = m.config.model.copy_and_resolve_references()
    cfg.timbre_norm = timbre_norm
    cfg.frame_head = True
    model = build_model(cfg, 50)
    eye = {"kernel": np.eye(512, 50, dtype=np.float32), "bias": np.zeros(50, np.float32)}
    variables = {**m.variables, "params": {**m.variables["params"], "frame_classifier": eye}}
    frames = jax.jit(lambda v, x: model.apply(v, x, return_frame_logits=True)[1])
    state = ref._state(m.state)
    expected = ref.front_end(m.x.astype(np.float64), state, timbre_norm).transpose(0, 2, 1)
    np.testing.assert_allclose(frames(variables, m.x), expected[..., :50], atol=LOGIT_TOL, rtol=0)
    # Level invariance, on the front-end's own output (the 1x1 conv mixes all channels).
    pons = PonsFrontEnd(16, timbre_norm=timbre_norm)
    fv = {"params": variables["params"]["frontend"],
          "batch_stats": variables["batch_stats"]["frontend"]}
    a = np.asarray(pons.apply(fv, m.x))
    b = np.asarray(pons.apply(fv, m.x + 20.0))
    vertical = 2 * 7 * 16  # the six vertical branches: 7c channels per height
    # float32: the shifted input rounds differently (observed 1.4e-6 relative on values ~15)
    np.testing.assert_allclose(b[..., :vertical], a[..., :vertical], atol=1e-5, rtol=5e-6)
    assert np.abs(b[..., vertical:] - a[..., vertical:]).max() > 0.1
    unnormalised = PonsFrontEnd(16).apply(fv, m.x + 20.0)
    assert np.abs(np.asarray(unnormalised)[..., :vertical] - a[..., :vertical]).max() > 0.1
    with pytest.raises(ValueError, match="timbre_norm"):
        PonsFrontEnd(16, timbre_norm="band").apply(fv, m.x)


def _np_onset_autocorrelation(spec: np.ndarray, max_lag: int) -> np.ndarray:
    """float64 reference: spectral-flux envelope (np.diff), mean removed, np.correlate, / lag 0."""
    env = np.concatenate([[0.0], np.maximum(np.diff(spec.astype(np.float64), axis=1), 0).mean(0)])
    x = env - env.mean()
    full = np.correlate(x, x, mode="full")[len(x) - 1:]
    ac = np.zeros(max_lag + 1)
    ac[:min(len(x), max_lag + 1)] = full[:max_lag + 1]
    return ac[1:] / ac[0] if ac[0] > 0 else np.zeros(max_lag)


def test_tempo_branch_matches_reference_and_is_level_invariant():
    """model.tempo_features: the chunk's onset autocorrelation equals a float64 NumPy reference
    (and, averaged in pairs of lags, the baseline's feature); the branch's 2c channels are
    relu(BN(dense(autocorrelation))), the same at every step; a level change (+20 dB) or a
    constant chunk does not break it; a waveform model refuses the option in one line."""
    from tagger_jax import baseline
    from tagger_jax.errors import ConfigError
    from tagger_jax.models import check_model_config
    from tagger_jax.models.frontends import (ONSET_MAX_LAG, onset_autocorrelation,
                                             onset_envelope)

    rng = np.random.default_rng(0)
    t = np.arange(128)
    beats = (t % 23 == 0).astype(np.float32) * 30  # a click every 23 frames over noise
    x = (rng.normal(-40, 3, (3, 96, 128)) + beats).astype(np.float32)
    x[2] = -50.0  # a constant chunk: zero energy
    ac = np.asarray(jax.jit(lambda s: onset_autocorrelation(onset_envelope(s)))(x))
    assert ac.shape == (3, ONSET_MAX_LAG)
    for i in range(3):
        np.testing.assert_allclose(ac[i], _np_onset_autocorrelation(x[i], ONSET_MAX_LAG),
                                   atol=2e-5, rtol=0)
    np.testing.assert_allclose(ac[0].reshape(-1, 2).mean(1), baseline.onset_autocorrelation(
        baseline.onset_envelope(x[0]), ONSET_MAX_LAG), atol=2e-5, rtol=0)
    assert np.argmax(ac[0][10:40]) + 11 == 23  # the click period stands out
    short = np.asarray(onset_autocorrelation(onset_envelope(x[:1, :, :64])))
    assert np.all(short[0, 63:] == 0)  # lags beyond the chunk

    c = 4
    pons = PonsFrontEnd(c, tempo_features="onset_autocorrelation")
    variables = pons.init(jax.random.PRNGKey(1), x)
    stats = {"mean": rng.normal(0, 0.1, 2 * c).astype(np.float32),
             "var": rng.uniform(0.5, 2, 2 * c).astype(np.float32)}
    variables = {"params": variables["params"],
                 "batch_stats": {**variables["batch_stats"], "tempo": {"bn": stats}}}
    out = np.asarray(pons.apply(variables, x))
    assert out.shape == (3, 128, 31 * c)
    tp = variables["params"]["tempo"]
    for i in range(3):
        h = _np_onset_autocorrelation(x[i], ONSET_MAX_LAG) @ np.asarray(
            tp["dense"]["kernel"], np.float64) + np.asarray(tp["dense"]["bias"])
        h = (h - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * np.asarray(
            tp["bn"]["scale"]) + np.asarray(tp["bn"]["bias"])
        np.testing.assert_allclose(out[i, :, 29 * c:], np.broadcast_to(np.maximum(h, 0), (
            128, 2 * c)), atol=1e-5, rtol=0)
    louder = np.asarray(pons.apply(variables, x + 20.0))
    np.testing.assert_allclose(louder[..., 29 * c:], out[..., 29 * c:], atol=1e-5, rtol=0)
    grad = jax.grad(lambda s: pons.apply(variables, s)[..., 29 * c:].sum())(x)
    assert np.all(np.isfinite(np.asarray(grad)))  # the constant chunk's division is guarded

    base = {"architecture": "pons_won", "tempo_features": "onset_autocorrelation"}
    check_model_config(base)
    with pytest.raises(ConfigError, match="tempo_features.*must be one of"):
        check_model_config({**base, "tempo_features": "tempogram"})
    with pytest.raises(ConfigError, match="needs a log-mel front-end; lee_won reads waveforms"):
        check_model_config({**base, "architecture": "lee_won"})


def _np_batch_norm_relu(h: np.ndarray, bn: dict, stats: dict) -> np.ndarray:
    """float64 inference BatchNorm (running statistics, eps 1e-5) followed by ReLU."""
    h = (h - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * np.asarray(bn["scale"], np.float64)
    return np.maximum(h + np.asarray(bn["bias"], np.float64), 0.0)


def test_tempo_branch_bands_and_hidden_layer_match_reference():
    """model.tempo_features="onset_autocorrelation_bands" with model.tempo_hidden=H: the branch
    reads the autocorrelations of the whole spectrum's and three mel-band ranges' onset
    envelopes, concatenated in TEMPO_BANDS' order, through dense(H) -> BN -> ReLU -> dense(2c)
    -> BN -> ReLU (float64 NumPy reference, 1e-5); the bands differ (a click in the low bands
    only leaves the high band's autocorrelation flat); a hidden layer without a branch, or a
    negative width, is a one-line ConfigError."""
    from tagger_jax.errors import ConfigError
    from tagger_jax.models import check_model_config
    from tagger_jax.models.frontends import ONSET_MAX_LAG, TEMPO_BANDS

    rng = np.random.default_rng(1)
    t = np.arange(128)
    x = rng.normal(-40, 3, (2, 96, 128)).astype(np.float32)
    x[0, :24] += (t % 19 == 0) * 30.0  # a low-band click every 19 frames
    x[1, 56:] += (t % 11 == 0) * 30.0  # a high-band click every 11 frames
    bands = TEMPO_BANDS["onset_autocorrelation_bands"]
    assert bands[0] == (0, 96) and len(bands) == 4
    c, hidden = 4, 8
    pons = PonsFrontEnd(c, tempo_features="onset_autocorrelation_bands", tempo_hidden=hidden)
    variables = pons.init(jax.random.PRNGKey(2), x)
    stats = {name: {"mean": rng.normal(0, 0.1, n), "var": rng.uniform(0.5, 2, n)}
             for name, n in (("hidden_bn", hidden), ("bn", 2 * c))}
    variables = {"params": variables["params"], "batch_stats": {
        **variables["batch_stats"],
        "tempo": {k: {s: v.astype(np.float32) for s, v in d.items()} for k, d in stats.items()}}}
    out = np.asarray(pons.apply(variables, x))
    assert out.shape == (2, 128, 31 * c)
    tp = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"]["tempo"])
    assert tp["hidden"]["kernel"].shape == (len(bands) * ONSET_MAX_LAG, hidden)
    for i in range(2):
        acs = [_np_onset_autocorrelation(x[i, lo:hi], ONSET_MAX_LAG) for lo, hi in bands]
        h = _np_batch_norm_relu(np.concatenate(acs) @ tp["hidden"]["kernel"]
                                + tp["hidden"]["bias"], tp["hidden_bn"], stats["hidden_bn"])
        h = _np_batch_norm_relu(h @ tp["dense"]["kernel"] + tp["dense"]["bias"], tp["bn"],
                                stats["bn"])
        np.testing.assert_allclose(out[i, :, 29 * c:], np.broadcast_to(h, (128, 2 * c)),
                                   atol=1e-5, rtol=0)
    # benchmarks/tempo_features.py scores exactly these inputs
    from benchmarks.tempo_features import features
    from tagger_jax.models.frontends import onset_autocorrelation, onset_envelope

    branch_input = np.concatenate([np.asarray(onset_autocorrelation(onset_envelope(
        x[:, lo:hi]))) for lo, hi in bands], axis=-1)
    for i in range(2):
        np.testing.assert_allclose(features(x[i].astype(np.float64), 128, bands, 1)[0],
                                   branch_input[i], atol=2e-5, rtol=0)
    low = _np_onset_autocorrelation(x[0, :24], ONSET_MAX_LAG)
    high = _np_onset_autocorrelation(x[0, 56:], ONSET_MAX_LAG)
    assert low[18] > 0.5 and abs(high[18]) < 0.3  # lag 19: the period shows in its band only

    base = {"architecture": "pons_won", "tempo_features": "onset_autocorrelation_bands",
            "tempo_hidden": 64}
    check_model_config(base)
    with pytest.raises(ConfigError, match="tempo_hidden must be 0, or > 0 with a tempo branch"):
        check_model_config({**base, "tempo_features": "none"})
    with pytest.raises(ConfigError, match="tempo_hidden must be 0.*got -1"):
        check_model_config({**base, "tempo_hidden": -1})


def test_train_mode_dropout_and_batch_stats(training):
    m = training

    @jax.jit
    def train_forward(variables, x, key):
        return m.model.apply(variables, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": key})

    key_a, key_b = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    logits_a, updates = train_forward(m.variables, m.x, key_a)
    logits_a2, _ = train_forward(m.variables, m.x, key_a)
    logits_b, _ = train_forward(m.variables, m.x, key_b)
    np.testing.assert_array_equal(logits_a, logits_a2)
    assert np.abs(logits_a - logits_b).max() > 1e-3
    assert np.abs(logits_a - m.logits).max() > 1e-3  # batch statistics + dropout

    old = m.variables["batch_stats"]["frontend"]["input_bn"]
    new = updates["batch_stats"]["frontend"]["input_bn"]
    x64 = m.x.astype(np.float64)
    # running = 0.9 running + 0.1 batch (PyTorch momentum 0.1), unbiased variance as PyTorch.
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * x64.mean(), rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * x64.var(ddof=1), rtol=1e-5)
    for path, before in jax.tree_util.tree_flatten_with_path(m.variables["batch_stats"])[0]:
        after = dict(jax.tree_util.tree_flatten_with_path(updates["batch_stats"])[0])[path]
        assert np.abs(np.asarray(after) - before).max() > 0, jax.tree_util.keystr(path)


def test_bfloat16_close_to_float32(training):
    m = training
    cfg = m.config.model.copy_and_resolve_references()
    cfg.dtype = "bfloat16"
    model = build_model(cfg, 50)
    logits = jax.jit(model.apply)(m.variables, m.x)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    # bfloat16 keeps ~3 significant digits; observed differences: 0.014 (logits), 0.0033 (sigmoid).
    np.testing.assert_allclose(logits, m.logits, atol=0.05, rtol=0)
    assert np.abs(jax.nn.sigmoid(logits) - jax.nn.sigmoid(m.logits)).max() < 0.0125
    assert np.abs(logits - m.logits).max() > 0  # it did compute in bfloat16


def test_batch_norm_follows_pytorch_with_small_batches():
    """n = 4: normalise with the biased batch variance, update running with the unbiased one."""
    from tagger_jax.models.frontends import BatchNorm

    x = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32) * 2 + 1
    bn = BatchNorm(train=True)
    variables = bn.init(jax.random.PRNGKey(0), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * x64.var(0, ddof=1),
                               rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * x64.mean(0), rtol=1e-5)


def test_bfloat16_explanations_deviate_boundedly():
    """bfloat16 inference: every explanation map stays near float32 (benchmarks/mixed_precision.py
    measures the paper model; docs/benchmarks.md has the table). Small model, loose bounds."""
    from benchmarks.mixed_precision import OUTPUTS, deviations

    cfg = dict(architecture="pons_won", conv_channels=2, attention_channels=32,
               attention_layers=2, attention_heads=4, intermediate=64, cls_token="fixed",
               positions="sinusoidal")
    x = np.random.default_rng(4).normal(size=(2, 96, 32)).astype(np.float32)
    variables = jax.jit(build_model(cfg, 50).init)(jax.random.PRNGKey(0), x)
    tags = np.array([[1, 7], [3, 40]], np.int32)
    dev = deviations(cfg, variables, x, tags, ig_steps=2)
    assert set(dev) == set(OUTPUTS)
    for name in ("probabilities", "attention", "rollout", "contribution"):  # all in [0, 1]
        assert 0 < dev[name]["max_abs_dev"] < 0.05, (name, dev[name])
    for name in ("grad_x_input", "integrated_gradients"):  # input units: relative deviation
        assert 0 < dev[name]["relative"] < 0.25, (name, dev[name])


def test_vertical_convolutions_match_reference_and_xla_convolution():
    """The block-banded matmuls equal the float64 reference convolution, and their gradients
    (plain autodiff) equal those of XLA's own 2-D convolution, for blocks of 3 rows (the last
    one padded), 4 (dividing the 8 rows), 8 (all rows in one block) and 20 (more than all);
    bfloat16 in, bfloat16 out."""
    from jax import lax
    from tagger_jax.models.frontends import vertical_convolutions

    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 12, 10)), jnp.float32)  # 12 bands, height 5: 8 rows
    kernels = tuple(jnp.asarray(rng.normal(size=(5, w, 1, f)), jnp.float32)
                    for w, f in ((3, 2), (1, 4), (7, 1)))
    x64 = np.asarray(x, np.float64)
    expected = np.concatenate([ref.conv2d_valid_freq_same_time(
        x64[:, None], np.asarray(k, np.float64).transpose(3, 2, 0, 1), np.zeros(k.shape[-1])
    ).transpose(0, 2, 3, 1) for k in kernels], -1)  # (B, rows, T, sum f), float64

    def xla_convolution(x, ks):  # (B, F, T, 1) NHWC against (height, w, 1, f) HWIO
        return jnp.concatenate([lax.conv_general_dilated(
            x[..., None], k, (1, 1), ((0, 0), (k.shape[1] // 2, k.shape[1] // 2)),
            dimension_numbers=("NHWC", "HWIO", "NHWC")) for k in ks], -1)

    def value_and_grad(f):
        return jax.jit(jax.value_and_grad(lambda x, ks: jnp.sum(jnp.sin(f(x, ks))),
                                          argnums=(0, 1)))
    np.testing.assert_allclose(xla_convolution(x, kernels), expected, atol=1e-4)  # the layout
    _, xla = value_and_grad(xla_convolution)(x, kernels)
    for rows_per_block in (3, 4, 8, 20):
        got = vertical_convolutions(x, kernels, rows_per_block)
        assert got.shape == (2, 8, 10, 7)
        np.testing.assert_allclose(got, expected, atol=1e-4)
        _, ours = value_and_grad(lambda x, ks: vertical_convolutions(x, ks, rows_per_block))(
            x, kernels)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(xla)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
    half = vertical_convolutions(x.astype(jnp.bfloat16),
                                 tuple(k.astype(jnp.bfloat16) for k in kernels))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), expected, atol=0.25, rtol=0.05)


def test_vertical_convolutions_reject_bad_kernels_and_block_sizes():
    from tagger_jax.models.frontends import vertical_convolutions

    with pytest.raises(ValueError, match="height 13 needs at least 13 bands, got 12"):
        vertical_convolutions(jnp.zeros((1, 12, 10)), (jnp.zeros((13, 3, 1, 2)),))
    with pytest.raises(ValueError, match=r"odd widths, got \[3, 4\]"):
        vertical_convolutions(jnp.zeros((1, 12, 10)),
                              (jnp.zeros((5, 3, 1, 2)), jnp.zeros((5, 4, 1, 2))))
    with pytest.raises(ValueError, match=r"one height and one input channel.*\(6, 1, 1, 2\)"):
        vertical_convolutions(jnp.zeros((1, 12, 10)),
                              (jnp.zeros((5, 3, 1, 2)), jnp.zeros((6, 1, 1, 2))))
    with pytest.raises(ValueError, match="one height and one input channel"):
        vertical_convolutions(jnp.zeros((1, 12, 10)), (jnp.zeros((5, 3, 2, 2)),))
    with pytest.raises(ValueError, match="rows_per_block must be at least 1, got 0"):
        vertical_convolutions(jnp.zeros((1, 12, 10)), (jnp.zeros((5, 3, 1, 2)),), 0)


def test_inputs_the_spectrogram_front_end_cannot_read_are_refused_in_one_line():
    """From a new user's trial: a transposed batch (B, T, 96) with T >= 86 ran and gave wrong
    tags (and maps of the wrong length); a missing batch axis, an empty batch, a list and an
    integer array failed deep inside JAX or gave all-zero gradients. Each is one line now, under
    jit too (shapes are static)."""
    from tagger_jax.config_base import base_config

    m = base_config().model
    m.conv_channels, m.attention_channels, m.attention_heads, m.intermediate = 2, 16, 2, 32
    model = build_model(m, 3)
    x = np.zeros((2, 96, 16), np.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes: refused before use
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 3)
    cases = [
        (np.zeros((2, 16, 96), np.float32), ValueError, r"got \(2, 16, 96\); it looks "
         r"transposed: swap the last two axes"),
        (np.zeros((96, 16), np.float32), ValueError, r"got \(96, 16\); one spectrogram: add "
         r"the batch axis"),
        (np.zeros((0, 96, 16), np.float32), ValueError, "the batch or the chunk is empty"),
        (np.zeros((2, 64, 16), np.float32), ValueError,
         r"expected a log-mel batch of shape \(batch, 96 mel bands, frames\), got \(2, 64, 16\)"),
        (np.zeros((2, 96, 16), np.int32), TypeError, "floating-point .* got int32"),
        (x.tolist(), TypeError, "got a list; convert it with np.asarray"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            model.apply(variables, bad)
        if not isinstance(bad, list):
            with pytest.raises(error, match=message):  # traced, as under jax.jit
                jax.eval_shape(model.apply, variables, bad)
