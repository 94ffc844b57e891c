"""Throughput of the full training step (the one train.py runs) on the current JAX backend.

    python benchmarks/train_step.py [--batch-sizes 16,64,256] [--dtypes float32,bfloat16]
                                    [--steps 20] [--repeats 3] [--json results.json]

For every batch size and compute dtype: clips/s of `train_state.make_train_step` (forward in train
mode with dropout and batch statistics, sigmoid BCE, backward, the authors' optimizer, data
parallel over all local devices), with the batch already on the devices, so the input pipeline
is not measured. Compilation and two warm-up steps are excluded; the median of `--repeats` timed
runs of `--steps` steps is reported.

FLOPs per clip are given two ways:
  * model: the paper model's own arithmetic (multiply-add = 2 FLOPs), counted from the layer
    shapes, forward x 3 for forward + backward. This is the numerator of the "fraction of peak"
    (model FLOPs utilisation).
  * XLA: the compiled step's own cost analysis per clip, for comparison (it also counts
    BatchNorm, softmax and optimizer arithmetic, and the horizontal front-end branches' kernels
    zero-padded to the widest width, tagger_jax/models/frontends.py).
Peak FLOP/s comes from a table of known accelerators (dense bf16 and TF32 tensor-core peaks) or
from --peak-tflops; float32 runs are compared with the TF32 peak, as XLA uses TF32 tensor cores
for float32 matmuls and convolutions on NVIDIA GPUs by default.

Needs only jax, flax, optax, orbax and numpy (no grain, ml_collections, librosa or tfds): the
config is a plain dict, which `build_model` and `make_optimizer` accept.
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

from benchmarks._bench import cpu_name, positive_int, positive_ints  # noqa: E402

# The paper config (configs/paper_mtat.py), as plain dicts: the GPU machine lacks ml-collections
# (tests/test_gpu_script.py checks that they match it).
PAPER_MODEL = {
    "architecture": "pons_won", "conv_channels": 16, "attention_channels": 512,
    "attention_layers": 2, "attention_heads": 8, "intermediate": 2048,
    "attention_dropout": 0.4, "hidden_dropout": 0.4, "classifier_dropout": 0.5,
    "cls_token": "fixed", "positions": "sinusoidal", "max_positions": 271, "frame_head": False,
    "frame_head_layer": 0, "frame_head_readout": "linear",
    "timbre_norm": "none", "tempo_features": "none", "tempo_hidden": 0, "dtype": "float32",
}
PAPER_TRAIN = {"optimizer": "authors", "learning_rate": 1e-4, "weight_decay": 1e-4,
               "sgd_learning_rates": (1e-3, 1e-4, 1e-5), "sgd_momentum": 0.9,
               "readout_lr_multiplier": 1.0}
NUM_TAGS = 50
N_MELS = 96

# Dense peak FLOP/s per device: (bfloat16, TF32 / float32 tensor cores). Matched on device_kind.
PEAKS = {
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),  # SXM; the PCIe card is lower (756 / 378)
    "A100": (312e12, 156e12),
    "L4": (121e12, 60e12),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=positive_ints, default="16,64,256",
                   help="global batch sizes, comma-separated")
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes, comma-separated")
    p.add_argument("--steps", type=positive_int, default=20, help="steps per timed run")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed runs; the median is reported")
    p.add_argument("--frames", type=positive_int, default=256, help="frames per chunk (paper: 256)")
    p.add_argument("--prng", default="threefry2x32", choices=("threefry2x32", "rbg", "unsafe_rbg"),
                   help="dropout PRNG (config.train.prng_impl)")
    p.add_argument("--optimizer", default="authors", choices=("authors", "adamw"))
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak in TFLOP/s (default: from the table for known GPUs)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


def model_flops_per_clip(model: dict, frames: int = 256, num_tags: int = NUM_TAGS) -> float:
    """Forward FLOPs of one chunk of the pons_won model, from its layer shapes (2 per MAC)."""
    from tagger_jax.models.frontends import HORIZONTAL_BRANCHES, VERTICAL_BRANCHES

    c, d = model["conv_channels"], model["attention_channels"]
    layers, ffn = model["attention_layers"], model["intermediate"]
    mac = 0
    for h, w, m in VERTICAL_BRANCHES:  # valid in frequency, same in time
        mac += (N_MELS - h + 1) * frames * (m * c) * h * w
    for w, m in HORIZONTAL_BRANCHES:  # 1-D over time on the frequency mean
        mac += frames * (m * c) * w
    channels = sum(m for *_, m in VERTICAL_BRANCHES) * c + sum(m for _, m in HORIZONTAL_BRANCHES) * c
    mac += frames * channels * d  # 1x1 conv
    n = frames + 1  # with [CLS]
    heads = model["attention_heads"]
    for i in range(layers - 1):
        mac += 3 * n * d * d  # Q, K, V over all positions
        mac += 2 * n * n * d  # scores and weighted sum
        mac += n * d * d + 2 * n * d * ffn  # attention output, feed-forward
    # The last layer: the [CLS] query only, folded into the key and value kernels
    # (transformer.SelfAttention): Q, W_k q, scores and weighted inputs per head, W_v, output.
    mac += 2 * d * d + 2 * heads * n * d + d * d + d * d + 2 * d * ffn
    mac += d * d + d * num_tags  # pooler, classifier
    return 2.0 * mac


def device_peak(kind: str, dtype: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for name, (bf16, tf32) in PEAKS.items():
        if name in kind:
            return bf16 if dtype == "bfloat16" else tf32
    return None


def bench(batch: int, dtype: str, args, model: dict | None = None) -> dict:
    """One (batch, dtype) row; `model` is a model config dict (default: the paper's)."""
    import jax
    import numpy as np

    from tagger_jax import optimizers, sharding, train_state  # none needs the data stack
    from tagger_jax.models import build_model

    mesh = sharding.make_mesh(jax.local_devices())
    if batch % mesh.devices.size:
        raise ValueError(f"batch {batch} does not split over {mesh.devices.size} devices")
    model_cfg = dict(model or PAPER_MODEL, dtype=dtype)
    train_cfg = dict(PAPER_TRAIN, optimizer=args.optimizer, warmup_steps=100)
    model = build_model(model_cfg, NUM_TAGS)
    tx, _ = optimizers.make_optimizer(train_cfg, total_steps=10_000)
    state = train_state.init_train_state(model, tx, (N_MELS, args.frames), seed=0,
                                         prng_impl=args.prng, mesh=mesh)
    step = train_state.make_train_step(model, tx, prng_impl=args.prng, mesh=mesh)
    rng = np.random.default_rng(0)
    data = sharding.shard_batch({
        "x": rng.normal(-20, 20, (batch, N_MELS, args.frames)).astype(np.float32),
        "y": (rng.random((batch, NUM_TAGS)) < 0.1).astype(np.float32)}, mesh)

    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    for _ in range(2):  # warm-up
        state, metrics = step(state, data)
    jax.block_until_ready(state)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, data)
        jax.block_until_ready((state, metrics))
        rates.append(batch * args.steps / (time.perf_counter() - start))
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss} at batch {batch} {dtype}")

    flops_model = 3 * model_flops_per_clip(model_cfg, args.frames)
    clips_s = statistics.median(rates)
    peak = device_peak(jax.devices()[0].device_kind, dtype, args.peak_tflops)
    total_peak = peak * mesh.devices.size if peak else None
    return {
        "batch": batch, "dtype": dtype, "clips_per_s": clips_s,
        "step_ms": 1e3 * batch / clips_s, "compile_s": compile_s,
        "model_flops_per_clip": flops_model,
        "xla_flops_per_clip": xla_flops * mesh.devices.size / batch,  # cost analysis is per device
        "achieved_tflops": clips_s * flops_model / 1e12,
        "fraction_of_peak": clips_s * flops_model / total_peak if total_peak else None,
        "devices": mesh.devices.size,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    batches = list(args.batch_sizes)
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    dev = jax.devices()[0]
    header = (f"backend {jax.default_backend()}, {jax.local_device_count()} x {dev.device_kind}, "
              f"jax {jax.__version__}, host {platform.node()}, {cpu_name()}, "
              f"load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    print(header)
    print(f"paper model pons_won c=16, 512 x 2 layers, {args.frames} frames, "
          f"optimizer {args.optimizer}, dropout PRNG {args.prng}")
    print(f"{'batch':>6} {'dtype':>9} {'clips/s':>10} {'step ms':>9} {'model GFLOP/clip':>17} "
          f"{'XLA GFLOP/clip':>15} {'TFLOP/s':>8} {'of peak':>8} {'compile s':>9}")
    results = []
    for dtype in dtypes:
        for batch in batches:
            r = bench(batch, dtype, args)
            results.append(r)
            frac = f"{100 * r['fraction_of_peak']:.1f}%" if r["fraction_of_peak"] else "n/a"
            print(f"{batch:>6} {dtype:>9} {r['clips_per_s']:>10.1f} {r['step_ms']:>9.1f} "
                  f"{r['model_flops_per_clip'] / 1e9:>17.2f} {r['xla_flops_per_clip'] / 1e9:>15.2f} "
                  f"{r['achieved_tflops']:>8.2f} {frac:>8} {r['compile_s']:>9.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
