"""Random but reproducible multi-part scores for General MIDI rendering, with exact tags.

A score is a short piece in a random key and mode, at a tempo from one of three classes, in 1 to 3
sections. Each section has its own instrumentation: a melody, a chord part, a bass line (each
present or not) and a drum pattern (present or not); at a section boundary every role may change
instrument, so instruments start and stop inside a clip. Parts have their own rhythmic density
(note values of a quarter to two beats), style (block, pulsed, arpeggiated or strummed chords;
root-and-fifth or walking bass; hi-hats on sixteenths, eighths or quarters), dynamics (base
velocity, a crescendo or diminuendo over the section, metric accents on beats and downbeats,
random accents) and articulation (legato, normal or staccato note lengths). Everything is a pure
function of the seed (`numpy.random.default_rng(seed)`).

Tempo is only the beat's rate: a part's note values are drawn in beats from a density chosen
without looking at the tempo class, so a slow piece may run in sixteenths and a fast one hold
half notes. What marks the beat is what marks it in music: the drums' kick and snare, chord
changes on bar lines, the walking bass and the metric accents. (Scores before soundfont_tags
2.0.0 tied note values to the tempo class, so note density alone told fast from slow; models
trained on them learnt density and failed on music that breaks the tie.)

Tags (MagnaTagATune names; order: MTAT's top-50 frequency order for those it has, then organ and
bass, which MTAT has outside its top 50):
  - an instrument tag is true exactly when a part played by that instrument has a note in the clip
    (violin and cello also make "strings", as in MTAT's annotations);
  - "fast" / "slow": 140-190 / 54-76 BPM; 80-132 BPM clips get neither;
  - "loud" / "quiet": mix RMS of -12 +- 2 / -36 +- 2 dBFS (applied when mixing,
    `tagger_jax.soundfont.mix`); -24 +- 2 dBFS clips get neither.

Times are in seconds; pitches are MIDI note numbers; velocities 1-127.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

TAGS: tuple[str, ...] = (
    "guitar", "slow", "strings", "drums", "fast", "piano", "violin", "synth", "loud", "quiet",
    "harpsichord", "flute", "sitar", "choir", "harp", "cello", "organ", "bass",
)
GLOBAL_TAGS = ("slow", "fast", "loud", "quiet")  # true for the whole clip


@dataclasses.dataclass(frozen=True)
class Instrument:
    """A General MIDI instrument family: the tags it makes true, the GM programs (0-based) one is
    drawn from, its pitch register (inclusive) and the roles it can play."""

    tags: tuple[str, ...]
    programs: tuple[int, ...]
    register: tuple[int, int]
    roles: tuple[str, ...]


INSTRUMENTS: dict[str, Instrument] = {
    "piano": Instrument(("piano",), (0, 1), (48, 84), ("melody", "chords")),
    "harpsichord": Instrument(("harpsichord",), (6,), (48, 84), ("melody", "chords")),
    "organ": Instrument(("organ",), (16, 19), (48, 79), ("melody", "chords")),
    "guitar": Instrument(("guitar",), (24, 25, 27), (45, 76), ("melody", "chords")),
    "strings": Instrument(("strings",), (48, 49), (48, 79), ("melody", "chords")),
    "violin": Instrument(("violin", "strings"), (40,), (55, 88), ("melody",)),
    "cello": Instrument(("cello", "strings"), (42,), (36, 60), ("melody", "bass")),
    "harp": Instrument(("harp",), (46,), (48, 84), ("melody", "chords")),
    "flute": Instrument(("flute",), (73,), (60, 91), ("melody",)),
    "sitar": Instrument(("sitar",), (104,), (52, 76), ("melody",)),
    "choir": Instrument(("choir",), (52, 53), (48, 72), ("melody", "chords")),
    "synth": Instrument(("synth",), (80, 81), (48, 84), ("melody", "chords")),
    "bass": Instrument(("bass",), (32, 33, 34), (28, 50), ("bass",)),
    "drums": Instrument(("drums",), (), (35, 81), ("drums",)),
}
ROLES = ("melody", "chords", "bass", "drums")
# Programs of the same family that a training render may play instead of the family's own
# (`with_siblings`): viola for violin, contrabass for cello, tremolo strings, jazz and muted
# guitar, piccolo and recorder, and so on. Each has samples of its own in most banks, so they
# widen the timbres one bank gives each tag. Test splits never use them.
SIBLING_PROGRAMS: dict[str, tuple[int, ...]] = {
    "piano": (2, 3), "organ": (17, 18), "guitar": (26, 28), "strings": (44,), "violin": (41,),
    "cello": (43,), "flute": (72, 74), "bass": (35,),
}

# Tempo classes cover 54-190 BPM with two narrow gaps at the class boundaries (77-79, 133-139
# BPM, never drawn), so the common pop tempos are seen in training (version 2.0.0's 60-76 /
# 92-116 / 140-176 left 117-139 BPM unseen, and a new user's 120-130 BPM pieces came out "slow").
TEMPO_BPM = {"slow": (54.0, 76.0), "medium": (80.0, 132.0), "fast": (140.0, 190.0)}
# Note values in beats of a part of each rhythmic density; drawn independently of the tempo class.
DENSITY_BEATS = {"sparse": (1.0, 2.0), "moderate": (0.5, 1.0), "busy": (0.25, 0.5)}
HAT_BEATS = (0.25, 0.5, 1.0)  # hi-hat spacing in beats (sixteenths, eighths, quarters)
METRIC_ACCENT = {"downbeat": 10.0, "beat": 5.0}  # velocity added to notes starting on them
STRUMMED = ("guitar", "harp", "piano", "harpsichord")  # chord parts that may strum
STRUM_S = (0.008, 0.03)  # delay between successive strings of a strum, seconds
LEVEL_DB = {"quiet": (-38.0, -34.0), "medium": (-26.0, -22.0), "loud": (-14.0, -10.0)}
ARTICULATION = {"legato": 0.95, "normal": 0.8, "staccato": 0.45}  # sounding fraction of a note
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
PROGRESSIONS = ((0, 5, 3, 4), (0, 3, 4, 0), (5, 3, 0, 4), (0, 4, 5, 3), (0, 3, 0, 4))
# GM percussion keys: kick, snare, closed hi-hat, low / high tom.
KICK, SNARE, HAT, LOW_TOM, HIGH_TOM = 36, 38, 42, 45, 50
DRUM_HIT_S = 0.1  # note length written for a drum hit (GM kits ignore note-off for most keys)


@dataclasses.dataclass(frozen=True)
class Note:
    pitch: int
    start: float
    end: float  # note-off time (seconds)
    velocity: int


@dataclasses.dataclass(frozen=True)
class Part:
    """One stem: an instrument playing one role in one section."""

    role: str
    instrument: str
    program: int  # GM program (0-based); ignored for drums
    notes: tuple[Note, ...]

    @property
    def is_drums(self) -> bool:
        return self.role == "drums"

    @property
    def tags(self) -> tuple[str, ...]:
        return INSTRUMENTS[self.instrument].tags


@dataclasses.dataclass(frozen=True)
class Score:
    duration_s: float
    tempo_bpm: float
    tempo_class: str  # slow / medium / fast
    level_class: str  # quiet / medium / loud
    level_db: float  # target mix RMS, dBFS
    key_root: int  # pitch class 0-11 (0 = C)
    minor: bool
    sections: tuple[tuple[float, float], ...]  # (start, end) seconds
    parts: tuple[Part, ...]

    @property
    def key(self) -> str:
        return f"{PITCH_NAMES[self.key_root]} {'minor' if self.minor else 'major'}"


def score_tags(score: Score) -> tuple[str, ...]:
    """The clip's true tags, in `TAGS` order."""
    tags = {t for p in score.parts if p.notes for t in p.tags}
    tags |= {c for c in (score.tempo_class, score.level_class) if c in GLOBAL_TAGS}
    return tuple(t for t in TAGS if t in tags)


