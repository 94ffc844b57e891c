"""bfloat16 inference against float32: the largest deviation of every output and explanation map.

    python benchmarks/mixed_precision.py [--batch 4] [--ig-steps 16] [--json PATH]

One set of float32 parameters serves both runs: the model is built twice (`model.dtype` float32
and bfloat16; bfloat16 computes activations and matmuls in bfloat16, keeps BatchNorm statistics,
softmax, attention probabilities and the classifier in float32) and every method of
`tagger_jax.explain.methods` runs on the same input. The weights are a random state dict with the
authors' keys (`benchmarks/torch_twin.random_state_dict`: activations of order one, peaked
attention), imported into the paper model, on random log-mel input.

For each output: max |bf16 - f32| over every entry, the float32 scale (max |f32|) and their ratio.
Probabilities, attention, rollout and contribution maps are in [0, 1], so their absolute deviation
is the number to read; gradient attributions have the input's units, so read the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUTPUTS = ("probabilities", "attention", "rollout", "contribution", "grad_x_input",
           "integrated_gradients")


def explanation_outputs(model, variables, x, tags, ig_steps: int) -> dict[str, Any]:
    """Every output of interest for one model: probabilities and each explanation map."""
    import jax

    from tagger_jax.explain import methods

    @jax.jit
    def run(variables, x, tags):
        maps = methods.attention_maps(model, variables, x)
        return {
            "probabilities": jax.nn.sigmoid(maps["logits"]),
            "attention": maps["cls"],
            "rollout": methods.attention_rollout(maps["cls"], maps["full"]),
            "contribution": methods.contribution_map(model, variables, x),
            "grad_x_input": methods.grad_x_input(model, variables, x, tags),
            "integrated_gradients": methods.integrated_gradients(
                model, variables, x, tags, steps=ig_steps)["attribution"],
        }
    return jax.device_get(run(variables, x, tags))


def deviations(model_config: Mapping[str, Any], variables, x, tags, num_tags: int = 50,
               ig_steps: int = 8) -> dict[str, dict[str, float]]:
    """{output: {"max_abs_dev", "f32_scale", "relative"}} of bfloat16 against float32."""
    import numpy as np

    from tagger_jax.models import build_model

    outs = {dtype: explanation_outputs(build_model(dict(model_config, dtype=dtype), num_tags),
                                       variables, x, tags, ig_steps)
            for dtype in ("float32", "bfloat16")}
    result = {}
    for name in OUTPUTS:
        f32 = np.asarray(outs["float32"][name], np.float64)
        bf16 = np.asarray(outs["bfloat16"][name], np.float64)
        dev, scale = float(np.abs(bf16 - f32).max()), float(np.abs(f32).max())
        result[name] = {"max_abs_dev": dev, "f32_scale": scale, "relative": dev / scale}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--ig-steps", type=int, default=16, help="integrated-gradients intervals")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import numpy as np

    from benchmarks.torch_twin import random_state_dict
    from tagger_jax.authors import import_state_dict

    variables, config = import_state_dict(random_state_dict("training", seed=0), "training")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 96, 256)).astype(np.float32)
    tags = np.stack([rng.choice(50, 3, replace=False) for _ in range(args.batch)]).astype(np.int32)
    start = time.perf_counter()
    result = deviations(dict(config.model), variables, x, tags, ig_steps=args.ig_steps)
    print(f"mixed_precision: paper model, batch {args.batch} x 96 x 256, random authors-keyed "
          f"weights, {jax.devices()[0].platform}, jax {jax.__version__}, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}, {time.perf_counter() - start:.0f} s")
    print(f"{'output':22s} {'max |bf16 - f32|':>17s} {'f32 max |.|':>12s} {'relative':>9s}")
    for name, r in result.items():
        print(f"{name:22s} {r['max_abs_dev']:17.2e} {r['f32_scale']:12.2e} {r['relative']:9.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
