"""`tagger-jax explain` (and the top-level `explain.py`): attention, contribution and gradient maps
for audio files, .npy spectrograms, directories or a dataset split."""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

from tagger_jax.commands._inference_args import (add_input_arguments, add_model_arguments,
                                                 add_run_arguments, add_window_arguments,
                                                 builder_config, check_inputs, data_dir,
                                                 model_path, no_inputs_message, print_skipped,
                                                 window_plan)
from tagger_jax.commands.arg_types import positive_int

HELP = ("Explain a model's tags: the paper's attention and tag-wise contribution heat maps and "
        "gradient saliency, as NPZ + PNG + JSON per input and an index.html for the run.")

EPILOG = ("--windows paper explains the paper's 16 evenly spaced chunks (those of evaluate and "
          "tag --windows paper; same top tags). They leave gaps (the end of a track longer "
          "than one chunk, and "
          "between chunks on a track longer than 17 chunks): the maps are NaN there in the NPZ "
          "('covered' marks the rest), null in the page's data, and drawn hatched grey in the "
          "figures and pages; the JSON summary, the page and a note give the coverage (fraction "
          "and seconds). --listen never selects uncovered frames (they sound in .removed.ogg).")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_input_arguments(parser, "audio files, .npy log-mel spectrograms (96 x T; waveforms for "
                                "lee_won) or directories (searched recursively)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--methods", type=_csv, default=None,
                        help="comma-separated: attention, attention_heads, attention_layers, "
                             "rollout, contribution, grad_x_input, integrated_gradients, or 'all' "
                             "(default: attention,contribution,grad_x_input)")
    parser.add_argument("--tags", type=_csv, default=(),
                        help="comma-separated tag names to explain (default: the top-k predicted "
                             "per input)")
    parser.add_argument("--top-k", type=positive_int, default=3,
                        help="tags explained per input (default 3)")
    parser.add_argument("--tags-from", metavar="labels|CSV", default=None,
                        help="tags per input: 'labels' (each --dataset record's true tags) or a "
                             "CSV: rows file,tag,tag,... or an audio_folder CSV (header with "
                             "path and tags columns, tags joined by ';') (unlisted inputs: the "
                             "top-k)")
    parser.add_argument("--listen", action="store_true",
                        help="write auralised audio per map and tag: the input kept where the "
                             "map is high (STEM.METHOD.TAG.kept.ogg) and the rest (.removed.ogg)")
    parser.add_argument("--listen-methods", type=_csv, default=None, metavar="LIST",
                        help="comma-separated methods whose maps --listen auralises, or 'all' "
                             "(implies --listen; default: every explained one but "
                             "grad_x_input, which is anti-faithful on log-mel models)")
    parser.add_argument("--listen-keep", type=float, default=None,
                        help="fraction of frames (time maps) or STFT bins (gradient maps) kept "
                             "(default 0.5; implies --listen)")
    parser.add_argument("--listen-softness", type=float, default=None,
                        help="0: hard mask (default); > 0: a soft ramp around the threshold "
                             "(implies --listen)")
    parser.add_argument("--line-seconds", type=float, default=None,
                        help="static figures wrap long tracks onto lines of at most this many "
                             "seconds (default 30; 0: one line)")
    parser.add_argument("--no-report", action="store_true",
                        help="skip the interactive page per input (STEM.html)")
    add_window_arguments(parser, batch_size=8)
    parser.add_argument("--ig-steps", type=positive_int, default=32,
                        help="integrated-gradients trapezoid intervals (default 32)")
    parser.add_argument("--ig-baseline", choices=("min", "zeros"), default="min",
                        help="integrated-gradients baseline: the clip's dB floor (min) or zeros")
    parser.add_argument("--target", choices=("logit", "probability"), default="logit",
                        help="gradient methods explain the tag's logit (default) or probability")
    parser.add_argument("--layer", type=int, default=-1,
                        help="encoder layer whose attention the contribution map overrides "
                             "(default -1, the last: the paper's)")
    parser.add_argument("--two-clip", action="store_true",
                        help="Figure 2's experiment: inputs in pairs (A, B), each explained as "
                             "the first half-chunk of A followed by the first half-chunk of B")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG figures")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tagger_jax import sharding

    sharding.maybe_initialize_distributed()  # before anything touches the JAX backend
    from tagger_jax.inference import return_freed_memory

    return_freed_memory()  # long files: batch buffers go back to the system (docs/benchmarks.md)
    import jax

    from tagger_jax.checkpoint import CheckpointError, load_model
    from tagger_jax.explain import methods as M
    from tagger_jax.explain import runner

    def error(msg: str, status: int = 2) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return status

    mismatch = sharding.different_options(args)  # every process, before any work
    if mismatch:
        return error(mismatch)
    from tagger_jax import outputs

    args.out = str(outputs.check_output_dir(args.out))  # before any work (errors.OUTPUT)
    defaults = runner.ExplainOptions()
    if args.listen_keep is not None or args.listen_softness is not None:
        args.listen = True  # as --listen-methods: a listening setting asks for the audio
    keep = defaults.listen_keep if args.listen_keep is None else args.listen_keep
    softness = defaults.listen_softness if args.listen_softness is None else args.listen_softness
    if not 0.0 <= keep <= 1.0:  # each flag named alone (a trial got both for either)
        return error(f"--listen-keep must be a fraction in [0, 1], got {keep}")
    if not (math.isfinite(softness) and softness >= 0):
        return error(f"--listen-softness must be a number >= 0, got {softness}")
    line_s = defaults.plot_line_s if args.line_seconds is None else args.line_seconds
    if not (math.isfinite(line_s) and line_s >= 0):
        return error(f"--line-seconds must be a number of seconds >= 0 (0: one line), got "
                     f"{line_s}")
    methods = args.methods or runner.DEFAULT_METHODS
    if methods == ("all",):
        methods = M.METHODS
    listen_methods = args.listen_methods
    if listen_methods is not None:
        args.listen = True
        if listen_methods == ("all",):  # every explained map that can be heard
            listen_methods = tuple(m for m in methods if m in runner.AURALISED)
        unknown = [m for m in listen_methods if m not in M.METHODS]
        silent = [m for m in listen_methods if m in M.METHODS and m not in runner.AURALISED]
        unasked = [m for m in listen_methods if m in runner.AURALISED and m not in methods]
        choose = f"choose from {', '.join(runner.AURALISED)}, or 'all'"
        if not listen_methods:
            return error(f"--listen-methods names no method ({choose})")
        if unknown:
            return error(f"--listen-methods: {', '.join(unknown)}: not a method ({choose})")
        if silent:
            return error(f"--listen-methods: {', '.join(silent)} cannot be heard (its maps are "
                         f"per head or per layer; {choose})")
        if unasked:
            them = "them" if len(unasked) > 1 else "it"
            return error(f"--listen-methods names {', '.join(unasked)}, which --methods does "
                         f"not compute (add {them} there)")
    with contextlib.ExitStack() as held:  # with --dataset: the build's readers' lock
        try:
            check_inputs(args)
            plan = window_plan(args)
            loaded = load_model(model_path(args))
            options = runner.ExplainOptions(
                methods=tuple(methods), tags=tuple(args.tags), top_k=args.top_k, hop=plan.hop_s,
                windows=plan.windows, num_chunks=plan.num_chunks,
                ig_steps=args.ig_steps, ig_baseline=args.ig_baseline, target=args.target,
                layer=args.layer, plot=not args.no_plot, batch_size=args.batch_size,
                retry_failed=args.retry_failed, plot_line_s=line_s or None,
                listen=args.listen, listen_methods=listen_methods, listen_keep=keep,
                listen_softness=softness, report=not args.no_report)
            runner.check_options(loaded, options)  # before the output folder is made
            if loaded.untrained_note() and jax.process_index() == 0:
                print(loaded.untrained_note(), file=sys.stderr)
            layers = _attention_layers(loaded)
            if layers is not None and not -layers <= args.layer < layers:
                return error(f"--layer {args.layer}: the model has {layers} encoder layer(s) "
                             f"({-layers}..{layers - 1}; -1 is the last, the paper's)")
            if args.tags_from and args.tags:
                return error("give --tags or --tags-from, not both")
            if args.tags_from == "labels" and not args.dataset:
                return error("--tags-from labels needs --dataset")
            if args.tags_from and args.tags_from != "labels" and not Path(args.tags_from).is_file():
                return error(f"--tags-from {args.tags_from}: no such file (give a CSV of files and "
                             "tags, or 'labels' with --dataset)")
            skipped: list = []
            dataset_dir = data_dir(args, loaded) if args.dataset else None  # its note once
            if args.dataset:
                items = runner.dataset_items(loaded, args.dataset, args.split,
                                             dataset_dir, builder_config(args, loaded),
                                             args.limit,
                                             explain_labels=args.tags_from == "labels",
                                             record_paths=args.tags_from not in (None, "labels"),
                                             hold=held)
            else:
                items = runner.file_items(loaded, args.inputs, skipped,
                                          exclude=outputs.own_files(args.out))
                print_skipped(skipped)
            if args.tags_from == "labels":  # from a new user's trial: said nowhere but the JSON
                unlabelled = [it.name for it in items if not it.explain_tags]
                if unlabelled:
                    print(f"note: --tags-from labels: {len(unlabelled)} of {len(items)} record(s) "
                          f"have no true tag (e.g. {unlabelled[0]}): their top {args.top_k} "
                          "predicted tags are explained", file=sys.stderr)
            if args.tags_from and args.tags_from != "labels":
                from tagger_jax import tags as tags_lib

                separator = tags_lib.CSV_TAG_SEPARATOR
                if args.dataset == "audio_folder":  # the CSV the collection was built from
                    from tagger_jax.datasets import audio_folder, get_builder

                    separator = audio_folder.built_tag_separator(get_builder(
                        args.dataset, dataset_dir, builder_config(args, loaded)))
                items = runner.with_csv_tags(items, args.tags_from,
                                             split=args.split if args.dataset else None,
                                             limit=args.limit if args.dataset else None,
                                             tag_separator=separator, model_tags=loaded.tags)
            if args.two_clip:
                geometry = runner._engine(loaded, 1).geometry
                items = runner.two_clip_items(items, geometry.chunk, int(round(
                    geometry.step_s * loaded.config.features.sample_rate)))
            if not items:
                return error(no_inputs_message(skipped) if args.inputs else "no inputs found")
            with outputs.exclusive_for_run(args.out, "output directory"):
                result = runner.explain_inputs(loaded, items, args.out, options,
                                               progress=not args.no_progress)
        except BrokenPipeError:  # stdout's reader went away: errors.guarded's quiet exit
            raise
        except (CheckpointError, ValueError, OSError) as e:
            from tagger_jax import errors

            if errors.peer_lost(e):  # errors.guarded: one line, exit 8 at once (said here, the
                raise  # process waited in JAX's shutdown barrier, then aborted with 134)
            return error(errors.describe(e), errors.exit_status(e, default=errors.USAGE))
    if result.index is not None:
        print(f"index: {result.index}")
    return 1 if result.failed else 0


def _attention_layers(loaded) -> int | None:
    """The model's encoder layers, None for an architecture without them (`pons_pons`)."""
    from tagger_jax.models import get_architecture

    model = loaded.config.model
    return (int(model.attention_layers) if get_architecture(model).has_attention
            and "attention_layers" in model else None)


def main(argv: list[str] | None = None, owns_process: bool = False) -> int:
    """Entry point of the top-level `explain.py` (same flags as the subcommand); `owns_process`:
    run as the process's script, which then ends itself after Ctrl-C or SIGTERM
    (`errors.exit_after_interrupt`: the interpreter's teardown crashed after an interrupt during
    compilation, status -11 after the interrupted line)."""
    parser = argparse.ArgumentParser(prog="explain.py", description=HELP, epilog=EPILOG)
    add_arguments(parser)
    from tagger_jax import errors

    return errors.guarded(run, parser.parse_args(argv), prog="explain.py",
                          owns_process=owns_process)
