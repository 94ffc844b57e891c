"""Refusing to start worker processes that would run the caller's script again.

The dataset build's worker pool and grain's input workers are *spawned* processes (forking a
process that holds JAX's threads copies them broken). A spawned process imports the parent's
main module again (as `__mp_main__`) before it runs anything, so a script that calls
`train_lib.train_and_evaluate` or `datasets.build` at its top level, not under
`if __name__ == "__main__":`, makes every worker start that call over: a new user's trial saw the
workers die on the workdir's lock and `multiprocessing.Pool` start new ones without end, the
parent waiting forever (Python's multiprocessing docs, "Safe importing of main module").

`check` finds the line of the main module that the current call comes from and refuses, before
any process starts, when that line is not inside an `if __name__ == "__main__":` block. Nothing is
checked where the workers do not import a main file: an interactive session or notebook, `python
-c`, or a main module whose source cannot be read.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import FrameType

from tagger_jax import errors


class UnguardedMainError(errors.ToolError, RuntimeError):
    """Worker processes would import a script that runs the current call at its top level."""

    exit_status = errors.USAGE


def _is_main_test(test: ast.expr) -> bool:
    """Whether `test` is `__name__ == "__main__"` (either way round), alone or as one of the
    terms of an `and` (false in a worker whatever the others are)."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_is_main_test(v) for v in test.values)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = (test.left, test.comparators[0])
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


def guarded_lines(source: str) -> list[tuple[int, int]]:
    """(first, last) line numbers (1-based, inclusive) of the bodies of every
    `if __name__ == "__main__":` block in `source`. SyntaxError if `source` does not parse."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.body:
            spans.append((node.body[0].lineno, node.body[-1].end_lineno or node.lineno))
    return spans


def _main_frame(main_globals: dict) -> FrameType | None:
    """The innermost frame of the main module's top-level code on the current stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main_globals and frame.f_code.co_name == "<module>":
            return frame
        frame = frame.f_back
    return None


def check(what: str, without: str) -> None:
    """Raises UnguardedMainError when processes spawned now would re-run the caller's script.

    `what`: the processes, for the message (e.g. "the dataset build's worker processes");
    `without`: how to run without them (e.g. "build with num_workers=1"). The message names the
    script and the line, and the two ways out: the `__main__` guard, or `without`."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or main.__dict__.get("__name__") != "__main__":
        return  # interactive, `python -c`, or already inside a worker's import
    frame = _main_frame(main.__dict__)
    if frame is None:
        return  # called from another thread, or from code the main module does not run
    try:
        spans = guarded_lines(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    if any(first <= line <= last for first, last in spans):
        return
    raise UnguardedMainError(
        f"{path}:{line}: {what} start by importing this script again, and this line is not "
        "under `if __name__ == \"__main__\":`, so each would run it again (and wait on this "
        f"run): put the script's work under that guard, or {without}")
