"""Training: `train_and_evaluate(config, workdir)`, the loop that ties the trainer's modules together.

    train_state     TrainState and the compiled data-parallel train step
    train_data      the dataset's train / validation / test pipelines (TrainData)
    optimizers      the optimizers and the plateau schedule (its state, PlateauState, is host-side)
    checkpointing   orbax checkpoints: save, restore with fallback, best model, export
    workdir         the workdir's layout, lock and config check; reusable test results
    validation      the 16-chunk protocol on a split and the best-model selection metric
    metric_writer   metrics.jsonl + TensorBoard;  progress: bars;  preemption: SIGTERM

Each epoch ends with a validation (every train.eval_every_epochs epochs and at the end): a new
best ROC-AUC is saved to WORKDIR/best and exported to WORKDIR/best_model; a plateau moves the
authors' schedule to its next phase, starting from the best model. After training the best model
is evaluated on the test split and on `data.extra_test_splits` (each unless a previous run already
did so from the same inputs), and with `train.test_baseline` the logistic-regression baseline
fitted on the train split is scored on the same splits.
Restarting with the same config in the same workdir resumes exactly.

Only jax, flax, optax, orbax and numpy are imported at module level (see train_state).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from tagger_jax import checkpointing, inference, optimizers, outputs, sharding, validation
from tagger_jax import workdir as wd
from tagger_jax.checkpointing import CorruptCheckpointError, read_checkpoint  # noqa: F401
from tagger_jax.metric_writer import MetricWriter
from tagger_jax.errors import ConfigError, DataError, Terminated
from tagger_jax.models import build_model, check_model_config, get_architecture, input_shape
from tagger_jax.models.transformer import PositionsError
from tagger_jax.preemption import Preemption
from tagger_jax.progress import Progress
from tagger_jax.train_data import TestSplit, TrainData, load_data
from tagger_jax.train_state import (PRNG_IMPLS, TrainState, init_train_state,  # noqa: F401
                                    make_train_step)
from tagger_jax.workdir import (ConfigMismatchError, WorkdirBusyError,  # noqa: F401
                                config_differences, config_to_dict)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; `step` is the first step that produced it."""

    def __init__(self, step: int, workdir: Path | None = None, last_checkpoint: int | None = None):
        self.step = step
        where = f" in {workdir}" if workdir else ""
        kept = (f"; the last good checkpoint (step {last_checkpoint}) is intact"
                if last_checkpoint is not None else "; no checkpoint had been written yet")
        super().__init__(f"non-finite training loss at step {step}{where}: training stopped{kept}. "
                         "Lower train.learning_rate, or check the data for NaN/inf values.")


def end_of_epoch(state: TrainState, schedule: optimizers.PlateauState, metric: float, *,
                 patience: int, num_phases: int, best_manager: ocp.CheckpointManager
                 ) -> tuple[TrainState, optimizers.PlateauDecision]:
    """Applies one validation result: new best -> saved; plateau -> next phase from the best model.

    `metric` NaN (undefined) never improves. The best state is saved before any reload, so a
    switch always restarts from the best model seen so far, as the authors' schedule intends.
    The schedule's new state is `decision.state`.
    """
    decision = optimizers.plateau_step(schedule.phase, schedule.best_metric, schedule.bad_epochs,
                                       float(metric), patience=patience, num_phases=num_phases)
    if decision.improved:
        checkpointing.save_best(best_manager, state)
    if decision.switched:
        state = checkpointing.reload_best(best_manager, state)
    return state, decision


MAX_EPOCHS = 1_000_000  # a bound that no run reaches; larger counts overflow the step counts


