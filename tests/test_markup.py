"""User text (file and tag names, titles) is never parsed as markup: a `$` in a name is drawn as
a dollar sign in every figure (it used to start Matplotlib math text and fail the figure)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from tagger_jax import evaluation
from tagger_jax.explain.plotting import Row, plot_explanation

DOLLARS = "50$ off_$"  # an even number of `$`: Matplotlib would parse " off_" as math


def test_explanation_figure_draws_dollar_names(tmp_path):
    rng = np.random.default_rng(0)
    rows = [Row(f"contribution:\n{DOLLARS}", rng.random(40), unit="p(tag)"),
            Row(f"truth: {DOLLARS}", (np.arange(40) < 20).astype(float), truth=True),
            Row(f"grad: {DOLLARS}", rng.normal(size=(96, 40)), rng.normal(size=96),
                signed=True, unit="$ per bin")]
    path = plot_explanation(tmp_path / "f.png", rng.normal(-30, 10, (96, 40)), 0.016, rows,
                            0.016, title=f"{DOLLARS}.wav")
    assert Image.open(path).size[0] > 100


def test_metrics_figure_draws_dollar_tags(tmp_path):
    metrics = {"num_clips": 3, "roc_auc_mean": 0.5, "pr_auc_mean": None, "per_tag": [
        {"tag": DOLLARS, "positives": 1, "roc_auc": 0.5, "pr_auc": 0.4},
        {"tag": "$x$", "positives": 0, "roc_auc": None, "pr_auc": None}]}
    path = evaluation.plot_metrics(metrics, tmp_path / "m.png", title=f"run {DOLLARS}")
    assert Image.open(path).size[0] > 100


def test_explanation_figure_of_a_name_in_other_scripts_warns_nothing(tmp_path, recwarn):
    """A trial's Japanese and emoji names gave two matplotlib warning lines per character the
    font lacks, on stderr among the run's own lines; the page and JSON keep the name."""
    rng = np.random.default_rng(1)
    path = plot_explanation(tmp_path / "f.png", rng.normal(-30, 10, (96, 40)), 0.016,
                            [Row("トラック", rng.random(40))], 0.016, title="日本の歌 🎵.wav")
    assert Image.open(path).size[0] > 100
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


def test_a_long_title_is_wrapped_to_the_figure(tmp_path):
    """A verifying user's long file name pushed the title's top tags off the right edge."""
    from tagger_jax.explain.plotting import TITLE_CHARS, explanation_figure

    rng = np.random.default_rng(2)
    name = "a very long file name " * 12 + ".wav"
    fig = explanation_figure(rng.normal(-30, 10, (96, 40)), 0.016, [Row("map", rng.random(40))],
                             0.016, title=f"{name}\ntop: harp 0.98, choir 0.50")
    [title] = [t for ax in fig.axes for t in (ax.title, ax._left_title) if t.get_text()]
    lines = title.get_text().split("\n")
    assert len(lines) >= 4 and max(map(len, lines)) <= TITLE_CHARS
    assert lines[-1] == "top: harp 0.98, choir 0.50"
    inches = fig.get_size_inches()[0]
    box = title.get_window_extent(fig.canvas.get_renderer())
    assert box.x1 <= inches * fig.dpi  # inside the figure
