"""Does the grain pipeline keep up with the train step? Crops/s by worker count vs. step clips/s.

    python benchmarks/input_pipeline.py [--config configs/synthetic_cpu.py] [--workers 0,1,2]
                                        [--crops-per-record 1,4]

Reads the `synthetic_tags` TFDS dataset (built into --data-dir by tagger_jax.datasets.ensure_built
if needed) through `tfds.data_source`, as training does. For each worker count it times
`input_pipeline.train_loader` alone (crops/s after the first batch, so worker start-up is
reported separately), then times a minimal jitted Adam step of the config's model on a fixed
batch (the consumption rate), then the same step fed by the pipeline (does it starve?). Prints a
table and the peak RSS of this process and of its largest worker process (ru_maxrss).
`--crops-per-record` times the pipeline alone for each value of `data.crops_per_record`, the
values interleaved within each worker count; the fed step uses the first value. `--rounds N`
repeats the pipeline-alone timings N times (every worker count and value in each round) and
prints the median [range] over the rounds and, per round, each value's rate over the first's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import runpy
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks._bench import cpu_name, positive_int, positive_ints  # noqa: E402  (path fix-up)
from tagger_jax import input_pipeline  # noqa: E402


def load_config(path: str):
    return runpy.run_path(path)["get_config"]()


def open_source(args, config, input_kind):
    """(source, tag names, description) of the benchmark's TFDS train split.

    Without --builder-config a small synthetic_tags config of --clips training clips is built
    (once, in --data-dir): the per-crop cost does not depend on the split's size.
    """
    try:
        from tagger_jax import datasets
        from tagger_jax.datasets.synthetic_tags import SyntheticConfig
    except ImportError as e:
        sys.exit(f"tagger_jax.datasets is not importable ({e}); the benchmark needs the TFDS "
                 "builders to read synthetic_tags as training does")
    builder_config = args.builder_config or None
    if builder_config is None and args.dataset == "synthetic_tags":
        seconds = f"{args.duration:g}".replace(".", "p")
        suffix = "_waveform" if input_kind == "audio" else ""
        builder_config = SyntheticConfig(
            name=f"bench_{args.clips}x{seconds}s{suffix}",
            num_train=args.clips, num_validation=1, num_test=1, duration_s=args.duration,
            waveform=input_kind == "audio",
            description="input pipeline benchmark")
    datasets.ensure_built(args.dataset, args.data_dir, builder_config=builder_config)
    source, tags = datasets.load_split(args.dataset, "train", args.data_dir,
                                       builder_config=builder_config)
    frames = np.asarray(source[0]["mel"]).shape[-1]
    name = getattr(builder_config, "name", builder_config) or "default"
    return source, tags, (f"{args.dataset}/{name} train: {len(source)} clips of {frames} frames "
                          f"(first clip), read through tfds.data_source")


def _children_peak_rss_mb() -> list[float]:
    """Peak RSS (VmHWM) of each live descendant process, in MB (Linux /proc; else empty),
    multiprocessing's resource tracker left out (a new user's trial read its 13 MB as a second
    worker's).

    Read while the workers are alive: `getrusage(RUSAGE_CHILDREN)` only sees finished children,
    and a child forked from this (large, JAX-holding) process reports the parent's RSS there.
    """
    if not os.path.isdir("/proc"):
        return []
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    mine, frontier = [], [os.getpid()]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        mine += kids
        frontier = kids
    peaks = []
    for pid in mine:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"resource_tracker" in f.read():
                    continue
            with open(f"/proc/{pid}/status") as f:
                peaks += [int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM")]
        except OSError:
            continue
    return peaks


def time_pipeline(source, *, batch_size, num_workers, num_batches, input_kind, prefetch,
                  threads, crops_per_record=1):
    """(seconds to the first batch, crops/s over the next `num_batches` batches, worker peak
    RSS in MB: one entry per live child process)."""
    loader = input_pipeline.train_loader(
        source, global_batch_size=batch_size, seed=0, num_workers=num_workers,
        worker_buffer_size=prefetch, read_threads=threads, input_kind=input_kind,
        local_device_count=1, crops_per_record=crops_per_record)
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    rate = num_batches * batch_size / (time.perf_counter() - start)
    workers_mb = _children_peak_rss_mb()
    it.close()
    return first, rate, workers_mb


def print_rounds(rates: dict, workers: list[int], values: list[int]) -> None:
    """Median [range] crops/s over the rounds per (workers, crops per record), and each value's
    rate over the first value's in the same round (median [range])."""
    def span(xs):
        return f"{statistics.median(xs):.1f} [{min(xs):.1f}-{max(xs):.1f}]"

    rounds = len(rates[workers[0], values[0]])
    print(f"\n| workers | crops per record | crops/s, median [range] over {rounds} round(s) "
          f"| / {values[0]} per record, per round |")
    print("|---:|---:|---:|---:|")
    for w in workers:
        for k in values:
            ratio = [a / b for a, b in zip(rates[w, k], rates[w, values[0]])]
            print(f"| {w} | {k} | {span(rates[w, k])} | {span(ratio) if k != values[0] else '-'} |")


