"""Face identification (1:N search) metrics: closed-set rank-k / CMC, open-set TPIR@FPIR and the
MegaFace distractor curve.

Every embedding is L2-normalised here (in float64) before use, so every score is a true cosine
similarity, whatever normalisation the caller applied.  Zero vectors and NaN/inf are rejected.

* **Gallery templates**: one template per enrolled identity, the mean of the identity's L2-normalised
  image embeddings, re-normalised (:func:`build_templates`; IJB-B/C templates, Whitelam et al. 2017,
  Maze et al. 2018, aggregated by feature averaging as in the usual baselines).  Probes are single
  embeddings; pass probe templates (from :func:`build_templates`) to search with templates instead.
* **Closed set** (every probe's identity is enrolled; Maze et al. 2018, IJB-C, "1:N closed-set"):
  rank-k accuracy = fraction of probes whose mate template is among the k best-scoring templates; the
  CMC curve is rank-k accuracy for k = 1, 2, ....  Ties are resolved *against* the probe: the mate's
  rank is 1 + the number of non-mated templates scoring >= the mate.  Ranks above the number of
  enrolled identities are not reported (every probe is trivially found there).
* **Open set** (NIST FRVT 1:N, Grother, Ngan & Hanaoka, NISTIR 8271, 2019; IJB-C "1:N open-set"):
  with threshold t, FPIR(t) = fraction of *non-mated* probes (identity not enrolled) whose top-1
  score is >= t; TPIR(t) = fraction of *mated* probes whose mate is at rank 1 (rule above) *and*
  scores >= t; FNIR = 1 - TPIR.  TPIR@FPIR uses exact operating points like
  :func:`tfface.eval.verification.tar_at_far`: no interpolation, FPIRs below 1/num_nonmated left out.
* **Distractor curve** (MegaFace Challenge 1 identification, Kemelmacher-Shlizerman et al., CVPR
  2016; the protocol behind the MegaFace numbers of e.g. the center-loss paper, Wen et al., ECCV
  2016): for every ordered pair (p, g) of two different images of one probe identity, g is enrolled
  alone among n distractors; the trial succeeds at rank 1 if sim(p, g) is *strictly* greater than
  sim(p, d) for each of those distractors (our tie rule: a tie with a distractor is a failure).
  Rank-1 at n = success rate over all pairs, for n = 10, 100, ... .  MegaFace fixes its random subsets
  in devkit lists; here the n distractors are the first n rows (nested prefixes, optionally after a
  seeded shuffle), so the curve is monotone by construction.
"""

from __future__ import annotations

import numpy as np

from tfface.eval.verification import operating_points

DEFAULT_RANKS = (1, 5)
DEFAULT_FPIRS = (1e-1, 1e-2, 1e-3)
# Similarity blocks are at most this many float64 entries (128 MiB), which bounds memory for large
# galleries, probe sets and 1M-distractor sets alike.
_BLOCK_ELEMENTS = 1 << 24

RANK_POLICY = (
    "pessimistic ties: mate rank = 1 + number of non-mated gallery templates scoring >= the mate; "
    "ranks above the number of gallery identities are not reported"
)
TPIR_AT_FPIR_POLICY = (
    "TPIR at the lowest threshold whose empirical FPIR <= target (exact operating point, no interpolation, "
    "ties accepted or rejected together); a mated search counts only if its mate is rank 1 (pessimistic ties) "
    "and scores >= threshold; only FPIRs >= 1/num_nonmated are reported"
)
DISTRACTOR_POLICY = (
    "MegaFace Challenge 1: for each ordered pair (probe, mate) of different images of one identity, "
    "success if sim(probe, mate) > max sim(probe, first n distractors) (a tie is a failure); "
    "distractor subsets are nested prefixes; counts above the number of distractors are not reported"
)


