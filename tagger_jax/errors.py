"""Exit statuses of `tagger-jax` and the error types that carry them (the one table of both).

Every documented failure has its own status (README "Exit statuses" lists the same table). A
command reports a known error as one `error: ...` line on stderr and returns `exit_status(e)`;
`cli.main` does the same for errors a command lets through, and turns anything unexpected into
one line plus a file holding the full traceback (`report_unexpected`).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from typing import Iterator

OK = 0
INPUTS_FAILED = 1  # some inputs failed: the others' results are written, failures listed
USAGE = 2  # bad command line, config field or value (argparse uses 2 as well)
MODEL = 3  # model directory / checkpoint missing, unreadable or inconsistent with its weights
OUTPUT = 4  # an output location cannot be written (read-only, a directory, a full disk, ...)
BUSY = 5  # another run holds a lock on the output, data directory or workdir, or reads a build
DATA = 6  # dataset not built, cannot be built, or a data file refused (e.g. an unsafe pickle)
DIVERGED = 7  # training stopped on a non-finite loss
PEER_LOST = 8  # another process of a multi-process run stopped or cannot be reached
INTERNAL = 70  # an unexpected error (a bug): one line + the traceback file (sysexits EX_SOFTWARE)
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); finished results are kept
PIPE_CLOSED = 141  # 128 + SIGPIPE: stdout's reader went away (`| head`); finished results kept
TERMINATED = 143  # 128 + SIGTERM (kill, a scheduler's stop); finished results are kept

TABLE = {
    OK: "success",
    INPUTS_FAILED: "some inputs failed (the others' results are written; failures are listed)",
    USAGE: "bad command line, config field or value",
    MODEL: "model directory missing, unreadable or inconsistent with its weights",
    OUTPUT: ("an output location cannot be written (read-only, or the disk is full; a "
             "training's workdir was deleted)"),
    BUSY: ("another run holds the lock on the output file, data directory or workdir, or "
           "reads the build to be rebuilt"),
    DATA: "dataset not built or cannot be built; a data file was refused",
    DIVERGED: "training stopped on a non-finite loss",
    PEER_LOST: ("another process of a multi-process run stopped or cannot be reached; finished "
                "work is kept (an evaluation's is not)"),
    INTERNAL: "unexpected error: one line, full traceback written to a file",
    INTERRUPTED: "interrupted (Ctrl-C); finished results are kept",
    PIPE_CLOSED: ("the output's reader closed the pipe (e.g. piped into `head`); finished "
                  "results are kept"),
    TERMINATED: "stopped by SIGTERM (e.g. `kill`); finished results are kept",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by `guarded`'s handler: it unwinds like Ctrl-C, so the
    results finished so far are written (training installs its own handler, which saves a
    checkpoint instead)."""


class ToolError(Exception):
    """A documented failure: its message is one line naming the file and the problem."""

    exit_status = INTERNAL


class ConfigError(ToolError, ValueError):
    """A config field has a value the run cannot use; the message names the field."""

    exit_status = USAGE


class DataError(ToolError):
    """A dataset cannot be opened or built as configured (not built, no such config or split);
    the message names it and the command that builds it."""

    exit_status = DATA


# Errors defined where importing them would be heavy (TFDS, train_lib), by class name.
_BY_NAME = {
    "UnpicklingError": DATA,  # the MSD unpickler's safe refusal of a pickle naming code
    "NonFiniteLossError": DIVERGED,
    "ConfigMismatchError": USAGE,
    "CorruptCheckpointError": MODEL,  # training: no checkpoint of the workdir reads
    "InputError": INPUTS_FAILED,
}


# Words of JAX's runtime errors when a collective or the coordination service loses a process
# (Gloo's all-gather "Connection closed by peer", a barrier's DEADLINE_EXCEEDED, ...).
_PEER_SIGNS = ("gloo", "closed by peer", "connection reset", "deadline_exceeded", "heartbeat",
               "coordination service", "barrier", "unavailable")
