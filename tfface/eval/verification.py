"""Face verification metrics: LFW 10-fold accuracy, ROC, AUC, EER and TAR@FAR.

Every function takes *similarity* scores (higher = more likely the same person, e.g. cosine similarity
of L2-normalised embeddings) and a boolean ``issame`` label per pair.  A pair is accepted as "same"
when ``score >= threshold``.

Protocol (LFW View 2, Huang et al. 2007, "Labeled Faces in the Wild"): the pairs are split into 10
folds; for each fold the threshold is chosen on the *other nine* folds (the one maximising their
accuracy) and applied to the held-out fold.  The reported accuracy is the mean ± std over folds.
``best_threshold`` on all pairs is an *optimistic* upper bound (the threshold is fitted on the test
data) and is reported separately and labelled as such.

The ROC is exact: every distinct score is an operating point and tied scores are accepted or
rejected together (the same curve as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``).
No interpolation is used for TAR@FAR (see :func:`tar_at_far`), and FARs smaller than one false
accept among the available negative pairs are never reported.
"""

from __future__ import annotations

import numpy as np

DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)

TAR_AT_FAR_POLICY = (
    "TAR at the lowest threshold whose empirical FAR <= target (exact ROC point, no interpolation, "
    "ties accepted or rejected together); only FARs >= 1/num_negative are reported"
)
OPTIMISTIC_NOTE = (
    "optimistic: threshold chosen on all pairs, i.e. on the test data itself; an upper bound, "
    "not a protocol result (use the k-fold accuracy)"
)


def _check_inputs(scores, issame) -> tuple[np.ndarray, np.ndarray]:
    """Validates and converts to (float64 scores, bool labels) of equal 1-D length."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(issame).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and issame differ in length: {scores.shape[0]} vs {labels.shape[0]}")
    if scores.size == 0:
        raise ValueError("no pairs: scores is empty")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores contain {int(np.sum(~np.isfinite(scores)))} NaN/inf value(s)")
    if labels.dtype != np.bool_:
        # 0/1 integers are fine; anything else is almost certainly a mix-up (e.g. scores passed as labels).
        if not np.all(np.isin(labels, (0, 1))):
            raise ValueError("issame must be boolean or 0/1")
        labels = labels.astype(bool)
    return scores, labels


def _operating_points(scores: np.ndarray, issame: np.ndarray):
    """Cumulative counts at every distinct score, highest first.

    Returns ``(values, tps, fps)``: accepting ``score >= values[i]`` gives ``tps[i]`` true and
    ``fps[i]`` false accepts.  Only the last index of each run of tied scores is kept, which is what
    makes ties all-or-nothing (the correct exact ROC).
    """
    # Stable sort so the result does not depend on the sort algorithm when scores tie.
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    y = issame[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = (last_of_run + 1) - tps
    return s[last_of_run], tps, fps


def _class_counts(issame: np.ndarray) -> tuple[int, int]:
    n_pos = int(np.sum(issame))
    n_neg = int(issame.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need both same and different pairs; got {n_pos} same, {n_neg} different")
    return n_pos, n_neg


def roc_curve(scores, issame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve over all distinct thresholds.

    Args:
        scores: similarity per pair, shape (P,).
        issame: bool (or 0/1) per pair, shape (P,).

    Returns:
        ``(fpr, tpr, thresholds)``, each of length (#distinct scores + 1), thresholds descending.
        The first point is ``thresholds[0] = +inf`` (accept nothing, FPR = TPR = 0), matching
        ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    Raises:
        ValueError: on mismatched lengths, non-finite scores, or if one class is missing.
    """
    scores, issame = _check_inputs(scores, issame)
    n_pos, n_neg = _class_counts(issame)
    values, tps, fps = _operating_points(scores, issame)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, values]
    return fpr, tpr, thresholds


def roc_auc(scores, issame) -> float:
    """Area under the exact ROC curve (trapezoidal; a tie between a same and a different pair
    counts 1/2, i.e. the Mann-Whitney U statistic, as ``sklearn.metrics.roc_auc_score``)."""
    fpr, tpr, _ = roc_curve(scores, issame)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) * 0.5))


