"""`tagger-jax tag`: results for every good file, a clear error for each broken one, batching
that does not change the numbers, the paper's 16-chunk protocol, taggrams and resuming."""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from tagger_jax import audio, checkpoint, chunking, cli, errors, tagging
from tagger_jax.config_base import base_config
from tagger_jax.models import build_model

TAGS = [f"tag{i}" for i in range(6)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = base_config()
    config.model.update(conv_channels=2, attention_channels=16, attention_heads=2,
                        intermediate=32)
    config.features.chunk_frames = 64  # short chunks keep the test fast
    model = build_model(config.model, len(TAGS))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 96, 64)))
    # Non-trivial BatchNorm statistics, so eval-mode normalisation matters.
    variables = jax.tree.map(lambda a: a + 0.1, variables)
    return checkpoint.save_model(tmp_path_factory.mktemp("m") / "model", variables, config, TAGS)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    (d / "sub").mkdir()
    sf.write(d / "tone.wav", 0.3 * np.sin(np.arange(16000 * 3) * 0.05), 16000)
    sf.write(d / "sub" / "noise.flac", 0.1 * rng.standard_normal(16000 * 2), 16000)
    np.save(d / "spec.npy", rng.standard_normal((96, 300)).astype(np.float32) - 40)
    np.save(d / "short.npy", rng.standard_normal((96, 20)).astype(np.float32) - 40)
    np.save(d / "wrong_shape.npy", np.zeros((64, 300), np.float32))
    (d / "empty.mp3").write_bytes(b"")
    (d / "corrupt.ogg").write_bytes(b"OggS" + bytes(range(200)))
    (d / "notes.txt").write_text("not an input: ignored when a directory is searched")
    return d


@pytest.fixture(scope="module")
def loaded(model_dir):
    return checkpoint.load_model(model_dir)


def test_collect_inputs_recurses_and_filters(inputs):
    names = [p.name for p in tagging.collect_inputs([inputs])]
    assert "noise.flac" in names and "tone.wav" in names and "notes.txt" not in names
    assert len(names) == 7


def test_cli_tags_good_files_and_reports_broken_ones(model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "tags.json"
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--top-k", "3", "--output", str(out),
                   "--quiet", str(inputs)])
    assert rc == 1  # some inputs failed
    written = json.loads(out.read_text())
    discovered = [audio.display_path(p) for p in tagging.collect_inputs([str(inputs)], [])]
    assert [r["file"] for r in written] == discovered  # input order, not completion order
    results = {p["file"].split("/")[-1]: p for p in written}
    assert set(results) == {"tone.wav", "noise.flac", "spec.npy", "short.npy",
                            "wrong_shape.npy", "empty.mp3", "corrupt.ogg"}
    for name in ("tone.wav", "noise.flac", "spec.npy", "short.npy"):
        r = results[name]
        assert r["tags"] == TAGS and len(r["probabilities"]) == len(TAGS)
        assert len(r["top_tags"]) == 3
        assert np.all((np.array(r["probabilities"]) > 0) & (np.array(r["probabilities"]) < 1))
        # Default: windows of 64 frames every 64 frames, the last one ending at the end.
        assert len(r["chunk_starts_s"]) == len(r["chunk_probabilities"])
        assert r["windows"] == "cover" and r["chunk_starts_s"][0] == 0.0
        end = r["chunk_starts_s"][-1] + r["chunk_seconds"]
        assert end == pytest.approx(max(r["duration_s"], r["chunk_seconds"]), abs=0.02)
    assert "warnings" in results["short.npy"]  # padded by the documented rule
    for name, words in (("wrong_shape.npy", "shape (64, 300)"), ("empty.mp3", "empty"),
                        ("corrupt.ogg", "decode")):
        assert results[name]["error"].startswith(str(inputs / name))
        assert words in results[name]["error"]
    err = capsys.readouterr().err.splitlines()
    assert "tagged 4 input(s), 3 failed" in err
    failed = [line for line in err if line.startswith("failed: ")]  # as embed and explain
    assert sorted(failed) == sorted(f"failed: {results[n]['error']}" for n in
                                    ("wrong_shape.npy", "empty.mp3", "corrupt.ogg"))
    assert not any("Traceback" in line for line in err)


