"""The benchmark scripts refuse bad options with argparse's one-line usage error (exit status
2) before any work: from a new user's trial, `--batches abc`, `--rounds 0` or `--batch 0` ended in
tracebacks, some after minutes of compiling, and contenders asked for by name were dropped."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import (_bench, eval_batch, forward_pieces, gpu_bench, inference,  # noqa: E402
                        install, model_step, train_step)


@pytest.mark.parametrize("parse, argv, says", [
    (model_step.parse_args, ["--batches", "abc"], "argument --batches: 'abc' is not an integer"),
    (model_step.parse_args, ["--batches", "16,0"], "argument --batches: must be at least 1, got 0"),
    (model_step.parse_args, ["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
    (model_step.parse_args, ["--contenders", "ours,authors"],
     "the authors' contenders need --authors PATH"),
    (model_step.parse_args, ["--contenders", "ours,twin", "--variant", "released", "--authors",
                             str(ROOT)], "not a checkout of the authors' repository"),
    (inference.parse_args, ["--devices", "1,x"], "argument --devices: 'x' is not an integer"),
    (inference.parse_args, ["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
    (inference.parse_args, ["--files", "0"], "argument --files: must be at least 1, got 0"),
    (inference.parse_args, ["--seconds", "0"], "--seconds must be above 0, got 0"),
    (inference.parse_args, ["--config", "/no/such/config.py"],
     "--config /no/such/config.py: no such file"),
    (train_step.parse_args, ["--batch-sizes", "16,x"], "'x' is not an integer"),
    (eval_batch.parse_args, ["--sizes", "25,0"], "argument --sizes: must be at least 1, got 0"),
    (eval_batch.parse_args, ["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
    (eval_batch.parse_args, ["--config", "/no/such/config.py"],
     "--config /no/such/config.py: no such file"),
    (install.parse_args, ["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
    (install.parse_args, ["--python", "no-such-python3"], "--python no-such-python3: not found"),
    (train_step.parse_args, ["--steps", "-1"], "must be at least 1, got -1"),
    (forward_pieces.main, ["--batch", "0"], "argument --batch: must be at least 1, got 0"),
    (gpu_bench.parse_args, ["--parts", "train,inferense"],
     "unknown part 'inferense'; choose from train, inference, input"),
    (gpu_bench.parse_args, ["--parts", ","], "--parts: give at least one of train"),
    (model_step.parse_args, ["--phases", ","], "--phases: give at least one of forward"),
    (model_step.parse_args, ["--precision", "tf32"], "--precision tf32 needs --device gpu"),
])
def test_bad_options_are_usage_errors(parse, argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


def test_model_step_contenders(tmp_path, capsys):
    """By default the authors' contenders are left out without --authors (they cannot run); the
    released variant with them is refused at once (their code builds the training variant)."""
    assert model_step.parse_args([]).contenders == ["ours", "twin", "twin_compiled"]
    checkout = tmp_path / "authors"
    (checkout / "training").mkdir(parents=True)
    (checkout / "training" / "model.py").write_text("")
    args = model_step.parse_args(["--authors", str(checkout), "--batches", "16,64"])
    assert args.batches == [16, 64] and "authors" in args.contenders
    with pytest.raises(SystemExit):
        model_step.parse_args(["--authors", str(checkout), "--variant", "released"])
    assert "builds the 'training' variant only" in capsys.readouterr().err


def test_machine_names_the_cpu():
    assert _bench.cpu_name() not in ("", "x86_64")  # the model, not the architecture


def test_model_step_on_a_gpu_needs_one(monkeypatch, capsys):
    """`--device gpu` where JAX has only a CPU stops before any work, in one line (on the lent GPU
    machine benchmarks/gpu.sh runs it; docs/benchmarks.md has its table)."""
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")  # main would set it otherwise
    args = model_step.parse_args(["--device", "gpu", "--precision", "tf32"])
    assert (args.device, args.precision) == ("gpu", "tf32")
    assert model_step.main(["--device", "gpu", "--contenders", "ours"]) == 2
    assert "--device gpu, but JAX's default backend is cpu" in capsys.readouterr().err
