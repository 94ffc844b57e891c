"""`tagger-jax explain` end to end: a directory with good and broken inputs, stitched long tracks,
outputs per input, index.html, resuming without repeated work, the two-clip mode."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import quote

import jax
import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the top-level explain.py

import explain as explain_script  # noqa: E402
from tagger_jax import cli, errors, inference  # noqa: E402
from tagger_jax.checkpoint import load_model, save_model  # noqa: E402
from tagger_jax.config_base import base_config  # noqa: E402
from tagger_jax.explain import methods as M  # noqa: E402
from tagger_jax.explain import report, runner  # noqa: E402
from tagger_jax.explain.stitch import stitch  # noqa: E402
from tagger_jax.models import build_model  # noqa: E402

CHUNK = 32
TAGS = ("t0", "t1", "t2", "no <vocal> & co", "t4")
METHODS = "attention,contribution,grad_x_input"
WEIRD = "we<i>rd & 'name'.npy"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    config = base_config()
    m = config.model
    m.conv_channels, m.attention_channels, m.attention_heads, m.intermediate = 2, 32, 4, 64
    config.features.chunk_frames = CHUNK
    model = build_model(config.model, len(TAGS))
    x = np.zeros((1, 96, CHUNK), np.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    model_dir = save_model(root / "model", variables, config, TAGS)

    rng = np.random.default_rng(0)
    inputs = root / "inputs"
    (inputs / "sub").mkdir(parents=True)
    spec = lambda t: rng.normal(-30.0, 12.0, (96, t)).astype(np.float32)
    np.save(inputs / "long.npy", spec(80))  # windows at 0, 32, 48: stitched
    np.save(inputs / "sub" / "short.npy", spec(20))  # shorter than a chunk: tiled
    np.save(inputs / WEIRD, spec(CHUNK))
    sf.write(inputs / "tone.wav", 0.3 * np.sin(np.arange(16000) * 0.2), 16000)  # 63 frames
    (inputs / "broken.wav").write_bytes(b"RIFF....not really a wave file")
    np.save(inputs / "bad.npy", np.zeros((12, 7)))
    return model_dir, inputs, root


def explain(*argv: str) -> int:
    return cli.main(["explain", *argv, "--no-progress"])


@pytest.fixture(scope="module")
def first_run(setup):
    model_dir, inputs, root = setup
    out = root / "out"
    rc = explain("--checkpoint", str(model_dir), str(inputs), "--out", str(out), "--methods",
                 METHODS, "--top-k", "2", "--batch-size", "4")
    return rc, out


GOOD = {"long.npy": 80, "sub__short.npy": 20, "tone.wav": 63,
        runner.safe_key(WEIRD): CHUNK}


def test_every_good_input_is_explained_and_broken_ones_reported(setup, first_run, capsys):
    rc, out = first_run
    assert rc == 1  # some inputs failed
    for key, frames in GOOD.items():
        with np.load(out / f"{key}.npz") as z:
            assert z["contribution"].shape == (len(TAGS), frames)
            assert z["attention"].shape == (frames,) and z["frame_times"].shape == (frames,)
            assert z["grad_x_input"].shape == (2, 96, frames)
            assert z["grad_x_input_bands"].shape == (2, 96)
            assert list(z["tag_names"]) == list(TAGS)
            np.testing.assert_allclose(z["frame_times"][1], 256 / 16000)
        summary = json.loads((out / f"{key}.json").read_text())
        assert summary["files"]["png"] == f"{key}.png" and (out / f"{key}.png").stat().st_size
        assert len(summary["explained_tags"]) == 2
        assert summary["num_steps"] == frames
    tone = json.loads((out / "tone.wav.json").read_text())
    assert tone["duration_s"] == 1.0  # 16,000 samples at 16 kHz, not 63 frames x 16 ms
    assert json.loads((out / "long.npy.json").read_text())["duration_s"] == 79 * 256 / 16000
    failures = json.loads((out / "failures.json").read_text())
    assert sorted(Path(f["input"]).name for f in failures.values()) == ["bad.npy", "broken.wav"]
    assert all(Path(f["input"]).name in f["error"] for f in failures.values())
    shape = failures["bad.npy"]["error"]
    assert "(12, 7)" in shape


def test_long_track_is_stitched_from_independently_computed_windows(setup, first_run):
    """The runner packs windows of several inputs into batches; its result for a long track
    equals the methods run on that track's windows alone, averaged on the overlaps."""
    model_dir, inputs, _ = setup
    _, out = first_run
    loaded = load_model(model_dir)
    spec = np.load(inputs / "long.npy")
    starts = np.array([0, 32, 48])
    windows = np.stack([spec[:, s:s + CHUNK] for s in starts])
    maps, att = jax.jit(lambda v, x: (M.contribution_map(loaded.model, v, x),
                                      M.attention_maps(loaded.model, v, x)))(
        loaded.variables, windows)
    with np.load(out / "long.npy.npz") as z:
        np.testing.assert_allclose(z["contribution"], stitch(np.asarray(M.frames(maps)), starts,
                                                             80), atol=1e-5)
        np.testing.assert_allclose(z["attention"], stitch(np.asarray(M.frames(
            M.attention_heatmap(att["cls"]))), starts, 80), atol=1e-5)
        np.testing.assert_allclose(z["contribution_cls"], np.asarray(maps)[..., 0], atol=1e-5)
        np.testing.assert_array_equal(z["chunk_starts"], starts)


def test_index_and_pages_link_every_input_with_escaped_names(first_run):
    _, out = first_run
    page = (out / "index.html").read_text()
    for key in GOOD:
        assert f"<a href='{quote(key)}.html'>" in page and (out / f"{key}.html").stat().st_size
        assert f"<a href='{quote(key)}.png'>png</a>" in page
    assert "we&lt;i&gt;rd &amp; &#x27;name&#x27;.npy" in page
    assert "<i>" not in page and "<vocal>" not in page and "'name'.npy" not in page
    assert "broken.wav" in page and "bad.npy" in page
    failed = page.split("<ul class='failed'>")[1].split("</ul>")[0].split("</li>")[:-1]
    assert len(failed) == 2  # each failure line names its input once ("a.wav: a.wav: ..." not)
    for line in failed:
        name = line[len("<li>"):].split(": ")[0]
        assert name.endswith(("broken.wav", "bad.npy")) and f"{name}: {name}" not in line, line
    weird = (out / f"{runner.safe_key(WEIRD)}.html").read_text()
    assert "/we&lt;i&gt;rd &amp; &#x27;name&#x27;.npy</h1>" in weird
    assert "<i>" not in weird and "<vocal>" not in weird
    data = weird.split('<script type="application/json" id="data">')[1].split("</script>")[0]
    assert json.loads(data)["name"].endswith(WEIRD)  # the \\u escapes decode to the name
    assert "http://" not in weird and "https://" not in weird  # nothing fetched from a network


def test_second_run_does_no_work_twice(setup, first_run, monkeypatch, capsys):
    model_dir, inputs, _ = setup
    _, out = first_run
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".html"}

    def no_loading(*args, **kwargs):
        raise AssertionError("an input was loaded again")

    monkeypatch.setattr(runner.inference, "prepare", no_loading)
    rc = explain("--checkpoint", str(model_dir), str(inputs), "--out", str(out), "--methods",
                 METHODS, "--top-k", "2", "--batch-size", "4")
    assert rc == 1
    text = capsys.readouterr()
    assert "skipped 4 already finished, 2 failed" in text.err and "broken.wav" in text.err
    failed = [line for line in text.err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and any(f"{inputs / 'broken.wav'}: " in line for line in failed)
    assert "broken.wav" not in text.out  # failures on stderr, as tag prints them
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.iterdir()
                      if p.suffix != ".html"}
    monkeypatch.undo()
    # A changed input is explained again, and only that one.
    np.save(inputs / "sub" / "short.npy", np.full((96, 25), -40.0, np.float32))
    rc = explain("--checkpoint", str(model_dir), str(inputs), "--out", str(out), "--methods",
                 METHODS, "--top-k", "2", "--batch-size", "4")
    assert "explained 1 input(s), skipped 3 already finished" in capsys.readouterr().err
    with np.load(out / "sub__short.npy.npz") as z:
        assert z["attention"].shape == (25,)


