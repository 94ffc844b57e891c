"""`tagger-jax embed`: per-window and track-level embeddings of files, directories or a dataset
split, as NPZ (tagger_jax.embedding)."""
from __future__ import annotations

import argparse
import contextlib
import sys

from tagger_jax.commands._inference_args import (add_input_arguments, add_model_arguments,
                                                 add_run_arguments, add_window_arguments,
                                                 builder_config, check_inputs, data_dir,
                                                 model_path, no_inputs_message, print_skipped,
                                                 window_plan)

HELP = ("Embeddings for downstream tasks: the pooled [CLS] vector the classifier reads and the "
        "front-end's time-pooled features, per window and per track, as NPZ.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_input_arguments(parser, "audio files, .npy model inputs or directories (searched "
                                "recursively)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory: one NPZ per input and embeddings.npz")
    add_window_arguments(parser, batch_size=64)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tagger_jax import sharding

    sharding.maybe_initialize_distributed()  # before anything touches the JAX backend
    from tagger_jax.inference import return_freed_memory

    return_freed_memory()  # long files: batch buffers go back to the system (docs/benchmarks.md)
    import jax

    from tagger_jax import checkpoint, embedding, errors, inference, outputs

    def error(msg: str, status: int = errors.USAGE) -> int:
        print(f"error: {errors.one_line(msg)}", file=sys.stderr)
        return status

    mismatch = sharding.different_options(args)  # every process, before any work
    if mismatch:
        return error(mismatch)
    args.out = str(outputs.check_output_dir(args.out))  # before any work (errors.OUTPUT)
    with contextlib.ExitStack() as held:  # with --dataset: the build's readers' lock
        try:
            check_inputs(args)
            plan = window_plan(args)
            loaded = checkpoint.load_model(model_path(args))
            engine = inference.Engine(loaded, batch_size=args.batch_size)
            skipped: list = []
            if args.dataset:
                items = engine.dataset_inputs(args.dataset, args.split, data_dir(args, loaded),
                                              builder_config(args, loaded), args.limit, held)
            else:
                items = engine.file_inputs(args.inputs, skipped,
                                           exclude=outputs.own_files(args.out))
                print_skipped(skipped)
            if not items:
                return error(no_inputs_message(skipped) if args.inputs else "no inputs found")
            with outputs.exclusive_for_run(args.out, "output directory"):
                report = embedding.embed_inputs(engine, items, args.out, plan,
                                                progress=not args.no_progress,
                                                retry_failed=args.retry_failed)
        except BrokenPipeError:  # stdout's reader went away: errors.guarded's quiet exit
            raise
        except (checkpoint.CheckpointError, ValueError, OSError) as e:
            if errors.peer_lost(e):  # errors.guarded: one line, exit 8 at once (said here, the
                raise  # process waited in JAX's shutdown barrier, then aborted with 134)
            return error(errors.describe(e), errors.exit_status(e, default=errors.USAGE))
    if jax.process_index() == 0:  # the counts, then each failure, on stderr (as tag, explain);
        counts, *where = str(report).split("\n")  # stdout: where the merged file is
        print(counts, file=sys.stderr)
        for line in report.failure_lines():
            print(line, file=sys.stderr)
        for line in where:
            print(line, flush=True)
    return 1 if report.failed else 0
