"""Training: optimizers against NumPy references, the authors' plateau schedule, a full tiny run.

The full runs share one compiled model through JAX's persistent compilation cache (a temporary
directory, enabled only while this module runs).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tagger_jax import checkpointing, optimizers, sharding, train_lib  # noqa: E402
from tagger_jax import workdir as wd  # noqa: E402
from train_helpers import NUM_TAGS, TAGS, tiny_config, toy_data, toy_records  # noqa: E402


# When a checkpoint is damaged, orbax abandons the array reads it had started; under pytest their
# coroutines are collected later, on a closed event loop, and reported as up to ~100
# unraisable-exception warnings in whichever test runs then. A plain process resuming from the
# same damage prints only the project's warning line (checked 2026-12-02, orbax-checkpoint
# 0.12.8): orbax-internal noise, filtered in this module only.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. (None|<coroutine object _read_array_index_and_device_put)"
    ":pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """A private persistent compilation cache, so the second full run reuses the first's programs."""
    old = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    yield
    jax.config.update("jax_compilation_cache_dir", old)


# ----------------------------------------------------------------------------------------------
# Optimizers: NumPy float64 references of PyTorch's Adam and SGD (Nesterov, L2 weight decay).

def _numpy_adam(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


def _numpy_sgd_nesterov(p, grads, lr, momentum, wd):
    buf = None
    for g in grads:
        g = g + wd * p
        buf = g if buf is None else momentum * buf + g
        p = p - lr * (g + momentum * buf)
    return p


def test_authors_phases_match_pytorch_formulas():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) for _ in range(4)]
    cfg = {"optimizer": "authors", "learning_rate": 1e-2, "sgd_learning_rates": (1e-1, 1e-2),
           "sgd_momentum": 0.9, "weight_decay": 1e-3, "readout_lr_multiplier": 1.0}
    tx, num_phases = optimizers.make_optimizer(cfg, total_steps=100)
    assert num_phases == 3
    update = jax.jit(lambda g, s, p, phase: tx.update(g, s, p, phase=phase))

    for phase, reference in ((0, lambda p: _numpy_adam(p, grads, 1e-2)),
                             (1, lambda p: _numpy_sgd_nesterov(p, grads, 1e-1, 0.9, 1e-3)),
                             (2, lambda p: _numpy_sgd_nesterov(p, grads, 1e-2, 0.9, 1e-3))):
        params = jnp.asarray(p0, jnp.float32)
        state = tx.init(params)
        for g in grads:
            upd, state = update(jnp.asarray(g, jnp.float32), state, params, jnp.int32(phase))
            params = optax.apply_updates(params, upd)
        np.testing.assert_allclose(np.asarray(params), reference(p0), rtol=1e-5, atol=1e-6)
        # Only the active phase's state moved: the others are still freshly initialised.
        fresh = tx.init(jnp.asarray(p0, jnp.float32))
        for i, (inner, inner_fresh) in enumerate(zip(state.inner, fresh.inner)):
            same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(inner),
                                                             jax.tree.leaves(inner_fresh)))
            assert same == (i != phase), (phase, i)


def test_adamw_schedule_and_decay_mask():
    cfg = {"optimizer": "adamw", "learning_rate": 1e-3, "warmup_steps": 10, "weight_decay": 0.1,
           "readout_lr_multiplier": 1.0}
    schedule = optimizers.adamw_schedule(cfg, total_steps=110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(60)), 1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)),
                               rtol=1e-5)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-12)
    assert optimizers.learning_rate(cfg, 0, 10, 110) == pytest.approx(1e-3)
    # Decoupled weight decay on kernels only: with zero gradients, a bias does not move.
    tx, num_phases = optimizers.make_optimizer(cfg, total_steps=110)
    assert num_phases == 1
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    state = tx.init(params)
    for _ in range(11):
        upd, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params, phase=0)
        params = optax.apply_updates(params, upd)
    assert np.all(np.asarray(params["bias"]) == 1.0)
    assert np.all(np.asarray(params["kernel"]) < 1.0)


def test_readout_lr_multiplier_scales_only_the_readout():
    """`train.readout_lr_multiplier` m: the [CLS] token, pooler and classifier move m times as far
    as with m = 1 (AdamW's update is linear in its learning rate, weight decay included), every
    other parameter exactly as far; m = 1 keeps the optimizer state's structure."""
    cfg = {"optimizer": "adamw", "learning_rate": 1e-3, "warmup_steps": 0, "weight_decay": 0.1,
           "readout_lr_multiplier": 1.0}
    rng = np.random.default_rng(0)
    params = {"embedding": {"cls": jnp.ones((1, 4)), "position_embeddings": jnp.ones((3, 4))},
              "pooler": {"kernel": jnp.ones((4, 4))}, "classifier": {"bias": jnp.ones((2,))},
              "encoder": {"kernel": jnp.ones((4, 4))}}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    moves = {}
    for m in (1.0, 3.0):
        tx, _ = optimizers.make_optimizer(dict(cfg, readout_lr_multiplier=m), total_steps=10)
        state = tx.init(params)
        upd, _ = tx.update(grads, state, params, phase=0)
        moves[m] = upd
    readout = {("embedding", "cls"), ("pooler", "kernel"), ("classifier", "bias")}
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(moves[1.0])[0],
                            jax.tree.leaves(moves[3.0])):
        key = tuple(k.key for k in path)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a) * (3.0 if key in readout else 1.0),
                                   rtol=1e-6, err_msg=str(key))
    plain, _ = optimizers.make_optimizer(dict(cfg), total_steps=10)
    before = optimizers.phased([optax.adamw(optimizers.adamw_schedule(cfg, 10), weight_decay=0.1,
                                            mask=optimizers._decay_mask)])  # without the option
    assert jax.tree.structure(plain.init(params)) == jax.tree.structure(before.init(params))
    with pytest.raises(ValueError, match="readout_lr_multiplier must be > 0"):
        optimizers.make_optimizer(dict(cfg, readout_lr_multiplier=0.0), total_steps=10)


