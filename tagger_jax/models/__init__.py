"""Model construction from a config (`config.model`), and the input each architecture reads."""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import flax.linen as nn

from tagger_jax.models.tagger import AttentionTagger, ConvTagger

ARCHITECTURES = ("pons_won", "pons_pons", "lee_won")
N_MELS = 96
WAVEFORM_SAMPLES = 65_610  # lee_won input: 3^9 * 10 / 3 samples, about 4.1 s at 16 kHz
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(model_config: Mapping[str, Any], num_tags: int) -> nn.Module:
    """The Flax module for `config.model` (an ml_collections ConfigDict or a plain mapping)."""
    cfg = dict(model_config)
    arch = cfg.get("architecture", "pons_won")
    dtype_name = cfg.get("dtype", "float32")
    if dtype_name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}")
    dtype = DTYPES[dtype_name]
    if arch == "pons_pons":
        return ConvTagger(num_tags=num_tags, conv_channels=cfg.get("conv_channels", 16),
                          classifier_dropout=cfg.get("classifier_dropout", 0.5), dtype=dtype)
    if arch not in ("pons_won", "lee_won"):
        raise ValueError(f"model.architecture must be one of {ARCHITECTURES}, got {arch!r}")
    return AttentionTagger(
        frontend="pons" if arch == "pons_won" else "lee",
        num_tags=num_tags,
        conv_channels=cfg.get("conv_channels", 16),
        attention_channels=cfg.get("attention_channels", 512),
        attention_layers=cfg.get("attention_layers", 2),
        attention_heads=cfg.get("attention_heads", 8),
        intermediate=cfg.get("intermediate", 2048),
        attention_dropout=cfg.get("attention_dropout", 0.4),
        hidden_dropout=cfg.get("hidden_dropout", 0.4),
        classifier_dropout=cfg.get("classifier_dropout", 0.5),
        cls_token=cfg.get("cls_token", "fixed"),
        positions=cfg.get("positions", "sinusoidal"),
        max_positions=cfg.get("max_positions", 271),
        dtype=dtype,
    )


def input_shape(model_config: Mapping[str, Any], chunk_frames: int = 256) -> tuple[int, ...]:
    """Shape of one example (without batch): (96, frames) for spectrogram models, else samples."""
    if dict(model_config).get("architecture", "pons_won") == "lee_won":
        return (WAVEFORM_SAMPLES,)
    return (N_MELS, chunk_frames)
