"""Cutting model-sized chunks out of clips: padding, training crops, evaluation and sliding windows.

Pure NumPy on arrays whose LAST axis is time, so one set of rules serves log-mel spectrograms
(n_mels, T) with chunks of 256 frames and raw waveforms (N,) with chunks of `WAVEFORM_CHUNK`
samples (the `lee_won` model). Stacked results put the chunk index first: (n, ..., chunk).

Rules (docs/audio.md explains why):
  - shorter than one chunk: `pad_to_length` repeats the clip (wraps around) to fill the chunk;
  - training: one uniform random crop, start in [0, T - chunk];
  - authors' evaluation: chunk i starts at i * ((T - chunk) // num_chunks);
  - sliding windows: starts 0, hop, 2 hop, ...; plus a last window ending at T if the hop misses it.
"""
from __future__ import annotations

import warnings

import numpy as np

from tagger_jax.models.registry import WAVEFORM_SAMPLES

SPECTROGRAM_CHUNK = 256  # frames per spectrogram chunk (about 4.1 s at hop 256, 16 kHz)
# Samples per waveform-model input (tagger_jax.models.registry states the geometry). Use it as
# `chunk` in every function here; starts and hops are then counted in samples.
WAVEFORM_CHUNK = WAVEFORM_SAMPLES
EVAL_CHUNKS = 16  # chunks per clip in the authors' evaluation
# The shortest chunk a shipped config trains on (configs/synthetic_cpu.py, soundfont_cpu.py:
# about 2 s): a dataset build warns about clips shorter than it (code SHORT_CLIP_CODE), which
# every training repeats to fill a chunk.
SHORTEST_TRAINING_CHUNK = 128
SHORT_CLIP_CODE = "short_clip"


class ShortInputWarning(UserWarning):
    """A clip shorter than one model chunk was padded (see `pad_to_length`)."""


def _length(x: np.ndarray) -> int:
    if np.ndim(x) == 0:
        raise ValueError("expected an array with a time axis (last axis), got a scalar")
    return int(np.shape(x)[-1])


def pad_to_length(x: np.ndarray, length: int) -> tuple[np.ndarray, bool]:
    """(x repeated along its last axis to `length`, whether it was padded).

    Clips at least `length` long come back unchanged (never truncated). Shorter ones are tiled:
    x[..., t % T] for t < length. Repeating real signal keeps the model's inputs in the
    distribution it was trained on; zero padding would be a constant 0 dB on a log-mel, unrelated
    to the clip's levels, and even the dB floor would inject a silence the model never saw mid-clip.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    x = np.asarray(x)
    num = _length(x)
    if num == 0:
        raise ValueError("cannot pad an empty clip (time axis of length 0)")
    if num >= length:
        return x, False
    return np.take(x, np.arange(length) % num, axis=-1), True


def pad_with_warning(x: np.ndarray, length: int, name: str) -> np.ndarray:
    """`pad_to_length`; if it padded, warns (`ShortInputWarning`) naming `name`, e.g. the file."""
    num = _length(np.asarray(x))
    padded, was_padded = pad_to_length(x, length)
    if was_padded:
        steps = "time step" if num == 1 else "time steps"
        warnings.warn(f"{name}: only {num} {steps}, shorter than one chunk of {length}; the "
                      "clip was repeated to fill the chunk", ShortInputWarning, stacklevel=2)
    return padded


def random_crop_start(num_steps: int, length: int, rng: np.random.Generator) -> int:
    """Uniform start in [0, num_steps - length] (both ends included)."""
    if num_steps < length:
        raise ValueError(f"clip of {num_steps} steps is shorter than the crop of {length}; "
                         "pad it first (pad_to_length)")
    return int(rng.integers(0, num_steps - length + 1))


def random_crop(x: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """One training crop x[..., s:s + length], s uniform in [0, T - length] (a view, not a copy)."""
    x = np.asarray(x)
    start = random_crop_start(_length(x), length, rng)
    return x[..., start:start + length]


def eval_chunk_starts(num_steps: int, chunk: int = SPECTROGRAM_CHUNK,
                      num_chunks: int = EVAL_CHUNKS) -> np.ndarray:
    """The authors' evaluation starts: chunk i starts at i * ((T - chunk) // num_chunks).

    Exactly their formula: the last chunk starts at (num_chunks - 1) * hop, which is NOT T - chunk
    (e.g. T = 1813: hop 97, starts 0, 97, ..., 1455; frames after 1711 are never seen). A clip of
    exactly `chunk` steps gives `num_chunks` copies of start 0.
    """
    if num_chunks <= 0 or chunk <= 0:
        raise ValueError(f"chunk and num_chunks must be positive, got {chunk}, {num_chunks}")
    if num_steps < chunk:
        raise ValueError(f"clip of {num_steps} steps is shorter than one chunk of {chunk}; "
                         "pad it first (pad_to_length)")
    hop = (num_steps - chunk) // num_chunks
    return np.arange(num_chunks, dtype=np.int64) * hop


def _stack(x: np.ndarray, starts: np.ndarray, chunk: int) -> np.ndarray:
    return np.stack([x[..., s:s + chunk] for s in starts], axis=0)


def eval_chunks(x: np.ndarray, chunk: int = SPECTROGRAM_CHUNK,
                num_chunks: int = EVAL_CHUNKS) -> np.ndarray:
    """(num_chunks, ..., chunk): the chunks at `eval_chunk_starts`, stacked (a copy)."""
    x = np.asarray(x)
    return _stack(x, eval_chunk_starts(_length(x), chunk, num_chunks), chunk)


def sliding_window_starts(num_steps: int, chunk: int, hop: int) -> np.ndarray:
    """Starts 0, hop, 2 hop, ... while the window fits, plus T - chunk if the last one ends early.

    With hop <= chunk (enforced) every step is covered by at least one window, and all windows
    are full length; the last one may overlap its neighbour by more than chunk - hop. A clip of
    exactly `chunk` steps gives one window.
    """
    if chunk <= 0 or hop <= 0:
        raise ValueError(f"chunk and hop must be positive, got {chunk}, {hop}")
    if hop > chunk:
        raise ValueError(f"hop {hop} > chunk {chunk} would skip the steps between windows")
    if num_steps < chunk:
        raise ValueError(f"clip of {num_steps} steps is shorter than one chunk of {chunk}; "
                         "pad it first (pad_to_length)")
    starts = np.arange(0, num_steps - chunk + 1, hop, dtype=np.int64)
    if starts[-1] + chunk < num_steps:
        starts = np.append(starts, num_steps - chunk)
    return starts


def sliding_windows(x: np.ndarray, chunk: int, hop: int) -> np.ndarray:
    """(n, ..., chunk): the windows at `sliding_window_starts`, stacked (a copy)."""
    x = np.asarray(x)
    return _stack(x, sliding_window_starts(_length(x), chunk, hop), chunk)