def test_short_clip_warning_in_the_summary_and_replaced_outputs_said(setup, tmp_path, capsys):
    """A clip shorter than one window has `tag`'s padding warning in its summary (`warnings`)
    and on stderr; rerunning with other settings (another hop) replaces its outputs and says so
    on stderr and in the run's summary."""
    model_dir, _, _ = setup
    np.save(tmp_path / "tiny.npy", np.random.default_rng(6).normal(-30, 12, (96, 20)).astype(
        np.float32))
    argv = ["--checkpoint", str(model_dir), str(tmp_path / "tiny.npy"), "--out",
            str(tmp_path / "out"), "--methods", METHODS, "--top-k", "2", "--batch-size", "4",
            "--no-plot", "--no-report"]
    assert explain(*argv) == 0
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "tiny.npy.json").read_text())
    [note] = summary["warnings"]
    assert note.startswith(f"{tmp_path / 'tiny.npy'}: only 20 time steps") and "repeated" in note
    assert f"warning: {note}" in err and "replaced" not in err
    kinds = "1 not_log_mel, 1 shorter than one window"  # random values: not a log-mel's range
    assert f"warning: 1 of 1 input(s) tried had warnings: {kinds} (each said above)\n" in err
    assert explain(*argv) == 0  # reused: its warnings counted again, as tag and embed do
    assert (f"warning: 1 of 1 reused input(s) had warnings when they were made: {kinds} (kept in "
            "their outputs)\n") in capsys.readouterr().err
    assert explain(*argv, "--hop", "0.1") == 0
    captured = capsys.readouterr()
    assert (f"1 output(s) in {tmp_path / 'out'} came from another model, other settings or an "
            "earlier version of the input: explained again (replaced); changed: hop (was None, "
            "now 0.1)\n") in captured.err  # named: a trial's rerun did not say what changed
    assert ("explained 1 input(s), 0 failed; 1 earlier output(s) "
            "made with other settings") in captured.err
    assert json.loads((tmp_path / "out" / "tiny.npy.json").read_text())["signature"] != (
        summary["signature"])
    np.save(tmp_path / "tiny.npy", np.zeros((96, 20), np.float32))  # the input changed too
    assert explain(*argv, "--top-k", "1") == 0
    assert ("explained again (replaced); changed: the input file, hop (was 0.1, now None), "
            "top_k (was 2, now 1)\n" in capsys.readouterr().err)


def test_inputs_named_like_the_runs_own_files_keep_their_outputs(setup, tmp_path, capsys):
    """A trial's audio files named `index` and `failures` (no suffix) had their page replaced by
    the run's index.html and their summary deleted with failures.json: such inputs are written
    under KEY-2 with a note, and each keeps its outputs over a rerun."""
    model_dir, inputs, _ = setup
    d = tmp_path / "collection"
    d.mkdir()
    for name in ("index", "failures", "run.part0"):
        (d / name).write_bytes((inputs / "tone.wav").read_bytes())
    out = tmp_path / "out"
    argv = ["--checkpoint", str(model_dir), str(d), "--out", str(out), "--methods", "attention",
            "--top-k", "1", "--batch-size", "4", "--no-plot"]
    assert explain(*argv) == 0
    err = capsys.readouterr().err
    for key in ("index", "failures", "run.part0"):
        assert (f"note: {d / key}: outputs named {key}.* would take the name of one of the run's "
                f"own files (index.html, failures.json, embeddings.npz, run.partN.json); written "
                f"as {key}-2.*") in err
        assert json.loads((out / f"{key}-2.json").read_text())["input"] == str(d / key)
    assert not (out / "failures.json").exists()  # nothing failed
    page = (out / "index.html").read_text()
    assert "3 explained input(s)" in page and "href='index-2.html'" in page
    assert explain(*argv) == 0
    assert "skipped 3 already finished" in capsys.readouterr().err


def test_out_equal_to_the_input_folder_explains_its_audio_and_not_its_outputs(setup, tmp_path,
                                                                              capsys):
    """A trial's `--out DIR DIR` said the folder had no files and explained nothing: the run's
    output folder was left out of the search as a whole. Its inputs are searched now; the
    outputs written there (pages, maps, the playback copies, which are audio) are not inputs of
    the rerun, which reuses the finished input."""
    model_dir, inputs, _ = setup
    d = tmp_path / "music"
    d.mkdir()
    (d / "tone.wav").write_bytes((inputs / "tone.wav").read_bytes())
    argv = ["--checkpoint", str(model_dir), str(d), "--out", str(d), "--methods", "attention",
            "--top-k", "1", "--batch-size", "4", "--no-plot", "--listen"]
    assert explain(*argv) == 0
    err = capsys.readouterr().err
    assert "no input files" not in err and (d / "tone.wav.npz").is_file(), err
    assert list(d.glob("tone.wav*.ogg"))  # playback copies beside the input
    assert explain(*argv) == 0
    err = capsys.readouterr().err
    assert "explained 0 input(s), skipped 1 already finished, 0 failed" in err, err
    assert f"skipped: {d}/: 7 explain outputs" in err  # said, as in any folder of outputs
    assert json.loads((d / "tone.wav.json").read_text())["input"] == str(d / "tone.wav")
    assert not list(d.glob("*.ogg.npz"))  # no output taken for an input


def test_two_clip_mode_with_named_tags_from_the_top_level_script(setup, tmp_path, capsys):
    model_dir, inputs, _ = setup
    rc = explain_script.main([
        "--checkpoint", str(model_dir), str(inputs / "long.npy"), str(inputs / WEIRD),
        "--out", str(tmp_path), "--two-clip", "--methods", METHODS, "--tags",
        "t1,no <vocal> & co", "--batch-size", "4", "--no-progress"])
    assert rc == 0
    (summary_file,) = tmp_path.glob("long.npy+*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["explained_tags"] == ["t1", "no <vocal> & co"]
    assert summary["num_chunks"] == 1 and summary["two_clip"][0].endswith("long.npy")
    with np.load(summary_file.with_suffix(".npz")) as z:
        a, b = np.load(inputs / "long.npy"), np.load(inputs / WEIRD)
        np.testing.assert_array_equal(z["log_mel"], np.concatenate([a[:, :16], b[:, :16]], 1))


def test_tags_the_model_never_learnt_are_said(setup, tmp_path, capsys):
    """A model whose train split had no clip of some tags (recorded at export) says so once."""
    model_dir, inputs, _ = setup
    loaded = load_model(model_dir)
    copy = save_model(tmp_path / "m", loaded.variables, loaded.config, TAGS,
                      untrained_tags=("t2",))
    capsys.readouterr()
    assert explain("--checkpoint", str(copy), str(inputs / "long.npy"), "--out",
                   str(tmp_path / "o"), "--methods", "attention", "--no-plot") == 0
    err = capsys.readouterr().err.splitlines()
    assert err.count(f"note: {copy}: 1 tag(s) had no clip in the model's train split (t2): it "
                     "never learnt them, so their scores mean nothing") == 1, err


@pytest.mark.parametrize("command", ["explain", "embed"])
def test_a_lost_peer_during_the_work_is_status_8_at_once(setup, tmp_path, monkeypatch, capsys,
                                                         command):
    """From a new user's trial: after `kill -9` of process 1, process 0 of a 2-process embed or
    explain printed Gloo's error as a usage error, then waited 80 s in JAX's shutdown barrier and
    aborted with 134 and a page of C++ logs; tag and evaluate left with 8 at once. Now the same."""
    from tagger_jax import embedding

    model_dir, inputs, _ = setup
    lost = ValueError("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/"
                      "pair.cc:547] Connection closed by peer [127.0.0.1]:8096")

    def work(*args, **kwargs):
        raise lost

    monkeypatch.setattr(runner, "explain_inputs", work)
    monkeypatch.setattr(embedding, "embed_inputs", work)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)  # a joined process
    exits = []
    monkeypatch.setattr(errors.os, "_exit", exits.append)  # instead of leaving the test
    capsys.readouterr()
    assert cli.main([command, "--checkpoint", str(model_dir), str(inputs / "long.npy"), "--out",
                     str(tmp_path / "o"), "--no-progress"]) == errors.PEER_LOST
    assert exits == [errors.PEER_LOST]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: another process of this multi-process run stopped or "
                              "cannot be reached (UNKNOWN: Gloo AllGather failed"), err


def test_bad_arguments_exit_2_with_a_message(setup, tmp_path, capsys):
    model_dir, inputs, _ = setup
    assert explain("--checkpoint", str(model_dir), str(inputs), "--out", str(tmp_path),
                   "--tags", "t1,violin") == 2
    assert "violin" in capsys.readouterr().err
    # From a new user's trial: `--tags Piano` for a model's `piano` gave no hint.
    assert explain("--checkpoint", str(model_dir), str(inputs), "--out", str(tmp_path),
                   "--tags", "T1,t-4") == 2
    assert ("unknown tags ['T1', 't-4']; did you mean 't1' for 'T1', 't4' for 't-4'?; the "
            "model's tags are: ") in capsys.readouterr().err
    assert explain("--checkpoint", str(tmp_path / "nope"), str(inputs), "--out",
                   str(tmp_path)) == 3  # errors.MODEL
    assert explain("--checkpoint", str(model_dir), str(inputs), "--out", str(tmp_path),
                   "--methods", "saliency") == 2
    # Refused before the output folder (and the lock beside it) is made: a trial found both.
    for flag, value in (("--methods", "attention,foo"), ("--tags", "vocals")):
        assert explain("--checkpoint", str(model_dir), str(inputs), "--out",
                       str(tmp_path / "new"), flag, value) == 2
        assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))