def _normalise(x, name: str) -> np.ndarray:
    """float64 copy of 2-D ``x`` with unit rows; rejects NaN/inf and zero rows (no direction, no cosine)."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contain {int(np.sum(~np.isfinite(x)))} NaN/inf value(s)")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{name} contain {int(np.sum(norms == 0))} all-zero row(s)")
    return x / norms


def _check_shape(x, name: str, dim: int | None) -> np.ndarray:
    x = np.asarray(x)  # no copy: a memmap stays on disk
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (num, dim) array, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have dimension {x.shape[1]}, but the gallery/probes have {dim}")
    return x


def _check_embeddings(x, name: str, dim: int | None = None) -> np.ndarray:
    return _normalise(_check_shape(x, name, dim), name)


def _check_labels(labels, n: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {labels.shape}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries for {n} embeddings")
    return labels


def _templates(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    template_labels, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]
    # The sum has the direction of the mean; normalising removes the 1/m.
    sums = np.add.reduceat(x[order], starts, axis=0)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{int(np.sum(norms == 0))} identities have embeddings that cancel out (zero mean)")
    return template_labels, sums / norms


def build_templates(embeddings, labels) -> tuple[np.ndarray, np.ndarray]:
    """One template per identity: the mean of its L2-normalised embeddings, L2-normalised again.

    Args:
        embeddings: (N, D) image embeddings (one or more per identity).
        labels: (N,) identity label per embedding (any sortable type: ints, strings).

    Returns:
        ``(template_labels, templates)``: the sorted unique labels (K,) and float64 (K, D) unit templates.
    """
    x = _check_embeddings(embeddings, "embeddings")
    return _templates(x, _check_labels(labels, x.shape[0], "labels"))


def _mate_index(template_labels: np.ndarray, probe_labels: np.ndarray, name: str) -> np.ndarray:
    """Index of each probe's mate template; a probe whose identity is not enrolled is an error."""
    idx = np.clip(np.searchsorted(template_labels, probe_labels), 0, template_labels.size - 1)
    missing = template_labels[idx] != probe_labels
    if np.any(missing):
        examples = ", ".join(repr(v) for v in np.unique(probe_labels[missing])[:5].tolist())
        raise ValueError(f"{int(np.sum(missing))} {name} have identities that are not in the gallery "
                         f"(e.g. {examples}); mated/closed-set search needs every probe identity enrolled")
    return idx


