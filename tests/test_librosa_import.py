"""librosa's numba cache is filled by one process at a time (tagger_jax/librosa_import.py).

The race itself (processes compiling at once leave a cache that crashes every later process) takes
minutes of compilation to show: benchmarks/librosa_cache_race.py. Here: the lock, the marker and
the wait, in a subprocess (this process has imported librosa already) and in this process with
the module list patched so that the import is not skipped.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import filelock
import librosa  # lazy: loads none of its modules yet
import pytest

from tagger_jax import librosa_import

ROOT = Path(__file__).resolve().parents[1]
IMPORT = ("import sys; from tagger_jax.librosa_import import GUFUNC_MODULES, import_librosa; "
          "from pathlib import Path; librosa = import_librosa(Path(sys.argv[1])); "
          "assert all(m in sys.modules for m in GUFUNC_MODULES); print(librosa.__version__)")
WAITING = "waiting for another process to fill librosa's numba cache"


def _lock(directory: Path) -> filelock.FileLock:
    key = librosa_import.cache_key()
    return filelock.FileLock(str(directory / librosa_import.LOCK.format(key=key)))


def _marker(directory: Path) -> Path:
    return directory / librosa_import.MARKER.format(key=librosa_import.cache_key())


def _import_in_a_subprocess(directory: Path, hold: filelock.FileLock | None = None
                            ) -> tuple[str, bool]:
    """Runs IMPORT; while `hold` is given, keeps it locked until the child says it waits, checks
    that the child does not finish meanwhile, then releases. (Its stderr, whether the marker was
    there while it waited.)"""
    proc = subprocess.Popen([sys.executable, "-c", IMPORT, str(directory)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marked_while_waiting = False
    try:
        err = []
        if hold is not None:
            with hold:
                for line in proc.stderr:  # until the child says it waits (or ends)
                    err.append(line)
                    if WAITING in line:
                        break
                assert WAITING in "".join(err), "".join(err)[-3000:]
                assert proc.poll() is None  # still waiting
                marked_while_waiting = _marker(directory).exists()
        out, rest = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, ("".join(err) + rest)[-3000:]
    assert out.strip()  # librosa's version
    return "".join(err) + rest, marked_while_waiting


def test_first_import_waits_for_the_lock_then_marks_the_cache_filled(tmp_path):
    _, marked = _import_in_a_subprocess(tmp_path, hold=_lock(tmp_path))
    assert not marked and _marker(tmp_path).exists()  # marked once filled, not before
    # The marker counts only with numba's cache files beside it: without them, lock again.
    _import_in_a_subprocess(tmp_path, hold=_lock(tmp_path))
    (tmp_path / "guf-utils.__peak_pick-1193.py311.nbi").write_bytes(b"")
    with _lock(tmp_path):  # filled: no lock taken, even while someone holds it
        assert WAITING not in _import_in_a_subprocess(tmp_path)[0]


def test_a_wait_for_the_lock_gives_up_when_the_command_stops(tmp_path, monkeypatch):
    """A trial's Ctrl-C during a wait for another run's lock ended only when that run let go
    (35 s later): the main thread unwound, then waited for the decoding thread that waited for
    the lock. The wait now gives up within a second once the command is stopping."""
    import time

    from tagger_jax import errors

    held = _lock(tmp_path)
    path = held.lock_file
    monkeypatch.setattr(librosa_import, "LOCK_TIMEOUT_S", 0.3)
    with held:
        with pytest.raises(filelock.Timeout):  # not stopping: the wait's own limit
            librosa_import._wait(filelock.FileLock(str(path)))
        monkeypatch.setattr(librosa_import, "LOCK_TIMEOUT_S", 60.0)
        monkeypatch.setattr(errors, "STOPPING", threading.Event())
        threading.Timer(0.5, errors.STOPPING.set).start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            librosa_import._wait(filelock.FileLock(str(path)))
        assert time.monotonic() - start < 3.0


def test_the_modules_are_imported_while_the_lock_is_held(tmp_path, monkeypatch):
    held = []

    def import_modules():
        # From another thread, a second lock of the file must fail while it is held.
        t = threading.Thread(target=lambda: held.append(_try(_lock(tmp_path))))
        t.start()
        t.join()
        return librosa

    monkeypatch.setattr(librosa_import, "GUFUNC_MODULES", ("not.imported.here",))
    monkeypatch.setattr(librosa_import, "_import_gufunc_modules", import_modules)
    assert librosa_import.import_librosa(tmp_path) is librosa
    assert held == [False] and _marker(tmp_path).exists()
    assert _try(_lock(tmp_path))  # released afterwards


def _try(lock: filelock.FileLock) -> bool:
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return False
    lock.release()
    return True


def test_an_unusable_lock_still_imports_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(librosa_import, "GUFUNC_MODULES", ("not.imported.here",))
    monkeypatch.setattr(librosa_import, "_import_gufunc_modules", lambda: librosa)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert librosa_import.import_librosa(a_file) is librosa  # no folder there
    assert "cannot lock" in capsys.readouterr().err


def test_the_key_follows_numba_cache_dir_and_is_stable(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    key = librosa_import.cache_key()
    assert key == librosa_import.cache_key() and len(key) == 16
    monkeypatch.chdir(tmp_path)  # without NUMBA_CACHE_DIR the cache is not the cwd's
    assert librosa_import.cache_key() == key
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert librosa_import.cache_key() != key


def test_the_lock_sits_in_numbas_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    from numba.core import config

    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))  # numba read the variable at import
    folder = librosa_import.numba_cache_dir()
    # numba's subpath there: the source folder's name and a hash of its path
    assert folder is not None and folder.parent == tmp_path and folder.name.startswith("util_")


@pytest.mark.parametrize("name", librosa_import.GUFUNC_MODULES)
def test_the_listed_modules_hold_numba_gufuncs(name):
    import importlib

    from numba.np.ufunc.gufunc import GUFunc

    module = importlib.import_module(name)
    assert any(isinstance(v, GUFunc) for v in vars(module).values()), name


THREADS = """
import sys, threading
from pathlib import Path
from tagger_jax.librosa_import import GUFUNC_MODULES, import_librosa
start, errors = threading.Barrier(6), []
def go():
    start.wait()
    try:
        import_librosa(Path(sys.argv[1]))
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=go) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
assert all(m in sys.modules for m in GUFUNC_MODULES)
print(errors)
"""


def test_threads_of_one_process_import_once_without_waiting_on_each_other(tmp_path):
    """From a new user's trial: a first `tag` run's decode threads each took the file lock as
    if they were other processes ("waiting for another process ..." 14 times) and imported
    numba concurrently: half the files failed with "module 'numba' has no attribute 'core'"."""
    proc = subprocess.run([sys.executable, "-c", THREADS, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
    assert WAITING not in proc.stderr
    assert _marker(tmp_path).exists()
