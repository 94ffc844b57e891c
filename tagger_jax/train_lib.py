"""Training: the jit-compiled data-parallel train step and `train_and_evaluate(config, workdir)`.

The train step is one `jax.jit` program over a 1-D device mesh (tagger_jax.sharding): the global
batch is split over the "data" axis and the train state is replicated, so the compiler reduces the
gradients and BatchNorm sees the statistics of the whole global batch. It runs the same on one
device, many devices and many hosts.

The train state is a flax struct pytree with everything a resumed run needs beside the data
iterator: step, parameters, batch statistics, optimizer state (tagger_jax.optimizers; a fixed
structure in every phase), the plateau schedule (phase, best validation ROC-AUC, epochs without
improvement) and the dropout key. The dropout key of step s is `fold_in(key, s)`, so a resumed run
draws exactly the masks an uninterrupted one would.

A workdir holds::

    config.json           the resolved config (a different config is refused on restart)
    checkpoints/<step>/   latest checkpoints: state, data-iterator state (one file per process), meta
    best/<step>/          the state with the best validation ROC-AUC (reloaded at optimizer switches)
    best_model/           the best model exported for inference (`tagger-jax tag --checkpoint WORKDIR`)
    metrics.jsonl         one JSON line per logged train window / validation / test result
    tensorboard/          the same scalars as TensorBoard event files (tensorboardX, no TensorFlow)
    test/                 metrics.json/csv/png of the best model on the test split

Orbax writes every checkpoint to a temporary directory and renames it when complete, so a crash
or SIGKILL never leaves a half-written checkpoint; the export is swapped in by renames as well.

Only jax, flax, optax, orbax and numpy are imported at module level: the benchmark imports the
train step on machines without the data stack (grain, ml_collections, tfds, librosa).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from tagger_jax import optimizers, sharding
from tagger_jax.models import build_model, input_shape

PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
TENSORBOARD_DIR = "tensorboard"
TEST_DIR = "test"
# Fields that change how a run is executed or reported, never its result: they may differ when a
# workdir is resumed. Every other field must match the workdir's config.
RUNTIME_FIELDS = frozenset({
    "data.data_dir", "data.num_workers", "data.prefetch",
    "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.progress_bar", "train.test_after_training", "train.distributed",
    "train.eval_batch_size",
})


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; `step` is the first step that produced it."""

    def __init__(self, step: int, workdir: Path | None = None, last_checkpoint: int | None = None):
        self.step = step
        where = f" in {workdir}" if workdir else ""
        kept = (f"; the last good checkpoint (step {last_checkpoint}) is intact"
                if last_checkpoint is not None else "; no checkpoint had been written yet")
        super().__init__(f"non-finite training loss at step {step}{where}: training stopped{kept}. "
                         "Lower train.learning_rate, or check the data for NaN/inf values.")


class ConfigMismatchError(ValueError):
    """A workdir holds a run of a different config."""


# ----------------------------------------------------------------------------------------------
# Train state and the compiled steps (no data stack needed).

