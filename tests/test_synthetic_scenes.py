"""Tests of tfface.data.synthetic_scenes: faces pasted into scenes land where their true landmarks say,
placement rules, determinism and the scene tree written for tfface-align."""

import json
import math
import os

import cv2
import numpy as np
import pytest

import tfface.data.synthetic_scenes as scenes
from tfface.data.synthetic_scenes import render_scene, write_scene_tree


def _dot_renderer(identity, rng, size, difficulty):
    """Stand-in for render_face: black square with one white pixel at each of 5 (integer) landmarks."""
    n = size[0]
    image = np.zeros((n, n, 3), np.uint8)
    lm = np.round(np.array([[0.34, 0.46], [0.66, 0.46], [0.5, 0.64], [0.37, 0.82], [0.63, 0.82]]) * n)
    for x, y in lm.astype(int):
        image[y, x] = 255
    return image, lm.astype(np.float32)


@pytest.mark.parametrize("angle", [0.0, 30.0, -75.0])
def test_pasted_landmarks_follow_the_similarity(monkeypatch, angle):
    """Each drawn landmark pixel must appear in the scene where the returned truth puts it."""
    monkeypatch.setattr(scenes, "render_face", _dot_renderer)
    monkeypatch.setattr(scenes, "_background", lambda rng, h, w: np.zeros((h, w, 3), np.float32))
    image, (truth,) = render_scene(np.random.default_rng(0), (200, 240), layout=[(130.3, 95.6, 150.0, angle)],
                                   noise=0, shading=0)
    grey = image[..., 0].astype(np.float32)
    for x, y in truth:
        # Bilinear warping spreads a dot over <= 4 pixels; their weighted centre is the true position.
        x0, y0 = int(math.floor(x)) - 1, int(math.floor(y)) - 1
        patch = grey[y0:y0 + 4, x0:x0 + 4]
        assert patch.sum() > 100, (x, y)
        yy, xx = np.mgrid[y0:y0 + 4, x0:x0 + 4]
        centre = ((xx * patch).sum() / patch.sum(), (yy * patch).sum() / patch.sum())
        assert np.hypot(centre[0] - x, centre[1] - y) < 0.1, (centre, (x, y))
    # Rotation direction: angle > 0 is counter-clockwise as displayed, so the right eye moves up.
    eye_slope = (truth[1, 1] - truth[0, 1]) / (truth[1, 0] - truth[0, 0])
    assert eye_slope == pytest.approx(-math.tan(math.radians(angle)), abs=1e-4)
    assert np.linalg.norm(truth[1] - truth[0]) == pytest.approx(0.32 * 150, rel=0.02)


def test_scene_is_deterministic_and_faces_fit_without_overlap():
    a, la = render_scene(np.random.default_rng(5), (400, 400), num_faces=4, face_size=(60, 80))
    b, lb = render_scene(np.random.default_rng(5), (400, 400), num_faces=4, face_size=(60, 80))
    c, _ = render_scene(np.random.default_rng(6), (400, 400), num_faces=4, face_size=(60, 80))
    assert a.dtype == np.uint8 and a.shape == (400, 400, 3)
    np.testing.assert_array_equal(a, b)
    assert all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))
    assert np.abs(a.astype(int) - c).mean() > 10
    assert len(la) == 4 and all(lm.shape == (5, 2) and lm.dtype == np.float32 for lm in la)
    noses = np.array([lm[2] for lm in la])
    assert noses.min() >= 0 and noses.max() < 400
    # Footprint discs of radius 0.55 * size (size >= 60) are disjoint, so noses are > 2 * 0.55 * 60 - slack apart.
    d = np.linalg.norm(noses[:, None] - noses[None], axis=2)[np.triu_indices(4, 1)]
    assert d.min() > 2 * scenes.FOOTPRINT * 60 - 2 * 15  # the nose sits within ~15 px of the disc centre


def test_shading_only_darkens_and_zero_faces_is_background():
    kwargs = dict(canvas_size=(160, 160), layout=[(80, 80, 120, 0)], noise=0)
    flat, lf = render_scene(np.random.default_rng(2), shading=0, **kwargs)
    shaded, ls = render_scene(np.random.default_rng(2), shading=0.6, **kwargs)
    np.testing.assert_array_equal(lf[0], ls[0])
    nose = lf[0][2].round().astype(int)
    assert np.all(shaded.astype(int) <= flat.astype(int) + 1)
    assert abs(int(shaded[nose[1], nose[0]].mean()) - int(flat[nose[1], nose[0]].mean())) <= 2  # unshaded at the nose
    empty, none = render_scene(np.random.default_rng(2), (64, 64), num_faces=0)
    assert none == [] and empty.shape == (64, 64, 3)


@pytest.mark.parametrize("kwargs", [
    {"difficulty": -1}, {"face_size": (80, 60)}, {"face_size": 300}, {"shading": 2.0}, {"max_rotation": 200},
    {"num_faces": 30}, {"canvas_size": (20, 20)}, {"layout": [(10, 10, 100, 0)]},
    {"layout": [(100, 150, 100, 0), (150, 150, 100, 0)]},
])
def test_render_scene_rejects_impossible_requests(kwargs):
    args = {"canvas_size": (300, 300), "face_size": (100, 120), **kwargs}
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), **args)


def test_write_scene_tree_layout_truth_and_reproducibility(tmp_path):
    truth = write_scene_tree(tmp_path, num_identities=2, images_per_identity=2, seed=3, canvas_size=(160, 160),
                             face_size=(50, 60), num_faces=2, jpeg_quality=95)
    on_disk = json.loads((tmp_path / "truth.json").read_text())
    assert on_disk == truth
    expected = ["id_00000/id_00000_0001.jpg", "id_00000/id_00000_0002.jpg", "id_00001/id_00001_0001.jpg",
                "id_00001/id_00001_0002.jpg"]
    assert sorted(truth["faces"]) == expected
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
    assert files == expected + ["truth.json"]  # no temporary files left behind
    assert truth["arguments"]["num_faces"] == 2 and all(len(v) == 2 for v in truth["faces"].values())
    # Image k of identity i is render_scene(default_rng([seed, i, k])) with identity default_rng([seed, i]).
    identity = scenes.sample_identity(np.random.default_rng([3, 1]))
    image, lms = render_scene(np.random.default_rng([3, 1, 1]), (160, 160), 2, (50, 60), identities=[identity])
    np.testing.assert_allclose(truth["faces"]["id_00001/id_00001_0002.jpg"], np.array(lms), atol=1e-4)
    decoded = cv2.cvtColor(cv2.imread(str(tmp_path / "id_00001/id_00001_0002.jpg")), cv2.COLOR_BGR2RGB)
    assert np.abs(decoded.astype(int) - image).mean() < 4  # JPEG at quality 95
    with pytest.raises(ValueError):
        write_scene_tree(tmp_path / "x", num_identities=0, images_per_identity=1)
