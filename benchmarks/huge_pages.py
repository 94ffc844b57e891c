"""The main job's training step with and without glibc's huge-page tunable, paired, on the CPU.

    python benchmarks/huge_pages.py [--rounds 5] [--steps 24] [--batch 16]

Why (tagger_jax/huge_pages.py): XLA:CPU gets its per-step buffers from glibc's malloc, which maps
allocations this large afresh each time, so every step faults its pages in again; with the
kernel's transparent huge pages in "madvise" mode that is 4 KiB at a time unless
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` asks for huge pages. glibc reads the tunable when a
process starts, so each measurement is its own process: in every round one process without the
tunable and one with it run in turn (the order alternates between rounds), each compiling the
main job's training step (`train_state.make_train_step` of configs/soundfont_cpu.py: the model,
AdamW, the frame loss, batch 16 of 128-frame chunks, random data) and timing `--steps` steps
after two warm-up steps. JAX's persistent compilation cache (a temporary directory, filled by
the first process) keeps compilation out of the later rounds' time; compilation is not timed.

Printed: per contender the median clips/s over rounds (range), the median minor page faults per
step and the kernel's share of the process's CPU time during the timed steps; the paired
ratio (per round, with its range); the load average before and after; and whether both
contenders' parameters after the timed steps are bitwise equal (they must be: only where the
buffers' pages come from changes). Needs the data stack's ml_collections for the config (a CPU
benchmark; the GPU machine has no such page faults to remove).

    python benchmarks/huge_pages.py --loop 2 [--rounds 3]

times the training loop itself instead: each process is train.py with the main job's config for
2 epochs in a fresh temporary workdir (data order, batches from the built `soundfont_tags`,
metrics, checkpoints; validation and test after training are not timed), its clips/s the median
of the training windows it logs in metrics.jsonl after the first (left out as warm-up; the
compiling step is in no window), and "bitwise equal" compares the final training loss (the
first process builds `soundfont_tags` into ~/tensorflow_datasets if it is not built yet). The
baseline process gets
`GLIBC_TUNABLES=glibc.malloc.hugetlb=0` (glibc's default), which also keeps train.py from
re-executing itself.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._bench import cpu_name  # noqa: E402

CONTENDERS = {"4 KiB pages (glibc default)": None,  # name: GLIBC_TUNABLES
              "huge pages (glibc.malloc.hugetlb=1)": "glibc.malloc.hugetlb=1"}


def child(steps: int, batch: int) -> dict:
    """One measurement in this process: the main job's train step, `steps` timed steps."""
    import hashlib

    import jax
    import numpy as np

    from tagger_jax import compilation_cache, optimizers, sharding, train_state
    from tagger_jax.config_base import config_file
    from tagger_jax.models import build_model

    compilation_cache.enable()  # the directory comes from the parent's environment
    config = config_file(ROOT / "configs" / "soundfont_cpu.py")
    frames, tags = config.features.chunk_frames, 18
    mesh = sharding.make_mesh(jax.local_devices())
    model = build_model(config.model, tags)
    tx, _ = optimizers.make_optimizer(config.train, total_steps=1000)
    state = train_state.init_train_state(model, tx, (96, frames), seed=0,
                                         prng_impl=config.train.prng_impl, mesh=mesh)
    step = train_state.make_train_step(model, tx, prng_impl=config.train.prng_impl, mesh=mesh,
                                       frame_loss_weight=config.train.frame_loss_weight)
    rng = np.random.default_rng(0)
    batch_data = sharding.shard_batch({
        "x": rng.normal(-40, 10, (batch, 96, frames)).astype(np.float32),
        "y": (rng.random((batch, tags)) > 0.7).astype(np.float32),
        "frames": (rng.random((batch, frames, tags)) > 0.7).astype(np.float32)}, mesh)
    for _ in range(2):  # compile (or load) and warm up
        state, metrics = step(state, batch_data)
    jax.block_until_ready(state)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, batch_data)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    leaves = jax.tree_util.tree_leaves(jax.device_get(state.params))
    digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in leaves)).hexdigest()
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return {"clips_per_s": batch / statistics.median(times),
            "faults_per_step": (after.ru_minflt - usage.ru_minflt) / steps,
            "kernel_share": (after.ru_stime - usage.ru_stime) / cpu if cpu else float("nan"),
            "digest": digest, "loss": float(metrics["loss"])}


