"""The training bar's rate and ETA leave out compilation and validation (issue 10, item 13)."""
from __future__ import annotations

import re

import pytest

from tagger_jax.progress import Progress


def _run(exclude_pauses: bool) -> dict:
    """A scripted run on a fake clock: a 50 s compile step, 4 steps of 1 s, a 30 s validation,
    2 steps of 1 s; 10 clips per step. Returns the bar's final format_dict."""
    clock = [0.0]
    p = Progress(True)
    p.train_bar(total=100, initial=0)
    bar = p.bar
    bar._time = lambda: clock[0]
    bar.start_t = bar.last_print_t = 0.0
    bar.mininterval, bar.miniters, bar.dynamic_miniters = 0, 0, False  # sample every update
    if exclude_pauses:
        p.pause()  # train_lib: the compile's progress.phase marks it
    clock[0] = 50.0
    p.skip(10) if exclude_pauses else p.update(10)
    for _ in range(4):
        clock[0] += 1.0
        p.update(10)
    if exclude_pauses:
        p.pause()
    clock[0] += 30.0
    if exclude_pauses:
        p.resume_timing()
    for _ in range(2):
        clock[0] += 1.0
        p.update(10)
    d = dict(bar.format_dict)
    p.close()
    return d


def _rate(d: dict) -> float:
    """The rate tqdm shows for a format_dict: its moving average, or without one (smoothing
    0, the training bar's) the average (n - initial) / elapsed."""
    return d["rate"] if d["rate"] is not None else (d["n"] - d["initial"]) / d["elapsed"]


def test_rate_and_eta_exclude_compile_and_validation(capsys):
    d = _run(exclude_pauses=True)
    assert d["n"] == 70 and _rate(d) == pytest.approx(10.0)  # clips/s of training steps only
    assert (d["total"] - d["n"]) / _rate(d) == pytest.approx(3.0)  # ETA: 3 steps of 1 s
    assert d["elapsed"] == pytest.approx(6.0)
    naive = _run(exclude_pauses=False)  # what a plain bar would say
    assert _rate(naive) < 1.0
    capsys.readouterr()


class _TickingClock:
    """A fake clock that also moves a little on every reading (time passes between calls)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-5
        return self.now


def _shown(bar) -> tuple[float | None, float | None]:
    """(clips/s, seconds remaining) as the bar prints them; None for tqdm's '?'."""
    match = re.search(r"<([^,]+), ([^,\]]+)clip/s", str(bar))
    assert match, str(bar)
    remaining, rate = match.groups()
    scale = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
    rate_value = None if rate == "?" else float(rate[:-1] if rate[-1] in scale else rate) * (
        scale[rate[-1]] if rate[-1] in scale else 1.0)
    if remaining == "?":
        return rate_value, None
    parts = [int(x) for x in remaining.split(":")]
    return rate_value, float(sum(v * 60 ** i for i, v in enumerate(reversed(parts))))


@pytest.mark.parametrize("terminal", [False, True], ids=["log", "terminal"])
def test_shown_rate_right_after_compile_and_validation_pauses(monkeypatch, capsys, terminal):
    """The bar's own print interval (0.1 s on a terminal, 10 s in a log) and tqdm's rate sample
    are kept (unlike the test above): steps of 32 clips every 0.5 s (64 clips/s), a 40 s first
    compile, a 60 s validation in the middle of a print interval, a 30 s compile of the next
    optimizer phase. Right after the first compile the rate is unknown ('?', not the compiled
    step's clips over microseconds); after each pause it is 64 clips/s, not inflated by clips
    counted before the pause, and the ETA is the remaining clips at that rate; the elapsed time
    is the time of the timed steps."""
    from tagger_jax import progress as progress_lib

    monkeypatch.setattr(progress_lib, "stderr_is_terminal", lambda: terminal)
    clock = _TickingClock()
    batch, total = 32, 32 * 2000
    p = Progress(True)
    p.train_bar(total=total, initial=0)
    bar = p.bar
    bar._time = clock
    bar.start_t = bar.last_print_t = clock()

    def steps(count: int) -> None:
        for _ in range(count):
            clock.now += 0.5
            p.update(batch)

    def check(what: str) -> None:
        p.set_postfix(loss="0.5")  # train_lib's refresh at a logging step
        rate, remaining = _shown(bar)
        assert rate == pytest.approx(64.0, rel=0.01), (what, str(bar))
        assert remaining == pytest.approx((total - bar.n) / 64.0, abs=2.0), (what, str(bar))

    p.pause()  # train_lib: progress.phase("compiling ...") marks it
    clock.now += 40.0  # the first batch and the compile of the first step
    p.skip(batch)
    assert _shown(bar) == (None, None), str(bar)  # no timed step yet
    steps(10)
    check("5 s after the first compile")
    steps(25)  # 12.5 s: in a log, the last sample was 2.5 s ago
    p.pause()
    clock.now += 60.0  # validation and a checkpoint
    p.resume_timing()
    steps(25)
    check("after the validation")
    p.pause()
    clock.now += 30.0  # the next optimizer phase compiles
    p.skip(batch)
    check("right after the second compile")
    steps(25)
    check("after the second compile")
    # The elapsed time is the training time, 85 steps of 0.5 s, without the 130 s of pauses
    # (tqdm's unpause alone also dropped the up to 10 s of steps before each pause in a log).
    assert bar.format_dict["elapsed"] == pytest.approx(85 * 0.5, abs=0.5), str(bar)
    capsys.readouterr()
    p.close()  # the last line: the average rate of the timed steps, 64 clips/s
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    match = re.search(r"([\d.]+)clip/s", last)
    assert match and float(match.group(1)) == pytest.approx(64.0, rel=0.02), last


