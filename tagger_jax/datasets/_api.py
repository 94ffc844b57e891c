"""Finding, building and opening the tagging datasets (the functions the trainer and CLI use)."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import tensorflow_datasets as tfds

from tagger_jax import errors
from tagger_jax.datasets._common import (REPORT_FILE, SPLITS, WARNINGS_FILE, TaggingBuilder,
                                         described_fields, manual_hint)

# Datasets that need nothing downloaded: `ensure_built` builds them on first use.
SELF_CONTAINED = ("synthetic_tags", "soundfont_tags")


def _expand(path: str | os.PathLike | None) -> str | None:
    return os.path.abspath(os.path.expanduser(os.fspath(path))) if path else None


def get_builder(name: str, data_dir: str | os.PathLike,
                builder_config: str | tfds.core.BuilderConfig | None = None,
                num_workers: int | None = None, resume: bool = True) -> tfds.core.DatasetBuilder:
    """The builder of dataset `name` (config name, config object or None = default) in `data_dir`.

    `num_workers`: build processes (None = all cores); `resume`: keep per-clip features of an
    unfinished build so that running it again continues where it stopped.

    A config name the builder class does not define (one made with `build-dataset --set`) is
    opened from its files on disk, read-only. An unknown `name` raises `errors.ConfigError`
    naming the project's builders (`tagger_jax.dataset_names`), not TFDS's whole catalog.
    """
    from tensorflow_datasets.core.registered import DatasetNotFoundError

    from tagger_jax import datasets  # noqa: F401  (registers the builders)

    data_dir = _expand(data_dir)
    try:
        cls = tfds.builder_cls(name)
    except (DatasetNotFoundError, ValueError):  # ValueError: not a name TFDS can parse ("a b")
        raise errors.ConfigError(f"unknown dataset {name!r}; choose one of: "
                                 f"{', '.join(datasets.BUILDERS)}") from None
    if not builder_config:
        builder_config = None
    if isinstance(builder_config, str) and builder_config not in cls.builder_configs:
        directory = Path(data_dir) / name / builder_config
        versions = sorted(p for p in directory.glob("*") if (p / "dataset_info.json").exists()) \
            if directory.exists() else []
        if not versions and _waited_for_a_build(data_dir):  # it may be there now
            return get_builder(name, data_dir, builder_config, num_workers, resume)
        if not versions:
            raise NotBuiltError(
                f"{name}: no config {builder_config!r} (known: {sorted(cls.builder_configs)}) and "
                f"nothing built under {directory}; build it with `tagger-jax build-dataset {name} "
                f"--config {builder_config} --set FIELD=VALUE ... --data-dir {data_dir}`")
        return tfds.builder_from_directory(versions[-1])
    kwargs: dict[str, Any] = {"data_dir": data_dir, "config": builder_config}
    if issubclass(cls, TaggingBuilder):
        kwargs["num_workers"] = num_workers
        kwargs["resume"] = resume
    with _without_log("absl", "Using custom data configuration"):  # a `--set` config: expected
        return cls(**kwargs)


def _waited_for_a_build(data_dir: str | os.PathLike | None) -> bool:
    """Waits, saying so, while another run builds or rebuilds in `data_dir` (it holds the data
    directory's lock, `build`); True if it waited, so the caller looks for the build again. A
    run that started during a rebuild found no build and stopped with "not built" (a new user's
    trial)."""
    from tagger_jax import outputs

    if not data_dir or not Path(_expand(data_dir)).is_dir():
        return False
    target = _expand(data_dir)
    return outputs.wait_for_holder(outputs.lock_path(target, directory=True), target,
                                   "data directory")


@contextlib.contextmanager
def _without_log(logger: str, prefix: str):
    """Drops the records of `logger` whose message starts with `prefix` while inside."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    log = logging.getLogger(logger)
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether `builder`'s version folder holds a finished build: `builder.is_prepared()`, but
    False without asking TFDS when the folder does not exist.

    TFDS's check globs the folder and logs "Variant folder ... has no dataset_info.json" even
    when it does not exist, i.e. on every fresh build; a folder that exists without a
    dataset_info.json (not written by a finished TFDS build) still gets TFDS's check and warning.
    """
    return builder.data_path.exists() and builder.is_prepared()


def build(name: str, data_dir: str | os.PathLike,
          builder_config: str | tfds.core.BuilderConfig | None = None,
          manual_dir: str | os.PathLike | None = None, num_workers: int | None = None,
          overwrite: bool = False, resume: bool = True) -> tfds.core.DatasetBuilder:
    """Builds (or, if already built and not `overwrite`, just opens) a dataset.

    An interrupted build of a downloaded dataset resumes when run again (`resume`): the clips
    already decoded are taken from `<data_dir>/downloads/tagger_jax_resume/`.

    Reusing a build made from another source (`audio_folder` from another manual directory or a
    changed CSV) raises a one-line ValueError naming both sources; reuse is announced on stdout.
    So does a version folder that exists without a finished build in it (no dataset_info.json),
    which TFDS would take as built; `overwrite` removes it.

    A manual directory that is missing or empty raises a one-line FileNotFoundError naming it,
    the files it must hold (the builder's `MANUAL_FILES`) and where the download steps are; a
    split whose every clip is skipped raises `errors.DataError` (`TaggingBuilder`).

    Builds into one `data_dir` are serialised by a lock on it (`outputs.exclusive`): a second
    run prints whom it waits for, waits, then finds the dataset built and opens it. `overwrite`
    of a build that a run is reading (`reading`: a training, evaluate, embed or explain
    --dataset) raises `outputs.BusyError` (errors.BUSY) naming that run, before anything is
    deleted.
    """
    from tagger_jax import outputs

    with (outputs.exclusive(_expand(data_dir), "data directory", wait=True, directory=True),
          contextlib.ExitStack() as held):
        return _build_locked(name, data_dir, builder_config, manual_dir, num_workers, overwrite,
                             resume, held)


def _build_locked(name, data_dir, builder_config, manual_dir, num_workers, overwrite, resume,
                  held: contextlib.ExitStack):
    builder = get_builder(name, data_dir, builder_config, num_workers, resume)
    if overwrite and builder.data_path.exists():  # a finished build or a folder without one
        import shutil

        from tagger_jax import outputs

        _check_sources(name, builder, data_dir, manual_dir)  # a refused source keeps the build

        # Not under a run that reads it (a training went on with the deleted files); runs that
        # start reading meanwhile wait for the new build (`reading`).
        held.enter_context(outputs.replacing(
            builder.data_dir, f"the build {_label(builder)}",
            "--overwrite would delete it while it is read: wait until no run reads it, or build "
            "into another --data-dir"))
        shutil.rmtree(builder.data_dir)
        builder = get_builder(name, data_dir, builder_config, num_workers, resume)
    if _is_prepared(builder):
        _check_reuse(name, builder, manual_dir, builder_config)
        _announce_reuse(builder, "--overwrite rebuilds it" + _other_source(builder, manual_dir))
        return builder
    if builder.data_path.exists():  # TFDS would "reuse" it and build nothing
        raise ValueError(f"{_label(builder)}: {builder.data_dir} exists but holds no finished "
                         "build (no dataset_info.json); delete it, or build with --overwrite")
    manual, default = _check_sources(name, builder, data_dir, manual_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual)
    config_name = builder.builder_config.name if builder.builder_config else "default"
    print(f"building {name}/{config_name} {builder.version} in {_expand(data_dir)}"
          + (f" from {manual}" if manual else ""), file=sys.stderr, flush=True)
    with _quiet_tfds(builder):
        builder.download_and_prepare(download_config=config)
    if name not in SELF_CONTAINED:  # synthesised, not decoded: nothing to warn about
        print(warnings_summary(builder), file=sys.stderr, flush=True)
    return builder


def _check_sources(name: str, builder: tfds.core.DatasetBuilder, data_dir, manual_dir
                   ) -> tuple[Optional[str], Path]:
    """The checks of a build's sources before anything is built or deleted: the manual
    directory exists and is not empty, and the builder's own `check_inputs` (an `audio_folder`
    CSV read and checked). Raises their one-line errors; returns (the manual directory, TFDS's
    default one). `--overwrite` runs them before it deletes the old build (a trial's CSV with
    `Fast` and `fast` was refused after its working build was gone)."""
    manual = _expand(manual_dir)
    if manual and not Path(manual).is_dir():
        files = getattr(builder, "MANUAL_FILES", "") or "the downloaded files"
        raise FileNotFoundError(f"{name}: manual directory {manual} does not exist; it is the "
                                f"folder that holds {files}. {manual_hint(name)}")
    if (manual and getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
            and not any(Path(manual).iterdir())):  # TFDS would print all the instructions
        files = getattr(builder, "MANUAL_FILES", "") or "the downloaded files"
        raise FileNotFoundError(f"{name}: manual directory {manual} is empty; it must hold "
                                f"{files}. {manual_hint(name)}")
    default = Path(_expand(data_dir)) / "downloads" / "manual"  # where TFDS looks without one
    if (not manual and getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
            and not (default.is_dir() and any(default.iterdir()))):
        raise FileNotFoundError(
            f"{name}: built from files you provide: give --manual-dir DIR, the folder that holds "
            f"them (what it must hold: docs/datasets.md, or the docstring of "
            f"tagger_jax/datasets/{name}.py)")
    if isinstance(builder, TaggingBuilder):
        builder.check_inputs(Path(manual) if manual else (
            default if default.is_dir() else None))  # refused before "building ..." is said
    return manual, default


def _other_source(builder: tfds.core.DatasetBuilder, manual_dir) -> str:
    """"; it was built from DIR, not ..." when the build's recorded manual directory (builds
    since 2026-12-03) is not the one this run names; "" otherwise."""
    recorded = dict(dict(builder.info.metadata or {}).get("built_from") or {}).get("manual_dir")
    asked = _expand(manual_dir)
    if recorded and asked and Path(asked).resolve() != Path(recorded):
        return f"; it was built from {recorded}, not from this run's --manual-dir {asked}"
    return ""


def _announce_reuse(builder: tfds.core.DatasetBuilder, hint: str) -> None:
    """Says on stderr that an existing build is used (nothing reused goes unreported; stdout
    keeps the calling command's results, e.g. evaluate's table)."""
    print(f"reusing the existing build {_label(builder)} in {builder.data_dir} ({hint})",
          file=sys.stderr, flush=True)


# Builds whose changed source this process has noted (`_note_source`): once per build, not once
# per split a run opens.
_SOURCE_NOTED: set[str] = set()


def _note_source(name: str, builder: tfds.core.DatasetBuilder, data_dir: str | os.PathLike
                 ) -> None:
    """A `note:` line on stderr, once per build and process, when the build's recorded source
    has changed since (the builder class's `source_note`): a run reading it without a manual
    directory (evaluate, explain or embed --dataset, training) is not refused (the build is what
    it asked for) but is told it reads the old rows, and how to build it again."""
    cls = tfds.builder_cls(name)
    if not issubclass(cls, TaggingBuilder) or str(builder.data_dir) in _SOURCE_NOTED:
        return
    note = cls.source_note(dict(builder.info.metadata or {}))
    if note:
        _SOURCE_NOTED.add(str(builder.data_dir))
        print(f"note: {_label(builder)} in {builder.data_dir}: {note}; "
              f"`{_rebuild_command(name, builder, data_dir)}` builds it again", file=sys.stderr,
              flush=True)


def _label(builder: tfds.core.DatasetBuilder) -> str:
    config = builder.builder_config.name if builder.builder_config else "default"
    return f"{builder.name}/{config} {builder.version}"


def _check_reuse(name: str, builder: tfds.core.DatasetBuilder,
                 manual_dir: str | os.PathLike | None, builder_config: Any = None) -> None:
    """Raises a one-line ValueError when the prepared `builder` was built with other config
    fields than `builder_config` asks for (`_changed_fields`) or from another source than
    `manual_dir` (the builder class's `reuse_conflict`), naming both and what to do."""
    cls = tfds.builder_cls(name)
    if not issubclass(cls, TaggingBuilder):
        return
    conflict = ((None if cls.REUSE_COMPARES_CONFIG else _changed_fields(builder, builder_config))
                or cls.reuse_conflict(dict(builder.info.metadata or {}), _expand(manual_dir),
                                      builder.builder_config))
    if conflict:
        raise ValueError(
            f"{_label(builder)} in {builder.data_dir} was {conflict}; build into another "
            f"--data-dir, or remove the old build (build-dataset --overwrite, or delete "
            f"{builder.data_dir})")


def _rebuild_command(name: str, builder: tfds.core.DatasetBuilder, data_dir) -> str:
    """The `build-dataset` command that builds `builder` again from its recorded source: its
    config with the `--set` fields it was made with, the data directory and the recorded manual
    directory (a trial's hint left out the fields and said DIR, and was refused as written)."""
    from shlex import quote

    config = builder.builder_config.name if builder.builder_config else "default"
    fields = described_fields(str(getattr(builder.builder_config, "description", "") or ""))
    def value(v: Any) -> str:  # as `--set` reads it: a tuple as `0.7,0.15,0.15`
        return ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)

    sets = ("".join(f" --set {quote(f'{k}={value(v)}')}" for k, v in fields.items())
            if isinstance(fields, dict) else "")
    manual = dict(dict(builder.info.metadata or {}).get("built_from") or {}).get("manual_dir")
    return (f"tagger-jax build-dataset {name}" + (f" --config {quote(config)}"
                                                  if config != "default" else "")
            + f"{sets} --data-dir {quote(str(_expand(data_dir)))} --manual-dir "
            + (quote(manual) if manual else "DIR") + " --overwrite")


def _changed_fields(builder: tfds.core.DatasetBuilder, builder_config: Any) -> str | None:
    """For a config made with `build-dataset --set` (a config object, not a registered name):
    "built with {...}, but this run asks for {...}" when the build's recorded fields (its
    dataset_info.json's configDescription, "NAME: {field: value}") differ from the config's;
    None otherwise. `--config tiny --set num_train=3` reused a `tiny` built with num_train=4."""
    import json

    if builder_config is None or isinstance(builder_config, str):
        return None
    fields = described_fields
    try:
        info = json.loads((Path(builder.data_dir) / "dataset_info.json").read_text())
    except (OSError, ValueError):
        return None
    recorded = str(info.get("configDescription") or "")
    asked = str(getattr(builder_config, "description", "") or "")
    if not recorded or not asked or fields(recorded) == fields(asked):
        return None
    return (f"built with {recorded.split(': ', 1)[-1]}, but this run asks for "
            f"{asked.split(': ', 1)[-1]} (fields not named: the default config's)")


@contextlib.contextmanager
def _quiet_tfds(builder: tfds.core.DatasetBuilder):
    """One progress bar (the builders' own, per split) and no TFDS messages that are false here.

    During the build: TFDS's progress bars are off (they stack over ours), its "Downloading and
    preparing dataset Unknown size ..." / "downloaded and prepared" lines are not printed (our
    builders download nothing; `build` prints its own line). (Its "Variant folder ... has no
    dataset_info.json" warning on a fresh build comes from before the build, and is avoided by
    `_is_prepared`.)
    """
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = getattr(tqdm_utils, "_active", True)
    saved = {k: builder.__dict__.get(k) for k in ("_log_download_bytes", "_log_download_done")}
    for k in saved:
        setattr(builder, k, lambda: None)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(was_active)
        for k, v in saved.items():
            if v is None:
                builder.__dict__.pop(k, None)
            else:
                setattr(builder, k, v)


def ensure_built(name: str, data_dir: str | os.PathLike,
                 builder_config: str | tfds.core.BuilderConfig | None = None,
                 manual_dir: str | os.PathLike | None = None,
                 num_workers: int | None = None,
                 splits: Sequence[str] = ()) -> tfds.core.DatasetBuilder:
    """The dataset's builder, building it first if needed and possible.

    Self-contained datasets (`synthetic_tags`) are built on first use, so a new user can train
    without a separate build step; others are built when `manual_dir` is given, otherwise a
    FileNotFoundError says which command builds them. An existing build is announced on stdout
    (after the checks of `build`: one made from another source is refused). `splits`: the
    splits the caller will open; one a self-contained build would not make is a
    `MissingSplitError` before the build (a misspelt test split was found after building).
    """
    builder = get_builder(name, data_dir, builder_config, num_workers)
    if not _is_prepared(builder) and _waited_for_a_build(data_dir):
        builder = get_builder(name, data_dir, builder_config, num_workers)
    if _is_prepared(builder):
        _check_reuse(name, builder, manual_dir)
        _announce_reuse(builder, "tagger-jax build-dataset --overwrite rebuilds it")
        if not manual_dir:
            _note_source(name, builder, data_dir)
        return builder
    if name in SELF_CONTAINED:
        made = list(builder._split_names())
        missing = [s for s in splits if s and s not in made]
        if missing:
            raise MissingSplitError(f"{name}: no split {missing[0]!r} in the build this run would "
                                    f"make; its splits would be {made}")
    if name in SELF_CONTAINED or manual_dir:
        return build(name, data_dir, builder_config, manual_dir, num_workers)
    config = f" --config {builder.builder_config.name}" if builder.builder_config else ""
    raise NotBuiltError(
        f"dataset {name}{config} is not built in {_expand(data_dir)}. Download it as described in "
        f"docs/datasets.md, then run: tagger-jax build-dataset {name}{config} "
        f"--data-dir {_expand(data_dir)} --manual-dir DIR")


@contextlib.contextmanager
def reading(source: Any) -> Iterator[None]:
    """Holds the readers' lock (`outputs.reading`) of the build that `source` (`load_split`'s)
    reads for the block, so that `build(..., overwrite=True)` of it refuses meanwhile instead of
    deleting the files under the block's reads; waits (saying so) while such a rebuild runs.
    Nothing is locked for a source that is not a TFDS build's (an in-memory one)."""
    from tagger_jax import outputs

    info = getattr(source, "dataset_info", None)
    if info is None or not getattr(info, "data_dir", None):
        yield
        return
    name = info.full_name.rsplit("/", 1)
    with outputs.reading(info.data_dir, f"the build {name[0]} {name[-1]}"):
        yield


def tag_names(name_or_builder: str | tfds.core.DatasetBuilder,
              data_dir: str | os.PathLike | None = None,
              builder_config: str | tfds.core.BuilderConfig | None = None) -> tuple[str, ...]:
    """The tag names in model output order, as stored with the built dataset."""
    if isinstance(name_or_builder, str):
        if data_dir is None:
            raise ValueError("tag_names(name) needs data_dir")
        builder = get_builder(name_or_builder, data_dir, builder_config)
    else:
        builder = name_or_builder
    if not _is_prepared(builder):
        raise NotBuiltError(f"{builder.name}: not built in {builder.data_dir}")
    metadata = builder.info.metadata or {}
    if "tags" not in metadata:
        raise ValueError(f"{builder.data_dir}: no tag names in the dataset metadata "
                         "(not built by tagger_jax?)")
    return tuple(metadata["tags"])


class NotBuiltError(FileNotFoundError, errors.ToolError):
    """A dataset (config) is not built in the data directory: one line naming the command that
    builds it, exit status `errors.DATA`; a FileNotFoundError for callers that catch those."""

    exit_status = errors.DATA


class MissingSplitError(ValueError, errors.ToolError):
    """A built dataset has no such split (e.g. training on an evaluation-only `audio_folder`
    build, whose CSV rows are all `test`): one line, exit status `errors.DATA`."""

    exit_status = errors.DATA


def load_split(name: str, split: str, data_dir: str | os.PathLike,
               builder_config: str | tfds.core.BuilderConfig | None = None,
               ) -> tuple[Any, tuple[str, ...]]:
    """(random-access source of `split`, tag names). The source is `tfds.data_source`'s
    ArrayRecordDataSource: `len(source)`, `source[i]` -> dict of NumPy arrays / bytes."""
    builder = get_builder(name, data_dir, builder_config)
    if not _is_prepared(builder) and _waited_for_a_build(data_dir):
        builder = get_builder(name, data_dir, builder_config)
    if not _is_prepared(builder):
        config = f" --config {builder.builder_config.name}" if builder.builder_config else ""
        manual = " --manual-dir DIR" if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS",
                                                 None) else ""
        others = sorted(p.name for p in (Path(_expand(data_dir)) / name).glob("*")
                        if p.is_dir() and any(p.glob("*/dataset_info.json")))
        built = f"; built there: configs {others} (--builder-config NAME)" if others else ""
        raise NotBuiltError(
            f"dataset {name}{config} is not built in {builder.data_dir}; run `tagger-jax "
            f"build-dataset {name}{config} --data-dir {_expand(data_dir)}{manual}` (or "
            f"`ensure_built`) first{built}")
    if split not in builder.info.splits:
        from tagger_jax.datasets.audio_folder import SPLIT_ALIASES  # `val`, `dev`: validation
        from tagger_jax.tags import folded, nearest  # `Hold Out` for `hold_out`, `tset` test

        alias = SPLIT_ALIASES.get(split.strip().lower())
        guess = (alias if alias in builder.info.splits
                 else nearest([split], builder.info.splits, cutoff=0.6).get(split))
        hint = ("" if guess is None else f" (split names are lowercase, words joined by '_': "
                f"{guess!r})" if folded(guess) == folded(split) else f" (did you mean {guess!r}?)")
        raise MissingSplitError(f"{name} in {builder.data_dir}: no split {split!r}{hint}; its "
                                f"splits are {list(builder.info.splits)}")
    _note_source(name, builder, data_dir)
    return builder.as_data_source(split=split), tag_names(builder)


