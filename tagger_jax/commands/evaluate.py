"""`tagger-jax evaluate` and the top-level `evaluate.py`: per-tag ROC-AUC and PR-AUC of a split."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from tagger_jax.commands._inference_args import add_model_arguments, model_path

HELP = ("Evaluate a trained or imported model on a dataset split: per-tag ROC-AUC and PR-AUC and "
        "their means (the paper's 16-chunk protocol, or full tracks); writes JSON, CSV and a PNG.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--dataset", default=None,
                        help="TFDS dataset name (default: the one the model was trained on)")
    parser.add_argument("--split", default=None,
                        help="split to evaluate (default: the config's test split, usually 'test')")
    parser.add_argument("--data-dir", default=None,
                        help="TFDS data directory (default: the model config's data.data_dir)")
    parser.add_argument("--builder-config", default=None,
                        help="TFDS builder config (default: the model config's, for its dataset)")
    parser.add_argument("--mode", choices=("chunks", "full"), default="chunks",
                        help="'chunks': mean of 16 evenly spaced chunks of the model's length per "
                             "clip (the paper); 'full': mean over sliding windows covering the "
                             "whole track")
    parser.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                        help="seconds between window starts in --mode full (default: one window; "
                             "the last window ends at the end of the track)")
    parser.add_argument("--num-chunks", type=int, default=None,
                        help="chunks per clip in --mode chunks (default: config, 16)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: WORKDIR_OR_CHECKPOINT/evaluation/"
                             "DATASET_SPLIT_MODE)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="clips per batch (default: config train.eval_batch_size)")
    parser.add_argument("--common-tags", action="store_true",
                        help="score the tags the model and the dataset both list: dataset tags "
                             "the model does not know are left out, named in one note (default: "
                             "refused, as a sign of the wrong model or dataset)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (the model's and the baseline's)")
    parser.add_argument("--baseline", action="store_true",
                        help="also fit the logistic-regression baseline (tagger_jax.baseline) and "
                             "report it beside the model (see --baseline-train)")
    parser.add_argument("--baseline-train", choices=("dataset", "model"), default=None,
                        help="where --baseline is fitted: 'dataset': the evaluated dataset's "
                             "train split (default; works for imported models whose training "
                             "data is not here); 'model': the data the model was trained on (its "
                             "config's data.name, data_dir, builder_config, train_split), the "
                             "fair floor on a dataset of your own")


def run(args: argparse.Namespace) -> int:
    import sys

    from tagger_jax.checkpoint import CheckpointError
    from tagger_jax.evaluation import EvaluationError, UndefinedMetricWarning, evaluate_checkpoint

    from tagger_jax import errors, outputs

    if args.mode == "chunks" and args.hop is not None:
        print("error: --hop applies to --mode full only", file=sys.stderr)
        return errors.USAGE
    if args.mode == "full" and args.num_chunks is not None:
        print("error: --num-chunks applies to --mode chunks only", file=sys.stderr)
        return errors.USAGE
    if args.batch_size is not None and args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return errors.USAGE
    if args.num_chunks is not None and args.num_chunks < 1:
        print("error: --num-chunks must be at least 1", file=sys.stderr)
        return errors.USAGE
    if args.baseline_train is not None and not args.baseline:
        print("error: --baseline-train applies with --baseline only", file=sys.stderr)
        return errors.USAGE
    args.baseline_train = args.baseline_train or "dataset"
    if args.out is not None:  # before any work (errors.OUTPUT)
        args.out = str(outputs.check_output_dir(args.out))
        from tagger_jax.evaluation import METRICS_JSON

        out = Path(args.out)
        others = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) \
            if out.is_dir() else []
        if others and not (out / METRICS_JSON).is_file():  # not an earlier evaluation's folder
            print(f"error: {out}: exists and holds other files than an evaluation's (e.g. "
                  f"{others[0]}); give a new or empty folder, or an earlier evaluation's",
                  file=sys.stderr)
            return errors.OUTPUT
    from tagger_jax import sharding

    sharding.maybe_initialize_distributed()  # each process evaluates its share of the clips
    mismatch = sharding.different_options(args)  # every process, before any work
    if mismatch:
        print(f"error: {mismatch}", file=sys.stderr)
        return errors.USAGE
    import jax

    result = None
    try:
        from tagger_jax.baseline import open_train_split

        # --baseline: its training split must open before the model's run, not after it.
        preflight = ((lambda resolved: open_train_split(resolved, args.baseline_train))
                     if args.baseline else None)
        # The output folder (--out, or the model's default one) is locked once it is known,
        # before any prediction, until the baseline beside the metrics is written.
        with contextlib.ExitStack() as held:
            def hold(folder):
                held.enter_context(outputs.exclusive_for_run(
                    outputs.check_output_dir(folder), "output directory"))

            with errors.warning_lines(UndefinedMetricWarning):
                result = evaluate_checkpoint(
                    model_path(args), dataset=args.dataset, split=args.split,
                    data_dir=args.data_dir, builder_config=args.builder_config, mode=args.mode,
                    out_dir=args.out, batch_size=args.batch_size, num_chunks=args.num_chunks,
                    hop_s=args.hop, preflight=preflight, hold=hold,
                    common_tags=args.common_tags, progress=not args.no_progress)
            if args.baseline and jax.process_index() == 0:  # process 0 writes the report
                import warnings

                from tagger_jax.baseline import report_beside

                with warnings.catch_warnings():  # the model's scores of this split said it
                    warnings.simplefilter("ignore", UndefinedMetricWarning)
                    report_beside(result, train=args.baseline_train,
                                  progress=not args.no_progress)
    except (CheckpointError, EvaluationError, ValueError) as e:
        print(f"error: {errors.describe(e)}", file=sys.stderr)
        return errors.exit_status(e, default=errors.USAGE)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: say what is written (a trial read "finished
        # results are kept" after an interrupted scoring, which writes nothing)
        e.add_note("nothing written: the report is written once the whole split is scored; "
                   "run it again to start over" if result is None else
                   f"the model's report is in {result['out_dir']}; the baseline beside it was "
                   "not written (run with --baseline again)")
        raise
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the top-level `evaluate.py` (same flags as the subcommand)."""
    parser = argparse.ArgumentParser(prog="evaluate.py", description=HELP)
    add_arguments(parser)
    from tagger_jax import errors

    return errors.guarded(run, parser.parse_args(argv), prog="evaluate.py")
