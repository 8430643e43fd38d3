import json
import os
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from tfface.align.batch import aligned_crop
from tfface.align.detect import Detection
from tfface.data.synthetic_render import sample_identity
from tfface.data.synthetic_scenes import render_scene
from tfface.models.face_model import build_embedding_model, build_feature_model
from tfface.serving.embedder import Embeddings, FaceEmbedder
from tfface.serving.exporter import export_saved_model
from tfface.serving.gallery import Gallery


def _thresholds(path, similarity, threshold, flip_fusion="none"):
    data = {"format": "tfface-thresholds/1", "similarity": similarity, "flip_fusion": flip_fusion,
            "default_far": "0.001", "thresholds": {"0.001": {"far": 0.001, "threshold": threshold}}}
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One export (with a calibrated cosine threshold), copied into variants whose assets differ."""
    base = tmp_path_factory.mktemp("exports")
    features = build_feature_model("mobilefacenet", input_shape=(32, 32, 3), embedding_size=16,
                                   backbone_kwargs={"width_multiplier": 0.25})
    model = build_embedding_model(features)
    cosine = export_saved_model(model, str(base), "cosine",
                                extra_assets={"thresholds.json": _thresholds(base / "c.json", "cosine", 0.5)})
    l2, plain = str(base / "l2" / "3"), str(base / "plain" / "1")
    shutil.copytree(cosine, l2)
    _thresholds(pathlib.Path(l2) / "assets" / "thresholds.json", "squared_l2", 1.0, flip_fusion="sum")
    shutil.copytree(cosine, plain)
    os.remove(os.path.join(plain, "assets", "thresholds.json"))
    return {"plain": plain, "cosine": cosine, "l2": l2}


@pytest.fixture(scope="module")
def embedder(exports):
    return FaceEmbedder.from_saved_model(os.path.dirname(exports["cosine"]))  # model dir -> version 1


@pytest.fixture(scope="module")
def l2_embedder(exports):
    return FaceEmbedder.from_saved_model(os.path.dirname(exports["l2"]))


@pytest.fixture(scope="module")
def plain_embedder(exports):
    return FaceEmbedder.from_saved_model(exports["plain"])


@pytest.fixture(scope="module")
def crops():
    return np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)


def test_metadata(embedder, plain_embedder, exports):
    assert embedder.model_dir == exports["cosine"]
    assert embedder.input_size == (32, 32) and embedder.embedding_size == 16
    assert embedder.similarity == "cosine" and embedder.threshold == 0.5 and embedder.far == 0.001
    assert embedder.flip_fusion == "none"
    plain = plain_embedder
    assert plain.threshold is None and plain.similarity == "cosine" and plain.far is None


def test_embed_arrays_match_signature(embedder, crops):
    result = embedder.embed(crops, batch_size=2)
    assert isinstance(result, Embeddings) and result.all_ok and result.num_inputs == 5
    assert result.embeddings.dtype == np.float32 and result.embeddings.shape == (5, 16)
    np.testing.assert_array_equal(result.index, np.arange(5))
    expected = embedder._model(crops)
    np.testing.assert_allclose(result.embeddings, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    single = embedder.embed(crops[3])
    np.testing.assert_allclose(single.embeddings, expected[3:4], atol=1e-5)
    # A larger crop is resized to the model size; concat doubles the width; sum is flip-invariant.
    big = embedder.embed([cv2.resize(crops[0], (64, 64), interpolation=cv2.INTER_LINEAR)])
    assert big.embeddings.shape == (1, 16)
    assert embedder.embed(crops, flip_fusion="concat").embeddings.shape == (5, 32)
    fused = embedder.embed(crops, flip_fusion="sum").embeddings
    np.testing.assert_allclose(fused, embedder.embed(crops[:, :, ::-1], flip_fusion="sum").embeddings, atol=1e-5)


def test_embed_paths_rejects_bad_inputs(embedder, crops, tmp_path):
    paths = []
    for i, crop in enumerate(crops[:3]):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        paths.append(str(p))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    items = [paths[0], str(corrupt), paths[1], str(tmp_path / "missing.png"), np.zeros((8, 8), np.float32), paths[2]]
    result = embedder.embed(items)
    np.testing.assert_array_equal(result.index, [0, 2, 5])
    assert [i for i, _ in result.rejected] == [1, 3, 4]
    reasons = dict(result.rejected)
    assert "corrupt" in reasons[1] and "missing.png" in reasons[3]
    assert "uint8" in reasons[4]
    np.testing.assert_allclose(result.embeddings, embedder.embed(crops[:3]).embeddings, atol=1e-5)  # PNG lossless
    assert result.get(2) is not None and result.get(1) is None
    nothing = embedder.embed([str(corrupt)])
    assert nothing.embeddings.shape == (0, 16) and len(nothing) == 0 and not nothing.all_ok


def test_verify_cosine_default_threshold(embedder, crops):
    same, score = embedder.verify(crops[0], crops[0])
    assert same and score == pytest.approx(1.0, abs=1e-5)
    emb = embedder.embed(crops).embeddings
    _, s01 = embedder.verify(emb[0], emb[1])  # precomputed embeddings
    assert s01 == pytest.approx(float(emb[0] @ emb[1]), abs=1e-6)
    assert embedder.verify(crops[0], emb[1], threshold=s01 - 1e-3)[0]
    assert not embedder.verify(crops[0], emb[1], threshold=s01 + 1e-3)[0]
    assert embedder.verify(emb[0], emb[1])[0] == (s01 >= 0.5)
    with pytest.raises(ValueError, match="expected 16"):
        embedder.verify(np.ones(8, np.float32), emb[0])


def test_verify_squared_l2(l2_embedder, crops):
    emb = l2_embedder
    assert emb.similarity == "squared_l2" and emb.threshold == 1.0 and emb.flip_fusion == "sum"
    e = emb.embed(crops).embeddings
    same, score = emb.verify(crops[0], crops[0])
    assert same and score == pytest.approx(0.0, abs=1e-5)
    _, d = emb.verify(e[0], e[1])
    assert d == pytest.approx(float(np.sum((e[0] - e[1]) ** 2)), abs=1e-5)
    assert emb.verify(e[0], e[1], threshold=d + 1e-3)[0] and not emb.verify(e[0], e[1], threshold=d - 1e-3)[0]
    assert emb.cosine_threshold(1.0) == pytest.approx(0.5)


def test_verify_without_threshold_is_a_clear_error(plain_embedder, crops):
    plain = plain_embedder
    with pytest.raises(ValueError, match="calibrate_far.*tfface-export --thresholds"):
        plain.verify(crops[0], crops[1])
    assert plain.verify(crops[0], crops[0], threshold=0.9)[0]


def test_verify_unreadable_input_raises(embedder, crops, tmp_path):
    with pytest.raises(ValueError, match="b: .*not found|b: .*missing"):
        embedder.verify(crops[0], str(tmp_path / "missing.jpg"))


def _scenes(n_ids=3, per_id=2, seed=0):
    rng = np.random.default_rng(seed)
    identities = [sample_identity(rng) for _ in range(n_ids)]
    photos, landmarks, labels = [], [], []
    for i, identity in enumerate(identities):
        for j in range(per_id):
            image, truth = render_scene(rng, canvas_size=(160, 200), identities=[identity], difficulty=0.1,
                                        layout=[(80 + 20 * j, 80, 110, 10.0 * (j - 0.5))])
            photos.append(image)
            landmarks.append(truth[0])
            labels.append(f"id{i}")
    return photos, landmarks, labels


class _TruthDetector:
    """Stands in for MTCNN: 'detects' the known face of each photo (found by identity of the array)."""

    def __init__(self, photos, landmarks):
        self.truth = {id(p): lm for p, lm in zip(photos, landmarks, strict=True)}

    def detect(self, image):
        lm = self.truth.get(id(image))
        if lm is None:
            return []
        box = np.concatenate([lm.min(0) - 20, lm.max(0) + 20])
        return [Detection(box=box, score=0.99, landmarks=lm)]


def test_end_to_end_synthetic_align_verify_identify(embedder, monkeypatch):
    photos, landmarks, labels = _scenes()
    blank = np.full((120, 120, 3), 128, np.uint8)
    monkeypatch.setattr(embedder, "_detector", _TruthDetector(photos, landmarks))
    from_landmarks = embedder.embed(photos, landmarks=landmarks)
    detected = embedder.embed(photos + [blank], align=True)
    assert from_landmarks.all_ok and detected.rejected == [(len(photos), "no face detected")]
    np.testing.assert_allclose(detected.embeddings, from_landmarks.embeddings, atol=1e-5)
    crop = aligned_crop(photos[0], landmarks[0], (32, 32))
    np.testing.assert_allclose(from_landmarks.embeddings[0], embedder.embed(crop).embeddings[0], atol=1e-5)

    same, score = embedder.verify(photos[0], photos[0], align=True)
    assert same and score == pytest.approx(1.0, abs=1e-5)
    _, s = embedder.verify(photos[0], photos[2], align=True)
    assert s == pytest.approx(float(from_landmarks.embeddings[0] @ from_landmarks.embeddings[2]), abs=1e-5)

    gallery = embedder.gallery()
    assert isinstance(gallery, Gallery) and gallery.dim == 16
    enrolled_idx = [0, 2, 4]  # the first photo of each identity
    enrolled = embedder.enroll(gallery, [labels[i] for i in enrolled_idx], [photos[i] for i in enrolled_idx],
                               align=True)
    assert enrolled.all_ok and gallery.identities == ["id0", "id1", "id2"]
    result = embedder.identify(gallery, [photos[i] for i in enrolled_idx] + [blank], k=2, align=True)
    assert result.rejected == [(3, "no face detected")] and list(result.index) == [0, 1, 2]
    assert list(result.ids[:, 0]) == ["id0", "id1", "id2"]
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5)
    assert (result.scores[:, 1] < result.scores[:, 0]).all()
    strict = embedder.identify(gallery, [photos[1]], k=1, landmarks=[landmarks[1]], threshold=1.01)
    assert list(strict.ids[:, 0]) == ["unknown"]


def test_mtcnn_detector_once(embedder, monkeypatch):
    """The real detector path (MTCNN from the `mtcnn` wheel, built on first use) on one synthetic photo."""
    pytest.importorskip("mtcnn")
    monkeypatch.setattr(embedder, "_detector", None)
    rng = np.random.default_rng(0)  # a scene MTCNN finds (score 0.98, landmarks within 5.3 px of the truth)
    image, _ = render_scene(rng, canvas_size=(200, 200), difficulty=0.0, layout=[(100, 100, 140, 0.0)])
    result = embedder.embed([image, np.full((64, 64, 3), 128, np.uint8)], align=True)
    assert result.rejected == [(1, "no face detected")] and list(result.index) == [0]
    assert embedder.verify(result.embeddings[0], image, align=True)[1] == pytest.approx(1.0, abs=1e-5)
