"""The synthetic music generator: determinism, and labels that are audible in the audio.

Each label check measures the audio with an independent tool (NumPy RMS, librosa onsets and YIN
pitch, spectra) and would fail if the generator's label and sound disagreed.
"""
from __future__ import annotations

import librosa
import numpy as np
import pytest

from tagger_jax import synth

SR = synth.SAMPLE_RATE
HOP = 256


def _tags(vector) -> set[str]:
    return {t for t, v in zip(synth.SYNTH_TAGS, vector) if v}


def _rms_db(x) -> float:
    return 10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2))


def _onset_rate(audio) -> float:
    onsets = librosa.onset.onset_detect(y=audio, sr=SR, hop_length=HOP, units="time")
    return len(onsets) / (len(audio) / SR)


def test_vocabulary():
    assert len(set(synth.SYNTH_TAGS)) == len(synth.SYNTH_TAGS)
    used = {t for tags in synth.INSTRUMENTS.values() for t in tags} | set(synth.GLOBAL_TAGS)
    assert used == set(synth.SYNTH_TAGS)  # every tag can occur, none is undefined


def test_deterministic_per_seed():
    a1, t1, m1 = synth.generate_clip((0, 1, 2), 3.0)
    a2, t2, m2 = synth.generate_clip((0, 1, 2), 3.0)
    assert a1.dtype == np.float32 and a1.shape == (3 * SR,)
    assert a1.tobytes() == a2.tobytes() and np.array_equal(t1, t2) and m1 is None and m2 is None
    a3, _, _ = synth.generate_clip((0, 1, 3), 3.0)
    assert not np.array_equal(a1, a3)
    s1 = synth.generate_clip(5, 3.0, segments=True)
    s2 = synth.generate_clip(5, 3.0, segments=True)
    assert all(np.array_equal(x, y) for x, y in zip(s1, s2))


