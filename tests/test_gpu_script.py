"""benchmarks/gpu.sh runs as-is without the data stack (as on a lent GPU machine), shrunk for CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed here, absent on the GPU machine: importing any of them must fail in the subprocess.
DATA_STACK = ("librosa", "grain", "ml_collections", "tensorflow_datasets", "tensorflow",
              "soundfile", "array_record")


@pytest.mark.slow
def test_gpu_script_small_runs_without_data_stack(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in DATA_STACK))
    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu",
               PYTHONPATH=str(tmp_path))
    blocked = subprocess.run([sys.executable, "-c", "import grain"], env=env,
                             capture_output=True, text=True)
    assert blocked.returncode != 0 and "grain" in blocked.stderr  # the block works
    out_json = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--small",
                           "--json", str(out_json)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 x cpu (cpu)" in proc.stdout and "NOT a measurement" in proc.stdout
    result = json.loads(out_json.read_text())
    assert [(r["batch"], r["dtype"]) for r in result["train"]] == [(4, "float32"), (4, "bfloat16")]
    assert all(r["clips_per_s"] > 0 for r in result["train"])
    for dtype in ("float32", "bfloat16"):
        assert result["inference"][dtype]["forward"] > 0
        assert result["inference"][dtype]["contribution"] > 0
    assert result["host_input_clips_per_s"] > 0
    assert "measured on CPU" in proc.stdout


def test_gpu_script_refuses_a_machine_without_a_gpu():
    """Without --small, a machine whose JAX has no GPU gets one line, not minutes of the paper
    model benchmarked on a CPU (a new user's run of the script on the wrong machine)."""
    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "bench"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "benchmarks/gpu.sh: JAX sees no GPU here; for a CPU smoke test use --small")
    assert "gpu_bench" not in proc.stdout


def test_the_gpu_benchmarks_copy_of_the_paper_config_matches_it():
    """benchmarks/train_step.py keeps the paper config as plain dicts (the GPU machine lacks
    ml-collections); they must stay what configs/paper_mtat.py says."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import train_step
    from tagger_jax.config_base import paper_mtat_config
    from tagger_jax.models import model_fields

    paper = paper_mtat_config()
    assert train_step.PAPER_MODEL == dict(model_fields(paper.model))
    assert {k: paper.train[k] for k in train_step.PAPER_TRAIN} == {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in train_step.PAPER_TRAIN.items()}
