"""Validation and test during training: the authors' 16-chunk protocol (through the one
inference path, on the training mesh) and the selection metric.

A split where a tag has only positive or only negative clips has no ROC-AUC for that tag
(evaluation.tag_metrics leaves it out of the means and lists it in "excluded_tags"). If no tag
is defined the mean itself is undefined: `selection_metric` is then NaN, which the plateau
schedule never counts as an improvement (optimizers.plateau_step).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np

from tagger_jax import sharding


def make_evaluate(model: nn.Module, config: Any, mesh: jax.sharding.Mesh,
                  tag_names: Sequence[str]) -> Callable[..., dict]:
    """`evaluate(variables, source, split, progress=None, desc=None)` -> `evaluation.tag_metrics`'
    dict: the paper's protocol (mean of the sigmoids of `features.eval_chunks` evenly spaced chunks per
    clip, `inference.PAPER` windows) on a split's records, through the one inference path
    (`evaluation.predict_split`), computed on the training mesh.

    Each process takes its share of the records (`inference.process_share`); every batch of
    `eval_clips_per_batch(train.eval_batch_size) x eval_chunks` windows per process is one global
    array over the mesh (`sharding.shard_batch`), predicted by `inference.make_predict_fn(model)`
    with the training variables (replicated on the mesh); processes pad to the same number of
    batches and gather the clips, so every process returns the same metrics. `progress(items,
    total, desc)` may wrap the input list (a bar over clips).
    """
    from tagger_jax import evaluation, inference
    from tagger_jax.models import geometry, input_shape
    from tagger_jax.train_data import eval_clips_per_batch

    f = config.features
    geom = geometry(config.model, f.sample_rate, f.hop_length, f.chunk_frames)
    plan = inference.WindowPlan(inference.PAPER, num_chunks=int(f.eval_chunks))
    rows = eval_clips_per_batch(config.train.eval_batch_size, f.eval_chunks) * int(f.eval_chunks)
    predict = inference.make_predict_fn(model)
    padding = np.zeros(input_shape(config.model, f.chunk_frames), np.float32)
    put = functools.partial(sharding.shard_batch, mesh=mesh)

    def evaluate(variables: Any, source: Sequence[Mapping[str, Any]], split: str,
                 progress: Optional[Callable] = None, desc: Optional[str] = None) -> dict:
        packer = inference.Packer(lambda x: {"probabilities": predict(variables, x)}, rows,
                                  put=put, get=sharding.local_rows)
        items = inference.process_share(inference.source_inputs(
            source, geom.architecture.dataset_feature, config.data.name, split))
        shown = progress(items, len(items), desc or split) if progress is not None else items
        probs, labels, _ = evaluation.predict_split(shown, plan, geom, packer, len(tag_names),
                                                    lockstep_window=padding)
        with warnings.catch_warnings():  # tags absent from a small split: reported by `undefined`
            warnings.simplefilter("ignore", evaluation.UndefinedMetricWarning)
            return evaluation.tag_metrics(probs, labels, tag_names)

    return evaluate


def selection_metric(result: Mapping[str, Any]) -> float:
    """The mean ROC-AUC that selects the best model; NaN when no tag's ROC-AUC is defined."""
    value = result["roc_auc_mean"]
    return math.nan if value is None else float(value)


def undefined_note(result: Mapping[str, Any], split: str) -> str:
    """'' if every tag's metrics are defined, else a sentence naming the excluded tags."""
    excluded = list(result["excluded_tags"])
    if not excluded:
        return ""
    shown = ", ".join(excluded[:8]) + (", ..." if len(excluded) > 8 else "")
    if len(excluded) == result["num_tags"]:
        return (f"no tag has both positive and negative clips in the {split} split, so its "
                "ROC-AUC is undefined")
    return (f"{len(excluded)} of {result['num_tags']} tags ({shown}) have only positive or only "
            f"negative clips in the {split} split; they are left out of its means")


def fmt(value: float | None) -> str:
    """A metric for a message: 4 decimals, or 'undefined'."""
    return "undefined" if value is None or not math.isfinite(value) else f"{value:.4f}"
