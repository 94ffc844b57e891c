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
from typing import Any, Optional, Sequence

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

Dtype = Any
LAYER_NORM_EPS = 1e-12
_bert_init = nn.initializers.normal(stddev=0.02)


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
            cls = self.param("cls", _bert_init, (1, channels))
        else:
            raise ValueError(f"cls_token must be 'fixed' or 'learned', got {self.cls_token!r}")
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(seq.dtype), (batch, 1, channels)), seq], 1)
        length = steps + 1
        if self.positions == "sinusoidal":
            return x + jnp.asarray(sinusoidal_positions(length, channels), seq.dtype)
        if self.positions != "learned":
            raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {self.positions!r}")
        if length > self.max_positions:
            raise ValueError(f"sequence of {steps} steps + [CLS] exceeds the {self.max_positions} "
                             "learned positions; use shorter chunks or a larger max_positions")
        table = self.param("position_embeddings", _bert_init, (self.max_positions, channels))
        x = x + table[:length].astype(seq.dtype)
        x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="layer_norm")(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional replacement of the probabilities."""

    num_heads: int = 8
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, queries: jnp.ndarray, train: bool,
                 override: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
        batch, length, channels = x.shape
        heads, head_dim = self.num_heads, channels // self.num_heads
        dense = lambda name: nn.Dense(channels, dtype=self.dtype, kernel_init=_bert_init, name=name)
        split = lambda t: t.reshape(t.shape[:-1] + (heads, head_dim))
        q = split(dense("query")(queries))
        k = split(dense("key")(x))
        v = split(dense("value")(x))
        if override is None:
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
            probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
            used = nn.Dropout(self.dropout_rate)(probs, deterministic=not train)
        else:
            probs = jnp.broadcast_to(override.astype(jnp.float32),
                                     (batch, heads, queries.shape[1], length))
            used = probs
        context = jnp.einsum("bhqk,bkhd->bqhd", used.astype(self.dtype), v)
        context = context.reshape(context.shape[:2] + (channels,))
        return dense("output")(context), probs


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
                 full_last_layer: bool = False) -> tuple[jnp.ndarray, Sequence[jnp.ndarray]]:
        target = override_layer % self.num_layers
        if not -self.num_layers <= override_layer < self.num_layers:
            raise ValueError(f"override_layer {override_layer} out of range for "
                             f"{self.num_layers} layers")
        all_probs = []
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x, probs = EncoderLayer(self.num_heads, self.intermediate, self.attention_dropout,
                                    self.hidden_dropout, self.dtype, name=f"layer_{i}")(
                x, train, cls_only=last and not full_last_layer,
                override=attention_override if i == target else None)
            all_probs.append(probs)
        return x, all_probs
