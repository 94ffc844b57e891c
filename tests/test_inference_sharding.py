"""One inference path over devices and hosts: `tag` and `explain` of a directory give the same
results on 1 device, on 4 forced host devices, and on 2 jax.distributed processes with 2 devices
each (tests/inference_worker.py), every input computed by exactly one process.

Tolerances (float32; inference is row-wise, so only the compiled program's summation order can
differ between device counts): 2e-6 absolute on the probabilities of tags.json (written rounded to
6 decimals: the rounding alone can differ by 1e-6) and 1e-5 on the explanation NPZ's
probabilities, attention and contribution maps (docs/explanations.md gives the gradient maps'
relative agreement).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf

from tagger_jax.checkpoint import save_model
from tagger_jax.config_base import base_config
from tagger_jax.models import build_model
from process_helpers import cpu_env, distributed_envs, free_port

HERE = Path(__file__).resolve().parent
WORKER = HERE / "inference_worker.py"
TAGS = ("a", "b", "c", "d")
GOOD = ("long.npy", "mid.npy", "short.npy", "tone.wav", "sub/other.npy")

pytestmark = pytest.mark.slow


NO_CACHE = {"TAGGER_JAX_COMPILATION_CACHE": "0"}


def _start(jobs, model_dir, inputs, rerun=False, mode=None):
    procs = {name: [subprocess.Popen(
        [sys.executable, str(WORKER), str(model_dir), str(inputs), str(out)]
        + (["--rerun"] if rerun else []) + ([mode] if mode else []), env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for env, out in specs]
        for name, specs in jobs.items()}
    logs = {}
    for name, ps in procs.items():
        logs[name] = []
        for p in ps:
            try:
                log, _ = p.communicate(timeout=500)
            except subprocess.TimeoutExpired:
                for q in (q for qs in procs.values() for q in qs):
                    q.kill()
                raise
            assert p.returncode == 0 and "rc " in log, f"{name} failed:\n{log[-4000:]}"
            logs[name].append(log)
    return logs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    config = base_config()
    m = config.model
    m.conv_channels, m.attention_channels, m.attention_heads, m.intermediate = 2, 16, 2, 32
    config.features.chunk_frames = 32
    model = build_model(config.model, len(TAGS))
    variables = model.init(jax.random.key(1), np.zeros((1, 96, 32), np.float32))
    variables = jax.tree.map(lambda a: a + 0.05, variables)
    model_dir = save_model(root / "model", variables, config, TAGS)
    inputs = root / "inputs"
    (inputs / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name, frames in (("long.npy", 150), ("mid.npy", 70), ("short.npy", 9),
                         ("sub/other.npy", 33)):
        np.save(inputs / name, rng.normal(-30, 10, (96, frames)).astype(np.float32))
    sf.write(inputs / "tone.wav", 0.2 * np.sin(np.arange(24000) * 0.07), 16000)
    (inputs / "broken.wav").write_bytes(b"RIFF not a wave")
    jobs = {
        "one": [(cpu_env(1, **NO_CACHE), root / "one")],
        "four": [(cpu_env(4, **NO_CACHE), root / "four")],
        "two": [(env, root / "two") for env in distributed_envs(2, 2, free_port(), **NO_CACHE)],
    }
    logs = _start(jobs, model_dir, inputs)
    return root, model_dir, inputs, logs


def _tags(out: Path) -> dict:
    return {Path(r["file"]).name: r for r in json.loads((out / "tags.json").read_text())}


def _maps(out: Path) -> dict:
    return {p.name: dict(np.load(p)) for p in sorted((out / "explain").glob("*.npz"))}


def test_device_and_process_counts(runs):
    _, _, _, logs = runs
    assert "devices 0 1 1" in logs["one"][0] and "devices 0 4 4" in logs["four"][0]
    assert "devices 0 4 2" in logs["two"][0] and "devices 1 4 2" in logs["two"][1]
    # Exit status 1: an input failed (process 0 reports the whole run); evaluate 0.
    assert "rc 1 1 0" in logs["one"][0] and "rc 1 1 0" in logs["four"][0]
    assert "rc 1 1 0" in logs["two"][0], logs["two"][1]


@pytest.mark.parametrize("name", ["four", "two"])
def test_tags_equal_one_device(runs, name):
    root = runs[0]
    ref, got = _tags(root / "one"), _tags(root / name)
    assert sorted(ref) == sorted(got) == sorted(Path(g).name for g in GOOD + ("broken.wav",))
    assert "error" in got["broken.wav"]
    for f in GOOD:
        f = Path(f).name
        assert got[f]["chunk_starts_s"] == ref[f]["chunk_starts_s"]
        np.testing.assert_allclose(got[f]["chunk_probabilities"], ref[f]["chunk_probabilities"],
                                   rtol=0, atol=2e-6, err_msg=f)
        np.testing.assert_allclose(got[f]["probabilities"], ref[f]["probabilities"], rtol=0,
                                   atol=2e-6, err_msg=f)


@pytest.mark.parametrize("name", ["four", "two"])
def test_explanations_equal_one_device(runs, name):
    root = runs[0]
    ref, got = _maps(root / "one"), _maps(root / name)
    assert sorted(ref) == sorted(got) and len(ref) == len(GOOD)
    for f in ref:
        for k in ("probabilities", "attention", "contribution", "chunk_probabilities"):
            np.testing.assert_allclose(got[f][k], ref[f][k], rtol=0, atol=1e-5, err_msg=f"{f} {k}")
    failures = json.loads((root / name / "explain" / "failures.json").read_text())
    assert [Path(v["input"]).name for v in failures.values()] == ["broken.wav"]
    assert (root / name / "explain" / "index.html").exists()
    assert not list((root / name).rglob("*part*"))  # merged and removed


@pytest.mark.parametrize("name", ["four", "two"])
def test_evaluation_equals_one_device(runs, name):
    """`evaluate` over 4 devices, or 2 processes each scoring its share of the clips before the
    all-gather: every clip once, in record order, with the probabilities and metrics of 1 device
    (4 .npy clips, 3 chunks each, batches of 2 clips)."""
    root = runs[0]
    ref, got = (np.load(root / n / "evaluate" / "predictions.npz") for n in ("one", name))
    assert ref["probs"].shape == (4, len(TAGS))
    np.testing.assert_array_equal(got["clip_index"], ref["clip_index"])
    np.testing.assert_array_equal(got["labels"], ref["labels"])
    np.testing.assert_allclose(got["probs"], ref["probs"], rtol=0, atol=1e-6)
    ref, got = (json.loads((root / n / "evaluate" / "metrics.json").read_text())
                for n in ("one", name))
    assert got["num_clips"] == ref["num_clips"] == 4
    assert got["roc_auc_mean"] == pytest.approx(ref["roc_auc_mean"], abs=1e-9)


def test_two_processes_compute_every_input_exactly_once(runs):
    _, _, inputs, logs = runs
    printed = [line.split(": ")[0] for log in logs["two"] for line in log.splitlines()
               if line.startswith(str(inputs))]
    assert sorted(printed) == sorted(str(inputs / g) for g in GOOD)
    per_process = [[line for line in log.splitlines() if line.startswith(str(inputs))]
                   for log in logs["two"]]
    assert all(per_process)  # both processes did a share


def test_rerun_skips_what_any_process_finished(runs):
    """Resumed as after a kill of both processes, which leaves their part files and no merged
    output: every finished input is reused, none lost (each process used to write its part over
    the old one), and the parts are folded into tags.json and removed."""
    root, model_dir, inputs, _ = runs
    out = root / "two" / "tags.json"
    before = _tags(root / "two")
    results = json.loads(out.read_text())
    out.unlink()
    for k, half in enumerate((results[:3], results[3:])):
        (root / "two" / f"tags.json.part{k}").write_text(json.dumps(half))
    jobs = {"two": [(env, root / "two")
                    for env in distributed_envs(2, 2, free_port(), **NO_CACHE)]}
    logs = _start(jobs, model_dir, inputs, rerun=True)
    after = _tags(root / "two")
    assert sorted(after) == sorted(before)
    for name in (Path(g).name for g in GOOD):
        assert after[name]["probabilities"] == before[name]["probabilities"]
    assert not list((root / "two").glob("tags.json.part*"))
    text = "".join(logs["two"])
    assert f"skipped {len(GOOD)} already finished" in text
    assert re.search(rf"\b{len(GOOD)} of \d+ inputs reused", text)  # the broken are retried
    # Each reused input's line once, from process 0; none tagged again by process 1.
    printed = [[line.split(": ")[0] for line in log.splitlines() if line.startswith(str(inputs))]
               for log in logs["two"]]
    assert sorted(printed[0]) == sorted(str(inputs / g) for g in GOOD) and not printed[1]


def test_processes_given_different_options_all_stop_before_any_work(runs, tmp_path):
    """From a new user's trial: processes of one run given another --hop, --split, inputs or
    --output merged mixed or partial results and exited 0. Each inference command now compares
    the command lines first and stops on every process with one line naming the options."""
    _, model_dir, inputs, _ = runs
    jobs = {"two": [(env, tmp_path) for env in distributed_envs(2, 2, free_port(), **NO_CACHE)]}
    logs = _start(jobs, model_dir, inputs, mode="--differ")["two"]
    for log in logs:
        assert "rc 2 2 2 2" in log, log[-3000:]
        for option in ("--hop", "--out", "--methods", "--split"):
            assert ("error: the processes of this run were given different options: process 1 "
                    f"differs from process 0 in {option}; start every process with the same "
                    "command line") in log, (option, log[-3000:])
    assert not list(tmp_path.rglob("*.npz")) and not (tmp_path / "tags.json").exists()
