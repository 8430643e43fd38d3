"""Synthetic "raw photos": procedural faces pasted into larger textured scenes, with their true landmarks.

Why: the aligner (:mod:`tfface.align.detect`, ``tfface-align``) needs test and benchmark images whose
answer is known, that ship with the code (no download, no licence) and that are built like the photos
it will meet: faces of different sizes and in-plane rotations somewhere in a cluttered frame, sometimes
more than one. Each face is drawn by :func:`tfface.data.synthetic_render.render_face` (so identities,
expressions, glasses, lighting are the synthetic dataset's), then pasted into the canvas under a
similarity (rotation about the crop centre, translation) through a soft elliptical mask that keeps the
head and fades out the crop's own background. The 5 true landmarks are transformed by the same
similarity, so they are exact in canvas pixels (integer coordinates = pixel centres, as OpenCV).

Head shading: the renderer draws flat colours, and MTCNN, trained on real photos, finds such cartoon
faces in only about half of the scenes. Darkening the head away from the nose tip (brightness x
``1 - 0.6 r^2``, r = distance in units of the face's half-axes) gives it the round look of a lit head.
Measured with ``bench/align.py`` (200 scenes, defaults): faces found 48% flat, 73% shaded, with a mean
landmark error of 9.9% and 11.2% of the inter-ocular distance. ``shading=0`` gives the flat faces. Found
faces are fewer for dark skin tones (shaded: 58% in the darkest third of identities, 85% in the
lightest; flat: 31% and 68%); that is reported by the benchmark, not tuned away.

Background: a smooth 4x4 colour field, mid-frequency texture, random rectangles, ellipses and lines
(no face-like structure on purpose), then pixel noise over the whole scene. Faces never overlap: each
occupies a disc of radius ``0.55 * size`` (the mask's extent) that lies inside the canvas and is disjoint
from the others' discs.

Face size is the side of the face's 112x112 ArcFace frame in canvas pixels, so the inter-ocular
distance is about ``0.31 * size`` and the face box MTCNN reports is about ``0.67 * size`` wide (median;
0.52-0.72 over 18 detections at size 150).

:func:`write_scene_tree` writes an identity-per-folder tree of JPEGs (``<out>/id_00000/id_00000_0001.jpg``,
the layout ``tfface-align`` reads) plus ``truth.json``; every image depends only on (seed, identity, image
index) and the arguments. This module does not import TensorFlow.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np

from tfface.data.synthetic_render import render_face, sample_identity
from tfface.fileio import atomic_write_bytes, atomic_write_json

#: Radius (in units of face size) of the disc a pasted face occupies; the mask ellipse fits inside it.
FOOTPRINT = 0.55
# Soft mask in the 112 frame: ellipse centre and radii, and the width of the fade (fraction of radius).
_MASK_CENTRE = (56.0, 58.0)
_MASK_RADII = (52.0, 60.0)
_MASK_FADE = 0.18
# Head shading in the 112 frame: brightness falls off as 1 - shading * r^2 with r the distance from the
# nose tip in units of these radii (about the face's half-width and half-height). Centred on the face
# centre instead (56, 62) it found a few more faces but pulled MTCNN's nose and mouth points up by
# another 5% of the inter-ocular distance, as the darkened chin made the face look shorter.
_SHADE_CENTRE = (56.0, 72.0)
_SHADE_RADII = (40.3, 50.4)
TRUTH_VERSION = 1


def _size_pair(value, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if min(a, b) < minimum:
        raise ValueError(f"{name} values must be >= {minimum}, got {value!r}")
    return a, b


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Cluttered, face-free background: smooth colour field + texture + shapes (float32, 0..255)."""
    img = cv2.resize(rng.uniform(20, 235, (4, 4, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    tex = rng.normal(0, 18, (max(2, h // 8), max(2, w // 8), 1)).astype(np.float32)
    img += cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    for _ in range(int(rng.integers(4, 10))):
        col = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        a, b = int(rng.uniform(0.03, 0.25) * w), int(rng.uniform(0.03, 0.25) * h)
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(img, (x - a, y - b), (x + a, y + b), col, -1)
        elif kind == 1:
            cv2.ellipse(img, (x, y), (a, b), float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
        else:
            cv2.line(img, (x - a, y - b), (x + a, y + b), col, int(rng.integers(1, 6)), cv2.LINE_AA)
    return img


def _mask(size: int) -> np.ndarray:
    """Soft elliptical alpha (float32, size x size) over the head in a face rendered at ``size``."""
    s = size / 112.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.sqrt(((xx - _MASK_CENTRE[0] * s) / (_MASK_RADII[0] * s)) ** 2
                + ((yy - _MASK_CENTRE[1] * s) / (_MASK_RADII[1] * s)) ** 2)
    t = np.clip((1.0 - d) / _MASK_FADE, 0.0, 1.0)
    return t * t * (3 - 2 * t)  # smoothstep: no hard edge for the detector to latch onto


def _shading(size: int, strength: float) -> np.ndarray:
    """Multiplicative spherical shading (float32, size x size) of a face rendered at ``size``."""
    s = size / 112.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r2 = (((xx - _SHADE_CENTRE[0] * s) / (_SHADE_RADII[0] * s)) ** 2
          + ((yy - _SHADE_CENTRE[1] * s) / (_SHADE_RADII[1] * s)) ** 2)
    return np.clip(1.0 - strength * np.minimum(r2, 1.44), 0.0, 1.0)


def _place(rng, h, w, sizes, tries=200) -> list[tuple[float, float]]:
    """Random centres for faces of ``sizes``: footprint discs inside the canvas, pairwise disjoint."""
    centres: list[tuple[float, float]] = []
    for size in sizes:
        r = FOOTPRINT * size
        for _ in range(tries):
            c = (rng.uniform(r, w - r), rng.uniform(r, h - r))
            if all(math.dist(c, o) >= r + FOOTPRINT * s for o, s in zip(centres, sizes[: len(centres)], strict=True)):
                centres.append(c)
                break
        else:
            raise ValueError(f"cannot place {len(sizes)} non-overlapping faces of sizes {sizes} in a {h}x{w} canvas")
    return centres


def render_scene(rng: np.random.Generator, canvas_size=(320, 320), num_faces: int = 1, face_size=(100, 160),
                 difficulty: float = 0.3, max_rotation: float = 15.0, identities=None, layout=None,
                 noise: float = 3.0, shading: float = 0.6):
    """Renders one scene: ``num_faces`` faces pasted into a cluttered background.

    Args:
      rng: the generator; the scene is a pure function of its state and the other arguments.
      canvas_size: (height, width) of the scene.
      num_faces: faces to paste (ignored when ``layout`` is given).
      face_size: (lo, hi) range of the face size (side of the 112 ArcFace frame, canvas pixels), drawn
        uniformly per face; an int for a fixed size.
      difficulty: passed to :func:`~tfface.data.synthetic_render.render_face` (yaw, expression, glasses,
        lighting, blur; 0 = frontal and clean).
      max_rotation: in-plane rotation, degrees, drawn uniformly in +-max_rotation per face.
      identities: optional identity dicts (from :func:`~tfface.data.synthetic_render.sample_identity`),
        one per face; faces without one get a fresh identity from ``rng``.
      layout: optional explicit placement, one ``(cx, cy, size, angle_degrees)`` per face (centre in
        canvas pixels; angle counter-clockwise as displayed, OpenCV's convention); overrides
        ``num_faces``, ``face_size`` and ``max_rotation``. Faces must fit.
      noise: standard deviation of the Gaussian pixel noise added to the whole scene.
      shading: strength of the spherical head shading (0 = the renderer's flat colours); see the
        module docstring.

    Returns:
      ``(image, landmarks)``: RGB uint8 ``(H, W, 3)`` and a list with one float32 (5, 2) array per face
      (in :data:`~tfface.align.templates.LANDMARK_ORDER`), in the order the faces were listed.
    """
    h, w = _size_pair(canvas_size, "canvas_size", 32)
    if not math.isfinite(difficulty) or difficulty < 0:
        raise ValueError(f"difficulty must be a finite number >= 0, got {difficulty!r}")
    if not math.isfinite(shading) or not 0 <= shading <= 1:
        raise ValueError(f"shading must be in [0, 1], got {shading!r}")
    if not math.isfinite(max_rotation) or not 0 <= max_rotation <= 180:
        raise ValueError(f"max_rotation must be in [0, 180] degrees, got {max_rotation!r}")
    if layout is None:
        if isinstance(num_faces, bool) or int(num_faces) != num_faces or num_faces < 0:
            raise ValueError(f"num_faces must be an integer >= 0, got {num_faces!r}")
        lo, hi = _size_pair(face_size, "face_size", 24)
        if lo > hi:
            raise ValueError(f"face_size must be (lo, hi) with lo <= hi, got {face_size!r}")
        if num_faces and 2 * FOOTPRINT * lo > min(h, w):
            raise ValueError(f"face_size {lo} does not fit in a {h}x{w} canvas (needs {2 * FOOTPRINT:.1f} x size)")
        sizes = [float(rng.uniform(lo, hi)) for _ in range(int(num_faces))]
        centres = _place(rng, h, w, sizes)
        angles = [float(rng.uniform(-max_rotation, max_rotation)) for _ in sizes]
        layout = [(cx, cy, s, a) for (cx, cy), s, a in zip(centres, sizes, angles, strict=True)]
    else:
        layout = [tuple(float(v) for v in item) for item in layout]
        for i, (cx, cy, s, _) in enumerate(layout):
            r = FOOTPRINT * s
            if s < 24 or cx < r or cy < r or cx > w - r or cy > h - r:
                raise ValueError(f"layout face {i} {layout[i]} does not fit in the {h}x{w} canvas (size >= 24)")
            for j in range(i):
                if math.dist((cx, cy), layout[j][:2]) < r + FOOTPRINT * layout[j][2]:
                    raise ValueError(f"layout faces {j} and {i} overlap")
    identities = list(identities or [])
    canvas = _background(rng, h, w)
    truth = []
    for i, (cx, cy, size, angle) in enumerate(layout):
        identity = identities[i] if i < len(identities) else sample_identity(rng)
        n = max(24, int(round(size)))
        face, lm = render_face(identity, rng, (n, n), difficulty)
        face = face.astype(np.float32)
        if shading > 0:
            face *= _shading(n, shading)[..., None]
        # Similarity: rotate by `angle` and scale size/n about the crop centre, move it to (cx, cy).
        c = (n - 1) / 2.0
        m = cv2.getRotationMatrix2D((c, c), angle, size / n)
        m[:, 2] += (cx - c, cy - c)
        flags, border = cv2.INTER_LINEAR, cv2.BORDER_CONSTANT
        warped = cv2.warpAffine(face, m, (w, h), flags=flags, borderMode=border)
        alpha = cv2.warpAffine(_mask(n), m, (w, h), flags=flags, borderMode=border)[..., None]
        canvas = canvas * (1 - alpha) + warped * alpha
        truth.append((lm.astype(np.float64) @ m[:, :2].T + m[:, 2]).astype(np.float32))
    if noise > 0:
        canvas += rng.normal(0, noise, canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), truth


def write_scene_tree(out_dir, num_identities: int, images_per_identity: int, seed: int = 0,
                     canvas_size=(320, 320), face_size=(100, 160), difficulty: float = 0.3,
                     max_rotation: float = 15.0, num_faces: int = 1, jpeg_quality: int = 90,
                     shading: float = 0.6) -> dict:
    """Writes an identity-per-folder tree of scene JPEGs and ``truth.json``.

    Layout::

        out_dir/id_00000/id_00000_0001.jpg ...   one folder per identity; face 0 of every image is
                                                 that identity, further faces (num_faces > 1) are strangers
        out_dir/truth.json                       {"faces": {relpath: [landmarks of face 0, face 1, ...]},
                                                  "arguments": {...}, "landmark_order": [...], "version": 1}

    Image ``k`` of identity ``i`` is drawn from ``default_rng([seed, i, k])`` (the identity from
    ``default_rng([seed, i])``), so files do not depend on the order they are written in. Every file,
    ``truth.json`` included, is written atomically, ``truth.json`` last.

    Returns:
      The truth dict written to ``truth.json``.
    """
    for name, value, minimum in (("num_identities", num_identities, 1),
                                 ("images_per_identity", images_per_identity, 1), ("seed", seed, 0),
                                 ("num_faces", num_faces, 1)):
        if isinstance(value, bool) or int(value) != value or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(jpeg_quality, bool) or int(jpeg_quality) != jpeg_quality or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an integer in [1, 100], got {jpeg_quality!r}")
    out_dir = os.fspath(out_dir)
    faces = {}
    for i in range(int(num_identities)):
        name = f"id_{i:05d}"
        identity = sample_identity(np.random.default_rng([seed, i]))
        for k in range(int(images_per_identity)):
            rng = np.random.default_rng([seed, i, k])
            image, lms = render_scene(rng, canvas_size, num_faces, face_size, difficulty, max_rotation,
                                      identities=[identity], shading=shading)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {name} image {k + 1}")
            rel = f"{name}/{name}_{k + 1:04d}.jpg"
            atomic_write_bytes(os.path.join(out_dir, rel), buf.tobytes())
            faces[rel] = [np.round(lm.astype(np.float64), 4).tolist() for lm in lms]
    truth = {
        "version": TRUTH_VERSION,
        "arguments": {"num_identities": int(num_identities), "images_per_identity": int(images_per_identity),
                      "seed": int(seed), "canvas_size": list(_size_pair(canvas_size, "canvas_size", 32)),
                      "face_size": list(_size_pair(face_size, "face_size", 24)), "difficulty": float(difficulty),
                      "max_rotation": float(max_rotation), "num_faces": int(num_faces),
                      "jpeg_quality": int(jpeg_quality), "shading": float(shading)},
        "landmark_order": ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"],
        "faces": faces,
    }
    atomic_write_json(os.path.join(out_dir, "truth.json"), truth)
    return truth
