#!/usr/bin/env python
"""Trains a tagger: python train.py --config configs/X.py --workdir DIR [--config.train.batch_size=64].

The flax examples' command line for `tagger-jax train` (tagger_jax.commands.train), which does
the work through `tagger_jax.train_lib.train_and_evaluate(config, workdir)`: `--config.KEY=VALUE`
(or `--config.KEY VALUE`) is `--set KEY=VALUE`, which it takes too; `--list_config` is
`--list-config`. `--config` takes a config file or a workdir's saved config.json. An unknown
field or argument is one error line and exit status 2. Rerunning the same command in the same
workdir resumes.
"""
from __future__ import annotations

import sys


def translate(argv: list[str]) -> list[str]:
    """train.py's absl-style arguments as `tagger-jax train` arguments; ValueError if unknown."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name.startswith("--config."):
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg} needs a value")
                i, value = i + 1, argv[i + 1]
            out += ["--set", f"{name[len('--config.'):]}={value}"]
        elif name == "--set":  # `tagger-jax train`'s spelling, which --help shows
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg} needs a value")
                i, value = i + 1, argv[i + 1]
            out += ["--set", value]
        elif name in ("--config", "--workdir"):
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg} needs a value")
                i, value = i + 1, argv[i + 1]
            out += [name, value]
        elif arg in ("--list_config", "--list-config"):
            out.append("--list-config")
        elif arg in ("-h", "--help"):
            out.append(arg)
        else:
            raise ValueError(f"unknown argument {arg!r} (expected --config, --config.KEY=VALUE "
                             "or --set KEY=VALUE, --workdir, --list_config)")
        i += 1
    return out


def main(argv: list[str], owns_process: bool = False) -> int:
    """train.py's command line; `owns_process`: run as the process's script
    (`errors.guarded`)."""
    import argparse

    from absl import logging

    from tagger_jax.commands import train

    try:
        args = translate(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every file at INFO level
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__.splitlines()[1],
        epilog="--config.KEY=VALUE is --set KEY=VALUE; --list_config is --list-config")
    train.add_arguments(parser)
    parsed = parser.parse_args(args)
    from tagger_jax import errors

    # As `tagger-jax train`: documented errors one line, Ctrl-C 130, anything else one line and
    # a traceback file (70).
    parsed.owns_process = owns_process  # train ends a SIGTERMed process itself (run_training)
    return errors.guarded(train.run, parsed, prog="train.py", owns_process=owns_process)


if __name__ == "__main__":
    from tagger_jax import errors
    from tagger_jax.huge_pages import reexec_with_huge_pages

    errors.defer_interrupts()  # Ctrl-C before the command starts: tagger_jax/errors.py
    reexec_with_huge_pages()  # tagger_jax/huge_pages.py: why
    sys.exit(main(sys.argv[1:], owns_process=True))
