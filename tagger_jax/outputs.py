"""Output files and data directories that survive crashes, Ctrl-C and concurrent runs.

- `check_output_file(path)` / `check_output_dir(path)`: before any work starts, prove that `path`
  can be written (its nearest existing folder is a writable directory, and `path` is not a
  directory / not a file); `OutputError` (exit status 4) if not. They create nothing.
- `atomic_write_text` / `atomic_write_json`: write a unique temporary file in the same folder
  (`tempfile.mkstemp`, so two writers never share it), then `os.replace` it onto the target. A
  reader sees the old or the new file, never half of one; on any error or KeyboardInterrupt the
  temporary file is removed.
- `exclusive(target)`: an inter-process lock (the `filelock` library) on an output file or a data
  directory. Who holds it (pid, host, command, start time) is written next to the lock, so a run
  that cannot get it names the holder. `wait=False` refuses at once (`BusyError`); `wait=True`
  waits, saying once whom it waits for.
- `reading(folder)` / `replacing(folder)`: a reader/writer lock on a dataset build. Any number of
  runs read a build at once (a training, `evaluate`, `embed`/`explain --dataset`), and a
  rebuild (`build-dataset --overwrite`), which deletes the folder, is refused while one does:
  without it a training went on reading the deleted files and tested the model on a build that
  no longer existed.

Lock files: for a file `DIR/NAME` it is `DIR/.NAME.lock`; for a directory `DIR/.tagger-jax.lock`;
a build's readers' lock is `PARENT/.NAME.readers.lock` beside its folder, each reader's holder
note `PARENT/.NAME.readers.HOST-PID-N.json`.
The locks are advisory (fcntl/flock on POSIX): only tagger-jax runs honour them, and they are
released by the OS when the holding process dies, so a crash never leaves a stale lock.
The (empty) lock files stay after release, on purpose: filelock removes them on release only on
Windows (its `preserve_lock_file` option, checked for filelock 4.3); on POSIX an flock belongs to
the file's inode, and deleting the file while a waiting run has it open would let that run and a
third one (which creates a new file) both hold "the" lock. Deleting one by hand while no
tagger-jax run uses the output is harmless.
"""
from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import socket
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import filelock
import numpy as np

from tagger_jax import errors

DIR_LOCK_NAME = ".tagger-jax.lock"
TRAIN_LOCK_NAME = "train.lock"  # a training workdir's lock (workdir.LOCK_FILE), not hidden
HOLDER_SUFFIX = ".holder"


class OutputError(errors.ToolError, OSError):
    """An output location that cannot be written; the message names it and says why."""

    exit_status = errors.OUTPUT


class BusyError(errors.ToolError):
    """Another run holds the lock; the message names the holder."""

    exit_status = errors.BUSY


def check_output_file(path: str | os.PathLike) -> Path:
    """The absolute `path` after proving it can be written; nothing is created.

    Raises `OutputError` when `path` is a directory or another non-regular file, when a parent is
    a file, or when the nearest existing folder is not writable (tested by creating and removing
    a unique file there, so read-only mounts and permissions are caught whoever runs it).
    """
    if os.fspath(path).endswith(("/", os.sep)):
        raise OutputError(f"{os.fspath(path)}: ends with '/', so it names a folder; give a file "
                          "name for the output")
    p = _absolute(path)
    if p.is_dir():
        raise OutputError(f"{p}: is a directory; give a file name for the output")
    if p.exists() and not p.is_file():
        raise OutputError(f"{p}: exists and is not a regular file")
    _check_writable_location(p)
    return p


