"""Seconds the training's validation and tests take at several evaluation batch sizes
(`train.eval_batch_size`, clips per batch, x `features.eval_chunks` windows), paired.

    python benchmarks/eval_batch.py [--config configs/soundfont_cpu.py] [--sizes 25,5]
                                    [--rounds 3] [--no-huge-pages]

What it times is the end of the main job: `validation.make_evaluate` (the training's own
evaluation path) on a validation split of 100 clips, then two test splits of 250 clips each,
in one fresh process, as train.py runs them after its last step. The records are random log-mels
of the main job's clip length (96 x 626 frames, float16 as stored) and the model has random
weights (the config's `model`): the work does not depend on the values. Each (size, round) is
a fresh subprocess, sizes interleaved within each round; the table gives the median and range
over rounds of each phase and of the three together, and each size's total as a ratio to the
first size's in the same round. The subprocesses run with glibc's transparent-huge-page tunable
(`tagger_jax.huge_pages.TUNABLE`), as train.py re-executes itself with it, unless
--no-huge-pages. Needs jax, flax, ml-collections, numpy and scikit-learn (the metrics); not
TFDS or grain.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._bench import cpu_name, positive_int, positive_ints  # noqa: E402

PHASES = (("validation", 100), ("test", 250), ("test_unseen", 250))  # the main job's splits
FRAMES = 626  # frames of a 10 s soundfont_tags clip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "soundfont_cpu.py"),
                   help="config file whose model and features are evaluated")
    p.add_argument("--sizes", type=positive_ints, default="25,5",
                   help="eval_batch_size values (clips per batch); ratios are to the first")
    p.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds")
    p.add_argument("--no-huge-pages", action="store_true",
                   help="run the subprocesses without glibc's huge-page tunable")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not Path(args.config).is_file():
        p.error(f"--config {args.config}: no such file")
    return args


def worker(config_path: str, size: int) -> dict:
    """Times the three evaluations in this process; returns {phase: seconds}."""
    import jax
    import numpy as np

    from tagger_jax import gm_score, sharding, validation
    from tagger_jax.config_base import config_file
    from tagger_jax.models import build_model, input_shape

    config = config_file(Path(config_path))
    config.train.eval_batch_size = size
    num_tags = len(gm_score.TAGS)  # soundfont_tags' tags
    model = build_model(config.model, num_tags)
    x = np.zeros((1, *input_shape(config.model, config.features.chunk_frames)), np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    evaluate = validation.make_evaluate(model, config, sharding.make_mesh(),
                                        [f"tag{i}" for i in range(num_tags)])
    rng = np.random.default_rng(0)
    seconds = {}
    for phase, clips in PHASES:
        source = [{"mel": rng.normal(-30, 15, (96, FRAMES)).astype(np.float16),
                   "tags": (rng.random(num_tags) < 0.3).astype(np.uint8),
                   "clip_id": f"{phase}-{i}".encode()} for i in range(clips)]
        start = time.perf_counter()
        evaluate(variables, source, phase)
        seconds[phase] = time.perf_counter() - start
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.config, args.worker)))
        return 0
    from tagger_jax.huge_pages import ENV, TUNABLE

    env = dict(os.environ)
    env.pop(ENV, None)
    if not args.no_huge_pages:
        env[ENV] = TUNABLE
    print(f"{cpu_name()}; {Path(args.config).name}; sizes {args.sizes} clips x eval_chunks; "
          f"{ENV}={env.get(ENV, '(unset)')}; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    times: dict[int, list[dict]] = {s: [] for s in args.sizes}
    for r in range(args.rounds):
        for size in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--config", args.config,
                                  "--worker", str(size)], env=env, capture_output=True,
                                 text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"eval_batch.py: worker for size {size} failed:\n{out.stderr[-2000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["total"] = sum(result[p] for p, _ in PHASES)
            times[size].append(result)
            print(f"round {r + 1}, size {size}: {result['total']:.1f} s", file=sys.stderr,
                  flush=True)
    first = args.sizes[0]
    columns = [p for p, _ in PHASES] + ["total"]
    print("| eval_batch_size | " + " | ".join(f"{c}, s" for c in columns)
          + f" | total / size {first}'s |")
    print("|---|" + "---|" * (len(columns) + 1))
    for size in args.sizes:
        cells = []
        for c in columns:
            v = [t[c] for t in times[size]]
            cells.append(f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})")
        ratio = [t["total"] / f["total"] for t, f in zip(times[size], times[first])]
        cells.append(f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})")
        print(f"| {size} | " + " | ".join(cells) + " |")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
