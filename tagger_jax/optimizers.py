"""Optimizers: the authors' plateau schedule (Adam, then SGD with drops) and AdamW with cosine decay.

Both are one `optax` transformation whose state has a fixed structure for the whole run, so a
checkpoint restores it exactly whatever phase training is in:

* `phased(transforms)` holds one inner state per phase and applies the transform of the current
  phase (passed as `phase=`: a Python int in the train step, which compiles one program per
  phase, or a traced integer, selected with `lax.switch`). Phases only
  move forward, so a phase's state is still the freshly initialised one when its phase begins:
  the new optimizer starts from scratch, as a newly constructed PyTorch optimizer would.
* The decision to move on is host-side and pure (`plateau_step`): validation ROC-AUC after each
  epoch, compared with the best so far. Its state (`PlateauState`) lives on the host and is
  checkpointed as JSON next to the train state.

The authors' phases (reference page, "Training protocol"): Adam 1e-4; then SGD with Nesterov
momentum 0.9 and weight decay 1e-4 at 1e-3, 1e-4, 1e-5; after the last plateau, stop. At every
switch the training loop reloads the best model. PyTorch's SGD adds the weight decay to the
gradient before momentum (L2, not decoupled), which `add_decayed_weights` before `sgd` matches.

Only jax, optax and `tagger_jax.errors` (standard library only) are imported, so the benchmark
can build the optimizer without ml_collections.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from tagger_jax import errors
from tagger_jax.models import CLASSIFIER, CLS_PARAM, EMBEDDING, POOLER

OPTIMIZERS = ("authors", "adamw")


class PhasedState(NamedTuple):
    """One optimizer state per phase; only the current phase's state changes."""

    inner: tuple


def phased(transforms: Sequence[optax.GradientTransformation]
           ) -> optax.GradientTransformationExtraArgs:
    """Applies `transforms[phase]`, with `phase` passed to `update` as `phase=`.

    A Python int selects the transform at trace time (the train step compiles one program per
    phase); a traced int32 scalar selects it with `lax.switch`. Phases past the last one are
    clamped to it (training stops before it would matter).
    """
    transforms = tuple(transforms)
    if not transforms:
        raise ValueError("phased() needs at least one transformation")

    def init(params):
        return PhasedState(tuple(t.init(params) for t in transforms))

    def update(updates, state, params=None, *, phase=0, **extra_args):
        del extra_args
        if isinstance(phase, int) or len(transforms) == 1:  # known at trace time: no switch
            i = min(max(int(phase), 0), len(transforms) - 1) if isinstance(phase, int) else 0
            new_updates, new_inner = transforms[i].update(updates, state.inner[i], params)
            return new_updates, PhasedState(state.inner[:i] + (new_inner,) + state.inner[i + 1:])

        def branch(i):
            def apply(updates, inner, params):
                new_updates, new_inner = transforms[i].update(updates, inner[i], params)
                return new_updates, inner[:i] + (new_inner,) + inner[i + 1:]
            return apply

        index = jnp.clip(jnp.asarray(phase, jnp.int32), 0, len(transforms) - 1)
        new_updates, inner = jax.lax.switch(index, [branch(i) for i in range(len(transforms))],
                                            updates, state.inner, params)
        return new_updates, PhasedState(inner)

    return optax.GradientTransformationExtraArgs(init, update)


def _decay_mask(params: Any) -> Any:
    """AdamW decays kernels (ndim > 1) only: not biases, LayerNorm or BatchNorm scales."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


READOUT = ((EMBEDDING, CLS_PARAM), (POOLER,), (CLASSIFIER,))  # parameter path prefixes


def _readout_mask(params: Any) -> Any:
    """True on the parameters of the [CLS] readout: the learned [CLS] token (a fixed one is no
    parameter), the pooler and the classifier."""
    def is_readout(path, _):
        keys = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
        return any(keys[:len(prefix)] == prefix for prefix in READOUT)
    return jax.tree_util.tree_map_with_path(is_readout, params)


def with_readout_multiplier(tx: optax.GradientTransformation, multiplier: float
                            ) -> optax.GradientTransformation:
    """`tx` whose updates of the [CLS] readout (`_readout_mask`) are multiplied by `multiplier`:
    a per-group learning rate (not in the paper; docs/training.md). `tx` itself when it is 1, so
    the optimizer state, and with it every checkpoint, keeps its structure."""
    if multiplier == 1.0:
        return tx
    if not multiplier > 0:
        raise errors.ConfigError(f"train.readout_lr_multiplier must be > 0, got {multiplier!r}")
    return optax.chain(tx, optax.masked(optax.scale(float(multiplier)), _readout_mask))


def authors_phases(train_config: Mapping[str, Any]) -> tuple[optax.GradientTransformation, ...]:
    """Adam at `learning_rate`, then SGD (Nesterov) at each of `sgd_learning_rates`."""
    cfg = train_config
    weight_decay = float(cfg["weight_decay"])
    phases = [optax.adam(float(cfg["learning_rate"]))]
    for lr in cfg["sgd_learning_rates"]:
        phases.append(optax.chain(optax.add_decayed_weights(weight_decay),
                                  optax.sgd(float(lr), momentum=float(cfg["sgd_momentum"]),
                                            nesterov=True)))
    return tuple(phases)


def adamw_schedule(train_config: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine decay to 0 at `total_steps`."""
    peak = float(train_config["learning_rate"])
    warmup = int(min(train_config["warmup_steps"], max(total_steps - 1, 0)))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1),
                                              end_value=0.0)


