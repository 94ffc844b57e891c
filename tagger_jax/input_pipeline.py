"""The grain training pipeline: random crops of the training split, in batches per global step.

Evaluation (the 16-chunk protocol, full tracks) reads its splits through `tagger_jax.inference`
(`evaluation.predict_split`), like tagging reads files.

Every function takes any random-access source (`len()` and `source[i]` -> record dict), e.g. the
TFDS source of `tagger_jax.datasets.load_split` or a plain list of dicts in tests. Records hold
"mel" (96, T) float16 log-mel, "tags" (num_tags,) multi-hot and optionally "audio" (N,) float32
16 kHz waveform (lee_won). Records are read lazily, one at a time, by the process (or worker
process) that needs them: host memory is bounded by the prefetch buffers, not by the split.

Training order (docs/input_pipeline.md): epoch e visits the records in the order of a seeded
permutation of the split (`_epoch_permutation(N, seed, e)`); global batch b of the epoch is
positions [b * G, (b + 1) * G) of it and host h takes the h-th contiguous slice of G / P. So the
union of the hosts' batches is exactly the single-host batch, and the crop of a record depends only
on (seed, epoch, record index): new every epoch, reproducible, independent of the worker count,
the host count and the batch position. The pipeline is a grain `MapDataset` whose element k is
the whole batch of global step k, so worker processes (`mp_prefetch`) each build complete batches,
the batch sequence does not depend on how many workers build it, and the iterator state is just
{"step": k}: restoring restarts the pipeline at batch k, exactly.

With `crops_per_record` k > 1, each record read gives k crops (crop c drawn from (seed, epoch,
record index, c); c = 0 is the crop of k = 1), spread over k consecutive steps: a group of k
steps reads the G records of one batch once, and step c of the group holds crop c of each of
them, so every batch still holds G distinct clips and an epoch, one visit of every record, has k
times the steps. Reading and decoding a record costs far more than cropping it
(docs/input_pipeline.md), so one pipeline process then delivers nearly k times the crops: what a
GPU's train step needs (docs/benchmarks.md, "GPU"). Worker processes build whole groups. (The
first version put the k crops of G / k records in one batch: on the CPU main job that cost 0.04
of ROC-AUC at the same steps, docs/training.md.)
"""
from __future__ import annotations

import functools
import json
from typing import Any, Mapping

import grain
import numpy as np

from tagger_jax import chunking, errors, main_guard

# "mel": (96, T) log-mel for the pons_* models; "audio": (N,) waveform for lee_won.
INPUT_KINDS = ("mel", "audio")
WAVEFORM_CROP = chunking.WAVEFORM_CHUNK  # samples per lee_won input


# ----------------------------------------------------------------------------------------------
# Batch arithmetic shared with the trainer.

def steps_per_epoch(source_len: int, global_batch_size: int, crops_per_record: int = 1) -> int:
    """Global steps per epoch: an epoch reads every record once, `global_batch_size` records per
    group of `crops_per_record` steps (one crop of each record per step); the remainder (< one
    batch of records) is dropped, as in every epoch. Raises `errors.ConfigError` for
    crops_per_record < 1 or a split smaller than one batch."""
    if global_batch_size <= 0:
        raise ValueError(f"global batch size must be positive, got {global_batch_size}")
    if crops_per_record < 1:
        raise errors.ConfigError(f"data.crops_per_record must be at least 1, got "
                                 f"{crops_per_record}")
    groups = int(source_len) // int(global_batch_size)
    if groups == 0:
        raise errors.ConfigError(
            f"the training split has {source_len} records, fewer than one global batch of "
            f"{global_batch_size}: lower train.batch_size to at most {source_len}")
    return groups * int(crops_per_record)