def test_plateau_step_scripted_sequence():
    """Adam -> SGD 1e-3 -> 1e-4 -> 1e-5 -> stop, each after `patience` epochs without a new best."""
    metrics = [0.60, 0.70, 0.69, 0.68, 0.75, 0.74, 0.74, float("nan"), 0.80, 0.79, 0.78, 0.9, 0.8, 0.7]
    phase, best, bad = 0, -math.inf, 0
    trace = []
    for m in metrics:
        d = optimizers.plateau_step(phase, best, bad, m, patience=2, num_phases=4)
        trace.append((d.phase, d.improved, d.switched, d.stop))
        phase, best, bad = d.phase, d.best_metric, d.bad_epochs
        if d.stop:
            break
    assert trace == [
        (0, True, False, False), (0, True, False, False), (0, False, False, False),
        (1, False, True, False),  # two epochs without a new best: SGD 1e-3
        (1, True, False, False), (1, False, False, False),
        (2, False, True, False),  # SGD 1e-4
        (2, False, False, False),  # NaN never improves
        (2, True, False, False), (2, False, False, False),
        (3, False, True, False),  # SGD 1e-5
        (3, True, False, False), (3, False, False, False),
        (4, False, False, True),  # the last phase plateaued: stop
    ]
    assert best == 0.9
    # AdamW (one phase) never switches nor stops.
    d = optimizers.plateau_step(0, 0.9, 5, 0.1, patience=1, num_phases=1)
    assert (d.phase, d.switched, d.stop, d.bad_epochs) == (0, False, False, 6)


def test_end_of_epoch_saves_best_reloads_it_at_switches_and_stops(tmp_path):
    """A scripted metric sequence drives the schedule on a real state and checkpoint manager."""
    mesh = sharding.make_mesh()
    cfg = {"optimizer": "authors", "learning_rate": 1e-3, "sgd_learning_rates": (1e-2, 1e-3, 1e-4),
           "sgd_momentum": 0.9, "weight_decay": 0.0, "readout_lr_multiplier": 1.0}
    tx, num_phases = optimizers.make_optimizer(cfg, total_steps=100)
    params = {"w": jnp.arange(3.0)}
    state = sharding.replicate(train_lib.TrainState(
        step=np.int32(0), params=params, batch_stats={}, opt_state=tx.init(params),
        rng=np.zeros(2, np.uint32)), mesh)
    schedule = optimizers.PlateauState()
    best = checkpointing.manager(tmp_path / "best", 1, ("state",))

    def train_epoch(state, delta):  # stands in for an epoch of training: moves the parameters
        return state.replace(step=state.step + 10, params={"w": state.params["w"] + delta})

    script = [(0.5, 1.0), (0.6, 1.0), (0.55, 1.0), (0.7, 1.0), (0.65, 1.0), (0.64, 1.0),
              (0.63, 1.0), (0.62, 1.0)]
    phases, best_w = [], None
    for metric, delta in script:
        state = train_epoch(state, delta)
        w_before = np.asarray(state.params["w"])
        state, d = train_lib.end_of_epoch(state, schedule, metric, patience=1,
                                          num_phases=num_phases, best_manager=best)
        schedule = d.state
        phases.append(schedule.phase)
        if d.improved:
            best_w = w_before
            assert best.latest_step() == int(state.step)
        if d.switched:  # the best model is back
            np.testing.assert_array_equal(np.asarray(state.params["w"]), best_w)
        else:
            np.testing.assert_array_equal(np.asarray(state.params["w"]), w_before)
        if d.stop:
            break
    assert phases == [0, 0, 1, 1, 2, 3, 4]
    assert schedule.best_metric == 0.7
    assert optimizers.PlateauState.from_json(json.loads(json.dumps(schedule.to_json()))) == schedule
    assert d.stop
    # After a switch the update is SGD's (first Nesterov step: -(1 + m) lr g), not Adam's.
    g = {"w": jnp.ones(3)}
    upd, _ = tx.update(g, state.opt_state, state.params, phase=jnp.int32(1))
    np.testing.assert_allclose(np.asarray(upd["w"]), -1.9e-2 * np.ones(3), rtol=1e-6)
    best.close()


# ----------------------------------------------------------------------------------------------
# Full runs of train_and_evaluate on a tiny model and in-memory data.

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config()
    data = toy_data(config)
    data.untrained_tags = (TAGS[1],)  # as an audio_folder build records a tag without train clips
    summary = train_lib.train_and_evaluate(config, workdir, data)
    return config, workdir, summary


def _lines(workdir, split):
    return [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if r["split"] == split]


def test_run_writes_checkpoints_metrics_export_and_learns(finished_run):
    config, workdir, summary = finished_run
    steps = 3 * 4  # 3 epochs of 32 clips at batch 8
    assert summary["step"] == steps and not summary["preempted"]
    stored = train_lib.config_to_dict(config)  # data.data_dir ("~/tensorflow_datasets") absolute
    stored["data"]["data_dir"] = str(Path.home() / "tensorflow_datasets")
    assert json.loads((workdir / "config.json").read_text()) == stored
    train = _lines(workdir, "train")
    assert [r["step"] for r in train] == list(range(1, steps + 1))  # log_every_steps = 1
    # The first step compiles: its window has no training rate; every other window has one.
    assert "clips_per_second" not in train[0]
    assert all(r["clips_per_second"] > 0 for r in train[1:])
    assert np.mean([r["loss"] for r in train[-4:]]) < np.mean([r["loss"] for r in train[:4]])
    val = _lines(workdir, "validation")
    assert [r["step"] for r in val] == [4, 8, 12]
    assert summary["best_validation_roc_auc"] == max(r["roc_auc"] for r in val)
    # The labels are learnable: far above chance after 12 steps.
    assert summary["test_roc_auc"] > 0.7
    assert json.loads((workdir / "test" / "metrics.json").read_text())["roc_auc_mean"] == \
        pytest.approx(summary["test_roc_auc"])
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    # Latest checkpoints (keep 2) and the best one; no temporary directories left.
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [9, 12]
    best_step = 4 * (1 + [r["roc_auc"] for r in val].index(summary["best_validation_roc_auc"]))
    assert [int(p.name) for p in (workdir / "best").iterdir()] == [best_step]
    # The export is the best checkpoint's model, with its tags, loadable for inference.
    from tagger_jax.checkpoint import load_model

    loaded = load_model(workdir)
    assert loaded.tags == TAGS and loaded.untrained_tags == (TAGS[1],)
    restored = train_lib.read_checkpoint(workdir / "best", best_step)
    for a, b in zip(jax.tree.leaves(loaded.variables["params"]),
                    jax.tree.leaves(restored["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_changed_config_is_refused(finished_run):
    config, workdir, _ = finished_run
    changed = tiny_config(learning_rate=1e-2)
    with pytest.raises(train_lib.ConfigMismatchError, match=r"train\.learning_rate: 0\.003"):
        train_lib.train_and_evaluate(changed, workdir, toy_data(changed))
    # Fields that only change how a run is executed may differ.
    saved = train_lib.config_to_dict(config)
    runtime = tiny_config(log_every_steps=100, keep_checkpoints=5)
    runtime.data.num_workers = 4
    assert train_lib.config_differences(saved, train_lib.config_to_dict(runtime)) == []


class _NaNAt:
    """Wraps TrainData.train: the batch of step `step` (1-based) carries a NaN."""

    def __init__(self, loader, step):
        self.loader, self.step = loader, step

    def __iter__(self):
        it = iter(self.loader)
        outer = self

        class It:
            count = 0

            def __next__(self):
                batch = dict(next(it))
                It.count += 1
                if It.count == outer.step:
                    batch["x"] = batch["x"].copy()
                    batch["x"][0, 0, 0] = np.nan
                return batch

            def get_state(self):
                return it.get_state()

            def set_state(self, s):
                it.set_state(s)

            def close(self):
                pass

        return It()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, finished_run, caplog):
    del finished_run  # only for its compiled programs in the cache
    config = tiny_config()
    data = toy_data(config)
    data.train = _NaNAt(data.train, step=6)
    with pytest.raises(train_lib.NonFiniteLossError, match=r"non-finite training loss at step 6") as e:
        train_lib.train_and_evaluate(config, tmp_path, data)
    assert e.value.step == 6
    assert "last good checkpoint (step 4)" in str(e.value)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert steps == [3, 4]  # every 3 steps and at the epoch end; nothing after the NaN
    caplog.clear()
    restored = train_lib.read_checkpoint(tmp_path / "checkpoints", 4)
    # the items it does not read on purpose (meta, data) are not warned about
    assert not [r for r in caplog.records if "could not be restored" in r.getMessage()]
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored["params"]))
    assert all(r["step"] < 6 for r in _lines(tmp_path, "train"))


