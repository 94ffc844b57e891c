"""Import state dicts saved by the authors' PyTorch code into this package's Flax variables.

Two variants of their `pons_won` model exist (see `shared/reference/original-implementation.md`):
"training" (their training code: c = 16, fixed sinusoidal positions; `configs/paper_mtat.py`) and
"released" (their released checkpoint and visualisation code: c = 8, a learned 271-row position
table + LayerNorm; `configs/authors_released.py`).

The mapping is a table built from the model config: each Flax array is made from one PyTorch
tensor (transposed to Flax layouts) or, for the front-end's grouped BatchNorms, from several
tensors concatenated in branch order. The importer is strict: unknown, missing or mis-shaped keys
are all reported in one error, and the result must have exactly the tree of `model.init`, so a
checkpoint either loads completely or not at all.
"""
from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import ml_collections

from tagger_jax.config_base import authors_released_config, paper_mtat_config
from tagger_jax.models import CLASSIFIER, EMBEDDING, FRONTEND, POOLER
from tagger_jax.models.frontends import HORIZONTAL_BRANCHES, VERTICAL_BRANCHES

VARIANTS = ("training", "released")
PREFIX = "module."  # added by torch.nn.DataParallel
IGNORED_SUFFIX = "num_batches_tracked"  # BatchNorm step counters; irrelevant for inference
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class AuthorsImportError(ValueError):
    """A state dict cannot be read, or does not match the authors' model of the chosen variant."""


def authors_config(variant: str) -> ml_collections.ConfigDict:
    """The full config of a variant (what configs/paper_mtat.py / authors_released.py return)."""
    if variant not in VARIANTS:
        raise AuthorsImportError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return paper_mtat_config() if variant == "training" else authors_released_config()


# --------------------------------------------------------------------------------------------
# The mapping table.

Convert = Callable[[np.ndarray], np.ndarray]


def _linear(w: np.ndarray) -> np.ndarray:  # torch Linear (out, in) -> Flax Dense (in, out)
    return w.T


def _conv2d(w: np.ndarray) -> np.ndarray:  # torch Conv2d (out, 1, h, w) -> HWIO (h, w, 1, out)
    return w.transpose(2, 3, 1, 0)


def _conv1d_as_2d(w: np.ndarray) -> np.ndarray:  # torch Conv1d (out, 1, w) -> HWIO (1, w, 1, out)
    return w.transpose(2, 1, 0)[None]


def _pointwise(w: np.ndarray) -> np.ndarray:  # torch Conv1d (out, in, 1) -> Flax Dense (in, out)
    return w[:, :, 0].T


def _same(w: np.ndarray) -> np.ndarray:
    return w


@dataclasses.dataclass(frozen=True)
class Source:
    """One PyTorch tensor: its key, its shape in their code, and how to bring it to Flax layout."""

    key: str
    shape: tuple[int, ...]
    convert: Convert = _same


# Flax path (collection, module..., name) -> the sources concatenated (axis 0) to build it.
Plan = dict[tuple[str, ...], list[Source]]