def test_tags_the_model_never_learnt_are_said(model_dir, inputs, tmp_path, capsys):
    """From a new user's trial: a tag with no clip in the train split (a CSV's tag used only by
    held-out rows) was scored by `tag` without a word. The model records such tags (in its tag
    order; unknown names dropped) and `tag` says so once."""
    loaded = checkpoint.load_model(model_dir)
    assert loaded.untrained_tags == () and loaded.untrained_note() is None
    directory = checkpoint.save_model(tmp_path / "m", loaded.variables, loaded.config, TAGS,
                                      untrained_tags=("tag4", "nope", "tag1"))
    meta = json.loads((directory / "tagger.json").read_text())
    assert meta[checkpoint.UNTRAINED_TAGS_KEY] == ["tag1", "tag4"]
    assert checkpoint.load_model(directory).untrained_tags == ("tag1", "tag4")
    assert "tags_without_train_clips" not in json.loads((model_dir / "tagger.json").read_text())
    capsys.readouterr()
    assert cli.main(["tag", "--checkpoint", str(directory), "--quiet", "--output",
                     str(tmp_path / "t.json"), str(inputs / "tone.wav")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err.count(f"note: {directory}: 2 tag(s) had no clip in the model's train split "
                     "(tag1, tag4): it never learnt them, so their scores mean nothing") == 1, err


def test_a_copied_models_missing_data_directory_falls_back_to_the_default(loaded, tmp_path,
                                                                         capsys):
    """A trial evaluated a model copied from another user: its stored (absolute) data directory
    was the other user's, and a whole dataset was built there. Where the stored directory does
    not exist, the configs' default is used, with a note; an existing one is kept."""
    import argparse

    from tagger_jax.commands import _inference_args

    config = loaded.config.copy_and_resolve_references()
    config.data.data_dir = str(tmp_path / "alice" / "tensorflow_datasets")
    moved = checkpoint.load_model(checkpoint.save_model(tmp_path / "m", loaded.variables, config,
                                                        TAGS))
    default = base_config().data.data_dir
    directory, note = moved.data_dir()
    assert directory == default
    assert note == (f"note: {moved.directory}: its data directory {config.data.data_dir} does "
                    f"not exist here (a model from another machine or user?); using {default} "
                    "(give --data-dir, or data_dir= in Python, for another)")
    assert _inference_args.data_dir(argparse.Namespace(data_dir=None), moved) == default
    assert capsys.readouterr().err == note + "\n"
    assert _inference_args.data_dir(argparse.Namespace(data_dir="d"), moved) == "d"
    (tmp_path / "alice" / "tensorflow_datasets").mkdir(parents=True)
    assert moved.data_dir() == (config.data.data_dir, None)
    config.data.data_dir = "gs://bucket/tensorflow_datasets"  # TFDS reads it; never local
    remote = checkpoint.load_model(checkpoint.save_model(tmp_path / "r", loaded.variables,
                                                         config, TAGS))
    assert remote.data_dir() == ("gs://bucket/tensorflow_datasets", None)


def test_track_probabilities_follow_the_paper_protocol(loaded, inputs):
    """Track level = mean of the sigmoid outputs of the 16 chunks at i * ((T - 64) // 16)."""
    spec = np.load(inputs / "spec.npy")
    starts = 0 + np.arange(16) * ((300 - 64) // 16)
    x = np.stack([spec[:, s:s + 64] for s in starts])
    expected = np.asarray(jax.nn.sigmoid(loaded.model.apply(loaded.variables, x))).mean(0)
    [r] = tagging.Tagger(loaded, batch_size=8).tag([inputs / "spec.npy"], windows="paper",
                                                   progress=False)
    np.testing.assert_allclose(r["probabilities"], expected, atol=2e-6)
    # The taggram is the same 16 chunks.
    np.testing.assert_allclose(r["chunk_starts_s"], np.round(starts * 256 / 16000, 3))


def test_batching_does_not_change_results(loaded, inputs):
    files = [inputs / "tone.wav", inputs / "spec.npy", inputs / "sub" / "noise.flac"]
    together = tagging.Tagger(loaded, batch_size=7).tag(files, hop_s=0.5, progress=False)
    alone = [tagging.Tagger(loaded, batch_size=64).tag([f], hop_s=0.5, progress=False)[0]
             for f in files]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-6)
        np.testing.assert_allclose(a["chunk_probabilities"], b["chunk_probabilities"], atol=1e-6)


def test_python_callers_misuse_gets_one_line_errors(loaded, inputs, tmp_path):
    """From a new user's Python trial: `tag("file.flac")` tagged each character as a file (31
    "not found" results), a waveform gave a raw TypeError from pathlib, and `write_csv` of
    results holding a failure raised KeyError: 'tags'."""
    tagger = tagging.Tagger(loaded, batch_size=8)
    [one] = tagger.tag(str(inputs / "tone.wav"), progress=False)
    [same] = tagger.tag((p for p in [inputs / "tone.wav"]), progress=False)  # any iterable
    assert one["probabilities"] == same["probabilities"]
    with pytest.raises(TypeError, match=r"^Tagger.tag reads audio files, got a ndarray among "
                       r"the paths; audio in memory: tag\(tagger.engine.array_inputs\(waves, "):
        tagger.tag([np.zeros(16000, np.float32)], progress=False)
    results = tagger.tag([inputs / "tone.wav", tmp_path / "missing.wav"], progress=False)
    assert "error" in results[1]
    with pytest.raises(ValueError, match=r"missing.wav has no probabilities \(.*\); a table "
                       r"holds the successful results"):
        tagging.write_csv(results, tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()
    tagging.write_csv([r for r in results if "error" not in r], tmp_path / "t.csv")
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 2


def test_audio_in_memory_is_tagged_and_embedded_as_its_file_would_be(loaded, tmp_path):
    """Trial P's wish: tag audio a script holds without writing a file. `array_inputs` reads
    (channels, N) samples at any rate as a file's decode (mixed to mono, resampled with soxr,
    the same warnings), so results equal the file's; a bad array fails alone, named."""
    from tagger_jax import embedding

    rng = np.random.default_rng(1)
    stereo = (0.2 * rng.standard_normal((2, 22050 * 3))).astype(np.float32)
    stereo[:, :1000] = 1.0  # clipped: a warning as the file gets
    sf.write(tmp_path / "s.wav", stereo.T, 22050, subtype="FLOAT")
    tagger = tagging.Tagger(loaded, batch_size=8)
    arrays = tagger.engine.array_inputs(
        [stereo, stereo.T, np.zeros(0, np.float32), np.arange(4), stereo[0]], 22050,
        names=["s.wav", "transposed", "empty", "ints", "left"])
    [from_file] = tagger.tag(tmp_path / "s.wav", progress=False)
    got = tagger.tag(arrays, progress=False)
    assert got[0]["file"] == "s.wav" and "input_path" not in got[0]
    for k in ("probabilities", "chunk_probabilities", "chunk_starts_s", "duration_s"):
        assert got[0][k] == from_file[k], k
    assert set(got[0]["audio_warnings"]) == set(from_file["audio_warnings"]) == {"clipping"}
    assert got[0]["audio_warnings"]["clipping"].startswith("s.wav: ")
    assert got[1]["error"] == ("transposed: shape (66150, 2) reads as 66150 channels of 2 "
                               "samples; give (channels, N) (transpose soundfile's (N, "
                               "channels))")
    assert got[2]["error"].startswith("empty: expected (N,) or (channels, N) samples")
    assert got[3]["error"] == "ints: expected float samples (full scale 1.0), got dtype int64"
    assert "probabilities" in got[4]
    engine = tagger.engine
    mine = embedding.embed(engine, arrays[:1])
    theirs = embedding.embed(engine, engine.file_inputs([tmp_path / "s.wav"]))
    assert mine.names == ["s.wav"] and mine.embedding.shape == theirs.embedding.shape
    np.testing.assert_array_equal(mine.embedding, theirs.embedding)
    ragged, objects = tagger.tag(engine.array_inputs(
        [[[0.1, 0.2], [0.3]], np.array([object(), 1.0], dtype=object)], 16000,
        names=["ragged", "objects"]), progress=False)
    assert ragged["error"] == ("ragged: not an array of samples (NumPy: setting an array "
                               "element with a sequence)")
    assert objects["error"] == "objects: expected float samples (full scale 1.0), got dtype object"
    with pytest.raises(ValueError, match="^1 names for 2 arrays$"):
        engine.array_inputs([stereo, stereo], 22050, names=["one"])
    with pytest.raises(audio.InputError, match=r"^x: sample_rate must be a positive whole"):
        audio.read_array(stereo, 0, name="x")


def test_a_closed_stdout_says_what_the_output_file_kept(model_dir, tmp_path):
    """`tag DIR --output out.json | head -1` (a trial): the command stops as a tool killed by
    SIGPIPE does (141), and since a file holds results, says how many and how to go on."""
    import subprocess
    import sys

    specs = tmp_path / "specs"
    specs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        np.save(specs / f"s{i:02d}.npy", rng.normal(-40.0, 5.0, (96, 100)).astype(np.float32))
    out = tmp_path / "out.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tagger_jax.cli", "tag", "--checkpoint", str(model_dir),
         str(specs), "--output", str(out), "--batch-size", "1", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ,
                                                             "JAX_PLATFORMS": "cpu"})
    proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode().strip().splitlines()
    assert proc.wait(timeout=300) == errors.PIPE_CLOSED
    kept = len(json.loads(out.read_text()))
    assert 1 <= kept < 12
    assert err[-1] == (f"tagger-jax: the output's reader closed the pipe; {kept} of 12 input(s) "
                       f"tagged in this run are in {out}; tag --resume tags the other "
                       f"{12 - kept}")


def test_the_output_keeps_results_of_inputs_not_given_where_they_were(tmp_path):
    """`--resume` after a file was deleted (a trial): its kept result moved to the front of the
    file. It stays before the result it preceded; this run's inputs are in input order."""
    out = tmp_path / "o.json"
    done = [{"file": f} for f in ("x", "a", "b", "gone", "c", "y")]
    store = tagging.ResultStore(out, done, order=["a", "c", "b", "d"])
    store.add({"file": "d"})
    store.close()
    assert [r["file"] for r in json.loads(out.read_text())] == ["x", "a", "gone", "c", "b", "d",
                                                                 "y"]
    # A run that reused every result leaves the file as it was (on a full disk it failed).
    kept = json.loads(out.read_text())
    os.utime(out, (0, 0))
    tagging.ResultStore(out, kept, order=["a", "c"]).close()
    assert out.stat().st_mtime == 0
    changed = [dict(r, top_tags=[]) for r in kept]  # as --top-k changes them
    tagging.ResultStore(out, changed, order=["a", "c"]).close()
    assert json.loads(out.read_text()) == changed


def test_default_windows_cover_the_whole_track(loaded, inputs):
    """Default: windows at 0, 64, ..., plus one ending at frame 300; track = their mean."""
    spec = np.load(inputs / "spec.npy")
    starts = [0, 64, 128, 192, 236]
    x = np.stack([spec[:, s:s + 64] for s in starts])
    probs = np.asarray(jax.nn.sigmoid(loaded.model.apply(loaded.variables, x)))
    [r] = tagging.Tagger(loaded, batch_size=4).tag([inputs / "spec.npy"], progress=False)
    np.testing.assert_allclose(r["chunk_probabilities"], probs, atol=2e-6)
    np.testing.assert_allclose(r["probabilities"], probs.mean(0), atol=2e-6)
    np.testing.assert_allclose(r["chunk_starts_s"], np.round(np.array(starts) * 256 / 16000, 3))


def test_hop_gives_sliding_window_taggram(loaded, inputs):
    [r] = tagging.Tagger(loaded).tag([inputs / "spec.npy"], hop_s=1.0, progress=False)
    hop = round(1.0 * 16000 / 256)  # 62 frames
    starts = chunking.sliding_window_starts(300, 64, hop)
    np.testing.assert_allclose(r["chunk_starts_s"], np.round(starts * 256 / 16000, 3))
    assert r["chunk_starts_s"][-1] == pytest.approx((300 - 64) * 256 / 16000, abs=1e-3)


def test_resume_keeps_finished_results(model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "tags.json"
    cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet",
              str(inputs / "spec.npy")])
    first = json.loads(out.read_text())
    first[0]["probabilities"][0] = -1.0  # a marker: resuming must keep, not recompute, it
    out.write_text(json.dumps(first))
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--resume",
                   "--quiet", str(inputs / "spec.npy"), str(inputs / "tone.wav")])
    assert rc == 0
    results = json.loads(out.read_text())
    assert [r["file"].split("/")[-1] for r in results] == ["spec.npy", "tone.wav"]
    assert results[0]["probabilities"][0] == -1.0
    assert "1 of 2 inputs reused" in capsys.readouterr().err
    # The summary counts the whole run (reused + new), not only this run's share.
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--resume",
                   "--quiet", str(inputs / "spec.npy"), str(inputs / "tone.wav"),
                   str(inputs / "empty.mp3")])
    assert rc == 1
    assert [r["file"].split("/")[-1] for r in json.loads(out.read_text())] == [
        "spec.npy", "tone.wav", "empty.mp3"]  # input order, whatever finished first
    err = capsys.readouterr().err
    assert "2 of 3 inputs reused" in err
    assert "tagged 0 input(s), skipped 2 already finished, 1 failed" in err
    # A reused input prints its line with this run's --top-k; another input's failure stays
    # recorded in the file when this run does not retry it.
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--resume",
                   "--quiet", "--top-k", "2", str(inputs / "tone.wav")])
    printed = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(printed) == 1 and printed[0].split(": ")[0].endswith("tone.wav")
    assert len(printed[0].split(": ", 1)[1].split(", ")) == 2
    kept = {r["file"].split("/")[-1]: r for r in json.loads(out.read_text())}
    assert "error" in kept["empty.mp3"] and len(kept["tone.wav"]["top_tags"]) == 2
    # Another window policy, or a changed file, is not reused: those inputs are tagged again.
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--resume",
                   "--quiet", "--windows", "paper", str(inputs / "spec.npy")])
    err = capsys.readouterr().err
    assert rc == 0 and "1 output(s) in" in err and "tagged again" in err
    # tone.wav's result, kept, was made with the other windows: said in one line
    assert f"warning: {out} keeps 1 result(s) of inputs not in this run made with another " \
           "model or settings (e.g. " in err and "tone.wav)" in err
    results = {r["file"].split("/")[-1]: r for r in json.loads(out.read_text())}
    assert results["spec.npy"]["windows"] == "paper" and results["spec.npy"]["probabilities"][0] >= 0
    assert results["tone.wav"]["windows"] == "cover"  # not in this run: kept as it was
    # A killed multi-process run's part files: read by --resume, then folded into the output
    results = json.loads(out.read_text())
    out.unlink()
    for k, r in enumerate(results):
        (tmp_path / f"tags.json.part{k}").write_text(json.dumps([r]))
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--resume",
                   "--quiet", "--windows", "paper", str(inputs / "spec.npy"),
                   str(inputs / "tone.wav")])  # spec.npy's result has the paper's windows
    err = capsys.readouterr().err
    assert rc == 0 and f"1 of 2 inputs reused from {out} and its part files" in err
    assert not list(tmp_path.glob("tags.json.part*"))
    assert sorted(r["file"] for r in json.loads(out.read_text())) == sorted(
        r["file"] for r in results)
    os.utime(inputs / "tone.wav", ns=(1, 1))  # a new version of the file
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--resume",
                   "--quiet", str(inputs / "tone.wav")])
    assert rc == 0 and "tagged again" in capsys.readouterr().err