def _mate_ranks(templates: np.ndarray, mate_idx: np.ndarray, probes: np.ndarray):
    """``(ranks, mate_scores)``: rank = number of templates scoring >= the mate (the mate itself included)."""
    n = probes.shape[0]
    ranks, mate_scores = np.empty(n, dtype=np.int64), np.empty(n)
    step = max(1, _BLOCK_ELEMENTS // templates.shape[0])
    for a in range(0, n, step):
        s = probes[a:a + step] @ templates.T
        m = s[np.arange(s.shape[0]), mate_idx[a:a + step]]
        ranks[a:a + step] = np.sum(s >= m[:, None], axis=1)
        mate_scores[a:a + step] = m
    return ranks, mate_scores


def _top_scores(templates: np.ndarray, probes: np.ndarray) -> np.ndarray:
    step = max(1, _BLOCK_ELEMENTS // templates.shape[0])
    return np.concatenate([np.max(probes[a:a + step] @ templates.T, axis=1) for a in range(0, probes.shape[0], step)])


def _check_ranks(ranks) -> list[int]:
    out = []
    for r in np.asarray(ranks).reshape(-1).tolist():
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"ranks must be positive integers, got {r!r}")
        out.append(r)
    if not out:
        raise ValueError("no ranks given")
    return out


def _closed_summary(ranks_arr: np.ndarray, num_templates: int, ranks: list[int]) -> dict:
    max_rank = min(max(ranks), num_templates)
    hits = np.bincount(ranks_arr, minlength=max_rank + 1)[1:max_rank + 1]
    cmc = (np.cumsum(hits) / ranks_arr.size).tolist()
    return {
        "rank_accuracy": {str(k): float(cmc[k - 1]) for k in ranks if k <= num_templates},
        "cmc": [float(v) for v in cmc],
        "rank_policy": RANK_POLICY,
    }


def _gallery(gallery_embeddings, gallery_labels):
    g = _check_embeddings(gallery_embeddings, "gallery_embeddings")
    labels, templates = _templates(g, _check_labels(gallery_labels, g.shape[0], "gallery_labels"))
    return g.shape[0], labels, templates


def _probes(embeddings, labels, name: str, dim: int):
    x = _check_embeddings(embeddings, f"{name}_embeddings", dim)
    return x, _check_labels(labels, x.shape[0], f"{name}_labels")


def closed_set_identification(gallery_embeddings, gallery_labels, probe_embeddings, probe_labels,
                              ranks=DEFAULT_RANKS) -> dict:
    """Closed-set rank-k accuracy and CMC of probes searched against the gallery templates (cosine).

    Every probe identity must be in the gallery (ValueError otherwise).  Ties count against the probe
    (see ``RANK_POLICY``); ranks above the number of gallery identities are left out.

    Returns:
        dict with ``num_gallery_identities``, ``num_gallery_images``, ``num_probes``, ``rank_accuracy``
        (``{str(k): accuracy}``), ``cmc`` (list; ``cmc[i]`` = rank-(i+1) accuracy, up to
        min(max(ranks), num_gallery_identities)) and ``rank_policy``.
    """
    ranks = _check_ranks(ranks)
    num_images, labels, templates = _gallery(gallery_embeddings, gallery_labels)
    p, p_labels = _probes(probe_embeddings, probe_labels, "probe", templates.shape[1])
    r, _ = _mate_ranks(templates, _mate_index(labels, p_labels, "probes"), p)
    return {"num_gallery_identities": int(labels.size), "num_gallery_images": int(num_images),
            "num_probes": int(p.shape[0]), **_closed_summary(r, labels.size, ranks)}


def _tpir_at_fpir_points(hit_scores: np.ndarray, num_mated: int, nonmated_top: np.ndarray, fpirs) -> dict:
    """``{str(fpir): (tpir, threshold, achieved_fpir)}``; ``hit_scores`` = mate scores of rank-1 mated probes."""
    n_nm = nonmated_top.size
    values = np.unique(np.r_[hit_scores, nonmated_top])[::-1]  # every distinct decision, strictest first
    fp = n_nm - np.searchsorted(np.sort(nonmated_top), values, side="left")  # count of scores >= value
    tp = hit_scores.size - np.searchsorted(np.sort(hit_scores), values, side="left")
    fpir, tpir = np.r_[0.0, fp / n_nm], np.r_[0.0, tp / num_mated]
    thresholds = np.r_[np.inf, values]
    for target in fpirs:
        if not 0 < float(target) <= 1:
            raise ValueError(f"FPIR targets must be in (0, 1], got {float(target)}")
    return operating_points(fpir, tpir, thresholds, fpirs, n_nm)


def _open_summary(ranks_arr, mate_scores, nonmated_top, fpirs) -> dict:
    points = _tpir_at_fpir_points(mate_scores[ranks_arr == 1], ranks_arr.size, nonmated_top, fpirs)
    return {
        "num_mated_probes": int(ranks_arr.size),
        "num_nonmated_probes": int(nonmated_top.size),
        # TPIR with no threshold (FPIR = 1): the ceiling of every TPIR below.
        "mated_rank1_accuracy": float(np.mean(ranks_arr == 1)),
        "tpir_at_fpir": {k: v[0] for k, v in points.items()},
        "fnir_at_fpir": {k: 1.0 - v[0] for k, v in points.items()},
        "tpir_at_fpir_thresholds": {k: v[1] for k, v in points.items()},
        "tpir_at_fpir_achieved_fpir": {k: v[2] for k, v in points.items()},
        "tpir_at_fpir_policy": TPIR_AT_FPIR_POLICY,
    }


def open_set_identification(gallery_embeddings, gallery_labels, mated_probe_embeddings, mated_probe_labels,
                            nonmated_probe_embeddings, fpirs=DEFAULT_FPIRS) -> dict:
    """Open-set TPIR (and FNIR = 1 - TPIR) at given FPIRs, NIST FRVT / IJB-C definitions (module docstring).

    Mated probes must have enrolled identities; non-mated probes are unlabelled embeddings of people
    who must *not* be in the gallery (the caller's responsibility; it cannot be checked here).

    Returns:
        dict with ``num_gallery_identities``, ``num_gallery_images``, ``num_mated_probes``,
        ``num_nonmated_probes``, ``mated_rank1_accuracy``, ``tpir_at_fpir``, ``fnir_at_fpir``,
        ``tpir_at_fpir_thresholds``, ``tpir_at_fpir_achieved_fpir`` (each ``{str(fpir): value}``, only
        FPIRs >= 1/num_nonmated) and ``tpir_at_fpir_policy``.
    """
    num_images, labels, templates = _gallery(gallery_embeddings, gallery_labels)
    dim = templates.shape[1]
    p, p_labels = _probes(mated_probe_embeddings, mated_probe_labels, "mated_probe", dim)
    nm = _check_embeddings(nonmated_probe_embeddings, "nonmated_probe_embeddings", dim)
    r, mate_scores = _mate_ranks(templates, _mate_index(labels, p_labels, "mated probes"), p)
    return {"num_gallery_identities": int(labels.size), "num_gallery_images": int(num_images),
            **_open_summary(r, mate_scores, _top_scores(templates, nm), fpirs)}


def _distractor_counts(counts, n: int) -> list[int]:
    if counts is None:
        out = [10 ** k for k in range(1, len(str(n))) if 10 ** k <= n]
        return out if out and out[-1] == n else [*out, n]
    out = set()
    for c in np.asarray(counts).reshape(-1).tolist():
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"distractor counts must be positive integers, got {c!r}")
        if c <= n:  # more distractors than given cannot be measured
            out.add(c)
    return sorted(out)


