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
that the project's calls load (`GUFUNC_MODULES`) under an inter-process file lock, once per
cache: the first process compiles and writes the cache while the others wait (with a one-line
note on stderr), then it leaves a marker, and later imports take no lock as long as the marker
and numba's cache files are both there. Lock and marker sit in numba's cache folder for
librosa's `util/utils.py` (`numba_cache_dir`: $NUMBA_CACHE_DIR, else librosa's `__pycache__`,
else numba's per-user folder, as numba chooses), so every process sharing that cache, on any
host that sees the folder, shares the lock. The marker is keyed on what numba's cache entries
depend on: the librosa and numba versions, librosa's source files, the CPU numba compiles for and
$NUMBA_CACHE_DIR. If the lock cannot be used (a read-only folder, a file system without locks) or
is held for over `LOCK_TIMEOUT_S`, librosa is imported without it, with a note on stderr. Not
covered: scripts that import librosa directly while a first run fills the cache, and librosa
versions whose gufuncs compile on first call rather than at import.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Optional

# librosa 0.10/0.11 modules with `numba.guvectorize` signatures, compiled when imported, that the
# project's calls load: peak picking and local extrema (util), zero crossings (core.audio),
# parabolic interpolation (core.pitch). librosa.beat has some too; the project never imports it.
GUFUNC_MODULES = ("librosa.util.utils", "librosa.core.audio", "librosa.core.pitch")
LOCK_TIMEOUT_S = 900.0  # longer than compiling librosa's gufuncs on a slow 2-core machine
MARKER = "tagger-jax-librosa-{key}.ok"
LOCK = "tagger-jax-librosa-{key}.lock"


def _librosa_root() -> Optional[Path]:
    spec = importlib.util.find_spec("librosa")  # a top-level name: imports nothing
    return Path(spec.origin).resolve().parent if spec is not None and spec.origin else None


def numba_cache_dir() -> Optional[Path]:
    """The folder numba caches librosa's `util/utils.py` in, found by numba's own cache locators
    in numba's order; None without librosa or numba, or if numba caches nowhere."""
    root = _librosa_root()
    source = root / "util" / "utils.py" if root else None
    if source is None or not source.exists():
        return None
    try:
        from numba.core import caching

        locators = (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator,
                    caching.UserWideCacheLocator)
    except (ImportError, AttributeError):
        return None

    def anchor() -> None:  # a function "defined" in that file, for the locators' interface
        pass

    for cls in locators:
        locator = cls.from_function(anchor, str(source))
        if locator is not None:
            return Path(locator.get_cache_path())
    return None


def cache_key() -> str:
    """What numba's cache of librosa depends on (module docstring), as 16 hex digits. Imports
    nothing of librosa (a submodule's `find_spec` would import its package)."""
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")  # unset: beside librosa's sources, not cwd
    parts = [sys.version, os.path.realpath(cache_dir) if cache_dir else "-",
             os.environ.get("NUMBA_CPU_NAME", ""), os.environ.get("NUMBA_CPU_FEATURES", "")]
    for dist in ("librosa", "numba"):
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    try:
        from llvmlite import binding

        parts += [binding.get_host_cpu_name(), binding.get_host_cpu_features().flatten()]
    except Exception:  # noqa: BLE001 - no llvmlite, or one without these: the key still works
        pass
    root = _librosa_root()
    if root is not None:
        for name in GUFUNC_MODULES:
            source = root.joinpath(*name.split(".")[1:]).with_suffix(".py")
            if source.exists():
                parts.append(f"{source} {source.stat().st_mtime_ns} {source.stat().st_size}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _import_gufunc_modules() -> ModuleType:
    librosa = importlib.import_module("librosa")
    for name in GUFUNC_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a dependency of librosa is missing: say so
                raise
    return librosa


def _note(message: str) -> None:
    """One line on stderr, on a line of its own even while a progress bar is drawn there."""
    from tqdm import tqdm

    tqdm.write(f"tagger-jax: {message}", file=sys.stderr)


def import_librosa(directory: Optional[Path] = None) -> ModuleType:
    """The `librosa` module, its gufuncs compiled (or loaded from numba's cache) by one process
    at a time (module docstring). `directory` (default `numba_cache_dir()`) holds the lock and
    the marker; the marker counts only while numba's gufunc index files (`guf-*.nbi`) are there
    too."""
    if all(name in sys.modules for name in ("librosa",) + GUFUNC_MODULES):
        return sys.modules["librosa"]  # compiled or loaded in this process already
    with _THREAD_LOCK:  # one thread of this process imports; the others find it done
        if all(name in sys.modules for name in ("librosa",) + GUFUNC_MODULES):
            return sys.modules["librosa"]
        return _import_once(directory)


# The file lock is between processes: threads of one process each opening it would wait on one
# another as if on another process ("waiting for another process ...", once per thread), and
# import numba and librosa concurrently, which fails half-way ("module 'numba' has no attribute
# 'core'", seen by a new user as failures of half the files of a first `tag` run).
_THREAD_LOCK = threading.Lock()


def _wait(lock) -> None:
    """`lock.acquire` for up to `LOCK_TIMEOUT_S` (then filelock.Timeout), a second at a time,
    giving up with KeyboardInterrupt once the command is stopping (`errors.STOPPING`: Ctrl-C or
    SIGTERM reached the main thread, which would otherwise wait for this decoding thread; a
    trial's Ctrl-C ended only when the other run released the lock, 35 s later)."""
    import filelock

    from tagger_jax import errors

    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            lock.acquire(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            return
        except filelock.Timeout:
            if errors.STOPPING.is_set():
                raise KeyboardInterrupt from None
            if time.monotonic() >= deadline:
                raise


def _import_once(directory: Optional[Path]) -> ModuleType:
    directory = directory or numba_cache_dir()
    if directory is None:  # numba writes no cache: nothing to corrupt
        return _import_gufunc_modules()
    key = cache_key()
    marker = directory / MARKER.format(key=key)
    if marker.exists() and any(directory.glob("guf-*.nbi")):
        return _import_gufunc_modules()  # numba loads them from its cache
    import filelock  # not needed by the modules that import this one for their model code

    lock_file = directory / LOCK.format(key=key)
    try:
        lock = filelock.FileLock(str(lock_file))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            _note(f"waiting for another process to fill librosa's numba cache ({lock_file}; "
                  "another run, or a worker of this one); once per install (about 20 s on 2 cores)")
            _wait(lock)
    except filelock.Timeout:
        _note(f"{lock_file} still held after {LOCK_TIMEOUT_S:.0f} s; importing librosa "
              "without it")
        return _import_gufunc_modules()
    except (OSError, NotImplementedError) as e:
        _note(f"cannot lock {lock_file} ({e}); importing librosa without the lock")
        return _import_gufunc_modules()
    try:
        librosa = _import_gufunc_modules()
        try:
            marker.touch()
        except OSError as e:
            _note(f"cannot write {marker} ({e}); the next import will take the lock again")
    finally:
        lock.release()
    return librosa