def test_result_store_writes_about_once_a_second_and_less_for_a_large_file(tmp_path,
                                                                          monkeypatch):
    """A result coming 1 s or more after the last write is written at once (a SIGKILL loses
    at most about a second of results), unless the last write took over a tenth of that time."""
    clock = [0.0]
    monkeypatch.setattr(tagging.time, "monotonic", lambda: clock[0])
    writes = []

    def write(results, path):
        writes.append(len(results))
        clock[0] += cost[0]  # the write's own duration

    monkeypatch.setattr(tagging, "write_json", write)
    cost = [0.01]
    store = tagging.ResultStore(tmp_path / "o.json", [], order=())
    for t in (0.5, 1.2, 1.7, 2.3):
        clock[0] = t
        store.add({"file": str(t)})
    assert writes == [2, 4]  # at 1.2 s and 2.3 s
    cost = [0.5]  # a slow write: the next waits ten times as long
    clock[0] = 4.0
    store.add({"file": "a"})
    for t in (5.0, 8.0):
        clock[0] = t
        store.add({"file": str(t)})
    assert writes == [2, 4, 5]
    clock[0] = 9.6
    store.add({"file": "b"})
    assert writes == [2, 4, 5, 8]
    store.close()
    assert writes[-1] == 8


def test_sigterm_keeps_the_finished_results(model_dir, inputs, tmp_path, monkeypatch, capsys):
    """SIGTERM (kill, a scheduler) unwinds like Ctrl-C: --output holds what finished, exit 143
    with one line (it was killed outright, leaving no file when the first write was due)."""
    import signal

    real_add, seen = tagging.ResultStore.add, []

    def add(store, result):
        real_add(store, result)
        seen.append(result["file"])
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here

    monkeypatch.setattr(tagging.ResultStore, "add", add)
    out = tmp_path / "tags.json"
    before = signal.getsignal(signal.SIGTERM)
    table = tmp_path / "tags.csv"
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--quiet", "--output", str(out),
                   "--csv", str(table), str(inputs / "spec.npy"), str(inputs / "tone.wav")])
    assert rc == errors.TERMINATED == 143
    assert (f"stopped by SIGTERM; 1 of 2 input(s) tagged in this run are in {out}; tag --resume "
            f"tags the other 1; {table} is written when a run finishes (tag --resume writes "
            "it)\n") in capsys.readouterr().err  # what is kept, and where; the table is not
    assert not table.exists()
    assert [r["file"] for r in json.loads(out.read_text())] == seen[:1]
    assert signal.getsignal(signal.SIGTERM) == before  # the command's handler is gone


