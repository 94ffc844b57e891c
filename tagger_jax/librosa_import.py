"""librosa, imported so that concurrent processes cannot corrupt its numba cache.

librosa 0.10-0.11 (what Python 3.11 installs) compiles its numba gufuncs (`@guvectorize(...,
cache=True)`, e.g. the kernel of `librosa.util.peak_pick`) when its modules are first imported,
and numba writes each gufunc to two cache files, the kernel and its wrapper, whose native names
must come from the same process. When several processes compile at once, which happens with an
empty cache, right after an install, to commands started together, to the processes of a
multi-process run or to a job array, the two files can come from different processes; from then
on every process of that environment that calls the gufunc crashes with SIGSEGV, until the cache
files are deleted (numba/numba#10128, librosa/librosa#1998; numba 0.68.1 still has it).
Measured on 2 cores: three processes started 2-4 s apart on an empty cache left it corrupt in 4
of 4 trials, and in none of 4 through `import_librosa` (`benchmarks/librosa_cache_race.py`,
docs/audio.md).

`import_librosa()` imports librosa and those of its modules that compile gufuncs at import and
that the project's calls load (`GUFUNC_MODULES`) under an inter-process file lock, once per cache: the first process compiles
and writes the cache while the others wait (with a one-line note on stderr), then it leaves a
marker, and later imports take no lock. The marker is keyed on the librosa and numba versions,
librosa's files and $NUMBA_CACHE_DIR, the keys of numba's own cache; it sits with the lock in
$TAGGER_JAX_LOCK_DIR (default: a per-user folder in the temporary directory). What it does not
cover: deleting numba's cache files by hand while the marker stays (the next import compiles
alone unless processes start together), and librosa >= 1.0 (Python >= 3.12), whose gufuncs
compile on first call rather than at import.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ENV_LOCK_DIR = "TAGGER_JAX_LOCK_DIR"
# librosa 0.10/0.11 modules with `numba.guvectorize` signatures, compiled when imported, that the
# project's calls load (librosa.beat has some too; the project never imports it).
GUFUNC_MODULES = ("librosa.util.utils", "librosa.core.audio", "librosa.core.convert",
                  "librosa.core.notation", "librosa.core.pitch")


def lock_dir() -> Path:
    """$TAGGER_JAX_LOCK_DIR, else `<temporary directory>/tagger-jax-<uid>`."""
    value = os.environ.get(ENV_LOCK_DIR, "").strip()
    if value:
        return Path(value).expanduser()
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"tagger-jax-{uid}"


def cache_key() -> str:
    """What numba's cache of librosa depends on: versions, librosa's files (path and
    modification time of each gufunc module's source) and $NUMBA_CACHE_DIR. 16 hex digits.
    Imports nothing of librosa (a submodule's `find_spec` would import its package)."""
    parts = [sys.version, os.environ.get("NUMBA_CACHE_DIR", "")]
    for dist in ("librosa", "numba"):
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    spec = importlib.util.find_spec("librosa")
    if spec is not None and spec.origin:
        root = Path(spec.origin).parent
        for name in GUFUNC_MODULES:
            source = root.joinpath(*name.split(".")[1:]).with_suffix(".py")
            if source.exists():
                parts.append(f"{source} {source.stat().st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _import_gufunc_modules() -> ModuleType:
    librosa = importlib.import_module("librosa")
    for name in GUFUNC_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:  # another librosa layout: nothing there to compile
            pass
    return librosa


def import_librosa(directory: Path | None = None) -> ModuleType:
    """The `librosa` module, its gufuncs compiled (or loaded from numba's cache) by one process
    at a time (module docstring). `directory` overrides `lock_dir()`. If the lock folder cannot
    be created, librosa is imported without a lock."""
    if all(name in sys.modules for name in ("librosa",) + GUFUNC_MODULES):
        return sys.modules["librosa"]  # compiled or loaded in this process already
    import filelock  # not needed by the modules that import this one for their model code

    directory = directory or lock_dir()
    key = cache_key()
    marker = directory / f"librosa-numba-{key}.ok"
    if marker.exists():
        return _import_gufunc_modules()  # numba loads them from its cache
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return _import_gufunc_modules()
    lock = filelock.FileLock(str(directory / f"librosa-numba-{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(f"tagger-jax: waiting for another process to fill librosa's numba cache "
              f"(lock {lock.lock_file})", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        librosa = _import_gufunc_modules()
        marker.touch()
    finally:
        lock.release()
    return librosa
