"""SIGTERM during training: a flag the loop checks between steps, so a preempted run saves and
exits; outside the loop (restoring, loading data, testing) an exception that ends the run at once.
"""
from __future__ import annotations

import signal
import threading

import jax


class Preempted(BaseException):
    """SIGTERM outside the training loop; the message says what is kept. A BaseException, as
    KeyboardInterrupt, so that no `except Exception` on the way (a checkpoint restore trying an
    older step, a test's per-split handling) mistakes it for a failure of its own."""


class Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (single process).

    Installed from the start of a run: after `defer()` (the training loop) the signal sets the
    flag and the loop saves a checkpoint at the next step boundary; outside it the signal raises
    `Preempted(f"... {what}")`, where `what` is the phase named by the last `during(...)`, since
    there is nothing to save then (before the loop: no new step; after it: the checkpoint of the
    last step is saved, tests are reused or rerun on the next start).

    With several processes, JAX's preemption sync service (started by jax.distributed) catches
    the signal and `reached_preemption_sync_point` makes every process stop at the same step; no
    handler is installed then.
    """

    def __init__(self):
        self.flag = threading.Event()
        self.previous = None
        self.what = "before the first step of this run"
        self._deferring = False
        self.multi = jax.process_count() > 1
        if not self.multi and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        from tagger_jax.errors import redeliver_if_swallowed

        self.flag.set()
        if not self._deferring and not redeliver_if_swallowed(signum, frame):
            raise Preempted(self.what)

    def during(self, what: str) -> None:
        """Names the phase a SIGTERM outside the loop is reported in ("while testing", ...)."""
        self.what = what

    def check(self) -> None:
        """Raises `Preempted` if a SIGTERM came outside the loop and its exception was lost: an
        exception raised in a signal handler surfaces wherever Python runs then, and inside
        some callbacks (JAX's garbage-collection callback) it is printed and dropped. Called
        between the phases after training."""
        if self.flag.is_set() and not self._deferring:
            raise Preempted(self.what)

    def defer(self, deferring: bool = True) -> None:
        """From now on a SIGTERM only sets the flag (checked by `reached`): the training loop; or,
        with False, raises `Preempted` again."""
        self._deferring = deferring

    def reached(self, step: int) -> bool:
        if self.multi:
            from jax.experimental import multihost_utils
            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # preemption service disabled
                return False
        return self.flag.is_set()

    def close(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None
