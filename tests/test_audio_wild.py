"""Audio as people have it (issue 10 items 8-11): directory scans by what decodes, decode errors
that say what to do, degradation warnings as JSON fields, and file names that are not UTF-8.

Fixtures are made with soundfile/NumPy; the formats only ffmpeg decodes (.m4a, .opus in WebM,
.aac, .wma, .mp4, .mkv) are made with ffmpeg and those tests skip, saying so, without it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import librosa
import numpy as np
import pytest
import soundfile as sf

from tagger_jax import audio, checkpoint, cli, inference, tagging
from model_helpers import save_tiny_model

SR = 16000
TAGS = ["a", "b", "c"]
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(
    FFMPEG is None, reason="SKIPPED LOUDLY: ffmpeg is not installed, so the ffmpeg-only formats "
                           "cannot be made or decoded here (.ci/run installs it)")
FFMPEG_ONLY = ("opus", "webm", "aac", "wma", "mp4", "mkv", "m4a")


def _tone(seconds=3.0, sr=SR, f=440.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(len(t))).astype(
        np.float32)


def _damaged_mp3(path, seed=0):
    """A 10 s mp3 with 400 random bytes a third of the way in: mpg123 skips a few frames."""
    sf.write(path, _tone(10.0, 44100), 44100, format="MP3")
    data = bytearray(path.read_bytes())
    n = len(data) // 3
    data[n:n + 400] = np.random.default_rng(seed).integers(0, 256, 400, np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "model", TAGS)


@pytest.fixture(scope="module")
def wild(tmp_path_factory):
    """Files that decode but are degraded, each with the warning code it must get."""
    d = tmp_path_factory.mktemp("wild")
    y = _tone()
    sf.write(d / "clean.wav", y, SR)
    sf.write(d / "phase.wav", np.stack([y, -y], 1), SR)  # channels cancel when averaged
    sf.write(d / "phone.wav", _tone(3.0, 8000, 300.0), 8000)  # recorded at 8 kHz
    _damaged_mp3(d / "damaged.mp3")
    sf.write(d / "full.wav", y, SR, subtype="PCM_16")
    data = (d / "full.wav").read_bytes()
    (d / "truncated.wav").write_bytes(data[:len(data) // 2])  # header says 3 s, holds 1.5 s
    (d / "full.wav").unlink()
    rng = np.random.default_rng(1)
    np.save(d / "linear.npy", np.abs(rng.standard_normal((96, 300))).astype(np.float32) * 0.01)
    np.save(d / "wide.npy", rng.uniform(-250, 40, (96, 300)).astype(np.float32))
    np.save(d / "logmel.npy", audio.log_mel(y))
    # librosa's power mel without power_to_db, scaled into 80 "dB" (a trial's: no warning), and
    # its magnitude: all values >= 0, half of them near the smallest
    power = librosa.feature.melspectrogram(y=y + 0.01 * rng.standard_normal(len(y)), sr=SR,
                                           n_fft=512, hop_length=256, n_mels=96)
    np.save(d / "power_mel.npy", (39.4 * power / power.max()).astype(np.float32))
    np.save(d / "magnitude_mel.npy", (1.11 * np.sqrt(power / power.max())).astype(np.float32))
    noise = librosa.feature.melspectrogram(y=0.3 * rng.standard_normal(len(y)), sr=SR,
                                           n_fft=512, hop_length=256, n_mels=96)
    np.save(d / "noise_power_mel.npy", noise.astype(np.float32))  # its median 8% up the range
    np.save(d / "int16_scale.npy", audio.log_mel(32767.0 * y))  # samples as 16-bit values
    sf.write(d / "silent.flac", np.zeros((SR, 2)), SR)  # digital silence
    sf.write(d / "clipped.wav", np.clip(4 * y / np.abs(y).max(), -1, 1), SR, subtype="PCM_16")
    sf.write(d / "hot.wav", 40.0 * y, SR, subtype="FLOAT")  # never normalised: peak > 1
    sf.write(d / "dc.wav", 0.5 * y / np.abs(y).max() + 0.2, SR)  # a trial's DC offset of 0.2
    return d, {"clean.wav": set(), "logmel.npy": set(),
               "silent.flac": {"silence"}, "clipped.wav": {"clipping"},
               "hot.wav": {"over_full_scale"}, "dc.wav": {"dc_offset"},
               "phase.wav": {"stereo_cancellation"}, "phone.wav": {"low_sample_rate"},
               "damaged.mp3": {"damaged_data", "duration_mismatch"},  # mpg123 notes too
               "truncated.wav": {"duration_mismatch"},
               "linear.npy": {"not_log_mel"}, "wide.npy": {"not_log_mel"},
               "power_mel.npy": {"not_log_mel"}, "magnitude_mel.npy": {"not_log_mel"},
               "noise_power_mel.npy": {"not_log_mel"}, "int16_scale.npy": {"not_log_mel"}}


# ------------------------------------------------------------------- item 10: warnings as data

def test_degradation_warnings_are_json_fields(model_dir, wild, tmp_path, capsys):
    d, expected = wild
    out = tmp_path / "tags.json"
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet",
                   str(d)])
    assert rc == 0
    results = {r["file"].rsplit("/", 1)[-1]: r for r in json.loads(out.read_text())}
    assert set(results) == set(expected)
    for name, codes in expected.items():
        got = results[name].get("audio_warnings", {})
        assert set(got) == codes, (name, got)
        for code, message in got.items():
            assert message.startswith(str(d / name)) and "\n" not in message
    err = capsys.readouterr().err
    assert err.count("warning: ") >= len([c for c in expected.values() if c])


def test_explain_and_embed_carry_the_same_warnings(model_dir, wild, tmp_path, capsys):
    """Every consumer of the inference path records an input's degradation, not only `tag`."""
    from tagger_jax import embedding

    d, expected = wild
    pick = tmp_path / "pick"
    pick.mkdir()
    names = ["clean.wav", "phase.wav", "linear.npy"]
    for name in names:
        (pick / name).write_bytes((d / name).read_bytes())
    out = tmp_path / "explain"
    assert cli.main(["explain", "--checkpoint", str(model_dir), "--out", str(out),
                     "--no-progress", "--no-plot", "--no-report", "--methods", "attention",
                     str(pick)]) == 0
    summaries = [json.loads(p.read_text()) for p in out.glob("*.json")
                 if p.name not in ("failures.json",) and not p.name.startswith("run")]
    got = {s["input"].rsplit("/", 1)[-1]: set(s.get("audio_warnings", {})) for s in summaries
           if "input" in s}
    assert got == {name: expected[name] for name in names}
    said = capsys.readouterr().err
    assert said.count("warning: ") >= 2 and "phase.wav" in said and "linear.npy" in said
    emb = tmp_path / "embed"
    assert cli.main(["embed", "--checkpoint", str(model_dir), "--out", str(emb),
                     "--no-progress", str(pick)]) == 0
    got = {}
    for npz in emb.glob("*.npz"):
        z = embedding.load_embeddings(npz)
        if "name" in z:
            got[str(z["name"]).rsplit("/", 1)[-1]] = set(json.loads(str(z["audio_warnings"])))
    assert got == {name: expected[name] for name in names}
    said = capsys.readouterr().err
    assert said.count("warning: ") >= 2 and "phase.wav" in said and "linear.npy" in said
    # The merged file and the in-memory API carry them too (a Python trial found both without).
    merged = embedding.load_embeddings(emb / embedding.MERGED)
    got = {str(n).rsplit("/", 1)[-1]: set(json.loads(str(w)))
           for n, w in zip(merged["names"], merged["audio_warnings"])}
    assert got == {name: expected[name] for name in names}
    assert [json.loads(str(w)) for w in merged["warnings"]] == [[]] * len(names)
    engine = inference.Engine(checkpoint.load_model(model_dir))
    e = embedding.embed(engine, engine.file_inputs([pick]))
    assert {n.rsplit("/", 1)[-1]: set(w) for n, w in zip(e.names, e.audio_warnings)} == {
        name: expected[name] for name in names}
    assert e.tag_names == list(engine.tags) and e.warnings == [[]] * len(names)


