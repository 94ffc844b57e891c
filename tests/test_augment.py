"""Log-mel augmentations (`tagger_jax.augment`) against NumPy written here, and in the grain
pipeline: seeded by the step (a resumed run sees the same batches), labels unioned on mixing."""
from __future__ import annotations

import dataclasses

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
    # the activity follows the stretch: on where either interpolated source frame is on
    f = np.zeros((64, 2), np.float32)
    f[10:20, 0] = 1
    np.testing.assert_array_equal(A.time_stretch_activity(f, 1.0), f)
    np.testing.assert_array_equal(A.time_stretch_activity(f, 2.0)[:32], f[::2])
    half = A.time_stretch_activity(f, 0.5)[:, 0]
    np.testing.assert_array_equal(np.flatnonzero(half), np.arange(19, 40))  # t / 2 in [9.5, 20)
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


def test_frame_targets_follow_the_log_mel():
    """With frame targets, augment draws exactly what it draws without them (same log-mel and
    labels), stretches the targets with the log-mel (an impulse of sound and its activity land
    on the same frame) and unions them frame by frame when mixing, for the mixing tags only."""
    x = np.full((96, 64), -80.0)
    f = np.zeros((64, 3), np.float32)
    x[:, 40:44], f[40:44, 0] = 0.0, 1  # tag 0 sounds in frames 40-43
    f[:, 2] = 1  # a clip-wide tag (tempo-like), not mixed
    other_x = np.full((96, 64), -80.0)
    other_f = np.zeros((64, 3), np.float32)
    other_x[:, 5:9], other_f[5:9, 1] = 0.0, 1  # tag 1 sounds in frames 5-8 of the partner
    y, other_y = np.array([1, 0, 1], np.float32), np.array([0, 1, 0], np.float32)
    mix_tags = np.array([True, True, False])
    stretched = mixed = 0
    for seed in range(40):
        params = A.AugmentParams(p_stretch=1.0, stretch=1.3, p_pitch=0.0, p_gain=0.0, p_eq=0.0,
                                 p_reverb=0.0, p_noise=0.0, p_mix=0.5, mix_db=(0.0, 0.0))
        xa, ya = A.augment(x, y, np.random.default_rng(seed), params, (other_x, other_y),
                           mix_tags)
        xb, yb, fb = A.augment(x, y, np.random.default_rng(seed), params,
                               (other_x, other_y, other_f), mix_tags, frames=f)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        loud = xb.max(axis=0) > xb.min() + 1e-9  # any sound above the (mixed) floor
        on = fb[:, 0].astype(bool) | fb[:, 1].astype(bool)
        np.testing.assert_array_equal(loud, on)  # sound exactly where the activity says
        np.testing.assert_array_equal(fb[:, 2], 1.0)  # clip-wide tag kept, never unioned
        stretched += int(not np.array_equal(fb[:, 0], f[:, 0]))
        if yb[1]:
            mixed += 1
            np.testing.assert_array_equal(fb[:, 1], other_f[:, 1])
    assert stretched > 30 and 5 < mixed < 35
    with pytest.raises(ValueError, match="frame targets have 32 frames, the log-mel 64"):
        A.augment(x, y, np.random.default_rng(0), A.AugmentParams(), frames=f[:32])


