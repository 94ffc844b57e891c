"""Command-line options shared by the commands that run `tagger_jax.inference` (tag, embed,
explain), each defined once: the model (--checkpoint/--workdir), the inputs (files, directories
or --dataset/--split/...), how windows are placed (in seconds), the batch size and the
resumable-run options."""
from __future__ import annotations

import argparse
import sys

from tagger_jax.commands.arg_types import positive_int


def add_window_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                        help="seconds between window starts when the windows cover the track "
                             "(default: one window length, about 4.1 s for the paper's models; "
                             "the last window always ends at the end of the track)")
    parser.add_argument("--windows", choices=("cover", "paper"), default="cover",
                        help="'cover' (default): windows every --hop over the whole track; "
                             "'paper': the paper's evenly spaced chunks (--num-chunks, 16)")
    parser.add_argument("--num-chunks", type=positive_int, default=None,
                        help="chunks per track with --windows paper (default 16)")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help=f"windows per batch over all local devices, rounded up to a "
                             f"multiple of their count (default {batch_size})")


def window_plan(args: argparse.Namespace):
    """The `inference.WindowPlan` of parsed arguments (ValueError on bad values)."""
    from tagger_jax.inference import WindowPlan

    if args.windows == "paper" and args.hop is not None:
        raise ValueError("--hop applies to --windows cover only")
    if args.windows == "cover" and args.num_chunks is not None:
        raise ValueError("--num-chunks applies to --windows paper only")
    if args.num_chunks is None:
        return WindowPlan(args.windows, args.hop)
    return WindowPlan(args.windows, args.hop, args.num_chunks)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint (a model directory) or --workdir (a training workdir), one of them."""
    from_ = parser.add_mutually_exclusive_group(required=True)
    from_.add_argument("--checkpoint", help="model directory (tagger.json + variables/), e.g. "
                                            "from import-authors or training")
    from_.add_argument("--workdir", help="training workdir (its exported best_model/ is used)")


def add_input_arguments(parser: argparse.ArgumentParser, inputs_help: str) -> None:
    """INPUT files/directories, or the records of --dataset's --split."""
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help=inputs_help)
    parser.add_argument("--dataset", help="the records of a dataset split instead of files, "
                                          "e.g. synthetic_tags")
    parser.add_argument("--split", default=None, help="split of --dataset (default: test)")
    parser.add_argument("--data-dir", default=None,
                        help="TFDS data directory (default: the model config's data.data_dir)")
    parser.add_argument("--builder-config", default=None, help="TFDS builder config, e.g. "
                                                               "segments")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="first N records of --split only")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of resumable runs that write one result per input into --out."""
    parser.add_argument("--retry-failed", action="store_true",
                        help="retry inputs that failed in an earlier run although unchanged")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def print_skipped(skipped) -> None:
    """One `skipped: PATH: reason` line on stderr per file a directory search left out
    (`inference.discover`'s `skipped`; an explain or embed output folder's files in one line per
    folder, `skipped: DIR/: N explain outputs (...)`), then one line counting them by reason (the
    text before its parenthesis; most first: `skipped 12 file(s): lock file 9, not audio 3`), on
    process 0 of a multi-process run only."""
    import os
    import sys

    import jax

    from tagger_jax import audio

    if jax.process_index() != 0:
        return
    counts: dict[str, int] = {}
    outputs: dict[tuple[str, str], int] = {}  # (folder, kind) -> outputs of a run skipped there
    grouped = {"explain output": "files its explanation summaries list, and their index",
               "embed output": "NPZs of tagger-jax embed, and their merged file"}
    for path, why in skipped:
        kind = why.split(" (")[0]
        counts[kind] = counts.get(kind, 0) + 1
        if kind in grouped:
            where = (os.path.dirname(os.fspath(path)), kind)
            outputs[where] = outputs.get(where, 0) + 1
            continue
        print(f"skipped: {audio.display_path(path)}: {why}", file=sys.stderr)
    for (folder, kind), n in outputs.items():
        print(f"skipped: {audio.display_path(os.path.join(folder, ''))}: {n} {kind}s "
              f"({grouped[kind]})", file=sys.stderr)
    if counts:
        print(f"skipped {len(skipped)} file(s): "
              + ", ".join(f"{kind} {n}" for kind, n in
                            sorted(counts.items(), key=lambda kv: -kv[1])), file=sys.stderr)


def no_inputs_message(skipped) -> str:
    """The error of a run that found nothing to do, counting the files `print_skipped` listed."""
    return "no input files found" + (f" ({len(skipped)} files skipped, listed above)"
                                     if skipped else "")


def model_path(args: argparse.Namespace) -> str:
    """The model directory or workdir the arguments name."""
    return args.checkpoint or args.workdir


DATASET_OPTIONS = ("split", "data_dir", "builder_config", "limit")  # meaningful with --dataset


def check_inputs(args: argparse.Namespace) -> None:
    """ValueError unless exactly one of INPUT and --dataset is given, and the options of
    --dataset come with it; sets --split's default (test)."""
    if args.inputs and args.dataset:
        raise ValueError("give INPUT files/directories or --dataset, not both")
    if not args.inputs and not args.dataset:
        raise ValueError("no inputs: give INPUT files/directories, or --dataset NAME")
    if not args.dataset:
        given = [f"--{name.replace('_', '-')}" for name in DATASET_OPTIONS
                 if getattr(args, name, None) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                             "--dataset only (INPUT files were given)")
    elif args.split is None:
        args.split = "test"


def data_dir(args: argparse.Namespace, loaded) -> str:
    """--data-dir, else the model's (`LoadedModel.data_dir`: its note, if any, on stderr)."""
    if args.data_dir:
        return args.data_dir
    import jax

    directory, note = loaded.data_dir()
    if note and jax.process_index() == 0:
        print(note, file=sys.stderr)
    return directory


def builder_config(args: argparse.Namespace, loaded) -> str | None:
    """--builder-config, else the model config's data.builder_config when --dataset is the
    dataset the model was trained on (as `evaluate` does): explaining two records of a model
    trained on a `--set` build no longer builds the full default dataset first."""
    if args.builder_config:
        return args.builder_config
    data = loaded.config.data
    return (data.get("builder_config") or None) if args.dataset == data.name else None