def multi_hot(tags: Sequence[str], vocabulary: Sequence[str] = TAGS) -> np.ndarray:
    """uint8 (len(vocabulary),) 0/1; a name outside the vocabulary is a ValueError."""
    index = {t: i for i, t in enumerate(vocabulary)}
    out = np.zeros(len(vocabulary), np.uint8)
    for t in tags:
        if t not in index:
            raise ValueError(f"unknown tag {t!r}")
        out[index[t]] = 1
    return out


def _scale(score_root: int, minor: bool, lo: int, hi: int) -> np.ndarray:
    steps = MINOR if minor else MAJOR
    return np.array([p for p in range(lo, hi + 1) if (p - score_root) % 12 in steps])


def _chord(root: int, minor: bool, degree: int) -> tuple[int, int, int]:
    """Pitch classes of the diatonic triad on scale `degree` (0-6)."""
    steps = MINOR if minor else MAJOR
    return tuple((root + steps[(degree + k) % 7]) % 12 for k in (0, 2, 4))  # type: ignore


def _density(rng: np.random.Generator, allowed: Sequence[str] = tuple(DENSITY_BEATS)
             ) -> tuple[float, ...]:
    """A part's note values in beats: those of a density drawn uniformly from `allowed`."""
    return DENSITY_BEATS[str(rng.choice(list(allowed)))]


