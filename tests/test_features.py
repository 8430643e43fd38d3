"""Tests for tfface.eval.features: batching, flip fusion, image loading, pair dedupe, scores."""

import cv2
import numpy as np
import pytest

from tfface.data.pairs import read_pairs, write_pairs
from tfface.eval import features as F
from tfface.eval.verification import verification_report


class RecordingEmbed:
    """NumPy 'model' that is NOT flip-invariant: per-channel means of the left and right halves."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, batch):
        self.batch_sizes.append(batch.shape[0])
        x = batch.astype(np.float32)
        w = x.shape[2] // 2
        return np.concatenate([x[:, :, :w].mean(axis=(1, 2)), x[:, :, w:].mean(axis=(1, 2)) + 1.0], axis=1)


def _images(n=10, h=8, w=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = F.l2_normalize(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])  # zero vector stays zero, no NaN
    assert out.dtype == np.float32
    np.testing.assert_allclose(F.l2_normalize(x.T, axis=0), out.T)


def test_embed_images_batches_and_flip_fusions():
    images = _images()
    fn = RecordingEmbed()
    none = F.embed_images(fn, images, batch_size=4, flip_fusion="none")
    assert fn.batch_sizes == [4, 4, 2]
    assert none.dtype == np.float32 and none.shape == (10, 6)
    np.testing.assert_allclose(none, F.l2_normalize(fn(images)), rtol=1e-6)

    e, ef = fn(images), fn(images[:, :, ::-1])
    assert not np.allclose(e, ef)  # the flip really changes the embedding
    fn.batch_sizes.clear()
    fused = F.embed_images(fn, images, batch_size=4, flip_fusion="sum")
    assert fn.batch_sizes == [4, 4, 4, 4, 2, 2]  # original + flipped per batch
    np.testing.assert_allclose(fused, F.l2_normalize(e + ef), rtol=1e-5)
    concat = F.embed_images(fn, images, batch_size=3, flip_fusion="concat")
    np.testing.assert_allclose(concat, F.l2_normalize(np.concatenate([e, ef], axis=1)), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(concat, axis=1), 1.0, rtol=1e-5)


def test_embed_images_accepts_signature_style_dict_and_validates():
    images = _images(3)
    out = F.embed_images(lambda b: {"embeddings": RecordingEmbed()(b)}, images, flip_fusion="none")
    np.testing.assert_allclose(out, F.l2_normalize(RecordingEmbed()(images)), rtol=1e-6)
    with pytest.raises(ValueError, match="flip_fusion"):
        F.embed_images(RecordingEmbed(), images, flip_fusion="mean")
    with pytest.raises(ValueError, match="batch_size"):
        F.embed_images(RecordingEmbed(), images, batch_size=0)
    with pytest.raises(ValueError, match="embeddings"):
        F.embed_images(lambda b: {"a": b[:, 0, 0], "b": b[:, 0, 0]}, images)


def test_load_images_colour_order_formats_and_resize(tmp_path):
    red_bgr = np.zeros((10, 12, 3), np.uint8)
    red_bgr[..., 2] = 255  # cv2 writes BGR: this is a pure red image
    cv2.imwrite(str(tmp_path / "red.png"), red_bgr)
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((10, 12), 77, np.uint8))
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[..., 0] = 200  # blue, with an alpha channel that must be dropped
    bgra[..., 3] = 10
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    cv2.imwrite(str(tmp_path / "big.jpg"), np.full((20, 24, 3), 128, np.uint8))

    out = F.load_images(str(tmp_path), ["red.png", "gray.png", "rgba.png"])
    assert out.dtype == np.uint8 and out.shape == (3, 10, 12, 3)
    np.testing.assert_array_equal(out[0, 0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[1, 0, 0], [77, 77, 77])
    np.testing.assert_array_equal(out[2, 0, 0], [0, 0, 200])

    resized = F.load_images(str(tmp_path), ["big.jpg", "red.png"], image_size=(5, 6))
    assert resized.shape == (2, 5, 6, 3)
    assert abs(int(resized[0, 2, 3, 0]) - 128) <= 2
    with pytest.raises(ValueError, match="big.jpg.*image_size"):
        F.load_images(str(tmp_path), ["red.png", "big.jpg"])


def test_load_images_errors_name_the_file(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="text.jpg"):
        F.load_images(str(tmp_path), ["text.jpg"])
    with pytest.raises(ValueError, match="empty.jpg"):
        F.load_images(str(tmp_path), ["empty.jpg"])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        F.load_images(str(tmp_path), ["missing.jpg"])


def _write_pair_fixture(root):
    """3 identities x 2 images (solid colours + noise) and a 2-fold LFW pairs.txt over them."""
    rng = np.random.default_rng(1)
    colours = {"ann": (200, 30, 30), "bob": (30, 200, 30), "cy": (30, 30, 200)}
    for name, rgb in colours.items():
        (root / name).mkdir()
        for k in (1, 2):
            img = np.clip(np.array(rgb) + rng.normal(0, 10, (8, 8, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{name}_{k:04d}.png"), img[..., ::-1])
    folds = [
        ([("ann", 1, 2), ("bob", 1, 2)], [("ann", 1, "bob", 1), ("bob", 2, "cy", 1)]),
        ([("cy", 1, 2), ("ann", 2, 1)], [("cy", 2, "ann", 1), ("bob", 1, "cy", 2)]),
    ]
    write_pairs(root / "pairs.txt", folds)
    return read_pairs(root / "pairs.txt", ext=".png")


def test_load_pair_images_dedupes_and_maps_indices(tmp_path):
    pairs = _write_pair_fixture(tmp_path)
    pi = F.load_pair_images(str(tmp_path), pairs, image_size=(4, 4))
    assert len(pi.relpaths) == len(set(pairs.left) | set(pairs.right)) == 6  # each image once
    assert pi.images.shape == (6, 4, 4, 3)
    assert [pi.relpaths[i] for i in pi.left_index] == list(pairs.left)
    assert [pi.relpaths[i] for i in pi.right_index] == list(pairs.right)
    np.testing.assert_array_equal(pi.issame, pairs.issame)
    np.testing.assert_array_equal(pi.fold, [0, 0, 0, 0, 1, 1, 1, 1])
    # The right image is at its index (colour check against a direct load).
    direct = F.load_images(str(tmp_path), [pairs.right[3]], image_size=(4, 4))
    np.testing.assert_array_equal(pi.images[pi.right_index[3]], direct[0])


def test_pair_scores_is_cosine():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(5, 4)).astype(np.float32) * 3.0  # deliberately unnormalised
    left, right = np.array([0, 1, 4]), np.array([2, 2, 3])
    expected = [emb[i] @ emb[j] / np.linalg.norm(emb[i]) / np.linalg.norm(emb[j])
                for i, j in zip(left, right, strict=True)]
    np.testing.assert_allclose(F.pair_scores(emb, left, right), expected, rtol=1e-5)


def test_evaluate_pairs_end_to_end(tmp_path):
    pairs = _write_pair_fixture(tmp_path)
    pi = F.load_pair_images(str(tmp_path), pairs)
    mean_colour = lambda b: b.astype(np.float32).mean(axis=(1, 2)) - 100.0  # noqa: E731
    report = F.evaluate_pairs(mean_colour, pi, batch_size=4, flip_fusion="sum")
    emb = F.embed_images(mean_colour, pi.images, flip_fusion="sum")
    scores = F.pair_scores(emb, pi.left_index, pi.right_index)
    expected = verification_report(scores, pi.issame, folds=pi.fold)
    assert {k: report[k] for k in expected} == expected
    assert report["auc"] == 1.0 and report["accuracy_mean"] == 1.0  # colours separate identities
    assert report["flip_fusion"] == "sum" and report["num_images"] == 6 and report["embedding_size"] == 3
    assert report["folds"] == "pairs file"


def test_load_pair_images_from_two_folders(tmp_path):
    from tfface.data.pairs import PairList

    for side, colour in (("ids", 40), ("selfies", 200)):
        (tmp_path / side / "a").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / side / "a" / "1.png"), np.full((4, 4, 3), colour, np.uint8))
    # The same relative path names a different image on each side.
    pl = PairList(["a/1.png", "a/1.png"], ["a/1.png", "a/1.png"], np.array([True, False]), np.zeros(2, np.int32), 1)
    pi = F.load_pair_images(str(tmp_path / "ids"), pl, right_root=str(tmp_path / "selfies"))
    assert pi.images.shape[0] == 2
    assert pi.images[pi.left_index[0]].max() == 40 and pi.images[pi.right_index[0]].max() == 200


def test_fit_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    x = np.random.default_rng(3).normal(size=(50, 8)) @ np.diag([5, 4, 3, 2, 1, 0.5, 0.2, 0.1])
    pca = F.fit_pca(x, 3)
    ref = PCA(3, svd_solver="full").fit(x)
    # Components are defined up to sign: compare the projections' absolute values.
    np.testing.assert_allclose(np.abs(pca.transform(x)), np.abs(ref.transform(x)), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="PCA dim must be in 1..8"):
        F.fit_pca(x, 9)


def _pair_case(seed=0, ids=12, per_id=4, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    emb = np.repeat(centres, per_id, axis=0) + rng.normal(0, 0.8, (ids * per_id, dim))
    label = np.repeat(np.arange(ids), per_id)
    left, right = [], []
    for i in range(0, ids * per_id, 2):  # a same pair and a different pair per image pair
        left += [i, i]
        right += [i + 1, (i + per_id + 1) % (ids * per_id)]
    left, right = np.array(left), np.array(right)
    folds = (label[left] * 3) // ids  # 3 folds, identity-disjoint like LFW's
    return emb.astype(np.float32), left, right, label[left] == label[right], folds


def test_fold_pca_scores_fit_on_training_folds_only():
    emb, left, right, issame, folds = _pair_case()
    rows = F.fold_pca_scores(emb, left, right, folds, pca_dim=5)
    assert rows.shape == (3, left.size)
    # Reference for fold 1: PCA on the images of folds 0 and 2 only.
    test = folds == 1
    fit = np.setdiff1d(np.union1d(left[~test], right[~test]), np.union1d(left[test], right[test]))
    pca = F.fit_pca(F.l2_normalize(emb)[fit], 5)
    np.testing.assert_allclose(rows[1], F.pair_scores(pca.transform(F.l2_normalize(emb)), left, right), atol=1e-5)
    # Changing fold 1's images leaves row 1's scores of pairs that do not touch them unchanged: the PCA
    # never saw them (here some different pairs of other folds share an image with fold 1).
    touched = np.union1d(left[test], right[test])
    moved = emb.copy()
    moved[touched] = np.random.default_rng(9).normal(size=(touched.size, emb.shape[1]))
    rows2 = F.fold_pca_scores(moved, left, right, folds, pca_dim=5)
    untouched = ~np.isin(left, touched) & ~np.isin(right, touched)
    assert untouched.sum() > 10
    np.testing.assert_allclose(rows2[1][untouched], rows[1][untouched], atol=1e-5)
    assert not np.allclose(rows2[0][untouched], rows[0][untouched], atol=1e-3)  # fold 0's PCA did see them


def test_evaluate_pair_embeddings_pca_and_squared_l2():
    emb, left, right, issame, folds = _pair_case(seed=1)
    cos = F.evaluate_pair_embeddings(emb, left, right, issame, folds=folds)
    l2 = F.evaluate_pair_embeddings(emb, left, right, issame, folds=folds, distance="squared_l2")
    # On unit vectors d^2 = 2 - 2 cos: same decisions, thresholds mapped, accept <= instead of >=.
    for key in ("accuracy_mean", "auc", "eer", "best_threshold_accuracy"):
        assert l2[key] == pytest.approx(cos[key], abs=1e-6), key
    np.testing.assert_allclose(l2["fold_thresholds"], 2 - 2 * np.array(cos["fold_thresholds"]), atol=1e-5)
    assert l2["eer_threshold"] == pytest.approx(2 - 2 * cos["eer_threshold"], abs=1e-5)
    assert "<=" in l2["decision"] and ">=" in cos["decision"] and l2["distance"] == "squared_l2"
    scores = F.pair_scores(emb, left, right, distance="squared_l2")
    np.testing.assert_allclose(-scores, np.sum((F.l2_normalize(emb)[left] - F.l2_normalize(emb)[right]) ** 2, 1),
                               rtol=1e-5)
    pca = F.evaluate_pair_embeddings(emb, left, right, issame, folds=folds, pca_dim=4)
    rows = F.fold_pca_scores(emb, left, right, folds, 4)
    assert pca["pca_dim"] == 4
    assert pca["accuracy_mean"] == verification_report(rows, issame, folds=folds)["accuracy_mean"]
    with pytest.raises(ValueError, match="distance must be one of"):
        F.pair_scores(emb, left, right, distance="l1")
