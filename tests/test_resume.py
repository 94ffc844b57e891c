"""Exact resume: SIGTERM saves and exits 0; SIGKILL at an arbitrary step loses nothing.

Each run is a separate process (tests/resume_worker.py: tiny model, toy data, the authors'
plateau schedule, 4 epochs of 4 steps, a checkpoint every 3 steps and at every epoch end). The
interrupted-and-restarted run must end with exactly (bitwise) the state of an uninterrupted run:
same device count and same compiled programs (shared through a persistent compilation cache), so
CPU execution is deterministic and no tolerance is needed.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
WORKER = HERE / "resume_worker.py"
TOTAL_STEPS = 16


def _env(cache: Path) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    return env


def _start(workdir: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(workdir)], env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _summary(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("SUMMARY ")]
    assert lines, out[-3000:]
    return json.loads(lines[-1][len("SUMMARY "):])


def _logged_step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            pass  # a line being written
    return max(steps)


def _wait_for_step(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reached = _logged_step(workdir)
        if reached >= step:
            return reached
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before step {step}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _restore_state(workdir: Path, step: int) -> dict:
    from tagger_jax.checkpointing import read_checkpoint

    return read_checkpoint(workdir / "checkpoints", step)


def _validation(workdir: Path) -> list[tuple]:
    lines = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["roc_auc"], r["phase"], r["switched"]) for r in lines
            if r["split"] == "validation"]


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_matches_uninterrupted(tmp_path):
    cache = tmp_path / "jax_cache"
    ref_dir, workdir = tmp_path / "uninterrupted", tmp_path / "interrupted"
    # The uninterrupted reference runs alongside the interrupted run (XLA compiles on one core).
    reference = _start(ref_dir, cache)

    # 1. SIGTERM: the run saves a checkpoint at the step it reached and exits cleanly.
    proc = _start(workdir, cache)
    _wait_for_step(proc, workdir, 2)
    proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc)
    assert code == 0, out[-3000:]
    summary = _summary(out)
    assert summary["preempted"] and 2 <= summary["step"] < TOTAL_STEPS
    assert _steps(workdir)[-1] == summary["step"]
    term_step = summary["step"]

    # 2. Restart, then SIGKILL at an arbitrary later step (printed on failure).
    kill_at = random.Random().randint(term_step + 1, TOTAL_STEPS - 2)
    proc = _start(workdir, cache)
    killed_at = _wait_for_step(proc, workdir, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    context = f"SIGTERM at step {term_step}, SIGKILL at step >= {killed_at}"
    # Every checkpoint on disk is complete (orbax renames a checkpoint into place when done).
    for step in _steps(workdir):
        jax.tree.leaves(_restore_state(workdir, step))

    # 3. Restart: it resumes from the last complete checkpoint and finishes.
    code, out = _finish(_start(workdir, cache))
    assert code == 0, f"{context}\n{out[-3000:]}"
    summary = _summary(out)
    assert summary["step"] == TOTAL_STEPS, context

    code, out = _finish(reference)
    assert code == 0, out[-3000:]
    ref_summary = _summary(out)
    assert ref_summary["step"] == TOTAL_STEPS
    assert summary["best_validation_roc_auc"] == ref_summary["best_validation_roc_auc"], context
    # The run crossed at least one optimizer switch (with its best-model reload).
    assert any(switched for *_, switched in _validation(ref_dir)), _validation(ref_dir)

    # Same final state, bit for bit: parameters, batch statistics, optimizer state, schedule.
    ref = _restore_state(ref_dir, TOTAL_STEPS)
    got = _restore_state(workdir, TOTAL_STEPS)
    ref_leaves = jax.tree_util.tree_leaves_with_path(ref)
    got_leaves = jax.tree_util.tree_leaves_with_path(got)
    assert [p for p, _ in ref_leaves] == [p for p, _ in got_leaves]
    for (path, a), (_, b) in zip(ref_leaves, got_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=f"{jax.tree_util.keystr(path)} ({context})")
    # The same validations and schedule decisions, logged once each.
    assert _validation(workdir) == _validation(ref_dir), context
    # The exported best model is complete and loadable.
    from tagger_jax.checkpoint import load_model

    assert load_model(workdir).tags == load_model(ref_dir).tags
