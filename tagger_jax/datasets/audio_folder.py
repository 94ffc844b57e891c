"""`audio_folder`: your own collection, a directory of audio files plus a CSV of tags.

Manual step: put the audio files (any format `tagger_jax.audio.load_audio` reads: wav, flac, ogg,
mp3, ...) and one CSV in a directory (the "manual directory"):

    MANUAL_DIR/
      tags.csv          (or any single *.csv; choose one with --set csv=NAME.csv)
      songs/a.mp3  songs/b.flac ...

The CSV has a header row and
  - a `path` column: the audio file, relative to MANUAL_DIR (or absolute);
  - EITHER a `tags` column with tag names joined by `;` (e.g. `rock;guitar;female vocal`),
    OR one column per tag holding 0/1 (every column except path, split and the optional id);
  - optionally a `split` column: train / validation / test (also valid, val, dev, training,
    testing). Any other value (e.g. `holdout`, `segments`) makes a named extra split holding
    those rows (lowercased, characters other than letters, digits and `_` turned into `_`),
    which `evaluate --split`, `explain --dataset ... --split` and the benchmarks can read; the
    model never trains or validates on it. Only the splits with rows exist: a CSV whose rows are
    all `test` builds an evaluation-only dataset (training on it stops with one line naming the
    missing `train` split). Without the column the clips are split at random with a seed:
    80 / 10 / 10 % by default.
Column names, the CSV delimiter, the tag separator, the fractions and the seed are config fields,
set at build time:

    tagger-jax build-dataset audio_folder --data-dir ~/tensorflow_datasets --manual-dir MANUAL_DIR
    tagger-jax build-dataset audio_folder --config mine --set tag_separator=, \\
        --set split_fractions=0.7,0.15,0.15 --data-dir ~/tensorflow_datasets --manual-dir MANUAL_DIR

The tag vocabulary is derived from the CSV (tags column: most frequent first, ties alphabetical;
0/1 columns: column order) and saved with the dataset (`tag_names`, `tags.txt`); two tags that
differ only in case are refused (one tag spelt two ways would be learnt as two). Files that are
missing or cannot be decoded are skipped and listed in `skipped_files.tsv`.

The metadata records what the build came from (`built_from`: the manual directory's resolved
path and the CSV's path, size, modification time and SHA-256). Asking for the same dataset in the
same data directory from another manual directory, or after the CSV changed, is refused
(`AudioFolder.reuse_conflict`) instead of silently reusing the old build.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tagger_jax import errors
from tagger_jax import tags as tags_lib
from tagger_jax.datasets._common import (SPLITS, TaggingBuilder, TaggingConfig, multi_hot,
                                         utf8_error)

SEPARATOR_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|",
                   "space": " "}  # `--set delimiter=tab` (a tab is awkward to type in a shell)
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                 "valid": "validation", "val": "validation", "dev": "validation",
                 "test": "test", "testing": "test"}

INSTRUCTIONS = __doc__.split("\n\n", 1)[1].split("The tag vocabulary")[0]


@dataclasses.dataclass(eq=False)
class AudioFolderConfig(TaggingConfig):
    """How to read the CSV and split the clips."""

    csv: str = ""  # CSV file relative to the manual dir ("" = the only *.csv there)
    delimiter: str = ","  # CSV field delimiter
    path_column: str = tags_lib.CSV_PATH_COLUMN  # column with the audio file path
    tags_column: str = tags_lib.CSV_TAGS_COLUMN  # joined tag names; absent = a 0/1 column per tag
    tag_separator: str = tags_lib.CSV_TAG_SEPARATOR  # separator inside the tags column
    split_column: str = "split"  # optional column train/validation/test
    id_column: str = ""  # optional column with clip ids ("" = use the path)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/validation/test
    split_seed: int = 0  # seed of the random split when there is no split column
    drop_untagged: bool = False  # drop clips with no tag

    def __post_init__(self):
        """Also: the delimiter and tag separator by name (`tab`, `\\t`, `comma`, `semicolon`,
        `pipe`, `space`), the delimiter one character, the separator not empty, the fractions
        three numbers summing to 1; each refused with a one-line `errors.ConfigError`."""
        super().__post_init__()
        for field in ("delimiter", "tag_separator"):
            value = getattr(self, field)
            object.__setattr__(self, field, SEPARATOR_NAMES.get(value.strip().lower(), value)
                               if len(value) > 1 else value)
        names = ", ".join(SEPARATOR_NAMES)
        if len(self.delimiter) != 1:
            raise errors.ConfigError(f"config {self.name!r}: delimiter must be one character or "
                                     f"one of {names}, got {self.delimiter!r}")
        if not self.tag_separator:
            raise errors.ConfigError(f"config {self.name!r}: tag_separator must not be empty "
                                     f"(one of {names}, or any text)")
        try:
            check_fractions(self.split_fractions)
        except ValueError as e:
            raise errors.ConfigError(f"config {self.name!r}: {e}") from None


@dataclasses.dataclass(frozen=True)
class Row:
    line: int
    path: str
    clip_id: str
    tags: tuple[str, ...]
    split: str | None


def _find_csv(root: Path, name: str) -> Path:
    if name:
        p = Path(name) if Path(name).is_absolute() else root / name
        if not p.is_file():
            raise FileNotFoundError(f"{p}: tag CSV not found")
        return p
    found = sorted(root.glob("*.csv"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{root}: expected exactly one *.csv with the tags, found {[p.name for p in found]}; "
            "name it with --set csv=FILE.csv")
    return found[0]


def source_record(manual_dir: Path, csv_path: Path) -> dict[str, Any]:
    """What a build reads, cheaply fingerprinted: {"manual_dir", "csv" (resolved paths),
    "csv_bytes", "csv_mtime_ns", "csv_sha256"}. The audio files are not hashed (they are many and
    large); a changed CSV or another manual directory is what this detects."""
    csv_path = csv_path.resolve()
    stat = csv_path.stat()
    return {"manual_dir": str(manual_dir.resolve()), "csv": str(csv_path),
            "csv_bytes": stat.st_size, "csv_mtime_ns": stat.st_mtime_ns,
            "csv_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest()}


def _same_csv(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    return (recorded.get("csv") == current["csv"]
            and recorded.get("csv_bytes") == current["csv_bytes"]
            and recorded.get("csv_sha256") == current["csv_sha256"])


def _describe(record: dict[str, Any]) -> str:
    return (f"{record.get('manual_dir')} (CSV {record.get('csv')}, {record.get('csv_bytes')} "
            f"bytes, sha256 {str(record.get('csv_sha256'))[:12]})")


def read_table(path: Path, config: AudioFolderConfig) -> tuple[list[Row], list[str]]:
    """Rows of the CSV and the tag vocabulary (see the module docstring for the rules); a
    ValueError naming the file (and line) for a CSV that breaks them or is not UTF-8."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=config.delimiter)
            columns = list(reader.fieldnames or [])
            records = list(reader)
    except UnicodeDecodeError as e:
        raise utf8_error(path, e) from None
    if any("\x00" in c for c in columns):  # ASCII as UTF-16 decodes as UTF-8 with NULs between
        raise ValueError(f"{path}: its header holds NUL bytes: UTF-16 text without a byte-order "
                         "mark? save the file as UTF-8")
    if config.path_column not in columns:
        hint = ""
        if len(columns) == 1:  # the header did not split: another delimiter?
            used = [n for n, c in (("semicolon", ";"), ("tab", "\t"), ("pipe", "|"),
                                   ("comma", ",")) if c in columns[0] and c != config.delimiter]
            if used:
                hint = f"; is the file {used[0]}-separated? --set delimiter={used[0]}"
        raise ValueError(f"{path}: no {config.path_column!r} column (columns: {columns}){hint}")
    has_split = config.split_column in columns
    if config.id_column and config.id_column not in columns:
        raise ValueError(f"{path}: no id column {config.id_column!r} (columns: {columns})")
    tag_columns: list[str] = []
    if config.tags_column not in columns:
        skip = {config.path_column, config.split_column, config.id_column}
        tag_columns = [c for c in columns if c not in skip]
        if not tag_columns:
            raise ValueError(f"{path}: neither a {config.tags_column!r} column nor 0/1 tag columns")
    rows = []
    spelled: dict[str, tuple[str, int]] = {}  # extra split name -> (value, line) that made it
    for line, rec in enumerate(records, start=2):
        rel = (rec.get(config.path_column) or "").strip()
        if not rel:
            raise ValueError(f"{path}:{line}: empty {config.path_column!r}")
        if tag_columns:
            tags = []
            for c in tag_columns:
                value = (rec.get(c) or "").strip()
                if value not in ("0", "1", ""):
                    raise ValueError(f"{path}:{line}: column {c!r} must be 0 or 1, got {value!r}")
                if value == "1":
                    tags.append(c)
        else:
            text = rec.get(config.tags_column) or ""
            tags = [t.strip() for t in text.split(config.tag_separator)]
            tags = list(dict.fromkeys(t for t in tags if t))
        split = None
        if has_split:
            value = (rec.get(config.split_column) or "").strip().lower()
            if not value:
                raise ValueError(f"{path}:{line}: empty {config.split_column!r}")
            try:
                split = SPLIT_ALIASES.get(value) or extra_split_name(value)
            except ValueError as e:
                raise ValueError(f"{path}:{line}: {e}") from None
            if value not in SPLIT_ALIASES:  # two spellings would merge into one split silently
                first, first_line = spelled.setdefault(split, (value, line))
                if first != value:
                    raise ValueError(f"{path}:{line}: split value {value!r} and {first!r} (line "
                                     f"{first_line}) both become split {split!r}; write them "
                                     "alike, or give them names that differ in letters or digits")
        clip_id = (rec.get(config.id_column) or "").strip() if config.id_column else rel
        rows.append(Row(line, rel, clip_id or rel, tuple(tags), split))
    if tag_columns:
        vocab = tag_columns
    else:
        counts = collections.Counter(t for r in rows for t in r.tags)
        vocab = sorted(counts, key=lambda t: (-counts[t], t))
    if not vocab:
        raise ValueError(f"{path}: no tags found")
    by_case: dict[str, str] = {}
    for tag in vocab:  # two spellings of one tag would train and score as two tags
        other = by_case.setdefault(tag.casefold(), tag)
        if other != tag:
            where = ["header" if tag_columns else f"line {min(r.line for r in rows if t in r.tags)}"
                     for t in (other, tag)]
            raise ValueError(f"{path}: tags {other!r} ({where[0]}) and {tag!r} ({where[1]}) "
                             "differ only in case; write them alike")
    lines_of: dict[str, list[int]] = collections.defaultdict(list)
    for r in rows:
        lines_of[r.clip_id].append(r.line)
    dupes = [f"{i!r} (lines {', '.join(map(str, n))})" for i, n in lines_of.items() if len(n) > 1]
    if dupes:
        more = f" and {len(dupes) - 3} more" if len(dupes) > 3 else ""
        raise ValueError(f"{path}: {len(dupes)} clip(s) listed twice: {'; '.join(dupes[:3])}"
                         f"{more}; a clip may have one row")
    return rows, vocab


