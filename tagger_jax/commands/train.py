"""`tagger-jax train` (and the top-level absl `train.py`): train, validate, export, test.

    tagger-jax train --config configs/synthetic_cpu.py --workdir runs/synthetic \
        [--set train.batch_size=64 --set model.dtype=bfloat16]

`--set KEY=VALUE` is the absl form `--config.KEY=VALUE` of train.py, parsed by the same
ml_collections machinery (values are converted to the field's type). Running the same command in
the same workdir resumes; see docs/training.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

HELP = ("Train a tagger from a config file (resumes in an existing workdir): validation ROC-AUC "
        "every epoch, best model exported to WORKDIR/best_model, test ROC-AUC at the end.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="config file defining get_config(), e.g. configs/synthetic_cpu.py")
    parser.add_argument("--workdir", required=True,
                        help="directory for checkpoints, metrics and the exported model; "
                             "rerunning with the same workdir resumes")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.batch_size=64 "
                             "(repeatable; as --config.train.batch_size=64 of train.py)")


def load_config(path: str, overrides: Sequence[str] = ()) -> Any:
    """The config of `path` with `KEY=VALUE` overrides applied, via ml_collections' flag parser."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["tagger-jax", f"--config={path}"]
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        argv.append(f"--config.{item}")
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    if not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(f"no such config file: {path}")
    try:
        flag_values(argv)
    except (AttributeError, KeyError) as e:
        keys = ", ".join(item.split("=", 1)[0] for item in overrides)
        raise ValueError(f"unknown config field in --set {keys} ({e}); every field is listed in "
                         "tagger_jax/config_base.py") from None
    config = flag_values.config
    config.model  # an unreadable config file raises here, with the file's own error
    return config


def run_training(config: Any, workdir: str) -> int:
    """Trains with `config` in `workdir` and prints the outcome; the process exit status."""
    from tagger_jax import train_lib

    try:
        summary = train_lib.train_and_evaluate(config, workdir)
    except train_lib.ConfigMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except train_lib.NonFiniteLossError as e:
        from tagger_jax import errors

        print(f"error: {e}", file=sys.stderr)
        return errors.DIVERGED
    if summary["preempted"]:
        print(f"Stopped by SIGTERM at step {summary['step']}; checkpoint saved in "
              f"{summary['workdir']}. Run the same command to resume.")
        return 0
    print(f"Trained {summary['step']} steps in {summary['workdir']}; best validation ROC-AUC "
          f"{summary['best_validation_roc_auc']:.4f}")
    if "test_roc_auc" in summary:
        print(f"test ROC-AUC {summary['test_roc_auc']:.4f}  PR-AUC {summary['test_pr_auc']:.4f}"
              f"  (per-tag report in {summary['workdir']}/test/)")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.overrides)
    except Exception as e:  # absl reports bad files / keys / values with its own exception types
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_training(config, args.workdir)