def test_an_interrupted_run_has_printed_what_it_finished(model_dir, inputs, monkeypatch,
                                                          capsys):
    """Each input's line is printed when its result comes, so Ctrl-C after the first of two
    leaves the first line on stdout ("finished results are kept")."""
    seen = []

    def add(store, result):
        seen.append(result)
        if len(seen) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(tagging.ResultStore, "add", add)
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--quiet", str(inputs / "spec.npy"),
                   str(inputs / "tone.wav")])
    captured = capsys.readouterr()
    assert rc == errors.INTERRUPTED
    assert "interrupted; 1 of 2 input(s) tagged in this run were printed above" in captured.err
    assert captured.out.startswith(f"{seen[0]['file']}: ") and len(
        captured.out.splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["tag", "--windows", "paper", "--hop", "1"], "--hop applies to --windows cover only"),
    (["tag", "--num-chunks", "4"], "--num-chunks applies to --windows paper only"),
    (["embed", "--num-chunks", "4", "--out", "OUT"], "--num-chunks applies to --windows paper"),
    (["evaluate", "--hop", "1"], "--hop applies to --mode full only"),
    (["evaluate", "--mode", "full", "--num-chunks", "4"], "--num-chunks applies to --mode chunks"),
])
def test_an_option_of_another_window_mode_is_refused(model_dir, inputs, tmp_path, capsys, argv,
                                                     message):
    """An option the chosen windows do not use is a usage error, not silently ignored."""
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    tail = [] if argv[0] == "evaluate" else [str(inputs / "spec.npy")]
    rc = cli.main([*argv, "--checkpoint", str(model_dir), *tail])
    assert rc == errors.USAGE
    assert message in capsys.readouterr().err