def extra_split_name(value: str) -> str:
    """The split name of a CSV split value that is not train / validation / test."""
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in value.strip().lower())
    if not name.strip("_"):
        raise ValueError(f"split value {value!r} has no letters or digits")
    if name == "all":  # TFDS reads "all" as the union of the splits
        raise ValueError("split value 'all' is reserved by TFDS; name that split otherwise")
    return name


def check_fractions(fractions) -> np.ndarray:
    """`split_fractions` as a float64 (3,) array; ValueError unless 3 non-negative numbers
    summing to 1."""
    try:
        f = np.asarray(fractions, np.float64)
    except (TypeError, ValueError):
        f = np.zeros(0)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1 "
                         f"(train, validation, test), got {fractions}")
    return f


def seeded_split(n: int, fractions, seed: int) -> list[str]:
    """A split name per row: a seeded permutation cut by `fractions`. A split whose fraction is
    above 0 gets at least one clip when n >= 3; one whose fraction is 0 gets none (and is not
    built)."""
    f = check_fractions(fractions)
    n_val, n_test = int(round(f[1] * n)), int(round(f[2] * n))
    if n >= 3:
        n_val, n_test = (max(int(f[1] > 0), n_val), max(int(f[2] > 0), n_test))
    order = np.random.default_rng(seed).permutation(n)
    out = ["train"] * n
    for i in order[:n_val]:
        out[i] = "validation"
    for i in order[n_val:n_val + n_test]:
        out[i] = "test"
    return out


