"""Music-like clips with exact tags, synthesised with NumPy: data that needs no download.

Each clip mixes 1 to 3 instruments playing melodies, chords or bass lines in a random key, on a
shared beat grid, at a tempo and level drawn from classes with clear gaps between them. Every tag is
true by construction and audible:

- an instrument tag is set exactly when that instrument plays, and every instrument stem is mixed
  within 4 dB of the others;
- "fast" / "slow": 140-176 / 60-76 BPM, and every part articulates notes at the tempo (fast parts
  use half and whole beats, slow parts whole and double beats); 92-116 BPM clips get neither tag;
- "loud" / "quiet": mix RMS of -12 +- 2 / -36 +- 2 dBFS; -24 +- 2 dBFS clips get neither tag;
- "no vocal": exactly when no voice plays; "male" / "female" voices sing in disjoint pitch ranges
  (98-196 Hz / 262-659 Hz) with male / female vowel formants.

With `segments=True` the two halves of a clip use instrument sets that share no instrument tag,
and a frame-level mask (aligned with the centred STFT frames of `hop_length`) says where each tag
sounds: the explanation methods are scored against it.

Everything is a pure function of the seed (`numpy.random.default_rng(seed)`), so datasets can be
generated in parallel and rebuilt bit for bit. Only NumPy is used (filters are FFT-domain FIRs), so
generation runs in any worker process.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

SAMPLE_RATE = 16000

# Instrument kind -> the tags it makes true. Tag names follow MagnaTagATune where one fits.
INSTRUMENTS: dict[str, tuple[str, ...]] = {
    "piano": ("piano",),
    "guitar": ("guitar",),
    "violin": ("strings", "violin"),
    "cello": ("strings", "cello"),
    "flute": ("flute",),
    "organ": ("organ",),
    "synth": ("synth",),
    "bass": ("bass",),
    "drums": ("drums",),
    "male voice": ("vocal", "male"),
    "female voice": ("vocal", "female"),
}
VOICES = ("male voice", "female voice")

# Tag order: MagnaTagATune's top-50 frequency order for the tags it shares, then organ and bass.
SYNTH_TAGS: tuple[str, ...] = (
    "guitar", "slow", "strings", "drums", "fast", "piano", "violin", "vocal", "synth", "female",
    "male", "loud", "quiet", "flute", "no vocal", "cello", "organ", "bass",
)
GLOBAL_TAGS = ("slow", "fast", "loud", "quiet", "no vocal")  # true for the whole clip

TEMPO_BPM = {"slow": (60.0, 76.0), "medium": (92.0, 116.0), "fast": (140.0, 176.0)}
NOTE_BEATS = {"slow": (1.0, 2.0), "medium": (0.5, 1.0, 2.0), "fast": (0.5, 1.0)}
LEVEL_DB = {"quiet": (-38.0, -34.0), "medium": (-26.0, -22.0), "loud": (-14.0, -10.0)}
TEMPO_TAG = {"slow": "slow", "fast": "fast", "medium": None}
LEVEL_TAG = {"quiet": "quiet", "loud": "loud", "medium": None}

# Pitch registers (MIDI note numbers, inclusive).
REGISTER = {
    "piano": (55, 84), "guitar": (45, 76), "violin": (67, 91), "cello": (38, 57),
    "flute": (72, 93), "organ": (48, 76), "synth": (55, 84), "bass": (28, 48),
    "male voice": (43, 55), "female voice": (60, 76),
}
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = ((0, 5, 3, 4), (0, 3, 4, 0), (5, 3, 0, 4), (0, 4, 5, 3), (0, 3, 0, 4))
MIX_SPREAD_DB = 4.0  # stems are mixed within this many dB of each other

# Vowel formants (Hz) of an adult male voice (Peterson & Barney averages, F4 approximate).
VOWELS = {
    "a": (730.0, 1090.0, 2440.0, 3400.0), "e": (530.0, 1840.0, 2480.0, 3400.0),
    "i": (270.0, 2290.0, 3010.0, 3500.0), "o": (570.0, 840.0, 2410.0, 3300.0),
    "u": (300.0, 870.0, 2240.0, 3300.0),
}
FEMALE_FORMANT_SCALE = 1.17


@dataclasses.dataclass(frozen=True)
class ClipParams:
    """Everything random about a clip except the note-level details drawn while rendering."""

    parts: tuple[tuple[str, ...], ...]  # instrument kinds per part: one part, or two halves
    tempo: str  # "slow", "medium" or "fast"
    bpm: float
    level: str  # "quiet", "medium" or "loud"
    level_db: float  # RMS of the mix (of each half for segment clips), dBFS
    root: int  # key: pitch class 0..11
    minor: bool
    progression: tuple[int, ...]  # scale degrees of the chords, one per bar


Note = tuple[float, float, tuple[float, ...], float]  # onset s, duration s, MIDI pitches, velocity


# ----------------------------------------------------------------------------------- parameters


def _pick_kinds(rng: np.random.Generator, n: int, exclude_tags: set[str]) -> tuple[str, ...]:
    """n instrument kinds, none with a tag in `exclude_tags`; a voice with probability 0.35
    (so "no vocal" is roughly balanced)."""
    pool = [k for k in INSTRUMENTS if not set(INSTRUMENTS[k]) & exclude_tags]
    voices = [k for k in pool if k in VOICES]
    others = [k for k in pool if k not in VOICES]
    kinds: list[str] = []
    if voices and rng.random() < 0.35:
        kinds.append(str(rng.choice(voices)))
    while len(kinds) < n and others:
        kind = str(rng.choice(others))
        others = [k for k in others if not set(INSTRUMENTS[k]) & set(INSTRUMENTS[kind])]
        kinds.append(kind)
    return tuple(sorted(kinds, key=list(INSTRUMENTS).index))


def sample_params(rng: np.random.Generator, segments: bool = False,
                  instruments: Sequence | None = None, tempo: str | None = None,
                  level: str | None = None) -> ClipParams:
    """Draws a clip's parameters; `instruments`, `tempo` and `level` fix those choices (tests).

    `instruments` is a tuple of kinds, or for segment clips a pair of tuples (first, second half).
    """
    if instruments is None:
        if segments:
            first = _pick_kinds(rng, int(rng.integers(1, 3)), set())
            used = {t for k in first for t in INSTRUMENTS[k]}
            parts = (first, _pick_kinds(rng, int(rng.integers(1, 3)), used))
        else:
            parts = (_pick_kinds(rng, int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3])), set()),)
    else:
        parts = tuple(tuple(p) for p in instruments) if segments else (tuple(instruments),)
    for part in parts:
        unknown = [k for k in part if k not in INSTRUMENTS]
        if unknown or not part:
            raise ValueError(f"instruments must be non-empty tuples of {list(INSTRUMENTS)}, "
                             f"got {parts}")
    if segments and len(parts) != 2:
        raise ValueError(f"segment clips have two parts, got {len(parts)}")
    tempo = tempo or str(rng.choice(list(TEMPO_BPM)))
    level = level or str(rng.choice(list(LEVEL_DB)))
    if tempo not in TEMPO_BPM or level not in LEVEL_DB:
        raise ValueError(f"tempo must be in {list(TEMPO_BPM)} and level in {list(LEVEL_DB)}")
    return ClipParams(
        parts=parts, tempo=tempo, bpm=float(rng.uniform(*TEMPO_BPM[tempo])), level=level,
        level_db=float(rng.uniform(*LEVEL_DB[level])), root=int(rng.integers(12)),
        minor=bool(rng.random() < 0.5),
        progression=tuple(PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]))


def clip_tags(params: ClipParams) -> tuple[str, ...]:
    """The tag names that are true for a clip, in `SYNTH_TAGS` order."""
    true = {t for part in params.parts for k in part for t in INSTRUMENTS[k]}
    true |= {t for t in (TEMPO_TAG[params.tempo], LEVEL_TAG[params.level]) if t}
    if not any(k in VOICES for part in params.parts for k in part):
        true.add("no vocal")
    return tuple(t for t in SYNTH_TAGS if t in true)


def multi_hot(tags: Sequence[str], vocabulary: Sequence[str] = SYNTH_TAGS) -> np.ndarray:
    """uint8 0/1 vector over `vocabulary`."""
    index = {t: i for i, t in enumerate(vocabulary)}
    out = np.zeros(len(vocabulary), np.uint8)
    out[[index[t] for t in tags]] = 1
    return out


# ----------------------------------------------------------------------------------- DSP helpers


def _hz(midi) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _fir(magnitude: Callable[[np.ndarray], np.ndarray], sr: int, taps: int = 512) -> np.ndarray:
    """Linear-phase FIR whose magnitude response is `magnitude(f_hz)` (frequency sampling)."""
    f = np.fft.rfftfreq(taps, 1.0 / sr)
    h = np.fft.irfft(magnitude(f), taps)
    return np.roll(h, taps // 2) * np.hanning(taps)


def _fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (fast for pocketfft, at most ~25 % padding)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35 << max(0, (n - 1) // p35).bit_length()  # times the power of 2 reaching n
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def _filter(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """FFT convolution with the FIR `h`, delay removed, same length as `x`."""
    size = _fft_size(len(x) + len(h) - 1)
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)
    d = len(h) // 2
    return y[d:d + len(x)]


def _resonance(f: np.ndarray, centre: float, bandwidth: float) -> np.ndarray:
    """Magnitude of a resonance peak (1 at `centre`, -3 dB at +-bandwidth/2)."""
    return 1.0 / np.sqrt(1.0 + ((f - centre) / (0.5 * bandwidth)) ** 2)


def _envelope(length: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Linear attack, hold at 1, linear release, all within `length` samples."""
    env = np.ones(length)
    a = min(length, max(1, int(attack * sr)))
    r = min(length - a, max(1, int(release * sr)))
    env[:a] = np.arange(a) / a
    if r > 0:
        env[length - r:] *= np.linspace(1.0, 0.0, r)
    return env