def check_train_config(config: Any) -> None:
    """Checks the counts and choices of `config.train` and `config.features.chunk_frames` before
    the workdir or the data is touched. Raises `errors.ConfigError` (exit status 2) naming the
    field and its value."""
    t, d, f = config.train, config.data, config.features
    for name, value, choices in (("train.optimizer", t.optimizer, optimizers.OPTIMIZERS),
                                 ("train.prng_impl", t.prng_impl, PRNG_IMPLS)):
        if value not in choices:
            raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
    for name, value, least, most in (
            ("train.batch_size", t.batch_size, 1, None),
            ("train.eval_batch_size", t.eval_batch_size, 1, None),
            ("train.num_epochs", t.num_epochs, 1, MAX_EPOCHS),
            ("train.eval_every_epochs", t.eval_every_epochs, 1, None),
            ("train.keep_checkpoints", t.keep_checkpoints, 1, None),
            ("train.warmup_steps", t.warmup_steps, 0, None),
            ("train.log_every_steps", t.log_every_steps, 1, None),
            ("train.checkpoint_every_steps", t.checkpoint_every_steps, 1, None),
            ("train.seed", t.seed, 0, 2 ** 32 - 1),
            ("data.num_workers", d.num_workers, 0, None),
            ("data.prefetch", d.prefetch, 0, None),
            ("data.read_threads", d.read_threads, 0, None),
            ("data.crops_per_record", d.crops_per_record, 1, None),
            ("features.chunk_frames", f.chunk_frames, 1, None),
            ("features.sample_rate", f.sample_rate, 1, None),
            ("features.n_fft", f.n_fft, 1, None),
            ("features.hop_length", f.hop_length, 1, None),
            ("features.n_mels", f.n_mels, 1, None)):
        if int(value) < least:
            raise ConfigError(f"{name} must be at least {least}, got {value}")
        if most is not None and int(value) > most:
            raise ConfigError(f"{name} must be at most {most}, got {value}")
    if not 0 < float(t.learning_rate) < math.inf:
        raise ConfigError(f"train.learning_rate must be positive and finite, got "
                          f"{t.learning_rate}")
    if not 0 <= float(t.weight_decay) < math.inf:
        raise ConfigError(f"train.weight_decay must be at least 0 and finite, got "
                          f"{t.weight_decay}")
    splits = d.extra_test_splits
    if not (isinstance(splits, (tuple, list))
            and all(isinstance(s, str) and s.strip() for s in splits)):
        raise ConfigError(f"data.extra_test_splits must be split names, e.g. 'test_timgm6mb' or "
                          f"'test_a,test_b', got {splits!r}")
    rates = t.sgd_learning_rates
    if not (isinstance(rates, (tuple, list)) and rates
            and all(isinstance(r, (int, float)) and 0 < float(r) < math.inf for r in rates)):
        raise ConfigError(f"train.sgd_learning_rates must be positive numbers, e.g. "
                          f"'(1e-3, 1e-4)', got {rates!r}")


def frame_loss_weight(config: Any) -> float:
    """`train.frame_loss_weight`, checked against `model.frame_head` (each needs the other).

    Raises `errors.ConfigError` (a ValueError) naming both fields when one is set without the
    other, or when the architecture has no frame positions (only log-mel attention models, i.e.
    pons_won)."""
    weight = float(config.train.frame_loss_weight)
    if weight < 0:
        raise ConfigError(f"train.frame_loss_weight must not be negative, got {weight}")
    if config.model.frame_head and weight == 0:
        raise ConfigError("model.frame_head=True needs train.frame_loss_weight > 0 (the weight "
                          "of its loss), got 0")
    if not config.model.frame_head and weight > 0:  # a new user's trial: the message said "> 0"
        raise ConfigError(f"train.frame_loss_weight={weight:g} needs model.frame_head=True; "
                          "without a frame head set train.frame_loss_weight=0")
    arch = get_architecture(config.model)
    if weight > 0 and (arch.waveform or arch.module != "attention"):
        raise ConfigError(f"model.frame_head: {arch.name} has no frame head (pons_won only)")
    return weight


