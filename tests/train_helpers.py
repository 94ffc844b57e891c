"""Shared by the training tests: a tiny model config and an in-memory, learnable toy dataset.

The toy data needs no dataset build: records are dicts like those of `tagger_jax.datasets`
("mel" (96, T) float16, "tags" multi-hot), fed through the real grain input pipeline. Tag k adds
energy to its own band of mel bins, so the labels are learnable in a few steps.
"""
from __future__ import annotations

import numpy as np

from tagger_jax import input_pipeline
from tagger_jax.config_base import base_config
from tagger_jax.train_data import TrainData

NUM_TAGS = 4
TAGS = tuple(f"tag{k}" for k in range(NUM_TAGS))


def tiny_config(**train_overrides):
    """A model small enough to compile and train in seconds on 2 CPU cores."""
    c = base_config()
    m = c.model
    m.conv_channels = 2
    m.attention_channels = 32
    m.attention_heads = 2
    m.intermediate = 64
    m.attention_layers = 1
    m.attention_dropout = m.hidden_dropout = 0.1
    m.classifier_dropout = 0.1
    c.features.eval_chunks = 4  # the 16-chunk protocol with fewer chunks: 4x cheaper validation
    c.data.name = "toy"
    c.data.num_workers = 0
    t = c.train
    t.batch_size = 8
    t.eval_batch_size = 8
    t.num_epochs = 3
    t.optimizer = "adamw"
    t.learning_rate = 3e-3
    t.weight_decay = 1e-4
    t.warmup_steps = 2
    t.log_every_steps = 1
    t.checkpoint_every_steps = 3
    t.progress_bar = False
    t.prng_impl = "threefry2x32"
    for k, v in train_overrides.items():
        setattr(t, k, v)
    return c


def toy_records(n: int, seed: int, frames: int = 300) -> list[dict]:
    """`n` clips of `frames` log-mel frames; tag k raises mel bins [20k + 5, 20k + 20)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        tags = (rng.random(NUM_TAGS) < 0.4).astype(np.int64)
        mel = rng.normal(-40.0, 5.0, (96, frames))
        for k in np.flatnonzero(tags):
            mel[20 * k + 5:20 * k + 20] += 15.0
        records.append({"mel": mel.astype(np.float16), "tags": tags, "clip_id": str(i)})
    return records


def toy_data(config, num_train: int = 32, num_eval: int = 8, seed: int = 0) -> TrainData:
    """TrainData over in-memory toy records, through the project's grain input pipeline."""
    import jax

    train_source = toy_records(num_train, seed)
    eval_source = toy_records(num_eval, seed + 1)
    t = config.train
    loader = input_pipeline.train_loader(
        train_source, global_batch_size=t.batch_size, seed=t.seed, crop_frames=256,
        num_epochs=t.num_epochs, process_index=jax.process_index(),
        process_count=jax.process_count(), num_workers=0,
        local_device_count=jax.local_device_count())
    return TrainData(train=loader,
                     steps_per_epoch=input_pipeline.steps_per_epoch(num_train, t.batch_size),
                     eval_source=eval_source, tag_names=TAGS, test_source=eval_source)
