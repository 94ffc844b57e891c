"""`build-dataset` output (issue 10 item 15): one progress bar (ours), no TFDS messages that are
false for builds that download nothing, no TFDS warnings about folders it is still writing."""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf

from tagger_jax import cli
from tagger_jax.commands import build_dataset
from tagger_jax.config_base import base_config

NOISE = ("Unknown size", "dataset_info.json", "Generating splits", "Generating train examples",
         "Shuffling", "downloaded and prepared", "Dl Completed", "Extraction completed")


def test_build_prints_one_bar_and_no_false_messages(tmp_path, capfd):
    manual = tmp_path / "manual"
    (manual / "songs").mkdir(parents=True)
    rows = ["path,tags"]
    for k in range(5):
        sf.write(manual / "songs" / f"s{k}.wav",
                 0.2 * np.sin(np.arange(16000) * 0.01 * (k + 1)), 16000)
        rows.append(f"songs/s{k}.wav,{'rock' if k % 2 else 'jazz'}")
    rows.append("songs/gone.wav,rock")  # one file skipped, counted in the singular
    (manual / "labels.csv").write_text("\n".join(rows) + "\n")
    rc = cli.main(["build-dataset", "audio_folder", "--data-dir", str(tmp_path / "data"),
                   "--manual-dir", str(manual), "--num-workers", "1"])
    out, err = capfd.readouterr()
    assert rc == 0, out + err
    for noise in NOISE:
        assert noise not in out + err, noise
    assert "audio_folder train" in err  # our bar, one split at a time
    assert f"building audio_folder/default 1.0.0 in {tmp_path / 'data'}" in err
    assert "train" in out and "clips" in out
    assert "\n1 file skipped (listed in " in out


def test_data_dir_defaults_to_the_configs_default():
    import argparse

    parser = argparse.ArgumentParser()
    build_dataset.add_arguments(parser)
    args = parser.parse_args(["synthetic_tags"])
    assert args.data_dir == base_config().data.data_dir == "~/tensorflow_datasets"
    assert os.path.expanduser(args.data_dir) != args.data_dir


def test_tag_names_holding_a_comma_are_quoted_in_the_summary(tmp_path, capfd):
    """The summary joined the tags with ", ", so a tag named "flute, loud" read as two tags."""
    manual = tmp_path / "manual"
    (manual / "songs").mkdir(parents=True)
    rows = ["path,tags"]
    for k in range(3):
        sf.write(manual / "songs" / f"s{k}.wav", 0.2 * np.sin(np.arange(8000) * 0.02), 16000)
        rows.append(f'songs/s{k}.wav,"flute, loud"' if k else f"songs/s{k}.wav,drums")
    (manual / "labels.csv").write_text("\n".join(rows) + "\n")
    rc = cli.main(["build-dataset", "audio_folder", "--data-dir", str(tmp_path / "data"),
                   "--manual-dir", str(manual), "--num-workers", "1"])
    out, err = capfd.readouterr()
    assert rc == 0, out + err
    assert '\n2 tags: "flute, loud", "drums"\n' in out


def test_listed_quotes_only_when_a_bare_join_would_mislead():
    from tagger_jax.tags import listed

    assert listed(["rock", "jazz"]) == "rock, jazz"
    assert listed(["rock", " jazz"]) == '"rock", " jazz"'
    assert listed(["a,b", "Café"]) == '"a,b", "Café"'
    assert listed([]) == ""


def test_the_summary_pads_split_names_by_terminal_columns():
    """A trial's extra splits `日本` and `ｆｕｌｌ` pushed their counts out of the column (a
    wide character takes two columns, `len` counts one)."""
    assert build_dataset.display_width("train") == 5
    assert build_dataset.display_width("日本") == 4 and build_dataset.display_width("ｆｕｌｌ") == 8
    assert build_dataset.display_width("e\u0301") == 1  # a combining accent takes none
