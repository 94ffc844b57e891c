"""Explaining many inputs: read and window them, run the methods in fixed-size device batches
packed across inputs, stitch each input's windows, write NPZ + PNG + page (+ audio) + JSON.

The input side is `tagger_jax.inference` (discovery, reading, load-ahead, window placement,
packing, batches split over the local devices), the same path `tag` and `embed` take, so an
input's top tags here are the numbers `tag` prints for the same windows. Batches have one shape for
the whole run (windows of several short tracks share a batch, the last batch is padded), so the
explanation function compiles once. With several processes (`jax.distributed`) each explains its
share of the inputs; process 0 merges the failure reports and writes index.html at the end. When the tags to explain are the
top-k predicted ones and a gradient method is asked for, a cheap forward pass over each input's
windows (also packed) picks the tags first: gradients need them, and they must be the same for
all windows of a track to stitch. An input whose JSON summary exists with the same model, settings
and input fingerprint is skipped; one whose summary differs only in how its maps are shown
(`SHOWN_FIELDS`: figure, page, listening) gets them again from its stored NPZ, without a model
pass; an input that failed is recorded in failures.json and is not retried until it changes (or
`retry_failed`).

Tags to explain come from the run (`ExplainOptions.tags`), from each input (`Input.explain_tags`:
dataset labels, a CSV) or are the top-k predicted; the run uses one tag count K for every batch
(shorter lists padded), so it compiles once. Each input's optional `Input.extras` (a dataset
record's audio, true tags, frame tag mask) are read in the load-ahead threads for the report and
auralisation; an audio file's waveform comes from the same decode as its model input.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
from tqdm import tqdm

from tagger_jax import chunking, errors, inference, outputs
from tagger_jax import tags as tags_lib  # audio_folder's column names, tag separator, listed()
from tagger_jax.explain import methods as M
from tagger_jax.explain import report
from tagger_jax.explain.stitch import covered, stitch
from tagger_jax.progress import bar_interval

DEFAULT_METHODS = ("attention", "contribution", "grad_x_input")
# Maps that can be heard: one value per frame, or per (band, frame) for the gradients.
AURALISED = ("attention", "rollout", "contribution") + M.GRADIENT_METHODS
# Those `--listen` plays unless told otherwise: not grad_x_input, whose kept half lowers the tag
# on log-mel models (the listening benchmark of docs/explanations.md: anti-faithful there).
LISTEN_DEFAULT = tuple(m for m in AURALISED if m != "grad_x_input")
NOT_AURALISED_NOTE = ("not auralised by default: keeping its top half lowers the tag on log-mel "
                      "models (docs/explanations.md); --listen-methods names what to hear")
FORMAT = report.FORMAT
# The settings that change how an input's maps are shown, not the maps: a rerun that changes only
# these makes figures, pages and audio again from the stored NPZ (a trial: adding --listen to a
# long run computed every map again).
SHOWN_FIELDS = frozenset({"plot", "plot_line_s", "report", "listen", "listen_keep",
                          "listen_softness", "listen_methods"})


@dataclasses.dataclass(frozen=True)
class ExplainOptions:
    """What to compute (all of it enters the rerun signature except the last four fields)."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    tags: tuple[str, ...] = ()  # tag names to explain; empty: the top_k predicted per input
    top_k: int = 3
    hop: Optional[float] = None  # seconds between windows (windows="cover"); None: one window
    windows: str = inference.COVER  # "cover" the whole track, or the "paper"'s 16 chunks
    num_chunks: int = chunking.EVAL_CHUNKS  # chunks per input with windows="paper"
    ig_steps: int = 32  # integrated-gradients trapezoid intervals
    ig_baseline: str = "min"  # "min" (the clip's dB floor) or "zeros"
    target: str = "logit"  # gradients of the tag "logit" or its "probability"
    layer: int = -1  # encoder layer whose attention the contribution map overrides
    plot: bool = True
    plot_line_s: float = 30.0  # static figure: long tracks wrap onto lines of at most this many s
    listen: bool = False  # write auralised audio (kept part and complement) per map and tag
    listen_keep: float = 0.5  # fraction of frames (time maps) or STFT bins (band maps) kept
    listen_softness: float = 0.0  # 0: hard mask; > 0: logistic ramp (explain.auralise.keep_mask)
    # Methods whose maps `listen` auralises; None: every explained one in LISTEN_DEFAULT.
    listen_methods: Optional[tuple[str, ...]] = None
    report: bool = True  # the interactive page per input (STEM.html) and the index
    # Not part of the signature: they change speed, not results.
    batch_size: int = 8  # windows per device batch
    ig_step_batch: int = 8  # integrated-gradients path points per vmapped group
    load_workers: int = 2  # threads decoding audio ahead of the device
    retry_failed: bool = False

    def signature_fields(self) -> dict[str, Any]:
        keep = ("methods", "tags", "top_k", "hop", "windows", "num_chunks", "ig_steps",
                "ig_baseline", "target", "layer", "plot", "plot_line_s", "listen", "listen_keep",
                "listen_softness", "report")
        fields = {k: getattr(self, k) for k in keep}
        if self.listen:  # only then does it change the outputs (earlier signatures kept)
            fields["listen_methods"] = self.auralised()
        else:  # nothing is heard: the listening settings change no output
            defaults = ExplainOptions()
            fields.update(listen_keep=defaults.listen_keep,
                          listen_softness=defaults.listen_softness)
        return fields

    def auralised(self) -> tuple[str, ...]:
        """The explained methods whose maps `listen` turns into audio, in `methods` order."""
        chosen = LISTEN_DEFAULT if self.listen_methods is None else self.listen_methods
        return tuple(m for m in self.methods if m in chosen and m in AURALISED)

    def not_auralised(self) -> tuple[str, ...]:
        """Explained methods with a map to hear that `listen` skips by default (LISTEN_DEFAULT)."""
        if self.listen_methods is not None:
            return ()
        return tuple(m for m in self.methods if m in AURALISED and m not in LISTEN_DEFAULT)


InputItem = inference.Input  # one thing to explain (key, name, load, fingerprint, meta, marks)


@dataclasses.dataclass
class RunReport:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]  # input name -> error
    out_dir: Path
    index: Optional[Path]
    seconds: float
    replaced: list[str] = dataclasses.field(default_factory=list)  # outputs computed again

    def __str__(self) -> str:
        """The counts (`inference.run_summary`)."""
        return inference.run_summary("explained", len(self.done), len(self.skipped),
                                     len(self.failed), len(self.replaced))

    def failure_lines(self) -> list[str]:
        """One `failed:` line per failed input (`inference.failure_lines`)."""
        return inference.failure_lines(self.failed.items())


# ---------------------------------------------------------------------------------------------
# Inputs


safe_key = inference.safe_key
file_fingerprint = inference.file_fingerprint


def file_items(loaded, paths: Iterable[str | os.PathLike],
               skipped: Optional[list[tuple[Path, str]]] = None,
               exclude: Iterable[str | os.PathLike] = ()) -> list[InputItem]:
    """Input items for files and directories (searched recursively), with unique keys
    (`inference.Engine.file_inputs`); files left out are appended to `skipped`, if given;
    `exclude`: the run's own output directory and lock (`outputs.own_files`), left out unsaid.

    An audio file is decoded once: its reader keeps the waveform it computed the model input
    from (`keep_audio`), which `_prepare` hands to playback and auralisation."""
    return _engine(loaded, 1).file_inputs(paths, skipped, keep_audio=True, exclude=exclude)


