"""Model directories are validated on load (issue 10 item 4): a `tagger.json` that disagrees with
the stored arrays, or with missing/null/mistyped `tags` and `config`, is one `CheckpointError`
naming the directory and the mismatch, never a Flax traceback at the first batch."""
from __future__ import annotations

import json
import os
import socket

import pytest

from tagger_jax import checkpoint, cli, errors
from model_helpers import save_tiny_model

TAGS = ["rock", "jazz", "piano"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "model", TAGS)


def _edit(model_dir, tmp_path, change):
    """A copy of the model directory whose tagger.json went through `change(meta)`."""
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(model_dir, copy)
    meta = json.loads((copy / "tagger.json").read_text())
    change(meta)
    (copy / "tagger.json").write_text(json.dumps(meta))
    return copy


def test_intact_model_loads(model_dir):
    loaded = checkpoint.load_model(model_dir)
    assert loaded.tags == tuple(TAGS)


@pytest.mark.parametrize("field,value,words", [
    ("intermediate", 64, "params/"),
    ("conv_channels", 4, "params/"),
    ("attention_layers", 3, "missing from the stored weights"),
    ("architecture", "pons_pons", "params/"),
])
def test_config_disagreeing_with_the_arrays_is_named(model_dir, tmp_path, field, value, words):
    d = _edit(model_dir, tmp_path, lambda m: m["config"]["model"].__setitem__(field, value))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_model(d)
    message = str(e.value)
    assert message.startswith(str(d)) and "does not match the stored weights" in message
    assert words in message and "\n" not in message


@pytest.mark.parametrize("change,words", [
    (lambda m: m.pop("tags"), "no 'tags'"),
    (lambda m: m.__setitem__("tags", None), "'tags' must be a list of tag names, found null"),
    (lambda m: m.__setitem__("tags", "rock,jazz,piano"),
     "'tags' must be a list of tag names, found a string"),
    (lambda m: m.__setitem__("tags", ["rock", 3, "piano"]), "tag 1 is 3"),
    (lambda m: m.__setitem__("tags", ["rock", "rock", "piano"]), "duplicate tag 'rock'"),
    (lambda m: m.__setitem__("tags", ["rock", "jazz"]), "3 outputs but tagger.json lists 2"),
    (lambda m: m.pop("config"), "no 'config'"),
    (lambda m: m.__setitem__("config", None), "'config' must be an object, found null"),
    (lambda m: m["config"].pop("model"), "config has no 'model'"),
    (lambda m: m["config"]["model"].__setitem__("architecture", "resnet"), "resnet"),
])
def test_bad_metadata_is_one_message(model_dir, tmp_path, change, words):
    d = _edit(model_dir, tmp_path, change)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_model(d)
    assert str(e.value).startswith(str(d)) and words in str(e.value)


