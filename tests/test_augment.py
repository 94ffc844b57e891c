"""Log-mel augmentations (`tagger_jax.augment`) against NumPy written here, and in the grain
pipeline: seeded by the step (a resumed run sees the same batches), labels unioned on mixing."""
from __future__ import annotations

import numpy as np
import pytest

from tagger_jax import augment as A
from tagger_jax import input_pipeline as ip


def test_transforms_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(-30, 10, (96, 64))
    np.testing.assert_array_equal(A.time_stretch(x, 1.0), x)
    np.testing.assert_allclose(A.time_stretch(x, 2.0)[:, :32], x[:, ::2])
    np.testing.assert_allclose(A.time_stretch(x, 0.5)[:, 1], (x[:, 0] + x[:, 1]) / 2)
    np.testing.assert_array_equal(A.pitch_shift(x, 2)[2:], x[:-2])
    np.testing.assert_array_equal(A.pitch_shift(x, 2)[:2], x[[0, 0]])
    y = rng.normal(-30, 10, (96, 64))
    np.testing.assert_allclose(A.mix(x, y, -6.0),
                               10 * np.log10(10 ** (x / 10) + 10 ** (-0.6) * 10 ** (y / 10)))
    impulse = np.full((4, 200), -100.0)
    impulse[:, 10] = 0.0
    wet = A.reverb(impulse, rt60_s=0.5, wet_db=-6.0)
    assert wet[0, 10] == pytest.approx(0.0, abs=1e-6)  # the dry path is unchanged
    tail = 10 ** (wet[0, 11:] / 10) - 10 ** (impulse[0, 11:] / 10)
    assert 10 * np.log10(tail.sum()) == pytest.approx(-6.0, abs=1e-6)  # wet level
    assert np.all(np.diff(tail[:30]) < 0)  # decaying
    noisy = A.add_noise(np.full((96, 400), -20.0), 20.0, np.random.default_rng(1))
    assert 10 * np.log10(np.mean(10 ** (noisy / 10)) / 10 ** -2) == pytest.approx(
        10 * np.log10(1.01), abs=0.01)
    with pytest.raises(ValueError, match="unknown augmentation fields"):
        A.AugmentParams.from_dict({"p_gain": 1.0, "speed": 2})


def _source(n=12, tags=4):
    rng = np.random.default_rng(3)
    return [{"mel": rng.normal(-30, 8, (96, 150)).astype(np.float16),
             "tags": np.eye(tags, dtype=np.uint8)[i % tags]} for i in range(n)]


def test_pipeline_augments_deterministically_and_mixes_labels():
    source = _source()
    params = A.AugmentParams(p_mix=1.0)
    kw = dict(global_batch_size=4, seed=5, crop_frames=64, local_device_count=1, num_epochs=2)
    mix_tags = np.array([True, True, True, False])
    a = list(ip.train_dataset(source, augment=params, mix_tags=mix_tags, **kw))
    b = list(ip.train_dataset(source, augment=params, mix_tags=mix_tags, **kw))
    plain = list(ip.train_dataset(source, **kw))
    for ba, bb, bp in zip(a, b, plain):
        np.testing.assert_array_equal(ba["x"], bb["x"])
        np.testing.assert_array_equal(ba["clip_index"], bp["clip_index"])
        assert not np.allclose(ba["x"], bp["x"])
        for row, idx in zip(ba["y"], ba["clip_index"]):
            own = source[idx]["tags"].astype(np.float32)
            assert np.all(row >= own)  # own labels kept, partner's added
            assert row[3] == own[3]  # not a mixing tag: the first clip's label
    assert any(row.sum() > 1 for batch in a for row in batch["y"])
    # a resumed loader gives the same augmented batches from its state
    loader = ip.train_loader(source, augment=params, mix_tags=mix_tags, **kw)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    rest = [next(it) for _ in range(3)]
    again = iter(ip.train_loader(source, augment=params, mix_tags=mix_tags, **kw))
    again.set_state(state)
    for x, y in zip(rest, [next(again) for _ in range(3)]):
        np.testing.assert_array_equal(x["x"], y["x"])
    np.testing.assert_array_equal(first[0]["x"], a[0]["x"])
    with pytest.raises(ValueError, match="log-mel input only"):
        ip.train_dataset([{"audio": np.zeros(70000, np.float32), "tags": np.zeros(4)}],
                         augment=params, input_kind="audio", **kw)
