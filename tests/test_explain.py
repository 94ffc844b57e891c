"""Explanation methods (tagger_jax.explain.methods, .stitch): exact semantics against loops and
independent float64 references, costs, and the completeness of integrated gradients."""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.torch_twin (its NumPy part: random state dicts)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # numpy_reference

import numpy_reference as R  # noqa: E402
from benchmarks import torch_twin  # noqa: E402
from tagger_jax.authors import import_state_dict  # noqa: E402
from tagger_jax.explain import methods as M  # noqa: E402
from tagger_jax.explain.stitch import stitch  # noqa: E402
from tagger_jax.models import build_model  # noqa: E402

T = 32  # frames per test chunk: S = 33 positions
TINY = dict(architecture="pons_won", conv_channels=2, attention_channels=32, attention_heads=4,
            intermediate=64, attention_layers=2)
NUM_TAGS = 6


def random_variables(model, x, seed):
    """Variables with order-one activations everywhere (weights ~ N(0, 1/fan_in), query/key x2
    for peaked attention, random BatchNorm statistics), so every weight shows in the maps; the
    default BERT init (std 0.02) makes the attention branch nearly invisible."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [getattr(k, "key", "") for k in path]
        shape, name = leaf.shape, names[-1]
        if name == "mean":
            return rng.normal(0.0, 0.3, shape)
        if name == "var":
            return rng.uniform(0.5, 2.0, shape)
        if name == "scale":
            return rng.uniform(0.5, 1.5, shape)
        if name.startswith("bias"):
            return rng.normal(0.0, 0.1, shape)
        gain = 2.0 if ("query" in names or "key" in names) else 1.0
        return rng.normal(0.0, gain / np.sqrt(np.prod(shape[:-1])), shape)

    return jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.asarray(draw(p, a), jnp.float32), shapes)


@pytest.fixture(scope="module")
def tiny():
    model = build_model(TINY, NUM_TAGS)
    x = np.random.default_rng(0).normal(0.0, 1.0, (2, 96, T)).astype(np.float32)
    return model, random_variables(model, x[:1], 1), x


@pytest.fixture(scope="module")
def full_pass(tiny):
    """One compiled full forward pass with an override (all queries of the overridden layer)."""
    model, _, _ = tiny
    return jax.jit(lambda v, x, o, layer: jax.nn.sigmoid(model.apply(
        v, x, attention_override=o, override_layer=layer, full_last_layer=True)),
        static_argnums=3)


def loop_contribution(full_pass, variables, x, layer):
    """The authors' procedure: S full forward passes, one per one-hot override."""
    s = x.shape[-1] + 1
    out = [full_pass(variables, x, jax.nn.one_hot(t, s)[None, None, None, :], layer)
           for t in range(s)]
    return np.stack([np.asarray(o) for o in out], axis=-1)  # (B, tags, S)


@pytest.mark.parametrize("layer", [-1, 0])
def test_contribution_map_equals_loop_of_overridden_forward_passes(tiny, full_pass, layer):
    model, variables, x = tiny
    fast = jax.jit(lambda v, xx: M.contribution_map(model, v, xx, layer=layer,
                                                    position_batch=None if layer == -1 else 11))
    got = np.asarray(fast(variables, x))
    want = loop_contribution(full_pass, variables, x, layer)
    assert got.shape == (2, NUM_TAGS, T + 1)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.ptp(want, axis=-1).max() > 1e-2  # the override changes the outputs


def test_contribution_map_costs_far_less_than_the_loop():
    """XLA's count for the paper's model and chunk: the map is < 3 forward passes, not 257."""
    from configs.paper_mtat import get_config

    model = build_model(get_config().model, 50)
    x = jax.ShapeDtypeStruct((1, 96, 256), jnp.float32)
    v = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    flops = lambda f: jax.jit(f).lower(v, x).cost_analysis()["flops"]
    forward = flops(lambda v, x: model.apply(v, x))
    contribution = flops(lambda v, x: M.contribution_map(model, v, x))
    assert contribution < 3.0 * forward, contribution / forward


