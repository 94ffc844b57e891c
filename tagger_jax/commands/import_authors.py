"""`tagger-jax import-authors`: a state dict of the authors' PyTorch code -> a model directory."""
from __future__ import annotations

import argparse
import sys

HELP = ("Convert a state dict saved by the authors' PyTorch code (.pth or .npz) into a tagger-jax "
        "model directory.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("state_dict", metavar="STATE_DICT",
                        help="the authors' state dict: .pth (needs torch) or .npz of the same keys")
    parser.add_argument("--variant", required=True, choices=("training", "released"),
                        help="'released': their published checkpoint (c = 8, learned positions); "
                             "'training': a model trained with their training code (c = 16, "
                             "sinusoidal positions)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="model directory to write (tagger.json + variables/): a new or "
                             "empty folder, or a model directory to replace")
    parser.add_argument("--tags", default="mtat", metavar="mtat|FILE",
                        help="the classifier's tag names, in output order: 'mtat' (default; the "
                             "MagnaTagATune top 50 of the released checkpoint), or a text file "
                             "with one tag per line (e.g. the 50tagList.txt of an MSD model "
                             "trained with their code's --dataset msd)")


def read_tags(text: str) -> tuple[tuple[str, ...], str]:
    """(tag names, how to describe them) of --tags: 'mtat' or a file of one tag per line.
    Raises ValueError naming the file when it cannot be read, is empty or repeats a tag."""
    from pathlib import Path

    from tagger_jax.tags import MTAT_TOP50, read_tag_list

    if text == "mtat":
        return tuple(MTAT_TOP50), "MTAT tags"
    path = Path(text).expanduser()
    try:
        tags = read_tag_list(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--tags {text}: not 'mtat' nor a readable text file of tag names "
                         f"({e})") from None
    repeated = sorted({t for t in tags if tags.count(t) > 1})
    if not tags or repeated:
        raise ValueError(f"{path}: expected one tag name per line, "
                         + (f"found {', '.join(repeated)} more than once" if repeated
                            else "found none"))
    return tuple(tags), f"tags from {path.name}"


def converted_dtypes(state) -> str:
    """"12 arrays are float16, 1 is float64" for the floating-point arrays of a state dict that
    are not float32 ("" when all are): the import stores float32 (it did so without a word)."""
    import numpy as np

    counts: dict[str, int] = {}
    for value in state.values():
        dtype = np.asarray(value).dtype
        if np.issubdtype(dtype, np.floating) and dtype != np.float32:
            counts[dtype.name] = counts.get(dtype.name, 0) + 1
    parts = [f"{n} {'arrays are' if n > 1 else 'array is'} {name}" if i == 0 else
             f"{n} {'are' if n > 1 else 'is'} {name}" for i, (name, n) in
             enumerate(sorted(counts.items()))]
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tagger_jax.authors import (AuthorsImportError, authors_config, import_state_dict,
                                    param_count, read_state_dict)
    from tagger_jax.checkpoint import METADATA_FILE, CheckpointError, save_model

    from tagger_jax import errors, outputs

    out = outputs.check_output_dir(args.out)  # before any work (errors.OUTPUT)
    if out.is_dir() and any(out.iterdir()) and not (out / METADATA_FILE).is_file():
        print(f"error: {out}: exists and holds other files than a tagger-jax model; give a new "
              "or empty folder (or a model directory to replace)", file=sys.stderr)
        return errors.OUTPUT
    try:
        tags, described = read_tags(args.tags)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.USAGE
    try:  # the state dict: its errors name the file
        state = read_state_dict(args.state_dict)
        variables, config = import_state_dict(state, args.variant, num_tags=len(tags))
    except AuthorsImportError as e:
        text = str(e) if str(e).startswith(str(Path(args.state_dict).expanduser())) \
            else f"{args.state_dict}: {e}"
        print(f"error: {errors.one_line(text)}", file=sys.stderr)
        return errors.USAGE
    replacing = (out / METADATA_FILE).is_file()
    try:  # the model directory: its errors name it (a disk that fills is an output error)
        out = save_model(out, variables, config, tags)
    except (CheckpointError, OSError) as e:
        print(f"error: {errors.one_line(str(e))}", file=sys.stderr)
        return errors.OUTPUT if isinstance(e, OSError) else errors.USAGE
    converted = converted_dtypes(state)
    if converted:  # said, not silent (float16 -> float32 is exact; float64 is rounded)
        print(f"note: {converted} in the state dict: imported as float32 (exact from float16; "
              "float64 is rounded)")
    usual = authors_config(args.variant).model.conv_channels
    width = config.model.conv_channels
    width = f"conv_channels={width}" + (
        f" read from the state dict, not the variant's {usual}" if width != usual else "")
    print(f"imported {param_count(variables):,} parameters ({args.variant} variant, "
          f"{width}, {len(tags)} {described}) -> {out}"
          + ("; it replaced the model that was there" if replacing else ""))
    return 0