def test_warning_values(wild, tmp_path):
    d, _ = wild
    _, notes = audio.read_input(d / "phase.wav", audio.FeatureParams())
    assert "below" in notes["stereo_cancellation"]
    tone = _tone()  # left = -right exactly: said so, not "203.8 dB below" (a trial)
    sf.write(tmp_path / "cancel.wav", np.stack([tone, -tone], 1), SR, subtype="FLOAT")
    _, notes = audio.read_input(tmp_path / "cancel.wav", audio.FeatureParams())
    assert "the mix is silent: they cancel completely" in notes["stereo_cancellation"], notes
    _, notes = audio.read_input(d / "phone.wav", audio.FeatureParams())
    assert "8000 Hz" in notes["low_sample_rate"] and "4000 Hz" in notes["low_sample_rate"]
    _, notes = audio.read_input(d / "truncated.wav", audio.FeatureParams())
    assert "3.00 s" in notes["duration_mismatch"] and "1.50 s" in notes["duration_mismatch"]
    _, notes = audio.read_input(d / "silent.flac", audio.FeatureParams())
    assert "silent (every sample 0)" in notes["silence"]
    _, notes = audio.read_input(d / "clipped.wav", audio.FeatureParams())
    share = np.mean(np.abs(np.clip(4 * _tone() / np.abs(_tone()).max(), -1, 1)) >= 0.999)
    assert f"{100 * share:.2g}% of samples at full scale" in notes["clipping"], notes
    _, notes = audio.read_input(d / "hot.wav", audio.FeatureParams())
    peak = 40.0 * np.abs(_tone()).max()
    assert f"reach {peak:.3g} ({20 * np.log10(peak):+.1f} dBFS)" in notes["over_full_scale"]
    assert "(a float file not normalised?)" in notes["over_full_scale"]
    # a loud mp3 decodes to 1.10 from a master at 0.99 (a trial): not a float file's mistake,
    # whether its name says mp3 or not (a verifier's file without a suffix)
    hot = audio.Decoded(np.array([[0.5, 1.1, -0.2]], np.float32), SR, "ffmpeg")
    assert "(a lossy file's decoder overshoots full scale on a loud master)" in (
        audio.decode_warnings("master.M4A", hot, SR)["over_full_scale"])
    square = 0.99 * np.sign(np.sin(2 * np.pi * 220 * np.arange(2 * SR) / SR))
    sf.write(tmp_path / "loud_master", square, SR, format="MP3")
    _, notes = audio.read_input(tmp_path / "loud_master", audio.FeatureParams())
    assert "(a lossy file's decoder overshoots full scale" in notes["over_full_scale"]