def build_report(builder: tfds.core.DatasetBuilder) -> dict[str, list[dict[str, str]]]:
    """Files skipped while building, per split: [{"clip_id", "path", "error"}, ...]."""
    return {s: list(v) for s, v in (builder.info.metadata or {}).get("skipped", {}).items()}


def untrained_tags(builder: tfds.core.DatasetBuilder, tags: Sequence[str]) -> list[str]:
    """The `tags` (in their order) that the build records as having no clip in its train split
    (metadata "tags_without_train_clips": an audio_folder CSV's tags used only by held-out rows);
    [] when the build records none."""
    lacking = set(map(str, (builder.info.metadata or {}).get("tags_without_train_clips") or ()))
    return [t for t in map(str, tags) if t in lacking]


def audio_warnings(builder: tfds.core.DatasetBuilder) -> dict[str, list[dict[str, str]]]:
    """Clips kept but degraded, per split: [{"clip_id", "path", "code", "message"}, ...], one
    entry per warning (`audio.load_audio_checked`'s codes: `damaged_data`, `duration_mismatch`,
    `low_sample_rate`, `stereo_cancellation`, `silence`, `clipping`, `over_full_scale`,
    `dc_offset`; docs/audio.md). Empty for datasets built before the warnings were recorded,
    and for synthesised ones."""
    return {s: list(v) for s, v in (builder.info.metadata or {}).get("audio_warnings", {}).items()}


