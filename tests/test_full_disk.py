"""A full disk (from a new user's trial on small tmpfs mounts): one line with status 4 that says
the disk is full and what was kept, nothing recorded as an input's failure, no temporary file
left behind, and the same command finishing the job once there is space again."""
from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from model_helpers import save_tiny_model  # noqa: E402
from tagger_jax import cli, embedding, errors, outputs, tagging  # noqa: E402
from tagger_jax.explain import auralise, report, runner  # noqa: E402

TAGS = ("t0", "t1", "t2")
ARRAY_RECORD = ('Failed to finalize writing of split "train": write() failed: No space left on '
                'device; writing /d/x.array_record-00000-of-00004; at byte 3137536')


def full_disk_error() -> ValueError:
    """A library's error raised from the OS's ENOSPC (as orbax raises tensorstore's)."""
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            raise ValueError("RESOURCE_EXHAUSTED: Error writing params") from e
    except ValueError as e:
        return e


@pytest.mark.parametrize("error, full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (RuntimeError(ARRAY_RECORD), True),  # a dataset build's array_record writer
    (full_disk_error(), True),  # found through the cause
    (outputs.OutputError("/o/a.json: cannot write it (No space left on device); ..."), True),
    (OSError(errno.EACCES, "Permission denied"), False),
    (ValueError("bad value"), False),
])
def test_a_full_disk_is_told_apart_and_is_status_4(error, full):
    assert errors.storage_full(error) is full
    assert (errors.exit_status(error) == errors.OUTPUT) is full
    line = errors.describe(error)
    assert "\n" not in line and (errors.FULL_ADVICE in line) is full