@needs_ffmpeg
def test_an_aac_masters_overshoot_is_kept_and_reported_not_clipped(tmp_path):
    """ffmpeg decoded to 16-bit PCM (as audioread does), which clipped a loud AAC master's
    overshoot: 1.5% of a square wave's samples sat at full scale, reported as `clipping` of the
    file. Decoded to float, the peaks beyond full scale are kept and named as the decoder's."""
    square = 0.99 * np.sign(np.sin(2 * np.pi * 220 * np.arange(3 * SR) / SR))
    sf.write(tmp_path / "src.wav", square, SR, subtype="FLOAT")
    subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-i", str(tmp_path / "src.wav"),
                    str(tmp_path / "master.m4a")], check=True)
    wave = audio.load_audio(tmp_path / "master.m4a", SR)
    assert np.abs(wave).max() > 1.5  # AAC's Gibbs overshoot of a square wave: about 2.2
    _, notes = audio.read_input(tmp_path / "master.m4a", audio.FeatureParams())
    assert set(notes) == {"over_full_scale"}, notes
    assert "(a lossy file's decoder overshoots full scale" in notes["over_full_scale"]


# ------------------------------------------------------------------- item 8: directory scans

def test_scan_takes_every_decodable_kind_and_reports_the_rest(tmp_path):
    for ext in FFMPEG_ONLY + ("MP3", "Flac", "wv", "caf", "aifc", "mka", "mov", "3gp"):
        (tmp_path / f"song.{ext}").write_bytes(b"x" * 10)
    with sf.SoundFile(tmp_path / "no_suffix", "w", SR, 1, format="WAV") as f:
        f.write(_tone(0.5))
    (tmp_path / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "._song.mp3").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    files, skipped = audio.scan_inputs([tmp_path])
    names = {p.name for p in files}
    assert names == {f"song.{e}" for e in FFMPEG_ONLY + ("MP3", "Flac", "wv", "caf", "aifc",
                                                          "mka", "mov", "3gp")} | {"no_suffix"}
    reasons = {p.name: why for p, why in skipped}
    assert set(reasons) == {"cover.jpg", "notes.txt", "._song.mp3", "dangling.wav"}
    assert "not audio" in reasons["cover.jpg"] and "resource fork" in reasons["._song.mp3"]
    assert "broken link" in reasons["dangling.wav"]
    assert tagging.collect_inputs([tmp_path]) == files
    # Named directly, the same link says the same, not "file not found" (a trial).
    with pytest.raises(audio.InputError, match=r"dangling\.wav: broken link \(its target does "
                                               r"not exist\)$"):
        audio.load_audio(tmp_path / "dangling.wav", SR)
    with pytest.raises(audio.InputError, match=r"\*\.wav: file not found \(wildcards are "
                                               "expanded by the shell"):
        audio.load_audio(tmp_path / "*.wav", SR)


