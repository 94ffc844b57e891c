"""Where the forward pass spends its time: our pieces against the PyTorch twin's, interleaved.

    python benchmarks/forward_pieces.py [--batch 16] [--rounds 5]

Same weights (a random state dict with the authors' keys, imported into ours), eval mode, float32.
Pieces: the three groups of front-end branches (vertical 86-band, vertical 38-band, horizontal;
each with its convolution, BatchNorm, ReLU and, for the vertical ones, the max over frequency),
the whole front-end (with the 1x1 conv), the first encoder layer (all 257 queries), the last
encoder layer ([CLS] query only in ours; the authors' model runs it for all 257 queries, timed
as the twin's "last layer"), and the whole model. Each round times every piece of both
implementations once; medians and ranges over rounds are printed with the load average.
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

from benchmarks._bench import cpu_name, positive_int  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=positive_int, default=16, help="clips per forward pass")
    p.add_argument("--rounds", type=positive_int, default=5,
                   help="interleaved timed rounds (median and range)")
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    try:
        import torch
    except ModuleNotFoundError:
        print("error: forward_pieces.py times the model against its PyTorch twin: install the "
              'optional torch extra (pip install -e ".[torch]")', file=sys.stderr)
        return 2

    from benchmarks.torch_twin import build_twin, load_numpy_state_dict, random_state_dict
    from tagger_jax.authors import import_state_dict
    from tagger_jax.models import build_model
    from tagger_jax.models import frontends as fe
    from tagger_jax.models.transformer import EncoderLayer

    torch.set_num_threads(os.cpu_count())
    state = random_state_dict("training", 0)
    variables, config = import_state_dict(state, "training")
    model = build_model(config.model, 50)
    params, stats = variables["params"], variables["batch_stats"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 96, 256)).astype(np.float32)
    seq = rng.normal(size=(args.batch, 257, 512)).astype(np.float32)
    xj, seqj = jnp.asarray(x), jnp.asarray(seq)

    def vertical(height):
        branches = [(w, m * 16) for h, w, m in fe.VERTICAL_BRANCHES if h == height]
        conv = fe.VerticalBranches(height, [w for w, _ in branches], [f for _, f in branches])
        bn = fe.batch_norm(False, "bn")
        v = {"params": params["frontend"][f"vertical_{height}"]}
        b = {"params": params["frontend"][f"vertical_{height}_bn"],
             "batch_stats": stats["frontend"][f"vertical_{height}_bn"]}
        return jax.jit(lambda x: jnp.max(jax.nn.relu(bn.apply(b, conv.apply(v, x))), axis=1))

    hconv = fe.HorizontalBranches([w for w, _ in fe.HORIZONTAL_BRANCHES],
                                  [m * 16 for _, m in fe.HORIZONTAL_BRANCHES])
    hbn = fe.batch_norm(False, "bn")
    hv = {"params": params["frontend"]["horizontal"]}
    hb = {"params": params["frontend"]["horizontal_bn"],
          "batch_stats": stats["frontend"]["horizontal_bn"]}
    layer = EncoderLayer(8, 2048)
    first = {"params": params["encoder"]["layer_0"]}
    last = {"params": params["encoder"]["layer_1"]}
    pieces_ours = {
        "vertical 86 bands": (vertical(86), xj),
        "vertical 38 bands": (vertical(38), xj),
        "horizontal": (jax.jit(lambda x: jax.nn.relu(hbn.apply(hb, hconv.apply(hv, x.mean(1))))),
                       xj),
        "encoder layer 0": (jax.jit(lambda s: layer.apply(first, s, False)[0]), seqj),
        "last layer": (jax.jit(lambda s: layer.apply(last, s, False, cls_only=True)[0]), seqj),
        "whole model": (jax.jit(lambda x: model.apply(variables, x)), xj),
    }
    frontend = fe.PonsFrontEnd(16)
    fv = {"params": params["frontend"], "batch_stats": stats["frontend"]}
    dense = {"params": params["conv1x1"]}
    cbn = {"params": params["conv1x1_bn"], "batch_stats": stats["conv1x1_bn"]}
    bn512 = fe.batch_norm(False, "bn")
    proj = nn.Dense(512)
    pieces_ours["front-end + 1x1"] = (jax.jit(lambda x: jax.nn.relu(bn512.apply(
        cbn, proj.apply(dense, frontend.apply(fv, x))))), xj)

    twin = build_twin("training")
    load_numpy_state_dict(twin, state)
    twin.eval()
    xt, seqt = torch.from_numpy(x), torch.from_numpy(seq)
    fe_t = twin.front_end
    with torch.inference_mode():
        xbn = fe_t.input_bn(xt.unsqueeze(1))
    pieces_torch = {
        "vertical 86 bands": lambda: [fe_t.layers[i](xbn) for i in range(3)],
        "vertical 38 bands": lambda: [fe_t.layers[i](xbn) for i in range(3, 6)],
        "horizontal": lambda: [fe_t.layers[i](xbn.mean(2)) for i in range(6, 10)],
        "front-end + 1x1": lambda: fe_t(xt),
        "encoder layer 0": lambda: twin.back_end.encoder.layer[0](seqt),
        "last layer": lambda: twin.back_end.encoder.layer[1](seqt),
        "whole model": lambda: twin(xt),
    }
    order = ["vertical 86 bands", "vertical 38 bands", "horizontal", "front-end + 1x1",
             "encoder layer 0", "last layer", "whole model"]
    pieces_ours = {k: pieces_ours[k] for k in order}
    for f, a in pieces_ours.values():
        f(a).block_until_ready()
    with torch.inference_mode():
        for f in pieces_torch.values():
            f()
    times = {(k, who): [] for k in pieces_ours for who in ("ours", "twin")}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for k, (f, a) in pieces_ours.items():
            start = time.perf_counter()
            f(a).block_until_ready()
            times[k, "ours"].append(time.perf_counter() - start)
            with torch.inference_mode():
                start = time.perf_counter()
                pieces_torch[k]()
                times[k, "twin"].append(time.perf_counter() - start)
    print(f"forward_pieces: batch {args.batch} x 96 x 256, float32, {args.rounds} rounds, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, "
          f"{os.cpu_count()} cores, "
          f"load {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, jax {jax.__version__}, "
          f"torch {torch.__version__}")
    print(f"{'piece':20s} {'ours ms (range)':>24s} {'twin ms (range)':>24s} {'twin/ours':>10s}")
    for k in pieces_ours:
        o, t = times[k, "ours"], times[k, "twin"]
        ratio = statistics.median([b / a for a, b in zip(o, t)])
        print(f"{k:20s} {1e3 * statistics.median(o):8.1f} ({1e3 * min(o):6.1f}-{1e3 * max(o):6.1f})"
              f"  {1e3 * statistics.median(t):8.1f} ({1e3 * min(t):6.1f}-{1e3 * max(t):6.1f})"
              f" {ratio:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
