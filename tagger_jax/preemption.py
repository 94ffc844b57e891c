"""SIGTERM as a flag the training loop checks between steps, so a preempted run saves and exits."""
from __future__ import annotations

import signal
import threading

import jax


class Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (single process).

    With several processes, JAX's preemption sync service (started by jax.distributed) catches
    the signal and `reached_preemption_sync_point` makes every process stop at the same step.
    """

    def __init__(self):
        self.flag = threading.Event()
        self.previous = None
        self.multi = jax.process_count() > 1
        if not self.multi and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.flag.set()

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