def check_output_dir(path: str | os.PathLike) -> Path:
    """The absolute `path` after proving it can be made or written as a directory; nothing is
    created. Raises `OutputError` when it is a file, a parent is a file, or it is not writable."""
    p = _absolute(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p}: exists and is not a directory")
    _check_writable_location(p / "x" if p.is_dir() else p, named=p)  # not the "x" (a trial)
    return p


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _check_writable_location(p: Path, named: Path | None = None) -> None:
    """`p` (which may not exist) could be created: its nearest existing ancestor is a writable
    directory. Errors name `named` (default `p`)."""
    folder = p.parent
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{p}: cannot create it: a parent is a file ({folder})")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tagger-jax-", suffix=".probe")
    except OSError as e:
        raise OutputError(f"{named or p}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` through a unique temporary file in the same folder + `os.replace`.

    The file gets the usual permissions (0666 minus the umask). The temporary file never
    outlives the call, whatever happens; a failed write (disk full, folder gone) is an
    `OutputError` naming `path` (and saying so when its folder is gone), and the previous version
    of the file is kept. A `path` that is a symbolic link is written through it: its target is
    replaced and the link kept (a trial's `--output LINK` became a file beside the target, whose
    lock, `lock_path`, the run held). Returns `path`.
    """
    p = Path(path)
    try:
        _atomic_write(Path(os.path.realpath(p)) if os.path.islink(p) else p, data)
        return p
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        if not p.parent.is_dir():  # no previous version to keep
            raise OutputError(f"{p}: cannot write it: its folder is gone (deleted or moved while "
                              "the run wrote into it)") from None
        raise OutputError(f"{p}: cannot write it ({e.strerror or e}); its previous version, if "
                          "any, is kept") from None


def _atomic_write(p: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` of UTF-8 text (undecodable path bytes kept as `surrogateescape`)."""
    return atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


def atomic_write_json(path: str | os.PathLike, value: Any, indent: int | None = 1) -> Path:
    """`value` as JSON (strict: NaN/inf are refused, not written as invalid JSON)."""
    return atomic_write_text(path, json.dumps(value, indent=indent, allow_nan=False))


def lock_path(target: str | os.PathLike, directory: bool | None = None) -> Path:
    """The lock file guarding `target`: a directory (`directory=True`, or None and it is one) or
    a file. Symbolic links are resolved, so two names of one folder share its lock (a run given
    a link to another run's output directory was let in, and the two broke each other's files)."""
    t = Path(os.path.realpath(os.path.expanduser(os.fspath(target))))
    if directory is None:
        directory = t.is_dir()
    return t / DIR_LOCK_NAME if directory else t.parent / f".{t.name}.lock"


def own_files(target: str | os.PathLike) -> list[Path]:
    """What a run writing the file `target` creates beside it: the file, its lock and the lock's
    holder note (`.NAME.lock*`), its temporary files (`.NAME.*.tmp`) and per-process parts
    (`NAME.partN`). Directory searches leave them out of the inputs
    (`inference.discover(exclude=...)`)."""
    t = Path(os.path.abspath(os.path.expanduser(os.fspath(target))))
    lock = lock_path(t, directory=False)
    beside = []
    if t.parent.is_dir():
        name = glob.escape(t.name)
        beside = sorted({*t.parent.glob(f".{name}.*.tmp"), *t.parent.glob(f"{name}.part*")})
    return [t, lock, Path(str(lock) + HOLDER_SUFFIX), *beside]


def run_file_kind(name: str) -> str | None:
    """What a file named `name` is, if a tagger-jax run made it as bookkeeping beside an output
    (not a result): "lock file" (`.NAME.lock`, `.tagger-jax.lock`, a workdir's `train.lock`),
    "lock holder note" (`...lock.holder`) or "temporary file" (`.NAME.*.tmp`, an atomic write
    in progress or interrupted); else None. Directory searches report these as such rather
    than as "not audio" (`audio.scan_inputs`)."""
    if name in (TRAIN_LOCK_NAME, TRAIN_LOCK_NAME + HOLDER_SUFFIX):
        return "lock file" if name == TRAIN_LOCK_NAME else "lock holder note"
    if not name.startswith("."):
        return None
    if name.endswith(".lock"):
        return "lock file"
    if name.endswith(".lock" + HOLDER_SUFFIX):
        return "lock holder note"
    if name.endswith(".tmp") and name.count(".") >= 3:
        return "temporary file"
    return None


def holder(lock_file: str | os.PathLike) -> str:
    """Who holds `lock_file`, as `exclusive` wrote it ("unknown holder" if unreadable)."""
    try:
        return _describe(json.loads(Path(str(lock_file) + HOLDER_SUFFIX).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown holder"


def _describe(info: dict[str, Any]) -> str:
    return f"pid {info['pid']} on host {info['host']}, started {info['started']}: {info['command']}"


def _may_run(info: dict[str, Any]) -> bool:
    """False when a holder note names a process of this host that no longer exists (a note
    that a kill -9 left behind); True otherwise (another host's cannot be checked)."""
    if info["host"] != socket.gethostname():
        return True
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def running_holder(lock_file: str | os.PathLike) -> str | None:
    """Who holds `lock_file` (as `holder`) while its holder note names a process that may still
    run; None when there is no note, or it was left by a process that ended."""
    try:
        info = json.loads(Path(str(lock_file) + HOLDER_SUFFIX).read_text())
        return _describe(info) if _may_run(info) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_for_holder(lock_file: str | os.PathLike, target: str | os.PathLike, what: str) -> bool:
    """Waits (saying whom for, as `exclusive(wait=True)` does) while another process holds
    `lock_file`, the lock `exclusive` takes on `target`, then lets it go at once; True if it
    waited. No wait when its holder note is absent, was left by a process that ended, or names
    this process (a build reading its own data directory)."""
    try:
        info = json.loads(Path(str(lock_file) + HOLDER_SUFFIX).read_text())
        mine = info["host"] == socket.gethostname() and int(info["pid"]) == os.getpid()
        if mine or not _may_run(info):
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    try:
        with exclusive(target, what, wait=True, lock_file=lock_file):
            return True
    except OSError:  # a location this run cannot lock (read-only): nothing to wait for
        return False


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, what: str, wait: bool = False,
              directory: bool | None = None, poll_s: float = 0.5,
              lock_file: str | os.PathLike | None = None) -> Iterator[Path]:
    """Holds the inter-process lock on `target` (a file or directory) for the `with` block.

    `what` names the target in messages ("output file", "data directory"). If another run holds
    it: `wait=False` raises `BusyError` naming the holder; `wait=True` prints once to stderr whom
    it waits for and blocks until the lock is free (Ctrl-C stops the wait). `directory`: see
    `lock_path` (give True for a directory that may not exist yet). `lock_file` replaces the
    lock file `lock_path` would choose (the training workdir's is `WORKDIR/train.lock`).
    """
    path = Path(lock_file) if lock_file is not None else lock_path(target, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        who = holder(path)
        if not wait:
            raise BusyError(f"{target}: {what} in use by another tagger-jax run ({who}); wait "
                            "for it to finish or choose another location") from None
        print(f"waiting for the other tagger-jax run using {what} {target} ({who}) ...",
              file=sys.stderr, flush=True)
        lock.acquire(timeout=-1, poll_interval=poll_s)
    holder_file = Path(str(path) + HOLDER_SUFFIX)
    try:
        with contextlib.suppress(OSError):
            holder_file.write_text(json.dumps(_holder_info()))
        yield path
    finally:
        with contextlib.suppress(OSError):
            holder_file.unlink()
        lock.release()


# A build's readers (a training, evaluate, embed/explain --dataset) against its rebuild.
READERS_SUFFIX = ".readers"


def readers_lock_path(target: str | os.PathLike) -> Path:
    """The reader/writer lock of the directory `target`: `PARENT/.NAME.readers.lock` beside it,
    so that deleting the folder (a rebuild) leaves the lock in place."""
    t = Path(os.path.realpath(os.path.expanduser(os.fspath(target))))
    return t.parent / f".{t.name}{READERS_SUFFIX}.lock"


def _holder_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}


def _reader_note(lock_file: Path, key: str) -> Path:
    """A reader's holder note beside the readers' lock `PARENT/.NAME.readers.lock`."""
    return lock_file.parent / f"{lock_file.stem}.{key}.json"  # PARENT/.NAME.readers.KEY.json


def _live_readers(lock_file: Path) -> list[str]:
    """The holder notes of the readers of `lock_file` that may still run (a note of a process
    of this host that no longer exists, left by a kill -9, is removed), described as `holder`
    does."""
    found = []
    for note in sorted(lock_file.parent.glob(f"{glob.escape(lock_file.stem)}.*.json")):
        try:
            info = json.loads(note.read_text())
            if _may_run(info):
                found.append(_describe(info))
            else:
                with contextlib.suppress(OSError):
                    note.unlink()
        except (OSError, ValueError, KeyError, TypeError):
            found.append("unknown holder")
    return found


def _acquire_readers_lock(path: Path, write: bool, timeout: float = 0) -> Any:
    """The `ReadWriteLock` at `path`, acquired for reading or writing within `timeout` seconds;
    raises filelock.Timeout, or the OSError / sqlite3.Error of a lock that cannot be made.

    A new lock file is made with mode 0666 less the umask, as any file the user shares (filelock
    would make it 0600): under a group's data directory with umask 002 every member's runs then
    take the same lock. Taking it needs write access to the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    lock = filelock.ReadWriteLock(str(path), is_singleton=False)
    try:
        (lock.acquire_write if write else lock.acquire_read)(timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            lock.close()
        raise
    return lock


@contextlib.contextmanager
def reading(target: str | os.PathLike, what: str, poll_s: float = 0.5) -> Iterator[None]:
    """Holds a shared lock on the directory `target` while the block reads it; any number of
    runs read at once, and `replacing` refuses while one does. If a run is replacing `target`,
    says once on stderr whom it waits for and waits for the new contents (Ctrl-C stops the
    wait). The lock is filelock's `ReadWriteLock` (an SQLite file, `readers_lock_path`); each
    reader leaves a holder note `PARENT/.NAME.readers.*.json` for `replacing`'s message. A
    build this run cannot write beside (a shared, read-only dataset) is read without the lock:
    a run that cannot create the lock file cannot delete the build either. Where the lock file
    exists but this run may not write it (another user's, umask 022), a `note:` says the build
    is read without the lock."""
    path = readers_lock_path(target)
    lock = None
    try:
        lock = _acquire_readers_lock(path, write=False)
    except filelock.Timeout:  # before OSError: filelock.Timeout is a TimeoutError
        print(f"waiting for the other tagger-jax run replacing {what} {target} ...",
              file=sys.stderr, flush=True)
        while lock is None:  # in Python between tries, so that Ctrl-C stops the wait
            with contextlib.suppress(filelock.Timeout):
                lock = _acquire_readers_lock(path, write=False, timeout=poll_s)
    except (OSError, sqlite3.Error) as e:  # read-only location, or a file system without locks
        if path.is_file():  # made by a run of another user this one cannot write for
            print(f"note: {target}: cannot take the readers' lock {path} ({e}); {what} is read "
                  "without it, so a rebuild by that file's owner would not see this run",
                  file=sys.stderr, flush=True)
    if lock is None:
        yield
        return
    note = _reader_note(path, f"{socket.gethostname()}-{os.getpid()}-{id(lock)}")
    try:
        with contextlib.suppress(OSError):
            note.write_text(json.dumps(_holder_info()))
        yield
    finally:
        with contextlib.suppress(OSError):
            note.unlink()
        lock.release()
        lock.close()


@contextlib.contextmanager
def replacing(target: str | os.PathLike, what: str, hint: str) -> Iterator[None]:
    """Holds the lock of `reading` on `target` exclusively for the block (a rebuild deletes and
    writes the folder); raises `BusyError` at once if a run reads it, naming the readers and
    `hint` (what to do instead). Where the lock cannot be taken (a file system without SQLite
    locking), a `note:` on stderr says the rebuild goes ahead without checking for readers."""
    path = readers_lock_path(target)
    try:
        lock = _acquire_readers_lock(path, write=True)
    except filelock.Timeout:  # before OSError: filelock.Timeout is a TimeoutError
        who = _live_readers(path) or ["unknown holder"]
        more = f"; and {len(who) - 2} more" if len(who) > 2 else ""
        runs = "another tagger-jax run" if len(who) == 1 else f"{len(who)} other tagger-jax runs"
        raise BusyError(f"{target}: {what} is being read by {runs} "
                        f"({'; '.join(who[:2])}{more}); {hint}") from None
    except (OSError, sqlite3.Error) as e:
        lock = None
        print(f"note: {target}: cannot take the readers' lock {path} ({e}); {what} is replaced "
              "without checking for runs that read it", file=sys.stderr, flush=True)
    if lock is None:
        yield
        return
    for note in path.parent.glob(f"{glob.escape(path.stem)}.*.json"):  # of killed readers
        with contextlib.suppress(OSError):
            note.unlink()
    try:
        yield
    finally:
        lock.release()
        lock.close()


# What process 0's attempt at a run's lock came to, sent to every process (`agree`).
LOCK_TAKEN, LOCK_BUSY, LOCK_FAILED = 0, 1, 2


@contextlib.contextmanager
def exclusive_for_run(target: str | os.PathLike, what: str,
                      lock_file: str | os.PathLike | None = None) -> Iterator[Path]:
    """`exclusive(target, what)` held by process 0 of a run (the one that merges the processes'
    shares or writes the workdir) for the block; refuses at once (errors.BUSY) if another run
    holds it. Yields the lock file's path on every process.

    Process 0 tries the lock and broadcasts the outcome (`jax.experimental.multihost_utils`)
    before any process goes on: when it is refused, every process raises `BusyError` (exit
    status 5) at once, instead of the others running on to the next barrier and waiting there
    until the cluster times out; any other failure of process 0 here stops the others too.

    The lock file sits beside `target` (`.NAME.lock`), never inside it, so an output directory
    holds only results; `lock_file` replaces it (the training workdir's `WORKDIR/train.lock`).
    Call after `jax.distributed` is initialised.
    """
    import jax

    path = Path(lock_file) if lock_file is not None else lock_path(target, directory=False)
    with contextlib.ExitStack() as held:
        status, error = LOCK_TAKEN, None
        if jax.process_index() == 0:
            try:
                held.enter_context(exclusive(target, what, directory=False, lock_file=lock_file))
            except BusyError as e:
                status, error = LOCK_BUSY, e
            except Exception as e:  # noqa: BLE001 (re-raised below, after telling the others)
                status, error = LOCK_FAILED, e
        status = agree(status)
        if error is not None:
            raise error
        if status == LOCK_BUSY:
            raise BusyError(f"{target}: {what} in use by another tagger-jax run ({holder(path)}); "
                            f"process 0 of this run was refused the lock, so process "
                            f"{jax.process_index()} stops too")
        if status == LOCK_FAILED:
            raise RuntimeError(f"{target}: process 0 of this run could not take the lock on the "
                               f"{what} (its error says why); stopping")
        yield path


def agree(status: int) -> int:
    """Process 0's `status` on every process (a no-op with one process); every process must
    call it, so it also stands for a barrier."""
    import jax

    if jax.process_count() == 1:
        return status
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(status)))