def test_dataset_split_records_are_explained(setup, tmp_path, monkeypatch):
    """`--dataset NAME --split S` reads records through tagger_jax.datasets.load_split."""
    import tagger_jax.datasets as datasets

    model_dir, _, _ = setup
    rng = np.random.default_rng(5)
    records = [{"mel": rng.normal(-30, 10, (96, 40)).astype(np.float16)},
               {"mel": rng.normal(-30, 10, (96, 70)).astype(np.float16),
                "clip_id": b"c27", "path": b"songs/c27.wav"}]
    calls = []

    def fake_load_split(name, split, data_dir, builder_config=None):
        calls.append((name, split, builder_config))
        return records, TAGS

    monkeypatch.setattr(datasets, "load_split", fake_load_split)
    said = {"c27": {"clipping": "songs/c27.wav: 3% of its samples are clipped"}}
    monkeypatch.setattr(inference, "record_warnings", lambda *args: said)  # the build's record
    rc = explain("--checkpoint", str(model_dir), "--dataset", "toy", "--split", "validation",
                 "--builder-config", "small", "--out", str(tmp_path), "--methods", METHODS,
                 "--top-k", "2", "--batch-size", "4", "--no-plot")
    assert rc == 0 and calls[0] == ("toy", "validation", "small")
    with np.load(tmp_path / "toy_small-validation-000001.npz") as z:
        assert z["contribution"].shape == (len(TAGS), 70)
        np.testing.assert_array_equal(z["log_mel"], records[1]["mel"].astype(np.float32))
    summary = json.loads((tmp_path / "toy_small-validation-000001.json").read_text())
    assert summary["input"] == "toy/small:validation[1]" and summary["files"]["png"] is None
    # The record's source clip is named in the summary and on the index page; times in ms.
    assert summary["record"] == {"clip_id": "c27", "path": "songs/c27.wav"}
    # ... and its audio warnings, as a file explained directly has them (a trial found none).
    assert summary["audio_warnings"] == said["c27"]
    assert "audio_warnings" not in json.loads(
        (tmp_path / "toy_small-validation-000000.json").read_text())
    assert "songs/c27.wav" in (tmp_path / "index.html").read_text()
    assert all(round(t, 3) == t for t in summary["peak_time_s"]["contribution"].values())


def test_dollar_names_plot_as_text_and_methods_all_has_no_duplicate_rows(setup, tmp_path):
    """Issue 10 item 5: `$` in a file name broke the figure (math text) and left an orphan NPZ.
    With `--methods all` the last attention layer is not drawn twice."""
    model_dir, _, _ = setup
    src = tmp_path / "in"
    src.mkdir()
    name = "50$ off_$.wav"
    sf.write(src / name, 0.3 * np.sin(np.arange(24000) * 0.05), 16000)
    out = tmp_path / "out"
    rc = explain("--checkpoint", str(model_dir), str(src), "--out", str(out), "--methods", "all",
                 "--tags", "t1,no <vocal> & co", "--ig-steps", "2", "--batch-size", "4",
                 "--listen-methods", "all", "--line-seconds", "0.5")
    assert rc == 0
    key = runner.safe_key(name)
    assert (out / f"{key}.png").stat().st_size and (out / f"{key}.html").stat().st_size
    assert not list(out.glob(".*.part"))
    summary = json.loads((out / f"{key}.json").read_text())
    assert summary["input"].endswith(name)
    # every auralised file is there and as long as the input
    maps = summary["files"]["audio"]["maps"]
    assert {m["method"] for m in maps} == {"attention", "rollout", "contribution",
                                           "grad_x_input", "integrated_gradients"}
    for m in maps:  # named by tag name (file-name safe), as --help says
        tag = "" if m["tag"] is None else "." + {"t1": "t1", "no <vocal> & co": "no_vocal_co"}[
            m["tag"]]
        for kind in ("kept", "removed"):
            assert m[kind] == f"{key}.{m['method']}{tag}.{kind}.ogg"
            info = sf.info(out / m[kind])
            assert info.samplerate == 16000 and abs(info.duration - 1.5) < 1e-3
    with np.load(out / f"{key}.npz") as z:  # why the duplicate: the same numbers
        np.testing.assert_allclose(z["attention"], z["attention_layers"][-1], rtol=1e-6)
        res = {k: z[k] for k in z.files}
    rows = runner.map_rows(type("Ctx", (), {"options": runner.ExplainOptions()})(), res)
    attention = [r["label"] for r in rows if r["method"].startswith("attention")]
    assert len(attention) == len(set(attention))
    assert sum(r["method"] == "attention_layers" for r in rows) == len(res["attention_layers"]) - 1


def test_each_audio_file_is_decoded_once_and_played_back_as_read(setup, tmp_path, monkeypatch):
    """The waveform that is played back and auralised is the one the log-mel came from: one
    decode per file and run (an mp3 used to be decoded twice), and the page's audio, the
    auralised parts and the NPZ's log-mel equal a direct computation from `audio.load_audio`;
    a float input peaking above 1 has all its playback files scaled by one gain to peak 1.0
    (recorded as playback_gain_db) instead of clipped."""
    from tagger_jax import audio
    from tagger_jax.explain import auralise as A

    model_dir, _, _ = setup
    rng = np.random.default_rng(7)
    files = {"a.wav": (rng.normal(0.0, 0.1, (22050, 2)), 22050),  # stereo, resampled
             "b.flac": (0.3 * np.sin(np.arange(12000) * 0.05), 16000),
             "loud.wav": (1.13 * np.sin(np.arange(12000) * 0.03), 16000)}  # float, peak > 1
    for name, (x, rate) in files.items():
        sf.write(tmp_path / name, x, rate, subtype="FLOAT" if name == "loud.wav" else None)
    features = audio.FeatureParams()
    direct = {name: audio.load_audio(tmp_path / name, features.sample_rate) for name in files}
    decodes, written = [], {}
    real_decode, real_write = audio.load_audio_checked, A.write_audio

    def counting_decode(path, *args, **kwargs):
        decodes.append(Path(path).name)
        return real_decode(path, *args, **kwargs)

    def capturing_write(path, wave, *args, **kwargs):
        written[Path(path).name] = np.array(wave)
        return real_write(path, wave, *args, **kwargs)

    monkeypatch.setattr(audio, "load_audio_checked", counting_decode)
    monkeypatch.setattr(A, "write_audio", capturing_write)
    out = tmp_path / "out"
    rc = explain("--checkpoint", str(model_dir), *(str(tmp_path / n) for n in files), "--out",
                 str(out), "--methods", METHODS, "--top-k", "2", "--batch-size", "4",
                 "--listen", "--no-plot")
    assert rc == 0
    assert sorted(decodes) == sorted(files)  # once each
    for name, wave in direct.items():
        summary = json.loads((out / f"{runner.safe_key(name)}.json").read_text())
        sounds = summary["files"]["audio"]
        # A loud input's playback files share one gain to peak 1.0 instead of clipping.
        gain = 1.0 / np.abs(wave).max() if np.abs(wave).max() > 1.0 else 1.0
        assert (name == "loud.wav") == ("playback_gain_db" in sounds)
        if gain < 1.0:
            assert sounds["playback_gain_db"] == pytest.approx(20 * np.log10(gain), abs=0.01)
        np.testing.assert_allclose(written[f".{sounds['original']}.part"], wave * gain,
                                   rtol=1e-6, atol=0)
        with np.load(out / summary["files"]["npz"]) as z:
            np.testing.assert_array_equal(z["log_mel"], audio.log_mel(wave, **features.mel_kwargs))
            attention = z["attention"]
        (heard,) = [m for m in sounds["maps"] if m["method"] == "attention"]
        kept, removed = A.auralise(wave, attention, keep=0.5, softness=0.0,
                                   sample_rate=features.sample_rate, n_fft=features.n_fft,
                                   hop_length=features.hop_length)
        np.testing.assert_allclose(written[f".{heard['kept']}.part"], kept * gain, atol=1e-6)
        np.testing.assert_allclose(written[f".{heard['removed']}.part"], removed * gain,
                                   atol=1e-6)
    assert list(out.glob("*.kept.ogg"))
    # Explained again without --listen: the earlier run's audio of each input goes (a new
    # user's folder kept it, unlisted, and `tag` then took it for music).
    rc = explain("--checkpoint", str(model_dir), *(str(tmp_path / n) for n in files), "--out",
                 str(out), "--methods", METHODS, "--top-k", "2", "--batch-size", "4", "--no-plot")
    assert rc == 0 and not list(out.glob("*.kept.ogg")) + list(out.glob("*.removed.ogg"))
    listed = set(report.output_files(out))
    assert {p.name for p in out.iterdir()} <= listed


