"""XLA:CPU options for the inference commands (`tag`, `evaluate`, `explain`, `embed`).

XLA:CPU hands the matmuls and their neighbours to YNNPACK fusions by default. For this model's
forward pass that is slower than XLA's own code: without them (`YNNPACK_OFF`) the paper model's
forward pass went from level with the authors' model under `torch.compile` (0.90-0.97x) to
1.17-1.47x ahead of it, and the commands' own path (`benchmarks/inference.py --xla-flags`) got
1.26-1.38x faster for `tag` and `embed` and 1.11-1.36x for `explain`, all paired, on the 2-core
AMD EPYC of docs/benchmarks.md ("XLA:CPU without YNNPACK fusions for inference"). Training is
left at XLA's defaults: the main job's train step was a little slower without them.

XLA_FLAGS is read once, when JAX's backend starts, and XLA aborts the process on a flag it does
not know. So the flag is added only

  * by a program's entry point, before anything imports jax (`cli.console` for the inference
    subcommands, evaluate.py, explain.py), never by library code a notebook might call;
  * when the installed jaxlib is in `JAXLIB_RANGE`, the versions where the flag was checked to
    exist and the gain was measured (outside it nothing changes and the command runs at XLA's
    defaults; widen the range after measuring a new jaxlib with `benchmarks/inference.py
    --xla-flags`);
  * when the user's own XLA_FLAGS do not set the same option (theirs is kept), and `OPT_OUT` is
    not set to 1.

The flag changes the order of float32 sums, not what is computed: probabilities stay within
1e-6 of the authors' PyTorch model (docs/benchmarks.md), but are not bitwise those of a run at
XLA's defaults. The persistent compilation cache keys on XLA_FLAGS, so the two never share
programs.
"""
from __future__ import annotations

import importlib.metadata
import os
from typing import Mapping, MutableMapping

OPTION = "--xla_cpu_experimental_ynn_fusion_type"
YNNPACK_OFF = OPTION + "="  # an empty list of YNNPACK fusion types: XLA's own code throughout
JAXLIB_RANGE = ((0, 10), (0, 11))  # [first, past-the-last) (major, minor) where it was measured
OPT_OUT = "TAGGER_JAX_XLA_DEFAULTS"  # "1": leave XLA_FLAGS as they are


def jaxlib_version() -> tuple[int, int] | None:
    """(major, minor) of the installed jaxlib, read from its metadata without importing it;
    None when jaxlib is not installed or its version is not numeric."""
    try:
        parts = importlib.metadata.version("jaxlib").split(".")
        return int(parts[0]), int(parts[1])
    except (importlib.metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def inference_flags(environ: Mapping[str, str], version: tuple[int, int] | None) -> str | None:
    """The XLA_FLAGS value an inference command should run with, or None to leave the
    environment as it is (opted out, jaxlib outside `JAXLIB_RANGE`, or the user's flags already
    set `OPTION`). The user's flags are kept and `YNNPACK_OFF` appended."""
    if environ.get(OPT_OUT, "") == "1" or version is None:
        return None
    if not JAXLIB_RANGE[0] <= version < JAXLIB_RANGE[1]:
        return None
    current = environ.get("XLA_FLAGS", "")
    if any(f.split("=")[0] == OPTION for f in current.split()):
        return None
    return f"{current} {YNNPACK_OFF}".strip()


def use_for_inference(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Sets XLA_FLAGS in `environ` to `inference_flags(...)` when that is not None; True when it
    did. Call it in a program's entry point before jax is imported. Called once JAX's backend
    has started (too late for XLA to read the flag), it changes nothing, warns and returns
    False (a trial's notebook got True and no effect)."""
    flags = inference_flags(environ, jaxlib_version())
    if flags is None:
        return False
    if environ is os.environ and _backend_started():
        import warnings

        warnings.warn("xla_cpu.use_for_inference: JAX's backend has already started and read "
                      "XLA_FLAGS, so the flag would have no effect in this process; call it "
                      "before the first JAX computation", stacklevel=2)
        return False
    environ["XLA_FLAGS"] = flags
    return True


def _backend_started() -> bool:
    """Whether this process has started a JAX backend (which has read XLA_FLAGS); False when jax
    was never imported (nothing is imported here) or the check is not available."""
    import sys

    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False
