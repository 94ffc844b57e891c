"""The one inference path of `tag`, `embed`, `explain` and `evaluate`: from inputs to per-window
model outputs, batched over inputs and split over the local devices.

The path of an input:

  1. discovery: `discover` (files and directories) or `dataset_inputs` (records of a split) give
     `Input`s: a key (file-name-safe, unique in a run), a name for people, a loader and a
     fingerprint (changes when the input changes, for resuming);
  2. reading: `Engine.read` is the model's input for a file (log-mel frames or waveform samples,
     whatever `tagger_jax.models.registry` says the architecture eats);
  3. windows: `window_starts` places the model-sized windows, by default covering the whole track
     (`COVER`: a window every `hop`, the last one ending at the end of the track), or with the
     paper's protocol (`PAPER`: 16 evenly spaced chunks). A clip shorter than one window is tiled
     to fill it (`chunking.pad_to_length`); identical windows of one input (the 16 copies of a
     tiled short clip) are computed once;
  4. `load_ahead` prepares inputs in worker threads, in input order, a bounded number ahead;
  5. `Packer` packs the windows of many inputs into fixed-size batches (one compilation per model
     and batch shape), streams windows from the input (a long file never has all its windows in
     memory at once), places each batch split over the local devices on the mesh's data axis and
     keeps one batch in flight while the host prepares the next;
  6. `track_probabilities` is THE definition of a track's tags: the mean of its windows' sigmoid
     outputs (for `PAPER` windows this is the paper's evaluation protocol).

Outputs do not depend on an input's batch mates: the models run in inference mode (BatchNorm
with running statistics, no dropout), so every row is computed on its own. They equal those of
another batch size to float32 rounding, not bitwise (XLA may sum in another order for another
batch shape: up to about 1e-6 on probabilities, measured in a new user's trial). With several
processes (`jax.distributed`), `process_share` gives each process a disjoint share of the
inputs; each runs this path on its own devices and writes per-input results, and the consumers
merge them (`barrier`).
"""
from __future__ import annotations

import collections
import contextlib
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from tagger_jax import chunking
from tagger_jax.models.registry import Geometry, geometry

COVER = "cover"  # windows every hop, the last ending at the end of the track (user files)
PAPER = "paper"  # the paper's evenly spaced chunks (evaluate's default)
WINDOWS = (COVER, PAPER)
INPUT_SUFFIXES_EXTRA = (".npy",)  # besides audio: precomputed model inputs


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclasses.dataclass(frozen=True)
class Input:
    """One input of a run. `load` returns the whole track's model input: (n_mels, T) log-mel, or
    (N,) samples for a waveform model; it raises (ideally `audio.InputError`, naming the input)
    when the input is broken."""

    key: str  # output file stem, unique in the run and safe as a file name
    name: str  # shown to people: a path, or dataset:split[i]
    load: Callable[[], np.ndarray]
    fingerprint: str  # changes when the input changes
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    marks: tuple[int, ...] = ()  # window positions to mark in figures (explain's two-clip mode)
    explain_tags: tuple[str, ...] = ()  # explain: this input's own tags (labels, a CSV)
    # explain: annotations read with the input, all optional: "audio" (N,) waveform at the model's
    # rate (playback, auralisation), "true_tags" [names], "tag_mask" (tags, T) uint8.
    extras: Optional[Callable[[], Mapping[str, Any]]] = None


def _key_char(ch: str) -> bool:
    """Whether `safe_key` keeps `ch`: ASCII letters, digits and `._+-`, and the letters and
    digits of other scripts (`str.isalnum`: 'ソング', 'Привет', 'é' in NFC)."""
    return ch.isalnum() if not ch.isascii() else (ch.isalnum() or ch in "._+-")


def safe_key(text: str, max_len: int = 120) -> str:
    """A file-name-safe stem of `text`: each run of characters `_key_char` refuses becomes '_'
    (spaces, punctuation, path separators, controls, emoji; the text is NFC-normalised first),
    leading and trailing '.' and '_' are dropped ('input' when nothing is left), and a stem over
    `max_len` bytes of UTF-8 is cut to `max_len - 11` bytes (whole characters) and ended with
    '-' and 10 hex digits of the text's SHA-1 (file systems count a name's bytes, 255 at most,
    and a CJK character takes 3). An ASCII text gets the stem it got before other scripts were
    kept (they used to become '_': a trial's `日本.wav` and `中文.wav` were both `wav`)."""
    normal = unicodedata.normalize("NFC", text)
    key = "".join(ch if _key_char(ch) else "\0" for ch in normal)
    key = re.sub("\0+", "_", key).strip("._") or "input"
    if len(key.encode()) > max_len:
        digest = hashlib.sha1(text.encode(errors="surrogatepass")).hexdigest()[:10]
        key = key.encode()[: max_len - 11].decode(errors="ignore") + "-" + digest
    return key


# A file input's meta key: its absolute path (as `audio.display_path` writes it). explain's
# summaries and embed's NPZs store it, so that a run started from another directory knows its
# files' earlier outputs (`same_input`, `adopt_keys`); the name as typed is relative to the
# directory of the run that wrote it (a verifying user's rerun from the parent folder explained
# every file again under new names).
INPUT_PATH = "input_path"


def recorded_input(input_path: Optional[str], name: str) -> str:
    """The input an output records, as `same_input` and `adopt_keys` read it: its absolute path
    (`INPUT_PATH`) while a file is there, else the name as given, which still finds the file
    when the folder was moved or copied with its outputs (a verifying user's `mv W Wmv`)."""
    from tagger_jax import audio

    if input_path:
        try:
            if os.path.exists(audio.path_from_display(input_path)):
                return input_path
        except ValueError:
            pass
    return name


def file_fingerprint(path: Path) -> str:
    """Size and modification time of a file ("file:missing" if it cannot be read)."""
    try:
        st = path.stat()
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "file:missing"


def share_label(desc: str) -> str:
    """A progress bar's label: under jax.distributed the bar (drawn by process 0) counts only
    process 0's share of the inputs, and says so."""
    import jax

    n = jax.process_count()
    return desc if n == 1 else f"{desc} (process 0's share, of {n} processes)"


