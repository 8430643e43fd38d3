"""Face detection with MTCNN: boxes, scores and the 5 landmarks that :mod:`tfface.align.transform` aligns.

The detector is the ``mtcnn`` package (Zhang et al., "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks", IEEE SPL 2016; the Keras port by I. de Paz Centeno). Its three networks
(PNet, RNet, ONet) ship inside the wheel, so detection runs offline. It is the detector InsightFace and
Sandberg's ``facenet`` used to align their training sets, and its 5 landmarks are the points the
templates in :mod:`tfface.align.templates` are defined on.

Landmark order: ``mtcnn`` returns ``left_eye, right_eye, nose, mouth_left, mouth_right`` where "left"
is *image* left (smaller x), which is :data:`~tfface.align.templates.LANDMARK_ORDER` (checked on a real
photo in ``tests/test_detect.py``). Its numpy output holds the five x coordinates, then the five y
coordinates (columns 6-10 and 11-15 of each row), not interleaved pairs; :class:`FaceDetector` reads
them that way and keeps them as floats (the package's JSON output rounds them to integers, a half-pixel
error that the alignment would inherit).

Large photos are shrunk before detection so that the longer side is at most ``max_side`` (default
1280) and the results are mapped back to the original pixels, so the warp still samples the
full-resolution image. MTCNN's cost grows with the pixel count (measured on the 2-core CPU machine:
0.13 s at 600x512, 0.36 s at 1280x1024, 1.3 s at 2560x2048); at 1280 the smallest detectable face
(``min_face_size``, 20 px) is 1/64 of the longer side, i.e. 63 px in a 12-megapixel 4000x3000 photo,
already smaller than the 112 px crop it would be upsampled to.

:func:`select_face` (pure NumPy) decides which detection of an image to keep: faces below a score are
ignored; none left is ``"no_face"``, one is ``"ok"``, several is ``"multi_face"`` and the policy's choice
(largest box, or box centre nearest the image centre) is returned with that status so the caller can
report it rather than silently guess.

Importing this module is cheap: ``mtcnn`` (and with it TensorFlow) is imported when a
:class:`FaceDetector` is built.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import cv2
import numpy as np

POLICIES = ("largest", "central")
STATUSES = ("ok", "no_face", "multi_face")

#: Default longer side (pixels) an image is shrunk to before detection; see the module docstring.
DEFAULT_MAX_SIDE = 1280


@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
    """One detected face, in pixels of the image given to :meth:`FaceDetector.detect`.

    Attributes:
      box: float32 (4,) ``x1, y1, x2, y2`` (read-only).
      score: detector confidence in [0, 1] (ONet's face probability).
      landmarks: float32 (5, 2) ``(x, y)`` in :data:`~tfface.align.templates.LANDMARK_ORDER` (read-only).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    def __post_init__(self):
        box = np.array(self.box, np.float32).reshape(-1)
        landmarks = np.array(self.landmarks, np.float32)
        if box.shape != (4,):
            raise ValueError(f"box must have 4 values x1, y1, x2, y2, got shape {box.shape}")
        if landmarks.shape != (5, 2):
            raise ValueError(f"landmarks must have shape (5, 2), got {landmarks.shape}")
        if not (np.all(np.isfinite(box)) and np.all(np.isfinite(landmarks)) and math.isfinite(self.score)):
            raise ValueError("box, score and landmarks must be finite")
        box.flags.writeable = False
        landmarks.flags.writeable = False
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "landmarks", landmarks)
        object.__setattr__(self, "score", float(self.score))

    @property
    def area(self) -> float:
        """Box area in square pixels (0 for a degenerate box)."""
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @property
    def center(self) -> np.ndarray:
        """Box centre ``(x, y)``, float64."""
        x1, y1, x2, y2 = self.box.astype(np.float64)
        return np.array([(x1 + x2) / 2, (y1 + y2) / 2])

    def to_dict(self, decimals: int = 2) -> dict:
        """JSON-friendly form (plain floats, rounded), as the align report stores it."""
        return {"box": [round(float(v), decimals) for v in self.box], "score": round(self.score, 4),
                "landmarks": [[round(float(v), decimals) for v in p] for p in self.landmarks]}


def _image_hw(image_shape) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in tuple(image_shape)[:2])
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must start with (height, width), got {image_shape!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"image_shape must have a positive height and width, got {image_shape!r}")
    return h, w


