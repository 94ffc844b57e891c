"""GUS patch sets (the `.pat` files TiMidity++ and WildMIDI play) written as SoundFont 2 banks.

The renderer (`tagger_jax.soundfont`, `midirenderer`) reads .sf2 only, while one free General MIDI
set of recorded instruments, FreePats (Debian's `freepats`: a TiMidity config naming 128 Gravis
UltraSound patches: 72 programs and 56 drum keys), exists only as patches. `convert` turns such a set into a .sf2 bank that
every bank option of the project accepts:

    apt-get download freepats && dpkg -x freepats_*.deb freepats
    tagger-jax convert-patches freepats/etc/timidity/freepats.cfg freepats.sf2 \\
        --patch-dir freepats/usr/share/midi/freepats

What is kept, and how (the GF1 patch layout and the choices of TiMidity's instrument loader):

* Sample data: 8- or 16-bit, signed or unsigned, as signed 16-bit; a reversed sample is turned
  round; a ping-pong (bidirectional) loop, which SoundFont 2 lacks, is unrolled into a forward
  loop (the loop played forward, then backward without its end points).
* Key ranges: every MIDI key plays the sample TiMidity would pick: the first whose low / high
  frequency holds the key's frequency, else the one whose root frequency is nearest. Runs of
  keys with the same sample become one zone; a sample no key plays (a drum patch's others) is
  not stored. The root frequency (milli-Hz) becomes the
  sample's original key and pitch correction (cents). A scale factor other than 1024 becomes
  scale tuning (factor / 1024 x 100 cents per key).
* Which samples keep their loop and envelope, as TiMidity decides by default: a drum set's
  patches lose both and play once, whole, at their recorded pitch on their own key; a melodic
  sample without a loop loses its envelope (it plays its recording through), and so does one
  without the sustain flag or with a "weird" envelope (all six rates at 63, or a last offset of
  100 or more). A sample without an envelope plays at full level and, after its key is
  released, to the end of its data (the part after its loop included: SoundFont sample mode
  3), as TiMidity lets such a voice run out.
* Volume envelope (looped, sustained samples): six (rate, offset) stages on the card's
  logarithmic volume (approximated here as 0.375 dB per offset step, 256 steps over 96 dB). A
  rate byte holds a 6-bit increment and a 2-bit range, each range step 8 times slower; in offset
  steps per 44.1 kHz sample it is increment x 8^(3 - range) / 8192 (TiMidity's conversion of
  the rates). Stage 0 is the attack, stages 1-2 decay to the sustain level (held while the key
  is down), stage 3 starts the release. SoundFont decays and releases are linear in dB as the
  card's are: the decay becomes its time per 100 dB and a sustain attenuation (centibels), the
  release the time per 100 dB at stage 3's rate (from wherever the note is when released, as on
  the card, whatever offsets stages 3-5 aim at).
* Left out: tremolo, vibrato, panning (the project folds to mono), the config's per-patch
  options (amp=, pan=, note=, keep=, strip=: the renderer levels each stem anyway), and patch
  banks other than bank 0 and drum set 0 (General MIDI's melodic bank and standard kit).

Config files: `dir` (a folder patch names are looked up in; relative to the config's folder,
not to the working directory), `bank N`, `drumset N`, `source FILE` (another config read in
place, relative to this one's folder) and patch lines `NUMBER FILE [options]`; `#` starts a
comment. Other directives are reported as not read.

FreePats played this way: its pianos, harps, guitars, harpsichord, violin and sitar are looped
and sustained, so they hold their level while a key is down (as TiMidity plays them), where
`merlin`'s decay; its cello, bass and choir fade while held.

General MIDI programs the set lacks (FreePats has 72 of 128) are played by the nearest program
of the same GM family of eight (e.g. String Ensemble 2 by String Ensemble 1); a family with no
program at all is left to the synthesizer, and `midirenderer` plays the bank's first preset for
it, so a score using it would be labelled with an instrument the bank does not play. `convert` says
which programs it filled and which stay missing (none for FreePats).

Errors: `PatchError` (one line naming the file and the problem) for a config line or patch that
cannot be read.
"""
from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from tagger_jax import errors

