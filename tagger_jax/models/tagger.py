"""The three architectures of the authors' code, selected by name `frontend_backend`.

* `pons_won` (the paper's): Pons spectrogram CNN -> 1x1 conv to 512 -> [CLS] + Transformer.
* `lee_won`: raw-waveform CNN (65,610 samples) -> [CLS] + Transformer.
* `pons_pons`: Pons spectrogram CNN -> convolutional back-end (no attention).

Every model maps its input to tag logits; sigmoids live in the loss and in prediction. Call them
as `model.apply(variables, x, train=..., ...)`: variables are {"params", "batch_stats"}; training
needs `mutable=["batch_stats"]` and a "dropout" RNG.
"""
from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import flax.linen as nn

from tagger_jax.models import (CLASSIFIER, DENSE_BN, EMBEDDING, FRAME_CLASSIFIER, FRONTEND,
                               POOLER)
from tagger_jax.models.frontends import LeeFrontEnd, PonsFrontEnd, batch_norm
from tagger_jax.models.transformer import Embedding, Encoder, _bert_init

Dtype = Any


class AttentionTagger(nn.Module):
    """Front-end + [CLS] Transformer encoder + tanh pooler + dropout + linear classifier.

    x: (batch, 96, frames) float log-mel in dB (`audio.log_mel`) for the "pons" front-end, one
    position per frame (frames + 1 <= max_positions; feed the chunk length the model was trained
    on, `config.features.chunk_frames`: later positions are untrained), or (batch, 65,610)
    samples for "lee". Returns logits (batch, num_tags), or (logits, attention) with
    `return_attention=True`, where attention is a list with one (batch, heads, queries, keys)
    array per layer (the last layer has the [CLS] query only unless `full_last_layer`).
    `attention_override` replaces the probabilities of layer `override_layer` with an array
    broadcastable to that shape.

    `frame_head` (not in the authors' code; a training aid): a tag classifier on every position
    of a sequence (by default the encoder's input, the 1x1 conv's output), trained against
    frame-level activity (`train.frame_loss_weight`); `return_frame_logits=True` returns (logits,
    frame logits (batch, positions, num_tags)). The tag logits never depend on it (with the
    "tag_head" readout below, training shares the tag head's parameters with it).
    `frame_head_layer` k says which sequence it reads (out of range: the encoder's ValueError): 0 the encoder's input (before the [CLS] token and positions are added),
    k >= 1 the output of encoder layer k - 1 without its [CLS] position (k = attention_layers:
    the last layer's output, computed for every query when frame logits are asked for).
    `frame_head_readout`: "linear" (default) reads the sequence with the frame head's own linear
    classifier (parameters "frame_classifier"); "tag_head" applies the tag head itself (pooler,
    dropout, classifier) at every position, so the frame loss also trains the readout that
    [CLS] uses and the model has exactly the authors' parameters.

    `timbre_norm`, `tempo_features`, `tempo_hidden` (not in the authors' code): see
    `PonsFrontEnd`; "none" and 0 are the authors' model.
    """

    frontend: str = "pons"  # "pons" (spectrogram, 96 x T) or "lee" (waveform, 65,610 samples)
    num_tags: int = 50
    conv_channels: int = 16
    attention_channels: int = 512
    attention_layers: int = 2
    attention_heads: int = 8
    intermediate: int = 2048
    attention_dropout: float = 0.4
    hidden_dropout: float = 0.4
    classifier_dropout: float = 0.5
    cls_token: str = "fixed"
    positions: str = "sinusoidal"
    max_positions: int = 271
    frame_head: bool = False
    frame_head_layer: int = 0
    frame_head_readout: str = "linear"
    timbre_norm: str = "none"
    tempo_features: str = "none"
    tempo_hidden: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_attention: bool = False,
                 attention_override: Optional[jnp.ndarray] = None, override_layer: int = -1,
                 full_last_layer: bool = False, return_frame_logits: bool = False):
        if return_frame_logits and (return_attention or not self.frame_head):
            raise ValueError("return_frame_logits needs frame_head=True and no return_attention")
        if self.frontend == "pons":
            seq = PonsFrontEnd(self.conv_channels, self.dtype, self.timbre_norm,
                               self.tempo_features, self.tempo_hidden, name=FRONTEND)(x, train)
            seq = nn.Dense(self.attention_channels, dtype=self.dtype, name="conv1x1")(seq)
            seq = nn.relu(batch_norm(train, "conv1x1_bn", self.dtype)(seq))
        elif self.frontend == "lee":
            seq = LeeFrontEnd(self.conv_channels, self.attention_channels, self.dtype,
                              name=FRONTEND)(x, train)
        else:
            raise ValueError(f"unknown front-end {self.frontend!r}")
        frame_head_layer = self.frame_head_layer if self.frame_head else 0
        h = Embedding(self.cls_token, self.positions, self.max_positions, self.hidden_dropout,
                      self.dtype, name=EMBEDDING)(seq, train)
        capture = return_frame_logits and frame_head_layer > 0
        out = Encoder(self.attention_layers, self.attention_heads, self.intermediate,
                      self.attention_dropout, self.hidden_dropout, self.dtype,
                      name="encoder")(
            h, train, attention_override, override_layer,
            full_last_layer or (capture and frame_head_layer == self.attention_layers),
            capture_layer=frame_head_layer if capture else None)
        h, attention = out[:2]
        if capture:
            seq = out[2][:, 1:]  # the frame head reads the positions, not [CLS]
        pooler = nn.Dense(self.attention_channels, dtype=self.dtype, kernel_init=_bert_init,
                          name=POOLER)
        dropout = nn.Dropout(self.classifier_dropout)
        classifier = nn.Dense(self.num_tags, dtype=jnp.float32, name=CLASSIFIER)

        def tag_head(z):  # the paper's readout: tanh pooler, dropout, linear classifier
            pooled = dropout(jnp.tanh(pooler(z)), deterministic=not train)
            return classifier(pooled.astype(jnp.float32))

        logits = tag_head(h[:, 0])  # first: [CLS] draws the same dropout mask with any head
        frame_logits = None
        if self.frame_head and self.frame_head_readout == "tag_head":
            if return_frame_logits:  # no parameters of its own: nothing to create otherwise
                frame_logits = tag_head(seq)
        elif self.frame_head:  # always called, so that init creates its parameters
            frame_logits = nn.Dense(self.num_tags, dtype=jnp.float32, name=FRAME_CLASSIFIER)(
                seq.astype(jnp.float32))
        if return_frame_logits:
            return logits, frame_logits
        return (logits, attention) if return_attention else logits


