"""Dataset builders on fixtures made here: MTAT (real CSV format, real mp3s, broken files),
MTG-Jamendo layout, MSD pickles, audio_folder CSV variants, synthetic_tags; rebuild determinism.

Expected values (tag order, split membership, dropped and skipped clips) are set by how each
fixture is constructed, not recomputed with the builders' own helpers.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from tagger_jax import audio, datasets, synth
from tagger_jax.commands import build_dataset
from tagger_jax.datasets import (AudioFolderConfig, MsdConfig, SyntheticConfig, audio_folder,
                                 magnatagatune, msd)

SR = 16000


def _tone(path: Path, seconds: float, freq: float, sr: int = SR, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * freq * t) * np.exp(-t)
    if channels == 2:
        y = np.stack([y, 0.5 * y], axis=1)
    sf.write(str(path), y, sr)  # format from the extension (mp3 via libsndfile's LAME encoder)


def _corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not audio at all. " * 40)


def _records(data_dir: Path, name: str, config: str) -> dict[str, bytes]:
    root = data_dir / name / config
    return {p.name: p.read_bytes() for p in sorted(root.glob("*/*.array_record*"))}


def _all(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


# ----------------------------------------------------------------------------------- MTAT

FOLDERS = "0123456789abcdef"
SPLIT_BY_FOLDER = {**dict.fromkeys("0123456789ab", "train"), "c": "validation",
                   **dict.fromkeys("def", "test")}
N_MTAT = 60
DROPPED, EMPTY, CORRUPT, MISSING = 7, 3, 13, 28  # row indices (folders 7, 3, d, c)


@pytest.fixture(scope="module")
def mtat(tmp_path_factory):
    """A miniature MagnaTagATune: 60 clips, 188 quoted tag columns, real mp3 files."""
    rng = np.random.default_rng(0)
    top = list(rng.permutation(list(datasets.magnatagatune.MTAT_TOP50)))  # the frequency order
    extras = [f"extra tag {j}" for j in range(138)]
    columns = list(rng.permutation(top + extras))  # shuffled: column order != frequency order
    labels = np.zeros((N_MTAT, 188), np.uint8)
    keep = [i for i in range(N_MTAT) if i != DROPPED]
    labels[keep, columns.index(top[0])] = 1  # count 59
    for rank in range(1, 50):  # counts 50, 49, ..., 2: strictly decreasing with rank
        rows = rng.choice(keep, size=51 - rank, replace=False)
        labels[rows, columns.index(top[rank])] = 1
    for j, name in enumerate(extras):  # rare tags: count 0 or 1
        if j % 2:
            labels[rng.integers(N_MTAT), columns.index(name)] = 1
    labels[DROPPED, :] = 0
    labels[DROPPED, columns.index(extras[0])] = 1  # only a non-top-50 tag: dropped
    root = tmp_path_factory.mktemp("mtat_manual")
    clip_ids, paths = [], []
    for i in range(N_MTAT):
        folder = FOLDERS[i % 16]
        rel = f"{folder}/artist_{i:02d}-album-{i:02d}-track-30-59.mp3"
        clip_ids.append(str(3 * i + 2))
        paths.append(rel)
        if i == EMPTY:
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"")
        elif i == CORRUPT:
            _corrupt(root / rel)
        elif i != MISSING:
            _tone(root / rel, 0.4, 200 + 10 * i)
    with open(root / "annotations_final.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(["clip_id", *columns, "mp3_path"])
        for i in range(N_MTAT):
            w.writerow([clip_ids[i], *map(str, labels[i]), paths[i]])
    # The same audio as the distributed byte-split zip: mp3.zip.001..003.
    zipped = tmp_path_factory.mktemp("mtat_zip")
    (zipped / "annotations_final.csv").write_bytes((root / "annotations_final.csv").read_bytes())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for rel in paths:
            if (root / rel).exists():
                z.write(root / rel, rel)
    blob = buf.getvalue()
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    for k in range(3):
        (zipped / f"mp3.zip.{k + 1:03d}").write_bytes(blob[cuts[k]:cuts[k + 1]])
    data_dir = tmp_path_factory.mktemp("mtat_data")
    builder = datasets.build("magnatagatune", data_dir, manual_dir=root, num_workers=1)
    return dict(root=root, zipped=zipped, data_dir=data_dir, builder=builder, top=top,
                columns=columns, labels=labels, clip_ids=clip_ids, paths=paths)


def test_mtat_csv_is_in_the_real_format(mtat):
    lines = (mtat["root"] / "annotations_final.csv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[0] == '"clip_id"' and header[-1] == '"mp3_path"' and len(header) == 190
    assert lines[1].split("\t")[0] == '"2"'


def test_mtat_tags_in_frequency_order(mtat):
    tags = datasets.tag_names("magnatagatune", data_dir=mtat["data_dir"])
    assert list(tags) == mtat["top"]
    assert list(tags) != [c for c in mtat["columns"] if c in set(tags)]  # not column order
    saved = (Path(str(mtat["builder"].data_dir)) / "tags.txt").read_text().split("\n")
    assert saved[:50] == list(tags)


def test_mtat_split_by_folder_drops_and_skips(mtat):
    expected = {s: [] for s in datasets.SPLITS}
    for i, rel in enumerate(mtat["paths"]):
        if i not in (DROPPED, EMPTY, CORRUPT, MISSING):
            expected[SPLIT_BY_FOLDER[rel[0]]].append(mtat["clip_ids"][i])
    assert datasets.split_sizes(mtat["builder"]) == {s: len(v) for s, v in expected.items()}
    assert expected["validation"] and expected["test"]
    for split in datasets.SPLITS:
        source, tags = datasets.load_split("magnatagatune", split, mtat["data_dir"])
        got = [ex["clip_id"].decode() for ex in _all(source)]
        assert got == expected[split]  # CSV order, nothing else
        assert mtat["clip_ids"][DROPPED] not in got
    meta = mtat["builder"].info.metadata
    assert meta["dropped_without_top_tags"] == {"train": 1, "validation": 0, "test": 0}


def test_mtat_report_lists_empty_corrupt_and_missing(mtat):
    report = datasets.build_report(mtat["builder"])
    skipped = {s["path"]: (split, s["error"]) for split, items in report.items() for s in items}
    assert set(skipped) == {mtat["paths"][i] for i in (EMPTY, CORRUPT, MISSING)}
    split, error = skipped[mtat["paths"][EMPTY]]
    assert split == "train" and "empty" in error and mtat["paths"][EMPTY] in error
    split, error = skipped[mtat["paths"][CORRUPT]]
    assert split == "test" and "decode" in error
    split, error = skipped[mtat["paths"][MISSING]]
    assert split == "validation" and "not found" in error
    rows = datasets.report_path(mtat["builder"]).read_text().strip().split("\n")
    assert rows[0] == "split\tclip_id\tpath\terror" and len(rows) == 4


def test_mtat_example_contents(mtat):
    source, tags = datasets.load_split("magnatagatune", "test", mtat["data_dir"])
    ex = source[0]
    i = mtat["clip_ids"].index(ex["clip_id"].decode())
    assert ex["path"].decode() == mtat["paths"][i]
    row = mtat["labels"][i]
    expected_tags = [int(row[mtat["columns"].index(t)]) for t in tags]
    assert ex["tags"].dtype == np.uint8 and ex["tags"].tolist() == expected_tags
    wave = audio.load_audio(mtat["root"] / mtat["paths"][i])
    mel = audio.log_mel(wave)
    assert ex["mel"].dtype == np.float16 and ex["mel"].shape == (96, 1 + len(wave) // 256)
    np.testing.assert_array_equal(ex["mel"], mel.astype(np.float16))
    assert abs(float(ex["duration"]) - len(wave) / SR) < 1e-6
    assert abs(float(ex["duration"]) - 0.4) < 0.05
    assert "audio" not in ex


def test_mtat_rebuild_from_zip_parts_in_parallel_is_identical(mtat, tmp_path):
    builder = datasets.build("magnatagatune", tmp_path, manual_dir=mtat["zipped"], num_workers=2)
    assert _records(tmp_path, "magnatagatune", "default") == \
        _records(mtat["data_dir"], "magnatagatune", "default")
    assert len(datasets.build_report(builder)["train"]) == 1  # the empty member
    assert "tensorflow" not in sys.modules  # built and read without TensorFlow


def test_reusing_a_build_from_another_manual_directory_says_so(mtat, capsys):
    """A build records the manual directory it read; a run naming another one reuses the build
    (the files may have moved) but says where it came from."""
    capsys.readouterr()
    datasets.build("magnatagatune", mtat["data_dir"], manual_dir=mtat["root"], num_workers=1)
    out = capsys.readouterr().err
    assert "reusing the existing build magnatagatune/default" in out and "built from" not in out
    datasets.build("magnatagatune", mtat["data_dir"], manual_dir=mtat["zipped"], num_workers=1)
    assert (f"; it was built from {Path(mtat['root']).resolve()}, not from this run's "
            f"--manual-dir {mtat['zipped']})") in capsys.readouterr().err


def test_mtat_interrupted_build_resumes(mtat, tmp_path, monkeypatch, capsys):
    from tagger_jax.datasets import _extract

    real_example, real_load = _extract.audio_example, audio.load_audio_checked
    calls = {"example": 0, "load": 0}

    def interrupted(item):
        calls["example"] += 1
        if calls["example"] > 20:
            raise RuntimeError("simulated interruption")
        return real_example(item)

    def counting_load(*args, **kwargs):
        calls["load"] += 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(_extract, "audio_example", interrupted)
    with pytest.raises(RuntimeError, match="simulated"):
        datasets.build("magnatagatune", tmp_path, manual_dir=mtat["root"], num_workers=1)
    cache = datasets.get_builder("magnatagatune", tmp_path).feature_cache_dir
    done = len(list(cache.glob("*/*.npz")))
    assert done == 19  # the first 20 clips, less the empty file (failures are not cached)
    monkeypatch.setattr(_extract, "audio_example", real_example)
    monkeypatch.setattr(audio, "load_audio_checked", counting_load)
    capsys.readouterr()
    datasets.build("magnatagatune", tmp_path, manual_dir=mtat["root"], num_workers=1)
    assert f"magnatagatune train: reusing {done} of " in capsys.readouterr().err  # said
    assert calls["load"] == (N_MTAT - 1) - done  # every clip but the dropped and the cached
    assert _records(tmp_path, "magnatagatune", "default") == \
        _records(mtat["data_dir"], "magnatagatune", "default")
    assert not cache.exists()  # removed once the build succeeded, with its empty parents
    assert not (tmp_path / "downloads" / "tagger_jax_resume").exists()


def test_mtat_reference_helpers():
    assert magnatagatune.split_of("c/x.mp3") == "validation"
    assert magnatagatune.split_of("b/x.mp3") == "train" and magnatagatune.split_of("f/x") == "test"
    with pytest.raises(ValueError, match="folders"):
        magnatagatune.split_of("g/x.mp3")


def test_mtat_bad_csv_names_the_line(tmp_path):
    (tmp_path / "annotations_final.csv").write_text(
        '"clip_id"\t"a"\t"mp3_path"\n"1"\t"1"\t"0/x.mp3"\n"2"\t"yes"\t"0/y.mp3"\n')
    with pytest.raises(ValueError, match=r"annotations_final.csv:3"):
        magnatagatune.read_annotations(tmp_path / "annotations_final.csv")


def test_mtat_won2020_split_files(mtat, tmp_path):
    """The cleaned split of Won et al. (2020): rows and tag order from their split files (the
    real format: NumPy string arrays "INDEX\tMP3_PATH"), labels from the annotations."""
    manual = tmp_path / "manual"
    split_dir = manual / "split" / "mtat"
    split_dir.mkdir(parents=True)
    for name in ["annotations_final.csv"] + [str(p.relative_to(mtat["root"]))
                                             for p in mtat["root"].iterdir() if p.is_dir()]:
        (manual / name).symlink_to(mtat["root"] / name)
    chosen = {"train": [0, 5, 9, 17], "validation": [2, 30], "test": [40, 1, 33]}
    files = {"train": "train.npy", "validation": "valid.npy", "test": "test.npy"}
    for split, rows in chosen.items():
        np.save(split_dir / files[split],
                np.array([f"{i}\t{mtat['paths'][i]}" for i in rows]))
    tags = list(mtat["top"][::-1])  # the paper's order, here reversed frequency order
    np.save(split_dir / "tags.npy", np.array(tags))
    b = datasets.build("magnatagatune", tmp_path / "d", "won2020", manual_dir=manual,
                       num_workers=1)
    assert list(datasets.tag_names(b)) == tags
    assert datasets.split_sizes(b) == {"train": 4, "validation": 2, "test": 3}
    test, _ = datasets.load_split("magnatagatune", "test", tmp_path / "d", "won2020")
    got = [(ex["clip_id"].decode(), ex["tags"].tolist()) for ex in _all(test)]
    cols = [mtat["columns"].index(t) for t in tags]
    assert got == [(mtat["clip_ids"][i], mtat["labels"][i, cols].tolist()) for i in (40, 1, 33)]
    # a line whose path does not match the annotations stops the build, naming file and line
    np.save(split_dir / "test.npy", np.array([f"40\t{mtat['paths'][41]}"]))
    with pytest.raises(ValueError, match=r"test.npy\[0\]: .* is not annotation row 40"):
        datasets.build("magnatagatune", tmp_path / "e", "won2020", manual_dir=manual,
                       num_workers=1)


# ----------------------------------------------------------------------------------- Jamendo

JAMENDO = {
    "train": [("track_0000001", "01/1.mp3", ["genre---rock", "instrument---guitar"]),
              ("track_0000002", "02/2.mp3", ["genre---rock", "mood/theme---happy"]),
              ("track_0000103", "03/103.mp3", ["instrument---piano"]),  # stored as .low.mp3
              ("track_0000004", "04/4.mp3", ["genre---rock"])],  # audio missing
    "validation": [("track_0000005", "05/5.mp3", ["genre---ambient", "mood/theme---happy"]),
                   ("track_0000006", "06/6.mp3", ["instrument---piano", "genre---rock"])],
    "test": [("track_0000007", "07/7.mp3", ["genre---ambient"]),
             ("track_0000008", "08/8.mp3", ["instrument---guitar", "mood/theme---happy"])],
}
JAMENDO_TAGS = sorted(["genre---ambient", "genre---rock", "instrument---guitar",
                       "instrument---piano", "mood/theme---happy"]
                      + [f"genre---other{k:02d}" for k in range(45)])  # 50, like top50.txt


def _jamendo_tsv(path: Path, tracks) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"]
    for k, (tid, rel, tags) in enumerate(tracks):
        lines.append("\t".join([tid, f"artist_{k:06d}", f"album_{k:06d}", rel, "1.5", *tags]))
    path.write_text("\ufeff" + "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def jamendo(tmp_path_factory):
    root = tmp_path_factory.mktemp("jamendo_manual")
    splits = root / "mtg-jamendo-dataset" / "data" / "splits"
    (root / "mtg-jamendo-dataset" / "data" / "tags").mkdir(parents=True)
    # A byte-order mark (a Windows editor's) kept the first tag from matching the split files
    # (found by a new user's trial); a mark on the split files too.
    (root / "mtg-jamendo-dataset" / "data" / "tags" / "top50.txt").write_text(
        "\ufeff" + "\n".join(JAMENDO_TAGS) + "\n")
    for split, tracks in JAMENDO.items():
        _jamendo_tsv(splits / "split-0" / f"autotagging_top50tags-{split}.tsv", tracks)
    # split-1: validation and test swapped, to see that the config picks its split files
    _jamendo_tsv(splits / "split-1" / "autotagging_top50tags-train.tsv", JAMENDO["train"])
    _jamendo_tsv(splits / "split-1" / "autotagging_top50tags-validation.tsv", JAMENDO["test"][:1])
    _jamendo_tsv(splits / "split-1" / "autotagging_top50tags-test.tsv",
                 JAMENDO["validation"] + JAMENDO["test"][1:])
    for split, tracks in JAMENDO.items():
        for k, (tid, rel, _) in enumerate(tracks):
            if tid == "track_0000004":
                continue
            name = rel.replace(".mp3", ".low.mp3") if tid == "track_0000103" else rel
            _tone(root / "audio" / name, 1.0 + 0.25 * k, 300 + 20 * k, sr=22050, channels=2)
    data_dir = tmp_path_factory.mktemp("jamendo_data")
    builder = datasets.build("mtg_jamendo", data_dir, manual_dir=root, num_workers=1)
    return dict(root=root, data_dir=data_dir, builder=builder)


def test_jamendo_split_file_format(tmp_path):
    tsv = tmp_path / "autotagging_top50tags-test.tsv"
    tsv.write_text("TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n"
                   "track_0000215\tartist_000014\talbum_000031\t15/215.mp3\t151.4\tgenre---metal\n"
                   "track_1048681\tartist_359617\talbum_123563\t81/1048681.mp3\t189.3\t"
                   "genre---hiphop\tinstrument---piano\tmood/theme---emotional\n")
    tracks = datasets.mtg_jamendo.read_split_file(tsv)
    assert [(t.track_id, t.path) for t in tracks] == [("track_0000215", "15/215.mp3"),
                                                      ("track_1048681", "81/1048681.mp3")]
    assert tracks[1].tags == ("genre---hiphop", "instrument---piano", "mood/theme---emotional")
    tsv.write_text("TRACK\tPATH\n")
    with pytest.raises(ValueError, match="header"):
        datasets.mtg_jamendo.read_split_file(tsv)


def test_jamendo_builds_official_split(jamendo):
    b = jamendo["builder"]
    assert list(datasets.tag_names(b)) == JAMENDO_TAGS  # data/tags/top50.txt
    assert datasets.split_sizes(b) == {"train": 3, "validation": 2, "test": 2}
    for split, tracks in JAMENDO.items():
        source, tags = datasets.load_split("mtg_jamendo", split, jamendo["data_dir"])
        got = _all(source)
        want = [t for t in tracks if t[0] != "track_0000004"]
        assert [ex["clip_id"].decode() for ex in got] == [t[0] for t in want]
        for ex, (_, rel, tag_list) in zip(got, want):
            assert ex["path"].decode() == rel
            assert [tags[i] for i in np.flatnonzero(ex["tags"])] == sorted(tag_list)
            # the whole track is stored: frames match the decoded length, not a crop
            n = round(float(ex["duration"]) * SR)
            assert ex["mel"].shape == (96, 1 + n // 256)
    assert datasets.split_sizes(b)["train"] == 3
    (skip,) = datasets.build_report(b)["train"]
    assert skip["clip_id"] == "track_0000004" and "not found" in skip["error"]


def test_jamendo_full_track_durations(jamendo):
    source, _ = datasets.load_split("mtg_jamendo", "validation", jamendo["data_dir"])
    durations = [float(ex["duration"]) for ex in _all(source)]
    np.testing.assert_allclose(durations, [1.0, 1.25], atol=0.01)


def test_jamendo_other_split_config(jamendo, tmp_path):
    b = datasets.build("mtg_jamendo", tmp_path, "split1", manual_dir=jamendo["root"],
                       num_workers=1)
    assert datasets.split_sizes(b) == {"train": 3, "validation": 1, "test": 3}


def test_jamendo_inputs_checked_before_the_build(jamendo, tmp_path):
    """From a new user's trial: missing split files were named one at a time (the docs said all
    at once) without the near miss beside them; a manual directory without its audio folder
    skipped every track, one warning each, after the whole train split; a track listed twice was
    stored twice. Each now stops the build before it starts, in one line."""
    import shutil

    root = tmp_path / "manual"
    shutil.copytree(jamendo["root"] / "mtg-jamendo-dataset", root / "mtg-jamendo-dataset")
    folder = root / "mtg-jamendo-dataset" / "data" / "splits" / "split-0"
    (folder / "autotagging_top50tags-validation.tsv").rename(
        folder / "autotagging_top50tags-valid.tsv")
    (folder / "autotagging_top50tags-test.tsv").unlink()
    data = tmp_path / "d"
    with pytest.raises(FileNotFoundError) as e:
        datasets.build("mtg_jamendo", data, manual_dir=root, num_workers=1)
    message = str(e.value)
    assert "\n" not in message and message.startswith(
        f"{folder}: missing autotagging_top50tags-validation.tsv, autotagging_top50tags-test.tsv.")
    assert "autotagging_top50tags-valid.tsv: rename or move it there?" in message
    assert "docs/datasets.md" in message
    (folder / "autotagging_top50tags-valid.tsv").rename(
        folder / "autotagging_top50tags-validation.tsv")
    shutil.copy(jamendo["root"] / "mtg-jamendo-dataset" / "data" / "splits" / "split-0" /
                "autotagging_top50tags-test.tsv", folder)
    with pytest.raises(FileNotFoundError, match=r"manual: no audio folder: the tracks go in "
                                                r"audio/00/ \.\.\. audio/99/"):
        datasets.build("mtg_jamendo", data, manual_dir=root, num_workers=1)
    (root / "audio").symlink_to(jamendo["root"] / "audio")
    _jamendo_tsv(folder / "autotagging_top50tags-test.tsv",
                 JAMENDO["test"] + JAMENDO["train"][:1])  # listed in train and test
    with pytest.raises(ValueError) as e:
        datasets.build("mtg_jamendo", data, manual_dir=root, num_workers=1)
    assert str(e.value) == (f"{folder}: 1 track(s) listed more than once: track_0000001 "
                            "(autotagging_top50tags-train.tsv:2, autotagging_top50tags-test.tsv:4)"
                            "; the published split files list each track once")
    assert not (data / "mtg_jamendo").exists()  # nothing was built


# ----------------------------------------------------------------------------------- MSD

MSD_TRAIN = ["TRAAAAA128F1", "TRAAAAB128F2", "TRAAAAC128F3", "TRAAAAD128F4", "TRAAAAE128F5"]
MSD_TEST = ["TRBBBBA128F6", "TRBBBBB128F7"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch should_not_exist",))


class _Plain:
    pass


@pytest.fixture(scope="module")
def msd_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd_manual")
    ids = MSD_TRAIN + MSD_TEST
    tag_list = [f"lastfm tag {k}" for k in range(50)]
    (root / "50tagList.txt").write_text("\ufeff" + "\r\n".join(tag_list) + "\r\n")  # Windows
    vectors = {}
    for k, msd_id in enumerate(ids):
        v = np.zeros((50, 1), np.int64)
        v[[k, k + 10, 49 - k]] = 1
        vectors[msd_id] = v
    dumps = {
        "filtered_list_train.cP": MSD_TRAIN,  # a list
        "filtered_list_test.cP": np.array(MSD_TEST),  # a NumPy array of strings
        "msd_id_to_tag_vector.cP": vectors,
        "MSD_id_to_7D_id.pkl": {m: 1000 + k for k, m in enumerate(ids)},
        "7D_id_to_path.pkl": {1000 + k: f"{k % 10}/{k % 3}/{1000 + k}.clip.mp3"
                              for k in range(len(ids))},
    }
    for name, obj in dumps.items():
        (root / name).write_bytes(pickle.dumps(obj, protocol=2))  # Python-2-compatible pickles
    for k, msd_id in enumerate(ids):
        if msd_id != "TRAAAAB128F2":  # one preview missing
            _tone(root / "audio" / dumps["7D_id_to_path.pkl"][1000 + k], 0.3, 250 + 30 * k)
    return dict(root=root, vectors=vectors, tag_list=tag_list)


def test_msd_builds_authors_split(msd_dir, tmp_path):
    config = MsdConfig(name="tiny", num_train=3)
    b = datasets.build("msd", tmp_path, config, manual_dir=msd_dir["root"], num_workers=1)
    assert list(datasets.tag_names(b)) == msd_dir["tag_list"]
    assert datasets.split_sizes(b) == {"train": 2, "validation": 2, "test": 2}
    expect = {"train": ["TRAAAAA128F1", "TRAAAAC128F3"], "validation": MSD_TRAIN[3:],
              "test": MSD_TEST}
    for split, ids in expect.items():
        source, _ = datasets.load_split("msd", split, tmp_path, config)
        got = _all(source)
        assert [ex["clip_id"].decode() for ex in got] == ids
        for ex in got:
            want = msd_dir["vectors"][ex["clip_id"].decode()].reshape(-1)
            assert ex["tags"].tolist() == want.tolist()
    (skip,) = datasets.build_report(b)["train"]
    assert skip["clip_id"] == "TRAAAAB128F2" and "not found" in skip["error"]


def test_msd_without_its_audio_folder_stops_before_the_build(msd_dir, tmp_path):
    """From a new user's trial: without audio/ every clip was skipped, one warning each, and
    the build stopped only after the train split."""
    import shutil

    root = tmp_path / "manual"
    root.mkdir()
    for f in msd_dir["root"].iterdir():
        if f.is_file():
            shutil.copy(f, root)
    with pytest.raises(FileNotFoundError) as e:
        datasets.build("msd", tmp_path / "d", MsdConfig(name="tiny", num_train=3),
                       manual_dir=root, num_workers=1)
    assert str(e.value).startswith(f"{root}: no audio folder: the 7digital previews go in "
                                   "audio/0/ ... audio/9/")
    assert "\n" not in str(e.value) and not (tmp_path / "d" / "msd").exists()


def test_restricted_unpickler_loads_plain_data(tmp_path):
    data = {"ids": ["a", "b"], "set": {1, 2}, "array": np.arange(3), "t": (1.5, b"x", None)}
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(data, protocol=2))  # __builtin__ names
    loaded = msd.safe_load_pickle(tmp_path / "ok.pkl")
    assert loaded["ids"] == ["a", "b"] and loaded["set"] == {1, 2} and loaded["t"][0] == 1.5
    np.testing.assert_array_equal(loaded["array"], np.arange(3))
    # protocol 5 (Python 3's default for arrays) rebuilds arrays with numpy's _frombuffer
    (tmp_path / "p5.pkl").write_bytes(pickle.dumps(data, protocol=5))
    assert "_frombuffer" in (tmp_path / "p5.pkl").read_bytes().decode("latin1")
    np.testing.assert_array_equal(msd.safe_load_pickle(tmp_path / "p5.pkl")["array"],
                                  np.arange(3))


def test_msd_reads_protocol_5_pickles_with_bytes_keys(msd_dir, tmp_path):
    """From a new user's trial: the files as re-saved after loading them the way the authors'
    loader does (`encoding="bytes"`: bytes keys and paths) with Python 3's protocol 5 were
    refused (numpy's _frombuffer), then every clip lacked its tag vector. They build the same
    records as the originals."""
    import shutil

    root = tmp_path / "manual"
    shutil.copytree(msd_dir["root"], root)
    def as_bytes(x):  # Python 2's str read with encoding="bytes"
        return x.encode() if isinstance(x, str) else x

    for name in ("msd_id_to_tag_vector.cP", "MSD_id_to_7D_id.pkl", "7D_id_to_path.pkl"):
        obj = pickle.loads((root / name).read_bytes())
        obj = {as_bytes(k): as_bytes(v) for k, v in obj.items()}
        (root / name).write_bytes(pickle.dumps(obj, protocol=5))
    config = MsdConfig(name="tiny", num_train=3)
    datasets.build("msd", tmp_path / "d", config, manual_dir=root, num_workers=1)
    for split in ("train", "validation", "test"):
        source, _ = datasets.load_split("msd", split, tmp_path / "d", config)
        got = _all(source)
        assert len(got) == 2
        for ex in got:
            want = msd_dir["vectors"][ex["clip_id"].decode()].reshape(-1)
            assert ex["tags"].tolist() == want.tolist()


@pytest.mark.parametrize("obj", [_Evil(), [_Plain()], {"x": np.array([_Evil()], dtype=object)}])
def test_restricted_unpickler_refuses_objects(obj, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.cP").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"bad.cP: refusing to load"):
        msd.safe_load_pickle(tmp_path / "bad.cP")
    assert not (tmp_path / "should_not_exist").exists()


# ----------------------------------------------------------------------------------- audio_folder

FOLDER_ROWS = [  # path, tags, split
    ("songs/a.wav", "rock;piano", "train"), ("songs/b.flac", "rock; jazz", "train"),
    ("songs/c.wav", "rock", "train"), ("songs/d.ogg", "jazz;vocal", "valid"),
    ("songs/e.wav", "rock;piano", "test"), ("songs/bad.wav", "rock", "train"),
    ("songs/f.wav", "", "test"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder_manual")
    for k, (rel, _, _) in enumerate(FOLDER_ROWS):
        if "bad" in rel:
            _corrupt(root / rel)
        else:
            _tone(root / rel, 0.3 + 0.05 * k, 220 * (k + 1), sr=22050 if k % 2 else SR,
                  channels=2 if k == 2 else 1)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "tags", "split"])
        w.writerows(FOLDER_ROWS)
    with open(root / "onehot.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "rock", "jazz", "piano"])
        for rel, tags, _ in FOLDER_ROWS:
            if "bad" not in rel:
                w.writerow([rel] + [int(t in tags) for t in ("rock", "jazz", "piano")])
    return root


def test_audio_folder_cli_with_tags_and_split_columns(folder, tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    build_dataset.add_arguments(parser)
    args = parser.parse_args(["audio_folder", "--config", "mine", "--set", "csv=labels.csv",
                              "--data-dir", str(tmp_path), "--manual-dir", str(folder),
                              "--num-workers", "1"])
    assert build_dataset.run(args) == 0
    out = capsys.readouterr().out
    assert "train" in out and "4 tags: rock, jazz, piano, vocal" in out
    assert "songs/bad.wav" in out and "skipped_files.tsv" in out
    # an unregistered config name is opened from its files
    source, tags = datasets.load_split("audio_folder", "train", tmp_path, "mine")
    assert list(tags) == ["rock", "jazz", "piano", "vocal"]  # frequency, then alphabetical
    got = {ex["path"].decode(): ex["tags"].tolist() for ex in _all(source)}
    assert got == {"songs/a.wav": [1, 0, 1, 0], "songs/b.flac": [1, 1, 0, 0],
                   "songs/c.wav": [1, 0, 0, 0]}
    val, _ = datasets.load_split("audio_folder", "validation", tmp_path, "mine")
    assert [ex["path"].decode() for ex in _all(val)] == ["songs/d.ogg"]
    test, _ = datasets.load_split("audio_folder", "test", tmp_path, "mine")
    assert [ex["tags"].tolist() for ex in _all(test)] == [[1, 0, 1, 0], [0, 0, 0, 0]]

    # explain --dataset --listen decodes a record's source file again from the manual directory
    # the build read, if its log-mel is still the stored one.
    from types import SimpleNamespace

    from tagger_jax.config_base import base_config
    from tagger_jax.explain import runner

    regenerate = runner._regenerated_audio("audio_folder", "train", tmp_path, "mine",
                                           SimpleNamespace(config=base_config()))
    records = _all(source)
    out = regenerate(0, records[0])
    assert out["audio"].shape == (int(round(float(records[0]["duration"]) * SR)),)
    assert "no longer there" in regenerate(0, {**records[0], "path": b"songs/gone.wav"})[
        "audio_note"]
    mixed = {**records[0], "path": records[1]["path"]}  # another file than the stored log-mel's
    assert "does not match the stored spectrogram" in regenerate(0, mixed)["audio_note"]


def test_audio_folder_one_column_per_tag_seeded_split(folder, tmp_path):
    config = AudioFolderConfig(name="onehot", csv="onehot.csv", split_fractions=(0.5, 0.25, 0.25),
                               split_seed=3, waveform=True)
    b = datasets.build("audio_folder", tmp_path / "a", config, manual_dir=folder, num_workers=1)
    assert list(datasets.tag_names(b)) == ["rock", "jazz", "piano"]  # column order
    assert datasets.split_sizes(b) == {"train": 2, "validation": 2, "test": 2}
    seen = []
    for split in datasets.SPLITS:
        source, _ = datasets.load_split("audio_folder", split, tmp_path / "a", config)
        for ex in _all(source):
            seen.append(ex["path"].decode())
            assert ex["audio"].dtype == np.float32
            assert ex["mel"].shape[1] == 1 + len(ex["audio"]) // 256
            np.testing.assert_allclose(float(ex["duration"]), len(ex["audio"]) / SR)
    assert sorted(seen) == sorted(r for r, _, _ in FOLDER_ROWS if "bad" not in r)
    again = datasets.build("audio_folder", tmp_path / "b", config, manual_dir=folder,
                           num_workers=1)
    assert datasets.split_sizes(again) == datasets.split_sizes(b)
    assert _records(tmp_path / "b", "audio_folder", "onehot") == \
        _records(tmp_path / "a", "audio_folder", "onehot")


def test_audio_folder_default_config_reads_with_tfds_data_source(folder, tmp_path):
    only = tmp_path / "manual"
    only.mkdir()
    (only / "songs").symlink_to(folder / "songs")
    (only / "tags.csv").write_text((folder / "labels.csv").read_text())
    datasets.build("audio_folder", tmp_path / "data", manual_dir=only, num_workers=1)
    source = tfds.data_source("audio_folder", split="train", data_dir=str(tmp_path / "data"),
                              download=False)
    assert len(source) == 3


def test_audio_folder_bad_split_value(folder, tmp_path):
    (tmp_path / "x.csv").write_text("path,tags,split\nsongs/a.wav,rock,training\n"
                                    "songs/c.wav,rock,!!\n")
    config = AudioFolderConfig(name="bad", csv=str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match=r"x.csv:3: split value '!!'"):
        datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder)
    (tmp_path / "y.csv").write_text("path,tags,split\nsongs/a.wav,rock,all\n")
    config = AudioFolderConfig(name="bad2", csv=str(tmp_path / "y.csv"))
    with pytest.raises(ValueError, match=r"y.csv:2: .*reserved"):
        datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder)
    (tmp_path / "z.csv").write_text("path,tags\nsongs/a.wav,rock;loud\nsongs/c.wav,Loud \n")
    config = AudioFolderConfig(name="bad3", csv=str(tmp_path / "z.csv"), tag_separator=";")
    with pytest.raises(ValueError, match=r"z.csv: tags 'Loud' \(line 3\) and 'loud' \(line "
                                         r"2\) differ only in case"):
        datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder)


def test_audio_folder_extra_splits(folder, tmp_path):
    """Split values besides train/validation/test become named splits the model never trains
    on, read back like the others (evaluate, explain --dataset and the benchmarks use
    `load_split`)."""
    rows = [("songs/a.wav", "rock;piano", "train"), ("songs/b.flac", "rock;jazz", "train"),
            ("songs/c.wav", "rock", "valid"), ("songs/d.ogg", "jazz;vocal", "test"),
            ("songs/e.wav", "rock;piano", "Hold-Out"), ("songs/f.wav", "jazz", "segments"),
            ("songs/bad.wav", "rock", "segments")]
    with open(tmp_path / "extra.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "tags", "split")] + rows)
    config = AudioFolderConfig(name="extra", csv=str(tmp_path / "extra.csv"))
    b = datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder, num_workers=1)
    assert list(b.info.splits) == ["train", "validation", "test", "hold_out", "segments"]
    assert b.info.metadata["extra_splits"] == ["hold_out", "segments"]
    assert datasets.split_sizes(b) == {"train": 2, "validation": 1, "test": 1, "hold_out": 1,
                                       "segments": 1}  # the build summary lists every split
    source, tags = datasets.load_split("audio_folder", "hold_out", tmp_path / "d", config)
    assert [(ex["path"].decode(), ex["tags"].tolist()) for ex in _all(source)] == \
        [("songs/e.wav", [1, 0, 1, 0])]
    assert list(tags) == ["rock", "jazz", "piano", "vocal"]
    segments, _ = datasets.load_split("audio_folder", "segments", tmp_path / "d", config)
    assert [ex["path"].decode() for ex in _all(segments)] == ["songs/f.wav"]
    assert [s["path"] for s in datasets.build_report(b)["segments"]] == ["songs/bad.wav"]
    # Two spellings that would become one split are refused (`Hold-Out` and `hold out`).
    with open(tmp_path / "two.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "tags", "split")] + rows + [("songs/a.wav", "rock",
                                                                       "hold out")])
    with pytest.raises(ValueError, match=r"two.csv:9: split value 'hold out' and 'Hold-Out' "
                       r"\(line 6\) both become split 'hold_out'"):  # quoted as written
        audio_folder.read_table(tmp_path / "two.csv", config)
    with open(tmp_path / "case.csv", "w", newline="") as f:  # letter case alone: one spelling
        csv.writer(f).writerows([("path", "tags", "split")] + rows + [("songs/g.wav", "rock",
                                                                       "HOLD-OUT")])
    assert [r.split for r in audio_folder.read_table(tmp_path / "case.csv", config)[0]
            if r.split == "hold_out"] == ["hold_out", "hold_out"]
    with pytest.raises(ValueError, match="no split 'other'"):
        datasets.load_split("audio_folder", "other", tmp_path / "d", config)


def test_audio_folder_evaluation_only_build_and_training_on_it(folder, tmp_path, capsys):
    """A CSV whose rows are all `test` builds a dataset with that split only; training on it
    stops with one line naming the missing split (exit status DATA), not a traceback."""
    from tagger_jax import errors, train_data
    from tagger_jax.config_base import base_config

    (tmp_path / "t.csv").write_text("path,tags,split\nsongs/a.wav,rock;piano,test\n"
                                    "songs/c.wav,rock,test\n")
    config = AudioFolderConfig(name="evalonly", csv=str(tmp_path / "t.csv"))
    b = datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder, num_workers=1)
    assert datasets.split_sizes(b) == {"test": 2}
    assert b.info.metadata["missing_splits"] == ["train", "validation"]
    assert (f"note: {tmp_path / 't.csv'}: no train and no validation split (no row names it): "
            "training validates on `data.eval_split` (validation); set it to a split this build "
            "has (`tagger-jax train ... --set data.eval_split=NAME`)") in capsys.readouterr().err
    source, tags = datasets.load_split("audio_folder", "test", tmp_path / "d", "evalonly")
    assert len(source) == 2 and list(tags) == ["rock", "piano"]

    c = base_config()
    c.data.name, c.data.builder_config = "audio_folder", "evalonly"
    c.data.data_dir, c.data.manual_dir = str(tmp_path / "d"), str(folder)
    capsys.readouterr()
    assert errors.guarded(train_data.load_data, c) == errors.DATA
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("reusing the existing build ")]
    assert len(err) == 1 and "no split 'train'" in err[0] and "['test']" in err[0]
    assert "traceback" not in err[0]
    assert err[0].endswith("; data.train_split names it: set --config.data.train_split to a "
                           "split of this build"), err
    # train rows only: the training names data.eval_split, not only the missing split (a trial)
    (tmp_path / "t.csv").write_text("path,tags,split\nsongs/a.wav,rock;piano,train\n"
                                    "songs/c.wav,rock,train\n")
    config = AudioFolderConfig(name="trainonly", csv=str(tmp_path / "t.csv"))
    datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder, num_workers=1)
    c.data.builder_config, c.data.crop_labels, c.model.frame_head = "trainonly", "clip", False
    c.train.batch_size = 2
    capsys.readouterr()
    assert errors.guarded(train_data.load_data, c) == errors.DATA
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "no split 'validation'; its splits are ['train']; data.eval_split names it: set "
        "--config.data.eval_split to a split of this build (audio_folder: give some CSV rows the "
        "split 'validation' and rebuild)")
    c.data.eval_split = "train"  # then the test split, and how to train without a test
    assert errors.guarded(train_data.load_data, c) == errors.DATA
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "no split 'test'; its splits are ['train']; data.test_split names it: set "
        "--config.data.test_split to a split of this build, or "
        "--config.train.test_after_training=False")


def test_training_the_main_jobs_labels_on_a_collection_without_activity_is_a_config_error(
        folder, tmp_path, capsys):
    """From a new user's trial: the main job's config (activity crop labels, frame head) on an
    audio_folder build failed at the first batch, inside the input pipeline (exit 70). It is one
    line naming the settings and what to set now, before the pipelines start (exit 2)."""
    from tagger_jax import errors, train_data
    from tagger_jax.config_base import base_config

    (tmp_path / "t.csv").write_text("path,tags,split\nsongs/a.wav,rock;piano,train\n"
                                    "songs/c.wav,rock,validation\n")
    config = AudioFolderConfig(name="noactivity", csv=str(tmp_path / "t.csv"))
    datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder, num_workers=1)
    c = base_config()
    c.data.name, c.data.builder_config = "audio_folder", "noactivity"
    c.data.data_dir, c.data.manual_dir, c.data.test_split = str(tmp_path / "d"), str(folder), ""
    c.data.crop_labels, c.model.frame_head = "activity", True
    capsys.readouterr()
    assert errors.guarded(train_data.load_data, c) == errors.USAGE
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("reusing the existing build ")]
    # every setting to change at once: a new user's trial fixed them one run at a time
    assert err == ["error: data.crop_labels='activity' and model.frame_head=True need(s) each "
                   "clip's frame activity (the 'tag_mask' feature of soundfont_tags and "
                   "synthetic_tags/segments), which audio_folder/noactivity does not store; set "
                   "data.crop_labels=clip, model.frame_head=False, train.frame_loss_weight=0 and "
                   "train.batch_size=1 (docs/training.md, \"Training on your own "
                   "collection\")"], err
    c.data.test_split, c.data.extra_test_splits = "validation", ("test_timgm6mb",)
    assert errors.guarded(train_data.load_data, c) == errors.USAGE
    assert ("set data.crop_labels=clip, model.frame_head=False, train.frame_loss_weight=0, "
            "data.extra_test_splits='()' and train.batch_size=1 (docs/training.md") in \
        capsys.readouterr().err
    c.data.crop_labels, c.model.frame_head, c.train.batch_size = "clip", False, 1
    assert errors.guarded(train_data.load_data, c) == errors.DATA
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "no split 'test_timgm6mb'; its splits are ['train', 'validation']; "
        "data.extra_test_splits names it: set --config.data.extra_test_splits='()', or name "
        "splits of this build")
    c.data.test_split, c.data.extra_test_splits = "", ()
    c.data.crop_labels, c.model.frame_head, c.train.batch_size = "clip", False, 1
    data = train_data.load_data(c)
    assert data.tag_names == ("rock", "piano")
    c.data.crops_per_record = 2  # the trainer's epoch: the loader's, twice the steps
    doubled = train_data.load_data(c)
    assert doubled.steps_per_epoch == len(doubled.train) // c.train.num_epochs
    assert doubled.steps_per_epoch == 2 * data.steps_per_epoch
    it = iter(doubled.train)
    assert [next(it)["clip_index"].tolist() for _ in range(2)] == [[0], [0]]


def test_a_rebuild_is_refused_while_a_training_reads_the_build(folder, tmp_path):
    """`build-dataset --overwrite` deleted a build that a training was reading (the training
    went on with the deleted files and tested on a build that no longer existed). A training
    holds the build's readers' lock (`load_data(config, hold)`): the rebuild refuses in one line
    naming the reader, before deleting anything; once the training ends, it rebuilds."""
    from tagger_jax import errors, outputs, train_data
    from tagger_jax.config_base import base_config

    (tmp_path / "t.csv").write_text("path,tags,split\nsongs/a.wav,rock;piano,train\n"
                                    "songs/c.wav,rock,validation\n")
    config = AudioFolderConfig(name="held", csv=str(tmp_path / "t.csv"))
    b = datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder, num_workers=1)
    c = base_config()
    c.data.name, c.data.builder_config = "audio_folder", "held"
    c.data.data_dir, c.data.manual_dir, c.data.test_split = str(tmp_path / "d"), str(folder), ""
    c.data.crop_labels, c.model.frame_head, c.train.batch_size = "clip", False, 1
    with contextlib.ExitStack() as held:
        train_data.load_data(c, held)
        with pytest.raises(outputs.BusyError) as info:
            datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder,
                           num_workers=1, overwrite=True)
        assert (Path(b.data_dir) / "dataset_info.json").is_file()  # nothing deleted
    message = str(info.value)
    assert "\n" not in message and info.value.exit_status == errors.BUSY
    assert message.startswith(f"{b.data_dir}: the build audio_folder/held 1.0.0 is being read by "
                              f"another tagger-jax run (pid {os.getpid()} on host ")
    assert message.endswith("--overwrite would delete it while it is read: wait until no run "
                            "reads it, or build into another --data-dir")
    again = datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder,
                           num_workers=1, overwrite=True)  # the training ended
    assert datasets.split_sizes(again) == {"train": 1, "validation": 1}
    assert not list(Path(b.data_dir).parent.glob(".1.0.0.readers.*.json"))  # notes removed

MOVE_AWAY = """
import os, sys, time
from tagger_jax import outputs
data_dir, build = sys.argv[1], sys.argv[2]
with outputs.exclusive(data_dir, "data directory", directory=True):
    os.rename(build, build + ".away")  # as --overwrite deletes it, then builds it again
    print("held", flush=True)
    time.sleep(2)
    os.rename(build + ".away", build)
"""


@pytest.mark.parametrize("by_name", [False, True])
def test_a_run_that_starts_during_a_rebuild_waits_for_it(folder, tmp_path, capsys, by_name):
    """From a new user's trial: a training or evaluate started while `build-dataset
    --overwrite` rebuilt its dataset stopped with "not built" (exit 6). A run that finds no
    build while another run holds the data directory's lock waits for that run, says so, and
    opens the new build; `by_name`: a `--set` config, opened by its name from disk."""
    import subprocess
    import time

    (tmp_path / "t.csv").write_text("path,tags,split\nsongs/a.wav,rock;piano,train\n"
                                    "songs/c.wav,rock,validation\n")
    config = AudioFolderConfig(name="moving", csv=str(tmp_path / "t.csv"))
    b = datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder, num_workers=1)
    proc = subprocess.Popen([sys.executable, "-c", MOVE_AWAY, str(tmp_path / "d"),
                             str(b.data_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        capsys.readouterr()
        start = time.monotonic()
        source, tags = datasets.load_split("audio_folder", "train", tmp_path / "d",
                                           "moving" if by_name else config)
        waited = time.monotonic() - start
    finally:
        proc.wait()
    assert waited > 1.0 and len(source) == 1 and tags == ("rock", "piano")
    err = capsys.readouterr().err
    assert err.startswith(f"waiting for the other tagger-jax run using data directory "
                          f"{tmp_path / 'd'} (pid {proc.pid} on host ")

def _small_folder(root: Path, tags: tuple[str, ...]) -> Path:
    for k, tag in enumerate(tags):
        _tone(root / f"s{k}.wav", 0.2, 330 * (k + 1))
    (root / "tags.csv").write_text("path,tags,split\n" + "".join(
        f"s{k}.wav,{tag},{split}\n" for k, (tag, split) in
        enumerate(zip(tags, ("train", "valid", "test")))))
    return root


def test_audio_folder_refuses_to_reuse_a_build_from_another_source(tmp_path, capsys):
    """A build records its manual dir and CSV fingerprint; the same source is reused (and said
    so), another manual dir or a changed CSV fails with one line naming both sources."""
    first = _small_folder(tmp_path / "one", ("rock", "jazz", "rock"))
    other = _small_folder(tmp_path / "two", ("pop", "pop", "folk"))
    b = datasets.build("audio_folder", tmp_path / "d", manual_dir=first, num_workers=1)
    recorded = b.info.metadata["built_from"]
    text = (first / "tags.csv").read_bytes()
    assert recorded["manual_dir"] == str(first.resolve())
    assert recorded["csv"] == str((first / "tags.csv").resolve())
    assert recorded["csv_bytes"] == len(text)
    assert recorded["csv_sha256"] == hashlib.sha256(text).hexdigest()
    capsys.readouterr()

    again = datasets.build("audio_folder", tmp_path / "d", manual_dir=first, num_workers=1)
    assert "reusing the existing build audio_folder/default 1.0.0" in capsys.readouterr().err
    assert datasets.tag_names(again) == ("rock", "jazz")
    (first / "notes.csv").write_text("unrelated\n")  # the CSV the build read is still the same
    datasets.build("audio_folder", tmp_path / "d", manual_dir=first, num_workers=1)
    with pytest.raises(ValueError) as info:
        datasets.build("audio_folder", tmp_path / "d", manual_dir=other, num_workers=1)
    message = str(info.value)
    assert "\n" not in message
    assert str(first.resolve()) in message and str(other.resolve()) in message
    assert "another --data-dir" in message and "--overwrite" in message
    with pytest.raises(ValueError, match="another --data-dir"):  # training's path too
        datasets.ensure_built("audio_folder", tmp_path / "d", manual_dir=other)
    (first / "tags.csv").write_text(text.decode().replace("s2.wav,rock", "s2.wav,jazz"))
    with pytest.raises(ValueError, match="this run asks for"):
        datasets.build("audio_folder", tmp_path / "d", manual_dir=first, num_workers=1)
    assert datasets.tag_names(datasets.get_builder("audio_folder", tmp_path / "d")) == (
        "rock", "jazz")  # the old build is untouched
    capsys.readouterr()
    datasets.load_split("audio_folder", "test", tmp_path / "d")  # evaluate's and explain's path
    datasets.ensure_built("audio_folder", tmp_path / "d")  # training's: the note said once
    [note] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert f"its CSV {(first / 'tags.csv').resolve()} has changed since the build" in note
    assert hashlib.sha256(text).hexdigest()[:12] in note
    assert (f"`tagger-jax build-dataset audio_folder --data-dir {tmp_path / 'd'} --manual-dir "
            f"{first.resolve()} --overwrite` builds it again") in note  # as a trial can run it
    (first / "tags.csv").write_bytes(text)  # the same bytes again (a new mtime): nothing to say
    metadata = dict(datasets.get_builder("audio_folder", tmp_path / "d").info.metadata)
    assert tfds.builder_cls("audio_folder").source_note(metadata) is None


