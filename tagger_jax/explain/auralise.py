"""Auralisation: the audio of what an explanation map points at, and of what remains without it.

An explanation map says where (in time, or in mel band x time) a tag's evidence lies. To hear it,
the input's short-time Fourier transform X (the model's own STFT: Hann window of `n_fft` samples,
hop `hop_length`, centred frames, so STFT frame t is spectrogram frame t) is multiplied by a mask
W in [0, 1] that is high where the map is high, and inverted with the original phase:

    kept       = ISTFT(W * X)
    complement = ISTFT((1 - W) * X)

The ISTFT is linear, so kept + complement = ISTFT(X), which is the input up to the STFT's
round-off (window-sum normalisation; librosa.istft). The mask:
  - A time map (T,) (attention, rollout, contribution, time profiles of gradients) masks whole
    frames: W[f, t] = w[t].
  - A mel band x time map (96, T) (grad_x_input, integrated_gradients) is carried to STFT bins
    through the mel filterbank: the map of bin f is the filterbank-weighted mean of the bands
    that cover f, m[f, t] = sum_b F[b, f] map[b, t] / sum_b F[b, f] (bins no band covers take
    the nearest band), so each STFT bin inherits the attribution of the mel bands it feeds.
  - `keep` is the fraction of mask cells (frames, or time-frequency bins) with the highest map
    values; `softness` 0 gives a hard 0/1 mask; softness s > 0 a logistic ramp around the
    threshold whose width is s times the spread (interquartile range) of the map, so cells just
    below the threshold are attenuated rather than cut.
Maps are ranked as given: signed gradient attributions keep the strongest positive evidence.
Time steps a map does not cover (NaN: the paper's 16 chunks leave gaps on a long track) are never
selected: W = 0 there, so they are silent in `kept` and sound in the complement (kept +
complement is still the input), and `keep` is a fraction of the covered cells only.

Pure NumPy/librosa functions, no model. `write_audio` writes 16 kHz Ogg Vorbis (or FLAC).
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from tagger_jax import errors
from tagger_jax.librosa_import import import_librosa

AUDIO_FORMATS = {"ogg": ("OGG", "VORBIS"), "flac": ("FLAC", "PCM_16")}
WRITE_BLOCK = 16384  # samples per write call


def stft(wave: np.ndarray, n_fft: int = 512, hop_length: int = 256) -> np.ndarray:
    """Complex STFT (1 + n_fft // 2, 1 + len(wave) // hop_length), the model's frame grid
    (Hann window, centred frames with zero padding, as `tagger_jax.audio.log_mel`)."""
    librosa = import_librosa()

    return librosa.stft(np.asarray(wave, np.float32), n_fft=n_fft, hop_length=hop_length,
                        center=True, pad_mode="constant")


def istft(spec: np.ndarray, length: int, hop_length: int = 256) -> np.ndarray:
    """Inverse of `stft` (overlap-add with window-sum normalisation), `length` samples."""
    librosa = import_librosa()

    n_fft = 2 * (spec.shape[0] - 1)
    return librosa.istft(spec, hop_length=hop_length, n_fft=n_fft, length=length,
                         center=True).astype(np.float32)


def mel_to_stft_bins(band_map: np.ndarray, sample_rate: int = 16000, n_fft: int = 512,
                     n_mels: int = 96) -> np.ndarray:
    """A (n_mels, T) mel-band map carried to the (1 + n_fft // 2, T) STFT bins.

    Bin f gets the mean of the bands' values weighted by the mel filterbank F (librosa's Slaney
    filters, as the features use): sum_b F[b, f] v[b] / sum_b F[b, f]. Bins no filter covers (the
    DC bin) take the band whose centre is nearest.
    """
    librosa = import_librosa()

    band_map = np.asarray(band_map, np.float64)
    if band_map.ndim != 2 or band_map.shape[0] != n_mels:
        raise ValueError(f"expected a ({n_mels}, T) mel-band map, got shape {band_map.shape}")
    fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).astype(np.float64)
    weight = fb.sum(axis=0)  # (bins,)
    out = fb.T @ band_map  # (bins, T)
    covered = weight > 0
    out[covered] /= weight[covered, None]
    if not covered.all():
        centres = librosa.mel_frequencies(n_mels + 2, fmax=sample_rate / 2)[1:-1]
        bins = librosa.fft_frequencies(sr=sample_rate, n_fft=n_fft)
        nearest = np.abs(bins[~covered, None] - centres[None, :]).argmin(axis=1)
        out[~covered] = band_map[nearest]
    return out


def keep_mask(values: np.ndarray, keep: float = 0.5, softness: float = 0.0) -> np.ndarray:
    """Weights in [0, 1] of the same shape: the top `keep` fraction of cells near 1.

    Hard (softness 0): exactly round(keep * size) cells are 1 (ties broken by position), the rest
    0. Soft: a logistic ramp 1 / (1 + exp(-(v - thr) / (softness * iqr))) around the threshold thr
    between the kept and dropped cells, iqr the interquartile range of the values.
    Raises ValueError for keep outside [0, 1], negative softness or non-finite values.
    """
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1], got {keep}")
    if softness < 0:
        raise ValueError(f"softness must be >= 0, got {softness}")
    v = np.asarray(values, np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("the map has non-finite values")
    flat = v.reshape(-1)
    n = int(round(keep * flat.size))
    if softness == 0.0 or n in (0, flat.size):
        w = np.zeros(flat.size)
        w[np.argsort(-flat, kind="stable")[:n]] = 1.0
        return w.reshape(v.shape)
    ranked = np.sort(flat)[::-1]
    thr = 0.5 * (ranked[n - 1] + ranked[n])
    q75, q25 = np.percentile(flat, [75, 25])
    scale = softness * max(q75 - q25, 1e-12 * max(1.0, abs(thr)))
    return (1.0 / (1.0 + np.exp(-np.clip((v - thr) / scale, -60, 60))))


def resample_frames(values: np.ndarray, times_s: np.ndarray, frames: int,
                    hop_s: float) -> np.ndarray:
    """A map on its own time grid (`times_s`, e.g. the 243-sample steps of the waveform model)
    sampled at STFT frame times t * hop_s by nearest neighbour: (..., len(times_s)) -> (..., frames).
    """
    times_s = np.asarray(times_s, np.float64)
    centres = np.arange(frames) * hop_s
    idx = np.clip(np.searchsorted(times_s, centres), 0, len(times_s) - 1)
    left = np.clip(idx - 1, 0, len(times_s) - 1)
    closer_left = np.abs(times_s[left] - centres) <= np.abs(times_s[idx] - centres)
    return np.take(values, np.where(closer_left, left, idx), axis=-1)


def stft_mask(values: np.ndarray, frames: int, *, keep: float = 0.5, softness: float = 0.0,
              sample_rate: int = 16000, n_fft: int = 512,
              times_s: Optional[np.ndarray] = None, hop_length: int = 256) -> np.ndarray:
    """The (1 + n_fft // 2, frames) mask of a time map (T,) or mel-band map (bands, T).

    Maps are on the STFT frame grid unless `times_s` gives their own step times (then they are
    resampled by nearest frame). A time map ranks frames; a band map ranks STFT bins.
    """
    values = np.asarray(values, np.float64)
    if values.ndim not in (1, 2):
        raise ValueError(f"a map is (T,) or (bands, T), got shape {values.shape}")
    if times_s is not None:
        values = resample_frames(values, times_s, frames, hop_length / sample_rate)
    if values.shape[-1] != frames:
        raise ValueError(f"map has {values.shape[-1]} frames, the audio's STFT has {frames}")
    bins = 1 + n_fft // 2
    if values.ndim == 1:
        return np.broadcast_to(_covered_mask(values, keep, softness)[None, :], (bins, frames))
    return _covered_mask(mel_to_stft_bins(values, sample_rate, n_fft, values.shape[0]), keep,
                         softness)


def _covered_mask(values: np.ndarray, keep: float, softness: float) -> np.ndarray:
    """`keep_mask` over the cells that have a value; NaN cells (not covered) get weight 0."""
    known = ~np.isnan(values)
    if known.all():
        return keep_mask(values, keep, softness)
    w = np.zeros(values.shape)
    if known.any():
        w[known] = keep_mask(values[known], keep, softness)
    return w


def auralise(wave: np.ndarray, values: np.ndarray, *, keep: float = 0.5, softness: float = 0.0,
             sample_rate: int = 16000, n_fft: int = 512, hop_length: int = 256,
             times_s: Optional[np.ndarray] = None,
             mask: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, complement) float32 waveforms of len(wave) for one explanation map.

    `wave` (N,) at `sample_rate`; `values` a time map (T,) or mel-band map (bands, T) on the STFT
    frames (T = 1 + N // hop_length) or on `times_s`; `mask` (bins, T) overrides the map (e.g. a
    random mask of equal area). kept = ISTFT(W X), complement = ISTFT((1 - W) X), with the phase
    of X. Raises ValueError when shapes disagree.
    """
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"expected a non-empty mono waveform, got shape {wave.shape}")
    x = stft(wave, n_fft, hop_length)
    if mask is None:
        mask = stft_mask(values, x.shape[1], keep=keep, softness=softness,
                         sample_rate=sample_rate, n_fft=n_fft, times_s=times_s,
                         hop_length=hop_length)
    if mask.shape != x.shape:
        raise ValueError(f"mask has shape {mask.shape}, the STFT {x.shape}")
    kept = istft(mask * x, wave.size, hop_length)
    complement = istft((1.0 - mask) * x, wave.size, hop_length)
    return kept, complement


def random_mask(like: np.ndarray, keep: float, rng: np.random.Generator,
                time_only: bool) -> np.ndarray:
    """A hard random mask of the same shape and area as `keep_mask(..., keep)`: whole frames
    when `time_only` (for time maps), else independent time-frequency bins."""
    bins, frames = like.shape
    if time_only:
        return np.broadcast_to(keep_mask(rng.random(frames), keep)[None, :], (bins, frames))
    return keep_mask(rng.random((bins, frames)), keep)


def headroom_gain(wave: np.ndarray) -> float:
    """The gain (<= 1) that brings `wave`'s peak to 1.0 if it is above (a float input, a loud
    mix): `write_audio` clips to [-1, 1], so a track's playback files are scaled by it together
    (their levels stay comparable) instead of clipping. 1.0 for a wave within [-1, 1]."""
    peak = float(np.max(np.abs(wave))) if np.size(wave) else 0.0
    return 1.0 / peak if peak > 1.0 else 1.0


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int = 16000,
                fmt: str = "ogg") -> Path:
    """Writes mono audio (clipped to [-1, 1]) as Ogg Vorbis or FLAC by temporary file + rename;
    an exception (an interrupt too) removes the temporary file."""
    import soundfile as sf

    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"audio format must be one of {sorted(AUDIO_FORMATS)}, got {fmt!r}")
    container, subtype = AUDIO_FORMATS[fmt]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    data = np.clip(np.asarray(wave, np.float32), -1.0, 1.0)
    try:
        # In blocks: libsndfile's Vorbis encoder crashes (SIGSEGV) on one write of a few minutes.
        with sf.SoundFile(tmp, "w", sample_rate, 1, format=container, subtype=subtype) as f:
            for start in range(0, len(data), WRITE_BLOCK):
                f.write(data[start:start + WRITE_BLOCK])
        tmp.replace(path)
    except sf.LibsndfileError as e:  # its text for a failed write is "System error."
        tmp.unlink(missing_ok=True)
        raise _write_error(path, e) from e
    except BaseException:  # Ctrl-C / SIGTERM while encoding: no temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise
    return path


FULL_DISK_BYTES = 1 << 20  # a disk with less free space than this is taken to be full
PROBE_BYTES = 1 << 20  # written to tell a quota's refusal on a disk that has space


def _write_error(path: Path, error: Exception) -> OSError:
    """libsndfile's error for `path` as an OSError naming it, with the OS's reason when the disk
    or quota is full (`_no_room`): libsndfile says only "System error." (a trial's full disk)."""
    full = _no_room(path.parent)
    if full is not None:
        return OSError(full.errno, f"{full.strerror} (libsndfile: {error})", str(path))
    return OSError(errno.EIO, f"cannot write it (libsndfile: {error})", str(path))


def _no_room(folder: Path) -> OSError | None:
    """The OS's error for a write in `folder` when it has no room: under `FULL_DISK_BYTES` free,
    or a probe of `PROBE_BYTES` refused for a full disk or quota (`errors.FULL_ERRNOS`); None
    otherwise."""
    try:
        if shutil.disk_usage(folder).free < FULL_DISK_BYTES:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tagger-jax-", suffix=".probe") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno in errors.FULL_ERRNOS:
            return e
    return None