def test_attention_maps_equal_the_encoders_probabilities(tiny, full_pass):
    model, variables, x = tiny
    att = jax.jit(lambda v, xx: M.attention_maps(model, v, xx))(variables, x)
    _, probs = jax.jit(lambda v, xx: model.apply(v, xx, return_attention=True,
                                                 full_last_layer=True))(variables, x)
    assert att["cls"].shape == (2, 2, 4, T + 1)
    for layer in range(2):
        np.testing.assert_allclose(att["cls"][:, layer], probs[layer][:, :, 0, :], atol=1e-6)
    heat = M.attention_heatmap(att["cls"])
    np.testing.assert_allclose(heat, np.asarray(probs[-1])[:, :, 0, :].sum(1), atol=1e-6)
    np.testing.assert_allclose(heat.sum(-1), 4.0, rtol=1e-5)  # 4 heads, each row sums to 1
    # Rollout: residual-mixed, head-averaged matrices multiplied in float64 from full matrices.
    mixed = [0.5 * np.asarray(p, np.float64).mean(1) + 0.5 * np.eye(T + 1) for p in probs]
    want = (mixed[1] @ mixed[0])[:, 0, :]
    np.testing.assert_allclose(M.attention_rollout(att["cls"], att["full"]), want, atol=1e-5)
    assert heat.max() > 2 * heat.mean()  # attention is peaked, so the comparison means something


@pytest.fixture(scope="module")
def released():
    """The authors' released-model format (random weights), imported into our model."""
    state = torch_twin.random_state_dict("released", seed=11)
    variables, config = import_state_dict(state, "released")
    model = build_model(config.model, 50)
    spec = np.random.default_rng(12).normal(-20.0, 12.0, (1, 96, 64)).astype(np.float32)
    return state, model, variables, spec


def reference_procedure(state, spec):
    """The authors' procedure in float64 NumPy (tests/numpy_reference): front-end once, then for
    every key t the whole back-end with the last layer's attention replaced by a one-hot on t."""
    s = R._state(state)
    seq = R.front_end(spec.astype(np.float64), s).transpose(0, 2, 1)
    b, t, d = seq.shape
    x0 = np.concatenate([np.broadcast_to(R.cls_vector(d), (b, 1, d)), seq], axis=1)
    x0 = R.layer_norm(x0 + s["back_end.embedding.position_embeddings.weight"][: t + 1], s,
                      "back_end.embedding.LayerNorm")
    h0, probs0 = R.bert_layer(x0, s, "back_end.encoder.layer.0")
    h1, probs1 = R.bert_layer(h0, s, "back_end.encoder.layer.1")
    plain = R.linear(np.tanh(R.linear(h1[:, 0], s, "back_end.pooler.dense")), s, "classifier")
    maps = []
    for k in range(t + 1):
        h, _ = R.bert_layer(h0, s, "back_end.encoder.layer.1", R.one_hot_override(k, t + 1))
        logits = R.linear(np.tanh(R.linear(h[:, 0], s, "back_end.pooler.dense")), s, "classifier")
        maps.append(1.0 / (1.0 + np.exp(-logits)))
    return plain, [probs0, probs1], np.stack(maps, axis=-1)


def test_maps_of_an_imported_authors_checkpoint_match_their_procedure(released):
    state, model, variables, spec = released
    plain, probs, want = reference_procedure(state, spec)
    # The reference's shortcut (front-end once) is exactly its full forward pass:
    full = R.forward(state, spec, override=R.one_hot_override(5, 65))["probs"]
    np.testing.assert_allclose(full, want[..., 5], atol=1e-9)
    out = jax.jit(lambda v, x: M.explain(model, v, x, methods=(
        "attention", "attention_layers", "contribution")))(variables, spec)
    np.testing.assert_allclose(out["logits"], plain, atol=1e-4)
    np.testing.assert_allclose(out["attention"], probs[1][:, :, 0, :].sum(1), atol=1e-5)
    np.testing.assert_allclose(out["attention_layers"][:, 0], probs[0][:, :, 0, :].sum(1),
                               atol=1e-5)
    np.testing.assert_allclose(out["contribution"], want, atol=1e-5)
    assert np.ptp(want, axis=-1).max() > 0.05