@flax.struct.dataclass
class TrainState:
    """Everything that evolves during training, as one pytree (checkpointed as a whole)."""

    step: jax.Array  # int32: completed train steps
    params: Any
    batch_stats: Any
    opt_state: Any  # optimizers.PhasedState
    phase: jax.Array  # int32: optimizer phase (authors: 0 Adam, 1..3 SGD; == num_phases: stopped)
    best_metric: jax.Array  # float32: best validation ROC-AUC so far (-inf before the first)
    bad_epochs: jax.Array  # int32: consecutive validations without improvement in this phase
    rng: jax.Array  # uint32 raw key data of the dropout key (typed keys do not checkpoint)

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def dropout_key(state: TrainState, prng_impl: str) -> jax.Array:
    """The dropout key of the step about to run: a function of the stored key and the step only."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=prng_impl), state.step)


def init_train_state(model: nn.Module, tx: optax.GradientTransformation,
                     example_shape: Sequence[int], *, seed: int, prng_impl: str,
                     mesh: jax.sharding.Mesh) -> TrainState:
    """Initialises parameters from `seed`, replicated over the mesh (identical on every host)."""
    if prng_impl not in PRNG_IMPLS:
        raise ValueError(f"train.prng_impl must be one of {PRNG_IMPLS}, got {prng_impl!r}")
    root = jax.random.key(seed, impl=prng_impl)
    init_key, drop_key = jax.random.split(root)

    def init():
        x = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
        variables = model.init({"params": init_key}, x, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params,
            batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
            phase=jnp.zeros((), jnp.int32), best_metric=jnp.full((), -jnp.inf, jnp.float32),
            bad_epochs=jnp.zeros((), jnp.int32), rng=jax.random.key_data(drop_key))

    return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Sigmoid binary cross-entropy on the logits, averaged over examples and tags (float32)."""
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                              labels.astype(jnp.float32)).mean()


def make_train_step(model: nn.Module, tx: optax.GradientTransformationExtraArgs, *,
                    prng_impl: str, mesh: jax.sharding.Mesh, donate: bool = True
                    ) -> Callable[..., tuple[TrainState, dict]]:
    """`step(state, {"x", "y"}, phase) -> (state, {"loss", "grad_norm"})`, compiled for the mesh.

    The batch is split over the mesh's data axis and the state replicated; BatchNorm's batch
    statistics and the mean loss are over the global batch (the compiler inserts the
    all-reduces). Parameters, optimizer state, logits and loss stay float32 whatever the model's
    compute dtype. The state is donated: its buffers are reused for the new state.

    `phase` (the optimizer phase, `state.phase` as a Python int, which the training loop keeps on
    the host) is static: each phase compiles its own program with only its optimizer in it, so no
    device-side conditional runs in the step; the authors' schedule recompiles at most 3 times.
    """

    def step(state: TrainState, batch: Mapping[str, jax.Array], phase: int = 0
             ) -> tuple[TrainState, dict]:
        rngs = {"dropout": dropout_key(state, prng_impl)}

        def compute_loss(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["x"], train=True,
                mutable=["batch_stats"], rngs=rngs)
            return loss_fn(logits, batch["y"]), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, phase=int(phase))
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    replicated = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, sharding.batch_sharding(mesh)),
                   out_shardings=(replicated, replicated), static_argnums=(2,),
                   donate_argnums=(0,) if donate else ())


def make_predict_fn(model: nn.Module, mesh: jax.sharding.Mesh) -> Callable:
    """`predict(variables, x) -> sigmoid probabilities` (float32), batch split over the mesh."""

    def predict(variables, x):
        logits = model.apply(variables, x, train=False)
        return jax.nn.sigmoid(logits.astype(jnp.float32))

    return jax.jit(predict, in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                   out_shardings=sharding.batch_sharding(mesh))


# ----------------------------------------------------------------------------------------------
# Data.

@dataclasses.dataclass
class TrainData:
    """What the training loop reads; `load_data` builds it from a config, tests from lists.

    `train` is an iterable (a grain IterDataset) whose iterator yields this process's batches
    {"x": (local_batch, ...), "y": (local_batch, num_tags)} for every step of every epoch and has
    `get_state()` / `set_state()` (a JSON-able dict). `eval_batches()` / `test_batches()` return a
    fresh iterator over this process's 16-chunk evaluation batches (input_pipeline.eval_batches).
    """

    train: Iterable[Mapping[str, np.ndarray]]
    steps_per_epoch: int
    eval_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]]
    tag_names: tuple[str, ...]
    test_batches: Optional[Callable[[], Iterable[Mapping[str, np.ndarray]]]] = None


