"""A tiny untrained model directory for tests of the commands' behaviour (not of the numbers)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp

from tagger_jax import checkpoint
from tagger_jax.config_base import base_config
from tagger_jax.models import build_model


def save_tiny_model(directory: Path, tags: Sequence[str]) -> Path:
    """`pons_won` with c = 2, width 16, 2 heads and 64-frame chunks, saved with `tags`."""
    config = base_config()
    config.model.update(conv_channels=2, attention_channels=16, attention_heads=2,
                        intermediate=32)
    config.features.chunk_frames = 64
    model = build_model(config.model, len(tags))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 96, 64)))
    return checkpoint.save_model(directory, variables, config, list(tags))