def discover(paths: Iterable[str | os.PathLike],
             skipped: Optional[list[tuple[Path, str]]] = None,
             exclude: Iterable[str | os.PathLike] = ()) -> list[tuple[Path, str]]:
    """(file, name relative to the named directory) for every input, in a stable order.

    Files named directly are kept whatever their suffix (they fail later with a clear error if
    they are not audio); in directories, `audio.scan_inputs` decides (every format the decoders
    read, by suffix or content), sorted; what it leaves out is appended, with the reason, to
    `skipped` if given. Files `tagger-jax explain` wrote (`explain.report.output_files`: listed
    in an explanation summary of their folder, e.g. the `.orig.ogg` playback copies) and
    `tagger-jax embed` wrote (`embedding.output_files`) are left out of directory searches with
    that reason. `exclude`: the run's own outputs (files, or directories and everything under
    them, e.g. `outputs.own_files(--output)`), which a directory search leaves out without
    listing them; an output directory that is the searched folder (or holds it) leaves its
    inputs in, its outputs being told apart by their summaries as above (`--out` equal to the
    input folder found no input, a trial). A file named again (by the same path, another
    spelling of it such as `A/../A/x.wav`, a symbolic link to it, or as a file and within its
    named folder) is one input under its first name, except that a link a folder search finds
    gives way to its file found by its own name; the repeat is listed in `skipped`.
    A named directory with no files at all is listed in `skipped` too. Missing paths are kept:
    they become failed inputs with an error naming them, never a crash of the run. Names are
    `audio.display_path` text (bytes that are not UTF-8 as \\xNN).
    """
    from tagger_jax import audio, embedding
    from tagger_jax.explain import report as explain_report

    out: dict[Path, str] = {}
    seen: set[Path] = set()  # the files' real paths: one file by two names is one input
    outputs: dict[Path, dict[str, str]] = {}  # folder -> its explain and embed outputs
    own = [Path(os.path.realpath(e)) for e in exclude]

    def is_own(f: Path, root: Path) -> bool:  # an output folder that holds the named folder
        a, r = Path(os.path.realpath(f)), Path(os.path.realpath(root))  # leaves its inputs in
        return any(a == o or (o in a.parents and o != r and o not in r.parents) for o in own)

    def run_output(f: Path) -> str | None:
        if f.parent not in outputs:
            outputs[f.parent] = {**embedding.output_files(f.parent),
                                 **explain_report.output_files(f.parent)}
        return outputs[f.parent].get(f.name)

    scanned = []
    for p in map(Path, paths):
        files, left_out = audio.scan_inputs([p])
        if p.is_dir():
            files = [f for f in files if not is_own(f, p)]
            left_out = [(f, run_output(f) or why) for f, why in left_out if not is_own(f, p)]
            kept = []
            for f in files:
                why = run_output(f)
                (kept.append(f) if why is None else left_out.append((f, why)))
            files = kept
            if not files and not left_out:  # e.g. an empty folder named like a file, dir.wav
                left_out = [(p, "a directory with no files in it")]
        if skipped is not None:
            skipped.extend(left_out)
        scanned.append((p, files))
    # A link found in a folder search whose file is an input by its own name too (found in a
    # folder or named on the command line) is the repeat, wherever it sorts (a `misc/link.flac`
    # took the place of `rock/track.flac` before, and of `full.wav` named after its folder).
    direct = {Path(os.path.realpath(f)) for p, files in scanned for f in files
              if not f.is_symlink()}
    for p, files in scanned:
        for f in files:
            rel = f.relative_to(p).as_posix() if p.is_dir() else p.name
            real = Path(os.path.realpath(f))
            if p.is_dir() and f.is_symlink() and real in direct:
                if skipped is not None:
                    skipped.append((f, f"named again (a link to {audio.display_path(real)}, "
                                       "an input by its own name)"))
                continue
            if real in seen:  # named twice (a file and its folder, ./x and x, a link): said
                if skipped is not None:
                    skipped.append((f, "named again (one input; its first name is used)"))
                continue
            seen.add(real)
            out[f] = audio.display_path(rel)
    return list(out.items())


def unique_keys(names: Sequence[str]) -> list[str]:
    """`safe_key` of each name ('/' as '__'), with -2, -3, ... appended to repeats."""
    used: collections.Counter = collections.Counter()
    keys = []
    for name in names:
        key = safe_key(name.replace("/", "__"))
        used[key] += 1
        keys.append(key if used[key] == 1 else f"{key}-{used[key]}")
    return keys


def same_input(stored_name: str, item: "Input") -> bool:
    """Whether an output that records `stored_name` as its input's name was made for `item`:
    the same name, or two paths of the same existing file (relative to this directory)."""
    from tagger_jax import audio

    if stored_name == item.name:
        return True
    try:
        return os.path.samefile(audio.path_from_display(stored_name),
                                audio.path_from_display(item.name))
    except (OSError, ValueError):
        return False


def avoid_reserved(items: Sequence["Input"], reserved: Callable[[str], bool]
                   ) -> tuple[list["Input"], list[tuple["Input", str]]]:
    """`items` with each key that `reserved` says names one of the run's own files (explain's
    `index` for index.html, `failures`, `run.part0`; embed's `embeddings`) moved to the first
    free `KEY-2`, `KEY-3`, ...: a trial's input file named `index` had its page replaced by the
    run's index.html, and one named `failures` lost its summary. Returns (items, [(item, its
    original key), ...] for the moved ones); `reserved_lines` says them."""
    taken = {it.key for it in items}
    out, moved = [], []
    for it in items:
        if reserved(it.key):
            n = 2
            while f"{it.key}-{n}" in taken or reserved(f"{it.key}-{n}"):
                n += 1
            taken.add(f"{it.key}-{n}")
            moved.append((dataclasses.replace(it, key=f"{it.key}-{n}"), it.key))
            it = moved[-1][0]
        out.append(it)
    return out, moved


def reserved_lines(moved: Sequence[tuple["Input", str]]) -> list[str]:
    """The `note:` lines of the inputs `avoid_reserved` moved."""
    return [f"note: {it.name}: outputs named {old}.* would take the name of one of the run's own "
            f"files (index.html, failures.json, embeddings.npz, run.partN.json); written as "
            f"{it.key}.*" for it, old in moved]


def refuse_other_outputs(out: Path, command: str, other: str, found: Mapping[str, str]) -> None:
    """A ValueError (one line) when `out` holds `other`'s outputs (`found`: {file name: why},
    `explain.report.output_files` or `embedding.output_files`): embed and explain both write
    `KEY.npz` and failures.json, and embed's embeddings.npz and part files take names an explain
    input can have. A trial's embed into an explain folder replaced the maps (explain then took
    them for finished), and in a copy of one replaced a page's NPZ and deleted a summary."""
    found = [name for name in sorted(found) if (out / name).exists()]
    if found:
        first = found[0]
        raise ValueError(f"{out} holds outputs of tagger-jax {other} ({len(found)} file(s), e.g. "
                         f"{first}); {command} writes files of the same names: give {command} "
                         "another --out")


def claim_keys(items: Sequence["Input"], stored_name: Callable[[str], Optional[str]]
               ) -> tuple[list["Input"], list[tuple["Input", str]]]:
    """`items` with the key of each one whose output file already holds another input's output
    (`stored_name(key)`: the input name recorded there, None when there is none or it does not
    read) moved to the first free `KEY-2`, `KEY-3`, ...: a run never replaces the output of an
    input it was not given (e.g. `A/x.wav` embedded earlier, now `B/x.wav`, both key `x.wav`).
    Returns (items, [(item, its original key), ...] for the moved ones)."""
    taken = {it.key for it in items}
    out, moved = [], []
    for it in items:
        key, n = it.key, 1
        while True:
            owner = stored_name(key)
            if (owner is None or same_input(owner, it)) and (key == it.key or key not in taken):
                break
            n += 1
            key = f"{it.key}-{n}"
        if key != it.key:
            taken.add(key)
            moved.append((dataclasses.replace(it, key=key), it.key))
            it = moved[-1][0]
        out.append(it)
    return out, moved


def file_identity(name: Optional[str]) -> Optional[tuple[int, int]]:
    """(device, inode) of the file an input name (`audio.display_path` text) names; None when
    there is none."""
    from tagger_jax import audio

    try:
        return (st := os.stat(audio.path_from_display(name))).st_dev, st.st_ino
    except (OSError, ValueError, TypeError):
        return None


