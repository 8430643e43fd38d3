"""Similarity alignment: fit the 5 detected landmarks to a template, then warp the image to the crop.

The fit is the least-squares similarity transform of Umeyama (S. Umeyama, "Least-squares estimation of
transformation parameters between two point patterns", IEEE TPAMI 13(4), 1991): given points ``x_i``
(landmarks) and ``y_i`` (template), find scale ``s >= 0``, rotation ``R`` (det R = +1) and translation
``t`` minimising ``sum_i || s R x_i + t - y_i ||^2``. Closed form, with ``mu_x, mu_y`` the means,
``sigma_x^2 = 1/n sum ||x_i - mu_x||^2`` and ``Sigma = 1/n sum (y_i - mu_y)(x_i - mu_x)^T = U D V^T``::

    S = diag(1, ..., 1, sign(det U det V))      # reflection guard
    R = U S V^T,   s = tr(D S) / sigma_x^2,   t = mu_y - s R mu_x

The guard matters for faces: without it a mirrored (or badly mislabelled) landmark set could be fitted
with a reflection and produce a mirror-image crop; with it the best proper rotation is returned instead.
The result is returned as the 2x3 matrix ``M = [s R | t]`` that ``cv2.warpAffine`` takes.

This is the same model as InsightFace's ``norm_crop`` (skimage ``SimilarityTransform.estimate``) and
equals the linear least-squares solution of ``[a -b tx; b a ty]`` (a = s cos th, b = s sin th).
"""

from __future__ import annotations

import cv2
import numpy as np

from tfface.align.templates import parse_size, template

_BORDERS = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


def _points(points, name: str, n: int | None = None) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or (n is not None and p.shape[0] != n):
        want = f"({n}, 2)" if n is not None else "(N, 2)"
        raise ValueError(f"{name} must have shape {want}, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains NaN or inf: {p.tolist()}")
    return p


def _matrix(m) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"transform matrix must have shape (2, 3), got {m.shape}")
    return m


def similarity_transform(src, dst) -> np.ndarray:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991, reflection-guarded).

    Args:
      src: (N, 2) source points, N >= 2, not all equal.
      dst: (N, 2) target points, same N, not all equal.

    Returns:
      float64 (2, 3) matrix ``[s R | t]`` with det(R) = +1, s > 0.

    Raises:
      ValueError: wrong shapes, NaN/inf, fewer than 2 points, or degenerate (coincident) points.
    """
    src = _points(src, "src")
    dst = _points(dst, "dst", src.shape[0])
    n = src.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 point pairs, got {n}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum() / n
    var_d = (dc**2).sum() / n
    # Relative tolerance: coincident points (up to float rounding) carry no scale/rotation information.
    tol = 1e-12 * max(1.0, float((mu_s**2).sum()), float((mu_d**2).sum()))
    if var_s <= tol:
        raise ValueError("degenerate src points: all (nearly) equal, no similarity can be estimated")
    if var_d <= tol:
        raise ValueError("degenerate dst points: all (nearly) equal, no similarity can be estimated")
    cov = dc.T @ sc / n
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    # Reflection guard: if the best orthogonal matrix would be a mirror, flip the weakest direction.
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    r = u @ np.diag(sign) @ vt
    s = float((d * sign).sum() / var_s)
    t = mu_d - s * r @ mu_s
    return np.hstack([s * r, t[:, None]])


def transform_points(m, points) -> np.ndarray:
    """Applies a 2x3 affine ``m`` to (N, 2) points: ``p' = m[:, :2] p + m[:, 2]``. Returns float64 (N, 2)."""
    m = _matrix(m)
    p = _points(points, "points")
    return p @ m[:, :2].T + m[:, 2]


def estimate_alignment(landmarks, size=(112, 112)) -> np.ndarray:
    """2x3 similarity matrix taking the 5 ``landmarks`` (pixels, :data:`~tfface.align.templates.LANDMARK_ORDER`)
    onto :func:`~tfface.align.templates.template` ``(size)``."""
    lm = _points(landmarks, "landmarks", 5)
    return similarity_transform(lm, template(size))


def alignment_error(m, landmarks, size=(112, 112)) -> tuple[float, float]:
    """(mean, max) Euclidean residual in crop pixels between ``m``-warped landmarks and the template.

    Large values mean the 5 points are not a similarity image of the template (bad detection, strong
    yaw/expression), which is useful as a quality gate before keeping a crop.
    """
    lm = _points(landmarks, "landmarks", 5)
    res = np.linalg.norm(transform_points(m, lm) - template(size), axis=1)
    return float(res.mean()), float(res.max())


def align_face(image, landmarks, size=(112, 112), border: str = "constant",
               interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Warps ``image`` so its 5 ``landmarks`` land on the template: the aligned (H, W, 3) uint8 crop.

    Args:
      image: uint8 (h, w, 3) image (any channel order; it is passed through unchanged).
      landmarks: (5, 2) float pixel coordinates in ``image`` (integer = pixel centre, as OpenCV).
      size: crop (height, width) or an int; see :func:`~tfface.align.templates.template`.
      border: "constant" (black outside the source) or "replicate" (edge pixels repeated).
      interpolation: an OpenCV interpolation flag, default bilinear.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must have shape (h, w, 3), got {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {sorted(_BORDERS)}, got {border!r}")
    m = estimate_alignment(landmarks, size)
    h, w = parse_size(size)
    return cv2.warpAffine(img, m, (w, h), flags=interpolation, borderMode=_BORDERS[border],
                          borderValue=(0, 0, 0))