def _prefix_maxima(probes, distractors, counts, order, chunk_size) -> np.ndarray:
    """(len(counts), P): max similarity of each probe to the first ``c`` distractors, for each count c.

    One pass over the distractors in chunks with a running maximum, so memory is O(P * chunk), not
    O(P * num_distractors); chunks end exactly on each count so the prefix maxima are exact.
    """
    running = np.full(probes.shape[0], -np.inf)
    out = np.empty((len(counts), probes.shape[0]))
    start = 0
    for ci, count in enumerate(counts):
        while start < count:
            stop = min(start + chunk_size, count)
            # Sorted indices read a memmap in file order; the order within a chunk does not change a max.
            rows = distractors[start:stop] if order is None else distractors[np.sort(order[start:stop])]
            block = _normalise(rows, "distractor_embeddings")
            np.maximum(running, np.max(probes @ block.T, axis=1), out=running)
            start = stop
        out[ci] = running
    return out


def distractor_curve(probe_embeddings, probe_labels, distractor_embeddings, counts=None, seed=None,
                     chunk_size: int | None = None) -> dict:
    """MegaFace Challenge 1 rank-1 identification rate versus the number of distractors.

    Args:
        probe_embeddings: (N, D) images of the probe identities (FaceScrub in MegaFace).
        probe_labels: (N,) identity per image; identities with a single image give no pairs and are
            only counted (``num_single_image_identities``).
        distractor_embeddings: (M, D) distractor images (may be a ``np.load(..., mmap_mode="r")`` array:
            it is read and normalised chunk by chunk, never copied whole).
        counts: distractor counts n; None = 10, 100, 1000, ... <= M, plus M itself.  Counts above M are
            left out.  The first n rows are used (nested subsets).
        seed: if not None, distractors are taken in ``np.random.default_rng(seed).permutation(M)``
            order instead of the given order (nested random subsets).
        chunk_size: distractors per similarity block (default: ~16M similarities per block).

    Returns:
        dict with ``num_probe_images``, ``num_probe_identities``, ``num_single_image_identities``,
        ``num_pairs`` (ordered pairs), ``num_distractors``, ``counts`` (those measured), ``rank1``
        (``{str(n): rate}``), ``seed`` and ``distractor_policy``.
    """
    p = _check_embeddings(probe_embeddings, "probe_embeddings")
    labels = _check_labels(probe_labels, p.shape[0], "probe_labels")
    d = _check_shape(distractor_embeddings, "distractor_embeddings", p.shape[1])
    counts = _distractor_counts(counts, d.shape[0])
    ids, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    if np.all(sizes < 2):
        raise ValueError("no probe identity has two or more images, so there are no (probe, mate) pairs")
    keep = np.flatnonzero(sizes[inverse] >= 2)  # single-image identities need no distractor scores
    p, inverse = p[keep], inverse[keep]
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // p.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if seed is not None:
        seed = int(seed)  # plain int for the JSON report
    order = None if seed is None else np.random.default_rng(seed).permutation(d.shape[0])
    maxima = _prefix_maxima(p, d, counts, order, chunk_size)
    successes = np.zeros(len(counts), dtype=np.int64)
    for group in np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1]):
        if group.size < 2:
            continue
        s = p[group] @ p[group].T
        np.fill_diagonal(s, -np.inf)  # an image is never its own mate
        for ci in range(len(counts)):  # one (m, m) comparison at a time keeps memory O(m^2)
            successes[ci] += int(np.sum(s > maxima[ci, group, None]))
    num_pairs = int(np.sum(sizes * (sizes - 1)))
    return {
        "num_probe_images": int(labels.size),
        "num_probe_identities": int(ids.size),
        "num_single_image_identities": int(np.sum(sizes == 1)),
        "num_pairs": num_pairs,
        "num_distractors": int(d.shape[0]),
        "counts": counts,
        "rank1": {str(c): float(s / num_pairs) for c, s in zip(counts, successes.tolist(), strict=True)},
        "seed": seed,
        "distractor_policy": DISTRACTOR_POLICY,
    }


