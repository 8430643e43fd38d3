"""5-point face templates: where the landmarks must land in an aligned crop.

Landmark order (:data:`LANDMARK_ORDER`) is the MTCNN / InsightFace order: left eye, right eye, nose tip,
left mouth corner, right mouth corner, where "left" means *image* left (smaller x; the subject's right
eye). Coordinates are (x, y) in pixels of the aligned crop, with the OpenCV convention that integer
coordinates are pixel centres (what ``cv2.warpAffine`` uses), so a template point maps onto a pixel
centre of the crop.

Provenance
----------
* **112x112 (ArcFace)** — InsightFace ``arcface_dst`` (``python-package/insightface/utils/face_align.py``,
  Deng et al., "ArcFace", CVPR 2019): (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
  (41.5493, 92.3655), (70.7299, 92.2041). It is the SphereFace 96x112 template moved 8 px right to
  centre it in a square 112x112 crop.
* **112x96 (SphereFace / CosFace, H x W)** — the 96x112 (W x H) template of the SphereFace alignment
  script (Liu et al., CVPR 2017; also used by CosFace, Wang et al., CVPR 2018): (30.2946, 51.6963),
  (65.5318, 51.5014), (48.0252, 71.7366), (33.5493, 92.3655), (62.7299, 92.2041), i.e. the ArcFace
  template with x - 8.
* **96x96 and 160x160** — *tfface's own derivation* by the general rule below. Neither original project
  used a 5-point template: OpenFace (Amos et al., 2016) aligns with dlib 68-point landmarks (outer eyes
  and nose) to its own template, and FaceNet as reproduced by Sandberg's ``facenet`` crops the MTCNN
  bounding box with a margin (no landmark warp). Using the rule keeps the ArcFace framing (the face
  fills the same fraction of the crop) at those networks' input sizes, so one aligned dataset can be
  resized between recipes without re-alignment.

The 112x112 values are identical (as float32) to ``tfface.data.synthetic_render.TEMPLATE_112``, so the
synthetic renderer draws faces in exactly this frame (checked by ``tests/test_templates.py``).

General rule (any H x W)
------------------------
With ``s = H / 112`` (the 112x112 frame scaled to the crop height) and the frame centred horizontally::

    x = s * x_112 - (112 * s - W) / 2
    y = s * y_112

This reproduces 112x96 exactly (s = 1, x - 8), gives 96x96 = 96/112 * template and 160x160 =
160/112 * template, and is the same rule the synthetic renderer (:mod:`tfface.data.synthetic_render`)
uses for its output sizes, so synthetic landmarks are already "aligned" for every size. Rounded values:

* 96x96:   (32.8239, 44.3111), (63.0273, 44.1441), (48.0216, 61.4885), (35.6137, 79.1704), (60.6256, 79.0321)
* 160x160: (54.7066, 73.8519), (105.0454, 73.5734), (80.0360, 102.4809), (59.3561, 131.9507),
  (101.0427, 131.7201)
"""

from __future__ import annotations

import numbers

import numpy as np

LANDMARK_ORDER = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

#: InsightFace ``arcface_dst``, 112x112.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float64,
)

#: SphereFace / CosFace template for a 112 (H) x 96 (W) crop.
SPHEREFACE_112x96 = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
    np.float64,
)

#: Where each built-in size comes from (used by docs and tests).
PROVENANCE = {
    (112, 112): "InsightFace arcface_dst (ArcFace, Deng et al. 2019)",
    (112, 96): "SphereFace/CosFace 96x112 alignment template (Liu et al. 2017; Wang et al. 2018)",
    (96, 96): "tfface derivation: ArcFace template scaled by 96/112 (OpenFace input size; OpenFace itself "
              "aligns with dlib 68-point landmarks)",
    (160, 160): "tfface derivation: ArcFace template scaled by 160/112 (FaceNet input size; Sandberg's facenet "
                "uses MTCNN box crops with a margin, not a 5-point template)",
}


def _derive(height: int, width: int) -> np.ndarray:
    """The general rule: scale the 112x112 frame by H/112, centre it horizontally in W."""
    s = height / 112.0
    out = ARCFACE_112 * s
    out[:, 0] -= (112.0 * s - width) / 2.0
    return out


def parse_size(size) -> tuple[int, int]:
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or a (height, width) pair, got {size!r}") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
            raise ValueError(f"size must be positive integers (height, width), got {size!r}")
    return int(h), int(w)


def template(size=(112, 112)) -> np.ndarray:
    """The 5-point template for an aligned crop of ``size`` = (height, width) (or an int for square).

    Built-in sizes are (112, 112) ArcFace, (112, 96) SphereFace/CosFace, (96, 96) and (160, 160) (derived,
    see the module docstring). Any other size uses the general rule ``x = s x_112 - (112 s - W) / 2,
    y = s y_112`` with ``s = H / 112``; it is rejected (ValueError) if a template point would fall outside
    the crop (e.g. a crop far narrower than it is tall).

    Returns:
      float32 (5, 2) array of (x, y) pixel coordinates in :data:`LANDMARK_ORDER`; a fresh copy.
    """
    h, w = parse_size(size)
    if (h, w) == (112, 112):
        out = ARCFACE_112.copy()
    elif (h, w) == (112, 96):
        # Kept as the published literal (equal to the rule up to float rounding).
        out = SPHEREFACE_112x96.copy()
    else:
        out = _derive(h, w)
        # Points must be inside the crop, or warping would push the face off the image.
        if out[:, 0].min() < 0 or out[:, 0].max() > w - 1 or out[:, 1].max() > h - 1:
            raise ValueError(f"unsupported size {(h, w)}: the 5-point template does not fit in the crop")
    return out.astype(np.float32)