class _SigtermOnFirstRead:
    """A test split that sends this process SIGTERM when the evaluation first reads it."""

    def __init__(self, records):
        self.records, self.sent = records, False

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return self.records[i]


class _SigtermSwallowed(_SigtermOnFirstRead):
    """As `_SigtermOnFirstRead`, but the handler's exception is dropped where it surfaces, as
    JAX's garbage-collection callback drops it (printed as "Exception ignored in ...")."""

    def __getitem__(self, i):
        from tagger_jax.preemption import Preempted

        try:
            return super().__getitem__(i)
        except Preempted:
            return self.records[i]


class _SigtermOnIter:
    def __init__(self, train):
        self.train = train

    def __iter__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return iter(self.train)


def test_sigterm_outside_the_training_loop_stops_at_once_and_loses_nothing(tmp_path, finished_run):
    """Before the loop (loading, restoring) and after it (testing) a SIGTERM ends the run with
    `Preempted` naming the phase (it used to kill the process silently before the loop, and be
    ignored while testing); the handler is restored and a rerun finishes the tests."""
    import shutil

    from tagger_jax.preemption import Preempted

    config, done, summary = finished_run
    before = signal.getsignal(signal.SIGTERM)
    data = toy_data(config)
    data.train = _SigtermOnIter(data.train)
    with pytest.raises(Preempted, match="before the first step"):
        train_lib.train_and_evaluate(config, tmp_path / "fresh", data)
    assert signal.getsignal(signal.SIGTERM) == before
    assert not (tmp_path / "fresh" / "checkpoints").exists() or not any(
        (tmp_path / "fresh" / "checkpoints").iterdir())

    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    shutil.rmtree(workdir / "test")  # the finished run's test results: to be computed again
    data = toy_data(config)
    data.test_source = _SigtermOnFirstRead(data.test_source)
    with pytest.raises(Preempted, match=r"after training \(step 12 saved\), before the tests"):
        train_lib.train_and_evaluate(config, workdir, data)
    assert signal.getsignal(signal.SIGTERM) == before
    assert not (workdir / "test" / "metrics.json").exists()
    data = toy_data(config)  # the exception lost on its way: the run still stops after the split
    data.test_source = _SigtermSwallowed(data.test_source)
    with pytest.raises(Preempted, match=r"after training \(step 12 saved\), before the tests"):
        train_lib.train_and_evaluate(config, workdir, data)
    assert data.test_source.sent and signal.getsignal(signal.SIGTERM) == before
    again = train_lib.train_and_evaluate(config, workdir, toy_data(config))
    assert not again["preempted"] and again["test_roc_auc"] == summary["test_roc_auc"]


# ----------------------------------------------------------------------------------------------
# Corrupt checkpoints: restore falls back to the newest one that reads (issue 10, item 1).

def _corrupt(step_dir, kind):
    """Damages one file of a checkpoint as a crash, a full disk or bit rot would."""
    if kind == "array":  # the largest array data file, truncated to half
        files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
        path = max(files, key=lambda p: p.stat().st_size)
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == "metadata":
        path = step_dir / "state" / "_METADATA"
        path.write_text(path.read_text()[:100])
    else:  # the data iterator's JSON
        path = step_dir / "data" / "process_0-of-1.json"
        path.write_text(path.read_text()[:10])
    return path


@pytest.mark.parametrize("kind", ["array", "metadata", "data"])
def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, finished_run, capsys, kind):
    import shutil

    config, done, _ = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    damaged = _corrupt(workdir / "checkpoints" / "12", kind)
    capsys.readouterr()
    summary = train_lib.train_and_evaluate(config, workdir, toy_data(config))
    out = capsys.readouterr().out
    # Warned, naming the broken checkpoint; resumed from step 9 and trained to 12 again.
    assert f"checkpoint {workdir / 'checkpoints' / '12'} is unreadable" in out, out
    if kind != "array":  # JSON damage is named by file; tensorstore names the checkpoint
        assert str(damaged) in out, out
    assert "resuming from step 9" in out
    assert summary["step"] == 12
    assert [p.name.split("-")[0] for p in (workdir / "checkpoints.broken").iterdir()] == ["12"]
    # The replayed steps are bit-identical to the uninterrupted run's.
    ref = train_lib.read_checkpoint(done / "checkpoints", 12)
    got = train_lib.read_checkpoint(workdir / "checkpoints", 12)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_damaged_checkpoint_metadata_file_is_one_warning_line_not_its_contents(tmp_path,
                                                                                 capfd):
    """From a new user's trial: opening a checkpoint folder whose step metadata was damaged
    printed orbax's ERROR record with the file's whole content, twice, before the one-line
    error; it is one `warning:` line naming the file now."""
    from tagger_jax import checkpointing

    path = tmp_path / "best" / "5" / "_CHECKPOINT_METADATA"
    path.parent.mkdir(parents=True)
    path.write_text("{garbage\n" + "x" * 5000)
    checkpointing.manager(tmp_path / "best", 1, ("state",)).close()
    out, err = capfd.readouterr()
    assert err == f"warning: {path}: not valid JSON (a damaged checkpoint)\n" and out == ""