@pytest.mark.parametrize("kind", list(synth.INSTRUMENTS))
def test_every_instrument_sounds(kind):
    audio, tags, _ = synth.generate_clip(11, 3.0, instruments=(kind,), level="medium")
    assert np.all(np.isfinite(audio))
    assert _tags(tags) >= set(synth.INSTRUMENTS[kind])
    # the instrument fills the clip: no 1 s window is silent (any 4 s training crop hears it)
    win = SR
    windows = audio[: len(audio) // win * win].reshape(-1, win)
    assert min(_rms_db(w) for w in windows) > _rms_db(audio) - 20


def test_tags_follow_parameters_over_many_clips():
    seen = set()
    for i in range(60):
        rng = np.random.default_rng((3, i))
        params = synth.sample_params(rng)
        _, vector, _ = synth.generate_clip((3, i), 0.5)
        tags = _tags(vector)
        seen |= tags
        kinds = set(params.parts[0])
        assert 1 <= len(kinds) <= 3
        voiced = bool(kinds & set(synth.VOICES))
        assert ("vocal" in tags) == voiced and ("no vocal" in tags) == (not voiced)
        assert ("male" in tags) == ("male voice" in kinds)
        assert ("female" in tags) == ("female voice" in kinds)
        assert ("drums" in tags) == ("drums" in kinds)
        assert not {"fast", "slow"} <= tags and not {"loud", "quiet"} <= tags
        lo_fast, lo_slow = synth.TEMPO_BPM["fast"][0], synth.TEMPO_BPM["slow"][1]
        assert ("fast" in tags) == (params.bpm >= lo_fast)
        assert ("slow" in tags) == (params.bpm <= lo_slow)
    assert seen == set(synth.SYNTH_TAGS)  # 60 clips exercise every tag


def test_loud_and_quiet_are_clear_levels():
    levels = {"loud": [], "quiet": [], "medium": []}
    for i in range(6):
        for level in levels:
            audio, tags, _ = synth.generate_clip((4, i), 2.0, level=level)
            levels[level].append(_rms_db(audio))
            assert (level in _tags(tags)) == (level != "medium")
    assert min(levels["loud"]) > -14.5 and max(levels["quiet"]) < -33.5
    assert min(levels["loud"]) - max(levels["medium"]) > 7
    assert min(levels["medium"]) - max(levels["quiet"]) > 7


def test_fast_and_slow_are_audible_note_rates():
    rates = {"slow": [], "fast": []}
    for i, kind in enumerate(["piano", "guitar", "organ", "flute", "violin", "synth",
                              "male voice", "bass"]):
        for tempo in rates:
            audio, tags, _ = synth.generate_clip((5, i), 5.0, instruments=(kind,), tempo=tempo)
            assert tempo in _tags(tags)
            rates[tempo].append(_onset_rate(audio))
    assert np.median(rates["slow"]) < 1.6, rates
    assert np.median(rates["fast"]) > 2.5, rates
    assert np.median(rates["fast"]) > 2 * np.median(rates["slow"]), rates


def test_drums_put_onset_energy_on_the_beat():
    for i in range(3):
        seed = (6, i)
        params = synth.sample_params(np.random.default_rng(seed), instruments=("drums",))
        audio, tags, _ = synth.generate_clip(seed, 5.0, instruments=("drums",))
        assert "drums" in _tags(tags)
        env = librosa.onset.onset_strength(y=audio, sr=SR, hop_length=HOP)
        beat = 60.0 / params.bpm

        def peaks(times):
            frames = np.round(np.asarray(times) * SR / HOP).astype(int)
            return np.array([env[f - 1:f + 3].max() for f in frames if f + 3 < len(env)])

        on = peaks(np.arange(1, 5.0 / beat) * beat)  # skip t=0 (no previous frame)
        off = peaks(np.arange(1, 5.0 / beat) * beat + 0.25 * beat)
        assert on.min() > 0 and on.mean() > 5 * off.mean()


def test_drums_add_broadband_energy():
    def high_fraction(audio):
        power = np.abs(np.fft.rfft(audio)) ** 2
        return power[np.fft.rfftfreq(len(audio), 1 / SR) > 5000].sum() / power.sum()

    for i in range(3):
        with_drums = synth.generate_clip((7, i), 3.0, instruments=("flute", "drums"))[0]
        without = synth.generate_clip((7, i), 3.0, instruments=("flute",))[0]
        assert high_fraction(with_drums) > 3 * high_fraction(without)


@pytest.mark.parametrize("kind,lo,hi", [("male voice", 90, 205), ("female voice", 250, 700),
                                        ("cello", 60, 270), ("violin", 380, 1700)])
def test_register_tags_by_pitch(kind, lo, hi):
    for i in range(2):
        audio, _, _ = synth.generate_clip((8, i), 3.0, instruments=(kind,))
        f0 = librosa.yin(audio, fmin=50, fmax=2000, sr=SR, frame_length=2048)
        assert lo < np.median(f0) < hi, (kind, np.median(f0))


def test_segments_mask_marks_the_right_half():
    audio, vector, mask = synth.generate_clip(
        9, 4.0, segments=True, instruments=(("drums",), ("flute", "cello")), level="loud")
    tags = _tags(vector)
    assert {"drums", "flute", "cello", "strings", "loud", "no vocal"} <= tags
    frames = 1 + len(audio) // HOP
    assert mask.shape == (len(synth.SYNTH_TAGS), frames) and mask.dtype == np.uint8
    centres = np.arange(frames) * HOP
    first = centres < len(audio) // 2
    row = {t: mask[synth.SYNTH_TAGS.index(t)] for t in synth.SYNTH_TAGS}
    assert np.array_equal(row["drums"], first.astype(np.uint8))
    for t in ("flute", "cello", "strings"):
        assert np.array_equal(row[t], (~first).astype(np.uint8))
    assert row["loud"].all() and row["no vocal"].all()
    for t in set(synth.SYNTH_TAGS) - tags:
        assert not row[t].any()
    # and the audio agrees: the hi-hat band is busy only in the first half
    half = len(audio) // 2
    spec = np.abs(librosa.stft(audio, n_fft=512, hop_length=HOP)) ** 2
    high = spec[np.fft.rfftfreq(512, 1 / SR) > 5000].sum(0)
    assert high[: half // HOP - 2].mean() > 20 * high[half // HOP + 2:].mean()


def test_segment_halves_share_no_instrument_tag():
    for i in range(30):
        params = synth.sample_params(np.random.default_rng((10, i)), segments=True)
        a, b = params.parts
        tags_a = {t for k in a for t in synth.INSTRUMENTS[k]}
        tags_b = {t for k in b for t in synth.INSTRUMENTS[k]}
        assert a and b and not tags_a & tags_b


def test_bad_arguments():
    with pytest.raises(ValueError):
        synth.generate_clip(0, 1.0, instruments=("kazoo",))
    with pytest.raises(ValueError):
        synth.generate_clip(0, 0.0)
    with pytest.raises(ValueError):
        synth.generate_clip(0, 1.0, segments=True, instruments=(("piano",),))
