"""What the training loop reads: the configured dataset's train, validation and test pipelines.

`load_data(config)` builds the dataset if needed (self-contained datasets, or `data.manual_dir`)
and opens its splits through tagger_jax.input_pipeline; tests build `TrainData` from in-memory
lists instead. Only jax and numpy are imported at module level: the data stack (grain, tfds,
librosa) is imported by `load_data`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np

from tagger_jax.models.registry import get_architecture


@dataclasses.dataclass
class TrainData:
    """What the training loop reads; `load_data` builds it from a config, tests from lists.

    `train` is an iterable (a grain IterDataset) whose iterator yields this process's batches
    {"x": (local_batch, ...), "y": (local_batch, num_tags)} for every step of every epoch and has
    `get_state()` / `set_state()` (a JSON-able dict). `eval_source` / `test_source` are the
    validation and test splits as random-access record sources (`len()`, `source[i]` -> a record
    with "mel" or "audio" and "tags"); validation reads them through the inference path
    (`validation.make_evaluate`). `test_fingerprint` identifies the test split's contents on disk
    (None: not identifiable, results never reused).
    `extra_tests`: `data.extra_test_splits` by name. `baseline(splits, bars=None)` (with
    `train.test_baseline`) fits `tagger_jax.baseline` on the train split and returns its
    `tag_metrics` on each named test split; `baseline_fingerprint` identifies the train split.
    """

    train: Iterable[Mapping[str, np.ndarray]]
    steps_per_epoch: int
    eval_source: Sequence[Mapping[str, Any]]
    tag_names: tuple[str, ...]
    test_source: Optional[Sequence[Mapping[str, Any]]] = None
    test_fingerprint: Optional[str] = None
    extra_tests: dict[str, "TestSplit"] = dataclasses.field(default_factory=dict)
    baseline: Optional[Callable[..., dict[str, dict]]] = None
    baseline_fingerprint: Optional[str] = None
    train_identity: Optional[dict] = None  # `split_identity` of the train split (None: unknown)
    untrained_tags: tuple[str, ...] = ()  # tags with no clip in the train split (build's record)


@dataclasses.dataclass
class TestSplit:
    """One more split tested after training (`data.extra_test_splits`): its records (as
    TrainData.test_source) and the split's fingerprint."""

    source: Sequence[Mapping[str, Any]]
    fingerprint: Optional[str]


