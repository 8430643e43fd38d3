"""Tests for tfface.align.templates: exact published values, derived sizes, the general rule, errors."""

import numpy as np
import pytest

from tfface.align.templates import (
    ARCFACE_112,
    LANDMARK_ORDER,
    PROVENANCE,
    SPHEREFACE_112x96,
    template,
)
from tfface.data.synthetic import template_for_size
from tfface.data.synthetic_render import TEMPLATE_112

# Published values, typed in again independently of the module (InsightFace arcface_dst; SphereFace 96x112).
ARCFACE = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
SPHEREFACE = [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]]


def test_landmark_order():
    assert LANDMARK_ORDER == ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def test_published_values():
    t = template((112, 112))
    assert t.dtype == np.float32 and t.shape == (5, 2)
    np.testing.assert_array_equal(t, np.float32(ARCFACE))
    np.testing.assert_array_equal(template((112, 96)), np.float32(SPHEREFACE))
    np.testing.assert_array_equal(ARCFACE_112, ARCFACE)
    np.testing.assert_array_equal(SPHEREFACE_112x96, SPHEREFACE)
    # The SphereFace template is the ArcFace one shifted 8 px left (ArcFace padded 96 -> 112 wide).
    np.testing.assert_allclose(np.subtract(ARCFACE, SPHEREFACE), [[8, 0]] * 5, atol=1e-9)


def test_matches_synthetic_renderer():
    np.testing.assert_array_equal(template(112), TEMPLATE_112)
    for size in [(112, 112), (112, 96), (96, 96), (160, 160), (56, 56), (128, 112)]:
        np.testing.assert_allclose(template(size), template_for_size(size), atol=1e-4)


@pytest.mark.parametrize("n", [96, 160])
def test_derived_square_sizes_are_scaled_arcface(n):
    np.testing.assert_allclose(template((n, n)), np.float32(ARCFACE) * n / 112, rtol=1e-6)
    assert template(n).shape == (5, 2)
    np.testing.assert_array_equal(template(n), template((n, n)))


def test_derived_values_spot_check():
    np.testing.assert_allclose(template(96)[0], [32.8239, 44.3111], atol=1e-4)
    np.testing.assert_allclose(template(160)[4], [101.0427, 131.7201], atol=1e-4)


def test_general_rule():
    # 224x192: s = 2, x = 2 x_112 - (224 - 192) / 2
    expect = np.float32(ARCFACE) * 2 - [16, 0]
    np.testing.assert_allclose(template((224, 192)), expect, rtol=1e-6)
    # the rule reproduces the published 112x96 template
    np.testing.assert_allclose(template((112, 96)), np.float32(ARCFACE) - [8, 0], atol=1e-5)


def test_provenance_documents_builtin_sizes():
    assert set(PROVENANCE) == {(112, 112), (112, 96), (96, 96), (160, 160)}
    assert "arcface_dst" in PROVENANCE[(112, 112)]
    assert "tfface derivation" in PROVENANCE[(96, 96)] and "tfface derivation" in PROVENANCE[(160, 160)]


def test_returns_copy():
    t = template(112)
    t[:] = 0
    assert template(112)[0, 0] == np.float32(38.2946)


@pytest.mark.parametrize("size", [0, -112, (112,), (112, 112, 3), (112.0, 112), (True, 112), "112", None, (0, 96)])
def test_invalid_size(size):
    with pytest.raises(ValueError):
        template(size)


@pytest.mark.parametrize("size", [(112, 30), (400, 112), (112, 1)])
def test_unsupported_size_template_outside_crop(size):
    with pytest.raises(ValueError, match="does not fit"):
        template(size)
