"""What each architecture eats and how its encoder positions map to time (pure Python).

One entry per architecture of the authors' code. Everything outside `tagger_jax.models` asks this
registry instead of comparing architecture names, so adding an architecture touches this file and
its module only. No JAX import: the CLI, the chunking rules and the input pipeline read it cheaply.

Geometry facts (the authors' code):
  * spectrogram models read a (96, chunk_frames) log-mel chunk; the Pons front-end keeps the time
    axis, so one encoder position is one frame (hop 256 at 16 kHz: 16 ms);
  * `lee_won` reads 65,610 samples (about 4.1 s at 16 kHz): its stride-3 conv and four max-pools
    of 3 turn them into 270 positions of 3**5 = 243 samples each (271 with [CLS]).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

LOG_MEL = "log_mel"  # (n_mels, frames) float32, tagger_jax.audio.log_mel
WAVEFORM = "waveform"  # (samples,) float32 at the feature sample rate

WAVEFORM_SAMPLES = 65_610  # lee_won input length, 270 * 243
WAVEFORM_STEP = 243  # samples per lee_won encoder position
DEFAULT_ARCHITECTURE = "pons_won"


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One architecture's contract with the data side.

    name: the config value (`config.model.architecture`).
    input: LOG_MEL or WAVEFORM, what one window of the model's input holds.
    chunk_samples: the fixed input length of a waveform model (None: log-mel models take
      `config.features.chunk_frames` frames).
    steps_per_position: input time steps (frames or samples) per encoder position.
    has_attention: a [CLS] Transformer back-end (attention and contribution maps apply).
    module: "attention" (AttentionTagger) or "conv" (ConvTagger) in models/tagger.py.
    frontend: the AttentionTagger front-end name ("pons" or "lee"); None for conv models.
    dataset_feature: the record feature holding this input in the TFDS datasets.
    """

    name: str
    input: str
    chunk_samples: int | None
    steps_per_position: int
    has_attention: bool
    module: str
    frontend: str | None
    dataset_feature: str

    @property
    def waveform(self) -> bool:
        return self.input == WAVEFORM


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("pons_won", LOG_MEL, None, 1, True, "attention", "pons", "mel"),
    Architecture("pons_pons", LOG_MEL, None, 1, False, "conv", None, "mel"),
    Architecture("lee_won", WAVEFORM, WAVEFORM_SAMPLES, WAVEFORM_STEP, True, "attention", "lee",
                 "audio"),
)}


def get_architecture(model_config: Mapping[str, Any] | str | None) -> Architecture:
    """The registry entry of `config.model` (or of a name); ValueError naming the choices."""
    if model_config is None:
        name = DEFAULT_ARCHITECTURE
    elif isinstance(model_config, str):
        name = model_config
    else:
        name = dict(model_config).get("architecture", DEFAULT_ARCHITECTURE)
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"model.architecture must be one of {tuple(ARCHITECTURES)}, "
                         f"got {name!r}") from None


@dataclasses.dataclass(frozen=True)
class Geometry:
    """An architecture's windows in time, for given feature settings.

    chunk: window length in input time steps (frames for log-mel, samples for waveforms).
    step_s: seconds per input time step. position_s: seconds per encoder position.
    positions: encoder positions per window (without [CLS]).
    """

    architecture: Architecture
    chunk: int
    step_s: float
    position_s: float
    positions: int

    @property
    def chunk_s(self) -> float:
        return self.chunk * self.step_s

    def steps(self, seconds: float) -> int:
        """A duration in seconds as a whole number (>= 1) of input time steps."""
        return max(1, int(round(seconds / self.step_s)))


def geometry(model_config: Mapping[str, Any] | None, sample_rate: int, hop_length: int,
             chunk_frames: int) -> Geometry:
    """The window geometry of `config.model` with the features' rate, hop and chunk length."""
    arch = get_architecture(model_config)
    if arch.waveform:
        chunk, step_s = int(arch.chunk_samples), 1.0 / sample_rate
    else:
        chunk, step_s = int(chunk_frames), hop_length / sample_rate
    return Geometry(arch, chunk, step_s, step_s * arch.steps_per_position,
                    chunk // arch.steps_per_position)
