"""Model construction from a config (`config.model`); what each architecture reads is in
`tagger_jax.models.registry`. Flax is imported when a model is built, not on import."""
from __future__ import annotations

from typing import Any, Mapping

from tagger_jax.models.registry import (ARCHITECTURES, LOG_MEL, WAVEFORM, WAVEFORM_SAMPLES,
                                        WAVEFORM_STEP, Architecture, Geometry, geometry,
                                        get_architecture)

N_MELS = 96
DTYPES = ("float32", "bfloat16")
CLS_TOKENS = ("fixed", "learned")  # model.cls_token: the authors' seeded vector, or a parameter
POSITIONS = ("sinusoidal", "learned")  # model.positions: training code's table, or released
FRAME_HEAD_READOUTS = ("linear", "tag_head")  # model.frame_head_readout: its own, or the tag head
# Parameter names of the tag outputs (models/tagger.py), each with one column per tag on its last
# axis: the clip classifier, and the frame head's classifier.
CLASSIFIER = "classifier"
FRAME_CLASSIFIER = "frame_classifier"
TAG_OUTPUTS = (CLASSIFIER, FRAME_CLASSIFIER)
# Names of the modules that code outside models/ reads by name (embed's intermediates, the
# readout's learning rate, the authors' checkpoint map): the front-end, the Transformer's
# embedding and its learned [CLS] parameter, the [CLS] pooler, and the convolutional back-end's
# hidden BatchNorm.
FRONTEND = "frontend"
EMBEDDING = "embedding"
CLS_PARAM = "cls"
POOLER = "pooler"
DENSE_BN = "dense_bn"

__all__ = ["ARCHITECTURES", "Architecture", "CLASSIFIER", "CLS_PARAM", "DENSE_BN", "EMBEDDING",
           "FRAME_CLASSIFIER", "FRONTEND", "Geometry", "LOG_MEL", "N_MELS", "POOLER", "TAG_OUTPUTS",
           "WAVEFORM", "WAVEFORM_SAMPLES", "WAVEFORM_STEP",
           "build_model", "geometry", "get_architecture", "input_shape", "model_fields"]


def build_model(model_config: Mapping[str, Any], num_tags: int):
    """The Flax module for `config.model` (an ml_collections ConfigDict or a plain mapping)."""
    import jax.numpy as jnp

    from tagger_jax.models.tagger import AttentionTagger, ConvTagger

    cfg = model_fields(model_config)
    check_model_config(cfg)
    arch = get_architecture(cfg)
    dtype = getattr(jnp, cfg["dtype"])
    if arch.module == "conv":
        return ConvTagger(num_tags=num_tags, conv_channels=cfg["conv_channels"],
                          timbre_norm=cfg["timbre_norm"],
                          tempo_features=cfg["tempo_features"],
                          tempo_hidden=cfg["tempo_hidden"],
                          classifier_dropout=cfg["classifier_dropout"], dtype=dtype)
    return AttentionTagger(
        frontend=arch.frontend,
        num_tags=num_tags,
        conv_channels=cfg["conv_channels"],
        attention_channels=cfg["attention_channels"],
        attention_layers=cfg["attention_layers"],
        attention_heads=cfg["attention_heads"],
        intermediate=cfg["intermediate"],
        attention_dropout=cfg["attention_dropout"],
        hidden_dropout=cfg["hidden_dropout"],
        classifier_dropout=cfg["classifier_dropout"],
        cls_token=cfg["cls_token"],
        positions=cfg["positions"],
        max_positions=cfg["max_positions"],
        frame_head=cfg["frame_head"],
        frame_head_layer=cfg["frame_head_layer"],
        frame_head_readout=cfg["frame_head_readout"],
        timbre_norm=cfg["timbre_norm"],
        tempo_features=cfg["tempo_features"],
        tempo_hidden=cfg["tempo_hidden"],
        dtype=dtype,
    )


