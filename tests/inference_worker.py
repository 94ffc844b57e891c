"""Tags and explains a directory through the CLI in its own process; tests/test_inference_sharding.py
starts it with 1 or 4 forced host devices, or as one of two jax.distributed processes.

Usage: python tests/inference_worker.py MODEL_DIR INPUT_DIR OUT_DIR [--rerun | --differ]

The device count comes from XLA_FLAGS; a multi-process run from JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID (tagger_jax.sharding). Writes OUT_DIR/tags.json (tag),
OUT_DIR/explain/ (explain) and, unless --rerun, OUT_DIR/evaluate/ (evaluate of a split made of
the directory's .npy files, labelled by `labels`), and prints one line "devices P N" first.
With --differ, each command is given an option that differs on process 1 (`differing`).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(model_dir: str, inputs: str, out: str, rerun: bool) -> int:
    from tagger_jax import sharding

    sharding.maybe_initialize_distributed()
    import jax

    from tagger_jax import cli

    print(f"devices {jax.process_index()} {jax.device_count()} {jax.local_device_count()}",
          flush=True)
    tag = ["tag", "--checkpoint", model_dir, inputs, "--output", f"{out}/tags.json", "--quiet",
           "--batch-size", "4", "--hop", "0.2"]
    rc_tag = cli.main(tag + (["--resume"] if rerun else []))
    rc_explain = cli.main(["explain", "--checkpoint", model_dir, inputs, "--out",
                           f"{out}/explain", "--methods", "attention,contribution", "--top-k",
                           "2", "--batch-size", "4", "--no-plot", "--no-progress"])
    rc_evaluate = "-" if rerun else evaluate(model_dir, inputs, out)
    print(f"rc {rc_tag} {rc_explain} {rc_evaluate}", flush=True)
    return 0


def labels(k: int, num_tags: int):
    """Record k's tags: every tag both present and absent over the split (ROC-AUC defined)."""
    import numpy as np

    return np.array([(k >> t) & 1 for t in range(num_tags)], np.uint8)


def evaluate(model_dir: str, inputs: str, out: str) -> int:
    """`tagger-jax evaluate` of an in-memory split standing in for a built dataset: the .npy
    log-mels under INPUT_DIR in sorted order, record k labelled `labels(k)`."""
    from pathlib import Path

    import numpy as np

    from tagger_jax import checkpoint, cli, datasets

    tags = list(checkpoint.load_model(model_dir).tags)
    files = sorted(Path(inputs).rglob("*.npy"))
    records = [{"mel": np.load(f).astype(np.float16), "tags": labels(k + 1, len(tags))}
               for k, f in enumerate(files)]
    datasets.load_split = lambda *a, **k: (records, tags)
    return cli.main(["evaluate", "--checkpoint", model_dir, "--dataset", "magnatagatune",
                     "--out", f"{out}/evaluate", "--batch-size", "2", "--num-chunks", "3"])


def differing(model_dir: str, inputs: str, out: str) -> int:
    """Each command with an option that differs on process 1 (--hop, --out, --methods, --split):
    prints "rc" and the four exit statuses, which should all be 2 (usage), before any work."""
    from tagger_jax import sharding

    sharding.maybe_initialize_distributed()
    import jax

    from tagger_jax import cli

    p = jax.process_index()
    rcs = [cli.main(["tag", "--checkpoint", model_dir, inputs, "--output", f"{out}/tags.json",
                     "--quiet", "--hop", f"0.{2 + p}"]),
           cli.main(["embed", "--checkpoint", model_dir, inputs, "--out", f"{out}/embed{p}"]),
           cli.main(["explain", "--checkpoint", model_dir, inputs, "--out", f"{out}/explain",
                     "--methods", "attention" if p else "contribution", "--no-progress"]),
           cli.main(["evaluate", "--checkpoint", model_dir, "--dataset", "magnatagatune",
                     "--split", "test" if p else "validation", "--out", f"{out}/evaluate"])]
    print("rc " + " ".join(map(str, rcs)), flush=True)
    return 0


if __name__ == "__main__":
    if "--differ" in sys.argv[4:]:
        sys.exit(differing(*sys.argv[1:4]))
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], "--rerun" in sys.argv[4:]))