def eval_clips_per_batch(requested: int, num_chunks: int) -> int:
    """Clips per process and evaluation batch, rounded up so its chunks split over local devices."""
    local = jax.local_device_count()
    unit = local // math.gcd(num_chunks, local)
    return max(unit, -(-int(requested) // jax.process_count() // unit) * unit)


def split_fingerprint(dataset_dir: str | Path, name: str, split: str) -> str:
    """A hash of a built split's files (names, sizes, modification times) and dataset_info.json.

    Changes when the split is rebuilt or modified; cheap (no file is read but the info file).
    """
    directory = Path(str(dataset_dir))
    h = hashlib.sha256(str(directory.absolute()).encode())
    for path in sorted(directory.glob(f"{name}-{split}.*")):
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    info = directory / "dataset_info.json"
    if info.is_file():
        h.update(info.read_bytes())
    return h.hexdigest()


def split_identity(dataset_dir: str | Path, split: str) -> Optional[dict]:
    """What a built split holds, wherever it lies: {"dataset": "NAME/CONFIG VERSION", "records",
    "bytes"} from its `dataset_info.json` (None without one, or without the split). A checkpoint
    records its train split's (with the tag names, `_with_tags`); a run resumed on other training
    data (`data.data_dir` may change on resume, to follow data that moved) is refused instead of
    going on over other records."""
    import json

    try:
        info = json.loads((Path(str(dataset_dir)) / "dataset_info.json").read_text())
        entry = next(e for e in info["splits"] if e["name"] == split)
        return {"dataset": f"{info['name']}/{info.get('configName', '')} {info['version']}",
                "records": sum(int(n) for n in entry.get("shardLengths", ())),
                "bytes": int(entry.get("numBytes", 0))}
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None


def _augmentation(d: Any, tags) -> dict:
    """train_loader's augment / mix_tags from `data.augment` (fields of
    `tagger_jax.augment.AugmentParams`) and `data.augment_mix_exclude` (tags that mixing leaves
    as the first clip's, e.g. tempo and level); {} when `data.augment` is None (the default)."""
    if not d.augment:
        return {}
    from tagger_jax.augment import AugmentParams

    exclude = set(d.augment_mix_exclude or ())
    return {"augment": AugmentParams.from_dict(d.augment.to_dict()),
            "mix_tags": np.array([t not in exclude for t in tags])}


def check_dataset_fits(builder: Any, kind: str, features: Any, architecture: str,
                       needs_activity: Sequence[str] = (), fixes: Sequence[str] = ()) -> None:
    """Raises `errors.ConfigError` when the built dataset cannot feed this model as configured.

    `needs_activity`: the config settings that read each clip's exact frame activity (the
    "tag_mask" feature, which `soundfont_tags` and `synthetic_tags/segments` store), e.g.
    "data.crop_labels='activity'"; without the check the first batch failed deep in the input
    pipeline (exit 70) after the workdir was made, for a user training the main job's config
    on their own collection. `fixes`: every setting such a config must change for the build
    ("data.crop_labels=clip", ...), named in one message (the user fixed them one run at a
    time).
    `kind` is the architecture's `dataset_feature`: "audio" needs a build that stores waveforms
    (`--set waveform=true`). A "mel" model is trained on the stored log-mels as they are, so
    its `config.features` must equal the settings they were computed with (the build's metadata
    "features"; `evaluation.feature_mismatches`): the exported model computes its input from
    audio with `config.features`, and a model trained on other settings than those it would
    then tag with (another hop, scale or band count) gives wrong tags without an error."""
    from tagger_jax import evaluation
    from tagger_jax.errors import ConfigError

    name = builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")
    if kind not in builder.info.features:
        raise ConfigError(f"model.architecture {architecture!r} reads the {kind!r} feature, "
                          f"which {name} does not store (set data.builder_config to one built "
                          "with waveforms: the 'waveform' configs, or --set waveform=true; "
                          "docs/datasets.md)")
    if needs_activity and "tag_mask" not in builder.info.features:
        todo = list(fixes) or ["data.crop_labels=clip", "model.frame_head=False"]
        todo = ", ".join(todo[:-1]) + " and " + todo[-1] if len(todo) > 1 else todo[0]
        raise ConfigError(f"{' and '.join(needs_activity)} need(s) each clip's frame activity "
                          f"(the 'tag_mask' feature of soundfont_tags and "
                          f"synthetic_tags/segments), which {name} does not store; set {todo} "
                          "(docs/training.md, \"Training on your own collection\")")
    if kind != "mel":
        return
    differ = evaluation.feature_mismatches(
        dict((builder.info.metadata or {}).get("features") or {}), features)
    if differ:
        raise ConfigError(f"config.features differ from the log-mel settings {name} was built "
                          f"with ({'; '.join(differ)}): the model would train on the stored "
                          "features and tag with other ones; keep the dataset's settings, or "
                          "build the dataset with yours")


@contextlib.contextmanager
def _names_field(field: str, fix: str):
    """Re-raises a `datasets.MissingSplitError` with the config field that named the split and
    how to change it (`data.<field>`; a build without validation rows stopped training with a
    bare "no split 'validation'", found by a new user's trial)."""
    from tagger_jax import datasets

    try:
        yield
    except datasets.MissingSplitError as e:
        raise datasets.MissingSplitError(f"{e}; data.{field} names it: {fix}") from None


def load_data(config: Any, hold: contextlib.ExitStack | None = None) -> TrainData:
    """Builds (if needed) and opens the configured dataset and its input pipelines.

    `hold`: the build's readers' lock (`datasets.reading`) is entered on it, so that until it
    closes `tagger-jax build-dataset --overwrite` of the build refuses (naming the training)
    instead of deleting the files the pipelines (and their worker processes) read."""
    from tagger_jax import datasets, input_pipeline  # the data stack, imported only to train

    d, t, f = config.data, config.train, config.features
    builder_config = d.builder_config or None
    testing = bool(d.test_split and t.test_after_training)
    builder = datasets.ensure_built(
        d.name, d.data_dir, builder_config=builder_config, manual_dir=d.manual_dir or None,
        num_workers=d.build_workers or None,
        splits=[d.train_split, d.eval_split]
        + ([d.test_split, *d.extra_test_splits] if testing else []))
    kind = get_architecture(config.model).dataset_feature  # "mel" or "audio"
    needs_activity = ([f"data.crop_labels={d.crop_labels!r}"] if d.crop_labels == "activity"
                      else []) + (["model.frame_head=True"] if config.model.frame_head else [])
    splits = builder.info.splits
    missing = [s for s in d.extra_test_splits if s not in splits] if testing else []
    clips = splits[d.train_split].num_examples if d.train_split in splits else t.batch_size
    fixes = ((["data.crop_labels=clip"] if d.crop_labels == "activity" else [])
             + (["model.frame_head=False", "train.frame_loss_weight=0"]
                if config.model.frame_head else [])
             + (["data.extra_test_splits='()'"] if missing else [])
             + ([f"train.batch_size={clips}"] if 0 < clips < t.batch_size else []))
    check_dataset_fits(builder, kind, f, config.model.architecture, needs_activity, fixes)
    with _names_field("train_split", "set --config.data.train_split to a split of this build"):
        train_source, tags = datasets.load_split(d.name, d.train_split, d.data_dir,
                                                 builder_config=builder_config)
    if hold is not None:
        hold.enter_context(datasets.reading(train_source))
    loader = input_pipeline.train_loader(
        train_source, global_batch_size=t.batch_size, seed=t.seed, crop_frames=f.chunk_frames,
        input_kind=kind, num_epochs=t.num_epochs, process_index=jax.process_index(),
        process_count=jax.process_count(), num_workers=d.num_workers,
        worker_buffer_size=max(1, d.prefetch), read_threads=d.read_threads,
        local_device_count=jax.local_device_count(), crop_labels=d.crop_labels,
        frame_labels=bool(config.model.frame_head), crops_per_record=d.crops_per_record,
        **_augmentation(d, tags))

    def split(name):
        source, split_tags = datasets.load_split(d.name, name, d.data_dir,
                                                 builder_config=builder_config)
        if tuple(split_tags) != tuple(tags):
            raise ValueError(f"{d.name}: split {name!r} has different tags than {d.train_split!r}")
        return source

    if not d.eval_split:
        raise ValueError("data.eval_split is empty: training selects its best model (and the "
                         "authors' schedule its phases) on a validation split")
    with _names_field("eval_split", "set --config.data.eval_split to a split of this build "
                      "(audio_folder: give some CSV rows the split 'validation' and rebuild)"):
        eval_source = split(d.eval_split)
    test_source = fingerprint = None
    extra: dict[str, TestSplit] = {}
    if testing:
        with _names_field("test_split", "set --config.data.test_split to a split of this "
                          "build, or --config.train.test_after_training=False"):
            test_source = split(d.test_split)
        fingerprint = split_fingerprint(builder.data_dir, builder.name, d.test_split)
        for name in d.extra_test_splits:
            with _names_field("extra_test_splits", "set --config.data.extra_test_splits='()', "
                              "or name splits of this build"):  # test_timgm6mb elsewhere
                source = split(name)
            extra[name] = TestSplit(source,
                                    split_fingerprint(builder.data_dir, builder.name, name))

    def fit_baseline(names: Sequence[str], bars: Optional[Callable] = None) -> dict[str, dict]:
        from tagger_jax import baseline as floor

        return floor.evaluate(train_source, {n: datasets.load_split(
            d.name, n, d.data_dir, builder_config=builder_config)[0] for n in names}, tags, bars)

    with_baseline = bool(t.test_baseline and t.test_after_training)
    return TrainData(
        train=loader,
        steps_per_epoch=input_pipeline.steps_per_epoch(len(train_source), t.batch_size,
                                                        d.crops_per_record),
        eval_source=eval_source, tag_names=tuple(tags), test_source=test_source,
        test_fingerprint=fingerprint, extra_tests=extra, baseline=fit_baseline if with_baseline else None,
        baseline_fingerprint=(split_fingerprint(builder.data_dir, builder.name, d.train_split)
                              if with_baseline else None),
        train_identity=_with_tags(split_identity(builder.data_dir, d.train_split), tags),
        # the build records them for its split named train only
        untrained_tags=(tuple(datasets.untrained_tags(builder, tags))
                        if d.train_split == "train" else ()))


def _with_tags(identity: Optional[dict], tags: Sequence[str]) -> Optional[dict]:
    """`split_identity` with the dataset's tag names in model order ("tags"): a rebuild whose
    CSV edit moved a tag kept the train split's records and bytes, and a finished run's rerun
    exported its weights under the new order (a trial's "piano" column scored the harp)."""
    return None if identity is None else {**identity, "tags": list(tags)}