def read_tags_csv(path: str | os.PathLike, splits: Optional[dict[str, str]] = None,
                  tag_separator: str = tags_lib.CSV_TAG_SEPARATOR
                  ) -> dict[str, tuple[str, ...]]:
    """{file as written: tags} from a CSV in one of two formats, told apart by the header:
      - an `audio_folder` CSV (`tagger_jax.datasets.audio_folder`): a header naming a `path` and
        a `tags` column (case-insensitive, any order, other columns ignored but `split`, whose
        cells `splits` receives when given: {file as written: split value as written}), the
        tags joined by `;` (`tag_separator`: the build's, `audio_folder.built_tag_separator`)
        in one cell: `path,tags,split` / `a.wav,rock;piano,test`;
      - rows `file,tag,tag,...` (Python's csv quoting for names with commas), with an optional
        header row whose first cell is `file` or `path` (and no `tags` column beside `path`);
        a cell holding `tag_separator` is split too (a trial's `file,tags` header above
        `a.wav,organ;cello` asked for one tag named 'organ;cello').
    As `audio_folder` reads it: a byte-order mark is dropped, Excel's first line `sep=X` sets the
    delimiter, and an audio_folder header split by `;`, a tab or `|` is recognised (a new user's
    `sep=;` CSV built, and then matched no input here).
    Raises ValueError naming the CSV and line for an empty file name, a file listed twice, or an
    audio_folder row with more cells than its header."""
    import csv
    import io

    path_col, tags_col, split_col, sep = (tags_lib.CSV_PATH_COLUMN, tags_lib.CSV_TAGS_COLUMN,
                                          tags_lib.CSV_SPLIT_COLUMN, tag_separator)
    out: dict[str, tuple[str, ...]] = {}
    columns: dict[str, int] | None = None  # audio_folder format: column positions
    with open(path, newline="", encoding=tags_lib.TEXT_ENCODING) as f:
        text = f.read()
    first_line, _, rest = text.partition("\n")
    delimiter, header_line = tags_lib.excel_separator(path, first_line), 1
    if delimiter is not None:  # that line is no row
        text, header_line = rest, 2
    else:
        delimiter = next((d for d in (",", ";", "\t", "|") if {path_col, tags_col} <= {
            c.strip().lower() for c in next(csv.reader([first_line], delimiter=d), [])}), ",")
    for line, row in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter),
                               start=header_line):
        if not row or not any(c.strip() for c in row):
            continue
        if line == header_line:
            header = [c.strip().lower() for c in row]
            if path_col in header and tags_col in header:
                columns = {"path": header.index(path_col), "tags": header.index(tags_col),
                           "split": header.index(split_col) if split_col in header else None,
                           "width": len(header)}
                continue
            if header[0] in ("file", "path"):
                continue
        if columns is not None:
            if len(row) > columns["width"]:
                raise ValueError(f"{path}:{line}: {len(row)} cells but the header has "
                                 f"{columns['width']} (an audio_folder CSV: tags joined by "
                                 f"{sep!r} in the {tags_col!r} "
                                 "column)")
            row = row + [""] * (columns["width"] - len(row))
            name = row[columns["path"]].strip()
            tags = row[columns["tags"]].split(sep)
            if splits is not None and columns["split"] is not None and name:
                splits[name] = row[columns["split"]].strip()
        else:  # a cell may join tags as an audio_folder cell does (a trial's `a.wav,organ;cello`)
            name, tags = row[0].strip(), [t for c in row[1:] for t in c.split(sep)]
        if not name:
            raise ValueError(f"{path}:{line}: empty file name")
        if name in out:
            raise ValueError(f"{path}:{line}: {name!r} is listed twice")
        out[name] = tuple(t.strip() for t in tags if t.strip())
    return out


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def with_csv_tags(items: Sequence[InputItem], csv_path: str | os.PathLike,
                  log: Optional[Callable[[str], None]] = _note,
                  split: Optional[str] = None, limit: Optional[int] = None,
                  tag_separator: str = tags_lib.CSV_TAG_SEPARATOR,
                  model_tags: Sequence[str] = ()) -> list[InputItem]:
    """Items whose tags to explain come from a CSV (`read_tags_csv`). A CSV file name matches an
    input when it resolves to the same file (relative names: from the CSV's folder, then from
    the working directory), else when the input's path ends with it (`live sets/track 2.ogg`
    matches `music/rock/live sets/track 2.ogg`; a bare base name the same way) and no other
    input's does. A dataset record (`dataset_items(record_paths=True)`) matches by the path it
    was built from (`meta["record_path"]`, e.g. an audio_folder CSV's `songs/a.ogg`). Inputs the
    CSV does not list, or lists without tags, keep the run's tags (top-k predicted); those inputs,
    CSV rows that match no input, and matched rows without tags, are reported in a `note:` line each
    (`log`; stderr by default, stdout keeping the run's index). Names are compared in Unicode's
    composed form (NFC): `Café.wav` typed on one system matches the decomposed `Café.wav` of
    another, as `audio_folder` reads it. `split` (the dataset split the items are records of):
    rows of an audio_folder CSV whose `split` cell names another split are left out, so the CSV
    a collection was built from serves each split without a note on the others' rows (a trial's
    `explain --dataset ... --split test --tags-from` reported every train row as unmatched).
    `limit`: the run's `--limit` (records), named in the note as what may have left those rows'
    records out. A record built from an absolute path matches a row of that path too (a trial's
    absolute rows matched no record). `tag_separator`: `read_tags_csv`'s. `model_tags`: a CSV tag
    that is none of them but one of them in other letter case is read as that one, in one note
    (a trial's `Cello` failed its input with "did you mean 'cello'?")."""
    import unicodedata

    def nfc(text: str) -> str:
        return unicodedata.normalize("NFC", text)

    splits: dict[str, str] = {}
    table = read_tags_csv(csv_path, splits, tag_separator)
    by_case: dict[str, list[str]] = {}
    for tag in model_tags:
        by_case.setdefault(tag.casefold(), []).append(tag)
    cased = {t: by_case[t.casefold()][0] for tags in table.values() for t in tags
             if t not in model_tags and len(by_case.get(t.casefold(), ())) == 1}
    if cased:
        table = {n: tuple(cased.get(t, t) for t in tags) for n, tags in table.items()}
        if log is not None:
            log(f"note: {csv_path}: tag(s) read as the model's in its letter case: "
                + ", ".join(f"{a!r} as {b!r}" for a, b in cased.items()))
    if split is not None and splits:
        from tagger_jax.datasets.audio_folder import split_of

        def of_split(value: str) -> bool:
            try:
                return split_of(value) == split
            except ValueError:  # a value no build accepts: not another split's row, so kept
                return True

        table = {n: t for n, t in table.items() if n not in splits or of_split(splits[n])}
    base = Path(csv_path).resolve().parent
    by_path = {}
    for name in table:
        for cand in (Path(name), base / name):
            try:
                by_path.setdefault(nfc(str(cand.resolve())), name)
            except OSError:
                pass

    def file_of(item: InputItem) -> str:  # the path to match: a file's, or a record's source
        return str(item.meta.get("record_path") or item.name)

    def ends_with(item: InputItem, name: str) -> bool:
        parts = Path(nfc(name)).parts
        return Path(nfc(file_of(item))).parts[-len(parts):] == parts

    by_suffix = {}  # CSV name -> the one input whose path ends with it
    for name in table:
        if not Path(name).is_absolute():
            found = [it.name for it in items if ends_with(it, name)]
            if len(found) == 1:
                by_suffix[found[0]] = name
    used, out, unlisted = set(), [], []
    for it in items:
        own = file_of(it)  # a record's relative path names no file here; an absolute one does
        name = ((None if "record_path" in it.meta and not Path(own).is_absolute()
                 else by_path.get(nfc(str(Path(own).resolve())))) or by_suffix.get(it.name))
        if name is not None:
            used.add(name)
            it = dataclasses.replace(it, explain_tags=table[name])
        else:
            unlisted.append(it.name)
        out.append(it)
    unused = [n for n in table if n not in used]
    if unused and log is not None:
        log(f"note: {csv_path}: {len(unused)} row(s) match no input: "
            + ", ".join(repr(n) for n in unused[:10]) + (" ..." if len(unused) > 10 else "")
            + (f" (--limit {limit} takes only the split's first {limit} record(s))" if limit
               else ""))
    # Not silent either: in a trial, the file of a misspelt row got predicted tags unsaid.
    if unlisted and log is not None:
        log(f"note: {csv_path}: {len(unlisted)} input(s) it does not list get their top-k "
            "predicted tags: " + ", ".join(unlisted[:10]) + (" ..." if len(unlisted) > 10 else ""))
    empty = [n for n in table if n in used and not table[n]]
    if empty and log is not None:  # an audio_folder row with an empty tags cell (a trial)
        log(f"note: {csv_path}: {len(empty)} row(s) list no tags, so their inputs get their "
            "top-k predicted tags: " + ", ".join(repr(n) for n in empty[:10])
            + (" ..." if len(empty) > 10 else ""))
    return out


