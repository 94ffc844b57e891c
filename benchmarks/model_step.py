"""Paired forward and train-step throughput: our model against PyTorch versions of the authors' model.

    python benchmarks/model_step.py [--authors PATH] [--batches 16,64] [--rounds 5] [--steps 1]
                                    [--contenders ours,twin,twin_compiled,authors,authors_compiled]
                                    [--device cpu|gpu] [--precision float32|tf32]

Contenders (all on the same weights: one random state dict with the authors' keys, imported into
ours with `tagger_jax.authors`; the same input, batch x 96 x 256 log-mel chunks):

* `ours`: our jitted model (`--dtype`, float32 by default).
* `twin`, `twin_compiled`: `benchmarks/torch_twin.py` (our PyTorch re-creation), eager and under
  `torch.compile`.
* `authors`, `authors_compiled`: the authors' own `MTSA` model from a checkout of their repository
  (`--authors PATH`, the folder holding `training/model.py`; never copied into this project),
  eager and under `torch.compile`. Their `VerticalConv.forward` sizes its max-pool from the input
  height, which current PyTorch rejects; the benchmark replaces that one method at run time with
  the same max-pool sized from the conv output (the behaviour they trained). Two of their
  tables are plain tensors on the host, which their code copies to the input's device at every
  call: the 32-row [CLS] buffer ("maximum batch size is 32"; `append_cls`) and the sinusoidal
  position table (`PositionalEncoding.forward` expands it to the batch first, so on a GPU each
  call materialises and copies batch x 257 x 512 floats, 135 MB at batch 256). The benchmark
  places both on the device once, at run time and without touching their code (on a CPU that
  changes nothing), and sets the [CLS] buffer to the same vector repeated for the batch when the
  batch is larger than 32. The strongest version of their model is the baseline, not its
  copies.

Work per step: forward = eval mode, no gradients (`torch.inference_mode`), logits -> sigmoid for
the authors' model (their forward ends with a sigmoid). Train step = forward in train mode
(dropout, batch statistics), binary cross-entropy, backward, Adam (lr 1e-4) update; the authors'
model trains with BCELoss on its sigmoid outputs, exactly as their solver does.

Pairing: compilation and one warm-up step per contender and phase come first; then `--rounds`
rounds, each timing every contender once (forward, then train step) in turn, so load on a shared
machine hits every contender alike. A timing is `--steps` calls in a row, then one wait for the
last result, as a loop over batches runs (JAX and CUDA queue work without waiting). Reported:
clips/s as the median over rounds, with the range (slowest-fastest round), and each contender's
ratio to `ours` per round (median and range). The load average is printed before and after.
torch uses all cores (torch.set_num_threads), as XLA does.

`--device gpu` runs every contender on the first GPU (JAX's default backend; torch's "cuda"), with
JAX's memory preallocation lowered to 45% so that torch has room in the same process.
`--precision` sets the float32 matmul and convolution precision of both frameworks alike:
`float32` (full precision: `jax_default_matmul_precision="float32"`; torch's
`set_float32_matmul_precision("highest")`, cuDNN TF32 off) or `tf32` (TensorFloat-32 on GPUs that
have it: JAX's "tensorfloat32"; torch "high", cuDNN TF32 on; GPU only). Each framework's own
default mixes the two on a GPU (JAX takes TF32 for both; torch TF32 for convolutions only), so the
benchmark never leaves it to them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._bench import cpu_name, positive_int, positive_ints  # noqa: E402

CONTENDERS = ("ours", "twin", "twin_compiled", "authors", "authors_compiled")
PHASES = ("forward", "train_step")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", metavar="PATH",
                   help="checkout of github.com/minzwon/self-attention-music-tagging (optional)")
    p.add_argument("--batches", type=positive_ints, default="16",
                   help="batch sizes, comma-separated (authors: 16)")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved timed rounds")
    p.add_argument("--steps", type=positive_int, default=1, help="steps per contender per round")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="our compute dtype (the torch models always run float32)")
    p.add_argument("--variant", choices=("training", "released"), default="training",
                   help="training: the paper config (c = 16); released: c = 8, learned positions")
    p.add_argument("--frames", type=positive_int, default=256, help="frames per chunk")
    p.add_argument("--phases", default=",".join(PHASES), help="forward,train_step (or one)")
    p.add_argument("--compiled-phases", default=",".join(PHASES),
                   help="phases timed for the torch.compile contenders (compiling the train "
                        "step's backward takes minutes on 2 cores)")
    p.add_argument("--contenders", default=None,
                   help="comma-separated subset of " + ",".join(CONTENDERS) + " (default: all "
                        "that can run here: the authors' need --authors, the torch ones torch)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="where every contender runs (gpu: JAX's GPU backend and torch's cuda)")
    p.add_argument("--precision", choices=("float32", "tf32"), default="float32",
                   help="float32 matmul/convolution precision of both frameworks alike")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.explicit = args.contenders is not None  # asked for by name: each must run
    args.contenders = args.contenders or ",".join(CONTENDERS)
    args.phases = [s for s in args.phases.split(",") if s]
    if not args.phases:
        p.error("--phases: give at least one of " + ", ".join(PHASES))
    if args.precision == "tf32" and args.device == "cpu":
        p.error("--precision tf32 needs --device gpu (on a CPU both frameworks compute in float32)")
    args.compiled_phases = [s for s in args.compiled_phases.split(",") if s in args.phases]
    args.contenders = [s for s in args.contenders.split(",") if s]
    for name in args.contenders:
        if name not in CONTENDERS:
            p.error(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")
    for name in args.phases:
        if name not in PHASES:
            p.error(f"unknown phase {name!r}; choose from {', '.join(PHASES)}")
    if "ours" not in args.contenders:
        p.error("'ours' must be among the contenders (ratios are to ours)")
    if any(c.startswith("authors") for c in args.contenders) and not args.authors:
        if args.explicit:
            p.error("the authors' contenders need --authors PATH (a checkout of "
                    "github.com/minzwon/self-attention-music-tagging)")
        args.contenders = [c for c in args.contenders if not c.startswith("authors")]
    if args.variant == "released" and any(c.startswith("authors") for c in args.contenders):
        p.error("the authors' training code builds the 'training' variant only: use --variant "
                "training, or leave the authors' contenders out")
    if args.authors and not (Path(args.authors) / "training" / "model.py").is_file():
        p.error(f"{args.authors}: not a checkout of the authors' repository "
                "(no training/model.py)")
    return args


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# ------------------------------------------------------------------------------ contenders
# Each builder returns {"forward": fn, "train_step": fn, "sync": fn, "probs": (B, tags) eval
# sigmoid outputs}: forward and train_step queue one step's work, sync waits for the last one.


def build_ours(args, state, x, y) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from tagger_jax.authors import import_state_dict
    from tagger_jax.models import build_model

    variables, config = import_state_dict(state, args.variant)
    config.model.dtype = args.dtype
    model = build_model(config.model, 50)
    variables = jax.device_put(variables)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    last = [None]  # the newest result, for `sync`
    forward = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x)))
    tx = optax.adam(1e-4)

    def loss_fn(params, batch_stats, x, y, key):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"], rngs={"dropout": key})
        return optax.sigmoid_binary_cross_entropy(logits, y).mean(), updates["batch_stats"]

    @jax.jit
    def train_step(train_state, x, y, step):
        params, batch_stats, opt_state, key = train_state
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, y, jax.random.fold_in(key, step))
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state, key), loss

    holder = [(variables["params"], variables["batch_stats"], tx.init(variables["params"]),
               jax.random.key(0)), 0]

    def one_forward():
        last[0] = forward(variables, xj)

    def one_train_step():
        holder[1] += 1
        holder[0], last[0] = train_step(holder[0], xj, yj, holder[1])

    return {"forward": one_forward, "train_step": one_train_step,
            "sync": lambda: jax.block_until_ready(last[0]),
            "probs": np.asarray(forward(variables, xj))}


def _torch_fns(model, x, y, compiled: bool, outputs_probs: bool, device: str) -> dict:
    """forward / train_step closures for a torch module mapping (B, 96, T) to logits or probs."""
    import torch
    import torch.nn.functional as F

    model.to(device)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    run = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    to_probs = (lambda o: o) if outputs_probs else torch.sigmoid
    loss_of = F.binary_cross_entropy if outputs_probs else F.binary_cross_entropy_with_logits

    def forward():
        model.eval()
        with torch.inference_mode():
            return to_probs(run(xt))

    def train_step():
        model.train()
        loss = loss_of(run(xt), yt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return {"forward": forward, "train_step": train_step, "sync": sync,
            "probs": forward().detach().cpu().numpy().copy()}


def build_twin(args, state, x, y, compiled: bool) -> dict:
    from benchmarks.torch_twin import build_twin as make, load_numpy_state_dict

    model = make(args.variant)
    load_numpy_state_dict(model, state)
    return _torch_fns(model, x, y, compiled, outputs_probs=False, device=torch_device(args))


def _vertical_conv_forward(self, x):
    """The authors' VerticalConv.forward with the max-pool sized from the conv OUTPUT's height.

    Their committed code sizes it from the input height (96), which current PyTorch rejects
    ("Output size is too small"); the trained behaviour is the max over the remaining rows.
    """
    import torch.nn as nn

    out = self.relu(self.bn(self.conv(x)))
    rows = out.size(2)
    return nn.MaxPool2d((rows, 1), stride=(rows, 1))(out).squeeze(2)


def build_authors(args, state, x, y, compiled: bool) -> dict:
    import torch

    if args.variant != "training":
        raise SystemExit("the authors' training code builds the 'training' variant only")
    training = str(Path(args.authors).resolve() / "training")
    if training not in sys.path:
        sys.path.insert(0, training)
    from model import MTSA  # the authors' module, from their checkout
    from front_end import pons_conv

    pons_conv.VerticalConv.forward = _vertical_conv_forward

    model = MTSA(architecture="pons_won", conv_channels=16, attention_channels=512,
                 attention_layers=2, attention_heads=8, attention_length=x.shape[2] + 1,
                 num_class=50, batch_size=x.shape[0], attention_dropout=0.4, fc_dropout=0.5,
                 is_cuda=False)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                          strict=True)
    if x.shape[0] > model.vec_cls.shape[0]:  # their buffer holds 32 rows of the same vector
        model.vec_cls = model.vec_cls[:1].repeat(x.shape[0], 1, 1)
    # Plain tensors, not buffers, so .to(device) skips them (module docstring).
    model.vec_cls = model.vec_cls.to(torch_device(args))
    positions = model.back_end.embedding
    positions.position_enc = positions.position_enc.to(torch_device(args))
    return _torch_fns(model, x, y, compiled, outputs_probs=True, device=torch_device(args))


def torch_device(args) -> str:
    return "cuda" if args.device == "gpu" else "cpu"


def set_precision(args, torch_module) -> None:
    """The same float32 matmul and convolution precision for JAX and torch (module docstring)."""
    import jax

    tf32 = args.precision == "tf32"
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "float32")
    if torch_module is not None:
        torch_module.set_float32_matmul_precision("high" if tf32 else "highest")
        torch_module.backends.cuda.matmul.allow_tf32 = tf32
        torch_module.backends.cudnn.allow_tf32 = tf32


def build(name: str, args, state, x, y) -> dict:
    if name == "ours":
        return build_ours(args, state, x, y)
    if name.startswith("twin"):
        return build_twin(args, state, x, y, compiled=name.endswith("compiled"))
    return build_authors(args, state, x, y, compiled=name.endswith("compiled"))


# ------------------------------------------------------------------------------ timing


def phases_of(args, name: str) -> list[str]:
    return args.compiled_phases if name.endswith("compiled") else args.phases


def run_batch(args, batch: int, names: list[str]) -> dict:
    from benchmarks.torch_twin import random_state_dict

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 96, args.frames)).astype(np.float32)
    y = (rng.random((batch, 50)) < 0.1).astype(np.float32)
    state = random_state_dict(args.variant, seed=0)
    if any(name.endswith("compiled") for name in names):
        import torch  # forget earlier batch sizes: a second shape compiles with dynamic shapes

        torch._dynamo.reset()
    fns, warm_s = {}, {}
    for name in names:
        start = time.perf_counter()
        fns[name] = build(name, args, state, x, y)
        for phase in phases_of(args, name):  # compilation + one warm-up step
            fns[name][phase]()
            fns[name]["sync"]()
        warm_s[name] = time.perf_counter() - start
        print(f"  {name}: built, compiled and warmed up in {warm_s[name]:.0f} s", flush=True)
    times = {(n, p): [] for n in names for p in phases_of(args, n)}
    load_before = load_average()
    for r in range(args.rounds):
        for name in names:
            for phase in phases_of(args, name):
                start = time.perf_counter()
                for _ in range(args.steps):
                    fns[name][phase]()
                fns[name]["sync"]()
                times[name, phase].append((time.perf_counter() - start) / args.steps)
        print(f"  round {r + 1}/{args.rounds} done, load {load_average():.2f}", flush=True)
    load_after = load_average()
    result = {"batch": batch, "load_before": load_before, "load_after": load_after,
              "warmup_s": warm_s, "contenders": {}}
    for name in names:
        entry = {"max_abs_prob_diff_to_ours": float(np.abs(fns[name]["probs"]
                                                           - fns["ours"]["probs"]).max())}
        for phase in phases_of(args, name):
            t = times[name, phase]
            ratio = [tn / to for tn, to in zip(t, times["ours", phase])]  # ours' speed-up
            entry[phase] = {"seconds": t, "clips_per_s": batch / statistics.median(t),
                            "clips_per_s_range": (batch / max(t), batch / min(t)),
                            "ours_speedup": statistics.median(ratio),
                            "ours_speedup_range": (min(ratio), max(ratio))}
        result["contenders"][name] = entry
    return result


def print_table(args, res: dict) -> None:
    b = res["batch"]
    print(f"\nbatch {b}: load average {res['load_before']:.2f} before, "
          f"{res['load_after']:.2f} after the timed rounds; {args.rounds} rounds x {args.steps} "
          "step(s)")
    head = f"{'contender':18s}"
    for phase in args.phases:
        head += f" | {phase + ' clips/s (range)':>27s} {'ours x (range)':>19s}"
    print(head + f" | {'max|dp|':>8s}")
    for name, e in res["contenders"].items():
        row = f"{name:18s}"
        for phase in args.phases:
            if phase not in e:
                row += f" | {'not timed':>27s} {'':>19s}"
                continue
            p = e[phase]
            lo, hi = p["clips_per_s_range"]
            slo, shi = p["ours_speedup_range"]
            row += (f" | {p['clips_per_s']:8.2f} ({lo:6.2f}-{hi:6.2f})    "
                    f"{p['ours_speedup']:5.2f} ({slo:4.2f}-{shi:4.2f})")
        print(row + f" | {e['max_abs_prob_diff_to_ours']:8.1e}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    else:  # JAX preallocates 75% of the GPU by default; leave torch room in this process
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
    import platform

    import jax

    names = list(args.contenders)
    try:
        import torch

        torch.set_num_threads(os.cpu_count())
        torch_version = torch.__version__
    except ImportError:
        if args.explicit and names != ["ours"]:
            print(f"error: contenders {', '.join(n for n in names if n != 'ours')} need torch "
                  "(pip install -e \".[torch]\")", file=sys.stderr)
            return 2
        print("torch is not installed: timing our model only", file=sys.stderr)
        names, torch, torch_version = ["ours"], None, None
    if args.device == "gpu":
        if jax.devices()[0].platform != "gpu":
            print(f"error: --device gpu, but JAX's default backend is {jax.devices()[0].platform}",
                  file=sys.stderr)
            return 2
        if torch is not None and not torch.cuda.is_available():
            print("error: --device gpu, but torch sees no CUDA device", file=sys.stderr)
            return 2
        set_precision(args, torch)  # on a CPU both compute in float32: its defaults stay
    device = jax.devices()[0].device_kind if args.device == "gpu" else cpu_name()
    print(f"model_step: pons_won {args.variant} variant, 96 x {args.frames} chunks, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, host {platform.node()}, "
          f"{device}, {os.cpu_count()} CPU cores, "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), "
          f"torch {torch_version}, ours in {args.dtype}, {args.precision} matmuls, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"contenders: {', '.join(names)}")
    print("'ours x' = our speed-up over the contender, per round (median and range); "
          "max|dp| = max |probability difference| to ours on the same weights and input")
    results = []
    for batch in args.batches:
        print(f"batch {batch}:", flush=True)
        res = run_batch(args, batch, names)
        print_table(args, res)
        results.append(res)
    if args.json:
        meta = {k: v for k, v in vars(args).items()}
        Path(args.json).write_text(json.dumps({"args": meta, "torch": torch_version,
                                               "jax": jax.__version__, "results": results},
                                              indent=2, default=list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
