"""Geometry of the static explanation figure (`explain.plotting`): how a track is wrapped onto
lines, checked on the Matplotlib axes (count and x extent), not on pixels."""
from __future__ import annotations

import numpy as np
import pytest

from tagger_jax.explain import plotting
from tagger_jax.explain.plotting import Row

STEP = 256 / 16000  # one STFT frame, in seconds


def _line_spans(seconds: float, line_s):
    """(x limits of each line's spectrogram axes, panels per line) of a `seconds`-long figure."""
    frames = int(round(seconds / STEP))
    rng = np.random.default_rng(0)
    rows = [Row("attention", rng.random(frames), unit="weight"),
            Row("grad", rng.normal(size=(96, frames)), rng.normal(size=96), signed=True)]
    fig = plotting.explanation_figure(rng.normal(-30, 10, (96, frames)), STEP, rows, STEP,
                                      line_s=line_s)
    tops = [ax for ax in fig.axes if ax.get_ylabel() == "Hz"]
    panels = [ax for ax in fig.axes if ax.get_xlim() in [top.get_xlim() for top in tops]]
    return [top.get_xlim() for top in tops], len(panels) // len(tops), frames


def test_a_36_s_track_fills_two_equal_lines():
    """At 30 s a line, 36 s used to be a 30 s line and a 6 s one padded to 30 s (four fifths
    empty); now both lines hold 18 s at one time scale and the last ends at the track's end."""
    spans, panels, frames = _line_spans(36.0, 30.0)
    end = (frames - 0.5) * STEP
    assert panels == 3  # spectrogram, attention row, gradient map (each line)
    assert len(spans) == 2
    widths = [b - a for a, b in spans]
    assert widths[0] == pytest.approx(widths[1]) and widths[0] <= 30.0
    assert spans[0][0] == pytest.approx(-0.5 * STEP) and spans[1][1] == pytest.approx(end)
    assert spans[1][0] == pytest.approx(spans[0][1])  # lines follow each other without gap


def test_short_tracks_and_line_s_none_take_one_line():
    for seconds, line_s in ((20.0, 30.0), (30.5, 30.0), (36.0, None)):
        spans, _, frames = _line_spans(seconds, line_s)
        assert spans == [pytest.approx((-0.5 * STEP, (frames - 0.5) * STEP))]


@pytest.mark.parametrize("total, line_s, want", [
    (36.0, 30.0, (2, 18.0)), (95.0, 30.0, (4, 23.75)), (60.0, 30.0, (2, 30.0)),
    (30.5, 30.0, (1, 30.5)), (31.0, 30.0, (2, 15.5)), (600.0, 0.0, (1, 600.0)),
    (60.016, 30.0, (2, 30.008)),  # a 60 s file's figure (half-frame margins): 3 lines before
    (91.7, 30.0, (3, 91.7 / 3))])
def test_line_layout_gives_the_fewest_equal_lines_of_at_most_line_s(total, line_s, want):
    lines, span = plotting.line_layout(total, line_s)
    assert (lines, span) == (want[0], pytest.approx(want[1]))
    assert span <= (line_s or total) * plotting.LINE_TOLERANCE


def test_line_layout_refuses_an_empty_track():
    with pytest.raises(ValueError, match="positive duration"):
        plotting.line_layout(0.0, 30.0)


def test_write_audio_leaves_no_temporary_file_when_interrupted(tmp_path, monkeypatch):
    """From a new user's trial: SIGTERM while encoding left `NAME.tmp` behind."""
    import soundfile

    from tagger_jax.explain import auralise

    def interrupted(self, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(soundfile.SoundFile, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        auralise.write_audio(tmp_path / "a.ogg", np.zeros(16000), 16000)
    assert list(tmp_path.iterdir()) == []


def test_each_line_draws_only_its_part_of_a_long_track_and_every_step_once():
    """From a new user's trial: a 30-minute track's figure took 4.4 GB, every line's images
    holding the whole track's maps (as float64). Each image now holds its line's steps and one
    each side; together the lines show every step of every row, at the same times as before."""
    from matplotlib.image import AxesImage

    seconds, line_s = 95.0, 30.0  # 4 lines of 23.75 s
    frames = int(round(seconds / STEP))
    rng = np.random.default_rng(1)
    mel = rng.normal(-30, 10, (96, frames))
    att = rng.random(frames)
    att[100:140] = np.nan  # a gap no window covered
    grad = rng.normal(size=(96, frames))
    fig = plotting.explanation_figure(mel, STEP, [Row("attention", att),
                                                  Row("grad", grad, signed=True)],
                                      STEP, line_s=line_s)
    images = [im for ax in fig.axes for im in ax.get_children() if isinstance(im, AxesImage)]
    assert len(images) == 4 * 3
    per_line = frames / 4
    for im in images:
        data = np.asarray(im.get_array())
        assert data.shape[-1] <= per_line + 4, data.shape
        a, b = im.get_extent()[:2]  # its columns' times: frame j centred on j * STEP
        assert (b - a) / STEP == pytest.approx(data.shape[-1])
        j0 = round(a / STEP + 0.5)
        source = {96: mel, 1: att[None]}[data.shape[0]] if data.ndim == 2 else None
        if data.shape[0] == 96 and im.get_cmap().name != "magma":
            source = grad
        np.testing.assert_array_equal(np.ma.filled(data.astype(float), np.nan),
                                      source[:, j0:j0 + data.shape[-1]])
    firsts = sorted({round(im.get_extent()[0] / STEP + 0.5) for im in images})
    lasts = sorted({round(im.get_extent()[1] / STEP + 0.5) for im in images})
    assert firsts[0] == 0 and lasts[-1] == frames
    assert all(f <= l for f, l in zip(firsts[1:], lasts[:-1]))  # no step left out between lines


def test_colour_bars_and_band_sums_are_drawn_on_the_first_line_only():
    """They are the same on every line (one colour range per row for the whole track): drawn on
    each of a 30-minute track's 60 lines they were half its figure's axes and most of its time
    (a minute of the 95 s an explain took). Four lines: 12 panels, 3 colour bars, 1 band plot."""
    frames = int(round(95.0 / STEP))
    rng = np.random.default_rng(2)
    rows = [Row("attention", rng.random(frames), unit="weight"),
            Row("grad", rng.normal(size=(96, frames)), rng.normal(size=96), signed=True)]
    fig = plotting.explanation_figure(rng.normal(-30, 10, (96, frames)), STEP, rows, STEP,
                                      line_s=30.0)
    tops = [ax for ax in fig.axes if ax.get_ylabel() == "Hz"]
    assert len(tops) == 4
    column = {ax: ax.get_subplotspec().colspan.start for ax in fig.axes}
    bars = [ax for ax, c in column.items() if c == 1]  # colour bars (grid column 1)
    bands = [ax for ax, c in column.items() if c == 3]  # per-band sums (column 3)
    assert len(bars) == 3 and len(bands) == 1
    line_rows = len(fig.axes[0].get_gridspec().get_height_ratios()) // 4 + 1  # 3 panels + gap
    assert all(ax.get_subplotspec().rowspan.start < line_rows for ax in bars + bands)
    assert len(fig.axes) == 4 * 3 + 3 + 1