def make_step(config, num_tags, batch_size, input_kind):
    """A jitted Adam step of the config's model, and a batch of the right shape."""
    import jax
    import jax.numpy as jnp
    import optax

    from tagger_jax.models import WAVEFORM_SAMPLES, build_model

    model = build_model(config.model, num_tags)
    shape = ((batch_size, 96, config.features.chunk_frames) if input_kind == "mel"
             else (batch_size, WAVEFORM_SAMPLES))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(-20, 10, shape).astype(np.float32))
    y = jnp.asarray((rng.random((batch_size, num_tags)) < 0.2).astype(np.float32))
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x[:1])
    tx = optax.adam(1e-4)
    state = (variables["params"], variables.get("batch_stats", {}), tx.init(variables["params"]))

    @jax.jit
    def step(state, x, y, key):
        params, batch_stats, opt_state = state

        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x,
                                          train=True, mutable=["batch_stats"],
                                          rngs={"dropout": key})
            return optax.sigmoid_binary_cross_entropy(logits, y).mean(), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    return step, state, x, y


def time_steps(step, state, batches, num_steps):
    """Clips/s of `num_steps` steps, each on the next (x, y) of `batches` (after a warm-up)."""
    import jax

    key = jax.random.key(0)
    x, y = next(batches)
    state, loss = step(state, x, y, key)  # compile
    loss.block_until_ready()
    start = time.perf_counter()
    for _ in range(num_steps):
        x, y = next(batches)
        state, loss = step(state, x, y, key)
    loss.block_until_ready()
    return num_steps * x.shape[0] / (time.perf_counter() - start)


