"""`tagger-jax tag`: tags audio files, `.npy` spectrograms or directories with a model."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from tagger_jax.commands._inference_args import (add_model_arguments, add_window_arguments,
                                                 model_path, no_inputs_message, print_skipped,
                                                 window_plan)
from tagger_jax.commands.arg_types import positive_int

HELP = "tag audio files with a trained or imported model (track-level tags and taggrams)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="audio files (wav, flac, ogg, mp3, ...), .npy log-mel spectrograms "
                             "(96, T), or directories (searched recursively)")
    add_model_arguments(parser)
    parser.add_argument("--top-k", type=positive_int, default=5,
                        help="tags listed per file (default 5)")
    add_window_arguments(parser, batch_size=64)
    parser.add_argument("--output", type=Path, default=None, metavar="FILE.json",
                        help="write all results as a JSON list (updated as files finish)")
    parser.add_argument("--csv", type=Path, default=None, metavar="FILE.csv",
                        help="also write a table of the track-level probabilities: one row per "
                             "input tagged (this run's and reused ones, in input order), "
                             "columns file, duration_s and one per tag")
    parser.add_argument("--resume", action="store_true",
                        help="keep the successful results already in --output, tag the rest")
    parser.add_argument("--no-progress", "--quiet", dest="quiet", action="store_true",
                        help="no progress bar")


def _say_replaced(output: Path) -> None:
    """A `note:` line when a run without --resume is about to replace an existing --output
    (it said nothing: tagging another folder into the same file lost the first folder's
    results unannounced)."""
    from tagger_jax import tagging

    if not output.is_file():
        return
    try:
        found = len(tagging.finished_results(output))
    except ValueError:  # an empty file (`run` refuses other files than result lists)
        return
    if found:
        print(f"note: {output} exists: this run replaces its {found} earlier result(s); "
              "--resume keeps and reuses them", file=sys.stderr)


def _under_this_runs_names(done: list[dict], paths: list[str], names: list[str]) -> int:
    """Renames, in place, the stored results of `done` whose `file` is another name of one of
    this run's files (`coll/x.wav` stored, `/data/coll/x.wav` now; the stored absolute path
    while it exists, else the name resolved from this working directory:
    `inference.recorded_input`) to this run's name, unless that name has a result of its own;
    returns how many. Without it a --resume under another spelling tagged every file again and
    kept both."""
    from tagger_jax import audio, inference

    real = {os.path.realpath(p): n for p, n in zip(paths, names)}
    taken = {r["file"] for r in done}
    renamed = 0
    for r in done:
        if r["file"] in real.values():
            continue
        try:
            stored = inference.recorded_input(r.get(inference.INPUT_PATH), r["file"])
            name = real.get(os.path.realpath(audio.path_from_display(stored)))
        except (ValueError, OSError):
            continue
        if name is not None and name not in taken:
            r["file"] = name
            taken.add(name)
            renamed += 1
    return renamed


def run(args: argparse.Namespace) -> int:
    from tagger_jax import errors, outputs, sharding, tagging

    if args.top_k < 1:
        return _error("--top-k must be at least 1")
    if args.resume and args.output is None:
        return _error("--resume needs --output")
    if args.output is not None:  # checked before any work (errors.OUTPUT)
        args.output = outputs.check_output_file(args.output)
        if not tagging.own_output(args.output):  # a trial's --output victim.wav replaced it
            return _error(f"--output {args.output}: exists and is not a result list of this "
                          "tool (JSON); it is not replaced: give another file name, or delete "
                          "it first", errors.OUTPUT)
    if args.csv is not None:
        args.csv = outputs.check_output_file(args.csv)
        if args.output is not None and os.path.realpath(args.csv) == os.path.realpath(
                args.output):  # also through a link (it was refused as "in use by another run")
            return _error(f"--csv {args.csv} is the --output file; give another name")
        if not tagging.own_output(args.csv, table=True):
            return _error(f"--csv {args.csv}: exists and is not a table of this tool (header "
                          f"{','.join(tagging.CSV_FIXED_COLUMNS)},...); it is not replaced: give "
                          "another file name, or delete it first", errors.OUTPUT)
    needs_output = "a multi-process run needs --output (each process writes its share)"
    if args.output is None and sharding.multi_process_requested():  # before waiting for peers
        return _error(needs_output)
    sharding.maybe_initialize_distributed()  # before anything touches the JAX backend
    from tagger_jax.inference import return_freed_memory

    return_freed_memory()  # long files: batch buffers go back to the system (docs/benchmarks.md)
    import jax

    process, processes = jax.process_index(), jax.process_count()
    if processes > 1 and args.output is None:  # a cluster JAX detected by itself
        return _error(needs_output)
    mismatch = sharding.different_options(args)  # every process, before any work
    if mismatch:
        return _error(mismatch)
    from tagger_jax import checkpoint

    try:  # before the output files' locks, which make their folder (a trial's missing model
        checkpoint.resolve_model_dir(model_path(args))  # left a new folder of lock files)
    except checkpoint.CheckpointError as e:
        return _error(errors.describe(e), errors.exit_status(e, default=errors.USAGE))
    with contextlib.ExitStack() as stack:
        for target, what in ((args.output, "output file"), (args.csv, "CSV file")):
            if target is not None:
                # One run per output file: a second refuses, naming the holder (errors.BUSY).
                stack.enter_context(outputs.exclusive_for_run(target, what))
        return _run(args, process, processes)


def _print_result(r: dict, warnings: bool = True) -> None:
    """The input's line on stdout ("FILE: tag 0.93, ...") and, with `warnings`, its warnings on
    stderr, written around a progress bar (tqdm.write)."""
    from tqdm.auto import tqdm

    if warnings:
        for note in [*r.get("warnings", []), *r.get("audio_warnings", {}).values()]:
            tqdm.write(f"warning: {note}", file=sys.stderr)
    top = ", ".join(f"{t['tag']} {t['probability']:.2f}" for t in r["top_tags"])
    tqdm.write(f"{r['file']}: {top}", file=sys.stdout)


def _error(msg: str, status: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return status


def _note_full_disk(error: Exception, output: Path | None, args: argparse.Namespace) -> None:
    """Adds to a full disk's error what `output` holds (a trial's line did not say), for
    `errors.describe`."""
    from tagger_jax import errors, tagging

    if not errors.storage_full(error) or output is None:
        return
    with contextlib.suppress(Exception):  # the file is written whole or not at all
        held = sum("error" not in r for r in tagging.finished_results(Path(output)))
        error.add_note(f"{output} holds {held} result(s)"
                       + ("; with --resume a run keeps them and tags the rest"
                          if args.output is not None else ""))
    if args.csv is not None:
        error.add_note(f"{args.csv} is written when a run finishes")


def _run(args: argparse.Namespace, process: int, processes: int) -> int:
    from tagger_jax import audio, checkpoint, errors, inference, outputs, tagging

    error = _error
    try:
        plan = window_plan(args)
        loaded = checkpoint.load_model(model_path(args))
        if process == 0 and loaded.untrained_note():
            print(loaded.untrained_note(), file=sys.stderr)
        parts = 0  # part files of a killed multi-process run, read by --resume
        if args.resume and args.output is not None:
            if processes > 1:  # folded into the output before any process reads it or
                failed = None  # writes its own part over one of them
                if process == 0:
                    try:
                        parts = tagging.fold_parts(args.output)
                    except ValueError as e:  # an unreadable part: every process stops
                        failed = e
                if outputs.agree(int(failed is not None)):
                    raise failed or ValueError(f"{args.output}: process 0 could not read the "
                                               "part files of an earlier run (its error says "
                                               "which)")
            else:
                parts = len(tagging.part_files(args.output))  # removed once the output holds them
        done = (tagging.finished_results(args.output)
                if args.resume and args.output is not None else [])
        if not args.resume and args.output is not None and process == 0:
            _say_replaced(Path(args.output))
    except (checkpoint.CheckpointError, ValueError) as e:
        return error(errors.describe(e), errors.exit_status(e, default=errors.USAGE))
    skipped: list = []
    own = [f for target in (args.output, args.csv) if target is not None
           for f in outputs.own_files(target)]
    every = [str(p) for p in tagging.collect_inputs(args.inputs, skipped, exclude=own)]
    print_skipped(skipped)
    if not every:
        return error(no_inputs_message(skipped))
    names = [audio.display_path(p) for p in every]  # results' "file" (docs/audio.md)
    signature = tagging.run_signature(loaded, plan)
    prints = {n: inference.file_fingerprint(Path(p)) for p, n in zip(every, names)}
    renamed = _under_this_runs_names(done, every, names)
    if renamed and process == 0:
        print(f"note: {renamed} result(s) in {args.output} name their file another way (a "
              "relative or absolute path, a link): reused under this run's names",
              file=sys.stderr)
    done = [r for r in done if "error" not in r or r["file"] not in prints]  # retried
    stale = {r["file"] for r in done
             if r["file"] in prints and not inference.reusable(r, signature, prints[r["file"]])}
    done = [r for r in done if r["file"] not in stale]
    finished = {r["file"] for r in done}
    if stale and process == 0:
        print(inference.replaced_line(len(stale), args.output, "tagged"), file=sys.stderr)
    # Results of inputs outside this run are kept; those of another model or settings are said.
    foreign = [r["file"] for r in done if r["file"] not in prints and "error" not in r
               and r.get("signature") != signature]
    if foreign and process == 0:
        print(f"warning: {args.output} keeps {len(foreign)} result(s) of inputs not in this run "
              f"made with another model or settings (e.g. {foreign[0]}): not comparable with "
              f"this run's; tag them again here, or write to a new --output", file=sys.stderr)
    todo = inference.process_share([p for p, n in zip(every, names) if n not in finished])
    # Inputs finished earlier show this run's --top-k, and their line comes first.
    done = [tagging.with_top_k(r, args.top_k) if r["file"] in finished & prints.keys() else r
            for r in done]
    reused_warned = [inference.stored_warnings(r) for r in done
                     if r["file"] in finished & prints.keys() and "error" not in r]
    if process == 0:
        rank = {n: i for i, n in enumerate(names)}
        for r in sorted((r for r in done if r["file"] in rank), key=lambda r: rank[r["file"]]):
            _print_result(r, warnings=False)
    output = args.output
    if processes > 1:
        output = tagging.part_path(args.output, process)
        done = []  # process 0 merges what was kept with every part
    store = tagging.ResultStore(output, done, order=names)

    printed = []  # this run's inputs whose line is on stdout (said by an interrupted run)

    def on_result(r: dict) -> None:  # printed as it comes: an interrupted run shows its share
        store.add(r)
        if "error" not in r:
            _print_result(r)
            printed.append(r["file"])

    failing = False  # an error is on its way out: the last write may fail with it (full disk)
    try:
        tagger = tagging.Tagger(loaded, batch_size=args.batch_size)
        results = tagger.tag(todo, hop_s=plan.hop_s, windows=plan.windows,
                             num_chunks=plan.num_chunks, top_k=args.top_k,
                             progress=not args.quiet and process == 0, on_result=on_result)
    except ValueError as e:
        return error(str(e))
    except (KeyboardInterrupt, BrokenPipeError) as e:  # Ctrl-C, SIGTERM, or stdout's reader
        failing = True  # gone (`| head`, which a trial found silent): say what is kept, where
        stored = [r for r in store.results[len(done):] if "error" not in r]  # this run's
        if isinstance(e, KeyboardInterrupt) or output is not None:
            errors.interrupted_note(
                e, "tagged", len(stored) if output is not None else len(printed), len(todo),
                f"are in {output}" if output is not None else "were printed above",
                "tag --resume tags" if args.output is not None else None)
        if args.csv is not None:  # a trial looked for it: written from the finished output
            e.add_note(f"{args.csv} is written when a run finishes" + (
                " (tag --resume writes it)" if args.output is not None else ""))
        raise
    except Exception as e:
        failing = True
        _note_full_disk(e, output, args)
        raise
    finally:
        try:
            store.close()
        except Exception as e:  # noqa: BLE001
            if not failing:  # else the error that stopped the run is the one to report
                _note_full_disk(e, output, args)
                raise
    if processes > 1:
        inference.barrier("tag-results-written")
        if process != 0:
            return 1 if any("error" in r for r in results) else 0
        results = [r for r in tagging.merge_parts(args.output, names, processes)
                   if r["file"] not in finished]
    elif parts:  # a killed multi-process run's parts, read into `done`, now in the output
        tagging.remove_parts(args.output)
    reused = sum(n in finished for n in names)  # this run's inputs kept from --output
    total = reused + len(results)
    if reused:
        source = f"{args.output} and its part files" if parts else args.output
        print(f"{reused} of {total} inputs reused from {source} (finished earlier)",
              file=sys.stderr)
    for warned in (inference.warning_counts([inference.stored_warnings(r) for r in results
                                             if "error" not in r], len(results)),
                   inference.warning_counts(reused_warned, reused, reused=True)):
        if warned:
            print(warned, file=sys.stderr)
    if args.output is not None:
        print(f"results written to {args.output}" if store.written or processes > 1 else
              f"{args.output} unchanged (it held every result)", file=sys.stderr)
    if args.csv is not None:  # this run's inputs, tagged now or reused: the output file has both
        kept = tagging.finished_results(args.output) if args.output is not None else results
        rows = {r["file"]: r for r in kept if "error" not in r}
        try:
            wrote = tagging.write_csv([rows[n] for n in names if n in rows], args.csv)
        except ValueError as e:
            return error(str(e))
        print(f"table written to {args.csv}" if wrote else
              f"{args.csv} unchanged (it held this table)", file=sys.stderr)
    failed = [r for r in results if "error" in r]
    # The counts and each failure, as embed and explain end (on stderr: stdout holds the tags).
    print(inference.run_summary("tagged", len(results) - len(failed), reused, len(failed),
                                len(stale & {r["file"] for r in results})), file=sys.stderr)
    for line in inference.failure_lines((r["file"], r["error"]) for r in failed):
        print(line, file=sys.stderr)
    return 1 if failed else 0