def test_csv_lines_are_the_files_lines_and_empty_rows_are_skipped(tmp_path):
    """A trial's CSV with blank lines got the line numbers of its records, not of the file
    (`listed twice ... (lines 3, 5)` for lines 5 and 7), and Excel's `,,` rows under the table
    were refused as an empty path."""
    folder = _small_folder(tmp_path / "m", ("rock", "jazz", "rock"))
    (folder / "tags.csv").write_bytes(
        b"path,tags,split\r\ns0.wav,rock,train\r\n\r\n\r\ns1.wav,jazz,valid\r\n\r\n"
        b"s2.wav,rock,test\r\n,,\r\n , ,\r\n")
    rows, _ = audio_folder.read_table(folder / "tags.csv", AudioFolderConfig(name="x"), folder)
    assert [(r.line, r.path) for r in rows] == [(2, "s0.wav"), (5, "s1.wav"), (7, "s2.wav")]
    (folder / "dup.csv").write_text("sep=,\npath,tags\n\nmissing.wav,rock\n")
    rows, _ = audio_folder.read_table(folder / "dup.csv", AudioFolderConfig(name="y"), folder)
    assert [r.line for r in rows] == [4]


def test_the_rebuild_hint_is_a_command_that_runs(tmp_path):
    """A trial's changed-CSV note suggested `--config mine ... --manual-dir DIR`, which was
    refused as written (no config 'mine' without its `--set` fields)."""
    from tagger_jax.datasets import _api

    folder = _small_folder(tmp_path / "my music", ("rock", "jazz", "rock"))
    (folder / "tags.csv").write_text((folder / "tags.csv").read_text().replace(",", ";"))
    config = AudioFolderConfig(name="mine", delimiter="semicolon",
                               split_fractions=(0.5, 0.25, 0.25),
                               description="mine: {'delimiter': 'semicolon', 'split_fractions': "
                                           "(0.5, 0.25, 0.25)}")
    b = datasets.build("audio_folder", tmp_path / "d", config, manual_dir=folder, num_workers=1)
    assert _api._rebuild_command("audio_folder", b, tmp_path / "d") == (  # a tuple as --set
        "tagger-jax build-dataset audio_folder --config mine --set delimiter=semicolon "  # reads
        f"--set split_fractions=0.5,0.25,0.25 --data-dir {tmp_path / 'd'} --manual-dir "
        f"'{folder.resolve()}' --overwrite")


