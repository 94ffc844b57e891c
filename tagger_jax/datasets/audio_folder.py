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

What a new user's trial found, and what the build does about it: a first line `sep=X` (Excel's
delimiter line) is skipped and X used as the delimiter. A header whose path / tags / split
column differs from the configured name only in case or a plural `s` (`Tags`, `tag`), or a
column holding only split names while there is no split column, is refused naming the column
and the `--set` field (a missing path column also names the column that holds audio file
names). One file written two ways (`./a.wav` and `a.wav`, `x/../a.wav`, a link) is refused like
a repeated row. Tags of the tags column holding `,` or `|` (another separator than the configured
one) are built as written with one `warning:` line naming `--set tag_separator=`; an extra split
named almost like a standard one (`validation set`) is a `note:` line. A path whose file on disk
differs only in Unicode normalisation (NFC / NFD) reads that file (a `note:` line); a missing
file whose near miss exists (other letter case, backslashes, another folder) is skipped with
"did you mean PATH?". The warning and note lines are kept in the metadata (`csv_notes`). A row
with more non-empty cells than the header (an unquoted delimiter inside the tags) is refused.

The metadata records what the build came from (`built_from`: the manual directory's resolved
path and the CSV's path, size, modification time and SHA-256). Asking for the same dataset in the
same data directory from another manual directory, or after the CSV changed, is refused
(`AudioFolder.reuse_conflict`) instead of silently reusing the old build; a run that reads the
build without naming a manual directory (evaluate, `explain` or `embed --dataset`, training) gets
a `note:` line when the recorded CSV has changed since (`AudioFolder.source_note`).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import os
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tagger_jax import errors
from tagger_jax import tags as tags_lib
from tagger_jax.audio import AUDIO_SUFFIXES, display_path
from tagger_jax.datasets._common import (SPLITS, TaggingBuilder, TaggingConfig,
                                         described_fields, multi_hot, utf8_error)

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
    split_column: str = tags_lib.CSV_SPLIT_COLUMN  # optional column train/validation/test
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
            named = tags_lib.SEPARATOR_NAMES.get(value.strip().lower(), value)
            object.__setattr__(self, field, named if len(value) > 1 else value)
        names = ", ".join(tags_lib.SEPARATOR_NAMES)
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
    path: str  # as the CSV writes it
    clip_id: str
    tags: tuple[str, ...]
    split: str | None
    found: str = ""  # `path` as it is spelt on disk ("" = not looked up, or missing)
    error: str = ""  # why the file is missing, with the near miss on disk ("" = no near miss)


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
            "name one in a config of your own: --config NAME --set csv=FILE.csv (a --set build "
            "needs a new config name), or leave one CSV in the folder")
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


