"""Starting a training run from a trained model's weights (`train.init_from`).

A small collection trained from a seeded init learns little (docs/training.md, "Training on your
own collection"); starting from a model trained on more audio keeps what it learnt. The new
model's variables (params and BatchNorm statistics) take the trained model's arrays wherever
the parameter path and shape agree. The tag outputs (`TAG_OUTPUTS`: the classifier and the frame
head, one column per tag) are matched by tag name instead: the columns of tags both models have
are copied, those of new tags keep their seeded init. Every other array of the new model (a
layer the trained model lacks, or has in another shape) keeps its init, and the run says how
many (`Transplant.summary`).

Only the start (step 0) reads the trained model: a resumed run restores its own checkpoint, and
`train.init_from` is part of the config a resume must match.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
from flax import traverse_util

from tagger_jax.models import TAG_OUTPUTS  # one output per tag on the last axis: matched by name

# The feature fields a trained model's input depends on: starting from a model that read other
# log-mels (another rate, hop, band count or dB scale) would start from weights that mean nothing.
INPUT_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "log_scale")


@dataclasses.dataclass(frozen=True)
class Transplant:
    """What `transplant` did: arrays copied whole, tag-output arrays copied by tag name, the new
    model's arrays left at their init, the trained model's arrays not used (paths joined by
    '/'), and the tags shared and new."""

    copied: tuple[str, ...]
    by_tag: tuple[str, ...]
    kept: tuple[str, ...]
    unused: tuple[str, ...]
    shared_tags: tuple[str, ...]
    new_tags: tuple[str, ...]

    def untaken(self) -> tuple[list[str], list[str]]:
        """(arrays of the new model left at their init, arrays of the trained model not used),
        tag outputs left out (a frame head one of the two models lacks is expected): a model
        of another architecture, which the summary line counts but does not call a problem."""
        def body(paths: Sequence[str]) -> list[str]:
            return [p for p in paths if not _is_tag_output(tuple(p.split("/")))]

        return body(self.kept), body(self.unused)

    def summary(self, source: str) -> str:
        """One line for the run's log."""
        def some(names: Sequence[str], n: int = 4) -> str:
            return ", ".join(names[:n]) + (" ..." if len(names) > n else "")

        total = len(self.copied) + len(self.by_tag) + len(self.kept)
        parts = [f"train.init_from {source}: {len(self.copied) + len(self.by_tag)} of this "
                 f"model's {total} weight arrays start from it ({len(self.by_tag)} of them "
                 f"tag outputs, copied by tag name: {len(self.shared_tags)} tag(s) shared)"]
        if self.new_tags:
            parts.append(f"new tags (init): {some(self.new_tags, 6)}")
        if self.kept:
            parts.append(f"{len(self.kept)} keep their init: {some(self.kept)}")
        if self.unused:
            parts.append(f"{len(self.unused)} of its arrays not used: {some(self.unused)}")
        return "; ".join(parts)


def _is_tag_output(path: tuple[str, ...]) -> bool:
    return any(part in TAG_OUTPUTS for part in path[:-1])


def transplant(target: Mapping[str, Any], target_tags: Sequence[str],
               source: Mapping[str, Any], source_tags: Sequence[str]
               ) -> tuple[dict, Transplant]:
    """(`target` with the arrays of `source` put in, what was done).

    `target` and `source`: variable collections ({"params": ..., "batch_stats": ...}) of the new
    and the trained model; `*_tags`: their tag names, in the order of the tag outputs' last axis.
    An array of `target` takes `source`'s at the same path when the shapes are equal; a tag
    output's (`TAG_OUTPUTS`) takes, for each tag `source` also has, that tag's column (the last
    axis), when the other axes agree. Returns NumPy arrays (host memory); nothing is changed in
    place. Raises ValueError when no array at all could be taken (another architecture)."""
    flat_t = traverse_util.flatten_dict(dict(target))
    flat_s = traverse_util.flatten_dict(dict(source))
    where = {t: j for j, t in enumerate(source_tags)}
    shared = [t for t in target_tags if t in where]
    out, copied, by_tag, kept, used = {}, [], [], [], set()
    for path, value in flat_t.items():
        value = np.asarray(value)
        name = "/".join(map(str, path))
        found = flat_s.get(path)
        found = None if found is None else np.asarray(found)
        if found is not None and _is_tag_output(path):
            if found.shape[:-1] == value.shape[:-1] and found.shape[-1] == len(source_tags) \
                    and value.shape[-1] == len(target_tags) and shared:
                new = value.copy()
                for i, tag in enumerate(target_tags):
                    if tag in where:
                        new[..., i] = found[..., where[tag]]
                out[path] = new.astype(value.dtype)
                by_tag.append(name)
                used.add(path)
                continue
        elif found is not None and found.shape == value.shape:
            out[path] = found.astype(value.dtype)
            copied.append(name)
            used.add(path)
            continue
        out[path] = value
        kept.append(name)
    if not copied and not by_tag:
        raise ValueError("no weight array of it has a path and shape of this model's (another "
                         "architecture or model size?)")
    unused = tuple("/".join(map(str, p)) for p in flat_s if p not in used)
    report = Transplant(tuple(copied), tuple(by_tag), tuple(kept), unused, tuple(shared),
                        tuple(t for t in target_tags if t not in where))
    return traverse_util.unflatten_dict(out), report


def input_differences(source_features: Mapping[str, Any], features: Mapping[str, Any]
                      ) -> list[str]:
    """'field: theirs != ours' for each of `INPUT_FIELDS` on which a trained model's features
    and this run's differ."""
    return [f"features.{k}: {source_features.get(k)!r} in the model, {features.get(k)!r} here"
            for k in INPUT_FIELDS if source_features.get(k) != features.get(k)]
