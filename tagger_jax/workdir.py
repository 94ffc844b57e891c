"""A training workdir: its layout, its lock, the config it belongs to, reusable test results.

A workdir holds::

    config.json           the resolved config (a different config is refused on restart)
    train.lock(.holder)   held while a training runs in it (pid, host, start time)
    checkpoints/<step>/   latest checkpoints: state, data-iterator state (one file per process),
                          meta (config, plateau schedule)
    best/<step>/          the state with the best validation ROC-AUC (reloaded at optimizer switches)
    best_model/           the best model exported for inference (`tagger-jax tag --checkpoint WORKDIR`)
    metrics.jsonl         one JSON line per logged train window / validation / test result
    tensorboard/          the same scalars as TensorBoard event files (tensorboardX, no TensorFlow)
    test/                 metrics.json/csv/png of the best model on the test split, and inputs.json:
                          what they were computed from (a rerun with the same inputs reuses them)

A stored config is compared after merging it over `config_base.base_config()`, so fields added to
the project since the workdir was written take their defaults and removed fields are ignored.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import jax

from tagger_jax import config_base, outputs

CONFIG_FILE = "config.json"
LOCK_FILE = outputs.TRAIN_LOCK_NAME
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
TENSORBOARD_DIR = "tensorboard"
TEST_DIR = "test"
TEST_INPUTS_FILE = "inputs.json"
BASELINE_FILE = "baseline.json"  # in TEST_DIR: the baseline's metrics and what they came from
# Fields that change how a run is executed or reported, never its result: they may differ when a
# workdir is resumed. Every other field must match the workdir's config.
RUNTIME_FIELDS = frozenset({
    "data.data_dir", "data.num_workers", "data.prefetch", "data.read_threads",
    "data.manual_dir", "data.build_workers",
    "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.progress_bar", "train.test_after_training", "train.distributed",
    "train.eval_batch_size", "data.extra_test_splits", "train.test_baseline",
})


class ConfigMismatchError(ValueError):
    """A workdir holds a run of a different config (or an unreadable config.json)."""


class WorkdirGoneError(outputs.OutputError):
    """The workdir was deleted or moved while a training ran in it."""


WorkdirBusyError = outputs.BusyError  # another training holds the workdir


@contextlib.contextmanager
def lock(workdir: Path) -> Iterator[None]:
    """Holds WORKDIR/train.lock for the block (process 0 only; others share its run).

    Raises WorkdirBusyError naming the holder (pid, host, start time, command) if another
    training holds it; in a multi-process run every process raises it at once
    (`outputs.exclusive_for_run`: process 0 broadcasts the outcome before any barrier).
    """
    with outputs.exclusive_for_run(workdir, "training workdir", lock_file=workdir / LOCK_FILE):
        yield


def training_note(workdir: Path) -> str | None:
    """A note for a run about to use the exported best model of `workdir` while a training
    still runs there (its lock's holder note names a live process): which run, and the step of
    the best model so far; None otherwise. From a new user's trial: `tag --workdir` during a
    training said nothing of using a model half trained."""
    holder = outputs.running_holder(workdir / LOCK_FILE)
    if holder is None:
        return None
    steps = [int(p.name) for p in (workdir / BEST_DIR).glob("*") if p.name.isdigit()]
    step = f" (the best validation so far, step {max(steps)})" if steps else ""
    return (f"note: {workdir} is still training ({holder}); its exported best model{step} is "
            "used, and may be replaced by a better one before the training ends")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_to_dict(config: Any) -> dict:
    """The config as plain JSON types (tuples become lists), for saving and comparing."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(raw))


def result_fields(config: Any) -> dict[str, Any]:
    """The flattened fields that determine a run's results (all but RUNTIME_FIELDS)."""
    return {k: v for k, v in _flatten(config_to_dict(config)).items() if k not in RUNTIME_FIELDS}


def config_differences(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """'field: saved != given' for every non-runtime field that differs.

    `saved` is merged over the base config first (see the module docstring). A stored field
    that neither `given` nor the base config has (removed from the project since) is ignored;
    a field `given` adds beyond the base config must match. Raises ConfigMismatchError if
    `saved` does not fit the base config (a field of the wrong type).
    """
    try:
        merged, _ = config_base.merge_over_base(saved)
    except config_base.StoredConfigError as e:
        raise ConfigMismatchError(f"the stored config does not fit this version: {e}") from None
    a, b = result_fields(merged), result_fields(given)
    known = set(b) | set(result_fields(config_base.base_config()))
    return [f"{key}: {a.get(key, '<absent>')!r} in the workdir, {b.get(key, '<absent>')!r} now"
            for key in sorted(set(a) | set(b))
            if key in known and a.get(key, "<absent>") != b.get(key, "<absent>")]


def read_config(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """A stored config (a workdir's config.json, or the workdir itself) merged over the base config.

    Returns (ConfigDict, names of stored fields config_base.py does not define). Raises
    ConfigMismatchError naming the file if it is missing, not JSON or does not fit.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        stored = json.loads(path.read_text())
        return config_base.merge_over_base(stored)
    except FileNotFoundError:
        raise ConfigMismatchError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ConfigMismatchError(f"{path}: not valid JSON ({e})") from None
    except config_base.StoredConfigError as e:
        raise ConfigMismatchError(f"{path}: {e}") from None


def trained(workdir: Path) -> bool:
    """Whether a training in `workdir` saved anything a resume would use (a checkpoint, a best
    checkpoint, or checkpoints moved aside as unreadable)."""
    folders = (CHECKPOINT_DIR, BEST_DIR, CHECKPOINT_DIR + ".broken")  # checkpointing's names
    return any(any((workdir / d).glob("*")) for d in folders if (workdir / d).is_dir())


# Config fields holding a path: stored absolute in the workdir's config.json and the exported
# model's tagger.json (`with_absolute_paths`), so they name the same place from any directory.
PATH_FIELDS = (("data", "data_dir"), ("data", "manual_dir"), ("train", "init_from"))


def with_absolute_paths(config: Any) -> Any:
    """`config` with the paths of `PATH_FIELDS` absolute (`~` expanded, `..` resolved as
    `os.path.abspath` does), a copy when any changes; empty values (TFDS's default directory,
    no manual directory, no `init_from`) stay empty.

    The workdir's config.json and the exported model's tagger.json hold them so: `evaluate`,
    `explain --dataset` and `--config WORKDIR` find the data from any working directory (a
    relative `data` found nothing, or another directory, when run from elsewhere), and a resume
    from elsewhere compares the same `train.init_from` (a verifying user's `../model` was
    refused when given again as an absolute path)."""
    resolved = {(section, key): os.path.abspath(os.path.expanduser(str(config[section][key])))
                for section, key in PATH_FIELDS if config[section].get(key)}
    if all(config[section][key] == value for (section, key), value in resolved.items()):
        return config
    config = config.copy_and_resolve_references()
    for (section, key), value in resolved.items():
        config[section][key] = value
    return config


def check_or_write_config(config: Any, workdir: Path) -> None:
    """Refuses a workdir whose checkpoints belong to a different config; otherwise (re)writes
    config.json (replacing, with a note, the config of a start that saved no checkpoint: one
    that failed on a bad value or a missing dataset)."""
    given = config_to_dict(config)
    path = workdir / CONFIG_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigMismatchError(f"{path}: not valid JSON ({e}); use a new --workdir") from None
        diffs = config_differences(saved, given)
        if diffs and not trained(workdir):  # a start that failed before saving anything
            if jax.process_index() == 0:
                print(f"note: {path} came from a start that saved no checkpoint; replaced by "
                      f"this run's config ({len(diffs)} field(s) differed)", file=sys.stderr)
        elif diffs:
            longer = ("\ntrain.num_epochs sets where the learning rate's cosine decays to 0 "
                      "(optimizers.adamw_schedule), so more epochs make another run, not a "
                      "continuation of this one." if config.train.optimizer == "adamw" and any(
                          d.startswith("train.num_epochs:") for d in diffs) else "")
            raise ConfigMismatchError(
                f"{workdir} holds a run with a different config, so it cannot be resumed:\n  "
                + "\n  ".join(diffs) + longer
                + f"\nUse a new --workdir, or resume with the workdir's own config: "
                  f"--config {path}")
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(given, indent=2, sort_keys=True))
        tmp.replace(path)


def check_still_there(workdir: Path, step: int) -> None:
    """Raises `WorkdirGoneError` (exit status 4) when WORKDIR/config.json, which
    `check_or_write_config` wrote before the training started, is gone: the workdir was deleted
    or moved away while the training ran. From a new user's trial: a training whose workdir was
    deleted went on, and either stopped at its next metrics line with an unexpected error or,
    where the next checkpoint had made the folder again, ended with status 0 and no word of the
    config, metrics and checkpoints it had lost. Checked by every process at each logged step
    (a stat; the file itself, not the folder's inode, which network file systems may renew) and
    when a metrics write fails (the folder may go between the two)."""
    if (workdir / CONFIG_FILE).is_file():
        return
    raise WorkdirGoneError(
        f"{workdir}: the workdir was deleted or moved while this training ran (its "
        f"{CONFIG_FILE} is gone; noticed at step {step}), and its checkpoints and metrics with "
        "it: training stops rather than go on without them. Run the same command to start "
        "again there, or resume a moved workdir from its new place (--workdir)")


def test_inputs(config: Any, best_step: Optional[int], data_fingerprint: Optional[str],
                best_digest: Optional[str] = None) -> dict:
    """What the final test results depend on: the best checkpoint (its step and the digest of
    its files, `checkpointing.step_digest`), the test data and the result config."""
    return {"best_step": best_step, "best_digest": best_digest, "data": data_fingerprint,
            "config": result_fields(config)}


def test_dir(workdir: Path, split: Optional[str] = None) -> Path:
    """Where the test results of `split` go: WORKDIR/test/ for data.test_split (split None),
    WORKDIR/test/<split>/ for each of data.extra_test_splits."""
    return workdir / TEST_DIR if split is None else workdir / TEST_DIR / split


def reusable_test_results(directory: Path, inputs: Mapping[str, Any]) -> Optional[dict]:
    """The metrics stored in `directory` (a `test_dir`) if they were computed from exactly
    `inputs`, else None.

    Never reuses when the data has no fingerprint (in-memory data) or the files are unreadable.
    """
    if inputs.get("data") is None:
        return None
    try:
        stored = json.loads((directory / TEST_INPUTS_FILE).read_text())
        metrics = json.loads((directory / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    now = json.loads(json.dumps(inputs))
    return metrics if _with_later_fields(stored, now) == now else None


def _with_later_fields(stored: dict, now: Mapping[str, Any]) -> dict:
    """`stored` test inputs as this version would have written them: config fields the project
    added since (absent there, at their base default now) take that default, and fields it
    removed since (in neither `now` nor the base config) are dropped, as `config_differences`
    reads a stored config."""
    if not isinstance(stored.get("config"), dict) or not isinstance(now.get("config"), dict):
        return stored
    base = json.loads(json.dumps(result_fields(config_base.base_config())))
    config = {k: v for k, v in stored["config"].items() if k in now["config"] or k in base}
    for key, value in now["config"].items():
        if key not in config and key in base and base[key] == value:
            config[key] = value
    return {**stored, "config": config}


def stale_test_inputs(directory: Path, inputs: Mapping[str, Any]) -> list[str]:
    """What changed since the results in `directory` were computed, in words ("the best model",
    "the data", "the config"); [] when nothing was recorded there or nothing changed."""
    try:
        stored = json.loads((directory / TEST_INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return []
    now = json.loads(json.dumps(inputs))
    stored = _with_later_fields(stored, now)
    words = {"best_step": "the best model", "best_digest": "the best model's weights",
             "config": "the config",
             "data": "the data (its directory, or its files' names, sizes or times)"}
    return [words.get(k, k) + ("" if k in stored else " (not recorded then)")
            for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]


def write_test_inputs(directory: Path, inputs: Mapping[str, Any]) -> None:
    """Records what the results in `directory` (a `test_dir`) were computed from (after its
    metrics are written)."""
    path = directory / TEST_INPUTS_FILE
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(inputs, indent=2, sort_keys=True))
    tmp.replace(path)
