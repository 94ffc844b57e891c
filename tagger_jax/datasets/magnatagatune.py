"""`magnatagatune`: MagnaTagATune, top-50 tags, the authors' split by audio folder.

Manual download:
  1. From the MagnaTagATune page (https://mirg.city.ac.uk/codeapps/the-magnatagatune-dataset)
     download `annotations_final.csv` and the three parts `mp3.zip.001`, `mp3.zip.002`,
     `mp3.zip.003`.
  2. Put them in one directory, the "manual directory". Unpacking is optional: the builder reads
     the parts directly. If you did unpack (`cat mp3.zip.* > mp3.zip && unzip mp3.zip`), keep the
     folders `0` ... `9`, `a` ... `f`:

         MANUAL_DIR/
           annotations_final.csv
           mp3.zip.001  mp3.zip.002  mp3.zip.003        (or: mp3.zip, or the folders below)
           0/ 1/ ... 9/ a/ ... f/   (*.mp3; may also sit in MANUAL_DIR/mp3/)

  3. Build (decoding runs in parallel worker processes, about 25,000 clips):

         tagger-jax build-dataset magnatagatune --data-dir ~/tensorflow_datasets \\
             --manual-dir MANUAL_DIR [--config waveform] [--num-workers N]

What the builder does (the authors' protocol, `shared/reference/original-implementation.md`):
  - tags: the 50 tag columns of `annotations_final.csv` with the most positive clips, in
    descending count order (ties: column order); for the real file this is
    `tagger_jax.tags.MTAT_TOP50`, the index order of the authors' released checkpoint;
  - split by the first character of `mp3_path`: `0`-`b` train, `c` validation, `d`-`f` test;
  - clips with none of the 50 tags are dropped from every split (counts in the metadata);
  - files that are missing, empty or cannot be decoded are skipped and listed in the build report
    (`skipped_files.tsv` in the dataset directory); the build does not stop (unless a whole split
    is skipped). Zip parts with one missing, a gap or a truncated part are refused before any
    clip is read (`_archive.check_zip`).
Configs: `default` (log-mel), `waveform` (also the 16 kHz audio, about 1.9 MB per clip), and
`won2020`: the cleaned split of Won, Ferraro, Bogdanov and Serra (2020), "Evaluation of CNN-based
automatic music tagging models" (SMC), the split the field compares on today. Get its split files
from the paper's code repository (github.com/minzwon/sota-music-tagging-models, folder
`split/mtat/`: `train.npy`, `valid.npy`, `test.npy`, `tags.npy`) and put them in the manual
directory (or in MANUAL_DIR/split/mtat/). Each of the three split files is a NumPy array of
strings "INDEX<TAB>MP3_PATH" (INDEX: the clip's data row in `annotations_final.csv`, from 0);
`tags.npy` holds the 50 tag names in the paper's model order (optional: without it, the top-50
order above, and the build says so). Labels are the annotations' 0/1 columns of those tags; a
line whose MP3_PATH differs from the annotations' row INDEX stops the build with a message naming
the file and line; a clip listed in two split files is built into both, with a warning line
(`read_split_files`). Their
self-attention model scores ROC-AUC 0.9077 / PR-AUC 0.4445 on its test split (docs/evaluation.md).
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from tagger_jax import errors
from tagger_jax.datasets import _archive
from tagger_jax.datasets._common import (SPLITS, TaggingBuilder, TaggingConfig, find_file,
                                         manual_hint, near_misses, utf8_error)
from tagger_jax.tags import MTAT_TOP50, TEXT_ENCODING

log = logging.getLogger(__name__)

NUM_CLIPS = 25863  # rows of the official annotations_final.csv
TOP_N = 50
SPLIT_OF_FOLDER = {**{c: "train" for c in "0123456789ab"}, "c": "validation",
                   **{c: "test" for c in "def"}}
FOLDERS = tuple(SPLIT_OF_FOLDER)

INSTRUCTIONS = __doc__.split("Manual download:")[1].split("What the")[0]


@dataclasses.dataclass(frozen=True)
class Annotations:
    """The parsed `annotations_final.csv`."""

    clip_ids: list[str]
    tag_names: list[str]
    labels: np.ndarray  # (clips, tags) uint8
    mp3_paths: list[str]
    lines: list[int] = dataclasses.field(default_factory=list)  # each clip's line in the file


def read_annotations(path: str | Path) -> Annotations:
    """Parses `annotations_final.csv`: tab-separated, double-quoted, `clip_id`, tag columns of
    0/1, `mp3_path` last. Raises ValueError naming the file and line for anything else."""
    path = Path(path)
    try:
        return _read_annotations(path)
    except UnicodeDecodeError as e:
        raise utf8_error(path, e) from None


def _read_annotations(path: Path) -> Annotations:
    with open(path, newline="", encoding=TEXT_ENCODING) as f:
        rows = csv.reader(f, delimiter="\t", quotechar='"')
        header = next(rows, None)
        if not header or header[0] != "clip_id" or header[-1] != "mp3_path" or len(header) < 3:
            if header and len(header) > 1 and header[0] == "clip_id":  # the end is wrong
                got = f"got ... {header[-3:]} at its end ({len(header)} columns)"
            elif not header or len(header) > 1 or "," not in header[0]:
                got = f"got {header[:3] if header else header}..."
            else:
                got = f"got a comma-separated line ({header[0][:40]}...): re-save it with tabs"
            raise ValueError(f"{path}: expected a tab-separated header starting with clip_id and "
                             f"ending with mp3_path, {got}")
        names = header[1:-1]
        clip_ids, paths, labels, lines = [], [], [], []
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line}: {len(row)} columns, header has {len(header)}")
            values = row[1:-1]
            if any(v not in ("0", "1") for v in values):
                bad = next(v for v in values if v not in ("0", "1"))
                raise ValueError(f"{path}:{line}: tag values must be 0 or 1, found {bad!r}")
            clip_ids.append(row[0])
            paths.append(row[-1])
            labels.append([v == "1" for v in values])
            lines.append(line)
    return Annotations(clip_ids, names, np.asarray(labels, np.uint8).reshape(-1, len(names)),
                       paths, lines)


def top_tags(labels: np.ndarray, names: list[str], n: int = TOP_N,
             source: str | Path = "") -> list[str]:
    """The `n` most frequent tags, most frequent first; ties keep column order. ValueError
    (naming `source`, the annotations file, if given) when there are fewer than `n` columns."""
    if len(names) < n:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}need at least {n} tag columns, found {len(names)}")
    counts = labels.sum(axis=0)
    order = sorted(range(len(names)), key=lambda i: (-int(counts[i]), i))
    return [names[i] for i in order[:n]]


def split_of(mp3_path: str) -> str:
    """The authors' split rule: by the audio folder, the first character of `mp3_path`."""
    folder = mp3_path[:1]
    if folder not in SPLIT_OF_FOLDER:
        raise ValueError(f"mp3_path {mp3_path!r} does not start with one of the folders 0-9, a-f")
    return SPLIT_OF_FOLDER[folder]