MAGICS = (b"GF1PATCH110\0ID#000002\0", b"GF1PATCH100\0ID#000002\0")
HEADER_BYTES, INSTRUMENT_BYTES, LAYER_BYTES, SAMPLE_BYTES = 129, 63, 47, 96
MODE_16BIT, MODE_UNSIGNED, MODE_LOOP, MODE_PINGPONG, MODE_REVERSE, MODE_SUSTAIN, \
    MODE_ENVELOPE = (1 << i for i in range(7))
DB_PER_OFFSET = 96.0 / 256.0  # GUS log volume: 96 dB over the 8-bit envelope offset
GUS_RATE_HZ = 44100.0  # envelope rates are per sample at this rate (TiMidity's conversion)
MIN_TIME_S = 0.001  # SoundFont times are clamped to this (-12000 timecents is "instant")
MAX_TIME_S = 100.0  # and to this: a release this long lets a sample run to its end
MAX_ATTENUATION_CB = 1440  # SoundFont's largest sustain attenuation (144 dB)
GM_FAMILY = 8  # General MIDI groups its 128 programs in families of eight
SF2_GUARD = 46  # zero sample points after each sample (SoundFont 2.01, 6.1)
DRUM_BANK = 128  # SoundFont bank of percussion presets

# SoundFont 2 generator numbers (SoundFont 2.01 specification, 8.1.2).
GEN_ATTACK, GEN_DECAY, GEN_SUSTAIN, GEN_RELEASE = 34, 36, 37, 38
GEN_INSTRUMENT, GEN_KEY_RANGE, GEN_SAMPLE_ID, GEN_SAMPLE_MODES = 41, 43, 53, 54
GEN_SCALE_TUNING = 56


class PatchError(errors.ToolError, ValueError):
    """A patch file or patch-set config that cannot be read; the message names the file."""

    exit_status = errors.DATA


@dataclasses.dataclass(frozen=True)
class PatchSample:
    """One sample of a GUS patch, as the card plays it.

    data: int16 (n,); loop: (start, end) in samples (end exclusive) or None; frequencies in Hz;
    rates / offsets: the six envelope stages' raw bytes; scale_factor: 1024 = 100 cents a key,
    0 = fixed pitch.
    """

    data: np.ndarray
    loop: tuple[int, int] | None
    sample_rate: int
    low_hz: float
    high_hz: float
    root_hz: float
    rates: tuple[int, ...]
    offsets: tuple[int, ...]
    sustain: bool
    envelope: bool
    scale_factor: int


@dataclasses.dataclass(frozen=True)
class PatchSet:
    """A TiMidity config's General MIDI part: program (0-127) -> patch file, and the standard
    kit's key -> patch file (drum set 0)."""

    programs: dict[int, Path]
    drums: dict[int, Path]
    ignored: tuple[str, ...] = ()  # banks / drum sets other than 0, and directives not read