def dataset_items(loaded, name: str, split: str, data_dir: Optional[str] = None,
                  builder_config: Optional[str] = None, limit: Optional[int] = None,
                  explain_labels: bool = False, record_paths: bool = False,
                  hold: Optional[contextlib.ExitStack] = None) -> list[InputItem]:
    """Input items for the records of a dataset split (`inference.dataset_inputs`).

    Each item's extras carry the record's true tags (and `tag_mask`, and its audio: the record's
    `audio`, or for `synthetic_tags` the clip synthesised again from its seed). With
    `explain_labels`, each record's true tags are the tags explained for it; with
    `record_paths`, `meta["record_path"]` is the path the record was built from, where it has
    one (`with_csv_tags` matches a CSV's rows on it). Records are read once up front for these.
    `hold`: as `inference.dataset_inputs`'s (the build's readers' lock).
    """
    from tagger_jax.datasets import load_split

    feature = _engine(loaded, 1).architecture.dataset_feature
    items = inference.dataset_inputs(name, split, feature, data_dir, builder_config, limit,
                                     hold)
    source, dataset_tags = load_split(name, split, data_dir, builder_config)
    regenerate = _regenerated_audio(name, split, data_dir, builder_config, loaded)

    def true_tags(record) -> list[str]:
        hot = np.asarray(record.get("tags", ()))
        return [str(dataset_tags[j]) for j in np.flatnonzero(hot)] if hot.size else []

    def extras(i: int) -> dict[str, Any]:
        record = source[i]
        out: dict[str, Any] = {"true_tags": true_tags(record)}
        clip = {k: inference.record_text(record[k]) for k in ("clip_id", "path") if k in record}
        if clip:  # which clip of the user's collection the record is
            out["record"] = clip
        if "tag_mask" in record:
            out["tag_mask"] = np.asarray(record["tag_mask"], np.uint8)
        if "audio" in record:
            out["audio"] = np.asarray(record["audio"], np.float32)
        elif regenerate is not None and "mel" in record:
            out.update(regenerate(i, record))
        return out

    out = []
    for i, it in enumerate(items):
        record = source[i] if explain_labels or record_paths else {}
        meta = dict(it.meta)
        if record_paths and "path" in record:
            meta["record_path"] = inference.record_text(record["path"])
        out.append(dataclasses.replace(
            it, extras=functools.partial(extras, i), meta=meta,
            explain_tags=tuple(true_tags(record)) if explain_labels else ()))
    return out


def _regenerated_audio(name, split, data_dir, builder_config, loaded):
    """For datasets that store log-mels but can give their audio back, a function (index,
    record) -> {"audio": clip} for explain's playback and auralisation: `synthetic_tags` clips
    synthesised again from their seeds, `soundfont_tags` clips rendered again from their scores'
    seeds with the bank file the build recorded, `audio_folder` clips decoded again from the
    source file in the manual directory the build read. A clip is used only when its log-mel
    matches the stored one (float16: within 0.5 dB), so that a changed generator, bank or file
    never plays the wrong audio; otherwise {"audio_note": why not}. None for other datasets."""
    if name not in ("synthetic_tags", "soundfont_tags", "audio_folder"):
        return None
    from tagger_jax import audio
    from tagger_jax.datasets import get_builder

    builder = get_builder(name, data_dir, builder_config)
    metadata = dict(builder.info.metadata or {})
    features = audio.features_from_config(loaded.config.features)
    make = (_decoder(metadata, features) if name == "audio_folder"
            else _generator(name, split, builder.builder_config, metadata, features))
    if make is None:
        return None

    def regenerate(i: int, record) -> dict[str, Any]:
        wave, how = make(i, record)
        if wave is None:
            return {"audio_note": how}
        mel = np.asarray(record["mel"], np.float32)
        again = audio.log_mel(wave, **features.mel_kwargs)
        if again.shape != mel.shape or float(np.max(np.abs(again - mel))) > 0.5:
            return {"audio_note": f"the clip {how} does not match the stored spectrogram: "
                                  "no audio"}
        return {"audio": wave}

    return regenerate


def _decoder(metadata: Mapping[str, Any], features):
    """(index, record) -> (waveform or None, how) decoding an `audio_folder` record's source
    file (its `path`, relative to the manual directory of the build's "built_from" note)."""
    from tagger_jax import audio

    root = dict(metadata.get("built_from") or {}).get("manual_dir")
    if not root:
        return None

    def make(i: int, record) -> tuple[np.ndarray | None, str]:
        file = Path(root) / inference.record_text(record.get("path", ""))
        if not file.is_file():
            return None, f"no audio: the source file {file} is no longer there"
        try:
            wave, _ = audio.load_audio_checked(file, features.sample_rate)
        except audio.InputError as e:
            return None, f"no audio: {e}"
        return wave, f"decoded again from {file}"

    return make


def _generator(name: str, split: str, config, metadata: Mapping[str, Any], features):
    """(index, record) -> (waveform or None, how) making a generated dataset's clip again. A
    config made with --set is opened from its files without its fields: the build's "config"
    note has them (seed, duration, segments, bank files, sibling rate)."""
    from tagger_jax.datasets import SPLITS

    note = dict(metadata.get("config") or {})
    field = {k: note.get(k, getattr(config, k, None)) for k in ("seed", "duration_s", "segments")}
    if field["seed"] is None or field["duration_s"] is None:
        return None
    seed, duration_s = field["seed"], field["duration_s"]
    seed_split = SPLITS.index(split) if split in SPLITS else SPLITS.index("test")  # unseen banks
    if name == "synthetic_tags":
        from tagger_jax import synth

        def make(i: int, record) -> tuple[np.ndarray | None, str]:
            wave, _, _ = synth.generate_clip((seed, seed_split, i), duration_s,
                                             features.sample_rate,
                                             segments=bool(field["segments"]),
                                             hop_length=features.hop_length)
            return wave, "synthesised again from its seed"
        return make

    from tagger_jax import soundfont

    files = _bank_files(note)
    # The train split of a build with sibling programs plays them (its "config" note's rate).
    siblings = float(note.get("siblings", 0.0)) if split == "train" else 0.0

    def render(i: int, record) -> tuple[np.ndarray | None, str]:
        bank = inference.record_text(record.get("bank", ""))
        file = files.get(bank)
        if file is None or not Path(file).is_file():
            return None, (f"no audio: the bank {bank!r} this record was rendered with is not "
                          f"at {file}" if file else "no audio: the build names no file for "
                          f"the bank {bank!r}")
        clip = soundfont.render_clip((seed, seed_split, i), file, duration_s,
                                     hop_length=features.hop_length, siblings=siblings)
        return clip["audio"], f"rendered again from its score with {Path(file).name}"

    return render


def _bank_files(note: Mapping[str, Any]) -> dict[str, str]:
    """A `soundfont_tags` build's bank files by the short name its records carry (`bank`), from
    its "config" note: the training bank, the extra banks and the unseen banks."""
    from tagger_jax import soundfont

    files = {}
    if note.get("bank") and note.get("bank_file"):
        files[soundfont.bank_name(note["bank"])] = str(note["bank_file"])
    for bank, file in dict(note.get("extra_banks", {})).items():
        files[soundfont.bank_name(bank)] = str(file)
    for split, file in dict(note.get("unseen_banks", {})).items():
        files[split.removeprefix("test_")] = str(file)
    return files


def two_clip_items(items: Sequence[InputItem], chunk: int,
                   samples_per_step: Optional[int] = None) -> list[InputItem]:
    """Figure 2's experiment on consecutive pairs (A, B): the first half-chunk of A followed by
    the first half-chunk of B, one window; a clip shorter than half a chunk is tiled first.

    Each pair loads as an `audio.InputRead`: the joined model input, both inputs' warnings
    (their messages name the file; a tiled clip adds `tiled`), and, when both inputs kept their
    decoded audio (`file_items`) and `samples_per_step` (audio samples per input time step) is
    given, the same halves of their waveforms joined, for playback and `--listen`."""
    from tagger_jax.audio import InputRead

    if len(items) % 2:
        raise ValueError(f"two-clip mode needs pairs of inputs, got {len(items)}")
    half = chunk // 2

    def load(a: InputItem, b: InputItem) -> InputRead:
        signals, warnings, waves = [], {}, []
        for item, steps in ((a, half), (b, chunk - half)):
            read = item.load()
            signal, notes = inference.split_warnings(read)
            x, tiled = chunking.pad_to_length(signal, steps)
            if tiled:
                notes["tiled"] = (f"{item.name}: shorter than half a chunk "
                                  f"({signal.shape[-1]} of {steps} steps): repeated to fill it")
            for code, message in notes.items():
                warnings[code] = "; ".join(filter(None, (warnings.get(code), message)))
            signals.append(x)
            wave = getattr(read, "audio", None)
            if wave is not None and samples_per_step:
                waves.append(chunking.pad_to_length(wave, steps * samples_per_step)[0][
                    : steps * samples_per_step])
        # the samples a centred STFT turns into `chunk` frames (a waveform model: `chunk`)
        audio = (np.concatenate(waves)[: (chunk - 1) * samples_per_step + 1]
                 if len(waves) == 2 else None)
        return InputRead(M.two_clip_input(*signals, chunk), warnings, None, audio)

    out = []
    for a, b in zip(items[::2], items[1::2]):
        out.append(InputItem(key=safe_key(f"{a.key}+{b.key}"), name=f"{a.name} + {b.name}",
                             load=functools.partial(load, a, b),
                             fingerprint=f"{a.fingerprint}+{b.fingerprint}",
                             meta={"two_clip": [a.name, b.name]}, marks=(half,)))
    return out


