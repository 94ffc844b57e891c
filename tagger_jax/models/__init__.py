"""Model construction from a config (`config.model`); what each architecture reads is in
`tagger_jax.models.registry`. Flax is imported when a model is built, not on import."""
from __future__ import annotations

from typing import Any, Mapping

from tagger_jax.models.registry import (ARCHITECTURES, LOG_MEL, WAVEFORM, WAVEFORM_SAMPLES,
                                        WAVEFORM_STEP, Architecture, Geometry, geometry,
                                        get_architecture)

N_MELS = 96
DTYPES = ("float32", "bfloat16")

__all__ = ["ARCHITECTURES", "Architecture", "Geometry", "LOG_MEL", "N_MELS", "WAVEFORM",
           "WAVEFORM_SAMPLES", "WAVEFORM_STEP", "build_model", "geometry", "get_architecture",
           "input_shape"]


def build_model(model_config: Mapping[str, Any], num_tags: int):
    """The Flax module for `config.model` (an ml_collections ConfigDict or a plain mapping)."""
    import jax.numpy as jnp

    from tagger_jax.models.tagger import AttentionTagger, ConvTagger

    cfg = dict(model_config)
    arch = get_architecture(cfg)
    dtype_name = cfg.get("dtype", "float32")
    if dtype_name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}")
    dtype = getattr(jnp, dtype_name)
    if arch.module == "conv":
        return ConvTagger(num_tags=num_tags, conv_channels=cfg.get("conv_channels", 16),
                          classifier_dropout=cfg.get("classifier_dropout", 0.5), dtype=dtype)
    return AttentionTagger(
        frontend=arch.frontend,
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
    """Shape of one example (without batch): (96, frames) for log-mel models, else samples."""
    arch = get_architecture(model_config)
    if arch.waveform:
        return (arch.chunk_samples,)
    return (N_MELS, chunk_frames)