def test_overwrite_checks_the_new_source_before_deleting_the_build(tmp_path):
    """A trial's `--overwrite` with a CSV holding `Fast` and `fast` was refused after the
    working build had been deleted; the CSV is checked first, and the build stays."""
    folder = _small_folder(tmp_path / "m", ("rock", "jazz", "rock"))
    datasets.build("audio_folder", tmp_path / "d", manual_dir=folder, num_workers=1)
    text = (folder / "tags.csv").read_text()
    (folder / "tags.csv").write_text(text.replace("s1.wav,jazz", "s1.wav,Rock"))
    with pytest.raises(ValueError, match="differ only in case"):
        datasets.build("audio_folder", tmp_path / "d", manual_dir=folder, num_workers=1,
                       overwrite=True)
    kept = datasets.get_builder("audio_folder", tmp_path / "d")
    assert datasets.tag_names(kept) == ("rock", "jazz") and len(
        datasets.load_split("audio_folder", "train", tmp_path / "d")[0]) == 1


def test_metadata_features_are_the_mel_settings_only(tmp_path):
    """The stored features are whole-clip log-mels: the metadata lists what computed them, not
    a model's chunk length (it used to record FeatureParams' default chunk_frames 256, which a
    model with 128-frame chunks reads just as well)."""
    manual = _small_folder(tmp_path / "m", ("rock", "jazz", "rock"))
    b = datasets.build("audio_folder", tmp_path / "d", manual_dir=manual, num_workers=1)
    stored = datasets.get_builder("audio_folder", tmp_path / "d").info.metadata["features"]
    assert stored == {"sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 96,
                      "log_scale": "amplitude_to_db", "stft_pad_mode": "constant"}
    source, _ = datasets.load_split("audio_folder", "train", tmp_path / "d")
    wave = audio.load_audio(manual / "s0.wav", stored["sample_rate"])
    want = audio.log_mel(wave, **audio.FeatureParams(**stored).mel_kwargs)
    np.testing.assert_array_equal(source[0]["mel"], want.astype(np.float16))
    assert b.is_prepared()