def test_listen_on_a_spectrogram_says_there_is_nothing_to_hear(setup, tmp_path, capsys):
    """--listen on an input without audio (a .npy log-mel) writes no .ogg and says so in a
    warning line, not only in the summary's note."""
    model_dir, inputs, _ = setup
    rc = explain("--checkpoint", str(model_dir), str(inputs / "long.npy"),
                 str(inputs / "tone.wav"), "--out", str(tmp_path / "out"), "--methods", "attention", "--top-k", "1",
                 "--listen", "--no-plot")
    err = capsys.readouterr().err
    assert rc == 0
    assert "warning: --listen: 1 input(s) have no audio" in err and "long.npy)" in err
    assert {p.name.split(".")[0] for p in (tmp_path / "out").glob("*.kept.ogg")} == {"tone"}


def test_listen_skips_grad_x_input_unless_asked_and_checks_listen_methods(setup, tmp_path,
                                                                          capsys):
    """--listen alone does not auralise grad_x_input (anti-faithful on log-mel models): a note
    line says so, the summary and the page name it; --listen-methods picks what is heard (and
    implies --listen); a method that cannot be heard or is not computed is a usage error."""
    model_dir, inputs, _ = setup
    tone = str(inputs / "tone.wav")
    common = ("--checkpoint", str(model_dir), tone, "--methods", METHODS, "--top-k", "1",
              "--no-plot")
    out = tmp_path / "default"
    assert explain(*common, "--out", str(out), "--listen") == 0
    err = capsys.readouterr().err
    assert "note: --listen: grad_x_input not auralised by default" in err
    summary = json.loads((out / "tone.wav.json").read_text())
    heard = summary["files"]["audio"]
    assert {m["method"] for m in heard["maps"]} == {"attention", "contribution"}
    assert list(heard["not_auralised"]) == ["grad_x_input"]
    assert not list(out.glob("*.grad_x_input.*.ogg"))
    page = (out / "tone.wav.html").read_text()
    assert '"silent":' in page and "not auralised by default" in page
    out = tmp_path / "chosen"
    assert explain(*common, "--out", str(out), "--listen-methods", "grad_x_input") == 0
    assert "note: --listen" not in capsys.readouterr().err
    summary = json.loads((out / "tone.wav.json").read_text())
    assert {m["method"] for m in summary["files"]["audio"]["maps"]} == {"grad_x_input"}
    assert "not_auralised" not in summary["files"]["audio"]
    # 'all': every explained method that can be heard (it asked for those not explained)
    out = tmp_path / "all"
    assert explain(*common, "--out", str(out), "--listen-methods", "all") == 0
    summary = json.loads((out / "tone.wav.json").read_text())
    assert {m["method"] for m in summary["files"]["audio"]["maps"]} == {
        "attention", "contribution", "grad_x_input"}
    capsys.readouterr()  # the runs above (their counts are on stderr too)
    for bad, says in (("attention_heads", "attention_heads cannot be heard"),
                      ("rollout", "names rollout, which --methods does not compute (add it"),
                      ("Contribution", "Contribution: not a method"),
                      (",", "names no method")):
        assert explain(*common, "--out", str(tmp_path / "bad"), "--listen-methods", bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --listen-methods") and says in err and "\n" not in err


def test_changing_only_how_maps_are_shown_reuses_the_stored_maps(setup, tmp_path, monkeypatch,
                                                                 capsys):
    """From a trial: adding --listen (or another keep fraction, or the figure) to a finished run
    computed every map again. Such a rerun makes the figures, pages and audio from the stored
    NPZ without a model pass, and writes what a run with those options from the start writes;
    a change of what is computed (--top-k) still computes again."""
    model_dir, inputs, _ = setup
    common = ("--checkpoint", str(model_dir), str(inputs / "tone.wav"),
              str(inputs / "long.npy"), "--methods", METHODS, "--top-k", "2")
    first, direct = tmp_path / "first", tmp_path / "direct"
    assert explain(*common, "--out", str(first), "--no-plot") == 0
    assert explain(*common, "--out", str(direct), "--listen", "--listen-keep", "0.3") == 0
    capsys.readouterr()
    computed = []
    monkeypatch.setattr(runner, "assemble", lambda *a: computed.append(a) or 1 / 0)
    assert explain(*common, "--out", str(first), "--listen", "--listen-keep", "0.3") == 0
    err = capsys.readouterr().err
    assert not computed and "explained 2 input(s), 0 failed" in err
    assert (f"2 output(s) in {first} differ only in how their maps are shown (listen (was False, "
            "now True), listen_keep (was 0.5, now 0.3), listen_methods (was None, now "
            "['attention', 'contribution']), plot (was False, now True)): their figures, pages "
            "and audio are made again from the stored maps, without a model pass") in err
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in direct.iterdir())
    for stem in ("tone.wav", "long.npy"):
        with np.load(first / f"{stem}.npz") as a, np.load(direct / f"{stem}.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        again, made = (json.loads((d / f"{stem}.json").read_text()) for d in (first, direct))
        assert {**again, "seconds": 0} == {**made, "seconds": 0}
    for heard in direct.glob("*.ogg"):
        np.testing.assert_array_equal(sf.read(first / heard.name)[0], sf.read(heard)[0])
    (first / "tone.wav.npz").write_bytes(b"damaged")  # unreadable stored maps: computed again
    assert explain(*common, "--out", str(first), "--listen", "--listen-keep", "0.4") == 1
    err = capsys.readouterr().err
    assert len(computed) == 1 and f"note: {inputs / 'tone.wav'}: its stored maps in {first} " \
        "cannot be read: computed again" in err and "explained 1 input(s), 1 failed" in err
    assert explain(*common, "--out", str(first), "--top-k", "1") == 1  # computed: assemble fails
    assert len(computed) == 3


def test_decoded_waveforms_in_memory_stay_bounded_over_many_files(setup, tmp_path, monkeypatch):
    """The waveform kept from each file's decode lives only while its input is in flight (read
    ahead, or with windows in a batch): over 10 files of 4 windows (one batch each), with one
    load-ahead worker (2 inputs read ahead), at most 5 are alive at once (weak references to
    every decoded array, counted at each decode), and none after the run."""
    import weakref

    from tagger_jax import audio

    model_dir, _, _ = setup
    loaded = load_model(model_dir)
    paths = []
    for i in range(10):  # 2 s: 126 frames, windows of 32 at 0, 32, 64, 94
        paths.append(tmp_path / f"f{i:02d}.wav")
        sf.write(paths[-1], 0.3 * np.sin(np.arange(32000) * (0.05 + 0.01 * i)), 16000)
    alive: list[weakref.ref] = []
    most = [0]
    real_decode = audio.load_audio_checked

    def tracked_decode(path, *args, **kwargs):
        wave, notes = real_decode(path, *args, **kwargs)
        alive.append(weakref.ref(wave))
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return wave, notes

    monkeypatch.setattr(audio, "load_audio_checked", tracked_decode)
    options = runner.ExplainOptions(methods=("attention",), batch_size=4, plot=False,
                                    load_workers=1)  # the page plays the waveform
    result = runner.explain_inputs(loaded, runner.file_items(loaded, paths), tmp_path / "out",
                                   options, progress=False, log=None)
    assert len(result.done) == 10 and not result.failed
    assert len(alive) == 10 and 1 < most[0] <= 5, most[0]
    assert all(r() is None for r in alive)  # none kept after the run


def test_tag_file_names_are_safe_and_unique():
    assert runner.tag_file_names(["rock", "a/b", "a b", "a_b", "</x>"]) == {
        "rock": "rock", "a/b": "a__b", "a b": "a_b", "a_b": "a_b-2", "</x>": "x"}


def test_a_failing_figure_leaves_no_file_of_that_input(setup, tmp_path, monkeypatch):
    from tagger_jax.explain import plotting

    model_dir, inputs, _ = setup
    real = plotting.plot_explanation

    def flaky(path, *args, title="", **kwargs):
        if "long.npy" in title:
            raise RuntimeError("drawing failed")
        return real(path, *args, title=title, **kwargs)

    monkeypatch.setattr(plotting, "plot_explanation", flaky)
    out = tmp_path / "out"
    rc = explain("--checkpoint", str(model_dir), str(inputs / "long.npy"), str(inputs / WEIRD),
                 "--out", str(out), "--methods", "attention", "--batch-size", "4")
    assert rc == 1
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("long")) == []
    assert not list(out.glob(".*.part"))
    assert "drawing failed" in (out / "failures.json").read_text()
    assert (out / f"{runner.safe_key(WEIRD)}.json").exists()
    # Not retried with the same settings; tried again with others (a failure of the settings,
    # e.g. a figure option, kept the input refused after the settings were mended).
    monkeypatch.undo()
    args = ("--checkpoint", str(model_dir), str(inputs / "long.npy"), "--out", str(out),
            "--batch-size", "4")
    assert explain(*args, "--methods", "attention") == 1
    assert not (out / "long.npy.json").exists()
    assert explain(*args, "--methods", "attention", "--no-plot") == 0
    assert (out / "long.npy.json").exists()


