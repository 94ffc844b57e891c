"""`tagger-jax tag`: tags audio files, `.npy` spectrograms or directories with a model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "tag audio files with a trained or imported model (track-level tags and taggrams)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="audio files (wav, flac, ogg, mp3, ...), .npy log-mel spectrograms "
                             "(96, T), or directories (searched recursively)")
    parser.add_argument("--checkpoint", required=True,
                        help="model directory (from import-authors or training) or a workdir")
    parser.add_argument("--top-k", type=int, default=5, help="tags listed per file (default 5)")
    parser.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                        help="taggram from sliding windows every SECONDS (default: the paper's "
                             "16 evenly spaced chunks)")
    parser.add_argument("--output", type=Path, default=None, metavar="FILE.json",
                        help="write all results as a JSON list (updated as files finish)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the successful results already in --output, tag the rest")
    parser.add_argument("--batch-size", type=int, default=64, help="chunks per device batch")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import contextlib

    from tagger_jax import outputs

    if args.top_k < 1:
        print("error: --top-k must be at least 1", file=sys.stderr)
        return 2
    if args.resume and args.output is None:
        print("error: --resume needs --output", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.output is not None:  # checked and locked before any work: see tagger_jax.outputs
            args.output = outputs.check_output_file(args.output)
            stack.enter_context(outputs.exclusive(args.output, "output file"))
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from tagger_jax import audio, checkpoint, errors, tagging

    try:
        loaded = checkpoint.load_model(args.checkpoint)
        done = (tagging.finished_results(args.output)
                if args.resume and args.output.exists() else [])
    except (checkpoint.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.exit_status(e, default=errors.USAGE)
    finished = {r["file"] for r in done}
    skipped: list = []
    paths = [p for p in tagging.collect_inputs(args.inputs, skipped)
             if audio.display_path(p) not in finished]
    for path, why in skipped:
        print(f"skipped: {audio.display_path(path)}: {why}", file=sys.stderr)
    if not paths and not done:
        print("error: no input files found" + (f" ({len(skipped)} files skipped, listed above)"
                                                if skipped else ""), file=sys.stderr)
        return 2
    store = tagging.ResultStore(args.output, done)
    tagger = tagging.Tagger(loaded, batch_size=args.batch_size)
    try:
        results = tagger.tag(paths, hop_s=args.hop, top_k=args.top_k, progress=not args.quiet,
                             on_result=store.add)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    failed = [r for r in results if "error" in r]
    for r in results:
        if "error" in r:
            continue
        for note in [*r.get("warnings", []), *r.get("audio_warnings", {}).values()]:
            print(f"warning: {note}", file=sys.stderr)
        top = ", ".join(f"{t['tag']} {t['probability']:.2f}" for t in r["top_tags"])
        print(f"{r['file']}: {top}")
    if done:
        print(f"{len(done)} files kept from {args.output}", file=sys.stderr)
    if args.output is not None:
        print(f"results written to {args.output}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} inputs failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['error']}", file=sys.stderr)
        return 1
    return 0