def test_builders_leave_no_temporary_folders(tmp_path, monkeypatch):
    """TFDS's `DatasetInfo.initialize_from_bucket`, which the builder constructor calls for every
    data directory without a finished build, makes a temporary folder for metadata from GCS and
    never removes it (GCS is disabled in the pip release, so the folder stays empty): one more
    empty `/tmp/tmp...tfds` per command or build. Every builder of the project is a local one and
    must leave the temporary directory as it found it."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    manual = _small_folder(tmp_path / "m", ("rock", "jazz", "rock"))
    datasets.get_builder("synthetic_tags", tmp_path / "d", SyntheticConfig(name="tiny", **TINY))
    datasets.build("audio_folder", tmp_path / "d", manual_dir=manual, num_workers=1)
    assert sorted(p.name for p in scratch.iterdir()) == []


# ----------------------------------------------------------------------------------- synthetic

TINY = dict(num_train=4, num_validation=2, num_test=2, duration_s=4.5)


def test_synthetic_segments_build_matches_generator_and_rebuilds_identically(tmp_path):
    config = SyntheticConfig(name="tiny_segments", segments=True, **TINY)
    b = datasets.build("synthetic_tags", tmp_path / "a", config, num_workers=2)
    assert datasets.tag_names(b) == synth.SYNTH_TAGS
    assert datasets.split_sizes(b) == {"train": 4, "validation": 2, "test": 2}
    source, _ = datasets.load_split("synthetic_tags", "validation", tmp_path / "a", config)
    for i, ex in enumerate(_all(source)):
        wave, tags, mask = synth.generate_clip((0, 1, i), 4.5, segments=True)
        np.testing.assert_array_equal(ex["tags"], tags)
        np.testing.assert_array_equal(ex["tag_mask"], mask)
        np.testing.assert_array_equal(ex["mel"], audio.log_mel(wave).astype(np.float16))
        assert ex["mel"].shape == (96, mask.shape[1])
        assert ex["clip_id"].decode() == f"validation-{i:05d}"
    datasets.build("synthetic_tags", tmp_path / "b", config, num_workers=1)
    assert _records(tmp_path / "a", "synthetic_tags", "tiny_segments") == \
        _records(tmp_path / "b", "synthetic_tags", "tiny_segments")


def test_training_refuses_features_or_an_input_kind_the_build_cannot_feed(tmp_path):
    """From a new user's trial: `--set features.hop_length=512` trained on the stored log-mels
    (hop 256) without a word, and the exported model then tagged audio with hop 512 (wrong
    tags, exit 0); `model.architecture=lee_won` on a build without waveforms was an unexpected
    KeyError (exit 70). Both are config errors (exit 2) naming the fields and the build."""
    from tagger_jax import errors
    from tagger_jax.config_base import base_config
    from tagger_jax.train_data import check_dataset_fits

    b = datasets.ensure_built("synthetic_tags", tmp_path, SyntheticConfig(name="tiny", **TINY),
                              num_workers=1)
    features = base_config().features
    check_dataset_fits(b, "mel", features, "pons_won")  # the build's own settings: fine
    features.chunk_frames = 64  # how the model reads the records: not the build's business
    check_dataset_fits(b, "mel", features, "pons_won")
    features.hop_length, features.log_scale = 512, "power_to_db"
    with pytest.raises(errors.ConfigError) as info:
        check_dataset_fits(b, "mel", features, "pons_won")
    assert str(info.value).startswith(
        "config.features differ from the log-mel settings synthetic_tags/tiny was built with "
        "(hop_length: dataset 256, model 512; log_scale: dataset 'amplitude_to_db', model "
        "'power_to_db'): ")
    assert errors.exit_status(info.value) == errors.USAGE
    with pytest.raises(errors.ConfigError, match=r"^model.architecture 'lee_won' reads the "
                       r"'audio' feature, which synthetic_tags/tiny does not store"):
        check_dataset_fits(b, "audio", base_config().features, "lee_won")
    # What a checkpoint records of its train split: what it holds, not where it lies.
    from tagger_jax.train_data import split_identity

    identity = split_identity(b.data_dir, "train")
    assert identity["dataset"] == f"synthetic_tags/tiny {b.version}"
    assert identity["records"] == TINY["num_train"] and identity["bytes"] > 0
    assert split_identity(b.data_dir, "no_such_split") is None
    assert split_identity(tmp_path / "nowhere", "train") is None


def test_ensure_built_builds_synthetic_once(tmp_path, caplog, capsys):
    """Built on first use; the second call reuses the build and says so on stdout."""
    config = SyntheticConfig(name="tiny", waveform=True, **TINY)
    caplog.set_level(logging.WARNING)
    b = datasets.ensure_built("synthetic_tags", tmp_path, config, num_workers=1)
    # TFDS's is_prepared() warns about the version folder a fresh build has not made yet.
    assert "Variant folder" not in caplog.text and "dataset_info.json" not in caplog.text
    assert "reusing" not in capsys.readouterr().err
    files = sorted(Path(str(b.data_dir)).glob("*.array_record*"))
    stamps = [f.stat().st_mtime_ns for f in files]
    b2 = datasets.ensure_built("synthetic_tags", tmp_path, config)
    assert [f.stat().st_mtime_ns for f in files] == stamps and b2.is_prepared()
    said = capsys.readouterr()
    assert said.out == "" and said.err == (
        f"reusing the existing build synthetic_tags/tiny {b2.version} in {b2.data_dir} "
        "(tagger-jax build-dataset --overwrite rebuilds it)\n")
    source, tags = datasets.load_split("synthetic_tags", "train", tmp_path, config)
    ex = source[3]
    assert len(source) == 4 and tags == synth.SYNTH_TAGS
    assert ex["mel"].shape == (96, 1 + int(4.5 * SR) // 256) and "tag_mask" not in ex
    wave, tags_3, _ = synth.generate_clip((0, 0, 3), 4.5)
    np.testing.assert_array_equal(ex["audio"], wave)
    np.testing.assert_array_equal(ex["tags"], tags_3)


def test_a_version_folder_without_a_finished_build_is_refused_and_warned_about(tmp_path, caplog):
    """A synthetic_tags version folder with no dataset_info.json: TFDS would take it as built
    and build nothing; build refuses it in one line, TFDS's own warning still shows, and
    --overwrite removes it and builds."""
    config = SyntheticConfig(name="one", num_train=1, num_validation=1, num_test=1,
                             duration_s=4.5)
    folder = tmp_path / "synthetic_tags" / "one" / "1.0.0"
    folder.mkdir(parents=True)
    caplog.set_level(logging.WARNING)
    with pytest.raises(ValueError, match=re.escape(str(folder))
                       + " exists but holds no finished build .*--overwrite"):
        datasets.build("synthetic_tags", tmp_path, config, num_workers=1)
    assert f"Variant folder {folder} has no dataset_info.json" in caplog.text
    with pytest.raises(FileNotFoundError, match="not built"):
        datasets.load_split("synthetic_tags", "train", tmp_path, config)
    caplog.clear()
    b = datasets.build("synthetic_tags", tmp_path, config, num_workers=1, overwrite=True)
    assert datasets.split_sizes(b) == {"train": 1, "validation": 1, "test": 1}
    assert (folder / "dataset_info.json").is_file()


def test_default_synthetic_config_fits_the_model():
    cfg = datasets.SyntheticTags.builder_configs["default"]
    assert (cfg.num_train, cfg.num_validation, cfg.num_test) == (1500, 200, 300)
    assert 1 + int(cfg.duration_s * SR) // 256 >= 256 + 200  # 256-frame crops with margin


def test_ensure_built_explains_manual_datasets(tmp_path):
    with pytest.raises(FileNotFoundError, match="build-dataset magnatagatune"):
        datasets.ensure_built("magnatagatune", tmp_path)
    with pytest.raises(FileNotFoundError, match="not built"):
        datasets.load_split("msd", "train", tmp_path)


def test_audio_warnings_are_recorded_and_summarised_and_mpg123_notes_do_not_leak(tmp_path,
                                                                                 capfd):
    """Clips kept but degraded (docs/audio.md's codes) are listed in the metadata and in
    audio_warnings.tsv, with one summary line at build time; libmpg123's resync notes on a
    damaged mp3 become its `damaged_data` warning instead of lines on the terminal."""
    manual = tmp_path / "manual"
    manual.mkdir()
    t = np.arange(4 * SR) / SR
    sf.write(manual / "clean.wav", 0.3 * np.sin(2 * np.pi * 440 * t), SR)
    sf.write(manual / "blip.wav", 0.3 * np.sin(2 * np.pi * 440 * t[:int(0.3 * SR)]), SR)
    sf.write(manual / "phone.wav", 0.3 * np.sin(2 * np.pi * 440 * t[::2]), 8000)
    sf.write(manual / "clip.mp3", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
    data = bytearray((manual / "clip.mp3").read_bytes())
    mid = len(data) // 2
    data[mid:mid + 300] = np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes()
    (manual / "clip.mp3").write_bytes(bytes(data))
    (manual / "tags.csv").write_text("path,tags,split\nclean.wav,a,train\nphone.wav,a;b,valid\n"
                                     "clip.mp3,b,test\nblip.wav,b,train\n")
    b = datasets.build("audio_folder", tmp_path / "d", manual_dir=manual, num_workers=1)
    out, err = capfd.readouterr()
    assert "Illegal Audio-MPEG-Header" not in err + out and "resync" not in err + out
    found = datasets.audio_warnings(b)
    # a 0.3-s clip: shorter than any shipped config's training chunk (4 s of clean.wav is not)
    assert [(w["path"], w["code"]) for w in found["train"]] == [("blip.wav", "short_clip")]
    assert found["train"][0]["message"] == (
        f"{manual / 'blip.wav'}: 19 frames (0.30 s), shorter than a training chunk (128 frames, "
        "2.05 s, in the CPU configs; 256, 4.10 s, in the paper's): training repeats it to fill "
        "one, so its tags are learnt from a loop")
    assert [w["code"] for w in found["validation"]] == ["low_sample_rate"]
    assert found["validation"][0]["path"] == "phone.wav"
    mp3 = {w["code"]: w["message"] for w in found["test"]}
    assert set(mp3) == {"damaged_data", "duration_mismatch"}
    assert "mpg123: Note: Illegal Audio-MPEG-Header" in mp3["damaged_data"]
    summary = [line for line in err.splitlines() if "audio warnings" in line]
    assert summary == [f"audio_folder: 3 clip(s) kept with audio warnings (damaged_data 1, "
                       f"duration_mismatch 1, low_sample_rate 1, short_clip 1); listed in "
                       f"{datasets.warnings_path(b)}"]
    rows = datasets.warnings_path(b).read_text().strip().split("\n")
    assert rows[0] == "split\tclip_id\tpath\tcode\tmessage" and len(rows) == 5
    reopened = datasets.get_builder("audio_folder", tmp_path / "d")
    assert datasets.audio_warnings(reopened) == found  # kept in the dataset's metadata
    from tagger_jax import inference  # explain and embed --dataset carry them

    assert inference.record_warnings("audio_folder", "validation", tmp_path / "d") == {
        found["validation"][0]["clip_id"]: {"low_sample_rate": found["validation"][0]["message"]}}
    # ... but not the note about training chunks (they say themselves when they repeat a clip)
    assert inference.record_warnings("audio_folder", "train", tmp_path / "d") == {}
    assert inference.record_warnings("audio_folder", "train", tmp_path / "nowhere") == {}
    (item,) = inference.dataset_inputs("audio_folder", "validation", "mel", tmp_path / "d")
    assert dict(item.load().warnings) == {"low_sample_rate": found["validation"][0]["message"]}
    assert datasets.split_sizes(reopened) == {"train": 2, "validation": 1, "test": 1}


def test_a_resumed_build_warns_of_short_clips_from_its_cache(tmp_path):
    """A resumed build takes a clip's features and warnings from the per-clip cache of the
    interrupted one; `short_clip` comes from the features, so a cache written before that
    warning existed (warnings without it) still gives it."""
    import json

    from tagger_jax.datasets import _extract

    sf.write(tmp_path / "blip.wav", 0.1 * np.sin(np.arange(int(0.3 * SR)) * 0.2), SR)
    item = {"key": "blip", "clip_id": "blip", "path": "blip.wav", "tags": [1], "waveform": False,
            "file": str(tmp_path / "blip.wav"), "cache": str(tmp_path / "blip.npz")}
    example, error, notes = _extract.audio_example(item)
    assert error is None and list(notes) == ["short_clip"]
    with np.load(item["cache"]) as z:  # as an older build's cache holds it
        stored = dict(z)
    assert json.loads(str(stored["warnings"])) == {}
    stored["mel"] = stored["mel"] + 1  # to tell the cached features from decoded ones
    np.savez(item["cache"], **stored)
    again, error, notes_again = _extract.audio_example(item)
    np.testing.assert_array_equal(again["mel"], example["mel"] + 1)  # from the cache
    assert error is None and notes_again == notes


def test_ctrl_c_stops_a_parallel_build_in_one_line(tmp_path):
    """Ctrl-C during a build with worker processes (SIGINT to the whole process group, as a
    terminal sends it): exit status 130 and one "interrupted" line within seconds, no worker's
    traceback. (A new user's interrupted build printed a traceback per worker, and once hung in
    the pool's cleanup: a worker had died midway through sending a result.)"""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tagger_jax import cli; sys.exit(cli.console())",
         "build-dataset", "synthetic_tags", "--data-dir", str(tmp_path), "--num-workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # as from a shell: a test runner's worker may ignore SIGINT, which children inherit
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stderr.readline().startswith("building synthetic_tags"), proc.communicate()
        time.sleep(6.0)  # the workers started (spawned: a few seconds) and busy on clips
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_stopping_the_pool_does_not_wait_forever():
    """After an interrupt the workers are killed and `Pool.terminate` (which waits forever for
    a result a killed worker left half sent) gets a bounded time."""
    import threading
    import time

    from tagger_jax.datasets import _common

    class Worker:
        exitcode = None
        killed = False

        def kill(self):
            self.killed = True

    class StuckPool:
        _pool = [Worker(), Worker()]

        def terminate(self):
            threading.Event().wait()  # the pool's result thread blocked on a partial message

        def join(self):
            pass

    pool = StuckPool()
    start = time.monotonic()
    _common._stop_pool(pool, timeout_s=0.5)
    assert time.monotonic() - start < 5
    assert all(w.killed for w in pool._pool)


def test_a_config_given_as_an_object_opens_without_tfds_noise(tmp_path, caplog):
    """`build-dataset --config NAME --set ...` hands TFDS a config object, on which it logs
    "Using custom data configuration: ..." (a new user's build printed it raw); we drop it."""
    caplog.set_level(logging.INFO)
    datasets.get_builder("synthetic_tags", tmp_path, SyntheticConfig(name="mine", num_train=2))
    assert not [r for r in caplog.records if "custom data configuration" in r.getMessage()]
    logging.getLogger("absl").warning("Using custom data configuration: after")  # only inside
    assert [r for r in caplog.records if "custom data configuration" in r.getMessage()]


def test_a_dataset_of_your_own_files_without_them_says_what_to_give(tmp_path):
    """Building `audio_folder` without --manual-dir is one short line asking for it (not TFDS's
    2,000-character instructions); opening a config that is not built names the configs that
    are, and the command that builds the missing one."""
    with pytest.raises(FileNotFoundError) as info:
        datasets.build("audio_folder", tmp_path / "d")
    message = str(info.value)
    assert message.startswith("audio_folder: built from files you provide: give --manual-dir DIR")
    assert len(message) < 250 and "\n" not in message
    assert not (tmp_path / "d" / "audio_folder").exists()
    _small_folder(tmp_path / "one", ("rock", "jazz", "rock"))
    config = AudioFolderConfig(name="mine", split_seed=1)
    datasets.build("audio_folder", tmp_path / "d", config, manual_dir=tmp_path / "one",
                   num_workers=1)
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_split("audio_folder", "test", tmp_path / "d")
    message = str(info.value)
    assert "build-dataset audio_folder --config default --data-dir" in message
    assert "--manual-dir DIR" in message and "built there: configs ['mine']" in message


# ----------------------------------------------------------------------------------- bad inputs
# Each names the file (and line or field) in one line, before any clip is decoded.


def _tiny_mtat(root: Path, paths: list[str], columns=None) -> Path:
    """annotations_final.csv with the top-50 columns (or `columns`), clip k tagged k % 50."""
    columns = list(columns or magnatagatune.MTAT_TOP50)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "annotations_final.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(["clip_id", *columns, "mp3_path"])
        for k, rel in enumerate(paths):
            w.writerow([str(k), *["1" if j == k % len(columns) else "0"
                                  for j in range(len(columns))], rel])
    return root


def _no_decoding(monkeypatch):
    from tagger_jax.datasets import _extract

    def fail(item):
        raise AssertionError(f"decoded {item['path']}")

    monkeypatch.setattr(_extract, "audio_example", fail)


@pytest.mark.parametrize("case", ["last_missing", "gap", "last_truncated", "middle_truncated"])
def test_mtat_incomplete_zip_parts_are_refused_before_any_clip(case, tmp_path, monkeypatch,
                                                                capsys):
    from tagger_jax import errors
    from tagger_jax.datasets import _archive

    paths = [f"{FOLDERS[k]}/clip-{k}.mp3" for k in range(16)]
    root = _tiny_mtat(tmp_path / "manual", paths)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for rel in paths:
            z.writestr(rel, os.urandom(3000))
    blob = buf.getvalue()
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    for k in range(3):
        (root / f"mp3.zip.{k + 1:03d}").write_bytes(blob[cuts[k]:cuts[k + 1]])
    assert _archive.check_zip(_archive.find_parts(root, "mp3.zip"))  # the whole set reads
    found = {"last_missing": "001, 002", "gap": "001, 003"}.get(case, "001, 002, 003")
    if case == "last_missing":
        (root / "mp3.zip.003").unlink()
    elif case == "gap":
        (root / "mp3.zip.002").unlink()
    else:
        part = root / ("mp3.zip.003" if case == "last_truncated" else "mp3.zip.002")
        part.write_bytes(part.read_bytes()[:-500])
    _archive.open_zip.cache_clear()
    _no_decoding(monkeypatch)
    with pytest.raises(errors.DataError) as info:
        datasets.build("magnatagatune", tmp_path / "d", manual_dir=root, num_workers=1)
    assert str(info.value).startswith(
        f"{root / 'mp3.zip.001'}...: not a complete zip archive (parts found: {found}; is a part "
        "missing or truncated?")
    assert errors.exit_status(info.value) == errors.DATA
    # refused before the build is announced or any folder made (preflight)
    assert "building" not in capsys.readouterr().err
    assert not (tmp_path / "d" / "magnatagatune").exists()


def test_a_split_whose_every_clip_is_skipped_names_dataset_split_and_reasons(tmp_path, capfd):
    """Not TFDS's "No examples were yielded": the dataset, split, count and first reasons, exit
    6, and the skipped files listed in a report the message names."""
    from tagger_jax import cli

    manual = _small_folder(tmp_path / "m", ("rock", "jazz", "rock"))
    (manual / "songs").mkdir()
    for k in range(4):  # there, but not audio (missing files are refused before the build)
        (manual / "songs" / f"bad{k}.wav").write_text("not audio")
    with open(manual / "tags.csv", "a") as f:
        f.write("".join(f"songs/bad{k}.wav,rock,holdout\n" for k in range(4)))
    rc = cli.main(["build-dataset", "audio_folder", "--data-dir", str(tmp_path / "d"),
                   "--manual-dir", str(manual), "--num-workers", "1"])
    err = capfd.readouterr().err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    report = (tmp_path / "d" / "downloads" / "tagger_jax_resume" / "audio_folder" / "default"
              / "1.0.0" / "skipped_files.tsv")
    assert rc == 6
    line = line[line.index("error:"):]
    assert line.startswith(f"error: audio_folder/default: split 'holdout': all 4 clips were "
                           f"skipped ({manual / 'songs' / 'bad0.wav'}: "), line
    assert line.endswith(f"; ...); every skipped file is listed in {report}"), line
    assert len(report.read_text().splitlines()) == 1 + 4
    assert "No examples were yielded" not in err


def test_missing_files_that_empty_splits_are_all_named_before_the_build(tmp_path, capfd):
    """From a new user's trial: with the only file of two splits missing, the build stopped at
    the first such split, and the next run (that row fixed) at the second. Both are named at
    once, with their near misses, before anything is decoded; and a tag whose only train row
    names a missing file is said to have no train clip."""
    from tagger_jax import cli

    manual = _small_folder(tmp_path / "m", ("rock", "jazz", "rock"))
    (manual / "tags.csv").write_text(
        "path,tags,split\ns0.wav,rock,train\ngone.wav,piano,train\nS1.WAV,jazz,valid\n"
        "other/s2.wav,rock,test\n")
    rc = cli.main(["build-dataset", "audio_folder", "--data-dir", str(tmp_path / "d"),
                   "--manual-dir", str(manual), "--num-workers", "1"])
    err = capfd.readouterr().err
    assert rc == 6
    assert err.strip().splitlines()[-1] == (
        f"error: {manual / 'tags.csv'}: split 'validation': its only clip's file is missing "
        f"({manual / 'S1.WAV'}: file not found; did you mean 's1.wav'? (line 4 of tags.csv)); "
        f"split 'test': its only clip's file is missing ({manual / 'other' / 's2.wav'}: file "
        "not found; did you mean 's2.wav'? (line 5 of tags.csv)); 1 file(s) of other splits "
        "are missing too: fix the paths in the CSV, or remove those rows")
    # refused before the build: nothing left behind but the data directory's lock file
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".tagger-jax.lock"]
    (manual / "tags.csv").write_text(
        "path,tags,split\ns0.wav,rock,train\ngone.wav,piano,train\ns1.wav,jazz,valid\n"
        "s2.wav,rock,test\n")
    b = datasets.build("audio_folder", tmp_path / "d", manual_dir=manual, num_workers=1)
    assert b.info.metadata["tags_without_train_clips"] == ["jazz", "piano"]
    assert ("2 tag(s) have no clip in the train split (jazz, piano; 1 row(s) whose file is "
            "missing left out)") in capfd.readouterr().err


def test_live_skip_warnings_stop_after_twenty_a_split_and_the_summary_counts_all(tmp_path,
                                                                                  capfd):
    """A build with thousands of missing files must not scroll one warning per file: 20 a split
    as it goes, one line saying the rest are counted, and every one in the summary's count and in
    skipped_files.tsv."""
    from tagger_jax import cli
    from tagger_jax.datasets import _common

    manual = _small_folder(tmp_path / "m", ("rock", "jazz", "rock"))
    with open(manual / "tags.csv", "a") as f:
        f.write("".join(f"gone{k}.wav,rock,train\n" for k in range(23)))
        f.write("gone_test.wav,rock,test\n")
    rc = cli.main(["build-dataset", "audio_folder", "--data-dir", str(tmp_path / "d"),
                   "--manual-dir", str(manual), "--num-workers", "1"])
    out, err = capfd.readouterr()
    assert rc == 0
    shown = [x for x in err.splitlines() if "warning: audio_folder/train: skipped" in x]
    assert len(shown) == _common.SKIP_WARNINGS_SHOWN == 20
    assert shown[0].endswith(f"{manual / 'gone0.wav'}: file not found")
    assert err.count("further skipped files of this split are counted, not shown") == 1
    assert "warning: audio_folder/test: skipped" in err  # counted per split
    assert "24 files skipped (listed in " in out
    report = (tmp_path / "d" / "audio_folder" / "default" / "1.0.0" / "skipped_files.tsv")
    assert len(report.read_text().splitlines()) == 1 + 24


def test_msd_num_train_that_leaves_no_validation_clips_is_refused(msd_dir, tmp_path):
    from tagger_jax import errors

    with pytest.raises(errors.ConfigError, match=r"msd/big: num_train=5 leaves no validation "
                       r"clips: .*filtered_list_train.cP lists 5 ids"):
        datasets.build("msd", tmp_path, MsdConfig(name="big", num_train=5),
                       manual_dir=msd_dir["root"], num_workers=1)


def test_mtat_annotation_errors_name_the_file_and_line(tmp_path, monkeypatch, capsys):
    root = _tiny_mtat(tmp_path / "m", ["0/a.mp3", "x/b-2-0-29.mp3", "c/c.mp3"])
    for folder in FOLDERS:
        (root / folder).mkdir()
    csv_path = root / "annotations_final.csv"
    _no_decoding(monkeypatch)
    with pytest.raises(ValueError) as info:
        datasets.build("magnatagatune", tmp_path / "d", manual_dir=root, num_workers=1)
    assert str(info.value) == (f"{csv_path}:3: mp3_path 'x/b-2-0-29.mp3' does not start with one "
                               "of the folders 0-9, a-f")
    _tiny_mtat(root, ["0/a.mp3"], columns=[f"t{k}" for k in range(9)])
    with pytest.raises(ValueError) as info:
        datasets.build("magnatagatune", tmp_path / "d", manual_dir=root, num_workers=1)
    assert str(info.value) == f"{csv_path}: need at least 50 tag columns, found 9"
    data = csv_path.read_bytes()
    csv_path.write_bytes(b"\xef\xbb\xbf" + data)  # a byte-order mark (a Windows editor's)
    assert magnatagatune.read_annotations(csv_path).mp3_paths == ["0/a.mp3"]
    csv_path.write_bytes(data.replace(b"\t", b","))
    with pytest.raises(ValueError, match="got a comma-separated line .*: re-save it with tabs"):
        magnatagatune.read_annotations(csv_path)
    csv_path.write_bytes(data.replace(b"\t\"mp3_path\"", b"\t\"file\"", 1))  # last column renamed
    with pytest.raises(ValueError) as info:  # a trial was shown the header's start only
        magnatagatune.read_annotations(csv_path)
    assert str(info.value).endswith("ending with mp3_path, got ... ['t7', 't8', 'file'] at its "
                                    "end (11 columns)")
    csv_path.write_bytes(data.replace(b"0/a.mp3", b"0/a\xff.mp3"))
    with pytest.raises(ValueError) as info:
        magnatagatune.read_annotations(csv_path)
    assert str(info.value) == (f"{csv_path}:2: not UTF-8 text (byte 0xff at column "
                               f"{data.splitlines()[1].index(b'0/a.mp3') + 4}); save the file "
                               "as UTF-8")


def _won_files(root: Path, chosen: dict, paths: list[str]) -> None:
    files = {"train": "train.npy", "validation": "valid.npy", "test": "test.npy"}
    for split, rows in chosen.items():
        np.save(root / files[split], np.array([f"{i}\t{paths[i]}" for i in rows]))


def test_mtat_won2020_split_file_errors_and_tag_order_note(tmp_path, capsys):
    paths = [f"{FOLDERS[k]}/clip-{k}.mp3" for k in range(6)]
    root = _tiny_mtat(tmp_path / "m", paths)
    ann = magnatagatune.read_annotations(root / "annotations_final.csv")
    _won_files(root, {"train": [0, 1, 2], "validation": [3], "test": [4, 1, 5]}, paths)
    splits, _ = magnatagatune.read_split_files(root, ann)
    assert splits["test"] == [4, 1, 5]  # the published files decide; the overlap is said
    assert capsys.readouterr().err == (
        f"warning: {root / 'train.npy'} and {root / 'test.npy'} both list 1 clip(s), e.g. "
        "annotation row 1 (1/clip-1.mp3); they are built into both splits, as the files say\n")
    _won_files(root, {"train": [0, 1, 2], "validation": [3], "test": [4, 5]}, paths)
    np.save(root / "tags.npy", np.array(list(magnatagatune.MTAT_TOP50), dtype=object))
    with pytest.raises(ValueError, match=r"tags.npy: must hold a NumPy array of the 50 tag names "
                       r"\(strings\) in the model's order; it does not load \(Object arrays"):
        magnatagatune.read_split_files(root, ann)
    np.save(root / "tags.npy", np.array(list(magnatagatune.MTAT_TOP50)[:49]))
    with pytest.raises(ValueError, match=r"tags.npy: must hold .*; it holds <U\d+ shape \(49,\)"):
        magnatagatune.read_split_files(root, ann)
    (root / "tags.npy").unlink()
    with pytest.raises(FileNotFoundError, match="no MagnaTagATune audio found"):  # after the note
        datasets.build("magnatagatune", tmp_path / "d", "won2020", manual_dir=root)
    assert ("magnatagatune/won2020: no tags.npy beside the split files: the tags are the top-50 "
            "order of annotations_final.csv") in capsys.readouterr().err


def test_jamendo_tag_errors_name_the_tsv_and_the_vocabulary(tmp_path):
    data = tmp_path / "m" / "mtg-jamendo-dataset" / "data"
    tracks = dict(JAMENDO, validation=JAMENDO["validation"] + [
        ("track_0009999", "09/9999.mp3", ["genre---zzz"])])
    for split, rows in tracks.items():
        _jamendo_tsv(data / "splits" / "split-0" / f"autotagging_top50tags-{split}.tsv", rows)
    (tmp_path / "m" / "audio").mkdir()  # (the tracks' files are not needed to get this far)
    top50 = data / "tags" / "top50.txt"
    with pytest.raises(ValueError) as info:  # without top50.txt: the union, said so
        datasets.build("mtg_jamendo", tmp_path / "d", manual_dir=tmp_path / "m")
    assert str(info.value) == (
        "mtg_jamendo: expected 50 tags, got 6 (from the union of the tags in the split-0 TSV "
        f"files, used because {top50} is missing)")
    top50.parent.mkdir()
    top50.write_text("\n".join(JAMENDO_TAGS) + "\n")
    with pytest.raises(ValueError) as info:
        datasets.build("mtg_jamendo", tmp_path / "d", manual_dir=tmp_path / "m")
    tsv = data / "splits" / "split-0" / "autotagging_top50tags-validation.tsv"
    assert str(info.value) == (f"{tsv}:4: track_0009999: tags ['genre---zzz'] are not among "
                               f"the 50 tags of {top50}")


def test_a_set_config_built_with_other_values_is_not_reused(tmp_path, capfd):
    """From a new user's trial: `--config tiny --set num_train=3` reused a `tiny` built with
    num_train=4, saying only "reusing". The same values in another order are reused."""
    from tagger_jax import cli

    base = ["build-dataset", "synthetic_tags", "--config", "mini", "--data-dir", str(tmp_path)]
    sets = ["--set", "num_train=4", "--set", "num_validation=2", "--set", "num_test=2",
            "--set", "duration_s=1.0"]
    assert cli.main(base + sets) == 0
    capfd.readouterr()
    assert cli.main(base + sets[6:] + sets[:6]) == 0
    assert "reusing the existing build synthetic_tags/mini" in capfd.readouterr().err
    assert cli.main(base + ["--set", "num_train=3"] + sets[2:]) != 0
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: synthetic_tags/mini 1.0.0 in ")
    assert ("was built with {'num_train': 4, 'num_validation': 2, 'num_test': 2, 'duration_s': "
            "1.0}, but this run asks for {'num_train': 3, 'num_validation': 2, 'num_test': 2, "
            "'duration_s': 1.0} (fields not named: the default config's); build into another "
            "--data-dir, or remove the old build") in err
    assert cli.main(base + ["--set", "num_train=3"] + sets[2:] + ["--overwrite"]) == 0


def test_set_values_that_do_not_convert_or_are_negative_name_the_field(tmp_path, capfd):
    from tagger_jax import cli, errors

    with pytest.raises(ValueError, match=r"^--set num_train: 'abc' is not an int$"):
        build_dataset.make_config(datasets.Msd, "x", ["num_train=abc"])
    with pytest.raises(ValueError, match=r"^--set split_fractions: 'a' is not a float$"):
        build_dataset.make_config(datasets.AudioFolder, "x", ["split_fractions=a,0.5,0.5"])
    with pytest.raises(errors.ConfigError,
                       match=r"^config 'x': num_train must not be negative, got -1$"):
        build_dataset.make_config(datasets.Msd, "x", ["num_train=-1"])
    with pytest.raises(errors.ConfigError, match="duration_s must not be negative"):
        SyntheticConfig(name="y", duration_s=-2.0)
    # an empty generated split: was TFDS's "No examples were yielded" after the other splits
    with pytest.raises(errors.ConfigError,
                       match=r"^config 'y': num_validation must be above 0 .*, got 0$"):
        SyntheticConfig(name="y", num_validation=0)
    with pytest.raises(errors.ConfigError, match=r"duration_s must be above 0"):
        datasets.SoundfontConfig(name="y", duration_s=0.0)
    with pytest.raises(errors.ConfigError, match=r"^config 'y': split must be one of the "
                                                 r"official splits 0-4, got 7$"):
        build_dataset.make_config(datasets.MtgJamendo, "y", ["split=7"])
    rc = cli.main(["build-dataset", "synthetic_tags", "--config", "z", "--set", "num_test=-3",
                   "--data-dir", str(tmp_path)])
    assert rc == 2
    assert capfd.readouterr().err.strip() == \
        "error: config 'z': num_test must not be negative, got -3"


def test_missing_manual_files_and_unknown_datasets_are_short_lines(msd_dir, tmp_path):
    from tagger_jax import errors

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        datasets.build("magnatagatune", tmp_path / "d", manual_dir=tmp_path / "empty")
    assert str(info.value) == (
        f"magnatagatune: manual directory {tmp_path / 'empty'} is empty; it must hold "
        "annotations_final.csv and mp3.zip.001, mp3.zip.002, mp3.zip.003 (or the unpacked "
        "folders 0-9, a-f). Download steps: docs/datasets.md, or the docstring of "
        "tagger_jax/datasets/magnatagatune.py.")
    with pytest.raises(FileNotFoundError) as info:  # the cleaned split needs its files too
        datasets.build("magnatagatune", tmp_path / "d", "won2020", manual_dir=tmp_path / "empty")
    assert ("(or the unpacked folders 0-9, a-f), and Won et al. (2020)'s split files "
            "train.npy, valid.npy, test.npy (in split/mtat/ or beside). Download") in str(
        info.value)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "50tagList.txt").symlink_to(msd_dir["root"] / "50tagList.txt")
    (tmp_path / "m" / "7D_id_to_path.pkl").symlink_to(msd_dir["root"] / "7D_id_to_path.pkl")
    with pytest.raises(FileNotFoundError) as info:
        datasets.build("msd", tmp_path / "d", manual_dir=tmp_path / "m")
    assert str(info.value) == (
        f"{tmp_path / 'm'}: missing 4 of the 6 split and tag files: filtered_list_train.cP, "
        "filtered_list_test.cP, msd_id_to_tag_vector.cP, MSD_id_to_7D_id.pkl. Download steps: "
        "docs/datasets.md, or the docstring of tagger_jax/datasets/msd.py.")
    with pytest.raises(errors.ConfigError) as info:
        datasets.load_split("nosuch", "test", tmp_path / "d")
    assert str(info.value) == ("unknown dataset 'nosuch'; choose one of: synthetic_tags, "
                               "soundfont_tags, magnatagatune, mtg_jamendo, msd, audio_folder")


