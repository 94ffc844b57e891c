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
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
import flax.linen as nn
import ml_collections
import orbax.checkpoint as ocp

from tagger_jax.errors import MODEL, ToolError
from tagger_jax.models import build_model

METADATA_FILE = "tagger.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = 1
EXPORT_SUBDIR = "best_model"  # where training exports the best model inside a workdir


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


def save_model(directory: str | os.PathLike, variables: Any, config: ml_collections.ConfigDict,
               tags: Sequence[str]) -> Path:
    """Writes variables, config and tags; replaces an existing model directory atomically enough.

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
        meta = {"format": FORMAT_VERSION, "tags": list(tags), "config": config.to_dict()}
        tmp = directory / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(directory / METADATA_FILE)
    return directory


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory, or a training workdir whose exported best model is used."""
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if (path / METADATA_FILE).is_file():
        return path
    if (path / EXPORT_SUBDIR / METADATA_FILE).is_file():
        return path / EXPORT_SUBDIR
    raise CheckpointError(f"{path}: not a tagger-jax model directory (no {METADATA_FILE}) nor a "
                          f"training workdir with an exported {EXPORT_SUBDIR}/")


def load_config(path: str | os.PathLike) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    """The resolved config and tag names stored with a model, without loading its variables."""
    directory = resolve_model_dir(path)
    try:
        meta = json.loads((directory / METADATA_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{directory / METADATA_FILE}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{directory}: checkpoint format {meta.get('format')!r} is not "
                              f"supported (expected {FORMAT_VERSION})")
    return ml_collections.ConfigDict(meta["config"]), tuple(meta["tags"])


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Loads a model directory (or a workdir's exported best model) onto the default device."""
    directory = resolve_model_dir(path)
    config, tags = load_config(directory)
    if not (directory / VARIABLES_DIR).is_dir():
        raise CheckpointError(f"{directory}: {VARIABLES_DIR}/ is missing")
    variables = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR)
    variables = jax.tree.map(jax.numpy.asarray, variables)
    model = build_model(config.model, num_tags=len(tags))
    num_tags = _num_tags(variables)
    if num_tags is not None and num_tags != len(tags):
        raise CheckpointError(f"{directory}: classifier has {num_tags} outputs but "
                              f"{METADATA_FILE} lists {len(tags)} tags")
    return LoadedModel(model, dict(variables), config, tags, directory)


def _num_tags(variables: Any) -> int | None:
    try:
        return int(np.shape(variables["params"]["classifier"]["bias"])[0])
    except (KeyError, TypeError, IndexError):
        return None
