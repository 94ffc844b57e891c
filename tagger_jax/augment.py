"""Training augmentations on the stored dB log-mel, cheap enough for 2 CPU cores.

Why on the log-mel and not the waveform: the datasets store log-mels only (the waveform configs
are 30 times larger), and every augmentation below has an exact or close log-mel equivalent that
costs microseconds per chunk, where waveform pitch shift / time stretch cost tens of milliseconds
per clip (`librosa.effects`) and would dominate a 2-core training step. The mel power of a sum of
uncorrelated signals is the sum of their mel powers, so additive noise and mixing are done in the
power domain (10 ** (dB / 10)) and converted back.

All draws come from the `numpy.random.Generator` passed in, which the input pipeline seeds with
(seed, epoch, record index): an augmented batch is a pure function of the training step, so a
resumed run sees exactly the batches of an uninterrupted one.

Per chunk (probabilities and ranges in `AugmentParams`; each transform applied with its own
probability, in this order):
  - time stretch: the time axis resampled by a factor in [1/s, s] (linear interpolation; with
    s = 1.08, synthetic_tags' 60-76 / 140-176 BPM stay clear of its untagged 92-116 BPM band;
    soundfont_tags 3.0.0's classes, 4 and 8 BPM from its untagged 80-132 band, need s <= 1.05);
  - pitch shift: the mel axis shifted by up to `pitch_bins` bins (edge bins repeated): above
    1 kHz, where librosa's (Slaney) mel bands are log-spaced, a bin of the 96 up to 8 kHz is
    3.3% in frequency (0.56 semitone); an approximation below;
  - envelope shift (off by default): each frame's spectral envelope moved along the mel axis by
    up to +-`envelope_bins` bins while its fine structure stays (`envelope_shift`): what a
    formant shift at fixed pitch does, or another instrument sample's body resonances, as far as
    96 mel bands tell envelope from fine structure. With `p_envelope` 0 no draw is made for it;
  - gain: a constant of up to +-`gain_db` dB (small: loud / quiet are levels 12 dB apart);
  - EQ: a smooth random curve over the mel bands (two random cosines) of up to +-`eq_db` dB;
  - reverb: power convolved along time with an exponential decay (RT60 in `rt60_s`) added at a
    wet level in `wet_db` below the dry signal;
  - noise: white-in-mel noise at an SNR in `snr_db` (relative to the chunk's mean power);
  - mix (`mix_with`): a second chunk added in power at `mix_db` relative level; the labels become
    the union (only tags in `mix_tags`; the others keep the first chunk's labels, since e.g. a
    fast clip mixed with a slow one is neither);
  - frequency masking (SpecAugment's frequency masks, Park et al. 2019, "SpecAugment: A Simple
    Data Augmentation Method for Automatic Speech Recognition"; off by default):
    `freq_masks` bands of 0 to `freq_mask_bins` adjacent mel bins each set to the chunk's lowest
    value, a deep notch filter, so that no tag can rest on a few bands. SpecAugment's time masks
    are left out: they cut onsets out of the tempo tags' evidence and would need the frame
    targets to follow. With `p_freq_mask` 0 no draw is made for it, so the other transforms'
    draws are those of a configuration without the field.

Frame targets (`frames`, (T, num_tags): the crop's exact activity, the targets of the frame-level
loss) follow the transforms that move sound in time: the time stretch reads them at the same
source frames as the log-mel (a frame is on if either of the two frames it interpolates is on),
and mixing takes their frame-by-frame union for the tags in `mix_tags` (the others keep the
first chunk's). Pitch shift, envelope shift, gain, EQ and noise leave them as they are; so
does the reverb, whose tail (its total energy 3-12 dB below the dry path's, spread over the
decay) is not counted as the instrument sounding, as the dataset's activity does not count a
note's own release tail. The pipeline then labels an activity-labelled crop with the tags
active in its augmented frame targets.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

FRAME_S = 256 / 16000  # seconds per log-mel frame (hop 256 at 16 kHz)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    p_stretch: float = 0.5
    stretch: float = 1.08
    p_pitch: float = 0.5
    pitch_bins: int = 2
    p_envelope: float = 0.0
    envelope_bins: float = 2.0
    envelope_order: int = 12
    p_gain: float = 1.0
    gain_db: float = 3.0
    p_eq: float = 0.5
    eq_db: float = 6.0
    p_reverb: float = 0.3
    rt60_s: tuple[float, float] = (0.2, 1.2)
    wet_db: tuple[float, float] = (-12.0, -3.0)
    p_noise: float = 0.3
    snr_db: tuple[float, float] = (15.0, 40.0)
    p_mix: float = 0.0
    mix_db: tuple[float, float] = (-6.0, 0.0)
    p_freq_mask: float = 0.0
    freq_masks: int = 2
    freq_mask_bins: int = 12

    @classmethod
    def from_dict(cls, values) -> "AugmentParams":
        """From a dict / ConfigDict of field values; an unknown field is a ValueError."""
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown augmentation fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _to_power(x_db: np.ndarray) -> np.ndarray:
    return np.power(10.0, np.asarray(x_db, np.float64) / 10.0)


def _to_db(p: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(p, 1e-10))


def _stretch_sources(length: int, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(floor, ceiling, weight of the ceiling), each (length,): the two source frames output frame
    t interpolates under a stretch by `factor` (t * factor, the last frame repeated)."""
    t = np.arange(length) * factor
    i0 = np.minimum(np.floor(t).astype(int), length - 1)
    return i0, np.minimum(i0 + 1, length - 1), t - np.floor(t)


