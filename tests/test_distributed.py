"""Data parallelism: 4 devices, and 2 processes x 2 devices, compute what 1 device computes.

Three runs of tests/distributed_worker.py (3 train steps of the tiny model, AdamW, dropout on,
threefry keys, float32, global batch 8 read through the project's input pipeline), started
together:

* 1 process, 1 device (the reference);
* 1 process, 4 forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=4);
* 2 processes on localhost joined by jax.distributed (CPU collectives: gloo), 2 devices each,
  each reading its own half of every global batch.

Tolerances (float32): the losses agree to 1e-6 relative (the global-batch mean, and BatchNorm's
global-batch statistics, only change summation order); batch statistics to 1e-5 (absolute and
relative). Parameters agree to 1e-4 absolute: the largest differences (~5e-5 here) sit on the
biases of convolutions that feed a BatchNorm, whose true gradient is exactly zero, so Adam's
normalisation turns float round-off of order 1e-9 into steps of up to the learning rate; all other
parameters agree to 1e-4 relative. For scale: BatchNorm statistics per device (batches of 2)
instead of over the global batch change the first loss by about 1%.

Should JAX abort at exit in the coordinator's shutdown after the two-process job has done its work
(seen once in CI before `sharding.delay_service_shutdown` existed), that job is rerun once with a
warning; any other failure, or a second abort, fails.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from process_helpers import cpu_env, distributed_envs, free_port

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
STEPS = 3


# What process 0's log shows of that abort at exit (the module docstring says what is done).
SHUTDOWN_ABORT = ("DistributedRuntimeService::Shutdown", "queue.Pop() == nullptr")


def _start(specs):
    return [subprocess.Popen([sys.executable, str(WORKER), str(path), str(STEPS)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for env, path in specs]


def _finish(name, procs, everything):
    """Waits for a job's processes: their return codes and logs (a timeout kills every job)."""
    logs = []
    for p in procs:
        try:
            log, _ = p.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            for q in everything:
                q.kill()
            pytest.fail(f"{name} timed out; logs of its processes that ended:\n"
                        + "\n".join(log[-4000:] for log in logs))
        logs.append(log)
    return [p.returncode for p in procs], logs


