"""`tagger-jax embed`: per-window and track-level embeddings of files, directories or a dataset
split, as NPZ (tagger_jax.embedding)."""
from __future__ import annotations

import argparse
import sys

from tagger_jax.commands._inference_args import add_window_arguments, window_plan

HELP = ("Embeddings for downstream tasks: the pooled [CLS] vector the classifier reads and the "
        "front-end's time-pooled features, per window and per track, as NPZ.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from_ = parser.add_mutually_exclusive_group(required=True)
    from_.add_argument("--checkpoint", help="model directory (tagger.json + variables/)")
    from_.add_argument("--workdir", help="training workdir (its exported best_model/ is used)")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="audio files, .npy model inputs or directories (searched "
                             "recursively)")
    parser.add_argument("--dataset", help="embed the records of a dataset split instead, e.g. "
                                          "synthetic_tags")
    parser.add_argument("--split", default="test", help="split of --dataset (default: test)")
    parser.add_argument("--data-dir", default=None,
                        help="TFDS data directory (default: the model config's data.data_dir)")
    parser.add_argument("--builder-config", default=None, help="TFDS builder config")
    parser.add_argument("--limit", type=int, default=None, help="first N records of --split only")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory: one NPZ per input and embeddings.npz")
    add_window_arguments(parser, batch_size=64)
    parser.add_argument("--retry-failed", action="store_true",
                        help="retry inputs that failed in an earlier run although unchanged")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tagger_jax import sharding

    sharding.maybe_initialize_distributed()  # before anything touches the JAX backend
    import jax

    from tagger_jax import checkpoint, embedding, errors, inference, outputs

    def error(msg: str, status: int = errors.USAGE) -> int:
        print(f"error: {errors.one_line(msg)}", file=sys.stderr)
        return status

    args.out = str(outputs.check_output_dir(args.out))  # before any work (errors.OUTPUT)
    if bool(args.inputs) == bool(args.dataset):
        return error("give INPUT files/directories or --dataset (not both)")
    try:
        plan = window_plan(args)
        loaded = checkpoint.load_model(args.checkpoint or args.workdir)
        engine = inference.Engine(loaded, batch_size=args.batch_size)
        if args.dataset:
            data_dir = args.data_dir or loaded.config.data.data_dir
            items = engine.dataset_inputs(args.dataset, args.split, data_dir,
                                          args.builder_config, args.limit)
        else:
            items = engine.file_inputs(args.inputs)
        if not items:
            return error("no inputs found")
        with outputs.exclusive_for_run(args.out, "output directory"):
            report = embedding.embed_inputs(engine, items, args.out, plan,
                                            progress=not args.no_progress,
                                            retry_failed=args.retry_failed)
    except (checkpoint.CheckpointError, ValueError, OSError) as e:
        return error(str(e), errors.exit_status(e, default=errors.USAGE))
    if jax.process_index() == 0:
        print(report)
    return 1 if report.failed else 0
