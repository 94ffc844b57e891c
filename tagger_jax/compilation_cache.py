"""JAX's persistent compilation cache in a per-user directory, so a second `tag`, `explain` or
`embed` of the same model loads its compiled programs instead of compiling them again.

The directory is $TAGGER_JAX_COMPILATION_CACHE if it names one, else
$XDG_CACHE_HOME/tagger-jax/jax-compilation (default ~/.cache/...). Set the variable to "0" or
"off", or pass `tagger-jax --no-compilation-cache`, to turn the cache off. Entries are keyed by
JAX on the program, the JAX/XLA version and the device, so a stale entry is never used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ENV = "TAGGER_JAX_COMPILATION_CACHE"
OFF = ("0", "off", "false", "no")
MIN_COMPILE_SECONDS = 0.2  # programs compiled faster than this are not worth a file


def cache_dir() -> Optional[Path]:
    """The cache directory the environment asks for, or None if the cache is turned off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tagger-jax" / "jax-compilation"


def enable(directory: Optional[Path] = None) -> Optional[Path]:
    """Points JAX's persistent cache at `directory` (default: `cache_dir()`); returns it, or None
    when turned off or when the directory cannot be created (then JAX simply compiles)."""
    directory = directory or cache_dir()
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory
