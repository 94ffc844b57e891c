"""The trainer's workdir and config: lock between processes, stored configs, the command line.

No training runs here: the lock is held by a second process, configs are loaded and compared.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tagger_jax import config_base, optimizers, train_lib, workdir  # noqa: E402
from tagger_jax.commands import train as train_command  # noqa: E402
from train_helpers import tiny_config, toy_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _holder(path: Path) -> subprocess.Popen:
    """A second process that holds the training lock of `path` until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from tagger_jax import workdir
        with workdir.lock(Path({str(path)!r})):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_training_in_a_workdir_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    proc = _holder(run_dir)
    try:
        config = tiny_config()
        with pytest.raises(train_lib.WorkdirBusyError) as e:
            train_lib.train_and_evaluate(config, run_dir, toy_data(config))
        message = str(e.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in message, message
        assert str(run_dir) in message and "training" in message and "\n" not in message
        assert not (run_dir / "config.json").exists()  # refused before touching anything
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The lock dies with its holder: no stale lock after a SIGKILL.
    with workdir.lock(run_dir):
        assert json.loads((run_dir / "train.lock.holder").read_text())["pid"] == os.getpid()
    assert not (run_dir / "train.lock.holder").exists()


def test_cli_refuses_a_busy_workdir_with_one_line_and_status_5(tmp_path):
    run_dir = tmp_path / "run"
    proc = _holder(run_dir)
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), "--config",
             str(ROOT / "configs" / "synthetic_cpu.py"), "--workdir", str(run_dir)],
            capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert out.returncode == 5, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"pid {proc.pid}" in lines[0], out.stderr[-2000:]


def _two_training_processes(run_dir: Path, extra: tuple[list[str], list[str]] = ([], [])
                            ) -> list[tuple[int, str]]:
    """Runs train.py as processes 0 and 1 of a localhost jax.distributed run (synthetic_cpu.py,
    `run_dir`, each with its `extra` arguments); (exit status, stderr) of each. A hang fails
    with TimeoutExpired after 240 s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    procs = []
    try:
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "train.py"), "--config",
                 str(ROOT / "configs" / "synthetic_cpu.py"), "--workdir", str(run_dir),
                 *extra[i]],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=dict(env, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                         JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))))
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return [(p.returncode, err) for p, (_, err) in zip(procs, outs)]


def test_a_busy_workdir_stops_every_process_of_a_multi_process_run_with_status_5(tmp_path):
    """Two localhost processes (jax.distributed, as tests/test_distributed.py runs them): process 0
    is refused the lock, and both exit promptly with status 5, none left at a barrier."""
    run_dir = tmp_path / "run"
    proc = _holder(run_dir)
    try:
        results = _two_training_processes(run_dir)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    for i, (status, err) in enumerate(results):
        assert status == 5, (i, err[-2000:])
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and f"pid {proc.pid}" in lines[0], (i, err[-2000:])
    assert not (run_dir / "config.json").exists()


def test_processes_given_different_configs_are_refused_before_the_workdir(tmp_path):
    """From a new user's trial: process 1 started with another learning rate and dropout than
    process 0 trained one model with both, rc 0. Every process now stops with status 2 and one
    line, before the workdir or the data is touched; runtime fields may differ."""
    run_dir = tmp_path / "run"
    data = f"--config.data.data_dir={tmp_path / 'no_data'}"
    results = _two_training_processes(run_dir, ([data], [data, "--config.train.learning_rate=0.01",
                                                         "--config.data.num_workers=3"]))
    for i, (status, err) in enumerate(results):
        assert status == 2, (i, err[-2000:])
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert lines == ["error: the processes of this run were given different configs: "
                         "process 1 differs from process 0 in fields that change results; start "
                         "every process with the same config and options"], (i, err[-2000:])
    assert not run_dir.exists() and not (tmp_path / "no_data").exists()


def test_a_start_that_saved_nothing_does_not_hold_the_workdir(tmp_path, capsys):
    """A first start that failed before its first checkpoint (a bad value, a missing dataset)
    left config.json: another config replaces it, with a note; once a checkpoint exists, a
    different config is refused."""
    workdir.check_or_write_config(tiny_config(learning_rate=1e-2), tmp_path)
    workdir.check_or_write_config(tiny_config(), tmp_path)
    assert "came from a start that saved no checkpoint; replaced" in capsys.readouterr().err
    assert json.loads((tmp_path / "config.json").read_text()) == workdir.config_to_dict(
        tiny_config())
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    with pytest.raises(workdir.ConfigMismatchError):
        workdir.check_or_write_config(tiny_config(learning_rate=1e-2), tmp_path)


def test_mismatch_hint_works_and_stored_config_resumes(tmp_path):
    config = tiny_config()
    workdir.check_or_write_config(config, tmp_path)
    (tmp_path / "best" / "10").mkdir(parents=True)  # a run that saved something
    changed = tiny_config(learning_rate=1e-2)
    with pytest.raises(workdir.ConfigMismatchError) as e:
        workdir.check_or_write_config(changed, tmp_path)
    hint = str(e.value).splitlines()[-1]
    assert hint.endswith(f"--config {tmp_path / 'config.json'}"), hint
    assert "num_epochs" not in str(e.value)
    # More epochs (a trial: "train longer") is refused too, and says why with AdamW's schedule.
    for optimizer, said in (("adamw", True), ("authors", False)):
        longer = tiny_config(num_epochs=config.train.num_epochs + 4, optimizer=optimizer)
        with pytest.raises(workdir.ConfigMismatchError) as e:
            workdir.check_or_write_config(longer, tmp_path)
        assert ("train.num_epochs sets where the learning rate's cosine decays to 0"
                in str(e.value)) == said, str(e.value)
    # What the hint says works: the stored config loads (also from the workdir itself) and fits.
    for path in (tmp_path / "config.json", tmp_path):
        stored = train_command.load_config(str(path))
        assert workdir.config_differences(workdir.config_to_dict(config),
                                          workdir.config_to_dict(stored)) == []
        workdir.check_or_write_config(stored, tmp_path)
    # Overrides apply to a stored config as to a config file; runtime fields may differ.
    stored = train_command.load_config(str(tmp_path), ["train.log_every_steps=7"])
    assert stored.train.log_every_steps == 7
    workdir.check_or_write_config(stored, tmp_path)


def test_stored_config_is_merged_over_the_defaults(tmp_path):
    saved = workdir.config_to_dict(tiny_config())
    del saved["train"]["warmup_steps"]  # a field added after this workdir was written
    saved["data"]["obsolete_field"] = 3  # a field since removed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config, extra = workdir.read_config(tmp_path)
    assert extra == ["data.obsolete_field"] and config.data.obsolete_field == 3  # kept as stored
    assert config.train.warmup_steps == config_base.base_config().train.warmup_steps
    assert config.train.sgd_learning_rates == (1e-3, 1e-4, 1e-5)  # JSON list back to a tuple
    assert workdir.config_differences(saved, workdir.config_to_dict(config)) == []
    # A removed field is ignored; a field the given config adds beyond the base must match.
    assert workdir.config_differences(saved, workdir.config_to_dict(tiny_config())) == [
        "train.warmup_steps: 500 in the workdir, 2 now"]  # the missing field took its default
    given = tiny_config(warmup_steps=500)
    assert workdir.config_differences(saved, workdir.config_to_dict(given)) == []
    given.data.custom = {"p_gain": 0.5}  # a section config_base does not define
    assert workdir.config_differences(saved, workdir.config_to_dict(given)) == [
        "data.custom.p_gain: '<absent>' in the workdir, 0.5 now"]
    saved["data"]["custom"] = {"p_gain": 0.5}
    assert workdir.config_differences(saved, workdir.config_to_dict(given)) == []
    saved["train"]["batch_size"] = "sixteen"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(workdir.ConfigMismatchError, match=r"config\.json: train\.batch_size"):
        workdir.read_config(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(workdir.ConfigMismatchError, match="not valid JSON"):
        workdir.read_config(tmp_path)


def test_optimizers_have_no_defaults_of_their_own():
    train = dict(config_base.base_config().train)
    tx, phases = optimizers.make_optimizer(train, 100)
    assert phases == 4
    del train["learning_rate"]
    with pytest.raises(KeyError, match="learning_rate"):
        optimizers.make_optimizer(train, 100)
    assert optimizers.phase_name(config_base.base_config().train, 0) == "adam lr 0.0001"


def _flat(config, prefix=""):
    out = {}
    for k, v in config.items():
        out.update(_flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}": v})
    return out


def test_every_config_field_is_listed_with_default_and_comment():
    docs = config_base.field_docs()
    flat = _flat(config_base.base_config())
    assert sorted(d.name for d in docs) == sorted(flat)  # every field, once
    assert docs[0].name == "model.architecture"  # in source order
    assert all(d.default == flat[d.name] and d.comment for d in docs)
    assert docs[0].comment.startswith('"pons_won" (paper)')
    text = train_command.list_config()
    assert len(text.splitlines()) == len(flat)
    assert "train.learning_rate = 0.0001" in text and "# Adam learning rate" in text
    config = tiny_config()
    line = next(x for x in train_command.list_config(config).splitlines()
                if x.startswith("train.batch_size"))
    assert line.startswith("train.batch_size = 8") and line.endswith("(default 16)")


@pytest.mark.parametrize("argv, needle", [
    (["--config.train.nope=1"], "unknown config field train.nope"),
    (["--config.train.batch_size=abc"], "train.batch_size"),
    (["--bogus"], "unknown argument '--bogus'"),
    (["--set", "train.nope=1"], "unknown config field train.nope"),  # --help shows --set: taken
    (["--set=train.batch_size=abc"], "train.batch_size"),
    (["--config.model.timbre_norm=band"], "model.timbre_norm must be one of"),
    (["--config.model.cls_token=random"], "model.cls_token must be one of"),
    (["--config.model.frame_head_layer=5"], "model.frame_head_layer must be in 0..model.atten"),
    (["--config.train.frame_loss_weight=1.0"],
     "train.frame_loss_weight=1 needs model.frame_head=True; without a frame head set"),
])
def test_train_py_bad_arguments_are_one_line_and_status_2(tmp_path, argv, needle):
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config",
         str(ROOT / "configs" / "synthetic_cpu.py"), "--workdir", str(tmp_path / "w")] + argv,
        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error:"), out.stderr
    assert needle in out.stderr
    assert not (tmp_path / "w").exists()


def test_cli_set_unknown_field_and_list_config(capsys):
    from tagger_jax import cli

    assert cli.main(["train", "--config", str(ROOT / "configs" / "synthetic_cpu.py"),
                     "--workdir", "unused", "--set", "model.nope=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config field model.nope" in err
    assert cli.main(["train", "--config", str(ROOT / "configs" / "synthetic_cpu.py"),
                     "--workdir", "unused", "--set", "train=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train is a section of the config, not a field" in err
    assert "e.g. train." in err
    assert cli.main(["train", "--list-config"]) == 0
    assert "model.architecture = 'pons_won'" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_config_file_has_only_known_fields_and_a_consistent_frame_loss(path):
    """Each file in configs/ loads, sets no field base_config() lacks (a typo would otherwise
    train silently with the default), and pairs model.frame_head with train.frame_loss_weight
    (the trainer refuses either alone); augmentation fields are AugmentParams'."""
    import importlib.util

    from tagger_jax.models import check_model_config

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    _, extra = config_base.merge_over_base(config.to_dict())
    assert extra == []
    train_lib.frame_loss_weight(config)
    if config.data.augment:
        from tagger_jax.augment import AugmentParams

        AugmentParams.from_dict(config.data.augment.to_dict())  # unknown field: ValueError
    check_model_config(config.model)  # every named choice (architecture, timbre_norm, ...) exists


@pytest.mark.parametrize("argv, status, message", [
    (["--config.train.optimizer=sgd"], 2, "train.optimizer must be one of ('authors', 'adamw')"),
    (["--config.train.batch_size=0"], 2, "train.batch_size must be at least 1, got 0"),
    (["--config.train.num_epochs=0"], 2, "train.num_epochs must be at least 1, got 0"),
    # from a new user's trial: each was "unexpected ...", exit 70, or accepted silently
    (["--config.train.log_every_steps=0"], 2, "train.log_every_steps must be at least 1"),
    (["--config.train.checkpoint_every_steps=0"], 2, "train.checkpoint_every_steps must be"),
    (["--config.model.conv_channels=0"], 2, "model.conv_channels must be at least 1, got 0"),
    (["--config.features.sample_rate=0"], 2, "features.sample_rate must be at least 1"),
    (["--config.model.attention_heads=3"], 2, "model.attention_heads (3) must divide "),
    (["--config.data.num_workers=-1"], 2, "data.num_workers must be at least 0, got -1"),
    (["--config.data.prefetch=-2"], 2, "data.prefetch must be at least 0, got -2"),
    (["--config.train.seed=-1"], 2, "train.seed must be at least 0, got -1"),
    (["--config.train.prng_impl=foo"], 2, "train.prng_impl must be one of ('threefry2x32'"),
    (["--config.train.num_epochs=99999999999999999999"], 2, "train.num_epochs must be at most"),
    (["--config.train.weight_decay=-1"], 2, "train.weight_decay must be at least 0"),
    (["--config.train.learning_rate=inf"], 2, "train.learning_rate must be positive and finite"),
    (["--config.train.sgd_learning_rates=a,b"], 2, "train.sgd_learning_rates must be positive"),
    (["--config.data.builder_config=nosuch"], 6, "no config 'nosuch'"),
])
def test_train_py_reports_bad_values_and_missing_data_in_one_line(tmp_path, capsys, argv,
                                                                  status, message):
    """train.py as `tagger-jax train`: a bad value is one line and status 2 before the workdir
    is touched; a dataset config that does not exist is one line and status 6 (a new user got
    tracebacks and exit 1, or 70 from `tagger-jax train`), and the next start may differ."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run = tmp_path / "run"
    base = ["--config", str(ROOT / "configs" / "synthetic_cpu.py"), "--workdir", str(run),
            f"--config.data.data_dir={tmp_path / 'tfds'}"]
    assert script.main(base + argv) == status
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert (run / "config.json").exists() == (status == 6)


@pytest.mark.parametrize("text, says", [
    ("x = 1\n", "has no attribute 'get_config' (a config file defines get_config()"),
    ("def get_config():\n    return {}\n", "get_config() returned a dict, not a ConfigDict"),
    ("def get_config():\n    return 1 / 0\n", "ZeroDivisionError: division by zero"),
    ("import no_such_module_here\n", "ModuleNotFoundError: No module named"),
    ("def (\n", "SyntaxError: invalid syntax"),
])
def test_a_broken_config_file_is_one_line_naming_it(tmp_path, capsys, text, says):
    """From a new user's trial: these said "bad override in  (...)" with an empty name, or the
    file's error without the file. `--list_config` is accepted as train.py accepts it."""
    from tagger_jax import cli

    path = tmp_path / "mine.py"
    path.write_text(text)
    assert cli.main(["train", "--config", str(path), "--workdir", str(tmp_path / "w")]) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert line.startswith(f"error: config {path}: ") and says in line, line
    assert not (tmp_path / "w").exists()
    assert cli.main(["train", "--list_config"]) == 0
    assert "train.num_epochs = " in capsys.readouterr().out


@pytest.mark.parametrize("field, text, value", [
    ("data.extra_test_splits", "validation,test", ("validation", "test")),
    ("data.extra_test_splits", "(validation, test)", ("validation", "test")),
    ("data.extra_test_splits", "('validation', 'test')", ("validation", "test")),
    ("data.extra_test_splits", "test", ("test",)),
    ("data.extra_test_splits", "", ()),
    ("train.sgd_learning_rates", "1e-3,1e-4", (1e-3, 1e-4)),
    ("train.sgd_learning_rates", "1e-3", (1e-3,)),
])
def test_tuple_fields_take_comma_separated_lists(field, text, value):
    """From a new user's trial: `a,b` became the one string 'a,b' while `1e-3,1e-4` became a
    tuple (ml_collections reads values as Python literals); every spelling is a tuple now."""
    from tagger_jax.commands.train import load_config

    config = load_config(str(ROOT / "configs" / "synthetic_cpu.py"), [f"{field}={text}"])
    section, name = field.split(".")
    assert tuple(config[section][name]) == value


def test_list_config_refuses_overrides_without_a_config(capsys):
    """`--list-config --set ...` without `--config` printed the defaults and dropped the `--set`s
    silently; it is a usage error now (with `--config` they apply)."""
    from tagger_jax import cli

    assert cli.main(["train", "--list-config", "--set", "train.num_epochs=3"]) == 2
    assert "--set with --list-config needs --config" in capsys.readouterr().err
    assert cli.main(["train", "--list-config", "--config",
                     str(ROOT / "configs" / "synthetic_cpu.py"), "--set",
                     "train.num_epochs=3"]) == 0
    assert "train.num_epochs = 3 " in capsys.readouterr().out


def test_a_batch_that_does_not_split_over_the_devices_is_refused_before_the_workdir(
        tmp_path, monkeypatch):
    """train.batch_size 6 on 4 devices: a config error naming the field (exit status 2), before
    the workdir is made (it was 'unexpected ValueError', 70, after config.json and the lock)."""
    import jax

    from tagger_jax import errors

    config = tiny_config()
    data = toy_data(config)
    config.train.batch_size = 6
    monkeypatch.setattr(jax, "local_device_count", lambda *a: 4)
    with pytest.raises(errors.ConfigError, match=r"^train.batch_size: global batch size 6 does "
                                                 r"not divide evenly over 1 host\(s\) x 4 "
                                                 r"device\(s\) = 4 devices: use a multiple of 4, "
                                                 r"e.g. 4 or 8, or a total device count that "
                                                 r"divides it \(1, 2, 3, 6; a resumed run keeps "
                                                 r"its batch size\)$"):
        train_lib.train_and_evaluate(config, tmp_path / "run", data)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("item, says", [
    ("train.progress_bar=yes", "--set train.progress_bar=yes: train.progress_bar takes true or "
                               "false"),
    ("train.keep_checkpoints=x", "train.keep_checkpoints takes an integer"),
    ("train.num_epochs=2.5", "train.num_epochs takes an integer"),
    ("train.learning_rate=abc", "train.learning_rate takes a number"),
    ("data.augment=None", "--set data.augment: data.augment is None in this config"),
    ("data.augment.p_gain=0.3", "--set data.augment.p_gain: data.augment is None in this config"),
])
def test_cli_set_bad_values_say_what_the_field_takes(tmp_path, capsys, item, says):
    """From a new user's trial: these printed train.py's flag syntax (`flag
    --config.train.progress_bar=yes: ('Non-boolean argument to boolean flag', 'yes')`),
    ml_collections' multi-line list of supported types, or "unknown config field" for the
    fields of a section that is None (off) by default."""
    from tagger_jax import cli

    assert cli.main(["train", "--config", str(ROOT / "configs" / "synthetic_cpu.py"),
                     "--workdir", str(tmp_path / "w"), "--set", item]) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert line.startswith("error: ") and says in line, line
    assert not (tmp_path / "w").exists()


def test_paths_are_stored_absolute(tmp_path, monkeypatch):
    """From a new user's trial: a run trained with `data.data_dir=data` stored "data", so
    `tagger-jax evaluate --workdir W` from another directory looked for (and self-contained
    datasets built) the data there. The trainer stores both paths absolute."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config()
    config.data.data_dir = "data"
    config.data.manual_dir = "~/downloads/mtat"
    config.train.init_from = "../model"  # a verifying user's: refused when given absolute
    resolved = workdir.with_absolute_paths(config)
    assert resolved.data.data_dir == str(tmp_path / "data")
    assert resolved.data.manual_dir == str(Path.home() / "downloads" / "mtat")
    assert resolved.train.init_from == str(tmp_path.parent / "model")
    config.train.init_from = ""
    assert config.data.data_dir == "data"  # a copy: the caller's config is unchanged
    config.data.data_dir, config.data.manual_dir = str(tmp_path / "d"), ""
    assert workdir.with_absolute_paths(config) is config  # nothing to change
    # train_and_evaluate hands the absolute paths to the config it writes to the workdir.
    seen = []

    def write(config, path):
        seen.append(config.data.data_dir)
        raise RuntimeError("written")

    monkeypatch.setattr(workdir, "check_or_write_config", write)
    config.data.data_dir = "rel"
    with pytest.raises(RuntimeError, match="written"):
        train_lib.train_and_evaluate(config, tmp_path / "run", toy_data(config))
    assert seen == [str(tmp_path / "rel")]


def test_non_names_in_data_fields_are_config_errors(tmp_path):
    """From a new user's check: `--set data.extra_test_splits=3` crashed in load_split ('int'
    object has no attribute 'strip', exit 70) after writing config.json; `data.name="synthetic
    tags"` (or empty) crashed in TFDS's name parser (exit 70)."""
    from tagger_jax import datasets, errors

    config = tiny_config()
    config.data.extra_test_splits = (3,)
    with pytest.raises(errors.ConfigError, match=r"data.extra_test_splits must be split names"):
        train_lib.check_train_config(config)
    for name in ("synthetic tags", ""):
        with pytest.raises(errors.ConfigError, match=f"unknown dataset {name!r}; choose one of"):
            datasets.get_builder(name, tmp_path)


def test_a_config_files_wrong_type_is_one_line_with_its_line_number(tmp_path, capsys):
    """From a new user's trial: `c.train.batch_size = "8"` printed ml_collections' 14-line
    traceback after "error:"; now the file's line and the exception."""
    from tagger_jax import cli

    path = tmp_path / "mine.py"
    path.write_text("from tagger_jax.config_base import base_config\n\n\ndef get_config():\n"
                    "    c = base_config()\n    c.train.batch_size = '8'\n    return c\n")
    assert cli.main(["train", "--config", str(path), "--workdir", str(tmp_path / "w")]) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert line.startswith(f"error: config {path}:6: TypeError: Could not override field "
                           "'batch_size'"), line
    assert not (tmp_path / "w").exists()


def test_a_misspelt_field_in_a_config_file_is_named_with_the_field_meant(tmp_path, capsys):
    """From a new user's trial: `c.train.num_epoch = 2` made a new field; the run trained the
    inherited 16 epochs, rc 0, without a word. Fields under a section that is None in the base
    config (data.augment) are the file's own; the shipped configs have no stray field."""
    from tagger_jax.commands.train import load_config

    path = tmp_path / "mine.py"
    path.write_text("from tagger_jax.config_base import base_config\n\n\ndef get_config():\n"
                    "    c = base_config()\n    c.train.num_epoch = 2\n    c.model.zzz = 1\n"
                    "    return c\n")
    config = load_config(str(path))
    assert config.train.num_epochs == config_base.base_config().train.num_epochs
    assert capsys.readouterr().err.splitlines() == [
        f"warning: config {path}: model.zzz is not a field of config_base.py and nothing in "
        "tagger-jax reads it; `tagger-jax train --list-config` lists every field",
        f"warning: config {path}: train.num_epoch is not a field of config_base.py and nothing "
        "in tagger-jax reads it (did you mean train.num_epochs?); `tagger-jax train "
        "--list-config` lists every field"]
    for shipped in sorted((ROOT / "configs").glob("*.py")):
        load_config(str(shipped))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_a_workdir_that_is_a_file_or_under_one_is_an_output_error(tmp_path, where):
    """From a new user's trial: unexpected FileExistsError / NotADirectoryError, exit 70."""
    from tagger_jax import errors, outputs

    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" if where == "file" else tmp_path / "afile" / "sub"
    config = tiny_config()
    with pytest.raises(outputs.OutputError) as info:
        train_lib.train_and_evaluate(config, target, toy_data(config))
    assert str(target) in str(info.value)
    assert errors.exit_status(info.value) == errors.OUTPUT