def test_bad_checkpoint_is_a_clear_error(tmp_path, inputs, capsys):
    rc = cli.main(["tag", "--checkpoint", str(tmp_path / "nope"), str(inputs / "spec.npy")])
    assert rc == errors.MODEL
    assert "no such checkpoint directory" in capsys.readouterr().err


def test_features_config_is_taken_from_the_checkpoint(loaded):
    assert audio.features_from_config(loaded.config.features).chunk_frames == 64


def test_duration_is_the_audio_length_and_numbers_are_rounded_alike(loaded, tmp_path):
    """`duration_s` is samples / rate (10.0 s for a 10 s file, 2.5 s for 2.5 s at 44.1 kHz),
    not frames x hop (10.016 s); frames stay apart in `num_steps`; a .npy spectrogram of T frames
    lasts (T - 1) x hop / rate. Track and window probabilities are rounded the same way."""
    sf.write(tmp_path / "ten.wav", 0.3 * np.sin(np.arange(160000) * 0.05), 16000)
    sf.write(tmp_path / "cd.flac", 0.3 * np.sin(np.arange(110250) * 0.01), 44100)
    np.save(tmp_path / "spec.npy", np.full((96, 300), -40.0, np.float32))
    ten, cd, spec = tagging.Tagger(loaded, batch_size=8).tag(
        [tmp_path / "ten.wav", tmp_path / "cd.flac", tmp_path / "spec.npy"], progress=False)
    assert ten["duration_s"] == 10.0 and ten["num_steps"] == 1 + 160000 // 256 == 626
    assert cd["duration_s"] == 2.5 and cd["num_steps"] == 1 + 40000 // 256
    assert spec["duration_s"] == round(299 * 256 / 16000, 3) and spec["num_steps"] == 300
    for r in (ten, cd, spec):
        text = json.dumps(r)
        for key in ("probabilities", "chunk_probabilities"):
            flat = np.ravel(r[key])
            assert all(round(float(v), 6) == v for v in flat), (key, text[:300])
        decimals = [len(t.split(".")[1]) for t in json.dumps(r["chunk_probabilities"])
                    .replace("[", " ").replace("]", " ").replace(",", " ").split() if "." in t]
        assert max(decimals) <= 6


def test_rounded_is_float64_rounding():
    assert tagging.rounded(np.float32(0.1234567), 6) == 0.123457
    assert tagging.rounded(np.array([[0.5, np.float32(1 / 3)]], np.float32), 6) == [[0.5,
                                                                                     0.333333]]


ADDRESS = r"(@ |at )0x[0-9a-fA-F]+|<[^<>]*>"  # a decoder object's address or a Python repr


