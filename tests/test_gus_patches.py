"""GUS patch sets as SoundFont 2 banks (`tagger_jax.gus_patches`, `tagger-jax convert-patches`).

Patches are written here byte by byte from the GF1 layout (an independent writer), decoded
samples are checked against NumPy, and converted banks are played by the project's renderer
(`midirenderer`) and measured: pitch with librosa's YIN, envelopes as frame RMS.
"""
from __future__ import annotations

import struct
from pathlib import Path

import librosa
import numpy as np
import pytest

from tagger_jax import cli, errors, gm_score, gus_patches, soundfont

SR = soundfont.SAMPLE_RATE


def _sample_header(data: bytes, *, rate: int, low_hz: float, high_hz: float, root_hz: float,
                   modes: int, loop: tuple[int, int] = (0, 0), rates=(63,) * 6,
                   offsets=(255, 255, 255, 0, 0, 0), scale_factor: int = 1024) -> bytes:
    head = struct.pack("<7sBIIIHIIIhB", b"s", 0, len(data), loop[0], loop[1], rate,
                       int(low_hz * 1000), int(high_hz * 1000), int(root_hz * 1000), 0, 7)
    head += bytes(rates) + bytes(offsets) + bytes(6) + bytes([modes])
    head += struct.pack("<hH", 60, scale_factor)
    return head.ljust(96, b"\0") + data


def _patch(samples: list[bytes], layers: int = 1) -> bytes:
    """A GF1 patch of one instrument whose layer holds `samples` (header + data each)."""
    header = b"GF1PATCH110\0ID#000002\0" + b"test".ljust(60, b"\0")
    header += bytes([1, 14, 0]) + struct.pack("<HHI", len(samples), 127, 0)
    header = header.ljust(129, b"\0")
    instrument = struct.pack("<H16sIB", 0, b"test", 0, layers).ljust(63, b"\0")
    layer = struct.pack("<BBIB", 0, 0, 0, len(samples)).ljust(47, b"\0")
    return header + instrument + layer + b"".join(samples)


