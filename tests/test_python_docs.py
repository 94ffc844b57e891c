"""docs/python.md's examples run as written: each ```python block, in a fresh process, from a
directory laid out like the repository root (its configs and bundled clip) whose
`runs/soundfont` holds a small model with the main job's tag names (random weights)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from tagger_jax import checkpoint, cli, gm_score
from tagger_jax.config_base import base_config
from tagger_jax.models import build_model

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "python.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("root")
    os.symlink(ROOT / "configs", d / "configs")
    (d / "tagger_jax" / "data").mkdir(parents=True)
    os.symlink(ROOT / "tagger_jax" / "data" / "example_gm.flac",
               d / "tagger_jax" / "data" / "example_gm.flac")
    config = base_config()
    config.model.update(conv_channels=2, attention_channels=16, attention_heads=2,
                        intermediate=32)
    config.features.chunk_frames = 64
    model = build_model(config.model, len(gm_score.TAGS))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 96, 64)))
    checkpoint.save_model(d / "runs" / "soundfont", variables, config, gm_score.TAGS)
    return d


def test_the_page_has_its_examples():
    assert len(BLOCKS) == 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(root, index, tmp_path):
    code = BLOCKS[index]
    env = dict(os.environ, HOME=str(tmp_path))  # a build lands in this test's own home
    if "train_and_evaluate" in code:  # the smallest run of the example's own lines
        code = code.replace("config.train.num_epochs = 1", textwrap_indent(
            "config.train.num_epochs = 1\n"
            "config.data.builder_config = 'tiny'\n"
            "config.data.data_dir = 'tfds'\n"
            "config.train.batch_size = 2\n"
            "config.train.eval_batch_size = 2\n"))
        assert cli.main(["build-dataset", "synthetic_tags", "--config", "tiny", "--data-dir",
                         str(root / "tfds"), "--num-workers", "1", "--set", "num_train=4",
                         "--set", "num_validation=2", "--set", "num_test=2"]) == 0
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    if "write_csv" in code:
        header = (root / "tags.csv").read_text().splitlines()[0].split(",")
        assert header == ["file", "duration_s", *gm_score.TAGS]
    if "array_inputs" in code:  # two tagged, and explained into files as `explain` writes
        assert [line.split(" {")[0] for line in out.stdout.splitlines()] == [
            "clip", "clip +3.5 dB"], out.stdout
        assert sorted(p.name for p in (root / "explained_in_memory").glob("*.json")) == [
            "clip.json", "clip_+3.5_dB.json"]
    if "methods.explain" in code:
        assert f", {len(gm_score.TAGS)}, " in out.stdout.splitlines()[-1], out.stdout
    if "train_and_evaluate" in code:
        assert (root / "runs" / "from_python" / "best_model" / "tagger.json").exists()


def textwrap_indent(text: str) -> str:
    """`text`'s lines indented like the example's body (4 spaces), the first left as is."""
    first, *rest = text.rstrip("\n").split("\n")
    return "\n".join([first] + ["    " + line for line in rest])
