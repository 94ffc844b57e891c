"""Explanation methods: pure functions of (model, variables, a batch of model inputs).

Every function takes the Flax module, its variables ({"params", "batch_stats"}) and a batch `x`
of model inputs (B, 96, T) log-mel chunks (pons_won, pons_pons) or (B, 65610) waveforms
(lee_won), runs the model in inference mode and returns arrays; none keeps state, so each can be
`jax.jit`-ed (with the module static) and composed. Sequence axes follow the encoder: S = steps + 1
positions, position 0 is [CLS] and position p >= 1 is front-end step p - 1 (a spectrogram frame for
the Pons front-end, 243 samples for the waveform front-end); `frames(m)` drops the [CLS] entry.

Methods (docs/explanations.md has the exact semantics):
* `attention_maps`: the [CLS] query's attention in every layer and head (Figure 1 of the paper
  is `attention_heatmap`: last layer, summed over heads), plus `attention_rollout`.
* `contribution_map`: the paper's tag-wise contribution map (Figure 2), as one vmapped
  substitution of the attention probabilities instead of S forward passes.
* `grad_x_input`, `integrated_gradients`: gradient attributions of tag logits (or
  probabilities) on the input, reduced by `band_importance` / `time_profile`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from tagger_jax.models.registry import WAVEFORM_STEP  # samples per waveform encoder position

Array = jax.Array
Variables = Mapping[str, Any]

ATTENTION_METHODS = ("attention", "attention_heads", "attention_layers", "rollout")
GRADIENT_METHODS = ("grad_x_input", "integrated_gradients")
METHODS = ATTENTION_METHODS + ("contribution",) + GRADIENT_METHODS
BASELINES = ("min", "zeros")
TARGETS = ("logit", "probability")


def frames(m: Array) -> Array:
    """A position-axis map without its [CLS] entry: entry t is front-end step (frame) t."""
    return m[..., 1:]


def is_waveform(x: Array) -> bool:
    """Waveform batches are (B, samples); spectrogram batches are (B, mel bands, frames)."""
    return x.ndim == 2


# ---------------------------------------------------------------------------------------------
# Attention


def attention_maps(model: nn.Module, variables: Variables, x: Array) -> dict[str, Array]:
    """Logits, the [CLS] attention of every layer, and the full attention of the other layers.

    Returns {"logits": (B, tags), "cls": (B, layers, heads, S), "full": [(B, heads, S, S) for
    every layer but the last]}. The last layer computes its [CLS] query only (the model's
    default), which is all the classifier reads and all rollout needs.
    """
    logits, attention = model.apply(variables, x, train=False, return_attention=True)
    cls = jnp.stack([a[:, :, 0, :] for a in attention], axis=1)
    return {"logits": logits, "cls": cls, "full": list(attention[:-1])}


def attention_heatmap(cls: Array, layer: int = -1) -> Array:
    """The paper's Figure 1: [CLS] attention of `layer` summed over heads, (B, S)."""
    return cls[:, layer].sum(axis=1)


def attention_rollout(cls: Array, full: Sequence[Array], residual: float = 0.5) -> Array:
    """Attention rollout (Abnar & Zuidema, 2020) of the [CLS] query, (B, S).

    Each layer's head-averaged attention is mixed with the identity for the residual path,
    A' = (1 - residual) A + residual I (rows stay stochastic), and the layers are multiplied from
    the last down to the first; only the [CLS] row of the product is needed, so the last layer's
    [CLS] row is enough and the map sums to 1.
    """
    s = cls.shape[-1]
    r = (1.0 - residual) * cls[:, -1].mean(axis=1) + residual * jax.nn.one_hot(0, s)
    for a in reversed(full):
        mixed = (1.0 - residual) * a.mean(axis=1) + residual * jnp.eye(s)
        r = jnp.einsum("bq,bqk->bk", r, mixed)
    return r


# ---------------------------------------------------------------------------------------------
# Tag-wise contribution


def sequence_length(model: nn.Module, variables: Variables, x: Array) -> int:
    """S = front-end steps + 1, read from the shapes of an abstract evaluation (no compute)."""
    _, attention = jax.eval_shape(
        lambda v, xx: model.apply(v, xx, train=False, return_attention=True), variables, x)
    return int(attention[-1].shape[-1])