def test_tag_command_reports_a_mismatch_in_one_line(model_dir, tmp_path, capsys):
    d = _edit(model_dir, tmp_path, lambda m: m["config"]["model"].__setitem__("intermediate", 8))
    (tmp_path / "x.npy").write_bytes(b"")
    rc = cli.main(["tag", "--checkpoint", str(d), "--quiet", str(tmp_path / "x.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == errors.MODEL and len(err) == 1 and "does not match the stored weights" in err[0]


def test_a_config_written_before_fields_existed_loads_with_the_base_defaults(model_dir, tmp_path):
    """Stored configs are merged over config_base.base_config(): a model directory whose config
    lacks fields (added to the project later) loads, and inference reads the defaults."""
    from tagger_jax import inference
    from tagger_jax.config_base import base_config
    from tagger_jax.models import build_model

    def strip(meta):
        for field in ("dtype", "cls_token", "positions", "max_positions", "hidden_dropout"):
            del meta["config"]["model"][field]
        del meta["config"]["features"]["eval_chunks"]
        del meta["config"]["data"]
        del meta["config"]["train"]

    loaded = checkpoint.load_model(_edit(model_dir, tmp_path, strip))
    base = base_config()
    assert loaded.config.model.positions == base.model.positions
    assert loaded.config.features.eval_chunks == base.features.eval_chunks
    assert loaded.config.data.test_split == base.data.test_split
    assert loaded.config.train.eval_batch_size == base.train.eval_batch_size
    engine = inference.Engine(loaded, batch_size=2)
    assert engine.geometry.chunk == 64  # the stored chunk, not the default's 256
    # A partial model mapping builds the same module as the complete one.
    partial = {"conv_channels": 2, "attention_channels": 16, "attention_heads": 2,
               "intermediate": 32}
    assert build_model(partial, 3) == build_model(dict(loaded.config.model), 3)


def test_non_finite_stored_weights_are_refused_not_tagged_nan(tmp_path, capsys):
    """From a new user's trial: random bytes written over the weight files still restored, and
    `tag` printed `guitar nan, ...` with exit 0. NaN or inf in the stored arrays is a model
    error (exit 3) naming the directory and the arrays."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from model_helpers import base_config, build_model

    config = base_config()
    config.model.update(conv_channels=2, attention_channels=16, attention_heads=2,
                        intermediate=32)
    config.features.chunk_frames = 64
    variables = build_model(config.model, len(TAGS)).init(jax.random.key(0),
                                                          jnp.zeros((1, 96, 64)))
    bias = np.array(variables["params"]["classifier"]["bias"])
    bias[1], bias[2] = np.nan, np.inf
    variables["params"]["classifier"]["bias"] = jnp.asarray(bias)
    d = checkpoint.save_model(tmp_path / "damaged", variables, config, TAGS)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_model(d)
    assert str(e.value) == (f"{d}: 2 stored weights are NaN or infinite, in "
                            "params/classifier/bias (2): the files under variables/ are "
                            "damaged; export or copy the model again")
    np.save(tmp_path / "x.npy", np.zeros((96, 64), np.float32))
    assert cli.main(["tag", "--checkpoint", str(d), "--quiet", str(tmp_path / "x.npy")]) \
        == errors.MODEL
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {d}: 2 stored weights are NaN or infinite")


def test_a_model_cut_short_is_named_before_orbax_reads_it(model_dir, tmp_path, capsys):
    """From a new user's trial: a model directory with one file under variables/ truncated (an
    interrupted copy) failed with orbax's "OUT_OF_RANGE: Error reading ..." and exit 2 (the
    README's table says 3), then a flood of asyncio tracebacks. tagger.json records each file's
    size when the model is saved; a file of another size is named, exit 3. A model saved before
    the record (or damaged otherwise) gets one line from the failed read, exit 3 too."""
    import shutil

    copy = tmp_path / "cut"
    shutil.copytree(model_dir, copy)
    sizes = json.loads((copy / "tagger.json").read_text())[checkpoint.VARIABLE_FILES_KEY]
    assert sizes == checkpoint.file_sizes(copy / "variables") and sizes
    name = max(sizes, key=sizes.get)  # the largest file: array data
    data = (copy / "variables" / name).read_bytes()
    (copy / "variables" / name).write_bytes(data[:len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_model(copy)
    assert str(e.value) == (f"{copy}: variables/{name} is {len(data) // 2} bytes, saved as "
                            f"{len(data)}: the model's files are damaged or cut short (an "
                            "interrupted copy or download?); copy or export the model again")
    meta = json.loads((copy / "tagger.json").read_text())
    del meta[checkpoint.VARIABLE_FILES_KEY]  # as saved before 2026-12-04
    (copy / "tagger.json").write_text(json.dumps(meta))
    (tmp_path / "x.npy").write_bytes(b"")
    assert cli.main(["tag", "--checkpoint", str(copy), "--quiet", str(tmp_path / "x.npy")]) \
        == errors.MODEL
    [line] = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert line.startswith(f"error: {copy}: variables/ does not read (") and line.endswith(
        "the model's files are damaged: copy or export the model again"), line


def test_late_event_loop_errors_of_a_failed_restore_are_dropped_others_kept(monkeypatch):
    """The reads still in flight when an orbax restore fails end after its event loop closed;
    each printed "RuntimeError: Event loop is closed" through sys.unraisablehook (hundreds of
    tracebacks around the one-line error). Only those are dropped, and installing twice wraps
    once."""
    import sys
    from types import SimpleNamespace

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(info.exc_value))
    errors.quiet_late_callbacks()
    errors.quiet_late_callbacks()
    late = SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
    other = SimpleNamespace(exc_value=RuntimeError("something else"))
    sys.unraisablehook(late)
    sys.unraisablehook(other)
    assert seen == [other.exc_value]


def test_a_workdir_before_its_first_export_says_so(tmp_path):
    """From a new user's trial: a training workdir whose run has not validated yet was called
    "not a tagger-jax model directory ... nor a training workdir"."""
    work = tmp_path / "run"
    (work / "checkpoints").mkdir(parents=True)
    (work / "config.json").write_text("{}")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_model(work)
    assert str(e.value) == (f"{work}: a training workdir without an exported best_model/ yet "
                            "(training exports it after its first validation); wait for it, "
                            "or resume the training")


def test_a_workdir_still_training_is_used_with_a_note(model_dir, tmp_path, capsys):
    """From a new user's trial: `tag --workdir W` during the training used the best model so far
    without a word. While W's training holds its lock, loading W's model says so on stderr, with
    the holder and the best model's step; after the training (or a kill -9 of it), nothing."""
    import shutil
    import subprocess
    import sys

    from tagger_jax import outputs, workdir

    work = tmp_path / "run"
    shutil.copytree(model_dir, work / checkpoint.EXPORT_SUBDIR)
    for step in (40, 120):
        (work / workdir.BEST_DIR / str(step)).mkdir(parents=True)
    with outputs.exclusive(work, "training workdir", lock_file=work / workdir.LOCK_FILE):
        checkpoint.load_model(work)
        err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"note: {work} is still training (pid {os.getpid()} on host ")
    assert err[0].endswith("; its exported best model (the best validation so far, step 120) "
                           "is used, and may be replaced by a better one before the training "
                           "ends")
    checkpoint.load_model(work)
    assert capsys.readouterr().err == ""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    (work / (workdir.LOCK_FILE + outputs.HOLDER_SUFFIX)).write_text(json.dumps(
        {"pid": int(ended.stdout), "host": socket.gethostname(), "started": "then",
         "command": "train.py"}))  # a note that a kill -9 left behind
    checkpoint.load_model(work)
    assert capsys.readouterr().err == ""