def test_scan_names_other_runs_lock_and_temporary_files(tmp_path):
    """A folder holding another run's output has its lock, the holder note and perhaps an
    interrupted atomic write's temporary file beside it: they are skipped as what they are, not
    as "not audio" files the user might wonder about (from a new user's `explain .`)."""
    from tagger_jax import outputs

    sf.write(tmp_path / "a.wav", _tone(0.5), SR)
    with outputs.exclusive(tmp_path / "tags.json", "output file"):
        (tmp_path / ".tags.json.x1y2.tmp").write_text("{")
        (tmp_path / ".notes.lock.txt").write_text("a user's own dot file")
        (tmp_path / "train.lock").write_text("")  # a training workdir's (not hidden)
        (tmp_path / "train.lock.holder").write_text("{}")
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "linkdir").symlink_to(tmp_path / "elsewhere")  # not followed: said (a trial)
        files, skipped = audio.scan_inputs([tmp_path])
    assert [p.name for p in files] == ["a.wav"]
    reasons = {p.name: why for p, why in skipped}
    assert reasons == {
        ".tags.json.lock": "lock file (of a tagger-jax run, not audio)",
        ".tags.json.lock.holder": "lock holder note (of a tagger-jax run, not audio)",
        ".tags.json.x1y2.tmp": "temporary file (of a tagger-jax run, not audio)",
        "train.lock": "lock file (of a tagger-jax run, not audio)",
        "train.lock.holder": "lock holder note (of a tagger-jax run, not audio)",
        "linkdir": "link to a directory (not followed; name its target)",
        ".notes.lock.txt": reasons[".notes.lock.txt"]}
    assert reasons[".notes.lock.txt"].startswith("not audio (suffix .txt")