def contribution_map(model: nn.Module, variables: Variables, x: Array, *, layer: int = -1,
                     position_batch: Optional[int] = None) -> Array:
    """The paper's tag-wise contribution map (Figure 2): (B, tags, S) sigmoid outputs.

    Entry [b, k, t] is tag k's probability for clip b when the attention probabilities of encoder
    layer `layer` are replaced, in every head and for every query, by a one-hot on key t (no
    softmax, no dropout) and the rest of the network runs unchanged.

    Written as a function of the override, vmapped over the S one-hots: everything that does not
    depend on the override (front-end, earlier layers, the overridden layer's values) is computed
    once. For the last layer only the [CLS] path (one query: context, FFN, pooler, classifier)
    is batched over positions, so the map costs about one extra forward pass instead of S.
    `position_batch` bounds memory when overriding an earlier layer (whose full sequence then
    runs S times) by evaluating that many positions at a time.
    """
    s = sequence_length(model, variables, x)

    def probs_for(onehot: Array) -> Array:  # onehot (S,) -> (B, tags)
        logits = model.apply(variables, x, train=False,
                             attention_override=onehot[None, None, None, :],
                             override_layer=layer)
        return jax.nn.sigmoid(logits)

    eye = jnp.eye(s, dtype=jnp.float32)
    if position_batch is None or position_batch >= s:
        out = jax.vmap(probs_for)(eye)
    else:
        out = jax.lax.map(probs_for, eye, batch_size=position_batch)
    return jnp.transpose(out, (1, 2, 0))  # (S, B, tags) -> (B, tags, S)


