"""`synthetic_tags`: music-like clips made by `tagger_jax.synth`, with exact tags. No download.

Nothing to download and no manual directory: the clips are synthesised with NumPy from seeds
(config seed, split, index), so any machine rebuilds the same data. `tagger-jax train` builds the
default config on first use; to build it explicitly:

    tagger-jax build-dataset synthetic_tags --data-dir ~/tensorflow_datasets
    tagger-jax build-dataset synthetic_tags --config segments --data-dir ~/tensorflow_datasets

Configs:
  - `default`: 1,500 / 200 / 300 clips (train / validation / test) of 8 s (501 frames).
  - `segments`: 200 / 100 / 200 clips whose two halves use instrument sets sharing no instrument
    tag, with a `tag_mask` (num_tags, frames) marking where each tag sounds (for the explanation
    maps).
  - `waveform`: `default` plus the 16 kHz float32 audio (for the `lee_won` waveform model).
Tags: `tagger_jax.synth.SYNTH_TAGS` (18 MagnaTagATune-style names; see that module for why each is
honest).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import tensorflow_datasets as tfds

from tagger_jax import synth
from tagger_jax.datasets._common import SPLITS, TaggingBuilder, TaggingConfig


@dataclasses.dataclass(eq=False)
class SyntheticConfig(TaggingConfig):
    """Sizes, clip length and seed of a synthetic dataset; `segments` adds the frame tag mask."""

    num_train: int = 1500
    num_validation: int = 200
    num_test: int = 300
    duration_s: float = 8.0
    seed: int = 0
    segments: bool = False
    POSITIVE: ClassVar[tuple[str, ...]] = ("num_train", "num_validation", "num_test",
                                           "duration_s")

    def num_clips(self, split: str) -> int:
        return {"train": self.num_train, "validation": self.num_validation,
                "test": self.num_test}[split]


class SyntheticTags(TaggingBuilder):
    """Music-like synthetic clips (1-3 instruments, melodies in a random key) with exact tags."""

    name = "synthetic_tags"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    NUM_TAGS = len(synth.SYNTH_TAGS)
    TAGS = tuple(synth.SYNTH_TAGS)
    BUILDER_CONFIGS = [
        SyntheticConfig(name="default", description="1,500/200/300 clips of 8 s."),
        SyntheticConfig(name="segments", num_train=200, num_validation=100, num_test=200,
                        segments=True, description="Two halves with different instruments and "
                                                   "a frame-level tag mask."),
        SyntheticConfig(name="waveform", waveform=True,
                        description="`default` plus the 16 kHz waveform (lee_won)."),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _has_tag_mask(self) -> bool:
        return bool(self.builder_config.segments)

    def _split_generators(self, dl_manager):
        config = self.builder_config
        self._set_tags(self.TAGS)
        self._note("source", "tagger_jax.synth")
        self._note("config", {"seed": config.seed, "duration_s": config.duration_s,
                              "segments": config.segments,
                              "num_clips": {s: config.num_clips(s) for s in SPLITS}})
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        from tagger_jax.datasets import _extract

        config = self.builder_config
        split_id = SPLITS.index(split)
        jobs = [{"seed": (config.seed, split_id, i), "duration_s": config.duration_s,
                 "segments": config.segments, "waveform": config.waveform,
                 "clip_id": f"{split}-{i:05d}", "path": f"synth://{config.seed}/{split}/{i}"}
                for i in range(config.num_clips(split))]
        examples = self._map(_extract.synth_example, jobs, f"{self.name} {split}", chunksize=4)
        for i, example in enumerate(examples):
            yield i, example