def time_stretch(x: np.ndarray, factor: float) -> np.ndarray:
    """(bands, T) -> (bands, T): content played `factor` times faster (frame t reads source frame
    t * factor, linear interpolation, last frame repeated past the end)."""
    i0, i1, w = _stretch_sources(x.shape[1], factor)
    return (1 - w)[None, :] * x[:, i0] + w[None, :] * x[:, i1]


def time_stretch_activity(frames: np.ndarray, factor: float) -> np.ndarray:
    """(T, num_tags) activity -> (T, num_tags) under `time_stretch(x, factor)` of its log-mel:
    frame t is on where either source frame that t interpolates (floor and ceiling of t * factor,
    the last frame repeated) is on with a non-zero weight."""
    i0, i1, w = _stretch_sources(frames.shape[0], factor)
    return np.maximum(frames[i0], np.where(w[:, None] > 0, frames[i1], 0)).astype(frames.dtype)


def pitch_shift(x: np.ndarray, bins: int) -> np.ndarray:
    """Shift along the mel axis by `bins` (positive = up), edge bins repeated."""
    if bins == 0:
        return x
    idx = np.clip(np.arange(x.shape[0]) - bins, 0, x.shape[0] - 1)
    return x[idx]


def _dct_basis(n: int) -> np.ndarray:
    """(n, n) orthonormal DCT-II matrix: row k is sqrt(2/n) cos(pi k (2b + 1) / 2n), row 0 scaled
    by 1/sqrt(2), so `basis @ x` is the cepstrum of a log spectrum x over n bands."""
    k = np.arange(n)[:, None]
    basis = np.sqrt(2.0 / n) * np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n))
    basis[0] /= np.sqrt(2.0)
    return basis


def spectral_envelope(x_db: np.ndarray, order: int) -> np.ndarray:
    """(bands, T) -> (bands, T): each frame's envelope, its log-mel cepstrally smoothed (the first
    `order` DCT-II coefficients over the bands kept, the rest zeroed: cepstral liftering, e.g.
    Oppenheim & Schafer, "Discrete-Time Signal Processing", ch. 13). `x_db - envelope` is the fine
    structure (harmonic ripple, where the mel bands resolve it)."""
    basis = _dct_basis(x_db.shape[0])[:order]
    return basis.T @ (basis @ x_db)


def envelope_shift(x_db: np.ndarray, bins: float, order: int) -> np.ndarray:
    """(bands, T) dB log-mel -> (bands, T): the spectral envelope (`spectral_envelope`) moved up
    by `bins` mel bands (fractional: linear interpolation; edge values repeated), the fine
    structure left in place. A ripple whose period is longer than 2 * bands / order bins (DCT row
    k has period 2 * bands / k; e.g. the harmonics of high notes in the linear low bands) counts
    as envelope and moves with it."""
    if bins == 0:
        return x_db
    envelope = spectral_envelope(x_db, order)
    source = np.clip(np.arange(x_db.shape[0]) - bins, 0, x_db.shape[0] - 1)
    lo = np.floor(source).astype(int)
    hi = np.minimum(lo + 1, x_db.shape[0] - 1)
    w = (source - lo)[:, None]
    return x_db - envelope + (1 - w) * envelope[lo] + w * envelope[hi]


def reverb(x_db: np.ndarray, rt60_s: float, wet_db: float) -> np.ndarray:
    """Adds a power-domain exponential tail (-60 dB after rt60_s) at `wet_db` re the dry path."""
    p = _to_power(x_db)
    n = max(1, int(round(rt60_s / FRAME_S)))
    kernel = np.power(10.0, -6.0 * np.arange(1, n + 1) / n)  # from frame 1: the dry path is 0
    kernel *= 10.0 ** (wet_db / 10.0) / kernel.sum()
    tail = np.zeros_like(p)
    for k, g in enumerate(kernel, start=1):
        tail[:, k:] += g * p[:, :-k]
    return _to_db(p + tail)


