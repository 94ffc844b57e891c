"""BERT-style post-LayerNorm Transformer encoder with a [CLS] token, as in the authors' back-end.

Two things beyond a plain encoder, both for interpretability:

* `return_attention`: every layer's attention probabilities come back as (batch, heads, queries,
  keys) arrays.
* `attention_override`: the probabilities of one layer can be replaced by an array passed in (no
  softmax, no dropout). The call stays a pure function of (variables, inputs, override), so an
  explanation can `jax.vmap` it over many overrides.

The classifier reads only the [CLS] position of the last layer, so by default the last layer
computes its [CLS] query alone (`full_last_layer=False`): the keys and values still come from every
position, the result is identical, and the last layer costs a fraction of a full one. That is also
what makes a vmapped override of the last layer cheap: only the [CLS] path depends on it. Pass
`full_last_layer=True` to get the last layer's attention for every query.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from tagger_jax.models import CLS_PARAM

Dtype = Any
LAYER_NORM_EPS = 1e-12
_bert_init = nn.initializers.normal(stddev=0.02)


class PositionsError(ValueError):
    """A chunk longer than the learned position table (`max_positions`) allows."""


def fixed_cls_vector(channels: int) -> np.ndarray:
    """The authors' [CLS] vector: `numpy.random.seed(0); numpy.random.random((1, channels))`.

    A constant, not a parameter and not in their checkpoints; reproduced with a private generator
    of the same legacy algorithm so that NumPy's global state is left alone.
    """
    return np.random.RandomState(0).random_sample((1, channels)).astype(np.float32)


def sinusoidal_positions(length: int, channels: int) -> np.ndarray:
    """The training code's fixed table: row 0 ([CLS]) zero; sine on even, cosine on odd channels."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    j = np.arange(channels)
    angle = pos / np.power(10000.0, 2.0 * (j // 2) / channels)
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    table[0] = 0.0
    return table.astype(np.float32)


class Embedding(nn.Module):
    """Prepends [CLS] and adds positions: fixed sinusoids, or a learned table + LayerNorm + dropout."""

    cls_token: str = "fixed"  # "fixed" (the authors' seeded vector) or "learned"
    positions: str = "sinusoidal"  # "sinusoidal" (training code) or "learned" (released checkpoint)
    max_positions: int = 271  # rows of the learned table; sequences may use the first T + 1
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, seq: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        batch, steps, channels = seq.shape
        if self.cls_token == "fixed":
            cls = jnp.asarray(fixed_cls_vector(channels))
        elif self.cls_token == "learned":
            cls = self.param(CLS_PARAM, _bert_init, (1, channels))
        else:
            raise ValueError(f"cls_token must be 'fixed' or 'learned', got {self.cls_token!r}")
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(seq.dtype), (batch, 1, channels)), seq], 1)
        length = steps + 1
        if self.positions == "sinusoidal":
            return x + jnp.asarray(sinusoidal_positions(length, channels), seq.dtype)
        if self.positions != "learned":
            raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {self.positions!r}")
        if length > self.max_positions:
            raise PositionsError(f"sequence of {steps} steps + [CLS] exceeds the "
                                 f"{self.max_positions} learned positions; use shorter chunks or "
                                 "a larger max_positions")
        table = self.param("position_embeddings", _bert_init, (self.max_positions, channels))
        x = x + table[:length].astype(seq.dtype)
        x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="layer_norm")(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class DenseParams(nn.Module):
    """The parameters of an `nn.Dense` (same names, shapes and initialisers), returned, not applied.

    Lets a layer use a projection's kernel algebraically (see `SelfAttention`) while keeping the
    variable tree of `nn.Dense(features, name=...)`: {"kernel": (in, out), "bias": (out,)}.
    """

    features: int
    kernel_init: Any = _bert_init

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return kernel, bias


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional replacement of the probabilities.

    With a single query (the [CLS]-only last layer) keys and values are never projected: the
    scores of head h are q_h . (W_k,h^T x_k + b_k,h) = (W_k,h q_h) . x_k + q_h . b_k,h, and its
    context is W_v,h^T (sum_k p_hk x_k) + b_v,h (the probabilities sum to 1; an override is used
    as given, so its context is W_v,h^T (sum_k o_hk x_k) + (sum_k o_hk) b_v,h). Same numbers as
    projecting every position (reassociated float32 sums), at about 2 x heads x length x channels
    multiply-adds per clip instead of 2 x length x channels^2 (docs/benchmarks.md has the timing).
    """

    num_heads: int = 8
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, queries: jnp.ndarray, train: bool,
                 override: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
        batch, length, channels = x.shape
        heads, head_dim = self.num_heads, channels // self.num_heads
        proj = {name: DenseParams(channels, name=name)(channels)
                for name in ("query", "key", "value")}
        cast = lambda t: t.astype(self.dtype)
        split = lambda t: t.reshape(t.shape[:-1] + (heads, head_dim))
        kernel = lambda name: split(cast(proj[name][0]))  # (channels, heads, head_dim)
        bias = lambda name: split(cast(proj[name][1]))  # (heads, head_dim)
        n_queries = queries.shape[1]
        q = jnp.einsum("bqc,chd->bqhd", cast(queries), kernel("query")) + bias("query")
        x = cast(x)
        folded = n_queries == 1  # project the one query onto the keys, not the keys onto it
        if folded:
            qk = jnp.einsum("bqhd,chd->bqhc", q, kernel("key"))
            scores = (jnp.einsum("bqhc,bkc->bhqk", qk, x)
                      + jnp.einsum("bqhd,hd->bhq", q, bias("key"))[..., None])
        else:
            k = jnp.einsum("bkc,chd->bkhd", x, kernel("key")) + bias("key")
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        if override is None:
            probs = jax.nn.softmax((scores / math.sqrt(head_dim)).astype(jnp.float32), axis=-1)
            used = nn.Dropout(self.dropout_rate)(probs, deterministic=not train)
        else:
            probs = jnp.broadcast_to(override.astype(jnp.float32),
                                     (batch, heads, n_queries, length))
            used = probs
        used = cast(used)
        if folded:
            mixed = jnp.einsum("bhqk,bkc->bqhc", used, x)  # probability-weighted inputs
            context = (jnp.einsum("bqhc,chd->bqhd", mixed, kernel("value"))
                       + jnp.einsum("bhqk,hd->bqhd", used, bias("value")))
        else:
            v = jnp.einsum("bkc,chd->bkhd", x, kernel("value")) + bias("value")
            context = jnp.einsum("bhqk,bkhd->bqhd", used, v)
        context = context.reshape(context.shape[:2] + (channels,))
        out = nn.Dense(channels, dtype=self.dtype, kernel_init=_bert_init, name="output")(context)
        return out, probs


class EncoderLayer(nn.Module):
    """Post-LayerNorm BERT layer: LN(x + attention), then LN(h + FFN(h)) with exact GELU."""

    num_heads: int = 8
    intermediate: int = 2048
    attention_dropout: float = 0.1
    hidden_dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool, cls_only: bool = False,
                 override: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
        queries = x[:, :1] if cls_only else x
        attn, probs = SelfAttention(self.num_heads, self.attention_dropout, self.dtype,
                                    name="attention")(x, queries, train, override)
        drop = nn.Dropout(self.hidden_dropout)
        h = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="attention_norm")(
            queries + drop(attn, deterministic=not train))
        f = nn.Dense(self.intermediate, dtype=self.dtype, kernel_init=_bert_init,
                     name="intermediate")(h)
        f = nn.gelu(f, approximate=False)
        f = nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=_bert_init, name="output")(f)
        out = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="output_norm")(
            h + drop(f, deterministic=not train))
        return out, probs


class Encoder(nn.Module):
    """A stack of `num_layers` encoder layers; returns hidden states and each layer's probabilities.

    `override_layer` (static, negative counts from the end) says which layer `attention_override`
    replaces. Unless `full_last_layer`, the last layer computes the [CLS] query only, so its output
    has one position and its probabilities have one query.

    `capture_layer` k (0 <= k <= num_layers) adds a third output: the input of layer k (batch,
    1 + positions, channels), the output of the last layer when k == num_layers (which then needs
    `full_last_layer`).
    """

    num_layers: int = 2
    num_heads: int = 8
    intermediate: int = 2048
    attention_dropout: float = 0.1
    hidden_dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False,
                 attention_override: Optional[jnp.ndarray] = None, override_layer: int = -1,
                 full_last_layer: bool = False, capture_layer: Optional[int] = None
                 ) -> (tuple[jnp.ndarray, list[jnp.ndarray]]
                       | tuple[jnp.ndarray, list[jnp.ndarray], jnp.ndarray]):
        target = override_layer % self.num_layers
        if not -self.num_layers <= override_layer < self.num_layers:
            raise ValueError(f"override_layer {override_layer} out of range for "
                             f"{self.num_layers} layers")
        if capture_layer is not None and not 0 <= capture_layer <= self.num_layers:
            raise ValueError(f"capture_layer {capture_layer} out of range 0..{self.num_layers}")
        all_probs, captured = [], None
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            if i == capture_layer:
                captured = x
            x, probs = EncoderLayer(self.num_heads, self.intermediate, self.attention_dropout,
                                    self.hidden_dropout, self.dtype, name=f"layer_{i}")(
                x, train, cls_only=last and not full_last_layer,
                override=attention_override if i == target else None)
            all_probs.append(probs)
        if capture_layer == self.num_layers:
            captured = x
        if capture_layer is not None:
            return x, all_probs, captured
        return x, all_probs