def check_batch_divisibility(global_batch_size: int, process_count: int = 1,
                             local_device_count: int = 1) -> int:
    """The per-host batch; raises `errors.ConfigError` (exit status 2) unless the global batch
    splits evenly over all devices."""
    devices = int(process_count) * int(local_device_count)
    if process_count <= 0 or local_device_count <= 0:
        raise ValueError(f"process_count and local_device_count must be positive, got "
                         f"{process_count} and {local_device_count}")
    if global_batch_size <= 0 or global_batch_size % devices:
        lower = (global_batch_size // devices) * devices
        options = f"{lower} or {lower + devices}" if lower > 0 else f"{devices}"
        fits = [d for d in range(1, global_batch_size + 1) if global_batch_size % d == 0]
        raise errors.ConfigError(
            f"global batch size {global_batch_size} does not divide evenly over {process_count} "
            f"host(s) x {local_device_count} device(s) = {devices} devices: use a multiple of "
            f"{devices}, e.g. {options}"
            + (f", or a total device count that divides it ({', '.join(map(str, fits[:12]))}"
               f"{', ...' if len(fits) > 12 else ''}; a resumed run keeps its batch size)"
               if global_batch_size > 0 else ""))
    return global_batch_size // process_count


# ----------------------------------------------------------------------------------------------
# Reading one record.

def _check_kind(input_kind: str) -> None:
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")


def _name(record: Mapping[str, Any], index: int) -> str:
    """A record's name for error messages: its path or clip id, and its index in the split."""
    for key in ("path", "clip_id"):
        value = record.get(key)
        if value is not None and len(value):
            value = value.decode() if isinstance(value, bytes) else str(value)
            return f"{value} (record {index})"
    return f"record {index}"


def _signal(record: Mapping[str, Any], index: int, input_kind: str) -> np.ndarray:
    """The record's model input over its whole length: (n_mels, T) or (N,), not yet float32."""
    key = "mel" if input_kind == "mel" else "audio"
    if key not in record:
        raise KeyError(f"{_name(record, index)}: no {key!r} feature (input_kind={input_kind!r}; "
                       f"the record has {sorted(record)})")
    x = np.asarray(record[key])
    want = 2 if input_kind == "mel" else 1
    if x.ndim != want or x.shape[-1] == 0:
        raise ValueError(f"{_name(record, index)}: {key!r} has shape {x.shape}, expected "
                         f"{'(n_mels, T)' if want == 2 else '(N,)'} with T > 0")
    return x


def _tags(record: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(record["tags"], dtype=np.float32)


CROP_LABELS = ("clip", "activity")  # what a training crop is labelled with (see train_dataset)


def _crop_activity(record: Mapping[str, Any], index: int, start: int, length: int,
                   needed_by: str) -> np.ndarray:
    """bool (num_tags, length): the record's exact activity ("tag_mask", (num_tags, T) on the
    log-mel's frames) over frames [start, start + length), tiled like the log-mel
    (`chunking.pad_to_length`) for clips shorter than a crop."""
    if "tag_mask" not in record:
        raise KeyError(f"{_name(record, index)}: {needed_by} needs a 'tag_mask' feature "
                       f"(soundfont_tags has one; the record has {sorted(record)})")
    mask, _ = chunking.pad_to_length(np.asarray(record["tag_mask"]), start + length)
    return mask[:, start:start + length].astype(bool)


def _crop_tags(record: Mapping[str, Any], index: int, start: int, length: int) -> np.ndarray:
    """float32 (num_tags,): 1 for each tag whose exact activity is on in at least one frame of
    [start, start + length) (`_crop_activity`)."""
    return _crop_activity(record, index, start, length,
                          "data.crop_labels='activity'").any(axis=1).astype(np.float32)


def _crop_length(input_kind: str, crop_frames: int, crop_samples: int) -> int:
    return crop_frames if input_kind == "mel" else crop_samples


# ----------------------------------------------------------------------------------------------
# Training.

# Leading words that keep the two random streams apart: numpy's SeedSequence pads its entropy
# with zeros, so (seed, epoch) and (seed, epoch, 0) would otherwise be the same stream.
_ORDER_STREAM, _CROP_STREAM, _AUGMENT_STREAM = 0x0D3E, 0xC0B9, 0xA06E


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s visiting order (cached: every batch of the epoch needs it)."""
    order = np.random.default_rng((_ORDER_STREAM, seed, epoch)).permutation(num_records)
    order.setflags(write=False)
    return order


def _stream(kind: int, seed: int, epoch: int, record_index: int, crop: int) -> np.random.Generator:
    words = (kind, seed, epoch, record_index) + ((crop,) if crop else ())  # crop 0: as k = 1
    return np.random.default_rng(words)


def crop_rng(seed: int, epoch: int, record_index: int, crop: int = 0) -> np.random.Generator:
    """The generator that draws crop `crop` of record `record_index` in epoch `epoch`.

    A function of these numbers only, so a crop never depends on batch position, worker count
    or host count."""
    return _stream(_CROP_STREAM, seed, epoch, record_index, crop)


def augment_rng(seed: int, epoch: int, record_index: int, crop: int = 0) -> np.random.Generator:
    """The augmentation stream of one crop of one record in one epoch (`tagger_jax.augment`)."""
    return _stream(_AUGMENT_STREAM, seed, epoch, record_index, crop)


class _TrainBatch(grain.transforms.MapWithIndex):
    """Global step -> this host's batch {"x", "y", "clip_index"} (runs in worker processes).

    With crops_per_record k > 1 a step's batch is built with the rest of its group (`group`),
    and the group is kept for its other steps: in order, each record is read once per group."""

    def __init__(self, source, *, seed: int, global_batch_size: int, process_index: int,
                 process_count: int, input_kind: str, crop: int, augment=None,
                 mix_tags=None, crop_labels: str = "clip", frame_labels: bool = False,
                 crops_per_record: int = 1):
        self.crop_labels = crop_labels
        self.frame_labels = frame_labels
        self.augment = augment
        self.mix_tags = mix_tags
        self.source = source
        self.seed = seed
        self.num_records = len(source)
        self.crops_per_record = int(crops_per_record)
        self.global_records = int(global_batch_size)  # records of one group of k steps
        self.local_records = self.global_records // process_count
        self.offset = process_index * self.local_records
        self.steps_per_epoch = steps_per_epoch(self.num_records, global_batch_size,
                                               crops_per_record)
        self.input_kind = input_kind
        self.crop = crop
        self._last_group: tuple[int, list] | None = None  # (first step, its k batches)

    def record_indices(self, step: int) -> tuple[int, np.ndarray, int]:
        """(epoch, this host's record indices, crop) of global step `step`: the records of its
        group of crops_per_record steps, and which of their crops the step takes."""
        epoch, b = divmod(int(step), self.steps_per_epoch)
        group, crop = divmod(b, self.crops_per_record)
        start = group * self.global_records + self.offset
        order = _epoch_permutation(self.num_records, self.seed, epoch)
        return epoch, order[start:start + self.local_records], crop

    def _crop(self, record: Mapping[str, Any], index: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(one random crop of the record, its labels under `crop_labels`, its frame activity
        float32 (crop, num_tags) when `frame_labels`, or activity labels with augmentation,
        need it; else None)."""
        x = _signal(record, index, self.input_kind)
        x, _ = chunking.pad_to_length(x, self.crop)  # short clips repeat (chunking's rule)
        start = chunking.random_crop_start(x.shape[-1], self.crop, rng)
        tags = (_tags(record) if self.crop_labels == "clip"
                else _crop_tags(record, index, start, self.crop))
        crop = x[..., start:start + self.crop]
        frames = None
        if self.frame_labels or (self.augment is not None and self.crop_labels == "activity"):
            frames = _crop_activity(record, index, start, self.crop,
                                    "frame labels (model.frame_head)").T.astype(np.float32)
        return crop, tags, frames

    def example(self, epoch: int, index: int, record: Mapping[str, Any] | None = None,
                c: int = 0) -> tuple[np.ndarray, ...]:
        """(crop, labels[, frame targets with `frame_labels`]) of crop `c` of one record (read
        here unless given) in one epoch. With augmentation and activity labels, the labels are
        the tags active in the augmented frame targets (a stretch that leaves out a crop's last
        frames leaves out their instruments)."""
        record = self.source[index] if record is None else record
        crop, tags, frames = self._crop(record, index, crop_rng(self.seed, epoch, index, c))
        if self.augment is not None:
            from tagger_jax import augment

            rng = augment_rng(self.seed, epoch, index, c)
            other = None
            if self.augment.p_mix > 0:  # the partner: a seeded record, cropped from that stream
                j = int(rng.integers(self.num_records))
                other = self._crop(self.source[j], j, rng)
            crop, tags, *moved = augment.augment(crop, tags, rng, self.augment, other,
                                                 self.mix_tags, frames=frames)
            frames = moved[0] if moved else None
            if self.crop_labels == "activity":
                tags = frames.any(axis=0).astype(np.float32)
        crop = crop.astype(np.float32)
        return (crop, tags, frames) if self.frame_labels else (crop, tags)

    def group(self, first_step: int) -> list[dict[str, np.ndarray]]:
        """The crops_per_record batches of the group that starts at global step `first_step` (a
        multiple of crops_per_record): each record read once and cropped k times, batch c
        holding crop c of every record."""
        epoch, indices, _ = self.record_indices(first_step)
        k = self.crops_per_record
        crops = []  # per record, its k examples
        for i in indices:
            record = self.source[int(i)]
            crops.append([self.example(epoch, int(i), record, c) for c in range(k)])
        batches = []
        for c in range(k):
            examples = list(zip(*(record_crops[c] for record_crops in crops)))
            batch = {"x": np.stack(examples[0]), "y": np.stack(examples[1]),
                     "clip_index": np.asarray(indices, np.int32)}
            if self.frame_labels:
                batch["frames"] = np.stack(examples[2])
            batches.append(batch)
        return batches

    def map_with_index(self, index: int, element: Any) -> dict[str, np.ndarray]:
        del element  # the MapDataset index is the global step
        first = int(index) - int(index) % self.crops_per_record  # epochs hold whole groups
        last = self._last_group  # one read: threads may replace it meanwhile (then built twice)
        if last is None or last[0] != first:
            last = (first, self.group(first))
            if self.crops_per_record > 1:
                self._last_group = last
        return last[1][int(index) - first]


class _TrainGroup(grain.transforms.MapWithIndex):
    """Group g -> the k batches of steps [g k, (g + 1) k) of a `train_dataset`, stacked on a
    new first axis ("x": (k, local_batch, ...)): what worker processes build when k =
    crops_per_record > 1, so that each reads a group's records once (grain hands consecutive
    elements to different workers; `_TrainBatch` keeps the group it built for its other
    steps)."""

    def __init__(self, steps: grain.MapDataset, k: int):
        self.steps, self.k = steps, k

    def map_with_index(self, index: int, element: Any) -> dict[str, np.ndarray]:
        del element
        group = [self.steps[int(index) * self.k + c] for c in range(self.k)]
        return {key: np.stack([batch[key] for batch in group]) for key in group[0]}


class _Unstack(grain.experimental.FlatMapTransform):
    """A stacked group of batches (`_TrainGroup`) -> its batches, in order (main process)."""

    def __init__(self, k: int):
        self.max_fan_out = k

    def flat_map(self, element: dict[str, np.ndarray]):
        return [{key: value[c] for key, value in element.items()}
                for c in range(self.max_fan_out)]


def train_dataset(source, *, global_batch_size: int, seed: int, crop_frames: int = 256,
                  input_kind: str = "mel", crop_samples: int = WAVEFORM_CROP,
                  num_epochs: int | None = None, process_index: int = 0, process_count: int = 1,
                  local_device_count: int | None = None, augment=None,
                  mix_tags=None, crop_labels: str = "clip",
                  frame_labels: bool = False, crops_per_record: int = 1) -> grain.MapDataset:
    """The training batches of this host as a random-access grain `MapDataset` (element = step).

    Element s is global step s: {"x": float32 (local_batch, 96, crop_frames) or (local_batch,
    crop_samples), "y": float32 (local_batch, num_tags), "clip_index": int32 (local_batch,)}.
    Length num_epochs * steps_per_epoch (sys.maxsize // ... when num_epochs is None).
    `augment`: a `tagger_jax.augment.AugmentParams` (log-mel input only) applied to every chunk
    with draws seeded by (seed, epoch, record index); `mix_tags`: bool per tag, where mixing two
    chunks takes the union of their labels (default all). `crop_labels`: "clip" labels every crop
    with its clip's tags (the paper's protocol); "activity" with the tags that sound in the crop,
    from the record's exact frame activity "tag_mask" (num_tags, T) (soundfont_tags; clip-wide
    tags such as tempo and level are on in every frame), so a crop that misses the section where
    an instrument plays is not labelled with it. `frame_labels` adds "frames": float32
    (local_batch, crop_frames, num_tags), each crop's exact activity frame by frame (the targets
    of `model.frame_head`; log-mel input with "tag_mask"), moved with the crop by the time stretch
    and unioned by mixing as its labels are (`tagger_jax.augment`). `crops_per_record` k: the
    k steps of a group hold crops 0..k-1 of the same records (module docstring), so an epoch has
    k times the steps. Raises `errors.ConfigError` for k < 1 and for a batch that does not
    split over the devices.
    """
    _check_kind(input_kind)
    if crop_labels not in CROP_LABELS:
        raise ValueError(f"crop_labels must be one of {CROP_LABELS}, got {crop_labels!r}")
    if crop_labels == "activity" and input_kind != "mel":
        raise ValueError("crop_labels='activity' needs log-mel input (the mask is on its frames)")
    if augment is not None and input_kind != "mel":
        raise ValueError("augmentations work on log-mel input only")
    if frame_labels and input_kind != "mel":
        raise ValueError("frame labels need log-mel input (the mask is on its frames)")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if local_device_count is None:
        import jax  # only here: worker processes never need JAX
        local_device_count = jax.local_device_count()
    check_batch_divisibility(global_batch_size, process_count, local_device_count)
    if not 0 <= seed < 2**32:  # one 32-bit SeedSequence word (as grain's own seeds)
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed}")
    transform = _TrainBatch(source, seed=int(seed), global_batch_size=global_batch_size,
                            process_index=process_index, process_count=process_count,
                            input_kind=input_kind,
                            crop=_crop_length(input_kind, crop_frames, crop_samples),
                            augment=augment, mix_tags=mix_tags, crop_labels=crop_labels,
                            frame_labels=frame_labels, crops_per_record=crops_per_record)
    steps = grain.MapDataset.range(transform.steps_per_epoch).repeat(num_epochs)
    return steps.map_with_index(transform)


class TrainIterator(grain.DatasetIterator):
    """Iterates a `TrainLoader`; its state is only the next global step: {"step": k}.

    Batch k is `loader.dataset[k]` whatever the worker count, so `set_state({"step": k})` just
    restarts the prefetching pipeline at k: resuming is exact by construction, and a state saved
    with one worker count restores under another (e.g. on a machine with more cores). A
    `grain.DatasetIterator`, so `grain.checkpoint.CheckpointSave/Restore` store it with orbax.
    `close()` stops the worker processes; advancing again restarts them at the current step.
    """

    def __init__(self, loader: "TrainLoader", step: int = 0):
        super().__init__()
        self._loader = loader
        self._step = int(step)
        self._it = None

    def _pipeline(self):
        if self._it is None:
            self._it = self._loader.batches(self._step)
        return self._it

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._pipeline())
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"step"}:
            raise ValueError(f"not a training-iterator state (expected {{'step': int}}): {state!r}")
        step = int(state["step"])
        if not 0 <= step <= len(self._loader.dataset):
            raise ValueError(f"saved step {step} is outside this loader's "
                             f"{len(self._loader.dataset)} steps")
        self.close()
        self._step = step

    def start_prefetch(self) -> None:
        self._pipeline()

    def close(self) -> None:  # also called by grain's __del__
        if getattr(self, "_it", None) is not None:
            self._it.close()
            self._it = None


