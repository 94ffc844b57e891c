"""Progress for every phase of a training run (tqdm, process 0): compile, train, validate, test.

* `train_bar`: clips trained, with clips/s and an ETA of the remaining training steps. Time spent
  outside training steps (compilation, validation, checkpoints) is excluded from the rate by
  `Progress.resume_timing()`, so the ETA does not jump after each of them. The rate is the
  average of this run's timed steps, "?" until one is counted (`Progress._end_pause`).
* `Progress.phase(desc)`: a line with the elapsed time of a phase of unknown length
  (compilation), refreshed twice a second, then "desc: done in 12.3 s".
* `Progress.batches(iterable, total, desc)`: a bar over evaluation batches (validation, test).

With `enabled=False` (train.progress_bar = False, or not process 0) bars are off; the one-line
messages (`say`) are still printed on process 0.

When stderr is not a terminal (`train.py ... 2>log`, a batch system's log), a log cannot move a
cursor: the inner bars (a phase, validation) take tqdm's `position=0`, the training bar's line,
instead of the line below it that tqdm reaches with cursor-up escapes (`\x1b[A`), and bars
refresh every `LOG_INTERVAL_S` (tqdm's `mininterval`) instead of ten times a second.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Iterable, Iterator, Optional, TypeVar


T = TypeVar("T")

LOG_INTERVAL_S = 10.0  # seconds between a bar's refreshes when stderr is not a terminal
TERMINAL_INTERVAL_S = 0.5  # a phase's elapsed time on a terminal


def stderr_is_terminal() -> bool:
    """Whether tqdm's output (stderr) is a terminal that can move its cursor."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def bar_interval() -> dict:
    """tqdm keyword arguments for a bar outside `Progress` (a dataset build, a baseline's
    features): refreshed every `LOG_INTERVAL_S` when stderr is a log, not at every item."""
    return {} if stderr_is_terminal() else {"mininterval": LOG_INTERVAL_S}


class Progress:
    """The run's progress display. `enabled`: bars on process 0; messages always on process 0."""

    def __init__(self, enabled: bool):
        import jax

        self.main = jax.process_index() == 0
        self.enabled = enabled and self.main
        self.bar = None
        self.paused_at: Optional[float] = None  # the bar's clock when a pause began (`pause`)
        self.untimed = 0  # clips whose time the elapsed time leaves out (resumed, compiled steps)
        self.terminal = stderr_is_terminal()
        # tqdm options of every bar: on a terminal tqdm's defaults; in a log one line, rarely.
        self.tqdm_options = ({"dynamic_ncols": True} if self.terminal else
                             {"mininterval": LOG_INTERVAL_S})
        # ... and of bars opened while the training bar is open.
        self.inner_options = ({**self.tqdm_options, "leave": False} if self.terminal else
                              {**self.tqdm_options, "leave": False, "position": 0})

    def train_bar(self, total: int, initial: int) -> None:
        """Opens the training bar (clips), `initial` clips already done (a resumed run)."""
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="clip",
                        desc="train", smoothing=0, **self.tqdm_options)
        self.untimed = initial

    def update(self, clips: int, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.update(clips)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def skip(self, clips: int) -> None:
        """Advances the bar by `clips` without counting them or their time in the rate (a step
        that compiled)."""
        if self.bar is not None:
            self.bar.n += clips
            self.untimed += clips
            self._end_pause()
            self.bar.refresh()

    def set_postfix(self, **postfix: str) -> None:
        if self.bar is not None:
            self._settle()
            self.bar.set_postfix(postfix)

    def pause(self) -> None:
        """Marks the start of a pause of training (a compile, validation, a checkpoint save); call
        it once the device has finished the steps counted so far. `skip` / `resume_timing` then
        leave the time from here on out of the bar's elapsed time (without a mark they leave it
        in: the elapsed time is then the wall time)."""
        if self.bar is not None and self.paused_at is None:
            self.paused_at = self.bar._time()

    def resume_timing(self) -> None:
        """Ends a pause: its time leaves the elapsed time, and so the rate and ETA (see
        `pause`)."""
        if self.bar is not None:
            self._end_pause()

    def _end_pause(self) -> None:
        """Leaves the pause since `pause` (if marked) out of the bar's elapsed time and the
        untimed clips (compiled steps, a resumed run's earlier clips) out of its count.

        The bar shows the average rate of the timed steps, (n - untimed) / (wall time - pauses)
        (tqdm with `smoothing=0`: (n - initial) / elapsed, `initial` kept equal to `untimed`),
        and the ETA of the remaining clips at that rate; "?" until a timed step is counted
        (right after the first compile). It used tqdm's moving average of (clips, seconds)
        samples taken at each print, with the clips counted since the last print dropped at each
        pause, so that a sample never mixed clips before a pause with seconds after it; but in a
        log (a print every `LOG_INTERVAL_S`) a run pausing more often than that (frequent
        validation of a small dataset) dropped nearly every clip, and the bar showed 6 clips/s
        where the steps ran at 60-85 (found by a new user's trial). The average has no such
        samples to keep apart, and is what the ETA of a training should use anyway."""
        bar = self.bar
        if self.paused_at is not None:
            bar.start_t += bar._time() - self.paused_at
        bar.initial = self.untimed
        self.paused_at = None

    def _settle(self) -> None:
        """During a pause, takes the pause so far out of the bar's clock and goes on pausing from
        now, so that the bar drawn in a pause (a line said above it, a postfix set) shows the
        training's elapsed time and rate. It showed them with the pause in, then without it at
        the next step: in a trial's log, 80 clips in 00:04 at 13 clips/s during a validation,
        then 96 in 00:01 at 53."""
        if self.bar is not None and self.paused_at is not None:
            now = self.bar._time()
            self.bar.start_t += now - self.paused_at
            self.paused_at = now

    def say(self, message: str) -> None:
        """A line for the user (process 0), above the bars if there are any."""
        if not self.main:
            return
        if self.bar is not None:
            self._settle()
            self.bar.write(message)
        else:
            print(message, flush=True)

    @contextlib.contextmanager
    def phase(self, desc: str) -> Iterator[None]:
        """Shows `desc` with its elapsed time while the block runs; says how long it took."""
        start = time.perf_counter()
        stop = threading.Event()
        spinner = None
        self.pause()  # a phase under the training bar is a pause of training
        if self.enabled:
            from tqdm.auto import tqdm

            spinner = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}",
                           **self.inner_options)
            every = TERMINAL_INTERVAL_S if self.terminal else LOG_INTERVAL_S

            def refresh():
                while not stop.wait(every):
                    spinner.refresh()

            thread = threading.Thread(target=refresh, daemon=True)
            thread.start()
        try:
            yield
        finally:
            if spinner is not None:
                stop.set()
                thread.join()
                spinner.close()
        self.say(f"{desc}: done in {time.perf_counter() - start:.1f} s")

    def batches(self, iterable: Iterable[T], total: Optional[int], desc: str,
                unit: str = "batch") -> Iterable[T]:
        """`iterable` with a bar of `total` `unit`s (None: unknown) while it is consumed."""
        if not self.enabled:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, **self.inner_options)

    def close(self) -> None:
        """Closes the training bar; its last line shows the same average rate as the others."""
        if self.bar is not None:
            self._settle()
            self.bar.close()
            self.bar = None