def mapping_plan(model_config: Mapping[str, Any], num_tags: int = 50) -> Plan:
    """The full key mapping for a pons_won config (conv_channels, positions, widths)."""
    from tagger_jax.models import model_fields

    cfg = model_fields(model_config)
    if cfg["architecture"] != "pons_won":
        raise AuthorsImportError("only the authors' pons_won model can be imported, config has "
                                 f"architecture {cfg['architecture']!r}")
    c = int(cfg["conv_channels"])
    d = int(cfg["attention_channels"])
    ffn = int(cfg["intermediate"])
    plan: Plan = {}

    def dense(path: tuple[str, ...], key: str, n_in: int, n_out: int) -> None:
        plan[("params", *path, "kernel")] = [Source(f"{key}.weight", (n_out, n_in), _linear)]
        plan[("params", *path, "bias")] = [Source(f"{key}.bias", (n_out,))]

    def layer_norm(path: tuple[str, ...], key: str) -> None:
        plan[("params", *path, "scale")] = [Source(f"{key}.weight", (d,))]
        plan[("params", *path, "bias")] = [Source(f"{key}.bias", (d,))]

    def batch_norm(path: tuple[str, ...], keys: list[str], sizes: list[int]) -> None:
        for collection, flax_name, torch_name in (
                ("params", "scale", "weight"), ("params", "bias", "bias"),
                ("batch_stats", "mean", "running_mean"), ("batch_stats", "var", "running_var")):
            plan[(collection, *path, flax_name)] = [
                Source(f"{k}.{torch_name}", (n,)) for k, n in zip(keys, sizes)]

    batch_norm((FRONTEND, "input_bn"), ["front_end.input_bn"], [1])
    # front_end.layers.0..9 in order: vertical (86 rows) 0-2, vertical (38 rows) 3-5, horizontal 6-9.
    groups: dict[str, list[tuple[int, tuple[int, ...], Convert]]] = {}
    for index, (h, w, m) in enumerate(VERTICAL_BRANCHES):
        groups.setdefault(f"vertical_{h}", []).append((index, (m * c, 1, h, w), _conv2d))
    for index, (w, m) in enumerate(HORIZONTAL_BRANCHES, start=len(VERTICAL_BRANCHES)):
        groups.setdefault("horizontal", []).append((index, (m * c, 1, w), _conv1d_as_2d))
    total = 0
    for group, branches in groups.items():
        for i, (index, shape, convert) in enumerate(branches):
            key = f"front_end.layers.{index}"
            plan[("params", FRONTEND, group, f"kernel_{i}")] = [
                Source(f"{key}.conv.weight", shape, convert)]
            plan[("params", FRONTEND, group, f"bias_{i}")] = [
                Source(f"{key}.conv.bias", shape[:1])]
        batch_norm((FRONTEND, f"{group}_bn"), [f"front_end.layers.{i}.bn" for i, *_ in branches],
                   [shape[0] for _, shape, _ in branches])
        total += sum(shape[0] for _, shape, _ in branches)
    plan[("params", "conv1x1", "kernel")] = [
        Source("front_end.conv1x1.weight", (d, total, 1), _pointwise)]
    plan[("params", "conv1x1", "bias")] = [Source("front_end.conv1x1.bias", (d,))]
    batch_norm(("conv1x1_bn",), ["front_end.bn"], [d])

    if cfg["positions"] == "learned":
        rows = int(cfg["max_positions"])
        plan[("params", EMBEDDING, "position_embeddings")] = [
            Source("back_end.embedding.position_embeddings.weight", (rows, d))]
        layer_norm((EMBEDDING, "layer_norm"), "back_end.embedding.LayerNorm")
    if cfg["cls_token"] != "fixed":
        raise AuthorsImportError("the authors' models use the fixed [CLS] vector (cls_token "
                                 f"'fixed'), config has {cfg['cls_token']!r}")
    for layer in range(int(cfg["attention_layers"])):
        key, path = f"back_end.encoder.layer.{layer}", ("encoder", f"layer_{layer}")
        for name in ("query", "key", "value"):
            dense((*path, "attention", name), f"{key}.attention.self.{name}", d, d)
        dense((*path, "attention", "output"), f"{key}.attention.output.dense", d, d)
        layer_norm((*path, "attention_norm"), f"{key}.attention.output.LayerNorm")
        dense((*path, "intermediate"), f"{key}.intermediate.dense", d, ffn)
        dense((*path, "output"), f"{key}.output.dense", ffn, d)
        layer_norm((*path, "output_norm"), f"{key}.output.LayerNorm")
    dense((POOLER,), "back_end.pooler.dense", d, d)
    dense((CLASSIFIER,), "classifier", d, num_tags)  # ours, then their key
    return plan