def test_no_readable_checkpoint_is_one_line_naming_the_file(tmp_path, finished_run):
    import shutil

    config, done, _ = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    _corrupt(workdir / "checkpoints" / "9", "array")
    damaged = _corrupt(workdir / "checkpoints" / "12", "metadata")
    with pytest.raises(train_lib.CorruptCheckpointError) as e:
        train_lib.train_and_evaluate(config, workdir, toy_data(config))
    message = str(e.value)
    assert "\n" not in message and str(damaged) in message and "not valid JSON" in message
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["12", "9"]  # untouched


def test_an_unreadable_best_checkpoint_says_what_moving_it_aside_does(tmp_path, finished_run,
                                                                      capsys):
    """One line naming the file and both ways on; after `best/` is moved aside the rerun says
    the best checkpoint is missing (it said no validation ROC-AUC was defined, untrue) and
    exports the last model in its place, as the line said it would. A workdir whose
    checkpoints were deleted says that training starts again."""
    import shutil

    config, done, _ = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    [step_dir] = list((workdir / "best").iterdir())
    _corrupt(step_dir, "metadata")
    with pytest.raises(train_lib.CorruptCheckpointError) as e:
        train_lib.train_and_evaluate(config, workdir, toy_data(config))
    message = str(e.value)
    assert "\n" not in message and str(step_dir) in message
    assert "move best/ aside to go on without it" in message and "replacing best_model/" in message
    shutil.move(workdir / "best", tmp_path / "best.aside")
    capsys.readouterr()
    train_lib.train_and_evaluate(config, workdir, toy_data(config))
    out = capsys.readouterr().out
    assert "warning: the best checkpoint (validation ROC-AUC " in out
    assert f"is missing from {workdir}/best/: the last model (step 12) is exported" in out
    shutil.rmtree(workdir / "checkpoints")  # and with no checkpoint at all: said, not silent
    train_lib.train_and_evaluate(config, workdir, toy_data(config))
    assert f"warning: {workdir} has no checkpoint in checkpoints/ but holds an earlier run's " \
           "results: training starts again from step 0" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Reruns reuse test results whose inputs did not change (issue 10, item 12).

def test_ctrl_c_in_the_loop_says_which_steps_the_next_run_trains_again(tmp_path, finished_run,
                                                                      monkeypatch, capsys):
    """From a new user's trial: Ctrl-C stops a training at once (SIGTERM saves first), and its
    line said only "finished results are kept"; the steps since the last checkpoint were lost
    without a word. The line names the step, the checkpoint and what a rerun trains again."""
    from tagger_jax import errors
    from tagger_jax.progress import Progress

    config, _, summary = finished_run
    update, calls = Progress.update, []

    def interrupted_at_the_fifth(self, clips, **postfix):
        calls.append(clips)
        if len(calls) == 5:  # in step 6 (step 1 compiles): 5 steps counted, 4 saved (an epoch)
            raise KeyboardInterrupt
        return update(self, clips, **postfix)

    monkeypatch.setattr(Progress, "update", interrupted_at_the_fifth)
    workdir = tmp_path / "w"
    with pytest.raises(KeyboardInterrupt) as info:
        train_lib.train_and_evaluate(config, workdir, toy_data(config))
    assert errors.report(info.value) == errors.INTERRUPTED
    assert capsys.readouterr().err == (
        f"tagger-jax: interrupted; stopped at step 5; the last checkpoint is step 4 in "
        f"{workdir}: running the same command resumes from there, training step 5 again "
        "(SIGTERM saves a checkpoint before stopping)\n")
    monkeypatch.setattr(Progress, "update", update)
    again = train_lib.train_and_evaluate(config, workdir, toy_data(config))
    assert again["step"] == summary["step"]


@pytest.mark.parametrize("made_again", [False, True])
def test_a_workdir_deleted_during_training_stops_it_with_one_line(tmp_path, finished_run,
                                                                  monkeypatch, capsys,
                                                                  made_again):
    """From a new user's trial: a training whose workdir was deleted went on, and stopped at its
    next metrics line with an unexpected error (status 70), or, where the next checkpoint had
    made the folder again (`made_again`), ended with status 0 having lost its config, metrics
    and earlier checkpoints without a word. It stops at the next logged step, status 4."""
    import shutil

    from tagger_jax import errors
    from tagger_jax.progress import Progress

    config, _, _ = finished_run
    workdir = tmp_path / "w"
    update, calls = Progress.update, []

    def deleted_at_the_fifth(self, clips, **postfix):
        calls.append(clips)
        if len(calls) == 5:  # in step 6 (step 1 compiles)
            shutil.rmtree(workdir)
            if made_again:
                (workdir / "checkpoints").mkdir(parents=True)
        return update(self, clips, **postfix)

    monkeypatch.setattr(Progress, "update", deleted_at_the_fifth)
    with pytest.raises(wd.WorkdirGoneError) as info:
        train_lib.train_and_evaluate(config, workdir, toy_data(config))
    capsys.readouterr()
    assert errors.report(info.value) == errors.OUTPUT
    assert capsys.readouterr().err == (
        f"error: {workdir}: the workdir was deleted or moved while this training ran (its "
        "config.json is gone; noticed at step 6), and its checkpoints and metrics with it: "
        "training stops rather than go on without them. Run the same command to start again "
        "there, or resume a moved workdir from its new place (--workdir)\n")


def test_a_workdir_deleted_just_before_a_metrics_line_is_said_as_such(tmp_path, finished_run,
                                                                      monkeypatch):
    """A verifying user deleted the workdir while the step's check waited for the device: the
    metrics write then failed as an unexpected error (status 70). It is the same one line."""
    import shutil

    from tagger_jax.metric_writer import MetricWriter

    config, _, _ = finished_run
    workdir = tmp_path / "w"
    write, calls = MetricWriter.write, []

    def deleted_first(self, step, split, scalars):
        calls.append(step)
        if len(calls) == 3:
            shutil.rmtree(workdir)
        return write(self, step, split, scalars)

    monkeypatch.setattr(MetricWriter, "write", deleted_first)
    with pytest.raises(wd.WorkdirGoneError, match="the workdir was deleted or moved while this "
                       f"training ran .*noticed at step {3}"):
        train_lib.train_and_evaluate(config, workdir, toy_data(config))