def _sine(hz: float, seconds: float, rate: int = 32000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.round(12000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def _looped_sine(hz: float = 440.0, rate: int = 32000, modes: int = 0, **kw) -> bytes:
    """A 16-bit signed sine sample whose loop holds whole periods (seamless)."""
    x = _sine(hz, 0.5, rate)
    period = rate / hz  # 72.72...: 11 periods are 800 samples
    lo, hi = 8000, 8000 + int(round(11 * period))
    flags = gus_patches.MODE_16BIT | gus_patches.MODE_LOOP | gus_patches.MODE_ENVELOPE | modes
    return _sample_header(x.tobytes(), rate=rate, low_hz=20, high_hz=20000, root_hz=hz,
                          modes=flags, loop=(2 * lo, 2 * hi), **kw)


def test_read_patch_decodes_widths_signs_reversal_and_loops(tmp_path):
    ramp = np.arange(-50, 50, dtype=np.int16) * 300
    u8 = (np.arange(40) * 5 + 28).astype(np.uint8)
    s16 = _sample_header(ramp.tobytes(), rate=22050, low_hz=100, high_hz=200, root_hz=150,
                         modes=gus_patches.MODE_16BIT | gus_patches.MODE_LOOP,
                         loop=(2 * 10, 2 * 60))
    p8 = _sample_header(u8.tobytes(), rate=11025, low_hz=200, high_hz=400, root_hz=300,
                        modes=gus_patches.MODE_UNSIGNED | gus_patches.MODE_LOOP
                        | gus_patches.MODE_PINGPONG, loop=(5, 15))
    rev = _sample_header(ramp.tobytes(), rate=8000, low_hz=1, high_hz=2, root_hz=1.5,
                         modes=gus_patches.MODE_16BIT | gus_patches.MODE_REVERSE
                         | gus_patches.MODE_LOOP, loop=(2 * 10, 2 * 30))
    path = tmp_path / "x.pat"
    path.write_bytes(_patch([s16, p8, rev]))
    a, b, c = gus_patches.read_patch(path)
    np.testing.assert_array_equal(a.data, ramp)
    assert a.loop == (10, 60) and a.sample_rate == 22050
    assert (a.low_hz, a.high_hz, a.root_hz) == (100.0, 200.0, 150.0)
    signed = (u8.astype(np.int32) - 128) * 256
    unrolled = np.concatenate([signed[:15], signed[13:5:-1]])  # forward, then back, no ends
    np.testing.assert_array_equal(b.data, unrolled)
    assert b.loop == (5, len(unrolled)) and len(unrolled) == 15 + 8
    np.testing.assert_array_equal(c.data, ramp[::-1])
    assert c.loop == (100 - 30, 100 - 10)  # the same stretch of sound, counted from the end


def test_read_patch_errors_name_the_file(tmp_path):
    good = _patch([_looped_sine()])
    cases = {
        "text.pat": b"hello, not a patch" * 20,
        "short.pat": good[:150],
        "cut.pat": good[:-100],
        "layers.pat": _patch([_looped_sine()], layers=2),
    }
    messages = {"text.pat": "not a GUS patch", "short.pat": "truncated",
                "cut.pat": "cut short", "layers.pat": "2 layers"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(gus_patches.PatchError, match=messages[name]) as e:
            gus_patches.read_patch(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)
        assert errors.exit_status(e.value) == errors.DATA
    with pytest.raises(gus_patches.PatchError, match="cannot read"):
        gus_patches.read_patch(tmp_path / "absent.pat")


def test_read_config_reads_bank_0_and_drum_set_0(tmp_path):
    (tmp_path / "pats" / "Tone").mkdir(parents=True)
    for name in ("Tone/a.pat", "Tone/b.pat", "Tone/kick.pat", "Tone/c.pat", "Tone/it's.pat"):
        (tmp_path / "pats" / name).write_bytes(b"x")
    cfg = tmp_path / "set.cfg"
    (tmp_path / "drums.cfg").write_text("drumset 0\n 36\tTone/kick.pat amp=100\n")
    cfg.write_text("# a comment\ndir /nowhere\n\nsource drums.cfg\n"
                   "bank 0\n 0 Tone/a.pat amp=120 pan=center\n 48 Tone/b  # no suffix\n"
                   " 49 Tone/it's.pat\nbank 1\n 0 Tone/c.pat\nmap x\n")
    patches = gus_patches.read_config(cfg, tmp_path / "pats")
    assert patches.programs == {0: tmp_path / "pats/Tone/a.pat", 48: tmp_path / "pats/Tone/b.pat",
                                49: tmp_path / "pats/Tone/it's.pat"}  # no shell quoting
    assert patches.drums == {36: tmp_path / "pats/Tone/kick.pat"}  # through `source`
    assert patches.ignored == ("bank 1", "map")
    with pytest.raises(gus_patches.PatchError, match="not found under /nowhere .*--patch-dir"):
        gus_patches.read_config(cfg)  # the config's own dir does not hold them
    (tmp_path / "sub").mkdir()  # a relative `dir` is taken from the config's folder
    (tmp_path / "sub" / "rel.cfg").write_text("dir ../pats\nbank 0\n0 Tone/a\n")
    assert gus_patches.read_config(tmp_path / "sub" / "rel.cfg").programs[0].resolve() == \
        (tmp_path / "pats/Tone/a.pat").resolve()
    cfg.write_text("bank 0\n 200 Tone/a.pat\n")
    with pytest.raises(gus_patches.PatchError, match=r"set.cfg, line 2: .*PROGRAM 0-127"):
        gus_patches.read_config(cfg, tmp_path / "pats")
    cfg.write_text("[section]\nkey = value\n")
    with pytest.raises(gus_patches.PatchError, match=r"no patches in bank 0.*\(not a TiMidity"):
        gus_patches.read_config(cfg)
    cfg.write_text("bank 8\n0 Tone/a.pat\n")
    with pytest.raises(gus_patches.PatchError, match=r"no patches in bank 0 or drum set 0 "
                                                     r"\(only bank 8, not converted\)"):
        gus_patches.read_config(cfg)
    cfg.write_text("source set.cfg\n")
    with pytest.raises(gus_patches.PatchError, match="nested more than 10 deep"):
        gus_patches.read_config(cfg)


def test_gm_fallbacks_pick_the_nearest_program_of_the_family():
    filled, missing = gus_patches.gm_fallbacks({0, 48, 53, 40})
    assert filled[1] == 0 and filled[7] == 0
    assert filled[49] == 48 and filled[50] == 48  # 2 from 48, 3 from 53
    assert filled[51] == 53 and filled[52] == 53
    assert filled[41] == 40 and filled[47] == 40
    assert 8 in missing and 127 in missing and 0 not in missing
    assert set(filled) | set(missing) | {0, 48, 53, 40} == set(range(128))


def test_envelope_rates_offsets_and_timidity_choices():
    # Increment 1, range 0: 1 * 8^3 / 8192 = 1/16 offset step per 44.1 kHz sample.
    assert gus_patches.stage_seconds(1, 255) == pytest.approx(255 * 16 / 44100)
    # Range 3 is 8^3 times slower; increment 0 never moves.
    assert gus_patches.stage_seconds(0xC1, 1) == pytest.approx(8192 / 44100)
    assert gus_patches.stage_seconds(0, 10) == np.inf and gus_patches.stage_seconds(0, 0) == 0
    held = gus_patches.PatchSample(np.zeros(4, np.int16), (0, 4), 44100, 1, 2, 1.5,
                                   rates=(1, 1, 1, 2, 1, 1), offsets=(255, 215, 175, 60, 50, 0),
                                   sustain=True, envelope=True, scale_factor=1024)
    gens = gus_patches.envelope_generators(held)
    attack = 255 * 16 / 44100
    decay_db, decay_s = 80 * 0.375, 80 * 16 / 44100  # 255 -> 175 in two stages
    release_per_100_db = (100 / 0.375) * 8 / 44100  # stage 3's rate 2: 1/8 step a sample
    assert gens[gus_patches.GEN_ATTACK] == round(1200 * np.log2(attack))
    assert gens[gus_patches.GEN_SUSTAIN] == round(decay_db * 10)
    assert gens[gus_patches.GEN_DECAY] == round(1200 * np.log2(decay_s * 100 / decay_db))
    assert gens[gus_patches.GEN_RELEASE] == round(1200 * np.log2(release_per_100_db))
    assert gus_patches.sample_mode(held) == 1
    # TiMidity's loader drops the envelope of a drum, of a sample without a loop or without
    # sustain, and of a "weird" one; such a sample plays whole, past its loop after note-off.
    run_out = {gus_patches.GEN_ATTACK: -11959, gus_patches.GEN_RELEASE: round(1200 * np.log2(100))}
    for change, mode in [({}, None), ({"loop": None}, 0), ({"sustain": False}, 3),
                         ({"rates": (63,) * 6}, 3), ({"offsets": (255, 215, 175, 60, 50, 100)}, 3)]:
        sample = gus_patches.PatchSample(**{**held.__dict__, **change})
        if mode is None:
            assert gus_patches.envelope_generators(sample, drum=True) == run_out
            assert gus_patches.sample_mode(sample, drum=True) == 0
        else:
            assert gus_patches.envelope_generators(sample) == run_out, change
            assert gus_patches.sample_mode(sample) == mode, change


def _frames_db(x: np.ndarray, seconds: tuple[float, float]) -> float:
    seg = x[int(seconds[0] * SR):int(seconds[1] * SR)].astype(np.float64)
    return 10 * np.log10(np.mean(seg ** 2) + 1e-30)


def _note(program: int, pitch: int, start=0.1, end=1.6, drums=False) -> gm_score.Part:
    role, name = ("drums", "drums") if drums else ("melody", "x")
    return gm_score.Part(role, name, program, (gm_score.Note(pitch, start, end, 100),))


def _one_shot(hz: float, seconds: float) -> bytes:
    """A drum-kit patch as FreePats writes them: no loop, no sustain, a flat envelope."""
    return _sample_header(_sine(hz, seconds).tobytes(), rate=32000, low_hz=hz * 0.99,
                          high_hz=hz * 1.01, root_hz=hz,
                          modes=gus_patches.MODE_16BIT | gus_patches.MODE_ENVELOPE,
                          rates=(63,) * 6, offsets=(246,) * 6)


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    """A set converted with the command: a held sine (program 48), a sine that fades while held
    and releases at stage 3's rate though stages 3-5 span nothing (program 24, the form of
    FreePats' cello, bass and choir), and a 0.5 s one-shot drum on key 36."""
    root = tmp_path_factory.mktemp("pats")
    (root / "held.pat").write_bytes(_patch([_looped_sine(
        modes=gus_patches.MODE_SUSTAIN, rates=(40, 40, 40, 20, 20, 20),
        offsets=(255, 250, 245, 100, 50, 0))]))
    (root / "fading.pat").write_bytes(_patch([_looped_sine(
        modes=gus_patches.MODE_SUSTAIN, rates=(40, 40, 0x81, 0x88, 0x88, 0x88),
        offsets=(246, 246, 8, 8, 8, 8))]))
    (root / "drum.pat").write_bytes(_patch([_one_shot(220.0, 0.5)]))
    cfg = root / "set.cfg"
    cfg.write_text("drumset 0\n36 drum.pat\nbank 0\n48 held.pat\n24 fading.pat\n")
    out = root / "set.sf2"
    assert cli.main(["convert-patches", str(cfg), str(out)]) == 0
    return out


def test_converted_bank_plays_in_tune_at_every_key(bank):
    for pitch in (57, 69, 81):
        y = soundfont.render_part(_note(48, pitch), bank, 2.0)
        f0 = librosa.yin(y[int(0.3 * SR):int(1.5 * SR)].astype(np.float64), fmin=100, fmax=2000,
                         sr=SR, frame_length=2048)
        expected = 440.0 * 2 ** ((pitch - 69) / 12)
        assert np.median(f0) == pytest.approx(expected, rel=0.01), pitch


def test_converted_envelopes_hold_fade_and_release_as_the_patch_says(bank):
    held = soundfont.render_part(_note(48, 69), bank, 2.0)
    assert abs(_frames_db(held, (1.2, 1.5)) - _frames_db(held, (0.3, 0.6))) < 3
    # Stage 2 at rate 0x81 (increment 1, range 2): 1 x 8 / 8192 step a sample, 16 dB a second.
    fading = soundfont.render_part(_note(24, 69, end=1.1), bank, 2.0)
    assert _frames_db(fading, (0.9, 1.1)) - _frames_db(fading, (0.2, 0.4)) == pytest.approx(
        -0.7 * 44100 / 1024 * 0.375, abs=3)
    # Released at 1.1 s at stage 3's rate 0x88 (8 x 8 / 8192 step a sample: 129 dB a second),
    # though its offsets span nothing: about 6 dB down 0.03-0.07 s later, not cut off.
    drop = _frames_db(fading, (1.13, 1.17)) - _frames_db(fading, (1.0, 1.1))
    assert -14 < drop < -2


def test_a_one_shot_drum_plays_its_whole_sample(bank):
    """FreePats' kit (no loop, no sustain, flat envelope): TiMidity plays each hit whole; the
    first conversion cut every hit to a 4 ms click."""
    kick = soundfont.render_part(_note(0, 36, end=0.2, drums=True), bank, 1.0)
    early, late = _frames_db(kick, (0.12, 0.18)), _frames_db(kick, (0.3, 0.38))
    assert abs(late - early) < 1.5  # the 0.5 s sine at its level, the note-off at 0.2 s passed


def test_missing_programs_play_their_family_and_drums_keep_their_pitch(bank):
    np.testing.assert_array_equal(soundfont.render_part(_note(49, 69), bank, 2.0),
                                  soundfont.render_part(_note(48, 69), bank, 2.0))
    # No program of the piano family: midirenderer plays the bank's first preset (program 24).
    np.testing.assert_array_equal(soundfont.render_part(_note(0, 69), bank, 2.0),
                                  soundfont.render_part(_note(24, 69), bank, 2.0))
    kick = soundfont.render_part(_note(0, 36, end=0.6, drums=True), bank, 1.0)
    f0 = librosa.yin(kick[int(0.15 * SR):int(0.35 * SR)].astype(np.float64), fmin=100,
                     fmax=1000, sr=SR, frame_length=1024)
    assert np.median(f0) == pytest.approx(220.0, rel=0.01)  # recorded pitch, not key 36's 65 Hz


def test_convert_patches_command(tmp_path, capsys, bank):
    root = bank.parent
    out = tmp_path / "set.sf2"  # the same name: the bank name written inside is the stem
    assert cli.main(["convert-patches", str(root / "set.cfg"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"converted 2 programs, 1 drum key and 3 samples from {root / 'set.cfg'}" in printed
    assert "49 by 48" in printed and "25 by 24" in printed
    assert "programs with no program of their family: 0, 1, 2" in printed
    assert out.read_bytes() == bank.read_bytes()  # deterministic
    assert soundfont.resolve_bank(out, for_training=True) == out
    assert cli.main(["convert-patches", str(root / "set.cfg"), str(out)]) == errors.OUTPUT
    assert "exists (give --overwrite" in capsys.readouterr().err
    assert cli.main(["convert-patches", str(root / "set.cfg"), str(out), "--overwrite"]) == 0
    assert cli.main(["convert-patches", str(root / "set.cfg"), str(tmp_path / "x.wav")]) \
        == errors.USAGE
    (tmp_path / "bad.cfg").write_text("bank 0\n0 nothere.pat\n")
    assert cli.main(["convert-patches", str(tmp_path / "bad.cfg"), str(tmp_path / "y.sf2"),
                     "--patch-dir", str(root)]) == errors.DATA
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"patch nothere.pat not found under {root} (names are taken as "
                            "written: no quotes, relative to --patch-dir)")
    assert not (tmp_path / "y.sf2").exists()
    # A bank name of odd length ("freepats" + its terminator: 9 bytes) is padded inside the
    # chunk's size, as SoundFont 2 asks; the renderer refused the unpadded form.
    odd = tmp_path / "freepats.sf2"
    assert cli.main(["convert-patches", str(root / "set.cfg"), str(odd)]) == 0
    assert soundfont.check_renders(odd) == odd
    (root / "nokit.cfg").write_text("bank 0\n48 held.pat\n")
    assert cli.main(["convert-patches", str(root / "nokit.cfg"), str(tmp_path / "k.sf2")]) == 0
    assert "has no drum set 0, so the bank has no drum kit" in capsys.readouterr().err
    nested = tmp_path / "new" / "folder" / "n.sf2"  # its folders are made, as can be
    assert cli.main(["convert-patches", str(root / "set.cfg"), str(nested)]) == 0
    assert nested.read_bytes()[:4] == b"RIFF"


def test_only_the_samples_some_key_plays_are_stored(tmp_path):
    """A patch of two samples stores both when each plays some key, and only the selected one
    as a drum, which sounds on one key (the first converter stored every sample of a patch)."""
    two = tmp_path / "two.pat"
    two.write_bytes(_patch([_one_shot(220.0, 0.5), _one_shot(440.0, 0.5)]))
    pitched = gus_patches.convert(gus_patches.PatchSet(programs={0: two}, drums={}))
    kit = gus_patches.convert(gus_patches.PatchSet(programs={0: two}, drums={36: two, 69: two}))
    assert pitched.num_samples == 2
    assert kit.num_samples == 4  # program 0's two; key 36 plays sample 0 (the nearest root),
    # key 69 (440 Hz) sample 1
    one = gus_patches.convert(gus_patches.PatchSet(programs={}, drums={36: two}))
    assert one.num_samples == 1
    assert len(one.sf2) < len(pitched.sf2) - 2 * 16000  # a 0.5 s 16-bit sample at 32 kHz less
