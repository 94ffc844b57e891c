"""`tagger-jax` console script: one subcommand per module in `tagger_jax.commands`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`
(optionally `EPILOG`, text at the end of its --help), and imports its heavy dependencies inside
`run`, so `tagger-jax --help` stays fast.

Exit statuses are the table in `tagger_jax.errors` (README "Exit statuses"): a documented error a
command lets through is printed as one `error:` line with its own status; anything else prints one
line naming the file that holds the full traceback, and exits 70.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "import-authors": "tagger_jax.commands.import_authors",
    "tag": "tagger_jax.commands.tag",
    "build-dataset": "tagger_jax.commands.build_dataset",
    "convert-patches": "tagger_jax.commands.convert_patches",
    "evaluate": "tagger_jax.commands.evaluate",
    "train": "tagger_jax.commands.train",
    "explain": "tagger_jax.commands.explain",
    "embed": "tagger_jax.commands.embed",
}
# The inference commands: their compiled programs are worth keeping between runs, and they run
# with XLA:CPU's YNNPACK fusions off (`tagger_jax.xla_cpu`).
INFERENCE_COMMANDS = ("tag", "evaluate", "explain", "embed")


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line (status 2, `errors.USAGE`) that points to --help,
    instead of the whole usage block followed by the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tagger-jax",
        description="Self-attention music tagging (Won et al., 2019) in JAX: train, evaluate, "
                    "tag, explain and embed.")
    cache_help = ("do not use JAX's persistent compilation cache (default: on, in "
                  "~/.cache/tagger-jax; env TAGGER_JAX_COMPILATION_CACHE=0 or a path)")
    parser.add_argument("--no-compilation-cache", action="store_true", help=cache_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           epilog=getattr(module, "EPILOG", None))
        module.add_arguments(p)
        p.add_argument("--no-compilation-cache", action="store_true",  # also after the
                       default=argparse.SUPPRESS, help=cache_help)  # command (a trial's)
        p.set_defaults(_run=module.run)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    return int(args._run(args) or 0)


def main(argv: list[str] | None = None, owns_process: bool = False) -> int:
    """Runs one command; returns its exit status (see `tagger_jax.errors`). `owns_process`:
    called as the process's entry point (`errors.guarded`)."""
    from tagger_jax import errors

    args = build_parser().parse_args(argv)
    if not args.no_compilation_cache and args.command in INFERENCE_COMMANDS:
        from tagger_jax import compilation_cache

        compilation_cache.enable()
    args.owns_process = owns_process  # train ends a SIGTERMed process itself (run_training)
    return errors.guarded(_dispatch, args, owns_process=owns_process)


def command_of(argv: list[str]) -> str | None:
    """The subcommand named on a `tagger-jax` command line (arguments after the program name):
    the first argument that is not an option (the top-level options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def console() -> int:
    """The `tagger-jax` console script: `main` on the command line, the inference commands with
    XLA:CPU's YNNPACK fusions off (`tagger_jax.xla_cpu`), in a process re-executed with
    transparent huge pages for XLA's buffers where that helps (`tagger_jax.huge_pages`). Ctrl-C
    before the command starts stops it as soon as it does (`errors.defer_interrupts`)."""
    from tagger_jax import errors
    from tagger_jax.huge_pages import reexec_with_huge_pages

    errors.defer_interrupts()
    if command_of(sys.argv[1:]) in INFERENCE_COMMANDS:
        from tagger_jax.xla_cpu import use_for_inference

        use_for_inference()
    reexec_with_huge_pages()
    return main(owns_process=True)


if __name__ == "__main__":
    sys.exit(console())