class ConvTagger(nn.Module):
    """`pons_pons`: Pons front-end + residual 1-D conv back-end + max/mean pooling + dense head."""

    num_tags: int = 50
    conv_channels: int = 16
    backend_channels: int = 512
    dense_channels: int = 500
    classifier_dropout: float = 0.5
    timbre_norm: str = "none"
    tempo_features: str = "none"
    tempo_hidden: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_attention: bool = False,
                 attention_override: Optional[jnp.ndarray] = None, override_layer: int = -1,
                 full_last_layer: bool = False):
        if return_attention or attention_override is not None:
            raise ValueError("pons_pons has no attention: attention maps and overrides need "
                             "pons_won or lee_won")
        seq = PonsFrontEnd(self.conv_channels, self.dtype, self.timbre_norm,
                           self.tempo_features, self.tempo_hidden, name=FRONTEND)(x, train)

        def block(h, i):
            h = nn.Conv(self.backend_channels, (7,), padding=((3, 3),), dtype=self.dtype,
                        name=f"conv{i}")(h)
            return nn.relu(batch_norm(train, f"bn{i}", self.dtype)(h))

        h1 = block(seq, 1)
        h2 = block(h1, 2) + h1
        h2 = nn.max_pool(h2, (2,), strides=(2,))
        h3 = block(h2, 3) + h2
        pooled = jnp.concatenate([jnp.max(h3, axis=1), jnp.mean(h3, axis=1)], axis=-1)
        h = nn.Dense(self.dense_channels, dtype=self.dtype, name="dense")(pooled)
        h = nn.relu(batch_norm(train, DENSE_BN, self.dtype)(h))
        h = nn.Dropout(self.classifier_dropout)(h, deterministic=not train)
        return nn.Dense(self.num_tags, dtype=jnp.float32, name=CLASSIFIER)(h.astype(jnp.float32))