def test_tags_per_input_from_a_csv_in_one_compilation(setup, tmp_path, capsys):
    model_dir, inputs, _ = setup
    table = tmp_path / "tags.csv"
    table.write_text('file,tags\nlong.npy,t2,t4\n"tone.wav","no <vocal> & co"\n'
                     "short.npy,t1,violino\nnot_there.wav,t0\n")  # base name match
    out = tmp_path / "out"
    rc = explain("--checkpoint", str(model_dir), str(inputs / "long.npy"),
                 str(inputs / "tone.wav"), str(inputs / "sub" / "short.npy"), str(inputs / WEIRD),
                 "--out", str(out), "--methods", "contribution,grad_x_input", "--tags-from",
                 str(table), "--top-k", "1", "--ig-steps", "5", "--batch-size", "4",
                 "--no-plot")
    text = capsys.readouterr()
    # reported, not silent: the unmatched row with the counts, the unknown tag in a note; the
    # input asking for it is explained for its known tag (a trial's `flute;beep` row failed
    # its input and lost its flute maps)
    assert rc == 0 and "not_there.wav" in text.err
    short = str(inputs / "sub" / "short.npy")
    assert ("note: 1 input(s) ask for tags the model does not know: 'violino' (1 input, e.g. "
            f"{short}); they are left out of the explanations (an input asking for no other tag "
            "fails)\n") in text.err  # no tag near it: no hint
    assert "did you mean" not in text.err
    # the input the CSV does not list gets its predicted tags, said (a misspelt row's file did
    # without a word in a trial)
    assert (f"note: {table}: 1 input(s) it does not list get their top-k predicted tags: "
            f"{inputs / WEIRD}\n") in text.err
    assert "not_there.wav" not in text.out  # stdout: the index only
    got = {json.loads(p.read_text())["key"]: json.loads(p.read_text())
           for p in out.glob("*.json") if p.name != "failures.json"}
    by_input = {s["input"]: s for s in got.values()}
    assert by_input[short]["explained_tags"] == ["t1"]
    assert by_input[short]["requested_tags"] == ["t1", "violino"]
    assert got["long.npy"]["explained_tags"] == ["t2", "t4"]
    assert got["long.npy"]["tags_source"] == "input"
    # each explained tag's probability, also when it is no top tag (a trial), on the pages too
    with np.load(out / "long.npy.npz") as z:
        track = {str(t): float(p) for t, p in zip(z["tag_names"], z["probabilities"])}
    probs = got["long.npy"]["explained_probabilities"]
    assert probs == pytest.approx([track["t2"], track["t4"]], abs=1e-6)
    shown = report.explained_text(got["long.npy"])
    assert shown == ", ".join(f"{t} {'<0.01' if p < 0.005 else format(p, '.2f')}"
                              for t, p in zip(("t2", "t4"), probs))
    assert report.explained_text({"explained_tags": ["a", "b"], "explained_probabilities":
                                  [0.0036, 0.5]}) == "a <0.01, b 0.50"  # not "a 0.00"
    assert f"explained: {shown}" in (out / "long.npy.html").read_text()
    index = (out / "index.html").read_text()
    assert f"<td>{shown}</td>" in index
    assert "<td>t2, t4</td>" in index  # the CSV's tags are the file's true tags
    assert got["tone.wav"]["explained_tags"] == ["no <vocal> & co"]
    assert got[runner.safe_key(WEIRD)]["tags_source"] == "predicted"
    assert len(got[runner.safe_key(WEIRD)]["explained_tags"]) == 1
    with np.load(out / "long.npy.npz") as z:
        assert z["grad_x_input"].shape == (2, 96, 80)
    with np.load(out / "tone.wav.npz") as z:
        assert z["grad_x_input"].shape == (1, 96, 63)
    loaded = load_model(model_dir)
    _, explain_fn = runner.jitted_functions(loaded.model, ("contribution", "grad_x_input"), 5,
                                            "min", "logit", -1, 8)
    assert explain_fn._cache_size() == 1  # K = 2 for every batch: compiled once


def test_an_input_without_a_known_tag_fails_alone_and_is_retried_when_its_tags_change(
        setup, tmp_path, capsys):
    """A CSV row naming only tags the model lacks fails its input (the others are explained);
    the failure is not retried while the row stays, and is once the row is corrected (a
    trial's fixed CSV was answered "failed in an earlier run; unchanged, not retried")."""
    model_dir, inputs, _ = setup
    table, out = tmp_path / "tags.csv", tmp_path / "out"
    short, tone = str(inputs / "sub" / "short.npy"), str(inputs / "tone.wav")

    def run(rows: str) -> tuple[int, str]:
        table.write_text(rows)
        rc = explain("--checkpoint", str(model_dir), short, tone, "--out", str(out),
                     "--methods", "attention", "--tags-from", str(table), "--no-plot",
                     "--no-report")
        return rc, capsys.readouterr().err

    rc, err = run("short.npy,violino\ntone.wav,t1\n")
    assert rc == 1
    assert (f"{short}: unknown tags to explain ['violino'], none of them the model's"
            in err)
    assert (out / "tone.wav.json").exists() and not (out / "short.npy.json").exists()
    rc, err = run("short.npy,violino\ntone.wav,t1\n")  # the same request: not tried again
    assert rc == 1 and "(failed in an earlier run; unchanged, not retried)" in err
    rc, err = run("short.npy,t4\ntone.wav,t1\n")  # corrected: tried again, and explained
    assert rc == 0, err
    assert "failed in an earlier run" not in err
    assert json.loads((out / "short.npy.json").read_text())["explained_tags"] == ["t4"]
    assert not (out / "failures.json").exists() or "short.npy" not in (
        out / "failures.json").read_text()


def test_dataset_labels_are_explained_with_ground_truth_rows(setup, tmp_path, monkeypatch,
                                                             capsys):
    import tagger_jax.datasets as datasets

    model_dir, _, _ = setup
    rng = np.random.default_rng(6)
    mask = np.zeros((len(TAGS), 50), np.uint8)
    mask[1, :25] = mask[3, 25:] = 1
    records = [{"mel": rng.normal(-30, 10, (96, 50)).astype(np.float16),
                "tags": np.array([0, 1, 0, 1, 0], np.uint8), "tag_mask": mask},
               {"mel": rng.normal(-30, 10, (96, 40)).astype(np.float16),
                "tags": np.array([1, 0, 0, 0, 0], np.uint8)},
               {"mel": rng.normal(-30, 10, (96, 40)).astype(np.float16),  # no true tag
                "tags": np.zeros(5, np.uint8)}]
    monkeypatch.setattr(datasets, "load_split", lambda *a, **k: (records, TAGS))
    rc = explain("--checkpoint", str(model_dir), "--dataset", "toy", "--split", "test",
                 "--out", str(tmp_path), "--methods", "contribution,grad_x_input",
                 "--tags-from", "labels", "--batch-size", "4")
    assert rc == 0
    first = json.loads((tmp_path / "toy-test-000000.json").read_text())
    second = json.loads((tmp_path / "toy-test-000001.json").read_text())
    assert first["explained_tags"] == first["true_tags"] == ["t1", "no <vocal> & co"]
    assert second["explained_tags"] == second["true_tags"] == ["t0"]
    third = json.loads((tmp_path / "toy-test-000002.json").read_text())
    assert third["tags_source"] == "predicted" and third["true_tags"] == []
    assert ("note: --tags-from labels: 1 of 3 record(s) have no true tag (e.g. toy:test[2]): "
            "their top 3 predicted tags are explained") in capsys.readouterr().err
    page = (tmp_path / "toy-test-000000.html").read_text()
    data = json.loads(page.split('id="data">')[1].split("</script>")[0])
    truth = [r for r in data["rows"] if r["method"] == "truth"]
    assert [r["tag"] for r in truth] == ["t1", "no <vocal> & co"]
    assert truth[0]["values"] == [1.0] * 25 + [0.0] * 25
    assert "true tags: t1, no &lt;vocal&gt; &amp; co" in page
    assert (tmp_path / "toy-test-000000.png").stat().st_size


