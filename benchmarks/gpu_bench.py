"""The first-GPU table: train step, forward, contribution maps and host-side input rate on one device.

    python benchmarks/gpu_bench.py [--small] [--parts train,inference,input] [--json PATH]

Run by `benchmarks/gpu.sh` (see there and docs/benchmarks.md). Prints, with the device name:

* train-step clips/s of the paper model (`train_state.make_train_step`, the step train.py runs) at
  batch 64, 256 and 1024, in float32 and bfloat16 (`benchmarks/train_step.py`'s measurement);
* forward clips/s (eval mode, sigmoid outputs) and contribution-map clips/s
  (`explain.methods.contribution_map`, all 257 positions of the last layer), float32 and bfloat16;
* the host side of the input pipeline: clips/s of random 256-frame crops from in-memory 30 s
  log-mel arrays (`chunking.random_crop`, the per-example work of the training loader), batched
  and put on the device. The grain pipeline itself (record reading, worker processes) needs the
  data stack, which a lent GPU machine lacks: it is measured on CPU by
  `benchmarks/input_pipeline.py` (docs/input_pipeline.md).

Imports only jax, flax, optax, orbax, chex and numpy: nothing of librosa, grain, ml_collections or
tensorflow-datasets (tests/test_gpu_script.py checks this with those modules blocked).
`--small` shrinks everything (tiny model, batch 4, one step) to test the script on CPU. `--parts`
measures a subset (each XLA:GPU compilation of the paper model takes about 30 s on an H200, so a
lease short of time can take the parts in separate calls).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import train_step  # noqa: E402  (after the path fix-up)

PARTS = ("train", "inference", "input")
SMALL_MODEL = dict(train_step.PAPER_MODEL, conv_channels=2, attention_channels=32,
                   attention_layers=2, attention_heads=4, intermediate=64)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true",
                   help="CPU smoke test: tiny model, batch 4, 1 step, 32 frames")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="comma-separated subset of " + ",".join(PARTS) + " (default: all)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.parts = [s for s in args.parts.split(",") if s]
    if not args.parts:
        p.error("--parts: give at least one of " + ", ".join(PARTS))
    for name in args.parts:
        if name not in PARTS:
            p.error(f"unknown part {name!r}; choose from {', '.join(PARTS)}")
    if args.small:
        args.model, args.frames = SMALL_MODEL, 32
        args.train_batches, args.infer_batch, args.steps, args.repeats = (4,), 4, 1, 1
    else:
        args.model, args.frames = train_step.PAPER_MODEL, 256
        args.train_batches, args.infer_batch, args.steps, args.repeats = (64, 256, 1024), 256, 10, 3
    # train_step.bench reads these.
    args.prng, args.optimizer, args.peak_tflops = "threefry2x32", "authors", None
    return args


def _rate(fn, batch: int, steps: int, repeats: int) -> float:
    """Median clips/s over `repeats` runs of `steps` calls (after one warm-up call)."""
    import jax

    jax.block_until_ready(fn())
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            out = fn()
        jax.block_until_ready(out)
        rates.append(batch * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def inference_rates(args, dtype: str) -> dict:
    """Forward and contribution-map clips/s of a randomly initialised model in `dtype`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tagger_jax.explain import methods
    from tagger_jax.models import build_model

    model = build_model(dict(args.model, dtype=dtype), train_step.NUM_TAGS)
    x = jnp.asarray(np.random.default_rng(0).normal(
        size=(args.infer_batch, train_step.N_MELS, args.frames)).astype(np.float32))
    variables = jax.jit(model.init)(jax.random.key(0), x[:1])
    forward = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x)))
    contribution = jax.jit(lambda v, x: methods.contribution_map(model, v, x))
    return {"forward": _rate(lambda: forward(variables, x), args.infer_batch, args.steps,
                             args.repeats),
            "contribution": _rate(lambda: contribution(variables, x), args.infer_batch,
                                  args.steps, args.repeats)}


def host_input_rate(args, seconds: float = 2.0) -> float:
    """Clips/s of random crops from in-memory 30 s log-mels, batched and put on the device."""
    import jax
    import numpy as np

    from tagger_jax import chunking

    rng = np.random.default_rng(0)
    tracks = [rng.normal(size=(train_step.N_MELS, 1366)).astype(np.float32) for _ in range(64)]
    batch = args.infer_batch
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < (0.2 if args.small else seconds):
        crops = [chunking.random_crop(tracks[int(i)], args.frames, rng)
                 for i in rng.integers(0, len(tracks), batch)]
        jax.block_until_ready(jax.device_put(np.stack(crops, axis=0)))
        done += batch
    return done / (time.perf_counter() - start)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    dev = jax.devices()[0]
    print(f"gpu_bench: {jax.local_device_count()} x {dev.device_kind} ({dev.platform}), "
          f"jax {jax.__version__}, host {platform.node()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          + (", load %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else "")
          + (" [--small: tiny model, NOT a measurement]" if args.small else ""), flush=True)
    results = {"device": dev.device_kind, "platform": dev.platform, "small": args.small,
               "train": [], "inference": {}}
    if "train" in args.parts:
        print(f"{'train step':>12} {'dtype':>9} {'clips/s':>10} {'step ms':>9} {'of peak':>8} "
              f"{'compile s':>9}", flush=True)
    for dtype in ("float32", "bfloat16") if "train" in args.parts else ():
        for batch in args.train_batches:
            r = train_step.bench(batch, dtype, args, model=args.model)
            results["train"].append(r)
            frac = f"{100 * r['fraction_of_peak']:.1f}%" if r["fraction_of_peak"] else "n/a"
            print(f"{batch:>12} {dtype:>9} {r['clips_per_s']:>10.1f} {r['step_ms']:>9.1f} "
                  f"{frac:>8} {r['compile_s']:>9.1f}", flush=True)
    if "inference" in args.parts:
        print(f"{'inference':>12} {'dtype':>9} {'forward clips/s':>16} "
              f"{'contribution clips/s':>21}  (batch {args.infer_batch})", flush=True)
    for dtype in ("float32", "bfloat16") if "inference" in args.parts else ():
        r = inference_rates(args, dtype)
        results["inference"][dtype] = r
        print(f"{'':>12} {dtype:>9} {r['forward']:>16.1f} {r['contribution']:>21.1f}", flush=True)
    if "input" in args.parts:
        rate = host_input_rate(args)
        results["host_input_clips_per_s"] = rate
        print(f"host-side input (random crops + device_put, 1 process): {rate:.0f} clips/s; the "
              "grain pipeline (records, workers) is measured on CPU: benchmarks/input_pipeline.py",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
