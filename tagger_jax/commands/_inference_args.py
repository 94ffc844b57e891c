"""Command-line options shared by the commands that run `tagger_jax.inference` (tag, embed,
explain): how windows are placed, in seconds, and the batch size."""
from __future__ import annotations

import argparse


def add_window_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                        help="seconds between window starts when the windows cover the track "
                             "(default: one window length, about 4.1 s for the paper's models; "
                             "the last window always ends at the end of the track)")
    parser.add_argument("--windows", choices=("cover", "paper"), default="cover",
                        help="'cover' (default): windows every --hop over the whole track; "
                             "'paper': the paper's evenly spaced chunks (--num-chunks, 16)")
    parser.add_argument("--num-chunks", type=int, default=16,
                        help="chunks per track with --windows paper (default 16)")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"windows per batch over all local devices (default {batch_size})")


def window_plan(args: argparse.Namespace):
    """The `inference.WindowPlan` of parsed arguments (ValueError on bad values)."""
    from tagger_jax.inference import WindowPlan

    if args.windows == "paper" and args.hop is not None:
        raise ValueError("--hop applies to --windows cover only")
    return WindowPlan(args.windows, args.hop, args.num_chunks)