def audio_locator(root: Path) -> Callable[[str], dict]:
    """Maps an `mp3_path` to a worker item source: unpacked folders, or the zip (parts)."""
    for base in (root, root / "mp3", root / "audio"):
        present = [c for c in FOLDERS if (base / c).is_dir()]
        if present:
            if len(present) < len(FOLDERS):  # found now, not after decoding the splits before
                missing = [c for c in FOLDERS if c not in present]
                splits = sorted({SPLIT_OF_FOLDER[c] for c in missing})
                raise errors.DataError(
                    f"{base}: the unpacked MagnaTagATune audio lacks the folder(s) "
                    f"{', '.join(missing)} (of the {' and '.join(splits)} split); "
                    f"all 16 (0-9, a-f) are needed. Unpack the archive again, or build from "
                    f"the zip parts. {manual_hint('magnatagatune')}")
            return lambda rel, base=base: {"file": str(base / rel)}
    parts = _archive.find_parts(root, "mp3.zip")
    if not parts and (root / "mp3.zip").is_file():
        parts = [root / "mp3.zip"]
    if not parts:
        deeper = sorted({p.parent for p in root.glob("*/mp3.zip*")}
                        | {p.parent.parent for p in root.glob("*/*/0") if p.is_dir()}
                        | {p.parent for p in root.glob("*/0") if p.is_dir()
                           and p.parent.name not in ("mp3", "audio")})
        hint = (f" Found MagnaTagATune audio in {', '.join(map(str, deeper[:2]))}: give that "
                "folder as --manual-dir?" if deeper else "")
        raise FileNotFoundError(
            f"{root}: no MagnaTagATune audio found: expected the folders 0-9, a-f (unpacked) or "
            f"mp3.zip.001, mp3.zip.002, mp3.zip.003 in the manual directory.{hint} "
            f"{manual_hint('magnatagatune')}")
    part_names = tuple(str(p) for p in parts)
    members = {}
    for name in _archive.check_zip(parts).namelist():
        if not name.endswith("/"):
            members["/".join(name.split("/")[-2:])] = name  # tolerate a top-level folder

    def locate(rel: str) -> dict:
        member = members.get(rel)
        if member is None:
            return {"error": f"{rel}: not in {parts[0].name}... (file not found)"}
        return {"zip": part_names, "member": member}

    return locate


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (NumPy's format description)
SPLIT_FILE_NAMES = {"train": ("train.npy", "train_new.npy"),
                    "validation": ("valid.npy", "valid_new.npy"),
                    "test": ("test.npy", "test_new.npy")}


@dataclasses.dataclass(eq=False)
class MagnatagatuneConfig(TaggingConfig):
    """MagnaTagATune builder config (`waveform` adds the audio)."""

    split_files: bool = False  # read Won et al. (2020)'s split files (`won2020`)


def split_dir(root: Path) -> Path:
    """Where the `won2020` split files are read: MANUAL_DIR/split/mtat if it exists (the
    layout of the paper's repository), else MANUAL_DIR."""
    return root / "split" / "mtat" if (root / "split" / "mtat").is_dir() else root


def read_split_files(root: Path, ann: Annotations) -> tuple[dict[str, list[int]], list[str] | None]:
    """({split: annotation row indices}, tag names from tags.npy or None) of Won et al. (2020)'s
    split files under `root` (or root/split/mtat). Raises FileNotFoundError / ValueError naming
    the file (and line) on a missing file, a line that does not match the annotations or a
    `tags.npy` that is not 50 tag names; a clip listed in two split files is a warning line."""
    base = split_dir(root)
    out: dict[str, list[int]] = {}
    files: dict[str, Path] = {}
    missing, near = [], []
    for split, names in SPLIT_FILE_NAMES.items():
        found = [base / n for n in names if (base / n).is_file()]
        if found:
            files[split] = found[0]
        else:
            missing.append(" or ".join(names))
            near += near_misses(root, names)
    if missing:  # every missing file at once
        elsewhere = (f" (found {', '.join(map(str, near))}: move or rename them into {base})"
                     if near else "")
        raise FileNotFoundError(
            f"Won et al. (2020) split files missing in {base}: {'; '.join(missing)}{elsewhere}. "
            "See the `won2020` config in the magnatagatune docstring.")
    for split, path in files.items():
        with open(path, "rb") as f:
            if f.read(6) != NPY_MAGIC:  # else NumPy reads it as a pickle and says so
                raise ValueError(f"{path}: not a .npy file (it does not start with NumPy's "
                                 "header); the split files are the paper's .npy arrays of "
                                 "'INDEX<TAB>MP3_PATH' lines")
        try:
            lines = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            pickled = "allow_pickle" in str(e)
            raise ValueError(
                f"{path}: not a NumPy array of strings ("
                + ("it holds Python objects, which this builder does not unpickle; if you trust "
                   "the file, convert it with `np.save(PATH, np.load(PATH, allow_pickle=True)"
                   ".astype(str))`" if pickled else str(e)) + ")") from None
        rows = []
        for k, line in enumerate(np.atleast_1d(lines).tolist()):
            line = line.decode() if isinstance(line, bytes) else line
            index, sep, rel = str(line).partition("\t")
            if not sep or not index.strip().isdigit():
                raise ValueError(f"{path}[{k}]: expected 'INDEX<TAB>MP3_PATH', got {line!r}")
            i = int(index)
            if i >= len(ann.mp3_paths) or ann.mp3_paths[i] != rel.strip():
                have = ann.mp3_paths[i] if i < len(ann.mp3_paths) else "no such row"
                raise ValueError(f"{path}[{k}]: {rel.strip()!r} is not annotation row {i} "
                                 f"({have})")
            rows.append(i)
        out[split] = rows
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        both = sorted(set(out[a]) & set(out[b]))
        if both:  # the published files are the reference: kept as they are, but said
            print(f"warning: {files[a]} and {files[b]} both list {len(both)} clip(s), e.g. "
                  f"annotation row {both[0]} ({ann.mp3_paths[both[0]]}); they are built into "
                  "both splits, as the files say", file=sys.stderr)
    tags_path = base / "tags.npy"
    if not tags_path.is_file():
        return out, None
    what = f"a NumPy array of the {TOP_N} tag names (strings) in the model's order"
    try:
        tags = np.load(tags_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{tags_path}: must hold {what}; it does not load ({e})") from None
    if tags.dtype.kind not in "US" or tags.shape != (TOP_N,):
        raise ValueError(f"{tags_path}: must hold {what}; it holds {tags.dtype} shape "
                         f"{tags.shape}")
    return out, [t.decode() if isinstance(t, bytes) else str(t) for t in tags.tolist()]


class Magnatagatune(TaggingBuilder):
    """MagnaTagATune (Law et al., 2009), top-50 tags, split by folder as in Won et al. (2019)."""

    name = "magnatagatune"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    NUM_TAGS = TOP_N
    BUILDER_CONFIGS = [
        MagnatagatuneConfig(name="default", description="Log-mel spectrograms."),
        MagnatagatuneConfig(name="waveform", waveform=True,
                            description="Log-mel plus the 16 kHz waveform (lee_won)."),
        MagnatagatuneConfig(name="won2020", split_files=True,
                            description="The cleaned split of Won et al. (2020), from its files."),
    ]
    DEFAULT_CONFIG_NAME = "default"
    HOMEPAGE = "https://mirg.city.ac.uk/codeapps/the-magnatagatune-dataset"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    @property
    def MANUAL_FILES(self) -> str:  # noqa: N802 - the name every builder's errors read
        """What the manual directory must hold, for this config: `won2020` needs the split
        files too (a trial's empty manual directory was told of the annotations and audio only)."""
        files = ("annotations_final.csv and mp3.zip.001, mp3.zip.002, mp3.zip.003 (or the "
                 "unpacked folders 0-9, a-f)")
        if self.builder_config.split_files:
            names = ", ".join(n[0] for n in SPLIT_FILE_NAMES.values())
            files += f", and Won et al. (2020)'s split files {names} (in split/mtat/ or beside)"
        return files

    def preflight(self, manual_dir: Path | None = None) -> None:
        """The audio of the authors' split (unpacked folders, or every zip part, complete:
        `audio_locator`) before the build starts; `split_files` builds check theirs later."""
        if manual_dir is not None and not self.builder_config.split_files:
            audio_locator(Path(manual_dir))

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        csv_path = find_file(root, ["annotations_final.csv"], "annotations_final.csv",
                             manual_hint(self.name))
        ann = read_annotations(csv_path)
        if self.builder_config.split_files:
            return self._from_split_files(root, csv_path, ann)
        tags = top_tags(ann.labels, ann.tag_names, source=csv_path)
        if len(ann.clip_ids) == NUM_CLIPS and tuple(tags) != MTAT_TOP50:
            log.warning("%s: top-50 tags differ from the authors' order (tagger_jax.tags."
                        "MTAT_TOP50); models imported from the authors will not match", csv_path)
        self._set_tags(tags, source=csv_path)
        y = ann.labels[:, [ann.tag_names.index(t) for t in tags]]
        locate = audio_locator(root)
        items = {s: [] for s in SPLITS}
        dropped = {s: 0 for s in SPLITS}
        for k, (clip_id, rel, row) in enumerate(zip(ann.clip_ids, ann.mp3_paths, y)):
            try:
                split = split_of(rel)
            except ValueError as e:
                raise ValueError(f"{csv_path}:{ann.lines[k]}: {e}") from None
            if not row.any():
                dropped[split] += 1
                continue
            items[split].append({"key": clip_id, "clip_id": clip_id, "path": rel, "tags": row,
                                 **locate(rel)})
        self._note("source", str(csv_path.name))
        self._note_manual_dir(root)
        self._note("num_annotated", len(ann.clip_ids))
        self._note("dropped_without_top_tags", dropped)
        return {split: self._generate_examples(split, items[split]) for split in SPLITS}

    def _from_split_files(self, root: Path, csv_path: Path, ann: Annotations):
        rows, tags = read_split_files(root, ann)
        source = "tags.npy"
        if tags is None:
            source = f"the top-{TOP_N} order of {csv_path.name}"
            print(f"{self.name}/{self.builder_config.name}: no tags.npy beside the split files: "
                  f"the tags are {source}, which may differ from the paper's model order",
                  file=sys.stderr, flush=True)
            tags = top_tags(ann.labels, ann.tag_names, source=csv_path)
        missing = [t for t in tags if t not in ann.tag_names]
        if missing:
            raise ValueError(f"{split_dir(root) / 'tags.npy'}: names tags not in {csv_path}: "
                             f"{missing}")
        self._set_tags(tags, source=source)
        y = ann.labels[:, [ann.tag_names.index(t) for t in tags]]
        locate = audio_locator(root)
        items = {s: [{"key": ann.clip_ids[i], "clip_id": ann.clip_ids[i],
                      "path": ann.mp3_paths[i], "tags": y[i], **locate(ann.mp3_paths[i])}
                     for i in rows[s]] for s in SPLITS}
        self._note("source", f"{csv_path.name} + Won et al. (2020) split files")
        self._note("tag_order", source)
        self._note_manual_dir(root)
        self._note("num_annotated", len(ann.clip_ids))
        return {split: self._generate_examples(split, items[split]) for split in SPLITS}

    def _generate_examples(self, split: str, items: list[dict]):
        yield from self._extract_audio(split, items)