def _paper_covered(num_frames: int) -> np.ndarray:
    """Frames the paper's 16 chunks cover, from the authors' formula i * ((T - C) // 16)
    written out here (not chunking.eval_chunk_starts); a clip shorter than a chunk is tiled."""
    if num_frames <= CHUNK:
        return np.ones(num_frames, bool)
    hop = (num_frames - CHUNK) // 16
    covered = np.zeros(num_frames, bool)
    for i in range(16):
        covered[i * hop:i * hop + CHUNK] = True
    return covered


def test_paper_windows_leave_gaps_that_are_nan_and_reported(setup, tmp_path, capsys):
    """--windows paper: maps are NaN exactly on the frames no chunk covers (a track longer than
    17 chunks: gaps between chunks and at the end), coverage is in the summary and on the page
    (as JSON null in its data), figures and auralised audio are written; a short tiled clip is
    fully covered."""
    model_dir = setup[0]
    rng = np.random.default_rng(3)
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "gappy.npy", rng.normal(-30.0, 12.0, (96, 17 * CHUNK + 40)).astype(np.float32))
    np.save(src / "short.npy", rng.normal(-30.0, 12.0, (96, 20)).astype(np.float32))
    sf.write(src / "tone.wav", 0.3 * np.sin(np.arange(32000) * 0.2), 16000)  # 126 frames
    out = tmp_path / "out"
    rc = explain("--checkpoint", str(model_dir), str(src), "--out", str(out), "--methods",
                 METHODS, "--top-k", "2", "--batch-size", "4", "--windows", "paper", "--listen")
    assert rc == 0
    err = capsys.readouterr().err
    for key, frames in (("gappy.npy", 17 * CHUNK + 40), ("short.npy", 20), ("tone.wav", 126)):
        expected = _paper_covered(frames)
        summary = json.loads((out / f"{key}.json").read_text())
        with np.load(out / f"{key}.npz") as z:
            np.testing.assert_array_equal(z["covered"], expected)
            gap = ~expected
            np.testing.assert_array_equal(np.isnan(z["attention"]), gap)
            np.testing.assert_array_equal(np.isnan(z["contribution"]),
                                          np.broadcast_to(gap, z["contribution"].shape))
            np.testing.assert_array_equal(np.isnan(z["grad_x_input"]),
                                          np.broadcast_to(gap, z["grad_x_input"].shape))
            assert np.isfinite(z["grad_x_input_bands"]).all()
            duration = summary["duration_s"]
        assert summary["coverage"]["fraction"] == pytest.approx(expected.mean(), abs=1e-6)
        assert summary["coverage"]["covered_s"] == pytest.approx(
            min(expected.sum() * 256 / 16000, duration), abs=1e-3)
        assert summary["windows"] == {"windows": "paper", "num_chunks": 16}
        page = (out / f"{key}.html").read_text()
        data = json.loads(page.split('<script type="application/json" id="data">')[1]
                          .split("</script>")[0])
        [att] = [r for r in data["rows"] if r["method"] == "attention"]
        assert [v is None for v in att["values"]] == gap.tolist()
        assert bool(data["gaps"]) == gap.any()
        assert ("id='coverage'" in page) == gap.any()
        assert (out / f"{key}.png").stat().st_size > 0
    assert (summary["files"]["audio"]["maps"] and
            all((out / m["kept"]).exists() for m in summary["files"]["audio"]["maps"]))
    gappy = _paper_covered(17 * CHUNK + 40)
    assert gappy[:CHUNK].all() and not gappy[CHUNK:CHUNK + 2].any() and not gappy[-1]
    assert f"gappy.npy: the 16 chunks cover {100 * gappy.mean():.1f}% of the track" in err
    assert "short.npy: the 16" not in err


def test_an_interrupted_explain_says_what_it_kept_and_where(setup, tmp_path, monkeypatch,
                                                           capsys):
    """From a new user's trial: Ctrl-C said only "finished results are kept". The line now
    counts this run's finished inputs and names the folder."""
    model_dir, inputs, _ = setup
    write, written = runner._write, []

    def interrupted_after_one(ctx, track, *args):
        if written:
            raise KeyboardInterrupt
        write(ctx, track, *args)
        written.append(track.item.name)

    monkeypatch.setattr(runner, "_write", interrupted_after_one)
    out = tmp_path / "out"
    rc = explain("--checkpoint", str(model_dir), str(inputs / "broken.wav"),
                 str(inputs / "long.npy"), str(inputs / "tone.wav"), "--out", str(out),
                 "--methods", "attention")
    assert rc == errors.INTERRUPTED
    err = capsys.readouterr().err
    assert "warning: 1 of 2 input(s) tried had warnings: 1 not_log_mel" in err  # of 2, not 3
    assert err.strip().splitlines()[-1] == (  # the failed one not retried
        f"tagger-jax: interrupted; 1 of 3 input(s) explained in this run are in {out}, 1 failed "
        "(recorded; --retry-failed tries them again); running it again explains the other 1")
    # Stopped again, the line counts what the run kept from the first (a trial's stopped rerun
    # named only what it had explained itself).
    rc = explain("--checkpoint", str(model_dir), str(inputs / "broken.wav"),
                 str(inputs / "long.npy"), str(inputs / "tone.wav"), "--out", str(out),
                 "--methods", "attention")
    assert rc == errors.INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"tagger-jax: interrupted; 0 of 1 input(s) explained in this run are in {out}, besides 1 "
        "explained by earlier runs (reused); running it again explains the other 1")


def test_an_output_folder_deleted_midway_stops_the_run_with_one_true_line(setup, tmp_path,
                                                                          monkeypatch, capsys):
    """From a new user's trial: with --out deleted midway, each later input was recorded as
    failed, then the line named failures.json and said its previous version was kept, with the
    folder gone. Now the run stops at the first input it cannot write, and says so."""
    import shutil

    model_dir, inputs, _ = setup
    out = tmp_path / "out"
    write, calls = runner._write, []

    def deleted_before_the_second(ctx, track, *args):
        calls.append(track.item.name)
        if len(calls) == 2:
            shutil.rmtree(out)
        write(ctx, track, *args)

    monkeypatch.setattr(runner, "_write", deleted_before_the_second)
    rc = explain("--checkpoint", str(model_dir), str(inputs / "long.npy"),
                 str(inputs / "tone.wav"), str(inputs / "sub"), "--out", str(out),
                 "--methods", "attention")
    assert rc == errors.OUTPUT and len(calls) == 2 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {out}: the output folder was deleted or moved while this run wrote into it "
        f"(noticed at the files of {calls[1]}); what was written there went with it: running "
        "the same command explains every input again")


def test_a_silent_inputs_figure_says_its_maps_describe_silence(setup, tmp_path, monkeypatch):
    """Each map of a figure is scaled to its own range, so a silent input's maps looked as
    telling as music's, with the warning only on the terminal, the summary and the page."""
    from tagger_jax.explain import plotting

    model_dir, _, _ = setup
    sf.write(tmp_path / "quiet.wav", np.zeros(16000), 16000)
    sf.write(tmp_path / "tone.wav", 0.3 * np.sin(np.arange(16000) * 0.2), 16000)
    titles = {}
    real = plotting.plot_explanation
    monkeypatch.setattr(plotting, "plot_explanation", lambda path, *a, title="", **k: (
        titles.setdefault(Path(path).name, title), real(path, *a, title=title, **k))[1])
    assert explain("--checkpoint", str(model_dir), str(tmp_path / "quiet.wav"),
                   str(tmp_path / "tone.wav"), "--out", str(tmp_path / "out"),
                   "--methods", "attention") == 0
    assert titles[".quiet.wav.png.part"].endswith(
        "\naudio warnings: silence (the maps describe silence) (docs/audio.md)")
    assert "audio warnings" not in titles[".tone.wav.png.part"]


def test_nearest_tag_names_for_hints():
    from tagger_jax import tags as tags_lib

    known = ("piano", "no vocal", "hip-hop", "drums")
    assert tags_lib.nearest(["Piano", "no_vocal", "hiphop", "drum", "violin", "piano"], known) == {
        "Piano": "piano", "no_vocal": "no vocal", "hiphop": "hip-hop", "drum": "drums"}
    assert tags_lib.did_you_mean(["Piano"], known) == "; did you mean 'piano'?"
    assert tags_lib.did_you_mean(["violin"], known) == ""