def test_tag_reports_skipped_files(model_dir, tmp_path, capsys):
    (tmp_path / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--quiet", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no input files found" in err
    assert "cover.jpg" in err and "not audio" in err


@needs_ffmpeg
def test_ffmpeg_only_formats_are_scanned_and_tagged(model_dir, tmp_path):
    sf.write(tmp_path / "src.wav", np.stack([_tone(), _tone(f=330)], 1), SR)
    for ext in FFMPEG_ONLY:
        subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-i", str(tmp_path / "src.wav"),
                        str(tmp_path / f"song.{ext}")], check=True)
    (tmp_path / "src.wav").unlink()
    out = tmp_path / "tags.json"
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet",
                   str(tmp_path)])
    results = json.loads(out.read_text())
    assert rc == 0 and len(results) == len(FFMPEG_ONLY)
    for r in results:
        assert "error" not in r and abs(r["duration_s"] - 3.0) < 0.1, r["file"]
        assert "audio_warnings" not in r, r  # clean files: no false alarms
    wave = audio.load_audio(tmp_path / "song.m4a", SR)
    ref = _tone()
    assert abs(len(wave) - len(ref)) < 0.05 * SR


# ------------------------------------------------------------------- item 9: decode errors

def test_missing_decoder_and_damaged_file_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "ffmpeg_path", lambda: None)  # a machine without ffmpeg
    m4a = tmp_path / "good.m4a"
    m4a.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isommp42" + bytes(64))
    with pytest.raises(audio.InputError, match="install ffmpeg") as e:
        audio.load_audio(m4a)
    assert str(e.value).startswith(str(m4a)) and "damaged" not in str(e.value)
    broken = tmp_path / "broken.mp3"
    sf.write(broken, _tone(2.0), SR, format="MP3")
    data = bytearray(broken.read_bytes())
    data[len(data) // 3:] = bytes(len(data) - len(data) // 3)
    broken.write_bytes(bytes(data))
    with pytest.raises(audio.InputError, match="damaged") as e:
        audio.load_audio(broken)
    assert "install ffmpeg" not in str(e.value)


@needs_ffmpeg
def test_damaged_file_decoded_by_ffmpeg_warns(tmp_path):
    path = tmp_path / "damaged.m4a"
    sf.write(tmp_path / "src.wav", _tone(10.0), SR)
    subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-i", str(tmp_path / "src.wav"),
                    "-movflags", "+faststart", str(path)], check=True)
    data = bytearray(path.read_bytes())
    n = len(data) // 2
    data[n:n + 2000] = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    _, notes = audio.read_input(path, audio.FeatureParams())
    assert set(notes) >= {"damaged_data"} and "ffmpeg" in notes["damaged_data"]


# ------------------------------------------------------------------- item 11: paths are bytes

def test_non_utf8_file_names_open_and_map_back(model_dir, tmp_path, capsys):
    raw = os.fsencode(tmp_path) + b"/caf\xe9 \xff.wav"  # Latin-1 name: not valid UTF-8
    sf.write(raw, _tone(1.0), SR)
    name = os.fsdecode(raw)
    out = tmp_path / "tags.json"
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), str(tmp_path)])
    assert rc == 0
    [r] = json.loads(out.read_bytes().decode("utf-8"))  # strict UTF-8 JSON
    assert r["file"] == f"{tmp_path}/caf\\xe9 \\xff.wav"
    assert audio.path_from_display(r["file"]) == os.fsdecode(raw)
    assert os.path.exists(audio.path_from_display(r["file"]))
    printed = capsys.readouterr().out
    assert "caf\\xe9 \\xff.wav" in printed
    # errors name it in the same form
    bad = os.fsencode(tmp_path) + b"/\xe9mpty.wav"
    open(bad, "wb").close()
    with pytest.raises(audio.InputError) as e:
        audio.load_audio(os.fsdecode(bad))
    assert str(e.value).startswith(f"{tmp_path}/\\xe9mpty.wav:")
    assert audio.display_path(name) == f"{tmp_path}/caf\\xe9 \\xff.wav"