def identification_report(gallery_embeddings, gallery_labels, probe_embeddings, probe_labels,
                          nonmated_probe_embeddings=None, distractor_embeddings=None, ranks=DEFAULT_RANKS,
                          fpirs=DEFAULT_FPIRS, counts=None, seed=None) -> dict:
    """All identification metrics in one JSON-serialisable dict (plain floats/ints/lists/strings).

    ``closed_set`` (always) and ``open_set`` (when ``nonmated_probe_embeddings`` is given; the probes
    are the mated searches) are the results of :func:`closed_set_identification` and
    :func:`open_set_identification`.  ``distractor_curve`` (when ``distractor_embeddings`` is given) is
    :func:`distractor_curve` over the gallery and probe images pooled (every image of the enrolled
    identities is probe and mate in turn, as all FaceScrub images are in MegaFace); do not pass the same
    images as both gallery and probes, or identical pairs will inflate it.

    Top-level keys: ``num_gallery_identities``, ``num_gallery_images``, ``num_probes``,
    ``num_probe_identities``, ``num_nonmated_probes`` and ``num_distractors`` (0 when not given),
    then the sections ``closed_set``, ``open_set``, ``distractor_curve`` (absent when not computed).
    """
    ranks = _check_ranks(ranks)
    g = _check_embeddings(gallery_embeddings, "gallery_embeddings")
    g_labels = _check_labels(gallery_labels, g.shape[0], "gallery_labels")
    labels, templates = _templates(g, g_labels)
    p, p_labels = _probes(probe_embeddings, probe_labels, "probe", g.shape[1])
    r, mate_scores = _mate_ranks(templates, _mate_index(labels, p_labels, "probes"), p)
    report = {
        "num_gallery_identities": int(labels.size),
        "num_gallery_images": int(g.shape[0]),
        "num_probes": int(p.shape[0]),
        "num_probe_identities": int(np.unique(p_labels).size),
        "num_nonmated_probes": 0,
        "num_distractors": 0,
        "closed_set": _closed_summary(r, labels.size, ranks),
    }
    if nonmated_probe_embeddings is not None:
        nm = _check_embeddings(nonmated_probe_embeddings, "nonmated_probe_embeddings", g.shape[1])
        report["num_nonmated_probes"] = int(nm.shape[0])
        report["open_set"] = _open_summary(r, mate_scores, _top_scores(templates, nm), fpirs)
    if distractor_embeddings is not None:
        # The caller's arrays (already validated), so this equals a direct distractor_curve call bit for bit.
        pooled = np.concatenate([np.asarray(gallery_embeddings), np.asarray(probe_embeddings)])
        curve = distractor_curve(pooled, np.concatenate([g_labels, p_labels]), distractor_embeddings,
                                 counts=counts, seed=seed)
        report["num_distractors"] = curve["num_distractors"]
        report["distractor_curve"] = curve
    return report
