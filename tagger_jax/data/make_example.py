"""Regenerates the bundled clips (16 kHz mono, 10 s) for demos and smoke tests.

`example.flac`: synthetic music made here with NumPy (the `synthetic_tags` kind of sound).
`example_gm.flac` (`--gm`): a `soundfont_tags` score rendered with the `timgm6mb` bank, which
the soundfont main job never trains on; its score seed (2026, 9, 19) is outside every split
(those use split ids 0-2). True tags: guitar, strings, drums, fast, loud, sitar, bass.

A two-bar chord progression of plucked, harmonic-rich notes over a 120 BPM beat (kick on every
beat, hi-hat on eighths, snare on 2 and 4). Deterministic: the only noise comes from a seeded
NumPy generator. Run `python -m tagger_jax.data.make_example [--gm] [OUT]` or this file directly.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
SECONDS = 10.0
BPM = 120.0
SEED = 20190512


def _pluck(freq: float, seconds: float, sr: int) -> np.ndarray:
    """A decaying note with a few harmonics (brighter attack than release)."""
    t = np.arange(int(seconds * sr)) / sr
    note = np.zeros_like(t)
    for k, amp in enumerate((1.0, 0.5, 0.3, 0.15, 0.08), start=1):
        note += amp * np.exp(-t * (2.5 + 1.5 * k)) * np.sin(2 * np.pi * k * freq * t)
    attack = np.minimum(1.0, t / 0.005)
    return attack * note


def _kick(sr: int) -> np.ndarray:
    t = np.arange(int(0.25 * sr)) / sr
    freq = 45.0 + 90.0 * np.exp(-t * 30.0)  # pitch drop
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.exp(-t * 18.0) * np.sin(phase)


def _noise_hit(rng: np.random.Generator, seconds: float, decay: float, sr: int,
               highpass: bool) -> np.ndarray:
    n = int(seconds * sr)
    noise = rng.standard_normal(n)
    if highpass:  # first difference: a crude high-pass for a hi-hat
        noise = np.diff(noise, prepend=0.0)
    t = np.arange(n) / sr
    return np.exp(-t * decay) * noise


def make_example(sr: int = SAMPLE_RATE, seconds: float = SECONDS) -> np.ndarray:
    """The example clip as float32 in [-1, 1] (peak 0.8)."""
    rng = np.random.default_rng(SEED)
    n = int(seconds * sr)
    out = np.zeros(n + sr)  # room for tails, cut at the end
    beat = 60.0 / BPM

    def add(sound: np.ndarray, at: float, gain: float) -> None:
        i = int(round(at * sr))
        out[i:i + len(sound)] += gain * sound

    # Chords (root-position triads, A minor - F - C - G), one per bar of four beats, arpeggiated.
    chords = ((220.00, 261.63, 329.63), (174.61, 220.00, 261.63),
              (261.63, 329.63, 392.00), (196.00, 246.94, 293.66))
    bar = 4 * beat
    for b in range(int(np.ceil(seconds / bar))):
        chord = chords[b % len(chords)]
        add(_pluck(chord[0] / 2, bar, sr), b * bar, 0.35)  # bass note for the whole bar
        for step in range(8):  # eighth-note arpeggio
            freq = chord[(0, 1, 2, 1)[step % 4]] * (2 if step >= 4 else 1)
            add(_pluck(freq, beat, sr), b * bar + step * beat / 2, 0.25)
    for k in range(int(seconds / beat)):
        add(_kick(sr), k * beat, 0.6)
        if k % 2 == 1:
            add(_noise_hit(rng, 0.2, 25.0, sr, highpass=False), k * beat, 0.15)
    for k in range(int(seconds / (beat / 2))):
        add(_noise_hit(rng, 0.05, 80.0, sr, highpass=True), k * beat / 2, 0.05)
    out = out[:n]
    fade = np.minimum(1.0, np.minimum(np.arange(n), n - 1 - np.arange(n)) / (0.01 * sr))
    out *= fade
    return (0.8 * out / np.max(np.abs(out))).astype(np.float32)


GM_SEED = (2026, 9, 19)  # a score no split of soundfont_tags contains
GM_BANK = "timgm6mb"


def make_gm_example(seconds: float = SECONDS) -> np.ndarray:
    """The sampled-instrument example as float32 (peak-limited to 0.99 if the mix exceeds it)."""
    from tagger_jax import soundfont

    audio = soundfont.render_clip(GM_SEED, GM_BANK, seconds)["audio"]
    peak = float(np.max(np.abs(audio)))
    return (audio * (0.99 / peak) if peak > 0.99 else audio).astype(np.float32)


def main(argv: list[str]) -> int:
    import soundfile as sf

    gm = "--gm" in argv
    argv = [a for a in argv if a != "--gm"]
    name = "example_gm.flac" if gm else "example.flac"
    path = Path(argv[0]) if argv else Path(__file__).with_name(name)
    audio = make_gm_example() if gm else make_example()
    sf.write(str(path), audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