# ---------------------------------------------------------------------------------------------
# The model side


def _engine(loaded, batch_size: int) -> inference.Engine:
    return inference.Engine(loaded, batch_size=batch_size)


model_identity = inference.model_signature


def run_settings(loaded, options: ExplainOptions) -> dict[str, Any]:
    """What the rerun signature hashes, as JSON holds it (each summary's "settings"): the model's
    identity and `options.signature_fields()`."""
    fields = {"model": model_identity(loaded), **options.signature_fields()}
    return json.loads(json.dumps(fields, sort_keys=True, default=list))


def run_signature(loaded, options: ExplainOptions) -> str:
    return hashlib.sha1(json.dumps(run_settings(loaded, options),
                                   sort_keys=True).encode()).hexdigest()[:16]


def same_maps(summary: Optional[Mapping[str, Any]], settings: Mapping[str, Any],
              fingerprint: str) -> bool:
    """Whether a finished input's `summary` holds the maps this run would compute: the same
    input version, and the same stored "settings" (model included) but for `SHOWN_FIELDS`."""
    if not isinstance(summary, dict) or str(summary.get("fingerprint")) != fingerprint:
        return False
    then = summary.get("settings")
    return isinstance(then, dict) and all(
        then.get(k) == v for k, v in settings.items() if k not in SHOWN_FIELDS) and all(
        k in settings or k in SHOWN_FIELDS for k in then)


def stored_maps(out_dir: Path, summary: Mapping[str, Any]) -> Optional[dict[str, np.ndarray]]:
    """The arrays of an input's NPZ (those `assemble` made; not its log-mel), or None when the
    file is missing, unreadable or lacks them (then the input is computed again)."""
    name = (summary.get("files") or {}).get("npz")
    try:
        with np.load(out_dir / str(name), allow_pickle=False) as z:
            res = {k: z[k] for k in z.files if k != "log_mel"}
    except Exception:  # noqa: BLE001  (any damage: compute it again)
        return None
    needed = ("probabilities", "explained_tag_indices", "frame_times", "covered", "chunk_starts")
    return res if all(k in res for k in needed) else None


def what_changed(old: list[Mapping[str, Any]], settings: Mapping[str, Any],
                 fingerprints: Mapping[str, str]) -> str:
    """What differs between the summaries `old` of outputs to be replaced and this run: the
    settings (from each summary's "settings"; "model" for other weights), "the input file" (its
    fingerprint, `fingerprints` by key), as "the input file, listen (was True, now False)";
    "" when nothing is known. Summaries from before "settings" was stored name no setting."""
    found: dict[str, list[str]] = {}
    for s in old:
        if str(s.get("fingerprint")) != fingerprints.get(str(s.get("key")), s.get("fingerprint")):
            found.setdefault("the input file", [])
        before = s.get("settings")
        if not isinstance(before, Mapping):
            continue
        for k in sorted(set(before) | set(settings)):
            if before.get(k) != settings.get(k):
                if k == "model":
                    found.setdefault("the model", [])
                else:
                    found.setdefault(k, []).append(f"was {before.get(k)}, now {settings.get(k)}")
    parts = []
    for name, values in found.items():
        shown = sorted(set(values))
        parts.append(name + (f" ({'; '.join(shown[:2])}{'; ...' if len(shown) > 2 else ''})"
                             if shown else ""))
    return ", ".join(parts)


@functools.lru_cache(maxsize=8)
def jitted_functions(model, methods: tuple[str, ...], ig_steps: int, ig_baseline: str,
                     target: str, layer: int, ig_step_batch: int):
    """(predict, explain) jitted for a model and settings; cached so that runs in one process
    (a notebook, the tests) reuse the compiled programs."""
    import jax

    predict = inference.make_predict_fn(model)
    explain = jax.jit(functools.partial(
        M.explain, model, methods=methods, ig_steps=ig_steps, ig_baseline_kind=ig_baseline,
        target=target, layer=layer, ig_step_batch=ig_step_batch))
    return predict, explain


def check_options(loaded, options: ExplainOptions) -> None:
    """Raises ValueError (one line) for methods that do not exist or tags the model does not
    have (naming the tag a misspelt one likely means), before any output is made."""
    unknown = [m for m in options.methods if m not in M.METHODS]
    if unknown or not options.methods:
        raise ValueError(f"unknown or no methods {unknown or list(options.methods)}; "
                         f"choose from {', '.join(M.METHODS)}")
    known = list(loaded.tags)
    missing = [t for t in options.tags if t not in known]
    if missing:
        raise ValueError(f"unknown tags {missing}{tags_lib.did_you_mean(missing, known)}; the "
                         f"model's tags are: {tags_lib.listed(known)}")


# The share of f(x) - f(baseline) above which a run notes integrated gradients' step at the
# baseline (`ig_step_share`): a model continuous along the path has a step of the order of
# IG_STEP_ALPHA of it; the tempo branch's jump is a large part of it (a trial: up to 0.44).
IG_STEP_NOTE_SHARE = 0.05


class _Context:
    """Per-run constants: the inference engine, time grids, and the two jitted functions."""

    def __init__(self, loaded, options: ExplainOptions):
        check_options(loaded, options)
        if options.batch_size < 1:
            raise ValueError("batch_size, top_k and ig_steps must be positive")
        self.engine = _engine(loaded, options.batch_size)
        geom = self.engine.geometry
        arch = geom.architecture
        if not arch.has_attention and set(options.methods) - set(M.GRADIENT_METHODS):
            raise ValueError(f"{arch.name} has no attention: only the gradient methods "
                             f"({', '.join(M.GRADIENT_METHODS)}) apply")
        self.loaded, self.options = loaded, options
        self.tags = tuple(loaded.tags)
        self.features = self.engine.features
        self.waveform = arch.waveform
        self.chunk = geom.chunk
        self.map_steps = geom.positions  # encoder positions per window
        self.map_step_s = geom.position_s
        self.steps_per_position = arch.steps_per_position
        self.plan = inference.WindowPlan(options.windows, options.hop, options.num_chunks)
        # The paper's chunks may leave gaps: stitched maps are NaN there (`stitch`'s `gaps`).
        self.gaps = self.plan.windows == inference.PAPER
        self.plan.checked(geom)  # a hop longer than a window fails here, before any work
        if options.batch_size < 1 or options.top_k < 1 or options.ig_steps < 1:
            raise ValueError("batch_size, top_k and ig_steps must be positive")
        self.fixed_tags = np.array([self.tags.index(t) for t in options.tags], np.int32)
        self.k = len(options.tags) if options.tags else max(1, min(options.top_k, len(self.tags)))
        self.gradients = any(m in M.GRADIENT_METHODS for m in options.methods)
        self.predict_fn, self.explain_fn = jitted_functions(
            loaded.model, tuple(options.methods), options.ig_steps, options.ig_baseline,
            options.target, options.layer, options.ig_step_batch)


_Track = inference.Prepared  # an input read and windowed, plus the tags to explain


def _prepare(ctx: _Context, item: InputItem) -> _Track:
    """`inference.prepare`, then this input's own tags (padded to the run's K) and its extras
    (audio for playback, true tags, tag mask), still in the load-ahead thread."""
    track = ctx.engine.prepare(item, ctx.plan)
    if item.explain_tags:
        idx = [ctx.tags.index(t) for t in item.explain_tags if t in ctx.tags][: ctx.k]
        if not idx:  # the model's tags it does ask for are explained (`unknown_tags_note`)
            unknown = list(item.explain_tags)
            raise ValueError(f"{item.name}: unknown tags to explain {unknown}, none of them "
                             f"the model's{tags_lib.did_you_mean(unknown, ctx.tags)}")
        track.num_tags = len(idx)
        track.tags = np.array(idx + idx[:1] * (ctx.k - len(idx)), np.int32)
    if item.extras is not None and (ctx.options.listen or ctx.options.report
                                    or ctx.options.plot):
        track.extras = dict(item.extras())
    # The waveform the input was read from (a file's decode, `file_items`), for playback and
    # auralisation only; kept on the track while it is in flight, like the rest of it.
    wave, track.audio = (track.signal if ctx.waveform else track.audio), None
    if wave is not None and (ctx.waveform or ctx.options.listen or ctx.options.report):
        track.extras = {**track.extras, "audio": wave}
    return track