def make_optimizer(train_config: Mapping[str, Any], total_steps: int
                   ) -> tuple[optax.GradientTransformationExtraArgs, int]:
    """The optimizer named by `train_config["optimizer"]` and its number of phases.

    `train_config` is `config.train` (or a dict with the fields the optimizer reads: every field
    must be present; defaults live only in config_base.py). `total_steps` (epochs x steps per
    epoch) sets the length of AdamW's cosine decay. Raises KeyError naming a missing field.
    """
    name = train_config["optimizer"]
    if name == "authors":
        phases = authors_phases(train_config)
    elif name == "adamw":
        phases = (optax.adamw(adamw_schedule(train_config, total_steps),
                              weight_decay=float(train_config["weight_decay"]),
                              mask=_decay_mask),)
    else:
        raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {name!r}")
    multiplier = float(train_config["readout_lr_multiplier"])
    phases = tuple(with_readout_multiplier(tx, multiplier) for tx in phases)
    return phased(phases), len(phases)


def learning_rate(train_config: Mapping[str, Any], phase: int, step: int, total_steps: int) -> float:
    """The learning rate in effect at `step` in `phase` (for logging)."""
    if train_config["optimizer"] == "adamw":
        return float(adamw_schedule(train_config, total_steps)(step))
    rates = (train_config["learning_rate"],) + tuple(train_config["sgd_learning_rates"])
    return float(rates[min(phase, len(rates) - 1)])


def phase_name(train_config: Mapping[str, Any], phase: int) -> str:
    """A human-readable name of the optimizer phase, for logs."""
    if train_config["optimizer"] == "adamw":
        return "adamw"
    sgd_lrs = tuple(train_config["sgd_learning_rates"])
    if phase == 0:
        return f"adam lr {train_config['learning_rate']:g}"
    if phase <= len(sgd_lrs):
        return f"sgd lr {sgd_lrs[phase - 1]:g}"
    return "stopped"


@dataclasses.dataclass(frozen=True)
class PlateauState:
    """The plateau schedule's state, kept on the host and checkpointed as JSON.

    `best_metric` is -inf until a validation result is defined (JSON: null).
    """

    phase: int = 0  # optimizer phase (authors: 0 Adam, 1..3 SGD; == num_phases: stopped)
    best_metric: float = -math.inf  # best validation ROC-AUC so far
    bad_epochs: int = 0  # consecutive validations without improvement in this phase

    def to_json(self) -> dict:
        best = self.best_metric if math.isfinite(self.best_metric) else None
        return {"phase": self.phase, "best_metric": best, "bad_epochs": self.bad_epochs}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "PlateauState":
        best = d["best_metric"]
        return cls(int(d["phase"]), -math.inf if best is None else float(best),
                   int(d["bad_epochs"]))


@dataclasses.dataclass(frozen=True)
class PlateauDecision:
    """What the authors' schedule does after one validation."""

    phase: int  # phase for the next epoch (== num_phases: stop)
    best_metric: float  # best validation metric so far
    bad_epochs: int  # consecutive epochs without improvement in the current phase
    improved: bool  # this epoch set a new best: save it
    switched: bool  # moved to the next optimizer phase: reload the best model first
    stop: bool  # the last phase plateaued: training ends

    @property
    def state(self) -> PlateauState:
        """The schedule's state after this decision."""
        return PlateauState(self.phase, self.best_metric, self.bad_epochs)


def plateau_step(phase: int, best_metric: float, bad_epochs: int, metric: float, *,
                 patience: int, num_phases: int) -> PlateauDecision:
    """Advances the plateau schedule by one validation result (higher is better).

    A NaN metric never counts as an improvement. After `patience` consecutive epochs without a
    new best, the next phase begins (the counter restarts); past the last phase training stops.
    With a single phase (AdamW) nothing ever switches or stops.
    """
    improved = bool(math.isfinite(metric) and metric > best_metric)
    if improved:
        best_metric, bad_epochs = float(metric), 0
    else:
        bad_epochs += 1
    switched = stop = False
    if num_phases > 1 and not improved and bad_epochs >= patience:
        phase, bad_epochs = phase + 1, 0
        stop = phase >= num_phases
        switched = not stop
    return PlateauDecision(phase, float(best_metric), bad_epochs, improved, switched, stop)
