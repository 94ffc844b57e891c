"""What every tagging builder shares: config base, feature spec, build report, worker pool.

All builders write array_record files (readable with `tfds.data_source` and grain, no TensorFlow)
and keep generation order (`disable_shuffling`), so record i of a split is the i-th clip of the
source list and a rebuild writes identical records (feature by feature; the file bytes can
differ between processes, as the features are serialized as a protobuf map).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import multiprocessing
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from tagger_jax import errors, main_guard
from tagger_jax.audio import FeatureParams


SPLITS = ("train", "validation", "test")
# The authors' feature settings: every stored "mel" is computed with exactly these.
FEATURES = FeatureParams()
REPORT_FILE = "skipped_files.tsv"
SKIP_WARNINGS_SHOWN = 20  # per split, as the build goes; the rest are in the summary
WARNINGS_FILE = "audio_warnings.tsv"
TAGS_FILE = "tags.txt"


@dataclasses.dataclass(eq=False)
class TaggingConfig(tfds.core.BuilderConfig):
    """Base builder config. `waveform=True` also stores the 16 kHz float32 audio (for `lee_won`)."""

    waveform: bool = False
    # Fields that must be above 0 (a generated split's clip count, a clip's length): TFDS would
    # otherwise stop on an empty split with "No examples were yielded".
    POSITIVE: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        """Refuses a negative number in any field (counts, durations, seeds: none may be
        negative; a negative count would slice the source lists from the end), and 0 in the
        fields of `POSITIVE`, with a one-line `errors.ConfigError` naming the field."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise errors.ConfigError(f"config {self.name!r}: {field.name} must not be "
                                         f"negative, got {value!r}")
            if field.name in self.POSITIVE and not value > 0:
                raise errors.ConfigError(f"config {self.name!r}: {field.name} must be above 0 "
                                         f"(every split needs clips, every clip a length), "
                                         f"got {value!r}")


def feature_spec(num_tags: int | None, waveform: bool = False, tag_mask: bool = False,
                 extra: dict[str, Any] | None = None) -> tfds.features.FeaturesDict:
    """The per-clip features every builder stores (see the contract in `tagger_jax.datasets`),
    plus a builder's own `extra` features."""
    spec: dict[str, Any] = {
        "mel": tfds.features.Tensor(shape=(FEATURES.n_mels, None), dtype=np.float16),
        "tags": tfds.features.Tensor(shape=(num_tags,), dtype=np.uint8),
        "clip_id": tfds.features.Text(),
        "path": tfds.features.Text(),
        "duration": tfds.features.Scalar(dtype=np.float32),
    }
    if waveform:
        spec["audio"] = tfds.features.Tensor(shape=(None,), dtype=np.float32)
    if tag_mask:
        spec["tag_mask"] = tfds.features.Tensor(shape=(num_tags, None), dtype=np.uint8)
    spec.update(extra or {})
    return tfds.features.FeaturesDict(spec)


class LocalDatasetInfo(tfds.core.DatasetInfo):
    """`tfds.core.DatasetInfo` of a dataset that is only ever built here, never read from GCS.

    TFDS's builder constructor calls `initialize_from_bucket` for every data directory without
    a finished build; that method makes a temporary folder for metadata from GCS before it asks
    GCS, and never removes it (tensorflow-datasets 4.9: GCS is off in the pip release, so the
    folder stays empty). Every command and build left one more `tmp...tfds` folder in the
    temporary directory; nothing of these datasets is on GCS, so there is nothing to fetch."""

    def initialize_from_bucket(self) -> None:
        return None


class BuildInfo(tfds.core.MetadataDict):
    """Dataset metadata saved beside the records: tag names, feature settings, build report.

    Besides `metadata.json` it writes `skipped_files.tsv` (split, clip id, path, reason),
    `audio_warnings.tsv` (split, clip id, path, code, message: clips kept but degraded, the
    `audio.load_audio_checked` warnings) and `tags.txt` (one tag a line, model order) into the
    dataset directory, so the files a build could not use or found degraded and the vocabulary
    are readable where the data lives.
    """

    def save_metadata(self, data_dir):
        super().save_metadata(data_dir)
        rows = [(split, s["clip_id"], s["path"], s["error"])
                for split, items in sorted(self.get("skipped", {}).items()) for s in items]
        _write_tsv(tfds.core.Path(data_dir) / REPORT_FILE, ("split", "clip_id", "path", "error"),
                   rows)
        rows = [(split, w["clip_id"], w["path"], w["code"], w["message"])
                for split, items in sorted(self.get("audio_warnings", {}).items()) for w in items]
        _write_tsv(tfds.core.Path(data_dir) / WARNINGS_FILE,
                   ("split", "clip_id", "path", "code", "message"), rows)
        if "tags" in self:
            lines = "".join(f"{t}\n" for t in self["tags"])
            (tfds.core.Path(data_dir) / TAGS_FILE).write_text(lines)