def test_the_bar_drawn_during_a_pause_leaves_the_pause_out(monkeypatch, capsys):
    """From a new user's trial (a log): the bar drawn during a validation (a line said above it,
    the validation's postfix) counted the validation in its elapsed time and rate, 80 clips in
    00:04 at 13 clips/s, then 96 in 00:01 at 53 after the next step. Steps of 16 clips every
    0.5 s, a 20 s compile and a 60 s validation: every line drawn shows the training's time."""
    from tagger_jax import progress as progress_lib

    monkeypatch.setattr(progress_lib, "stderr_is_terminal", lambda: False)
    clock = _TickingClock()
    p = Progress(True)
    p.train_bar(total=16 * 20, initial=0)
    bar = p.bar
    bar._time = clock
    bar.start_t = bar.last_print_t = clock()
    p.pause()
    clock.now += 20.0
    p.say("compiling the train step (adamw): done in 20.0 s")  # said before the skip
    p.skip(16)
    for _ in range(4):
        clock.now += 0.5
        p.update(16)
    p.pause()
    clock.now += 30.0
    p.say("epoch 1: validation ROC-AUC 0.9 (best 0.9)")
    clock.now += 30.0
    p.set_postfix(val_roc_auc="0.9")
    p.resume_timing()
    clock.now += 0.5
    p.update(16)
    p.set_postfix(loss="0.1")
    p.close()
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
             if line.startswith("train:") and "clip/s" in line and "?" not in line]
    assert len(lines) >= 3, lines
    for line in lines:  # 00:00-00:02 of training, 32 clips/s, never the pauses' 00:20+
        elapsed = re.search(r"\[(\d\d):(\d\d)<", line)
        assert elapsed and int(elapsed.group(1)) * 60 + int(elapsed.group(2)) <= 3, line
        assert float(re.search(r"([\d.]+)clip/s", line).group(1)) == pytest.approx(
            32.0, rel=0.02), line


def test_rate_holds_when_pauses_come_more_often_than_the_logs_prints(monkeypatch, capsys):
    """From a new user's trial (a small collection validated every epoch, the bar in a log):
    steps of 32 clips every 0.5 s, a 3 s validation after every 4 steps, for 10 minutes. The
    bar printed 6 clips/s: each pause dropped the clips counted since the last print (every
    10 s in a log), which was nearly all of them. It shows the steps' 64 clips/s."""
    from tagger_jax import progress as progress_lib

    monkeypatch.setattr(progress_lib, "stderr_is_terminal", lambda: False)
    clock = _TickingClock()
    p = Progress(True)
    p.train_bar(total=32 * 4000, initial=32 * 100)  # a resumed run: 100 steps done before
    bar = p.bar
    bar._time = clock
    bar.start_t = bar.last_print_t = clock()
    p.pause()
    clock.now += 20.0
    p.skip(32)  # the first step compiles
    for _ in range(150):
        for _ in range(4):
            clock.now += 0.5
            p.update(32)
        p.pause()
        clock.now += 3.0
        p.resume_timing()
    rate, remaining = _shown(bar)
    assert rate == pytest.approx(64.0, rel=0.01), str(bar)
    assert remaining == pytest.approx((bar.total - bar.n) / 64.0, abs=2.0), str(bar)
    assert bar.format_dict["elapsed"] == pytest.approx(600 * 0.5, abs=1.0), str(bar)
    capsys.readouterr()
    p.close()


def test_disabled_progress_still_says_phase_timings(capsys):
    p = Progress(False)
    with p.phase("compiling the train step (adamw)"):
        pass
    assert p.batches([1, 2], 2, "validation") == [1, 2]
    assert capsys.readouterr().out.startswith("compiling the train step (adamw): done in ")


LOGGED_RUN = """
import time
from tagger_jax.progress import Progress
p = Progress(True)
p.train_bar(total=100, initial=0)
with p.phase("compiling the train step"):  # opened under the training bar, as train_lib does
    time.sleep(0.05)
p.update(30)
for _ in p.batches(range(5), 5, "validation", unit="clip"):
    pass
p.update(70)
import numpy as np
from tagger_jax import baseline
clips = [{"mel": np.random.default_rng(i).normal(size=(8, 64)), "tags": np.array([1, 0])}
         for i in range(3)]
with p.phase("fitting the baseline"):  # after training, as train_lib does (bars: p.batches)
    baseline.source_features(clips, "baseline features (train)", p.batches)
p.close()
"""


def test_bars_in_a_log_have_no_cursor_movement(tmp_path):
    """With stderr redirected to a file (`train.py ... 2>log`), the bars opened under the
    training bar (a phase, validation, the baseline's features) write no cursor-up escapes (tqdm's nested bars do, one
    `\\x1b[A` per refresh), and every bar still shows."""
    import subprocess
    import sys

    log = tmp_path / "log"
    with open(log, "wb") as err:
        subprocess.run([sys.executable, "-c", LOGGED_RUN], stderr=err, stdout=subprocess.PIPE,
                       check=True, timeout=120)
    text = log.read_text()
    assert "\x1b[A" not in text, repr(text)
    assert "compiling the train step" in text and "validation" in text
    assert "train: 100%" in text and "baseline features (train)" in text


def test_bars_outside_training_refresh_slowly_in_a_log(monkeypatch):
    """A dataset build's, a baseline's and convert-patches' bars: tqdm's defaults on a terminal,
    one refresh every LOG_INTERVAL_S into a log (a new user's build log held a line per clip)."""
    from tagger_jax import progress

    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    assert progress.bar_interval() == {"mininterval": progress.LOG_INTERVAL_S}
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    assert progress.bar_interval() == {}
