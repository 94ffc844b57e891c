"""Runs a few data-parallel train steps in its own process; tests/test_distributed.py starts it.

Usage: python tests/distributed_worker.py OUT.npz [STEPS]

The device count comes from XLA_FLAGS (--xla_force_host_platform_device_count); a multi-process
run from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (tagger_jax.sharding). Each
process feeds its own share of every global batch, read by the project's input pipeline from the
same toy records; process 0 writes the per-step losses, the final parameters and batch
statistics, and the validation metrics of the initial model (the trainer's validation on the
mesh) to OUT.npz.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(out: str, steps: int) -> None:
    from tagger_jax import sharding

    sharding.maybe_initialize_distributed(preemption=True)  # as training joins; first
    import jax
    import numpy as np
    from flax import traverse_util

    from tagger_jax import optimizers, train_lib, validation
    from tagger_jax.models import build_model
    from train_helpers import NUM_TAGS, TAGS, tiny_config, toy_data, toy_records

    config = tiny_config()
    mesh = sharding.make_mesh()
    data = toy_data(config)
    model = build_model(config.model, NUM_TAGS)
    tx, _ = optimizers.make_optimizer(config.train, 100)
    state = train_lib.init_train_state(model, tx, (96, 256), seed=0,
                                       prng_impl=config.train.prng_impl, mesh=mesh)
    initial = sharding.to_host(state.params)
    # The trainer's validation on the mesh: 9 clips of 4 windows in batches of 16 windows per
    # process, so two processes have unequal shares (5 clips: 2 batches; 4 clips: 1 batch) and
    # the second pads to stay in lockstep.
    evaluate = validation.make_evaluate(model, config, mesh, TAGS)
    val = evaluate(state.variables, toy_records(9, seed=1), "validation")
    step_fn = train_lib.make_train_step(model, tx, prng_impl=config.train.prng_impl, mesh=mesh)
    it = iter(data.train)
    losses = []
    for _ in range(steps):
        batch = next(it)
        state, metrics = step_fn(state, sharding.shard_batch({"x": batch["x"], "y": batch["y"]},
                                                             mesh))
        losses.append(float(sharding.to_host(metrics["loss"])))
    host = sharding.to_host(state.variables)
    if jax.process_index() == 0:
        flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(host).items()}
        moved = max(float(np.abs(a - b).max()) for a, b in
                    zip(jax.tree.leaves(host["params"]), jax.tree.leaves(initial)))
        np.savez(out, losses=np.asarray(losses), devices=jax.device_count(), moved=moved,
                 processes=jax.process_count(), val_clips=val["num_clips"],
                 val_roc_auc=[np.nan if t["roc_auc"] is None else t["roc_auc"]
                              for t in val["per_tag"]], **flat)
    print(f"process {jax.process_index()}/{jax.process_count()} devices {jax.device_count()} "
          f"losses {losses}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
