"""The logistic-regression baseline: features against NumPy written here, separable cases."""
from __future__ import annotations

import numpy as np
import pytest

from tagger_jax import baseline, evaluation


def test_features_match_numpy():
    rng = np.random.default_rng(0)
    mel = rng.normal(-40, 10, (96, 300))
    f = baseline.clip_features(mel)
    assert f.shape == (3 * 96 + baseline.MAX_LAG // 2 + 2,)
    np.testing.assert_allclose(f[:96], mel.mean(1))
    np.testing.assert_allclose(f[96:192], mel.std(1))
    np.testing.assert_allclose(f[192:288], mel.max(1))
    env = np.zeros(300)
    for t in range(1, 300):
        env[t] = np.mean(np.maximum(mel[:, t] - mel[:, t - 1], 0))
    x = env - env.mean()
    ac = np.array([np.dot(x[:-k], x[k:]) for k in range(1, 129)]) / np.dot(x, x)
    np.testing.assert_allclose(f[288:352], ac.reshape(64, 2).mean(1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(f[352:], [env.mean(), env.std()])
    with pytest.raises(ValueError, match="bands, frames"):
        baseline.clip_features(np.zeros(10))


def test_onset_autocorrelation_finds_the_period():
    """A click every 20 frames: the autocorrelation peaks at the lag pair holding lag 20."""
    mel = np.full((8, 400), -80.0)
    mel[:, ::20] = 0.0
    ac = baseline.onset_autocorrelation(baseline.onset_envelope(mel))
    assert int(np.argmax(ac)) == (20 - 1) // 2


def _fake_source(n, seed):
    """Tag 0: loud low band; tag 1: clicks every 16 frames (else every 40); tag 2: constant."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tags = np.array([i % 2, (i // 2) % 2, 1], np.uint8)
        mel = rng.normal(-60, 3, (96, 200))
        if tags[0]:
            mel[:10] += 20
        mel[:, ::16 if tags[1] else 40] += 15
        out.append({"mel": mel.astype(np.float16), "tags": tags})
    return out


def test_separable_case_is_solved():
    train, test = _fake_source(40, 1), _fake_source(20, 2)
    with pytest.warns(evaluation.UndefinedMetricWarning):
        metrics = baseline.evaluate(train, {"test": test}, ["low", "fast", "always"])["test"]
    rocs = {t["tag"]: t["roc_auc"] for t in metrics["per_tag"]}
    assert rocs["low"] == 1.0 and rocs["fast"] == 1.0 and rocs["always"] is None
    model = baseline.fit(*baseline.source_features(train))
    probs = model.predict_proba(baseline.source_features(test)[0])
    assert probs.shape == (20, 3) and np.all(probs[:, 2] == 1.0)
    with pytest.raises(ValueError, match="must be"):
        baseline.fit(np.zeros((3, 4)), np.zeros((2, 1)))


def test_report_beside_fits_on_train_and_writes_json(tmp_path, monkeypatch, capsys):
    import json

    from tagger_jax import datasets

    tags = ["low", "fast", "always"]
    splits = {"train": _fake_source(40, 1), "test_other": _fake_source(20, 2)}
    calls = []

    def load_split(name, split, data_dir, builder_config=None):
        calls.append((name, split, builder_config))
        return splits[split], tags

    monkeypatch.setattr(datasets, "load_split", load_split)
    result = {"dataset": "fake", "split": "test_other", "builder_config": "cfg", "data_dir": "d",
              "out_dir": str(tmp_path), "roc_auc_mean": 0.75,
              "per_tag": [{"tag": t, "roc_auc": r} for t, r in zip(tags, (0.5, 1.0, None))]}
    with pytest.warns(evaluation.UndefinedMetricWarning):
        metrics = baseline.report_beside(result)
    assert calls == [("fake", "train", "cfg"), ("fake", "test_other", "cfg")]
    assert metrics["roc_auc_mean"] == 1.0
    saved = json.loads((tmp_path / baseline.BASELINE_JSON).read_text())
    assert saved["split"] == "test_other" and saved["fitted_on"] == "fake/train"
    assert saved["fitted_on_clips"] == 40 and saved["constant_tags"] == ["always"]
    out, err = capsys.readouterr()
    assert "baseline ROC-AUC" in out and "0.5000" in out and "1.0000" in out
    assert "fitted on fake/train (40 clips" in out
    warning = [line for line in err.splitlines() if line.startswith("warning: baseline")]
    assert len(warning) == 1 and "(always)" in warning[0] and "meaningless" in warning[0]
    assert "note:" not in out and "warning:" not in out  # stdout: tables and results only
    with pytest.warns(evaluation.UndefinedMetricWarning):  # scored on its own training split
        baseline.report_beside({**result, "split": "train"})
    assert capsys.readouterr().err.splitlines()[-1] == (
        "note: the baseline is scored on fake/train, the split it was fitted on: its numbers "
        "measure how well it fits its own training clips, not a floor for the model")
    monkeypatch.setattr(datasets, "load_split",
                        lambda *a, **k: (_ for _ in ()).throw(ValueError("no split")))
    with pytest.raises(evaluation.EvaluationError,
                       match=r"baseline: cannot open the evaluated dataset.s train split "
                             r"fake/train in d: no split; .*--baseline-train model"):
        baseline.report_beside(result)


def test_report_beside_can_fit_on_the_models_training_data(tmp_path, monkeypatch, capsys):
    """--baseline-train model: fitted on the model config's dataset/train_split; the evaluated
    set (a one-clip train split, another tag order, a tag fewer) is only scored on."""
    import json

    from tagger_jax import datasets

    model_tags = ["low", "fast", "always"]
    sources = {("mine", "train"): (_fake_source(1, 3), ["fast", "low"]),
               ("mine", "test"): (_fake_source(20, 2), ["fast", "low"]),
               ("model_ds", "train_x"): (_fake_source(40, 1), model_tags)}
    calls = []

    def load_split(name, split, data_dir, builder_config=None):
        calls.append((name, split, data_dir, builder_config))
        if (name, split) not in sources:
            raise FileNotFoundError(f"dataset {name} is not built in {data_dir}")
        src, tags = sources[(name, split)]
        if name == "mine":  # labels in the CSV's order: (fast, low)
            src = [{"mel": r["mel"], "tags": r["tags"][[1, 0]]} for r in src]
        return src, tags

    monkeypatch.setattr(datasets, "load_split", load_split)
    result = {"dataset": "mine", "split": "test", "builder_config": None, "data_dir": "d",
              "out_dir": str(tmp_path), "roc_auc_mean": 0.75,
              "per_tag": [{"tag": t, "roc_auc": 0.5} for t in model_tags],
              "model_data": {"name": "model_ds", "data_dir": "/m", "builder_config": "c",
                             "train_split": "train_x"}}
    # The evaluated dataset's own one-clip train split: every tag constant, named in a warning.
    m = baseline.report_beside(result, train="dataset")
    assert m["fitted_on_clips"] == 1 and m["constant_tags"] == ["fast", "low"]
    assert m["roc_auc_mean"] == 0.5
    assert "warning: baseline: 2 of 2 tags" in capsys.readouterr().err

    calls.clear()
    m = baseline.report_beside(result, train="model")
    assert calls[0] == ("model_ds", "train_x", "/m", "c")
    assert m["fitted_on"] == "model_ds/train_x" and m["fitted_on_clips"] == 40
    assert [t["tag"] for t in m["per_tag"]] == ["low", "fast"]  # the tags both list
    assert m["roc_auc_mean"] == 1.0 and m["constant_tags"] == []
    out = capsys.readouterr().out
    assert "fitted on model_ds/train_x (40 clips" in out and "warning" not in out
    assert "(40 clips, the model's training data, in /m)" in out  # which copy was read
    assert json.loads((tmp_path / baseline.BASELINE_JSON).read_text())["fitted_on_clips"] == 40

    result["model_data"]["data_dir"] = "/gone"
    sources.pop(("model_ds", "train_x"))
    with pytest.raises(evaluation.EvaluationError,
                       match=r"the model's training data model_ds/train_x in /gone"):
        baseline.report_beside(result, train="model")


class _Unread(list):
    """A source whose records must not be read."""

    def __getitem__(self, i):
        raise AssertionError("a record was read")


def test_fit_and_score_scores_each_split_on_the_tags_it_shares():
    """One fit, several splits with their own tag lists and label orders: each split's numbers
    equal `evaluate`'s on the same clips with the labels in the training order; a split sharing
    no tag is refused before any record is read."""
    tags = ["low", "fast", "always"]
    train, test = _fake_source(40, 1), _fake_source(20, 2)
    swapped = [{"mel": r["mel"], "tags": r["tags"][[1, 0]]} for r in test]  # (fast, low)
    with pytest.warns(evaluation.UndefinedMetricWarning):
        scored = baseline.fit_and_score(train, tags, {"same": test, "swapped": swapped},
                                        {"swapped": ["fast", "low"]}, fitted_on="fake/train")
        want = baseline.evaluate(train, {"same": test}, tags)["same"]
    assert scored.fitted_on == "fake/train" and scored.clips == 40
    assert scored.constant_tags == ["always"] == want.pop("constant_tags")  # evaluate adds it
    assert scored.metrics["same"] == want
    got = {r["tag"]: r for r in scored.metrics["swapped"]["per_tag"]}
    assert list(got) == ["low", "fast"]  # the training split's order
    for row in want["per_tag"][:2]:
        assert got[row["tag"]] == row
    probs = scored.model.predict_proba(baseline.source_features(test)[0])
    np.testing.assert_array_equal(probs[:, 2], 1.0)
    # `only` (the model's tags under evaluate --common-tags): no other tag is scored
    narrow = baseline.fit_and_score(train, tags, {"same": test}, only=["fast"])
    assert [r["tag"] for r in narrow.metrics["same"]["per_tag"]] == ["fast"]
    assert narrow.metrics["same"]["per_tag"][0] == want["per_tag"][1]
    with pytest.raises(evaluation.EvaluationError,
                       match=r"^baseline: fake/train and other share no tag$"):
        baseline.fit_and_score(_Unread(train), tags, {"same": test, "other": test},
                               {"other": ["quiet"]}, fitted_on="fake/train")


def test_report_beside_and_evaluate_agree(tmp_path, monkeypatch, capsys):
    """`report_beside` on a result and `evaluate` on the same train and test clips agree
    exactly; the evaluated split is the only one scored."""
    from tagger_jax import datasets

    tags = ["low", "fast"]
    train = [{"mel": r["mel"], "tags": r["tags"][:2]} for r in _fake_source(40, 1)]
    test = [{"mel": r["mel"], "tags": r["tags"][:2]} for r in _fake_source(20, 2)]
    monkeypatch.setattr(datasets, "load_split",
                        lambda name, split, *a, **k: ({"train": train, "test": test}[split], tags))
    result = {"dataset": "fake", "split": "test", "builder_config": None, "data_dir": "d",
              "out_dir": str(tmp_path), "roc_auc_mean": 0.5,
              "per_tag": [{"tag": t, "roc_auc": 0.5} for t in tags]}
    reported = baseline.report_beside(result, print_fn=None)
    want = baseline.evaluate(train, {"test": test}, tags)["test"]
    assert want.pop("constant_tags") == reported["constant_tags"]
    assert {k: v for k, v in reported.items()
            if k not in ("fitted_on", "fitted_on_clips", "constant_tags")} == want
    assert (reported["fitted_on"], reported["fitted_on_clips"], reported["constant_tags"]) == \
        ("fake/train", 40, [])
    assert capsys.readouterr().out == ""
    # Printed, its rows follow the model's table (here the reverse of the dataset's order).
    lines = []
    baseline.report_beside({**result, "per_tag": result["per_tag"][::-1]}, print_fn=lines.append)
    assert [row.split()[0] for row in lines[0].splitlines()[2:4]] == ["fast", "low"]