def _aborted_at_shutdown(rc: int, log: str) -> bool:
    return rc == -signal.SIGABRT and all(s in log for s in SHUTDOWN_ABORT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")

    def two_processes():
        return [(env, out / "two_processes.npz") for env in distributed_envs(2, 2, free_port())]

    jobs = {"one": [(cpu_env(1), out / "one.npz")], "four": [(cpu_env(4), out / "four.npz")],
            "two_processes": two_processes()}
    procs = {name: _start(specs) for name, specs in jobs.items()}
    everything = [p for ps in procs.values() for p in ps]
    results = {}
    for name, ps in procs.items():
        rcs, logs = _finish(name, ps, everything)
        # Process 0 writes the results only after both processes' work, done in lockstep.
        if (name == "two_processes" and any(rcs) and jobs[name][0][1].exists()
                and all(rc == 0 or _aborted_at_shutdown(rc, log) for rc, log in zip(rcs, logs))):
            warnings.warn("two_processes: JAX aborted at exit in the coordination service's "
                          "shutdown after the work was done; rerunning the job once")
            jobs[name][0][1].unlink()
            ps = _start(two_processes())
            rcs, logs = _finish(name, ps, ps)
        for rc, log in zip(rcs, logs):
            assert rc == 0, f"{name} failed:\n{log[-4000:]}"
        results[name] = dict(np.load(jobs[name][0][1]))
    return results


class _Part:
    """A fake client or service of JAX's distributed state: records its shutdown."""

    def __init__(self, name, events):
        self.name, self.events = name, events

    def shutdown(self):
        self.events.append(self.name)


@pytest.fixture()
def fake_state(monkeypatch):
    """JAX's own `State` (its shutdown sequence unchanged) holding fake parts."""
    from jax._src import distributed as jax_distributed

    state = jax_distributed.State()
    monkeypatch.setattr(jax_distributed, "global_state", state)
    return state


def test_coordinator_stops_its_service_a_grace_after_the_barrier(fake_state):
    """JAX's `jax.distributed.shutdown` on process 0, as at exit: the client first (the shutdown
    barrier), then the wait, then the service. Other processes run no service: nothing waits."""
    import jax

    from tagger_jax import sharding

    events = []
    sleep = lambda s: events.append(f"sleep {s}")  # noqa: E731
    fake_state.client, fake_state.service = _Part("client", events), _Part("service", events)
    assert sharding.delay_service_shutdown(sleep=sleep)
    assert sharding.delay_service_shutdown(sleep=sleep)  # a second call does not wrap twice
    jax.distributed.shutdown()
    assert events == ["client", f"sleep {sharding.SHUTDOWN_GRACE_S}", "service"]
    assert not jax.distributed.is_initialized() and fake_state.service is None
    events.clear()
    fake_state.client = _Part("client", events)
    assert not sharding.delay_service_shutdown(grace_s=5.0, sleep=sleep)
    jax.distributed.shutdown()
    assert events == ["client"]


def test_initialize_delays_the_service_shutdown(fake_state, monkeypatch):
    """`maybe_initialize_distributed` installs the delay right after `jax.distributed.initialize`,
    passing the environment's process count and index."""
    import jax

    from tagger_jax import sharding

    events, calls = [], []

    def initialize(**kwargs):
        calls.append(kwargs)
        fake_state.client, fake_state.service = _Part("client", events), _Part("service", events)

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    connected = []  # the first collective, with Gloo's stdout line sent to stderr
    monkeypatch.setattr(sharding, "connect_with_stdout_on_stderr",
                        lambda: connected.append(len(calls)))
    monkeypatch.setenv(sharding.ENV_COORDINATOR, "127.0.0.1:1")
    monkeypatch.setenv(sharding.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(sharding.ENV_PROCESS_ID, "0")
    assert sharding.maybe_initialize_distributed()
    assert calls == [{"num_processes": 2, "process_id": 0,
                      "initialization_timeout": sharding.INIT_TIMEOUT_S}]
    assert connected == [1]  # after joining
    assert isinstance(fake_state.service, sharding._DelayedShutdown)
    assert sharding.maybe_initialize_distributed() and len(calls) == 1  # already initialized
    fake_state.service.sleep = lambda s: events.append("sleep")
    jax.distributed.shutdown()
    assert events == ["client", "sleep", "service"]


def test_the_first_collective_writes_gloos_stdout_line_to_stderr(monkeypatch, capfd):
    """From a new user's two-process `tag`: "[Gloo] Rank 0 is connected to 1 peer ranks ..."
    came first on stdout, among the results. Gloo connects at the run's first collective, which
    now runs with file descriptor 1 on stderr; stdout is back afterwards."""
    import os

    from jax.experimental import multihost_utils

    from tagger_jax import sharding

    def barrier(name):  # what Gloo does in C++: a write to file descriptor 1
        os.write(1, b"[Gloo] Rank 0 is connected to 1 peer ranks.\n")

    monkeypatch.setattr(multihost_utils, "sync_global_devices", barrier)
    print("before", flush=True)
    sharding.connect_with_stdout_on_stderr()
    print("after", flush=True)
    out, err = capfd.readouterr()
    assert out == "before\nafter\n"
    assert err == "[Gloo] Rank 0 is connected to 1 peer ranks.\n"


@pytest.mark.parametrize("preemption", [False, True])
def test_only_training_hands_sigterm_to_jax(fake_state, monkeypatch, preemption):
    """JAX's preemption service takes SIGTERM over (only logging it): training starts it, so
    that every process stops at the same step; the inference commands do not, so that SIGTERM
    stays theirs (status 143, finished work written)."""
    import jax

    from tagger_jax import sharding

    seen = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: seen.append(
        jax.config.jax_enable_preemption_service))
    monkeypatch.setenv(sharding.ENV_COORDINATOR, "127.0.0.1:1")
    monkeypatch.setenv(sharding.ENV_NUM_PROCESSES, "2")
    try:
        sharding.maybe_initialize_distributed(preemption=preemption)
    finally:
        jax.config.update("jax_enable_preemption_service", True)  # JAX's default
    assert seen == [preemption]


@pytest.mark.parametrize("raised, status", [(KeyboardInterrupt, 130), ("terminated", 143),
                                            (ValueError, 2)])
def test_an_interrupted_process_of_a_multi_process_run_leaves_at_once(monkeypatch, capsys,
                                                                      raised, status):
    """Ctrl-C or SIGTERM in one process of a multi-process run: after the command has unwound
    (what finished is written) the process leaves with os._exit, not through JAX's shutdown
    barrier, where it waited for peers that wait for it until both aborted. Alone, or for
    other errors, it returns its status as before."""
    from tagger_jax import errors

    error = errors.Terminated() if raised == "terminated" else raised()
    if raised is ValueError:
        error = errors.ConfigError("bad")

    def run():
        raise error

    exits = []
    monkeypatch.setattr(errors.os, "_exit", lambda code: exits.append(code))
    for multi in (False, True):
        monkeypatch.setattr(errors, "_in_multi_process_run", lambda: multi)
        assert errors.guarded(run) == status
        assert exits == ([status] if multi and raised is not ValueError else [])
        exits.clear()
    capsys.readouterr()


def _compare(ref: dict, got: dict) -> None:
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-6)
    # Validation through the inference path on the mesh: every clip once, the same per-tag
    # ROC-AUC (rank statistics of probabilities equal to ~1e-6) on 1 or 4 devices, 1 or 2 hosts.
    assert int(got["val_clips"]) == int(ref["val_clips"]) == 9
    assert np.isfinite(ref["val_roc_auc"]).sum() >= 2  # not vacuous: defined tags compared
    np.testing.assert_allclose(got["val_roc_auc"], ref["val_roc_auc"], rtol=0, atol=1e-9)
    keys = [k for k in ref if k.startswith(("params/", "batch_stats/"))]
    assert sorted(keys) == sorted(k for k in got if k.startswith(("params/", "batch_stats/")))
    for k in keys:
        if k.startswith("batch_stats/"):
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
        else:
            np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-4, err_msg=k)
    # Apart from the BatchNorm-cancelled biases, parameters agree much more tightly.
    for k in keys:
        if k.startswith("params/") and "bias" not in k.rsplit("/", 1)[-1]:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_four_devices_match_one_device(runs):
    assert int(runs["one"]["devices"]) == 1 and int(runs["four"]["devices"]) == 4
    _compare(runs["one"], runs["four"])


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(runs):
    got = runs["two_processes"]
    assert int(got["processes"]) == 2 and int(got["devices"]) == 4
    _compare(runs["four"], got)
    _compare(runs["one"], got)