def test_broken_files_get_one_line_errors_and_short_clips_a_warning_field(model_dir, tmp_path,
                                                                          capsys):
    """Random bytes named .mp3/.flac and a truncated FLAC fail with one line naming the file
    and what is wrong, with no decoder object's memory address (ffmpeg's "[mp3 @ 0x55...]").
    A clip shorter than one window is tagged, and says so in its result's `warnings` as well
    as on stderr."""
    import re

    rng = np.random.default_rng(3)
    (tmp_path / "x.mp3").write_bytes(rng.bytes(5000))
    (tmp_path / "y.flac").write_bytes(rng.bytes(4000))  # ffprobe: a stream of 0 channels
    sf.write(tmp_path / "whole.flac", 0.1 * rng.standard_normal(16000 * 2), 16000)
    (tmp_path / "cut.flac").write_bytes((tmp_path / "whole.flac").read_bytes()[:300])
    sf.write(tmp_path / "short.wav", 0.1 * rng.standard_normal(4000), 16000)  # 16 of 64 frames
    out = tmp_path / "tags.json"
    names = ["x.mp3", "y.flac", "cut.flac", "short.wav"]
    rc = cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet",
                   *[str(tmp_path / n) for n in names]])
    assert rc == 1
    results = {r["file"].rsplit("/", 1)[-1]: r for r in json.loads(out.read_text())}
    err = capsys.readouterr().err
    for name, words in (("x.mp3", "cannot decode audio"), ("y.flac", "cannot decode audio"),
                        ("cut.flac", "damaged or truncated FLAC file")):
        message = results[name]["error"]
        assert message.startswith(f"{tmp_path / name}: ") and words in message, message
        assert "\n" not in message and not re.search(ADDRESS, message), message
        assert f"failed: {message}\n" in err  # the run's summary repeats it, as written
    assert "Traceback" not in err and not re.search(ADDRESS, err), err
    short = results["short.wav"]
    assert "error" not in short
    [note] = short["warnings"]
    assert note.startswith(f"{tmp_path / 'short.wav'}: only 16 time steps") and "repeated" in note
    assert f"warning: {note}\n" in err
    # and the end of the run counts the warned inputs, which a long folder's lines scroll away
    assert ("warning: 1 of 4 input(s) tried had warnings: 1 shorter than one window (each said "
            "above)\n") in err
    # A rerun reusing the result counts its warnings again (said by the run that made it only)
    assert cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet",
                     "--resume", str(tmp_path / "short.wav")]) == 0
    assert ("warning: 1 of 1 reused input(s) had warnings when they were made: 1 shorter than "
            "one window (kept in their outputs)\n") in capsys.readouterr().err


def test_warning_counts_count_inputs_and_kinds():
    """The end-of-run line: inputs with any warning, then each kind, most first; none, None."""
    from tagger_jax import inference

    assert inference.warning_counts([([], {}), ([], {})], 2) is None
    line = inference.warning_counts([(["a: only 3 time steps"], {"silence": "a: silent"}),
                                     ([], {"clipping": "b: clipped"}),
                                     (["c: only 9 time steps"], {}), ([], {})], 5)
    assert line == ("warning: 3 of 5 input(s) tried had warnings: 2 shorter than one window, "
                    "1 clipping, 1 silence (each said above)")


def test_decoder_text_drops_addresses_and_the_repeated_path():
    assert audio.decoder_text("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x558deaf729c0] moov atom not found"
                              ) == "moov atom not found"
    assert audio.decoder_text("Error reading <soundfile.SoundFile object at 0x7f12ab34cd50>"
                              ) == "Error reading <soundfile.SoundFile>"
    assert audio.decoder_text("/music/a.ogg: End of file", "/music/a.ogg") == "End of file"


def test_a_truncated_mp3s_decoder_warning_is_a_note_not_raw_stderr(model_dir, tmp_path, capfd):
    """libmpg123 writes "Warning: Xing stream size off by more than 1% ..." on fd 2 when it opens
    a truncated mp3. With the progress bar on, tag and embed show it only inside the file's
    `damaged_data` note (a `warning: PATH: ...` line and the result's `audio_warnings`), never
    as the library's raw line."""
    from tagger_jax import embedding

    t = np.arange(44100 * 4) / 44100
    sf.write(tmp_path / "whole.mp3", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
             44100, format="MP3")
    data = (tmp_path / "whole.mp3").read_bytes()
    cut = tmp_path / "in" / "cut.mp3"
    cut.parent.mkdir()
    cut.write_bytes(data[:len(data) // 2])
    out = tmp_path / "tags.json"
    assert cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), str(cut)]) == 0
    tag_err = capfd.readouterr().err
    [result] = json.loads(out.read_text())
    damaged = result["audio_warnings"]["damaged_data"]
    assert damaged.startswith(f"{cut}: the decoder reported damaged data") and "Xing" in damaged
    assert "duration_mismatch" in result["audio_warnings"]
    assert cli.main(["embed", "--checkpoint", str(model_dir), str(cut.parent), "--out",
                     str(tmp_path / "emb")]) == 0
    embed_err = capfd.readouterr().err
    for err in (tag_err, embed_err):
        lines = [line.strip() for line in err.replace("\r", "\n").splitlines()]
        assert f"warning: {damaged}" in lines
        raw = [line for line in lines if "Xing" in line and not line.startswith("warning: ")]
        assert raw == [], raw
    stored = embedding.load_embeddings(tmp_path / "emb" / "cut.mp3.npz")
    assert damaged in str(stored["audio_warnings"])


