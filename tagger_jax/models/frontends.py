"""Convolutional front-ends: the spectrogram CNN of Pons et al. (2018) and the raw-waveform CNN.

Layouts are channels-last (JAX's native one): spectrograms arrive as (batch, 96 mel bands, time),
waveforms as (batch, samples); front-ends return a sequence (batch, steps, channels).

Speed: branches that share a kernel height (and the four horizontal branches) keep their own
parameters, named as in the authors' code, but run as ONE convolution whose kernel is the branches'
kernels zero-padded to the widest width and stacked on the output axis. Zero columns centred in a
"same"-padded convolution change nothing numerically, and three small convolutions with a single
input channel become one larger one, which XLA runs far better (see docs/benchmarks.md).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import flax.linen as nn
from jax import lax

Dtype = Any

# (kernel height in mel bands, kernel width in frames, output channels as a multiple of c), in the
# order of the authors' `front_end.layers.0..5`.
VERTICAL_BRANCHES = ((86, 7, 1), (86, 3, 2), (86, 1, 4), (38, 7, 1), (38, 3, 2), (38, 1, 4))
# (kernel width in frames, output channels as a multiple of c) of `front_end.layers.6..9`.
HORIZONTAL_BRANCHES = ((165, 1), (129, 2), (65, 4), (33, 8))
# Total front-end channels as a multiple of c: 7 + 7 + 15 = 29.
PONS_CHANNEL_MULTIPLE = sum(m for _, _, m in VERTICAL_BRANCHES) + sum(m for _, m in HORIZONTAL_BRANCHES)


def batch_norm(train: bool, name: str, dtype: Dtype = jnp.float32) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (eps 1e-5, running = 0.9 running + 0.1 batch)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        name=name)


class FusedSameConv(nn.Module):
    """Parallel single-input-channel convolutions, "same" in time, run as one convolution.

    Each branch i owns `kernel_i` of shape (height, widths[i], 1, features[i]) and `bias_i`, which
    is what the checkpoint importer maps onto. Output channels are the branches' concatenated in
    order. With height H the output has (input height - H + 1) rows ("valid" in frequency).
    """

    height: int
    widths: Sequence[int]
    features: Sequence[int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:  # x: (B, F, T, 1)
        max_w = max(self.widths)
        kernels, biases = [], []
        for i, (w, f) in enumerate(zip(self.widths, self.features)):
            k = self.param(f"kernel_{i}", nn.initializers.lecun_normal(), (self.height, w, 1, f))
            b = self.param(f"bias_{i}", nn.initializers.zeros, (f,))
            pad = (max_w - w) // 2  # widths are odd, so the zero columns sit symmetrically
            kernels.append(jnp.pad(k, ((0, 0), (pad, pad), (0, 0), (0, 0))))
            biases.append(b)
        kernel = jnp.concatenate(kernels, axis=-1).astype(self.dtype)
        bias = jnp.concatenate(biases).astype(self.dtype)
        y = lax.conv_general_dilated(
            x.astype(self.dtype), kernel, window_strides=(1, 1),
            padding=((0, 0), (max_w // 2, max_w // 2)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


class PonsFrontEnd(nn.Module):
    """Musically motivated CNN front-end (Pons et al., 2018) as the authors configured it.

    Ten branches on the batch-normalised spectrogram: six "vertical" (timbre) convolutions, each
    BatchNorm + ReLU + max over the remaining frequency rows, and four "horizontal" (temporal)
    1-D convolutions over the frequency-averaged spectrogram, BatchNorm + ReLU. Output:
    (batch, time, 29 * conv_channels).
    """

    conv_channels: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, spec: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        c = self.conv_channels
        x = batch_norm(train, "input_bn")(spec[..., None])  # (B, F, T, 1); statistics in float32
        outputs = []
        for height in (86, 38):
            branches = [(w, m * c) for h, w, m in VERTICAL_BRANCHES if h == height]
            y = FusedSameConv(height, [w for w, _ in branches], [f for _, f in branches],
                              dtype=self.dtype, name=f"vertical_{height}")(x)
            y = nn.relu(batch_norm(train, f"vertical_{height}_bn", self.dtype)(y))
            outputs.append(jnp.max(y, axis=1))  # max over the conv output's frequency rows
        mean = jnp.mean(x, axis=1, keepdims=True)  # (B, 1, T, 1)
        y = FusedSameConv(1, [w for w, _ in HORIZONTAL_BRANCHES],
                          [m * c for _, m in HORIZONTAL_BRANCHES], dtype=self.dtype,
                          name="horizontal")(mean)
        y = nn.relu(batch_norm(train, "horizontal_bn", self.dtype)(y))
        outputs.append(y[:, 0])
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
