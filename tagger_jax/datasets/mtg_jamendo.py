"""`mtg_jamendo`: MTG-Jamendo `autotagging_top50tags`, official splits 0-4, full tracks.

Manual download:
  1. Clone the dataset repository (metadata and splits):
         git clone https://github.com/MTG/mtg-jamendo-dataset MANUAL_DIR/mtg-jamendo-dataset
  2. Download the audio with the repository's script into MANUAL_DIR/audio, e.g. (full quality,
     about 500 GB; `--type audio-low` gives the ~150 GB `*.low.mp3` version, also accepted):
         cd MANUAL_DIR/mtg-jamendo-dataset
         python3 scripts/download/download.py --dataset raw_30s --type audio ../audio \\
             --unpack --remove
  3. Layout:
         MANUAL_DIR/
           mtg-jamendo-dataset/data/splits/split-0/autotagging_top50tags-train.tsv (-validation,
               -test; split-1 ... split-4 likewise), mtg-jamendo-dataset/data/tags/top50.txt
               (or the `data/` folder directly in MANUAL_DIR)
           audio/00/ ... audio/99/   (PATH column of the TSV, e.g. 14/214.mp3 or 14/214.low.mp3)
  4. Build:
         tagger-jax build-dataset mtg_jamendo --config split0 --data-dir ~/tensorflow_datasets \\
             --manual-dir MANUAL_DIR

Tags: the 50 `category---tag` names of `data/tags/top50.txt` in that (alphabetical) order, or,
without that file, the sorted union of the split files' tags (the same list; the build says so).
A track with a tag outside the list stops the build, naming the TSV and line. Whole tracks are
stored (average about 4 minutes: about 2.6 MB of float16 mel per track); the pipeline crops.
Missing or undecodable files are skipped and listed in `skipped_files.tsv`. There is no waveform
config: whole tracks at 16 kHz float32 would take about 800 GB.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import tensorflow_datasets as tfds

from tagger_jax import errors
from tagger_jax.tags import TEXT_ENCODING, read_tag_list
from tagger_jax.datasets._common import (SPLITS, TaggingBuilder, TaggingConfig,
                                         check_audio_folder, manual_hint, multi_hot, near_misses,
                                         utf8_error)

SUBSET = "autotagging_top50tags"
NUM_SPLITS = 5  # the official splits split-0 ... split-4
HEADER = ("TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS")

INSTRUCTIONS = __doc__.split("Manual download:")[1].split("Tags:")[0]


@dataclasses.dataclass(frozen=True)
class Track:
    track_id: str
    path: str
    tags: tuple[str, ...]
    line: int = 0  # line in the split file


def read_split_file(path: str | Path) -> list[Track]:
    """Parses an `autotagging*.tsv`: the columns of `HEADER`, then more tags, tab-separated.
    Raises ValueError naming the file (and line) for anything else, a file not UTF-8 included."""
    path = Path(path)
    try:
        return _read_split_file(path)
    except UnicodeDecodeError as e:
        raise utf8_error(path, e) from None


def _read_split_file(path: Path) -> list[Track]:
    tracks = []
    with open(path, encoding=TEXT_ENCODING) as f:
        header = f.readline().rstrip("\n").split("\t")
        if tuple(header[:6]) != HEADER:
            raise ValueError(f"{path}: expected the header {HEADER}, got {tuple(header)}")
        for line_no, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if fields == [""]:
                continue
            if len(fields) < 6:
                raise ValueError(f"{path}:{line_no}: expected at least 6 tab-separated fields, "
                                 f"got {len(fields)}")
            tracks.append(Track(fields[0], fields[3], tuple(t for t in fields[5:] if t), line_no))
    return tracks


def find_data_dir(root: Path) -> Path:
    """The repository's `data` folder inside the manual directory."""
    for base in (root / "mtg-jamendo-dataset" / "data", root / "data", root):
        if (base / "splits").is_dir():
            return base
    raise FileNotFoundError(
        f"{root}: no MTG-Jamendo split files; expected mtg-jamendo-dataset/data/splits/ (a clone "
        f"of https://github.com/MTG/mtg-jamendo-dataset) in the manual directory. "
        f"{manual_hint('mtg_jamendo')}")


def find_audio(root: Path, rel: str) -> Path | None:
    """The audio file for a TSV `PATH`, full-quality or `.low.mp3`, under audio/ or the root."""
    low = rel[:-4] + ".low.mp3" if rel.endswith(".mp3") else rel
    for base in (root / "audio", root):
        for name in (rel, low):
            if (base / name).is_file():
                return base / name
    return None


def check_unique(tracks: dict[str, list[Track]], files: dict[str, Path], shown: int = 5) -> None:
    """A ValueError naming the first `shown` track ids listed more than once, in one split file
    or in two (the published splits list each track once: such files were edited or joined)."""
    seen: dict[str, list[str]] = {}
    for split, listed in tracks.items():
        for track in listed:
            seen.setdefault(track.track_id, []).append(f"{files[split].name}:{track.line}")
    twice = {t: where for t, where in seen.items() if len(where) > 1}
    if twice:
        first = "; ".join(f"{t} ({', '.join(w)})" for t, w in list(twice.items())[:shown])
        more = f"; and {len(twice) - shown} more" if len(twice) > shown else ""
        raise ValueError(f"{files['train'].parent}: {len(twice)} track(s) listed more than once: "
                         f"{first}{more}; the published split files list each track once")