def two_clip_input(a: Array, b: Array, length: Optional[int] = None) -> Array:
    """Figure 2's input: the first half of clip `a` followed by the first half of clip `b`.

    Both are single model inputs ((96, T) or (samples,)), time last; the result has `length`
    steps (default: a's), `length // 2` from `a` and the rest from `b`. NumPy in, NumPy out.
    """
    n = int(length or a.shape[-1])
    for name, clip, need in (("first", a, n // 2), ("second", b, n - n // 2)):
        if clip.shape[-1] < need:
            raise ValueError(f"{name} clip has {clip.shape[-1]} steps, needs at least {need}")
    xp = np if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) else jnp
    return xp.concatenate([a[..., : n // 2], b[..., : n - n // 2]], axis=-1)


# ---------------------------------------------------------------------------------------------
# Gradient attributions on the input


def _tag_outputs(model: nn.Module, variables: Variables, target: str) -> Callable[[Array], Array]:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")

    def f(x: Array) -> Array:
        logits = model.apply(variables, x, train=False)
        return logits if target == "logit" else jax.nn.sigmoid(logits)

    return f


def checked_tags(tags: Any, batch: int, num_tags: int) -> Array:
    """`tags` as an integer (batch, K) array of tag indices in 0..num_tags - 1. Raises
    ValueError (shape), TypeError (not integers) or IndexError (a concrete index out of range;
    under `jax.jit` the values are not known: every out-of-range index, -1 too, is mapped to
    `num_tags` and gives a NaN output and a zero map, so check concrete indices with this
    function before the jitted call). Before this check -1 gave the last tag's output but a zero
    gradient, and 99 of 18 tags a NaN (found by a new user's trial; -1 under jit by another)."""
    if not isinstance(tags, jax.Array) and np.asarray(tags).dtype.kind in "USO":
        names = np.asarray(tags, dtype=object).ravel()
        shown = ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
        raise TypeError(f"tags must be integer tag indices, got names or objects ({shown}): map "
                        "tag names to indices with tagger_jax.tags.indices(names, model_tags)")
    tags = jnp.asarray(tags)
    if tags.ndim != 2 or tags.shape[0] != batch:
        raise ValueError(f"tags must be a (batch={batch}, K) array of tag indices, got shape "
                         f"{tuple(tags.shape)}")
    if not jnp.issubdtype(tags.dtype, jnp.integer):
        raise TypeError(f"tags must be integer tag indices, got {tags.dtype}")
    try:
        values = np.asarray(tags)
    except jax.errors.TracerArrayConversionError:  # traced: out of range -> NaN, never a tag
        return jnp.where((tags >= 0) & (tags < num_tags), tags, num_tags)
    bad = sorted({int(v) for v in values.ravel() if not 0 <= v < num_tags})
    if bad:
        raise IndexError(f"tag indices must be in 0..{num_tags - 1} (the model has {num_tags} "
                         f"tags), got {bad[:5]}")
    return tags


def tag_gradients(model: nn.Module, variables: Variables, x: Array, tags: Array,
                  target: str = "logit") -> tuple[Array, Array]:
    """Gradients of the selected tags' outputs on the input: ((B, K, *input), outputs (B, K)).

    `tags` (B, K) holds tag indices per clip (`checked_tags`: its errors). Clips do not interact
    in inference mode (BatchNorm uses running statistics), so one forward pass and K
    vector-Jacobian products with one-hot cotangents give every clip's K gradients.
    """
    f = _tag_outputs(model, variables, target)
    out, vjp = jax.vjp(f, x)
    tags = checked_tags(tags, out.shape[0], out.shape[-1])
    cotangents = jax.nn.one_hot(tags, out.shape[-1], dtype=out.dtype)  # (B, K, tags)
    (grads,) = jax.vmap(vjp, in_axes=1, out_axes=1)(cotangents)
    return grads, jnp.take_along_axis(out, tags, axis=1, mode="fill", fill_value=jnp.nan)


def grad_x_input(model: nn.Module, variables: Variables, x: Array, tags: Array,
                 target: str = "logit") -> Array:
    """Gradient x input: (B, K, *input) first-order attribution of each selected tag."""
    grads, _ = tag_gradients(model, variables, x, tags, target)
    return grads * x[:, None]


def ig_baseline(x: Array, baseline: str = "min") -> Array:
    """The reference input of integrated gradients.

    "min": every bin at the clip's minimum, i.e. the dB floor of the log-mel spectrogram, the
    model's picture of silence; "zeros": all zeros (0 dB for log-mel input, digital silence for a
    waveform, where "min" is not silence and so is mapped to zeros as well).
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if baseline == "zeros" or is_waveform(x):
        return jnp.zeros_like(x)
    floor = x.min(axis=tuple(range(1, x.ndim)), keepdims=True)
    return jnp.broadcast_to(floor, x.shape)


# A point on the integrated-gradients path just past the baseline (x0 + IG_STEP_ALPHA (x - x0)):
# where a part of the model that reads the input whatever its level has already jumped.
IG_STEP_ALPHA = 1e-3


def integrated_gradients(model: nn.Module, variables: Variables, x: Array, tags: Array, *,
                         baseline: str = "min", steps: int = 32, target: str = "logit",
                         step_batch: int = 8) -> dict[str, Array]:
    """Integrated gradients (Sundararajan et al., 2017) of the selected tags on the input.

    The path integral of the gradient along the straight line from the baseline to `x` is taken
    with the trapezoid rule on `steps` intervals (steps + 1 gradient evaluations), at most
    `step_batch` of them vmapped at a time. Returns {"attribution": (B, K, *input),
    "output": f(x) (B, K), "baseline_output": f(baseline) (B, K), "near_baseline_output":
    f(x0 + IG_STEP_ALPHA (x - x0)) (B, K)}; completeness says attribution sums to output -
    baseline_output up to the quadrature error (docs/explanations.md states it) where f is
    continuous along the path. A model part invariant to the input's scale is not: the tempo
    branch's onset autocorrelation (`frontends.onset_autocorrelation`, divided by its lag 0) is
    the same for every point of the path but the baseline, whose onsets are all 0, so f jumps
    at the baseline and no bin is credited with the jump; near_baseline_output - baseline_output
    measures it (about the whole completeness gap of the main job's model, found by a trial).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    num_tags = jax.eval_shape(_tag_outputs(model, variables, target), x).shape[-1]
    tags = checked_tags(tags, x.shape[0], num_tags)  # eagerly: inside the scan it is traced
    x0 = ig_baseline(x, baseline)
    diff = x - x0
    n = steps + 1
    groups = -(-n // step_batch)
    per_group = -(-n // groups)  # as even as possible: at most groups - 1 padded points
    alphas = np.zeros(groups * per_group, np.float32)
    weights = np.zeros(groups * per_group, np.float32)  # padded points have weight 0
    alphas[:n] = np.linspace(0.0, 1.0, n)
    weights[:n] = 1.0 / steps
    weights[[0, n - 1]] = 0.5 / steps
    alphas = jnp.asarray(alphas.reshape(groups, per_group))
    weights = jnp.asarray(weights.reshape(groups, per_group))

    def group(total: Array, aw: tuple[Array, Array]) -> tuple[Array, tuple[Array, Array]]:
        a, w = aw
        grads, outs = jax.vmap(
            lambda ai: tag_gradients(model, variables, x0 + ai * diff, tags, target))(a)
        total = total + jnp.tensordot(w, grads, axes=1)
        return total, outs

    # the gradients' dtype: float64 for a float64 `x` when jax_enable_x64 is on
    init = jnp.zeros((x.shape[0], tags.shape[1]) + x.shape[1:],
                     jnp.promote_types(jnp.float32, jnp.result_type(x)))
    total, outs = jax.lax.scan(group, init, (alphas, weights))
    outs = outs.reshape((-1,) + outs.shape[2:])
    near = jnp.take_along_axis(_tag_outputs(model, variables, target)(x0 + IG_STEP_ALPHA * diff),
                               tags, axis=1)
    return {"attribution": total * diff[:, None], "output": outs[n - 1],
            "baseline_output": outs[0], "near_baseline_output": near}


def band_importance(attribution: Array) -> Array:
    """Per-mel-band attribution, summed over time: (..., 96, T) -> (..., 96)."""
    return attribution.sum(axis=-1)


def time_profile(attribution: Array, waveform: bool = False) -> Array:
    """Per-step attribution on the encoder's time axis.

    Spectrogram attributions (..., 96, T) are summed over frequency -> (..., T); waveform
    attributions (..., 65610) over the 243 samples of each front-end step -> (..., 270).
    """
    if not waveform:
        return attribution.sum(axis=-2)
    steps = attribution.shape[-1] // WAVEFORM_STEP
    return attribution[..., : steps * WAVEFORM_STEP].reshape(
        attribution.shape[:-1] + (steps, WAVEFORM_STEP)).sum(axis=-1)


# ---------------------------------------------------------------------------------------------
# Everything at once


def explain(model: nn.Module, variables: Variables, x: Array, tags: Optional[Array] = None, *,
            methods: Sequence[str] = ("attention", "contribution"), ig_steps: int = 32,
            ig_baseline_kind: str = "min", target: str = "logit", layer: int = -1,
            ig_step_batch: int = 8, position_batch: Optional[int] = None) -> dict[str, Array]:
    """Runs the requested `methods` on a batch and returns a flat dict of arrays.

    Always: "logits", "probabilities" (B, tags). Per method (S-axis maps keep [CLS] at 0):
    attention (B, S); attention_heads (B, heads, S) of the last layer; attention_layers
    (B, layers, S) summed over heads; rollout (B, S); contribution (B, tags, S); grad_x_input and
    integrated_gradients (B, K, *input) for `tags` (B, K), with "integrated_gradients_output",
    "integrated_gradients_baseline_output" and "integrated_gradients_near_baseline_output"
    (B, K) for the completeness check (`integrated_gradients`).
    """
    if isinstance(methods, str):  # one method by name: ("attention",), not its letters
        methods = (methods,)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown explanation methods {unknown}; choose from {METHODS}")
    out: dict[str, Array] = {}
    if any(m in ATTENTION_METHODS for m in methods):
        att = attention_maps(model, variables, x)
        out["logits"] = att["logits"]
        if "attention" in methods:
            out["attention"] = attention_heatmap(att["cls"])
        if "attention_heads" in methods:
            out["attention_heads"] = att["cls"][:, -1]
        if "attention_layers" in methods:
            out["attention_layers"] = att["cls"].sum(axis=2)
        if "rollout" in methods:
            out["rollout"] = attention_rollout(att["cls"], att["full"])
    else:
        out["logits"] = model.apply(variables, x, train=False)
    out["probabilities"] = jax.nn.sigmoid(out["logits"])
    if "contribution" in methods:
        out["contribution"] = contribution_map(model, variables, x, layer=layer,
                                               position_batch=position_batch)
    if any(m in GRADIENT_METHODS for m in methods):
        if tags is None:
            raise ValueError("gradient methods need the tag indices to explain")
        if "grad_x_input" in methods:
            out["grad_x_input"] = grad_x_input(model, variables, x, tags, target)
        if "integrated_gradients" in methods:
            ig = integrated_gradients(model, variables, x, tags, baseline=ig_baseline_kind,
                                      steps=ig_steps, target=target, step_batch=ig_step_batch)
            out["integrated_gradients"] = ig["attribution"]
            out["integrated_gradients_output"] = ig["output"]
            out["integrated_gradients_baseline_output"] = ig["baseline_output"]
            out["integrated_gradients_near_baseline_output"] = ig["near_baseline_output"]
    return out