# The words that say it in any exception type: a jitted all-gather (`multihost_utils`'
# `sync_global_devices`, the end-of-run barrier) raises Gloo's failure as a plain ValueError.
_COLLECTIVE_SIGNS = ("gloo allgather failed", "gloo allreduce failed", "closed by peer")


def peer_lost(error: BaseException) -> bool:
    """Whether `error` is JAX's error for a process of this multi-process run that stopped or
    cannot be reached: not a bug of this process (status PEER_LOST). A JAX runtime error with
    any of `_PEER_SIGNS`, or a ValueError / RuntimeError with `_COLLECTIVE_SIGNS`."""
    text = str(error).lower()
    runtime = any(c.__name__ in ("JaxRuntimeError", "XlaRuntimeError")
                  for c in type(error).__mro__)
    collective = isinstance(error, (ValueError, RuntimeError)) and any(
        sign in text for sign in _COLLECTIVE_SIGNS)
    if not (runtime or collective):
        return False
    jax = sys.modules.get("jax")  # never imported here: a run without JAX has no peers
    try:
        joined = jax is not None and jax.distributed.is_initialized()
    except Exception:  # noqa: BLE001 (an odd JAX state is not a peer's failure)
        joined = False
    return joined and (collective or any(sign in text for sign in _PEER_SIGNS))


# A full disk or quota, as the OS says it (errno) and as libraries that wrap the OS error in
# their own exception say it in words (array_record's RuntimeError in a dataset build, orbax's
# RESOURCE_EXHAUSTED ValueError in a checkpoint, libsndfile's "System error." turned into words
# by `explain.auralise.write_audio`).
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_SIGNS = ("no space left on device", "disk quota exceeded")
FULL_ADVICE = "the disk is full: free space or choose another location, then run again"


def storage_full(error: BaseException) -> bool:
    """Whether `error`, or an exception it was raised from (its cause or context), is a full
    disk or quota (`FULL_ERRNOS`, or `_FULL_SIGNS` in its message): an output that cannot be
    written, status OUTPUT, not a bug and not a fault of the input being processed (a trial's
    full disk was recorded as each later input's failure, and a dataset build's as a crash)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return True
        if any(sign in str(e).lower() for sign in _FULL_SIGNS):
            return True
        e = e.__cause__ or e.__context__
    return False


def describe(error: BaseException) -> str:
    """`error` as one line for an `error: ...` report: its message, with `FULL_ADVICE` and what
    the command finished (`interrupted_note`) when the disk is full."""
    text = one_line(str(error))
    if not storage_full(error):
        return text
    if len(text) > 300:  # a library's long message (orbax's names two paths): its start, and
        text = text[:150] + " ... " + text[-145:]  # its end, where the OS's reason is
    kept = "; ".join(getattr(error, "__notes__", ()))
    return f"{text} ({FULL_ADVICE}{'; ' + kept if kept else ''})"


class _FullDiskRecords(logging.Filter):
    """Drops a library's log records of a full disk: orbax's background writer threads log a
    checkpoint's failed write with two tracebacks (about 115 lines, a trial's full workdir)
    before the main thread raises the same error, which `report` says in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and storage_full(error):
            return False
        return not any(sign in record.getMessage().lower() for sign in _FULL_SIGNS)


