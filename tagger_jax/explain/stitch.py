"""Putting per-chunk maps of a long track back on the track's time axis (pure NumPy).

A track is explained window by window (`tagger_jax.chunking.sliding_window_starts`); every
frame-aligned map of a window covers the window's frames, and a frame covered by several windows
gets the mean of their values. A clip shorter than one window was tiled to fill it
(`chunking.pad_to_length`), so window position p holds frame p % length: its copies are averaged
the same way. Windows that leave gaps (the paper's 16 evenly spaced chunks on a track longer
than 16 chunks, `chunking.eval_chunk_starts`) are stitched with `gaps=True`: a frame no window
covers is NaN, never a made-up value.
"""
from __future__ import annotations

import numpy as np


def covered(starts: np.ndarray, width: int, length: int) -> np.ndarray:
    """(length,) bool: the positions that windows of `width` steps at `starts` cover (a window
    running past the end wraps around, as a tiled short clip does)."""
    starts = np.asarray(starts, dtype=np.int64)
    index = (starts[:, None] + np.arange(width)[None, :]) % length
    return np.bincount(index.reshape(-1), minlength=length) > 0


def stitch(maps: np.ndarray, starts: np.ndarray, length: int, gaps: bool = False) -> np.ndarray:
    """Mean of per-window maps on the track axis: (n, ..., C) at `starts` -> (..., length).

    `starts` and `length` count the maps' own time steps (frames, or waveform front-end steps).
    Without `gaps`, every position in [0, length) must be covered by some window (ValueError
    otherwise); with `gaps`, positions no window covers are NaN (see `covered`).
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
    if np.any(count == 0) and not gaps:
        raise ValueError(f"windows at {starts.tolist()} of width {width} do not cover all "
                         f"{length} positions")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count[:, None]  # 0 / 0 = NaN where no window covers
    dtype = maps.dtype if np.issubdtype(maps.dtype, np.floating) else np.float64
    return np.moveaxis(mean.reshape((length,) + lead), 0, -1).astype(dtype)
