"""An exclusive lock on a path that says who holds it: `filelock` plus a small holder record.

`hold(target, what)` takes a lock file (`TARGET.lock` unless given; an OS file lock through the
`filelock` library, released by the OS when the holding process dies, so a killed run never leaves
a stale lock) and writes `<lock file>.holder` = {"pid", "host", "since", "what"} while it holds
it. A second process that finds the lock taken gets `LockedError`, whose message names the holder
from that record:

    runs/x is in use by training (pid 4242 on host node7 since 2026-11-30 18:02:11 UTC); ...

The holder record is a separate file because filelock truncates the lock file when it opens it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import filelock


class LockedError(RuntimeError):
    """The path is locked by another process; the message names it (pid, host, since when)."""


def holder(lock_file: str | os.PathLike) -> dict | None:
    """The holder record of a lock file ({"pid", "host", "since", "what"}), if readable."""
    try:
        return json.loads(Path(f"{lock_file}.holder").read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def hold(target: str | os.PathLike, what: str, *, lock_file: str | os.PathLike | None = None,
         timeout: float = 0.0) -> Iterator[Path]:
    """Holds the lock of `target` (a file or directory) for the block.

    `lock_file` (default `TARGET.lock`; its directory must exist) is the file locked. Waits up
    to `timeout` seconds (0: refuse at once, -1: wait forever), then raises `LockedError` naming
    `target` and the holder. `what` ("training", ...) is recorded for that message.
    """
    target = Path(target)
    lock_file = Path(lock_file) if lock_file is not None else Path(f"{target}.lock")
    lock = filelock.FileLock(lock_file, timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        h = holder(lock_file)
        who = (f"{h.get('what', 'another run')} (pid {h.get('pid')} on host {h.get('host')} "
               f"since {h.get('since')})" if isinstance(h, dict) else "another process")
        raise LockedError(f"{target} is in use by {who}; wait for it to finish or use another "
                          "path") from None
    record = Path(f"{lock_file}.holder")
    try:
        record.write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}))
        yield target
    finally:
        with contextlib.suppress(OSError):
            record.unlink()
        lock.release()
