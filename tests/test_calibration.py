"""Tests for tfface.eval.calibration: the threshold for a target FAR, and thresholds.json."""

import json

import numpy as np
import pytest

from tfface.eval import calibration as C
from tfface.eval.features import evaluate_pair_embeddings
from tfface.eval.verification import roc_curve


def _report(seed=0, n=2000, distance="cosine", flip_fusion="sum"):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    left, right = np.arange(0, n, 2), np.arange(1, n, 2)
    issame = rng.random(left.size) < 0.5
    emb[right[issame]] = emb[left[issame]] + rng.normal(0, 0.9, (int(issame.sum()), 8))
    report = evaluate_pair_embeddings(emb, left, right, issame, distance=distance)
    report["flip_fusion"] = flip_fusion
    return report, emb, left, right, issame


def test_threshold_meets_the_far_on_the_calibration_pairs(tmp_path):
    report, emb, left, right, issame = _report()
    path = tmp_path / "thresholds.json"
    data = C.write_thresholds(str(path), report, 1e-2, extra={"model": "m"})
    assert json.loads(path.read_text()) == data
    entry = data["thresholds"]["0.01"]
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = np.sum(e[left] * e[right], axis=1)
    accepted = scores >= entry["threshold"]
    far = np.mean(accepted[~issame])
    assert far <= 1e-2 and far == pytest.approx(entry["achieved_far"])
    assert np.mean(accepted[issame]) == pytest.approx(entry["tar"])
    # The lowest such threshold: the next exact ROC point down would exceed the FAR.
    fpr, _, thr = roc_curve(scores, issame)
    i = int(np.flatnonzero(thr == entry["threshold"])[0])
    assert fpr[i + 1] > 1e-2
    assert data["similarity"] == "cosine" and data["default_far"] == "0.01"
    assert entry["calibrated_on"] == {"model": "m"} and ">=" in data["decision"]


def test_more_fars_accumulate_and_other_settings_are_refused(tmp_path):
    report, *_ = _report()
    path = str(tmp_path / "t.json")
    C.write_thresholds(path, report, 1e-2)
    data = C.write_thresholds(path, report, 1e-1)
    assert set(data["thresholds"]) == {"0.01", "0.1"} and data["default_far"] == "0.1"
    assert C.read_thresholds(path) == data
    other, *_ = _report(flip_fusion="none")
    with pytest.raises(ValueError, match="another setting"):
        C.write_thresholds(path, other, 1e-2)
    l2, *_ = _report(distance="squared_l2")
    data = C.write_thresholds(str(tmp_path / "l2.json"), l2, 1e-2)
    assert data["similarity"] == "squared_l2" and "<=" in data["decision"]
    assert data["thresholds"]["0.01"]["threshold"] == l2["tar_at_far_thresholds"]["0.01"] > 0


def test_unmeasurable_far_and_pca_are_refused(tmp_path):
    report, *_ = _report(n=200)  # 100 pairs, ~50 different: FAR 1e-3 is not measurable
    with pytest.raises(ValueError, match="cannot be measured with"):
        C.write_thresholds(str(tmp_path / "t.json"), report, 1e-3)
    with pytest.raises(ValueError, match="PCA"):
        C.write_thresholds(str(tmp_path / "t.json"), {**report, "pca_dim": 4}, 1e-1)
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("content,match", [
    ("{", "not JSON"),
    ('{"format": "x"}', "not a tfface thresholds file"),
    ('{"format": "tfface-thresholds/1", "thresholds": {}, "default_far": "0.1"}', "non-empty"),
    ('{"format": "tfface-thresholds/1", "thresholds": {"0.1": {}}, "default_far": "0.1"}', "numeric"),
])
def test_read_thresholds_rejects_other_files(tmp_path, content, match):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        C.read_thresholds(str(path))
