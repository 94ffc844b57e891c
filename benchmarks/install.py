"""Seconds the README's install takes, with and without byte-compiling every installed module
(`pip install --no-compile`), counting the first imports of the main job's modules, paired.

    python benchmarks/install.py [--rounds 3] [--python python3.11]

Each round makes, for each contender in turn, a new virtual environment in a temporary directory
and runs `pip install [--no-compile] -c constraints.txt -e <this checkout>` with an empty home
directory (pip's cache empty: every wheel is fetched from the registry, as on a fresh machine),
then one Python process importing what the main job imports (JAX, Flax, Optax, Orbax, TFDS,
grain, librosa, scikit-learn, Matplotlib, SciPy's signal module, soundfile, midirenderer and the
package's modules that training, rendering and tagging use). Without
byte-compiling at install, Python compiles what is imported on first import (and writes the
.pyc files next to the modules, so later processes read them); modules never imported are never
compiled. The table gives the median and range over rounds of the install, the imports and
both, and the per-round difference of the totals. Needs the package registry and the Python
named by --python (the README's 3.11).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._bench import cpu_name, positive_int  # noqa: E402

CONTENDERS = (("pip install (byte-compiles)", []), ("pip install --no-compile", ["--no-compile"]))
IMPORTS = ("import jax, flax, optax, orbax.checkpoint, tensorflow_datasets, grain, librosa, "
           "sklearn, matplotlib.pyplot, scipy.signal, soundfile, midirenderer, "
           "tagger_jax.train_lib, tagger_jax.datasets, tagger_jax.baseline, tagger_jax.soundfont, "
           "tagger_jax.inference, tagger_jax.validation, tagger_jax.cli")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds")
    p.add_argument("--python", default="python3.11", help="interpreter for the environments")
    args = p.parse_args(argv)
    if shutil.which(args.python) is None:
        p.error(f"--python {args.python}: not found on PATH")
    return args


def _run(cmd: list[str], env: dict, what: str) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"install.py: {what} failed:\n{(out.stderr or out.stdout)[-2000:]}")
    return time.perf_counter() - start


def one(python: str, flags: list[str]) -> tuple[float, float]:
    """(install seconds, first-import seconds) in a new environment with an empty home."""
    with tempfile.TemporaryDirectory(prefix="tagger-jax-install-") as tmp:
        env = dict(os.environ, HOME=str(Path(tmp) / "home"))
        (Path(tmp) / "home").mkdir()
        venv = Path(tmp) / "venv"
        install = _run([python, "-m", "venv", str(venv)], env, "venv")
        install += _run([str(venv / "bin" / "pip"), "install", "-q", *flags, "-c",
                         str(ROOT / "constraints.txt"), "-e", str(ROOT)], env, "pip install")
        imports = _run([str(venv / "bin" / "python"), "-c", IMPORTS], env, "the imports")
        return install, imports


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"{cpu_name()}, {os.cpu_count()} cores; {args.python}; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in CONTENDERS}
    for r in range(args.rounds):
        for name, flags in CONTENDERS:
            times[name].append(one(args.python, flags))
            install, imports = times[name][-1]
            print(f"round {r + 1}, {name}: install {install:.1f} s, imports {imports:.1f} s",
                  file=sys.stderr, flush=True)

    def cell(values):
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    print("| contender | install, s | first imports, s | both, s |")
    print("|---|---|---|---|")
    for name, _ in CONTENDERS:
        t = times[name]
        print(f"| {name} | {cell([a for a, _ in t])} | {cell([b for _, b in t])} | "
              f"{cell([a + b for a, b in t])} |")
    (first, _), (second, _) = CONTENDERS
    saved = [sum(a) - sum(b) for a, b in zip(times[first], times[second])]
    print(f"per-round difference of the totals ({first} minus {second}): {cell(saved)} s")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