def read_patch(path: str | Path) -> list[PatchSample]:
    """The samples of a GUS patch file (.pat). Raises PatchError for anything else, a truncated
    file, or a patch of several instruments or layers (which TiMidity refuses too)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PatchError(f"{path}: cannot read the patch ({e.strerror or e})") from None
    if raw[:22] not in MAGICS:
        raise PatchError(f"{path}: not a GUS patch (no GF1PATCH header)")
    if len(raw) < HEADER_BYTES + INSTRUMENT_BYTES + LAYER_BYTES:
        raise PatchError(f"{path}: truncated GUS patch header")
    if raw[82] > 1:
        raise PatchError(f"{path}: a patch of {raw[82]} instruments (one is supported)")
    if raw[HEADER_BYTES + 22] > 1:
        raise PatchError(f"{path}: an instrument of {raw[HEADER_BYTES + 22]} layers (one is "
                         "supported)")
    count = raw[HEADER_BYTES + INSTRUMENT_BYTES + 6]
    pos = HEADER_BYTES + INSTRUMENT_BYTES + LAYER_BYTES
    samples = []
    for i in range(count):
        head = raw[pos:pos + SAMPLE_BYTES]
        if len(head) < SAMPLE_BYTES:
            raise PatchError(f"{path}: truncated at sample {i + 1} of {count}")
        (length, loop_start, loop_end, rate, low, high, root) = struct.unpack_from(
            "<IIIHIII", head, 8)
        rates, offsets = tuple(head[37:43]), tuple(head[43:49])
        modes = head[55]
        scale_factor = struct.unpack_from("<H", head, 58)[0]
        pos += SAMPLE_BYTES
        body = raw[pos:pos + length]
        if len(body) < length:
            raise PatchError(f"{path}: sample {i + 1} of {count} is cut short "
                             f"({len(body)} of {length} bytes)")
        pos += length
        if rate == 0:
            raise PatchError(f"{path}: sample {i + 1} has a sample rate of 0")
        width = 2 if modes & MODE_16BIT else 1
        unsigned = bool(modes & MODE_UNSIGNED)
        dtype = {(2, False): "<i2", (2, True): "<u2", (1, False): "i1", (1, True): "u1"}
        x = np.frombuffer(body[:length - length % width], dtype[width, unsigned]).astype(np.int32)
        if unsigned:
            x -= 1 << (8 * width - 1)
        if width == 1:
            x *= 256
        n = len(x)
        lo, hi = min(loop_start // width, n), min(loop_end // width, n)
        if modes & MODE_REVERSE:
            x, lo, hi = x[::-1], n - hi, n - lo
        loop = None
        if modes & MODE_LOOP and hi > lo:
            if modes & MODE_PINGPONG and hi - lo > 2:
                x = np.concatenate([x[:hi], x[hi - 2:lo:-1]])
                hi = len(x)
            loop = (lo, hi)
        samples.append(PatchSample(
            data=x.astype(np.int16), loop=loop, sample_rate=rate, low_hz=low / 1000.0,
            high_hz=high / 1000.0, root_hz=root / 1000.0, rates=rates, offsets=offsets,
            sustain=bool(modes & MODE_SUSTAIN), envelope=bool(modes & MODE_ENVELOPE),
            scale_factor=scale_factor))
    if not samples:
        raise PatchError(f"{path}: a patch without samples")
    return samples


def read_config(path: str | Path, patch_dir: str | Path | None = None) -> PatchSet:
    """Bank 0 and drum set 0 of a TiMidity config (module docstring: the directives read).
    Patch names are found under `patch_dir` if given, else under the configs' `dir` lines, else
    next to the config; a name without extension gets `.pat`. Raises PatchError naming the
    line that cannot be read, or the config if it holds no patch of bank 0 or drum set 0."""
    path = Path(path)
    dirs: list[Path] = []
    programs: dict[int, Path] = {}
    drums: dict[int, Path] = {}
    ignored: list[str] = []
    section: dict[int, Path] | None = None  # where patch lines go: bank 0, drum set 0 or none

    def read(config: Path, depth: int) -> None:
        nonlocal section
        try:
            lines = config.read_text(errors="replace").splitlines()
        except OSError as e:
            raise PatchError(f"{config}: cannot read the config ({e.strerror or e})") from None
        for number, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"{config}, line {number}"
            if words[0] == "dir" and len(words) == 2:
                dirs.append(config.parent / words[1])
            elif words[0] == "source" and len(words) == 2:
                if depth >= 10:
                    raise PatchError(f"{where}: 'source' nested more than 10 deep (a cycle?)")
                read(config.parent / words[1], depth + 1)
            elif words[0] in ("bank", "drumset") and len(words) == 2 and words[1].isdigit():
                if int(words[1]) == 0:
                    section = programs if words[0] == "bank" else drums
                else:
                    section = None
                    ignored.append(f"{words[0]} {words[1]}")
            elif words[0].isdigit():
                if section is None:
                    continue  # a patch of a bank that is not read
                if len(words) < 2 or not 0 <= int(words[0]) <= 127:
                    raise PatchError(f"{where}: expected 'PROGRAM FILE [options]' with PROGRAM "
                                     f"0-127, got {line.strip()!r}")
                section[int(words[0])] = Path(words[1] if Path(words[1]).suffix
                                              else words[1] + ".pat")
            else:
                ignored.append(words[0])

    read(path, 0)
    if not programs and not drums:
        others = [i for i in ignored if i.startswith(("bank ", "drumset "))]
        hint = f"only {', '.join(others)}, not converted" if others else "not a TiMidity config?"
        raise PatchError(f"{path}: no patches in bank 0 or drum set 0 ({hint})")
    roots = [Path(patch_dir)] if patch_dir is not None else (dirs or [path.parent])

    def locate(name: Path) -> Path:
        if name.is_absolute():
            return name
        for root in roots:
            if (root / name).is_file():
                return root / name
        hint = "give --patch-dir" if patch_dir is None else "names are taken as written: no " \
            "quotes, relative to --patch-dir"
        raise PatchError(f"{path}: patch {name} not found under "
                         f"{', '.join(map(str, roots))} ({hint})")

    return PatchSet({k: locate(v) for k, v in programs.items()},
                    {k: locate(v) for k, v in drums.items()},
                    tuple(dict.fromkeys(ignored)))


def gm_fallbacks(present: set[int]) -> tuple[dict[int, int], tuple[int, ...]]:
    """(missing program -> the nearest present program of its GM family (the lower on a tie),
    programs whose family has none)."""
    filled, missing = {}, []
    for p in range(128):
        if p in present:
            continue
        family = [q for q in present if q // GM_FAMILY == p // GM_FAMILY]
        if family:
            filled[p] = min(family, key=lambda q: (abs(q - p), q))
        else:
            missing.append(p)
    return filled, tuple(missing)


def stage_seconds(rate: int, steps: float) -> float:
    """Seconds a GUS envelope stage of rate byte `rate` takes to move `steps` offset steps
    (increment x 8^(3 - range) / 8192 steps per 44.1 kHz sample; an increment of 0 never
    moves: inf unless there is nothing to move)."""
    if steps <= 0:
        return 0.0
    increment, speed_range = rate & 0x3F, rate >> 6
    if increment == 0:
        return math.inf
    return steps / (increment * 8.0 ** (3 - speed_range) / 8192.0) / GUS_RATE_HZ


def _timecents(seconds: float) -> int:
    seconds = min(max(seconds, MIN_TIME_S), MAX_TIME_S)
    return int(round(1200.0 * math.log2(seconds)))


def _per_100_db(seconds: float, db: float) -> float:
    return seconds * 100.0 / db if db > 0 else MIN_TIME_S


def plays_envelope(sample: PatchSample, drum: bool = False) -> bool:
    """Whether TiMidity's loader keeps the sample's envelope (module docstring): never for a
    drum set; for a melodic sample only if it loops, sustains and its envelope is not "weird"
    (all rates 63, or a last offset of 100 or more)."""
    if drum or not sample.envelope or sample.loop is None or not sample.sustain:
        return False
    return not (all(r == 63 for r in sample.rates) or sample.offsets[5] >= 100)


def envelope_generators(sample: PatchSample, drum: bool = False) -> dict[int, int]:
    """SoundFont volume-envelope generators (attack, decay, release in timecents; sustain in
    centibels) for a patch sample as TiMidity plays it (module docstring)."""
    if not plays_envelope(sample, drum):
        return {GEN_ATTACK: _timecents(MIN_TIME_S), GEN_RELEASE: _timecents(math.inf)}
    r, o = sample.rates, sample.offsets
    gens = {GEN_ATTACK: _timecents(stage_seconds(r[0], o[0]))}
    decay_s = stage_seconds(r[1], abs(o[0] - o[1])) + stage_seconds(r[2], abs(o[1] - o[2]))
    decay_db = max(o[0] - o[2], 0) * DB_PER_OFFSET
    gens[GEN_SUSTAIN] = int(round(min(decay_db * 10.0, MAX_ATTENUATION_CB)))
    if decay_db > 0:
        gens[GEN_DECAY] = _timecents(_per_100_db(decay_s, decay_db))
    # The release runs at stage 3's rate from the level the note has when released.
    gens[GEN_RELEASE] = _timecents(stage_seconds(r[3], 100.0 / DB_PER_OFFSET))
    return gens


def sample_mode(sample: PatchSample, drum: bool = False) -> int:
    """SoundFont sampleModes: 0 plays once, 1 loops throughout (the envelope ends the note), 3
    loops while the key is down and then plays the rest of the data (TiMidity's voice without
    an envelope, let out of its loop at note-off)."""
    if drum or sample.loop is None:
        return 0
    return 1 if plays_envelope(sample) else 3


def _midi_key(hz: float) -> float:
    return 69.0 + 12.0 * math.log2(hz / 440.0)


def key_samples(samples: list[PatchSample]) -> list[int]:
    """Index of the sample TiMidity plays for each MIDI key 0-127: the first whose frequency
    range holds the key's, else the one of the nearest root frequency."""
    out = []
    for key in range(128):
        hz = 440.0 * 2.0 ** ((key - 69) / 12.0)
        held = [i for i, s in enumerate(samples) if s.low_hz <= hz <= s.high_hz]
        out.append(held[0] if held else
                   min(range(len(samples)), key=lambda i: abs(samples[i].root_hz - hz)))
    return out


