"""Importing the authors' state dicts: layout, file formats, strict errors, CLI, torch twin."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for benchmarks.torch_twin

from benchmarks import torch_twin  # noqa: E402
from tagger_jax import authors  # noqa: E402
from tagger_jax.authors import AuthorsImportError, import_state_dict, read_state_dict  # noqa: E402
from tagger_jax.checkpoint import CheckpointError, load_model  # noqa: E402
from tagger_jax.commands import import_authors  # noqa: E402
from tagger_jax.models import build_model  # noqa: E402
from tagger_jax.tags import MTAT_TOP50  # noqa: E402

KEY_FILE = Path(__file__).parent / "data" / "authors-state-dict-keys.txt"
VARIANTS = ("training", "released")


def key_file(variant: str) -> dict[str, tuple[int, ...]]:
    """The key file's section for a variant, in its order."""
    sections = KEY_FILE.read_text().split("## ")[1:]
    section = sections[VARIANTS.index(variant)].strip().splitlines()
    assert section[0].startswith(variant)
    out = {}
    for line in section[1:]:
        key, shape = line.split(" ", 1)
        out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s)
    return out


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    import_authors.add_arguments(parser)
    return import_authors.run(parser.parse_args(list(argv)))


# ------------------------------------------------------------------ layout and configs