@pytest.mark.parametrize("baseline", ["min", "zeros"])
def test_integrated_gradients_completeness(tiny, baseline):
    """Attributions sum to f(x) - f(baseline) within 3% of |f(x) - f(baseline)| + 2e-3 with 64
    trapezoid steps on logits (the tolerance docs/explanations.md states)."""
    model, variables, x = tiny
    tags = jnp.array([[0, 3], [5, 1]])
    ig, direct = jax.jit(lambda v, xx, tt: (M.integrated_gradients(
        model, v, xx, tt, steps=64, baseline=baseline, step_batch=13),
        model.apply(v, xx)))(variables, x, tags)
    np.testing.assert_allclose(ig["output"], np.take_along_axis(np.asarray(direct), tags, 1),
                               atol=1e-5)
    total = np.asarray(ig["attribution"]).reshape(2, 2, -1).sum(-1)
    delta = np.asarray(ig["output"] - ig["baseline_output"])
    gap = np.abs(total - delta)
    assert np.abs(delta).max() > 0.1
    assert np.all(gap <= 0.03 * np.abs(delta) + 2e-3), (gap, delta)


def test_tag_names_are_mapped_by_tags_indices_and_refused_as_tags():
    """A trial passed tag names to `checked_tags` and got JAX's "Error interpreting argument to
    stage as a JAX value"; the names map with `tags.indices`, which names unknown ones."""
    from tagger_jax import tags as tag_lists

    known = ("guitar", "drums", "piano")
    assert tag_lists.indices(["piano", "guitar"], known) == [2, 0]
    assert tag_lists.indices("drums", known) == [1]
    with pytest.raises(ValueError, match=r"^unknown tags: Piano, celo \(the model's 3 tags: "
                       r"guitar, drums, piano\); did you mean 'piano'\?$"):
        tag_lists.indices(["Piano", "celo"], known)  # celo: near no tag here
    with pytest.raises(TypeError, match=r"^tags must be integer tag indices, got names or "
                       r"objects \('drums', 'piano'\): map tag names to indices with "
                       r"tagger_jax.tags.indices"):
        M.checked_tags(np.array([["drums"], ["piano"]]), 2, 3)
    np.testing.assert_array_equal(M.checked_tags([[1], [2]], 2, 3), [[1], [2]])


def test_integrated_gradients_of_float64_input_with_x64(tiny):
    """A trial's float64 input with jax_enable_x64 stopped integrated gradients with a scan
    carry dtype error (float32 init, float64 gradients); the other methods accepted it. The
    attributions equal those of the float32 input to float32 precision."""
    model, variables, x = tiny
    tags = jnp.array([[0, 3], [5, 1]])
    ig = jax.jit(lambda v, xx: M.integrated_gradients(model, v, xx, tags, steps=2))
    want = ig(variables, x)["attribution"]
    with jax.enable_x64(True):
        got = ig(variables, np.asarray(x, np.float64))["attribution"]
        assert got.dtype == np.float64
    scale = float(np.abs(np.asarray(want)).max())
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=1e-4 * scale)


