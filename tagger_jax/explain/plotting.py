"""The paper's figure layout: the log-mel spectrogram on top, one heat-map row per map below.

All panels share one time axis in seconds, so a row lines up with the spectrogram above it.
Frame-aligned maps (attention, contribution) are thin rows with their own colour range (printed on
the right, as the values are what a reader compares); gradient attributions are frequency x time
maps on a symmetric diverging scale with their per-band sums beside them. Uses the object-oriented
Matplotlib API with the Agg canvas (no pyplot state), so it is safe to call from any thread.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

SPEC_HEIGHT = 2.2  # inches
ROW_HEIGHT = 0.38
MAP2D_HEIGHT = 1.3
WIDTH = 13.0


@dataclasses.dataclass(frozen=True)
class Row:
    """One panel under the spectrogram: a (T,) row or a (bands, T) map on the map time grid."""

    label: str
    values: np.ndarray
    bands: Optional[np.ndarray] = None  # (bands,) per-band sums drawn beside a 2-D map
    signed: bool = False  # a 1-D row of signed attributions: diverging colours around zero


def _extent(n: int, step_s: float, centred: bool) -> tuple[float, float]:
    """Time span of n steps: centred steps (STFT frames) sit on t * step, others on (t+.5) step."""
    return (-0.5 * step_s, (n - 0.5) * step_s) if centred else (0.0, n * step_s)


def plot_explanation(path: str | Path, log_mel: np.ndarray, spec_step_s: float,
                     rows: Sequence[Row], map_step_s: float, map_centred: bool = True,
                     title: str = "", marks_s: Sequence[float] = (), dpi: int = 110) -> Path:
    """Writes the figure as PNG and returns its path.

    `log_mel` (bands, T) is drawn with centred frames every `spec_step_s` seconds; rows are on a
    grid of `map_step_s` seconds (centred like STFT frames when `map_centred`, else each step
    covers [t, t + 1) steps, as for the waveform front-end). `marks_s`: times drawn as dashed
    lines through every panel (the junction of a two-clip input).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heights = [SPEC_HEIGHT] + [MAP2D_HEIGHT if r.values.ndim == 2 else ROW_HEIGHT for r in rows]
    fig = Figure(figsize=(WIDTH, sum(heights) + 1.0))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=[12, 1.4],
                            hspace=0.12, wspace=0.03, left=0.2, right=0.96, top=1 - 0.45 / (
                                sum(heights) + 1.0), bottom=0.55 / (sum(heights) + 1.0))
    spec_ext = _extent(log_mel.shape[-1], spec_step_s, centred=True)
    top = fig.add_subplot(grid[0, 0])
    top.imshow(log_mel, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
               extent=(*spec_ext, -0.5, log_mel.shape[0] - 0.5))
    top.set_ylabel("mel band", rotation=0, ha="right", va="center")
    if title:
        top.set_title(title, fontsize=10, loc="left")
    axes = [top]
    for i, row in enumerate(rows, start=1):
        ax = fig.add_subplot(grid[i, 0], sharex=top)
        values = np.asarray(row.values, np.float64)
        ext = _extent(values.shape[-1], map_step_s, map_centred)
        if values.ndim == 1:
            lo, hi = float(np.min(values)), float(np.max(values))
            if row.signed:
                bound = max(abs(lo), abs(hi)) or 1e-12
                cmap, vmin, vmax = "RdBu_r", -bound, bound
            else:
                cmap, vmin, vmax = "inferno", lo, hi if hi > lo else lo + 1e-12
            ax.imshow(values[None], aspect="auto", cmap=cmap, interpolation="nearest",
                      vmin=vmin, vmax=vmax, extent=(*ext, 0, 1))
            ax.set_yticks([])
            ax.text(1.005, 0.5, f"{lo:.3g}..{hi:.3g}", transform=ax.transAxes, fontsize=7,
                    va="center", ha="left")
        else:
            bound = float(np.percentile(np.abs(values), 99.5)) or 1e-12
            ax.imshow(values, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-bound,
                      vmax=bound, interpolation="nearest",
                      extent=(*ext, -0.5, values.shape[0] - 0.5))
            ax.set_yticks([0, values.shape[0] - 1])
            ax.tick_params(axis="y", labelsize=7)
            if row.bands is not None:
                side = fig.add_subplot(grid[i, 1], sharey=ax)
                bands = np.asarray(row.bands, np.float64)
                colors = np.where(bands >= 0, "#b2182b", "#2166ac")
                side.barh(np.arange(bands.shape[0]), bands, height=1.0, color=colors)
                side.axvline(0.0, color="black", linewidth=0.5)
                side.tick_params(labelleft=False, labelsize=6)
                side.locator_params(axis="x", nbins=2)
                if i == len(rows) or all(r.values.ndim == 1 for r in rows[i:]):
                    side.set_xlabel("per band", fontsize=7)
        ax.set_ylabel(row.label, rotation=0, ha="right", va="center", fontsize=8)
        axes.append(ax)
    for ax in axes:
        for m in marks_s:
            ax.axvline(m, color="white" if ax is top else "cyan", linestyle="--", linewidth=1.0)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("time (s)")
    top.set_xlim(min(spec_ext[0], 0.0), spec_ext[1])
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
