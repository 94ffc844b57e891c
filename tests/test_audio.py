"""Audio decoding and log-mel features vs. librosa called directly and a NumPy float64 reference."""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import librosa
import ml_collections

from tagger_jax import audio
from tagger_jax.audio import InputError
from tagger_jax.config_base import base_config

SR = 16000
REF = dict(n_fft=512, hop_length=256, n_mels=96)  # the authors' parameters
# Our pipeline calls the same librosa/soundfile code, so it should agree to float32 rounding;
# 1e-4 dB leaves room for BLAS/FFT differences between machines.
LIBROSA_ATOL_DB = 1e-4
# float32 (ours) vs float64 (reference) STFT: within the 80 dB range of the quirky scale, relative
# power errors stay ~1e-4 or less, i.e. < 0.01 dB; 0.05 dB is a safe bound that still fails on any
# wrong window, padding, mel scale or log formula (those are off by >= 1 dB).
FLOAT64_ATOL_DB = 0.05


def _music(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Harmonic notes + noise bursts: broadband content, so every mel band is exercised."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = np.zeros((len(t), channels))
    for c in range(channels):
        for k, f in enumerate((220.0, 330.0, 523.25, 1046.5)):
            tone = np.sin(2 * np.pi * f * (1 + 0.01 * c) * t)
            y[:, c] += 0.2 / (k + 1) * tone * (1 + np.sin(3 * t + k))
        bursts = (np.sin(2 * np.pi * 2 * t) > 0.9).astype(float)
        y[:, c] += 0.05 * rng.standard_normal(len(t)) * bursts
    y = 0.8 * y / np.abs(y).max()
    return (y[:, 0] if channels == 1 else y).astype(np.float32)


def _librosa_reference(path, log="amplitude_to_db") -> np.ndarray:
    y, _ = librosa.load(str(path), sr=SR, mono=True)
    mel = librosa.feature.melspectrogram(y=y, sr=SR, **REF)
    return librosa.amplitude_to_db(mel) if log == "amplitude_to_db" else librosa.power_to_db(mel)


def _numpy_reference(y: np.ndarray, log: str) -> np.ndarray:
    """float64: zero-padded centred frames, periodic Hann, |rfft|^2, Slaney mel, then the log."""
    n_fft, hop = REF["n_fft"], REF["hop_length"]
    x = np.pad(y.astype(np.float64), n_fft // 2)
    n = 1 + (len(x) - n_fft) // hop
    frames = np.stack([x[i * hop:i * hop + n_fft] for i in range(n)], axis=1)
    window = scipy.signal.get_window("hann", n_fft, fftbins=True)[:, None]
    power = np.abs(np.fft.rfft(frames * window, axis=0)) ** 2
    mel = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=REF["n_mels"], dtype=np.float64) @ power
    if log == "amplitude_to_db":  # the quirk: power treated as amplitude
        db = 20 * np.log10(np.maximum(mel, 1e-5))
    else:
        db = 10 * np.log10(np.maximum(mel, 1e-10))
    return np.maximum(db, db.max() - 80.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    y = _music(2.5, SR)
    out = {}
    for name, kw in {"clip.wav": dict(subtype="FLOAT"), "clip.flac": dict(subtype="PCM_16"),
                     "clip.ogg": dict(format="OGG", subtype="VORBIS"),
                     "clip.mp3": dict(format="MP3")}.items():
        sf.write(str(d / name), y, SR, **kw)
        out[name] = d / name
    out["wave"] = y
    out["dir"] = d
    return out


@pytest.mark.parametrize("name", ["clip.wav", "clip.flac", "clip.ogg", "clip.mp3"])
def test_features_match_librosa(files, name):
    ours = audio.load_input(files[name], base_config().features)
    ref = _librosa_reference(files[name])
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert ours.shape == (96, 1 + len(files["wave"]) // 256)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=LIBROSA_ATOL_DB)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_inputs_shorter_than_one_fft_match_librosa_without_its_warning(pad_mode):
    """80 and 511 samples (< n_fft = 512): the frames librosa computes, to the bit, and no
    librosa warning that names no file (the short-input warning does, when chunked)."""
    import warnings

    import librosa

    rng = np.random.default_rng(5)
    for n in (80, 511):
        wave = rng.normal(0.0, 0.1, n).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ours = audio.log_mel(wave, pad_mode=pad_mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = librosa.amplitude_to_db(librosa.feature.melspectrogram(
                y=wave, sr=16000, n_fft=512, hop_length=256, n_mels=96, pad_mode=pad_mode))
        assert ours.shape == ref.shape == (96, 1 + n // 256)
        np.testing.assert_array_equal(ours, ref)


def test_wav_decodes_to_the_written_samples(files):
    np.testing.assert_array_equal(audio.load_audio(files["clip.wav"]), files["wave"])


@pytest.mark.parametrize("log", ["amplitude_to_db", "power_to_db"])
def test_log_mel_matches_float64_reference(files, log):
    ours = audio.log_mel(files["wave"], log_scale=log)
    ref = _numpy_reference(files["wave"], log)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=FLOAT64_ATOL_DB)


def test_power_to_db_option(files):
    cfg = base_config().features
    cfg.log_scale = "power_to_db"
    ours = audio.load_input(files["clip.flac"], cfg)
    np.testing.assert_allclose(ours, _librosa_reference(files["clip.flac"], "power_to_db"),
                               rtol=0, atol=LIBROSA_ATOL_DB)
    quirk = audio.load_input(files["clip.flac"])
    # Above both floors, the quirk is exactly twice the proper dB value.
    mask = (quirk > quirk.max() - 79) & (ours > ours.max() - 79)
    assert mask.mean() > 0.1  # enough bins above the quirk's 40-real-dB floor
    np.testing.assert_allclose(quirk[mask], 2 * ours[mask], rtol=0, atol=1e-3)


def test_reflect_pad_mode_changes_only_edge_frames(files):
    constant = audio.log_mel(files["wave"])
    reflect = audio.log_mel(files["wave"], pad_mode="reflect")
    ref = librosa.amplitude_to_db(librosa.feature.melspectrogram(
        y=files["wave"], sr=SR, pad_mode="reflect", **REF))
    np.testing.assert_allclose(reflect, ref, rtol=0, atol=LIBROSA_ATOL_DB)
    np.testing.assert_array_equal(constant[:, 1:-1], reflect[:, 1:-1])
    assert not np.allclose(constant[:, 0], reflect[:, 0])


def test_bad_log_scale_and_pad_mode():
    with pytest.raises(ValueError, match="log_scale"):
        audio.log_mel(np.zeros(1000, np.float32), log_scale="log10")
    with pytest.raises(ValueError, match="pad_mode"):
        audio.log_mel(np.zeros(1000, np.float32), pad_mode="wrap")
    with pytest.raises(ValueError, match="log_scale"):
        audio.features_from_config({"log_scale": "db"})


def test_resample_and_downmix_like_librosa_load(tmp_path):
    stereo = _music(1.5, 44100, channels=2, seed=1)
    path = tmp_path / "stereo44k.wav"
    sf.write(str(path), stereo, 44100, subtype="FLOAT")
    ours = audio.load_audio(path, 16000)
    ref, sr = librosa.load(str(path), sr=16000, mono=True)
    assert sr == 16000 and ours.dtype == np.float32
    assert len(ours) == int(np.ceil(len(stereo) * 16000 / 44100))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    # Independent check of the downmix: resampling the channel mean gives the same signal.
    mean_then_resample = librosa.resample(stereo.mean(axis=1), orig_sr=44100, target_sr=16000,
                                          res_type="soxr_hq")
    np.testing.assert_allclose(ours, mean_then_resample, rtol=0, atol=1e-6)
    features = audio.load_input(path)
    np.testing.assert_allclose(features, librosa.amplitude_to_db(
        librosa.feature.melspectrogram(y=ref, sr=16000, **REF)), rtol=0, atol=LIBROSA_ATOL_DB)


@pytest.mark.parametrize("log", ["amplitude_to_db", "power_to_db"])
def test_silence_is_finite_floor(tmp_path, log):
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros(8000, np.float32), SR)
    cfg = dict(log_scale=log)
    mel = audio.load_input(path, cfg)
    assert mel.shape == (96, 1 + 8000 // 256)
    assert np.all(np.isfinite(mel))
    # 20 log10(1e-5) = 10 log10(1e-10) = -100 dB, up to float32 rounding of the floor.
    np.testing.assert_allclose(mel, -100.0, rtol=0, atol=1e-4)


def _bad_files(d):
    """name -> (path, substrings the message must contain besides the path)."""
    cases = {"missing": (d / "nope.wav", ["not found"])}
    (d / "a_dir.wav").mkdir()
    cases["directory"] = (d / "a_dir.wav", ["directory"])
    (d / "empty.mp3").write_bytes(b"")
    cases["empty"] = (d / "empty.mp3", ["empty", "0 bytes"])
    (d / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    cases["corrupt"] = (d / "corrupt.wav", ["cannot decode"])
    (d / "corrupt.flac").write_bytes(b"fLaC" + np.random.default_rng(0).bytes(3000))
    cases["corrupt_flac"] = (d / "corrupt.flac", ["cannot decode"])
    sf.write(str(d / "zero.wav"), np.zeros(0, np.float32), SR)
    cases["zero_samples"] = (d / "zero.wav", ["zero samples"])
    nan = _music(0.5, SR)
    nan[100] = np.nan
    nan[200] = np.inf
    sf.write(str(d / "nan.wav"), nan, SR, subtype="FLOAT")
    cases["nan_samples"] = (d / "nan.wav", ["2 non-finite"])
    np.save(d / "spec3d.npy", np.zeros((1, 96, 300), np.float32))
    cases["npy_3d"] = (d / "spec3d.npy", ["(1, 96, 300)", "(96, T)"])
    np.save(d / "spec64.npy", np.zeros((64, 300), np.float32))
    cases["npy_64_bands"] = (d / "spec64.npy", ["(64, 300)"])
    np.save(d / "spec0.npy", np.zeros((96, 0), np.float32))
    cases["npy_no_frames"] = (d / "spec0.npy", ["(96, 0)"])
    np.save(d / "specint.npy", np.zeros((96, 300), np.int16))
    cases["npy_int"] = (d / "specint.npy", ["int16"])
    np.save(d / "specbool.npy", np.zeros((96, 300), bool))
    cases["npy_bool"] = (d / "specbool.npy", ["bool"])
    np.save(d / "specobj.npy", np.array([[None] * 3] * 96, dtype=object), allow_pickle=True)
    cases["npy_object"] = (d / "specobj.npy", ["dtype object"])
    spec = np.zeros((96, 300), np.float32)
    spec[5, 7] = np.nan
    np.save(d / "specnan.npy", spec)
    cases["npy_nan"] = (d / "specnan.npy", ["non-finite"])
    (d / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    cases["npy_garbage"] = (d / "garbage.npy", ["cannot read .npy"])
    return cases


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return _bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "corrupt", "corrupt_flac",
                                  "zero_samples", "nan_samples", "npy_3d", "npy_64_bands",
                                  "npy_no_frames", "npy_int", "npy_bool", "npy_object", "npy_nan",
                                  "npy_garbage"])
def test_input_errors_name_the_file(bad_files, case):
    path, words = bad_files[case]
    with pytest.raises(InputError) as info:
        audio.load_input(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, message
    assert isinstance(info.value, ValueError)


def test_a_file_that_cannot_be_read_says_so(files, monkeypatch):
    """A trial's chmod 000 file (run without root's override) was "not a recognised audio
    format, or damaged (soundfile: System error.; ffmpeg: Permission denied)"."""
    import builtins
    import errno

    path = files["clip.mp3"]

    def refused(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(audio, "open", refused, raising=False)
    with pytest.raises(InputError) as info:
        audio.load_input(path)
    assert str(info.value) == f"{path}: cannot read it (Permission denied)"


def test_npy_inputs_accepted_and_cast(tmp_path):
    spec = np.random.default_rng(0).normal(size=(96, 40))
    for dtype in (np.float16, np.float32, np.float64):
        np.save(tmp_path / "s.npy", spec.astype(dtype))
        out = audio.load_input(tmp_path / "s.npy")
        assert out.dtype == np.float32 and out.shape == (96, 40)
        np.testing.assert_array_equal(out, spec.astype(dtype).astype(np.float32))
    np.save(tmp_path / "one.npy", spec[:, :1])
    assert audio.load_input(tmp_path / "one.npy").shape == (96, 1)


def test_waveform_input(tmp_path, files):
    np.testing.assert_array_equal(audio.load_waveform_input(files["clip.wav"]), files["wave"])
    np.save(tmp_path / "w.npy", files["wave"].astype(np.float64))
    np.testing.assert_array_equal(audio.load_waveform_input(tmp_path / "w.npy"), files["wave"])
    np.save(tmp_path / "w2.npy", np.zeros((2, 100), np.float32))
    with pytest.raises(InputError, match=r"w2\.npy: expected a 1-D waveform.*\(2, 100\)"):
        audio.load_waveform_input(tmp_path / "w2.npy")
    np.save(tmp_path / "wint.npy", np.zeros(100, np.int32))
    with pytest.raises(InputError, match=r"wint\.npy: waveform must be float.*int32"):
        audio.load_waveform_input(tmp_path / "wint.npy")


def test_features_from_config():
    cfg = base_config().features
    params = audio.features_from_config(cfg)
    assert params == audio.FeatureParams()  # the base config holds the authors' values
    assert (params.sample_rate, params.n_fft, params.hop_length) == (16000, 512, 256)
    assert (params.n_mels, params.chunk_frames, params.eval_chunks) == (96, 256, 16)
    # An older checkpoint's config without newer fields still loads, with defaults.
    partial = audio.features_from_config({"n_mels": 64, "sample_rate": 22050})
    assert partial.n_mels == 64 and partial.sample_rate == 22050 and partial.hop_length == 256
    old = ml_collections.ConfigDict({"log_scale": "power_to_db", "chunk_frames": 128})
    params = audio.features_from_config(old)
    assert params.log_scale == "power_to_db" and params.chunk_frames == 128 and params.n_mels == 96
    assert params.stft_pad_mode == "constant"
    with pytest.raises(ValueError, match="n_fft"):
        audio.features_from_config({"n_fft": 0})


def test_time_conversions():
    assert audio.frames_to_seconds(1813) == pytest.approx(1813 * 256 / 16000)
    assert audio.frames_to_seconds(256) == pytest.approx(4.096)
    frames = np.array([0, 1, 97, 1812])
    np.testing.assert_allclose(audio.seconds_to_frames(audio.frames_to_seconds(frames)), frames)
    assert audio.seconds_to_frames(4.096, 256, 16000) == pytest.approx(256)
    assert audio.num_frames(464000) == 1813  # a 29 s MagnaTagATune clip
    assert audio.num_frames(2500, 256) == 1 + 2500 // 256
    assert audio.duration(np.zeros(24000)) == pytest.approx(1.5)
    assert audio.duration(65610) == pytest.approx(4.100625)


def test_bundled_example_is_reproducible():
    from tagger_jax.data import make_example

    path = audio.example_audio_path()
    assert path.is_file() and path.stat().st_size < 300_000
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 160000)
    decoded = audio.load_audio(path)
    # FLAC PCM_16 is lossless up to 16-bit quantisation of the generator's float output.
    np.testing.assert_allclose(decoded, make_example.make_example(), rtol=0, atol=1.0 / 32768)
    mel = audio.load_input(path)
    assert mel.shape == (96, 626) and np.all(np.isfinite(mel))
    assert np.ptp(mel) == pytest.approx(80, abs=0.01)  # top_db clipping


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("log_scale", ["amplitude_to_db", "power_to_db"])
def test_long_inputs_get_the_same_log_mel_block_by_block(monkeypatch, pad_mode, log_scale):
    """Past MEL_BLOCK_FRAMES the log-mel is computed in blocks (bounded memory for hour-long
    files): the same frames as librosa on the whole signal, floor at 80 dB below the track's
    maximum included (a loud start sets the floor for the quiet rest)."""
    import librosa

    monkeypatch.setattr(audio, "MEL_BLOCK_FRAMES", 40)
    rng = np.random.default_rng(3)
    n = 256 * 131 + 77  # 132 frames: blocks of 40, 40, 40, 12
    wave = (1e-4 * rng.standard_normal(n) + 1e-3 * np.sin(np.arange(n) * 0.05)).astype(np.float32)
    wave[:2000] *= 3000.0
    got = audio.log_mel(wave, pad_mode=pad_mode, log_scale=log_scale)
    mel = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=512, hop_length=256, n_mels=96,
                                         pad_mode=pad_mode)
    want = (librosa.amplitude_to_db if log_scale == "amplitude_to_db" else librosa.power_to_db)(mel)
    assert got.shape == want.shape == (96, 132) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert got.min() == pytest.approx(got.max() - 80.0, abs=1e-4)  # the floor was applied


def test_long_files_stream_with_librosa_load_samples_and_the_same_warnings(tmp_path, monkeypatch):
    """Files at or above audio.STREAM_MIN_SAMPLES are decoded, mixed and resampled block by
    block: the samples equal librosa.load's exactly, the warnings equal the whole-file path's,
    and the read's peak of traced memory stays well below the decoded stereo signal's size."""
    import tracemalloc

    rng = np.random.default_rng(5)
    n = 44100 * 40
    left = (0.2 * rng.standard_normal(n)).astype(np.float32)
    stereo = np.stack([left, 0.3 * rng.standard_normal(n).astype(np.float32)], axis=1)
    cancel = np.stack([left, -left * 0.98], axis=1)  # out of phase: the mono mix cancels
    cases = {"stereo.wav": (stereo, 44100), "cancel.flac": (cancel, 44100),
             "low.wav": (left[:8000 * 40, None], 8000),
             "clipped.flac": (np.clip(3 * stereo, -1, 1), 44100),
             "hot.wav": (4 * stereo, 44100), "silent.flac": (0 * stereo, 44100),
             "dc.flac": (0.5 * stereo + 0.1, 44100)}
    for name, (data, rate) in cases.items():
        sf.write(str(tmp_path / name), data, rate, subtype="FLOAT" if name.endswith(".wav")
                 else "PCM_24")
    whole = {name: audio.load_audio_checked(tmp_path / name) for name in cases}
    monkeypatch.setattr(audio, "STREAM_MIN_SAMPLES", 1000)
    monkeypatch.setattr(audio, "STREAM_BLOCK_FRAMES", 10007)
    for name in cases:
        y, notes = audio.load_audio_checked(tmp_path / name)
        ref, _ = librosa.load(str(tmp_path / name), sr=16000, mono=True)
        np.testing.assert_array_equal(y, ref)
        np.testing.assert_array_equal(y, whole[name][0])
        assert notes == whole[name][1], name
    assert set(whole["cancel.flac"][1]) == {"stereo_cancellation"}
    assert set(whole["low.wav"][1]) == {"low_sample_rate"}
    assert [set(whole[n][1]) for n in ("clipped.flac", "hot.wav", "silent.flac", "dc.flac")] == [
        {"clipping"}, {"over_full_scale"}, {"silence"}, {"dc_offset"}]
    assert "a DC offset of +0.0999 (-20 dBFS, +1 dB against" in whole["dc.flac"][1]["dc_offset"]
    tracemalloc.start()
    audio.load_audio_checked(tmp_path / "stereo.wav")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.5 * stereo.nbytes, (peak, stereo.nbytes)


@pytest.mark.parametrize("name", ["clip.mp3", "clip.flac"])
@pytest.mark.parametrize("streamed", [False, True])
def test_a_file_is_opened_once(files, name, streamed, monkeypatch):
    """libsndfile opens a file once per load, whether it is decoded whole or streamed: each open
    of an mp3 makes mpg123 scan the whole file. The samples are unchanged."""
    want = audio.load_audio_checked(files[name])
    opens = []

    class Counting(sf.SoundFile):
        def __init__(self, *args, **kwargs):
            opens.append(args[0] if args else kwargs.get("file"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sf, "SoundFile", Counting)
    if streamed:
        monkeypatch.setattr(audio, "STREAM_MIN_SAMPLES", 1000)
    got = audio.load_audio_checked(files[name])
    assert len(opens) == 1, opens
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]