def eval_clips_per_batch(requested: int, num_chunks: int) -> int:
    """Clips per process and evaluation batch, rounded up so its chunks split over local devices."""
    local = jax.local_device_count()
    unit = local // math.gcd(num_chunks, local)
    return max(unit, -(-int(requested) // jax.process_count() // unit) * unit)


def _augmentation(d: Any, tags) -> dict:
    """train_loader's augment / mix_tags from `data.augment` (fields of
    `tagger_jax.augment.AugmentParams`) and `data.augment_mix_exclude` (tags that mixing leaves
    as the first clip's, e.g. tempo and level); {} when the config has no `data.augment`."""
    if not d.get("augment", None):
        return {}
    from tagger_jax.augment import AugmentParams

    exclude = set(d.get("augment_mix_exclude", ()) or ())
    return {"augment": AugmentParams.from_dict(d.augment.to_dict()),
            "mix_tags": np.array([t not in exclude for t in tags])}


def load_data(config: Any) -> TrainData:
    """Builds (if needed) and opens the configured dataset and its input pipelines."""
    from tagger_jax import datasets, input_pipeline  # the data stack, imported only to train

    d, t, f = config.data, config.train, config.features
    builder_config = d.builder_config or None
    datasets.ensure_built(d.name, d.data_dir, builder_config=builder_config)
    train_source, tags = datasets.load_split(d.name, d.train_split, d.data_dir,
                                             builder_config=builder_config)
    kind = "audio" if config.model.architecture == "lee_won" else "mel"
    loader = input_pipeline.train_loader(
        train_source, global_batch_size=t.batch_size, seed=t.seed, crop_frames=f.chunk_frames,
        input_kind=kind, num_epochs=t.num_epochs, process_index=jax.process_index(),
        process_count=jax.process_count(), num_workers=d.num_workers,
        worker_buffer_size=max(1, d.prefetch), local_device_count=jax.local_device_count(),
        **_augmentation(d, tags))
    clips = eval_clips_per_batch(t.eval_batch_size, f.eval_chunks)

    def batches(split):
        if not split:
            return None
        source, split_tags = datasets.load_split(d.name, split, d.data_dir,
                                                 builder_config=builder_config)
        if tuple(split_tags) != tuple(tags):
            raise ValueError(f"{d.name}: split {split!r} has different tags than {d.train_split!r}")
        return lambda: input_pipeline.eval_batches(
            source, clips_per_batch=clips, num_chunks=f.eval_chunks, chunk_frames=f.chunk_frames,
            input_kind=kind, process_index=jax.process_index(), process_count=jax.process_count())

    if not d.eval_split:
        raise ValueError("data.eval_split is empty: training selects its best model (and the "
                         "authors' schedule its phases) on a validation split")
    return TrainData(
        train=loader,
        steps_per_epoch=input_pipeline.steps_per_epoch(len(train_source), t.batch_size),
        eval_batches=batches(d.eval_split), tag_names=tuple(tags),
        test_batches=batches(d.test_split) if t.get("test_after_training", True) else None)


def evaluate(model: nn.Module, variables: Any, batches: Iterable[Mapping[str, np.ndarray]],
             tag_names: Sequence[str], *, predict_fn: Callable, mesh: jax.sharding.Mesh,
             num_chunks: int) -> dict:
    """The authors' protocol on one split: mean of 16 chunk sigmoids per clip, per-tag AUCs."""
    import warnings

    from tagger_jax import evaluation

    put = lambda x: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), x)
    probs, labels, _ = evaluation.predict_clips(model, variables, batches, num_chunks,
                                                predict_fn=predict_fn, put=put)
    with warnings.catch_warnings():  # tags absent from a small split: reported in the result
        warnings.simplefilter("ignore", evaluation.UndefinedMetricWarning)
        return evaluation.tag_metrics(probs, labels, tag_names)


# ----------------------------------------------------------------------------------------------
# Workdir: config, checkpoints, export, metrics.

