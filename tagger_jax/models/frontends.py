"""Convolutional front-ends: the spectrogram CNN of Pons et al. (2018) and the raw-waveform CNN.

Layouts are channels-last (JAX's native one): spectrograms arrive as (batch, 96 mel bands, time),
waveforms as (batch, samples); front-ends return a sequence (batch, steps, channels).

Speed: every branch keeps its own parameters, shaped and ordered as in the authors' code, but the
single-input-channel convolutions are computed as matmuls, because XLA's CPU convolution of one
input channel is slow, and its gradient with respect to the input about 10-80 times slower
than its forward pass: the vertical branches are block-banded matmuls of frequency windows
(`vertical_convolutions`), the horizontal ones one matmul of time windows. The numbers are the
same up to float32 summation order (tests/test_model.py checks them against an independent
float64 reference); docs/benchmarks.md has the measurements.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

Dtype = Any

# The mel bands of the spectrogram the Pons front-end reads: its kernel heights (86 and 38 bands,
# 0.9 and 0.4 of it) and tempo bands are fixed for the authors' 96 (`check_spectrogram_batch`).
PONS_MEL_BANDS = 96
# (kernel height in mel bands, kernel width in frames, output channels as a multiple of c), in the
# order of the authors' `front_end.layers.0..5`.
VERTICAL_BRANCHES = ((86, 7, 1), (86, 3, 2), (86, 1, 4), (38, 7, 1), (38, 3, 2), (38, 1, 4))
# (kernel width in frames, output channels as a multiple of c) of `front_end.layers.6..9`.
HORIZONTAL_BRANCHES = ((165, 1), (129, 2), (65, 4), (33, 8))
# `timbre_norm` -> the (B, F, T) axes whose maximum the vertical branches' input is shifted by:
# "none" (the authors'), each chunk's peak, or each frame's peak over the mel bands.
TIMBRE_PEAK_AXES = {"none": None, "frame_peak": (1,), "chunk_peak": (1, 2)}
# Total front-end channels as a multiple of c: 7 + 7 + 15 = 29 (without the tempo branch).
PONS_CHANNEL_MULTIPLE = sum(m for _, _, m in VERTICAL_BRANCHES) + sum(m for _, m in HORIZONTAL_BRANCHES)
# `tempo_features` (not in the authors' code) -> the mel-band ranges [lo, hi) whose onset
# envelopes the tempo branch autocorrelates at lags 1..ONSET_MAX_LAG frames (it has
# TEMPO_CHANNEL_MULTIPLE * c channels): "none" (no branch), the whole spectrum, or the whole
# spectrum and three bands of the 96 (centres up to 0.75 kHz, 0.78-2.1 kHz, 2.2-8 kHz at 16 kHz:
# kick and bass, snare and chords, hi-hats), for reading the beat and its subdivisions apart.
TEMPO_BANDS = {"none": (), "onset_autocorrelation": ((0, PONS_MEL_BANDS),),
               "onset_autocorrelation_bands": ((0, PONS_MEL_BANDS), (0, 24), (24, 56),
                                               (56, PONS_MEL_BANDS))}
TEMPO_FEATURES = tuple(TEMPO_BANDS)
ONSET_MAX_LAG = 96  # frames: 1.54 s at hop 256 / 16 kHz, beat periods down to 39 BPM
TEMPO_CHANNEL_MULTIPLE = 2


class BatchNorm(nn.Module):
    """BatchNorm over every axis but the last, with PyTorch's semantics and Flax's variable names.

    Training normalises with the biased batch variance and updates the running variance with the
    UNBIASED one (n / (n - 1)), as `torch.nn.BatchNorm*d` does; `flax.linen.BatchNorm` uses the
    biased one, which differs visibly for small n (e.g. pons_pons' dense BatchNorm, n = batch).
    Running averages: 0.9 running + 0.1 batch (PyTorch momentum 0.1). Statistics in float32. Under
    jit with a batch sharded over devices the means are over the global batch.
    """

    train: bool = False
    epsilon: float = 1e-5
    momentum: float = 0.9
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        x32 = x.astype(jnp.float32)
        if self.train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axes)
            var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
            if not self.is_initializing():
                n = x.size // features
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = (self.momentum * ra_var.value
                                + (1 - self.momentum) * var * (n / max(n - 1, 1)))
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        return (x32 * mul + (bias - mean * mul)).astype(self.dtype)


def batch_norm(train: bool, name: str, dtype: Dtype = jnp.float32) -> BatchNorm:
    """BatchNorm with PyTorch's defaults (eps 1e-5, momentum 0.1, unbiased running variance)."""
    return BatchNorm(train=train, dtype=dtype, name=name)


def _branch_params(module: nn.Module, height: int, widths: Sequence[int],
                   features: Sequence[int]) -> list[tuple[jnp.ndarray, jnp.ndarray]]:
    """Per-branch (kernel (height, width, 1, features), bias) in the authors' branch order."""
    return [(module.param(f"kernel_{i}", nn.initializers.lecun_normal(), (height, w, 1, f)),
             module.param(f"bias_{i}", nn.initializers.zeros, (f,)))
            for i, (w, f) in enumerate(zip(widths, features))]


# Output rows of a vertical convolution computed per matmul block (`vertical_convolutions`):
# of 59 (one block), 30, 20, 12 and 6, 20 was the fastest or within the round-to-round noise of
# the fastest for the main job's 38-band branches (batch 16 x 128 frames, c = 8), forward and
# gradient, in three paired runs of `benchmarks/vertical_convolutions.py` (docs/benchmarks.md).
VERTICAL_ROWS_PER_BLOCK = 20


def _band_matrix(kernel: jnp.ndarray, block_rows: int) -> jnp.ndarray:
    """(height, w, 1, f) kernel -> (w * span, block_rows * f) banded matrix, span = block_rows +
    height - 1: entry [d * span + j, r * f + o] = kernel[j - r, d, 0, o] where 0 <= j - r <
    height, else 0. A window of `span` bands x w frames times it gives `block_rows` output rows."""
    height, width, _, features = kernel.shape
    span = block_rows + height - 1
    offset = np.arange(span)[:, None] - np.arange(block_rows)[None, :]  # (span, rows): j - r
    inside = (offset >= 0) & (offset < height)
    banded = jnp.where(inside[:, :, None, None], kernel[np.clip(offset, 0, height - 1), :, 0],
                       0.0)  # (span, block_rows, w, f)
    return jnp.transpose(banded, (2, 0, 1, 3)).reshape(width * span, block_rows * features)


@functools.partial(jax.jit, static_argnums=2)  # one program when called eagerly; inlined under jit
def vertical_convolutions(x: jnp.ndarray, kernels: tuple[jnp.ndarray, ...],
                          rows_per_block: int = VERTICAL_ROWS_PER_BLOCK) -> jnp.ndarray:
    """Parallel "valid in frequency, same in time" convolutions of a single-channel spectrogram.

    x (B, F, T); kernels: a tuple of (height, w_i, 1, f_i) arrays of one height and odd widths.
    Returns (B, F - height + 1, T, sum f_i), the branches concatenated in order: output row r,
    frame t, channel o of branch i is sum_{j, d} x[r + j, t + d - w_i // 2] kernel_i[j, d, 0, o]
    (zero outside the chunk in time), a cross-correlation as in PyTorch's `Conv2d`.

    Computed as matmuls, not as a convolution: the output rows are cut into blocks of
    `rows_per_block`; each block reads a window of rows_per_block + height - 1 bands x w_i
    frames, and one banded matrix per branch (`_band_matrix`, shared by all blocks) maps every
    window to its block's rows. The zeros of the band cost (rows_per_block + height - 1) / height times the
    convolution's multiply-adds, but the matmul and its two transposes (plain autodiff) run at
    a matmul's rate, where XLA's CPU convolution of one input channel runs far slower and its
    gradient with respect to the input slower still (docs/benchmarks.md). Errors: ValueError
    for kernels of different heights or with more than one input channel, a kernel taller than
    the input or of even width, and rows_per_block < 1.
    """
    height = kernels[0].shape[0]
    batch, bands, steps = x.shape
    rows = bands - height + 1
    if any(k.shape[0] != height or k.shape[2] != 1 for k in kernels):
        raise ValueError("vertical kernels need one height and one input channel, got shapes "
                         f"{[tuple(k.shape) for k in kernels]}")
    if rows < 1:
        raise ValueError(f"a vertical kernel of height {height} needs at least {height} bands, "
                         f"got {bands}")
    if any(k.shape[1] % 2 == 0 for k in kernels):
        raise ValueError(f"vertical kernels need odd widths, got {[k.shape[1] for k in kernels]}")
    if rows_per_block < 1:
        raise ValueError(f"rows_per_block must be at least 1, got {rows_per_block}")
    block_rows = min(rows_per_block, rows)
    blocks = -(-rows // block_rows)
    span = block_rows + height - 1
    x = jnp.pad(x, ((0, 0), (0, blocks * block_rows - rows), (0, 0)))  # rows past F: dropped
    outputs = []
    for kernel in kernels:
        width = kernel.shape[1]
        padded = jnp.pad(x, ((0, 0), (0, 0), (width // 2, width // 2)))  # (B, F', T + w - 1)
        windows = jnp.stack([padded[:, i * block_rows:i * block_rows + span]
                             for i in range(blocks)], axis=1)  # (B, blocks, span, T + w - 1)
        windows = jnp.concatenate([windows[..., d:d + steps] for d in range(width)], axis=2)
        y = jnp.swapaxes(windows, 2, 3) @ _band_matrix(kernel, block_rows)  # (B, blocks, T, .)
        y = jnp.transpose(y.reshape(batch, blocks, steps, block_rows, -1), (0, 1, 3, 2, 4))
        outputs.append(y.reshape(batch, blocks * block_rows, steps, -1)[:, :rows])
    return jnp.concatenate(outputs, axis=-1)


class VerticalBranches(nn.Module):
    """Parallel convolutions of one kernel height over a single-channel spectrogram.

    Branch i owns `kernel_i` (height, widths[i], 1, features[i]) and `bias_i`; the convolution is
    "valid" in frequency and "same" in time, and the branches' outputs are concatenated:
    (B, F - height + 1, T, sum(features)). Computed by `vertical_convolutions` (block-banded
    matmuls).
    """

    height: int
    widths: Sequence[int]
    features: Sequence[int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:  # x: (B, F, T)
        params = _branch_params(self, self.height, self.widths, self.features)
        kernels = tuple(k.astype(self.dtype) for k, _ in params)
        y = vertical_convolutions(x.astype(self.dtype), kernels)
        return y + jnp.concatenate([b for _, b in params]).astype(self.dtype)


class HorizontalBranches(nn.Module):
    """Parallel 1-D "same" convolutions over time of a single-channel sequence.

    Branch i owns `kernel_i` (1, widths[i], 1, features[i]) and `bias_i`. Computed as one matmul:
    the widest window of samples around each step against all kernels, each zero-padded (centred)
    to the widest width. The zero taps cost little here and avoid XLA's slow CPU gradient of a
    single-input-channel convolution.
    """

    widths: Sequence[int]
    features: Sequence[int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:  # x: (B, T)
        max_w = max(self.widths)
        steps = x.shape[1]
        padded = jnp.pad(x.astype(self.dtype), ((0, 0), (max_w // 2, max_w // 2)))
        windows = padded[:, np.arange(steps)[:, None] + np.arange(max_w)[None, :]]  # (B, T, max_w)
        kernels, biases = [], []
        for kernel, bias in _branch_params(self, 1, self.widths, self.features):
            pad = (max_w - kernel.shape[1]) // 2  # odd widths: the zero taps sit symmetrically
            kernels.append(jnp.pad(kernel[0, :, 0], ((pad, pad), (0, 0))))
            biases.append(bias)
        kernel = jnp.concatenate(kernels, axis=-1).astype(self.dtype)  # (max_w, sum(features))
        return windows @ kernel + jnp.concatenate(biases).astype(self.dtype)  # (B, T, sum)


def onset_envelope(spec: jnp.ndarray) -> jnp.ndarray:
    """(B, T) onset strength of a (B, F, T) log-mel: mean over bands of the positive part of the
    frame-to-frame difference (spectral flux on the log scale); frame 0 is 0. The same envelope
    as the baseline's (`tagger_jax.baseline.onset_envelope`)."""
    flux = jnp.mean(jnp.maximum(jnp.diff(spec, axis=2), 0.0), axis=1)
    return jnp.pad(flux, ((0, 0), (1, 0)))


def onset_autocorrelation(envelope: jnp.ndarray, max_lag: int = ONSET_MAX_LAG) -> jnp.ndarray:
    """(B, max_lag): autocorrelation of each mean-removed (B, T) envelope at lags 1..max_lag,
    divided by its lag 0 (0 for a constant envelope); lags beyond the chunk are 0. The
    baseline's `onset_autocorrelation` before it averages pairs of lags. Differentiable (the
    division is guarded)."""
    x = envelope - jnp.mean(envelope, axis=1, keepdims=True)
    steps = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (0, max_lag)))
    shifted = padded[:, np.arange(max_lag + 1)[:, None] + np.arange(steps)[None, :]]  # (B, L+1, T)
    ac = jnp.einsum("bt,blt->bl", x, shifted)
    energy = ac[:, :1]
    safe = jnp.where(energy > 0, energy, 1.0)
    return jnp.where(energy > 0, ac[:, 1:] / safe, 0.0)


class TempoBranch(nn.Module):
    """The chunk's onset autocorrelation (`onset_autocorrelation`, ONSET_MAX_LAG lags, of the
    onset envelope of each mel-band range in `bands`, concatenated) -> dense -> BatchNorm ->
    ReLU, the same vector at every time step: (B, T, features). With `hidden` > 0 a hidden
    layer of that width (dense -> BatchNorm -> ReLU, parameters "hidden" and "hidden_bn") comes
    first; 0 is the single layer.

    Why: tempo is a period, and none of the authors' branches computes one (a convolution is
    linear in the spectrogram; a period needs a product of the signal with itself shifted). A
    linear model on the autocorrelation of 2 s chunks tells fast from slow on `soundfont_tags`
    2.0.0 with ROC-AUC 0.98-0.99; on 3.0.0, whose classes lie 4-8 BPM from the untagged tempos,
    a linear reading stops at 0.93-0.95 for slow and a non-linear one of the same chunk reaches
    0.96-0.98; in the model, the hidden layer took slow from 0.94 to 0.96 (test), the bands
    added nothing measurable (docs/training.md, "Tempo branch"). Not in the authors' code."""

    features: int
    dtype: Dtype = jnp.float32
    hidden: int = 0
    bands: Sequence[tuple[int, int]] = ((0, 96),)

    @nn.compact
    def __call__(self, spec: jnp.ndarray, train: bool = False) -> jnp.ndarray:  # spec: (B, F, T)
        spec32 = spec.astype(jnp.float32)
        y = jnp.concatenate([onset_autocorrelation(onset_envelope(spec32[:, lo:hi]))
                             for lo, hi in self.bands], axis=-1).astype(self.dtype)
        if self.hidden:
            y = nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(y)
            y = nn.relu(batch_norm(train, "hidden_bn", self.dtype)(y))
        y = nn.Dense(self.features, dtype=self.dtype, name="dense")(y)
        y = nn.relu(batch_norm(train, "bn", self.dtype)(y))
        return jnp.broadcast_to(y[:, None, :], (y.shape[0], spec.shape[2], self.features))


def check_spectrogram_batch(spec: Any) -> None:
    """Refuses what the Pons front-end cannot read as a batch of log-mel chunks, with one line
    saying what it expected: anything but a floating-point array of shape (batch,
    `PONS_MEL_BANDS`, frames), batch and frames >= 1. Without it a transposed batch (batch,
    frames, 96) of 86 or more frames ran and gave wrong tags, a missing batch axis or an empty
    batch failed deep inside JAX, and an integer array gave all-zero gradients (found by a new
    user's trial). Shapes and dtypes are static, so under `jax.jit` this runs once, at tracing.
    Raises ValueError (shape) or TypeError (not an array, not floating point)."""
    shape, dtype = getattr(spec, "shape", None), getattr(spec, "dtype", None)
    want = f"(batch, {PONS_MEL_BANDS} mel bands, frames)"
    if shape is None or dtype is None:
        raise TypeError(f"expected a log-mel array of shape {want}, got a "
                        f"{type(spec).__name__}; convert it with np.asarray(..., np.float32)")
    shape = tuple(shape)
    if len(shape) != 3 or shape[1] != PONS_MEL_BANDS or 0 in shape:
        hint = ""
        if len(shape) == 2 and shape[0] == PONS_MEL_BANDS:
            hint = "; one spectrogram: add the batch axis (x[None])"
        elif len(shape) == 3 and shape[2] == PONS_MEL_BANDS:
            hint = "; it looks transposed: swap the last two axes (x.transpose(0, 2, 1))"
        elif 0 in shape and len(shape) == 3:
            hint = "; the batch or the chunk is empty"
        raise ValueError(f"expected a log-mel batch of shape {want}, got {shape}{hint}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"expected a floating-point log-mel batch (float32), got {dtype}; "
                        "convert it with .astype(np.float32)")


class PonsFrontEnd(nn.Module):
    """Musically motivated CNN front-end (Pons et al., 2018) as the authors configured it.

    Ten branches on the batch-normalised spectrogram: six "vertical" (timbre) convolutions, each
    BatchNorm + ReLU + max over the remaining frequency rows, and four "horizontal" (temporal)
    1-D convolutions over the frequency-averaged spectrogram, BatchNorm + ReLU. Output:
    (batch, time, 29 * conv_channels), plus 2 * conv_channels with the tempo branch.

    `tempo_features` (not in the authors' code): "onset_autocorrelation" adds `TempoBranch` on
    the whole spectrum's onset envelope, "onset_autocorrelation_bands" on it and three bands'
    (`TEMPO_BANDS`), with a hidden layer of `tempo_hidden` units when > 0; it reads the
    unnormalised input spectrogram. "none" is the authors' front-end.

    `timbre_norm` (not in the authors' code; docs/training.md, "Level-invariant timbre
    branches"): "frame_peak" / "chunk_peak" shift the vertical branches' input so that its
    maximum over each frame's mel bands / over the chunk is 0, which makes them invariant to the
    level of the input (a constant added to every bin); the horizontal branches still see it.
    """

    conv_channels: int = 16
    dtype: Dtype = jnp.float32
    timbre_norm: str = "none"
    tempo_features: str = "none"
    tempo_hidden: int = 0

    @nn.compact
    def __call__(self, spec: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """spec: (batch, 96, frames) float log-mel (dB, as `audio.log_mel` computes it); returns
        (batch, frames, channels). Errors: `check_spectrogram_batch`, and ValueError for an
        unknown `timbre_norm` or `tempo_features`."""
        check_spectrogram_batch(spec)
        c = self.conv_channels
        if self.tempo_features not in TEMPO_FEATURES:
            raise ValueError(f"model.tempo_features must be one of {TEMPO_FEATURES}, got "
                             f"{self.tempo_features!r}")
        x = batch_norm(train, "input_bn")(spec[..., None])[..., 0]  # (B, F, T), float32 stats
        if self.timbre_norm not in TIMBRE_PEAK_AXES:
            raise ValueError(f"model.timbre_norm must be one of {tuple(TIMBRE_PEAK_AXES)}, got "
                             f"{self.timbre_norm!r}")
        axes = TIMBRE_PEAK_AXES[self.timbre_norm]  # the timbre branches' input, level removed
        xv = x if axes is None else x - jnp.max(x, axis=axes, keepdims=True)
        outputs = []
        for height in (86, 38):
            branches = [(w, m * c) for h, w, m in VERTICAL_BRANCHES if h == height]
            y = VerticalBranches(height, [w for w, _ in branches], [f for _, f in branches],
                                 dtype=self.dtype, name=f"vertical_{height}")(xv)
            y = nn.relu(batch_norm(train, f"vertical_{height}_bn", self.dtype)(y))
            outputs.append(jnp.max(y, axis=1))  # max over the conv output's frequency rows
        y = HorizontalBranches([w for w, _ in HORIZONTAL_BRANCHES],
                               [m * c for _, m in HORIZONTAL_BRANCHES], dtype=self.dtype,
                               name="horizontal")(jnp.mean(x, axis=1))
        outputs.append(nn.relu(batch_norm(train, "horizontal_bn", self.dtype)(y)))
        if self.tempo_features != "none":
            outputs.append(TempoBranch(TEMPO_CHANNEL_MULTIPLE * c, self.dtype, self.tempo_hidden,
                                       TEMPO_BANDS[self.tempo_features], name="tempo")(
                spec, train))
        return jnp.concatenate(outputs, axis=-1)


class LeeFrontEnd(nn.Module):
    """Sample-level raw-waveform CNN (Lee et al.): 65,610 samples -> 270 steps of 512 channels."""

    conv_channels: int = 16
    out_channels: int = 512
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wave: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        c = self.conv_channels
        x = wave[..., None].astype(self.dtype)  # (B, N, 1)
        x = nn.Conv(c, (3,), strides=(3,), padding=((1, 1),), dtype=self.dtype, name="conv0")(x)
        x = nn.relu(batch_norm(train, "bn0", self.dtype)(x))
        for i, ch in enumerate((c, 2 * c, 2 * c, 2 * c), start=1):
            x = nn.Conv(ch, (3,), padding=((1, 1),), dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(batch_norm(train, f"bn{i}", self.dtype)(x))
            x = nn.max_pool(x, (3,), strides=(3,))
        x = nn.Conv(self.out_channels, (7,), padding=((3, 3),), dtype=self.dtype, name="conv_out")(x)
        return nn.relu(batch_norm(train, "bn_out", self.dtype)(x))
