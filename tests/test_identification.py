"""Tests for tfface.eval.identification: every metric against brute-force loop references written
independently here, hand-computed cases with exact ties, chunking, and input validation.

Exact ties need exactly representable cosines: "sign" embeddings have 16 entries of +-1/4 (norm exactly
1, dot products exact multiples of 1/16), and "eighths" probes have chosen cosines k/8 to one-hot
gallery templates, padded with entries 1/8 to unit norm (again exact)."""

import json

import numpy as np
import pytest

from tfface.eval import identification as I

# ---------------------------------------------------------------- data


def _identities(rng, n_ids, per_id, dim=32, noise=0.7):
    """Gaussian identity centres plus noise: (embeddings, labels)."""
    centres = rng.normal(size=(n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    return centres[labels] + noise * rng.normal(size=(labels.size, dim)), labels


def _sign_identities(rng, n_ids, per_id, flip=0.25):
    """Tie-heavy data: +-1/4 sign vectors around per-identity sign centres."""
    centres = rng.choice([-0.25, 0.25], size=(n_ids, 16))
    labels = np.repeat(np.arange(n_ids), per_id)
    flips = np.where(rng.random((labels.size, 16)) < flip, -1.0, 1.0)
    return centres[labels] * flips, labels


def _eighths(*scores, dim=72):
    """Unit vector whose cosine to one-hot e_k is scores[k] / 8 (exactly)."""
    n = np.asarray(scores, dtype=np.int64)
    pad = 64 - int(np.sum(n * n))
    assert pad >= 0 and n.size + pad <= dim
    v = np.zeros(dim)
    v[: n.size] = n / 8
    v[n.size: n.size + pad] = 1 / 8
    return v


def _one_hot(k, dim=72):
    v = np.zeros(dim)
    v[k] = 1.0
    return v


# ---------------------------------------------------------------- brute-force references


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.sqrt(np.sum(v * v))


def _cos(a, b):
    return float(np.dot(_unit(a), _unit(b)))


def ref_templates(embeddings, labels):
    out = {}
    for label in sorted(set(labels.tolist())):
        members = [_unit(e) for e, lab in zip(embeddings, labels, strict=True) if lab == label]
        out[label] = _unit(np.mean(members, axis=0))
    return out


def ref_search(gallery, gallery_labels, probes, probe_labels):
    """(ranks, mate scores): rank = 1 + number of non-mated templates scoring >= the mate."""
    templates = ref_templates(gallery, gallery_labels)
    ranks, mates = [], []
    for p, label in zip(probes, probe_labels, strict=True):
        mate = _cos(p, templates[label])
        ranks.append(1 + sum(_cos(p, t) >= mate for k, t in templates.items() if k != label))
        mates.append(mate)
    return ranks, mates


def ref_top1(gallery, gallery_labels, probes):
    templates = ref_templates(gallery, gallery_labels)
    return [max(_cos(p, t) for t in templates.values()) for p in probes]


def ref_tpir_at_fpir(ranks, mates, nonmated_top, target):
    """Lowest threshold (any observed score, or +inf) with FPIR <= target; returns (tpir, fpir)."""
    candidates = sorted(set(mates) | set(nonmated_top) | {np.inf})
    ok = [t for t in candidates if np.mean([s >= t for s in nonmated_top]) <= target + 1e-12]
    t = min(ok)
    tpir = np.mean([r == 1 and m >= t for r, m in zip(ranks, mates, strict=True)])
    return float(tpir), float(np.mean([s >= t for s in nonmated_top]))


def ref_distractor_rank1(probes, labels, distractors, n):
    ok = total = 0
    for i, p in enumerate(probes):
        best = max(_cos(p, d) for d in distractors[:n])
        for j, q in enumerate(probes):
            if i != j and labels[i] == labels[j]:
                total += 1
                ok += _cos(p, q) > best
    return ok / total, total


# ---------------------------------------------------------------- templates


def test_build_templates_match_reference_with_string_labels():
    rng = np.random.default_rng(0)
    x, labels = _identities(rng, 7, 3)
    keep = rng.random(labels.size) < 0.7  # uneven counts, some identities may keep a single image
    x, labels = x[keep] * rng.uniform(0.5, 3.0, size=(keep.sum(), 1)), np.char.add("id", labels[keep].astype(str))
    tl, t = I.build_templates(x, labels)
    ref = ref_templates(x, labels)
    assert tl.tolist() == sorted(ref)
    np.testing.assert_allclose(t, np.stack([ref[k] for k in tl.tolist()]), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0)
    # A single image is its own template (exactly, for an already unit vector).
    tl1, t1 = I.build_templates(_one_hot(3)[None], [5])
    assert tl1.tolist() == [5] and np.array_equal(t1[0], _one_hot(3))


# ---------------------------------------------------------------- closed set


GALLERY = np.stack([_one_hot(k) for k in range(4)])
GALLERY_LABELS = np.array([10, 20, 30, 40])
# Cosines (in eighths) to the templates of 10, 20, 30, 40; pessimistic ranks 1, 2, 4, 1, 3.
HAND_PROBES = np.stack([_eighths(5, 3, 1, 0), _eighths(4, 4, 0, 0), _eighths(4, 4, 2, 2),
                        _eighths(1, 2, 3, 4), _eighths(-2, 1, 1, -3)])
HAND_PROBE_LABELS = np.array([10, 20, 30, 40, 10])


def test_closed_set_hand_case_with_ties_and_unmeasurable_rank():
    out = I.closed_set_identification(GALLERY, GALLERY_LABELS, HAND_PROBES, HAND_PROBE_LABELS, ranks=(1, 2, 5))
    assert out["rank_accuracy"] == {"1": 0.4, "2": 0.6}  # rank 5 > 4 identities: left out
    assert out["cmc"] == [0.4, 0.6, 0.8, 1.0]  # clamped to 4 identities
    assert (out["num_gallery_identities"], out["num_gallery_images"], out["num_probes"]) == (4, 4, 5)
    assert ref_search(GALLERY, GALLERY_LABELS, HAND_PROBES, HAND_PROBE_LABELS)[0] == [1, 2, 4, 1, 3]


@pytest.mark.parametrize("signs", [False, True])
def test_closed_set_matches_brute_force(signs):
    rng = np.random.default_rng(1)
    if signs:  # one gallery image per identity keeps the templates, and so the ties, exact
        x, labels = _sign_identities(rng, 12, 4)
        is_gallery = np.tile([True, False, False, False], 12)
    else:
        x, labels = _identities(rng, 12, 4, noise=1.3)
        is_gallery = np.tile([True, True, False, False], 12)
    g, gl, p, pl = x[is_gallery], labels[is_gallery], x[~is_gallery], labels[~is_gallery]
    ranks = (1, 2, 5, 10, 15)
    out = I.closed_set_identification(g, gl, p, pl, ranks=ranks)
    ref_ranks, _ = ref_search(g, gl, p, pl)
    if signs:
        assert len(set(ref_ranks)) > 2  # the data really does have ties and misses
    ref_cmc = [float(np.mean(np.asarray(ref_ranks) <= k)) for k in range(1, 13)]  # up to 12 identities
    np.testing.assert_allclose(out["cmc"], ref_cmc)
    assert list(out["rank_accuracy"]) == ["1", "2", "5", "10"]  # 15 > 12 identities
    for k, v in out["rank_accuracy"].items():
        assert v == pytest.approx(ref_cmc[int(k) - 1])


def test_probe_chunking_gives_identical_results(monkeypatch):
    rng = np.random.default_rng(2)
    x, labels = _identities(rng, 9, 3, noise=1.2)
    nm = rng.normal(size=(20, 32))
    full = I.identification_report(x[::3], labels[::3], np.r_[x[1::3], x[2::3]], np.r_[labels[1::3], labels[2::3]],
                                   nonmated_probe_embeddings=nm, fpirs=(0.5, 0.1))
    monkeypatch.setattr(I, "_BLOCK_ELEMENTS", 10)  # one probe per block
    chunked = I.identification_report(x[::3], labels[::3], np.r_[x[1::3], x[2::3]],
                                      np.r_[labels[1::3], labels[2::3]], nonmated_probe_embeddings=nm,
                                      fpirs=(0.5, 0.1))
    # Equal up to float rounding (BLAS may round a dot product differently in a different block shape).
    assert chunked["closed_set"] == full["closed_set"]
    for key, value in full["open_set"].items():
        assert chunked["open_set"][key] == (pytest.approx(value, abs=1e-12) if isinstance(value, dict) else value)


# ---------------------------------------------------------------- open set


HAND_NONMATED = np.stack([_eighths(6, 0, 0, 0), _eighths(0, 0, 4, -1), _eighths(3, 3, 0, 0), _eighths(-1, 0, 0, 3)])


def test_open_set_hand_case():
    # Hits (mate at rank 1): scores 5/8, 4/8 of 5 mated probes.  Non-mated top-1: 6, 4, 3, 3 (eighths).
    # Points (threshold: FPIR, TPIR): 6/8: .25, 0 | 5/8: .25, .2 | 4/8: .5, .4 | 3/8: 1, .4
    out = I.open_set_identification(GALLERY, GALLERY_LABELS, HAND_PROBES, HAND_PROBE_LABELS, HAND_NONMATED,
                                    fpirs=(1.0, 0.5, 0.3, 0.25, 0.1))
    assert out["tpir_at_fpir"] == pytest.approx({"1.0": 0.4, "0.5": 0.4, "0.3": 0.2, "0.25": 0.2})
    assert out["fnir_at_fpir"] == pytest.approx({"1.0": 0.6, "0.5": 0.6, "0.3": 0.8, "0.25": 0.8})
    assert out["tpir_at_fpir_thresholds"] == {"1.0": 0.375, "0.5": 0.5, "0.3": 0.625, "0.25": 0.625}
    assert out["tpir_at_fpir_achieved_fpir"] == {"1.0": 1.0, "0.5": 0.5, "0.3": 0.25, "0.25": 0.25}
    assert "0.1" not in out["tpir_at_fpir"]  # 0.1 * 4 non-mated < one false alarm: not measurable
    assert out["mated_rank1_accuracy"] == pytest.approx(0.4)
    assert (out["num_mated_probes"], out["num_nonmated_probes"]) == (5, 4)


def test_open_set_tied_top_nonmated_rejected_together():
    # Two non-mated probes tie at the top (6/8), above every hit: FPIR 1/4 needs "accept nothing".
    nonmated = np.stack([_eighths(6, 0, 0, 0), _eighths(0, 6, 0, 0), _eighths(1, 0, 0, 0), _eighths(0, 0, 1, 0)])
    out = I.open_set_identification(GALLERY, GALLERY_LABELS, HAND_PROBES[:1], HAND_PROBE_LABELS[:1], nonmated,
                                    fpirs=(0.25, 0.5))
    assert out["tpir_at_fpir"] == {"0.25": 0.0, "0.5": 1.0}
    assert out["tpir_at_fpir_achieved_fpir"] == {"0.25": 0.0, "0.5": 0.5}
    assert out["tpir_at_fpir_thresholds"]["0.25"] == np.nextafter(0.75, np.inf)
    assert out["tpir_at_fpir_thresholds"]["0.5"] == 0.625


@pytest.mark.parametrize("signs", [False, True])
def test_open_set_matches_brute_force_over_thresholds(signs):
    rng = np.random.default_rng(3 + signs)
    if signs:
        x, labels = _sign_identities(rng, 15, 3)
        nm, _ = _sign_identities(rng, 60, 1, flip=0.5)
    else:
        x, labels = _identities(rng, 15, 3, noise=1.0)
        nm = rng.normal(size=(60, 32)) * 1.3
    g, gl, p, pl = x[::3], labels[::3], np.r_[x[1::3], x[2::3]], np.r_[labels[1::3], labels[2::3]]
    fpirs = (1.0, 0.5, 0.2, 0.1, 0.05, 1 / 60, 0.01)
    out = I.open_set_identification(g, gl, p, pl, nm, fpirs=fpirs)
    ranks, mates = ref_search(g, gl, p, pl)
    top = ref_top1(g, gl, nm)
    assert list(out["tpir_at_fpir"]) == [str(f) for f in fpirs[:-1]]  # 0.01 < 1/60: omitted
    for f in fpirs[:-1]:
        tpir, fpir = ref_tpir_at_fpir(ranks, mates, top, f)
        key = str(f)
        assert out["tpir_at_fpir"][key] == pytest.approx(tpir)
        assert out["tpir_at_fpir_achieved_fpir"][key] == pytest.approx(fpir)
        assert fpir <= f + 1e-12
        # The reported threshold really produces the reported operating point.
        # (Less a rounding margin: the threshold is a score, and our loop may round it 1 ulp lower.)
        t = out["tpir_at_fpir_thresholds"][key] - 1e-12
        assert np.mean([s >= t for s in top]) == pytest.approx(fpir)
        assert np.mean([r == 1 and m >= t for r, m in zip(ranks, mates, strict=True)]) == pytest.approx(tpir)
    assert out["mated_rank1_accuracy"] == pytest.approx(np.mean(np.asarray(ranks) == 1))


# ---------------------------------------------------------------- distractor curve


def test_distractor_curve_hand_case():
    h = 0.5
    probes = np.array([[1, 0, 0, 0], [h, h, h, h], [0, 0, 1, 0], [h, -h, h, h], [0, 0, 0, 1.0]])
    labels = np.array(["a", "a", "b", "b", "c"])  # "c" has one image: no pairs
    distractors = np.array([[0, 1, 0, 0], [h, -h, -h, -h], [1, 0, 0, 0.0]])
    # Pair sims are all 1/2.  Max distractor sim after 1, 2, 3 distractors:
    #   a1: 0, .5, 1 | a2: .5, .5, .5 | b1: 0, 0, 0 | b2: -.5, 0, .5   (a tie is a failure)
    out = I.distractor_curve(probes, labels, distractors, counts=(3, 1, 2, 5, 2))
    assert out["counts"] == [1, 2, 3]  # sorted, deduplicated, 5 > 3 distractors left out
    assert out["rank1"] == {"1": 0.75, "2": 0.5, "3": 0.25}
    assert (out["num_pairs"], out["num_probe_images"], out["num_probe_identities"]) == (4, 5, 3)
    assert out["num_single_image_identities"] == 1 and out["num_distractors"] == 3
    assert I.distractor_curve(probes, labels, distractors)["counts"] == [3]


@pytest.mark.parametrize("signs", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_distractor_curve_matches_brute_force(signs, chunk_size):
    rng = np.random.default_rng(5)
    if signs:
        probes, labels = _sign_identities(rng, 8, 4)
        distractors, _ = _sign_identities(rng, 120, 1, flip=0.5)
    else:
        probes, labels = _identities(rng, 8, 4, noise=1.3)
        distractors = rng.normal(size=(120, 32))
    labels = labels.copy()
    labels[0] = 99  # a single-image identity
    counts = (1, 7, 10, 50, 100, 120)
    out = I.distractor_curve(probes, labels, distractors, counts=counts, chunk_size=chunk_size)
    for n in counts:
        rate, pairs = ref_distractor_rank1(probes, labels, distractors, n)
        assert out["rank1"][str(n)] == pytest.approx(rate)
    assert out["num_pairs"] == pairs == 8 * 4 * 3 - 6
    assert out["num_single_image_identities"] == 1
    rates = list(out["rank1"].values())
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))  # nested subsets: non-increasing
    assert rates[0] > rates[-1]  # the distractors matter in this data


def test_distractor_default_counts_seed_and_memmap(tmp_path):
    rng = np.random.default_rng(6)
    probes, labels = _identities(rng, 5, 3, noise=1.3)
    distractors = rng.normal(size=(1234, 32)).astype(np.float32)
    out = I.distractor_curve(probes, labels, distractors)
    assert out["counts"] == [10, 100, 1000, 1234]
    assert I.distractor_curve(probes, labels, distractors[:1000])["counts"] == [10, 100, 1000]
    shuffled = I.distractor_curve(probes, labels, distractors, seed=3)
    perm = np.random.default_rng(3).permutation(1234)
    assert shuffled["rank1"] == I.distractor_curve(probes, labels, distractors[perm])["rank1"]
    assert shuffled["seed"] == 3 and shuffled["rank1"]["1234"] == out["rank1"]["1234"]
    path = tmp_path / "distractors.npy"
    np.save(path, distractors)
    mm = np.load(path, mmap_mode="r")
    assert I.distractor_curve(probes, labels, mm, seed=3, chunk_size=100)["rank1"] == shuffled["rank1"]


# ---------------------------------------------------------------- report


def test_report_combines_sections_and_is_json_serialisable():
    rng = np.random.default_rng(7)
    x, labels = _identities(rng, 10, 3, noise=1.2)
    g, gl, p, pl = x[::3], labels[::3], np.r_[x[1::3], x[2::3]], np.r_[labels[1::3], labels[2::3]]
    nm, d = rng.normal(size=(30, 32)), rng.normal(size=(150, 32))
    report = I.identification_report(g, gl, p, pl, nonmated_probe_embeddings=nm, distractor_embeddings=d,
                                     fpirs=(0.1, 0.01), seed=1)
    json.dumps(report, allow_nan=False)
    closed = I.closed_set_identification(g, gl, p, pl)
    opened = I.open_set_identification(g, gl, p, pl, nm, fpirs=(0.1, 0.01))
    curve = I.distractor_curve(np.r_[g, p], np.r_[gl, pl], d, seed=1)
    assert report["closed_set"] == {k: v for k, v in closed.items() if not k.startswith("num_")}
    assert report["open_set"] == {k: v for k, v in opened.items() if not k.startswith("num_gallery")}
    assert report["distractor_curve"] == curve
    assert list(report["open_set"]["tpir_at_fpir"]) == ["0.1"]  # 0.01 * 30 < 1
    assert report["distractor_curve"]["counts"] == [10, 100, 150]
    assert (report["num_gallery_identities"], report["num_gallery_images"], report["num_probes"],
            report["num_probe_identities"], report["num_nonmated_probes"], report["num_distractors"]) == (
        10, 10, 20, 10, 30, 150)
    minimal = I.identification_report(g, gl, p, pl)
    assert "open_set" not in minimal and "distractor_curve" not in minimal
    assert minimal["num_nonmated_probes"] == 0 and minimal["num_distractors"] == 0
    json.dumps(minimal, allow_nan=False)


# ---------------------------------------------------------------- validation


def test_validation_errors():
    rng = np.random.default_rng(8)
    x, labels = _identities(rng, 4, 2)
    g, gl, p, pl = x[::2], labels[::2], x[1::2], labels[1::2]
    with pytest.raises(ValueError, match="not in the gallery"):
        I.closed_set_identification(g, gl, p, pl + 100)
    with pytest.raises(ValueError, match="not in the gallery"):
        I.open_set_identification(g, gl, p, pl.astype(str), rng.normal(size=(5, 32)))
    with pytest.raises(ValueError, match="dimension"):
        I.closed_set_identification(g, gl, p[:, :16], pl)
    with pytest.raises(ValueError, match="dimension"):
        I.open_set_identification(g, gl, p, pl, rng.normal(size=(5, 31)))
    with pytest.raises(ValueError, match="dimension"):
        I.distractor_curve(x, labels, rng.normal(size=(5, 31)))
    bad = p.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        I.closed_set_identification(g, gl, bad, pl)
    with pytest.raises(ValueError, match="NaN/inf"):
        I.distractor_curve(x, labels, np.r_[rng.normal(size=(5, 32)), bad])
    with pytest.raises(ValueError, match="all-zero"):
        I.build_templates(np.zeros((2, 32)), [0, 1])
    with pytest.raises(ValueError, match="cancel out"):
        I.build_templates(np.stack([_one_hot(0), -_one_hot(0)]), [0, 0])
    with pytest.raises(ValueError, match="entries for"):
        I.closed_set_identification(g, gl[:-1], p, pl)
    with pytest.raises(ValueError, match="2-D"):
        I.build_templates(x[0], [0])
    with pytest.raises(ValueError, match="empty"):
        I.closed_set_identification(g, gl, p[:0], pl[:0])
    for bad_ranks in [(0,), (1.5,), ()]:
        with pytest.raises(ValueError, match="ranks"):
            I.closed_set_identification(g, gl, p, pl, ranks=bad_ranks)
    with pytest.raises(ValueError, match="FPIR"):
        I.open_set_identification(g, gl, p, pl, rng.normal(size=(5, 32)), fpirs=(0.0,))
    with pytest.raises(ValueError, match="counts"):
        I.distractor_curve(x, labels, rng.normal(size=(5, 32)), counts=(0, 3))
    with pytest.raises(ValueError, match="no probe identity has two"):
        I.distractor_curve(g, gl, rng.normal(size=(5, 32)))
    with pytest.raises(ValueError, match="chunk_size"):
        I.distractor_curve(x, labels, rng.normal(size=(5, 32)), chunk_size=0)