def forget_other_keys(failures: Mapping[str, Any], items: Sequence["Input"]) -> dict[str, Any]:
    """`failures` ({key: {"input": name, ...}}, a run's failures.json) without the entries that
    record a file of `items` under another key: a file reached through another named folder gets
    another key (`dir__x.wav`, `x.wav`), and a trial's failures.json listed five broken files
    twice ("10 failed"). The entry under this run's key is what the run keeps."""
    keys = {it.key for it in items}
    files = {i for i in (file_identity(it.name) for it in items) if i is not None}
    return {k: v for k, v in failures.items() if k in keys or not isinstance(v, Mapping)
            or file_identity(v.get("input")) not in files}


def adopt_keys(items: Sequence["Input"], stored: Mapping[str, Optional[str]]
               ) -> tuple[list["Input"], list["Input"]]:
    """`items` with the key of each file input whose output already exists under another key
    changed to that key: `stored` maps the output keys found ({key: the input name recorded
    there}); an input whose file is the same file as a recorded one (the same device and inode:
    another spelling of the path, a folder named one level deeper, which gives another relative
    key, or the same files named in another order) takes that key. Without this a run over a
    subfolder of a folder processed before wrote every output again under new names. An input
    of this run whose own key an adopted one now holds is moved on by `claim_keys` (the output
    there is not its own). Returns (items, the inputs that took an earlier key)."""
    earlier = {}
    for key, name in stored.items():
        ident = file_identity(name) if name else None
        if ident is not None:
            earlier.setdefault(ident, key)
    out, adopted = [], []
    for it in items:  # keys of inputs adopted here may now equal another input's: claim_keys
        key = earlier.get(file_identity(it.name)) if earlier else None  # moves that one on
        if key is not None and key != it.key:
            it = dataclasses.replace(it, key=key)
            adopted.append(it)
        out.append(it)
    return out, adopted


def adopted_line(adopted: Sequence["Input"], where: Any, suffix: str) -> str:
    """The `note:` line a run prints for the inputs `adopt_keys` gave an earlier run's key."""
    return (f"note: {len(adopted)} input(s) have outputs in {where} under the file names of an "
            "earlier run that reached them another way (another named folder, or files of one "
            f"name in another order; e.g. {adopted[0].name}: {adopted[0].key}{suffix}); those "
            "are kept and reused, not written again under new names")


