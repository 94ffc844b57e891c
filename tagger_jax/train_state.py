"""The train state and the compiled steps: what runs on the devices during training.

The train step is one `jax.jit` program over a 1-D device mesh (tagger_jax.sharding): the global
batch is split over the "data" axis and the train state is replicated, so the compiler reduces the
gradients and BatchNorm sees the statistics of the whole global batch. It runs the same on one
device, many devices and many hosts.

The train state is a flax struct pytree with everything on the devices that a resumed run needs:
step, parameters, batch statistics, optimizer state (tagger_jax.optimizers; a fixed structure in
every phase) and the dropout key. The dropout key of step s is `fold_in(key, s)`, so a resumed run
draws exactly the masks an uninterrupted one would. The plateau schedule's state is not here: it
is host-side (optimizers.PlateauState) and checkpointed as JSON.

Only jax, flax and optax are imported: the benchmark imports the train step on machines without
the data stack (grain, ml_collections, tfds, librosa).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tagger_jax import sharding

PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


@flax.struct.dataclass
class TrainState:
    """Everything that evolves during training, as one pytree (checkpointed as a whole)."""

    step: jax.Array  # int32: completed train steps
    params: Any
    batch_stats: Any
    opt_state: Any  # optimizers.PhasedState
    rng: jax.Array  # uint32 raw key data of the dropout key (typed keys do not checkpoint)

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def dropout_key(state: TrainState, prng_impl: str) -> jax.Array:
    """The dropout key of the step about to run: a function of the stored key and the step only."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=prng_impl), state.step)


def init_train_state(model: nn.Module, tx: optax.GradientTransformation,
                     example_shape: Sequence[int], *, seed: int, prng_impl: str,
                     mesh: jax.sharding.Mesh) -> TrainState:
    """Initialises parameters from `seed`, replicated over the mesh (identical on every host)."""
    if prng_impl not in PRNG_IMPLS:
        raise ValueError(f"train.prng_impl must be one of {PRNG_IMPLS}, got {prng_impl!r}")
    root = jax.random.key(seed, impl=prng_impl)
    init_key, drop_key = jax.random.split(root)

    def init():
        x = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
        variables = model.init({"params": init_key}, x, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params,
            batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
            rng=jax.random.key_data(drop_key))

    return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Sigmoid binary cross-entropy on the logits, averaged over examples and tags (float32)."""
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                              labels.astype(jnp.float32)).mean()


def make_train_step(model: nn.Module, tx: optax.GradientTransformationExtraArgs, *,
                    prng_impl: str, mesh: jax.sharding.Mesh, donate: bool = True,
                    frame_loss_weight: float = 0.0) -> Callable[..., tuple[TrainState, dict]]:
    """`step(state, {"x", "y"}, phase) -> (state, {"loss", "grad_norm"})`, compiled for the mesh.

    With `frame_loss_weight` > 0 (a model with `frame_head`) the batch also holds "frames"
    (batch, positions, num_tags), the exact activity at each encoder position, and the loss is
    `loss_fn(tag logits, y) + frame_loss_weight * loss_fn(frame logits, frames)` (both means over
    their elements); the metrics add "frame_loss".

    The batch is split over the mesh's data axis and the state replicated; BatchNorm's batch
    statistics and the mean loss are over the global batch (the compiler inserts the
    all-reduces). Parameters, optimizer state, logits and loss stay float32 whatever the model's
    compute dtype. The state is donated: its buffers are reused for the new state.

    `phase` (the optimizer phase, `state.phase` as a Python int, which the training loop keeps on
    the host) is static: each phase compiles its own program with only its optimizer in it, so no
    device-side conditional runs in the step; the authors' schedule recompiles at most 3 times.
    """

    def step(state: TrainState, batch: Mapping[str, jax.Array], phase: int = 0
             ) -> tuple[TrainState, dict]:
        rngs = {"dropout": dropout_key(state, prng_impl)}

        def compute_loss(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            if frame_loss_weight <= 0:
                logits, updates = model.apply(variables, batch["x"], train=True,
                                              mutable=["batch_stats"], rngs=rngs)
                return loss_fn(logits, batch["y"]), (updates["batch_stats"], {})
            (logits, frame_logits), updates = model.apply(
                variables, batch["x"], train=True, return_frame_logits=True,
                mutable=["batch_stats"], rngs=rngs)
            frame_loss = loss_fn(frame_logits, batch["frames"])
            return (loss_fn(logits, batch["y"]) + frame_loss_weight * frame_loss,
                    (updates["batch_stats"], {"frame_loss": frame_loss}))

        (loss, (batch_stats, extra)), grads = jax.value_and_grad(
            compute_loss, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, phase=int(phase))
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **extra}

    replicated = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, sharding.batch_sharding(mesh)),
                   out_shardings=(replicated, replicated), static_argnums=(2,),
                   donate_argnums=(0,) if donate else ())
