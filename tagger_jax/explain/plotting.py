"""Static figures in the paper's layout: the log-mel spectrogram on top, one row per map below.

All panels of a line share one time axis in seconds, so a row lines up with the spectrogram
above it. The spectrogram has a Hz axis (mel band centres) and a dB colour bar; every row has its
own colour bar with its unit (attention weight, p(tag), logit per bin, ...), since values are what
a reader compares and each map has its own range. Frame-aligned maps (attention, contribution) are
thin rows; gradient attributions are mel band x time maps on a symmetric diverging scale with
their per-band sums beside them; ground-truth rows (dataset mode) show where a tag sounds. A long
track is wrapped onto several lines of equal length, at most `line_s` seconds each
(`line_layout`: a 36 s track at 30 s gives two lines of 18 s, not 30 s and a mostly empty 6 s),
all at the same time scale, with each row's colour range the same on every line. Time steps a map does not cover (NaN: the
paper's 16 chunks leave gaps on a long track) are drawn as a grey hatched band, and colour
ranges come from the covered steps only.

User text (file and tag names) is drawn with math text off (`parse_math=False`), so a `$` in a
name is printed as it is. Uses the object-oriented Matplotlib API with the Agg canvas (no pyplot
state), so it is safe to call from any thread.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import textwrap
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tagger_jax.librosa_import import import_librosa

SPEC_HEIGHT = 2.0  # inches
ROW_HEIGHT = 0.42
MAP2D_HEIGHT = 1.3
LINE_GAP = 0.6  # inches between wrapped lines
WIDTH = 14.0
HZ_TICKS = (250, 500, 1000, 2000, 4000, 8000)
TITLE_CHARS = 130  # characters of a title line at its 10 pt over the panels' width
# Fonts for titles of other scripts (input names), used after matplotlib's DejaVu Sans where
# installed (e.g. Debian's fonts-noto-cjk, fonts-droid-fallback, fonts-wqy-zenhei).
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Noto Sans CJK TC",
                  "Droid Sans Fallback", "WenQuanYi Zen Hei", "Noto Sans", "Noto Color Emoji")


@dataclasses.dataclass(frozen=True)
class Row:
    """One panel under the spectrogram: a (T,) row or a (bands, T) map on the map time grid."""

    label: str
    values: np.ndarray
    bands: Optional[np.ndarray] = None  # (bands,) per-band sums drawn beside a 2-D map
    signed: bool = False  # a 1-D row of signed attributions: diverging colours around zero
    unit: str = ""  # the colour bar's label
    truth: bool = False  # a ground-truth 0/1 row (where a tag sounds)


def _extent(n: int, step_s: float, centred: bool) -> tuple[float, float]:
    """Time span of n steps: centred steps (STFT frames) sit on t * step, others on (t+.5) step."""
    return (-0.5 * step_s, (n - 0.5) * step_s) if centred else (0.0, n * step_s)


def _line_part(values: np.ndarray, step_s: float, centred: bool, t0: float, t1: float
               ) -> tuple[np.ndarray, tuple[float, float], int]:
    """The steps of `values` (last axis) that a line from `t0` to `t1` seconds shows, one more
    each side: (those columns, their time extent, the index of the first). Each line's images
    hold only their part: given the whole track, the 60 lines of a 30-minute track held 60
    copies of every map (4.4 GB of memory for its figure, against 0.7 GB for its maps)."""
    n = values.shape[-1]
    first = _extent(n, step_s, centred)[0]
    j0 = min(max(0, math.floor((t0 - first) / step_s) - 1), n - 1)
    j1 = max(min(n, math.ceil((t1 - first) / step_s) + 1), j0 + 1)
    return values[..., j0:j1], (first + j0 * step_s, first + j1 * step_s), j0


def mel_band_of(hz: Sequence[float], n_mels: int, sample_rate: int) -> np.ndarray:
    """Fractional mel band index of frequencies (librosa's Slaney mel centres, fmax = sr / 2)."""
    librosa = import_librosa()

    centres = librosa.mel_frequencies(n_mels + 2, fmax=sample_rate / 2)[1:-1]
    return np.interp(hz, centres, np.arange(n_mels))


GAP_STYLE = {"facecolor": "#d9d9d9", "edgecolor": "#a0a0a0", "hatch": "///", "linewidth": 0.0}


def gap_spans(values: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs of the time steps (last axis) where a map is NaN at every band."""
    gap = np.all(np.isnan(np.asarray(values, np.float64)).reshape(-1, np.shape(values)[-1]),
                 axis=0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], gap.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _scale(row: Row) -> tuple[str, float, float]:
    values = np.asarray(row.values, np.float64)
    values = values[np.isfinite(values)]  # gaps (NaN) have no value to scale
    if row.truth:
        return "Greens", 0.0, 1.0
    if not values.size:
        return ("RdBu_r", -1e-12, 1e-12) if row.signed else ("inferno", 0.0, 1e-12)
    if np.ndim(row.values) == 2 or row.signed:
        pct = 99.5 if np.ndim(row.values) == 2 else 100.0
        bound = float(np.percentile(np.abs(values), pct)) or 1e-12
        return "RdBu_r", -bound, bound
    lo, hi = float(np.min(values)), float(np.max(values))
    return "inferno", lo, hi if hi > lo else lo + 1e-12


LINE_TOLERANCE = 1.02  # a track up to 2 % longer than line_s still gets one line


def line_layout(total_s: float, line_s: Optional[float]) -> tuple[int, float]:
    """(lines, seconds per line) of a figure `total_s` long wrapped at `line_s` (None or 0: one
    line). The fewest lines of at most `line_s` seconds (`LINE_TOLERANCE` more), all of equal
    length, so the last line is as full as the others: 36 s at 30 s -> (2, 18.0); 95 s -> (4,
    23.75); a 60 s track, whose figure spans a few ms more, -> (2, 30.008)."""
    if total_s <= 0:
        raise ValueError(f"a figure needs a positive duration, got {total_s} s")
    if not line_s or total_s <= line_s * LINE_TOLERANCE:
        return 1, float(total_s)
    lines = math.ceil(total_s / (line_s * LINE_TOLERANCE))
    return lines, total_s / lines


def _colour_bar(fig, image, cax, row: Row, vmin: float, vmax: float, ndim: int) -> None:
    """A row's colour bar in `cax`: a thin row's has no ticks but its range and unit beside it;
    a 2-D map's has ticks and its unit as the label."""
    cb = fig.colorbar(image, cax=cax, ticks=[] if ndim == 1 else None)
    if ndim == 1:  # too thin for ticks: the range and unit beside the bar
        text = f"{vmin:.3g} .. {vmax:.3g}" + (f"\n{row.unit}" if row.unit else "")
        cax.text(2.2, 0.5, text, fontsize=6, transform=cax.transAxes, ha="left",
                 va="center", parse_math=False, color="#333")
    else:
        cb.ax.tick_params(labelsize=6, length=2, pad=1)
        if row.unit:
            cb.set_label(row.unit, fontsize=6, labelpad=2)


def plot_explanation(path: str | Path, log_mel: np.ndarray, spec_step_s: float,
                     rows: Sequence[Row], map_step_s: float, map_centred: bool = True,
                     title: str = "", marks_s: Sequence[float] = (), dpi: int = 100,
                     sample_rate: int = 16000, line_s: Optional[float] = 30.0,
                     fmt: Optional[str] = None) -> Path:
    """Writes `explanation_figure(...)` (PNG unless `fmt` says otherwise) and returns its path.
    Text is drawn in `fonts()`; a character none of them has is drawn as a box, without
    matplotlib's two warning lines per character (a trial's Japanese and emoji names gave 7)."""
    import matplotlib

    path = Path(path)
    with matplotlib.rc_context({"font.family": fonts()}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        fig = explanation_figure(log_mel, spec_step_s, rows, map_step_s, map_centred, title,
                                 marks_s, sample_rate, line_s)
        fig.savefig(path, dpi=dpi, format=fmt or (path.suffix[1:] or "png"))
    return path


@functools.lru_cache(maxsize=1)
def fonts() -> list[str]:
    """matplotlib's default sans-serif font followed by the `FALLBACK_FONTS` installed here
    (matplotlib takes each missing character from the next family that has it)."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *[f for f in FALLBACK_FONTS if f in installed]]


def explanation_figure(log_mel: np.ndarray, spec_step_s: float, rows: Sequence[Row],
                       map_step_s: float, map_centred: bool = True, title: str = "",
                       marks_s: Sequence[float] = (), sample_rate: int = 16000,
                       line_s: Optional[float] = 30.0):
    """The Matplotlib `Figure` (Agg canvas) of `plot_explanation`.

    `log_mel` (bands, T) in dB is drawn with centred frames every `spec_step_s` seconds; rows are
    on a grid of `map_step_s` seconds (centred like STFT frames when `map_centred`, else each
    step covers [t, t + 1) steps, as for the waveform front-end). `marks_s`: times drawn as
    dashed lines through every panel (the junction of a two-clip input). `line_s`: longest line
    in seconds (None: one line whatever the length); longer tracks get `line_layout`'s lines of
    equal length. Each line's panels are the spectrogram's axes and one per row, all sharing
    its x limits (seconds). Title lines longer than `TITLE_CHARS` are wrapped (a long file name
    pushed a verifying user's top tags off the right edge).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    title = "\n".join(textwrap.fill(line, TITLE_CHARS, break_on_hyphens=False) or line
                      for line in title.split("\n"))
    log_mel = np.asarray(log_mel)
    spec_ext = _extent(log_mel.shape[-1], spec_step_s, centred=True)
    start, end = min(spec_ext[0], 0.0), spec_ext[1]
    total = end - start
    lines, span = line_layout(total, line_s)
    heights = [SPEC_HEIGHT] + [MAP2D_HEIGHT if np.ndim(r.values) == 2 else ROW_HEIGHT
                               for r in rows]
    per_line = sum(heights)
    fig_h = lines * per_line + (lines - 1) * LINE_GAP + 1.0 + 0.3 * title.count("\n")
    fig = Figure(figsize=(WIDTH, fig_h))
    FigureCanvasAgg(fig)
    all_heights = []
    for i in range(lines):
        all_heights += heights + ([LINE_GAP] if i < lines - 1 else [])
    # columns: panel, colour bar, its labels, per-band sums
    grid = fig.add_gridspec(len(all_heights), 4, height_ratios=all_heights,
                            width_ratios=[12, 0.15, 0.95, 1.3], hspace=0.15, wspace=0.03,
                            left=0.15,
                            right=0.97, top=1 - (0.45 + 0.3 * title.count("\n")) / fig_h,
                            bottom=0.5 / fig_h)
    scales = [_scale(r) for r in rows]
    spec_lo, spec_hi = float(np.min(log_mel)), float(np.max(log_mel))
    hz = [h for h in HZ_TICKS if h <= sample_rate / 2]
    hz_pos = mel_band_of(hz, log_mel.shape[0], sample_rate)
    for line in range(lines):
        g0 = line * (len(heights) + 1)
        t0 = start + line * span
        top = fig.add_subplot(grid[g0, 0])
        part, part_ext, _ = _line_part(log_mel, spec_step_s, True, t0, t0 + span)
        im = top.imshow(part, origin="lower", aspect="auto", cmap="magma",
                        interpolation="nearest", vmin=spec_lo, vmax=spec_hi,
                        extent=(*part_ext, -0.5, log_mel.shape[0] - 0.5))
        top.set_yticks(hz_pos, [f"{h / 1000:g}k" if h >= 1000 else str(h) for h in hz])
        top.tick_params(axis="y", labelsize=7)
        top.set_ylabel("Hz", fontsize=8)
        if line == 0:  # colour bars and per-band sums: the same on every line, drawn once
            cb = fig.colorbar(im, cax=fig.add_subplot(grid[g0, 1]))
            cb.set_label("dB", fontsize=7)
            cb.ax.tick_params(labelsize=6)
        if title and line == 0:
            top.set_title(title, fontsize=10, loc="left", parse_math=False)
        axes = [top]
        for i, (row, (cmap, vmin, vmax)) in enumerate(zip(rows, scales), start=1):
            ax = fig.add_subplot(grid[g0 + i, 0], sharex=top)
            values, ext, _ = _line_part(np.asarray(row.values), map_step_s, map_centred,
                                        t0, t0 + span)
            values = np.asarray(values, np.float64)
            if values.ndim == 1:
                im = ax.imshow(values[None], aspect="auto", cmap=cmap, interpolation="nearest",
                               vmin=vmin, vmax=vmax, extent=(*ext, 0, 1))
                ax.set_yticks([])
            else:
                im = ax.imshow(values, origin="lower", aspect="auto", cmap=cmap, vmin=vmin,
                               vmax=vmax, interpolation="nearest",
                               extent=(*ext, -0.5, values.shape[0] - 0.5))
                keep = [(p, h) for p, h in zip(hz_pos, hz) if h in (250, 1000, 4000)]
                ax.set_yticks([p for p, _ in keep],
                              [f"{h / 1000:g}k" if h >= 1000 else str(h) for _, h in keep])
                ax.tick_params(axis="y", labelsize=6)
                if row.bands is not None and line == 0:  # (sums over the covered steps)
                    side = fig.add_subplot(grid[g0 + i, 3], sharey=ax)
                    bands = np.asarray(row.bands, np.float64)
                    colors = np.where(bands >= 0, "#b2182b", "#2166ac")
                    side.barh(np.arange(bands.shape[0]), bands, height=1.0, color=colors)
                    side.axvline(0.0, color="black", linewidth=0.5)
                    # Symmetric about 0, its range written inside: tick labels below the
                    # panel would run under the next row's panel.
                    finite = np.abs(bands[np.isfinite(bands)])
                    reach = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
                    side.set_xlim(-1.05 * reach, 1.05 * reach)
                    side.tick_params(labelleft=False, labelbottom=False, length=2)
                    side.set_xticks([-reach, 0.0, reach])
                    side.text(0.5, 0.98, f"per band, \u00b1{reach:.2g}", fontsize=5.5,
                              transform=side.transAxes, ha="center", va="top", color="#333",
                              parse_math=False,
                              bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.5,
                                    "edgecolor": "none"})
            for a, b in gap_spans(values):  # steps no window covered (of this line's part)
                lo_s = ext[0] + a * map_step_s
                ax.axvspan(lo_s, ext[0] + b * map_step_s, zorder=2, **GAP_STYLE)
            if line == 0:
                _colour_bar(fig, im, fig.add_subplot(grid[g0 + i, 1]), row, vmin, vmax,
                            values.ndim)
            ax.set_ylabel(row.label, rotation=0, ha="right", va="center", fontsize=7.5,
                          parse_math=False, color="#1b7837" if row.truth else "black")
            axes.append(ax)
        for ax in axes:
            for m in marks_s:
                ax.axvline(m, color="white" if ax is top else "cyan", linestyle="--",
                           linewidth=1.0)
        for ax in axes[:-1]:
            ax.tick_params(labelbottom=False)
        axes[-1].set_xlabel("time (s)", fontsize=8, labelpad=1)
        top.set_xlim(t0, t0 + span)
    return fig
