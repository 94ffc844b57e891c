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
                        help="model directory to write (tagger.json + variables/)")


def run(args: argparse.Namespace) -> int:
    from tagger_jax.authors import AuthorsImportError, import_state_dict, param_count, \
        read_state_dict
    from tagger_jax.checkpoint import CheckpointError, save_model
    from tagger_jax.tags import MTAT_TOP50

    from tagger_jax import outputs

    outputs.check_output_dir(args.out)  # before any work (errors.OUTPUT)
    try:
        state = read_state_dict(args.state_dict)
        variables, config = import_state_dict(state, args.variant, num_tags=len(MTAT_TOP50))
        out = save_model(args.out, variables, config, MTAT_TOP50)
    except (AuthorsImportError, CheckpointError, OSError) as e:
        print(f"tagger-jax import-authors: error: {e}", file=sys.stderr)
        return 2
    print(f"imported {param_count(variables):,} parameters ({args.variant} variant, "
          f"conv_channels={config.model.conv_channels}, {len(MTAT_TOP50)} MTAT tags) -> {out}")
    return 0