def _phase(freq: np.ndarray, sr: int, start: float = 0.0) -> np.ndarray:
    """Phase in cycles of an oscillator with instantaneous frequency `freq` (Hz per sample)."""
    return start + np.cumsum(freq) / sr


def _table(amps: Sequence[float], size: int = 2048) -> np.ndarray:
    """One period of sum_k amps[k] sin(2 pi (k+1) x), for `_wavetable`."""
    grid = np.arange(size) / size
    return np.asarray(sum(a * np.sin(2 * np.pi * (k + 1) * grid) for k, a in enumerate(amps) if a))


def _wavetable(phase: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Harmonic oscillator by table lookup (`table` from `_table`) at `phase` in cycles."""
    size = len(table)
    idx = (np.mod(phase, 1.0) * size).astype(np.int64) % size
    return table[idx]


def _saw(phase: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """Band-limited sawtooth (polyBLEP) from phase in cycles and increment per sample."""
    t = np.mod(phase, 1.0)
    y = 2.0 * t - 1.0
    lo = t < dt
    x = t[lo] / dt[lo]
    y[lo] -= x + x - x * x - 1.0
    hi = t > 1.0 - dt
    x = (t[hi] - 1.0) / dt[hi]
    y[hi] -= x * x + x + x + 1.0
    return y


def _vibrato(length: int, sr: int, rate: float, depth: float, delay: float,
             phase: float) -> np.ndarray:
    """Multiplicative pitch factor 1 + depth * sin(...), faded in after `delay` seconds."""
    t = np.arange(length) / sr
    fade = np.clip((t - delay) / 0.2, 0.0, 1.0)
    return 1.0 + depth * fade * np.sin(2 * np.pi * rate * t + phase)


def _span(onset: float, dur: float, tail: float, n: int, sr: int) -> tuple[int, int]:
    s = int(round(onset * sr))
    return s, max(0, min(n - s, int(round((dur + tail) * sr))))


# ----------------------------------------------------------------------------------- instruments


def _piano(notes: list[Note], n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Decaying inharmonic partials (stiff string), higher partials decaying faster, a damper at
    note off and a short hammer thump."""
    out = np.zeros(n)
    stiffness = rng.uniform(2e-4, 6e-4)
    tilt = rng.uniform(1.0, 1.6)
    k = np.arange(1, 8, dtype=np.float64)
    for onset, dur, pitches, vel in notes:
        s, length = _span(onset, dur, 0.12, n, sr)
        if length <= 0:
            continue
        t = np.arange(length, dtype=np.float32) / np.float32(sr)  # float32: twice as fast
        damper = np.exp(-np.maximum(t - dur, 0.0) / 0.025)
        note = np.zeros(length, np.float32)
        for midi in pitches:
            f0 = float(_hz(midi))
            fk = k * f0 * np.sqrt(1.0 + stiffness * k * k)
            keep = fk < 0.45 * sr
            tau = np.clip(3.0 * (220.0 / f0) ** 0.6, 0.4, 4.0) / (1.0 + 0.6 * (k[keep] - 1.0))
            amp = k[keep] ** -tilt
            ph = rng.uniform(0, 2 * np.pi, keep.sum()).astype(np.float32)
            omega = (2 * np.pi * fk[keep]).astype(np.float32)
            decay = (1.0 / tau).astype(np.float32)
            note += (amp.astype(np.float32)[:, None] * np.exp(-t * decay[:, None])
                     * np.sin(omega[:, None] * t + ph[:, None])).sum(0)
        thump = min(length, int(0.01 * sr))
        note[:thump] += 0.3 * rng.standard_normal(thump) * np.exp(-np.arange(thump) / (0.002 * sr))
        note *= damper * _envelope(length, sr, 0.002, 0.0)
        out[s:s + length] += vel * note
    return out


def _karplus_strong(f0: float, length: int, sr: int, rng: np.random.Generator, decay: float,
                    smooth: int) -> np.ndarray:
    """Plucked string: a noise burst circulating in a delay line with an averaging loss filter,
    y[i] = x[i] + decay/2 (y[i-N] + y[i-N-1]); computed one period-long block at a time."""
    period = max(2, int(round(sr / f0 - 0.5)))
    burst = rng.uniform(-1.0, 1.0, period)
    for _ in range(smooth):  # a softer pluck: fewer high harmonics in the excitation
        burst = 0.5 * (burst + np.roll(burst, 1))
    burst -= burst.mean()
    pad = period + 1
    y = np.zeros(pad + length)
    y[pad:pad + min(period, length)] = burst[:length]
    h = 0.5 * decay
    for start in range(pad + period, pad + length, period):
        m = min(period, pad + length - start)
        y[start:start + m] = h * (y[start - period:start - period + m]
                                  + y[start - period - 1:start - period - 1 + m])
    return y[pad:]


def _guitar(notes: list[Note], n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    decay = rng.uniform(0.992, 0.998)
    smooth = int(rng.integers(1, 4))
    for onset, dur, pitches, vel in notes:
        for j, midi in enumerate(pitches):  # chords are strummed: 15 ms between strings
            s, length = _span(onset + 0.015 * j, dur - 0.015 * j, 0.08, n, sr)
            if length <= 0:
                continue
            t = np.arange(length) / sr
            note = _karplus_strong(float(_hz(midi)), length, sr, rng, decay, smooth)
            note *= np.exp(-np.maximum(t - dur, 0.0) / 0.02)  # fret hand damps at note off
            out[s:s + length] += vel * note
    return out


def _bowed(notes: list[Note], n: int, sr: int, rng: np.random.Generator,
           body_scale: float) -> np.ndarray:
    """Bowed string: band-limited sawtooth with delayed vibrato and a slow attack, through a body
    filter (resonances scaled by `body_scale`: 1 violin, ~0.45 cello), plus bow noise."""
    out = np.zeros(n)
    rate, depth = rng.uniform(5.0, 6.5), rng.uniform(0.004, 0.008)
    attack = rng.uniform(0.08, 0.2)
    for onset, dur, pitches, vel in notes:
        gap = max(0.03, 0.1 * dur)
        s, length = _span(onset, dur - gap, 0.0, n, sr)
        if length <= 0:
            continue
        for midi in pitches:
            freq = float(_hz(midi)) * _vibrato(length, sr, rate, depth, 0.15,
                                               rng.uniform(0, 2 * np.pi))
            wave = _saw(_phase(freq, sr, rng.random()), freq / sr)
            wave += 0.05 * rng.standard_normal(length)  # bow noise
            env = _envelope(length, sr, min(attack, 0.4 * (dur - gap)), 0.05)
            out[s:s + length] += vel * wave * env
    peaks = body_scale * np.array([280.0, 460.0, 1100.0, 2800.0])
    widths = body_scale * np.array([80.0, 150.0, 500.0, 1500.0])

    def body(f):
        res = 0.25 + sum(_resonance(f, p, w) for p, w in zip(peaks, widths))
        return res / np.sqrt(1.0 + (f / (5000.0 * body_scale)) ** 4)

    return _filter(out, _fir(body, sr))


def _flute(notes: list[Note], n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Nearly sinusoidal tone with weak harmonics, gentle vibrato, and breath noise (stronger at
    each onset, the "chiff") band-passed around 1.5-5 kHz."""
    tone = np.zeros(n)
    breath = np.zeros(n)
    table = _table((1.0, rng.uniform(0.2, 0.45), rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.06)))
    rate, depth = rng.uniform(4.5, 5.5), rng.uniform(0.003, 0.006)
    for onset, dur, pitches, vel in notes:
        gap = max(0.03, 0.1 * dur)
        s, length = _span(onset, dur - gap, 0.0, n, sr)
        if length <= 0:
            continue
        env = _envelope(length, sr, min(0.05, 0.3 * (dur - gap)), 0.06)
        for midi in pitches:
            freq = float(_hz(midi)) * _vibrato(length, sr, rate, depth, 0.2,
                                               rng.uniform(0, 2 * np.pi))
            tone[s:s + length] += vel * env * _wavetable(_phase(freq, sr, rng.random()), table)
        chiff = 1.0 + 3.0 * np.exp(-np.arange(length) / (0.03 * sr))
        breath[s:s + length] += vel * env * chiff * rng.standard_normal(length)
    band = _fir(lambda f: _resonance(f, 2500.0, 3000.0), sr)
    breath = _filter(breath, band)
    ratio = np.sqrt(np.mean(tone ** 2)) / (np.sqrt(np.mean(breath ** 2)) + 1e-12)
    return tone + 0.15 * ratio * breath


def _organ(notes: list[Note], n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Drawbar organ: sustained harmonics of the sub-octave (no decay), fast on/off."""
    # Harmonics of f0/2: 1 = sub-octave, 2 = fundamental, 3 = fifth, 4, 6, 8 = octaves and twelfth.
    amps = np.zeros(8)
    amps[1] = 1.0
    for h in (0, 2, 3, 5, 7):
        amps[h] = rng.choice([0.0, 0.3, 0.6, 0.9])
    table = _table(amps)
    out = np.zeros(n)
    for onset, dur, pitches, vel in notes:
        gap = max(0.03, 0.08 * dur)
        s, length = _span(onset, dur - gap, 0.0, n, sr)
        if length <= 0:
            continue
        env = _envelope(length, sr, 0.008, 0.02)
        for midi in pitches:
            freq = np.full(length, float(_hz(midi)) / 2.0)
            out[s:s + length] += vel * env * _wavetable(_phase(freq, sr, rng.random()), table)
    return out  # no tremolo: a 6 Hz amplitude wobble would read as fast note onsets


def _synth_lead(notes: list[Note], n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Two detuned band-limited sawtooths through a resonant low-pass filter."""
    detune = 2.0 ** (rng.uniform(6.0, 14.0) / 1200.0)
    out = np.zeros(n)
    for onset, dur, pitches, vel in notes:
        gap = max(0.02, 0.08 * dur)
        s, length = _span(onset, dur - gap, 0.0, n, sr)
        if length <= 0:
            continue
        env = _envelope(length, sr, 0.005, 0.04)
        env *= 0.75 + 0.25 * np.exp(-np.arange(length) / (0.15 * sr))
        for midi in pitches:
            for ratio in (detune, 1.0 / detune):
                freq = np.full(length, float(_hz(midi)) * ratio)
                wave = _saw(_phase(freq, sr, rng.random()), freq / sr)
                out[s:s + length] += 0.5 * vel * env * wave
    cutoff = rng.uniform(1500.0, 3500.0)
    lowpass = _fir(lambda f: 1.0 / np.sqrt(1.0 + (f / cutoff) ** 8)
                   + 0.8 * _resonance(f, cutoff, 0.3 * cutoff), sr)
    return _filter(out, lowpass)


def _bass(notes: list[Note], n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Electric-bass-like: few harmonics, plucked decay, damped at note off."""
    table = _table((1.0, rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.2),
                    0.05))
    tau = rng.uniform(0.5, 1.2)
    out = np.zeros(n)
    for onset, dur, pitches, vel in notes:
        s, length = _span(onset, dur, 0.03, n, sr)
        if length <= 0:
            continue
        t = np.arange(length) / sr
        env = np.exp(-t / tau) * np.exp(-np.maximum(t - dur, 0.0) / 0.01)
        env *= _envelope(length, sr, 0.004, 0.0)
        for midi in pitches:
            freq = np.full(length, float(_hz(midi)))
            out[s:s + length] += vel * env * _wavetable(_phase(freq, sr, rng.random()), table)
    return out


def _drum_kit(sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One-shot kick (pitch-swept sine), snare (band noise + tone), closed hi-hat (high noise)."""
    t = np.arange(int(0.35 * sr)) / sr
    f = rng.uniform(45.0, 60.0) + rng.uniform(80.0, 140.0) * np.exp(-t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / rng.uniform(0.1, 0.2))
    kick[:48] += 0.5 * rng.standard_normal(48) * np.exp(-np.arange(48) / 12.0)
    t = np.arange(int(0.25 * sr)) / sr
    noise = _filter(rng.standard_normal(len(t)), _fir(lambda f: _resonance(f, 3000.0, 4000.0), sr))
    snare = (noise * np.exp(-t / rng.uniform(0.06, 0.1))
             + 0.6 * np.sin(2 * np.pi * rng.uniform(170, 220) * t) * np.exp(-t / 0.05))
    t = np.arange(int(0.08 * sr)) / sr
    high = _fir(lambda f: 1.0 / np.sqrt(1.0 + (5500.0 / np.maximum(f, 1.0)) ** 8), sr)
    hat = _filter(rng.standard_normal(len(t)), high) * np.exp(-t / rng.uniform(0.015, 0.03))
    return {"kick": kick / np.abs(kick).max(), "snare": snare / np.abs(snare).max(),
            "hat": 0.5 * hat / np.abs(hat).max()}


def _drums(params: ClipParams, t0: float, t1: float, n: int, sr: int,
           rng: np.random.Generator) -> np.ndarray:
    """Kick on beats 1 and 3 (plus syncopations), snare on 2 and 4, hi-hat on every beat (slow)
    or every half beat (medium, fast)."""
    kit = _drum_kit(sr, rng)
    beat = 60.0 / params.bpm
    hat_step = 1.0 if params.tempo == "slow" else 0.5
    out = np.zeros(n)
    first = np.ceil(t0 / (beat * hat_step) - 1e-9) * hat_step
    pos = first
    extra_kicks = {b for b in (1.5, 2.5, 3.5) if rng.random() < 0.3}
    while pos * beat < t1 - 1e-9:
        in_bar = pos % 4.0
        hits = ["hat"]
        if in_bar in (0.0, 2.0) or in_bar in extra_kicks:
            hits.append("kick")
        if in_bar in (1.0, 3.0):
            hits.append("snare")
        s = int(round((pos * beat - t0) * sr))
        for hit in hits:
            shot = kit[hit] * rng.uniform(0.8, 1.0)
            m = min(len(shot), n - s)
            if m > 0:
                out[s:s + m] += shot[:m]
        pos += hat_step
    return out


def _voice(notes: list[Note], n: int, sr: int, rng: np.random.Generator,
           female: bool) -> np.ndarray:
    """Vowel-like singing: a glottal pulse train (vibrato, a short glide into each note) through a
    spectral tilt and four formant resonances of a random vowel per note, plus breathy noise."""
    scale = FEMALE_FORMANT_SCALE if female else 1.0
    rate, depth = rng.uniform(5.0, 6.0), rng.uniform(0.01, 0.02)
    out = np.zeros(n)
    previous = None
    for onset, dur, pitches, vel in notes:
        gap = max(0.04, 0.1 * dur)
        s, length = _span(onset, dur - gap, 0.0, n, sr)
        if length <= 0:
            continue
        f0 = float(_hz(pitches[0]))
        glide = np.ones(length)
        if previous is not None:  # portamento from the previous note over 50 ms
            k = np.exp(-np.arange(length) / (0.015 * sr))
            glide = (previous / f0) ** k
        freq = f0 * glide * _vibrato(length, sr, rate, depth, 0.12, rng.uniform(0, 2 * np.pi))
        phase = _phase(freq, sr, rng.random())
        cycles = np.floor(phase)
        at = np.nonzero(np.diff(cycles) > 0)[0] + 1  # first sample of each new glottal cycle
        frac = (phase[at] - cycles[at]) / (freq[at] / sr)  # how far past the exact instant
        pulses = np.zeros(length + 1)
        np.add.at(pulses, at - 1, frac)  # split each pulse between two samples (sub-sample timing)
        np.add.at(pulses, at, 1.0 - frac)
        source = pulses[:length] + 0.03 * rng.standard_normal(length)  # breathiness
        formants = np.array(VOWELS[str(rng.choice(list(VOWELS)))]) * scale
        bandwidths = np.array([70.0, 90.0, 130.0, 170.0]) * scale
        gains = (1.0, 0.6, 0.3, 0.15)

        def response(f, formants=formants, bandwidths=bandwidths):
            tilt = 1.0 / (1.0 + (f / 300.0) ** 2) ** 0.5
            return tilt * sum(g * _resonance(f, c, b)
                              for g, c, b in zip(gains, formants, bandwidths))

        sung = _filter(source, _fir(response, sr))
        out[s:s + length] += vel * sung * _envelope(length, sr, 0.04, 0.06)
        previous = f0
    return out


# ----------------------------------------------------------------------------------- scores


def _scale_pitches(root: int, minor: bool, lo: int, hi: int) -> np.ndarray:
    steps = MINOR if minor else MAJOR
    return np.array([m for m in range(lo, hi + 1) if (m - root) % 12 in steps])


def _chord_pcs(params: ClipParams, time_s: float) -> tuple[int, int, int]:
    """Pitch classes of the triad sounding at `time_s` (one chord per 4-beat bar)."""
    bar = int(time_s / (4 * 60.0 / params.bpm) + 1e-9)
    degree = params.progression[bar % len(params.progression)]
    steps = MINOR if params.minor else MAJOR
    return tuple((params.root + steps[(degree + i) % 7]) % 12 for i in (0, 2, 4))


def _rhythm(params: ClipParams, t0: float, t1: float,
            rng: np.random.Generator) -> list[tuple[float, float]]:
    """(onset, duration) pairs on the beat grid covering [t0, t1), durations from the tempo class.

    A few notes of at most one beat become rests, never the first and never two in a row, so every
    instrument sounds throughout its part (any 4 s crop hears it).
    """
    beat = 60.0 / params.bpm
    pos = np.ceil(t0 / (0.5 * beat) - 1e-9) * 0.5
    events: list[tuple[float, float]] = []
    rested = True  # no rest before the first note
    while pos * beat < t1 - 1e-3:
        length = float(rng.choice(NOTE_BEATS[params.tempo]))
        onset = pos * beat
        rest = not rested and length <= 1.0 and rng.random() < 0.1
        if not rest:
            events.append((onset, min(length * beat, t1 - onset)))
        rested = rest
        pos += length
    return events


def _score(kind: str, params: ClipParams, t0: float, t1: float,
           rng: np.random.Generator) -> list[Note]:
    """Notes of one instrument over [t0, t1) (onsets relative to t0)."""
    lo, hi = REGISTER[kind]
    pitches = _scale_pitches(params.root, params.minor, lo, hi)
    chords = kind == "organ" or (kind in ("piano", "guitar") and rng.random() < 0.4)
    bass_line = kind == "bass"
    idx = int(rng.integers(len(pitches) // 4, 3 * len(pitches) // 4 + 1))
    notes: list[Note] = []
    for onset, dur in _rhythm(params, t0, t1, rng):
        pcs = _chord_pcs(params, onset)
        vel = float(rng.uniform(0.75, 1.0))
        if chords or bass_line:
            ladder = _scale_pitches(params.root, params.minor, lo, hi)
            if bass_line:  # root, sometimes the fifth, lowest octave in range
                pc = pcs[0] if rng.random() < 0.7 else pcs[2]
                cands = [m for m in range(lo, hi + 1) if m % 12 == pc]
                chosen: tuple[float, ...] = (float(cands[int(rng.integers(min(2, len(cands))))]),)
            else:  # close-position triad from a random chord tone in the lower half
                base_cands = [m for m in ladder if m % 12 in pcs and m <= (lo + hi) // 2 + 2]
                base = int(base_cands[int(rng.integers(len(base_cands)))])
                voiced = [base]
                for _ in range(2):
                    nxt = next(m for m in range(voiced[-1] + 1, voiced[-1] + 13)
                               if m % 12 in pcs)
                    voiced.append(nxt)
                chosen = tuple(float(m) for m in voiced)
        else:  # melody: a random walk over the scale, drawn to chord tones on beats
            idx += int(rng.choice([-2, -1, 0, 1, 2], p=[0.15, 0.3, 0.1, 0.3, 0.15]))
            idx = int(np.clip(idx, 0, len(pitches) - 1))
            beat_pos = onset * params.bpm / 60.0
            if abs(beat_pos - round(beat_pos)) < 1e-6 and rng.random() < 0.6:
                tones = [i for i, m in enumerate(pitches) if m % 12 in pcs]
                idx = min(tones, key=lambda i: abs(i - idx))
            chosen = (float(pitches[idx]),)
        notes.append((onset - t0, dur, chosen, vel))
    return notes


def _render_kind(kind: str, params: ClipParams, t0: float, t1: float, sr: int,
                 rng: np.random.Generator) -> np.ndarray:
    n = int(round((t1 - t0) * sr))
    if kind == "drums":
        return _drums(params, t0, t1, n, sr, rng)
    notes = _score(kind, params, t0, t1, rng)
    if kind == "piano":
        return _piano(notes, n, sr, rng)
    if kind == "guitar":
        return _guitar(notes, n, sr, rng)
    if kind in ("violin", "cello"):
        return _bowed(notes, n, sr, rng, 1.0 if kind == "violin" else 0.45)
    if kind == "flute":
        return _flute(notes, n, sr, rng)
    if kind == "organ":
        return _organ(notes, n, sr, rng)
    if kind == "synth":
        return _synth_lead(notes, n, sr, rng)
    if kind == "bass":
        return _bass(notes, n, sr, rng)
    return _voice(notes, n, sr, rng, female=kind == "female voice")


def rms_db(x: np.ndarray) -> float:
    """RMS level in dBFS (full scale = 1.0)."""
    return float(20.0 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-20))


def render(params: ClipParams, duration_s: float, sample_rate: int,
           rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The mix (float64) and the sample span of each part.

    Each part's stems are normalised to equal RMS, given gains within `MIX_SPREAD_DB` of each
    other, summed, and the part is scaled to `params.level_db` RMS.
    """
    total = int(round(duration_s * sample_rate))
    bounds = np.linspace(0, total, len(params.parts) + 1).round().astype(int)
    out = np.zeros(total)
    spans = []
    for part, a, b in zip(params.parts, bounds[:-1], bounds[1:]):
        t0, t1 = a / sample_rate, b / sample_rate
        mix = np.zeros(b - a)
        for kind in part:
            stem = _render_kind(kind, params, t0, t1, sample_rate, rng)
            gain_db = -rng.uniform(0.0, MIX_SPREAD_DB)
            mix += stem * 10.0 ** ((gain_db - rms_db(stem)) / 20.0)
        mix *= _envelope(len(mix), sample_rate, 0.005, 0.005)
        out[a:b] = mix * 10.0 ** ((params.level_db - rms_db(mix)) / 20.0)
        spans.append((int(a), int(b)))
    return out, spans


def tag_mask(params: ClipParams, spans: Sequence[tuple[int, int]], num_samples: int,
             hop_length: int, vocabulary: Sequence[str] = SYNTH_TAGS) -> np.ndarray:
    """(num_tags, frames) uint8: where each true tag sounds, on centred STFT frames
    (frame t is centred on sample t * hop_length, 1 + num_samples // hop_length frames)."""
    frames = 1 + num_samples // hop_length
    centres = np.arange(frames) * hop_length
    index = {t: i for i, t in enumerate(vocabulary)}
    mask = np.zeros((len(vocabulary), frames), np.uint8)
    for tag in clip_tags(params):
        if tag in GLOBAL_TAGS:
            mask[index[tag]] = 1
    for part, (a, b) in zip(params.parts, spans):
        inside = (centres >= a) & (centres < b)
        if b == num_samples:
            inside |= centres >= b  # the last frame's centre is past the end when n % hop == 0
        for kind in part:
            for tag in INSTRUMENTS[kind]:
                mask[index[tag], inside] = 1
    return mask


def generate_clip(seed, duration_s: float = 8.0, sample_rate: int = SAMPLE_RATE,
                  segments: bool = False, hop_length: int = 256,
                  instruments: Sequence | None = None, tempo: str | None = None,
                  level: str | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One clip: (float32 mono audio, uint8 multi-hot over `SYNTH_TAGS`, tag mask or None).

    `seed` is anything `numpy.random.default_rng` accepts (e.g. `(config_seed, split, index)`);
    the same seed gives the same clip bit for bit. With `segments=True` the halves use instrument
    sets sharing no instrument tag and the (num_tags, 1 + samples // hop_length) uint8 mask marks
    where each tag sounds. `instruments`, `tempo`, `level` pin those choices (see `sample_params`).
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    rng = np.random.default_rng(seed)
    params = sample_params(rng, segments, instruments, tempo, level)
    audio, spans = render(params, duration_s, sample_rate, rng)
    tags = multi_hot(clip_tags(params))
    mask = tag_mask(params, spans, len(audio), hop_length) if segments else None
    return audio.astype(np.float32), tags, mask