def _ctrl_c_note(step: int, last_saved: Optional[int], workdir: Path) -> str:
    """What a training stopped by Ctrl-C keeps, for `errors.report`'s line: Ctrl-C stops at
    once (SIGTERM saves first), and "finished results are kept" did not say that the steps
    since the last checkpoint are lost (a new user's trial)."""
    if last_saved is None:
        return (f"stopped at step {step} before its first checkpoint: running the same command "
                f"starts again from step 0 (SIGTERM saves a checkpoint before stopping)")
    lost = ("" if step <= last_saved else f", training step {step} again"
            if step == last_saved + 1 else f", training steps {last_saved + 1}-{step} again")
    return (f"stopped at step {step}; the last checkpoint is step {last_saved} in {workdir}: "
            f"running the same command resumes from there{lost} (SIGTERM saves a checkpoint "
            "before stopping)")


def train_and_evaluate(config: Any, workdir: str | os.PathLike,
                       data: Optional[TrainData] = None) -> dict:
    """Trains (or resumes) the configured model in `workdir`; returns a summary dict.

    Summary: {"workdir", "preempted", "step", "phase", "best_validation_roc_auc" (None if no
    validation was defined), and after testing "test_roc_auc", "test_pr_auc", "test_reused" (of
    data.test_split) and "tests": one dict per tested split ({"split", "dir", "roc_auc",
    "pr_auc", "reused"}, plus "baseline_roc_auc" and "baseline_pr_auc" with train.test_baseline)}.
    Raises `errors.ConfigError` (before touching the workdir) on a model field value or frame-loss
    setting the run cannot use, or at a start on a `train.init_from` that names no model,
    WorkdirBusyError if another training holds the workdir,
    ConfigMismatchError if it belongs to a different config, CorruptCheckpointError if no
    checkpoint in it reads, NonFiniteLossError on a NaN/inf loss. SIGTERM during the training loop
    saves a checkpoint and returns with summary["preempted"] = True; before the loop (restoring,
    loading data) or after it (testing) it raises `preemption.Preempted` at once, since there is
    nothing to save then. `data` replaces `load_data(config)` (tests use in-memory sources).
    """
    check_model_config(config.model)  # bad values fail before the workdir or the data is touched
    check_train_config(config)
    frame_loss_weight(config)
    sharding.maybe_initialize_distributed(bool(config.train.distributed), preemption=True)
    check_same_config_everywhere(config)
    from tagger_jax import input_pipeline

    try:  # the device count is known now: still before the workdir is touched
        input_pipeline.check_batch_divisibility(int(config.train.batch_size),
                                                jax.process_count(), jax.local_device_count())
    except ValueError as e:  # errors.ConfigError
        raise ConfigError(f"train.batch_size: {e}") from None
    workdir = Path(workdir).expanduser().absolute()
    outputs.check_output_dir(workdir)  # a file, under a file, unwritable: errors.OutputError
    if str(config.train.init_from) and not wd.trained(workdir):  # a start: the model must be
        from tagger_jax import checkpoint  # there (a trial's left a workdir of empty folders);
        # a resume does not read it, so a model moved since does not stop one
        try:
            checkpoint.resolve_model_dir(str(config.train.init_from))
        except checkpoint.CheckpointError as e:
            raise ConfigError(f"train.init_from: {e}") from None
    config = wd.with_absolute_paths(config)  # stored so: found from any directory
    with wd.lock(workdir), contextlib.ExitStack() as held:  # held: the build's readers' lock
        preemption = Preemption()
        try:
            return _train_and_evaluate(config, workdir, data, preemption, held)
        finally:
            preemption.close()


def check_same_config_everywhere(config: Any) -> None:
    """Raises `errors.ConfigError` on every process when the processes of a multi-process run
    were given configs that differ in a field that changes results (`workdir.result_fields`;
    runtime fields such as `data.data_dir` may differ between hosts). Each process trains with
    its own config, so two processes started with another learning rate or dropout trained one
    model with both, silently. A no-op with one process."""
    if jax.process_count() == 1:
        return
    import hashlib
    import json

    from jax.experimental import multihost_utils

    text = json.dumps(wd.result_fields(config), sort_keys=True, default=str)
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint32)
    every = np.asarray(multihost_utils.process_allgather(digest)).reshape(
        jax.process_count(), -1)
    other = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
    if other:
        many = len(other) > 1
        raise ConfigError(f"the processes of this run were given different configs: "
                          f"{'processes' if many else 'process'} {', '.join(map(str, other))} "
                          f"{'differ' if many else 'differs'} from process 0 in fields that "
                          "change results; start every process with the same config and "
                          "options")


