"""Forward and train-step throughput of our model vs the PyTorch twin of the authors' model.

    python benchmarks/model_step.py [--batch 16] [--repeats 3] [--steps 1] [--dtype float32]

Both models get the same weights (a random state dict with the authors' keys, imported into ours),
the same input (batch of 96 x 256 log-mel chunks) and, for the train step, the same work:
forward in train mode (dropout, batch statistics), BCE loss, backward, Adam update. Compilation
and one warm-up call are excluded; each number is the median over `--repeats` timed runs of
`--steps` steps.
torch runs with torch.set_num_threads(os.cpu_count()); XLA uses all cores by default. Without
torch installed, only our numbers are printed. Timings on a shared machine are noisy: the header
prints the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16, help="clips per step (authors: 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    p.add_argument("--steps", type=int, default=1, help="steps per timed run")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="our compute dtype (the torch twin always runs float32)")
    p.add_argument("--variant", choices=("training", "released"), default="training",
                   help="training: the paper config (c = 16); released: c = 8, learned positions")
    p.add_argument("--frames", type=int, default=256, help="frames per chunk")
    p.add_argument("--prng", choices=("threefry2x32", "rbg"), default="threefry2x32",
                   help="JAX PRNG implementation for dropout (config.train.prng_impl)")
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                   help="JAX platform; torch uses CUDA with gpu when it can, else is skipped")
    p.add_argument("--no-torch", action="store_true", help="time our model only")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


def timed(fn: Callable[[], None], batch: int, steps: int, repeats: int) -> float:
    """Median clips/s of `repeats` runs of `steps` calls; `fn` must block until its work is done."""
    fn()  # warm-up: compilation, allocator, caches
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        rates.append(batch * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_ours(args, state, x, y) -> tuple[dict, object]:
    import jax
    import jax.numpy as jnp
    import optax

    from tagger_jax.authors import import_state_dict
    from tagger_jax.models import build_model

    variables, config = import_state_dict(state, args.variant)
    config.model.dtype = args.dtype
    model = build_model(config.model, 50)
    variables = jax.device_put(variables)
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    forward = jax.jit(lambda v, x: model.apply(v, x))
    tx = optax.adam(1e-4)

    def loss_fn(params, batch_stats, x, y, key):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"], rngs={"dropout": key})
        return optax.sigmoid_binary_cross_entropy(logits, y).mean(), updates["batch_stats"]

    @jax.jit
    def train_step(train_state, x, y, step):
        params, batch_stats, opt_state, key = train_state
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, y, jax.random.fold_in(key, step))
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state, key), loss

    key = jax.random.key(0, impl=args.prng)
    train_state = [(variables["params"], variables["batch_stats"],
                    tx.init(variables["params"]), key)]
    counter = [0]

    def one_train_step():
        counter[0] += 1
        train_state[0], loss = train_step(train_state[0], xj, yj, counter[0])
        loss.block_until_ready()

    probs = jax.nn.sigmoid(forward(variables, xj))
    result = {
        "forward": timed(lambda: forward(variables, xj).block_until_ready(),
                         args.batch, args.steps, args.repeats),
        "train_step": timed(one_train_step, args.batch, args.steps, args.repeats),
    }
    return result, jax.device_get(probs)


def bench_torch(args, state, x, y) -> tuple[dict, object]:
    import torch
    import torch.nn.functional as F

    from benchmarks.torch_twin import build_twin, load_numpy_state_dict

    torch.set_num_threads(os.cpu_count())
    device = "cuda" if args.platform == "gpu" else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model = build_twin(args.variant)
    load_numpy_state_dict(model, state)
    model.to(device)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def forward():
        with torch.inference_mode():
            out = model(xt)
        sync()
        return out

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        loss = F.binary_cross_entropy_with_logits(model(xt), yt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()

    model.eval()
    probs = torch.sigmoid(forward()).cpu().numpy()
    result = {"forward": timed(forward, args.batch, args.steps, args.repeats)}
    model.train()
    result["train_step"] = timed(train_step, args.batch, args.steps, args.repeats)
    return result, probs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", args.platform if args.platform == "cpu" else "cuda")
    import numpy as np
    import jax

    from benchmarks.torch_twin import random_state_dict

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 96, args.frames)).astype(np.float32)
    y = (rng.random((args.batch, 50)) < 0.1).astype(np.float32)
    state = random_state_dict(args.variant, seed=0)

    torch_version = None
    if not args.no_torch:
        try:
            import torch

            torch_version = torch.__version__
            if args.platform == "gpu" and not torch.cuda.is_available():
                print("torch has no CUDA here: timing our model only", file=sys.stderr)
                torch_version = None
        except ImportError:
            print("torch is not installed: timing our model only", file=sys.stderr)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model_step: pons_won {args.variant} variant, batch {args.batch} x 96 x {args.frames}, "
          f"{jax.devices()[0].platform} ({os.cpu_count()} cores, load {load:.1f}), "
          f"jax {jax.__version__}" + (f", torch {torch_version}" if torch_version else ""))
    print(f"clips/s, median of {args.repeats} runs of {args.steps} steps (warm-up excluded)")

    results = {"ours": None, "torch": None}
    results["ours"], ours_probs = bench_ours(args, state, x, y)
    rows = [(f"ours (jit, {args.dtype})", results["ours"])]
    if torch_version:
        results["torch"], torch_probs = bench_torch(args, state, x, y)
        rows.append(("torch twin (float32)", results["torch"]))
        ratio = {k: results["ours"][k] / results["torch"][k] for k in results["ours"]}
        rows.append(("ratio ours / torch", ratio))
        results["ratio"] = ratio
        results["max_abs_prob_diff"] = float(np.abs(ours_probs - torch_probs).max())

    print(f"{'':24s}{'forward':>12s}{'train step':>12s}")
    for name, r in rows:
        print(f"{name:24s}{r['forward']:12.2f}{r['train_step']:12.2f}")
    if "max_abs_prob_diff" in results:
        print(f"same weights, eval outputs agree to {results['max_abs_prob_diff']:.1e} "
              "(max |sigmoid difference|)")
    if args.json:
        meta = {"batch": args.batch, "frames": args.frames, "dtype": args.dtype,
                "variant": args.variant, "repeats": args.repeats, "steps": args.steps,
                "platform": jax.devices()[0].platform, "cpu_count": os.cpu_count(),
                "load_average": load, "jax": jax.__version__, "torch": torch_version}
        Path(args.json).write_text(json.dumps({**meta, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