@pytest.mark.parametrize("where", ["checkpoints", "best"])
def test_ctrl_c_inside_a_restore_is_an_interrupt_not_a_broken_checkpoint(tmp_path, finished_run,
                                                                         monkeypatch, where):
    """orbax catches a KeyboardInterrupt inside its restore and raises its own error from it.
    Ctrl-C while the best checkpoint was read said it was unreadable (found by interrupting at
    random moments); while the latest was read on resume, it would have been moved aside as
    broken. Now the interrupt goes on up and nothing is moved."""
    import shutil

    import orbax.checkpoint as ocp

    from tagger_jax import errors

    config, done, _ = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    restore = ocp.CheckpointManager.restore

    def interrupted(self, *args, **kwargs):
        if Path(self.directory).name == where:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as e:
                raise RuntimeError("asyncio task failed") from e  # as orbax's event loop does
        return restore(self, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", interrupted)
    before = sorted(p.name for p in (workdir / where).iterdir())
    with pytest.raises(KeyboardInterrupt):
        train_lib.train_and_evaluate(config, workdir, toy_data(config))
    assert sorted(p.name for p in (workdir / where).iterdir()) == before
    assert not (workdir / f"{where}.broken").exists()
    with pytest.raises(errors.Terminated):  # SIGTERM's exception too, two causes deep
        errors.raise_if_interrupted(_wrapped(_wrapped(errors.Terminated())))
    errors.raise_if_interrupted(_wrapped(ValueError("a plain failure")))  # returns


def _wrapped(inner: BaseException) -> Exception:
    try:
        raise inner
    except BaseException as e:
        try:
            raise OSError("outer") from e
        except OSError as outer:
            return outer


def test_rerun_reuses_test_results_and_says_so(tmp_path, finished_run, capsys):
    import shutil

    config, done, summary = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)

    def rerun(fingerprint):
        data = toy_data(config)
        data.test_fingerprint = fingerprint
        capsys.readouterr()
        result = train_lib.train_and_evaluate(config, workdir, data)
        return result, capsys.readouterr().out

    first, out = rerun("split-v1")  # no record of the inputs yet: evaluated
    assert not first["test_reused"] and "training already complete at step 12" in out
    report = (workdir / "test" / "metrics.json").stat().st_mtime_ns
    second, out = rerun("split-v1")
    assert second["test_reused"] and "test results reused" in out, out
    assert second["test_roc_auc"] == first["test_roc_auc"] == summary["test_roc_auc"]
    assert (workdir / "test" / "metrics.json").stat().st_mtime_ns == report
    assert len(_lines(workdir, "test")) == 1  # logged once, as reused
    third, _ = rerun("split-v2")  # the test data changed: evaluated again
    assert not third["test_reused"]


def test_test_results_are_not_reused_for_other_weights_at_the_same_best_step(tmp_path,
                                                                            finished_run,
                                                                            capsys):
    """From a new user's trial: a run trained again from scratch in the same workdir (its
    checkpoints/ removed) reached the same best step with other weights, and its test results
    were "reused ... same best model (step 64)". They are keyed on the best checkpoint's files
    too; a copied workdir (same files) still reuses them."""
    import shutil

    config, done, _ = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)

    def run(seed):
        data = toy_data(config, seed=seed)
        data.test_fingerprint = "split-v1"
        capsys.readouterr()
        result = train_lib.train_and_evaluate(config, workdir, data)
        return result, capsys.readouterr().out

    run(0)  # records the test inputs (the finished run had no fingerprint)
    second, out = run(0)
    assert second["test_reused"], out
    def best_files():
        return {p.relative_to(workdir / "best"): p.read_bytes()
                for p in (workdir / "best").rglob("*") if p.is_file()}

    before = best_files()
    shutil.rmtree(workdir / "checkpoints")
    third, out = run(5)  # other training data, same config: other weights
    assert not third["test_reused"]
    assert "the best model's weights" in out and "changed since" in out, out
    # The earlier run's best checkpoint went at the start: a new best at its step is written
    # (a best step that exists is not saved again, which kept the old weights in best/).
    assert "replaced as it goes (its best checkpoint now)" in out
    assert best_files() != before