def read_table(path: Path, config: AudioFolderConfig, root: Path | None = None,
               warnings: list[str] | None = None) -> tuple[list[Row], list[str]]:
    """Rows of the CSV and the tag vocabulary (see the module docstring for the rules); a
    ValueError naming the file (and line) for a CSV that breaks them or is not UTF-8.

    With `root` (the manual directory) every row's file is looked up there (`_locate`): one file
    written two ways (`./a.wav`, `a.wav`) is refused like a repeated row, a name in the other
    Unicode normalisation is read from the spelling on disk, and a missing file names its near
    miss. `warnings`, when given, receives the `warning:` / `note:` lines the build prints (tags
    holding another separator, extra splits named almost like a standard one, paths respelt):
    the build goes on after them."""
    try:
        with open(path, newline="", encoding=tags_lib.TEXT_ENCODING) as f:
            declared = tags_lib.excel_separator(path, f.readline())
            if declared is None:
                f.seek(0)
            reader = csv.DictReader(f, delimiter=declared or config.delimiter)
            columns = list(reader.fieldnames or [])
            # Each record with its line in the file (the reader's count, which blank lines
            # advance; + 1 after a `sep=` line): counting records gave a trial's rows below
            # blank lines the wrong numbers. Rows of empty cells only (Excel writes `,,` rows
            # under a table) are skipped like blank lines.
            numbered = [(reader.line_num + bool(declared), rec) for rec in reader
                        if any((v or "").strip() for k, v in rec.items() if k is not None)
                        or any(str(c).strip() for c in rec.get(None) or [])]
            records = [rec for _, rec in numbered]
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
        if not hint:
            hint = "; " + _path_column_hint(columns, records, config)
            if _near_column(config.path_column, columns) is not None:
                # `Path,Tags,Split`: every misnamed column at once (a new user's trial fixed
                # them one run at a time)
                hint += "".join(f"; {m}" for m in _misnamed_columns(columns, records, config))
        raise ValueError(f"{path}: no {config.path_column!r} column (columns: {columns}){hint}")
    misnamed = _misnamed_columns(columns, records, config)
    if misnamed:
        raise ValueError(f"{path}: {'; '.join(misnamed)}")
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
    delimiter = declared or config.delimiter
    for line, rec in numbered:
        extra = [c for c in rec.get(None) or [] if c.strip()]  # cells past the header's
        if extra:  # a verifying user's `a.wav,flute,loud,train`: split 'loud', 'train' dropped
            raise ValueError(
                f"{path}:{line}: {len(columns) + len(rec[None])} cells but the header has "
                f"{len(columns)} (extra: {', '.join(map(repr, extra[:3]))}); a cell holding "
                f"the delimiter {delimiter!r} must be quoted, e.g. \"flute{delimiter}loud\", or "
                f"join tags with the tag separator {config.tag_separator!r}")
        rel = (rec.get(config.path_column) or "").strip()
        if not rel:
            raise ValueError(f"{path}:{line}: empty {config.path_column!r}")
        if tag_columns:
            tags = []
            for c in tag_columns:
                value = (rec.get(c) or "").strip()
                if value not in ("0", "1", ""):
                    raise ValueError(
                        f"{path}:{line}: column {c!r} must be 0 or 1, got {value!r} (with no "
                        f"{config.tags_column!r} column every column but path, split and id is "
                        f"a 0/1 tag column: remove it, or if it holds the tag names, --set "
                        f"tags_column={c})")
                if value == "1":
                    tags.append(c)
        else:
            text = rec.get(config.tags_column) or ""
            tags = [t.strip() for t in text.split(config.tag_separator)]
            tags = list(dict.fromkeys(t for t in tags if t))
        split = None
        if has_split:
            value = (rec.get(config.split_column) or "").strip()
            if not value:
                raise ValueError(f"{path}:{line}: empty {config.split_column!r}")
            try:
                split = split_of(value)
            except ValueError as e:
                raise ValueError(f"{path}:{line}: {e}") from None
            if value.lower() not in SPLIT_ALIASES:  # two spellings would merge silently
                first, first_line_of = spelled.setdefault(split, (value, line))
                if first.lower() != value.lower():  # letter case alone: one spelling
                    raise ValueError(f"{path}:{line}: split value {value!r} and {first!r} (line "
                                     f"{first_line_of}) both become split {split!r}; write them "
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
    notes: list[str] = []
    if root is not None:
        rows = _locate(path, Path(root), rows, notes)
    _refuse_one_file_twice(path, rows, root)
    if warnings is not None:
        if not tag_columns:
            warnings += [w for w in [separator_warning(path, rows, config)] if w]
        warnings += split_notes(path, spelled, config) + notes
    return rows, vocab


def _column_key(name: str) -> str:
    """A column name without case, surrounding spaces or a plural `s` (`Tags`, ` tag` -> tag)."""
    key = name.strip().casefold()
    return key[:-1] if key.endswith("s") else key


def _near_column(name: str, columns: list[str]) -> str | None:
    """The column that is `name` but for letter case, spaces or a plural/singular `s`."""
    return next((c for c in columns if c != name and _column_key(c) == _column_key(name)), None)


def _values(records: list[dict], column: str) -> list[str]:
    return [v.strip() for v in (r.get(column) or "" for r in records) if v.strip()]


def _is_binary(records: list[dict], column: str) -> bool:
    return all(v in ("0", "1") for v in _values(records, column))


def _holds_splits(records: list[dict], column: str) -> bool:
    """Whether every value of `column` is a standard split name (train, valid, test, ...)."""
    values = _values(records, column)
    return bool(values) and all(v.lower() in SPLIT_ALIASES for v in values)


def _misnamed_columns(columns: list[str], records: list[dict],
                      config: AudioFolderConfig) -> list[str]:
    """Why the header's tags / split column looks misnamed (a phrase each; [] if not).

    From a new user's trial: with `path,Tags,Split` (or `path,tag,split`) the tags column was
    read as a 0/1 tag column ("column 'Tags' must be 0 or 1, got 'flute'"); in the tags form a
    misnamed split column was ignored, and the clips split at random. A tags-like column whose
    values are all 0/1 is a tag column of the 0/1 form, and not named here."""
    out = []
    for field, kind in (("tags_column", "tags"), ("split_column", "split")):
        name = getattr(config, field)
        if not name or name in columns:
            continue
        near = _near_column(name, columns)
        if near is not None and not _is_binary(records, near):
            out.append(f"no {name!r} column; did you mean {near!r}? the {kind} column is named "
                       f"{name!r} (or set --set {field}={near})")
        elif field == "split_column":
            taken = {config.path_column, config.tags_column, config.id_column}
            found = [c for c in columns if c not in taken and _holds_splits(records, c)]
            if found:
                values = sorted({v.lower() for v in _values(records, found[0])})
                out.append(f"no {name!r} column, but column {found[0]!r} holds split names "
                           f"({', '.join(values)}): the split column is named {name!r} (or set "
                           f"--set {field}={found[0]}); without one the clips are split at "
                           "random")
    return out


def _path_column_hint(columns: list[str], records: list[dict], config: AudioFolderConfig) -> str:
    """The fix for a header without the path column (from a new user's trial: `File,Labels,Set`
    said only "no 'path' column"): the config field that names it, with the column that looks
    like it (the name but for case or plural, else the first whose values are audio file
    names), and the fields for the tags and split columns when they are guessable too."""
    near = _near_column(config.path_column, columns)
    if near is not None:
        return (f"did you mean {near!r}? the path column is named {config.path_column!r} (or "
                f"set --set path_column={near})")
    files = [c for c in columns if any(Path(v).suffix.lower() in AUDIO_SUFFIXES
                                       for v in _values(records[:20], c))]
    if not files:
        return (f"name the column of audio file paths {config.path_column!r}, or set "
                "--set path_column=COLUMN")
    guessed = {"path_column": files[0]}
    taken = {files[0], config.split_column, config.id_column}
    split = [c for c in columns if c not in taken and _holds_splits(records, c)]
    if config.split_column not in columns and split:
        taken.add(split[0])
    text = [c for c in columns if c not in taken and not _is_binary(records, c)]
    if config.tags_column not in columns and len(text) == 1:
        guessed["tags_column"] = text[0]
    if config.split_column not in columns and split:
        guessed["split_column"] = split[0]
    sets = " ".join(f"--set {field}={column}" for field, column in guessed.items())
    names = ", ".join(getattr(config, field) for field in guessed)
    return (f"column {files[0]!r} holds audio file names: set {sets} (or rename "
            f"{'that column' if len(guessed) == 1 else 'those columns'} {names})")


OTHER_SEPARATORS = {",": "comma", "|": "pipe", ";": "semicolon"}


def built_tag_separator(builder: Any) -> str:
    """The tag separator a build of this dataset read its CSV with: its config's, or for a
    config made with `build-dataset --set` (opened by name, without its fields) the one its
    recorded description names ("mine: {'tag_separator': 'pipe'}"); `;` when none is named.
    `explain --tags-from` reads the CSV a collection was built from with it (a trial's `|`
    tags were read as one unknown tag)."""
    value = getattr(builder.builder_config, "tag_separator", None)
    if value is None:
        described = described_fields(str(getattr(builder.builder_config, "description", "")))
        value = described.get("tag_separator") if isinstance(described, dict) else None
    value = str(value) if value else tags_lib.CSV_TAG_SEPARATOR
    return tags_lib.SEPARATOR_NAMES.get(value.strip().lower(), value) if len(value) > 1 else value


def separator_warning(path: Path, rows: list[Row], config: AudioFolderConfig) -> str | None:
    """A `warning:` line when tags of the tags column hold a common separator other than the
    configured one (`flute, loud` with `;`), else None. From a new user's trial: cells written
    with commas or pipes built one combined tag each, silently. Only a warning: a comma may be
    part of a tag's name."""
    others = [c for c in OTHER_SEPARATORS if c not in config.tag_separator]
    found: dict[str, int] = {}  # tag -> first line
    for r in rows:
        for t in r.tags:
            if any(c in t for c in others):
                found.setdefault(t, r.line)
    if not found:
        return None
    counts = collections.Counter(c for t in found for c in others if c in t)
    chars = sorted(counts, key=lambda c: (-counts[c], others.index(c)))
    shown = ", ".join(f"{t!r} (line {n})" for t, n in list(found.items())[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    name = OTHER_SEPARATORS[chars[0]]
    return (f"warning: {path}: {len(found)} tag(s) contain {' or '.join(map(repr, chars))} but "
            f"the tag separator is {config.tag_separator!r}, so each is one tag: {shown}{more}; "
            f"if they are several tags, build with --set tag_separator={name}")


def split_notes(path: Path, spelled: dict[str, tuple[str, int]],
                config: AudioFolderConfig) -> list[str]:
    """A `note:` line per extra split ({name: (CSV value, first line)}) named almost like train /
    validation / test (`validation set` -> `validation_set`). From a new user's trial: such a
    build had no validation split, and training stopped later with "no split 'validation'"."""
    out = []
    for name, (value, line) in spelled.items():
        like = next((SPLIT_ALIASES[t] for t in name.split("_") if t in SPLIT_ALIASES),
                    None) or next((s for k, s in (("train", "train"), ("valid", "validation"),
                                                  ("test", "test")) if k in name), None)
        if like:
            out.append(f"note: {path}:{line}: split value {value!r} makes the extra split "
                       f"{name!r}, which training never uses; if it is the {like} split, write "
                       f"{like!r}")
    by_letters: dict[str, list[str]] = {}  # `Hold-Out` and `holdout`: two splits (a trial)
    for name in spelled:
        by_letters.setdefault(tags_lib.folded(name), []).append(name)
    for names in (n for n in by_letters.values() if len(n) > 1):
        made = ", ".join(f"{n!r} (from {spelled[n][0]!r}, line {spelled[n][1]})" for n in names)
        out.append(f"note: {path}: the extra splits {made} differ only in separators: they are "
                   "built as separate splits; if they are one, spell it one way")
    return out


def _fold(name: str) -> str:
    """`name` compared without letter case or Unicode normalisation."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


def _file_index(root: Path, limit: int = 200_000) -> tuple[dict[str, str], dict[str, str]]:
    """({folded relative path: relative path}, {folded file name: relative path}) of the files
    under `root` (symbolic links followed once; `limit` files at most), for near misses."""
    by_path: dict[str, str] = {}
    by_name: dict[str, str] = {}
    seen: set[tuple[int, int]] = set()
    stack = [root]
    count = 0
    while stack and count < limit:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir():
                    stack.append(Path(e.path))
                    continue
            except OSError:
                continue
            rel = Path(e.path).relative_to(root).as_posix()
            by_path.setdefault(_fold(rel), rel)
            by_name.setdefault(_fold(e.name), rel)
            count += 1
    return by_path, by_name


def _locate(path: Path, root: Path, rows: list[Row], notes: list[str]) -> list[Row]:
    """`rows` with `found` (the path as spelt on disk) or `error` (a near miss) set.

    From a new user's trial: a path in the CSV differing from the file only in Unicode
    normalisation (NFC in the CSV, NFD on disk), letter case (`Songs/Clip2.OGG`) or
    backslashes (`songs\\clip0.wav`) was skipped as "file not found", naming nothing. A
    normalisation difference is the same name to a user: the file on disk is read (one `note:`
    line in `notes`). Other near misses (also the same name in another folder) are named in the
    skip reason, not used: the CSV should say which file it means."""
    out = []
    index = None
    respelt = []
    for r in rows:
        base = Path(r.path) if Path(r.path).is_absolute() else root / r.path
        if base.exists():
            out.append(dataclasses.replace(r, found=r.path))
            continue
        alt = next((a for a in (unicodedata.normalize(f, r.path) for f in ("NFC", "NFD"))
                    if a != r.path and (root / a).exists()), None)
        if alt is not None:
            respelt.append(r)
            out.append(dataclasses.replace(r, found=alt))
            continue
        near = None
        if not Path(r.path).is_absolute():
            if index is None:
                index = _file_index(root)
            wanted = os.path.normpath(r.path.replace("\\", "/"))
            near = index[0].get(_fold(wanted)) or index[1].get(_fold(Path(wanted).name))
        error = ""
        if near is not None:
            error = (f"{display_path(base)}: file not found; did you mean {near!r}? (line "
                     f"{r.line} of {path.name})")
        out.append(dataclasses.replace(r, error=error))
    if respelt:
        forms = ["NFC" if unicodedata.is_normalized("NFC", r.path) else "NFD" for r in respelt]
        notes.append(f"note: {path}: {len(respelt)} path(s) are written in another Unicode "
                     f"normalisation than the file name on disk ({forms[0]} in the CSV, e.g. "
                     f"line {respelt[0].line} {respelt[0].path!r}); the files on disk are read")
    return out


def row_splits(rows: list[Row], config: AudioFolderConfig) -> list[str]:
    """The split of each row: the CSV's split column when every row has one, else
    `seeded_split` by the config's fractions and seed."""
    if all(r.split is not None for r in rows):
        return [str(r.split) for r in rows]
    return seeded_split(len(rows), config.split_fractions, config.split_seed)


def _refuse_missing_splits(csv_path: Path, rows: list[Row], splits: list[str],
                           root: Path) -> None:
    """`errors.DataError` before any decoding when the files of every row of a split are
    missing: one line naming each such split with its first missing file (and its near miss on
    disk, `_locate`), and how many files are missing in the other splits. From a new user's
    trial: the build stopped at the first split left empty, and only the next run, after that
    row was fixed, named the next one."""
    by_split: dict[str, list[Row]] = collections.defaultdict(list)
    for row, split in zip(rows, splits):
        by_split[split].append(row)

    def file(row: Row) -> Path:
        rel = Path(row.found or row.path)
        return rel if rel.is_absolute() else root / rel

    missing = {s: [r for r in rs if not file(r).exists()] for s, rs in by_split.items()}
    empty = [s for s, rs in by_split.items() if len(missing[s]) == len(rs)]
    if not empty:
        return
    parts = []
    for split in empty:
        first = missing[split][0]
        reason = first.error or f"{display_path(file(first))}: file not found"
        count = len(by_split[split])
        what = "its only clip's file is" if count == 1 else f"the files of all {count} clips are"
        parts.append(f"split {split!r}: {what} missing ({reason}{'; ...' if count > 1 else ''})")
    others = sum(len(m) for s, m in missing.items() if s not in empty)
    rest = f"; {others} file(s) of other splits are missing too" if others else ""
    raise errors.DataError(f"{csv_path}: " + "; ".join(parts) + rest
                           + ": fix the paths in the CSV, or remove those rows")


def _refuse_one_file_twice(path: Path, rows: list[Row], root: Path | None) -> None:
    """A ValueError when two rows name one file in two spellings (`./a.wav` and `a.wav`,
    `x/../a.wav`, a symbolic or hard link), or under two ids (an id column): from a new user's
    trial, such a file was built twice, even into two splits with different tags. Files are
    compared by device and inode when they exist, else by their resolved path (without `root`:
    the path as written, normalised)."""
    first: dict[Any, Row] = {}
    pairs: list[str] = []
    ways: set[str] = set()
    for r in rows:
        if root is None:
            key: Any = os.path.normpath(r.path)
        else:
            file = Path(r.found or r.path)
            file = file if file.is_absolute() else Path(root) / file
            try:
                st = file.stat()
                key = (st.st_dev, st.st_ino)
            except OSError:
                key = os.path.realpath(file)
        other = first.setdefault(key, r)
        if other is r:
            continue
        if other.path == r.path:  # the same path under two ids (an id column)
            pairs.append(f"{r.path!r} (lines {other.line}, {r.line}: ids {other.clip_id!r}, "
                         f"{r.clip_id!r})")
        else:
            pairs.append(f"{other.path!r} (line {other.line}) and {r.path!r} (line {r.line})")
        ways.add("ids" if other.path == r.path else "paths")
    if pairs:
        more = f" and {len(pairs) - 3} more" if len(pairs) > 3 else ""
        raise ValueError(f"{path}: {len(pairs)} file(s) listed twice under different "
                         f"{' or '.join(sorted(ways, reverse=True))}: {'; '.join(pairs[:3])}"
                         f"{more}; a clip may have one row")


def split_of(value: str) -> str:
    """The split a CSV split value names: train / validation / test for theirs and their aliases
    (`SPLIT_ALIASES`, any letter case), else the extra split's name (`extra_split_name`).
    ValueError as `extra_split_name`'s."""
    return SPLIT_ALIASES.get(value.strip().lower()) or extra_split_name(value)


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

    @classmethod
    def source_note(cls, metadata: dict[str, Any]) -> str | None:
        """"its CSV ... has changed since" when the CSV the build recorded (`built_from`) is
        still at its path but holds other bytes; None when it is the same, gone (a moved
        collection) or unrecorded. A run that reads the build without `--manual-dir` (evaluate,
        explain or embed `--dataset`, training) reads the old rows; this says so."""
        recorded = metadata.get("built_from")
        if not recorded or not recorded.get("csv"):
            return None
        try:
            current = source_record(Path(recorded["manual_dir"]), Path(recorded["csv"]))
        except OSError:
            return None
        if _same_csv(recorded, current):
            return None
        then = f"{recorded.get('csv_bytes')} bytes, sha256 {str(recorded.get('csv_sha256'))[:12]}"
        return (f"its CSV {recorded['csv']} has changed since the build ({then} then; "
                f"{current['csv_bytes']} bytes, sha256 {current['csv_sha256'][:12]} now): this run "
                "reads the rows of the build")

    def preflight(self, manual_dir: Path | None = None) -> None:
        """The CSV found and read (`read_table`'s every check) and the splits it would leave
        without a file (`_refuse_missing_splits`) before the build starts: a CSV it refuses
        leaves no folder behind (it left the dataset's empty folders and TFDS's download
        folders)."""
        if manual_dir is not None:
            config = self.builder_config
            csv_path = _find_csv(Path(manual_dir), config.csv)
            rows, _ = read_table(csv_path, config, Path(manual_dir))
            kept = [(r, s) for r, s in zip(rows, row_splits(rows, config))
                    if r.tags or not config.drop_untagged]
            _refuse_missing_splits(csv_path, [r for r, _ in kept], [s for _, s in kept],
                                   Path(manual_dir))

    def _split_generators(self, dl_manager):
        config = self.builder_config
        root = Path(dl_manager.manual_dir)
        csv_path = _find_csv(root, config.csv)
        said: list[str] = []  # the CSV's warning and note lines, printed and kept
        rows, vocab = read_table(csv_path, config, root, said)
        for line in said:
            print(line, file=sys.stderr, flush=True)

        def say(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
            said.append(line)

        self._extra_splits = tuple(sorted({r.split for r in rows if r.split is not None}
                                          - set(SPLITS)))
        self._set_tags(vocab)
        splits = row_splits(rows, config)
        if all(r.split is not None for r in rows):
            self._note("split_source", f"column {config.split_column!r}")
        else:
            self._note("split_source", f"seeded: fractions {list(config.split_fractions)}, "
                                       f"seed {config.split_seed}")
        items = {s: [] for s in self._split_names()}
        dropped = 0
        untagged = [row for row in rows if not row.tags]
        if untagged:  # an empty tags cell: said either way (a trial found it kept unannounced)
            first = ", ".join(repr(row.path) for row in untagged[:3])
            more = ", ..." if len(untagged) > 3 else ""
            fate = ("left out (drop_untagged)" if config.drop_untagged else
                    "kept as clips with none of the tags (--set drop_untagged=true leaves them "
                    "out)")
            say(f"note: {csv_path}: {len(untagged)} row(s) have no tags ({first}{more}): {fate}")
        for row, split in zip(rows, splits):
            if config.drop_untagged and not row.tags:
                dropped += 1
                continue
            rel = row.found or row.path  # the spelling on disk (see `_locate`)
            file = Path(rel) if Path(rel).is_absolute() else root / rel
            item = {"key": row.clip_id, "clip_id": row.clip_id, "path": rel,
                    "tags": multi_hot(row.tags, vocab), "file": str(file)}
            if row.error:  # missing, with its near miss named
                item["error"] = row.error
            items[split].append(item)
        if items["train"]:  # a tag only other splits have: learnt from nothing, scored anyway
            # (rows whose file is missing count as none: a trial's only piano clip was one)
            found = [item["tags"] for item in items["train"] if os.path.exists(item["file"])]
            trained = (np.stack(found).any(axis=0) if found
                       else np.zeros(len(vocab), bool))  # the build refuses the empty split
            lacking = [t for t, seen in zip(vocab, trained) if not seen]
            self._note("tags_without_train_clips", lacking)
            if lacking:  # quoted when a name holds a comma (a trial's `drums, fast, loud`)
                missing = len(items["train"]) - len(found)
                say(f"warning: {csv_path}: {len(lacking)} tag(s) have no clip in the train "
                    f"split ({tags_lib.listed(lacking[:10])}"
                    f"{', ...' if len(lacking) > 10 else ''}"
                    + (f"; {missing} row(s) whose file is missing left out" if missing else "")
                    + "): a model trained on it cannot learn them, yet validation and tests "
                    "score them where they have clips")
        self._present = tuple(s for s in self._split_names() if items[s])
        if not self._present:
            raise ValueError(f"{csv_path}: no clips to build (every row was dropped as untagged)")
        absent = [s for s in SPLITS if not items[s]]
        self._note("missing_splits", absent)
        if absent:  # a trial's CSV without validation rows: said only when training stopped
            uses = [(verb, field, split) for verb, field, split in (
                ("validates", "eval_split", "validation"), ("tests", "test_split", "test"))
                if split in absent]
            say(f"note: {csv_path}: no {' and no '.join(absent)} split (no row names it)"
                + (": training " + " and ".join(f"{v} on `data.{f}` ({s})" for v, f, s in uses)
                   + f"; set it to a split this build has (`tagger-jax train ... --set "
                   f"data.{uses[0][1]}=NAME`), or give rows that split" if uses else ""))
        self._note("csv_notes", said)
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