@pytest.mark.slow
def test_training_moved_the_parameters(runs):
    """The comparison is not vacuous: 3 steps moved the parameters far beyond the tolerance."""
    assert float(runs["one"]["moved"]) > 1e-3


@pytest.mark.parametrize("num, pid, says", [
    ("abc", "0", "JAX_NUM_PROCESSES='abc' is not an integer"),
    ("2", "x1", "JAX_PROCESS_ID='x1' is not an integer"),
    ("0", "0", "JAX_NUM_PROCESSES must be at least 1, got 0"),
    ("2", "-1", "JAX_PROCESS_ID must be at least 0, got -1"),
    ("2", "2", "JAX_PROCESS_ID=2 is not a process of JAX_NUM_PROCESSES=2 (ids 0 to 1)")])
def test_bad_process_variables_are_usage_errors_before_joining(num, pid, says, monkeypatch,
                                                               capsys):
    """A bad JAX_NUM_PROCESSES / JAX_PROCESS_ID is one line naming the variable, exit status 2,
    before JAX is asked to join (it was 'unexpected ValueError ... please report it', 70)."""
    import jax

    from tagger_jax import cli, sharding

    monkeypatch.setattr(jax.distributed, "initialize", lambda **k: pytest.fail("joined"))
    monkeypatch.setenv(sharding.ENV_COORDINATOR, "127.0.0.1:1")
    monkeypatch.setenv(sharding.ENV_NUM_PROCESSES, num)
    monkeypatch.setenv(sharding.ENV_PROCESS_ID, pid)
    assert cli.main(["tag", "--checkpoint", "nowhere", "x.wav", "--output", "o.json"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {says}"


def test_process_variables_without_a_coordinator_are_said(monkeypatch, capsys):
    """JAX_NUM_PROCESSES without JAX_COORDINATOR_ADDRESS: one process, and a warning says so."""
    import jax

    from tagger_jax import sharding

    monkeypatch.setattr(jax.distributed, "initialize", lambda **k: pytest.fail("joined"))
    monkeypatch.delenv(sharding.ENV_COORDINATOR, raising=False)
    monkeypatch.setenv(sharding.ENV_NUM_PROCESSES, "2")
    assert not sharding.maybe_initialize_distributed()
    assert capsys.readouterr().err == ("warning: JAX_NUM_PROCESSES set without "
                                       "JAX_COORDINATOR_ADDRESS: this runs as a single process\n")


@pytest.mark.parametrize("command", ["tag", "explain", "embed", "evaluate"])
def test_inference_commands_join_before_their_work_and_say_so(command, monkeypatch, capsys,
                                                              tmp_path):
    """Every inference command joins jax.distributed when the environment asks (evaluate did
    not: two processes ran two whole evaluations), after a line saying whom it waits for; tag
    without --output is refused before joining (it waited for the others first)."""
    import jax

    from tagger_jax import cli, errors, sharding

    def initialize(**kwargs):  # stands for the join: the command stops there
        raise errors.ConfigError(f"joined {kwargs['process_id']} of {kwargs['num_processes']}")

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setenv(sharding.ENV_COORDINATOR, "127.0.0.1:1")
    monkeypatch.setenv(sharding.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(sharding.ENV_PROCESS_ID, "1")
    out = ["--out", str(tmp_path / "o")] if command in ("explain", "embed") else \
        ["--output", str(tmp_path / "o.json")] if command == "tag" else []
    args = [command, "--checkpoint", str(tmp_path / "m")] + (
        [] if command == "evaluate" else [str(tmp_path / "x.wav")]) + out
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "jax.distributed: process 1 of 2 joining 127.0.0.1:1" in err
    assert err.strip().endswith("error: joined 1 of 2")  # before any other work
    if command == "tag":
        assert cli.main(args[:-2]) == 2  # no --output: refused at once
        assert "a multi-process run needs --output" in capsys.readouterr().err


def test_options_compare_paths_by_real_path_and_leave_display_options_out(tmp_path,
                                                                          monkeypatch):
    """A verifying user's processes named one folder as `one` (from its parent) and as its
    absolute path, and one gave --no-progress: both runs were refused. Existing paths compare by
    their real path, and the progress options may differ; a real difference still counts."""
    from argparse import Namespace

    from tagger_jax import sharding

    (tmp_path / "one").mkdir()
    monkeypatch.chdir(tmp_path)
    a = Namespace(inputs=["one"], output="out.json", hop=1.0, quiet=False, func=print)
    b = Namespace(inputs=[str(tmp_path / "one")], output="out.json", hop=1.0, quiet=True,
                  func=len)
    names, da = sharding.option_digests(a)
    assert names == ["hop", "inputs", "output"]
    np.testing.assert_array_equal(da, sharding.option_digests(b)[1])
    b.hop = 2.0
    differ = da != sharding.option_digests(b)[1]
    assert [n for n, d in zip(names, differ) if d] == ["hop"]
