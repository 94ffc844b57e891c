"""Self-describing model checkpoints: variables (orbax) + config + tag names in one directory.

Layout of a model directory::

    DIR/tagger.json     {"format": 1, "tags": [...], "config": {...resolved config...}}
    DIR/variables/      orbax checkpoint of {"params": ..., "batch_stats": ...}

Every checkpoint the project writes (imported, or exported by training) carries its tag names, so
tagging and explanation never guess them. Training workdirs hold their own CheckpointManager
layout; `resolve_model_dir` maps a workdir to the model directory training exported there.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
import flax.linen as nn
import ml_collections
import orbax.checkpoint as ocp

from tagger_jax.errors import MODEL, ToolError
from tagger_jax.models import CLASSIFIER, build_model, input_shape

METADATA_FILE = "tagger.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = 1
# tagger.json's record of the size in bytes of every file under variables/ (models saved since
# 2026-12-04): a model cut short by an interrupted copy or download is named as such before orbax
# reads it (it failed with "OUT_OF_RANGE: Error reading ..." and exit 2, found by a new user's
# trial, followed by a flood of asyncio tracebacks from the reads still in flight).
VARIABLE_FILES_KEY = "variable_files"
EXPORT_SUBDIR = "best_model"  # where training exports the best model inside a workdir
# tagger.json's list of the model's tags that its train split had no clip of (an audio_folder
# CSV's tags used only by held-out rows; models trained since 2026-12-05): the model never learnt
# them, and `tag` and `explain` say so (a new user's trial got their scores without a word).
UNTRAINED_TAGS_KEY = "tags_without_train_clips"


class CheckpointError(ToolError, ValueError):
    """A model directory is missing, incomplete or inconsistent (exit status `errors.MODEL`)."""

    exit_status = MODEL


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference: module, variables, resolved config and tag names."""

    model: nn.Module
    variables: dict
    config: ml_collections.ConfigDict
    tags: tuple[str, ...]
    directory: Path
    untrained_tags: tuple[str, ...] = ()  # tags its train split had no clip of (UNTRAINED_TAGS_KEY)

    def untrained_note(self) -> str | None:
        """A `note:` line naming the tags the model never learnt (None: none recorded)."""
        if not self.untrained_tags:
            return None
        from tagger_jax.tags import listed

        return (f"note: {self.directory}: {len(self.untrained_tags)} tag(s) had no clip in the "
                f"model's train split ({listed(self.untrained_tags)}): it never learnt them, so "
                "their scores mean nothing")

    def data_dir(self) -> tuple[str, str | None]:
        """(the data directory of the model's datasets, a `note:` line or None).

        The config's `data.data_dir`, which training stores absolute (so any working directory
        finds the data). Where that local directory does not exist (a URL such as gs://... is
        kept as it is), as for a model copied from another machine or user, the configs'
        default (`config_base`, `~/tensorflow_datasets`) with a note saying so: a trial's copied
        model built a dataset under the other user's home."""
        from tagger_jax.config_base import base_config

        stored = str(self.config.data.get("data_dir") or "")
        default = str(base_config().data.data_dir)
        if (not stored or stored == default or "://" in stored  # gs://...: not a local path
                or Path(stored).expanduser().exists()):
            return stored or default, None
        return default, (f"note: {self.directory}: its data directory {stored} does not exist "
                         f"here (a model from another machine or user?); using {default} "
                         "(give --data-dir, or data_dir= in Python, for another)")


def save_model(directory: str | os.PathLike, variables: Any, config: ml_collections.ConfigDict,
               tags: Sequence[str], untrained_tags: Sequence[str] = ()) -> Path:
    """Writes variables, config and tags; replaces an existing model directory atomically enough.
    `untrained_tags`: tags of `tags` its train split had no clip of (recorded when not empty).

    The variables go through orbax, which writes to a temporary name and renames on success, so a
    crash never leaves a half-written `variables/`; the JSON is written after it, also by rename.
    """
    directory = Path(directory).expanduser().absolute()
    tags = tuple(str(t) for t in tags)
    num_tags = _num_tags(variables)
    if num_tags is not None and num_tags != len(tags):
        raise CheckpointError(f"{directory}: classifier has {num_tags} outputs but {len(tags)} "
                              "tag names were given")
    directory.mkdir(parents=True, exist_ok=True)
    variables = jax.tree.map(np.asarray, jax.device_get(dict(variables)))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / VARIABLES_DIR, variables, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:  # with several processes, all save the variables, one the JSON
        meta = {"format": FORMAT_VERSION, "tags": list(tags), "config": config.to_dict(),
                VARIABLE_FILES_KEY: file_sizes(directory / VARIABLES_DIR)}
        untrained = [t for t in tags if t in set(map(str, untrained_tags))]
        if untrained:
            meta[UNTRAINED_TAGS_KEY] = untrained
        tmp = directory / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(directory / METADATA_FILE)
    return directory


