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
    assert saved["split"] == "test_other" and saved["fitted_on"] == "train"
    out = capsys.readouterr().out
    assert "baseline ROC-AUC" in out and "0.5000" in out and "1.0000" in out
    monkeypatch.setattr(datasets, "load_split",
                        lambda *a, **k: (_ for _ in ()).throw(ValueError("no split")))
    with pytest.raises(evaluation.EvaluationError, match="baseline: cannot open fake"):
        baseline.report_beside(result)
