"""`tagger_jax.transfer`: which arrays of a trained model a new run starts from, on plain
NumPy variable trees (the training-side wiring is tested in test_train.py)."""
from __future__ import annotations

import numpy as np
import pytest

from tagger_jax import transfer


def _variables(rng, hidden, tags, extra=False):
    v = {"params": {"conv": {"kernel": rng.normal(size=(3, 3, 1, 4))},
                    "pooler": {"kernel": rng.normal(size=(hidden, hidden)),
                               "bias": rng.normal(size=(hidden,))},
                    "classifier": {"kernel": rng.normal(size=(hidden, len(tags))),
                                   "bias": rng.normal(size=(len(tags),))}},
         "batch_stats": {"bn": {"mean": rng.normal(size=(4,)), "var": rng.random(4)}}}
    if extra:
        v["params"]["frame_classifier"] = {"kernel": rng.normal(size=(hidden, len(tags)))}
    return v


def test_arrays_by_path_and_shape_and_tag_outputs_by_tag_name():
    rng = np.random.default_rng(0)
    old_tags, new_tags = ("piano", "drums", "flute"), ("flute", "harp", "piano", "bass")
    source = _variables(rng, 8, old_tags)
    target = _variables(rng, 8, new_tags, extra=True)
    target["params"]["conv"]["kernel"] = rng.normal(size=(5, 5, 1, 4))  # another shape
    out, report = transfer.transplant(target, new_tags, source, old_tags)
    np.testing.assert_array_equal(out["params"]["pooler"]["kernel"],
                                  source["params"]["pooler"]["kernel"])
    np.testing.assert_array_equal(out["batch_stats"]["bn"]["var"], source["batch_stats"]["bn"]["var"])
    np.testing.assert_array_equal(out["params"]["conv"]["kernel"],  # kept: shapes differ
                                  target["params"]["conv"]["kernel"])
    for leaf in ("kernel", "bias"):  # flute <- column 2, piano <- column 0, harp and bass: init
        got, old, init = (v["params"]["classifier"][leaf] for v in (out, source, target))
        np.testing.assert_array_equal(got[..., 0], old[..., 2])
        np.testing.assert_array_equal(got[..., 2], old[..., 0])
        np.testing.assert_array_equal(got[..., [1, 3]], init[..., [1, 3]])
    np.testing.assert_array_equal(out["params"]["frame_classifier"]["kernel"],  # not in source
                                  target["params"]["frame_classifier"]["kernel"])
    assert report.shared_tags == ("flute", "piano") and report.new_tags == ("harp", "bass")
    assert set(report.by_tag) == {"params/classifier/kernel", "params/classifier/bias"}
    assert set(report.kept) == {"params/conv/kernel", "params/frame_classifier/kernel"}
    assert len(report.copied) == 4
    assert report.unused == ("params/conv/kernel",)
    assert report.summary("runs/x") == (
        "train.init_from runs/x: 6 of this model's 8 weight arrays start from it (2 of them tag "
        "outputs, copied by tag name: 2 tag(s) shared); new tags (init): harp, bass; 2 keep "
        "their init: params/conv/kernel, params/frame_classifier/kernel; 1 of its arrays not "
        "used: params/conv/kernel")
    assert out["params"]["pooler"]["kernel"] is not source["params"]["pooler"]["kernel"]


def test_no_array_in_common_and_no_tag_in_common():
    rng = np.random.default_rng(1)
    tags = ("a", "b")
    with pytest.raises(ValueError, match="no weight array of it has a path and shape"):
        transfer.transplant({"params": {"x": {"kernel": np.zeros((2, 2))}}}, tags,
                            {"params": {"y": {"kernel": np.zeros((2, 2))}}}, tags)
    # Other tags only: the tag outputs keep their init; the rest still starts from the model.
    source, target = _variables(rng, 8, ("c", "d")), _variables(rng, 8, tags)
    out, report = transfer.transplant(target, tags, source, ("c", "d"))
    np.testing.assert_array_equal(out["params"]["classifier"]["kernel"],
                                  target["params"]["classifier"]["kernel"])
    assert report.shared_tags == () and report.new_tags == tags and not report.by_tag


def test_input_differences_name_the_fields():
    ours = {"sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 96,
            "log_scale": "amplitude_to_db", "chunk_frames": 128}
    assert transfer.input_differences(dict(ours, chunk_frames=256), ours) == []
    assert transfer.input_differences(dict(ours, sample_rate=22050, n_mels=128), ours) == [
        "features.sample_rate: 22050 in the model, 16000 here",
        "features.n_mels: 128 in the model, 96 here"]