def _rhythm(rng: np.random.Generator, t0: float, t1: float, beat: float,
            choices: Sequence[float]) -> list[tuple[float, float]]:
    """Consecutive (onset, length) slots from t0 to t1 (seconds), lengths drawn from `choices`
    (beats): every onset is t0 plus whole multiples of the shortest choice when the other
    choices are its multiples, as in `DENSITY_BEATS`."""
    out, t = [], t0
    while t < t1 - 0.25 * beat:
        length = float(rng.choice(choices)) * beat
        out.append((t, min(length, t1 - t)))
        t += length
    return out


def _metric_accent(onset: float, beat: float, bar_start: float = 0.0) -> float:
    """Velocity added to a note starting at `onset`: METRIC_ACCENT["downbeat"] on a bar line
    (4 beats from `bar_start`), METRIC_ACCENT["beat"] on another beat, 0 between beats."""
    position = (onset - bar_start) / beat
    if abs(position - round(position)) > 1e-6:
        return 0.0
    return METRIC_ACCENT["downbeat" if round(position) % 4 == 0 else "beat"]


def _dynamics(rng: np.random.Generator, onsets: Sequence[float], beat: float) -> np.ndarray:
    """Velocities of notes starting at `onsets` (seconds): a base level, a linear crescendo or
    diminuendo, metric accents (`_metric_accent`), random accents."""
    n = len(onsets)
    base = rng.uniform(55, 100)
    ramp = rng.uniform(-20, 20) * np.linspace(-0.5, 0.5, max(n, 1))
    accents = rng.normal(0, 5, max(n, 1))  # drawn for one note at least: the seed's stream
    metric = np.zeros(max(n, 1))
    metric[:n] = [_metric_accent(t, beat) for t in onsets]
    return np.clip(np.round(base + ramp + accents + metric), 25, 127).astype(int)[:n]