def test_a_folder_that_cannot_be_listed_is_skipped_once_when_named_twice(tmp_path, monkeypatch):
    """A trial named `unr unr/lockeddir`: the unlistable folder was skipped, and counted, twice."""
    import errno

    locked = tmp_path / "locked"
    locked.mkdir()
    walk = os.walk

    def refusing(top, onerror=None, **kwargs):
        if onerror is not None:
            onerror(PermissionError(errno.EACCES, "Permission denied", str(locked)))
        yield from walk(top, onerror=onerror, **kwargs)

    monkeypatch.setattr(audio.os, "walk", refusing)
    found, skipped = audio.scan_inputs([tmp_path, locked])
    assert found == [] and skipped == [
        (locked, "cannot list this directory (Permission denied)")]


def test_directory_search_skips_explain_outputs_and_counts_what_it_skipped(tmp_path, capsys):
    """`tag DIR` over a folder holding an explain run: the files its summary JSON lists (the
    .orig.ogg playback copy, ...) are skipped with that reason; an .orig.ogg no summary lists is
    audio like any other; the skipped lines end with one count per reason."""
    import json

    from tagger_jax.commands._inference_args import print_skipped

    tone = 0.1 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440)
    (tmp_path / "ex").mkdir()
    (tmp_path / "other").mkdir()
    sf.write(tmp_path / "song.wav", tone, 16000)
    sf.write(tmp_path / "ex" / "song.wav.orig.ogg", tone, 16000)
    sf.write(tmp_path / "ex" / "song.wav.attention.rock.kept.ogg", tone, 16000)
    sf.write(tmp_path / "other" / "x.wav.orig.ogg", tone, 16000)  # no summary lists it
    (tmp_path / "ex" / "song.wav.npz").write_bytes(b"PK")
    (tmp_path / "ex" / "index.html").write_text("<html></html>")
    (tmp_path / "ex" / "song.wav.json").write_text(json.dumps({
        "kind": "tagger-jax-explanation", "key": "song.wav",
        "files": {"npz": "song.wav.npz", "json": "song.wav.json", "audio": {
            "original": "song.wav.orig.ogg",
            "maps": [{"method": "attention", "tag": "rock",
                      "kept": "song.wav.attention.rock.kept.ogg"}]}}}))
    (tmp_path / "other" / "meta.json").write_text(json.dumps({"kind": "something else"}))
    (tmp_path / "notes.txt").write_text("not audio")
    skipped = []
    found = [p.relative_to(tmp_path).as_posix()
             for p in tagging.collect_inputs([tmp_path], skipped)]
    assert found == ["other/x.wav.orig.ogg", "song.wav"]
    why = {p.relative_to(tmp_path).as_posix(): w for p, w in skipped}
    for name in ("ex/song.wav.orig.ogg", "ex/song.wav.attention.rock.kept.ogg",
                 "ex/song.wav.npz", "ex/song.wav.json", "ex/index.html"):
        assert why[name].startswith("explain output ("), name
    assert why["notes.txt"].startswith("not audio")
    assert why["other/meta.json"].startswith("not audio")  # a JSON that is no summary
    # A file named directly is an input whatever it is.
    direct = tmp_path / "ex" / "song.wav.orig.ogg"
    assert tagging.collect_inputs([direct]) == [direct]
    # An empty folder named like a file is said, not dropped silently.
    (tmp_path / "dir.wav").mkdir()
    said = []
    assert tagging.collect_inputs([tmp_path / "dir.wav", direct], said) == [direct]
    assert said == [(tmp_path / "dir.wav", "a directory with no files in it")]

    capsys.readouterr()
    print_skipped(skipped)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("skipped: ") for line in err[:3])
    assert err[2] == (f"skipped: {tmp_path / 'ex'}/: 5 explain outputs (files its explanation "
                      "summaries list, and their index)")  # one line for the folder
    assert err[-1] == "skipped 7 file(s): explain output 5, not audio 2"


def test_directory_search_leaves_out_the_runs_own_output_files(tmp_path):
    """`tag DIR --output DIR/results.json` (and `embed DIR --out DIR/emb`): the result file, its
    lock and holder note, a temporary file and a process's part are this run's own files, left out
    of the inputs and of the skipped list; a JSON that is not the run's output is still listed."""
    from tagger_jax import inference, outputs

    tone = 0.1 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440)
    sf.write(tmp_path / "song.wav", tone, 16000)
    own = ["results.json", ".results.json.lock", ".results.json.lock.holder",
           ".results.json.abc123.tmp", "results.json.part1"]
    for name in own + ["other.json"]:
        (tmp_path / name).write_text("{}")
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "song.wav.npz").write_bytes(b"PK")
    (tmp_path / "emb" / "again.wav").write_bytes(b"RIFF")  # under the embed output: left out
    skipped = []
    found = tagging.collect_inputs([tmp_path], skipped,
                                   exclude=outputs.own_files(tmp_path / "results.json"))
    assert found == [tmp_path / "emb" / "again.wav", tmp_path / "song.wav"]
    assert sorted(p.name for p, _ in skipped) == ["other.json", "song.wav.npz"]
    skipped = []
    found = inference.discover([tmp_path], skipped, exclude=[tmp_path / "emb"])
    assert [p for p, _ in found] == [tmp_path / "song.wav"]
    assert sorted(p.name for p, _ in skipped) == sorted(own + ["other.json"])
    # Audio named like an output without an extension is still an input.
    (tmp_path / "x").mkdir()
    sf.write(tmp_path / "x" / "results.wav", tone, 16000)
    assert tagging.collect_inputs([tmp_path / "x"], exclude=outputs.own_files(
        tmp_path / "x" / "results")) == [tmp_path / "x" / "results.wav"]