def unknown_tags_note(items: Sequence[InputItem], known: Sequence[str]) -> Optional[str]:
    """A `note:` line for the inputs whose own tags to explain (`InputItem.explain_tags`: dataset
    labels, a CSV) include tags the model does not know: those tags are left out and the rest
    explained (a trial's `flute;beep` row failed its input and lost its flute maps); an input
    none of whose tags is the model's fails on its own. None when every tag is known."""
    unknown: dict[str, list[str]] = {}  # tag -> the inputs asking for it
    for it in items:
        for t in dict.fromkeys(it.explain_tags):
            if t not in known:
                unknown.setdefault(t, []).append(it.name)
    if not unknown:
        return None
    inputs = {n for names in unknown.values() for n in names}
    listed = ", ".join(f"{t!r} ({len(n)} input{'' if len(n) == 1 else 's'}, e.g. {n[0]})"
                       for t, n in list(unknown.items())[:10])
    return (f"note: {len(inputs)} input(s) ask for tags the model does not know: {listed}"
            f"{' ...' if len(unknown) > 10 else ''}{tags_lib.did_you_mean(list(unknown), known)}"
            "; they are left out of the explanations (an input asking for no other tag fails)")


def _predicted_tags(ctx: _Context, track: _Track, window_probabilities: np.ndarray) -> None:
    """The input's top-k tags (`inference.track_probabilities` of its windows), padded to the
    run's K."""
    probs = inference.track_probabilities(window_probabilities)
    k = max(1, min(ctx.options.top_k, ctx.k))
    top = [int(i) for i in np.argsort(-probs, kind="stable")[:k]]
    track.num_tags = len(top)
    track.tags = np.array(top + top[:1] * (ctx.k - len(top)), np.int32)


# ---------------------------------------------------------------------------------------------
# Per-input results


