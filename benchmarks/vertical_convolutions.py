"""Paired cost of the vertical (timbre) branches' formulations, alone and in the main job's step.

    python benchmarks/vertical_convolutions.py [--rounds 7] [--geometry main|paper]
                                                [--blocks 59,30,20,12,6] [--no-step]

The Pons front-end's vertical branches are single-input-channel 2-D convolutions of the log-mel
("valid" over the 96 mel bands, "same" over time), 38 and 86 bands tall, widths 7, 3 and 1 with
c, 2c and 4c channels. Contenders, on the same input and kernels:

* `xla`: `lax.conv_general_dilated` on the (B, F, T, 1) spectrogram, differentiated by JAX
  (what a plain Flax `nn.Conv` computes);
* `previous`: the formulation the project used before block-banded matmuls: the same direct
  convolution forward (time-major), and as its custom VJP the derivative of the row-gather +
  1-D convolution form (written out here, no longer in the package);
* `banded R`: `tagger_jax.models.frontends.vertical_convolutions` with R output rows per matmul
  block (R = rows: one banded matrix for all rows; the package's default is
  `VERTICAL_ROWS_PER_BLOCK`).

Part 1 times each branch height alone: forward, and the gradient of a loss through the branches
followed by the front-end's BatchNorm statistics, ReLU and maximum over rows (as the model uses
them), with respect to the input and the kernels. Part 2 (unless --no-step) times the forward
and backward pass of the main job's training loss (configs/soundfont_cpu.py's model and loss,
`tempo_branch_cost.main_job_loss`, batch 16 x 128 frames) with the package's formulation
against `previous`, substituted at trace time. Part 1 first checks every contender's forward
output and gradient against `xla`'s. Rounds interleave the contenders (each runs 3 times per
round, in an order that rotates from round to round); printed: median and range over rounds in
ms, the ratio to the package's default per round (median and range), the load average before
and after, and the device.

Geometry `main`: batch 16, 128 frames, c = 8 (the main job); `paper`: batch 16, 256 frames,
c = 16 (the authors' model).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GEOMETRIES = {"main": (16, 128, 8), "paper": (16, 256, 16)}  # batch, frames, c


def previous_formulation():
    """The direct-forward / row-gather-backward custom VJP the package used before."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    def gather(x, kernels):  # (B, F, T) -> (B, rows, T, sum f)
        height = kernels[0].shape[0]
        rows = x.shape[1] - height + 1
        index = np.arange(rows)[:, None] + np.arange(height)[None, :]
        patches = jnp.moveaxis(x[:, index], 2, 3)  # (B, rows, T, height)
        return jnp.concatenate([lax.conv_general_dilated(
            patches, jnp.transpose(k, (2, 1, 0, 3)), (1, 1),
            ((0, 0), (k.shape[1] // 2, k.shape[1] // 2)),
            dimension_numbers=("NHWC", "HWIO", "NHWC")) for k in kernels], axis=-1)

    def direct(x, kernels):
        xt = jnp.swapaxes(x, 1, 2)[..., None]  # (B, T, F, 1)
        return jnp.swapaxes(jnp.concatenate([lax.conv_general_dilated(
            xt, jnp.swapaxes(k, 0, 1), (1, 1), ((k.shape[1] // 2, k.shape[1] // 2), (0, 0)),
            dimension_numbers=("NHWC", "HWIO", "NHWC")) for k in kernels], axis=-1), 1, 2)

    @jax.custom_vjp
    def previous(x, kernels):
        return direct(x, kernels)

    def bwd(residuals, cotangent):
        return jax.vjp(gather, *residuals)[1](cotangent)

    previous.defvjp(lambda x, kernels: (direct(x, kernels), (x, kernels)), bwd)
    return previous


def xla_formulation(x, kernels):
    """(B, F, T) -> (B, rows, T, sum f) with `lax.conv_general_dilated` (NHWC / HWIO)."""
    import jax.numpy as jnp
    from jax import lax
    return jnp.concatenate([lax.conv_general_dilated(
        x[..., None], k, (1, 1), ((0, 0), (k.shape[1] // 2, k.shape[1] // 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")) for k in kernels], axis=-1)


def _interleave(runs: dict, rounds: int, reference: str) -> list[str]:
    """Time every run `rounds` times in turn (3 calls each; the order rotates by one each
    round, so no contender always runs first); table rows in ms and ratios."""
    times = {name: [] for name in runs}
    names = list(runs)
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            run = runs[name]
            start = time.perf_counter()
            for _ in range(3):
                run()
            times[name].append((time.perf_counter() - start) / 3 * 1e3)
    rows = []
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t, times[reference])]
        rows.append(f"| {name} | {statistics.median(t):.1f} | {min(t):.1f}-{max(t):.1f} | "
                    f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
    return rows


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--geometry", choices=tuple(GEOMETRIES), default="main")
    p.add_argument("--blocks", default="59,30,20,12,6",
                   help="rows per block of the banded contenders, comma-separated")
    p.add_argument("--no-step", action="store_true", help="skip part 2 (the main job's step)")
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from tagger_jax.models import frontends

    batch, frames, c = GEOMETRIES[args.geometry]
    blocks = [int(b) for b in args.blocks.split(",")]
    previous = previous_formulation()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 96, frames)), jnp.float32)
    print(f"vertical_convolutions: {jax.devices()[0].device_kind}, batch {batch} x 96 x {frames}, "
          f"c = {c}, {args.rounds} rounds, jax {jax.__version__}; load average {_load()}")
    for height in (38, 86):
        rows = 96 - height + 1
        kernels = tuple(jnp.asarray(rng.normal(size=(height, w, 1, m * c)) * 0.05, jnp.float32)
                        for h, w, m in frontends.VERTICAL_BRANCHES if h == height)
        contenders = {"xla": xla_formulation, "previous": previous}
        default_rows = min(frontends.VERTICAL_ROWS_PER_BLOCK, rows)
        for r in sorted({min(b, rows) for b in blocks} | {default_rows}, reverse=True):
            name = (f"banded {r}" + (" (all rows)" if r == rows else "")
                    + (" (default)" if r == default_rows else ""))
            contenders[name] = (lambda r: lambda x, k: frontends.vertical_convolutions(x, k, r))(r)
            if r == default_rows:
                default_name = name
        expected = np.asarray(xla_formulation(x, kernels))

        def head(f):  # the front-end's use: BatchNorm statistics, ReLU, maximum over rows
            def loss(x, kernels):
                y = f(x, kernels)
                mean = jnp.mean(y, (0, 1, 2))
                var = jnp.mean(jnp.square(y), (0, 1, 2)) - jnp.square(mean)
                z = jax.nn.relu((y - mean) * lax.rsqrt(var + 1e-5))
                return jnp.sum(jnp.sin(jnp.max(z, axis=1)))
            return loss

        runs_fwd, runs_grad = {}, {}
        expected_grad = jax.grad(head(xla_formulation), argnums=(0, 1))(x, kernels)
        for name, f in contenders.items():
            fwd, grad = jax.jit(f), jax.jit(jax.grad(head(f), argnums=(0, 1)))
            err = float(np.max(np.abs(np.asarray(fwd(x, kernels)) - expected)))
            assert err < 1e-3 * np.max(np.abs(expected)), (name, err)
            for a, b in zip(jax.tree_util.tree_leaves(grad(x, kernels)),
                            jax.tree_util.tree_leaves(expected_grad)):
                err = float(jnp.max(jnp.abs(a - b)))
                assert err < 1e-3 * float(jnp.max(jnp.abs(b))), (name, "gradient", err)
            runs_fwd[name] = (lambda fwd: lambda: jax.block_until_ready(fwd(x, kernels)))(fwd)
            runs_grad[name] = (lambda g: lambda: jax.block_until_ready(g(x, kernels)))(grad)
        for phase, runs in (("forward", runs_fwd), ("gradient", runs_grad)):
            print(f"\n{height}-band branches ({rows} rows), {phase}:\n"
                  f"| formulation | median ms | range | ratio to the default (range) |\n"
                  f"|---|---:|---|---|")
            print("\n".join(_interleave(runs, args.rounds, default_name)))
    if not args.no_step:
        print("\n" + "\n".join(main_job_step(args.rounds, previous)))
    print(f"\nload average {_load()}")
    return 0


def main_job_step(rounds: int, previous) -> list[str]:
    """Forward + backward of the main job's training loss, package formulation vs `previous`."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from benchmarks.tempo_branch_cost import main_job_loss
    from tagger_jax.config_base import config_file
    from tagger_jax.models import build_model, frontends

    config = config_file(ROOT / "configs" / "soundfont_cpu.py")
    frames, tags = config.features.chunk_frames, 18
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(-40, 10, (16, 96, frames)), jnp.float32)
    y = jnp.asarray(rng.random((16, tags)) > 0.7, jnp.float32)
    target = jnp.asarray(rng.random((16, frames, tags)) > 0.7, jnp.float32)
    model = build_model(config.model, tags)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)

    loss = main_job_loss(model, config, x, y, target)

    package = frontends.vertical_convolutions
    runs, grads = {}, {}
    for name, formulation in (("banded (the package)", package), ("previous", previous)):
        frontends.vertical_convolutions = formulation  # read by VerticalBranches when traced
        try:
            step = jax.jit(jax.value_and_grad(loss)).lower(
                variables["params"], variables["batch_stats"]).compile()
        finally:
            frontends.vertical_convolutions = package
        grads[name] = step(variables["params"], variables["batch_stats"])
        runs[name] = (lambda s: lambda: jax.block_until_ready(
            s(variables["params"], variables["batch_stats"])))(step)
    a, b = (jax.tree_util.tree_leaves(g) for g in grads.values())
    # Relative to the largest gradient entry of all: leaves whose exact gradient is 0 (biases
    # before a BatchNorm, the key bias) hold rounding noise only.
    worst = (max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(a, b))
             / max(float(jnp.max(jnp.abs(v))) for v in b))
    return [f"main job's training loss, forward + backward (batch 16 x {frames}; largest "
            f"gradient difference between the two, relative to the largest gradient entry: "
            f"{worst:.1e}):",
            "| formulation | median ms | range | ratio to the package (range) |",
            "|---|---:|---|---|",
            *_interleave(runs, rounds, "banded (the package)")]


if __name__ == "__main__":
    sys.exit(main())