MODEL_FIELDS = ("architecture", "conv_channels", "attention_channels", "attention_layers",
                "attention_heads", "intermediate", "attention_dropout", "hidden_dropout",
                "classifier_dropout", "cls_token", "positions", "max_positions", "frame_head",
                "frame_head_layer", "frame_head_readout",
                "timbre_norm", "tempo_features", "tempo_hidden", "dtype")


def check_model_config(model_config: Mapping[str, Any]) -> None:
    """Checks the fields of `config.model` that name a choice (architecture, dtype, cls_token,
    positions, timbre_norm, tempo_features, tempo_hidden, frame_head_layer, frame_head_readout)
    and its widths (channels, heads dividing the Transformer's width, layers) before anything is
    built or traced. Raises `errors.ConfigError` (a ValueError; exit status
    2) naming the field, its value and the choices."""
    from tagger_jax.errors import ConfigError
    from tagger_jax.models.frontends import TEMPO_FEATURES, TIMBRE_PEAK_AXES

    cfg = model_fields(model_config)
    try:
        get_architecture(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for field, choices in (("dtype", DTYPES), ("cls_token", CLS_TOKENS),
                           ("positions", POSITIONS), ("timbre_norm", tuple(TIMBRE_PEAK_AXES)),
                           ("tempo_features", TEMPO_FEATURES),
                           ("frame_head_readout", FRAME_HEAD_READOUTS)):
        if cfg[field] not in choices:
            raise ConfigError(f"model.{field} must be one of {choices}, got {cfg[field]!r}")
    if cfg["tempo_features"] != "none" and get_architecture(cfg).waveform:
        raise ConfigError(f"model.tempo_features={cfg['tempo_features']!r} needs a log-mel "
                          f"front-end; {cfg['architecture']} reads waveforms")
    if int(cfg["tempo_hidden"]) < 0 or (int(cfg["tempo_hidden"]) > 0
                                         and cfg["tempo_features"] == "none"):
        raise ConfigError(f"model.tempo_hidden must be 0, or > 0 with a tempo branch "
                          f"(model.tempo_features), got {cfg['tempo_hidden']} with "
                          f"tempo_features={cfg['tempo_features']!r}")
    if cfg["frame_head_readout"] != "linear" and not cfg["frame_head"]:
        raise ConfigError(f"model.frame_head_readout={cfg['frame_head_readout']!r} needs "
                          "model.frame_head=True")
    for field in ("conv_channels", "attention_channels", "attention_heads", "attention_layers"):
        if int(cfg[field]) < 1:
            raise ConfigError(f"model.{field} must be at least 1, got {cfg[field]}")
    if int(cfg["attention_channels"]) % int(cfg["attention_heads"]):
        raise ConfigError(f"model.attention_heads ({cfg['attention_heads']}) must divide "
                          f"model.attention_channels ({cfg['attention_channels']})")
    if not 0 <= int(cfg["frame_head_layer"]) <= int(cfg["attention_layers"]):
        raise ConfigError(f"model.frame_head_layer must be in 0..model.attention_layers "
                          f"({cfg['attention_layers']}), got {cfg['frame_head_layer']}")


def model_fields(model_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """`config.model` complete: as given when it has every field `build_model` reads
    (`MODEL_FIELDS`), else the given fields over `config_base.base_config().model`, so a partial
    mapping (an old checkpoint's, a test's) takes the defaults from their one place. A complete
    mapping needs no ml_collections (the data-stack-free GPU benchmark builds models)."""
    if all(name in model_config for name in MODEL_FIELDS):
        return model_config
    from tagger_jax.config_base import merge_over_base

    return merge_over_base({"model": dict(model_config)})[0].model


def input_shape(model_config: Mapping[str, Any], chunk_frames: int = 256) -> tuple[int, ...]:
    """Shape of one example (without batch): (96, frames) for log-mel models, else samples."""
    arch = get_architecture(model_config)
    if arch.waveform:
        return (arch.chunk_samples,)
    return (N_MELS, chunk_frames)