class AudioFolder(TaggingBuilder):
    """A user's own audio collection with tags from a CSV."""

    name = "audio_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    NUM_TAGS = None  # the vocabulary comes from the CSV
    BUILDER_CONFIGS = [
        AudioFolderConfig(name="default", description="Log-mel spectrograms."),
        AudioFolderConfig(name="waveform", waveform=True,
                          description="Log-mel plus the 16 kHz waveform (lee_won)."),
    ]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    MANUAL_FILES = "one *.csv of tags (a path column and the tags) and the audio files it names"

    @classmethod
    def reuse_conflict(cls, metadata: dict[str, Any], manual_dir: str | os.PathLike | None,
                       builder_config: Any = None) -> str | None:
        """Why an existing build (its `metadata`) must not stand for a build from `manual_dir`:
        a phrase naming both sources, or None when the sources match (or no
        manual directory is asked for). A build from before `built_from` was recorded is accepted
        (nothing to compare). Its CSV is the one `builder_config.csv` names, else (the only
        *.csv) the one the old build read when the manual directory is the same."""
        recorded = metadata.get("built_from")
        if not manual_dir or not recorded:
            return None
        root = Path(manual_dir).resolve()
        name = getattr(builder_config, "csv", "")  # "" (or a read-only config): as built
        try:
            csv_path = (_find_csv(root, name) if name
                        else Path(recorded["csv"]) if root == Path(recorded["manual_dir"])
                        else _find_csv(root, ""))
            current = source_record(root, csv_path)
        except (FileNotFoundError, OSError) as e:
            current = {"manual_dir": str(root), "csv": f"unreadable: {e}", "csv_bytes": None,
                       "csv_sha256": None}
        if current["manual_dir"] == recorded.get("manual_dir") and _same_csv(recorded, current):
            return None
        return f"built from {_describe(recorded)}, but this run asks for {_describe(current)}"

    def preflight(self, manual_dir: Path | None = None) -> None:
        """The CSV found and read (`read_table`'s every check) before the build starts: a CSV
        it refuses leaves no folder behind (it left the dataset's empty folders and TFDS's
        download folders)."""
        if manual_dir is not None:
            read_table(_find_csv(Path(manual_dir), self.builder_config.csv), self.builder_config)

    def _split_generators(self, dl_manager):
        config = self.builder_config
        root = Path(dl_manager.manual_dir)
        csv_path = _find_csv(root, config.csv)
        rows, vocab = read_table(csv_path, config)
        self._extra_splits = tuple(sorted({r.split for r in rows if r.split is not None}
                                          - set(SPLITS)))
        self._set_tags(vocab)
        if all(r.split is not None for r in rows):
            splits = [r.split for r in rows]
            self._note("split_source", f"column {config.split_column!r}")
        else:
            splits = seeded_split(len(rows), config.split_fractions, config.split_seed)
            self._note("split_source", f"seeded: fractions {list(config.split_fractions)}, "
                                       f"seed {config.split_seed}")
        items = {s: [] for s in self._split_names()}
        dropped = 0
        for row, split in zip(rows, splits):
            if config.drop_untagged and not row.tags:
                dropped += 1
                continue
            file = Path(row.path) if Path(row.path).is_absolute() else root / row.path
            item = {"key": row.clip_id, "clip_id": row.clip_id, "path": row.path,
                    "tags": multi_hot(row.tags, vocab), "file": str(file)}
            items[split].append(item)
        if items["train"]:  # a tag only other splits have: learnt from nothing, scored anyway
            trained = np.stack([item["tags"] for item in items["train"]]).any(axis=0)
            lacking = [t for t, seen in zip(vocab, trained) if not seen]
            self._note("tags_without_train_clips", lacking)
            if lacking:
                print(f"warning: {csv_path}: {len(lacking)} tag(s) have no row in the train "
                      f"split ({', '.join(lacking[:10])}{', ...' if len(lacking) > 10 else ''}): "
                      "a model trained on it cannot learn them, yet validation and tests "
                      "score them", file=sys.stderr, flush=True)
        self._present = tuple(s for s in self._split_names() if items[s])
        if not self._present:
            raise ValueError(f"{csv_path}: no clips to build (every row was dropped as untagged)")
        self._note("missing_splits", [s for s in SPLITS if not items[s]])
        self._note("source", csv_path.name)
        self._note("built_from", source_record(root, csv_path))
        self._note("dropped_untagged", dropped)
        self._note("extra_splits", list(self._extra_splits))
        return {s: self._generate_examples(s, items[s]) for s in self._present}

    def _split_names(self) -> tuple[str, ...]:
        """The splits with rows once the CSV is read (`_present`), before that every name."""
        return getattr(self, "_present", None) or SPLITS + getattr(self, "_extra_splits", ())

    def _generate_examples(self, split: str, items: list[dict]):
        yield from self._extract_audio(split, items)
