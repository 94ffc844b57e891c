"""`tagger-jax build-dataset NAME`: build a TFDS dataset, then print its splits, tags and skips."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from tagger_jax import tags as tags_lib
from tagger_jax.dataset_names import BUILDER_NAMES

HELP = f"Build a dataset ({', '.join(BUILDER_NAMES)})."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help=f"builder name: {', '.join(BUILDER_NAMES)}")
    parser.add_argument("--config", default=None,
                        help="builder config (default: the builder's default); with --set, the "
                             "name of a new config derived from the default one")
    parser.add_argument("--data-dir", default=_default_data_dir(),
                        help="TFDS data directory to write into (default: %(default)s, the "
                             "configs' data.data_dir)")
    parser.add_argument("--manual-dir", default=None,
                        help="directory with the manually downloaded files (see docs/datasets.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE",
                        help="change a config field, e.g. --set tag_separator=, (repeatable)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="decoding / synthesis processes (default: all CPU cores)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an existing build of this config first (refused while "
                             "a training, evaluate, embed or explain reads it)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="do not keep per-clip features while building (an interrupted "
                             "build then starts over; saves disk space during the build)")


def _default_data_dir() -> str:
    from tagger_jax.config_base import base_config

    return base_config().data.data_dir


def _parse_value(current, text: str, field: str):
    """`text` converted to the type of the field's current value; a ValueError naming the field
    when it does not convert (`--set num_train: 'abc' is not an int`)."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"--set {field}: expected true/false, got {text!r}")
    if isinstance(current, (int, float)):
        return _convert(type(current), text, field)
    if isinstance(current, tuple):
        values = [v.strip() for v in text.split(",")]  # "a, b" is ("a", "b")
        return tuple(_convert(type(current[0]), v, field) for v in values) if current \
            else tuple(values)
    return text


def _convert(kind: type, text: str, field: str):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"--set {field}: {text!r} is not {'an' if kind is int else 'a'} "
                         f"{kind.__name__}") from None


def make_config(builder_cls, name: str | None, overrides: list[str]):
    """A registered config name, or a new config from the default with `overrides` applied."""
    if not overrides:
        return name
    if not name or name in builder_cls.builder_configs:
        raise ValueError("--set makes a new config: give it a new name with --config NAME "
                         f"(registered: {sorted(builder_cls.builder_configs)})")
    base = builder_cls.builder_configs[builder_cls.DEFAULT_CONFIG_NAME]
    fields = {f.name for f in dataclasses.fields(base)} - {
        "name", "version", "release_notes", "supported_versions", "description", "tags"}
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        field, text = item.split("=", 1)
        if field not in fields:
            raise ValueError(f"--set {field}: {builder_cls.name} configs have the fields "
                             f"{sorted(fields)}")
        changes[field] = _parse_value(getattr(base, field), text, field)
    return dataclasses.replace(base, name=name, description=f"{name}: {changes}", **changes)


def run(args: argparse.Namespace) -> int:
    import pickle

    import tensorflow_datasets as tfds

    from tagger_jax import datasets, errors, outputs

    outputs.check_output_dir(args.data_dir)  # before any work (errors.OUTPUT)

    if args.name not in datasets.BUILDERS:
        print(f"error: unknown dataset {args.name!r}; choose one of "
              f"{sorted(datasets.BUILDERS)}", file=sys.stderr)
        return errors.USAGE
    cls = tfds.builder_cls(args.name)
    try:
        config = make_config(cls, args.config, args.overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.USAGE
    if isinstance(config, str) and config not in cls.builder_configs:
        print(f"error: {args.name} has no config {config!r}; configs: "
              f"{sorted(cls.builder_configs)} (or make one with --config NAME --set FIELD=VALUE)",
              file=sys.stderr)
        return errors.USAGE
    try:
        builder = datasets.build(args.name, args.data_dir, config, manual_dir=args.manual_dir,
                                 num_workers=args.num_workers, overwrite=args.overwrite,
                                 resume=args.resume)
    except (FileNotFoundError, ValueError, AssertionError, pickle.UnpicklingError) as e:
        print(f"error: {errors.describe(e)}", file=sys.stderr)
        return errors.exit_status(e, default=errors.DATA)  # a bad --set choice: USAGE
    print(file=sys.stderr)  # a blank line after the progress bars; stdout holds the summary only
    print(f"{builder.name}/{builder.builder_config.name} {builder.version} in {builder.data_dir}")
    sizes = datasets.split_sizes(builder)
    width = max([10, *map(display_width, sizes)])
    for split, n in sizes.items():  # padded by columns: a wide (CJK) name takes two
        pad = " " * (width - display_width(split))
        print(f"  {split}{pad} {n:>8} clip{'' if n == 1 else 's'}")
    tags = datasets.tag_names(builder)
    print(f"{len(tags)} tags: {tags_lib.listed(tags)}")
    noted = (builder.info.metadata or {}).get("config") or {}
    if "bank_file" in noted:  # soundfont_tags: which bank files played which splits
        files = [noted["bank_file"], *noted.get("extra_banks", {}).values()]
        print(f"training banks (train, validation, test): {', '.join(files)}")
        for split, path in noted.get("unseen_banks", {}).items():
            print(f"unseen bank ({split}): {path}")
        if noted.get("siblings"):
            print(f"train split: each part of an instrument with sibling programs played by "
                  f"one of them at rate {noted['siblings']:g} (gm_score.SIBLING_PROGRAMS)")
    report = datasets.build_report(builder)
    skipped = [(split, s) for split, items in report.items() for s in items]
    if skipped:
        print(f"{len(skipped)} file{'' if len(skipped) == 1 else 's'} skipped (listed in "
              f"{datasets.report_path(builder)}):")
        for split, s in skipped[:50]:
            print(f"  [{split}] {s['error']}")
        if len(skipped) > 50:
            print(f"  ... and {len(skipped) - 50} more")
    else:
        print("no files skipped")
    return 0


def display_width(text: str) -> int:
    """Terminal columns of `text`: East Asian wide and fullwidth characters take two (Unicode
    UAX #11), combining marks none."""
    import unicodedata

    return sum(0 if unicodedata.combining(ch) else
               2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
