"""Outputs that survive errors and concurrent runs (issue 10 items 2, 3) and the exit-status
table with one-line errors (item 7)."""
from __future__ import annotations

import json
import os
import pickle
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from tagger_jax import cli, errors, outputs, tagging
from tagger_jax.config_base import base_config
from model_helpers import save_tiny_model

TAGS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "model", TAGS)


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    d = tmp_path_factory.mktemp("specs")
    rng = np.random.default_rng(0)
    for k in range(3):
        np.save(d / f"s{k}.npy", rng.standard_normal((96, 100)).astype(np.float32) - 40)
    return d


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".probe")))


# ------------------------------------------------------------------------- item 2: check first

def test_output_that_is_a_directory_fails_before_any_work(tmp_path, specs, capsys):
    # The checkpoint does not exist: the output is checked first, so that is the error reported.
    rc = cli.main(["tag", "--checkpoint", str(tmp_path / "no_model"), "--output", str(tmp_path),
                   str(specs)])
    assert rc == errors.OUTPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path}: is a directory; give a file name for the output"]


def test_output_under_a_file_fails_before_any_work(tmp_path, specs, capsys):
    (tmp_path / "plain").write_text("x")
    rc = cli.main(["tag", "--checkpoint", str(tmp_path / "no_model"), "--output",
                   str(tmp_path / "plain" / "tags.json"), str(specs)])
    assert rc == errors.OUTPUT
    assert "a parent is a file" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_output_in_read_only_directory_fails_before_any_work(tmp_path, specs, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc = cli.main(["tag", "--checkpoint", str(tmp_path / "no_model"), "--output",
                       str(ro / "tags.json"), str(specs)])
    finally:
        ro.chmod(0o700)
    assert rc == errors.OUTPUT and "cannot write in" in capsys.readouterr().err


def test_atomic_write_removes_its_temporary_file_on_interrupt(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("[1]")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        outputs.atomic_write_json(target, [2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert json.loads(target.read_text()) == [1]


def test_atomic_write_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path, model_dir,
                                                                             specs, capsys):
    """A trial's `tag --output link.json --resume` (the link pointing at real/target.json) made
    link.json a regular file and left the target as it was, while the run's lock was the
    target's: the write now goes through the link, as the lock does."""
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "target.json", tmp_path / "link.json"
    link.symlink_to(target)
    assert outputs.atomic_write_json(link, [1]) == link
    assert link.is_symlink() and json.loads(target.read_text()) == [1]
    target.unlink()
    first, second = sorted(specs.glob("*.npy"))[:2]
    assert cli.main(["tag", "--checkpoint", str(model_dir), str(first), "--output", str(target),
                     "--quiet"]) == 0
    assert cli.main(["tag", "--checkpoint", str(model_dir), str(first), str(second), "--output",
                     str(link), "--resume", "--quiet"]) == 0
    capsys.readouterr()
    assert link.is_symlink() and len(json.loads(target.read_text())) == 2
    assert sorted(p.name for p in (tmp_path / "real").iterdir() if not p.name.startswith(".")) \
        == ["target.json"]


def test_atomic_write_into_a_folder_that_is_gone_says_so(tmp_path):
    with pytest.raises(outputs.OutputError) as info:
        outputs.atomic_write_json(tmp_path / "gone" / "out.json", [1])
    assert str(info.value) == (f"{tmp_path / 'gone' / 'out.json'}: cannot write it: its folder "
                               "is gone (deleted or moved while the run wrote into it)")
    assert errors.exit_status(info.value) == errors.OUTPUT


def test_interrupted_tag_run_keeps_finished_results_and_no_temp_files(model_dir, specs, tmp_path,
                                                                      monkeypatch, capsys):
    real = tagging.ResultStore.add

    def add(self, result):  # Ctrl-C in the main thread while the third result arrives
        if result["file"].endswith("s2.npy"):
            raise KeyboardInterrupt
        real(self, result)

    monkeypatch.setattr(tagging.ResultStore, "add", add)
    out = tmp_path / "tags.json"
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet",
                   "--batch-size", "1", str(specs)])
    assert rc == errors.INTERRUPTED
    kept = [r["file"].rsplit("/", 1)[-1] for r in json.loads(out.read_text())]
    assert kept == ["s0.npy", "s1.npy"]
    # Only the result file and (with some filelock versions) the empty, hidden lock file remain.
    assert {p.name for p in tmp_path.iterdir()} - {".tags.json.lock"} == {"tags.json"}
    assert "interrupted" in capsys.readouterr().err


# ------------------------------------------------------------------------- item 3: concurrency

HOLD = """
import sys, time
from tagger_jax import outputs
with outputs.exclusive(sys.argv[1], "test", directory=sys.argv[2] == "dir"):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _hold(target, kind, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target), kind, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_unique_temporary_files(tmp_path):
    """Two writers never share a temporary name (the old fixed `NAME.tmp` did)."""
    (tmp_path / "out.json.tmp").mkdir()  # the old fixed name is taken: must not matter
    tagging.write_json([{"x": 1}], tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == [{"x": 1}]


def test_second_tag_run_on_the_same_output_refuses_naming_the_holder(model_dir, specs, tmp_path,
                                                                     capsys):
    out = tmp_path / "tags.json"
    proc = _hold(out, "file", 60)
    try:
        rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet",
                       str(specs)])
        err = capsys.readouterr().err.strip().splitlines()
    finally:
        proc.kill()
        proc.wait()
    assert rc == errors.BUSY
    assert len(err) == 1 and f"pid {proc.pid}" in err[0] and str(out) in err[0]
    assert not out.exists()  # nothing of the holder's file was touched


@pytest.mark.parametrize("command", ["explain", "embed"])
def test_second_run_into_the_same_output_directory_refuses_naming_the_holder(
        command, model_dir, specs, tmp_path, capsys):
    """explain/embed --out is locked like tag --output; the lock file sits beside the directory."""
    out = tmp_path / "out"
    proc = _hold(out, "file", 60)  # what outputs.exclusive_for_run takes: `.out.lock` beside it
    try:
        rc = cli.main([command, "--checkpoint", str(model_dir), "--out", str(out),
                       "--no-progress", str(specs)])
        err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    finally:
        proc.kill()
        proc.wait()
    assert rc == errors.BUSY, err
    assert len(err) == 1 and f"pid {proc.pid}" in err[0] and str(out) in err[0]
    assert not any(out.iterdir()) if out.exists() else True  # nothing written


def test_build_dataset_waits_for_the_holder_of_the_data_directory(tmp_path, capsys):
    from tagger_jax import datasets

    data_dir = tmp_path / "data"
    proc = _hold(data_dir, "dir", 2)
    start = time.monotonic()
    try:
        with pytest.raises(FileNotFoundError, match="manual directory"):
            datasets.build("audio_folder", data_dir, manual_dir=tmp_path / "missing")
    finally:
        proc.wait()
    assert time.monotonic() - start > 1.0  # it waited for the other run
    err = capsys.readouterr().err
    assert f"pid {proc.pid}" in err and "data directory" in err


HOLD_BUILD = """
import sys, time
from tagger_jax import outputs
held = (outputs.reading(sys.argv[1], "the build") if sys.argv[2] == "read" else
        outputs.replacing(sys.argv[1], "the build", "wait"))
with held:
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def test_a_read_build_is_not_replaced_and_a_replaced_one_is_waited_for(tmp_path, capsys):
    """The readers' lock of a build (`reading`, `replacing`): a reader in another process makes
    a rebuild refuse, naming it; killed with SIGKILL, it holds nothing (the OS releases the lock)
    and its note is removed. A reader that starts during a rebuild waits, saying so; two
    readers read at once."""
    build = tmp_path / "name" / "config" / "1.0.0"

    def hold(mode, seconds):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_BUILD, str(build), mode,
                                 str(seconds)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        return proc

    reader = hold("read", 60)
    try:
        with outputs.reading(build, "the build"):  # a second reader: at once
            pass
        with pytest.raises(outputs.BusyError) as info:
            with outputs.replacing(build, "the build", "do this instead"):
                pass
        message = str(info.value)
        assert message.startswith(f"{build}: the build is being read by another tagger-jax run "
                                  f"(pid {reader.pid} on host {socket.gethostname()}, started ")
        assert message.endswith(f": -c {build} read 60); do this instead")  # its command
    finally:
        reader.kill()
        reader.wait()
    notes = list(build.parent.glob(".1.0.0.readers.*.json"))
    assert len(notes) == 1  # the killed reader's, left behind
    with outputs.replacing(build, "the build", "wait"):
        assert not notes[0].exists()
    writer = hold("replace", 2)
    start = time.monotonic()
    try:
        with outputs.reading(build, "the build"):
            waited = time.monotonic() - start
    finally:
        writer.wait()
    assert waited > 1.0
    assert capsys.readouterr().err == (f"waiting for the other tagger-jax run replacing the build "
                                       f"{build} ...\n")

# ------------------------------------------------------------------------- item 7: exit statuses

def test_exit_statuses_are_distinct_and_documented():
    codes = [v for k, v in vars(errors).items() if k.isupper() and isinstance(v, int)]
    assert len(codes) == len(set(codes)) == len(errors.TABLE)
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    for code, meaning in errors.TABLE.items():
        assert f"| {code} | {meaning} |" in readme


def test_a_lost_peer_is_its_own_status_not_a_bug(monkeypatch, capsys, tmp_path):
    """JAX's runtime error for a process of a multi-process run that died (Gloo's all-gather
    'Connection closed by peer') is status 8 with one line saying so, not 'unexpected ... please
    report it' (70) with a traceback file; the same error outside a multi-process run, or
    another runtime error, stays unexpected."""
    import jax

    class JaxRuntimeError(RuntimeError):  # jax.errors.JaxRuntimeError, by name
        pass

    lost = JaxRuntimeError("UNKNOWN: Gloo AllGather failed: [/gloo/transport/tcp/pair.cc:534] "
                           "Connection closed by peer [127.0.0.1]:1234")
    monkeypatch.setattr(errors.tempfile, "tempdir", str(tmp_path))
    assert errors.exit_status(lost) == errors.INTERNAL  # not joined: no peers to lose
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    assert errors.exit_status(lost) == errors.PEER_LOST
    assert errors.exit_status(JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")) == \
        errors.INTERNAL
    assert errors.report(lost) == errors.PEER_LOST
    err = capsys.readouterr().err
    assert err.startswith("error: another process of this multi-process run stopped or cannot "
                          "be reached (UNKNOWN: Gloo AllGather failed") and err.count("\n") == 1
    assert ("Start every process again: training resumes from its last checkpoint, tag with "
            "--resume and embed and explain keep what they finished; evaluate starts over") in err
    assert not list(tmp_path.iterdir())
    # A jitted all-gather (the end-of-run barrier) raises Gloo's failure as a plain ValueError:
    # it was "unexpected ValueError" (70), then JAX aborted the process (from a new user's trial).
    barrier = ValueError("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/"
                         "pair.cc:547] Connection closed by peer [127.0.0.1]:8096")
    assert errors.exit_status(barrier) == errors.PEER_LOST
    assert errors.exit_status(ValueError("a barrier was missed")) == errors.INTERNAL


def test_a_signal_that_lands_in_a_swallowing_callback_is_sent_again(monkeypatch):
    """A new user's Ctrl-C during compilation landed in JAX's garbage-collection callback, which
    printed and dropped the KeyboardInterrupt: the training went on to the end. The handlers
    (`guarded`'s SIGINT and SIGTERM, training's) send such a signal again a moment later
    instead of raising into the callback; anywhere else they raise at once."""
    import signal
    import time
    from types import SimpleNamespace

    kills = []
    monkeypatch.setattr(errors.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    gc_frame = SimpleNamespace(f_code=SimpleNamespace(co_name="_xla_gc_callback"))
    assert errors.redeliver_if_swallowed(signal.SIGINT, gc_frame)
    assert not errors.redeliver_if_swallowed(signal.SIGINT, None)
    assert not errors.redeliver_if_swallowed(signal.SIGINT, SimpleNamespace(
        f_code=SimpleNamespace(co_name="train_step", co_filename="train_lib.py"), f_back=None))
    time.sleep(errors.REDELIVER_S + 0.2)
    assert kills == [(os.getpid(), signal.SIGINT)]
    seen = {}

    def run():  # guarded's own handlers while the command runs, Python's again after
        seen["int"], seen["term"] = signal.getsignal(signal.SIGINT), signal.getsignal(
            signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            seen["int"](signal.SIGINT, None)
        assert seen["int"](signal.SIGINT, gc_frame) is None  # sent again, not raised
        with pytest.raises(errors.Terminated):
            seen["term"](signal.SIGTERM, None)
        return 0

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # CI's may be ignored
    try:
        assert errors.guarded(run) == 0
        assert seen["int"] is not signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored (a background job): left so
        assert errors.guarded(lambda: 0) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)


def test_the_entry_point_ends_an_interrupted_process_itself(monkeypatch, tmp_path):
    """After Ctrl-C or SIGTERM the console script and train.py end the process with the exit
    handlers run but without the interpreter's teardown (which crashed in C++ when the signal
    came while XLA compiled); an in-process caller gets the status back."""
    import subprocess
    import sys

    calls = []
    monkeypatch.setattr(errors, "exit_after_interrupt", lambda status: calls.append(status))

    def interrupted():
        raise KeyboardInterrupt

    assert errors.guarded(interrupted) == errors.INTERRUPTED and calls == []
    assert errors.guarded(interrupted, owns_process=True) == errors.INTERRUPTED
    assert calls == [errors.INTERRUPTED]
    code = ("import atexit; from tagger_jax import errors; "
            "atexit.register(lambda: print('exit handlers ran', flush=True)); "
            "errors.exit_after_interrupt(143); print('not reached')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 143 and done.stdout == "exit handlers ran\n", done


def test_unexpected_error_is_one_line_plus_traceback_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(errors.tempfile, "tempdir", str(tmp_path))

    def boom(args):
        return {}["missing key"]

    monkeypatch.setattr(cli, "_dispatch", lambda args: boom(args))
    rc = cli.main(["tag", "--checkpoint", "x", "y"])
    assert rc == errors.INTERNAL
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: unexpected KeyError: 'missing key' (full traceback in ")
    [crash] = list(tmp_path.glob("tagger-jax-crash-*.txt"))
    assert str(crash) in line and "Traceback" in crash.read_text()


def test_msd_unsafe_pickle_is_one_error_line(tmp_path, capsys):
    manual = tmp_path / "manual"
    (manual / "audio").mkdir(parents=True)  # (checked before the pickles are read)
    (manual / "50tagList.txt").write_text("\n".join(f"t{k}" for k in range(50)) + "\n")
    evil = pickle.dumps(os.system, protocol=2)  # names a function: must be refused
    for name in ("filtered_list_train.cP", "filtered_list_test.cP", "msd_id_to_tag_vector.cP",
                 "MSD_id_to_7D_id.pkl", "7D_id_to_path.pkl"):
        (manual / name).write_bytes(evil)
    rc = cli.main(["build-dataset", "msd", "--data-dir", str(tmp_path / "data"),
                   "--manual-dir", str(manual), "--num-workers", "1"])
    captured = capsys.readouterr()
    assert rc == errors.DATA
    lines = [l for l in (captured.out + captured.err).splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "refusing to load" in lines[0]
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.parametrize("command", [
    ["explain", "--checkpoint", "NO_MODEL", "INPUT", "--out", "OUT"],
    ["embed", "--checkpoint", "NO_MODEL", "INPUT", "--out", "OUT"],
    ["evaluate", "--checkpoint", "NO_MODEL", "--out", "OUT"],
    ["import-authors", "NO_MODEL", "--variant", "released", "--out", "OUT"],
    ["build-dataset", "audio_folder", "--manual-dir", "NO_MODEL", "--data-dir", "OUT"],
    ["convert-patches", "NO_MODEL", "OUT"],
])
def test_every_output_directory_is_checked_before_any_work(command, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    subs = {"NO_MODEL": str(tmp_path / "missing"), "INPUT": str(tmp_path / "file"),
            "OUT": str(tmp_path / "file" / "out")}
    rc = cli.main([subs.get(a, a) for a in command])
    captured = capsys.readouterr()
    lines = [l for l in (captured.out + captured.err).splitlines() if "error" in l]
    assert rc == errors.OUTPUT, captured
    assert len(lines) == 1 and "a parent is a file" in lines[0]


def test_non_finite_loss_has_its_own_exit_status(monkeypatch, capsys, tmp_path):
    from tagger_jax import train_lib
    from tagger_jax.commands import train as train_command

    def diverge(config, workdir):
        raise train_lib.NonFiniteLossError(12, tmp_path, 10)

    monkeypatch.setattr(train_lib, "train_and_evaluate", diverge)
    assert train_command.run_training(base_config(), str(tmp_path)) == errors.DIVERGED
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: non-finite training loss at step 12")


def test_output_named_as_a_folder_is_refused(tmp_path):
    with pytest.raises(outputs.OutputError, match="ends with '/'"):
        outputs.check_output_file(f"{tmp_path}/results/")


def test_write_failure_is_an_output_error_naming_the_file(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    with pytest.raises(outputs.OutputError, match=r"out.json: cannot write it \(No space left"):
        outputs.atomic_write_json(tmp_path / "out.json", [1])
    assert list(tmp_path.iterdir()) == []
    assert errors.exit_status(outputs.OutputError("x")) == errors.OUTPUT


@pytest.mark.parametrize("command", ["tag", "explain", "embed"])
def test_a_missing_model_is_the_same_one_line_and_status_in_every_command(command, tmp_path,
                                                                          capsys):
    (tmp_path / "x.npy").write_bytes(b"")
    args = [command, "--checkpoint", str(tmp_path / "nope"), str(tmp_path / "x.npy")]
    new = tmp_path / "new"
    if command != "tag":
        args += ["--out", str(new / "out")]
    else:  # its output files' folder is not made either (a trial's tag left one of lock files)
        args += ["--output", str(new / "x.json"), "--csv", str(new / "y.csv")]
    rc = cli.main(args)
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert rc == errors.MODEL
    assert err == [f"error: {tmp_path / 'nope'}: no such checkpoint directory"], err
    assert not new.exists()


@pytest.mark.parametrize("outcome", ["in_the_loop", "before_the_loop"])
def test_a_run_stopped_by_sigterm_exits_143_not_0(tmp_path, monkeypatch, capsys, outcome):
    """From a new user's trial: a preempted training exited 0 (checkpoint saved), so a wrapper
    retrying until success, or a job system reading the status, took it for finished. Stopped
    by SIGTERM is 143, as for every other command; the line says how to resume."""
    from tagger_jax import train_lib
    from tagger_jax.commands import train as train_command
    from tagger_jax.preemption import Preempted

    def stopped(config, workdir):
        if outcome == "before_the_loop":
            raise Preempted("before the first step of this run")
        return {"preempted": True, "step": 7, "workdir": str(workdir)}

    monkeypatch.setattr(train_lib, "train_and_evaluate", stopped)
    assert train_command.run_training(base_config(), str(tmp_path)) == errors.TERMINATED == 143
    out = capsys.readouterr().out
    assert out.startswith("Stopped by SIGTERM ") and "Run the same command to resume." in out


@pytest.mark.parametrize("step, said", [(1, "Trained 1 step in "), (2, "Trained 2 steps in ")])
def test_the_training_summary_counts_steps_in_words(tmp_path, monkeypatch, capsys, step, said):
    """"Trained 1 steps" read as a typo in a one-step smoke run's log."""
    from tagger_jax import train_lib
    from tagger_jax.commands import train as train_command

    monkeypatch.setattr(train_lib, "train_and_evaluate", lambda config, workdir: {
        "preempted": False, "step": step, "workdir": str(workdir),
        "best_validation_roc_auc": 0.5})
    assert train_command.run_training(base_config(), str(tmp_path)) == 0
    assert capsys.readouterr().out.startswith(said + str(tmp_path))


def test_a_test_mean_over_some_tags_says_how_many(tmp_path, monkeypatch, capsys):
    """From a new user's trial: on a small collection 7 of 8 tags had no positive test clip, and
    the closing line read "test ROC-AUC 1.0000" for the one tag left (the warning that named
    them had scrolled away). The line says over how many tags the means are."""
    from tagger_jax import train_lib
    from tagger_jax.commands import train as train_command

    test = {"split": "test", "dir": str(tmp_path / "test"), "roc_auc": 1.0, "pr_auc": 1.0,
            "reused": False, "num_tags": 8, "num_excluded": 7}
    monkeypatch.setattr(train_lib, "train_and_evaluate", lambda config, workdir: {
        "preempted": False, "step": 9, "workdir": str(workdir), "best_validation_roc_auc": 0.9,
        "tests": [test, {**test, "split": "holdout", "num_excluded": 0}]})
    assert train_command.run_training(base_config(), str(tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("test ROC-AUC 1.0000  PR-AUC 1.0000  (means of 1 of 8 tags: the "
                               "others have one label value in this split)  (per-tag report")
    assert lines[2].startswith("holdout ROC-AUC 1.0000  PR-AUC 1.0000  (per-tag report")


def test_a_build_that_cannot_be_locked_is_still_read(tmp_path, monkeypatch, capsys):
    """A shared, read-only dataset: no readers' lock can be created beside it. Reading goes on
    without one (this run could not delete the build either), silently; where the lock file
    exists (another user's, not writable for this run) a note says the build is read without
    it; a rebuild where the lock cannot be taken says it does not check for readers."""
    def refuse(path, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(outputs, "_acquire_readers_lock", refuse)
    build = tmp_path / "config" / "1.0.0"
    lock = build.parent / ".1.0.0.readers.lock"
    with outputs.reading(build, "the build"):
        pass
    assert capsys.readouterr().err == ""
    lock.parent.mkdir(parents=True)
    lock.touch()
    with outputs.reading(build, "the build"):
        pass
    assert capsys.readouterr().err == (
        f"note: {build}: cannot take the readers' lock {lock} ([Errno 13] Permission denied: "
        f"'{lock}'); the build is read without it, so a rebuild by that file's owner would not "
        "see this run\n")
    with outputs.replacing(build, "the build", "wait"):
        pass
    assert capsys.readouterr().err == (
        f"note: {build}: cannot take the readers' lock {lock} ([Errno 13] Permission denied: "
        f"'{lock}'); the build is replaced without checking for runs that read it\n")


@pytest.mark.parametrize("umask", [0o002, 0o022])
def test_the_readers_lock_file_follows_the_umask(tmp_path, umask):
    """The readers' lock file is made 0666 less the umask (filelock alone makes it 0600), so a
    group sharing a data directory with umask 002 shares the lock; it is kept after the run."""
    build = tmp_path / "config" / "1.0.0"
    before = os.umask(umask)
    try:
        with outputs.reading(build, "the build"):
            pass
    finally:
        os.umask(before)
    assert stat.S_IMODE((build.parent / ".1.0.0.readers.lock").stat().st_mode) == 0o666 & ~umask