def file_sizes(directory: Path) -> dict[str, int]:
    """{path relative to `directory`: size in bytes} of every file under it."""
    return {p.relative_to(directory).as_posix(): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _check_file_sizes(directory: Path) -> None:
    """Raises CheckpointError naming the first file under variables/ that is missing or of
    another size than `tagger.json` recorded when the model was saved (no record: nothing to
    check)."""
    try:
        recorded = json.loads((directory / METADATA_FILE).read_text()).get(VARIABLE_FILES_KEY)
    except (OSError, ValueError, AttributeError):
        return  # load_config has said what is wrong with tagger.json
    if not isinstance(recorded, dict):
        return
    variables = directory / VARIABLES_DIR
    for name, size in recorded.items():
        path = variables / name
        found = path.stat().st_size if path.is_file() else None
        if found != size:
            state = "is missing" if found is None else f"is {found} bytes, saved as {size}"
            raise CheckpointError(f"{directory}: {VARIABLES_DIR}/{name} {state}: the model's "
                                  "files are damaged or cut short (an interrupted copy or "
                                  "download?); copy or export the model again")


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory, or a training workdir whose exported best model is used."""
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if (path / METADATA_FILE).is_file():
        return path
    if (path / EXPORT_SUBDIR / METADATA_FILE).is_file():
        return path / EXPORT_SUBDIR
    hint = ""
    if path.is_dir() and (path / "config.json").is_file() and (path / "checkpoints").is_dir():
        # From a new user's trial: a training still running (or killed before its first
        # validation) was called "not a training workdir".
        raise CheckpointError(f"{path}: a training workdir without an exported "
                              f"{EXPORT_SUBDIR}/ yet (training exports it after its first "
                              "validation); wait for it, or resume the training")
    if path.is_file() and path.suffix.lower() in (".pth", ".pt", ".npz", ".tar"):
        hint = ("; a PyTorch state dict of the authors' code becomes one with `tagger-jax "
                f"import-authors {path.name} --variant released|training --out DIR`")
    raise CheckpointError(f"{path}: not a tagger-jax model directory (no {METADATA_FILE}) nor a "
                          f"training workdir with an exported {EXPORT_SUBDIR}/{hint}")


def load_config(path: str | os.PathLike) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    """The resolved config and tag names stored with a model, without loading its variables.

    Raises `CheckpointError` naming the directory when `tagger.json` is not valid JSON, has
    another format, lacks `tags` or `config`, or has them of the wrong type (`tags` must be a
    list of distinct non-empty strings, `config` an object with a `model` object).
    """
    directory = resolve_model_dir(path)
    try:
        meta = json.loads((directory / METADATA_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{directory / METADATA_FILE}: not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{directory / METADATA_FILE}: cannot read it ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{directory / METADATA_FILE}: expected a JSON object, found "
                              f"{_json_kind(meta)}")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{directory}: checkpoint format {meta.get('format')!r} is not "
                              f"supported (expected {FORMAT_VERSION})")
    return _check_config(directory, meta), _check_tags(directory, meta)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    return {dict: "an object", list: "a list", bool: "a boolean"}.get(type(value), "a number")


def _check_tags(directory: Path, meta: dict) -> tuple[str, ...]:
    where = f"{directory}: {METADATA_FILE}"
    if "tags" not in meta:
        raise CheckpointError(f"{where} has no 'tags' (the tag names in model output order)")
    tags = meta["tags"]
    if not isinstance(tags, list) or not tags:
        found = "an empty list" if tags == [] else _json_kind(tags)
        raise CheckpointError(f"{where}: 'tags' must be a list of tag names, found {found}")
    seen: set[str] = set()
    for k, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag:
            raise CheckpointError(f"{where}: tag {k} is {json.dumps(tag)}, not a tag name")
        if tag in seen:
            raise CheckpointError(f"{where}: duplicate tag {tag!r}")
        seen.add(tag)
    return tuple(tags)


def _check_config(directory: Path, meta: dict) -> ml_collections.ConfigDict:
    where = f"{directory}: {METADATA_FILE}"
    if "config" not in meta:
        raise CheckpointError(f"{where} has no 'config' (the resolved training config)")
    config = meta["config"]
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: 'config' must be an object, found {_json_kind(config)}")
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{where}: config has no 'model' object")
    from tagger_jax.config_base import StoredConfigError, merge_over_base

    try:  # defaults live once, in config_base: fields added since the model was saved get them
        merged, _ = merge_over_base(config)
    except StoredConfigError as e:
        raise CheckpointError(f"{directory / METADATA_FILE}: {e}") from None
    return merged


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Loads a model directory (or a workdir's exported best model) onto the default device.

    The stored arrays are checked against the model that `tagger.json`'s config builds (every
    parameter path and shape, from `jax.eval_shape` of its init): a disagreement is one
    `CheckpointError` naming the directory and the first mismatching arrays. A workdir's model
    while its training still runs is used with a note on stderr (`workdir.training_note`).
    """
    directory = resolve_model_dir(path)
    config, tags = load_config(directory)
    if directory.name == EXPORT_SUBDIR and jax.process_index() == 0:
        from tagger_jax.workdir import training_note

        note = training_note(directory.parent)
        if note:
            print(note, file=sys.stderr, flush=True)
    if not (directory / VARIABLES_DIR).is_dir():
        raise CheckpointError(f"{directory}: {VARIABLES_DIR}/ is missing")
    try:
        model = build_model(config.model, num_tags=len(tags))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{directory}: {METADATA_FILE} config cannot build a model "
                              f"({e})") from None
    _check_file_sizes(directory)
    from tagger_jax import checkpointing, errors

    errors.quiet_late_callbacks()  # a failing read's others end after orbax's loop closed
    try:
        variables = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR)
    except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many kinds; one line here
        errors.raise_if_interrupted(e)
        raise CheckpointError(f"{directory}: {VARIABLES_DIR}/ does not read "
                              f"({checkpointing.describe(e)}); the model's files are damaged: "
                              "copy or export the model again") from None
    num_tags = _num_tags(variables)
    if num_tags is not None and num_tags != len(tags):
        raise CheckpointError(f"{directory}: classifier has {num_tags} outputs but "
                              f"{METADATA_FILE} lists {len(tags)} tags")
    _check_shapes(directory, model, config, variables)
    _check_finite(directory, variables)
    variables = jax.tree.map(jax.numpy.asarray, variables)
    return LoadedModel(model, dict(variables), config, tags, directory,
                       _untrained_tags(directory, tags))