def test_tags_csv_reads_both_formats(tmp_path):
    """--tags-from: rows `file,tag,tag,...`, or an audio_folder CSV (`path,tags[,split]` with
    `;`-joined tags, told apart by its header), with one-line errors naming the line."""
    plain = tmp_path / "plain.csv"
    plain.write_text("file,tags\na.wav,rock,piano\n\"b, c.wav\",quiet\nd.wav,organ;cello\n")
    assert runner.read_tags_csv(plain) == {"a.wav": ("rock", "piano"), "b, c.wav": ("quiet",),
                                           "d.wav": ("organ", "cello")}  # a trial's row
    folder = tmp_path / "folder.csv"
    folder.write_text("Split,PATH,tags\ntest,songs/a.wav,guitar; bass\n"
                      "train,songs/b.wav,\ntest,songs/c.wav,sitar;;drums;loud\n")
    assert runner.read_tags_csv(folder) == {"songs/a.wav": ("guitar", "bass"),
                                            "songs/b.wav": (),
                                            "songs/c.wav": ("sitar", "drums", "loud")}
    (tmp_path / "bad.csv").write_text("path,tags\nx.wav,rock;pop\nx.wav,rock,pop,jazz\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: 4 cells but the header has 2"):
        runner.read_tags_csv(tmp_path / "bad.csv")
    (tmp_path / "twice.csv").write_text("path,tags\nx.wav,rock\nx.wav,pop\n")
    with pytest.raises(ValueError, match=r"twice.csv:3: 'x.wav' is listed twice"):
        runner.read_tags_csv(tmp_path / "twice.csv")


# ----------------------------------------------------------------------------------------------
# From a new user's trial of explain on their own audio.

def test_bad_figure_and_layer_options_are_usage_errors_before_any_work(setup, tmp_path, capsys):
    """`--line-seconds -5` failed every input (exit 1, recorded as broken: a rerun then refused
    them as failed earlier); `--layer 7` said outputs were replaced before its error."""
    model_dir, inputs, _ = setup
    out = tmp_path / "out"
    for flag, value, says in (("--line-seconds", "-5", "--line-seconds must be a number of "
                                                        "seconds >= 0"),
                              ("--line-seconds", "nan", "--line-seconds must be"),
                              ("--layer", "7", "--layer 7: the model has 2 encoder layer(s) "
                                               "(-2..1"),
                              ("--listen-keep", "1.5", "--listen-keep must be a fraction in "
                                                        "[0, 1], got 1.5"),
                              ("--listen-softness", "-1", "--listen-softness must be a number "
                                                          ">= 0, got -1.0"),
                              ("--listen-softness", "inf", "--listen-softness must be")):
        assert explain("--checkpoint", str(model_dir), str(inputs / "tone.wav"), "--out",
                       str(out), flag, value) == 2
        err = capsys.readouterr()
        assert err.err.strip() == f"error: {says}" or err.err.strip().startswith(
            f"error: {says}"), err.err
        assert "replaced" not in err.out
    assert not out.exists()


def test_listen_settings_imply_listen(setup, tmp_path):
    """`--listen-keep 0.3` alone wrote no audio but re-explained every input as changed; it
    asks for the audio now, as --listen-methods does."""
    model_dir, inputs, _ = setup
    assert explain("--checkpoint", str(model_dir), str(inputs / "tone.wav"), "--out",
                   str(tmp_path), "--methods", "attention", "--top-k", "1", "--no-plot",
                   "--listen-keep", "0.3") == 0
    assert len(list(tmp_path.glob("tone.wav.attention*.kept.ogg"))) == 1
    # Without listening, the listening settings are not part of what an output depends on.
    a = runner.ExplainOptions(listen_keep=0.3, listen_softness=0.2).signature_fields()
    assert a == runner.ExplainOptions().signature_fields()


def test_two_clip_mode_on_audio_files_plays_the_joined_audio_and_keeps_warnings(setup, tmp_path,
                                                                                capsys):
    """--two-clip on audio files said they had no audio (it played none) and dropped their
    warnings, the short clip's tiling too; the page shows the warnings."""
    model_dir, inputs, _ = setup
    short = tmp_path / "short.wav"
    sf.write(short, 0.2 * np.sin(np.arange(1600) * 0.3), 16000)  # 0.1 s: 7 frames of 16
    rc = explain("--checkpoint", str(model_dir), str(inputs / "tone.wav"), str(short), "--out",
                 str(tmp_path / "out"), "--two-clip", "--methods", "attention", "--top-k", "1",
                 "--listen", "--no-plot")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "have no audio" not in captured.err
    (summary_file,) = (tmp_path / "out").glob("tone.wav+*.json")
    summary = json.loads(summary_file.read_text())
    tiled = summary["audio_warnings"]["tiled"]
    assert tiled.startswith(f"{short}: shorter than half a chunk (7 of 16 steps)"), tiled
    assert f"warning: {tiled}" in captured.err
    stem = summary_file.name[:-len(".json")]
    original, _ = sf.read(tmp_path / "out" / f"{stem}.orig.ogg")
    assert len(original) == (CHUNK - 1) * 256 + 1  # two half-chunks: 32 frames of hop 256
    assert len(list((tmp_path / "out").glob(f"{stem}.attention*.kept.ogg"))) == 1
    page = (tmp_path / "out" / f"{stem}.html").read_text()
    assert "class='meta warning'>warning: tiled: " in page


def test_own_lock_is_not_an_input_and_a_link_to_a_busy_output_is_refused(setup, tmp_path,
                                                                         capsys):
    """An output folder inside the searched folder: its lock beside it was listed as a skipped
    input. A second run given a symbolic link to a busy output folder was let in (the lock sat
    beside the link), and the two runs broke each other's files."""
    from tagger_jax import outputs

    model_dir, inputs, _ = setup
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "tone.wav").symlink_to(inputs / "tone.wav")
    out = folder / "expl"
    args = ("--checkpoint", str(model_dir), str(folder), "--out", str(out), "--methods",
            "attention", "--top-k", "1", "--no-plot", "--no-report")
    with outputs.exclusive_for_run(out, "output directory"):  # as another run holds it
        assert (folder / ".expl.lock").exists()
        link = tmp_path / "link"
        link.symlink_to(out, target_is_directory=True)
        assert outputs.lock_path(link, directory=False) == folder / ".expl.lock"
        assert explain("--checkpoint", str(model_dir), str(inputs / "tone.wav"), "--out",
                       str(link), "--no-plot") == 5  # errors.BUSY
        capsys.readouterr()
    assert explain(*args) == 0
    assert "lock" not in capsys.readouterr().err


def test_dataset_defaults_to_the_models_builder_config():
    """`explain --dataset synthetic_tags` on a model trained on the `tiny` build used the
    default config, and started building all of it; it takes the model's now (as evaluate)."""
    from types import SimpleNamespace

    from tagger_jax.commands._inference_args import builder_config

    config = base_config()
    config.data.name, config.data.builder_config = "synthetic_tags", "tiny"
    loaded = SimpleNamespace(config=config)
    args = SimpleNamespace(builder_config=None, dataset="synthetic_tags")
    assert builder_config(args, loaded) == "tiny"
    assert builder_config(SimpleNamespace(builder_config="waveform", dataset="synthetic_tags"),
                          loaded) == "waveform"
    assert builder_config(SimpleNamespace(builder_config=None, dataset="audio_folder"),
                          loaded) is None