# ------------------------------------------------- from a new user's trial (bring your own data)

def test_audio_folder_separators_by_name_and_bad_config_values_are_config_errors(tmp_path, capfd):
    """`--set delimiter=\\t` (or `tab`, ...) crashed the build with exit 70 ("delimiter" must
    be a 1-character string); a bad split_fractions exited 6 and an empty tag_separator said
    only "empty separator". All are one line naming the field, exit 2, before any build."""
    from tagger_jax import cli, errors

    make = build_dataset.make_config
    assert make(datasets.AudioFolder, "x", ["delimiter=\\t"]).delimiter == "\t"
    assert make(datasets.AudioFolder, "x", ["delimiter=tab"]).delimiter == "\t"
    assert make(datasets.AudioFolder, "x", ["delimiter=semicolon"]).delimiter == ";"
    assert make(datasets.AudioFolder, "x", ["delimiter=;"]).delimiter == ";"
    assert make(datasets.AudioFolder, "x", ["tag_separator=pipe"]).tag_separator == "|"
    assert make(datasets.AudioFolder, "x", ["tag_separator= / "]).tag_separator == " / "
    for item, says in [("delimiter=ab", "delimiter must be one character or one of tab"),
                       ("tag_separator=", "tag_separator must not be empty"),
                       ("split_fractions=0.5,0.6,0.1", "split_fractions must be 3 non-negative "
                                                       "numbers summing to 1")]:
        with pytest.raises(errors.ConfigError, match=f"^config 'x': {says}"):
            make(datasets.AudioFolder, "x", [item])
        rc = cli.main(["build-dataset", "audio_folder", "--config", "x", "--set", item,
                       "--data-dir", str(tmp_path / "d"), "--manual-dir", str(tmp_path)])
        err = capfd.readouterr().err.strip()
        assert rc == 2 and err.count("\n") == 0 and says in err, err
    assert not (tmp_path / "d" / "audio_folder").exists()


