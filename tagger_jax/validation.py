"""Validation and test during training: the authors' 16-chunk protocol and the selection metric.

A split where a tag has only positive or only negative clips has no ROC-AUC for that tag
(evaluation.tag_metrics leaves it out of the means and lists it in "excluded_tags"). If no tag
is defined the mean itself is undefined: `selection_metric` is then NaN, which the plateau
schedule never counts as an improvement (optimizers.plateau_step).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

from tagger_jax import sharding


def evaluate(model: nn.Module, variables: Any, batches: Iterable[Mapping[str, np.ndarray]],
             tag_names: Sequence[str], *, predict_fn: Callable, mesh: jax.sharding.Mesh,
             num_chunks: int) -> dict:
    """Mean of `num_chunks` chunk sigmoids per clip, per-tag AUCs: evaluation.tag_metrics' dict."""
    from tagger_jax import evaluation

    put = lambda x: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), x)
    probs, labels, _ = evaluation.predict_clips(model, variables, batches, num_chunks,
                                                predict_fn=predict_fn, put=put)
    with warnings.catch_warnings():  # tags absent from a small split: reported by `undefined`
        warnings.simplefilter("ignore", evaluation.UndefinedMetricWarning)
        return evaluation.tag_metrics(probs, labels, tag_names)


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
