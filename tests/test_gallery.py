"""tfface.serving.gallery: 1:N search against a brute-force NumPy reference, FAISS backends, persistence, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfface.serving import gallery_index
from tfface.serving.gallery import UNKNOWN, Gallery, mean_templates

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered(num_ids=40, dim=32, per=(1, 5), noise=0.6, queries=30, seed=0):
    """Identity-clustered embeddings: (ids, gallery, query_ids, queries); ids are str, 1..4 images each."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((num_ids, dim)))
    counts = rng.integers(per[0], per[1], num_ids)
    ids = [f"id{i}" for i, c in enumerate(counts) for _ in range(c)]
    rows = np.repeat(np.arange(num_ids), counts)
    gallery = unit(centres[rows] + noise / np.sqrt(dim) * rng.standard_normal((len(rows), dim)))
    qi = rng.integers(0, num_ids, queries)
    q = unit(centres[qi] + noise / np.sqrt(dim) * rng.standard_normal((queries, dim)))
    return ids, gallery, [f"id{i}" for i in qi], q


def reference(ids, gallery, q, k):
    """Top-k identities by max cosine, brute force: (ids (Q, k) with UNKNOWN padding, scores with -inf)."""
    names = list(dict.fromkeys(ids))
    s = q.astype(np.float64) @ gallery.T.astype(np.float64)
    per_id = np.stack([s[:, [i for i, x in enumerate(ids) if x == name]].max(1) for name in names], 1)
    order = np.argsort(-per_id, axis=1, kind="stable")[:, :k]
    out_ids = np.full((len(q), k), UNKNOWN, dtype=object)
    out_s = np.full((len(q), k), -np.inf)
    width = min(k, len(names))
    out_ids[:, :width] = np.array(names, dtype=object)[order]
    out_s[:, :width] = np.take_along_axis(per_id, order, 1)
    return out_ids, out_s


def assert_same(result, expected, atol=1e-5):
    ids, scores = result
    assert ids.dtype == object and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_allclose(scores, expected[1], atol=atol)


def faiss_or_skip():
    return pytest.importorskip("faiss")


# -- exact backend against the reference ------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 7])
def test_exact_matches_reference(k):
    ids, g, _, q = clustered()
    gal = Gallery(32)
    gal.enroll(ids, g)
    assert_same(gal.identify(q, k=k), reference(ids, g, q, k))


def test_exact_blocks_merge(monkeypatch):
    # Tiny blocks: every query and gallery block boundary is crossed, including a last partial block.
    monkeypatch.setattr(gallery_index, "_Q_BLOCK", 7)
    monkeypatch.setattr(gallery_index, "_G_BLOCK", 11)
    ids, g, _, q = clustered()
    gal = Gallery(32)
    gal.enroll(ids, g)
    for k in (1, 4):
        assert_same(gal.identify(q, k=k), reference(ids, g, q, k))


def test_identity_with_many_vectors_needs_widening():
    # One identity owns the 60 nearest vectors of every query: the first candidate list (8k vectors) holds
    # only it, so the search has to widen to find the next identities.
    rng = np.random.default_rng(1)
    ids, g, _, _ = clustered(num_ids=20, seed=1)
    q = unit(rng.standard_normal((5, 32)))
    crowd = unit(q[rng.integers(0, 5, 60)] + 0.05 * rng.standard_normal((60, 32)))
    ids, g = ids + ["crowd"] * 60, np.concatenate([g, crowd])
    gal = Gallery(32)
    gal.enroll(ids, g)
    assert_same(gal.identify(q, k=4), reference(ids, g, q, k=4))


def test_enroll_in_parts_and_single_label_for_many_rows():
    ids, g, _, q = clustered()
    gal = Gallery(32)
    for start in range(0, len(ids), 9):  # crosses the buffer growth and re-enrols existing identities
        gal.enroll(ids[start: start + 9], g[start: start + 9])
    assert_same(gal.identify(q, k=3), reference(ids, g, q, 3))
    more = unit(np.random.default_rng(5).standard_normal((3, 32)))
    gal.enroll("newcomer", more)
    assert gal.num_identities == len(set(ids)) + 1 and len(gal) == len(ids) + 3
    assert_same(gal.identify(more[0], k=1), (np.array([["newcomer"]], object), np.array([[1.0]])))


