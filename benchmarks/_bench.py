"""What the benchmark scripts share: option types that refuse bad values with argparse's one-line
usage error (not a traceback after minutes of compiling), and the machine's name for their
headers (docs/benchmarks.md gives absolute times only with the machine named)."""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

from tagger_jax.commands.arg_types import positive_int


def positive_ints(text: str) -> list[int]:
    """An argparse type: comma-separated integers >= 1 ("16,64")."""
    values = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13"; /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