def moved_lines(moved: Sequence[tuple["Input", str]], where: Any, suffix: str,
                limit: int = 10) -> list[str]:
    """The `note:` lines a run prints for the inputs `claim_keys` moved to new output names."""
    lines = [f"note: {where}/{old}{suffix} holds another input's output (kept): {it.name} is "
             f"written as {it.key}{suffix}" for it, old in moved[:limit]]
    if len(moved) > limit:
        lines.append(f"note: ... and {len(moved) - limit} more input(s) written under new names "
                     "for the same reason")
    return lines


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What an `Input.load` may return besides a bare signal: the signal, its degradation
    warnings ({code: message}, docs/audio.md) and, for dataset records, the record's labels
    ((tags,) multi-hot; what `evaluate` and validation score against) and source clip."""

    signal: np.ndarray
    warnings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    labels: Optional[np.ndarray] = None
    source: str = ""  # a dataset record's source clip: its `path` feature, else its `clip_id`


def source_inputs(source: Any, feature: str, label: str, split: str,
                  limit: Optional[int] = None, build: str = "",
                  label_names: Sequence[str] = (),
                  warnings: Optional[Mapping[str, Mapping[str, str]]] = None) -> list[Input]:
    """Inputs for the records of an open random-access split (`len(source)`, `source[i]` -> a
    record dict, e.g. `tagger_jax.datasets.load_split`'s): input i loads record i's `feature`
    ("mel" or "audio", `Architecture.dataset_feature`) as a `Loaded` with the record's "tags" as
    labels and, as its warnings, `warnings[clip_id]` (the audio warnings the build recorded for
    the record's clip, `record_warnings`). `meta["index"]` is the record's index in the split,
    `meta["label_names"]` the dataset's tag names (the order of the labels), if given. `build`
    identifies the split's files (`train_data.split_fingerprint`) and goes into every
    fingerprint, so that outputs of another build (another data directory, a rebuild) are never
    reused for these records."""
    n = len(source) if limit is None else min(limit, len(source))
    warnings = warnings or {}

    def load(i: int) -> Loaded:
        record = source[i]
        if feature not in record:
            raise ValueError(f"{label}:{split}[{i}]: record has no {feature!r} feature "
                             f"({sorted(record)})")
        labels = record.get("tags")  # a record's optional fields, not config defaults
        clip = record_text(record["clip_id"]) if record.get("clip_id") is not None else ""
        return Loaded(np.asarray(record[feature], np.float32), dict(warnings.get(clip, {})),
                      None if labels is None else np.asarray(labels), record_source(record))

    build_id = f":{build[:16]}" if build else ""
    return [Input(key=safe_key(f"{label}-{split}-{i:06d}"), name=f"{label}:{split}[{i}]",
                  load=functools.partial(load, i),
                  fingerprint=f"dataset:{label}:{split}:{i}{build_id}",
                  meta={"index": i, "label_names": tuple(label_names)})
            for i in range(n)]


def record_text(value: Any) -> str:
    """A record's text feature (bytes, or a 0-d array of bytes, from the data source) as str."""
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def record_source(record: Mapping[str, Any]) -> str:
    """Which clip of a collection a dataset record is: its `path` feature (the source file, or a
    generated dataset's `gm://...` / `synth://...` address), else its `clip_id`; "" if neither."""
    for key in ("path", "clip_id"):
        text = record_text(record[key]) if record.get(key) is not None else ""
        if text:
            return text
    return ""


def dataset_inputs(name: str, split: str, feature: str, data_dir: Optional[str] = None,
                   builder_config: Optional[str] = None, limit: Optional[int] = None,
                   hold: Optional[contextlib.ExitStack] = None) -> list[Input]:
    """Inputs for the records of a dataset split (`tagger_jax.datasets.load_split`, then
    `source_inputs`). Self-contained datasets (synthetic_tags) are built on first use, as
    training does. `hold`: the build's readers' lock (`datasets.reading`) is entered on it, so
    the records the inputs read. Each input carries the audio warnings the build recorded for
    its clip (`record_warnings`), as an input read from a file carries its own."""
    from tagger_jax.datasets import SELF_CONTAINED, ensure_built, load_split, reading

    if name in SELF_CONTAINED:
        ensure_built(name, data_dir, builder_config, splits=[split])
    source, tags = load_split(name, split, data_dir, builder_config)
    if hold is not None:
        hold.enter_context(reading(source))
    label = f"{name}/{builder_config}" if builder_config else name
    return source_inputs(source, feature, label, split, limit, build_identity(source), tags,
                         record_warnings(name, split, data_dir, builder_config))


def record_warnings(name: str, split: str, data_dir: Optional[str] = None,
                    builder_config: Optional[str] = None) -> dict[str, dict[str, str]]:
    """{clip_id: {code: message}}: the audio warnings the build recorded for the clips of
    `split` (`datasets.audio_warnings`; docs/audio.md's codes), {} where it recorded none. The
    build's note that a clip is shorter than a training chunk (`chunking.SHORT_CLIP_CODE`) is
    left out: it speaks of training, and explain and embed say themselves when they repeat a
    clip to fill a window."""
    from tagger_jax import datasets

    try:
        builder = datasets.get_builder(name, data_dir, builder_config)
        found = datasets.audio_warnings(builder).get(split, [])
    except (ValueError, FileNotFoundError, KeyError, AttributeError, TypeError):
        return {}
    out: dict[str, dict[str, str]] = {}
    for w in found:
        if str(w["code"]) != chunking.SHORT_CLIP_CODE:
            out.setdefault(str(w["clip_id"]), {})[str(w["code"])] = str(w["message"])
    return out


def build_identity(source: Any) -> str:
    """The identity of a built split's files (`train_data.split_fingerprint`: names, sizes and
    times of change, and the dataset info) for a TFDS data source, which knows its data directory
    and split; "" for an in-memory source."""
    info, split = getattr(source, "dataset_info", None), getattr(source, "split", None)
    if info is None or not isinstance(split, str):
        return ""
    from tagger_jax.train_data import split_fingerprint

    return split_fingerprint(info.data_dir, info.name, split)


def process_share(items: Sequence[Any], index: Optional[int] = None,
                  count: Optional[int] = None) -> list[Any]:
    """This process's disjoint share of `items` (every `count`-th, from `index`): with
    jax.distributed every input is computed by exactly one process. Defaults: this process."""
    if index is None or count is None:
        import jax

        index, count = jax.process_index(), jax.process_count()
    return list(items[index::count])


def barrier(name: str) -> None:
    """Waits until every process reaches `name` (no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)



def merge_shares(parts: Sequence[Mapping[str, Any]], failures: Mapping[str, Any]
                 ) -> tuple[list[str], list[str], dict[str, str], dict[str, Any]]:
    """The processes' share reports of one run merged: (done, skipped, failed, failures).

    Each part is {"keys": the share's input keys, "done", "skipped", "failed": {name: error},
    "failures": {key: record}}; `failures` (the run's earlier failures.json) loses the records of
    every key some share covered, then takes the shares' records.
    """
    done: list[str] = []
    skipped: list[str] = []
    failed: dict[str, str] = {}
    merged = dict(failures)
    for part in parts:
        for key in part["keys"]:
            merged.pop(key, None)
        merged.update(part["failures"])
        done += part["done"]
        skipped += part["skipped"]
        failed.update(part["failed"])
    return done, skipped, failed, merged


def return_freed_memory() -> bool:
    """Asks glibc to serve allocations of 128 KiB and more from their own mappings, returned to
    the system when freed (mallopt M_MMAP_THRESHOLD; glibc's default threshold rises to the
    largest block freed, after which the batches' buffers come from heap arenas that never
    shrink). Measured on a 60-minute file at --hop 0.1 (docs/benchmarks.md): peak RSS 1.42 GB
    without, 0.82 GB with; no effect on results. The commands call it once; False where the C
    library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 128 * 1024))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------------
# Windows


def window_starts(num_steps: int, chunk: int, *, windows: str = COVER, hop: Optional[int] = None,
                  num_chunks: int = chunking.EVAL_CHUNKS) -> np.ndarray:
    """Window starts (in time steps) over a track of `num_steps >= chunk` steps.

    COVER: starts 0, hop, 2 hop, ... plus a last window ending at the track's end
    (`chunking.sliding_window_starts`; default hop: one chunk). PAPER: the authors' evaluation
    chunks i * ((T - chunk) // num_chunks), i < num_chunks (`chunking.eval_chunk_starts`).
    """
    if windows == COVER:
        hop = chunk if hop is None else int(hop)
        if not 0 < hop <= chunk:
            raise ValueError(f"hop must be in 1..{chunk} time steps (one window), got {hop}")
        return chunking.sliding_window_starts(num_steps, chunk, hop)
    if windows == PAPER:
        return chunking.eval_chunk_starts(num_steps, chunk, num_chunks)
    raise ValueError(f"windows must be one of {WINDOWS}, got {windows!r}")


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """How a run places windows: `windows` (COVER or PAPER), `hop_s` (COVER; None: one chunk)
    and `num_chunks` (PAPER)."""

    windows: str = COVER
    hop_s: Optional[float] = None
    num_chunks: int = chunking.EVAL_CHUNKS

    def __post_init__(self):
        if self.windows not in WINDOWS:
            raise ValueError(f"windows must be one of {WINDOWS}, got {self.windows!r}")
        if self.hop_s is not None and not 0 < self.hop_s < float("inf"):  # nan fails both
            raise ValueError(f"--hop must be a positive number of seconds, got {self.hop_s}")
        if self.num_chunks < 1:
            raise ValueError(f"the number of chunks must be positive, got {self.num_chunks}")

    def hop_steps(self, geom: Geometry) -> Optional[int]:
        """The hop in input time steps, at most one chunk (None: one chunk)."""
        if self.hop_s is None:
            return None
        # (compared in seconds first: 1e308 s has no whole number of steps)
        if self.hop_s > 2 * geom.chunk_s or geom.steps(self.hop_s) > geom.chunk:
            raise ValueError(f"--hop {self.hop_s} s is longer than one window ({geom.chunk_s:.3f}"
                             " s): parts of the track would never be seen")
        return geom.steps(self.hop_s)

    def hop_note(self, geom: Geometry) -> Optional[str]:
        """A `note:` line when the hop the model can take (a whole number of its input steps,
        `hop_steps`) differs from the one asked for by more than `HOP_NOTE_TOLERANCE` (`--hop
        0.001` is one 16 ms step of a log-mel model: it was rounded without a word; `--hop 0.1`,
        6 steps or 0.096 s, passes); None otherwise."""
        hop = self.hop_steps(geom)
        if hop is None or abs(hop * geom.step_s - self.hop_s) <= HOP_NOTE_TOLERANCE * self.hop_s:
            return None
        return (f"note: --hop {self.hop_s:g} s is {hop * geom.step_s:.4g} s here: a whole number "
                f"of the model's input steps ({1000 * geom.step_s:.4g} ms each)")

    def checked(self, geom: Geometry) -> "WindowPlan":
        """This plan after `hop_steps`' check (a hop longer than a window: ValueError), its
        `hop_note` printed on stderr (process 0). Call once per run, before any work."""
        import jax

        note = self.hop_note(geom)
        if note and jax.process_index() == 0:
            print(note, file=sys.stderr, flush=True)
        return self

    def starts(self, num_steps: int, geom: Geometry) -> np.ndarray:
        return window_starts(num_steps, geom.chunk, windows=self.windows,
                             hop=self.hop_steps(geom), num_chunks=self.num_chunks)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (in results and signatures)."""
        if self.windows == PAPER:
            return {"windows": PAPER, "num_chunks": self.num_chunks}
        return {"windows": COVER, "hop_s": self.hop_s}


HOP_NOTE_TOLERANCE = 0.1  # relative difference of the hop taken from the hop asked for, unsaid


@dataclasses.dataclass
class Prepared:
    """An input read and planned: its signal, window starts, and the distinct windows to run."""

    item: Input
    signal: np.ndarray  # the input as read (before tiling)
    x: np.ndarray  # the signal tiled to at least one chunk
    length: int  # time steps of `signal`
    padded: bool
    starts: np.ndarray  # (n,) start of every window, in time steps of `x`
    unique_starts: np.ndarray  # distinct starts, computed once each
    inverse: np.ndarray  # starts == unique_starts[inverse]
    chunk: int
    notes: list[str]
    started: float
    tags: Optional[np.ndarray] = None  # consumers' per-input state (explain: tags to explain)
    num_tags: Optional[int] = None  # explain: how many of `tags` are the input's (rest: padding)
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # explain: Input.extras()
    warnings: dict[str, str] = dataclasses.field(default_factory=dict)  # audio.read_input's
    duration_s: float = 0.0  # the audio's real duration (`input_duration_s`), not length x step
    labels: Optional[np.ndarray] = None  # a dataset record's (tags,) labels (`Loaded.labels`)
    source: str = ""  # a dataset record's source clip (`Loaded.source`)
    # The decoded (N,) waveform, when the reader kept it (`Engine.read_checked(keep_audio=True)`:
    # explain plays it back without decoding the file again); None otherwise.
    audio: Optional[np.ndarray] = None

    def windows(self) -> Iterator[np.ndarray]:
        """The distinct windows, one at a time (views of `x`: nothing is copied until a batch
        is stacked)."""
        for s in self.unique_starts:
            yield self.x[..., s:s + self.chunk]


def split_warnings(loaded: Any) -> tuple[np.ndarray, dict[str, str]]:
    """What an `Input.load` returned as (signal, {code: warning}): file inputs load through
    `Engine.read_checked` (signal, audio warnings (docs/audio.md), duration), dataset records as
    a `Loaded`, others give the signal."""
    if isinstance(loaded, Loaded):
        return loaded.signal, dict(loaded.warnings)
    return (loaded[0], dict(loaded[1])) if isinstance(loaded, tuple) else (loaded, {})


SHORT_CLIP = "shorter than one window"  # how the count names a result's `warnings` (the only
# note `inference.prepare` makes: a clip repeated to fill one window)


def warning_counts(warned: list[tuple[list[str], dict[str, str]]], total: int,
                   reused: bool = False) -> str | None:
    """One line counting this run's warned inputs by kind, for the end of a run whose per-input
    `warning:` lines scrolled by (a folder of short clips gives one per file): `warned` holds each
    input's (`warnings`, `audio_warnings`) as the results store them, `total` the inputs tried.
    None when no input was warned. E.g. "warning: 3 of 200 input(s) tried had warnings: 2
    shorter than one window, 1 clipping (each said above)". With `reused`, the same count of the
    inputs whose outputs were reused (`stored_warnings`; their warnings were said by the run that
    made them): "warning: 2 of 40 reused input(s) had warnings when they were made: ..."."""
    counts: dict[str, int] = {}
    inputs = 0
    for notes, codes in warned:
        kinds = ([SHORT_CLIP] if notes else []) + sorted(codes)
        inputs += bool(kinds)
        for kind in kinds:
            counts[kind] = counts.get(kind, 0) + 1
    if not inputs:
        return None
    kinds = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # most first, then by name
    listed = ", ".join(f"{n} {kind}" for kind, n in kinds)
    if reused:
        return (f"warning: {inputs} of {total} reused input(s) had warnings when they were made: "
                f"{listed} (kept in their outputs)")
    return f"warning: {inputs} of {total} input(s) tried had warnings: {listed} (each said above)"


def stored_warnings(output: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(`warnings`, `audio_warnings`) of a stored output, as `warning_counts` reads them: a tag
    result or an explain summary (lists and dicts; absent when there were none) or an embed NPZ
    (JSON text). Unreadable or missing fields count as none."""
    def field(name: str, kind: type) -> Any:
        value = output.get(name)
        if value is not None and not isinstance(value, (list, dict)):
            try:
                value = json.loads(str(value))
            except ValueError:
                value = None
        return value if isinstance(value, kind) else kind()

    return field("warnings", list), field("audio_warnings", dict)


def input_duration_s(loaded: Any, length: int, geom: Geometry) -> float:
    """An input's real duration (s): the audio's samples / rate when the reader knew it
    (`Engine.read_checked`: 10.0 for a 10 s file), else what its `length` time steps imply: a
    waveform's samples / rate, or for T log-mel frames (a `.npy`, a dataset record) the shortest
    audio a centred STFT turns into T frames, (T - 1) x hop / rate (T x hop overstates a 10 s
    file by one frame: 10.016 s)."""
    known = loaded[2] if isinstance(loaded, tuple) and len(loaded) > 2 else None
    if known is not None:
        return float(known)
    return (length - (0 if geom.architecture.waveform else 1)) * geom.step_s


def prepare(item: Input, geom: Geometry, plan: WindowPlan) -> Prepared:
    """Reads `item` and places its windows (runs in load-ahead threads; no global state)."""
    started = time.perf_counter()
    loaded = item.load()
    signal, warnings = split_warnings(loaded)
    signal = np.asarray(signal, np.float32)
    expected = 1 if geom.architecture.waveform else 2
    if signal.ndim != expected:
        raise ValueError(f"{item.name}: model input has shape {signal.shape}; "
                         f"{geom.architecture.name} expects {expected} axes")
    length = int(signal.shape[-1])
    x, padded = chunking.pad_to_length(signal, geom.chunk)
    notes = [f"{item.name}: only {length} time step{'s' * (length != 1)}, shorter than one "
             f"window of {geom.chunk}; "
             "the clip was repeated to fill the window"] if padded else []
    starts = plan.starts(x.shape[-1], geom)
    unique, inverse = np.unique(starts, return_inverse=True)
    return Prepared(item, signal, x, length, padded, starts, unique, inverse.reshape(-1),
                    geom.chunk, notes, started, warnings=dict(warnings),
                    duration_s=input_duration_s(loaded, length, geom),
                    labels=loaded.labels if isinstance(loaded, Loaded) else None,
                    source=loaded.source if isinstance(loaded, Loaded) else "",
                    audio=getattr(loaded, "audio", None))  # `audio.InputRead`'s, if kept


def load_ahead(fn: Callable[[Input], Any], items: Iterable[Input], workers: int = 2,
               ahead: Optional[int] = None) -> Iterator[tuple[Input, Any]]:
    """(item, fn(item) or the exception it raised) in input order, computed by `workers` threads
    with at most `ahead` (default 2 x workers) items in flight: host memory stays bounded on long
    lists. A broken input never stops the others."""
    workers = max(1, int(workers))
    ahead = max(1, ahead or 2 * workers)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        it = iter(items)
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= ahead:
                break
        while pending:
            item, future = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            try:
                yield item, future.result()
            except Exception as e:  # noqa: BLE001 -- reported per input by the consumer
                yield item, e


# ---------------------------------------------------------------------------------------------
# Batches


class Packer:
    """Packs rows of many inputs into fixed-size batches for `fn` and hands each input its rows
    back, stacked in order, once all are computed.

    `fn(**batch) -> {name: (batch_size, ...)}` is called on batches of exactly `batch_size` rows
    (the last is padded by repeating its first row), so a jitted `fn` compiles once. `put` places
    a host batch on devices (e.g. split over a mesh). One batch stays in flight: the next is
    stacked while the devices compute. Rows are pulled from each input's iterator as batches fill,
    so at most `batch_size` rows wait on the host (`peak_rows` records the most ever waiting).
    `get` fetches an output batch to the host (default `jax.device_get`; across processes, this
    process's rows: `sharding.local_rows`). `rows_computed` counts the real rows sent to `fn`
    (padding excluded), `batches_run` the calls of `fn`. `on_rows(key, done, total)`, if given,
    is called for every input with rows in a fetched batch: `done` of its `total` computed rows
    are back (a progress display within one long input, `rows_postfix`).
    """

    def __init__(self, fn: Callable[..., Mapping[str, Any]], batch_size: int,
                 put: Optional[Callable[[dict], Any]] = None,
                 get: Optional[Callable[[Any], Any]] = None,
                 on_rows: Optional[Callable[[str, int, int], None]] = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.fn, self.batch_size, self.put, self.get = fn, int(batch_size), put, get
        self.on_rows = on_rows
        self.rows: collections.deque = collections.deque()  # (key, index, {name: row})
        self.expected: dict[str, int] = {}
        self.results: dict[str, list] = {}
        self.expand: dict[str, Optional[np.ndarray]] = {}
        self.in_flight: Optional[tuple[list, Any]] = None
        self.rows_computed = 0
        self.batches_run = 0
        self.peak_rows = 0

    def add(self, key: str, rows: Iterable[Mapping[str, np.ndarray]], n: int,
            expand: Optional[np.ndarray] = None) -> list[tuple[str, dict]]:
        """Queues the `n` rows of input `key`; returns the inputs finished meanwhile.

        `expand` (optional) maps the computed rows to the input's rows: output i of the input is
        computed row `expand[i]` (identical windows computed once).
        """
        if key in self.expected:
            raise ValueError(f"input {key!r} added twice")
        if n < 1:
            raise ValueError(f"input {key!r} has no rows")
        self.expected[key], self.results[key], self.expand[key] = n, [None] * n, expand
        done: list[tuple[str, dict]] = []
        count = 0
        for i, row in enumerate(rows):
            self.rows.append((key, i, row))
            self.peak_rows = max(self.peak_rows, len(self.rows))
            count += 1
            if len(self.rows) >= self.batch_size:
                done += self._run(self.batch_size)
        if count != n:
            raise ValueError(f"input {key!r}: {count} rows given, {n} announced")
        return done

    def flush(self) -> list[tuple[str, dict]]:
        """Runs what is queued and collects the batch in flight."""
        done = []
        while self.rows:
            done += self._run(min(len(self.rows), self.batch_size))
        return done + self._collect()

    def pad_batches(self, count: int, row: Mapping[str, np.ndarray]) -> None:
        """Runs `count` batches of copies of `row` and drops their outputs: processes that share
        one computation (a mesh over hosts) must all call `fn` equally often, so a process with
        fewer batches pads (`run_inputs(lockstep=True)`)."""
        import jax

        for _ in range(int(count)):
            batch = {k: np.repeat(np.asarray(v)[None], self.batch_size, axis=0)
                     for k, v in row.items()}
            out = self.fn(**(self.put(batch) if self.put is not None else batch))
            self.batches_run += 1
            jax.block_until_ready(out)

    def _run(self, n: int) -> list[tuple[str, dict]]:
        rows = [self.rows.popleft() for _ in range(n)]
        names = rows[0][2].keys()
        batch = {k: np.stack([r[2][k] for r in rows] + [rows[0][2][k]] * (self.batch_size - n))
                 for k in names}
        if self.put is not None:
            batch = self.put(batch)
        out = self.fn(**batch)  # dispatched asynchronously
        self.rows_computed += n
        self.batches_run += 1
        done = self._collect()
        self.in_flight = (rows, out)
        return done

    def _collect(self) -> list[tuple[str, dict]]:
        if self.in_flight is None:
            return []
        import jax

        rows, out = self.in_flight
        self.in_flight = None
        out = self.get(out) if self.get is not None else jax.device_get(out)
        done = []
        touched: dict[str, tuple[int, int]] = {}  # key: (rows back, rows in all)
        for j, (key, i, _) in enumerate(rows):
            self.results[key][i] = {k: np.asarray(v[j]) for k, v in out.items()}
            self.expected[key] -= 1
            total = len(self.results[key])
            touched[key] = (total - self.expected[key], total)
            if self.expected[key] == 0:
                parts = self.results.pop(key)
                del self.expected[key]
                stacked = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
                expand = self.expand.pop(key)
                if expand is not None:
                    stacked = {k: v[expand] for k, v in stacked.items()}
                done.append((key, stacked))
        if self.on_rows is not None:
            for key, (back, total) in touched.items():
                self.on_rows(key, back, total)
        return done


def rows_postfix(bar: Any, name_of: Callable[[str], str], min_rows: int,
                 what: str = "windows") -> Callable[[str, int, int], None]:
    """A `Packer.on_rows` that shows the progress within an input of at least `min_rows`
    computed rows (e.g. more than one batch: a long track) as the postfix of the inputs' tqdm
    `bar`, "NAME: 120/900 windows", cleared when the input is done. Without it a bar over files
    sat at 0% through a 30-minute track. The bar is redrawn no more often than its own
    `mininterval` allows (tqdm's `update(0)`). `name_of(key)`: the input's name."""
    def show(key: str, done: int, total: int) -> None:
        if total < min_rows:
            return
        bar.set_postfix_str(f"{name_of(key)}: {done}/{total} {what}" if done < total else "",
                            refresh=False)
        bar.update(0)
    return show


def run_inputs(items: Sequence[Input], plan: WindowPlan, geom: Geometry, packer: Packer,
               on_done: Callable[[Prepared, dict], None],
               on_error: Callable[[Input, BaseException], None], workers: int = 2,
               lockstep_window: Optional[np.ndarray] = None) -> Packer:
    """THE loop of every consumer: reads `items` ahead (`load_ahead`, `prepare`), feeds every
    distinct window to `packer` as {"x": window} and calls `on_done(prepared, outputs)` with each
    input's per-window outputs (in window order, identical windows expanded) or
    `on_error(item, exception)`, in completion order.

    `lockstep_window` (a window, e.g. zeros; for processes computing on one mesh over hosts, as
    the trainer's validation does): after its own inputs each process pads with batches of it up
    to the most batches any process ran, so all call the jitted function equally often.
    """
    waiting: dict[str, Prepared] = {}

    def finished(done: list[tuple[str, dict]]) -> None:
        for key, out in done:
            on_done(waiting.pop(key), out)

    for item, prepared in load_ahead(functools.partial(prepare, geom=geom, plan=plan), items,
                                     workers):
        if isinstance(prepared, BaseException):
            on_error(item, prepared)
            continue
        waiting[item.key] = prepared
        finished(packer.add(item.key, ({"x": w} for w in prepared.windows()),
                            len(prepared.unique_starts), prepared.inverse))
    finished(packer.flush())
    if lockstep_window is not None:
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            counts = multihost_utils.process_allgather(np.array([packer.batches_run], np.int64))
            packer.pad_batches(int(np.max(counts)) - packer.batches_run,
                               {"x": np.asarray(lockstep_window, np.float32)})
    return packer


# ---------------------------------------------------------------------------------------------
# Model functions


@functools.lru_cache(maxsize=8)
def make_predict_fn(model) -> Callable[[Any, Any], Any]:
    """A jitted `fn(variables, x) -> sigmoid probabilities` (float32) in inference mode.

    x: a batch of model inputs, (batch, 96, frames) float32 log-mel in dB (`audio.log_mel`;
    frames = the model's chunk, `config.features.chunk_frames`) or (batch, 65,610) samples for
    `lee_won`; returns (batch, tags). Errors: `frontends.check_spectrogram_batch`.

    No shardings are fixed, so jit follows the inputs': a batch split over a mesh (replicated
    variables) is computed in parallel and the output keeps the batch sharding. Logits are cast
    to float32 before the sigmoid so bfloat16 models average in full precision. Memoised on the
    module (Flax modules hash by their fields): one compilation per (model, batch shape).
    """
    import jax
    import jax.numpy as jnp

    @jax.jit
    def predict(variables, x):
        logits = model.apply(variables, x, train=False)
        return jax.nn.sigmoid(logits.astype(jnp.float32))

    return predict


@functools.lru_cache(maxsize=8)
def make_embed_fn(model, has_attention: bool) -> Callable[[Any, Any], dict]:
    """A jitted `fn(variables, x) -> {"probabilities", "embedding", "frontend"}` (float32).

    "embedding" is what the classifier reads: for attention models the pooled [CLS]
    representation tanh(W h_[CLS] + b) before dropout ((B, attention_channels)); for the
    convolutional back-end the hidden dense layer after BatchNorm and ReLU ((B, 500)).
    "frontend" is the front-end's output averaged over time ((B, channels)).
    Both are read with Flax's `capture_intermediates` from the unchanged model.
    """
    import jax
    import jax.numpy as jnp

    from tagger_jax.models import DENSE_BN, FRONTEND, POOLER

    names = (FRONTEND, POOLER) if has_attention else (FRONTEND, DENSE_BN)

    @jax.jit
    def embed(variables, x):
        logits, state = model.apply(
            variables, x, train=False, mutable=["intermediates"],
            capture_intermediates=lambda mdl, method: (
                method == "__call__" and len(mdl.scope.path) == 1 and mdl.name in names))
        inter = state["intermediates"]
        frontend = inter[FRONTEND]["__call__"][0]
        if has_attention:
            embedding = jnp.tanh(inter[POOLER]["__call__"][0])
        else:
            embedding = jax.nn.relu(inter[DENSE_BN]["__call__"][0])
        return {"probabilities": jax.nn.sigmoid(logits.astype(jnp.float32)),
                "embedding": embedding.astype(jnp.float32),
                "frontend": frontend.astype(jnp.float32).mean(axis=1)}

    return embed


def run_signature(loaded, plan: "WindowPlan", kind: str) -> str:
    """Changes with the model files, the window settings or the output `kind` (its format):
    resumable runs reuse only results with the same signature (and input fingerprint)."""
    fields = {"format": kind, "model": model_signature(loaded), **plan.describe()}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def reusable(output: Optional[Mapping[str, Any]], signature: str, fingerprint: str) -> bool:
    """Whether a finished output (a result, summary or NPZ with "signature" and "fingerprint")
    may be kept instead of computing its input again: the same `run_signature` and the same
    input version (`Input.fingerprint`). THE reuse rule of `tag --resume`, `embed` and
    `explain`."""
    return (output is not None and str(output.get("signature")) == signature
            and str(output.get("fingerprint")) == fingerprint)


def replaced_line(count: int, where: Any, verb: str, changed: str = "") -> str:
    """The one line a resumable command prints when it computes again `count` outputs found in
    `where` that `reusable` rejected (made with another model, other settings or an earlier
    version of the input), e.g. "... in out/: embedded again"; `changed`, where the command
    knows it, says what differs ("listen (was True, now False)")."""
    return (f"{count} output(s) in {where} came from another model, other settings or an "
            f"earlier version of the input: {verb} again (replaced)"
            + (f"; changed: {changed}" if changed else ""))


def replaced_summary(count: int) -> str:
    """What an end-of-run summary adds when `count` outputs were computed again (`replaced_line`);
    "" for none."""
    return (f"; {count} earlier output(s) made with other settings or of an earlier version of "
            "the input replaced") if count else ""


def run_summary(verb: str, done: int, skipped: int, failed: int, replaced: int = 0) -> str:
    """The counts line that ends every batch command (`tag`, `embed`, `explain`): "explained 3
    input(s), skipped 2 already finished, 1 failed" (and `replaced_summary`); the skipped clause
    only when something was reused ("tagged 1 input(s), 0 failed")."""
    reused = f", skipped {skipped} already finished" if skipped else ""
    return f"{verb} {done} input(s){reused}, {failed} failed" + replaced_summary(replaced)


FAILED_PREFIX = "failed: "  # the start of every failed input's line (not "error:": the run went on)


def failure_lines(errors: Iterable[tuple[Any, Any]]) -> list[str]:
    """One line per failed input, the same in every batch command (printed on stderr after
    `run_summary`): "failed: NAME: reason", the name once (a reason from reading the input
    already starts with it). `errors`: (input name, reason) pairs."""
    return [FAILED_PREFIX + " ".join(named(name, error).split()) for name, error in errors]


def named(name: Any, error: Any) -> str:
    """`error` (an exception or its text) naming the input once: as it is when it starts with
    `name` (errors from reading an input do), else "name: error"; an exception without text
    gives its type's name."""
    name = str(name)
    text = ((str(error) or type(error).__name__) if isinstance(error, BaseException)
            else str(error))
    return text if text.startswith(name) else f"{name}: {text}"


def model_signature(loaded) -> str:
    """Changes when the model directory is rewritten (its metadata or variables) and when the
    model in memory differs from its files: the variables' bytes, the module's fields and the
    tags are hashed too, so a `LoadedModel` whose variables were swapped in Python
    (`dataclasses.replace(loaded, variables=...)`) does not reuse another model's outputs (found
    by a new user's trial). Outputs made with another signature are not reused by resumable
    runs. Costs one pass over the variables (about 0.1 s for the paper's 6.9 M parameters)."""
    import jax

    directory = Path(loaded.directory)
    parts = [str(directory)]
    for name in ("tagger.json", "variables"):
        try:
            parts.append(str((directory / name).stat().st_mtime_ns))
        except OSError:
            parts.append("-")
    digest = hashlib.sha1("|".join(parts).encode())
    digest.update(repr(loaded.model).encode())
    digest.update(json.dumps(list(loaded.tags)).encode())
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(loaded.variables))[0]
    for path, leaf in leaves:
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()[:16]


def track_probabilities(window_probabilities: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """A track's tag probabilities: the mean of its windows' sigmoid outputs, (n, tags) ->
    (tags,), averaged in float64 and returned as `dtype` (evaluation keeps float64, so ROC-AUC
    sees no ties that rounding made). With PAPER windows this is the authors' evaluation
    protocol; `tag`, `explain`, `embed`, `evaluate` and validation all use it, so they report the
    same numbers for the same windows."""
    p = np.asarray(window_probabilities)
    if p.ndim != 2 or not len(p):
        raise ValueError(f"expected (windows, tags) probabilities, got shape {p.shape}")
    return p.astype(np.float64).mean(axis=0).astype(dtype)


def top_tags(probabilities: np.ndarray, tags: Sequence[str], k: int) -> list[dict]:
    """[{"tag", "probability"}] of the k most probable tags (ties: lower index first)."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [{"tag": str(tags[i]), "probability": round(float(probabilities[i]), 6)}
            for i in order]


# ---------------------------------------------------------------------------------------------
# A loaded model on the local devices


class Engine:
    """A loaded model ready for inference: geometry, reader, local mesh, replicated variables.

    `batch_size` is rounded up to a multiple of the local device count; every batch is split over
    the local devices on the mesh's "data" axis. Reuse one engine for many calls (functions are
    compiled once per model and batch shape).
    """

    def __init__(self, loaded, batch_size: int = 64, devices: Optional[Sequence[Any]] = None,
                 load_workers: Optional[int] = None):
        from tagger_jax import audio, sharding

        self.loaded = loaded
        self.tags = tuple(loaded.tags)
        self.features = audio.features_from_config(loaded.config.features)
        self.geometry = geometry(loaded.config.model, self.features.sample_rate,
                                 self.features.hop_length, self.features.chunk_frames)
        self.architecture = self.geometry.architecture
        self.mesh = sharding.local_mesh(devices)
        n_dev = self.mesh.devices.size
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.batch_size = -(-int(batch_size) // n_dev) * n_dev
        self.variables = sharding.replicate_local(loaded.variables, self.mesh)
        self._batch_sharding = sharding.batch_sharding(self.mesh)
        self.load_workers = load_workers or min(8, os.cpu_count() or 2)

    # inputs ------------------------------------------------------------------------------------

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """The model's input for a file: (n_mels, T) log-mel, or (N,) samples for a waveform
        architecture (`audio.load_input` / `audio.load_waveform_input`; `.npy` as is)."""
        from tagger_jax import audio

        if self.architecture.waveform:
            return audio.load_waveform_input(path, self.features.sample_rate)
        return audio.load_input(path, self.features)

    def read_checked(self, path: str | os.PathLike, keep_audio: bool = False):
        """`read` plus the input's degradation warnings, {code: message}, and its audio's real
        duration in seconds: an `audio.InputRead` (`audio.read_input_with_duration`). With
        `keep_audio` its `audio` is the decoded waveform (`prepare` puts it on `Prepared.audio`)."""
        from tagger_jax import audio

        return audio.read_input_with_duration(path, self.features,
                                              waveform=self.architecture.waveform,
                                              keep_audio=keep_audio)

    def file_inputs(self, paths: Iterable[str | os.PathLike],
                    skipped: Optional[list[tuple[Path, str]]] = None,
                    keep_audio: bool = False,
                    exclude: Iterable[str | os.PathLike] = ()) -> list[Input]:
        """Inputs for files and directories (`discover`), with unique keys; files a directory
        search left out are appended to `skipped` with the reason, if given. `keep_audio`: each
        prepared audio file also carries its decoded waveform (`Prepared.audio`), read in the
        same decode as its model input. `exclude`: the run's own outputs (`discover`)."""
        found = discover(paths, skipped, exclude)
        keys = unique_keys([rel for _, rel in found])
        from tagger_jax import audio

        return [Input(key=key, name=audio.display_path(path),
                      load=functools.partial(self.read_checked, path, keep_audio=keep_audio),
                      fingerprint=file_fingerprint(path),
                      meta={INPUT_PATH: audio.display_path(Path(path).absolute())})
                for (path, _), key in zip(found, keys)]

    def array_inputs(self, waves: Sequence[Any], sample_rate: int,
                     names: Optional[Sequence[str]] = None,
                     keep_audio: bool = True) -> list[Input]:
        """Inputs for audio in memory (a notebook's arrays), for `Tagger.tag`, `embedding.embed`
        and `explain_inputs` as `file_inputs` are: each of `waves` is (N,) or (channels, N) float
        samples at `sample_rate` Hz, read as `audio.read_array` reads it when its turn comes (a
        bad one fails alone, named). `names` (default "array 0", "array 1", ...) are shown in
        results and warnings and make the output keys; the fingerprint is the samples' SHA-1.
        `keep_audio` (as `file_inputs`'; on by default here): the prepared input carries its
        resampled waveform, which `explain_inputs` plays back and auralises. Raises ValueError
        when `names` does not give one name per array."""
        from tagger_jax import audio

        waves = list(waves)
        names = [f"array {i}" for i in range(len(waves))] if names is None else list(names)
        if len(names) != len(waves):
            raise ValueError(f"{len(names)} names for {len(waves)} arrays")

        def fingerprint(x: Any) -> str:
            try:
                a = np.ascontiguousarray(x)
                return (f"array:{a.dtype.str}:{a.shape}:"
                        f"{hashlib.sha1(a.view(np.uint8).reshape(-1)).hexdigest()}")
            except (ValueError, TypeError):  # ragged or of objects: its reading fails, named
                return f"array:unreadable:{id(x)}"

        return [Input(key=key, name=name, fingerprint=fingerprint(wave),
                      load=functools.partial(audio.read_array, wave, sample_rate, self.features,
                                             self.architecture.waveform, name, keep_audio))
                for wave, name, key in zip(waves, names, unique_keys(names))]

    def dataset_inputs(self, name: str, split: str, data_dir: Optional[str] = None,
                       builder_config: Optional[str] = None, limit: Optional[int] = None,
                       hold: Optional[contextlib.ExitStack] = None) -> list[Input]:
        return dataset_inputs(name, split, self.architecture.dataset_feature, data_dir,
                              builder_config, limit, hold)

    def prepare(self, item: Input, plan: WindowPlan) -> Prepared:
        return prepare(item, self.geometry, plan)

    # batches -----------------------------------------------------------------------------------

    def put(self, batch: dict) -> dict:
        """A host batch split over the local devices on the data axis."""
        import jax

        return jax.device_put(batch, self._batch_sharding)

    def packer(self, fn: Callable[..., Mapping[str, Any]],
               on_rows: Optional[Callable[[str, int, int], None]] = None) -> Packer:
        return Packer(fn, self.batch_size, put=self.put, on_rows=on_rows)

    def rows_postfix(self, bar: Any, name_of: Callable[[str], str],
                     what: str = "windows") -> Callable[[str, int, int], None]:
        """`rows_postfix` for inputs of more than one of this engine's batches."""
        return rows_postfix(bar, name_of, self.batch_size + 1, what)

    def run(self, items: Sequence[Input], plan: WindowPlan,
            fn: Callable[..., Mapping[str, Any]],
            on_done: Callable[[Prepared, dict], None],
            on_error: Callable[[Input, BaseException], None],
            on_rows: Optional[Callable[[str, int, int], None]] = None) -> Packer:
        """`run_inputs` on this engine's devices (see there); `on_rows`: `Packer`'s."""
        return run_inputs(items, plan, self.geometry, self.packer(fn, on_rows), on_done,
                          on_error, self.load_workers)

    def predict_fn(self) -> Callable[..., dict]:
        predict = make_predict_fn(self.loaded.model)
        return lambda x: {"probabilities": predict(self.variables, x)}

    def embed_fn(self) -> Callable[..., dict]:
        embed = make_embed_fn(self.loaded.model, self.architecture.has_attention)
        return lambda x: embed(self.variables, x)