def test_non_utf8_file_names_are_explained_and_embedded(model_dir, tmp_path):
    """explain (which reopens the audio for playback) and embed open the real name too."""
    d = tmp_path / "in"
    d.mkdir()
    sf.write(os.fsencode(d) + b"/caf\xe9 \xff.wav", _tone(1.0), SR)
    out = tmp_path / "explain"
    assert cli.main(["explain", "--checkpoint", str(model_dir), "--out", str(out),
                     "--no-progress", "--no-plot", "--methods", "attention", str(d)]) == 0
    assert not (out / "failures.json").exists() or not json.loads(
        (out / "failures.json").read_text())
    assert cli.main(["embed", "--checkpoint", str(model_dir), "--out", str(tmp_path / "emb"),
                     "--no-progress", str(d)]) == 0


def test_mpg123_notes_become_the_damaged_data_warning_not_terminal_lines(tmp_path, capfd):
    """libsndfile's mpg123 prints its resync notes straight to file descriptor 2; they are
    captured into the warning (and a clean mp3 has none)."""
    _damaged_mp3(tmp_path / "damaged.mp3")
    sf.write(tmp_path / "clean.mp3", _tone(2.0, 44100), 44100, format="MP3")
    _, notes = audio.load_audio_checked(tmp_path / "damaged.mp3")
    _, clean = audio.load_audio_checked(tmp_path / "clean.mp3")
    out, err = capfd.readouterr()
    assert "Note:" not in err + out and "resync" not in err.lower()
    assert "mpg123: Note: Illegal Audio-MPEG-Header" in notes["damaged_data"]
    assert clean == {}


def test_other_lines_written_to_fd2_while_an_mp3_decodes_are_not_its_damage(capfd):
    """From a new user's trial: while one thread decoded an mp3 (fd 2 captured for libmpg123's
    notes), another thread's `warning: OTHER: ...` lines matched the decoder's pattern
    case-insensitively: they were filed as the mp3's damaged data (in the outputs) and never
    reached the terminal. Only libmpg123's own forms are the decoder's."""
    ours = ["warning: in/b.wav: silence (peak -inf dBFS)",
            "error: in/c.flac: cannot decode audio",
            "warning: in/d.mp3: the decoder reported damaged data (mpg123: Note: x)",
            "tagger-jax: waiting for another process"]
    theirs = ["Note: Illegal Audio-MPEG-Header 0x00000000 at offset 1234.",
              "Warning: Xing stream size off by more than 1%, fuzzy seeking may be even more "
              "fuzzy than by design!",
              "[src/libmpg123/layer3.c:INT123_do_layer3():1804] error: part2_3_length too large"]
    into: list[str] = []
    with audio._mpg123_messages(into):
        os.write(2, "".join(f"{line}\n" for line in ours + theirs).encode())
    err = capfd.readouterr().err
    assert into == [f"mpg123: {line}" for line in theirs]
    assert err.splitlines() == ours


def test_a_fifo_named_as_an_input_is_not_called_empty(tmp_path):
    """From a new user's trial: a FIFO named on the command line was "empty file (0 bytes)"."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(audio.InputError, match=r"pipe.wav: not a regular file \(a pipe"):
        audio.load_audio(fifo)


def test_a_newline_in_a_file_name_is_shown_escaped_and_maps_back(tmp_path):
    """From a new user's trial: a name holding a newline split tag's line per file in two."""
    name = os.fsencode(tmp_path) + b"/new\nline\xe9.wav"
    shown = audio.display_path(name)
    assert shown.endswith("/new\\x0aline\\xe9.wav") and "\n" not in shown
    assert os.fsencode(audio.path_from_display(shown)) == name
    # A name holding a literal `\x0a` is shown apart from it (a new user's check: the two were
    # shown alike, and tag --resume retagged one of them on every run).
    literal = os.fsencode(tmp_path) + b"/new\\x0aline\xe9.wav"
    assert audio.display_path(literal).endswith("/new\\x5cx0aline\\xe9.wav")
    assert os.fsencode(audio.path_from_display(audio.display_path(literal))) == literal