def start_from_model(state: TrainState, config: Any, tag_names, say=print) -> TrainState:
    """`state` whose params and BatchNorm statistics start from the model `train.init_from`
    names (an exported model directory or a training workdir, as `checkpoint.load_model` reads):
    `transfer.transplant`'s rules, one line said (`say`) on what was taken. The optimizer state
    is unchanged (AdamW's moments start at zero either way). Raises ConfigError (one line) for a
    path that is no model, a model that read other log-mels (`transfer.INPUT_FIELDS`) or one
    sharing no weight array with this model."""
    from tagger_jax import checkpoint, transfer

    source = str(config.train.init_from)
    try:
        loaded = checkpoint.load_model(source)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"train.init_from: {e}") from None
    diffs = transfer.input_differences(loaded.config.features, config.features)
    if diffs:
        raise ConfigError(f"train.init_from {source}: the model was trained on other log-mels "
                          f"({'; '.join(diffs)}); its weights would not fit this run's input")
    target = {"params": sharding.to_host(state.params),
              "batch_stats": sharding.to_host(state.batch_stats)}
    try:
        variables, report = transfer.transplant(target, tag_names,
                                                sharding.to_host(loaded.variables), loaded.tags)
    except ValueError as e:
        raise ConfigError(f"train.init_from {source}: {e}") from None
    say(report.summary(source))
    kept, unused = report.untaken()
    if kept or unused:  # a trial's synthetic_cpu run from the main model: 33 of 82 arrays
        say(f"warning: train.init_from {source}: this run's model is not the one trained ("
            f"tag outputs aside, {len(kept)} of its arrays keep their init, e.g. "
            f"{(kept or unused)[0]}, and {len(unused)} of the trained model's are not used): "
            "the front-end or encoder "
            "starts untrained; start from the config the model was trained with (a workdir's "
            "config.json is a --config) with this run's data settings")

    def put(new, old: jax.Array) -> jax.Array:  # the value on old's sharding, on every process
        return jax.make_array_from_callback(old.shape, old.sharding, lambda index: new[index])

    return state.replace(
        params=jax.tree.map(put, variables["params"], state.params),
        batch_stats=jax.tree.map(put, variables.get("batch_stats", {}), state.batch_stats))