def test_resume_under_another_spelling_reuses_and_a_replaced_output_is_said(
        model_dir, inputs, tmp_path, monkeypatch, capsys):
    """From a new user's trial: `--resume` with the absolute path of files tagged by a relative
    one tagged every file again and kept both results; a run without --resume replaced an
    existing output's results without a word."""
    out = tmp_path / "tags.json"
    monkeypatch.chdir(inputs)
    assert cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet",
                     "tone.wav", "spec.npy"]) == 0
    first = json.loads(out.read_text())
    first[0]["probabilities"][0] = -1.0  # a marker: reused, not recomputed
    out.write_text(json.dumps(first))
    capsys.readouterr()
    assert cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--resume",
                     "--quiet", str(inputs / "tone.wav"), str(inputs / "spec.npy")]) == 0
    err = capsys.readouterr().err
    assert (f"note: 2 result(s) in {out} name their file another way (a relative or absolute "
            "path, a link): reused under this run's names") in err
    assert "2 of 2 inputs reused" in err
    results = json.loads(out.read_text())
    assert [r["file"] for r in results] == [str(inputs / "tone.wav"), str(inputs / "spec.npy")]
    assert results[0]["probabilities"][0] == -1.0
    assert cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet",
                     "tone.wav"]) == 0
    assert (f"note: {out} exists: this run replaces its 2 earlier result(s); --resume keeps "
            "and reuses them") in capsys.readouterr().err
    # --resume from another working directory (as explain and embed, a verifying user's): the
    # name as given no longer resolves there; the stored absolute path does.
    other = tmp_path / "other.json"
    assert cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(other), "--quiet",
                     "tone.wav"]) == 0
    assert json.loads(other.read_text())[0]["input_path"] == str(inputs / "tone.wav")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(other), "--resume",
                     "--quiet", str(inputs / "tone.wav")]) == 0
    assert "1 of 1 inputs reused" in capsys.readouterr().err
    assert [r["file"] for r in json.loads(other.read_text())] == [str(inputs / "tone.wav")]
    monkeypatch.chdir(inputs)
    # From a new user's trial: `--output victim.wav` replaced the input with JSON, and `--csv`
    # a FLAC or someone's notes. A file that is not this tool's is refused, left as it was.
    from tagger_jax import errors

    victim = inputs / "tone.wav"
    audio_bytes = victim.read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    out.write_text("{}")
    for flag, target in (("--output", victim), ("--output", out), ("--csv", notes),
                         ("--csv", victim)):
        assert cli.main(["tag", "--checkpoint", str(model_dir), flag, str(target), "--quiet",
                         "tone.wav"]) == errors.OUTPUT
        err = capsys.readouterr().err
        kind = ("a result list of this tool (JSON)" if flag == "--output" else
                "a table of this tool (header file,duration_s,...)")
        assert err == (f"error: {flag} {target}: exists and is not {kind}; it is not replaced: "
                       "give another file name, or delete it first\n")
    assert victim.read_bytes() == audio_bytes and notes.read_text() == "my notes"
    assert out.read_text() == "{}"
    out.write_text("")  # an empty file is replaced, silently
    assert cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet",
                     "tone.wav"]) == 0
    assert "exists" not in capsys.readouterr().err
    assert [r["file"] for r in json.loads(out.read_text())] == ["tone.wav"]


def test_csv_table_holds_every_tagged_input_in_input_order(model_dir, inputs, tmp_path, capsys):
    """--csv: the track-level probabilities as a table (file, duration_s, one column per tag
    in the model's order), this run's and reused inputs alike; failed inputs are left out (they
    are listed on stderr); the CSV is never taken for an input of a folder search."""
    import csv

    out, table = tmp_path / "tags.json", tmp_path / "tags.csv"
    base = ["tag", "--checkpoint", str(model_dir), "--output", str(out), "--quiet"]
    assert cli.main([*base, str(inputs / "tone.wav")]) == 0
    rc = cli.main([*base, "--resume", "--csv", str(table), str(inputs / "spec.npy"),
                   str(inputs / "tone.wav"), str(inputs / "empty.mp3")])
    assert rc == 1 and f"table written to {table}" in capsys.readouterr().err
    results = {r["file"]: r for r in json.loads(out.read_text()) if "error" not in r}
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    loaded = checkpoint.load_model(model_dir)
    assert rows[0] == ["file", "duration_s", *loaded.tags]
    assert [r[0].split("/")[-1] for r in rows[1:]] == ["spec.npy", "tone.wav"]  # input order
    for row in rows[1:]:
        want = results[row[0]]
        assert float(row[1]) == want["duration_s"]
        np.testing.assert_array_equal(np.array(row[2:], float), want["probabilities"])
    (tmp_path / "link.json").symlink_to(out)
    for same in (out, tmp_path / "link.json"):
        assert cli.main(["tag", "--checkpoint", str(model_dir), "--output", str(out), "--csv",
                         str(same), str(inputs / "spec.npy")]) == errors.USAGE
        assert "is the --output file" in capsys.readouterr().err
    folder = tmp_path / "music"
    folder.mkdir()
    (folder / "a.npy").write_bytes((inputs / "spec.npy").read_bytes())
    argv = ["tag", "--checkpoint", str(model_dir), "--quiet", "--csv", str(folder / "t.csv"),
            str(folder)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(argv) == 0  # the second run finds the first's table in the folder
    said = capsys.readouterr().err.splitlines()
    assert [line for line in said if "t.csv" in line] == [  # not a skipped input
        f"{folder / 't.csv'} unchanged (it held this table)"]  # the same numbers again
    assert len((folder / "t.csv").read_text().splitlines()) == 2
