"""Putting per-chunk maps of a long track back on the track's time axis (pure NumPy).

A track is explained window by window (`tagger_jax.chunking.sliding_window_starts`); every
frame-aligned map of a window covers the window's frames, and a frame covered by several windows
gets the mean of their values. A clip shorter than one window was tiled to fill it
(`chunking.pad_to_length`), so window position p holds frame p % length: its copies are averaged
the same way.
"""
from __future__ import annotations

import numpy as np


def stitch(maps: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Mean of per-window maps on the track axis: (n, ..., C) at `starts` -> (..., length).

    `starts` and `length` count the maps' own time steps (frames, or waveform front-end steps).
    Every position in [0, length) must be covered by some window.
    """
    maps = np.asarray(maps)
    starts = np.asarray(starts, dtype=np.int64)
    if maps.shape[0] != starts.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps but {starts.shape[0]} window starts")
    n, width = maps.shape[0], maps.shape[-1]
    index = (starts[:, None] + np.arange(width)[None, :]) % length  # (n, C)
    lead = maps.shape[1:-1]
    flat = np.moveaxis(maps, -1, 1).reshape(n * width, -1)  # (n * C, prod(lead))
    total = np.zeros((length, flat.shape[1]), np.float64)
    np.add.at(total, index.reshape(-1), flat)
    count = np.bincount(index.reshape(-1), minlength=length)
    if np.any(count == 0):
        raise ValueError(f"windows at {starts.tolist()} of width {width} do not cover all "
                         f"{length} positions")
    mean = total / count[:, None]
    return np.moveaxis(mean.reshape((length,) + lead), 0, -1).astype(maps.dtype)