@pytest.mark.parametrize("variant", VARIANTS)
def test_layouts_equal_key_file(variant):
    expected = key_file(variant)
    state = torch_twin.random_state_dict(variant)
    assert [(k, v.shape) for k, v in state.items()] == list(expected.items())
    assert authors.authors_shapes(variant) == {
        k: s for k, s in expected.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("variant, filename", [("training", "paper_mtat.py"),
                                               ("released", "authors_released.py")])
def test_authors_config_equals_config_file(variant, filename):
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert authors.authors_config(variant).to_dict() == module.get_config().to_dict()


# ------------------------------------------------------------------ mapping and file formats

@pytest.mark.parametrize("prefix", ["", "module."])
def test_npz_round_trip_and_mapping(tmp_path, prefix):
    state = torch_twin.random_state_dict("released", seed=3)
    path = tmp_path / "ponswon.npz"
    np.savez(path, **{prefix + k: v for k, v in state.items()})
    read = read_state_dict(path)
    assert sorted(read) == sorted(prefix + k for k in state)
    for k, v in state.items():
        np.testing.assert_array_equal(read[prefix + k], v)
    renamed = tmp_path / "released.bin"  # a torch suffix on an .npz (a new user's trial)
    renamed.write_bytes(path.read_bytes())
    assert sorted(read_state_dict(renamed)) == sorted(read)

    variables, config = import_state_dict(read, "released")
    reference, _ = import_state_dict(state, "released")
    jax.tree.map(np.testing.assert_array_equal, variables, reference)
    assert config.model.conv_channels == 8 and config.model.positions == "learned"
    assert {a.dtype for a in jax.tree.leaves(variables)} == {np.dtype(np.float32)}
    # Every number of the state dict (bar the step counters) lands somewhere exactly once.
    n_state = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert sum(a.size for a in jax.tree.leaves(variables)) == n_state

    p, bs = variables["params"], variables["batch_stats"]
    s = state
    np.testing.assert_array_equal(p["frontend"]["vertical_38"]["kernel_1"],
                                  s["front_end.layers.4.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["frontend"]["vertical_86"]["bias_2"],
                                  s["front_end.layers.2.conv.bias"])
    np.testing.assert_array_equal(p["frontend"]["horizontal"]["kernel_3"][0, :, 0, :],
                                  s["front_end.layers.9.conv.weight"][:, 0, :].T)
    np.testing.assert_array_equal(
        bs["frontend"]["vertical_86_bn"]["var"],
        np.concatenate([s[f"front_end.layers.{i}.bn.running_var"] for i in (0, 1, 2)]))
    np.testing.assert_array_equal(
        p["frontend"]["horizontal_bn"]["scale"],
        np.concatenate([s[f"front_end.layers.{i}.bn.weight"] for i in (6, 7, 8, 9)]))
    np.testing.assert_array_equal(bs["frontend"]["input_bn"]["mean"],
                                  s["front_end.input_bn.running_mean"])
    np.testing.assert_array_equal(p["conv1x1"]["kernel"], s["front_end.conv1x1.weight"][:, :, 0].T)
    np.testing.assert_array_equal(bs["conv1x1_bn"]["var"], s["front_end.bn.running_var"])
    np.testing.assert_array_equal(p["encoder"]["layer_1"]["attention"]["query"]["kernel"],
                                  s["back_end.encoder.layer.1.attention.self.query.weight"].T)
    np.testing.assert_array_equal(p["encoder"]["layer_0"]["output_norm"]["scale"],
                                  s["back_end.encoder.layer.0.output.LayerNorm.weight"])
    np.testing.assert_array_equal(p["embedding"]["position_embeddings"],
                                  s["back_end.embedding.position_embeddings.weight"])
    np.testing.assert_array_equal(p["classifier"]["kernel"], s["classifier.weight"].T)


def test_one_error_names_every_bad_key():
    state = torch_twin.random_state_dict("training")
    del state["back_end.pooler.dense.bias"]
    state["back_end.extra.weight"] = np.zeros(3, np.float32)
    state["front_end.layers.7.conv.weight"] = np.zeros((32, 1, 128), np.float32)
    with pytest.raises(AuthorsImportError) as info:
        import_state_dict(state, "training")
    message = str(info.value)
    for expected in ("missing keys (1): back_end.pooler.dense.bias",
                     "unknown keys (1): back_end.extra.weight",
                     "front_end.layers.7.conv.weight (32, 1, 128) (expected (32, 1, 129))"):
        assert expected in message


def test_front_end_width_is_read_from_the_state_dict(tmp_path, capsys):
    """Their training code takes c as --conv_channels: a state dict with c = 4 imports as the
    'training' variant with conv_channels 4 (the rest of its geometry), the closing line says
    where c came from, and the model runs."""
    rng = np.random.default_rng(1)
    state = {k: rng.normal(0.0, 0.1, shape).astype(np.float32) + (k.endswith("running_var"))
             for k, shape in authors.authors_shapes("training", conv_channels=4).items()}
    assert state["front_end.layers.0.conv.weight"].shape == (4, 1, 86, 7)
    variables, config = import_state_dict(state, "training")
    assert config.model.conv_channels == 4 and config.model.positions == "sinusoidal"
    np.testing.assert_array_equal(variables["params"]["frontend"]["vertical_86"]["kernel_0"],
                                  state["front_end.layers.0.conv.weight"].transpose(2, 3, 1, 0))
    x = np.zeros((1, 96, 256), np.float32)
    assert np.isfinite(build_model(config.model, 50).apply(variables, x)).all()
    path = tmp_path / "c4.npz"
    np.savez(path, **state)
    assert run_cli(str(path), "--variant", "training", "--out", str(tmp_path / "m")) == 0
    assert "conv_channels=4 read from the state dict, not the variant's 16" in \
        capsys.readouterr().out


def test_wrong_variant_and_bad_values_are_explained():
    state = torch_twin.random_state_dict("released")
    with pytest.raises(AuthorsImportError, match="state dict of the 'released' variant"):
        import_state_dict(state, "training")
    state["classifier.bias"][3] = np.nan
    with pytest.raises(AuthorsImportError, match="non-finite.*classifier.bias"):
        import_state_dict(state, "released")
    both = {**torch_twin.random_state_dict("released"), "module.classifier.bias": np.zeros(50)}
    with pytest.raises(AuthorsImportError, match="with and without the 'module.' prefix"):
        import_state_dict(both, "released")


def test_a_tag_list_of_another_length_is_named_as_such():
    """From a new user's trial: a 2-line --tags file read as a broken checkpoint ("wrong shapes
    (2): classifier.weight (50, 512) (expected (2, 512)) ...")."""
    with pytest.raises(AuthorsImportError) as e:
        import_state_dict(torch_twin.random_state_dict("released"), "released", num_tags=2)
    assert str(e.value) == ("the tag list names 2 tags but the state dict's classifier has 50 "
                            "outputs (classifier.weight (50, 512)): give --tags a file of 50 "
                            "names in the classifier's order")


def test_unreadable_files_are_named(tmp_path, monkeypatch):
    with pytest.raises(AuthorsImportError, match="missing.pth: no such file"):
        read_state_dict(tmp_path / "missing.pth")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(AuthorsImportError, match="notes.txt: neither a PyTorch"):
        read_state_dict(text)
    # from a new user's trial: a folder was "no such file", a text file named .pth gave
    # torch's "KeyError: 101", an empty one torch's own words
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pth").write_bytes(b"\x80")
    with pytest.raises(AuthorsImportError, match=r"run: is a directory; give the state dict file "
                                                 r"\(.pth or .npz\), e.g. best.pth in it$"):
        read_state_dict(tmp_path / "run")
    (tmp_path / "hello.pth").write_text("hello\n")
    with pytest.raises(AuthorsImportError, match=r"hello.pth: not a PyTorch file: neither "
                                                 r"torch.save's zip archive nor a pickle \(it "
                                                 r"starts with b'hello\\n'\)$"):
        read_state_dict(tmp_path / "hello.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(AuthorsImportError, match=r"empty.pth: empty file \(0 bytes\)$"):
        read_state_dict(tmp_path / "empty.pth")
    bad_npz = tmp_path / "broken.npz"
    bad_npz.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(AuthorsImportError, match="broken.npz: not a readable .npz"):
        read_state_dict(bad_npz)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    (tmp_path / "x.pth").write_bytes(b"\x80\x02}q\x00.")  # a pickled empty dict
    with pytest.raises(AuthorsImportError, match=r"x.pth: .*pip install 'tagger-jax\[torch\]'"):
        read_state_dict(tmp_path / "x.pth")


# ------------------------------------------------------------------ CLI

@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released-variant state dict as .npz, its import, and one compiled forward."""
    state = torch_twin.random_state_dict("released", seed=4)
    path = tmp_path_factory.mktemp("state") / "ponswon.npz"
    np.savez(path, **state)
    variables, config = import_state_dict(state, "released")
    model = build_model(config.model, 50)
    apply = jax.jit(model.apply)
    x = np.random.default_rng(5).normal(size=(2, 96, 256)).astype(np.float32)
    return state, path, variables, apply, x


def test_cli_writes_a_loadable_model(released, tmp_path, capsys):
    state, path, variables, apply, x = released
    out = tmp_path / "model"
    assert run_cli(str(path), "--variant", "released", "--out", str(out)) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith("imported 6,878,308 parameters (released variant")
    assert str(out) in summary and "\n" not in summary

    loaded = load_model(out)
    assert loaded.tags == MTAT_TOP50
    assert loaded.config.model.conv_channels == 8
    assert loaded.config.model.positions == "learned"
    np.testing.assert_array_equal(apply(loaded.variables, x), apply(variables, x))


def test_cli_errors_exit_2_without_traceback(released, tmp_path, capsys):
    state, *_ = released
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{k: v for k, v in state.items() if k != "classifier.weight"})
    assert run_cli(str(bad), "--variant", "released", "--out", str(tmp_path / "m")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: state dict does not match") and err.count("\n") == 1
    assert "classifier.weight" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
    assert run_cli(str(tmp_path / "nope.pth"), "--variant", "training", "--out",
                   str(tmp_path / "m")) == 2
    assert "nope.pth: no such file" in capsys.readouterr().err


def test_cli_says_when_it_converts_half_precision_arrays(tmp_path, capsys):
    """A state dict saved in float16 (`model.half()`) imported as float32 without a word; now a
    note counts the arrays (exact: every float16 is a float32), and the weights are those."""
    state = torch_twin.random_state_dict("released", seed=4)
    half = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in state.items()}
    path = tmp_path / "half.npz"
    np.savez(path, **half)
    out = tmp_path / "model"
    assert run_cli(str(path), "--variant", "released", "--out", str(out)) == 0
    floats = sum(v.dtype == np.float16 for v in half.values())
    assert (f"note: {floats} arrays are float16 in the state dict: imported as float32 (exact "
            "from float16; float64 is rounded)") in capsys.readouterr().out
    reference, _ = import_state_dict({k: np.asarray(v, np.float32) if v.dtype == np.float16
                                      else v for k, v in half.items()}, "released")
    jax.tree.map(np.testing.assert_array_equal, load_model(out).variables,
                 jax.tree.map(np.asarray, reference))


def test_cli_tag_names_from_a_file_and_a_protected_out(released, tmp_path, capsys):
    """--tags FILE names the classifier's outputs (a model trained on MSD with their code);
    --out refuses a folder of other files and says when it replaces a model."""
    _, path, *_ = released
    names = tmp_path / "50tagList.txt"
    # Saved by a Windows editor: a byte-order mark and CRLF line ends. The mark stayed in the
    # first name ('\ufefftag0', found by a new user's trial) and no dataset matched it.
    names.write_bytes(b"\xef\xbb\xbf" + "".join(f"tag{k}\r\n" for k in range(50)).encode())
    out = tmp_path / "msd_model"
    assert run_cli(str(path), "--variant", "released", "--out", str(out), "--tags",
                   str(names)) == 0
    assert "50 tags from 50tagList.txt" in capsys.readouterr().out
    assert load_model(out).tags == tuple(f"tag{k}" for k in range(50))
    assert run_cli(str(path), "--variant", "released", "--out", str(out)) == 0
    assert "it replaced the model that was there" in capsys.readouterr().out
    names.write_text("a\nb\n")  # 2 names for a 50-output classifier
    assert run_cli(str(path), "--variant", "released", "--out", str(tmp_path / "x"), "--tags",
                   str(names)) == 2
    assert "classifier.weight" in capsys.readouterr().err  # the shapes say 50, not 2
    with pytest.raises(CheckpointError, match=r"ponswon.npz: not a tagger-jax model directory .*"
                       r"`tagger-jax import-authors ponswon.npz --variant released\|training"):
        load_model(path)  # the state dict itself given as --checkpoint
    music = tmp_path / "music"
    music.mkdir()
    (music / "a.txt").write_text("mine")
    assert run_cli(str(path), "--variant", "released", "--out", str(music)) == 4
    assert "holds other files than a tagger-jax model" in capsys.readouterr().err
    assert sorted(p.name for p in music.iterdir()) == ["a.txt"]


# ------------------------------------------------------------------ torch

@pytest.mark.torch
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_twin_state_dict_equals_key_file(variant):
    pytest.importorskip("torch")
    twin = torch_twin.build_twin(variant)
    assert [(k, tuple(v.shape)) for k, v in twin.state_dict().items()] == \
        list(key_file(variant).items())


@pytest.mark.torch
def test_pth_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    state = torch_twin.random_state_dict("training", seed=6)
    twin = torch_twin.build_twin("training")
    torch_twin.load_numpy_state_dict(twin, state)
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pt"
    torch.save(twin.state_dict(), plain)
    torch.save({"state_dict": {"module." + k: v for k, v in twin.state_dict().items()},
                "epoch": 3}, wrapped)
    solver = tmp_path / "solver.pth"  # the authors' solver saves {"model": state_dict}
    torch.save({"model": twin.state_dict()}, solver)
    assert sorted(read_state_dict(solver)) == sorted(state)
    whole = tmp_path / "whole.pth"  # a pickled module: refused in one line saying what it is
    torch.save(torch.nn.Linear(2, 2), whole)
    with pytest.raises(AuthorsImportError, match=r"whole.pth: holds pickled Python objects \(a "
                       r"whole model\?\), not only tensors; .*save model.state_dict\(\)"):
        read_state_dict(whole)
    other = tmp_path / "other.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 1e-4}}, other)
    with pytest.raises(AuthorsImportError, match=r"found a dict of 'epoch', 'optimizer'"):
        read_state_dict(other)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(plain.read_bytes()[:5000])
    with pytest.raises(AuthorsImportError, match=r"cut.pth: not a readable PyTorch file") as e:
        read_state_dict(cut)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    for path, prefix in ((plain, ""), (wrapped, "module.")):
        read = read_state_dict(path)
        assert sorted(read) == sorted(prefix + k for k in state)
        for k, v in state.items():
            np.testing.assert_array_equal(read[prefix + k], v)
    variables, _ = import_state_dict(read_state_dict(wrapped), "training")
    reference, _ = import_state_dict(state, "training")
    jax.tree.map(np.testing.assert_array_equal, variables, reference)


@pytest.mark.torch
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_twin_forward_equals_ours(released, variant):
    torch = pytest.importorskip("torch")
    state, _, variables, apply, x = released
    if variant == "training":  # the released fixture's compiled call serves the other case
        state = torch_twin.random_state_dict("training", seed=7)
        variables, config = import_state_dict(state, "training")
        apply = jax.jit(build_model(config.model, 50).apply)
    twin = torch_twin.build_twin(variant).eval()
    torch_twin.load_numpy_state_dict(twin, state)
    with torch.no_grad():
        expected = torch.sigmoid(twin(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(jax.nn.sigmoid(apply(variables, x)), expected, atol=1e-5, rtol=0)
