"""Auralisation (tagger_jax.explain.auralise) against NumPy references: identity and silence at the
extremes, kept + complement = input, a time or band map keeps what it points at, the mel-to-STFT
mapping equals an explicit float64 loop, files read back with the right length."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf

from tagger_jax.explain import auralise as A

SR = 16000


def two_tones(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 300 * t) + 0.3 * np.sin(2 * np.pi * 4000 * t)).astype(
        np.float32)


def frames(wave: np.ndarray) -> int:
    return 1 + len(wave) // 256


def amplitude_at(wave: np.ndarray, hz: float) -> float:
    spec = np.abs(np.fft.rfft(wave.astype(np.float64) * np.hanning(len(wave))))
    freqs = np.fft.rfftfreq(len(wave), 1 / SR)
    return float(spec[np.abs(freqs - hz) < 20].max())


def test_keep_all_reproduces_the_input_and_keep_none_is_silent():
    wave = two_tones()
    rng = np.random.default_rng(0)
    m = rng.random(frames(wave))
    kept, rest = A.auralise(wave, m, keep=1.0)
    np.testing.assert_allclose(kept, wave, atol=1e-5)
    assert np.max(np.abs(rest)) < 1e-6
    kept, rest = A.auralise(wave, m, keep=0.0)
    assert np.max(np.abs(kept)) < 1e-6
    np.testing.assert_allclose(rest, wave, atol=1e-5)


@pytest.mark.parametrize("softness", [0.0, 0.5])
def test_kept_plus_complement_is_the_input(softness):
    wave = np.random.default_rng(1).normal(0, 0.1, 24000).astype(np.float32)
    band_map = np.random.default_rng(2).normal(size=(96, frames(wave)))
    kept, rest = A.auralise(wave, band_map, keep=0.3, softness=softness)
    np.testing.assert_allclose(kept + rest, wave, atol=1e-5)


def test_a_time_map_keeps_the_frames_it_points_at():
    wave = two_tones(2.0)
    n = frames(wave)
    m = np.zeros(n)
    m[: n // 2] = 1.0  # the first half
    kept, rest = A.auralise(wave, m, keep=0.5)
    half = len(wave) // 2
    margin = 2 * 512  # window overlap at the boundary
    rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    np.testing.assert_allclose(kept[: half - margin], wave[: half - margin], atol=1e-5)
    assert rms(kept[half + margin:]) < 1e-6 * rms(wave)
    np.testing.assert_allclose(rest[half + margin:], wave[half + margin:], atol=1e-5)


def test_a_band_map_keeps_the_frequencies_it_points_at():
    wave = two_tones(2.0)
    centres = librosa.mel_frequencies(98, fmax=SR / 2)[1:-1]
    band_map = np.tile((centres < 1000)[:, None].astype(float), (1, frames(wave)))
    band_map += 1e-3 * np.random.default_rng(3).random(band_map.shape)  # break ties
    # keep = the share of STFT bins under 1 kHz whose bands point there
    bins = librosa.fft_frequencies(sr=SR, n_fft=512)
    keep = float(np.mean(A.mel_to_stft_bins(band_map[:, :1])[:, 0] > 0.5))
    kept, rest = A.auralise(wave, band_map, keep=keep)
    assert amplitude_at(kept, 300) > 0.9 * amplitude_at(wave, 300)
    assert amplitude_at(kept, 4000) < 1e-3 * amplitude_at(wave, 4000)
    assert amplitude_at(rest, 4000) > 0.9 * amplitude_at(wave, 4000)
    assert amplitude_at(rest, 300) < 1e-3 * amplitude_at(wave, 300)
    assert 0 < keep < 1 and bins[-1] == SR / 2


def test_mel_to_stft_bins_equals_an_explicit_loop():
    fb = librosa.filters.mel(sr=SR, n_fft=512, n_mels=96).astype(np.float64)
    band_map = np.random.default_rng(4).normal(size=(96, 7))
    got = A.mel_to_stft_bins(band_map)
    centres = librosa.mel_frequencies(98, fmax=SR / 2)[1:-1]
    freqs = librosa.fft_frequencies(sr=SR, n_fft=512)
    for f in range(257):
        w = fb[:, f]
        if w.sum() > 0:
            want = sum(w[b] * band_map[b] for b in range(96) if w[b] > 0) / w.sum()
        else:
            want = band_map[int(np.argmin(np.abs(centres - freqs[f])))]
        np.testing.assert_allclose(got[f], want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(A.mel_to_stft_bins(np.full((96, 3), 2.5)), 2.5)


def test_keep_mask_area_softness_and_errors():
    v = np.random.default_rng(5).normal(size=(40, 50))
    hard = A.keep_mask(v, 0.25)
    assert set(np.unique(hard)) == {0.0, 1.0} and hard.sum() == 500
    assert v[hard == 1].min() >= v[hard == 0].max()
    soft = A.keep_mask(v, 0.25, softness=0.3)
    assert np.all((soft > 0) & (soft < 1))
    order = np.argsort(v.ravel())
    assert np.all(np.diff(soft.ravel()[order]) >= 0)  # monotone in the map
    assert abs(soft.sum() - 500) < 100  # about the same area
    for bad in (dict(keep=1.5), dict(keep=0.5, softness=-1)):
        with pytest.raises(ValueError):
            A.keep_mask(v, **bad)
    with pytest.raises(ValueError, match="non-finite"):
        A.keep_mask(np.array([1.0, np.nan]), 0.5)
    with pytest.raises(ValueError, match="frames"):
        A.auralise(two_tones(1.0), np.zeros(10))
    rng = np.random.default_rng(6)
    r = A.random_mask(np.zeros((257, 80)), 0.5, rng, time_only=True)
    assert r.sum() == 257 * 40 and np.all(r == r[:1])
    assert A.random_mask(np.zeros((257, 80)), 0.5, rng, time_only=False).sum() == 257 * 40


def test_maps_on_their_own_time_grid_are_resampled_to_frames():
    wave = two_tones(1.0)
    n = frames(wave)
    steps = np.arange(66) * 243 / SR + 243 / SR / 2  # the waveform model's step centres
    m = (steps < 0.5).astype(float)
    mask = A.stft_mask(m, n, keep=0.5, times_s=steps)
    t = np.arange(n) * 256 / SR
    assert np.all(mask[0, t < 0.48] == 1) and np.all(mask[0, t > 0.52] == 0)


@pytest.mark.parametrize("fmt", ["ogg", "flac"])
def test_written_audio_reads_back_with_its_length(tmp_path, fmt):
    wave = two_tones(1.5)
    path = A.write_audio(tmp_path / f"x.{fmt}", 2 * wave, fmt=fmt)  # clipped, not wrapped
    data, rate = sf.read(path)
    assert rate == SR and len(data) == len(wave)
    clipped = np.clip(2 * wave, -1, 1)
    if fmt == "flac":  # lossless 16-bit
        np.testing.assert_allclose(data, clipped, atol=2 ** -15)
    else:  # lossy: the same signal, not the same samples
        assert np.corrcoef(data, clipped)[0, 1] > 0.99
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="format"):
        A.write_audio(tmp_path / "x.mp3", wave, fmt="mp3")


def test_minutes_of_audio_write_without_crashing(tmp_path):
    """libsndfile's Vorbis encoder segfaults on a single write of a 3-minute signal (seen on
    Debian 12); write_audio writes in blocks. Run in a subprocess so a crash fails one test."""
    import subprocess
    import sys

    code = ("import numpy as np, soundfile as sf; from tagger_jax.explain import auralise as A; "
            "w = 0.1 * np.random.default_rng(0).normal(size=180 * 16000); "
            f"p = A.write_audio({str(tmp_path / 'long.ogg')!r}, w); "
            "print(sf.info(p).duration)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) == 180.0


def test_frames_a_map_does_not_cover_are_never_kept():
    """NaN frames (gaps of the paper's chunks) get weight 0: silent in `kept`, in the
    complement; `keep` is a fraction of the covered frames only."""
    wave = two_tones(2.0)
    n = frames(wave)
    m = np.linspace(1.0, 2.0, n)  # highest at the end ...
    m[n // 2:] = np.nan  # ... which is not covered
    w = A.stft_mask(m, n, keep=0.5)[0]
    assert w[n // 2:].sum() == 0 and w[:n // 2].sum() == round(0.5 * (n // 2))
    kept, rest = A.auralise(wave, m, keep=0.5)
    half, margin = len(wave) // 2, 2 * 512
    assert np.max(np.abs(kept[half + margin:])) < 1e-6
    np.testing.assert_allclose(rest[half + margin:], wave[half + margin:], atol=1e-5)
    np.testing.assert_allclose(kept + rest, wave, atol=1e-5)
    band = np.random.default_rng(4).normal(size=(96, n))
    band[:, n // 2:] = np.nan
    kept, rest = A.auralise(wave, band, keep=0.5)
    assert np.max(np.abs(kept[half + margin:])) < 1e-6
    np.testing.assert_allclose(kept + rest, wave, atol=1e-5)


def test_headroom_gain_brings_a_loud_input_to_full_scale_and_leaves_others():
    """A float input peaking at 1.13 (the trial's loud mix) is scaled to peak 1.0 instead of
    being clipped by write_audio; a wave within [-1, 1] and an empty one keep gain 1."""
    wave = np.sin(np.linspace(0.0, 200.0, 16000)) * 1.13
    gain = A.headroom_gain(wave)
    assert gain == pytest.approx(1.0 / 1.13, rel=1e-3)
    assert np.max(np.abs(wave * gain)) == pytest.approx(1.0, abs=1e-6)
    assert A.headroom_gain(wave * 0.5) == 1.0
    assert A.headroom_gain(np.zeros(0)) == 1.0