def _chunk(tag: bytes, payload: bytes) -> bytes:
    """A RIFF chunk of `payload` padded to an even size, the pad counted in the size (SoundFont
    2.01, 5.1: every sub-chunk has an even size; the renderer refuses an odd INAM)."""
    payload += b"\0" * (len(payload) % 2)
    return tag + struct.pack("<I", len(payload)) + payload


def _name(text: str) -> bytes:
    return text.encode("ascii", "replace")[:19]


@dataclasses.dataclass
class _Bank:
    """SoundFont 2 records under construction."""

    smpl: list[bytes] = dataclasses.field(default_factory=list)
    shdr: list[bytes] = dataclasses.field(default_factory=list)
    instruments: list[tuple[str, list[list[tuple[int, int]]]]] = dataclasses.field(
        default_factory=list)
    position: int = 0

    def sample(self, name: str, s: PatchSample) -> int:
        start = self.position
        self.smpl.append(s.data.astype("<i2").tobytes() + b"\0\0" * SF2_GUARD)
        self.position += len(s.data) + SF2_GUARD
        exact = _midi_key(s.root_hz) if s.root_hz > 0 else 60.0
        key = min(max(int(round(exact)), 0), 127)
        correction = int(round((key - exact) * 100.0))  # cents that bring it to `key`
        lo, hi = s.loop if s.loop else (0, len(s.data))
        self.shdr.append(struct.pack("<20sIIIIIBbHH", _name(name), start, start + len(s.data),
                                     start + lo, start + hi, s.sample_rate, key,
                                     max(-99, min(99, correction)), 0, 1))
        return len(self.shdr) - 1

    def instrument(self, name: str, samples: list[PatchSample],
                   drum_key: int | None = None) -> int:
        if drum_key is None:
            picks = key_samples(samples)
            runs, start = [], 0
            for key in range(1, 129):
                if key == 128 or picks[key] != picks[start]:
                    runs.append((start, key - 1, picks[start]))
                    start = key
        else:
            runs = [(drum_key, drum_key, key_samples(samples)[drum_key])]
        ids = {i: self.sample(f"{name[:14]}{i}", samples[i])  # only samples some key plays
               for i in sorted({index for _, _, index in runs})}
        zones = []
        for lo, hi, index in runs:
            s = samples[index]
            zone = [(GEN_KEY_RANGE, lo | hi << 8)]
            drum = drum_key is not None
            zone += sorted(envelope_generators(s, drum).items())
            if drum or s.scale_factor == 0:
                zone.append((GEN_SCALE_TUNING, 0))
            elif s.scale_factor != 1024:
                zone.append((GEN_SCALE_TUNING, int(round(s.scale_factor * 100 / 1024))))
            zone += [(GEN_SAMPLE_MODES, sample_mode(s, drum)), (GEN_SAMPLE_ID, ids[index])]
            zones.append(zone)
        self.instruments.append((name, zones))
        return len(self.instruments) - 1