def test_report_of_a_full_disk_is_one_line_with_what_was_kept(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where a crash file would go
    error = RuntimeError(ARRAY_RECORD)
    error.add_note("2 of 6 input(s) explained in this run are in out")
    assert errors.report(error) == errors.OUTPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: Failed to finalize writing")
    assert "the disk is full: free space or choose another location" in err
    assert "2 of 6 input(s) explained in this run are in out" in err
    assert not list(tmp_path.iterdir())  # not reported as a crash
    # orbax's message names two long paths before the OS's reason: both ends are kept.
    long = ValueError("RESOURCE_EXHAUSTED: Error writing " + "/d" * 300 + ": No space left on "
                      "device [os_error_code='28']")
    line = errors.describe(long)
    assert line.startswith("RESOURCE_EXHAUSTED: Error writing /d/d") and " ... " in line
    assert "No space left on device [os_error_code='28'] (the disk is full" in line


def test_library_log_records_of_a_full_disk_are_dropped():
    """orbax's writer threads log the checkpoint's failed write with two tracebacks (about 115
    lines in a trial) before the main thread raises it; other records pass."""
    logger = logging.getLogger("absl")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    errors.quiet_full_disk_logs()
    errors.quiet_full_disk_logs()  # once only
    try:
        error = full_disk_error()
        logger.error("_SignalingThread.run() raised an exception: %s", error,
                     exc_info=(type(error), error, error.__traceback__))
        logger.error("writing failed: No space left on device [os_error_code='28']")
        logger.error("another problem")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["another problem"]
    assert sum(isinstance(f, errors._FullDiskRecords) for f in logger.filters) == 1


def test_audio_write_errors_name_the_file(tmp_path, monkeypatch):
    """libsndfile says only "System error." when a write fails."""
    path = tmp_path / "a.ogg"
    usage = type("Usage", (), {"free": 4096})
    monkeypatch.setattr("shutil.disk_usage", lambda p: usage)
    e = auralise._write_error(path, RuntimeError("System error."))
    assert e.errno == errno.ENOSPC and e.filename == str(path) and errors.storage_full(e)
    usage.free = 1 << 30
    e = auralise._write_error(path, RuntimeError("System error."))
    assert e.errno == errno.EIO and e.filename == str(path) and not errors.storage_full(e)
    assert "libsndfile: System error." in str(e)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted for the test (root only)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Writes a file until the disk is full; returns it (delete it to free the space)."""
    path = disk / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 16, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return path


def fill_before_call(monkeypatch, module, name: str, call: int, disk: Path) -> list:
    """Wraps `module.name` so that the disk is filled just before its `call`-th call."""
    original, calls, filler = getattr(module, name), [], []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            filler.append(fill(disk))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return filler


@pytest.fixture(scope="module")
def model_and_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    model = save_tiny_model(root / "model", TAGS)
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(root / f"x{i}.npy", rng.normal(-30.0, 12.0, (96, 80)).astype(np.float32))
    return model, sorted(str(p) for p in root.glob("x*.npy"))


def temporary_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".part"))]


def test_explain_stops_at_a_full_disk_and_the_same_command_finishes(
        small_disk, model_and_inputs, monkeypatch, capsys):
    model, inputs = model_and_inputs
    out = small_disk / "out"
    argv = ["explain", "--workdir", str(model), "--out", str(out), "--no-progress",
            "--methods", "attention,contribution", *inputs]
    filler = fill_before_call(monkeypatch, runner, "_write", 2, small_disk)
    assert cli.main(argv) == errors.OUTPUT
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {out}: no space left for the files of ")
    assert "the disk is full" in err and "1 of 4 input(s) explained in this run" in err
    assert "running it again explains the other 3" in err
    assert not temporary_files(out)
    # Not the inputs' fault: nothing recorded as their failure (a trial's were not retried).
    assert not report.load_failures(out)
    monkeypatch.undo()
    filler[0].unlink()
    assert cli.main(argv) == 0
    assert "explained 3 input(s), skipped 1 already finished, 0 failed" in capsys.readouterr().err
    assert not temporary_files(out)


def embed_until_full(disk: Path, model_and_inputs, monkeypatch, capsys, write: int):
    """`embed` into `disk`, filled just before its `write`-th file write: (out, argv, filler,
    its last stderr line), after checking it ended with status 4."""
    model, inputs = model_and_inputs
    out = disk / "emb"
    argv = ["embed", "--workdir", str(model), "--out", str(out), "--no-progress", *inputs]
    filler = fill_before_call(monkeypatch, embedding.outputs, "atomic_write_bytes", write, disk)
    assert cli.main(argv) == errors.OUTPUT
    return out, argv, filler, capsys.readouterr().err.strip().splitlines()[-1]


def test_embed_stops_at_a_full_disk_and_the_same_command_finishes(
        small_disk, model_and_inputs, monkeypatch, capsys):
    out, argv, filler, err = embed_until_full(small_disk, model_and_inputs, monkeypatch, capsys,
                                              write=3)
    inputs = model_and_inputs[1]
    assert err.startswith(f"error: {out / Path(inputs[2]).name}.npz: cannot write it (No space")
    assert "the disk is full" in err and "2 of 4 input(s) embedded in this run" in err
    assert not temporary_files(out)
    assert cli.main(argv) == errors.OUTPUT  # still full: the line counts the 2 kept
    assert ("0 of 2 input(s) embedded in this run are in "
            f"{out}, besides 2 embedded by earlier runs (reused); running it again embeds the "
            "other 2") in capsys.readouterr().err
    monkeypatch.undo()
    filler[0].unlink()
    assert cli.main(argv) == 0
    assert "embedded 2 input(s), skipped 2 already finished" in capsys.readouterr().err
    assert not temporary_files(out)
    with np.load(out / "embeddings.npz") as z:
        assert len(z["names"]) == 4


def test_tag_at_a_full_disk_says_what_its_output_holds_and_resume_finishes(
        small_disk, model_and_inputs, monkeypatch, capsys):
    model, inputs = model_and_inputs
    out = small_disk / "tags.json"
    argv = ["tag", "--workdir", str(model), "--output", str(out), "--csv",
            str(small_disk / "tags.csv"), "--quiet", *inputs]
    filler = fill_before_call(monkeypatch, tagging, "write_json", 1, small_disk)
    assert cli.main(argv) == errors.OUTPUT
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {out}: cannot write it (No space left on device)")
    assert "the disk is full" in err and f"{out} holds 0 result(s); with --resume a run keeps them and tags the rest" \
        in err and "tags.csv is written when a run finishes" in err
    assert not temporary_files(small_disk)
    monkeypatch.undo()
    filler[0].unlink()
    assert cli.main([*argv, "--resume"]) == 0
    assert "tagged 4 input(s)" in capsys.readouterr().err
    assert len(tagging.finished_results(out)) == 4 and (small_disk / "tags.csv").exists()


def test_a_read_only_folder_is_named_itself(small_disk):
    """A trial's read-only workdir was refused naming a file "x" in it (the probe's name)."""
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(outputs.OutputError,
                       match=rf"^{small_disk}: cannot write in {small_disk} \(Read-only"):
        outputs.check_output_dir(small_disk)


def test_audio_write_error_on_a_full_quota_is_a_full_disk(small_disk, monkeypatch):
    """A quota refuses writes on a disk with space: the probe's error says so."""
    fill(small_disk)
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("Usage", (), {"free": 1 << 30}))
    e = auralise._write_error(small_disk / "a.ogg", RuntimeError("System error."))
    assert e.errno == errno.ENOSPC and errors.storage_full(e)
    assert not [p for p in small_disk.iterdir() if p.name.endswith(".probe")]


def test_embed_with_no_room_for_the_merged_file_keeps_the_inputs_files(
        small_disk, model_and_inputs, monkeypatch, capsys):
    out, argv, filler, err = embed_until_full(small_disk, model_and_inputs, monkeypatch, capsys,
                                              write=5)  # the 4 NPZs fit, the merged file does not
    assert err.startswith(f"error: {out / 'embeddings.npz'}: cannot write it (No space")
    assert f"the 4 input(s) embedded are in {out}, one NPZ each; running it again reuses them" \
        in err
    assert not temporary_files(out)
    monkeypatch.undo()
    filler[0].unlink()
    assert cli.main(argv) == 0
    assert "embedded 0 input(s), skipped 4 already finished" in capsys.readouterr().err
    assert (out / "embeddings.npz").exists()


def test_training_metrics_at_a_full_disk_name_their_file(small_disk):
    """tensorboardX's flush raised a bare errno (a trial's training filled its disk mid-epoch)."""
    from tagger_jax.metric_writer import MetricWriter

    writer = MetricWriter(small_disk, resume_step=0)
    writer.write(1, "train", {"loss": 1.0})
    fill(small_disk)
    with pytest.raises(OSError) as caught:
        for step in range(2, 200):  # tensorboardX's buffered events fail at a flush
            writer.write(step, "train", {"loss": 1.0})
    assert errors.storage_full(caught.value)
    assert caught.value.filename in (str(small_disk / "metrics.jsonl"),
                                     str(small_disk / "tensorboard"))
