"""Training checkpoints in a workdir: orbax managers, save, restore with fallback, best-model export.

(Model directories for inference are tagger_jax.checkpoint; this module writes one of them, the
exported best model, and otherwise handles the trainer's own CheckpointManager layout.)

A latest checkpoint WORKDIR/checkpoints/<step>/ has three items:

    state/   the TrainState pytree (orbax StandardSave, every process writes its shards)
    data/    the data iterator's state, one JSON file per process (DataIteratorHandler)
    meta/    JSON: {"step", "config", "process_count", "device_count" (since 2026-12-05),
             "schedule": PlateauState.to_json(),
             "train_data": train_data.split_identity of the train split, when known}

Orbax writes every checkpoint to a temporary directory and renames it when complete, so a crash
or SIGKILL never leaves a half-written one. A checkpoint damaged afterwards (a truncated array
file, `_METADATA`, the data-iterator JSON) is found at restore: `restore_latest` warns naming
it, moves it to WORKDIR/checkpoints.broken/ and falls back to the newest checkpoint that reads;
if none reads it raises CorruptCheckpointError, one line naming the file and the problem.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from tagger_jax import errors, sharding
from tagger_jax.train_state import TrainState

BROKEN_SUFFIX = ".broken"  # WORKDIR/checkpoints.broken/<step>-<time>/: moved-aside checkpoints
# Files of a checkpoint that are JSON (checked before a restore so that the error names them).
_JSON_NAMES = frozenset({"_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata"})


class CorruptCheckpointError(RuntimeError):
    """No checkpoint in a directory can be read; the message names the file and the problem."""


def barrier(name: str) -> None:
    """Waits for every process (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def manager(directory: Path, max_to_keep: int, item_names: tuple[str, ...]
            ) -> ocp.CheckpointManager:
    """A synchronous CheckpointManager keeping the newest `max_to_keep` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False)
    unparsed = _UnparsedMetadata()  # orbax reads every step's metadata as it opens
    logging.getLogger("absl").addFilter(unparsed)
    try:
        opened = ocp.CheckpointManager(directory, options=options, item_names=item_names)
    finally:
        logging.getLogger("absl").removeFilter(unparsed)
    # The temporary-directory cleanup runs in a thread that `close()` does not wait for: a run
    # refused at once (a resume with another process count) exited under it, and the thread
    # printed 40 lines of "cannot schedule new futures after interpreter shutdown" (a trial).
    # Wait for it here (orbax's own save waits for it the same way).
    await_cleanup = getattr(opened, "_maybe_await_cleanup_tmp_directory", None)
    if await_cleanup is not None:
        await_cleanup()
    return opened


class _UnparsedMetadata(logging.Filter):
    """Turns orbax's "Failed to json parse Metadata file: PATH, file content: ..." (an ERROR
    record that dumps the damaged file, however long; two of them came before the one-line error
    for a corrupt best/ in a new user's trial) into one `warning:` line naming the file. The
    restore of that step then names it again (`check_files`) or moves it aside."""

    PREFIX = "Failed to json parse Metadata file: "

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith(self.PREFIX):
            return True
        path = text[len(self.PREFIX):].split(", file content:", 1)[0]
        print(f"warning: {path}: not valid JSON (a damaged checkpoint)", file=sys.stderr)
        return False


def _abstract(state: TrainState) -> TrainState:
    """Shapes, dtypes and shardings of `state`: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)


class DataIteratorHandler(ocp.CheckpointHandler):
    """Saves a data iterator's `get_state()` as one JSON file per process, restores `set_state`.

    Each process reads its own share of every batch, so each keeps its own iterator position
    (`process_<i>-of-<n>.json`, as grain's own handler does). The state may be a JSON-able dict
    (grain dataset iterators) or bytes/str (grain DataLoader iterators).
    """

    def save(self, directory, args: "DataIteratorSave"):
        state = args.item.get_state()
        if isinstance(state, (bytes, bytearray)):
            payload = {"bytes": bytes(state).decode()}
        elif isinstance(state, str):
            payload = {"str": state}
        else:
            payload = {"json": state}
        (Path(directory) / _iterator_file()).write_text(json.dumps(payload, sort_keys=True))

    def restore(self, directory, args: "DataIteratorRestore"):
        path = Path(directory) / _iterator_file()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no data-iterator state for this process (was the "
                                    "checkpoint written by a different number of processes?)")
        try:
            payload = json.loads(path.read_text())
            state = (payload["bytes"].encode() if "bytes" in payload
                     else payload["str"] if "str" in payload else payload["json"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: not a data-iterator state ({e})") from None
        args.item.set_state(state)
        return args.item

    def metadata(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


def _iterator_file() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    item: Any  # an iterator with get_state()


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
    item: Any  # an iterator with set_state(), restored in place


def save_checkpoint(mngr: ocp.CheckpointManager, state: TrainState, data_iter: Any,
                    meta: dict) -> int:
    """Saves state, this process's data-iterator state and `meta` (JSON) under `state.step`."""
    step = int(sharding.to_host(state.step))
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=DataIteratorSave(data_iter),
        meta=ocp.args.JsonSave(dict(meta, step=step, process_count=jax.process_count(),
                                    device_count=jax.device_count()))),
        force=True)
    mngr.wait_until_finished()
    return step


def restore_checkpoint(mngr: ocp.CheckpointManager, step: int, target: TrainState,
                       data_iter: Any) -> tuple[TrainState, dict]:
    """The state saved at `step` (placed like `target`); restores `data_iter` in place."""
    check_files(Path(mngr.directory) / str(step))
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target)), data=DataIteratorRestore(data_iter),
        meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]