def test_threshold_and_padding():
    ids, g, _, q = clustered(num_ids=3, per=(2, 3))
    gal = Gallery(32)
    gal.enroll(ids, g)
    got_ids, got_s = gal.identify(q, k=5, threshold=0.5)
    ref_ids, ref_s = reference(ids, g, q, 5)
    np.testing.assert_allclose(got_s, ref_s, atol=1e-5)  # scores are kept below the threshold
    assert np.all(got_ids[:, 3:] == UNKNOWN) and np.all(np.isneginf(got_s[:, 3:]))
    expected = np.where(ref_s < 0.5, UNKNOWN, ref_ids)
    np.testing.assert_array_equal(got_ids, expected)
    assert (got_ids[:, 0] != UNKNOWN).any() and (got_ids[:, 1:3] == UNKNOWN).any()


def test_empty_gallery_and_no_queries():
    gal = Gallery(8, unknown_label="nobody")
    ids, scores = gal.identify(unit(np.ones((2, 8))), k=3)
    assert ids.shape == (2, 3) and np.all(ids == "nobody") and np.all(np.isneginf(scores))
    gal.enroll(["a"], unit(np.ones((1, 8))))
    ids, scores = gal.identify(np.zeros((0, 8), np.float32), k=2)
    assert ids.shape == (0, 2) and scores.shape == (0, 2)


def test_remove_exact():
    ids, g, _, q = clustered()
    gal = Gallery(32)
    gal.enroll(ids, g)
    for victim in ("id3", "id0", "id39"):
        gal.remove(victim)
        keep = [i for i, x in enumerate(ids) if x != victim]
        ids, g = [ids[i] for i in keep], g[keep]
        assert victim not in gal and len(gal) == len(ids)
        assert_same(gal.identify(q, k=3), reference(ids, g, q, 3))
    np.testing.assert_array_equal(gal.embeddings, g)
    with pytest.raises(KeyError, match="'id3' is not enrolled"):
        gal.remove("id3")
    gal.enroll("id3", g[:2])  # removed identities can come back
    assert gal.identities[-1] == "id3"


def test_inspection_and_label_types():
    gal = Gallery(4)
    x = unit(np.eye(4))
    gal.enroll(["1", 1, np.int64(7), np.str_("b")], x)  # "1" and 1 are different identities
    assert gal.identities == ["1", 1, 7, "b"] and gal.num_identities == 4 and len(gal) == 4
    assert "1" in gal and 1 in gal and np.int64(7) in gal and 2 not in gal
    assert gal.identify(x[1], k=1)[0][0, 0] == 1 and gal.identify(x[0], k=1)[0][0, 0] == "1"
    assert "vectors=4" in repr(gal) and gal.trained
    with pytest.raises(ValueError, match="read-only"):
        gal.embeddings[0, 0] = 0


def test_normalize_option():
    x = np.random.default_rng(0).standard_normal((5, 16)) * 3
    with pytest.raises(ValueError, match="must be L2-normalised .*norm .*normalize=True"):
        Gallery(16).enroll("a", x)
    gal = Gallery(16, normalize=True)
    gal.enroll(list("abcde"), x)
    np.testing.assert_allclose(np.linalg.norm(gal.embeddings, axis=1), 1, atol=1e-6)
    ids, scores = gal.identify(x[2] * 10, k=1)
    assert ids[0, 0] == "c" and abs(scores[0, 0] - 1) < 1e-5
    strict = Gallery(16)
    strict.enroll(list("abcde"), x, normalize=True)
    with pytest.raises(ValueError, match="L2-normalised"):
        strict.identify(x)
    assert strict.identify(x, normalize=True)[0][3, 0] == "d"
    with pytest.raises(ValueError, match="all-zero"):
        gal.enroll("z", np.zeros(16))


def test_mean_templates():
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((5, 8)))
    names, t = mean_templates(["b", "a", "b", "a", "c"], x)
    assert names == ["b", "a", "c"] and t.shape == (3, 8) and t.dtype == np.float32
    np.testing.assert_allclose(t[0], unit(x[0] + x[2]), atol=1e-6)
    np.testing.assert_allclose(t[2], x[4], atol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda g, x: g.enroll(["a"], x[:, :7]), "expected dimension 8, got 7"),
    (lambda g, x: g.identify(unit(np.ones((2, 9)))), "queries: expected dimension 8, got 9"),
    (lambda g, x: g.identify(np.ones((8,), np.float32)), "L2-normalised"),
    (lambda g, x: g.enroll(["a", "b"], x), "got 2 ids for 1 embeddings"),
    (lambda g, x: g.enroll(["a"], np.where(np.arange(8) == 3, np.nan, x)), "NaN or inf"),
    (lambda g, x: g.identify(np.where(np.arange(8) == 3, np.inf, x)), "NaN or inf"),
    (lambda g, x: g.identify(x, k=0), "k must be an integer >= 1"),
    (lambda g, x: g.identify(x, k=True), "k must be an integer"),
    (lambda g, x: g.identify(x, k=1.5), "k must be an integer"),
    (lambda g, x: g.enroll([UNKNOWN], x), "unknown label"),
    (lambda g, x: g.enroll(["a"], x.reshape(1, 1, 8)), "shape"),
    (lambda g, x: g.enroll(["a"], np.array([["x"] * 8])), "real numbers"),
])
def test_input_errors(call, match):
    gal = Gallery(8)
    x = unit(np.ones((1, 8)))
    with pytest.raises(ValueError, match=match):
        call(gal, x)
    assert len(gal) == 0 and gal.num_identities == 0  # a refused call changes nothing