def quiet_full_disk_logs() -> None:
    """Installs `_FullDiskRecords` on absl's logger (orbax logs through it), once."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _FullDiskRecords) for f in logger.filters):
        logger.addFilter(_FullDiskRecords())


def exit_status(error: BaseException, default: int = INTERNAL) -> int:
    """The documented status of `error`, or `default` if it is not a documented failure."""
    if isinstance(error, Terminated):
        return TERMINATED
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    if peer_lost(error):
        return PEER_LOST
    if storage_full(error):
        return OUTPUT
    if isinstance(error, ToolError):
        return error.exit_status
    for cls in type(error).__mro__:
        if cls.__name__ in _BY_NAME:
            return _BY_NAME[cls.__name__]
    return default


def report(error: BaseException, prog: str = "tagger-jax") -> int:
    """Prints `error` as one line (traceback to a file if unexpected); returns its exit status."""
    status = exit_status(error)
    # What finished, if the command said (`interrupted_note`), else the general promise.
    kept = "; ".join(getattr(error, "__notes__", ())) or "finished results are kept"
    if status == INTERRUPTED:
        print(f"{prog}: interrupted; {kept}", file=sys.stderr)
    elif status == TERMINATED:
        print(f"{prog}: stopped by SIGTERM; {kept}", file=sys.stderr)
    elif status == PEER_LOST:
        cause = one_line(str(error))
        cause = cause if len(cause) <= 160 else cause[:157] + "..."
        print(f"error: another process of this multi-process run stopped or cannot be reached "
              f"({cause}); this process stops too. Start every process again: training "
              f"resumes from its last checkpoint, tag with --resume and embed and explain keep "
              f"what they finished; evaluate starts over", file=sys.stderr)
    elif status == INTERNAL:
        report_unexpected(error, prog)
    else:
        print(f"error: {describe(error)}", file=sys.stderr)
    return status


# Callbacks that print and drop an exception raised inside them: a signal handler's exception
# raised while one runs would be lost (JAX's garbage-collection callback runs often, e.g. while
# compiling; a new user's Ctrl-C there was printed as "Exception ignored in ..." and the training
# went on to the end).
SWALLOWING_CALLBACKS = ("_xla_gc_callback",)
REDELIVER_S = 0.05  # the signal is sent again this much later, when the callback has returned


def _importing(frame) -> bool:
    """Whether `frame` runs inside an import (a frame of importlib's bootstrap below it)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def redeliver_if_swallowed(signum: int, frame) -> bool:
    """In a signal handler about to raise: if the signal interrupted a callback that would drop
    the exception (`SWALLOWING_CALLBACKS`) or an import (an exception raised in the middle of
    JAX's import broke an extension module's initialisation: an ImportError, an abort from C++
    or a crash, found by Ctrl-C in a command's first second), sends the signal to this process
    again `REDELIVER_S` later from a timer thread and returns True (the handler then returns
    without raising); otherwise False."""
    if frame is None or (frame.f_code.co_name not in SWALLOWING_CALLBACKS
                         and not _importing(frame)):
        return False
    timer = threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
    return True


def guarded(run, *args, prog: str = "tagger-jax", owns_process: bool = False) -> int:
    """`run(*args)` as a process exit status: documented errors are one line with their status,
    anything else one line + traceback file (70), Ctrl-C 130, SIGTERM 143 (both after the block
    has unwound, writing what it finished). For every command entry point. `owns_process`: the
    caller is the process's entry point (the console script, train.py as a script), so after
    Ctrl-C or SIGTERM this ends the process itself (`exit_after_interrupt`); in-process callers
    (tests) get the status back."""
    STOPPING.clear()
    previous = _raise_on_sigterm()
    previous_int = _raise_on_sigint()
    quiet_full_disk_logs()
    try:
        if _EARLY_SIGINTS:  # Ctrl-C while the entry point started (`defer_interrupts`)
            _EARLY_SIGINTS.clear()
            raise KeyboardInterrupt
        status = int(run(*args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit as "Exception ignored ..."
        return status
    except BrokenPipeError as e:  # as a tool killed by SIGPIPE: quietly, but for what the
        _discard_stdout()  # command kept in a file (tag --output), which it says
        if getattr(e, "__notes__", None):
            print(f"{prog}: the output's reader closed the pipe; {'; '.join(e.__notes__)}",
                  file=sys.stderr)
        return PIPE_CLOSED
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the one place that reports all
        status = report(e, prog)
        # JAX's exit would wait in its shutdown barrier for the lost process (or, after Ctrl-C
        # or SIGTERM, for peers still at work that wait for this one), then abort with a page
        # of C++ logs: leave now. The block has unwound, so what finished is written; the
        # other processes see this one gone and stop with PEER_LOST.
        if status == PEER_LOST or (status in (INTERRUPTED, TERMINATED)
                                   and _in_multi_process_run()):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        if status in (INTERRUPTED, TERMINATED) and owns_process:
            exit_after_interrupt(status)
        return status
    finally:
        if previous is not _NOT_SET:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if previous_int is not _NOT_SET:
            signal.signal(signal.SIGINT, previous_int)


_NOT_SET = object()


def exit_after_interrupt(status: int) -> None:
    """Ends the process after Ctrl-C or SIGTERM once the command has unwound: the exit
    handlers run (child processes, logging, JAX's own), then `os._exit`, without the
    interpreter's teardown. Interrupted while XLA compiled, the teardown crashed in C++
    (SIGSEGV, exit status -11) after the run had written everything and said so."""
    import atexit

    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _in_multi_process_run() -> bool:
    """Whether this process has joined a `jax.distributed` run of more than one process."""
    jax = sys.modules.get("jax")  # never imported here: a run without JAX has no peers
    try:
        return jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1
    except Exception:  # noqa: BLE001 (an odd JAX state: leave as a single process would)
        return False


def _raise_on(signum: int, exception: type[BaseException]):
    """Makes `signum` raise `exception` in the main thread (sent again later where a callback
    would drop it: `redeliver_if_swallowed`); returns the handler it replaced (None: one not
    set from Python), or _NOT_SET off the main thread, where handlers cannot be set."""
    def handler(signum, frame):
        if not redeliver_if_swallowed(signum, frame):
            STOPPING.set()
            raise exception()

    try:
        return signal.signal(signum, handler)
    except ValueError:  # not the main thread
        return _NOT_SET


def _raise_on_sigterm():
    """SIGTERM raises `Terminated` (`_raise_on`)."""
    return _raise_on(signal.SIGTERM, Terminated)


def _raise_on_sigint():
    """Ctrl-C raises KeyboardInterrupt as Python's own handler does, made safe from callbacks
    that drop it (`_raise_on`); SIGINT is left alone (_NOT_SET) when it is not Python's default
    handler (or `defer_interrupts`'): ignored, as in a background job, or someone else's."""
    if signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, _remember_sigint):
        return _NOT_SET
    return _raise_on(signal.SIGINT, KeyboardInterrupt)


_EARLY_SIGINTS: list[int] = []  # Ctrl-C received while `defer_interrupts` held it
# Set by `guarded`'s Ctrl-C and SIGTERM handlers as they raise in the main thread: a worker
# thread that waits long (librosa's cache lock, `librosa_import`) gives up, so the unwinding
# main thread does not wait for it (a trial's Ctrl-C waited 35 s for another run's lock).
STOPPING = threading.Event()


def _remember_sigint(signum, frame) -> None:
    _EARLY_SIGINTS.append(signum)


def defer_interrupts() -> None:
    """From here until `guarded` starts, Ctrl-C is remembered, not raised; `guarded` then stops
    the command at once with status 130 (`interrupted_early` says whether it came). For a
    program's entry point, before it imports JAX: raised in the middle of that import, Ctrl-C
    broke an extension module's initialisation (an ImportError, or an abort from C++), or was
    dropped by a garbage-collection callback and the run went on to its end with status 0 (a
    trial's Ctrl-C in a command's first second). Left alone when SIGINT is not Python's default
    handler (ignored in a background job)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _remember_sigint)


def interrupted_early() -> bool:
    """Whether Ctrl-C came while `defer_interrupts` held it."""
    return bool(_EARLY_SIGINTS)


def _discard_stdout() -> None:
    """Points stdout at /dev/null, so that the interpreter's flush at exit does not fail again
    on the closed pipe (the recipe of Python's `signal` documentation, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (captured output): nothing to flush
        pass


@contextlib.contextmanager
def warning_lines(*categories: type[Warning]) -> Iterator[None]:
    """Inside the block, a warning of one of `categories` (the project's own, whose message is
    for the user) is printed as one `warning: MESSAGE` line on stderr, as the commands print
    theirs, instead of Python's `FILE:LINE: Category: MESSAGE`; other warnings are shown as
    before."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, categories):
                print(f"warning: {one_line(str(message))}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def raise_if_interrupted(error: BaseException) -> None:
    """Raises the interrupt (Ctrl-C's KeyboardInterrupt, SIGTERM's `Terminated` or any other
    BaseException that is not an Exception, e.g. `preemption.Preempted`) that `error` wraps, if
    its chain of causes holds one; else returns. For `except Exception` blocks around libraries
    that catch an interrupt and raise their own error from it (orbax's restore does): a Ctrl-C
    there was reported as an unreadable checkpoint, and on resume would have moved a good
    checkpoint aside as broken."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if not isinstance(error, Exception):
            raise error
        error = error.__cause__ or error.__context__


def interrupted_note(error: BaseException, verb: str, done: int, todo: int, where: str,
                     again: str | None, failed: int = 0, reused: int = 0) -> None:
    """Adds to an interrupt (Ctrl-C, SIGTERM) passing through a batch command what it finished,
    for `report`'s line: "interrupted; 12 of 40 input(s) explained in this run are in out;
    running it again explains the other 28" (`again`: None leaves that part out). Without it
    the line said only "finished results are kept" (a new user's trial: how many, and where?).
    `failed`: inputs of this run that failed and are recorded as such (a rerun does not retry
    them without --retry-failed), said and left out of "the other N". `reused`: inputs whose
    results earlier runs left there and this run kept, said too (a trial's stopped rerun named
    only the 6 it had explained, not the 9 it had reused)."""
    left = todo - done - failed
    error.add_note(f"{done} of {todo} input(s) {verb} in this run {where}"
                   + (f", besides {reused} {verb} by earlier runs (reused)" if reused else "")
                   + (f", {failed} failed (recorded; --retry-failed tries them again)"
                      if failed else "")
                   + (f"; {again} the other {left}" if again and left > 0 else ""))


def quiet_late_callbacks() -> None:
    """Drops the "RuntimeError: Event loop is closed" that reads still in flight raise when an
    orbax restore fails: tensorstore completes them after orbax has closed its event loop, and
    each callback's error went to `sys.unraisablehook` (a bare traceback, dozens to hundreds of
    them around the one-line error; found by new users' trials with a truncated checkpoint). Call
    it before such a restore; other unraisable errors still reach the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_late_callbacks", False):
        return

    def hook(info) -> None:
        if not (isinstance(info.exc_value, RuntimeError)
                and str(info.exc_value) == "Event loop is closed"):
            previous(info)

    hook._drops_late_callbacks = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def one_line(text: str) -> str:
    """`text` with line breaks shown as ' | ' so that an error is always one line."""
    return " | ".join(part for part in str(text).splitlines() if part.strip()) or "(no message)"


def report_unexpected(error: BaseException, prog: str = "tagger-jax") -> str:
    """Writes the full traceback to a file in the temp directory and prints one line naming it.

    Returns the file's path ("" if even that could not be written: then the traceback goes to
    stderr so that it is never lost).
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        fd, path = tempfile.mkstemp(prefix=f"{prog}-crash-{stamp}-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"{prog} {' '.join(sys.argv[1:])}\n\n{text}")
    except OSError:
        print(text, file=sys.stderr)
        path = ""
    where = f"full traceback in {path}" if path else "traceback above"
    print(f"error: unexpected {type(error).__name__}: {one_line(str(error))} ({where}; please "
          "report it)", file=sys.stderr)
    return path