def test_integrated_gradients_step_at_the_baseline_is_the_tempo_branchs(tiny):
    """A trial's integrated gradients on the main job's model missed up to 4 logits of f(x) -
    f(baseline) at any number of steps: the tempo branch's onset autocorrelation is divided by
    its lag 0, so it is the same all along the path but at the baseline (no onsets). That jump,
    measured just past the baseline (`near_baseline_output`), is the completeness gap; without
    the branch it is of the order of IG_STEP_ALPHA of the change."""
    model, variables, x = tiny
    from tagger_jax.models.frontends import TEMPO_CHANNEL_MULTIPLE

    tempo = build_model({**TINY, "tempo_features": "onset_autocorrelation"}, NUM_TAGS)
    tempo_vars = random_variables(tempo, x[:1], 1)
    proj = dict(tempo_vars["params"]["conv1x1"])  # the tempo channels come last: made to count
    kernel = np.array(proj["kernel"])  # as in a trained model (random weights hide them)
    kernel[-TEMPO_CHANNEL_MULTIPLE * TINY["conv_channels"]:] *= 200.0
    tempo_vars = {**tempo_vars, "params": {**tempo_vars["params"],
                                           "conv1x1": {**proj, "kernel": jnp.asarray(kernel)}}}
    tags = jnp.array([[0, 3], [5, 1]])
    for m, v, jumps in ((model, variables, False), (tempo, tempo_vars, True)):
        ig = jax.jit(lambda vv, xx: M.integrated_gradients(m, vv, xx, tags, steps=64))(v, x)
        total = np.asarray(ig["attribution"]).reshape(2, 2, -1).sum(-1)
        delta = np.asarray(ig["output"] - ig["baseline_output"])
        step = np.asarray(ig["near_baseline_output"] - ig["baseline_output"])
        if jumps:
            assert np.abs(step).max() > 0.1 * np.abs(delta).max(), (step, delta)
            # the attributions account for what lies past the step, as for a continuous model
            past = delta - step
            assert np.all(np.abs(total - past) <= 0.03 * np.abs(past) + 5e-3), (total, past)
        else:
            assert np.abs(step).max() < 0.01 * np.abs(delta).max(), (step, delta)


def test_the_step_share_a_run_notes_is_over_an_inputs_windows_and_tags():
    """A tag whose output hardly moves must not make a continuous model's tiny step look large."""
    from tagger_jax.explain.runner import IG_STEP_NOTE_SHARE, ig_step_share

    res = {"integrated_gradients_chunk_step": np.array([[0.0, 0.5], [0.01, 0.0]]),
           "integrated_gradients_chunk_delta": np.array([[4.0, 2.0], [0.001, -1.0]])}
    assert ig_step_share(res) == pytest.approx(0.125) and 0.125 > IG_STEP_NOTE_SHARE  # 0.5 of 4
    res["integrated_gradients_chunk_step"] = np.array([[0.004, 0.0], [0.01, 0.0]])
    assert ig_step_share(res) == pytest.approx(0.0025)  # not 0.01 / 0.001: no note
    assert ig_step_share(res) < IG_STEP_NOTE_SHARE
    assert ig_step_share({}) == 0.0


def test_gradients_match_finite_differences(tiny):
    model, variables, x = tiny
    tags = jnp.array([[2], [4]])
    direction = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    eps = 1e-3

    @jax.jit
    def run(v, xx, tt, d):
        grads, _ = M.tag_gradients(model, v, xx, tt)
        f = lambda y: jnp.take_along_axis(model.apply(v, y), tt, 1)[:, 0]
        return grads, M.grad_x_input(model, v, xx, tt), (f(xx + eps * d) - f(xx - eps * d)) / (
            2 * eps)

    grads, gxi, numeric = map(np.asarray, run(variables, x, tags, direction))
    analytic = (grads[:, 0] * direction).reshape(2, -1).sum(-1)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=1e-3)
    np.testing.assert_allclose(gxi, grads * x[:, None], rtol=1e-6)
    # Reductions: per band and per frame both keep the total.
    np.testing.assert_allclose(M.band_importance(gxi).sum(-1), gxi.sum((-1, -2)), rtol=1e-4)
    np.testing.assert_allclose(M.time_profile(gxi).sum(-1), gxi.sum((-1, -2)), rtol=1e-4)
    assert M.time_profile(gxi).shape == (2, 1, T)


def test_ig_baseline_is_the_db_floor_or_zeros():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 96, 10)), jnp.float32)
    floor = M.ig_baseline(x, "min")
    np.testing.assert_allclose(floor[:, 0, 0], x.reshape(2, -1).min(-1))
    assert float(jnp.ptp(floor[0])) == 0.0
    assert float(jnp.abs(M.ig_baseline(x, "zeros")).max()) == 0.0
    with pytest.raises(ValueError, match="baseline"):
        M.ig_baseline(x, "mean")