def add_noise(x_db: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    p = _to_power(x_db)
    level = p.mean() * 10.0 ** (-snr_db / 10.0)
    noise = level * rng.chisquare(2, size=p.shape) / 2.0  # power of complex Gaussian bins
    return _to_db(p + noise)


def mix(x_db: np.ndarray, other_db: np.ndarray, level_db: float) -> np.ndarray:
    """Power sum of two log-mels, the second scaled by `level_db`."""
    return _to_db(_to_power(x_db) + 10.0 ** (level_db / 10.0) * _to_power(other_db))


def freq_mask(x: np.ndarray, start: int, width: int) -> np.ndarray:
    """(bands, T) -> (bands, T) with bands [start, start + width) set to the minimum of `x`."""
    out = np.array(x, copy=True)
    out[start:start + width] = x.min()
    return out


def augment(x_db: np.ndarray, y: np.ndarray, rng: np.random.Generator, params: AugmentParams,
            other: tuple[np.ndarray, ...] | None = None,
            mix_tags: Sequence[bool] | None = None,
            frames: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """One augmented (float32 (bands, T) dB log-mel, float32 labels[, float32 (T, num_tags) frame
    targets when `frames` is given]). `other`: a second chunk and its labels (and its frame
    targets, (T, num_tags), when `frames` is given) for mixing (used with probability `p_mix`);
    `mix_tags`: bool per tag, True where the mixed labels are the union (default: all tags).
    The draws do not depend on `frames`: with or without them the log-mel and labels are equal.
    """
    x = np.asarray(x_db, np.float64)
    y = np.asarray(y, np.float32)
    f = None if frames is None else np.asarray(frames, np.float32)
    if f is not None and f.shape[0] != x.shape[1]:
        raise ValueError(f"frame targets have {f.shape[0]} frames, the log-mel {x.shape[1]}")
    if f is not None and other is not None and (len(other) < 3 or other[2] is None
                                                or np.shape(other[2]) != f.shape):
        raise ValueError(f"with frame targets {f.shape}, the mixing partner needs its own "
                         "(log-mel, labels, frame targets) of the same shape")
    if rng.random() < params.p_stretch:
        s = np.log(params.stretch)
        factor = float(np.exp(rng.uniform(-s, s)))
        x = time_stretch(x, factor)
        if f is not None:
            f = time_stretch_activity(f, factor)
    if rng.random() < params.p_pitch and params.pitch_bins:
        x = pitch_shift(x, int(rng.integers(-params.pitch_bins, params.pitch_bins + 1)))
    if params.p_envelope > 0 and rng.random() < params.p_envelope:
        x = envelope_shift(x, rng.uniform(-params.envelope_bins, params.envelope_bins),
                           params.envelope_order)
    if rng.random() < params.p_gain:
        x = x + rng.uniform(-params.gain_db, params.gain_db)
    if rng.random() < params.p_eq:
        bands = np.linspace(0, np.pi, x.shape[0])[:, None]
        curve = sum(rng.uniform(-1, 1) * np.cos(rng.uniform(0.5, 3.0) * bands
                                                + rng.uniform(0, np.pi)) for _ in range(2))
        x = x + 0.5 * params.eq_db * curve
    if rng.random() < params.p_reverb:
        x = reverb(x, rng.uniform(*params.rt60_s), rng.uniform(*params.wet_db))
    if rng.random() < params.p_noise:
        x = add_noise(x, rng.uniform(*params.snr_db), rng)
    if other is not None and rng.random() < params.p_mix:
        x = mix(x, other[0], rng.uniform(*params.mix_db))
        keep = np.ones_like(y, bool) if mix_tags is None else np.asarray(mix_tags, bool)
        y = np.where(keep, np.maximum(y, np.asarray(other[1], np.float32)), y)
        if f is not None:
            f = np.where(keep, np.maximum(f, np.asarray(other[2], np.float32)), f)
    if params.p_freq_mask > 0 and rng.random() < params.p_freq_mask:
        for _ in range(params.freq_masks):
            width = min(int(rng.integers(0, params.freq_mask_bins + 1)), x.shape[0])
            x = freq_mask(x, int(rng.integers(0, x.shape[0] - width + 1)), width)
    if f is None:
        return x.astype(np.float32), y
    return x.astype(np.float32), y, f