def _melody(rng, inst: Instrument, score_key, t0, t1, beat) -> list[Note]:
    root, minor = score_key
    pitches = _scale(root, minor, *inst.register)
    slots = _rhythm(rng, t0, t1, beat, _density(rng))
    keep = float(ARTICULATION[str(rng.choice(list(ARTICULATION)))])
    idx = int(rng.integers(len(pitches) // 4, 3 * len(pitches) // 4 + 1))
    vel = _dynamics(rng, [s for s, _ in slots], beat)
    notes = []
    for (start, length), v in zip(slots, vel):
        idx = int(np.clip(idx + rng.choice((-2, -1, -1, 0, 1, 1, 2)), 0, len(pitches) - 1))
        if rng.random() < 0.1 and notes:  # a rest
            continue
        notes.append(Note(int(pitches[idx]), start, start + keep * length, int(v)))
    return notes


def _voicing(pcs: Sequence[int], lo: int, hi: int) -> list[int]:
    """The chord tones nearest the middle of the register, one per pitch class."""
    mid = (lo + hi) // 2
    out = []
    for pc in pcs:
        candidates = [p for p in range(lo, hi + 1) if p % 12 == pc]
        out.append(min(candidates, key=lambda p: abs(p - mid)))
    return sorted(out)


def _chords(rng, inst: Instrument, name: str, score_key, progression, t0, t1, beat,
            bar_start: float) -> list[Note]:
    """Chords of `progression` (one per bar), held ("block", 2 or 4 beats), repeated ("pulse"),
    one tone at a time ("arpeggio", moderate or busy) or strummed ("strum", for `STRUMMED`
    instruments: the tones start `STRUM_S` apart, low to high or, on off-beats, high to low)."""
    root, minor = score_key
    styles = ("block", "pulse", "arpeggio") + (("strum",) if name in STRUMMED else ())
    style = str(rng.choice(styles))
    keep = float(ARTICULATION[str(rng.choice(list(ARTICULATION)))])
    notes: list[Note] = []
    lengths = {"block": (2.0, 4.0), "pulse": _density(rng),
               "arpeggio": _density(rng, ("moderate", "busy")),
               "strum": _density(rng, ("sparse", "moderate"))}[style]
    slots = _rhythm(rng, t0, t1, beat, lengths)
    vel = _dynamics(rng, [s for s, _ in slots], beat)
    stagger = float(rng.uniform(*STRUM_S))
    for k, ((start, length), v) in enumerate(zip(slots, vel)):
        bar = int((start - bar_start + 1e-9) // (4 * beat))
        pcs = _chord(root, minor, progression[bar % len(progression)])
        voiced = _voicing(pcs, *inst.register)
        chosen = [voiced[k % len(voiced)]] if style == "arpeggio" else voiced
        if style == "strum" and _metric_accent(start, beat, bar_start) == 0.0:
            chosen = chosen[::-1]  # an up-stroke between beats
        for j, p in enumerate(chosen):
            onset = start + (j * stagger if style == "strum" else 0.0)
            notes.append(Note(p, onset, max(onset + 0.01, start + keep * length), int(v)))
    return notes


def _bass(rng, inst: Instrument, score_key, progression, t0, t1, beat,
          bar_start: float) -> list[Note]:
    """A bass line under `progression`: chord roots and fifths at a drawn density ("roots"), or
    a walking line, one note per beat, on the chord's root at each bar line and moving by scale
    steps towards the next bar's root ("walking")."""
    root, minor = score_key
    lo, hi = inst.register
    walking = rng.random() < 0.35
    slots = _rhythm(rng, t0, t1, beat, (1.0,) if walking else _density(rng, ("sparse",
                                                                            "moderate")))
    keep = float(ARTICULATION[str(rng.choice(("legato", "normal")))])
    vel = _dynamics(rng, [s for s, _ in slots], beat)
    scale = _scale(root, minor, lo, hi)

    def bar_root(bar: int) -> int:
        pc = _chord(root, minor, progression[bar % len(progression)])[0]
        return min((p for p in range(lo, hi + 1) if p % 12 == pc), key=lambda p: abs(p - lo - 7))

    notes: list[Note] = []
    for k, ((start, length), v) in enumerate(zip(slots, vel)):
        position = (start - bar_start + 1e-9) / beat
        bar = int(position // 4)
        if walking and int(position) % 4:  # step from the last note towards the next bar's root
            here = int(np.searchsorted(scale, notes[-1].pitch)) if notes else 0
            target = int(np.searchsorted(scale, bar_root(bar + 1)))
            step = int(np.sign(target - here)) or int(rng.choice((-1, 1)))
            pitch = int(scale[int(np.clip(here + step, 0, len(scale) - 1))])
        else:
            pcs = _chord(root, minor, progression[bar % len(progression)])
            pc = pcs[0] if k % 2 == 0 or rng.random() < 0.5 else pcs[2]  # root, or the fifth
            pitch = min((p for p in range(lo, hi + 1) if p % 12 == pc),
                        key=lambda p: abs(p - lo - 7))
        notes.append(Note(pitch, start, start + keep * length, int(v)))
    return notes


def _drums(rng, t0, t1, beat) -> list[Note]:
    """A rock/pop pattern: kick on 1 and 3, snare on 2 and 4, closed hi-hat every `HAT_BEATS`
    (drawn), a tom fill before a section end now and then. No cymbals: they ring for seconds,
    longer than the exact activity window of a hit (`tagger_jax.soundfont.DRUM_SOUND_S`)."""
    hat = HAT
    hat_step = float(rng.choice(HAT_BEATS))
    extra_kick = rng.random() < 0.5
    fill = rng.random() < 0.4
    base = rng.uniform(75, 110)
    hits: list[tuple[float, int, float]] = []
    n_beats = int(np.floor((t1 - t0) / beat + 1e-9))
    for b in range(n_beats):
        t = t0 + b * beat
        if fill and b >= n_beats - 1 and n_beats >= 4:
            hits += [(t, HIGH_TOM, 0.9), (t + 0.5 * beat, LOW_TOM, 1.0)]
            continue
        hits.append((t, KICK if b % 2 == 0 else SNARE, 1.0))
        if extra_kick and b % 4 == 2:
            hits.append((t + 0.5 * beat, KICK, 0.8))
        for h in np.arange(0.0, 1.0, hat_step):
            hits.append((t + h * beat, hat, 0.7 if h else 0.85))
    notes = []
    for t, key, accent in sorted(hits, key=lambda h: (h[0], h[1])):
        if t >= t1 - 0.05:
            continue
        v = int(np.clip(round(base * accent + rng.normal(0, 4)), 25, 127))
        notes.append(Note(key, float(t), float(t) + DRUM_HIT_S, v))
    return notes


def _sections(rng, duration_s: float, beat: float) -> list[tuple[float, float]]:
    n = int(rng.choice((1, 2, 3), p=(0.3, 0.45, 0.25)))
    bar = 4 * beat
    bars = duration_s / bar
    if n > 1 and bars >= n:  # cut on bar lines
        cuts = sorted(rng.choice(np.arange(1, int(bars)), size=min(n - 1, int(bars) - 1),
                                 replace=False) * bar) if int(bars) > 1 else []
    elif n > 1:  # fewer bars than sections (slow tempo): cut on beats
        beats = int(duration_s / beat)
        cuts = sorted(rng.choice(np.arange(1, beats), size=min(n - 1, beats - 1),
                                 replace=False) * beat) if beats > 1 else []
    else:
        cuts = []
    edges = [0.0] + [float(c) for c in cuts] + [duration_s]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b - a > 0.5 * beat]


def _orchestrate(rng, previous: dict[str, str] | None) -> dict[str, str]:
    """Instrument per present role (distinct instruments). A later section keeps each role's
    instrument with probability 0.4, otherwise draws again (or drops / adds the role)."""
    while True:
        out: dict[str, str] = {}
        for role in ROLES:
            if previous is not None and role in previous and rng.random() < 0.4:
                out[role] = previous[role]
                continue
            present = rng.random() < {"melody": 0.65, "chords": 0.6, "bass": 0.5,
                                      "drums": 0.5}[role]
            if not present:
                continue
            pool = sorted(n for n, i in INSTRUMENTS.items() if role in i.roles
                          and n not in out.values())
            out[role] = str(rng.choice(pool))
        if any(r != "drums" for r in out) and len(set(out.values())) == len(out):
            return out


def sample_score(seed, duration_s: float = 10.0, tempo: str | None = None,
                 level: str | None = None) -> Score:
    """A random score of `duration_s` seconds. `seed`: anything `numpy.random.default_rng`
    accepts; `tempo` (slow/medium/fast) and `level` (quiet/medium/loud) pin those classes."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    rng = np.random.default_rng(seed)
    tempo_class = tempo or str(rng.choice(list(TEMPO_BPM)))
    level_class = level or str(rng.choice(list(LEVEL_DB)))
    if tempo_class not in TEMPO_BPM or level_class not in LEVEL_DB:
        raise ValueError(f"tempo must be one of {list(TEMPO_BPM)} and level one of "
                         f"{list(LEVEL_DB)}, got {tempo!r}, {level!r}")
    bpm = float(rng.uniform(*TEMPO_BPM[tempo_class]))
    level_db = float(rng.uniform(*LEVEL_DB[level_class]))
    beat = 60.0 / bpm
    key = (int(rng.integers(12)), bool(rng.random() < 0.5))
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    sections = _sections(rng, duration_s, beat)
    parts: list[Part] = []
    roles = None
    for t0, t1 in sections:
        roles = _orchestrate(rng, roles)
        for role, name in roles.items():
            inst = INSTRUMENTS[name]
            program = int(rng.choice(inst.programs)) if inst.programs else 0
            if role == "melody":
                notes = _melody(rng, inst, key, t0, t1, beat)
            elif role == "chords":
                notes = _chords(rng, inst, name, key, progression, t0, t1, beat, 0.0)
            elif role == "bass":
                notes = _bass(rng, inst, key, progression, t0, t1, beat, 0.0)
            else:
                notes = _drums(rng, t0, t1, beat)
            notes = [n for n in notes if n.end > n.start and n.start < duration_s]
            if notes:
                parts.append(Part(role, name, program, tuple(notes)))
    return Score(duration_s, bpm, tempo_class, level_class, level_db, key[0], key[1],
                 tuple(sections), tuple(parts))


def with_siblings(score: Score, seed, p: float) -> Score:
    """`score` with each part of an instrument in `SIBLING_PROGRAMS` played, with probability
    `p`, by one of its sibling programs (uniformly) instead of its own (a training-time timbre
    augmentation; notes, tags and everything else unchanged). The draws come from a generator
    of their own seeded with `seed` (the score's seed) and a constant, so they move none of the
    score's. `p` = 0 returns `score` itself; `p` outside [0, 1] is a ValueError."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"sibling probability must be in [0, 1], got {p}")
    if p == 0.0:
        return score
    entropy = list(np.atleast_1d(np.asarray(seed, dtype=np.int64)).tolist())
    rng = np.random.default_rng(entropy + [0x51B])  # a stream of its own for each score
    parts = []
    for part in score.parts:
        extra = SIBLING_PROGRAMS.get(part.instrument, ())
        # A swap is drawn for every part and a choice for every part with siblings, swapped or
        # not: which draws a part takes never depends on another part's outcome.
        swap = rng.random() < p
        choice = int(rng.choice(extra)) if extra else 0
        parts.append(dataclasses.replace(part, program=choice) if extra and swap else part)
    return dataclasses.replace(score, parts=tuple(parts))