def test_two_clip_input_takes_first_halves():
    a = np.arange(96 * 10, dtype=np.float32).reshape(96, 10)
    b = -np.arange(96 * 12, dtype=np.float32).reshape(96, 12)
    two = M.two_clip_input(a, b)
    assert isinstance(two, np.ndarray) and two.shape == (96, 10)
    np.testing.assert_array_equal(two[:, :5], a[:, :5])
    np.testing.assert_array_equal(two[:, 5:], b[:, :5])
    assert M.two_clip_input(a, b, length=8).shape == (96, 8)
    with pytest.raises(ValueError, match="second clip"):
        M.two_clip_input(a, b[:, :3])


def test_stitch_averages_overlaps_and_folds_tiled_copies():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 2, 8))
    starts = np.array([0, 4, 6])  # length 14: frames 4..7 and 6..13 overlap
    got = stitch(maps, starts, 14)
    total, count = np.zeros((2, 14)), np.zeros(14)
    for m, s in zip(maps, starts):
        total[:, s:s + 8] += m
        count[s:s + 8] += 1
    np.testing.assert_allclose(got, total / count)
    # A 3-frame clip tiled into one 8-frame window: frame f is the mean of positions f, f+3, f+6.
    tiled = stitch(maps[:1], np.array([0]), 3)
    np.testing.assert_allclose(tiled[:, 0], maps[0][:, [0, 3, 6]].mean(-1))
    with pytest.raises(ValueError, match="cover"):
        stitch(maps[:1], np.array([0]), 20)


def test_waveform_model_maps_align_to_front_end_steps():
    """lee_won: S = 271 positions, one per 243 samples; gradients reduce to 270 steps."""
    model = build_model(dict(TINY, architecture="lee_won"), 3)
    x = np.random.default_rng(0).normal(0, 0.1, (1, 65610)).astype(np.float32)
    variables = random_variables(model, x, 4)
    out = jax.jit(lambda v, xx: M.explain(model, v, xx, methods=(
        "attention", "contribution")))(variables, x)
    assert out["attention"].shape == (1, 271) and out["contribution"].shape == (1, 3, 271)
    attribution = np.random.default_rng(1).normal(size=(1, 2, 65610))
    steps = M.time_profile(attribution, waveform=True)
    assert steps.shape == (1, 2, 270)
    np.testing.assert_allclose(steps[..., 1], attribution[..., 243:486].sum(-1))
    with pytest.raises(ValueError, match="methods"):
        M.explain(model, variables, x, methods=("saliency",))


def test_tag_indices_out_of_range_or_misshapen_are_refused(tiny):
    """From a new user's trial: tags=[[-1]] gave the last tag's output with a zero gradient, and
    an index past the last tag a NaN output with a zero gradient, silently; tags of shape (B,)
    failed inside JAX's VJP. A method given as a string was read letter by letter."""
    model, variables, x = tiny
    for tags, error, message in (
            ([[NUM_TAGS], [0]], IndexError, rf"0..{NUM_TAGS - 1} .*got \[{NUM_TAGS}\]"),
            ([[-1], [0]], IndexError, r"got \[-1\]"),
            ([0, 1], ValueError, r"\(batch=2, K\) array of tag indices, got shape \(2,\)"),
            ([[0.0], [1.0]], TypeError, "integer tag indices, got float32")):
        with pytest.raises(error, match=message):
            M.tag_gradients(model, variables, x, tags)
    with pytest.raises(IndexError, match=r"got \[6\]"):  # checked before its scan traces it
        M.integrated_gradients(model, variables, x, jnp.array([[6], [0]]), steps=2)
    out = M.explain(model, variables, x, methods="attention")
    assert out["attention"].shape == (2, T + 1)
    # Under jax.jit the indices are traced: out of range (-1 too) is NaN and a zero map, never
    # another tag's output (a new user's trial got the last tag's output for -1).
    grads, outputs = jax.jit(lambda t: M.tag_gradients(model, variables, x, t))(
        jnp.array([[-1, 0], [NUM_TAGS, 1]]))
    direct_grads, direct_outputs = M.tag_gradients(model, variables, x, jnp.array([[0], [1]]))
    assert np.isnan(np.asarray(outputs)[:, 0]).all() and not np.asarray(grads)[:, 0].any()
    np.testing.assert_allclose(outputs[:, 1], direct_outputs[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[:, 1], direct_grads[:, 0], rtol=1e-4, atol=1e-6)