def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_to_dict(config: Any) -> dict:
    """The config as plain JSON types (tuples become lists), for saving and comparing."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(raw))


def config_differences(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """'field: saved != given' for every non-runtime field that differs."""
    a, b = _flatten(saved), _flatten(given)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RUNTIME_FIELDS:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {a.get(key, '<absent>')!r} in the workdir, "
                         f"{b.get(key, '<absent>')!r} now")
    return diffs


def check_or_write_config(config: Any, workdir: Path) -> None:
    """Refuses a workdir that belongs to a different config; otherwise (re)writes config.json."""
    given = config_to_dict(config)
    path = workdir / CONFIG_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigMismatchError(f"{path}: not valid JSON ({e}); use a new --workdir") from None
        diffs = config_differences(saved, given)
        if diffs:
            raise ConfigMismatchError(
                f"{workdir} holds a run with a different config, so it cannot be resumed:\n  "
                + "\n  ".join(diffs)
                + f"\nUse a new --workdir, or resume with the workdir's own config ({path}).")
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(given, indent=2, sort_keys=True))
        tmp.replace(path)


def _checkpoint_manager(directory: Path, max_to_keep: int, item_names: tuple[str, ...]
                        ) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options, item_names=item_names)


def _abstract(state: TrainState) -> TrainState:
    """Shapes, dtypes and shardings of `state`: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)


class DataIteratorHandler(ocp.CheckpointHandler):
    """Saves a data iterator's `get_state()` as one JSON file per process, restores `set_state`.

    Each process reads its own share of every batch, so each keeps its own iterator position
    (`process_<i>-of-<n>.json`, as grain's own handler does). The state may be a JSON-able dict
    (grain dataset iterators) or bytes/str (grain DataLoader iterators).
    """

    def save(self, directory, args: "DataIteratorSave"):
        state = args.item.get_state()
        if isinstance(state, (bytes, bytearray)):
            payload = {"bytes": bytes(state).decode()}
        elif isinstance(state, str):
            payload = {"str": state}
        else:
            payload = {"json": state}
        (Path(directory) / _iterator_file()).write_text(json.dumps(payload, sort_keys=True))

    def restore(self, directory, args: "DataIteratorRestore"):
        path = Path(directory) / _iterator_file()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no data-iterator state for this process (was the "
                                    "checkpoint written by a different number of processes?)")
        payload = json.loads(path.read_text())
        state = (payload["bytes"].encode() if "bytes" in payload
                 else payload.get("str", payload.get("json")))
        args.item.set_state(state)
        return args.item

    def metadata(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


def _iterator_file() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    item: Any  # an iterator with get_state()


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
    item: Any  # an iterator with set_state(), restored in place


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, data_iter: Any,
                    config: Any) -> int:
    """Saves state, this process's data-iterator state and the config under `state.step`."""
    step = int(sharding.to_host(state.step))
    meta = {"step": step, "config": config_to_dict(config), "process_count": jax.process_count()}
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=DataIteratorSave(data_iter),
        meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()
    return step


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, target: TrainState,
                       data_iter: Any) -> tuple[TrainState, dict]:
    """The state saved at `step` (placed like `target`); restores `data_iter` in place."""
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target)), data=DataIteratorRestore(data_iter),
        meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]


def read_checkpoint(directory: str | os.PathLike, step: int | None = None) -> dict:
    """A saved train state as nested dicts of NumPy arrays (latest step by default).

    Works on any machine and device count (the arrays are not placed on devices): for tests,
    inspection and tools. `directory` is WORKDIR/checkpoints or WORKDIR/best.
    """
    manager = ocp.CheckpointManager(Path(directory).expanduser().absolute(),
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint")
        metadata = manager.item_metadata(step)["state"]
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        return manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(restore_args=restore_args)))["state"]
    finally:
        manager.close()