def test_audio_folder_csv_errors_say_the_likely_fix(tmp_path):
    """From a new user's trial: a semicolon CSV, a UTF-16 one (Excel's "Unicode text") and a
    clip listed twice were refused without the fix or the lines."""
    config = AudioFolderConfig(name="x")
    (tmp_path / "semi.csv").write_text("path;tags;split\na.wav;rock;train\n")
    with pytest.raises(ValueError, match=r"semi.csv: no 'path' column \(columns: \['path;tags;"
                       r"split'\]\); is the file semicolon-separated\? --set "
                       r"delimiter=semicolon$"):
        audio_folder.read_table(tmp_path / "semi.csv", config)
    (tmp_path / "u16.csv").write_bytes("path,tags\na.wav,rock\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"u16.csv: UTF-16 text \(it starts with a UTF-16 "
                       r"byte-order mark\); save the file as UTF-8$"):
        audio_folder.read_table(tmp_path / "u16.csv", config)
    for codec in ("utf-16-le", "utf-16-be"):  # no byte-order mark: valid UTF-8, NULs between
        (tmp_path / "u16.csv").write_bytes("path,tags\na.wav,rock\n".encode(codec))
        with pytest.raises(ValueError, match=r"u16.csv: its header holds NUL bytes: UTF-16 text "
                           r"without a byte-order mark\? save the file as UTF-8$"):
            audio_folder.read_table(tmp_path / "u16.csv", config)
    (tmp_path / "dup.csv").write_text("path,tags\na.wav,rock\nb.wav,jazz\na.wav,rock\n"
                                      "b.wav,pop\nc.wav,pop\n")
    with pytest.raises(ValueError) as info:
        audio_folder.read_table(tmp_path / "dup.csv", config)
    assert str(info.value) == (f"{tmp_path / 'dup.csv'}: 2 clip(s) listed twice: 'a.wav' "
                               "(lines 2, 4); 'b.wav' (lines 3, 5); a clip may have one row")
    # a build refused for its CSV leaves nothing in the data directory (it left the dataset's
    # empty folders and TFDS's download folders; from a new user's check)
    manual = tmp_path / "m"
    manual.mkdir()
    (manual / "tags.csv").write_bytes("path,tags\na.wav,rock\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match="holds NUL bytes"):
        datasets.build("audio_folder", tmp_path / "d", config, manual_dir=manual)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".tagger-jax.lock"]


def test_audio_folder_zero_fraction_tags_only_outside_train_and_split_names(tmp_path, capfd):
    """A split fraction of 0 builds no such split (it got one clip); a tag no train row has is
    a warning at build time (the model scored it 0.0 in a held-out split, unannounced); a
    skipped file is a `warning:` line; `--split Segments` names the lowercase split."""
    for k in range(6):
        _tone(tmp_path / "m" / f"s{k}.wav", 0.2, 330 * (k + 1))
    (tmp_path / "m" / "tags.csv").write_text("path,tags\n" + "".join(
        f"s{k}.wav,{'rock' if k % 2 else 'jazz'}\n" for k in range(6)) + "gone.wav,rock\n")
    config = AudioFolderConfig(name="z", split_fractions=(0.5, 0.5, 0.0))
    b = datasets.build("audio_folder", tmp_path / "d", config, manual_dir=tmp_path / "m",
                       num_workers=1)
    assert set(datasets.split_sizes(b)) == {"train", "validation"}
    assert sum(datasets.split_sizes(b).values()) == 6
    assert "warning: audio_folder/" in capfd.readouterr().err  # gone.wav, in whichever split
    assert audio_folder.seeded_split(10, (0.8, 0.2, 0.0), 0).count("test") == 0
    assert audio_folder.seeded_split(10, (0.95, 0.025, 0.025), 0).count("test") == 1

    (tmp_path / "m" / "tags.csv").write_text(
        "path,tags,split\ns0.wav,rock,train\ns1.wav,jazz,valid\ns2.wav,rock,test\n"
        "s3.wav,rare,Segments\n")
    b = datasets.build("audio_folder", tmp_path / "e", AudioFolderConfig(name="r"),
                       manual_dir=tmp_path / "m", num_workers=1)
    err = capfd.readouterr().err
    assert (f"warning: {tmp_path / 'm' / 'tags.csv'}: 2 tag(s) have no clip in the train split "
            "(jazz, rare): a model trained on it cannot learn them, yet validation and tests "
            "score them where they have clips") in err, err  # no file missing: not said
    assert b.info.metadata["tags_without_train_clips"] == ["jazz", "rare"]
    from tagger_jax import evaluation  # evaluate names them again, in the model's tag order

    assert evaluation.untrained_tags(datasets, "audio_folder", tmp_path / "e", "r",
                                     ("rare", "rock", "jazz")) == ["rare", "jazz"]
    assert evaluation.untrained_tags(datasets, "audio_folder", tmp_path / "d", "z",
                                     ("rock", "jazz")) == []
    from tagger_jax import train_data  # training hands them to the exported model
    from tagger_jax.config_base import base_config

    c = base_config()
    c.data.name, c.data.builder_config, c.data.data_dir = "audio_folder", "r", str(tmp_path / "e")
    c.data.crop_labels, c.model.frame_head, c.train.batch_size = "clip", False, 1
    c.data.eval_split, c.data.test_split = "test", ""
    assert train_data.load_data(c).untrained_tags == ("jazz", "rare")  # the build's tag order
    c.data.train_split = "segments"  # another train split: not known, none said
    assert train_data.load_data(c).untrained_tags == ()
    # ... and only for a model trained on that build (not one trained on other data).
    import ml_collections

    config = ml_collections.ConfigDict({"data": {"name": "audio_folder", "builder_config": "r"}})
    assert evaluation.trained_on(config, "audio_folder", "r")
    assert evaluation.trained_on(config, "audio_folder", AudioFolderConfig(name="r"))
    assert not evaluation.trained_on(config, "audio_folder", None)
    config.data.update(name="soundfont_tags", builder_config="")
    assert not evaluation.trained_on(config, "audio_folder", "r")
    assert evaluation.trained_on(config, "soundfont_tags", None)
    with pytest.raises(ValueError, match=r"no split 'Segments' \(split names are lowercase, "
                       r"words joined by '_': 'segments'\)"):
        datasets.load_split("audio_folder", "Segments", tmp_path / "e", "r")
    with pytest.raises(ValueError, match=r"no split 'segm-ents' \(split names .*'segments'\)"):
        datasets.load_split("audio_folder", "segm-ents", tmp_path / "e", "r")
    with pytest.raises(ValueError, match=r"no split 'tset' \(did you mean 'test'\?\); its "):
        datasets.load_split("audio_folder", "tset", tmp_path / "e", "r")  # a trial's typo
    with pytest.raises(ValueError, match=r"no split 'other'; its splits"):
        datasets.load_split("audio_folder", "other", tmp_path / "e", "r")
    with pytest.raises(ValueError, match=r"no split 'dev' \(did you mean 'validation'\?\)"):
        datasets.load_split("audio_folder", "dev", tmp_path / "e", "r")  # the CSV's alias
    # Two split values alike but for separators make two splits: said (a trial's `Hold-Out` and
    # `holdout`).
    assert audio_folder.split_notes(
        tmp_path / "t.csv", {"hold_out": ("Hold-Out", 3), "holdout": ("holdout", 5)},
        AudioFolderConfig(name="t")) == [
        f"note: {tmp_path / 't.csv'}: the extra splits 'hold_out' (from 'Hold-Out', line 3), "
        "'holdout' (from 'holdout', line 5) differ only in separators: they are built as "
        "separate splits; if they are one, spell it one way"]


def test_audio_folder_rows_without_tags_are_said_kept_or_dropped(tmp_path, capfd):
    """An empty tags cell is a clip negative for every tag, or left out with drop_untagged:
    either way one note says how many rows and which (a trial's row was kept unannounced)."""
    for k in range(4):
        _tone(tmp_path / "m" / f"s{k}.wav", 0.2, 330 * (k + 1))
    csv_path = tmp_path / "m" / "tags.csv"
    csv_path.write_text("path,tags,split\ns0.wav,rock,train\ns1.wav,,train\n"
                        "s2.wav,jazz,validation\ns3.wav,,test\n")
    b = datasets.build("audio_folder", tmp_path / "d", AudioFolderConfig(name="keep"),
                       manual_dir=tmp_path / "m", num_workers=1)
    note = (f"note: {csv_path}: 2 row(s) have no tags ('s1.wav', 's3.wav'): kept as clips with "
            "none of the tags (--set drop_untagged=true leaves them out)")
    assert note in capfd.readouterr().err
    assert note in b.info.metadata["csv_notes"]  # kept with the CSV's other lines
    assert datasets.split_sizes(b) == {"train": 2, "validation": 1, "test": 1}
    b = datasets.build("audio_folder", tmp_path / "d",
                       AudioFolderConfig(name="drop", drop_untagged=True),
                       manual_dir=tmp_path / "m", num_workers=1)
    assert (f"note: {csv_path}: 2 row(s) have no tags ('s1.wav', 's3.wav'): left out "
            "(drop_untagged)") in capfd.readouterr().err
    assert datasets.split_sizes(b) == {"train": 1, "validation": 1}


def test_audio_folder_one_file_in_two_spellings_is_refused(tmp_path):
    """From a new user's trial: `./songs/clip2.ogg` and `songs/clip2.ogg` (or
    `songs/../songs/clip3.mp3`) were built as two clips, even into two splits with different
    tags; only an exactly repeated row was refused. Now one line names both spellings and
    lines, before anything is built."""
    manual = tmp_path / "m"
    for name in ("clip1.wav", "clip2.wav", "clip3.wav"):
        _tone(manual / "songs" / name, 0.2, 440)
    (manual / "tags.csv").write_text(
        "path,tags,split\n./songs/clip2.wav,flute,test\nsongs/clip1.wav,drums,train\n"
        "songs/clip2.wav,drums,test\nsongs/../songs/clip3.wav,drums,validation\n"
        "songs/clip3.wav,flute,train\n")
    config = AudioFolderConfig(name="x")
    want = (f"{manual / 'tags.csv'}: 2 file(s) listed twice under different paths: "
            "'./songs/clip2.wav' (line 2) and 'songs/clip2.wav' (line 4); "
            "'songs/../songs/clip3.wav' (line 5) and 'songs/clip3.wav' (line 6); a clip may "
            "have one row")
    with pytest.raises(ValueError) as info:
        audio_folder.read_table(manual / "tags.csv", config, manual)
    assert str(info.value) == want
    with pytest.raises(ValueError) as info:  # without the manual dir: the paths, normalised
        audio_folder.read_table(manual / "tags.csv", config)
    assert str(info.value) == want
    (tmp_path / "ids.csv").write_text("id,path,tags\nx,songs/clip1.wav,rock\n"
                                      "y,songs/clip1.wav,jazz\n")
    with pytest.raises(ValueError, match=r"1 file\(s\) listed twice under different ids: "
                       r"'songs/clip1.wav' \(lines 2, 3: ids 'x', 'y'\); a clip may have one row"):
        audio_folder.read_table(tmp_path / "ids.csv", AudioFolderConfig(name="i", id_column="id"),
                                manual)
    (manual / "songs" / "link.wav").symlink_to(manual / "songs" / "clip1.wav")
    (manual / "tags.csv").write_text("path,tags\nsongs/clip1.wav,rock\nsongs/link.wav,jazz\n")
    with pytest.raises(ValueError, match=r"1 file\(s\) listed twice under different paths: "
                       r"'songs/clip1.wav' \(line 2\) and 'songs/link.wav' \(line 3\)"):
        datasets.build("audio_folder", tmp_path / "d", config, manual_dir=manual)
    assert not (tmp_path / "d" / "audio_folder").exists()


def test_audio_folder_csv_header_errors_name_the_fix(tmp_path):
    """From a new user's trial: `path,Tags,Split` and `path,tag,split` read the tags column as
    a 0/1 tag column ("column 'Tags' must be 0 or 1, got 'flute'"), `File,Labels,Set` said
    only "no 'path' column", and Excel's `sep=;` first line stayed an error after following
    the hint (`--set delimiter=semicolon`): each now names the column and the setting."""
    config = AudioFolderConfig(name="x")
    csv_path = tmp_path / "t.csv"

    def error(text: str, **fields) -> str:
        csv_path.write_text(text)
        with pytest.raises(ValueError) as info:
            audio_folder.read_table(csv_path, AudioFolderConfig(name="x", **fields))
        assert "\n" not in str(info.value)
        return str(info.value).removeprefix(f"{csv_path}")

    assert error("path,Tags,Split\na.wav,flute,train\n") == (
        ": no 'tags' column; did you mean 'Tags'? the tags column is named 'tags' (or set --set "
        "tags_column=Tags); no 'split' column; did you mean 'Split'? the split column is named "
        "'split' (or set --set split_column=Split)")
    assert error("path,tag,split\na.wav,flute,train\n") == (
        ": no 'tags' column; did you mean 'tag'? the tags column is named 'tags' (or set --set "
        "tags_column=tag)")
    assert error("File,Labels,Set\nsongs/a.wav,flute,train\nsongs/b.mp3,drums,test\n") == (
        ": no 'path' column (columns: ['File', 'Labels', 'Set']); column 'File' holds audio file "
        "names: set --set path_column=File --set tags_column=Labels --set split_column=Set (or "
        "rename those columns path, tags, split)")
    assert error("Path,tags\na.wav,rock\n") == (
        ": no 'path' column (columns: ['Path', 'tags']); did you mean 'Path'? the path column "
        "is named 'path' (or set --set path_column=Path)")
    assert error("Path,Tags,Split\na.wav,rock,train\n") == (  # all three at once
        ": no 'path' column (columns: ['Path', 'Tags', 'Split']); did you mean 'Path'? the path "
        "column is named 'path' (or set --set path_column=Path); no 'tags' column; did you mean "
        "'Tags'? the tags column is named 'tags' (or set --set tags_column=Tags); no 'split' "
        "column; did you mean 'Split'? the split column is named 'split' (or set --set "
        "split_column=Split)")
    assert error("path,tags,Set\na.wav,rock,train\nb.wav,jazz,Valid\n") == (
        ": no 'split' column, but column 'Set' holds split names (train, valid): the split "
        "column is named 'split' (or set --set split_column=Set); without one the clips are "
        "split at random")
    assert error("path,Labels,split\na.wav,flute,train\n") == (
        ":2: column 'Labels' must be 0 or 1, got 'flute' (with no 'tags' column every column "
        "but path, split and id is a 0/1 tag column: remove it, or if it holds the tag names, "
        "--set tags_column=Labels)")
    # A 0/1 tag column named like the tags column is a tag, as before.
    csv_path.write_text("path,tag,rock\na.wav,1,0\nb.wav,0,1\n")
    assert audio_folder.read_table(csv_path, config)[1] == ["tag", "rock"]
    # Excel's first line `sep=;`: skipped, its delimiter used; line numbers count it.
    csv_path.write_text("sep=;\npath;tags;split\na.wav;rock;train\nb.wav;jazz;test\n")
    rows, vocab = audio_folder.read_table(csv_path, config)
    assert [(r.line, r.path, r.tags, r.split) for r in rows] == [
        (3, "a.wav", ("rock",), "train"), (4, "b.wav", ("jazz",), "test")]
    assert error("sep=\t\npath\ttags\n\trock\n", delimiter=";") == ":3: empty 'path'"
    # The verifying user's row with an unquoted comma in its tags became split 'loud' and lost
    # 'train'; a row with more cells than the header is refused (empty trailing cells are not).
    assert error("path,tags,split\na.wav,flute,loud,train\n") == (
        ":2: 4 cells but the header has 3 (extra: 'train'); a cell holding the delimiter ',' "
        "must be quoted, e.g. \"flute,loud\", or join tags with the tag separator ';'")
    csv_path.write_text("path,tags,split\na.wav,flute,train,,\n")
    assert [r.split for r in audio_folder.read_table(csv_path, config)[0]] == ["train"]
    assert error("sep=xx\npath,tags\na.wav,rock\n") == (
        ":1: 'sep=xx' looks like Excel's delimiter line (sep=X) but names no one-character "
        "delimiter; delete that line (for audio_folder also --set delimiter=... if the file is "
        "not comma-separated)")


def test_audio_folder_warns_of_other_separators_and_names_near_miss_files(tmp_path, capfd):
    """From a new user's trial, each silent: tags written `flute, loud`, `flute,loud` or
    `drums|loud` with the `;` separator built one combined tag each (now a warning naming
    `--set tag_separator`; the build goes on, a comma may be part of a tag); a path in NFC
    whose file is NFD on disk was skipped (now read, with a note); `Songs/Clip4.WAV` and
    `songs\\clip5.wav` were skipped as "file not found" (now naming the file on disk); the split
    value `validation set` made an extra split `validation_set` unannounced (now a note)."""
    import unicodedata

    manual = tmp_path / "m"
    for k in range(6):
        _tone(manual / "songs" / f"clip{k}.wav", 0.2, 220 * (k + 1))
    nfd = unicodedata.normalize("NFD", "Café.wav")
    _tone(manual / "songs" / nfd, 0.2, 300)
    nfc = unicodedata.normalize("NFC", "songs/Café.wav")
    (manual / "tags.csv").write_text(
        'path,tags,split\nsongs/clip0.wav,"flute, loud",train\nsongs/clip1.wav,"flute,loud",'
        f"train\nsongs/clip2.wav,drums|loud,train\n{nfc},drums;flute,test\n"
        "Songs/Clip4.WAV,flute,test\nsongs\\clip5.wav,flute,test\n"
        "songs/clip3.wav,drums;flute,validation set\n")
    csv_path = manual / "tags.csv"
    b = datasets.build("audio_folder", tmp_path / "d", AudioFolderConfig(name="x"),
                       manual_dir=manual, num_workers=1)
    err = capfd.readouterr().err
    said = [
        f"warning: {csv_path}: 3 tag(s) contain ',' or '|' but the tag separator is ';', so "
        "each is one tag: 'flute, loud' (line 2), 'flute,loud' (line 3), 'drums|loud' (line 4); "
        "if they are several tags, build with --set tag_separator=comma",
        f"note: {csv_path}:8: split value 'validation set' makes the extra split "
        "'validation_set', which training never uses; if it is the validation split, write "
        "'validation'",
        f"note: {csv_path}: 1 path(s) are written in another Unicode normalisation than the file "
        f"name on disk (NFC in the CSV, e.g. line 5 {nfc!r}); the files on disk are read"]
    said += [  # after the rows are read: kept too (the untagged-rows note was not; a trial)
        f"warning: {csv_path}: 2 tag(s) have no clip in the train split (flute, drums): a model "
        "trained on it cannot learn them, yet validation and tests score them where they have "
        "clips",
        f"note: {csv_path}: no validation split (no row names it): training validates on "
        "`data.eval_split` (validation); set it to a split this build has (`tagger-jax train ... "
        "--set data.eval_split=NAME`), or give rows that split"]
    for line in said:
        assert line in err.splitlines(), err
    assert b.info.metadata["csv_notes"] == said
    assert set(datasets.tag_names(b)) == {"flute, loud", "flute,loud", "drums|loud", "drums",
                                          "flute"}
    assert datasets.split_sizes(b) == {"train": 3, "test": 1, "validation_set": 1}
    source, _ = datasets.load_split("audio_folder", "test", tmp_path / "d", "x")
    assert [ex["path"].decode() for ex in _all(source)] == [f"songs/{nfd}"]  # as on disk
    reasons = [s["error"] for s in datasets.build_report(b)["test"]]
    assert reasons == [
        f"{manual / 'Songs/Clip4.WAV'}: file not found; did you mean 'songs/clip4.wav'? (line 6 "
        "of tags.csv)",
        f"{manual}/songs\\clip5.wav: file not found; did you mean 'songs/clip5.wav'? (line 7 of "
        "tags.csv)"]
    capfd.readouterr()
    # With the separator set, no warning; a tag with a comma as the only other separator stays.
    config = AudioFolderConfig(name="y", tag_separator="comma")
    (manual / "tags.csv").write_text("path,tags\nsongs/clip0.wav,\"rock,loud\"\n"
                                     "songs/clip1.wav,jazz\nsongs/clip2.wav,rock\n")
    said: list[str] = []
    rows, vocab = audio_folder.read_table(csv_path, config, manual, said)
    assert said == [] and rows[0].tags == ("rock", "loud")


def test_mtat_manual_dir_near_misses_are_named(tmp_path, monkeypatch):
    """From a new user's trial: a missing unpacked folder was found only after decoding the
    splits before it; both missing won2020 split files are listed (only the first was); files
    one folder off or saved as a second download are named; a missing manual directory says
    what it should hold."""
    from tagger_jax import errors

    paths = [f"{FOLDERS[k]}/clip-{k}.mp3" for k in range(16)]
    root = _tiny_mtat(tmp_path / "m", paths)
    for folder in FOLDERS:
        if folder != "c":
            (root / folder).mkdir()
    _no_decoding(monkeypatch)
    with pytest.raises(errors.DataError, match=r"the unpacked MagnaTagATune audio lacks the "
                       r"folder\(s\) c \(of the validation split\); all 16"):
        datasets.build("magnatagatune", tmp_path / "d", manual_dir=root, num_workers=1)
    assert not (tmp_path / "d" / "magnatagatune").exists()
    (root / "c").mkdir()
    ann = magnatagatune.read_annotations(root / "annotations_final.csv")
    _won_files(root, {"train": [0], "validation": [12], "test": [13]}, paths)
    (root / "split").mkdir()
    (root / "valid.npy").rename(root / "split" / "valid.npy")
    (root / "test.npy").unlink()
    with pytest.raises(FileNotFoundError) as info:
        magnatagatune.read_split_files(root, ann)
    assert str(info.value).startswith(
        f"Won et al. (2020) split files missing in {root}: valid.npy or valid_new.npy; "
        f"test.npy or test_new.npy (found {root / 'split' / 'valid.npy'}: move or rename them "
        f"into {root}). See")
    np.save(root / "test.npy", np.array([f"13\t{paths[13]}"], dtype=object))
    (root / "split" / "valid.npy").rename(root / "valid.npy")
    with pytest.raises(ValueError, match=r"test.npy: not a NumPy array of strings \(it holds "
                       r"Python objects.*astype\(str\)"):
        magnatagatune.read_split_files(root, ann)
    (root / "test.npy").write_text(f"13\t{paths[13]}\n")  # a text file: no pickle in it
    with pytest.raises(ValueError) as info:
        magnatagatune.read_split_files(root, ann)
    assert str(info.value) == (f"{root / 'test.npy'}: not a .npy file (it does not start with "
                               "NumPy's header); the split files are the paper's .npy arrays "
                               "of 'INDEX<TAB>MP3_PATH' lines")
    # the annotations as a second download, everything one folder deeper
    deeper = tmp_path / "outer"
    (deeper / "MagnaTagATune").mkdir(parents=True)
    (root / "annotations_final.csv").rename(root / "annotations_final (1).csv")
    root.rename(deeper / "MagnaTagATune" / "m")
    with pytest.raises(FileNotFoundError) as info:
        datasets.build("magnatagatune", tmp_path / "d", manual_dir=deeper / "MagnaTagATune")
    inner = deeper / "MagnaTagATune" / "m"
    assert str(info.value).startswith(f"{deeper / 'MagnaTagATune'}: no MagnaTagATune audio found")
    assert f"Found MagnaTagATune audio in {inner}: give that folder as --manual-dir?" in str(
        info.value)
    for folder in FOLDERS:
        (deeper / "MagnaTagATune" / folder).mkdir()
    with pytest.raises(FileNotFoundError) as info:
        datasets.build("magnatagatune", tmp_path / "d", manual_dir=deeper / "MagnaTagATune")
    assert (f"Found {inner / 'annotations_final (1).csv'}: rename or move it there?"
            in str(info.value)), str(info.value)
    with pytest.raises(FileNotFoundError, match=r"manual directory .*nowhere does not exist; it "
                       r"is the folder that holds annotations_final.csv and mp3.zip.001"):
        datasets.build("magnatagatune", tmp_path / "d", manual_dir=tmp_path / "nowhere")


def test_a_split_the_build_would_not_make_is_refused_before_building(tmp_path):
    """From a new user's check: a misspelt `data.extra_test_splits` name, with the data not
    built yet, was found only after building the whole default dataset."""
    from tagger_jax.datasets._api import MissingSplitError

    with pytest.raises(MissingSplitError, match=r"synthetic_tags: no split 'tset' in the build "
                       r"this run would make; its splits would be \['train', 'validation', "
                       r"'test'\]"):
        datasets.ensure_built("synthetic_tags", tmp_path, splits=["train", "tset"])
    assert not (tmp_path / "synthetic_tags").exists()


def test_two_csvs_in_the_folder_name_the_way_to_pick_one(tmp_path):
    """From a new user's trial: with tags.csv and tags_rare.csv in the folder, the default build
    said "name it with --set csv=FILE.csv", and that was refused ("--set makes a new config:
    give it a new name with --config NAME"). The first message now says both."""
    manual = tmp_path / "m"
    _tone(manual / "a.wav", 0.2, 220)
    for name in ("tags.csv", "tags_rare.csv"):
        (manual / name).write_text("path,tags\na.wav,rock\n")
    with pytest.raises(FileNotFoundError, match=r"found \['tags.csv', 'tags_rare.csv'\]; name "
                                                r"one in a config of your own: --config NAME "
                                                r"--set csv=FILE.csv"):
        datasets.build("audio_folder", tmp_path / "d", manual_dir=manual, num_workers=1)