@dataclasses.dataclass(frozen=True)
class Conversion:
    """What `convert` wrote: the .sf2 bytes and its report."""

    sf2: bytes
    programs: tuple[int, ...]  # programs with their own patch
    drum_keys: tuple[int, ...]
    filled: Mapping[int, int]  # missing program -> the program that plays it
    missing: tuple[int, ...]  # programs of a family with no program (left to the synthesizer)
    num_samples: int


def convert(patch_set: PatchSet, name: str = "converted GUS patches",
            on_patch: Callable[[Path], None] | None = None) -> Conversion:
    """A SoundFont 2 bank (bank 0: the set's programs and their GM fallbacks; bank 128 preset 0:
    its drum kit) of `patch_set`; `on_patch(path)` is called after each patch is read (progress).
    Raises PatchError for a patch that cannot be read."""
    bank = _Bank()

    def read(path: Path) -> list[PatchSample]:
        samples = read_patch(path)
        if on_patch is not None:
            on_patch(path)
        return samples

    presets: list[tuple[str, int, int, list[int]]] = []  # name, program, bank, instruments
    for program, path in sorted(patch_set.programs.items()):
        presets.append((path.stem, program, 0, [bank.instrument(path.stem, read(path))]))
    filled, missing = gm_fallbacks(set(patch_set.programs))
    own = {preset[1]: preset for preset in presets}
    for program, source in filled.items():
        presets.append((f"{own[source][0][:14]} ({program})", program, 0, own[source][3]))
    if patch_set.drums:
        kit = [bank.instrument(f"{path.stem[:12]} {key}", read(path), drum_key=key)
               for key, path in sorted(patch_set.drums.items())]
        presets.append(("Standard kit", 0, DRUM_BANK, kit))
    presets.sort(key=lambda p: (p[2], p[1]))

    def gens(zone: list[tuple[int, int]]) -> bytes:
        return b"".join(struct.pack("<HH", op, value & 0xFFFF) for op, value in zone)

    phdr = pbag = pgen = b""
    bags = 0
    for preset_name, program, bank_number, instruments in presets:
        phdr += struct.pack("<20sHHHIII", _name(preset_name), program, bank_number, bags, 0, 0, 0)
        for i in instruments:
            pbag += struct.pack("<HH", bags, 0)  # one generator per preset zone
            pgen += gens([(GEN_INSTRUMENT, i)])
            bags += 1
    phdr += struct.pack("<20sHHHIII", b"EOP", 0, 0, bags, 0, 0, 0)
    pbag += struct.pack("<HH", bags, 0)
    inst = ibag = igen = b""
    bags = generators = 0
    for inst_name, zones in bank.instruments:
        inst += struct.pack("<20sH", _name(inst_name), bags)
        for zone in zones:
            ibag += struct.pack("<HH", generators, 0)
            igen += gens(zone)
            bags += 1
            generators += len(zone)
    inst += struct.pack("<20sH", b"EOI", bags)
    ibag += struct.pack("<HH", generators, 0)
    shdr = b"".join(bank.shdr) + struct.pack("<20sIIIIIBbHH", b"EOS", 0, 0, 0, 0, 0, 0, 0, 0, 0)
    info = b"INFO" + _chunk(b"ifil", struct.pack("<HH", 2, 1)) + _chunk(b"isng", b"EMU8000\0") \
        + _chunk(b"INAM", _name(name) + b"\0")
    pdta = b"pdta" + _chunk(b"phdr", phdr) + _chunk(b"pbag", pbag) + _chunk(b"pmod", b"\0" * 10) \
        + _chunk(b"pgen", pgen + b"\0" * 4) + _chunk(b"inst", inst) + _chunk(b"ibag", ibag) \
        + _chunk(b"imod", b"\0" * 10) + _chunk(b"igen", igen + b"\0" * 4) \
        + _chunk(b"shdr", shdr)
    body = b"sfbk" + _chunk(b"LIST", info) + _chunk(b"LIST", b"sdta" + _chunk(
        b"smpl", b"".join(bank.smpl))) + _chunk(b"LIST", pdta)
    return Conversion(b"RIFF" + struct.pack("<I", len(body)) + body,
                      tuple(sorted(patch_set.programs)), tuple(sorted(patch_set.drums)),
                      filled, missing, len(bank.shdr))
