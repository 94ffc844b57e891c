"""`tagger-jax train` (and the top-level absl `train.py`): train, validate, export, test.

    tagger-jax train --config configs/synthetic_cpu.py --workdir runs/synthetic \
        [--set train.batch_size=64 --set model.dtype=bfloat16]

`--set KEY=VALUE` is the absl form `--config.KEY=VALUE` of train.py, parsed by the same
ml_collections machinery (values are converted to the field's type); an unknown field, a value
its type does not take, or a field that is None in the config (data.augment unless a config file
sets it) is one error line and exit status 2. `--config` also takes a workdir's saved config
(WORKDIR/config.json or WORKDIR). `--list-config` prints every field with its default and comment (config_base.py).
Running the same command in the same workdir resumes; see docs/training.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

# Exit statuses of the documented training failures (the project's table of exit statuses:
# 2 usage/config, 3 unreadable checkpoint, 5 busy, 7 non-finite loss).
EXIT_STATUS = {"ConfigMismatchError": 2, "ConfigError": 2, "CorruptCheckpointError": 3,
               "BusyError": 5, "NonFiniteLossError": 7}

HELP = ("Train a tagger from a config file (resumes in an existing workdir): validation ROC-AUC "
        "every epoch, best model exported to WORKDIR/best_model, test ROC-AUC at the end.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config",
                        help="config file defining get_config(), e.g. configs/synthetic_cpu.py; or "
                             "a workdir's saved config (WORKDIR/config.json, or WORKDIR itself)")
    parser.add_argument("--workdir",
                        help="directory for checkpoints, metrics and the exported model; "
                             "rerunning with the same workdir resumes")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.batch_size=64 "
                             "(repeatable; as --config.train.batch_size=64 of train.py)")
    parser.add_argument("--list-config", "--list_config", action="store_true",
                        help="print every config field with its default and meaning (with "
                             "--config: that config's values) and exit")


def _field_names(config: Any, prefix: str = "") -> set[str]:
    names = set()
    for key, value in config.items():
        if hasattr(value, "items"):
            names |= _field_names(value, f"{prefix}{key}.")
        else:
            names.add(f"{prefix}{key}")
    return names


def _config_file_error(path: str, error: Exception) -> str:
    """One line for a config file that failed to load. ml_collections wraps an exception raised
    inside get_config() (e.g. its own TypeError for `c.train.batch_size = "8"`) in a message
    holding the whole traceback: the line is then the file's line number and the exception's
    last line."""
    import re

    text = str(error) or type(error).__name__
    if "Traceback (most recent call last)" in text:
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        mine = os.path.realpath(os.path.expanduser(path))
        lines = [n for f, n in re.findall(r'File "([^"]+)", line (\d+)', text)
                 if os.path.realpath(f) == mine]
        return f"config {path}" + (f":{lines[-1]}" if lines else "") + f": {last}"
    if "get_config" in text:
        return (f"config {path}: {text} (a config file defines get_config() returning an "
                "ml_collections.ConfigDict)")
    return f"config {path}: {type(error).__name__}: {text}"


def undefined_fields(config: Any) -> list[str]:
    """One line per field of `config` that config_base.py does not define (nothing in tagger-jax
    reads it): a config file's misspelt `c.train.num_epoch = 2` is a new field, and the run
    would train the inherited num_epochs without a word. Fields under one that is None in the
    base config (data.augment) are the file's to define. Not an error: code of one's own may
    read fields of its own."""
    import difflib

    from tagger_jax import config_base

    base = config_base.base_config()
    known = _field_names(base)
    lines = []
    for name in sorted(_field_names(config) - known):
        parts = name.split(".")
        if any(_lookup(base, ".".join(parts[:end])) == (True, None)
               for end in range(1, len(parts))):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        lines.append(f"{name} is not a field of config_base.py and nothing in tagger-jax reads "
                     "it" + (f" (did you mean {close[0]}?)" if close else "")
                     + "; `tagger-jax train --list-config` lists every field")
    return lines


def _as_tuple(config: Any, item: str) -> str:
    """`KEY=VALUE` for a field whose value is a tuple, written as a Python tuple literal: a
    comma-separated list (`a,b`, `(a,b)`, `1e-3, 1e-4`), one value (`test` or `1e-3`) or
    nothing (`()`).
    ml_collections reads the value as a Python literal, so `a,b` used to become the one string
    'a,b' while `1e-3,1e-4` became a tuple. Other fields, and values that are already a tuple or
    list literal, are returned as given."""
    import ast

    key, text = item.split("=", 1)
    node = config
    for part in key.split("."):
        if not hasattr(node, "items") or part not in node:
            return item
        node = node[part]
    if not isinstance(node, tuple):
        return item

    def literal(word: str) -> Any:
        try:
            return ast.literal_eval(word)
        except (ValueError, SyntaxError):
            return word

    whole = literal(text.strip())
    if isinstance(whole, (tuple, list)):
        return item
    inner = text.strip()
    if inner[:1] + inner[-1:] in ("()", "[]"):  # (a,b) without quotes
        inner = inner[1:-1]
    values = tuple(literal(w.strip()) for w in inner.split(",") if w.strip())
    return f"{key}={values!r}"


def load_config(path: str, overrides: Sequence[str] = ()) -> Any:
    """The config of `path` with `KEY=VALUE` overrides applied, via ml_collections' flag parser.

    `path` is a Python config file defining get_config(), or a stored config: a workdir's
    config.json (or the workdir), merged over config_base.base_config(). Raises ValueError (one
    line) on a malformed or unknown override, FileNotFoundError on a missing file.
    """
    from absl import flags
    from ml_collections import config_flags

    from tagger_jax import workdir

    keys = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        keys.append(item.split("=", 1)[0])
    expanded = Path(path).expanduser()
    if expanded.is_dir() or expanded.suffix == ".json":
        stored, extra = workdir.read_config(expanded)
        if extra:
            print(f"note: {expanded}: fields not defined in config_base.py, kept as stored: "
                  f"{', '.join(extra)}", file=sys.stderr)

        def define(flag_values, argv):
            config_flags.DEFINE_config_dict("config", stored, "stored config",
                                            flag_values=flag_values, lock_config=True,
                                            sys_argv=argv)
        argv = ["tagger-jax"]
    else:
        if not expanded.is_file():
            raise FileNotFoundError(f"no such config file: {path}")

        def define(flag_values, argv):
            config_flags.DEFINE_config_file("config", None, "config file",
                                            flag_values=flag_values, lock_config=True,
                                            sys_argv=argv)
        argv = ["tagger-jax", f"--config={path}"]

    def parse(argv):
        # ml_collections loads the file as module "config_config" with the deprecated
        # `load_module`, which executes it inside an existing module of that name: a file
        # without get_config() loaded after another in one process would get that one's.
        sys.modules.pop("config_config", None)
        flag_values = flags.FlagValues()
        define(flag_values, argv)
        flag_values(argv)
        return flag_values.config  # an unreadable config file raises here, its own error

    try:
        plain = parse(argv)  # the file alone: its own errors name it
    except Exception as e:  # noqa: BLE001 - a config file may raise anything; say which file
        raise ValueError(_config_file_error(path, e)) from None
    if not hasattr(plain, "model"):
        raise ValueError(f"config {path}: get_config() returned a {type(plain).__name__}, not "
                         "a ConfigDict with the sections of config_base.py")
    if not (expanded.is_dir() or expanded.suffix == ".json"):
        for line in undefined_fields(plain):
            print(f"warning: config {path}: {line}", file=sys.stderr)
    overrides = [_as_tuple(plain, item) for item in overrides]
    if keys:
        fields = _field_names(plain)
        sections = {name.split(".", 1)[0] for name in fields}
        for key in keys:
            if key in sections:  # `--set train=3`: a section, not a field
                example = min(name for name in fields if name.startswith(f"{key}."))
                raise ValueError(f"{key} is a section of the config, not a field: set one of its "
                                 f"fields, e.g. {example}=...; `tagger-jax train --list-config` "
                                 "lists every field")
        for key in keys:
            _check_not_none(plain, key)
        unknown = [k for k in keys if k not in fields]
        if unknown:
            raise ValueError(f"unknown config field {', '.join(unknown)}; "
                             "`tagger-jax train --list-config` lists every field")
    try:
        return parse(argv + [f"--config.{item}" for item in overrides])
    except (AttributeError, KeyError) as e:  # a section given a value, etc.
        raise ValueError(f"bad override in {', '.join(keys)} ({e})") from None
    except flags.Error as e:  # a value the field's type does not take
        raise ValueError(_value_error(plain, str(e))) from None


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          tuple: "a comma-separated list"}


def _lookup(config: Any, key: str) -> tuple[bool, Any]:
    """(found, value) of the dotted field `key` in `config`; found is False past a leaf."""
    node = config
    for part in key.split("."):
        if not hasattr(node, "items") or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_not_none(config: Any, key: str) -> None:
    """Raises ValueError when `key` is, or lies under, a field that is None in `config`: such
    a field (e.g. data.augment, off by default) has no type for ml_collections to convert a
    value to, and no fields to set under it."""
    parts = key.split(".")
    for end in range(1, len(parts) + 1):
        found, value = _lookup(config, ".".join(parts[:end]))
        if not found:
            return
        if value is None:
            field = ".".join(parts[:end])
            raise ValueError(f"--set {key}: {field} is None in this config and takes no value "
                             "from --set; use a config file that sets it (for data.augment, "
                             "configs/soundfont_cpu_augment.py), then --set its fields")


def _value_error(config: Any, text: str) -> str:
    """One line for absl's `flag --config.KEY=VALUE: reason`: the field, the value and what
    the field takes (its default's type)."""
    import re

    match = re.match(r"flag --config\.([\w.]+)=(.*?): ", text, re.S)
    if not match:
        return text.splitlines()[0] if text else "bad --set value"
    key, value = match.groups()
    found, default = _lookup(config, key)
    kind = _KINDS.get(type(default)) if found else None
    wants = f"takes {kind}" if kind else f"cannot take this value ({text[match.end():]})"
    return f"--set {key}={value}: {key} {wants}"


def list_config(config: Any = None) -> str:
    """Every field: `name = value  # comment`, with the default noted where `config` differs."""
    from tagger_jax.config_base import field_docs

    docs = field_docs()
    width = max(len(f"{d.name} = {d.default!r}") for d in docs)
    lines = []
    for d in docs:
        value = d.default
        if config is not None:
            section, field = d.name.split(".", 1)
            value = config[section][field] if field in config[section] else d.default
        text = f"{d.name} = {value!r}"
        note = f"  (default {d.default!r})" if value != d.default else ""
        lines.append(f"{text:<{width}}  # {d.comment}{note}")
    return "\n".join(lines)


def run_training(config: Any, workdir: str, owns_process: bool = False) -> int:
    """Trains with `config` in `workdir` and prints the outcome; the process exit status.
    `owns_process` (`errors.guarded`): a SIGTERM outside the training loop ends the process
    here, without the interpreter's teardown. A run stopped by SIGTERM ends with status 143
    (`errors.TERMINATED`), its checkpoint saved: it has not finished, and a wrapper that retries
    until success, or a job system reading the status, must start it again to resume."""
    from tagger_jax import errors, train_lib, validation
    from tagger_jax.errors import ConfigError, ToolError
    from tagger_jax.preemption import Preempted

    try:
        summary = train_lib.train_and_evaluate(config, workdir)
    except Preempted as e:  # outside the training loop: nothing to save
        print(f"Stopped by SIGTERM {e}; nothing was lost. Run the same command to resume.")
        if owns_process:
            errors.exit_after_interrupt(errors.TERMINATED)
        return errors.TERMINATED
    except (ConfigError, train_lib.ConfigMismatchError, train_lib.WorkdirBusyError,
            train_lib.CorruptCheckpointError, train_lib.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STATUS[type(e).__name__]
    except ToolError as e:  # a dataset not built or without the split (errors.DATA), ...
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    if summary["preempted"]:
        print(f"Stopped by SIGTERM at step {summary['step']}; checkpoint saved in "
              f"{summary['workdir']}. Run the same command to resume.")
        return errors.TERMINATED
    steps = "step" if summary["step"] == 1 else "steps"
    print(f"Trained {summary['step']} {steps} in {summary['workdir']}; best validation ROC-AUC "
          f"{validation.fmt(summary['best_validation_roc_auc'])}")
    for test in summary.get("tests", ()):
        left_out = test.get("num_excluded", 0)  # a small split: a tag without positives
        print(f"{test['split']} ROC-AUC {validation.fmt(test['roc_auc'])}  "
              f"PR-AUC {validation.fmt(test['pr_auc'])}"
              + (f"  (means of {test['num_tags'] - left_out} of {test['num_tags']} tags: the "
                 "others have one label value in this split)" if left_out else "")
              + (f"  (baseline: ROC-AUC {validation.fmt(test['baseline_roc_auc'])}  PR-AUC "
                 f"{validation.fmt(test['baseline_pr_auc'])})" if "baseline_roc_auc" in test
                 else "")
              + f"  (per-tag report in {test['dir']}/"
              + ("; reused: inputs unchanged)" if test["reused"] else ")"))
    if any("baseline_roc_auc" in test for test in summary.get("tests", ())):
        print("baseline: logistic regression on clip-level log-mel statistics and onset "
              "features, fitted on the train split (tagger_jax.baseline)")
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.list_config and not (args.config and args.workdir):
        print("error: --config and --workdir are required (or --list-config)", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, args.overrides) if args.config else None
    except Exception as e:  # absl reports bad files / keys / values with its own exception types
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list_config:
        if args.overrides and config is None:
            print("error: --set with --list-config needs --config (the config they change)",
                  file=sys.stderr)
            return 2
        print(list_config(config))
        return 0
    return run_training(config, args.workdir, getattr(args, "owns_process", False))