def test_pipeline_augments_frame_targets_with_the_crop():
    """frame_labels with augmentation: the batch's "x" and "y" equal those without frame labels,
    and each crop's frame targets are its activity moved with it (here, a stretch only)."""
    frames, crop = 90, 32
    ramp = np.tile(np.arange(frames, dtype=np.float16) - 60.0, (96, 1))
    mask = np.zeros((2, frames), np.uint8)
    mask[0, 30:60] = 1
    mask[1] = 1
    source = [{"mel": ramp, "tags": np.ones(2, np.uint8), "tag_mask": mask}] * 6
    params = A.AugmentParams(p_stretch=1.0, stretch=1.3, p_pitch=0.0, p_gain=0.0, p_eq=0.0,
                             p_reverb=0.0, p_noise=0.0)
    kw = dict(global_batch_size=3, seed=2, crop_frames=crop, local_device_count=1, num_epochs=2,
              crop_labels="activity", augment=params, mix_tags=np.array([True, False]))
    with_frames = list(ip.train_dataset(source, frame_labels=True, **kw))
    without = list(ip.train_dataset(source, **kw))
    for a, b in zip(with_frames, without):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])
        for x, fr in zip(a["x"], a["frames"]):
            source_frame = x[0] + 60.0  # the stretched ramp: the source frame each frame reads
            lo, hi = np.floor(source_frame + 1e-3), np.ceil(source_frame - 1e-3)
            expect = ((lo >= 30) & (lo < 60)) | ((hi >= 30) & (hi < 60))
            np.testing.assert_array_equal(fr[:, 0].astype(bool), expect)
            np.testing.assert_array_equal(fr[:, 1], 1.0)
        # activity labels are the tags active in the moved targets
        np.testing.assert_array_equal(a["y"], a["frames"].any(axis=1))
    assert any(not y[0] for b in with_frames for y in b["y"])  # stretched past the instrument
    # mixing: the partner's crop and activity come through the pipeline too. Record i's ramp
    # sits in mel bands 16i..16i+15 (-100 dB elsewhere), so each crop's frames read back apart.
    banded = []
    for i in range(6):
        mel = np.full((96, frames), -100.0, np.float16)
        mel[16 * i:16 * i + 16] = ramp[:16]
        banded.append({"mel": mel, "tags": np.ones(2, np.uint8), "tag_mask": mask})
    mixed = A.AugmentParams(p_stretch=0.0, p_pitch=0.0, p_gain=0.0, p_eq=0.0, p_reverb=0.0,
                            p_noise=0.0, p_mix=1.0, mix_db=(0.0, 0.0))
    partner = dict(kw, augment=mixed, num_epochs=3)
    checked = 0
    for a, b in zip(ip.train_dataset(banded, frame_labels=True, **partner),
                    ip.train_dataset(banded, **partner)):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])
        np.testing.assert_array_equal(a["y"], a["frames"].any(axis=1))
        for x, fr, i in zip(a["x"], a["frames"], a["clip_index"]):
            bands = [k for k in range(6) if x[16 * k].max() > -90]
            if len(bands) != 2:  # mixed with itself: the two ramps overlap
                continue
            on = np.zeros(crop, bool)
            for k in bands:  # each crop's source frames, from its own band
                source_frame = np.round(x[16 * k].astype(np.float64) + 60.0)
                on |= (source_frame >= 30) & (source_frame < 60)
            np.testing.assert_array_equal(fr[:, 0].astype(bool), on)
            np.testing.assert_array_equal(fr[:, 1], 1.0)
            checked += 1
    assert checked >= 6


def _assert_six_draws_only(off: A.AugmentParams, x: np.ndarray, y: np.ndarray) -> None:
    """With every probability 0 and no mixing partner, `augment` leaves `x` as it is and makes
    exactly the six draws of the transforms that always draw (stretch, pitch, gain, EQ, reverb,
    noise): an optional transform switched off adds none."""
    r, r0 = np.random.default_rng(7), np.random.default_rng(7)
    np.testing.assert_array_equal(A.augment(x, y, r, off)[0], np.asarray(x, np.float32))
    r0.random(6)
    assert r.random() == r0.random()


def test_frequency_masks():
    """SpecAugment frequency masks: bands set to the chunk's minimum, at most `freq_masks` bands
    of at most `freq_mask_bins` bins, labels and frame targets unchanged, and with p_freq_mask 0
    the draws of every other transform stay those of a configuration without the field."""
    rng = np.random.default_rng(0)
    x = rng.normal(-30, 10, (96, 64)).astype(np.float32)
    masked = A.freq_mask(x, 10, 5)
    np.testing.assert_array_equal(masked[10:15], np.full((5, 64), x.min()))
    np.testing.assert_array_equal(np.delete(masked, range(10, 15), axis=0),
                                  np.delete(x, range(10, 15), axis=0))
    only = A.AugmentParams(p_stretch=0, p_pitch=0, p_gain=0, p_eq=0, p_reverb=0, p_noise=0,
                           p_freq_mask=1.0, freq_masks=2, freq_mask_bins=12)
    y = np.array([1, 0, 1], np.float32)
    frames = (rng.random((64, 3)) < 0.5).astype(np.float32)
    widths = []
    for seed in range(200):
        out, labels, f = A.augment(x, y, np.random.default_rng(seed), only, frames=frames)
        hit = np.all(out == x.min(), axis=1) & ~np.all(x == x.min(), axis=1)
        np.testing.assert_array_equal(out[~hit], x[~hit].astype(np.float32))
        widths.append(int(hit.sum()))
        np.testing.assert_array_equal(labels, y)
        np.testing.assert_array_equal(f, frames)
    assert max(widths) <= 24 and max(widths) > 12 and min(widths) < 6  # two masks of 0-12 bins
    wide = dataclasses.replace(only, freq_masks=1, freq_mask_bins=500)  # wider than the bands
    assert A.augment(x, y, np.random.default_rng(1), wide)[0].shape == x.shape
    _assert_six_draws_only(dataclasses.replace(only, p_freq_mask=0.0), x, y)
    assert A.AugmentParams().p_freq_mask == 0.0  # off unless a config asks for it