class TrainLoader:
    """The training batches of this host (see `train_dataset`), prefetched; iterate it."""

    def __init__(self, dataset: grain.MapDataset, *, steps_per_epoch: int, local_batch_size: int,
                 num_workers: int, worker_buffer_size: int, read_threads: int,
                 groups: grain.MapDataset | None = None, crops_per_record: int = 1):
        self.dataset = dataset  # element k: global step k's batch for this host
        self.groups = groups  # with crops_per_record > 1: element g, the batches of group g
        self.crops_per_record = crops_per_record
        self.steps_per_epoch = steps_per_epoch
        self.local_batch_size = local_batch_size
        self.num_workers = num_workers
        self.worker_buffer_size = worker_buffer_size
        self.read_threads = read_threads

    def pipeline(self, step: int = 0) -> grain.IterDataset:
        """The grain pipeline yielding batches from the start of the group of `step` (`step`
        itself when crops_per_record is 1): workers build whole groups, this process unstacks
        them."""
        if self.groups is None:
            return _prefetch(self.dataset[step:], self.num_workers, self.worker_buffer_size,
                             self.read_threads)
        groups = _prefetch(self.groups[step // self.crops_per_record:], self.num_workers,
                           self.worker_buffer_size, self.read_threads)
        return grain.experimental.FlatMapIterDataset(groups, _Unstack(self.crops_per_record))

    def batches(self, step: int = 0) -> grain.DatasetIterator:
        """An iterator of the batches of steps step, step + 1, ... (close it to stop the
        workers)."""
        it = iter(self.pipeline(step))
        for _ in range(step % self.crops_per_record):  # the group's steps before `step`
            next(it)
        return it

    def __iter__(self) -> TrainIterator:
        return TrainIterator(self)

    def __len__(self) -> int:
        return len(self.dataset)


def train_loader(source, *, global_batch_size: int, seed: int, crop_frames: int = 256,
                 input_kind: str = "mel", crop_samples: int = WAVEFORM_CROP,
                 num_epochs: int | None = None, process_index: int = 0, process_count: int = 1,
                 num_workers: int = 0, worker_buffer_size: int = 2, read_threads: int = 1,
                 local_device_count: int | None = None, augment=None,
                 mix_tags=None, crop_labels: str = "clip",
                 frame_labels: bool = False, crops_per_record: int = 1) -> TrainLoader:
    """Training batches (see `train_dataset`) prefetched by `num_workers` processes.

    `iter(loader)` gives a `TrainIterator`; its `get_state()` ({"step": k}, JSON-able, see
    `state_to_json`) restored with `set_state` on a fresh iterator of a loader built with the
    same arguments (any num_workers) continues with exactly the batches an uninterrupted run
    yields. Epoch e is steps [e * steps_per_epoch, (e + 1) * steps_per_epoch). `read_threads`
    threads per process build batches ahead: at most about worker_buffer_size + read_threads
    batches wait in each worker process, max(worker_buffer_size, read_threads) in this process
    when num_workers == 0 (0 threads: batches are built on demand); with crops_per_record k > 1
    these are groups of k batches. Close the iterator (`it.close()`) to stop the workers
    promptly.
    """
    ds = train_dataset(source, global_batch_size=global_batch_size, seed=seed,
                       crop_frames=crop_frames, input_kind=input_kind,
                       crop_samples=crop_samples, num_epochs=num_epochs,
                       process_index=process_index, process_count=process_count,
                       local_device_count=local_device_count, augment=augment,
                       mix_tags=mix_tags, crop_labels=crop_labels, frame_labels=frame_labels,
                       crops_per_record=crops_per_record)
    _check_prefetch(num_workers, worker_buffer_size, read_threads)
    k = int(crops_per_record)  # steps per epoch are a multiple of k: groups tile the steps
    groups = (grain.MapDataset.range(len(ds) // k).map_with_index(_TrainGroup(ds, k))
              if k > 1 else None)
    return TrainLoader(ds, steps_per_epoch=steps_per_epoch(len(source), global_batch_size, k),
                       local_batch_size=global_batch_size // process_count,
                       num_workers=num_workers, worker_buffer_size=worker_buffer_size,
                       read_threads=read_threads, groups=groups, crops_per_record=k)


def _check_prefetch(num_workers: int, worker_buffer_size: int, read_threads: int) -> None:
    if num_workers < 0 or worker_buffer_size < 1 or read_threads < 0:
        raise ValueError(f"need num_workers >= 0, worker_buffer_size >= 1 and read_threads >= 0, "
                         f"got {num_workers}, {worker_buffer_size}, {read_threads}")


def _prefetch(ds: grain.MapDataset, num_workers: int, worker_buffer_size: int,
              read_threads: int) -> grain.IterDataset:
    _check_prefetch(num_workers, worker_buffer_size, read_threads)
    if num_workers > 0:
        main_guard.check("grain's input workers", "set data.num_workers = 0 (the input is then "
                         "read in this process)")
    # Threads fill a buffer of batches in each process; a worker's results also wait in its
    # queue (worker_buffer_size), so there the thread buffer only needs one slot per thread.
    buffered = read_threads if num_workers else max(read_threads, worker_buffer_size)
    read = grain.ReadOptions(num_threads=read_threads,
                             prefetch_buffer_size=buffered if read_threads else 0)
    it_ds = ds.to_iter_dataset(read)
    if num_workers > 0:
        _absl_flags_defaults()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=num_workers, per_worker_buffer_size=worker_buffer_size),
            worker_init_fn=exit_with_parent)
    return it_ds