def test_chunks_longer_than_the_learned_positions_are_a_config_error(tmp_path):
    """From a new user's trial: `--set model.max_positions=10` was an unexpected ValueError
    from inside the model (exit 70); it is a config error naming both fields (exit 2)."""
    from tagger_jax import errors

    config = tiny_config()
    config.model.positions, config.model.max_positions = "learned", 3
    with pytest.raises(errors.ConfigError, match=r"^model.max_positions / features.chunk_frames: "
                       r"sequence of \d+ steps \+ \[CLS\] exceeds the 3 learned positions"):
        train_lib.train_and_evaluate(config, tmp_path / "w", toy_data(config))


def test_the_short_clip_warning_names_the_shortest_chunk_a_shipped_config_trains_on():
    """A dataset build warns about clips shorter than `chunking.SHORTEST_TRAINING_CHUNK`
    (`short_clip`): it must be the shortest `features.chunk_frames` of configs/."""
    from tagger_jax import chunking
    from tagger_jax.commands.train import load_config

    frames = {p.name: int(load_config(str(p), []).features.chunk_frames)
              for p in sorted((ROOT / "configs").glob("*.py"))}
    assert min(frames.values()) == chunking.SHORTEST_TRAINING_CHUNK, frames


def test_test_results_of_a_run_from_before_a_new_config_field_are_reused(tmp_path):
    """A run finished before a config field existed (data.crops_per_record) recorded test
    inputs without it: at its default the results are reused, not "evaluated again: the config
    changed" (a new user's trial); at another value, or with another value of an old field,
    they are not. A stored field the project has since removed is ignored."""
    from tagger_jax import config_base
    from tagger_jax import workdir as wd

    config = config_base.base_config()
    now = wd.test_inputs(config, best_step=10, data_fingerprint="abc", best_digest="d")
    old = json.loads(json.dumps(now))
    del old["config"]["data.crops_per_record"]
    old["config"]["data.a_field_removed_since"] = 3
    (tmp_path / wd.TEST_INPUTS_FILE).write_text(json.dumps(old))
    (tmp_path / "metrics.json").write_text(json.dumps({"roc_auc": 0.9}))
    assert wd.reusable_test_results(tmp_path, now) == {"roc_auc": 0.9}
    assert wd.stale_test_inputs(tmp_path, now) == []
    config.data.crops_per_record = 2
    changed = wd.test_inputs(config, best_step=10, data_fingerprint="abc", best_digest="d")
    assert wd.reusable_test_results(tmp_path, changed) is None
    assert wd.stale_test_inputs(tmp_path, changed) == ["the config"]
    config.data.crops_per_record, config.train.seed = 1, 7
    seeded = wd.test_inputs(config, best_step=10, data_fingerprint="abc", best_digest="d")
    assert wd.reusable_test_results(tmp_path, seeded) is None


def test_crops_per_record_is_checked_before_the_workdir_and_the_data(tmp_path):
    """From a new user's trial: `data.crops_per_record=0` was refused only once the data was
    loaded, after a dataset build of minutes and with config.json written to the workdir."""
    from tagger_jax import errors

    config = tiny_config()
    config.train.batch_size = 4
    says = "data.crops_per_record must be at least 1, got 0"
    config.data.crops_per_record = 0
    with pytest.raises(errors.ConfigError, match=re.escape(says)):
        train_lib.check_train_config(config)
    with pytest.raises(errors.ConfigError, match=re.escape(says)):
        train_lib.train_and_evaluate(config, tmp_path / "run", None)
    assert not (tmp_path / "run").exists()
    for k in (2, 3):  # any k: a batch holds one crop of each of its records
        config.data.crops_per_record = k
        train_lib.check_train_config(config)