def authors_shapes(variant: str, num_tags: int = 50,
                   conv_channels: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every key a state dict of `variant` must have (without num_batches_tracked), with shapes;
    `conv_channels`: the front-end's c when not the variant's (their `--conv_channels`)."""
    config = authors_config(variant)
    if conv_channels is not None:
        config.model.conv_channels = int(conv_channels)
    plan = mapping_plan(config.model, num_tags)
    return {s.key: s.shape for sources in plan.values() for s in sources}


# --------------------------------------------------------------------------------------------
# Import.

def strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drops DataParallel's `module.` prefix and the BatchNorm step counters."""
    out: dict[str, Any] = {}
    clashes = []
    for key, value in state.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if name.endswith(IGNORED_SUFFIX):
            continue
        if name in out:
            clashes.append(key)
        out[name] = value
    if clashes:
        raise AuthorsImportError("keys present both with and without the 'module.' prefix: "
                                 + ", ".join(sorted(clashes)))
    return out


def state_conv_channels(state: Mapping[str, np.ndarray]) -> int | None:
    """The front-end width c a state dict was trained with, read from its first vertical branch
    (`front_end.layers.0.conv.weight`, (m * c, 1, h, w) with m = VERTICAL_BRANCHES[0][2]); None
    when that tensor is absent or not of that form. Their training code takes c as
    `--conv_channels`, so a model of theirs may have another c than either variant."""
    w = state.get("front_end.layers.0.conv.weight")
    m = VERTICAL_BRANCHES[0][2]
    if w is None or np.ndim(w) != 4 or np.shape(w)[0] % m or np.shape(w)[0] < m:
        return None
    return int(np.shape(w)[0] // m)


def _problems(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    unknown = sorted(set(state) - set(expected))
    missing = [k for k in expected if k not in state]
    wrong = [f"{k} {tuple(np.shape(state[k]))} (expected {expected[k]})"
             for k in expected if k in state and tuple(np.shape(state[k])) != expected[k]]
    problems = []
    for title, items in (("unknown keys", unknown), ("missing keys", missing),
                         ("wrong shapes", wrong)):
        if items:
            problems.append(f"  {title} ({len(items)}): " + ", ".join(items))
    return problems


def import_state_dict(state: Mapping[str, Any], variant: str,
                      num_tags: int = 50) -> tuple[dict, ml_collections.ConfigDict]:
    """Maps an authors' state dict onto `{"params", "batch_stats"}` of `build_model(config.model)`.

    Returns (variables as float32 NumPy arrays, the variant's config). The front-end's width c is
    read from the state dict (`state_conv_channels`): a model trained with their
    `--conv_channels N` imports with `config.model.conv_channels = N`, everything else the
    variant's. Raises AuthorsImportError naming every unknown, missing and mis-shaped key (and
    non-finite tensors) at once.
    """
    config = authors_config(variant)
    state = strip_prefix(state)
    arrays = {}
    for key, value in state.items():
        try:
            arrays[key] = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise AuthorsImportError(f"{key}: not convertible to a NumPy array ({e})") from None
    classifier = arrays.get("classifier.weight")  # (num_tags, d): the tag list must match it
    if classifier is not None and classifier.ndim == 2 and classifier.shape[0] != num_tags:
        raise AuthorsImportError(
            f"the tag list names {num_tags} tags but the state dict's classifier has "
            f"{classifier.shape[0]} outputs (classifier.weight {tuple(classifier.shape)}): "
            f"give --tags a file of {classifier.shape[0]} names in the classifier's order")
    c = state_conv_channels(arrays)
    if c is not None:
        config.model.conv_channels = c
    plan = mapping_plan(config.model, num_tags)
    expected = {s.key: s.shape for sources in plan.values() for s in sources}
    problems = _problems(arrays, expected)
    if problems:
        other = [v for v in VARIANTS if v != variant and
                 not _problems(arrays, authors_shapes(v, num_tags, c))]
        hint = f" (it is a state dict of the {other[0]!r} variant)" if other else ""
        raise AuthorsImportError(
            f"state dict does not match the authors' {variant!r} model (pons_won, conv_channels="
            f"{config.model.conv_channels}, {config.model.positions} positions){hint}: "
            + "; ".join(p.strip() for p in problems))
    bad = [k for k in expected
           if not np.issubdtype(arrays[k].dtype, np.number) or not np.all(np.isfinite(arrays[k]))]
    if bad:
        raise AuthorsImportError("non-numeric or non-finite values (NaN/inf) in: " + ", ".join(bad))

    variables: dict = {}
    for path, sources in plan.items():
        parts = [s.convert(arrays[s.key].astype(np.float32)) for s in sources]
        value = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        node = variables
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = np.ascontiguousarray(value)
    _check_tree(variables, config.model, num_tags)
    return variables, config


def _check_tree(variables: dict, model_config: Any, num_tags: int) -> None:
    """The mapped tree must equal the model's init tree (paths and shapes); a mismatch is a bug."""
    import jax
    import jax.numpy as jnp
    from tagger_jax.models import build_model, input_shape

    model = build_model(model_config, num_tags)
    x = jax.ShapeDtypeStruct((1, *input_shape(model_config)), jnp.float32)
    init = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    want = {jax.tree_util.keystr(p): tuple(a.shape)
            for p, a in jax.tree_util.tree_flatten_with_path(dict(init))[0]}
    got = {jax.tree_util.keystr(p): tuple(a.shape)
           for p, a in jax.tree_util.tree_flatten_with_path(variables)[0]}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))
        raise RuntimeError(f"bug in the authors' key mapping; tree differs from model.init: {diff}")


def param_count(variables: Mapping[str, Any]) -> int:
    """Trainable parameters (the "params" collection; running statistics excluded)."""
    import jax

    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(variables["params"])))


