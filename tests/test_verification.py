"""Tests for tfface.eval.verification: exact ROC against scikit-learn, hand-computed cases,
and the k-fold protocol's isolation of the held-out fold."""

import json

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.model_selection import KFold

from tfface.eval import verification as V

# Hand-computed case (pairs sorted by score, descending):
#   score  0.9 0.8 0.7 0.6 0.5 0.4 0.3 0.2
#   same    1   1   0   1   0   1   0   0
# ROC (fpr, tpr) at thresholds inf,.9,...,.2:
#   (0,0) (0,.25) (0,.5) (.25,.5) (.25,.75) (.5,.75) (.5,1) (.75,1) (1,1)
HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
HAND_SAME = np.array([1, 1, 0, 1, 0, 1, 0, 0], dtype=bool)


def _random_case(seed, n=300, ties=False):
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.4
    scores = rng.normal(size=n) + 1.2 * issame
    if ties:  # coarse rounding creates many ties, including ties between same and different pairs
        scores = np.round(scores, 1)
    return scores, issame


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True), (3, False)])
def test_roc_curve_and_auc_match_sklearn(seed, ties):
    scores, issame = _random_case(seed, ties=ties)
    fpr, tpr, thr = V.roc_curve(scores, issame)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(issame, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.isinf(thr[0]) and np.isinf(sk_thr[0])
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert np.all(np.diff(thr) < 0)  # distinct, descending
    assert V.roc_auc(scores, issame) == pytest.approx(roc_auc_score(issame, scores), abs=1e-12)


def test_hand_computed_roc_auc_eer():
    fpr, tpr, thr = V.roc_curve(HAND_SCORES, HAND_SAME)
    np.testing.assert_allclose(fpr, [0, 0, 0, .25, .25, .5, .5, .75, 1])
    np.testing.assert_allclose(tpr, [0, .25, .5, .5, .75, .75, 1, 1, 1])
    # 13 of the 16 (same, different) score pairs are ordered correctly.
    assert V.roc_auc(HAND_SCORES, HAND_SAME) == pytest.approx(13 / 16)
    # At threshold 0.6: FAR = 1/4, FRR = 1 - 3/4 = 1/4.
    assert V.eer(HAND_SCORES, HAND_SAME) == pytest.approx((0.25, 0.6))


def test_eer_interpolates_between_roc_points():
    # same: .9 .5 ; different: .7 .1  -> ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    # FRR-FAR: 1, .5, 0 ... crossing exactly at (.5,.5), threshold .7
    assert V.eer([0.9, 0.5, 0.7, 0.1], [1, 1, 0, 0]) == pytest.approx((0.5, 0.7))
    # same: .9 .8 .3 ; different: .6 .5  -> points (fpr, frr): (0,1) (0,2/3) (0,1/3) (.5,1/3) (1,1/3) (1,0)
    # crossing on the segment (0,1/3)->(.5,1/3): EER = 1/3; first point with FAR >= FRR is .6.
    assert V.eer([0.9, 0.8, 0.3, 0.6, 0.5], [1, 1, 1, 0, 0]) == pytest.approx((1 / 3, 0.6))


@pytest.mark.parametrize("seed", [4, 5])
def test_eer_matches_brentq_reference(seed):
    scores, issame = _random_case(seed, n=500)
    fpr, tpr, _ = sk_roc_curve(issame, scores, drop_intermediate=False)
    # Commonly used reference: intersection of the linearly interpolated ROC with tpr = 1 - fpr.
    # (Continuous scores: no vertical duplicate fpr points at the crossing for interp1d to trip on.)
    reference = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert V.eer(scores, issame)[0] == pytest.approx(reference, abs=1e-9)


def test_tar_at_far_hand_case_and_supported_fars_only():
    # 4 different pairs: the smallest measurable FAR is 1/4, so 0.1 is left out, never made up.
    out = V.tar_at_far(HAND_SCORES, HAND_SAME, fars=(0.5, 0.25, 0.1))
    assert out == {"0.5": pytest.approx(1.0), "0.25": pytest.approx(0.75)}
    default = V.tar_at_far(HAND_SCORES, HAND_SAME)
    assert list(default) == []  # 1e-1 < 1/4
    # Exactly 1/n_neg is supported (floating point: 1e-3 * 1000).
    rng = np.random.default_rng(0)
    scores = rng.normal(size=1100)
    issame = np.r_[np.ones(100, bool), np.zeros(1000, bool)]
    assert list(V.tar_at_far(scores, issame)) == ["0.1", "0.01", "0.001"]


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_tar_at_far_matches_brute_force(seed):
    scores, issame = _random_case(seed, n=400, ties=True)
    n_neg = np.sum(~issame)
    candidates = np.r_[np.inf, np.unique(scores)]
    for far in (0.5, 0.1, 0.05, 0.01):
        # Brute force: best TAR over all real thresholds whose FAR does not exceed the target.
        best = max(np.mean(scores[issame] >= t) for t in candidates if np.sum(scores[~issame] >= t) / n_neg <= far)
        assert V.tar_at_far(scores, issame, fars=(far,))[str(far)] == pytest.approx(best)


def _brute_force_best(scores, issame):
    """Independent reference: try every midpoint threshold; strictest among the best."""
    u = np.unique(scores)[::-1]
    candidates = np.r_[u[0] + 1.0, (u[:-1] + u[1:]) / 2, u[-1] - 1.0]
    accs = np.array([np.mean((scores >= t) == issame) for t in candidates])
    k = int(np.argmax(accs))
    return candidates[k], accs[k], 0 < k < len(candidates) - 1


def test_best_threshold_hand_case():
    # Accuracy 6/8 is reached accepting >=.8, >=.6 or >=.4; the strictest wins: midpoint(.8, .7).
    assert V.best_threshold(HAND_SCORES, HAND_SAME) == pytest.approx((0.75, 0.75))


@pytest.mark.parametrize("seed", [9, 10])
def test_best_threshold_matches_brute_force(seed):
    scores, issame = _random_case(seed, n=200, ties=True)
    t, acc = V.best_threshold(scores, issame)
    ref_t, ref_acc, interior = _brute_force_best(scores, issame)
    assert acc == pytest.approx(ref_acc)
    assert np.mean((scores >= t) == issame) == pytest.approx(acc)
    assert interior  # with these data the best decision is not "accept all/none" ...
    assert t == pytest.approx(ref_t)  # ... so it is the same midpoint


def test_best_threshold_single_class_and_adjacent_floats():
    # Only "same" pairs: accept everything.
    t, acc = V.best_threshold([0.3, 0.1], [1, 1])
    assert acc == 1.0 and t <= 0.1
    t, acc = V.best_threshold([0.3, 0.1], [0, 0])
    assert acc == 1.0 and t > 0.3
    # Scores one ulp apart: the threshold must still separate them.
    lo = 0.5
    hi = np.nextafter(lo, 1.0)
    t, acc = V.best_threshold([hi, lo], [1, 0])
    assert acc == 1.0 and lo < t <= hi


def test_kfold_hand_case_threshold_from_other_folds_only():
    # Each fold alone is perfectly separable, but the threshold learnt on the other fold is not
    # right for it, so a leak of the test fold into threshold selection would give 100%.
    #   fold 0: same .9 .45, different .4 .1  -> separable at (.4, .45)
    #   fold 1: same .8 .7,  different .5 .2  -> separable at (.5, .7)
    # Fold 0 tested with fold 1's threshold midpoint(.7,.5)=.6: .45 is rejected -> 3/4.
    # Fold 1 tested with fold 0's threshold midpoint(.45,.4)=.425: .5 is accepted -> 3/4.
    scores = np.array([0.9, 0.8, 0.45, 0.7, 0.4, 0.5, 0.1, 0.2])
    issame = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    folds = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # interleaved: fold ids, not positions, define folds
    out = V.kfold_accuracy(scores, issame, folds=folds)
    assert out["fold_accuracies"] == pytest.approx([0.75, 0.75])
    assert out["fold_thresholds"] == pytest.approx([0.6, 0.425])
    assert out["mean"] == pytest.approx(0.75) and out["std"] == pytest.approx(0.0)
    assert out["n_folds"] == 2
    # Sanity: the same data with the optimistic threshold is perfectly separable per fold.
    for f in (0, 1):
        assert V.best_threshold(scores[folds == f], issame[folds == f])[1] == 1.0


def test_kfold_never_passes_test_fold_to_threshold_selection(monkeypatch):
    scores, issame = _random_case(11, n=100)
    folds = np.arange(100) % 10
    seen = []
    real = V.best_threshold

    def spy(s, y):
        seen.append(np.asarray(s).copy())
        return real(s, y)

    monkeypatch.setattr(V, "best_threshold", spy)
    V.kfold_accuracy(scores, issame, folds=folds)
    assert len(seen) == 10
    for f, train_scores in enumerate(seen):
        np.testing.assert_array_equal(np.sort(train_scores), np.sort(scores[folds != f]))
        assert not np.isin(scores[folds == f], train_scores).any()


def test_kfold_contiguous_split_matches_sklearn_kfold():
    scores, issame = _random_case(12, n=203, ties=True)
    out = V.kfold_accuracy(scores, issame, n_folds=10)
    expected = []
    for train, test in KFold(n_splits=10, shuffle=False).split(scores):
        t, _, _ = _brute_force_best(scores[train], issame[train])
        expected.append(np.mean((scores[test] >= t) == issame[test]))
    np.testing.assert_allclose(out["fold_accuracies"], expected)
    assert out["mean"] == pytest.approx(np.mean(expected))
    assert out["std"] == pytest.approx(np.std(expected))
    assert out["standard_error"] == pytest.approx(np.std(expected, ddof=1) / np.sqrt(10))
    np.testing.assert_array_equal(np.bincount(V.contiguous_folds(203, 10)), [21, 21, 21] + [20] * 7)


def test_report_is_json_and_labels_best_threshold_optimistic():
    scores, issame = _random_case(13, n=400)
    folds = np.repeat(np.arange(10), 40)
    report = V.verification_report(scores, issame, folds=folds)
    text = json.dumps(report, allow_nan=False)  # plain types only, no NaN/inf
    assert "optimistic" in report["best_threshold_note"]
    assert report["num_pairs"] == 400 and report["n_folds"] == 10
    assert report["num_same"] + report["num_different"] == 400
    n_neg = report["num_different"]
    assert all(float(k) >= 1 / n_neg for k in report["tar_at_far"])
    assert set(report["tar_at_far"]) == {"0.1", "0.01"}  # ~240 different pairs: 1e-3 is not measurable
    assert report["auc"] == pytest.approx(roc_auc_score(issame, scores))
    assert json.loads(text)["accuracy_mean"] == pytest.approx(V.kfold_accuracy(scores, issame, folds)["mean"])


def test_tar_threshold_json_safe_when_nothing_can_be_accepted():
    # Two different pairs tie at the top: any threshold accepting them has FAR 1/2 > 1/4, so the
    # operating point is "accept nothing" (threshold +inf internally), reported as a finite number.
    scores = [0.9, 0.9, 0.7, 0.6, 0.5]
    issame = [0, 0, 1, 0, 0]
    report = V.verification_report(scores, issame, folds=[0, 1, 0, 1, 0], fars=(0.25,))
    assert report["tar_at_far"] == {"0.25": 0.0}
    assert np.isfinite(report["tar_at_far_thresholds"]["0.25"])
    json.dumps(report, allow_nan=False)


def test_input_validation():
    with pytest.raises(ValueError, match="length"):
        V.roc_curve([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="NaN"):
        V.roc_auc([0.1, np.nan], [True, False])
    with pytest.raises(ValueError, match="both"):
        V.roc_curve([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="0/1"):
        V.roc_curve([0.1, 0.2], [0.3, 0.9])
    with pytest.raises(ValueError, match="folds"):
        V.kfold_accuracy([0.1, 0.2, 0.3], [1, 0, 1], folds=[0, 0, 0])


def test_kfold_per_fold_scores_use_each_folds_row():
    # Row k scores every pair with a transform fitted without fold k. Fold 0's test pairs must be judged
    # with row 0's threshold (chosen on row 0's training pairs) and row 0's own test scores.
    scores, issame = _random_case(5, n=120)
    folds = np.repeat(np.arange(3), 40)
    rng = np.random.default_rng(6)
    rows = np.stack([scores + rng.normal(0, 0.3, scores.size) for _ in range(3)])
    out = V.kfold_accuracy(rows, issame, folds=folds)
    for k in range(3):
        test = folds == k
        t, _ = V.best_threshold(rows[k][~test], issame[~test])
        assert out["fold_thresholds"][k] == t
        assert out["fold_accuracies"][k] == np.mean((rows[k][test] >= t) == issame[test])
    oof = V.out_of_fold_scores(rows, issame, folds=folds)
    np.testing.assert_array_equal(oof, np.concatenate([rows[k][folds == k] for k in range(3)]))
    report = V.verification_report(rows, issame, folds=folds)
    assert report["accuracy_mean"] == out["mean"]
    assert report["auc"] == V.roc_auc(oof, issame)  # pooled metrics: out-of-fold scores
    # Identical rows give exactly the 1-D result.
    assert V.kfold_accuracy(np.stack([scores] * 3), issame, folds) == V.kfold_accuracy(scores, issame, folds)
    with pytest.raises(ValueError, match="one per fold"):
        V.kfold_accuracy(rows[:2], issame, folds=folds)