def select_face(detections, image_shape, policy: str = "largest",
                min_score: float = 0.0) -> tuple[Detection | None, str]:
    """Picks the one face of an image that alignment should use.

    Args:
      detections: :class:`Detection` s of one image (any order).
      image_shape: the image's shape (``(height, width, ...)``), for the ``"central"`` policy.
      policy: ``"largest"`` (largest box area) or ``"central"`` (box centre nearest the image centre).
        Ties go to the higher score.
      min_score: detections scoring below it are ignored (as if not detected).

    Returns:
      ``(detection, status)``: ``(None, "no_face")`` when no detection reaches ``min_score``;
      ``(the one, "ok")`` when exactly one does; ``(policy's choice, "multi_face")`` when several do.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if isinstance(min_score, bool) or not isinstance(min_score, numbers.Real) or not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score must be a number in [0, 1], got {min_score!r}")
    h, w = _image_hw(image_shape)
    for d in detections:
        if not isinstance(d, Detection):
            raise TypeError(f"detections must be Detection objects, got {type(d).__name__}")
    faces = [d for d in detections if d.score >= min_score]
    if not faces:
        return None, "no_face"
    if len(faces) == 1:
        return faces[0], "ok"
    faces.sort(key=lambda d: -d.score)  # stable: equal keys below keep the higher score first
    if policy == "largest":
        best = min(faces, key=lambda d: -d.area)
    else:
        # Pixel-index coordinates (as the boxes): the image centre is ((w - 1) / 2, (h - 1) / 2).
        centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        best = min(faces, key=lambda d: float(np.linalg.norm(d.center - centre)))
    return best, "multi_face"


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (height, width, 3) (RGB), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


def resize_for_detection(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """Shrinks ``image`` so its longer side is at most ``max_side`` (area interpolation).

    Returns ``(image, (sx, sy))`` where ``sx = original width / new width`` (likewise ``sy``), both 1.0
    when no resizing was needed (``max_side=None`` never resizes). Map a point back with
    :func:`map_to_original`.
    """
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image, (1.0, 1.0)
    f = max_side / max(h, w)
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, (w / nw, h / nh)


def map_to_original(points, scale_xy) -> np.ndarray:
    """Maps (N, 2) pixel coordinates of a resized image back to the original one.

    Pixel centres are integer coordinates (as OpenCV and MTCNN use them), so the map is
    ``x = (x' + 0.5) * sx - 0.5`` (likewise y), the exact inverse of an area/linear resize's sampling.
    """
    p = np.asarray(points, np.float64)
    s = np.asarray(scale_xy, np.float64)
    return (p + 0.5) * s - 0.5


def check_detector_settings(min_face_size=20, thresholds=(0.6, 0.7, 0.8), scale_factor=0.709,
                            max_side=DEFAULT_MAX_SIDE) -> dict:
    """Validates :class:`FaceDetector` arguments without building it (no TensorFlow import).

    Returns them normalised (plain ints/floats, thresholds as a list); raises ValueError naming the bad one.
    """
    if isinstance(min_face_size, bool) or not isinstance(min_face_size, numbers.Integral) or min_face_size < 1:
        raise ValueError(f"min_face_size must be a positive integer, got {min_face_size!r}")
    try:
        t = [float(v) for v in thresholds]
    except (TypeError, ValueError):
        t = []
    if len(t) != 3 or not all(0.0 <= v <= 1.0 for v in t):
        raise ValueError(f"thresholds must be 3 numbers in [0, 1] (PNet, RNet, ONet), got {thresholds!r}")
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, numbers.Real) or not 0.0 < scale_factor < 1.0:
        raise ValueError(f"scale_factor must be in (0, 1), got {scale_factor!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, numbers.Integral)
                                 or max_side < 32):
        raise ValueError(f"max_side must be None or an integer >= 32, got {max_side!r}")
    return {"min_face_size": int(min_face_size), "thresholds": t, "scale_factor": float(scale_factor),
            "max_side": None if max_side is None else int(max_side)}


class FaceDetector:
    """MTCNN face detector returning float boxes and landmarks in original-image pixels.

    Args:
      min_face_size: smallest face (pixels, in the possibly shrunk detection image) to look for; sets
        the image pyramid's first scale (12 / min_face_size). Smaller is slower.
      thresholds: (PNet, RNet, ONet) score thresholds, MTCNN's defaults (0.6, 0.7, 0.8). A face's
        :attr:`Detection.score` is ONet's, so it is never below ``thresholds[2]``.
      scale_factor: pyramid step, MTCNN's default 0.709 (= sqrt(0.5)).
      max_side: shrink images whose longer side exceeds this before detection (None: never); see the
        module docstring for the default 1280.
      device: TensorFlow device for the networks, e.g. ``"CPU:0"`` or ``"GPU:0"``.
    """

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.8), scale_factor: float = 0.709,
                 max_side: int | None = DEFAULT_MAX_SIDE, device: str = "CPU:0"):
        settings = check_detector_settings(min_face_size, thresholds, scale_factor, max_side)
        self.min_face_size = settings["min_face_size"]
        self.thresholds = tuple(settings["thresholds"])
        self.scale_factor = settings["scale_factor"]
        self.max_side = settings["max_side"]
        self.device = device
        from mtcnn import MTCNN  # imports TensorFlow: deferred so that importing this module stays cheap

        self._mtcnn = MTCNN(device=device)

    def settings(self) -> dict:
        """The detector's parameters (JSON-friendly), as the align report records them."""
        return {"min_face_size": self.min_face_size, "thresholds": list(self.thresholds),
                "scale_factor": self.scale_factor, "max_side": self.max_side, "device": self.device}

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Detects faces in one RGB uint8 ``(H, W, 3)`` image; returns them sorted by score, highest first.

        Coordinates are pixels of ``image`` itself, also when it was shrunk for detection. An image
        with no face gives an empty list.
        """
        image = _check_image(image)
        small, scale = resize_for_detection(image, self.max_side)
        rows = self._mtcnn.detect_faces(
            np.ascontiguousarray(small), box_format="xyxy", output_type="numpy",
            fit_to_image=True, limit_boundaries_landmarks=False,
            min_face_size=self.min_face_size, scale_factor=self.scale_factor,
            threshold_pnet=self.thresholds[0], threshold_rnet=self.thresholds[1],
            threshold_onet=self.thresholds[2])
        rows = np.asarray(rows, np.float64).reshape(-1, 16)
        out = []
        for r in rows:
            # Row: image index, x1, y1, x2, y2, score, then the five x and the five y of the landmarks.
            box = map_to_original(r[1:5].reshape(2, 2), scale).reshape(4)
            landmarks = map_to_original(np.stack([r[6:11], r[11:16]], axis=1), scale)
            out.append(Detection(box=box, score=float(r[5]), landmarks=landmarks))
        out.sort(key=lambda d: -d.score)
        return out