def export_model(workdir: Path, state: TrainState, config: Any, tags: Sequence[str]) -> Path:
    """Writes WORKDIR/best_model/ for inference, swapped in by renames (never half-written)."""
    from tagger_jax.checkpoint import EXPORT_SUBDIR, save_model

    final = workdir / EXPORT_SUBDIR
    partial = workdir / (EXPORT_SUBDIR + ".partial")
    old = workdir / (EXPORT_SUBDIR + ".old")
    variables = sharding.to_host(state.variables)
    if jax.process_index() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    _barrier("export_start")
    save_model(partial, variables, config, tags)  # every process takes part in orbax's save
    _barrier("export_saved")
    if jax.process_index() == 0:
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier("export_done")
    return final


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class MetricWriter:
    """Scalars to WORKDIR/metrics.jsonl and TensorBoard event files (process 0 writes)."""

    def __init__(self, workdir: Path, resume_step: int):
        self.active = jax.process_index() == 0
        self.path = workdir / METRICS_FILE
        self.tb = None
        if not self.active:
            return
        if self.path.exists():  # a killed run may have logged past its last checkpoint
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _line_step(line) <= resume_step
                    and '"split": "test"' not in line]
            self.path.write_text("".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / TENSORBOARD_DIR))

    def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
        if not self.active:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: _jsonable(v) for k, v in scalars.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in scalars.items():
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                self.tb.add_scalar(f"{split}/{k}", float(v), int(step))
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # an unreadable (half-written) line is dropped


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (single process).

    With several processes, JAX's preemption sync service (started by jax.distributed) catches
    the signal and `reached_preemption_sync_point` makes every process stop at the same step.
    """

    def __init__(self):
        self.flag = threading.Event()
        self.previous = None
        self.multi = jax.process_count() > 1
        if not self.multi and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.flag.set()

    def reached(self, step: int) -> bool:
        if self.multi:
            from jax.experimental import multihost_utils
            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # preemption service disabled
                return False
        return self.flag.is_set()

    def close(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


# ----------------------------------------------------------------------------------------------
# The loop.

def _model_example_shape(config: Any) -> tuple[int, ...]:
    return input_shape(config.model, config.features.chunk_frames)


def reload_best(best_manager: ocp.CheckpointManager, state: TrainState) -> TrainState:
    """`state` with the parameters and batch statistics of the best checkpoint."""
    step = best_manager.latest_step()
    if step is None:
        return state
    best = best_manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state))))["state"]
    return state.replace(params=best.params, batch_stats=best.batch_stats)


def end_of_epoch(state: TrainState, metric: float, *, patience: int, num_phases: int,
                 best_manager: ocp.CheckpointManager
                 ) -> tuple[TrainState, optimizers.PlateauDecision]:
    """Applies one validation result: new best -> saved; plateau -> next phase from the best model.

    The best state is saved (with its updated best metric) before any reload, so a switch always
    restarts from the best model seen so far, as the authors' schedule intends.
    """
    host = sharding.to_host({"phase": state.phase, "best": state.best_metric,
                             "bad": state.bad_epochs, "step": state.step})
    decision = optimizers.plateau_step(int(host["phase"]), float(host["best"]), int(host["bad"]),
                                       float(metric), patience=patience, num_phases=num_phases)
    scalars = sharding.replicate({"phase": np.int32(decision.phase),
                                  "best_metric": np.float32(decision.best_metric),
                                  "bad_epochs": np.int32(decision.bad_epochs)},
                                 state.step.sharding.mesh)
    state = state.replace(**scalars)
    if decision.improved:
        step = int(host["step"])
        if step not in best_manager.all_steps():  # a resumed run may repeat an epoch end
            best_manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                              force=True)
            best_manager.wait_until_finished()
    if decision.switched:
        state = reload_best(best_manager, state)
    return state, decision


def train_and_evaluate(config: Any, workdir: str | os.PathLike,
                       data: Optional[TrainData] = None) -> dict:
    """Trains (or resumes) the configured model in `workdir`; returns a summary dict.

    Validates after every epoch with the authors' 16-chunk protocol, keeps the best checkpoint by
    validation ROC-AUC and exports it to WORKDIR/best_model/, then (train.test_after_training)
    evaluates it on the test split. Restarting with the same config in the same workdir resumes
    exactly; a different config is refused (ConfigMismatchError). SIGTERM saves a checkpoint and
    returns with summary["preempted"] = True. A non-finite loss raises NonFiniteLossError.
    `data` replaces `load_data(config)` (tests use in-memory sources).
    """
    sharding.maybe_initialize_distributed(bool(config.train.get("distributed", False)))
    workdir = Path(workdir).expanduser().absolute()
    check_or_write_config(config, workdir)
    _barrier("config")
    t = config.train
    mesh = sharding.make_mesh()
    if data is None:
        data = load_data(config)
    spe = int(data.steps_per_epoch)
    eval_every = max(1, int(t.get("eval_every_epochs", 1)))
    total_steps = spe * int(t.num_epochs)
    global_batch = int(t.batch_size)
    sharding.local_batch_size(global_batch, mesh)  # raises unless it splits over the devices

    model = build_model(config.model, num_tags=len(data.tag_names))
    tx, num_phases = optimizers.make_optimizer(t, total_steps)
    state = init_train_state(model, tx, _model_example_shape(config), seed=int(t.seed),
                             prng_impl=t.prng_impl, mesh=mesh)
    train_step = make_train_step(model, tx, prng_impl=t.prng_impl, mesh=mesh)
    predict_fn = make_predict_fn(model, mesh)

    latest = _checkpoint_manager(workdir / CHECKPOINT_DIR, int(t.keep_checkpoints),
                                 ("state", "data", "meta"))
    best = _checkpoint_manager(workdir / BEST_DIR, 1, ("state",))
    train_iter = iter(data.train)
    resume_step = latest.latest_step()
    if resume_step is not None:
        state, meta = restore_checkpoint(latest, resume_step, state, train_iter)
        diffs = config_differences(meta.get("config", {}), config_to_dict(config))
        if diffs:
            raise ConfigMismatchError(f"{workdir / CHECKPOINT_DIR}/{resume_step} was written by a "
                                      "different config:\n  " + "\n  ".join(diffs))
        if best.latest_step() is not None:  # heal an export interrupted by a crash
            export_model(workdir, reload_best(best, state), config, data.tag_names)
        if jax.process_index() == 0:
            print(f"Resuming {workdir} from step {resume_step}", flush=True)
    step = int(sharding.to_host(state.step))
    last_saved = resume_step
    writer = MetricWriter(workdir, resume_step or 0)
    preemption = _Preemption()
    progress = _progress_bar(t, total_steps * global_batch, step * global_batch)
    summary: dict[str, Any] = {"workdir": str(workdir), "preempted": False}
    phase = int(sharding.to_host(state.phase))
    stopped = phase >= num_phases
    pending: list[tuple[int, dict]] = []
    window_start, window_steps = time.perf_counter(), 0
    try:
        while step < total_steps and not stopped:
            batch = next(train_iter)
            state, metrics = train_step(state, sharding.shard_batch(
                {"x": batch["x"], "y": batch["y"]}, mesh), phase)
            step += 1
            window_steps += 1
            pending.append((step, metrics))
            if progress is not None:
                progress.update(global_batch)
            epoch_end = step % spe == 0
            preempted = preemption.reached(step)
            save_due = (epoch_end or step == total_steps or preempted
                        or step % int(t.checkpoint_every_steps) == 0)
            if step % int(t.log_every_steps) == 0 or save_due:
                losses = _check_finite(pending, workdir, last_saved)
                elapsed = time.perf_counter() - window_start
                train_metrics = {
                    "loss": float(np.mean(losses)),
                    "grad_norm": float(sharding.to_host(pending[-1][1]["grad_norm"])),
                    "learning_rate": optimizers.learning_rate(t, phase, step - 1, total_steps),
                    "clips_per_second": window_steps * global_batch / max(elapsed, 1e-9),
                    "epoch": step / spe, "phase": phase}
                writer.write(step, "train", train_metrics)
                if progress is not None:
                    progress.set_postfix(loss=f"{train_metrics['loss']:.4f}", refresh=False)
                pending, window_steps = [], 0
                window_start = time.perf_counter()
            validate = epoch_end and ((step // spe) % eval_every == 0 or step == total_steps)
            if validate:
                val = evaluate(model, state.variables, data.eval_batches(), data.tag_names,
                               predict_fn=predict_fn, mesh=mesh, num_chunks=config.features.eval_chunks)
                metric = float(val["roc_auc_mean"])
                state, decision = end_of_epoch(state, metric, patience=int(t.plateau_patience),
                                               num_phases=num_phases, best_manager=best)
                if decision.improved:
                    export_model(workdir, state, config, data.tag_names)
                writer.write(step, "validation", {
                    "roc_auc": metric, "pr_auc": float(val["pr_auc_mean"]),
                    "best_roc_auc": decision.best_metric, "epoch": step // spe, "phase": phase,
                    "improved": decision.improved, "switched": decision.switched})
                _say(progress, f"epoch {step // spe}: validation ROC-AUC {metric:.4f} "
                               f"(best {decision.best_metric:.4f})"
                               + (f"; plateau: best model reloaded, now "
                                  f"{optimizers.phase_name(t, decision.phase)}"
                                  if decision.switched else "")
                               + ("; plateau in the last phase: training stops"
                                  if decision.stop else ""))
                phase, stopped = decision.phase, decision.stop
                if progress is not None:
                    progress.set_postfix(val_roc_auc=f"{metric:.4f}",
                                         best=f"{decision.best_metric:.4f}",
                                         opt=optimizers.phase_name(t, phase))
                window_start = time.perf_counter()
            if save_due or stopped:
                last_saved = save_checkpoint(latest, state, train_iter, config)
            if preempted:
                summary["preempted"] = True
                _say(progress, f"SIGTERM: saved step {step} in {workdir}")
                break
    except BaseException:
        writer.close()
        latest.close()
        best.close()
        raise
    finally:
        preemption.close()
        if progress is not None:
            progress.close()
        if hasattr(train_iter, "close"):
            train_iter.close()
    summary.update(step=step, phase=phase,
                   best_validation_roc_auc=float(sharding.to_host(state.best_metric)))
    if (not summary["preempted"] and data.test_batches is not None
            and t.get("test_after_training", True)):
        final = reload_best(best, state)
        test = evaluate(model, final.variables, data.test_batches(), data.tag_names,
                        predict_fn=predict_fn, mesh=mesh, num_chunks=config.features.eval_chunks)
        writer.write(step, "test", {"roc_auc": float(test["roc_auc_mean"]),
                                    "pr_auc": float(test["pr_auc_mean"])})
        if jax.process_index() == 0:
            from tagger_jax import evaluation

            evaluation.write_report(test, workdir / TEST_DIR,
                                    title=f"{config.data.name} {config.data.test_split}")
        summary.update(test_roc_auc=float(test["roc_auc_mean"]),
                       test_pr_auc=float(test["pr_auc_mean"]))
    writer.close()
    latest.close()
    best.close()
    return summary


def _check_finite(pending: list[tuple[int, dict]], workdir: Path, last_saved: int | None
                  ) -> np.ndarray:
    """The window's losses; raises NonFiniteLossError naming the first non-finite step."""
    losses = np.asarray(sharding.to_host([m["loss"] for _, m in pending]), np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise NonFiniteLossError(pending[int(bad[0])][0], workdir, last_saved)
    return losses


def _say(progress, message: str) -> None:
    """A line for the user (process 0), printed above the progress bar if there is one."""
    if jax.process_index() != 0:
        return
    if progress is not None:
        progress.write(message)
    else:
        print(message, flush=True)


def _progress_bar(t: Any, total: int, initial: int):
    if not t.get("progress_bar", True) or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="clip", unit_scale=True, dynamic_ncols=True,
                desc="train", smoothing=0.1)