def _map_grid(ctx: _Context, track: _Track) -> tuple[np.ndarray, int]:
    """Window starts and track length on the maps' time grid (frames, or waveform steps)."""
    if not ctx.waveform:
        return track.starts, track.length
    step = ctx.steps_per_position
    starts = np.rint(track.starts / step).astype(np.int64)
    if track.padded:
        return starts, max(1, -(-track.length // step))
    if ctx.gaps:  # the paper's last chunk need not end at the end of the track
        return starts, max(int(starts[-1]) + ctx.map_steps, -(-track.length // step))
    return starts, int(starts[-1]) + ctx.map_steps


def assemble(ctx: _Context, track: _Track, out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stitches the per-window outputs of one track into the arrays of its NPZ.

    With the paper's chunks (`ctx.gaps`) the time steps no chunk covers are NaN in every
    stitched map (`covered` marks the others); per-band sums add the covered frames only.
    """
    starts, length = _map_grid(ctx, track)
    stitch_ = functools.partial(stitch, gaps=ctx.gaps)
    n = track.num_tags or len(track.tags)
    out = {k: (v[:, :n] if k in M.GRADIENT_METHODS or k.startswith("integrated_gradients_")
               else v) for k, v in out.items()}
    chunk_probs = out["probabilities"]
    res: dict[str, np.ndarray] = {
        "probabilities": inference.track_probabilities(chunk_probs),
        "chunk_probabilities": chunk_probs,
        "tag_names": np.array(ctx.tags),
        "explained_tags": np.array([ctx.tags[i] for i in track.tags[:n]]),
        "explained_tag_indices": np.asarray(track.tags[:n], np.int32),
        "chunk_starts": np.asarray(starts, np.int64),
        "frame_times": (np.arange(length) + (0.5 if ctx.waveform else 0.0)) * ctx.map_step_s,
        "covered": covered(starts, ctx.map_steps, length),
    }
    for name in ("attention", "attention_heads", "attention_layers", "rollout", "contribution"):
        if name in out:
            res[name] = stitch_(M.frames(out[name]), starts, length)
            res[name + "_cls"] = out[name][..., 0]
    for name in M.GRADIENT_METHODS:
        if name not in out:
            continue
        attribution = out[name]  # (n, K, 96, C) or (n, K, samples)
        if ctx.waveform:
            res[name + "_time"] = stitch_(np.asarray(M.time_profile(attribution, waveform=True)),
                                          starts, length)
        else:
            full = stitch_(attribution, starts, length)
            res[name] = full
            res[name + "_bands"] = np.nansum(full, axis=-1)
            res[name + "_time"] = full.sum(axis=-2)
    if "integrated_gradients" in out:
        res["integrated_gradients_chunk_sum"] = out["integrated_gradients"].reshape(
            out["integrated_gradients"].shape[:2] + (-1,)).sum(-1)
        res["integrated_gradients_chunk_delta"] = (out["integrated_gradients_output"]
                                                   - out["integrated_gradients_baseline_output"])
        res["integrated_gradients_chunk_step"] = (
            out["integrated_gradients_near_baseline_output"]
            - out["integrated_gradients_baseline_output"])
    return res


def _spectrogram(ctx: _Context, track: _Track) -> np.ndarray:
    if not ctx.waveform:
        return track.signal
    from tagger_jax.audio import log_mel

    return log_mel(track.signal, **ctx.features.mel_kwargs)


SHORT = {"attention": "attention", "attention_heads": "attention head",
         "attention_layers": "attention layer", "rollout": "rollout",
         "contribution": "contribution", "grad_x_input": "grad x input",
         "integrated_gradients": "integrated gradients"}


def map_rows(ctx: _Context, res: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Every map of an input as a row to draw or hear, in figure order.

    Each row: method, tag (None for maps shared by all tags), label, values ((T,) or (bands, T)
    on the map time grid), bands (per-band sums of a 2-D map, or None), signed, unit.
    `attention_layers` leaves out its last layer when `attention` is also shown: the paper's
    attention map is that same row (the last layer's [CLS] attention summed over heads), which
    is why `--methods all` used to draw two identical rows.
    """
    tags = [str(t) for t in res["explained_tags"]]
    grad_unit = ctx.options.target

    def row(method, values, tag=None, label=None, bands=None, signed=False, unit=""):
        return {"method": method, "tag": tag, "label": label or SHORT[method], "values": values,
                "bands": bands, "signed": signed, "unit": unit}

    rows = []
    if "attention" in res:
        rows.append(row("attention", res["attention"], label="attention ([CLS], last layer)",
                        unit="weight (sum of heads)"))
    if "attention_layers" in res:
        layers = res["attention_layers"]
        last = len(layers) - 1 if "attention" in res else len(layers)
        rows += [row("attention_layers", r, label=f"attention layer {i}",
                     unit="weight (sum of heads)") for i, r in enumerate(layers[:last])]
    if "attention_heads" in res:
        rows += [row("attention_heads", r, label=f"attention head {h}", unit="weight")
                 for h, r in enumerate(res["attention_heads"])]
    if "rollout" in res:
        rows.append(row("rollout", res["rollout"], label="attention rollout", unit="weight"))
    if "contribution" in res:
        rows += [row("contribution", res["contribution"][i], tag=t, unit="p(tag)")
                 for t, i in zip(tags, res["explained_tag_indices"])]
    for name in M.GRADIENT_METHODS:
        if name in res:
            rows += [row(name, res[name][k], tag=t, bands=res[name + "_bands"][k], signed=True,
                         unit=f"{grad_unit} per bin") for k, t in enumerate(tags)]
        elif name + "_time" in res:
            rows += [row(name, res[name + "_time"][k], tag=t, signed=True,
                         unit=f"{grad_unit} per step") for k, t in enumerate(tags)]
    return rows


def _plot_rows(rows: Sequence[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]]):
    from tagger_jax.explain.plotting import Row

    out = [Row(f"truth: {t['tag']}", t["values"], unit="sounds (0/1)", truth=True)
           for t in truth]
    for r in rows:
        label = r["label"] + (f":\n{r['tag']}" if r["tag"] is not None else "")
        out.append(Row(label, r["values"], r["bands"], signed=r["signed"], unit=r["unit"]))
    return out


def _truth_rows(track: _Track, res: Mapping[str, np.ndarray],
                tags: Sequence[str]) -> list[dict[str, Any]]:
    """Where each explained (or true) tag sounds, from a dataset's frame tag mask."""
    mask = track.extras.get("tag_mask")
    if mask is None or mask.shape[-1] != track.length:
        return []
    want = list(dict.fromkeys([str(t) for t in res["explained_tags"]]
                              + list(track.extras.get("true_tags", []))))
    return [{"tag": t, "values": np.asarray(mask[tags.index(t)], np.float32)}
            for t in want if t in tags]


def _auralise(ctx: _Context, track: _Track, res: Mapping[str, np.ndarray],
              rows: Sequence[Mapping[str, Any]], key: str, tmp: list[tuple[Path, Path]],
              out_dir: Path) -> dict[str, Any]:
    """Writes the original audio (report or listen) and, with `listen`, the kept part and the
    complement of every attention, contribution and gradient map; returns the file table."""
    from tagger_jax.explain import auralise as A

    wave = track.extras.get("audio")
    if wave is None:
        return {"note": track.extras.get("audio_note") or
                "no audio: the input is a spectrogram (.npy) or a dataset without audio"}
    rate = ctx.features.sample_rate
    gain = A.headroom_gain(wave)  # one gain for all of the track's files: no clipping

    def put(name: str, data: np.ndarray) -> str:
        final = out_dir / name
        part = out_dir / f".{name}.part"
        A.write_audio(part, data * gain if gain < 1.0 else data, rate, "ogg")
        tmp.append((part, final))
        return name

    files: dict[str, Any] = {"original": put(f"{key}.orig.ogg", wave), "maps": []}
    if gain < 1.0:  # said in the summary: the playback is quieter than the input
        files["playback_gain_db"] = round(20.0 * float(np.log10(gain)), 2)
    if not ctx.options.listen:
        return files
    times = None if not ctx.waveform else res["frame_times"]
    tag_stems = tag_file_names(ctx.tags)
    heard = ctx.options.auralised()
    for r in rows:
        if r["method"] not in heard:
            continue
        stem = f"{key}.{r['method']}" + ("" if r["tag"] is None else f".{tag_stems[r['tag']]}")
        kept, rest = A.auralise(wave, r["values"], keep=ctx.options.listen_keep,
                                softness=ctx.options.listen_softness, sample_rate=rate,
                                n_fft=ctx.features.n_fft, hop_length=ctx.features.hop_length,
                                times_s=times)
        files["maps"].append({"method": r["method"], "tag": r["tag"],
                              "kept": put(f"{stem}.kept.ogg", kept),
                              "removed": put(f"{stem}.removed.ogg", rest)})
    files.update(keep=ctx.options.listen_keep, softness=ctx.options.listen_softness)
    skipped = ctx.options.not_auralised()
    if skipped:
        files["not_auralised"] = {m: NOT_AURALISED_NOTE for m in skipped}
    return files


def tag_file_names(tags: Sequence[str]) -> dict[str, str]:
    """{tag: its part of a file name}: the tag made file-name safe (`inference.unique_keys`:
    odd characters as '_', '/' as '__'), -2, -3, ... on tags that become the same; taken over
    all the model's tags, so a tag's files have one name in every input and run."""
    return dict(zip(tags, inference.unique_keys([str(t) for t in tags])))


def _seconds(t: Any) -> float:
    """A time for the summary, rounded to 1 ms as `tag` writes times."""
    return round(float(t), 3)


def _summary(ctx: _Context, track: _Track, res: Mapping[str, np.ndarray], signature: str,
             files: Mapping[str, str]) -> dict[str, Any]:
    probs = res["probabilities"]
    times = res["frame_times"]
    tags = [str(t) for t in res["explained_tags"]]
    peaks: dict[str, Any] = {}
    for name in ("attention", "rollout"):
        if name in res:
            peaks[name] = _seconds(times[int(np.nanargmax(res[name]))])
    if "contribution" in res:
        peaks["contribution"] = {t: _seconds(times[int(np.nanargmax(res["contribution"][i]))])
                                 for t, i in zip(tags, res["explained_tag_indices"])}
    for name in M.GRADIENT_METHODS:
        if name + "_time" in res:
            peaks[name] = {t: _seconds(times[int(np.nanargmax(res[name + "_time"][k]))])
                           for k, t in enumerate(tags)}
    summary: dict[str, Any] = {
        "kind": FORMAT, "input": track.item.name, "key": track.item.key,
        "fingerprint": track.item.fingerprint, "signature": signature,
        "settings": ctx.settings,  # what the signature hashes: a rerun says what changed
        "num_steps": int(track.length),
        "duration_s": round(float(track.duration_s), 6),
        "num_chunks": int(len(track.starts)), "padded": bool(track.padded),
        "windows": ctx.plan.describe(), "coverage": coverage(ctx, track, res["covered"]),
        "top_tags": inference.top_tags(probs, ctx.tags, max(5, ctx.k)),  # as `tag` writes
        "explained_tags": tags, "methods": list(ctx.options.methods),
        # each explained tag's track probability: it is no top tag when asked for (a trial)
        "explained_probabilities": [round(float(probs[i]), 6)
                                    for i in res["explained_tag_indices"]],
        "tags_source": ("input" if track.item.explain_tags else
                        "run" if ctx.options.tags else "predicted"),
        "requested_tags": list(track.item.explain_tags),
        "peak_time_s": peaks, "files": dict(files),
        "seconds": round(time.perf_counter() - track.started, 3),
        **dict(track.item.meta),
    }
    if track.notes:  # what the run did to the input (a short clip repeated), as `tag` writes
        summary["warnings"] = list(track.notes)
        for message in track.notes:
            tqdm.write(f"warning: {message}", file=sys.stderr)
    if track.warnings:  # {code: message} of a degraded input (docs/audio.md), as `tag` writes
        summary["audio_warnings"] = dict(track.warnings)
        for message in track.warnings.values():  # and says, as `tag` does
            tqdm.write(f"warning: {message}", file=sys.stderr)
    cover = summary["coverage"]
    if cover["fraction"] < 1.0:  # the paper's chunks left gaps: say so, the maps are blank there
        tqdm.write(f"note: {track.item.name}: the {len(track.starts)} chunks cover "
                   f"{100 * cover['fraction']:.1f}% of the track ({cover['covered_s']:.1f} of "
                   f"{track.duration_s:.1f} s); the maps are blank (NaN) elsewhere",
                   file=sys.stderr)
    if "true_tags" in track.extras:
        summary["true_tags"] = list(track.extras["true_tags"])
    if "record" in track.extras:  # a dataset record's clip id and source file
        summary["record"] = dict(track.extras["record"])
    if "integrated_gradients_chunk_sum" in res:
        delta = res["integrated_gradients_chunk_delta"]
        gap = np.abs(res["integrated_gradients_chunk_sum"] - delta)
        rel = gap / np.maximum(np.abs(delta), 1e-6)
        summary["integrated_gradients_completeness"] = {
            "target": ctx.options.target, "steps": ctx.options.ig_steps,
            "max_abs_gap": float(gap.max()), "max_rel_gap": float(rel.max()),
            "max_abs_step": float(np.abs(res["integrated_gradients_chunk_step"]).max())}
    return summary


def ig_step_share(res: dict) -> float:
    """The largest step just past the baseline that integrated gradients leaves unattributed
    (`methods.integrated_gradients`), over an input's windows and tags, as a share of the
    largest |f(x) - f(baseline)| among them (not per window: a tag whose output hardly moves
    would make any step large); 0 without integrated gradients."""
    if "integrated_gradients_chunk_step" not in res:
        return 0.0
    step = np.abs(res["integrated_gradients_chunk_step"]).max()
    return float(step / max(float(np.abs(res["integrated_gradients_chunk_delta"]).max()), 1e-6))


def coverage(ctx: _Context, track: _Track, covered_steps: np.ndarray) -> dict[str, float]:
    """How much of the track the windows covered: the fraction of the maps' time steps that
    some window covers, and those steps in seconds (steps x step length, at most the duration).
    1.0 for windows that cover the track; less for the paper's chunks on a long track."""
    fraction = float(np.mean(covered_steps))
    seconds = min(float(np.sum(covered_steps)) * ctx.map_step_s, float(track.duration_s))
    return {"fraction": round(fraction, 6), "covered_s": round(seconds, 3)}


def _mark_seconds(ctx: _Context, step: int) -> float:
    """Time of the boundary before input step `step` (a frame, or a sample for lee_won)."""
    if ctx.waveform:
        return step / ctx.features.sample_rate
    return (step - 0.5) * ctx.features.hop_length / ctx.features.sample_rate


def _write(ctx: _Context, track: _Track, res: dict[str, np.ndarray], out_dir: Path,
           signature: str) -> None:
    """Writes NPZ, PNG, audio and page under temporary names, renames them all, then the JSON
    summary (its presence means the input is finished). A failure in any of them leaves no file
    of this input behind, so it is never half-done (no orphan NPZ)."""
    key = track.item.key
    res = dict(res)
    spec = _spectrogram(ctx, track)
    res["log_mel"] = spec.astype(np.float32)
    rows = map_rows(ctx, res)
    truth = _truth_rows(track, res, ctx.tags)
    tmp: list[tuple[Path, Path]] = []  # (temporary, final)

    def stage(name: str) -> Path:
        part = out_dir / f".{name}.part"
        tmp.append((part, out_dir / name))
        return part

    try:
        with open(stage(f"{key}.npz"), "wb") as f:
            np.savez_compressed(f, **res)
        files = {"npz": f"{key}.npz", "png": None, "json": f"{key}{report.SUMMARY_SUFFIX}",
                 "html": None}
        probs = res["probabilities"]
        spec_step = ctx.features.hop_length / ctx.features.sample_rate
        if ctx.options.plot:
            from tagger_jax.explain.plotting import plot_explanation

            top = ", ".join(f"{ctx.tags[i]} {probs[i]:.2f}" for i in np.argsort(-probs)[:ctx.k])
            title = f"{track.item.name}   top: {top}"
            if "true_tags" in track.extras:
                title += "\ntrue: " + (", ".join(track.extras["true_tags"]) or "(none)")
            if track.warnings:  # the figure travels alone: each map is scaled to its own
                # range, so a silent input's maps looked as telling as music's (a trial)
                title += "\naudio warnings: " + ", ".join(
                    "silence (the maps describe silence)" if code == "silence" else code
                    for code in sorted(track.warnings)) + " (docs/audio.md)"
            plot_explanation(stage(f"{key}.png"), spec, spec_step, _plot_rows(rows, truth),
                             ctx.map_step_s, map_centred=not ctx.waveform, title=title,
                             marks_s=[_mark_seconds(ctx, m) for m in track.item.marks],
                             sample_rate=ctx.features.sample_rate,
                             line_s=ctx.options.plot_line_s, fmt="png")
            files["png"] = f"{key}.png"
        audio_files = (_auralise(ctx, track, res, rows, key, tmp, out_dir)
                       if ctx.options.report or ctx.options.listen else {})
        files["audio"] = audio_files
        if ctx.options.report:
            files["html"] = f"{key}.html"
        summary = _summary(ctx, track, res, signature, files)
        if ctx.options.report:
            report.write_input_page(stage(f"{key}.html"), report.page_data(
                summary, spec, spec_step, rows, truth, res["frame_times"], ctx.map_step_s,
                sample_rate=ctx.features.sample_rate, audio_files=audio_files))
        for part, final in tmp:
            part.replace(final)
    except BaseException:
        for part, _ in tmp:
            part.unlink(missing_ok=True)
        raise
    earlier = report.listed_files(report.read_json(out_dir / files["json"]))
    report.write_json(out_dir / files["json"], summary)
    for name in earlier - report.listed_files(summary):  # an earlier run's outputs of this
        (out_dir / name).unlink(missing_ok=True)         # input that this run does not make


# ---------------------------------------------------------------------------------------------
# The run


def _on_stderr(text: str) -> None:
    print(text, file=sys.stderr)


def explain_inputs(loaded, items: Sequence[InputItem], out_dir: str | os.PathLike,
                   options: ExplainOptions = ExplainOptions(), progress: bool = True,
                   log: Optional[Callable[[str], None]] = _on_stderr) -> RunReport:
    """Explains every item into `out_dir` and (re)writes its index.html; see the module doc.
    `log` receives the counts line at the end (default: stderr, as `tag` and `embed` say theirs;
    None: not said); each failed input's line goes to stderr.

    With several processes each explains `inference.process_share(items)`; the returned report of
    process 0 covers the whole run (the others return their share's, with no index).
    """
    import jax
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = _Context(loaded, options)
    own = [sum(t in ctx.tags for t in it.explain_tags) for it in items if it.explain_tags]
    if own:  # per-input tags: one tag count K for the whole run (one compilation)
        others = [ctx.k] if any(not it.explain_tags for it in items) else []  # top-k ones
        ctx.k = max([1, *own, *others])
    signature = run_signature(loaded, options)
    ctx.settings = run_settings(loaded, options)
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        raise ValueError("input keys must be unique")
    process, processes = jax.process_index(), jax.process_count()
    from tagger_jax import embedding

    inference.refuse_other_outputs(out_dir, "explain", "embed", embedding.output_files(out_dir))
    note = unknown_tags_note(items, ctx.tags)
    if note and process == 0:
        print(note, file=sys.stderr)
    items, renamed = inference.avoid_reserved(items, _run_file_stem)
    for line in inference.reserved_lines(renamed) if process == 0 else ():
        print(line, file=sys.stderr)

    def stored_name(key: str) -> Optional[str]:
        s = report.read_json(out_dir / f"{key}{report.SUMMARY_SUFFIX}")
        return (inference.recorded_input(s.get(inference.INPUT_PATH), str(s["input"]))
                if isinstance(s, dict) and "input" in s else None)

    # As embed: an input explained before under another key (the same files named in another
    # order, or one more file of the same name; a trial's `music/*/song.wav`) keeps that key.
    items, adopted = inference.adopt_keys(items, {
        p.name[:-len(report.SUMMARY_SUFFIX)]: stored_name(p.name[:-len(report.SUMMARY_SUFFIX)])
        for p in sorted(out_dir.glob(f"*{report.SUMMARY_SUFFIX}"))})
    if adopted and process == 0:
        print(inference.adopted_line(adopted, out_dir, report.SUMMARY_SUFFIX), file=sys.stderr)
    items, moved = inference.claim_keys(items, stored_name)
    for line in inference.moved_lines(moved, out_dir, report.SUMMARY_SUFFIX) \
            if process == 0 else ():
        print(line, file=sys.stderr)
    share = inference.process_share(items, process, processes)
    failures = inference.forget_other_keys(report.load_failures(out_dir), items)
    done, skipped, failed, todo, replaced = [], [], {}, [], []
    warned, reused_warned = [], []  # (warnings, audio_warnings) of this run's and reused inputs
    replaced_summaries: list[dict] = []  # what `what_changed` compares
    shown_again: dict[str, dict] = {}  # key -> summary of an input whose maps are reused
    silent: list[str] = []  # explained with --listen but without audio to play
    stepped: list[str] = []  # integrated gradients with a step at the baseline (ig_step_share)
    for item in share:
        path = out_dir / f"{item.key}{report.SUMMARY_SUFFIX}"
        s = report.read_json(path)
        s = s if isinstance(s, dict) else None
        if (inference.reusable(s, signature, item.fingerprint)
                and s.get("requested_tags", []) == list(item.explain_tags)):
            skipped.append(item.name)
            reused_warned.append(inference.stored_warnings(s))
            continue
        old = failures.get(item.key)
        if (old and old.get("fingerprint") == item.fingerprint and not options.retry_failed
                and old.get("signature", signature) == signature  # other settings: tried
                and old.get("requested_tags", []) == list(item.explain_tags)):  # other tags too
            failed[item.name] = f"{old.get('error')} (failed in an earlier run; unchanged, " \
                                "not retried)"
            continue
        if (s is not None and s.get("requested_tags", []) == list(item.explain_tags)
                and same_maps(s, ctx.settings, item.fingerprint)):
            shown_again[item.key] = s  # only how they are shown changed: from the stored maps
        elif path.exists():  # made with other settings, or of an earlier version of the input
            replaced.append(item.name)
            if s is not None:
                replaced_summaries.append(s)
        todo.append(item)

    fingerprints = {it.key: it.fingerprint for it in share}
    if replaced:
        changed = what_changed(replaced_summaries, ctx.settings, fingerprints)
        print(inference.replaced_line(len(replaced), out_dir, "explained", changed),
              file=sys.stderr)
    if shown_again:
        changed = what_changed(list(shown_again.values()), ctx.settings, fingerprints)
        print(f"{len(shown_again)} output(s) in {out_dir} differ only in how their maps are "
              f"shown{f' ({changed})' if changed else ''}: their figures, pages and audio are "
              "made again from the stored maps, without a model pass", file=sys.stderr)
    if options.listen and options.not_auralised() and todo and process == 0:
        print(f"note: --listen: {', '.join(options.not_auralised())} {NOT_AURALISED_NOTE}",
              file=sys.stderr)
    bar = tqdm(total=len(share), initial=len(share) - len(todo),
               disable=not progress or process != 0, unit="input",
               desc=inference.share_label("explain"), **bar_interval())
    tracks: dict[str, _Track] = {}
    aborted: Optional[BaseException] = None  # what stopped the run (its finally says so)

    def fail(item: InputItem, error: BaseException) -> None:
        msg = inference.named(item.name, error)
        failed[item.name] = msg
        failures[item.key] = {"input": item.name, "error": msg, "fingerprint": item.fingerprint,
                              "signature": signature,
                              "requested_tags": list(item.explain_tags)}
        tracks.pop(item.key, None)
        bar.update(1)

    def finish(key: str, out: Optional[dict], stored: Optional[dict] = None) -> None:
        """Writes an input's files from its windows' outputs `out`, or from its `stored` maps."""
        track = tracks.pop(key)
        if stored is None and track.tags is None:  # top-k from the same windows' probabilities
            _predicted_tags(ctx, track, out["probabilities"])
        long = len(track.unique_starts) > ctx.engine.batch_size
        if long:  # a long track's figure takes a while (tens of seconds for 30 minutes)
            bar.set_postfix_str(f"{track.item.name}: writing its files")
        try:
            res = assemble(ctx, track, out) if stored is None else stored
            _write(ctx, track, res, out_dir, signature)
        except Exception as e:  # an input that cannot be written must not stop the others...
            if errors.storage_full(e):  # ...but a full disk stops them all: not the input's
                # fault, so not recorded as its failure (a trial's were not retried)
                raise outputs.OutputError(
                    f"{out_dir}: no space left for the files of {track.item.name}") from e
            if not out_dir.is_dir():  # nor a folder deleted or moved away (a trial: each later
                # input "failed", then failures.json could not be written, its old one "kept")
                raise outputs.OutputError(
                    f"{out_dir}: the output folder was deleted or moved while this run wrote "
                    f"into it (noticed at the files of {track.item.name}); what was written "
                    "there went with it: running the same command explains every input "
                    "again") from None
            fail(track.item, e)
            return
        finally:
            if long:
                bar.set_postfix_str("", refresh=False)
        failures.pop(key, None)
        done.append(track.item.name)
        warned.append((list(track.notes), dict(track.warnings)))
        if options.listen and track.extras.get("audio") is None:
            silent.append(track.item.name)
        if ig_step_share(res) > IG_STEP_NOTE_SHARE:
            stepped.append(track.item.name)
        bar.update(1)

    variables = ctx.engine.variables
    names = {it.key: it.name for it in todo}
    explain_packer = ctx.engine.packer(
        lambda x, tags: ctx.explain_fn(variables, x, tags),
        ctx.engine.rows_postfix(bar, names.__getitem__, "windows explained"))
    predict_packer = ctx.engine.packer(
        lambda x: {"probabilities": ctx.predict_fn(variables, x)},
        ctx.engine.rows_postfix(bar, names.__getitem__, "windows tagged"))

    def start_explaining(track: _Track) -> None:
        tags = track.tags if track.tags is not None else np.zeros(ctx.k, np.int32)
        rows = ({"x": w, "tags": tags} for w in track.windows())
        for key, out in explain_packer.add(track.item.key, rows, len(track.unique_starts),
                                           track.inverse):
            finish(key, out)

    def predicted(key: str, out: dict) -> None:
        track = tracks[key]
        _predicted_tags(ctx, track, out["probabilities"])
        start_explaining(track)

    try:
        prepare = functools.partial(_prepare, ctx)
        for item, track in inference.load_ahead(prepare, todo, options.load_workers):
            if isinstance(track, BaseException):
                fail(item, track)
                continue
            tracks[item.key] = track
            stored = (stored_maps(out_dir, shown_again[item.key]) if item.key in shown_again
                      else None)
            if stored is not None and len(stored["explained_tag_indices"]) > ctx.k:
                stored = None  # more tags than this run's batches hold (cannot happen)
            if item.key in shown_again and stored is None:
                tqdm.write(f"note: {item.name}: its stored maps in {out_dir} cannot be read: "
                           "computed again", file=sys.stderr)
            if stored is not None:  # no model pass: the maps this run would compute, stored
                idx = [int(i) for i in stored["explained_tag_indices"]]
                track.num_tags = len(idx)
                track.tags = np.array(idx + idx[:1] * (ctx.k - len(idx)), np.int32)
                finish(item.key, None, stored)
                continue
            if options.tags and track.tags is None:
                track.tags = ctx.fixed_tags
            if ctx.gradients and track.tags is None:
                rows = ({"x": w} for w in track.windows())
                for key, out in predict_packer.add(item.key, rows, len(track.unique_starts),
                                                   track.inverse):
                    predicted(key, out)
            else:
                start_explaining(track)
        for key, out in predict_packer.flush():
            predicted(key, out)
        for key, out in explain_packer.flush():
            finish(key, out)
    except (KeyboardInterrupt, Exception) as e:  # Ctrl-C, SIGTERM, a full disk: say what is
        aborted = e  # kept, and where
        if isinstance(e, KeyboardInterrupt) or errors.storage_full(e):
            errors.interrupted_note(e, "explained", len(done), len(todo), f"are in {out_dir}",
                                    "running it again explains",
                                    failed=sum(it.name in failed for it in todo),
                                    reused=len(skipped))
        raise
    finally:
        bar.close()
        tried = len(done) + sum(it.name in failed for it in todo)  # fewer when interrupted
        for counted in (inference.warning_counts(warned, tried),
                        inference.warning_counts(reused_warned, len(skipped), reused=True)):
            if counted:
                print(counted, file=sys.stderr)
        if stepped:  # a trial read the gap as the method's failure
            print(f"note: integrated gradients: for {len(stepped)} input(s) (e.g. {stepped[0]}) "
                  f"more than {IG_STEP_NOTE_SHARE:.0%} of f(x) - f(baseline) is a step just past "
                  "the baseline that no bin is credited with: the model reads part of its input "
                  "whatever its level (the tempo branch's onsets), and the maps add up to the "
                  "rest (summaries: integrated_gradients_completeness, max_abs_step; "
                  "docs/explanations.md)", file=sys.stderr)
        if silent:
            print(f"warning: --listen: {len(silent)} input(s) have no audio, only a log-mel (a "
                  f".npy spectrogram or a dataset's records), so no .ogg was written for them "
                  f"(e.g. {silent[0]})", file=sys.stderr)
        try:
            if processes == 1:
                report.save_failures(out_dir, failures)
                index = report.write_index(out_dir)
            else:
                mine = {it.key for it in share}
                report.write_json(out_dir / _part_name(process), {
                    "keys": sorted(mine), "done": done, "skipped": skipped, "failed": failed,
                    "failures": {k: v for k, v in failures.items() if k in mine},
                    "replaced": replaced})
                index = None
        except Exception:  # noqa: BLE001
            if aborted is None:
                raise  # else the error that stopped the run is the one to report (on a full
            # disk these writes fail too; the next run writes them)
    if processes > 1:
        inference.barrier("explain-parts-written")
        if process == 0:
            done, skipped, failed, index, replaced = _merge_parts(out_dir, processes, failures)
    result = RunReport(done, skipped, failed, out_dir, index, time.perf_counter() - t0,
                       replaced)
    if log is not None and process == 0:  # the counts, then each failure, on stderr (as `tag`,
        log(str(result))  # `embed`): stdout holds the run's outputs only
        for line in result.failure_lines():
            print(line, file=sys.stderr)
    return result


def _part_name(process: int) -> str:
    return f"run.part{process}.json"


def _run_file_stem(key: str) -> bool:
    """Whether an input's files `KEY.*` would include one of the run's own files (index.html,
    failures.json, a process's part file)."""
    return (f"{key}.html" == report.INDEX_FILE or f"{key}.json" == report.FAILURES_FILE
            or re.fullmatch(r"run\.part\d+", key) is not None)


def _merge_parts(out_dir: Path, processes: int, failures: Mapping[str, Any]):
    """Process 0 of a multi-process run: every process's share merged into failures.json, the
    run's report and index.html; the part files are removed."""
    parts = []
    for p in range(processes):
        path = out_dir / _part_name(p)
        part = report.read_json(path)
        if not isinstance(part, dict):
            raise RuntimeError(f"{path}: process {p} left no readable report")
        parts.append(part)
    done, skipped, failed, merged = inference.merge_shares(parts, failures)
    report.save_failures(out_dir, merged)
    index = report.write_index(out_dir)
    for p in range(processes):
        (out_dir / _part_name(p)).unlink(missing_ok=True)
    return done, skipped, failed, index, [n for part in parts for n in part.get("replaced", [])]