# --------------------------------------------------------------------------------------------
# Reading files.

def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a state dict from a PyTorch file (.pth/.pt; needs torch) or a NumPy .npz archive.

    Files with another suffix are recognised by content, and so is a NumPy archive under a
    PyTorch suffix (`.bin`, as Hugging Face names weights: it was read as a torch file and
    refused). Every failure names the file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir()
                        if p.suffix.lower() in (*TORCH_SUFFIXES, ".npz"))[:3]
        raise AuthorsImportError(f"{path}: is a directory; give the state dict file (.pth or "
                                 ".npz)" + (f", e.g. {', '.join(inside)} in it" if inside else ""))
    if not path.is_file():
        raise AuthorsImportError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AuthorsImportError(f"{path}: empty file (0 bytes)")
    suffix = path.suffix.lower()
    if suffix == ".npz" or _looks_like_npz(path):  # torch.save's zips hold data.pkl
        return _read_npz(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise AuthorsImportError(f"{path}: cannot read it ({e.strerror or e})") from None
    if suffix in TORCH_SUFFIXES and not head.startswith((b"PK", b"\x80")):  # zip, pickle
        raise AuthorsImportError(f"{path}: not a PyTorch file: neither torch.save's zip archive "
                                 f"nor a pickle (it starts with {head!r})")
    if suffix in TORCH_SUFFIXES or _looks_like_torch(path):
        return _read_torch(path)
    raise AuthorsImportError(f"{path}: neither a PyTorch state dict (.pth) nor a NumPy .npz "
                             "archive")


# Keys under which training checkpoints keep their state dict: {"state_dict": ...} (common),
# {"model": ...} (the authors' solver), {"model_state_dict": ...} (PyTorch's tutorial), "net".
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


def _torch_load_problem(error: Exception) -> str:
    """torch.load's refusal as one short phrase: a whole pickled model (weights_only refuses its
    classes) is named as such, with what to save instead; other errors keep their first line,
    without ANSI codes, cut to 200 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if "weights_only" in text or "Unsupported global" in text:
        return ("holds pickled Python objects (a whole model?), not only tensors; load it where "
                "its code is and save model.state_dict() instead (tagger-jax runs no code from "
                "the file)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first if len(first) <= 200 else first[:197] + "..."
    return f"not a readable PyTorch file ({type(error).__name__}: {first or 'empty or cut short'})"


def _looks_like_npz(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        return bool(names) and all(n.endswith(".npy") for n in names)
    except (zipfile.BadZipFile, OSError):
        return False


def _looks_like_torch(path: Path) -> bool:
    """torch.save writes a zip holding `*/data.pkl` (or, before torch 1.6, a raw pickle)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            return f.read(1) == b"\x80"  # pickle protocol marker
    except OSError:
        return False


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise AuthorsImportError(f"{path}: not a readable .npz archive ({e})") from None


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise AuthorsImportError(
            f"{path}: reading PyTorch files needs torch (the optional extra: pip install "
            "'tagger-jax[torch]', or -e '.[torch]' in a clone), or "
            "convert the state dict to .npz where torch is installed "
            "(docs/import.md, \".pth or .npz\", has the one-line command)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, ...)
        raise AuthorsImportError(f"{path}: {_torch_load_problem(e)}") from None

    def is_state_dict(x: Any) -> bool:
        return isinstance(x, Mapping) and bool(x) and all(torch.is_tensor(v) for v in x.values())

    if isinstance(obj, Mapping) and not is_state_dict(obj):  # a checkpoint wrapping it
        inner = [k for k in WRAPPER_KEYS if is_state_dict(obj.get(k))]
        if inner:
            obj = obj[inner[0]]
    if not is_state_dict(obj):
        found = (f"a dict of {', '.join(map(repr, list(obj)[:8]))}" if isinstance(obj, Mapping)
                 else type(obj).__name__)
        raise AuthorsImportError(f"{path}: expected a state dict (a mapping of names to tensors, "
                                 f"or one under {', '.join(map(repr, WRAPPER_KEYS))}), found "
                                 f"{found}")
    out = {}
    for key, tensor in obj.items():
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # no NumPy equivalent; float32 holds it exactly
        out[str(key)] = tensor.numpy()
    return out
