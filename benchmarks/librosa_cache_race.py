"""Does librosa's numba cache survive processes that fill it at the same time?

    python benchmarks/librosa_cache_race.py [--trials 3] [--processes 3] [--stagger 2,4]

Each trial starts from an empty numba cache ($NUMBA_CACHE_DIR in a fresh folder) and starts
`--processes` processes a few seconds apart (the stagger: process i starts i * s seconds after
the first, so later ones find part of the cache written), each importing librosa and running
`librosa.onset.onset_detect` (its peak picking is a cached numba gufunc). When they are done, one
more process runs the same call on the cache they left. Two ways of importing librosa:

* `plain`: `import librosa`, as any script does;
* `locked`: `tagger_jax.librosa_import.import_librosa()` (one process fills the cache at a time).

Printed per trial: how many of the concurrent processes crashed (SIGSEGV) and whether the cache
was left corrupt (the later process crashes too, as would every later one). numba/numba#10128 is
the cause (tagger_jax/librosa_import.py). Several minutes: every trial compiles librosa's numba
code from scratch.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(mode: str) -> None:
    import numpy as np

    if mode == "locked":
        sys.path.insert(0, str(ROOT))
        from tagger_jax.librosa_import import import_librosa

        librosa = import_librosa()
    else:
        import librosa
    y = np.random.default_rng(0).normal(size=4 * 16000).astype(np.float32)
    librosa.onset.onset_detect(y=y, sr=16000)


def _run(mode: str, cache: Path, delay: float) -> subprocess.Popen:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))  # the lock goes there too
    code = (f"import time, sys; time.sleep({delay}); sys.path.insert(0, {str(ROOT)!r}); "
            f"from benchmarks.librosa_cache_race import worker; worker({mode!r})")
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # crash dumps are not read


def trial(mode: str, processes: int, stagger: float) -> tuple[int, bool, float]:
    """(concurrent processes that crashed, cache left corrupt, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "numba"
        start = time.perf_counter()
        procs = [_run(mode, cache, i * stagger) for i in range(processes)]
        codes = [p.wait() for p in procs]
        later = _run(mode, cache, 0).wait()
        bad = [c for c in codes + [later] if c not in (0, -signal.SIGSEGV)]
        if bad:
            raise RuntimeError(f"a process failed otherwise than by SIGSEGV: {bad}")
        crashed = sum(c == -signal.SIGSEGV for c in codes)
        return crashed, later == -signal.SIGSEGV, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3, help="trials per mode and stagger")
    p.add_argument("--processes", type=int, default=3, help="concurrent processes per trial")
    p.add_argument("--stagger", default="2,4", help="comma-separated start gaps in seconds")
    p.add_argument("--modes", default="plain,locked", help="comma-separated: plain, locked")
    args = p.parse_args(argv)
    staggers = [float(s) for s in args.stagger.split(",")]
    import librosa
    import numba

    print(f"librosa {librosa.__version__}, numba {numba.__version__}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
          flush=True)
    print(f"{'mode':>7} {'stagger s':>9} {'trial':>5} {'crashed':>8} {'corrupt':>8} "
          f"{'seconds':>8}", flush=True)
    for mode in args.modes.split(","):
        for stagger in staggers:
            for i in range(args.trials):
                crashed, corrupt, seconds = trial(mode, args.processes, stagger)
                print(f"{mode:>7} {stagger:>9g} {i:>5} {crashed:>4}/{args.processes:<3} "
                      f"{'yes' if corrupt else 'no':>8} {seconds:>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