def test_resuming_with_another_process_count_says_so_and_moves_nothing(tmp_path, finished_run):
    """From a new user's trial: a run of 2 processes resumed by 1 said no checkpoint could be
    read and to move them aside (losing the progress). It is a config error naming the count
    the checkpoint needs; nothing is moved."""
    import shutil

    from tagger_jax import errors

    config, done, _ = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    for step_dir in (workdir / "checkpoints").iterdir():
        data = step_dir / "data"
        (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
        shutil.copy(data / "process_0-of-2.json", data / "process_1-of-2.json")
    with pytest.raises(errors.ConfigError) as info:
        train_lib.train_and_evaluate(config, workdir, toy_data(config))
    assert str(info.value) == (
        f"{workdir / 'checkpoints' / '12'} was written by a run of 2 processes "
        "(process_0-of-2.json, process_1-of-2.json) and this run has 1: resume it with 2 "
        "processes (each keeps its own place in the data); the number of devices may change")
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["12", "9"]
    assert not (workdir / "checkpoints.broken").exists()


def test_resuming_on_other_training_data_is_refused(tmp_path, finished_run):
    """From a new user's trial: a killed run resumed with `data.data_dir` pointing at a rebuild
    of 80 clips instead of 64 went on without a word (step 50 meant another epoch; 120 steps
    instead of 96). A checkpoint records its train split (`split_identity`: what it holds, not
    where); other data is a config error, the same data elsewhere resumes."""
    import shutil

    from tagger_jax import errors

    config, done, summary = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    then = {"dataset": "synthetic_tags/tiny 1.0.0", "records": 64, "bytes": 1000}
    for step_dir in (workdir / "checkpoints").iterdir():  # as a run on built data writes it
        path = step_dir / "meta" / "metadata"
        meta = json.loads(path.read_text())
        path.write_text(json.dumps({**meta, "train_data": then}))
    data = toy_data(config)
    data.train_identity = {**then, "records": 80, "bytes": 1250}
    with pytest.raises(errors.ConfigError) as info:
        train_lib.train_and_evaluate(config, workdir, data)
    assert str(info.value) == (
        f"{workdir / 'checkpoints'}/12 was trained on other data: train split then "
        "synthetic_tags/tiny 1.0.0, 64 records, 1,000 bytes, now synthetic_tags/tiny 1.0.0, 80 "
        "records, 1,250 bytes; resume on the data it was trained on (data.data_dir), or start in "
        f"a new --workdir (from this run's model: train.init_from={workdir})")
    data = toy_data(config)
    data.train_identity = dict(then)  # a checkpoint without tags (before they were recorded)
    assert train_lib.train_and_evaluate(config, workdir, data)["step"] == summary["step"]
    # A trial's CSV edit moved a tag: same records and bytes, another tag order. The finished
    # run's rerun exported its weights under the new names ("piano" scored the harp).
    tags = list(data.tag_names)
    for step_dir in (workdir / "checkpoints").iterdir():
        path = step_dir / "meta" / "metadata"
        meta = json.loads(path.read_text())
        path.write_text(json.dumps({**meta, "train_data": {**then, "tags": tags}}))
    model = (workdir / "best_model" / "tagger.json").read_bytes()
    data = toy_data(config)
    data.train_identity = {**then, "tags": tags[1:] + tags[:1]}
    with pytest.raises(errors.ConfigError, match="was trained on other data: train split then "
                       r".*, tags 'tag0', .*, now .*, tags 'tag1', .*; resume on the data"):
        train_lib.train_and_evaluate(config, workdir, data)
    assert (workdir / "best_model" / "tagger.json").read_bytes() == model
    data = toy_data(config)
    data.train_identity = {**then, "tags": tags}
    assert train_lib.train_and_evaluate(config, workdir, data)["step"] == summary["step"]


def test_lower_keep_checkpoints_on_a_rerun_deletes_the_oldest_and_says_so(tmp_path,
                                                                          finished_run, capsys):
    """The checkpoint manager prunes only when it saves: a finished run rerun with a lower
    train.keep_checkpoints (to free disk) kept every checkpoint. Now the oldest go at once."""
    import shutil

    config, done, _ = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert steps == [9, 12]  # keep_checkpoints 2 (every 3 steps, 12 in all)
    fewer = tiny_config(keep_checkpoints=1)
    capsys.readouterr()
    result = train_lib.train_and_evaluate(fewer, workdir, toy_data(fewer))
    out = capsys.readouterr().out
    assert f"{workdir}: deleted checkpoint 9: train.keep_checkpoints is 1" in out
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["12"]
    assert result["step"] == 12
    capsys.readouterr()
    train_lib.train_and_evaluate(fewer, workdir, toy_data(fewer))  # nothing more to delete
    assert "deleted checkpoint" not in capsys.readouterr().out


def test_a_resume_on_another_device_count_says_it_is_not_bit_identical(tmp_path, finished_run,
                                                                        capsys):
    """From a new user's trial: a run resumed on 4 devices instead of 2 ended 7e-4 away from
    the run that stayed (documented, but said nowhere). A checkpoint records its device count;
    a resume on another says so in a note; on the same count, or from a checkpoint without the
    record, nothing is said."""
    import shutil

    config, done, summary = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    metas = [d / "meta" / "metadata" for d in (workdir / "checkpoints").iterdir()]
    assert {json.loads(m.read_text())["device_count"] for m in metas} == {jax.device_count()}
    capsys.readouterr()
    assert train_lib.train_and_evaluate(config, workdir, toy_data(config))["step"] == \
        summary["step"]
    assert "bit-identical" not in capsys.readouterr().out
    for m in metas:
        m.write_text(json.dumps({**json.loads(m.read_text()), "device_count": 99}))
    train_lib.train_and_evaluate(config, workdir, toy_data(config))
    out = capsys.readouterr().out
    assert (f"note: {workdir / 'checkpoints'}/12 was written on 99 device(s) and this run has "
            f"{jax.device_count()}: it resumes, but float32 sums") in out, out


def test_extra_test_splits_and_baseline_are_reported_and_reused(tmp_path, finished_run, capsys):
    """data.extra_test_splits are tested into WORKDIR/test/<split>/; train.test_baseline scores
    the baseline fitted on the train split beside each; both are reused on a rerun with the same
    data and recomputed when a fingerprint changes."""
    import shutil

    from tagger_jax import baseline
    from tagger_jax.train_data import TestSplit

    config, done, summary = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    train_records = toy_records(32, 0)
    other = toy_records(8, 7)
    sources = {"test": toy_records(8, 1), "test_other": other}
    calls = []

    def rerun(other_fingerprint, train_fingerprint="train-v1"):
        data = toy_data(config)
        data.test_fingerprint = "split-v1"
        data.extra_tests = {"test_other": TestSplit(other, other_fingerprint)}

        def fit_and_score(names, bars):  # TrainData.baseline: (splits, progress bars)
            calls.append(tuple(names))
            return baseline.evaluate(train_records, {n: sources[n] for n in names}, TAGS, bars)

        data.baseline, data.baseline_fingerprint = fit_and_score, train_fingerprint
        capsys.readouterr()
        return train_lib.train_and_evaluate(config, workdir, data), capsys.readouterr().out

    first, out = rerun("other-v1")
    assert [t["split"] for t in first["tests"]] == ["test", "test_other"]
    assert calls == [("test", "test_other")]
    stored = json.loads((workdir / "test" / "test_other" / "metrics.json").read_text())
    assert stored["roc_auc_mean"] == pytest.approx(first["tests"][1]["roc_auc"])
    expected = baseline.evaluate(train_records, {"test_other": other}, TAGS)["test_other"]
    assert first["tests"][1]["baseline_roc_auc"] == pytest.approx(expected["roc_auc_mean"])
    assert 0.5 < first["tests"][0]["baseline_roc_auc"] <= 1.0  # learnable toy data
    assert (workdir / "test" / "baseline.json").is_file()
    second, out = rerun("other-v1")
    assert all(t["reused"] for t in second["tests"]) and calls == [("test", "test_other")]
    assert "test_other results reused" in out and "baseline results reused" in out, out
    assert second["tests"][1]["baseline_roc_auc"] == first["tests"][1]["baseline_roc_auc"]
    third, out = rerun("other-v2")  # the extra split changed: it and the baseline are recomputed
    assert third["tests"][0]["reused"] and not third["tests"][1]["reused"]
    assert "test_other: evaluated again: the data (its directory, or its files' names, sizes or " \
           "times) changed since" in out, out
    assert "baseline fitted again" in out
    assert len(calls) == 2
    assert "warning: baseline" not in out  # every tag has both label values in train
    # A tag without a positive train clip: said, as `evaluate --baseline` says it (it said
    # nothing here before; from a new user's trial), and recorded in baseline.json.
    for r in train_records:
        r["tags"] = r["tags"].copy()
        r["tags"][1] = 0
    fourth, out = rerun("other-v2", "train-v2")
    assert (f"warning: baseline: 1 of {len(TAGS)} tags have no positive or no negative clip in "
            f"the train split ({TAGS[1]}): it predicts a constant") in out, out
    stored = json.loads((workdir / "test" / "baseline.json").read_text())["metrics"]
    assert stored["test_other"]["constant_tags"] == [TAGS[1]]


# ----------------------------------------------------------------------------------------------
# Splits where a tag has only positive or only negative clips (issue 10, item 6).

def _eval_records_without(records, tags_to_zero):
    out = []
    for r in records:
        r = dict(r, tags=r["tags"].copy())
        r["tags"][list(tags_to_zero)] = 0
        out.append(r)
    return out


def _data_with_eval(config, records):
    data = toy_data(config)
    data.eval_source = data.test_source = records
    return data


def test_selection_metric_and_undefined_tags():
    from tagger_jax import evaluation, validation

    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]])
    probs = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.6], [0.7, 0.2, 0.4]])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluation.tag_metrics(probs, labels, ["a", "b", "c"])
        none = evaluation.tag_metrics(probs[:, 1:], labels[:, 1:], ["b", "c"])
    assert validation.selection_metric(result) == 1.0  # only tag a is defined
    assert "2 of 3 tags (b, c)" in validation.undefined_note(result, "validation")
    assert math.isnan(validation.selection_metric(none))
    assert "no tag has both" in validation.undefined_note(none, "validation")
    assert validation.undefined_note(evaluation.tag_metrics(probs[:, :1], labels[:, :1], ["a"]),
                                     "x") == ""
    # An undefined mean never becomes the best, nor does it count as a new best later.
    d = optimizers.plateau_step(0, -math.inf, 0, math.nan, patience=5, num_phases=1)
    assert not d.improved and d.best_metric == -math.inf


