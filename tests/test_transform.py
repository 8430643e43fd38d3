"""Tests for tfface.align.transform: Umeyama fit vs NumPy references, reflection guard, synthetic round trip."""

import math

import cv2
import numpy as np
import pytest

from tfface.align.templates import template
from tfface.align.transform import (
    align_face,
    alignment_error,
    estimate_alignment,
    similarity_transform,
    transform_points,
)
from tfface.data.synthetic_render import render_face, sample_identity


def _sim(s, deg, t):
    a = math.radians(deg)
    return np.array([[s * math.cos(a), -s * math.sin(a), t[0]], [s * math.sin(a), s * math.cos(a), t[1]]])


def _lstsq_similarity(src, dst):
    """Brute-force reference: solve the 4-parameter linear system x' = a x - b y + tx, y' = b x + a y + ty."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_exact_correspondences_recover_s_r_t():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    for s, deg, t in [(1.0, 0.0, (0, 0)), (0.37, 123.0, (5.5, -7.0)), (2.8, -170.0, (-40.0, 300.0))]:
        m_true = _sim(s, deg, t)
        m = similarity_transform(src, transform_points(m_true, src))
        assert m.shape == (2, 3) and m.dtype == np.float64
        np.testing.assert_allclose(m, m_true, atol=1e-10)


def test_noisy_matches_linear_least_squares():
    rng = np.random.default_rng(1)
    for _ in range(20):
        src = rng.uniform(0, 200, (5, 2))
        dst = transform_points(_sim(rng.uniform(0.3, 3), rng.uniform(-180, 180), rng.uniform(-50, 50, 2)), src)
        dst += rng.normal(0, 3.0, dst.shape)
        np.testing.assert_allclose(similarity_transform(src, dst), _lstsq_similarity(src, dst), atol=1e-8)


def test_reflection_guard():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, (5, 2))
    mirrored = src * [-1, 1] + [100, 0]  # exact mirror image: the best *orthogonal* fit is a reflection
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    # still the least-squares optimum over proper similarities (the linear system has det = a^2 + b^2 >= 0)
    np.testing.assert_allclose(m, _lstsq_similarity(src, mirrored), atol=1e-8)
    # a mirrored face (left/right landmarks swapped in x) aligns with a rotation, not a mirror
    lm = template(112).astype(float) * [-1, 1] + [112, 0]
    assert np.linalg.det(estimate_alignment(lm)[:, :2]) > 0


def test_transform_points_matches_cv2():
    m = _sim(1.3, 25, (4, -2))
    pts = np.random.default_rng(3).uniform(0, 50, (7, 2))
    np.testing.assert_allclose(transform_points(m, pts), cv2.transform(pts[None], m)[0], atol=1e-9)


@pytest.mark.parametrize(
    "src, dst",
    [
        (np.zeros((5, 3)), np.zeros((5, 3))),
        (np.ones((5, 2)), np.ones((4, 2))),
        (np.ones(10), np.ones(10)),
        (np.ones((1, 2)), np.ones((1, 2))),
    ],
)
def test_similarity_shape_errors(src, dst):
    with pytest.raises(ValueError):
        similarity_transform(src, dst)


def test_degenerate_and_nan_errors():
    t = template(112)
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.full((5, 2), 40.0), t)
    with pytest.raises(ValueError, match="degenerate"):
        estimate_alignment(np.full((5, 2), 1e4))
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(t, np.full((5, 2), 3.0))
    bad = t.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate_alignment(bad)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        estimate_alignment(t[:4])
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="border"):
        align_face(img, t, border="wrap")
    with pytest.raises(ValueError, match="uint8"):
        align_face(img.astype(np.float32), t)
    with pytest.raises(ValueError, match="shape"):
        align_face(img[..., 0], t)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        transform_points(np.eye(3), t)


@pytest.mark.parametrize("size", [(112, 112), (112, 96), (96, 96), (160, 160)])
def test_template_aligns_to_itself(size):
    t = template(size)
    np.testing.assert_allclose(estimate_alignment(t, size), [[1, 0, 0], [0, 1, 0]], atol=1e-5)
    mean, mx = alignment_error(np.array([[1.0, 0, 0], [0, 1, 0]]), t, size)
    assert mean == 0.0 and mx == 0.0


def test_alignment_error_reports_residual():
    t = template(112).astype(float)
    lm = t.copy()
    lm[2] += (3.0, 4.0)  # move the nose 5 px: the fit spreads the error, the max residual is < 5 but > 0
    mean, mx = alignment_error(estimate_alignment(lm), lm)
    assert 0 < mean < mx < 5.0


def _random_similarity(rng, centre, canvas):
    """Rotation +-30 deg, scale 0.5-2 about ``centre``, moved to the canvas middle plus a random shift."""
    m = cv2.getRotationMatrix2D(centre, rng.uniform(-30, 30), rng.uniform(0.5, 2.0))
    m[:, 2] += np.array([canvas / 2, canvas / 2]) - centre + rng.uniform(-30, 30, 2)
    return m


def test_synthetic_round_trip():
    """The issue's test: known landmarks, random similarity warp of image and points, align back."""
    rng = np.random.default_rng(4)
    canvas = 256
    tmpl = template(112)
    for k in range(8):
        identity = sample_identity(np.random.default_rng(100 + k))
        # Landmarks exactly on the template (difficulty 0 keeps them there) so the target is the template.
        identity["landmarks"] = tmpl.tolist()
        img, lm = render_face(identity, np.random.default_rng(200 + k), (112, 112), difficulty=0.0)
        np.testing.assert_allclose(lm, tmpl, atol=1e-4)
        w = _random_similarity(rng, (56.0, 56.0), canvas)
        warped = cv2.warpAffine(img, w, (canvas, canvas), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        lm_w = cv2.transform(lm[None].astype(np.float64), w)[0]

        m = estimate_alignment(lm_w)
        back = transform_points(m, lm_w)
        assert np.linalg.norm(back - tmpl, axis=1).max() < 0.5
        assert alignment_error(m, lm_w)[1] < 0.5

        crop = align_face(warped, lm_w, border="replicate")
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        # Interior only: near the edges the round trip samples the replicated border. Two bilinear
        # resamplings (one of them a 2x upsample when the warp scale is 0.5) blur edges: measured mean
        # abs diff is ~0.8-2.4 grey levels.
        diff = np.abs(crop.astype(np.float32) - img.astype(np.float32))[16:96, 16:96]
        assert diff.mean() < 4.0


def test_synthetic_round_trip_posed_faces():
    """Realistic renders (identity offsets, pose, expression): warping then aligning equals aligning directly."""
    rng = np.random.default_rng(5)
    for k in range(6):
        identity = sample_identity(np.random.default_rng(300 + k))
        img, lm = render_face(identity, np.random.default_rng(400 + k), (112, 112), difficulty=1.0)
        for size in [(112, 112), (112, 96)]:
            m0 = estimate_alignment(lm, size)
            w = _random_similarity(rng, (56.0, 56.0), 256)
            lm_w = cv2.transform(lm[None].astype(np.float64), w)[0]
            m = estimate_alignment(lm_w, size)
            np.testing.assert_allclose(transform_points(m, lm_w), transform_points(m0, lm), atol=1e-3)
            np.testing.assert_allclose(alignment_error(m, lm_w, size), alignment_error(m0, lm, size), atol=1e-3)


def test_align_face_border_modes_and_size():
    img = np.full((80, 60, 3), 200, np.uint8)
    lm = template(112).astype(float) * 0.4 - [5, 5]  # a small face at the corner: the crop reaches past the image
    const = align_face(img, lm, border="constant")
    rep = align_face(img, lm, border="replicate", interpolation=cv2.INTER_NEAREST)
    assert const.min() == 0 and rep.min() == 200
    assert align_face(img, lm, size=(112, 96)).shape == (112, 96, 3)
    assert align_face(img, lm, size=160).shape == (160, 160, 3)