@dataclasses.dataclass(eq=False)
class MtgJamendoConfig(TaggingConfig):
    """Which of the five official splits (0-4) to build."""

    split: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.split not in range(NUM_SPLITS):
            raise errors.ConfigError(f"config {self.name!r}: split must be one of the official "
                                     f"splits 0-{NUM_SPLITS - 1}, got {self.split!r}")


class MtgJamendo(TaggingBuilder):
    """MTG-Jamendo (Bogdanov et al., 2019), autotagging_top50tags subset, full tracks."""

    name = "mtg_jamendo"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    NUM_TAGS = 50
    BUILDER_CONFIGS = [MtgJamendoConfig(name=f"split{k}", split=k,
                                        description=f"Official split {k}.")
                       for k in range(NUM_SPLITS)]
    DEFAULT_CONFIG_NAME = "split0"
    HOMEPAGE = "https://mtg.github.io/mtg-jamendo-dataset/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    MANUAL_FILES = ("a clone of mtg-jamendo-dataset (its data/splits/ and data/tags/top50.txt) "
                    "and the audio in audio/00/ ... audio/99/")

    def preflight(self, manual_dir: Path | None = None) -> None:
        """Before the build starts: the config's three split files, all missing ones named at
        once (`split_files`), each track listed once (`check_unique`), and an audio folder
        (`_common.check_audio_folder`)."""
        if manual_dir is not None:
            self.tracks(Path(manual_dir))
            check_audio_folder(Path(manual_dir), [f"{n:02d}" for n in range(100)],
                               "the tracks go in audio/00/ ... audio/99/ (the TSVs' PATH column, "
                               "e.g. 14/214.mp3), from the repository's download script",
                               self.name)

    def tracks(self, root: Path) -> tuple[dict[str, Path], dict[str, list[Track]]]:
        """(split -> TSV, split -> its tracks), every track listed once (`check_unique`)."""
        files = self.split_files(root)
        tracks = {s: read_split_file(files[s]) for s in SPLITS}
        check_unique(tracks, files)
        return files, tracks

    def split_files(self, root: Path) -> dict[str, Path]:
        """split -> its TSV; a FileNotFoundError naming every missing one, near misses and the
        download steps."""
        data = find_data_dir(root)
        folder = data / "splits" / f"split-{self.builder_config.split}"
        files = {s: folder / f"{SUBSET}-{s}.tsv" for s in SPLITS}
        missing = [f.name for f in files.values() if not f.exists()]
        if missing:
            near = near_misses(folder if folder.is_dir() else data / "splits", missing)
            near += sorted(p for p in folder.glob(f"{SUBSET}-*")  # `-valid.tsv`, `-test.tsv.txt`
                           if p not in files.values() and p not in near)
            found = f" Found {', '.join(map(str, near))}: rename or move it there?" if near else ""
            raise FileNotFoundError(f"{folder}: missing {', '.join(missing)}.{found} "
                                    f"{manual_hint(self.name)}")
        return files

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        data = find_data_dir(root)
        k = self.builder_config.split
        files, tracks = self.tracks(root)
        vocab_file = data / "tags" / "top50.txt"
        if vocab_file.is_file():
            try:
                tags = read_tag_list(vocab_file)
            except UnicodeDecodeError as e:
                raise utf8_error(vocab_file, e) from None
            source = str(vocab_file)
        else:
            tags = sorted({t for s in SPLITS for track in tracks[s] for t in track.tags})
            source = (f"the union of the tags in the split-{k} TSV files, used because "
                      f"{vocab_file} is missing")
            print(f"{self.name}/{self.builder_config.name}: {vocab_file} is missing: the tags "
                  "are the union of the split files' tags", file=sys.stderr, flush=True)
        self._set_tags(tags, source=source)
        items = {s: [] for s in SPLITS}
        for s in SPLITS:
            for track in tracks[s]:
                unknown = [t for t in track.tags if t not in tags]
                if unknown:
                    raise ValueError(f"{files[s]}:{track.line}: {track.track_id}: tags {unknown} "
                                     f"are not among the {len(tags)} tags of {source}")
                item = {"key": track.track_id, "clip_id": track.track_id, "path": track.path,
                        "tags": multi_hot(track.tags, tags)}
                audio = find_audio(root, track.path)
                if audio is None:
                    low = " (nor its .low.mp3)" if track.path.endswith(".mp3") else ""
                    item["error"] = f"{root / 'audio' / track.path}: file not found{low}"
                else:
                    item["file"] = str(audio)
                items[s].append(item)
        self._note("source", f"{SUBSET} split-{k}")
        self._note_manual_dir(root)
        return {s: self._generate_examples(s, items[s]) for s in SPLITS}

    def _generate_examples(self, split: str, items: list[dict]):
        yield from self._extract_audio(split, items)
