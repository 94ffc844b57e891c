"""Training scalars: WORKDIR/metrics.jsonl (one JSON line per record) and TensorBoard events.

Process 0 writes. On resume, lines past the resumed step (a killed run may have logged past its
last checkpoint) and the previous test result are dropped, so every step is logged once.
TensorBoard event files come from tensorboardX (no TensorFlow); the events a killed run logged
past the resumed step stay in its event file, so a resumed run's file starts with TensorBoard's
purge marker (a SessionLog START at the first step it logs, tensorboardX's `purge_step`), and
TensorBoard hides them: its curves showed those steps twice (a new user's trial).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from tagger_jax.workdir import METRICS_FILE, TENSORBOARD_DIR, check_still_there


class MetricWriter:
    """Scalars to WORKDIR/metrics.jsonl and TensorBoard event files (process 0 writes)."""

    def __init__(self, workdir: Path, resume_step: int):
        self.active = jax.process_index() == 0
        self.path = workdir / METRICS_FILE
        self.tb = None
        if not self.active:
            return
        if self.path.exists():  # a killed run may have logged past its last checkpoint
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _line_step(line) <= resume_step
                    and '"split": "test"' not in line]
            self.path.write_text("".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / TENSORBOARD_DIR),
                                purge_step=resume_step + 1 if resume_step > 0 else None)

    def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
        if not self.active:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: _jsonable(v) for k, v in scalars.items()})
        target = self.path
        try:  # a failed write names its file (a trial's full disk: a bare errno line)
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            target = self.path.parent / TENSORBOARD_DIR
            for k, v in scalars.items():
                if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{split}/{k}", float(v), int(step))
            self.tb.flush()
        except OSError as e:
            if isinstance(e, FileNotFoundError):  # the workdir deleted: said as such
                check_still_there(self.path.parent, step)
            raise OSError(e.errno, e.strerror or str(e), str(target)) from e

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # an unreadable (half-written) line is dropped


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