def warnings_path(builder: tfds.core.DatasetBuilder) -> Path:
    """Where the build wrote its `audio_warnings.tsv`."""
    return Path(str(builder.data_dir)) / WARNINGS_FILE


def warnings_summary(builder: tfds.core.DatasetBuilder) -> str:
    """One line: how many kept clips have audio warnings, by code, and where they are listed."""
    found = [w for items in audio_warnings(builder).values() for w in items]
    if not found:
        return f"{builder.name}: no audio warnings"
    clips = len({(w["clip_id"], w["path"]) for w in found})
    codes: dict[str, int] = {}
    for w in found:
        codes[w["code"]] = codes.get(w["code"], 0) + 1
    by_code = ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))
    return (f"{builder.name}: {clips} clip(s) kept with audio warnings ({by_code}); listed in "
            f"{warnings_path(builder)}")


def report_path(builder: tfds.core.DatasetBuilder) -> Path:
    """Where the build wrote its `skipped_files.tsv`."""
    return Path(str(builder.data_dir)) / REPORT_FILE


def split_sizes(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
    """Clips per split: train / validation / test first, then the builder's extra splits
    (`test_<bank>`, an audio_folder CSV's other split values) in their stored order."""
    names = [s for s in SPLITS if s in builder.info.splits]
    names += [s for s in builder.info.splits if s not in names]
    return {s: builder.info.splits[s].num_examples for s in names}


__all__: Sequence[str] = ("get_builder", "build", "ensure_built", "tag_names", "load_split",
                          "build_report", "report_path", "audio_warnings", "warnings_path",
                          "warnings_summary", "split_sizes", "SELF_CONTAINED")