def _untrained_tags(directory: Path, tags: Sequence[str]) -> tuple[str, ...]:
    """The model's tags that tagger.json records under UNTRAINED_TAGS_KEY (unknown names and a
    malformed entry are ignored: it is a note, not the model)."""
    try:
        recorded = json.loads((directory / METADATA_FILE).read_text()).get(UNTRAINED_TAGS_KEY)
    except (OSError, ValueError, AttributeError):
        return ()
    names = set(map(str, recorded)) if isinstance(recorded, list) else set()
    return tuple(t for t in tags if t in names)


def _shape_tree(tree: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(np.shape(leaf)) for k, leaf in _leaves(tree).items()}


def _check_shapes(directory: Path, model: nn.Module, config: ml_collections.ConfigDict,
                  variables: Any) -> None:
    """Raises CheckpointError if `variables` are not what `model.init` makes (paths and shapes)."""
    features = config.get("features") or {}
    shape = input_shape(config.model, int(features.get("chunk_frames", 256)))
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                 jax.numpy.zeros((1,) + shape)))
    want, have = _shape_tree(expected), _shape_tree(variables)
    params_first = lambda k: (not k.startswith("params/"), k)  # noqa: E731
    want = {k: want[k] for k in sorted(want, key=params_first)}
    have = {k: have[k] for k in sorted(have, key=params_first)}
    problems = [f"{k} missing from the stored weights (config makes {want[k]})"
                for k in want if k not in have]
    problems += [f"{k} stored {have[k]} but the config makes {want[k]}"
                 for k in want if k in have and have[k] != want[k]]
    problems += [f"{k} stored {have[k]} is not part of the model the config builds"
                 for k in have if k not in want]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"{directory}: {METADATA_FILE} config does not match the stored "
                              f"weights: {'; '.join(problems[:3])}{more}")


def _check_finite(directory: Path, variables: Any) -> None:
    """Raises CheckpointError if a stored float is NaN or infinite: bytes damaged on disk still
    restore (the array files carry no checksum the reader checks), and the model then tags every
    input NaN with exit status 0. A trained model never holds one (training stops on a
    non-finite loss)."""
    bad = {k: int(np.size(v) - np.count_nonzero(np.isfinite(v)))
           for k, v in _leaves(variables).items()
           if np.issubdtype(np.asarray(v).dtype, np.floating)}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        names = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:3])
        more = f" and {len(bad) - 3} more arrays" if len(bad) > 3 else ""
        raise CheckpointError(f"{directory}: {sum(bad.values())} stored weights are NaN or "
                              f"infinite, in {names}{more}: the files under {VARIABLES_DIR}/ are "
                              "damaged; export or copy the model again")


def _leaves(tree: Any) -> dict[str, Any]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in flat}


def _num_tags(variables: Any) -> int | None:
    try:
        return int(np.shape(variables["params"][CLASSIFIER]["bias"])[0])
    except (KeyError, TypeError, IndexError):
        return None