def _write_tsv(path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue())


class TaggingBuilder(tfds.core.GeneratorBasedBuilder):
    """Base class: array_record output, kept order, tags in metadata, skip report, worker pool.

    Subclasses set `NUM_TAGS` (None: known only at build time), implement `_split_generators`, call
    `self._set_tags(...)` there, and yield examples from `self._extract_audio(...)` or their own.
    `num_workers` (constructor argument): processes for decoding / synthesis (None: all cores).
    """

    NUM_TAGS: int | None = None
    MANUAL_FILES = ""  # what the manual directory must hold, in a phrase (errors name it)
    TAGS: tuple[str, ...] | None = None  # the tags of every build (None: they come from the data)
    HOMEPAGE = ""
    CITATION = ""
    DESCRIPTION = ""
    # Whether `reuse_conflict` compares a `--set` config's fields with the build itself (with
    # its own rules, e.g. banks by contents); else `datasets.build` compares the recorded
    # fields and refuses a build made with other values.
    REUSE_COMPARES_CONFIG = False

    def __init__(self, *, num_workers: int | None = None, resume: bool = True, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self._num_workers = num_workers
        self._resume = resume
        self._pool = None
        self._inputs_checked = False
        super().__init__(**kwargs)

    @property
    def feature_cache_dir(self) -> Path:
        """Per-clip features of an unfinished build (`resume`): a rerun after an interruption
        decodes only the clips not yet done. Deleted when the build succeeds."""
        config = self.builder_config.name if self.builder_config else "default"
        return (Path(os.fspath(self._data_dir_root)) / "downloads" / "tagger_jax_resume"
                / self.name / config / str(self.version))

    def preflight(self, manual_dir: Path | None = None) -> None:
        """Checks of the builder's inputs, run before a build writes anything (none here); an
        input refused here leaves no folder behind. `manual_dir`: the manual directory the build
        will read, when known."""

    def check_inputs(self, manual_dir: Path | None = None) -> None:
        """`preflight`, once per builder (`build` runs it before announcing the build, with the
        manual directory, and `download_and_prepare` for callers that build directly)."""
        if not self._inputs_checked:
            self.preflight(manual_dir)
            self._inputs_checked = True

    def download_and_prepare(self, *args, **kwargs):
        """TFDS's build (after `preflight`, unless the data are already built), with one worker
        pool shared by all splits and closed at the end."""
        # (data_path first: TFDS's is_prepared() logs a warning about a folder not made yet)
        if not (self.data_path.exists() and self.is_prepared()):
            self.check_inputs()
        try:
            result = super().download_and_prepare(*args, **kwargs)
        except BaseException:
            if self._pool is not None:
                _stop_pool(self._pool)
                self._pool = None
            raise
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
        _remove_cache(self.feature_cache_dir, Path(os.fspath(self._data_dir_root)) / "downloads")
        return result

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """This builder's source file. TFDS's own lookup needs the `importlib_resources` backport
        for builders defined in packages (a tfds 4.9 quirk); this needs nothing."""
        import sys

        from etils import epath

        return epath.Path(sys.modules[cls.__module__].__file__)

    @classmethod
    def reuse_conflict(cls, metadata: dict[str, Any], manual_dir: str | os.PathLike | None,
                       builder_config: Any = None) -> str | None:
        """Why an existing build (its saved `metadata`) must not be reused for a build asked
        from `manual_dir` with `builder_config`: a phrase naming both sources, or None (reuse).
        Builders whose source a user chooses (`audio_folder`) override this."""
        return None

    @classmethod
    def source_note(cls, metadata: dict[str, Any]) -> str | None:
        """What a run that reads an existing build (its saved `metadata`) without naming its
        source should be told about that source: a phrase, or None. Builders whose source a
        user edits (`audio_folder`'s CSV) override this."""
        return None

    def _has_tag_mask(self) -> bool:
        return False

    def _extra_features(self) -> dict[str, Any]:
        """Features a builder stores besides the common ones (name -> tfds feature)."""
        return {}

    def _info(self) -> tfds.core.DatasetInfo:
        return LocalDatasetInfo(
            builder=self,
            description=self.DESCRIPTION or (self.__doc__ or "").split("\n\n")[0],
            features=feature_spec(self.NUM_TAGS,
                                  bool(getattr(self.builder_config, "waveform", False)),
                                  self._has_tag_mask(), self._extra_features()),
            metadata=BuildInfo(),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            disable_shuffling=True,
        )

    # -- metadata written while building ------------------------------------------------------

    def _set_tags(self, tags: Sequence[str], source: str = "") -> None:
        """Stores the tag vocabulary; `source` (a file, or how the list was made) is named in
        the ValueError for a wrong count or a duplicate name."""
        tags = [str(t) for t in tags]
        where = f" (from {source})" if source else ""
        if self.NUM_TAGS is not None and len(tags) != self.NUM_TAGS:
            raise ValueError(f"{self.name}: expected {self.NUM_TAGS} tags, got {len(tags)}{where}")
        if len(set(tags)) != len(tags):
            dupes = sorted({t for t in tags if tags.count(t) > 1})
            raise ValueError(f"{self.name}: duplicate tag names {dupes}{where}")
        meta = self.info.metadata
        meta.clear()
        meta["tags"] = tags
        meta["features"] = FEATURES.mel_settings()  # not chunk_frames: a model's, not the data's
        meta["skipped"] = {s: [] for s in self._split_names()}
        meta["num_skipped"] = {s: 0 for s in self._split_names()}
        meta["audio_warnings"] = {s: [] for s in self._split_names()}

    def _split_names(self) -> tuple[str, ...]:
        """train / validation / test, then the builder's extra splits (if any)."""
        return SPLITS

    def _note(self, key: str, value: Any) -> None:
        self.info.metadata[key] = value

    def _note_manual_dir(self, root: Path) -> None:
        """Records the manual directory a build read ("built_from"), so that a later run
        naming another one is told which files the build it reuses came from."""
        self._note("built_from", {"manual_dir": str(Path(root).resolve())})

    def _skip(self, split: str, clip_id: str, path: str, error: str) -> None:
        meta = self.info.metadata
        meta["skipped"][split].append({"clip_id": clip_id, "path": path, "error": error})
        meta["num_skipped"][split] += 1
        from tqdm.auto import tqdm

        n = meta["num_skipped"][split]
        if n <= SKIP_WARNINGS_SHOWN:
            tqdm.write(f"warning: {self.name}/{split}: skipped {error}", file=sys.stderr)
        if n == SKIP_WARNINGS_SHOWN:
            tqdm.write(f"warning: {self.name}/{split}: further skipped files of this split are "
                       f"counted, not shown; the build's summary and {REPORT_FILE} list them all",
                       file=sys.stderr)

    def _warn(self, split: str, clip_id: str, path: str, notes: dict[str, str]) -> None:
        """Records a kept clip's audio degradations ({code: message}) in the metadata."""
        found = self.info.metadata.setdefault("audio_warnings", {}).setdefault(split, [])
        for code, message in sorted(notes.items()):
            found.append({"clip_id": clip_id, "path": path, "code": code, "message": message})

    def _workers(self) -> int:
        n = self._num_workers if self._num_workers else (os.cpu_count() or 1)
        return max(1, int(n))

    def _map(self, fn: Callable, items: Sequence, desc: str, chunksize: int = 1) -> Iterator:
        """`map(fn, items)` in order with a progress bar, in the builder's worker pool.

        Spawned processes (not forked: callers may hold JAX or other threads, which fork copies
        broken), created on first use and kept for the other splits. One worker runs inline.
        """
        from tqdm.auto import tqdm

        from tagger_jax.progress import bar_interval

        workers = self._workers()
        with tqdm(total=len(items), desc=desc, unit=" clips", leave=False,
                  **bar_interval()) as bar:
            if workers <= 1 or len(items) <= 1:
                results = map(fn, items)
            else:
                if self._pool is None:
                    main_guard.check("the dataset build's worker processes", "build with one "
                                     "worker (num_workers=1; data.build_workers = 1 in a "
                                     "training config)")
                    ctx = multiprocessing.get_context("spawn")
                    self._pool = ctx.Pool(workers, initializer=_init_worker)
                results = self._pool.imap(fn, items, chunksize=chunksize)
            for result in results:
                yield result
                bar.update()

    # -- parallel extraction -----------------------------------------------------------------

    def _extract_audio(self, split: str, items: list[dict]) -> Iterator[tuple[str, dict]]:
        """Decodes and featurises `items` (see `_extract.audio_example`) in worker processes, in
        order; yields (key, example) and records every failure in the skip report."""
        from tagger_jax.datasets import _extract

        waveform = bool(getattr(self.builder_config, "waveform", False))
        jobs = [dict(item, waveform=waveform) for item in items]
        if self._resume:
            cache = self.feature_cache_dir / split
            cache.mkdir(parents=True, exist_ok=True)
            for job in jobs:
                name = hashlib.sha1(str(job["key"]).encode()).hexdigest()
                job["cache"] = str(cache / f"{name}.npz")
            found = sum(os.path.exists(job["cache"]) for job in jobs)
            if found:
                print(f"{self.name} {split}: reusing {found} of {len(jobs)} clips decoded before "
                      f"an interruption (from {cache}; a clip whose source file changed since "
                      "is decoded again)", file=sys.stderr, flush=True)
        kept = 0
        for item, (example, error, notes) in zip(
                jobs, self._map(_extract.audio_example, jobs, f"{self.name} {split}")):
            if error is not None:
                self._skip(split, item["clip_id"], item["path"], error)
            else:
                if notes:
                    self._warn(split, item["clip_id"], item["path"], notes)
                kept += 1
                yield item["key"], example
        if not kept:
            self._refuse_empty_split(split, len(items))

    def _refuse_empty_split(self, split: str, num_items: int) -> None:
        """Raises `errors.DataError` for a split left without a clip (TFDS would stop with "No
        examples were yielded", naming neither the dataset nor why): one line with the dataset,
        the split, the count and the first reasons. The skipped files of every split so far are
        written to `skipped_files.tsv` in `feature_cache_dir` (the dataset directory is only
        written by a finished build), which the message names."""
        config = self.builder_config.name if self.builder_config else "default"
        label = f"{self.name}/{config}: split {split!r}"
        if not num_items:
            raise errors.DataError(f"{label}: no clips to build (its list of clips is empty)")
        skipped = self.info.metadata["skipped"][split]
        reasons = "; ".join(s["error"] for s in skipped[:2]) + ("; ..." if num_items > 2 else "")
        report = self.feature_cache_dir / REPORT_FILE
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
            _write_tsv(report, ("split", "clip_id", "path", "error"),
                       [(s, k["clip_id"], k["path"], k["error"])
                        for s, found in self.info.metadata["skipped"].items() for k in found])
            where = f"; every skipped file is listed in {report}"
        except OSError as e:
            where = f"; the list of skipped files could not be written to {report}: {e}"
        what = f"all {num_items} clips were" if num_items > 1 else "its only clip was"
        raise errors.DataError(f"{label}: {what} skipped ({reasons}){where}")


def _stop_pool(pool, timeout_s: float = 2.0) -> None:
    """Stops `pool` after an error or an interrupt without waiting forever.

    `Pool.terminate` joins the pool's result thread, which never returns when a worker died
    midway through sending a result (the thread waits for the rest of a message that will not
    come): the workers are killed first, and the pool's own cleanup gets `timeout_s` in a
    daemon thread, which the interpreter abandons at exit if it is stuck."""
    import threading

    for process in list(getattr(pool, "_pool", ())):
        if process.exitcode is None:
            process.kill()
    stopper = threading.Thread(target=lambda: (pool.terminate(), pool.join()), daemon=True,
                               name="stop-build-pool")
    stopper.start()
    stopper.join(timeout_s)


def _remove_cache(cache: Path, root: Path) -> None:
    """Deletes a finished build's feature cache, then its parent folders up to `root` that are
    left empty."""
    shutil.rmtree(cache, ignore_errors=True)
    for parent in cache.parents:
        if parent == root or root not in parent.parents:
            break
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and stops the workers, which
    # would otherwise each print a KeyboardInterrupt traceback (or die midway through a result).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # one BLAS thread per worker: the pool is the parallelism
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


# ----------------------------------------------------------------------------------- helpers


def multi_hot(names: Iterable[str], vocabulary: Sequence[str]) -> np.ndarray:
    """uint8 0/1 vector over `vocabulary` (names outside it are ignored)."""
    index = {t: i for i, t in enumerate(vocabulary)}
    out = np.zeros(len(vocabulary), np.uint8)
    for name in names:
        if name in index:
            out[index[name]] = 1
    return out


def find_file(root: Path, candidates: Sequence[str], what: str, instructions: str = "") -> Path:
    """The first of `root / c` that exists, else a FileNotFoundError listing where it looked,
    followed by `instructions` (a short hint such as `manual_hint(name)`)."""
    for c in candidates:
        p = root / c
        if p.exists():
            return p
    looked = ", ".join(str(root / c) for c in candidates)
    near = near_misses(root, candidates)
    found = f" Found {', '.join(map(str, near))}: rename or move it there?" if near else ""
    raise FileNotFoundError(f"{what} not found (looked for {looked}).{found} "
                            f"{instructions}".strip())


def near_misses(root: Path, names: Sequence[str], limit: int = 3) -> list[Path]:
    """Files under `root` (two folders deep at most) that are almost one of `names`: the same
    name elsewhere (`root/split/train.npy` for `root/split/mtat/train.npy`), or a name a
    browser's download gives a second copy (`annotations_final (1).csv`, `train-2.npy`)."""
    import re

    wanted = {Path(n).name.casefold(): Path(n).name for n in names}
    stems = {Path(n).stem.casefold(): Path(n).suffix.casefold() for n in names}
    found: list[Path] = []
    if not root.is_dir():
        return found
    for depth in ("*", "*/*", "*/*/*"):
        for p in sorted(root.glob(depth)):
            if not p.is_file() or any(p == root / n for n in names):
                continue
            name = p.name.casefold()
            copy = re.sub(r"[ _-]*(\(\d+\)|-\d+|copy)$", "", Path(name).stem)
            if name in wanted or stems.get(copy) == Path(name).suffix:
                found.append(p)
            if len(found) >= limit:
                return found
    return found


def check_audio_folder(root: Path, top_folders: Sequence[str], layout: str, name: str) -> None:
    """A FileNotFoundError unless the manual directory `root` holds its audio: `audio/`, or one of
    `top_folders` (the lists' first path components) directly in it. `layout` says where the
    files go, for the message. Without this check (mtg_jamendo, msd) every clip was skipped, one
    warning each, after the whole train split."""
    if (root / "audio").is_dir() or any((root / f).is_dir() for f in top_folders):
        return
    raise FileNotFoundError(f"{root}: no audio folder: {layout}. {manual_hint(name)}")


def manual_hint(name: str) -> str:
    """Where the download steps of builder `name` are written (for the end of an error)."""
    return (f"Download steps: docs/datasets.md, or the docstring of "
            f"tagger_jax/datasets/{name}.py.")


def described_fields(description: str) -> Any:
    """The fields a config made with `build-dataset --set` records in its description
    ("NAME: {field: value}", as dataset_info.json's configDescription keeps it), or the text
    itself when it holds none (a registered config's prose)."""
    import ast

    try:
        return ast.literal_eval(description.split(": ", 1)[1])
    except (IndexError, ValueError, SyntaxError):
        return description


def utf8_error(path: Path, error: UnicodeDecodeError) -> ValueError:
    """A one-line ValueError for a text file that is not UTF-8: the file, the line and column
    of the first bad byte (Python's message gives only a position inside a read buffer)."""
    line, column = 1, 0
    try:
        head = Path(path).read_bytes()[:2]
    except OSError:
        head = b""
    if head in (b"\xff\xfe", b"\xfe\xff"):  # a byte-order mark: what Excel's "Unicode text" writes
        return ValueError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark); save "
                          "the file as UTF-8")
    try:
        for line, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                column = e.start + 1
                break
    except OSError:
        pass
    where = f"{path}:{line}" if column else str(path)
    col = f" at column {column}" if column else ""
    return ValueError(f"{where}: not UTF-8 text (byte 0x{error.object[error.start]:02x}{col}); "
                      "save the file as UTF-8")