@pytest.mark.parametrize("label", [1.5, ("a",), True, None])
def test_label_type_errors(label):
    with pytest.raises(TypeError, match="str or int"):
        Gallery(4).enroll([label], unit(np.ones((1, 4))))


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 0}, "dim must be an integer >= 1"),
    ({"dim": 8, "backend": "gpu"}, "backend must be"),
    ({"dim": 8, "index": "hnsw", "backend": "faiss"}, "index must be"),
    ({"dim": 8, "index": "ivf"}, "needs backend='faiss'"),
    ({"dim": 8, "nprobe": 0}, "nprobe must be an integer >= 1"),
    ({"dim": 8, "pq_m": 3}, "pq_m=3 must divide dim=8"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Gallery(**kwargs)


def test_missing_faiss_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'tfface\[faiss\]'"):
        Gallery(8, backend="faiss")


# -- FAISS backends ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 7])
def test_faiss_flat_equals_exact(k):
    faiss_or_skip()
    ids, g, _, q = clustered()
    exact, flat = Gallery(32), Gallery(32, backend="faiss")
    exact.enroll(ids, g)
    flat.enroll(ids, g)
    e, f = exact.identify(q, k=k), flat.identify(q, k=k)
    np.testing.assert_array_equal(f[0], e[0])
    np.testing.assert_allclose(f[1], e[1], atol=1e-5)
    assert_same(f, reference(ids, g, q, k))


def test_faiss_flat_incremental_remove_and_widening():
    faiss_or_skip()
    ids, g, _, q = clustered(seed=2)
    gal = Gallery(32, backend="faiss")
    gal.enroll(ids[:50], g[:50])
    gal.identify(q)  # builds the index; later changes must reach it
    gal.enroll(ids[50:], g[50:])
    for victim in ("id5", "id17"):
        gal.remove(victim)
        keep = [i for i, x in enumerate(ids) if x != victim]
        ids, g = [ids[i] for i in keep], g[keep]
    crowd = unit(q[:1] + 0.05 * np.random.default_rng(0).standard_normal((40, 32)))
    gal.enroll("crowd", crowd)
    ids, g = ids + ["crowd"] * 40, np.concatenate([g, crowd])
    assert_same(gal.identify(q, k=5), reference(ids, g, q, 5))


def test_ivf_full_probe_equals_exact_and_small_gallery_is_exact():
    faiss_or_skip()
    ids, g, _, q = clustered(num_ids=300, per=(1, 4), seed=3)
    small = Gallery(32, backend="faiss", index="ivf", nlist=16)
    small.enroll(ids[:100], g[:100])  # < 39 * 16 vectors: not trained, searched exactly
    assert_same(small.identify(q, k=3), reference(ids[:100], g[:100], q, 3))
    assert not small.trained
    gal = Gallery(32, backend="faiss", index="ivf", nlist=8)
    gal.enroll(ids, g)
    gal.build()
    assert gal.trained and gal.nprobe == 1  # default nlist // 8, at least 1
    gal.nprobe = 8
    assert_same(gal.identify(q, k=4), reference(ids, g, q, 4))
    gal.remove(ids[0])
    keep = [i for i, x in enumerate(ids) if x != ids[0]]
    assert_same(gal.identify(q, k=4), reference([ids[i] for i in keep], g[keep], q, 4))


def test_ivf_auto_nlist_and_partial_probe():
    faiss_or_skip()
    ids, g, _, q = clustered(num_ids=400, per=(2, 4), noise=0.5, queries=50, seed=4)
    gal = Gallery(32, backend="faiss", index="ivf")
    gal.enroll(ids, g)
    gal.build()
    nlist = len(gal._trained["ivf_centroids"])
    assert nlist == gallery_index.auto_nlist(len(ids)) == min(round(4 * np.sqrt(len(ids))), len(ids) // 39)
    ref = reference(ids, g, q, 1)[0]
    recall = [np.mean(gal.identify(q)[0] == ref)]
    for nprobe in (nlist // 4, nlist):
        gal.nprobe = nprobe
        recall.append(np.mean(gal.identify(q)[0] == ref))
    assert recall[0] >= 0.6 and recall[1] >= 0.9 and recall[2] == 1.0  # approximate until every cell is probed


def test_pq_rerank_matches_exact_on_clustered_data():
    faiss_or_skip()
    ids, g, qids, q = clustered(num_ids=600, per=(2, 3), dim=64, noise=0.5, queries=50, seed=5)
    gal = Gallery(64, backend="faiss", index="pq", rerank=16)
    gal.enroll(ids, g)
    assert gal.pq_m == 4
    got_ids, got_s = gal.identify(q, k=1)
    ref_ids, ref_s = reference(ids, g, q, 1)
    assert gal.trained and np.mean(got_ids == ref_ids) >= 0.98
    # Scores are exact float32 cosines of the shortlisted vectors: the identity's max unless one of its
    # images missed the shortlist, never more.
    same = got_ids == ref_ids
    assert np.all(got_s[same] <= ref_s[same] + 1e-5) and np.mean(np.abs(got_s - ref_s)[same] < 1e-5) >= 0.9
    gal.remove(qids[0])
    assert qids[0] not in gal.identify(q[:1], k=3)[0]


def test_faiss_index_survives_garbage_collection():
    faiss_or_skip()
    import gc

    ids, g, _, q = clustered(num_ids=300, per=(2, 3), seed=6)
    for index in ("ivf", "pq"):
        gal = Gallery(32, backend="faiss", index=index, nlist=4)
        gal.enroll(ids, g)
        gal.build()
        gc.collect()  # the IVF quantizer / PQ inner index must stay referenced by the FAISS wrappers
        assert gal.identify(q, k=2)[0].shape == (len(q), 2)


# -- persistence ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend, index", [("exact", "flat"), ("faiss", "flat"), ("faiss", "ivf"),
                                            ("faiss", "pq")])
def test_save_load_roundtrip(tmp_path, backend, index):
    if backend == "faiss":
        faiss_or_skip()
    ids, g, _, q = clustered(num_ids=300, per=(2, 4), seed=7)
    ids[1] = 42  # int labels survive JSON
    gal = Gallery(32, backend=backend, index=index, nlist=4, nprobe=2, unknown_label="?")
    gal.enroll(ids, g)
    before = gal.identify(q, k=3, threshold=0.3)
    gal.save(tmp_path / "g")
    files = sorted(os.listdir(tmp_path / "g"))
    extra = [f"{index}_centroids.npy"] if index != "flat" else []
    assert files == sorted(["embeddings.npy", "gallery.json", "identities.json", "labels.npy"] + extra)
    meta = json.loads((tmp_path / "g" / "gallery.json").read_text())
    assert meta["version"] == 1 and meta["dim"] == 32 and meta["backend"] == backend and meta["nprobe"] == 2
    assert meta["num_vectors"] == len(ids) and meta["unknown_label"] == "?"
    loaded = Gallery.load(tmp_path / "g")
    assert loaded.identities == gal.identities and 42 in loaded and loaded.trained == gal.trained
    assert loaded.backend == backend and loaded.index == index and loaded.unknown_label == "?"
    np.testing.assert_array_equal(loaded.embeddings, gal.embeddings)
    after = loaded.identify(q, k=3, threshold=0.3)  # same trained index, so identical results
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_allclose(after[1], before[1], atol=1e-6)
    assert os.listdir(tmp_path) == ["g"]


def test_load_with_other_backend_and_resave(tmp_path):
    ids, g, _, q = clustered()
    gal = Gallery(32)
    gal.enroll(ids, g)
    gal.save(tmp_path / "g")
    gal.remove("id1")
    gal.save(tmp_path / "g")  # replaces the previous gallery
    assert "id1" not in Gallery.load(tmp_path / "g")
    if pytest.importorskip("faiss"):
        flat = Gallery.load(tmp_path / "g", backend="faiss")
        assert flat.backend == "faiss"
        np.testing.assert_array_equal(flat.identify(q, k=2)[0], gal.identify(q, k=2)[0])
    assert os.listdir(tmp_path) == ["g"]


def test_save_failure_keeps_old_gallery(tmp_path, monkeypatch):
    ids, g, _, q = clustered()
    gal = Gallery(32)
    gal.enroll(ids, g)
    gal.save(tmp_path / "g")
    gal.enroll("late", g[:1])
    real = gallery_index.save_npy
    calls = []

    def failing(path, array):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(path, array)

    monkeypatch.setattr(gallery_index, "save_npy", failing)
    with pytest.raises(OSError, match="disk full"):
        gal.save(tmp_path / "g")
    monkeypatch.setattr(gallery_index, "save_npy", real)
    assert os.listdir(tmp_path) == ["g"]  # no temporary directory left behind
    old = Gallery.load(tmp_path / "g")
    assert "late" not in old and len(old) == len(ids)

    real_rename = os.rename

    def rename_fails_on_swap(src, dst):
        if src.endswith(".tmp"):
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(gallery_index.os, "rename", rename_fails_on_swap)
    with pytest.raises(OSError, match="rename failed"):
        gal.save(tmp_path / "g")
    monkeypatch.setattr(gallery_index.os, "rename", real_rename)
    assert os.listdir(tmp_path) == ["g"] and "late" not in Gallery.load(tmp_path / "g")


def test_save_refuses_to_replace_other_directories(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a saved gallery"):
        Gallery(4).save(tmp_path / "photos")
    assert os.listdir(tmp_path / "photos") == ["me.jpg"]


def _saved(tmp_path):
    ids, g, _, _ = clustered(num_ids=5)
    gal = Gallery(32)
    gal.enroll(ids, g)
    gal.save(tmp_path / "g")
    return tmp_path / "g"


def test_load_refuses_pickled_object_arrays(tmp_path):
    path = _saved(tmp_path)
    n = len(np.load(path / "labels.npy"))
    np.save(path / "labels.npy", np.array([object()] * n, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="labels.npy: not a plain numeric .npy"):
        Gallery.load(path)


@pytest.mark.parametrize("corrupt, error, match", [
    (lambda p: os.remove(p / "labels.npy"), FileNotFoundError, "missing labels.npy"),
    (lambda p: np.save(p / "embeddings.npy", np.zeros((3, 16), np.float32)), ValueError,
     r"expected float32 array of shape \('N', 32\), got float32 \(3, 16\)"),
    (lambda p: np.save(p / "embeddings.npy", np.load(p / "embeddings.npy").astype(np.float64)), ValueError,
     "float32"),
    (lambda p: np.save(p / "embeddings.npy", np.load(p / "embeddings.npy") * 2), ValueError, "L2-normalised"),
    (lambda p: np.save(p / "labels.npy", np.load(p / "labels.npy")[:-1]), ValueError, "integer array of shape"),
    (lambda p: np.save(p / "labels.npy", np.load(p / "labels.npy").astype(np.float32)), ValueError, "integer"),
    (lambda p: np.save(p / "labels.npy", np.load(p / "labels.npy") + 10), ValueError, "outside"),
    (lambda p: np.save(p / "labels.npy", np.zeros_like(np.load(p / "labels.npy"))), ValueError,
     "has no embeddings"),
    (lambda p: (p / "identities.json").write_text('["id0", "id0", "id1", "id2", "id3"]'), ValueError, "twice"),
    (lambda p: (p / "gallery.json").write_text(
        (p / "gallery.json").read_text().replace('"version": 1', '"version": 99')), ValueError,
     "format version 99; this tfface reads version 1"),
    (lambda p: (p / "gallery.json").write_text("[]"), ValueError, "not a tfface gallery"),
])
def test_load_validation(tmp_path, corrupt, error, match):
    path = _saved(tmp_path)
    corrupt(path)
    with pytest.raises(error, match=match):
        Gallery.load(path)


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no gallery directory"):
        Gallery.load(tmp_path / "nope")


# -- benchmark smoke test ---------------------------------------------------------------------------------
def test_bench_runs_tiny():
    faiss_or_skip()
    out = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gallery.py"), "--sizes=2000", "--queries=50",
                          "--dim=32", "--nprobes=4", "--uniform_sizes=2000", "--pq_ms=0,4"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])["summary"]
    names = {row["method"] for row in summary}
    assert {"exact_numpy_f32", "faiss_flat", "faiss_ivf_flat", "faiss_pq4fs_rerank"} <= names
    for row in summary:
        assert row["queries_per_s"] > 0
        assert row["recall_at_1"] is None if row["method"] == "exact_numpy_f16" else 0 <= row["recall_at_1"] <= 1
        if row["method"] in ("exact_numpy_f32", "faiss_flat"):
            assert row["recall_at_1"] == 1.0
