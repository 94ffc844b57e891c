"""Tags and explains a directory through the CLI in its own process; tests/test_inference_sharding.py
starts it with 1 or 4 forced host devices, or as one of two jax.distributed processes.

Usage: python tests/inference_worker.py MODEL_DIR INPUT_DIR OUT_DIR [--rerun]

The device count comes from XLA_FLAGS; a multi-process run from JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID (tagger_jax.sharding). Writes OUT_DIR/tags.json (tag) and
OUT_DIR/explain/ (explain), and prints one line "devices P N" first.
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
    print(f"rc {rc_tag} {rc_explain}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], "--rerun" in sys.argv[4:]))