def test_envelope_shift():
    """The spectral envelope (cepstral liftering, against SciPy's DCT) moves by the drawn bins and
    the fine structure stays; a full-order envelope moves everything (the pitch shift); labels and
    frame targets are unchanged; with p_envelope 0 (the default) no draw is made for it."""
    from scipy.fft import dct, idct

    rng = np.random.default_rng(0)
    x = rng.normal(-30, 10, (96, 16))
    cep = dct(x, type=2, norm="ortho", axis=0)
    cep[12:] = 0
    np.testing.assert_allclose(A.spectral_envelope(x, 12), idct(cep, type=2, norm="ortho", axis=0),
                               atol=1e-9)
    np.testing.assert_array_equal(A.envelope_shift(x, 0.0, 12), x)
    np.testing.assert_allclose(A.envelope_shift(x, 2.0, 96), A.pitch_shift(x, 2), atol=1e-9)
    # a smooth envelope (cepstral index 3) plus a fine ripple (index 40): only the envelope moves
    b = np.arange(96)
    envelope = 12 * np.cos(np.pi * 3 * (2 * b + 1) / 192)
    ripple = 4 * np.cos(np.pi * 40 * (2 * b + 1) / 192)
    frame = np.stack([-30 + envelope + ripple] * 2, axis=1)
    moved = A.envelope_shift(frame, 3.0, 12)
    np.testing.assert_allclose(moved[3:, 0], (-30 + envelope[:-3] + ripple[3:]), atol=1e-9)
    np.testing.assert_allclose(moved[:3, 0], -30 + envelope[0] + ripple[:3], atol=1e-9)
    quarter = A.envelope_shift(frame, 0.25, 12)  # band b reads the envelope at b - 0.25
    np.testing.assert_allclose(quarter[1:, 0],
                               -30 + 0.75 * envelope[1:] + 0.25 * envelope[:-1] + ripple[1:],
                               atol=1e-9)
    only = A.AugmentParams(p_stretch=0, p_pitch=0, p_gain=0, p_eq=0, p_reverb=0, p_noise=0,
                           p_envelope=1.0, envelope_bins=2.0, envelope_order=12)
    y = np.array([1, 0, 1], np.float32)
    frames = (rng.random((16, 3)) < 0.5).astype(np.float32)
    out, labels, f = A.augment(x, y, np.random.default_rng(3), only, frames=frames)
    assert not np.allclose(out, x, atol=1e-3)
    fine = x - A.spectral_envelope(x, 12)  # the fine structure kept, away from the edge bands
    np.testing.assert_allclose((out - A.spectral_envelope(out.astype(np.float64), 12))[8:-8],
                               fine[8:-8], atol=0.3)
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(f, frames)
    _assert_six_draws_only(dataclasses.replace(only, p_envelope=0.0), x, y)
    assert A.AugmentParams().p_envelope == 0.0  # off unless a config asks for it


def test_each_crop_of_a_record_gets_its_own_augmentation():
    """data.crops_per_record = 2: crop 0 of a record is augmented as with one crop per record,
    crop 1 from its own stream (augment_rng(seed, epoch, record, 1)), reproducibly."""
    source = _source()
    params = A.AugmentParams(p_mix=1.0)
    kw = dict(global_batch_size=4, seed=5, crop_frames=64, local_device_count=1, num_epochs=1)
    one = list(ip.train_dataset(source, augment=params, **kw))
    two = list(ip.train_dataset(source, augment=params, crops_per_record=2, **kw))
    again = list(ip.train_dataset(source, augment=params, crops_per_record=2, **kw))
    first = {int(i): x for b in one for x, i in zip(b["x"], b["clip_index"])}
    assert len(two) == 2 * len(one)
    for step, (batch, same) in enumerate(zip(two, again)):
        np.testing.assert_array_equal(batch["x"], same["x"])
        for r, index in enumerate(batch["clip_index"]):
            if step % 2 == 0:  # crop 0 of each record of the group
                np.testing.assert_array_equal(batch["x"][r], first[int(index)])
            else:
                assert not np.allclose(batch["x"][r], two[step - 1]["x"][r])
