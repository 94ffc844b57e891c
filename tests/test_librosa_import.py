"""librosa's numba cache is filled by one process at a time (tagger_jax/librosa_import.py).

The race itself (processes compiling at once leave a cache that crashes every later process) takes
minutes of compilation to show: benchmarks/librosa_cache_race.py. Here: the lock, the marker and
the wait, in subprocesses (this process has imported librosa already).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import filelock

from tagger_jax import librosa_import

ROOT = Path(__file__).resolve().parents[1]
IMPORT = ("import sys; from tagger_jax.librosa_import import GUFUNC_MODULES, import_librosa; "
          "from pathlib import Path; librosa = import_librosa(Path(sys.argv[1])); "
          "assert all(m in sys.modules for m in GUFUNC_MODULES); print(librosa.__version__)")


def _start(lock_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", IMPORT, str(lock_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lock(lock_dir: Path) -> filelock.FileLock:
    return filelock.FileLock(str(lock_dir / f"librosa-numba-{librosa_import.cache_key()}.lock"))


def _marker(lock_dir: Path) -> Path:
    return lock_dir / f"librosa-numba-{librosa_import.cache_key()}.ok"


def test_first_import_waits_for_the_lock_then_marks_the_cache_filled(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    lock = _lock(lock_dir)
    with lock:  # another process is filling the cache
        proc = _start(lock_dir)
        waiting = proc.stderr.readline()  # blocks until the first line (or the end)
        assert "waiting for another process to fill librosa's numba cache" in waiting, waiting
        time.sleep(1)
        assert proc.poll() is None and not _marker(lock_dir).exists()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert _marker(lock_dir).exists()
    # Filled: later imports take no lock, even while someone holds it.
    with lock:
        proc = _start(lock_dir)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "waiting" not in err, err[-3000:]


def test_the_key_follows_numba_cache_dir_and_is_stable(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    key = librosa_import.cache_key()
    assert key == librosa_import.cache_key() and len(key) == 16
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert librosa_import.cache_key() != key


def test_lock_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(librosa_import.ENV_LOCK_DIR, str(tmp_path / "x"))
    assert librosa_import.lock_dir() == tmp_path / "x"
    monkeypatch.delenv(librosa_import.ENV_LOCK_DIR)
    assert librosa_import.lock_dir().name == f"tagger-jax-{os.getuid()}"


def test_an_unusable_lock_dir_still_imports(tmp_path):
    path = tmp_path / "not_a_dir"
    path.write_text("")
    proc = _start(path / "locks")  # cannot be created under a file
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert out.strip()