def eer(scores, issame) -> tuple[float, float]:
    """Equal error rate: where the false reject rate (1 - TPR) equals the false accept rate.

    The ROC is linearly interpolated between its two exact points on either side of the crossing
    (the usual ``brentq(lambda x: 1 - x - interp(fpr, tpr)(x))`` definition).  The returned
    threshold is that of the first exact operating point (scanning from the strictest) whose
    FAR >= FRR, so it is always a real, usable score threshold.

    Returns:
        ``(eer, threshold)``.
    """
    fpr, tpr, thresholds = roc_curve(scores, issame)
    diff = (1.0 - tpr) - fpr  # FRR - FAR: starts at +1, ends at -1, never increases.
    i = int(np.argmax(diff <= 0))
    # i >= 1 always: the first point (accept nothing) has FRR - FAR = 1.
    if diff[i] == 0:
        return float(fpr[i]), float(thresholds[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    value = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    return float(value), float(thresholds[i])


def _far_key(far: float) -> str:
    return str(far)


def operating_points(fpr, tpr, thresholds, targets, num_negative: int) -> dict[str, tuple[float, float, float]]:
    """``{str(target): (tpr, threshold, achieved_fpr)}`` on an exact curve, for each measurable target rate.

    ``fpr``/``tpr``/``thresholds`` are exact operating points from the strictest (point 0 = accept nothing,
    threshold +inf) down, ``fpr`` non-decreasing. For each target the last (lowest-threshold) point whose
    false-positive rate is <= target is taken: no interpolation. Targets below ``1 / num_negative`` are left
    out. Shared by TAR@FAR here and TPIR@FPIR in :mod:`tfface.eval.identification`.
    """
    out = {}
    for target in targets:
        target = float(target)
        # One false accept among num_negative is the smallest nonzero rate that can be measured; a target
        # below it would be a made-up number.  The tolerance absorbs e.g. 1e-3 * 1000 rounding.
        if target * num_negative < 1.0 - 1e-9:
            continue
        i = int(np.searchsorted(fpr, target * (1 + 1e-12), side="right")) - 1
        # Point 0 is "accept nothing" (threshold +inf); report a finite, JSON-safe equivalent.
        threshold = thresholds[i] if i > 0 else np.nextafter(thresholds[1], np.inf)
        out[_far_key(target)] = (float(tpr[i]), float(threshold), float(fpr[i]))
    return out


def _tar_at_far_points(scores, issame, fars) -> dict[str, tuple[float, float, float]]:
    """``{str(far): (tar, threshold, achieved_far)}`` for each supported FAR (see tar_at_far)."""
    scores, issame = _check_inputs(scores, issame)
    fpr, tpr, thresholds = roc_curve(scores, issame)
    return operating_points(fpr, tpr, thresholds, fars, int(np.sum(~issame)))


def tar_at_far(scores, issame, fars=DEFAULT_FARS) -> dict[str, float]:
    """True accept rate at given false accept rates.

    Policy (conservative, no interpolation): for each target FAR, the TAR of the exact ROC operating
    point with the lowest threshold whose empirical FAR is <= the target, i.e. the best TAR that a
    real threshold achieves without exceeding the target.  FARs below ``1 / num_negative_pairs`` cannot
    be measured and are left out of the result (never extrapolated).

    Returns:
        ``{str(far): tar}`` for the supported FARs, in the order given.
    """
    return {k: v[0] for k, v in _tar_at_far_points(scores, issame, fars).items()}


def _best_from_points(values, tps, fps, n_pos, n_neg) -> tuple[float, float]:
    n = n_pos + n_neg
    # Candidate decisions: accept nothing, then accept everything >= values[i] for each distinct score.
    correct = np.r_[n_neg, tps + (n_neg - fps)]
    k = int(np.argmax(correct))  # first maximum = strictest threshold among equally good ones
    if k == 0:
        threshold = float(np.nextafter(values[0], np.inf))  # just above the top score
    elif k == values.size:
        threshold = float(values[-1])  # accept all: the lowest score itself (>= rule)
    else:
        hi, lo = values[k - 1], values[k]
        mid = 0.5 * (hi + lo)
        # Adjacent floats: the midpoint may round onto lo, which would accept lo as well.
        threshold = float(hi if mid <= lo else mid)
    return threshold, float(correct[k] / n)


def best_threshold(scores, issame) -> tuple[float, float]:
    """Threshold maximising accuracy on these pairs, and that accuracy.

    Candidates are the midpoints between consecutive distinct scores, plus "accept all" (the lowest
    score) and "accept none" (just above the highest score), so every distinct decision is tried
    exactly once.  Among equally accurate thresholds the strictest (highest) is returned, as
    InsightFace does.  Works with a single class too (needed for small k-fold training splits).

    Returns:
        ``(threshold, accuracy)``; pairs with ``score >= threshold`` are predicted "same".
    """
    scores, issame = _check_inputs(scores, issame)
    n_pos = int(np.sum(issame))
    values, tps, fps = _operating_points(scores, issame)
    return _best_from_points(values, tps, fps, n_pos, issame.size - n_pos)


def contiguous_folds(num_pairs: int, n_folds: int = 10) -> np.ndarray:
    """Fold id per pair for contiguous folds, sizes as ``sklearn.model_selection.KFold`` (no shuffle):
    the first ``num_pairs % n_folds`` folds get one extra pair.  This is the InsightFace split of a
    pairs list stored in protocol order (LFW .bin files)."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if num_pairs < n_folds:
        raise ValueError(f"cannot split {num_pairs} pairs into {n_folds} folds")
    sizes = np.full(n_folds, num_pairs // n_folds)
    sizes[: num_pairs % n_folds] += 1
    return np.repeat(np.arange(n_folds, dtype=np.int32), sizes)


def _fold_ids(num_pairs: int, folds, n_folds: int) -> np.ndarray:
    if folds is None:
        folds = contiguous_folds(num_pairs, n_folds)
    folds = np.asarray(folds).reshape(-1)
    if folds.shape != (num_pairs,):
        raise ValueError(f"folds has {folds.size} entries for {num_pairs} pairs")
    if np.unique(folds).size < 2:
        raise ValueError(f"need at least 2 folds, got {np.unique(folds).size}")
    return folds


def _per_fold_scores(scores, issame, folds, n_folds):
    """Validates ``scores`` (P,) or (K, P) and returns ``(score_rows, issame, folds, fold_ids)``.

    ``score_rows[k]`` are the scores to use when fold ``fold_ids[k]`` is the test fold.
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"scores must be (P,) or (n_folds, P), got shape {arr.shape}")
    rows = arr if arr.ndim == 2 else arr[None]
    checked = [_check_inputs(row, issame) for row in rows]
    issame = checked[0][1]
    folds = _fold_ids(issame.size, folds, n_folds)
    fold_ids = np.unique(folds)
    if arr.ndim == 2 and rows.shape[0] != fold_ids.size:
        raise ValueError(f"scores has {rows.shape[0]} rows (one per fold) but there are {fold_ids.size} folds")
    score_rows = [c[0] for c in checked] if arr.ndim == 2 else [checked[0][0]] * fold_ids.size
    return score_rows, issame, folds, fold_ids


def out_of_fold_scores(scores, issame, folds=None, n_folds: int = 10) -> np.ndarray:
    """Each pair's score from the row of its own fold: ``oof[p] = scores[k(p), p]``.

    With per-fold scores (a feature transform such as PCA fitted without fold k), every pair is scored
    by a transform that never saw it, so the pooled ROC over these scores is an honest estimate.
    1-D ``scores`` are returned unchanged (as float64).
    """
    score_rows, issame, folds, fold_ids = _per_fold_scores(scores, issame, folds, n_folds)
    oof = np.empty(issame.size, np.float64)
    for k, f in enumerate(fold_ids):
        oof[folds == f] = score_rows[k][folds == f]
    return oof


def kfold_accuracy(scores, issame, folds=None, n_folds: int = 10) -> dict:
    """LFW-protocol k-fold verification accuracy.

    For each fold, the threshold is chosen with :func:`best_threshold` on the pairs of all *other*
    folds and applied to the held-out fold; the held-out pairs never influence their own threshold.

    Args:
        scores: similarity per pair (P,); or (K, P), one row per fold in sorted fold-id order, when the
            scores come from a transform fitted on the training folds only (PCA): row k scores every pair
            with the transform fitted without fold k, and both the threshold search (on the training
            pairs) and the test use that row.
        issame: bool per pair (P,).
        folds: int fold id per pair (e.g. ``PairList.fold``, the pairs.txt folds).  If None the pairs
            are split into ``n_folds`` contiguous folds (:func:`contiguous_folds`).
        n_folds: number of folds when ``folds`` is None (ignored otherwise).

    Returns:
        dict with ``mean``, ``std`` (population std over folds, ddof=0, the number papers and
        InsightFace report), ``standard_error`` (LFW README: sample std / sqrt(k)), ``n_folds``,
        ``fold_accuracies`` and ``fold_thresholds`` (lists, fold order = sorted fold ids).
    """
    score_rows, issame, folds, fold_ids = _per_fold_scores(scores, issame, folds, n_folds)
    accs, thresholds = [], []
    for k, f in enumerate(fold_ids):
        test = folds == f
        row = score_rows[k]
        threshold, _ = best_threshold(row[~test], issame[~test])
        accs.append(float(np.mean((row[test] >= threshold) == issame[test])))
        thresholds.append(float(threshold))
    accs_arr = np.asarray(accs)
    return {
        "mean": float(np.mean(accs_arr)),
        "std": float(np.std(accs_arr)),
        "standard_error": float(np.std(accs_arr, ddof=1) / np.sqrt(accs_arr.size)),
        "n_folds": int(fold_ids.size),
        "fold_accuracies": accs,
        "fold_thresholds": thresholds,
    }


def verification_report(scores, issame, folds=None, fars=DEFAULT_FARS, n_folds: int = 10) -> dict:
    """All verification metrics in one JSON-serialisable dict (plain floats/ints/lists/strings).

    Keys: ``num_pairs``, ``num_same``, ``num_different``, ``accuracy_mean``, ``accuracy_std``,
    ``accuracy_standard_error``, ``n_folds``, ``fold_accuracies``, ``fold_thresholds``,
    ``best_threshold_accuracy`` and ``best_threshold`` (optimistic, see ``best_threshold_note``),
    ``auc``, ``eer``, ``eer_threshold``, ``tar_at_far`` (``{str(far): tar}``, supported FARs only),
    ``tar_at_far_thresholds``, ``tar_at_far_achieved_far``, ``tar_at_far_policy``.

    ``scores`` may be (K, P) per-fold scores (see :func:`kfold_accuracy`); the k-fold accuracy then uses
    each fold's row, and the pooled metrics (best threshold, AUC, EER, TAR@FAR) use the out-of-fold
    scores (:func:`out_of_fold_scores`).
    """
    kf = kfold_accuracy(scores, issame, folds=folds, n_folds=n_folds)
    if np.ndim(scores) == 2:
        scores = out_of_fold_scores(scores, issame, folds=folds, n_folds=n_folds)
    scores, issame = _check_inputs(scores, issame)
    n_pos, n_neg = _class_counts(issame)
    best_t, best_acc = best_threshold(scores, issame)
    eer_value, eer_t = eer(scores, issame)
    points = _tar_at_far_points(scores, issame, fars)
    return {
        "num_pairs": int(scores.size),
        "num_same": n_pos,
        "num_different": n_neg,
        "accuracy_mean": kf["mean"],
        "accuracy_std": kf["std"],
        "accuracy_standard_error": kf["standard_error"],
        "n_folds": kf["n_folds"],
        "fold_accuracies": kf["fold_accuracies"],
        "fold_thresholds": kf["fold_thresholds"],
        "best_threshold_accuracy": best_acc,
        "best_threshold": best_t,
        "best_threshold_note": OPTIMISTIC_NOTE,
        "auc": roc_auc(scores, issame),
        "eer": eer_value,
        "eer_threshold": eer_t,
        "tar_at_far": {k: v[0] for k, v in points.items()},
        "tar_at_far_thresholds": {k: v[1] for k, v in points.items()},
        "tar_at_far_achieved_far": {k: v[2] for k, v in points.items()},
        "tar_at_far_policy": TAR_AT_FAR_POLICY,
    }