def exit_with_parent(worker_index: int = 0, worker_count: int = 0) -> None:
    """grain's `worker_init_fn`: a worker process ends itself within a second of its parent's
    death. grain stops its workers when the iterator closes, but a parent killed outright
    (SIGKILL, the OOM killer) left them running with their shared memory (a new user's trial:
    two 235 MB workers and 112 /dev/shm segments still there minutes later). A daemon thread
    watches the parent pid (a process whose parent dies is given another one). The pid is the
    one multiprocessing started the worker from, not the worker's parent when this runs: a
    worker still starting when its parent was killed (a test under load) took init for its
    parent and never ended."""
    import multiprocessing
    import os
    import threading
    import time

    del worker_index, worker_count
    started_by = multiprocessing.parent_process()
    parent = started_by.pid if started_by is not None else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


def _absl_flags_defaults() -> None:
    """Lets grain read its absl flags' defaults when the program never parsed flags.

    grain 0.2.x reads a worker-profiling flag when it starts worker processes and fails with
    UnparsedFlagAccessError outside `absl.app.run` (google/grain#1355, fixed upstream later).
    Programs that do parse absl flags are unaffected.
    """
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def state_to_json(state: Mapping[str, Any]) -> str:
    """An iterator state (`it.get_state()`) as JSON text, e.g. to store beside a checkpoint."""
    return json.dumps(state, sort_keys=True)


def state_from_json(text: str | bytes) -> dict[str, Any]:
    """The inverse of `state_to_json`; pass the result to `it.set_state`."""
    return json.loads(text)
