"""The training bar's rate and ETA leave out compilation and validation (issue 10, item 13)."""
from __future__ import annotations

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
    clock[0] = 50.0
    p.skip(10) if exclude_pauses else p.update(10)
    for _ in range(4):
        clock[0] += 1.0
        p.update(10)
    clock[0] += 30.0
    if exclude_pauses:
        p.resume_timing()
    for _ in range(2):
        clock[0] += 1.0
        p.update(10)
    d = dict(bar.format_dict)
    p.close()
    return d


def test_rate_and_eta_exclude_compile_and_validation(capsys):
    d = _run(exclude_pauses=True)
    assert d["n"] == 70 and d["rate"] == pytest.approx(10.0)  # clips/s of training steps only
    assert (d["total"] - d["n"]) / d["rate"] == pytest.approx(3.0)  # ETA: 3 steps of 1 s
    assert d["elapsed"] == pytest.approx(6.0)
    naive = _run(exclude_pauses=False)  # what a plain bar would say
    assert naive["rate"] < 1.0
    capsys.readouterr()


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
p.close()
"""


def test_bars_in_a_log_have_no_cursor_movement(tmp_path):
    """With stderr redirected to a file (`train.py ... 2>log`), the bars opened under the
    training bar (a phase, validation) write no cursor-up escapes (tqdm's nested bars do, one
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
    assert "train: 100%" in text