def run_loop(tunable: str | None, args, cache: str) -> dict:
    """train.py for `args.loop` epochs of the main job in a temporary workdir."""
    env = dict(os.environ, TAGGER_JAX_COMPILATION_CACHE=cache,
               GLIBC_TUNABLES=tunable or "glibc.malloc.hugetlb=0")
    with tempfile.TemporaryDirectory() as workdir:
        subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                        str(ROOT / "configs" / "soundfont_cpu.py"), "--workdir", workdir,
                        f"--config.train.num_epochs={args.loop}",
                        f"--config.train.eval_every_epochs={args.loop}",
                        "--config.train.progress_bar=False", "--config.train.test_baseline=False",
                        "--config.train.test_after_training=False"],
                       env=env, check=True, capture_output=True, text=True)
        rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").open()]
    train = [r for r in rows if r.get("split") == "train" and "clips_per_second" in r]
    return {"clips_per_s": statistics.median(r["clips_per_second"] for r in train[1:]),
            "digest": repr(train[-1]["loss"])}


def run_child(tunable: str | None, args, cache: str) -> dict:
    if args.loop:
        return run_loop(tunable, args, cache)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["TAGGER_JAX_COMPILATION_CACHE"] = cache
    if tunable:
        env["GLIBC_TUNABLES"] = tunable
    out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps),
                          "--batch", str(args.batch)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(values: list[float], spec: str = ".1f") -> str:
    return (f"{statistics.median(values):{spec}} ({min(values):{spec}}-{max(values):{spec}})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=24, help="timed steps per process")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--loop", type=int, default=0, metavar="EPOCHS",
                   help="time train.py's loop for this many epochs instead of the bare step")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.steps, args.batch)))
        return 0
    from tagger_jax.huge_pages import thp_mode

    print(f"{cpu_name()}, {os.cpu_count()} cores, "
          f"{platform.libc_ver()[0]} {platform.libc_ver()[1]}, "
          f"transparent huge pages: {thp_mode()}, load {os.getloadavg()}")
    if args.loop:
        print(f"main job's training loop (train.py, configs/soundfont_cpu.py), {args.loop} "
              f"epochs per process, {args.rounds} rounds")
    else:
        print(f"main job's training step (configs/soundfont_cpu.py), batch {args.batch}, "
              f"{args.steps} timed steps per process, {args.rounds} rounds")
    names = list(CONTENDERS)
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as cache:
        run_child(None, argparse.Namespace(steps=1, batch=args.batch, loop=min(args.loop, 1)),
                  cache)  # fill the compilation cache
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                results[name].append(run_child(CONTENDERS[name], args, cache))
            print(f"round {r + 1}: " + ", ".join(
                f"{n.split(' (')[0]} {results[n][-1]['clips_per_s']:.1f} clips/s" for n in names),
                flush=True)
    print(f"{'contender':<38} {'clips/s, median (range)':>24}" + (
        "" if args.loop else f" {'faults/step':>12} {'kernel CPU':>11}"))
    for n in names:
        rows = results[n]
        print(f"{n:<38} {fmt([x['clips_per_s'] for x in rows]):>24}" + ("" if args.loop else (
            f" {statistics.median(x['faults_per_step'] for x in rows):>12.0f}"
            f" {100 * statistics.median(x['kernel_share'] for x in rows):>10.0f}%")))
    ratios = [b["clips_per_s"] / a["clips_per_s"] for a, b in zip(*results.values())]
    print(f"paired ratio (huge / default), per round: {fmt(ratios, '.2f')}")
    digests = {x["digest"] for rows in results.values() for x in rows}
    what = "final training loss" if args.loop else "parameters after the timed steps"
    print(f"{what} bitwise equal in every process: {len(digests) == 1}")
    print(f"load average after: {os.getloadavg()}")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
