"""The shared inference path (tagger_jax.inference) and its consumers: identical windows computed
once, streaming windows with bounded memory, `tag` and `explain` agreeing on a track's tags, and
embeddings that are exactly what the classifier reads."""
from __future__ import annotations

import hashlib
import json

import jax
import numpy as np
import pytest
import soundfile as sf

from tagger_jax import checkpoint, cli, embedding, inference
from tagger_jax.config_base import base_config
from tagger_jax.models import build_model, geometry, get_architecture
from tagger_jax.models.frontends import PonsFrontEnd

TAGS = ("a", "b", "c", "d", "e")
CHUNK = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = base_config()
    m = config.model
    m.conv_channels, m.attention_channels, m.attention_heads, m.intermediate = 2, 16, 2, 32
    config.features.chunk_frames = CHUNK
    model = build_model(config.model, len(TAGS))
    variables = model.init(jax.random.key(2), np.zeros((1, 96, CHUNK), np.float32))
    variables = jax.tree.map(lambda a: a + 0.05, variables)
    return checkpoint.save_model(tmp_path_factory.mktemp("m") / "model", variables, config, TAGS)


@pytest.fixture(scope="module")
def engine(model_dir):
    return inference.Engine(checkpoint.load_model(model_dir), batch_size=8, load_workers=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(4)
    for name, frames in (("long.npy", 111), ("mid.npy", 40)):
        np.save(d / name, rng.normal(-30, 10, (96, frames)).astype(np.float32))
    (d / "broken.npy").write_bytes(b"not numpy")
    return d


def _model_probs(engine, windows):
    loaded = engine.loaded
    return np.asarray(jax.nn.sigmoid(loaded.model.apply(loaded.variables, windows)))


def test_registry_states_each_architectures_geometry():
    assert get_architecture({"architecture": "lee_won"}).waveform
    assert not get_architecture({"architecture": "pons_pons"}).has_attention
    lee = geometry({"architecture": "lee_won"}, 16000, 256, 256)
    assert lee.chunk == 65610 and lee.positions == 270
    assert lee.position_s == pytest.approx(243 / 16000)
    pons = geometry({"architecture": "pons_won"}, 16000, 256, 256)
    assert pons.chunk == 256 and pons.position_s == pytest.approx(0.016)
    with pytest.raises(ValueError, match="pons_won"):
        get_architecture({"architecture": "vgg"})


def test_window_plans():
    np.testing.assert_array_equal(inference.window_starts(100, 32), [0, 32, 64, 68])
    np.testing.assert_array_equal(inference.window_starts(100, 32, hop=20), [0, 20, 40, 60, 68])
    np.testing.assert_array_equal(inference.window_starts(100, 32, windows="paper", num_chunks=4),
                                  [0, 17, 34, 51])
    geom = geometry(None, 16000, 256, 32)
    assert inference.WindowPlan(hop_s=0.1).hop_steps(geom) == 6  # 0.1 s / 16 ms, rounded
    with pytest.raises(ValueError, match="longer than one window"):
        inference.WindowPlan(hop_s=1.0).hop_steps(geom)
    with pytest.raises(ValueError, match="positive"):
        inference.WindowPlan(hop_s=0.0)
    for bad in ("inf", "nan"):  # a trial's --hop inf was an OverflowError deep in the geometry
        with pytest.raises(ValueError, match="positive"):
            inference.WindowPlan(hop_s=float(bad))
    with pytest.raises(ValueError, match="longer than one window"):
        inference.WindowPlan(hop_s=1e308).hop_steps(geom)


def test_short_clips_identical_windows_are_computed_once(engine, tmp_path):
    """40 clips shorter than a window, 16 paper chunks each: 40 windows computed, not 640."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        paths.append(tmp_path / f"s{i:02d}.npy")
        np.save(paths[-1], rng.normal(-30, 10, (96, 5 + i % 7)).astype(np.float32))
    got = {}
    packer = engine.run(engine.file_inputs(paths), inference.WindowPlan("paper"),
                        engine.predict_fn(), lambda p, out: got.__setitem__(p.item.name, out),
                        lambda item, e: pytest.fail(str(e)))
    assert packer.rows_computed == 40
    tiled = np.stack([np.load(p)[:, np.arange(CHUNK) % np.load(p).shape[1]] for p in paths])
    expected = _model_probs(engine, tiled)
    for i, p in enumerate(paths):
        probs = got[str(p)]["probabilities"]
        assert probs.shape == (16, len(TAGS))  # every chunk reported, computed once
        np.testing.assert_allclose(probs, np.broadcast_to(expected[i], probs.shape), atol=2e-6)


def test_streaming_keeps_at_most_one_batch_of_windows_on_the_host():
    """A long input at a fine hop: windows are views pulled as batches fill, never all at once."""
    geom = geometry(None, 16000, 256, CHUNK)
    x = np.random.default_rng(1).normal(size=(96, 4000)).astype(np.float32)
    item = inference.Input("k", "long", lambda: x, "f")
    p = inference.prepare(item, geom, inference.WindowPlan(hop_s=0.016))  # hop: one frame
    assert len(p.starts) == 4000 - CHUNK + 1
    first = next(p.windows())
    assert np.shares_memory(first, p.x)  # a view, not a copy
    packer = inference.Packer(lambda x: {"m": x.mean(axis=(1, 2))}, batch_size=16)
    done = packer.add("k", ({"x": w} for w in p.windows()), len(p.unique_starts), p.inverse)
    done += packer.flush()
    assert packer.peak_rows <= 16 and packer.rows_computed == len(p.starts)
    [(key, out)] = done
    expected = np.array([x[:, s:s + CHUNK].mean() for s in p.starts])
    np.testing.assert_allclose(out["m"], expected, rtol=1e-5)


class _Bar:
    """Records what a tqdm bar is asked to show (`rows_postfix`)."""

    def __init__(self):
        self.postfixes: list[str] = []
        self.redraws = 0

    def set_postfix_str(self, text, refresh=True):
        self.postfixes.append(text)

    def update(self, n=1):
        self.redraws += 1


def test_a_long_input_shows_its_windows_on_the_bar_and_a_short_one_does_not(engine, files):
    """From a new user's trial: a bar over files sat at 0% through a 30-minute track. A bar's
    postfix now counts the computed windows of an input longer than one batch."""
    bar = _Bar()
    items = engine.file_inputs([files / "long.npy", files / "mid.npy"])
    names = {it.key: it.name for it in items}
    hop = inference.WindowPlan(hop_s=0.016 * 2)  # long: 41 windows (6 batches); mid: 5
    engine.run(items, hop, engine.predict_fn(), lambda p, out: None, lambda item, e: None,
               engine.rows_postfix(bar, names.__getitem__))
    shown = [t for t in bar.postfixes if t]
    assert shown and all(t.startswith(f"{names['long.npy']}: ") and t.endswith("/41 windows")
                         for t in shown)  # the short input is never shown
    counts = [int(t.split(": ")[1].split("/")[0]) for t in shown]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] < 41
    assert bar.postfixes[-1] == ""  # cleared when the long input finished
    assert bar.redraws == len(bar.postfixes)  # each through update(0): tqdm's rate limit


def test_embed_of_paths_instead_of_inputs_is_one_line(engine, files):
    """A trial's `embed(engine, ["x.flac"])` failed with AttributeError: 'str' object has no
    attribute 'key'."""
    with pytest.raises(TypeError, match=r"^embed takes inference.Input items, got a str; for "
                       r"files pass engine.file_inputs\(paths\)$"):
        embedding.embed(engine, [str(files / "mid.npy")])


def test_a_hop_far_from_whole_input_steps_is_noted_once(engine, files, capsys):
    """From new users' trials: `--hop 0.001` ran at one 16 ms step without a word. A hop that
    differs by more than 10% from what the model can take is one `note:` line; `--hop 0.1`
    (6 steps, 0.096 s) is not."""
    geom = engine.geometry
    assert inference.WindowPlan(hop_s=0.1).hop_note(geom) is None
    assert inference.WindowPlan().hop_note(geom) is None
    assert inference.WindowPlan(hop_s=0.001).hop_note(geom) == (
        "note: --hop 0.001 s is 0.016 s here: a whole number of the model's input steps "
        "(16 ms each)")
    embedding.embed(engine, engine.file_inputs([files / "mid.npy"]),
                    inference.WindowPlan(hop_s=0.02))
    assert capsys.readouterr().err.count("note: --hop 0.02 s is 0.016 s here") == 1


def test_packer_reports_each_inputs_rows_as_batches_come_back():
    calls = []
    packer = inference.Packer(lambda x: {"m": x.sum(axis=1)}, batch_size=4,
                              on_rows=lambda *a: calls.append(a))
    rows = ({"x": np.full(3, i, np.float32)} for i in range(10))
    packer.add("a", rows, 10)
    packer.add("b", ({"x": np.zeros(3, np.float32)} for _ in range(2)), 2)
    packer.flush()
    assert [c for c in calls if c[0] == "a"] == [("a", 4, 10), ("a", 8, 10), ("a", 10, 10)]
    assert [c for c in calls if c[0] == "b"] == [("b", 2, 2)]


def test_outputs_do_not_depend_on_batch_size_or_batch_mates(model_dir, files):
    loaded = checkpoint.load_model(model_dir)
    results = {}
    for bs in (1, 8):
        eng = inference.Engine(loaded, batch_size=bs, load_workers=1)
        items = eng.file_inputs([files])
        got = {}
        eng.run(items, inference.WindowPlan(hop_s=0.1), eng.predict_fn(),
                lambda p, out: got.__setitem__(p.item.key, out["probabilities"]),
                lambda item, e: None)
        results[bs] = got
    assert sorted(results[1]) == ["long.npy", "mid.npy"]
    for key in results[1]:
        np.testing.assert_allclose(results[8][key], results[1][key], atol=1e-6)


def test_tag_and_explain_report_the_same_tags(model_dir, files, tmp_path, capsys):
    tags_json = tmp_path / "tags.json"
    for windows in (["--hop", "0.2"], ["--windows", "paper"]):
        assert cli.main(["tag", "--checkpoint", str(model_dir), str(files / "long.npy"),
                         "--output", str(tags_json), "--quiet", "--top-k", "5", *windows]) == 0
        [tagged] = json.loads(tags_json.read_text())
        out = tmp_path / f"explain{len(windows)}{''.join(windows)}"
        assert cli.main(["explain", "--checkpoint", str(model_dir), str(files / "long.npy"),
                         "--out", str(out), "--methods", "attention", "--no-plot",
                         "--no-progress", *windows]) == 0
        summary = json.loads((out / "long.npy.json").read_text())
        assert [t["tag"] for t in summary["top_tags"]] == [t["tag"] for t in tagged["top_tags"]]
        for a, b in zip(summary["top_tags"], tagged["top_tags"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=2e-6)
        with np.load(out / "long.npy.npz") as z:
            np.testing.assert_allclose(z["chunk_probabilities"], tagged["chunk_probabilities"],
                                       atol=2e-6)
            np.testing.assert_allclose(z["probabilities"], tagged["probabilities"], atol=2e-6)


def test_embeddings_are_what_the_classifier_reads(engine, files):
    items = engine.file_inputs([files])
    e = embedding.embed(engine, items, inference.WindowPlan(hop_s=0.3))
    assert e.names == [str(files / "long.npy"), str(files / "mid.npy")]
    assert list(e.failed) == [str(files / "broken.npy")]
    params = engine.loaded.variables["params"]
    x = np.load(files / "long.npy")
    starts = inference.window_starts(111, CHUNK, hop=19)
    windows = np.stack([x[:, s:s + CHUNK] for s in starts])
    w = e.windows[0]
    np.testing.assert_allclose(w["window_starts_s"], starts * 256 / 16000)
    # The classifier applied to the embedding gives the model's logits.
    logits = engine.loaded.model.apply(engine.loaded.variables, windows)
    cls = params["classifier"]
    np.testing.assert_allclose(w["window_embedding"] @ np.asarray(cls["kernel"])
                               + np.asarray(cls["bias"]), logits, atol=1e-5)
    # The front-end features are the Pons front-end's output averaged over time.
    fe = PonsFrontEnd(2).apply({"params": params["frontend"],
                                "batch_stats": engine.loaded.variables["batch_stats"]["frontend"]},
                               windows, False)
    np.testing.assert_allclose(w["window_frontend"], np.asarray(fe).mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(e.embedding[0], w["window_embedding"].mean(0), atol=1e-6)
    np.testing.assert_allclose(e.probabilities[0], _model_probs(engine, windows).mean(0),
                               atol=2e-6)


def test_embed_cli_writes_npz_and_resumes(model_dir, files, tmp_path, capsys):
    out = tmp_path / "emb"
    argv = ["embed", "--checkpoint", str(model_dir), str(files), "--out", str(out),
            "--no-progress"]
    assert cli.main(argv) == 1  # broken.npy failed
    captured = capsys.readouterr()
    assert "embedded 2 input(s)" in captured.err and "broken.npy" not in captured.out
    assert captured.out == (  # stdout: where the output is; the counts go to stderr
        f"track-level embeddings of this run's finished inputs: {out / 'embeddings.npz'}\n")
    [line] = [line for line in captured.err.splitlines() if "broken.npy" in line]
    assert line.startswith(f"failed: {files / 'broken.npy'}: ")  # on stderr, as tag, explain
    merged = embedding.load_embeddings(out / "embeddings.npz")
    assert [n.split("/")[-1] for n in merged["names"]] == ["long.npy", "mid.npy"]
    assert merged["embedding"].shape == (2, 16) and merged["probabilities"].shape == (2, 5)
    np.testing.assert_array_equal(merged["num_windows"], [4, 2])
    loaded = checkpoint.load_model(model_dir)
    for z in (merged, embedding.load_embeddings(out / "long.npy.npz")):  # tags travel along
        assert list(z["tag_names"]) == list(loaded.tags) and len(z["tag_names"]) == 5
        assert str(z["model_signature"]) == inference.model_signature(loaded)
    one = embedding.load_embeddings(out / "long.npy.npz")
    assert one["window_embedding"].shape == (4, 16) and str(one["name"]).endswith("long.npy")
    assert json.loads((out / "failures.json").read_text())["broken.npy"]["input"].endswith(
        "broken.npy")
    mtime = (out / "long.npy.npz").stat().st_mtime_ns
    (out / "run.part1.json").write_text("{}")  # left by a killed multi-process run
    assert cli.main(argv) == 1
    assert "skipped 2 already finished" in capsys.readouterr().err
    assert (out / "long.npy.npz").stat().st_mtime_ns == mtime
    assert not (out / "run.part1.json").exists()


def test_output_keys_keep_other_scripts_and_fit_a_file_name():
    """Keys of ASCII names are those of every earlier version (docs/explanations.md's example);
    letters of other scripts stay (a trial's `日本.wav` and `中文.wav` both became `wav`), and a
    key is cut by bytes, which file systems count, to whole characters."""
    key = inference.safe_key
    assert key("my song (live).wav") == "my_song_live_.wav"
    assert key("a__b c") == "a__b_c" and key("..x..") == "x" and key("🎵") == "input"
    assert key("日本.wav") == "日本.wav" and key("中文.wav") == "中文.wav"
    assert key("Привет мир 🎵.flac") == "Привет_мир_.flac"
    assert key("e\u0301te\u0301.wav") == key("\u00e9t\u00e9.wav") == "\u00e9t\u00e9.wav"  # NFC
    long_ascii, long_cjk = "x" * 130, "ソ" * 80 + ".wav"
    assert key(long_ascii) == "x" * 109 + "-" + hashlib.sha1(long_ascii.encode()).hexdigest()[:10]
    cut = key(long_cjk)
    assert len(cut.encode()) <= 120 and cut.startswith("ソ" * 36 + "-") and len(cut) == 36 + 11
    assert key("ソ" * 80 + ".flac") != cut


def test_embed_writes_outputs_named_in_other_scripts(model_dir, files, tmp_path, capsys):
    d = tmp_path / "collection"
    d.mkdir()
    long_name = "長い曲名" * 20 + ".npy"  # 244 bytes: a file name near the limit of 255
    for name in ("日本.npy", "中文.npy", long_name):
        (d / name).write_bytes((files / "mid.npy").read_bytes())
    out = tmp_path / "emb"
    assert cli.main(["embed", "--checkpoint", str(model_dir), str(d), "--out", str(out),
                     "--no-progress"]) == 0
    written = sorted(p.name for p in out.glob("*.npz") if p.name != "embeddings.npz")
    assert written[:2] == ["中文.npy.npz", "日本.npy.npz"] and len(written) == 3
    assert written[2].startswith("長い曲名" * 9)
    merged = embedding.load_embeddings(out / "embeddings.npz")
    assert sorted(str(n) for n in merged["names"]) == sorted(
        str(d / n) for n in ("日本.npy", "中文.npy", long_name))


def test_an_input_named_like_the_merged_file_keeps_its_npz(model_dir, tmp_path, capsys):
    """A trial's audio file `embeddings` (no suffix) had its NPZ replaced by the merged
    embeddings.npz, and was embedded again on every rerun."""
    d = tmp_path / "collection"
    d.mkdir()
    sf.write(d / "embeddings", 0.3 * np.sin(np.arange(16000) * 0.2), 16000, format="WAV")
    out = tmp_path / "emb"
    argv = ["embed", "--checkpoint", str(model_dir), str(d), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    assert (f"note: {d / 'embeddings'}: outputs named embeddings.* would take the name of one of "
            "the run's own files") in capsys.readouterr().err
    assert str(embedding.load_embeddings(out / "embeddings-2.npz")["name"]) == str(
        d / "embeddings")
    assert list(embedding.load_embeddings(out / "embeddings.npz")["keys"]) == ["embeddings-2"]
    assert cli.main(argv) == 0
    assert "skipped 1 already finished" in capsys.readouterr().err


def test_a_folder_search_lists_an_embed_folder_in_one_line(model_dir, files, tmp_path, capsys):
    """A trial scanned a tree holding an earlier embed folder: each of its NPZs got a `skipped:
    ...: not audio` line (129 of them), where an explain folder gets one line."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("long.npy", "mid.npy"):
        (tree / name).write_bytes((files / name).read_bytes())
    assert cli.main(["embed", "--checkpoint", str(model_dir), str(tree), "--out",
                     str(tree / "emb"), "--no-progress"]) == 0
    np.savez(tree / "emb" / "mine.npz", x=np.zeros(3))  # not embed's: still listed by itself
    capsys.readouterr()
    assert cli.main(["tag", "--checkpoint", str(model_dir), "--quiet", str(tree)]) == 0
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped")]
    assert skipped == [
        f"skipped: {tree / '.emb.lock'}: lock file (of a tagger-jax run, not audio)",
        f"skipped: {tree / 'emb' / 'mine.npz'}: not audio (suffix .npz and the content is no "
        "known audio format)",
        f"skipped: {tree / 'emb'}/: 3 embed outputs (NPZs of tagger-jax embed, and their merged "
        "file)",
        "skipped 5 file(s): embed output 3, lock file 1, not audio 1"]


def test_embed_and_explain_refuse_each_others_npz(model_dir, files, tmp_path, capsys):
    """Both write KEY.npz and failures.json: a trial's embed into an explain folder replaced the
    maps (and explain then took the input for finished), and explain into an embed folder
    replaced the embeddings. Each refuses the other's folder, one line, exit status 2, nothing
    written."""
    one = str(files / "mid.npy")
    ex, emb = tmp_path / "ex", tmp_path / "emb"
    assert cli.main(["explain", "--checkpoint", str(model_dir), one, "--out", str(ex),
                     "--methods", "attention", "--no-plot", "--no-report", "--no-progress"]) == 0
    assert cli.main(["embed", "--checkpoint", str(model_dir), one, "--out", str(emb),
                     "--no-progress"]) == 0
    maps, vectors = (ex / "mid.npy.npz").read_bytes(), (emb / "mid.npy.npz").read_bytes()
    capsys.readouterr()
    assert cli.main(["embed", "--checkpoint", str(model_dir), one, "--out", str(ex),
                     "--no-progress"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"error: {ex} holds outputs of tagger-jax explain (3 file(s), e.g. "
                    "index.html); embed writes files of the same names: give embed another --out")
    assert cli.main(["explain", "--checkpoint", str(model_dir), one, "--out", str(emb),
                     "--methods", "attention", "--no-progress"]) == 2
    assert (f"error: {emb} holds outputs of tagger-jax embed (2 file(s), e.g. embeddings.npz); "
            "explain writes") in capsys.readouterr().err
    other = tmp_path / "other.npy"  # another input: the folder is refused all the same (a
    other.write_bytes((files / "long.npy").read_bytes())  # verifier's embed deleted a summary)
    assert cli.main(["embed", "--checkpoint", str(model_dir), str(other), "--out", str(ex),
                     "--no-progress"]) == 2
    assert (ex / "mid.npy.npz").read_bytes() == maps and (emb / "mid.npy.npz").read_bytes() == (
        vectors)
    assert not (emb / "mid.npy.json").exists() and not (ex / "embeddings.npz").exists()


def test_a_failure_reached_through_another_folder_is_recorded_once(model_dir, files, tmp_path,
                                                                    capsys):
    """A trial explained `coll`, then `coll/bad`: each broken file was in failures.json twice
    (`bad__x` and `x`), and the index said 10 failed for 5. The entry of this run's key stays."""
    bad = tmp_path / "coll" / "bad"
    bad.mkdir(parents=True)
    (bad / "broken.npy").write_bytes(b"not numpy")
    for command, extra in (("embed", []), ("explain", ["--methods", "attention", "--no-plot"])):
        out = tmp_path / command
        for named in (bad.parent, bad):
            assert cli.main([command, "--checkpoint", str(model_dir), str(named), "--out",
                             str(out), "--no-progress", *extra]) == 1
        assert list(json.loads((out / "failures.json").read_text())) == ["broken.npy"], command
    assert "1 failed" in (tmp_path / "explain" / "index.html").read_text()


def test_outputs_of_files_named_from_another_directory_are_reused(model_dir, files, tmp_path,
                                                                  capsys, monkeypatch):
    """From a verifying user's trial: `explain a/x.npy b/x.npy` run in one folder, then the same
    files by absolute paths from its parent: the summaries held the names as typed, relative to
    the first run's folder, so every file was "another input's" and explained again under new
    names (and listed twice in the index). Outputs store the absolute path too (`input_path`)."""
    from tagger_jax.explain.report import SUMMARY_SUFFIX

    here = tmp_path / "here"
    for d, src in (("a", "long.npy"), ("b", "mid.npy")):
        (here / d).mkdir(parents=True)
        (here / d / "x.npy").write_bytes((files / src).read_bytes())
    out, explained = tmp_path / "emb", tmp_path / "exp"

    def run(*inputs):
        assert cli.main(["embed", "--checkpoint", str(model_dir), "--out", str(out),
                         "--no-progress", *map(str, inputs)]) == 0
        assert cli.main(["explain", "--checkpoint", str(model_dir), "--out", str(explained),
                         "--no-progress", "--no-plot", "--methods", "attention",
                         *map(str, inputs)]) == 0
        return capsys.readouterr()

    monkeypatch.chdir(here)
    run("a/x.npy", "b/x.npy")
    summary = json.loads((explained / f"x.npy{SUMMARY_SUFFIX}").read_text())
    assert (summary["input"], summary["input_path"]) == ("a/x.npy", str(here / "a" / "x.npy"))
    assert str(embedding.load_embeddings(out / "x.npy.npz")["input_path"]) == str(
        here / "a" / "x.npy")
    monkeypatch.chdir(tmp_path)
    said = run(here / "b" / "x.npy", here / "a" / "x.npy")
    assert said.err.count("skipped 2 already finished") == 2, said.err
    assert "holds another input's output" not in said.err
    assert {p.name for p in explained.glob(f"*{SUMMARY_SUFFIX}") if p.name.startswith("x")} == {
        f"x.npy{SUMMARY_SUFFIX}", f"x.npy-2{SUMMARY_SUFFIX}"}
    assert {p.name for p in out.glob("x*.npz")} == {"x.npy.npz", "x.npy-2.npz"}
    assert (explained / "index.html").read_text().count("x.npy-2.html") == 1
    # The folder moved (`mv W Wmv`, a second verifying user's): the stored absolute paths are
    # gone, the names as given find the files again.
    here.rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    said = run("a/x.npy", "b/x.npy")
    assert said.err.count("skipped 2 already finished") == 2, said.err
    assert {p.name for p in out.glob("x*.npz")} == {"x.npy.npz", "x.npy-2.npz"}


def test_outputs_of_other_inputs_under_the_same_name_are_kept(model_dir, files, tmp_path,
                                                               capsys, monkeypatch):
    """`A/x.npy` embedded (and explained) earlier, then `B/x.npy` alone: both have the key
    `x.npy`; the second run writes `x.npy-2` and says so, and A's outputs stay. The same file
    named by another path is the same input."""
    import os

    from tagger_jax.explain.report import SUMMARY_SUFFIX

    for d in ("A", "B"):
        (tmp_path / d).mkdir()
    (tmp_path / "A" / "x.npy").write_bytes((files / "long.npy").read_bytes())
    (tmp_path / "B" / "x.npy").write_bytes((files / "mid.npy").read_bytes())
    out, explained = tmp_path / "emb", tmp_path / "exp"

    def run(*inputs):
        assert cli.main(["embed", "--checkpoint", str(model_dir), "--out", str(out),
                         "--no-progress", *map(str, inputs)]) == 0
        assert cli.main(["explain", "--checkpoint", str(model_dir), "--out", str(explained),
                         "--no-progress", "--no-plot", "--no-report", "--methods", "attention",
                         *map(str, inputs)]) == 0
        return capsys.readouterr()

    run(tmp_path / "A" / "x.npy")
    said = run(tmp_path / "B" / "x.npy")
    assert f"note: {out}/x.npy.npz holds another input's output (kept): " \
           f"{tmp_path / 'B' / 'x.npy'} is written as x.npy-2.npz" in said.err
    assert f"note: {explained}/x.npy{SUMMARY_SUFFIX} holds another input's output (kept): " \
           f"{tmp_path / 'B' / 'x.npy'} is written as x.npy-2{SUMMARY_SUFFIX}" in said.err
    assert str(embedding.load_embeddings(out / "x.npy.npz")["name"]).startswith(
        str(tmp_path / "A"))
    assert str(embedding.load_embeddings(out / "x.npy-2.npz")["name"]).startswith(
        str(tmp_path / "B"))
    assert embedding.load_embeddings(out / "x.npy.npz")["window_embedding"].shape[0] == 4
    assert embedding.load_embeddings(out / "embeddings.npz")["keys"].tolist() == ["x.npy-2"]
    summaries = [json.loads((explained / f"{k}{SUMMARY_SUFFIX}").read_text())["input"]
                 for k in ("x.npy", "x.npy-2")]
    assert [s.split("/")[-2] for s in summaries] == ["A", "B"]
    # Named in the other order, with one more file of that name first (a trial's `music/*/x`):
    # A and B keep their outputs in both commands (explain wrote them again under `x.npy-2-2`
    # and `x.npy-3` before), the new file takes the next free key.
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "x.npy").write_bytes((files / "long.npy").read_bytes())
    said = run(tmp_path / "0" / "x.npy", tmp_path / "B" / "x.npy", tmp_path / "A" / "x.npy")
    assert said.err.count("skipped 2 already finished") == 2, said.err
    assert (f"note: 1 input(s) have outputs in {explained} under the file names of an earlier "
            "run that reached them another way (another named folder, or files of one name in "
            f"another order; e.g. {tmp_path / 'A' / 'x.npy'}: x.npy{SUMMARY_SUFFIX})") in said.err
    assert {p.name for p in explained.glob(f"x*{SUMMARY_SUFFIX}")} == {
        f"x.npy{SUMMARY_SUFFIX}", f"x.npy-2{SUMMARY_SUFFIX}", f"x.npy-3{SUMMARY_SUFFIX}"}
    summaries = [json.loads((explained / f"{k}{SUMMARY_SUFFIX}").read_text())["input"]
                 for k in ("x.npy", "x.npy-2", "x.npy-3")]
    assert [s.split("/")[-2] for s in summaries] == ["A", "B", "0"]
    monkeypatch.chdir(tmp_path)  # the same file by a relative path is the same input
    item = inference.Input("x.npy", os.path.join("A", "x.npy"), lambda: None, "")
    assert inference.same_input(str(tmp_path / "A" / "x.npy"), item)
    assert not inference.same_input(str(tmp_path / "B" / "x.npy"), item)
    assert not inference.same_input("synthetic_tags:test[0]", item)


def test_embed_reuses_outputs_of_files_named_before_from_another_folder(model_dir, files,
                                                                        tmp_path, capsys):
    """From a new user's trial: a folder embedded, then one of its subfolders: each file's key
    is its path relative to the folder named, so every output was written again under a new
    name (`rock__live_sets__x.npz` and `x.npz`, both read by a glob). The same file keeps its
    output, reused and said so."""
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    (music / "top.npy").write_bytes((files / "mid.npy").read_bytes())
    (music / "sub" / "deep.npy").write_bytes((files / "long.npy").read_bytes())
    out = tmp_path / "emb"

    def run(*inputs):
        assert cli.main(["embed", "--checkpoint", str(model_dir), "--out", str(out),
                         "--no-progress", *map(str, inputs)]) == 0
        return capsys.readouterr()

    run(music)
    before = sorted(p.name for p in out.glob("*.npz"))
    assert before == ["embeddings.npz", "sub__deep.npy.npz", "top.npy.npz"]
    said = run(music / "sub")
    assert "skipped 1 already finished" in said.err, said.err
    assert (f"note: 1 input(s) have outputs in {out} under the file names of an earlier run "
            "that reached them another way (another named folder, or files of one name in "
            f"another order; e.g. {music / 'sub' / 'deep.npy'}: sub__deep.npy.npz)") in said.err
    assert sorted(p.name for p in out.glob("*.npz")) == before
    assert embedding.load_embeddings(out / "embeddings.npz")["keys"].tolist() == ["sub__deep.npy"]
    # Files of one name from two folders take x.npy and x.npy-2; named in the other order they
    # keep them (they swapped keys and were embedded again).
    for d, src in (("c", "mid.npy"), ("d", "long.npy")):
        (music / d).mkdir()
        (music / d / "x.npy").write_bytes((files / src).read_bytes())

    def keys():
        return {str(embedding.load_embeddings(p)["name"]): p.stem for p in out.glob("x*.npz")}

    run(music / "c" / "x.npy", music / "d" / "x.npy")
    first = keys()
    assert first == {str(music / "c" / "x.npy"): "x.npy", str(music / "d" / "x.npy"): "x.npy-2"}
    said = run(music / "d" / "x.npy", music / "c" / "x.npy")
    assert "skipped 2 already finished" in said.err, said.err
    assert keys() == first


def test_an_interrupted_embed_merges_the_inputs_it_finished(engine, files, tmp_path,
                                                             monkeypatch):
    """From a new user's trial: after Ctrl-C six NPZs had finished but embeddings.npz was not
    written (or an earlier run's stayed). The interrupted run merges what it finished; an
    input whose NPZ is of an earlier version of it is left out of the merged file."""
    out = tmp_path / "emb"
    items = engine.file_inputs([files / "long.npy", files / "mid.npy"])
    write = embedding._write_npz
    written = []

    def interrupted_after_one(path, arrays):
        if path.name != embedding.MERGED and written:
            raise KeyboardInterrupt
        write(path, arrays)
        written.append(path.name)

    monkeypatch.setattr(embedding, "_write_npz", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt) as stopped:
        embedding.embed_inputs(engine, items, out, progress=False)
    assert stopped.value.__notes__ == [  # what the interrupt line says it kept
        f"1 of 2 input(s) embedded in this run are in {out}; running it again embeds the "
        "other 1"]
    merged = embedding.load_embeddings(out / "embeddings.npz")
    assert merged["keys"].tolist() == [written[0].removesuffix(".npz")]
    assert sorted(p.name for p in out.glob("*.npz")) == sorted([written[0], "embeddings.npz"])
    # The finished input changes, and the next run is interrupted before it is done again: its
    # NPZ (of the old version) is not merged.
    copy = tmp_path / "x.npy"
    copy.write_bytes((files / "mid.npy").read_bytes())
    monkeypatch.setattr(embedding, "_write_npz", write)
    embedding.embed_inputs(engine, engine.file_inputs([copy]), tmp_path / "e2", progress=False)
    np.save(copy, np.load(copy) + 1.0)
    written[:] = ["something"]  # every input NPZ write is interrupted now
    monkeypatch.setattr(embedding, "_write_npz", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        embedding.embed_inputs(engine, engine.file_inputs([copy]), tmp_path / "e2",
                               progress=False)
    assert (tmp_path / "e2" / "x.npy.npz").exists()
    assert not (tmp_path / "e2" / "embeddings.npz").exists()


def test_embed_of_dataset_records_names_their_source_clips_and_labels(engine, tmp_path):
    """A record's `path` (else `clip_id`) travels into its NPZ as `source` and into the merged
    file as `sources`, so rows of `embed --dataset` can be matched to the user's clips; its
    labels as `labels` with the dataset's `label_names`."""
    rng = np.random.default_rng(5)
    records = [{"mel": rng.normal(-30, 10, (96, 40)).astype(np.float32), "tags": np.eye(5)[i],
                **fields} for i, fields in enumerate([
                    {"path": b"pieces/a.flac", "clip_id": b"a"}, {"clip_id": np.array(b"b")}, {}])]
    items = inference.source_inputs(records, "mel", "toy", "holdout", label_names=TAGS[::-1])
    report = embedding.embed_inputs(engine, items, tmp_path, progress=False)
    assert len(report.done) == 3 and not report.failed
    merged = embedding.load_embeddings(tmp_path / "embeddings.npz")
    assert list(merged["sources"]) == ["pieces/a.flac", "b", ""]
    # The records' labels, in the dataset's tag order: a linear probe's targets.
    np.testing.assert_array_equal(merged["labels"], np.eye(5)[:3].astype(np.uint8))
    assert list(merged["label_names"]) == list(TAGS[::-1])
    assert list(merged["names"]) == ["toy:holdout[0]", "toy:holdout[1]", "toy:holdout[2]"]
    assert str(embedding.load_embeddings(tmp_path / f"{items[0].key}.npz")["source"]) == (
        "pieces/a.flac")


def test_dataset_records_carry_the_audio_warnings_their_build_recorded(engine, tmp_path,
                                                                      monkeypatch):
    """A new user's trial: `embed --dataset` wrote `audio_warnings` "{}" (a clean input) for
    clips whose build had recorded clipping, while `explain --dataset` reported it. The
    warnings now travel with the record's input (`inference.dataset_inputs`), for every
    command that reads a split."""
    import tagger_jax.datasets as datasets

    rng = np.random.default_rng(6)
    records = [{"mel": rng.normal(-30, 10, (96, 40)).astype(np.float16), "clip_id": c}
               for c in (b"a", b"b")]
    monkeypatch.setattr(datasets, "load_split", lambda *args: (records, TAGS))
    said = {"b": {"clipping": "songs/b.wav: 4.6% of samples at full scale (clipped)"}}
    monkeypatch.setattr(inference, "record_warnings", lambda *args: said)
    items = engine.dataset_inputs("toy", "heldout")
    report = embedding.embed_inputs(engine, items, tmp_path, progress=False)
    assert len(report.done) == 2 and not report.failed
    stored = [json.loads(str(embedding.load_embeddings(tmp_path / f"{it.key}.npz")[
        "audio_warnings"])) for it in items]
    assert stored == [{}, said["b"]]


def test_embed_recomputes_a_damaged_npz_and_drops_a_stale_merged_file(model_dir, files,
                                                                     tmp_path, capsys):
    """A per-input NPZ cut short (a full disk, a killed copy) is computed again, not a crash; a
    run in which no input finishes leaves no earlier run's embeddings.npz behind."""
    out = tmp_path / "emb"
    argv = ["embed", "--checkpoint", str(model_dir), str(files / "long.npy"),
            str(files / "mid.npy"), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    (out / "long.npy.npz").write_bytes((out / "long.npy.npz").read_bytes()[:500])
    capsys.readouterr()
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "embedded 1 input(s), skipped 1 already finished, 0 failed" in captured.err
    assert embedding.load_embeddings(out / "long.npy.npz")["window_embedding"].shape == (4, 16)
    assert cli.main(["embed", "--checkpoint", str(model_dir), str(files / "broken.npy"),
                     "--out", str(out), "--no-progress"]) == 1
    assert not (out / "embeddings.npz").exists()
    assert "embedded 0 input(s)" in capsys.readouterr().err


def test_embed_records_short_clips_and_says_when_it_replaces_other_settings(model_dir, tmp_path,
                                                                            capsys):
    """A clip shorter than one window gets `tag`'s padding warning in its NPZ (`warnings`, JSON
    text) and on stderr; a rerun with other window settings replaces the NPZs and says so on
    stderr and in its summary; one with the same settings reuses them silently."""
    rng = np.random.default_rng(5)
    np.save(tmp_path / "short.npy", rng.normal(-30, 10, (96, 20)).astype(np.float32))
    np.save(tmp_path / "long.npy", rng.normal(-30, 10, (96, 70)).astype(np.float32))
    out = tmp_path / "emb"
    argv = ["embed", "--checkpoint", str(model_dir), str(tmp_path / "short.npy"),
            str(tmp_path / "long.npy"), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    [note] = json.loads(str(embedding.load_embeddings(out / "short.npy.npz")["warnings"]))
    assert note.startswith(f"{tmp_path / 'short.npy'}: only 20 time steps") and "repeated" in note
    assert f"warning: {note}" in err and "replaced" not in err
    assert "warning: 1 of 2 input(s) tried had warnings: 1 shorter than one window" in err
    assert json.loads(str(embedding.load_embeddings(out / "long.npy.npz")["warnings"])) == []
    assert cli.main(argv) == 0  # reused: the short clip's warning counted again
    assert ("warning: 1 of 2 reused input(s) had warnings when they were made: 1 shorter than "
            "one window (kept in their outputs)\n") in capsys.readouterr().err
    before = str(embedding.load_embeddings(out / "long.npy.npz")["signature"])
    assert cli.main(argv + ["--windows", "paper"]) == 0
    captured = capsys.readouterr()
    assert f"2 output(s) in {out} came from another model, other settings" in captured.err
    assert "embedded again (replaced)" in captured.err
    assert ("embedded 2 input(s), 0 failed; 2 earlier output(s) "
            "made with other settings") in captured.err
    assert str(embedding.load_embeddings(out / "long.npy.npz")["signature"]) != before
    assert cli.main(argv + ["--windows", "paper"]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 already finished" in captured.err
    assert "replaced" not in captured.out + captured.err


def test_inference_commands_share_one_definition_of_their_input_options():
    """tag, embed, explain (and evaluate for the model) take the same options from
    commands/_inference_args.py: same flags, same help, same defaults (batch size aside)."""
    import argparse

    from tagger_jax.commands import embed, evaluate, explain, tag

    def options(module):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        return {a.option_strings[0]: (a.help, a.default) for a in parser._actions
                if a.option_strings}

    ex, em, tg, ev = options(explain), options(embed), options(tag), options(evaluate)
    shared = ["--checkpoint", "--workdir", "--dataset", "--split", "--data-dir",
              "--builder-config", "--limit", "--hop", "--windows", "--num-chunks",
              "--retry-failed", "--no-progress"]
    for flag in shared:
        assert ex[flag] == em[flag], flag
    for flag in ("--checkpoint", "--workdir", "--hop", "--windows", "--num-chunks",
                 "--no-progress"):  # tag's --no-progress is also --quiet
        assert tg[flag] == em[flag], flag
    assert ev["--checkpoint"] == em["--checkpoint"] and ev["--workdir"] == em["--workdir"]


def test_dataset_options_without_dataset_are_usage_errors(model_dir, files, tmp_path, capsys):
    """--split, --data-dir, --builder-config and --limit with INPUT files were ignored silently;
    now one usage line before any work (exit status 2)."""
    for command in ("embed", "explain"):
        rc = cli.main([command, "--checkpoint", str(model_dir), str(files / "long.npy"),
                       "--out", str(tmp_path / command), "--split", "train", "--limit", "3"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1, err
        assert "--split, --limit apply to --dataset only" in err
        assert not (tmp_path / command).exists() or not any((tmp_path / command).iterdir())


def test_a_dataset_not_built_is_exit_status_6_in_every_command(model_dir, tmp_path, capsys):
    """The README's table: 6 is "dataset not built"; evaluate, explain and embed said 2."""
    empty = str(tmp_path / "data")
    for argv in (["evaluate", "--checkpoint", str(model_dir), "--out", str(tmp_path / "ev")],
                 ["explain", "--checkpoint", str(model_dir), "--out", str(tmp_path / "ex")],
                 ["embed", "--checkpoint", str(model_dir), "--out", str(tmp_path / "em")]):
        rc = cli.main(argv + ["--dataset", "magnatagatune", "--data-dir", empty])
        err = capsys.readouterr().err
        assert rc == 6 and err.count("\n") == 1 and "is not built" in err, (argv[0], rc, err)
    # a config made with `build-dataset --set` and not built there (it cannot be built without
    # its values) is "not built" too; it said 2 (from a new user's trial)
    rc = cli.main(["evaluate", "--checkpoint", str(model_dir), "--out", str(tmp_path / "ev"),
                   "--dataset", "magnatagatune", "--builder-config", "mine", "--data-dir", empty])
    err = capsys.readouterr().err
    assert rc == 6 and "no config 'mine'" in err and "nothing built under" in err, err


def test_host_memory_of_a_run_does_not_grow_with_the_track(engine):
    """Tagging a track 8x longer at a fine hop (one frame): the Python-side memory the run
    allocates beyond the input itself stays within a small factor (tracemalloc peaks; numpy
    reports its buffers to tracemalloc). What grows with the track is only the per-window
    outputs kept for the taggram, not its windows. Not timed."""
    import tracemalloc

    plan = inference.WindowPlan(hop_s=0.016)  # a window every frame
    fn = engine.predict_fn()
    rng = np.random.default_rng(9)

    def extra_peak(frames: int) -> tuple[int, int]:
        x = rng.normal(-30, 10, (96, frames)).astype(np.float32)
        item = inference.Input("k", "n", lambda: x, "f")
        got = {}
        tracemalloc.start()
        engine.run([item], plan, fn, lambda p, out: got.update(out), print)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(got["probabilities"]) == frames - CHUNK + 1
        return peak, x.nbytes

    extra_peak(200)  # compiled outside the measurement
    short_peak, _ = extra_peak(250)
    long_peak, _ = extra_peak(2000)  # 1,969 windows of 12 KiB: 23 MiB if all held
    windows_bytes = (2000 - CHUNK + 1) * 96 * CHUNK * 4
    assert long_peak < 4 * short_peak + (1 << 20), (short_peak, long_peak)
    assert long_peak < windows_bytes / 8, (long_peak, windows_bytes)


def test_tag_embed_and_explain_report_skipped_files_alike(model_dir, tmp_path, capsys):
    """Files a directory search leaves out get the same `skipped: PATH: reason` lines on stderr
    from tag, embed and explain; a folder with nothing usable says how many were skipped."""
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "mid.npy", np.random.default_rng(6).normal(-30, 10, (96, 40)).astype(np.float32))
    (d / "notes.txt").write_text("not audio")
    (d / "._mid.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    runs = {"tag": ["tag", "--checkpoint", str(model_dir), "--quiet", str(d)],
            "embed": ["embed", "--checkpoint", str(model_dir), str(d), "--out",
                      str(tmp_path / "emb"), "--no-progress"],
            "explain": ["explain", "--checkpoint", str(model_dir), str(d), "--out",
                        str(tmp_path / "exp"), "--methods", "attention", "--no-plot",
                        "--no-report", "--no-progress"]}
    lines = {}
    for command, argv in runs.items():
        assert cli.main(argv) == 0, command
        err = capsys.readouterr().err
        lines[command] = sorted(line for line in err.splitlines() if line.startswith("skipped:"))
    assert lines["tag"] == [f"skipped: {d / '._mid.wav'}: macOS resource fork (AppleDouble "
                            "metadata), not audio",
                            f"skipped: {d / 'notes.txt'}: not audio (suffix .txt and the content "
                            "is no known audio format)"]
    assert lines["embed"] == lines["tag"] and lines["explain"] == lines["tag"]
    assert cli.main([*runs["tag"], str(d / "mid.npy"), str(d / "." / "mid.npy")]) == 0
    err = capsys.readouterr().err  # named again: one input, and the repeats said
    assert err.count(f"skipped: {d / 'mid.npy'}: named again (one input; its first name is "
                     "used)") == 2
    (d / "mid.npy").unlink()
    assert cli.main(runs["embed"]) == 2
    assert "error: no input files found (2 files skipped, listed above)" in capsys.readouterr().err


def test_a_link_found_in_a_folder_gives_way_to_its_file_named_by_its_own_name(tmp_path):
    """From a new user's trial: `misc/link_to_001.flac` (a link) sorted before
    `rock/track 001.flac` and took its place; the real file was skipped as named again."""
    from tagger_jax import inference

    for d in ("misc", "rock"):
        (tmp_path / d).mkdir()
    sf.write(tmp_path / "rock" / "track 001.flac", np.zeros(1600), 16000)
    (tmp_path / "misc" / "link_to_001.flac").symlink_to(tmp_path / "rock" / "track 001.flac")
    skipped = []
    found = inference.discover([tmp_path], skipped)
    assert [name for _, name in found] == ["rock/track 001.flac"]
    assert skipped == [(tmp_path / "misc" / "link_to_001.flac",
                        f"named again (a link to {tmp_path / 'rock' / 'track 001.flac'}, an "
                        "input by its own name)")]
    # ... also when the file is named on the command line after the folder holding the link.
    skipped = []
    found = inference.discover([tmp_path / "misc", tmp_path / "rock" / "track 001.flac"], skipped)
    assert [name for _, name in found] == ["track 001.flac"]
    assert skipped == [(tmp_path / "misc" / "link_to_001.flac",
                        f"named again (a link to {tmp_path / 'rock' / 'track 001.flac'}, an "
                        "input by its own name)")]
    # A link named on the command line stays the input it names.
    skipped = []
    found = inference.discover([tmp_path / "misc" / "link_to_001.flac"], skipped)
    assert [name for _, name in found] == ["link_to_001.flac"] and skipped == []


def test_one_file_by_two_spellings_or_a_link_is_one_input(tmp_path):
    """From a new user's trial: `A/x.wav` and `A/../A/x.wav` (or a link to it) were two inputs,
    explained and tagged twice."""
    from tagger_jax import inference

    (tmp_path / "A").mkdir()
    sf.write(tmp_path / "A" / "x.wav", np.zeros(1600), 16000)
    (tmp_path / "y.wav").symlink_to(tmp_path / "A" / "x.wav")
    skipped = []
    found = inference.discover([tmp_path / "A" / "x.wav", tmp_path / "A" / ".." / "A" / "x.wav",
                                tmp_path / "y.wav"], skipped)
    assert [name for _, name in found] == ["x.wav"]
    assert [why for _, why in skipped] == ["named again (one input; its first name is used)"] * 2


def test_a_model_with_swapped_variables_does_not_reuse_the_first_models_outputs(engine, files,
                                                                                tmp_path):
    """From a new user's trial: a `LoadedModel` with other variables swapped in from Python
    (same directory, same file times) reused the first model's embeddings ("skipped 1 already
    finished") with their old probabilities. The signature hashes the variables now."""
    import dataclasses

    loaded = engine.loaded
    variables = jax.tree.map(np.asarray, jax.device_get(loaded.variables))
    bias = variables["params"]["classifier"]["bias"]
    variables["params"]["classifier"]["bias"] = bias + 3.0
    other = dataclasses.replace(loaded, variables=variables)
    assert inference.model_signature(other) != inference.model_signature(loaded)
    assert inference.model_signature(checkpoint.load_model(loaded.directory)) == (
        inference.model_signature(loaded))  # the same files read again: reused as before
    out = tmp_path / "emb"
    items = [str(files / "mid.npy")]
    embedding.embed_inputs(engine, engine.file_inputs(items), out, progress=False)
    first = embedding.load_embeddings(out / "mid.npy.npz")["probabilities"]
    swapped = inference.Engine(other, batch_size=8)
    report = embedding.embed_inputs(swapped, swapped.file_inputs(items), out, progress=False)
    assert len(report.done) == 1 and not report.skipped
    again = embedding.load_embeddings(out / "mid.npy.npz")["probabilities"]
    assert np.all(again > first)  # the raised bias, not the first model's numbers


def test_load_embeddings_of_a_directory_names_the_merged_file(tmp_path):
    with pytest.raises(ValueError, match=f"a directory; the merged file of an embed run is "
                                         f"{tmp_path / 'embeddings.npz'}"):
        embedding.load_embeddings(tmp_path)
