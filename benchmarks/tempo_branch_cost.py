"""Paired cost of the tempo branch variants in the main job's model (docs/training.md).

    python benchmarks/tempo_branch_cost.py [--rounds 8] [--batch 16]

Builds configs/soundfont_cpu.py's model with no tempo branch, the single-band branch, the same
with a 64-unit hidden layer, and the band variant with it (same input, labels and frame
targets; each its own random weights), jits the forward and backward pass of the training loss
(`main_job_loss`: clip BCE + frame_loss_weight x frame BCE, as the main job trains) and times
them interleaved: each round runs every variant 5 times in turn. Prints the median and range
over rounds per variant, with the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = (("no tempo branch", "none", 0), ("single band", "onset_autocorrelation", 0),
            ("single band + hidden 64", "onset_autocorrelation", 64),
            ("bands + hidden 64", "onset_autocorrelation_bands", 64))


def main_job_loss(model, config, x, y, target):
    """The main job's training loss on one batch as a function of (params, batch_stats): the
    package's `train_state.loss_fn` on the tag logits plus `config.train.frame_loss_weight`
    times it on the frame logits (what `train_state.make_train_step` differentiates), in train
    mode. x (B, 96, T) log-mel, y (B, tags), target (B, T, tags) frame activity."""
    from tagger_jax.train_state import loss_fn

    def loss(params, stats):
        (logits, frame_logits), _ = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, return_frame_logits=True,
            mutable=["batch_stats"])
        return loss_fn(logits, y) + config.train.frame_loss_weight * loss_fn(frame_logits, target)
    return loss


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tagger_jax.config_base import config_file
    from tagger_jax.models import build_model

    config = config_file(ROOT / "configs" / "soundfont_cpu.py")
    frames, tags = config.features.chunk_frames, 18
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(-40, 10, (args.batch, 96, frames)), jnp.float32)
    y = jnp.asarray(rng.random((args.batch, tags)) > 0.7, jnp.float32)
    target = jnp.asarray(rng.random((args.batch, frames, tags)) > 0.7, jnp.float32)

    def timed_step(tempo_features: str, hidden: int):
        model_config = config_file(ROOT / "configs" / "soundfont_cpu.py").model
        model_config.tempo_features, model_config.tempo_hidden = tempo_features, hidden
        model = build_model(model_config, tags)
        variables = model.init(jax.random.PRNGKey(0), x)

        step = jax.jit(jax.value_and_grad(main_job_loss(model, config, x, y, target)))
        run = lambda: jax.block_until_ready(step(variables["params"], variables["batch_stats"]))
        run()
        run()
        return run

    steps = {name: timed_step(kind, hidden) for name, kind, hidden in VARIANTS}
    print(f"{jax.devices()[0].device_kind}, batch {args.batch} x {frames} frames; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, run in steps.items():
            start = time.perf_counter()
            for _ in range(5):
                run()
            times[name].append((time.perf_counter() - start) / 5 * 1e3)
    print("| tempo branch | forward + backward, median ms | range |")
    print("|---|---:|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.1f} | {min(t):.1f}-{max(t):.1f} |")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