def check_files(step_dir: Path) -> None:
    """Raises ValueError naming the first JSON file of a checkpoint that does not parse.

    Orbax reports such damage without the file's name; array files are checked by the restore
    itself (tensorstore names the checkpoint directory and the array).
    """
    for path in sorted(step_dir.rglob("*")):
        is_json = (path.name in _JSON_NAMES or path.suffix == ".json"
                   or path.parent.name == "array_metadatas")
        if not (is_json and path.is_file()):
            continue
        try:
            value = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if path.parent.name == "meta" and path.name == "metadata" and isinstance(value, dict) \
                and "schedule" not in value:
            raise ValueError(f"{path}: written by an earlier tagger-jax (no host-side plateau "
                             "schedule); it cannot be resumed by this version")


def describe(error: BaseException) -> str:
    """One line for an exception from a restore: its innermost cause, without tensorstore specs."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            break
        error = inner
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


def restore_latest(mngr: ocp.CheckpointManager, target: TrainState, data_iter: Any,
                   warn: Callable[[str], None]) -> Optional[tuple[TrainState, dict]]:
    """The newest checkpoint that reads (state, meta), or None if there is none.

    Every newer checkpoint that does not read is reported through `warn` (naming it and the
    problem) and moved to `<checkpoints>.broken/`, so the resumed run can write those steps again.
    Raises CorruptCheckpointError (one line: the newest checkpoint's file and problem) if no
    checkpoint reads; nothing is moved then.
    """
    directory = Path(mngr.directory)
    steps = sorted(mngr.all_steps(), reverse=True)
    if steps:
        _check_process_count(directory / str(steps[0]))
    errors.quiet_late_callbacks()  # a failing read's others end after orbax's loop closed
    broken: list[tuple[int, str]] = []
    for step in steps:
        try:
            state, meta = restore_checkpoint(mngr, step, target, data_iter)
        except Exception as e:  # noqa: BLE001  (orbax and tensorstore raise many types)
            errors.raise_if_interrupted(e)  # Ctrl-C while reading: not a broken checkpoint
            broken.append((step, describe(e)))
            continue
        for bad_step, problem in broken:
            moved = _move_aside(directory, bad_step)
            warn(f"warning: checkpoint {directory / str(bad_step)} is unreadable ({problem}); "
                 f"moved to {moved}, resuming from step {step}")
        if broken:
            barrier("moved_broken_checkpoints")
            mngr.reload()
        return state, meta
    if broken:
        step, problem = broken[0]
        raise CorruptCheckpointError(
            f"no checkpoint in {directory} can be read; the newest, step {step}: {problem}. "
            f"Move {directory} aside to start again, or use a new --workdir")
    return None


def prune(mngr: ocp.CheckpointManager, keep: int) -> list[int]:
    """Deletes all but the newest `keep` checkpoints of `mngr` (all of them with 0); returns the
    steps deleted, oldest first. The manager prunes only when it saves, so a run resumed (or
    found complete) with a lower `train.keep_checkpoints` than it was written with would
    otherwise keep the extra steps until its next save, or forever if it saves no more. Call it
    on every process."""
    steps = sorted(mngr.all_steps())
    excess = steps[:-keep] if keep > 0 else steps
    for step in excess:
        mngr.delete(step)
    if excess:
        barrier("pruned_checkpoints")
        mngr.reload()
    return excess


def step_digest(mngr: ocp.CheckpointManager, step: Optional[int]) -> Optional[str]:
    """sha256 of the files of checkpoint `step` (relative names and contents); None without one.

    What the test results of a best model are keyed on besides its step: a run trained again
    from scratch in the same workdir (its `checkpoints/` removed) reaches the same best step
    with other weights. Contents, not times, so that a copied workdir still matches."""
    if step is None:
        return None
    root = Path(mngr.directory) / str(step)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root)}:{path.stat().st_size};".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _check_process_count(step_dir: Path) -> None:
    """Raises `errors.ConfigError` when checkpoint `step_dir` was written by a run of another
    number of processes: each process keeps its own place in the data (`DataIteratorHandler`),
    so the run must resume with as many. Without this every checkpoint failed to read, and the
    run said none could be read and to move them aside, losing the progress."""
    import re

    found = sorted(p.name for p in (step_dir / "data").glob("process_*-of-*.json"))
    counts = {int(m.group(1)) for m in (re.search(r"-of-(\d+)\.json$", n) for n in found) if m}
    if len(counts) == 1 and counts != {jax.process_count()}:
        (n,) = counts
        raise errors.ConfigError(
            f"{step_dir} was written by a run of {n} process{'es' if n > 1 else ''} "
            f"({', '.join(found)}) and this run has {jax.process_count()}: resume it with {n} "
            f"process{'es' if n > 1 else ''} (each keeps its own place in the data); the "
            "number of devices may change")


def _move_aside(directory: Path, step: int) -> Path:
    target = directory.with_name(directory.name + BROKEN_SUFFIX) / f"{step}-{int(time.time())}"
    if jax.process_index() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(directory / str(step)), str(target))
    return target


def save_best(mngr: ocp.CheckpointManager, state: TrainState) -> None:
    """Saves `state` as the best checkpoint (a resumed run may repeat an epoch end: no-op)."""
    step = int(sharding.to_host(state.step))
    if step not in mngr.all_steps():
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
        mngr.wait_until_finished()


def reload_best(mngr: ocp.CheckpointManager, state: TrainState) -> TrainState:
    """`state` with the parameters and batch statistics of the best checkpoint (if any).

    Raises CorruptCheckpointError naming the best checkpoint if it does not read.
    """
    step = mngr.latest_step()
    if step is None:
        return state
    step_dir = Path(mngr.directory) / str(step)
    errors.quiet_late_callbacks()
    try:
        check_files(step_dir)
        best = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state))))["state"]
    except Exception as e:  # noqa: BLE001
        errors.raise_if_interrupted(e)  # Ctrl-C while reading: not an unreadable checkpoint
        raise CorruptCheckpointError(
            f"the best checkpoint {step_dir} is unreadable ({describe(e)}); restore it from a "
            f"copy, or move {Path(mngr.directory).name}/ aside to go on without it (a finished "
            "run then exports and tests its last model in place of the best, replacing "
            "best_model/)") from None
    return state.replace(params=best.params, batch_stats=best.batch_stats)


def read_checkpoint(directory: str | os.PathLike, step: int | None = None) -> dict:
    """A saved train state as nested dicts of NumPy arrays (latest step by default).

    Works on any machine and device count (the arrays are not placed on devices): for tests,
    inspection and tools. `directory` is WORKDIR/checkpoints or WORKDIR/best.
    """
    unread = _UnreadItems()  # orbax logs a warning per item it is not asked for, per call
    logging.getLogger("absl").addFilter(unread)
    mngr = ocp.CheckpointManager(Path(directory).expanduser().absolute(),
                                 item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint")
        metadata = mngr.item_metadata(step)["state"]
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        return mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(restore_args=restore_args)))["state"]
    finally:
        mngr.close()
        logging.getLogger("absl").removeFilter(unread)


class _UnreadItems(logging.Filter):
    """Drops orbax's warnings that a checkpoint's "meta" and "data" items (the run's JSON and
    the data iterators' states) were found but not restored: `read_checkpoint` reads only the
    train state, on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith(('Item "meta" was found', 'Item "data" was found'))
                    and "could not be restored" in text)


def export_model(workdir: Path, state: TrainState, config: Any, tags: Sequence[str],
                 untrained_tags: Sequence[str] = ()) -> Path:
    """Writes WORKDIR/best_model/ for inference, swapped in by renames (never half-written).
    `untrained_tags`: tags the train split had no clip of (`checkpoint.save_model`)."""
    from tagger_jax.checkpoint import EXPORT_SUBDIR, save_model

    final = workdir / EXPORT_SUBDIR
    partial = workdir / (EXPORT_SUBDIR + ".partial")
    old = workdir / (EXPORT_SUBDIR + ".old")
    variables = sharding.to_host(state.variables)
    if jax.process_index() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    barrier("export_start")
    save_model(partial, variables, config, tags,  # every process takes part in orbax's save
               untrained_tags)
    barrier("export_saved")
    if jax.process_index() == 0:
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    barrier("export_done")
    return final
