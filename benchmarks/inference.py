"""Inference throughput of the shared path (tagger_jax.inference): windows/s of `tag`, `embed` and
`explain` (contribution map) on 1, 2 and 4 forced host devices, and the persistent compilation
cache's effect on a `tagger-jax tag` run.

    python benchmarks/inference.py [--rounds 3] [--files 6] [--seconds 20] [--small | --config PATH]
                                   [--devices 1,2,4] [--platform cpu|gpu] [--no-cache-check]
                                   [--xla-flags "SET;SET..."]

One model directory (random weights, the paper's pons_won unless --small or --config, whose
`model` fields are used, e.g. configs/soundfont_cpu.py for the CPU main job's model) and one set
of synthetic log-mel inputs serve every run. Each (device count, XLA flag set, round) is a fresh
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N plus the set; device counts
and flag sets are interleaved within each round, and the table gives the median and range over
rounds. With more than one flag set (`--xla-flags`, sets separated by ';', the empty set meaning
XLA's defaults) the table adds each set's speed-up over the first, per round (median and range):
a paired comparison of XLA:CPU options on the commands' own path. In a subprocess every consumer is
warmed up (compiled) on one input before it is timed over all inputs; windows/s counts the windows
the consumer reports (tag, embed) or explains (explain), compile time excluded.

The cache check runs `tagger-jax tag` twice on the same files in fresh processes with an empty
cache directory (cold: compiles and writes the cache) then again (warm: loads the programs);
rounds pair the two. Forced host devices share the same CPU cores, so on a CPU they divide the
same work rather than add compute; the header prints the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._bench import cpu_name, positive_int, positive_ints  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="interleaved rounds (median and range)")
    p.add_argument("--files", type=positive_int, default=6, help="input files")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each input")
    p.add_argument("--devices", type=positive_ints, default="1,2,4",
                   help="forced host device counts")
    p.add_argument("--batch", type=positive_int, default=16, help="windows per batch (all devices)")
    p.add_argument("--small", action="store_true", help="a tiny model instead of the paper's")
    p.add_argument("--config", metavar="PATH", help="take the model from this config file")
    p.add_argument("--xla-flags", default="",
                   help="XLA flag sets to compare, separated by ';' (the empty set: defaults)")
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--no-cache-check", action="store_true", help="skip the first/second run")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "INPUTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seconds <= 0:
        p.error(f"--seconds must be above 0, got {args.seconds:g}")
    if args.config and not Path(args.config).is_file():
        p.error(f"--config {args.config}: no such file")
    return args


def make_setup(root: Path, args) -> tuple[Path, Path]:
    import jax
    import numpy as np

    from tagger_jax.checkpoint import save_model
    from tagger_jax.config_base import base_config
    from tagger_jax.models import build_model

    if args.config:
        from tagger_jax.config_base import config_file

        config = config_file(Path(args.config))
    else:
        config = base_config()
    if args.small:
        config.model.update(conv_channels=4, attention_channels=64, attention_heads=4,
                            intermediate=128)
    tags = [f"tag{i}" for i in range(50)]
    model = build_model(config.model, len(tags))
    chunk = int(config.features.chunk_frames)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 96, chunk), np.float32))
    model_dir = save_model(root / "model", variables, config, tags)
    inputs = root / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    frames = int(args.seconds * 16000 / 256)
    for i in range(args.files):
        np.save(inputs / f"x{i:03d}.npy", rng.normal(-30, 12, (96, frames)).astype(np.float32))
    return model_dir, inputs


def worker(model_dir: str, inputs: str, batch: int) -> dict:
    """Runs in a subprocess: windows/s of tag, embed and explain (contribution map)."""
    import jax

    from tagger_jax import checkpoint, embedding, tagging
    from tagger_jax.explain import runner

    loaded = checkpoint.load_model(model_dir)
    files = sorted(Path(inputs).glob("*.npy"))
    out: dict = {"devices": jax.local_device_count()}

    tagger = tagging.Tagger(loaded, batch_size=batch)
    tagger.tag(files[:1], progress=False)  # compile
    t0 = time.perf_counter()
    results = tagger.tag(files, progress=False)
    out["tag"] = sum(len(r["chunk_starts_s"]) for r in results) / (time.perf_counter() - t0)

    engine = tagger.engine
    items = engine.file_inputs(files)
    embedding.embed(engine, items[:1])
    t0 = time.perf_counter()
    e = embedding.embed(engine, items)
    out["embed"] = sum(len(w["window_starts_s"]) for w in e.windows) / (time.perf_counter() - t0)

    options = runner.ExplainOptions(methods=("contribution",), tags=("tag0", "tag1"),
                                    plot=False, batch_size=batch)
    with tempfile.TemporaryDirectory() as tmp:
        runner.explain_inputs(loaded, items[:1], Path(tmp) / "warm", options, progress=False,
                              log=None)
        t0 = time.perf_counter()
        runner.explain_inputs(loaded, items, Path(tmp) / "run", options, progress=False,
                              log=None)
        seconds = time.perf_counter() - t0
        windows = sum(json.loads(p.read_text())["num_chunks"]
                      for p in (Path(tmp) / "run").glob("*.json")
                      if p.name != "failures.json")
    out["explain"] = windows / seconds
    return out


def _env(devices: int, platform: str, flags: str = "", **extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=platform, **extra)
    if platform == "cpu":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {flags}".strip()
    elif flags:
        env["XLA_FLAGS"] = flags
    return env


KINDS = ("tag", "embed", "explain")


def _summary(values: list[float], digits: int = 1) -> str:
    return (f"{statistics.median(values):8.{digits}f} "
            f"[{min(values):.{digits}f}-{max(values):.{digits}f}]")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, args.batch)))
        return 0
    devices = list(args.devices)
    flag_sets = [f.strip() for f in args.xla_flags.split(";")] if args.xla_flags else [""]
    model = args.config or ("small" if args.small else "paper (pons_won)")
    print(f"load average at start: {os.getloadavg()}; {cpu_name()}, {os.cpu_count()} CPUs; "
          f"platform {args.platform}; model {model}; {args.files} files x {args.seconds:g} s; "
          f"batch {args.batch}; XLA flag sets {flag_sets}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, inputs = make_setup(root, args)
        runs = [(d, f) for d in devices for f in flag_sets
                if args.platform == "cpu" or d == devices[0]]
        rates: dict[tuple[int, str], dict[str, list[float]]] = {run: {} for run in runs}
        for r in range(args.rounds):
            for d, flags in runs:
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", str(model_dir), str(inputs),
                     "--batch", str(args.batch)],
                    env=_env(d, args.platform, flags, TAGGER_JAX_COMPILATION_CACHE="0"),
                    capture_output=True, text=True)
                if proc.returncode:
                    print(proc.stdout[-2000:], proc.stderr[-4000:])
                    return 1
                line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
                res = json.loads(line[7:])
                for k in KINDS:
                    rates[(d, flags)].setdefault(k, []).append(res[k])
        print(f"\nwindows/s, median [range] over {args.rounds} rounds "
              f"(load average now {os.getloadavg()[0]:.2f})")
        print(f"{'devices':>8} {'XLA flags':<40} {'tag':>22} {'embed':>22} "
              f"{'explain (contribution)':>24}")
        for d, flags in runs:
            print(f"{d:>8} {flags or '(defaults)':<40} "
                  + " ".join(f"{_summary(rates[(d, flags)][k]):>22}" for k in KINDS))
            if flags != flag_sets[0]:
                first = rates[(d, flag_sets[0])]
                ratios = [[b / a for a, b in zip(first[k], rates[(d, flags)][k])] for k in KINDS]
                print(f"{'':>8} {'  x over ' + (flag_sets[0] or '(defaults)'):<40} "
                      + " ".join(f"{_summary(x, 2):>22}" for x in ratios))
        if not args.no_cache_check:
            cold, warm = [], []
            for r in range(args.rounds):
                cache = root / f"cache{r}"
                cmd = [sys.executable, "-m", "tagger_jax.cli", "tag", "--checkpoint",
                       str(model_dir), str(inputs), "--quiet", "--batch-size", str(args.batch)]
                for bucket in (cold, warm):
                    t0 = time.perf_counter()
                    subprocess.run(cmd, env=_env(1, args.platform,
                                                 TAGGER_JAX_COMPILATION_CACHE=str(cache)),
                                   capture_output=True, check=True)
                    bucket.append(time.perf_counter() - t0)
            print(f"\n`tagger-jax tag` of the same {args.files} files, wall seconds, median "
                  f"[range] over {args.rounds} paired rounds (load average now "
                  f"{os.getloadavg()[0]:.2f})")
            print(f"  first run (empty cache): {_summary(cold)}")
            print(f"  second run (cache hit):  {_summary(warm)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
