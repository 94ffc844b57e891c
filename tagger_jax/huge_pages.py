"""Transparent huge pages for XLA:CPU's buffers: a command re-executes itself once to ask glibc.

XLA:CPU allocates every execution's temporaries and outputs with `posix_memalign`; glibc serves
allocations this large (blocks of 50 MB to 1.4 GB in the main job's training) with fresh
`mmap`s and returns them with `munmap`, so the pages a step touches are faulted in again on
every step. With the kernel's transparent huge
pages in "madvise" mode (/sys/kernel/mm/transparent_hugepage/enabled), those faults are 4 KiB
each: on the project's 2-core machine the main job's training took about 70,000 page faults per
second, and a quarter of the CPU time went to the kernel. glibc's tunable `glibc.malloc.hugetlb=1`
(glibc 2.35 and later; "Memory Allocation Tunables" in the glibc manual) makes malloc advise its
mappings for transparent huge pages, so they fault in 2 MiB at a time: the main job's training
step and its training loop run 1.35 and 1.36 times as fast (benchmarks/huge_pages.py, paired;
docs/benchmarks.md). Results are bitwise the same: only where the buffers' pages come from
changes.

glibc reads its tunables once, when a process starts, so a running Python process cannot turn
this on for itself: `reexec_with_huge_pages` executes the same command line again with
`GLIBC_TUNABLES` set, before anything heavy is imported. The command-line entry points
(train.py, evaluate.py, explain.py, the `tagger-jax` console script) call it first thing. It does
nothing when `GLIBC_TUNABLES` is already set (set it to anything, e.g.
`GLIBC_TUNABLES=glibc.malloc.hugetlb=0`, to keep a command from re-executing itself), off Linux,
on another C library or a glibc older than 2.35, and when the kernel's mode is "always" (every
large mapping gets huge pages already) or "never" (none can). Library users who drive training
from their own Python process set the variable before starting it. The test suite does not
re-execute itself: its time goes to compiling, and it ran no faster with the tunable.
"""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

ENV = "GLIBC_TUNABLES"
TUNABLE = "glibc.malloc.hugetlb=1"  # madvise(MADV_HUGEPAGE) on malloc's mappings
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: Path = THP_ENABLED) -> str | None:
    """The kernel's transparent-huge-page mode, the bracketed word of `path` ("always",
    "madvise" or "never"); None where the file is missing or unreadable (not Linux, no THP)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def should_reexec(environ: Mapping[str, str], libc: tuple[str, str], mode: str | None) -> bool:
    """Whether a process with this environment, C library (`platform.libc_ver()`) and
    transparent-huge-page mode gains from re-executing itself with `TUNABLE` set: only when the
    mode is "madvise", the C library is glibc >= `MIN_GLIBC` and `ENV` is not set (the user's
    own setting is kept, and a re-executed process does not do it again)."""
    if ENV in environ or mode != "madvise":
        return False
    name, version = libc
    try:
        parsed = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return name == "glibc" and parsed >= MIN_GLIBC


def is_the_program() -> bool:
    """Whether the running entry point is this process's own command line: its arguments
    (`sys.argv[1:]`) end the interpreter's (`sys.orig_argv`), and no interactive shell (IPython,
    `python -i`) hosts it. False for a script run by `runpy` or `%run` inside another program,
    which re-executing would replace."""
    args, orig = sys.argv[1:], list(getattr(sys, "orig_argv", []))
    if len(args) >= len(orig) or orig[len(orig) - len(args):] != args:
        return False
    return not sys.flags.interactive and "IPython" not in sys.modules


def wanted() -> bool:
    """Whether this process would gain from re-executing itself: `should_reexec` for its own
    environment, C library and kernel, on Linux, with a known interpreter, as its own program."""
    return (sys.platform.startswith("linux") and bool(sys.executable) and is_the_program()
            and should_reexec(os.environ, platform.libc_ver(), thp_mode()))


def reexec_with_huge_pages() -> None:
    """Replaces this process by the same command line (`sys.orig_argv`) with `ENV` set to
    `TUNABLE` when `wanted()`; otherwise, or when the exec fails, returns (the command then runs
    without huge pages). Call it first thing in a program's entry point: whatever ran before is
    run again. Nor after a Ctrl-C that `errors.defer_interrupts` holds (the new process would
    forget it)."""
    from tagger_jax import errors

    if not wanted() or errors.interrupted_early():
        return
    env = dict(os.environ, **{ENV: TUNABLE})
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        os.execve(sys.executable, list(sys.orig_argv), env)
    except OSError:
        return