def _train_and_evaluate(config: Any, workdir: Path, data: Optional[TrainData],
                        preemption: Preemption, held: contextlib.ExitStack) -> dict:
    wd.check_or_write_config(config, workdir)
    checkpointing.barrier("config")
    t = config.train
    loss_weight = frame_loss_weight(config)
    progress = Progress(bool(t.progress_bar))
    mesh = sharding.make_mesh()
    if data is None:
        try:
            data = load_data(config, held)
        except FileNotFoundError as e:  # not built / no such config: the message says what to do
            raise DataError(str(e)) from None
    spe = int(data.steps_per_epoch)
    eval_every = max(1, int(t.eval_every_epochs))
    total_steps = spe * int(t.num_epochs)
    global_batch = int(t.batch_size)
    try:
        sharding.local_batch_size(global_batch, mesh)  # raises unless it splits over the devices
    except ValueError as e:
        raise ConfigError(f"train.batch_size: {e}") from None

    model = build_model(config.model, num_tags=len(data.tag_names))
    tx, num_phases = optimizers.make_optimizer(t, total_steps)
    try:
        state = init_train_state(model, tx, input_shape(config.model,
                                                        config.features.chunk_frames),
                                 seed=int(t.seed), prng_impl=t.prng_impl, mesh=mesh)
    except PositionsError as e:
        raise ConfigError(f"model.max_positions / features.chunk_frames: {e}") from None
    train_step = make_train_step(model, tx, prng_impl=t.prng_impl, mesh=mesh,
                                 frame_loss_weight=loss_weight)
    evaluate_split = validation.make_evaluate(model, config, mesh, data.tag_names)

    def bar(items, n, desc):  # over this process's clips
        return progress.batches(items, n, inference.share_label(desc), unit="clip")

    def evaluate(variables, source, split, desc):
        return evaluate_split(variables, source, split, bar, desc)

    latest = checkpointing.manager(workdir / wd.CHECKPOINT_DIR, int(t.keep_checkpoints),
                                   ("state", "data", "meta"))
    best = checkpointing.manager(workdir / wd.BEST_DIR, 1, ("state",))
    train_iter = iter(data.train)
    writer = None
    try:
        schedule, resume_step = optimizers.PlateauState(), None
        restored = checkpointing.restore_latest(latest, state, train_iter, progress.say)
        if restored is not None:
            state, meta = restored
            resume_step = int(meta["step"])
            diffs = config_differences(meta["config"], config_to_dict(config))
            if diffs:
                raise ConfigMismatchError(f"{workdir / wd.CHECKPOINT_DIR}/{resume_step} was "
                                          "written by a different config:\n  " + "\n  ".join(diffs))
            then, now = meta.get("train_data"), data.train_identity
            if then and now and any(then[k] != now[k] for k in then if k in now):  # "tags":
                # recorded since 2026-12-05; older checkpoints compare records and bytes
                raise ConfigError(
                    f"{workdir / wd.CHECKPOINT_DIR}/{resume_step} was trained on other data: "
                    f"train split then {_described(then)}, now {_described(now)}; resume on the "
                    "data it was trained on (data.data_dir), or start in a new --workdir (from "
                    f"this run's model: train.init_from={workdir})")
            then_devices = meta.get("device_count")  # recorded since 2026-12-05
            if then_devices is not None and int(then_devices) != jax.device_count():
                progress.say(  # a trial compared such a resume with a run that stayed: 7e-4 off
                    f"note: {workdir / wd.CHECKPOINT_DIR}/{resume_step} was written on "
                    f"{then_devices} device(s) and this run has {jax.device_count()}: it "
                    "resumes, but float32 sums (and with train.prng_impl=rbg the dropout masks) "
                    "follow the devices, so it will not be bit-identical to a run that stayed "
                    "on them")
            schedule = optimizers.PlateauState.from_json(meta["schedule"])
            if best.latest_step() is not None:  # heal an export interrupted by a crash
                checkpointing.export_model(workdir, checkpointing.reload_best(best, state),
                                           config, data.tag_names, data.untrained_tags)
            pruned = checkpointing.prune(latest, int(t.keep_checkpoints))
            if pruned:
                progress.say(f"{workdir}: deleted checkpoint{'' if len(pruned) == 1 else 's'} "
                             f"{', '.join(map(str, pruned))}: train.keep_checkpoints is "
                             f"{int(t.keep_checkpoints)}")
        step = int(sharding.to_host(state.step))
        phase = schedule.phase
        stopped = phase >= num_phases
        if resume_step is not None:
            done = step >= total_steps or stopped
            progress.say(f"{workdir}: training already complete at step {step}" if done
                         else f"Resuming {workdir} from step {resume_step}")
        elif best.latest_step() is not None or (workdir / wd.METRICS_FILE).exists():
            progress.say(f"warning: {workdir} has no checkpoint in {wd.CHECKPOINT_DIR}/ but "
                         "holds an earlier run's results: training starts again from step 0, "
                         "and they are replaced as it goes (its best checkpoint now)")
            # The earlier run's best checkpoint goes now: saving a best step skips one that
            # exists (a resumed run repeats an epoch end), so a new best at the same step would
            # have kept the old weights in best/ (and its digest, reusing old test results).
            checkpointing.prune(best, 0)
        if resume_step is None and str(t.init_from):  # step 0: a trained model's weights
            state = start_from_model(state, config, data.tag_names, progress.say)
        last_saved = resume_step
        writer = MetricWriter(workdir, resume_step or 0)
        summary: dict[str, Any] = {"workdir": str(workdir), "preempted": False}
        if step < total_steps and not stopped:
            progress.train_bar(total_steps * global_batch, step * global_batch)
        compiled: set[int] = set()
        pending: list[tuple[int, dict]] = []
        window_start, window_steps = time.perf_counter(), 0
        told_undefined = False
        preemption.defer()  # a SIGTERM from here on saves a checkpoint at the next step
        try:
            while step < total_steps and not stopped:
                batch = next(train_iter)
                batch = sharding.shard_batch(
                    {k: batch[k] for k in ("x", "y", "frames") if k in batch}, mesh)
                if phase not in compiled:  # the first step of a phase compiles its program
                    with progress.phase(f"compiling the train step "
                                        f"({optimizers.phase_name(t, phase)})"):
                        state, metrics = train_step(state, batch, phase)
                        jax.block_until_ready(metrics["loss"])
                    compiled.add(phase)
                    progress.skip(global_batch)  # its time is not a training rate
                    window_start = time.perf_counter()
                else:
                    state, metrics = train_step(state, batch, phase)
                    window_steps += 1
                    progress.update(global_batch)
                step += 1
                pending.append((step, metrics))
                epoch_end = step % spe == 0
                preempted = preemption.reached(step)
                save_due = (epoch_end or step == total_steps or preempted
                            or step % int(t.checkpoint_every_steps) == 0)
                if step % int(t.log_every_steps) == 0 or save_due:
                    losses = _check_finite(pending, workdir, last_saved)  # waits for the steps
                    wd.check_still_there(workdir, step)  # (and the metrics write, if it fails)
                    elapsed = time.perf_counter() - window_start
                    train_metrics = {
                        "loss": float(np.mean(losses)),
                        "grad_norm": float(sharding.to_host(pending[-1][1]["grad_norm"])),
                        "learning_rate": optimizers.learning_rate(t, phase, step - 1, total_steps),
                        "epoch": step / spe, "phase": phase}
                    if "frame_loss" in pending[-1][1]:
                        train_metrics["frame_loss"] = float(np.mean(sharding.to_host(
                            [m["frame_loss"] for _, m in pending])))
                    if window_steps and elapsed > 0:  # not for a window of only a compiling step
                        train_metrics["clips_per_second"] = window_steps * global_batch / elapsed
                    writer.write(step, "train", train_metrics)
                    progress.set_postfix(loss=f"{train_metrics['loss']:.4f}")
                    pending, window_steps = [], 0
                    window_start = time.perf_counter()
                validate = epoch_end and ((step // spe) % eval_every == 0 or step == total_steps)
                if validate or save_due:  # the counted steps are done (_check_finite synced)
                    progress.pause()
                if validate:
                    val = evaluate(state.variables, data.eval_source, config.data.eval_split,
                                   f"validation (epoch {step // spe})")
                    metric = validation.selection_metric(val)
                    state, decision = end_of_epoch(state, schedule, metric,
                                                   patience=int(t.plateau_patience),
                                                   num_phases=num_phases, best_manager=best)
                    schedule = decision.state
                    if decision.improved:
                        checkpointing.export_model(workdir, state, config, data.tag_names,
                                                   data.untrained_tags)
                    writer.write(step, "validation", {
                        "roc_auc": val["roc_auc_mean"], "pr_auc": val["pr_auc_mean"],
                        "excluded_tags": val["excluded_tags"],
                        "best_roc_auc": _finite_or_none(decision.best_metric),
                        "epoch": step // spe, "phase": phase,
                        "improved": decision.improved, "switched": decision.switched})
                    note = validation.undefined_note(val, config.data.eval_split)
                    if note and not told_undefined:
                        progress.say(f"warning: {note}")
                        told_undefined = True
                    progress.say(
                        f"epoch {step // spe}: validation ROC-AUC {validation.fmt(metric)} "
                        f"(best {validation.fmt(decision.best_metric)})"
                        + (f"; plateau: best model reloaded, now "
                           f"{optimizers.phase_name(t, decision.phase)}"
                           if decision.switched else "")
                        + ("; plateau in the last phase: training stops" if decision.stop else ""))
                    phase, stopped = decision.phase, decision.stop
                    progress.set_postfix(val_roc_auc=validation.fmt(metric),
                                         best=validation.fmt(decision.best_metric),
                                         opt=optimizers.phase_name(t, phase))
                if save_due or stopped:
                    last_saved = checkpointing.save_checkpoint(latest, state, train_iter, {
                        "config": config_to_dict(config), "schedule": schedule.to_json(),
                        **({"train_data": data.train_identity} if data.train_identity else {})})
                if validate or save_due or stopped:  # their time is not training time
                    progress.resume_timing()
                    window_start = time.perf_counter()
                if preempted:
                    summary["preempted"] = True
                    progress.say(f"SIGTERM: saved step {step} in {workdir}")
                    break
        except KeyboardInterrupt as e:  # Ctrl-C (SIGTERM saved and left the loop above)
            if not isinstance(e, Terminated):
                e.add_note(_ctrl_c_note(step, last_saved, workdir))
            raise
        preemption.defer(False)
        wd.check_still_there(workdir, step)  # before a summary or the tests say all went well
        if preemption.flag.is_set() and not summary["preempted"]:  # after the last step's check:
            summary["preempted"] = True  # that step's checkpoint is saved (step == total_steps)
            progress.say(f"SIGTERM: saved step {step} in {workdir}")
        preemption.during(f"after training (step {step} saved), before the tests finished")
        progress.close()
        summary.update(step=step, phase=phase,
                       best_validation_roc_auc=_finite_or_none(schedule.best_metric))
        if summary["preempted"]:
            return summary
        if best.latest_step() is None:  # no validation result was defined, or best/ is gone
            progress.say(
                ("warning: no validation ROC-AUC was defined, so no best model was chosen"
                 if not math.isfinite(schedule.best_metric) else
                 f"warning: the best checkpoint (validation ROC-AUC {schedule.best_metric:.4f})"
                 f" is missing from {workdir}/best/") +
                f": the last model (step {step}) is exported and tested")
            checkpointing.export_model(workdir, state, config, data.tag_names,
                                       data.untrained_tags)
        if data.test_source is not None and t.test_after_training:
            tests = [(config.data.test_split, None, TestSplit(
                data.test_source, data.test_fingerprint))]
            tests += [(name, name, split) for name, split in data.extra_tests.items()]
            results = []
            for name, sub, split in tests:
                results.append(_test(config, workdir, name, sub, split, state, step, best,
                                     writer, progress, evaluate))
                preemption.check()  # a SIGTERM whose exception a callback swallowed
            summary.update({"test_roc_auc": results[0]["roc_auc"],
                            "test_pr_auc": results[0]["pr_auc"],
                            "test_reused": results[0]["reused"], "tests": results})
            if data.baseline is not None and jax.process_index() == 0:
                _baseline(workdir, data, results, progress)
            wd.check_still_there(workdir, step)  # the test results were written there
        return summary
    finally:
        progress.close()
        if hasattr(train_iter, "close"):
            train_iter.close()
        if writer is not None:
            writer.close()
        latest.close()
        best.close()


def _described(identity: dict) -> str:
    tags = identity.get("tags")
    return (f"{identity.get('dataset')}, {identity.get('records'):,} records, "
            f"{identity.get('bytes'):,} bytes" + (f", tags {', '.join(map(repr, tags))}"
                                                  if tags is not None else ""))


def _test(config, workdir: Path, name: str, sub: Optional[str], split: TestSplit,
          state: TrainState, step: int, best: ocp.CheckpointManager, writer: MetricWriter,
          progress: Progress, evaluate) -> dict:
    """Evaluates the best model on test split `name` (results in `wd.test_dir(workdir, sub)`), or
    reuses them if their inputs match. Returns {"split", "dir", "roc_auc", "pr_auc", "reused",
    "num_tags", "num_excluded" (tags left out of the means: one label value in the split)}."""
    directory = wd.test_dir(workdir, sub)
    best_step = best.latest_step()
    inputs = wd.test_inputs(config, best_step if best_step is not None else step,
                            split.fingerprint, checkpointing.step_digest(best, best_step))
    test = wd.reusable_test_results(directory, inputs)
    reused = test is not None
    if reused:
        progress.say(f"{name} results reused from {directory}: same best model "
                     f"(step {inputs['best_step']}), {name} data and config as when computed")
    else:
        changed = wd.stale_test_inputs(directory, inputs)
        if changed:
            progress.say(f"{name}: evaluated again: {' and '.join(changed)} changed since "
                         f"{directory} was written")
        final = checkpointing.reload_best(best, state)
        test = evaluate(final.variables, split.source, name, name)
        if jax.process_index() == 0:
            from tagger_jax import evaluation

            evaluation.write_report(test, directory, title=f"{config.data.name} {name}")
            wd.write_test_inputs(directory, inputs)
        note = validation.undefined_note(test, name)
        if note:
            progress.say(f"warning: {note}")
    writer.write(step, "test", {"roc_auc": test["roc_auc_mean"], "pr_auc": test["pr_auc_mean"],
                                "excluded_tags": test["excluded_tags"], "reused": reused,
                                **({"test_split": name} if sub is not None else {})})
    return {"split": name, "dir": str(directory), "roc_auc": test["roc_auc_mean"],
            "pr_auc": test["pr_auc_mean"], "reused": reused, "num_tags": test["num_tags"],
            "num_excluded": len(test["excluded_tags"])}


def _baseline(workdir: Path, data: TrainData, results: list[dict], progress: Progress) -> None:
    """Adds "baseline_roc_auc" / "baseline_pr_auc" to each test result: `tagger_jax.baseline`
    fitted on the train split, or its results in WORKDIR/test/baseline.json if they were computed
    from the same train and test data (fingerprints)."""
    import json

    splits = [r["split"] for r in results]
    inputs = {"train": data.baseline_fingerprint,
              "tests": [data.test_fingerprint] + [s.fingerprint for s in data.extra_tests.values()],
              "splits": splits}
    path = wd.test_dir(workdir) / wd.BASELINE_FILE
    try:
        stored = json.loads(path.read_text())
        metrics = stored["metrics"] if stored["inputs"] == inputs and None not in (
            inputs["train"], *inputs["tests"]) else None
    except (OSError, ValueError, KeyError, TypeError):
        metrics = None
    if metrics is not None:
        progress.say(f"baseline results reused from {path}: same train and test data")
    else:
        if path.is_file():
            progress.say(f"baseline fitted again: the train or test data changed since {path} "
                         "was written")
        import warnings

        from tagger_jax.evaluation import UndefinedMetricWarning

        with progress.phase("fitting the baseline (logistic regression on log-mel statistics)"), \
                warnings.catch_warnings():
            # the model's test of the same splits has said which tags are undefined there
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            metrics = data.baseline(splits, progress.batches)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".json.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"inputs": inputs, "metrics": metrics}, indent=1))
        tmp.replace(path)
    constant = [t for t in data.tag_names if any(t in m.get("constant_tags", ())
                                                 for m in metrics.values())]
    if constant:  # as `tagger-jax evaluate --baseline` says it
        from tagger_jax.baseline import constant_warning

        progress.say(constant_warning(constant, len(data.tag_names), "the train split"))
    for r in results:
        r["baseline_roc_auc"] = metrics[r["split"]]["roc_auc_mean"]
        r["baseline_pr_auc"] = metrics[r["split"]]["pr_auc_mean"]


def _finite_or_none(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def _check_finite(pending: list[tuple[int, dict]], workdir: Path, last_saved: int | None
                  ) -> np.ndarray:
    """The window's losses; raises NonFiniteLossError naming the first non-finite step."""
    losses = np.asarray(sharding.to_host([m["loss"] for _, m in pending]), np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise NonFiniteLossError(pending[int(bad[0])][0], workdir, last_saved)
    return losses