def test_tags_csv_rows_match_inputs_by_the_end_of_their_path(tmp_path, capsys):
    """From a new user's trial: a row `live sets/track 002.ogg` did not match the input
    `music/rock/live sets/track 002.ogg` (only whole paths or bare base names did). A name
    matches the one input whose path ends with it; a name two inputs end with matches none."""
    from tagger_jax.inference import Input

    names = ["music/rock/live sets/track 002.ogg", "music/jazz/track 002.ogg",
             "music/jazz/solo.wav", "other/solo.wav"]
    items = [Input(key=str(k), name=n, load=lambda: None, fingerprint="") for k, n in
             enumerate(names)]
    table = tmp_path / "tags.csv"
    table.write_text("live sets/track 002.ogg,rock\njazz/track 002.ogg,jazz\nsolo.wav,piano\n"
                     "nowhere.wav,drums\n")
    said = []
    got = runner.with_csv_tags(items, table, log=said.append)
    assert [it.explain_tags for it in got] == [("rock",), ("jazz",), (), ()]
    assert said == [f"note: {table}: 2 row(s) match no input: 'solo.wav', 'nowhere.wav'",
                    f"note: {table}: 2 input(s) it does not list get their top-k predicted "
                    "tags: music/jazz/solo.wav, other/solo.wav"]
    runner.with_csv_tags(items, table)  # by default on stderr: stdout is the run's index
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "".join(line + "\n" for line in said)
    said.clear()  # a tag in another letter case is the model's (a trial's `Cello`), said once
    table.write_text("live sets/track 002.ogg,Rock;JAZZ\njazz/track 002.ogg,Jazz;Pop\n")
    got = runner.with_csv_tags(items, table, log=said.append, model_tags=("rock", "jazz", "pop",
                                                                          "Pop"))
    assert [it.explain_tags for it in got] == [("rock", "jazz"), ("jazz", "Pop"), (), ()]
    assert said[0] == (f"note: {table}: tag(s) read as the model's in its letter case: 'Rock' "
                       "as 'rock', 'JAZZ' as 'jazz', 'Jazz' as 'jazz'")  # 'Pop' is its own tag
    assert len(said) == 2 and said[1].startswith(f"note: {table}: 2 input(s) it does not list")


def test_tags_csv_of_a_build_matches_absolute_paths_and_reads_its_separator(tmp_path):
    """A trial's audio_folder build from a CSV of absolute paths and `|`-joined tags: its
    records matched no row (`1 row(s) match no input: '/tmp/.../ext42.ogg'`), and the tags
    were read as one unknown tag 'slow | strings | violin'."""
    from types import SimpleNamespace

    from tagger_jax.datasets import audio_folder
    from tagger_jax.inference import Input

    song = tmp_path / "elsewhere" / "ext42.ogg"
    items = [Input(key="0", name="audio_folder:holdout[0]", load=lambda: None, fingerprint="",
                   meta={"index": 0, "record_path": str(song)})]
    table = tmp_path / "abs.csv"
    table.write_text(f"Path;Tags;Split\n{song};slow | strings;holdout\n")
    pipe = audio_folder.built_tag_separator(SimpleNamespace(builder_config=SimpleNamespace(
        description="mine: {'delimiter': 'semicolon', 'tag_separator': 'pipe'}")))
    assert pipe == "|"
    said = []
    got = runner.with_csv_tags(items, table, log=said.append, split="holdout", tag_separator=pipe)
    assert [it.explain_tags for it in got] == [("slow", "strings")] and said == []
    assert audio_folder.built_tag_separator(SimpleNamespace(
        builder_config=audio_folder.AudioFolderConfig(name="c", tag_separator="comma"))) == ","


def test_tags_csv_matches_dataset_records_by_their_source_path_and_reads_a_bom(tmp_path):
    """From a new user's trial: `explain --dataset audio_folder --tags-from tags.csv` (the CSV
    the dataset was built from) matched no record, as records are named `audio_folder:test[3]`;
    they match on the path they were built from now. The same CSV saved with a byte-order mark
    was read as rows `file,tag,...` ('\\ufeffpath' a file name, 'flute;loud' a tag)."""
    from tagger_jax.inference import Input

    items = [Input(key=str(k), name=f"audio_folder:test[{k}]", load=lambda: None,
                   fingerprint="", meta={"index": k, "record_path": p})
             for k, p in enumerate(["songs/a.ogg", "songs/b.wav"])]
    table = tmp_path / "tags.csv"
    table.write_text("\ufeffpath,tags,split\nsongs/b.wav,flute;loud,test\n"
                     "songs/a.ogg,drums,test\nsongs/c.mp3,bass,train\n", encoding="utf-8")
    said = []
    got = runner.with_csv_tags(items, table, log=said.append)
    assert [it.explain_tags for it in got] == [("drums",), ("flute", "loud")]
    assert said == [f"note: {table}: 1 row(s) match no input: 'songs/c.mp3'"]
    # Told the records' split (explain --dataset --split test), the CSV's rows of other splits
    # are left aside, in any spelling of the split; those of this split still get the note.
    table.write_text("path,tags,split\nsongs/b.wav,flute;loud,TEST\nsongs/a.ogg,drums,testing\n"
                     "songs/c.mp3,bass,train\nsongs/d.wav,piano,Hold-Out\n"
                     "songs/e.wav,organ,test\n")
    said.clear()
    got = runner.with_csv_tags(items, table, log=said.append, split="test")
    assert [it.explain_tags for it in got] == [("drums",), ("flute", "loud")]
    assert said == [f"note: {table}: 1 row(s) match no input: 'songs/e.wav'"]
    said.clear()  # with --limit 2 the row's record may be past the limit: said
    runner.with_csv_tags(items, table, log=said.append, split="test", limit=2)
    assert said == [f"note: {table}: 1 row(s) match no input: 'songs/e.wav' (--limit 2 takes "
                    "only the split's first 2 record(s))"]
    said.clear()
    got = runner.with_csv_tags(items, table, log=said.append, split="hold_out")
    assert [it.explain_tags for it in got] == [(), ()]
    assert said == [f"note: {table}: 1 row(s) match no input: 'songs/d.wav'",
                    f"note: {table}: 2 input(s) it does not list get their top-k predicted "
                    "tags: audio_folder:test[0], audio_folder:test[1]"]
    splits = {}
    runner.read_tags_csv(table, splits)
    assert splits == {"songs/b.wav": "TEST", "songs/a.ogg": "testing", "songs/c.mp3": "train",
                      "songs/d.wav": "Hold-Out", "songs/e.wav": "test"}
    # The verifying user's CSV, which audio_folder builds from: Excel's `sep=;` line, `;` as the
    # delimiter, a name in decomposed Unicode (NFD) for a record stored in composed form (NFC).
    import unicodedata

    cafe = "songs/Café.wav"
    items.append(Input(key="2", name="audio_folder:test[2]", load=lambda: None, fingerprint="",
                       meta={"index": 2, "record_path": unicodedata.normalize("NFC", cafe)}))
    table.write_text("sep=;\npath;tags;split\nsongs/a.ogg;drums;test\n"
                     f"{unicodedata.normalize('NFD', cafe)};\"piano;slow\";test\n",
                     encoding="utf-8")
    got = runner.with_csv_tags(items, table, log=said.append)
    assert [it.explain_tags for it in got] == [("drums",), (), ("piano", "slow")]
    # A row with an empty tags cell (a trial's `songs/full.wav,,test`) is said, not silent.
    table.write_text("path,tags,split\nsongs/a.ogg,,test\nsongs/b.wav,flute,test\n")
    said.clear()
    got = runner.with_csv_tags(items, table, log=said.append)
    assert [it.explain_tags for it in got] == [(), ("flute",), ()]
    assert said == [
        f"note: {table}: 1 input(s) it does not list get their top-k predicted tags: "
        "audio_folder:test[2]",
        f"note: {table}: 1 row(s) list no tags, so their inputs get their top-k predicted "
        "tags: 'songs/a.ogg'"]
    semicolons = tmp_path / "semi.csv"  # built with --set delimiter=semicolon: no sep= line
    semicolons.write_text("path;tags\nsongs/b.wav;flute\n")
    assert runner.read_tags_csv(semicolons) == {"songs/b.wav": ("flute",)}


def test_option_values_and_missing_inputs_are_named_usage_errors(setup, tmp_path, capsys):
    """From a new user's trial: `--ig-steps 0` said "batch_size, top_k and ig_steps must be
    positive", `--limit -3` "no inputs found", a missing --tags-from CSV "[Errno 2] No such file
    or directory", and no inputs at all "give INPUT files/directories or --dataset (not both)"."""
    model_dir, inputs, _ = setup
    base = ["--checkpoint", str(model_dir), "--out", str(tmp_path / "out")]
    cases = [([str(inputs / "tone.wav"), "--ig-steps", "0"], "argument --ig-steps: must be at "
                                                             "least 1, got 0"),
             ([str(inputs / "tone.wav"), "--top-k", "x"], "argument --top-k: 'x' is not an "
                                                           "integer"),
             (["--dataset", "synthetic_tags", "--limit", "-3"], "argument --limit: must be at "
                                                                 "least 1, got -3"),
             ([str(inputs / "tone.wav"), "--tags-from", str(tmp_path / "no.csv")],
              f"error: --tags-from {tmp_path / 'no.csv'}: no such file"),
             ([], "error: no inputs: give INPUT files/directories, or --dataset NAME")]
    for argv, says in cases:
        try:
            status = explain(*base, *argv)
        except SystemExit as e:  # argparse
            status = e.code
        assert status == 2, argv
        err = capsys.readouterr().err
        assert says in err, (argv, err)
    assert not (tmp_path / "out").exists()