def test_tag_without_positives_in_validation_does_not_crash(tmp_path, finished_run, capsys):
    del finished_run  # only for its compiled programs in the cache
    from train_helpers import toy_records

    config = tiny_config()
    records = _eval_records_without(toy_records(8, 1), [2])  # tag2: no positive clip
    capsys.readouterr()
    summary = train_lib.train_and_evaluate(config, tmp_path, _data_with_eval(config, records))
    out = capsys.readouterr().out
    assert "1 of 4 tags (tag2)" in out
    val = _lines(tmp_path, "validation")
    assert all(r["excluded_tags"] == ["tag2"] and r["roc_auc"] is not None for r in val)
    assert summary["best_validation_roc_auc"] == max(r["roc_auc"] for r in val)


def test_undefined_validation_mean_still_exports_and_tests(tmp_path, finished_run, capsys):
    del finished_run
    from tagger_jax.checkpoint import load_model
    from train_helpers import toy_records

    config = tiny_config()
    records = _eval_records_without(toy_records(8, 1), range(NUM_TAGS))  # no positives at all
    capsys.readouterr()
    summary = train_lib.train_and_evaluate(config, tmp_path, _data_with_eval(config, records))
    out = capsys.readouterr().out
    assert summary["step"] == 12 and summary["best_validation_roc_auc"] is None
    assert summary["test_roc_auc"] is None
    assert "no validation ROC-AUC was defined" in out and "the last model (step 12)" in out
    assert all(r["roc_auc"] is None for r in _lines(tmp_path, "validation"))
    # The exported model is the last one.
    last = train_lib.read_checkpoint(tmp_path / "checkpoints", 12)
    for a, b in zip(jax.tree.leaves(load_model(tmp_path).variables["params"]),
                    jax.tree.leaves(last["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_frame_loss_adds_the_weighted_frame_cross_entropy():
    """With model.frame_head and train.frame_loss_weight w, the step's loss is the tag BCE plus
    w x the frame BCE (float64 NumPy from the model's own outputs on the batch), the head is
    trained, and each field without the other is refused. (Three compilations: about a minute
    on 2 idle cores.)"""
    from tagger_jax.models import build_model
    from tagger_jax.train_state import init_train_state, make_train_step

    config = tiny_config()
    config.model.update(frame_head=True, attention_dropout=0.0, hidden_dropout=0.0,
                        classifier_dropout=0.0)
    config.features.chunk_frames = 32
    config.train.frame_loss_weight = 0.5
    assert train_lib.frame_loss_weight(config) == 0.5
    model = build_model(config.model, NUM_TAGS)
    mesh = sharding.make_mesh()
    tx = optax.sgd(1.0)
    state = init_train_state(model, tx, (96, 32), seed=0, prng_impl="threefry2x32", mesh=mesh)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(-40, 5, (8, 96, 32)).astype(np.float32),
             "y": (rng.random((8, NUM_TAGS)) < 0.5).astype(np.float32),
             "frames": (rng.random((8, 32, NUM_TAGS)) < 0.3).astype(np.float32)}
    def outputs(params, x):
        return model.apply({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                           return_frame_logits=True, mutable=["batch_stats"])[0]

    logits, frame_logits = jax.jit(outputs)(state.params, batch["x"])

    def bce(z, y):
        z = np.asarray(z, np.float64)
        return np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))

    step = make_train_step(model, tx, prng_impl="threefry2x32", mesh=mesh, donate=False,
                           frame_loss_weight=0.5)
    new_state, metrics = step(state, sharding.shard_batch(batch, mesh))
    np.testing.assert_allclose(float(metrics["frame_loss"]),
                               bce(frame_logits, batch["frames"]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), bce(logits, batch["y"])
                               + 0.5 * bce(frame_logits, batch["frames"]), rtol=1e-5)
    head, new_head = (st.params["frame_classifier"]["kernel"] for st in (state, new_state))
    assert float(jnp.abs(new_head - head).max()) > 0  # the head is trained (SGD, learning rate 1)
    config.train.frame_loss_weight = 0.0
    with pytest.raises(ValueError, match="frame_head=True needs train.frame_loss_weight > 0"):
        train_lib.frame_loss_weight(config)
    config.model.frame_head, config.train.frame_loss_weight = False, 1.0
    with pytest.raises(ValueError) as info:  # said "> 0" for it (a new user's trial)
        train_lib.frame_loss_weight(config)
    assert str(info.value) == ("train.frame_loss_weight=1 needs model.frame_head=True; without a "
                               "frame head set train.frame_loss_weight=0")
    config.model.frame_head, config.model.architecture = True, "pons_pons"
    with pytest.raises(ValueError, match="pons_pons has no frame head"):
        train_lib.frame_loss_weight(config)


def test_init_from_starts_from_a_trained_model(tmp_path, finished_run, capsys):
    """`train.init_from`: a new run (other tags in another order, one new) starts from the
    trained model's weights, the classifier's columns by tag name; a resume does not read it
    again; no model, or one that read other log-mels, is one ConfigError line."""
    from tagger_jax import checkpoint
    from tagger_jax.errors import ConfigError
    from tagger_jax.models import build_model, input_shape

    _, done, _ = finished_run
    trained = checkpoint.load_model(done)
    tags = ("tag2", "new", "tag0")
    config = tiny_config(init_from=str(done), seed=1)
    model = build_model(config.model, num_tags=len(tags))
    tx, _ = optimizers.make_optimizer(config.train, total_steps=10)
    state = train_lib.init_train_state(model, tx, input_shape(config.model,
                                                              config.features.chunk_frames),
                                       seed=1, prng_impl=config.train.prng_impl,
                                       mesh=sharding.make_mesh())
    said = []
    started = train_lib.start_from_model(state, config, tags, said.append)
    n = len(jax.tree.leaves(state.params)) + len(jax.tree.leaves(state.batch_stats))
    assert said == [f"train.init_from {done}: {n} of this model's {n} weight arrays start from "
                    "it (2 of them tag outputs, copied by tag name: 2 tag(s) shared); new tags "
                    "(init): new"]
    got, old, init = (sharding.to_host(v) for v in (started.params, trained.variables["params"],
                                                     state.params))
    flat = lambda tree: dict(jax.tree_util.tree_leaves_with_path(tree))  # noqa: E731
    for path, value in flat(got).items():
        if "classifier" not in jax.tree_util.keystr(path):
            np.testing.assert_array_equal(value, flat(old)[path])
    for leaf in ("kernel", "bias"):
        c, o, i = (t["classifier"][leaf] for t in (got, old, init))
        np.testing.assert_array_equal(c[..., [0, 2]], o[..., [2, 0]])
        np.testing.assert_array_equal(c[..., 1], i[..., 1])
    np.testing.assert_array_equal(
        jax.tree.leaves(sharding.to_host(started.batch_stats))[0],
        jax.tree.leaves(sharding.to_host(trained.variables["batch_stats"]))[0])
    # Wired into a run: said at step 0, not on the resume that finds the run complete.
    config = tiny_config(init_from=str(done), num_epochs=1)
    train_lib.train_and_evaluate(config, tmp_path / "w", toy_data(config))
    assert f"train.init_from {done}: " in capsys.readouterr().out
    train_lib.train_and_evaluate(config, tmp_path / "w", toy_data(config))
    assert "train.init_from" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match=rf"^train.init_from: {tmp_path / 'nope'}: no such "):
        train_lib.start_from_model(state, tiny_config(init_from=str(tmp_path / "nope")), tags)
    # A start from a model that is not there fails before the workdir is made (a trial's left
    # one holding config.json, train.lock and empty folders); a resume does not read the model,
    # so one moved away after the start does not stop it.
    missing = tiny_config(init_from=str(tmp_path / "nope"), num_epochs=1)
    with pytest.raises(ConfigError, match=rf"^train.init_from: {tmp_path / 'nope'}: no such "):
        train_lib.train_and_evaluate(missing, tmp_path / "w2", toy_data(missing))
    assert not (tmp_path / "w2").exists()
    done.rename(tmp_path / "moved")
    try:
        summary = train_lib.train_and_evaluate(config, tmp_path / "w", toy_data(config))
        assert "training already complete" in capsys.readouterr().out
        assert summary["step"] == toy_data(config).steps_per_epoch
    finally:
        (tmp_path / "moved").rename(done)
    # Another architecture (a trial's synthetic_cpu run from the main model kept 33 of 82
    # arrays at their init, said only as a count): a warning naming what to do.
    wide = tiny_config(init_from=str(done))
    wide.model.intermediate = 2 * wide.model.intermediate
    wide_state = train_lib.init_train_state(
        build_model(wide.model, num_tags=len(tags)), tx,
        input_shape(wide.model, wide.features.chunk_frames), seed=1,
        prng_impl=wide.train.prng_impl, mesh=sharding.make_mesh())
    said = []
    train_lib.start_from_model(wide_state, wide, tags, said.append)
    assert said[-1].startswith(f"warning: train.init_from {done}: this run's model is not the one "
                               "trained (") and "config.json is a --config" in said[-1]
    assert not [line for line in said[:-1] if line.startswith("warning")]
    other = tiny_config(init_from=str(done))
    other.features.n_mels = 64
    with pytest.raises(ConfigError, match=r"the model was trained on other log-mels "
                                          r"\(features.n_mels: 96 in the model, 64 here\)"):
        train_lib.start_from_model(state, other, tags)


def test_a_checkpoint_manager_leaves_no_cleanup_thread_behind(tmp_path):
    """orbax cleans a manager's temporary directories in a thread that `close()` does not wait
    for: a run refused at once (a resume with another process count) exited under it, which
    printed 40 lines of "cannot schedule new futures after interpreter shutdown" in 2 of 3 of a
    trial's tries. `checkpointing.manager` returns once the cleanup has run."""
    import threading

    (tmp_path / "best" / "7.orbax-checkpoint-tmp-1").mkdir(parents=True)  # an interrupted save
    before = set(threading.enumerate())
    opened = checkpointing.manager(tmp_path / "best", 1, ("state",))
    try:
        assert not (tmp_path / "best" / "7.orbax-checkpoint-tmp-1").exists()  # cleaned
        assert not [t for t in set(threading.enumerate()) - before  # (asyncio's idle executor
                    if t.is_alive() and not t.name.startswith("asyncio_")]  # thread may stay)
    finally:
        opened.close()