def peak_rss_mb():
    to_mb = 1 / 1024 if platform.system() != "Darwin" else 1 / 2**20  # Linux: kB, macOS: bytes
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mb)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic_cpu.py")
    parser.add_argument("--dataset", default="synthetic_tags")
    parser.add_argument("--builder-config", default="", help="an existing TFDS builder config "
                        "(default: build a small synthetic_tags config of --clips clips)")
    parser.add_argument("--clips", type=int, default=256, help="training clips of the small "
                        "synthetic_tags config built for the benchmark")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per clip of that "
                        "config (29.1: MagnaTagATune-sized records of ~1,820 frames)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(),
                                                           "tagger_jax_bench_tfds"))
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--batch-size", type=int, default=0, help="default: the config's")
    parser.add_argument("--batches", type=int, default=30, help="batches timed per worker count")
    parser.add_argument("--steps", type=int, default=5, help="train steps timed")
    parser.add_argument("--prefetch", type=int, default=2, help="worker_buffer_size")
    parser.add_argument("--threads", type=int, default=1, help="read_threads per process")
    parser.add_argument("--crops-per-record", type=positive_ints, default="1",
                        help="data.crops_per_record values, comma-separated (e.g. 1,4)")
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="rounds of the pipeline-alone timings (medians and ranges)")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    batch_size = args.batch_size or config.train.batch_size
    for k in args.crops_per_record:
        if batch_size % k:
            parser.error(f"--crops-per-record {k} does not divide the batch size {batch_size}")
    input_kind = "audio" if config.model.architecture == "lee_won" else "mel"
    source, tags, described = open_source(args, config, input_kind)
    workers = [int(w) for w in args.workers.split(",")]
    print(f"data: {described}; batch {batch_size}; {os.cpu_count()} CPU cores ({cpu_name()}); "
          f"load average {os.getloadavg()[0]:.2f}")

    rows, rates = [], {}
    for r in range(args.rounds):
        for w in workers:
            for k in args.crops_per_record:
                first, rate, workers_mb = time_pipeline(
                    source, batch_size=batch_size, num_workers=w, num_batches=args.batches,
                    input_kind=input_kind, prefetch=args.prefetch, threads=args.threads,
                    crops_per_record=k)
                rates.setdefault((w, k), []).append(rate)
                if r == 0:  # the detailed table below is the first round's
                    rows.append({"workers": w, "crops_per_record": k, "first_batch_s": first,
                                 "crops_per_s": rate, "worker_peak_rss_mb": workers_mb,
                                 "main_peak_rss_mb": peak_rss_mb()[0]})
                per = f", {k} crops/record" if args.crops_per_record != [1] else ""
                print(f"  round {r + 1}: pipeline, {w} worker(s){per}: {rate:8.1f} crops/s "
                      f"(first batch after {first:.1f} s; worker peak RSS "
                      f"{', '.join(f'{m:.0f}' for m in workers_mb) or '-'} MB)", flush=True)
        print(f"  round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}",
              flush=True)
    if args.rounds > 1 or len(args.crops_per_record) > 1:
        print_rounds(rates, workers, args.crops_per_record)

    import jax
    step, state, x, y = make_step(config, len(tags), batch_size, input_kind)

    def fixed():
        while True:
            yield x, y

    step_rate = time_steps(step, state, fixed(), args.steps)
    print(f"  train step ({jax.default_backend()}, {config.model.architecture}): "
          f"{step_rate:8.1f} clips/s on a fixed batch")
    fed = {}
    for w in workers:
        loader = input_pipeline.train_loader(
            source, global_batch_size=batch_size, seed=0, num_workers=w,
            worker_buffer_size=args.prefetch, read_threads=args.threads,
            input_kind=input_kind, local_device_count=1,
            crops_per_record=args.crops_per_record[0])
        it = iter(loader)
        fed[w] = time_steps(step, state, ((b["x"], b["y"]) for b in it), args.steps)
        it.close()

    self_mb, child_mb = peak_rss_mb()
    print()
    batch_mb = batch_size * 4 * (96 * config.features.chunk_frames if input_kind == "mel"
                                 else input_pipeline.WAVEFORM_CROP) / 2**20
    print(f"| workers | crops per record | pipeline crops/s | x step rate | step clips/s fed by "
          f"pipeline ({args.crops_per_record[0]} per record) | first batch (s) "
          f"| peak RSS per worker (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        w = row["workers"]
        row["ratio_to_step"] = row["crops_per_s"] / step_rate
        row["fed_step_clips_per_s"] = fed[w]
        peaks = row["worker_peak_rss_mb"]
        print(f"| {w} | {row['crops_per_record']} | {row['crops_per_s']:.1f} "
              f"| {row['ratio_to_step']:.1f} | {fed[w]:.1f} | {row['first_batch_s']:.1f} "
              f"| {f'{max(peaks):.0f}' if w and peaks else '-'} |")
    print(f"\ntrain step alone: {step_rate:.1f} clips/s ({jax.default_backend()}); one batch of x "
          f"is {batch_mb:.1f} MB. Peak RSS (getrusage): this process {self_mb:.0f} MB (after the "
          f"pipeline runs alone: {rows[-1]['main_peak_rss_mb']:.0f} MB), largest finished child "
          f"{child_mb:.0f} MB (a child forked from this process counts its RSS)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": described, "batch_size": batch_size, "backend":
                       jax.default_backend(), "step_clips_per_s": step_rate, "rows": rows,
                       "peak_rss_mb": self_mb, "peak_child_rss_mb": child_mb}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
