"""In-process inference on an exported SavedModel: embed images, verify pairs (1:1), identify (1:N).

:class:`FaceEmbedder` loads a ``tfface-export`` SavedModel (``serving_default``: uint8 ``[N, H, W, 3]`` aligned
crops -> float32 ``[N, D]`` L2-normalised) together with its ``assets/tfface.json`` and, when the export was
given ``--thresholds``, the calibrated ``assets/thresholds.json`` (:mod:`tfface.eval.calibration`)::

    embedder = FaceEmbedder.from_saved_model("exports/face")      # model dir (highest version) or version dir
    result = embedder.embed(["a.jpg", "b.jpg"], align=True)      # raw photos: MTCNN + 5-point alignment
    result.embeddings, result.index, result.rejected             # (M, D), accepted input positions, [(i, why)]
    same, score = embedder.verify("a.jpg", "b.jpg", align=True)  # the export's calibrated threshold

Inputs of :meth:`FaceEmbedder.embed`: a uint8 array ``(N, H, W, 3)`` or one image ``(H, W, 3)`` (RGB), or a
list whose items are file paths or such arrays (sizes may differ). Without ``align`` the images are taken as
already aligned crops and resized to the model's input size if needed (files are decoded by the evaluation
loader, :func:`tfface.eval.features.read_rgb`). With ``align=True`` they are raw photos: decoded like
``tfface-align`` does (:func:`tfface.align.decode.read_photo`: EXIF orientation, 16-bit, CMYK), the face is
found by the detector (:class:`tfface.align.detect.FaceDetector`, built on first use unless one is passed),
chosen by :func:`~tfface.align.detect.select_face` and warped onto the template of the model's input size by
:func:`tfface.align.batch.aligned_crop`. ``landmarks=`` (one ``(5, 2)`` array per input) aligns from known
points instead of running the detector.

An input that cannot be read, decoded or aligned never fails the batch: it is listed in
:attr:`Embeddings.rejected` with the reason, and :attr:`Embeddings.index` says which input each embedding row
belongs to. Argument errors (wrong types, shapes, dtypes of the whole call) still raise.

Flip fusion: a threshold is only valid for the preprocessing it was calibrated with, so ``flip_fusion=None``
uses the calibration's (``thresholds.json["flip_fusion"]``), or ``"none"`` (the signature's output as
TF-Serving clients get it) when the export has no thresholds. ``"sum"`` is ``normalise(e(x) + e(flip x))``.

Similarity: ``"cosine"`` (dot product; same if ``>= threshold``) or ``"squared_l2"`` (``||a - b||^2 = 2 - 2
cos``; same if ``<= threshold``), as recorded in ``thresholds.json``. :class:`~tfface.serving.gallery.Gallery`
always scores by cosine, so :meth:`FaceEmbedder.identify` converts a squared-L2 threshold to a cosine one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import cv2
import numpy as np

from tfface.eval.features import FLIP_FUSIONS, embed_images
from tfface.serving.layout import resolve_saved_model

SIMILARITIES = ("cosine", "squared_l2")
_NO_THRESHOLD = ("no verification threshold: pass threshold=..., or calibrate one with "
                 "`tfface-eval --calibrate_far=1e-3 --thresholds_output=thresholds.json ...` and export the model "
                 "with `tfface-export --thresholds=thresholds.json` so that it ships as the default")


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """What :meth:`FaceEmbedder.embed` returns.

    Attributes:
      embeddings: float32 ``(M, D)`` L2-normalised, one row per accepted input, in input order.
      index: int64 ``(M,)``: the input position of each row.
      rejected: ``[(input position, reason), ...]`` for the inputs that could not be read or aligned.
      num_inputs: how many inputs were given (``M + len(rejected)``).
    """

    embeddings: np.ndarray
    index: np.ndarray
    rejected: list[tuple[int, str]]
    num_inputs: int

    def __len__(self) -> int:
        return len(self.index)

    @property
    def all_ok(self) -> bool:
        """True when no input was rejected."""
        return not self.rejected

    def get(self, i: int) -> np.ndarray | None:
        """The embedding of input ``i``, or None if it was rejected."""
        pos = np.flatnonzero(self.index == i)
        return self.embeddings[pos[0]] if pos.size else None


@dataclasses.dataclass(frozen=True)
class Identification:
    """What :meth:`FaceEmbedder.identify` returns: top-k identities of each accepted query.

    Attributes:
      ids: object ``(M, k)`` identity labels (``gallery.unknown_label`` below the threshold).
      scores: float32 ``(M, k)`` cosine scores, descending.
      index: int64 ``(M,)`` input position of each row; rejected: ``[(input position, reason), ...]``.
    """

    ids: np.ndarray
    scores: np.ndarray
    index: np.ndarray
    rejected: list[tuple[int, str]]


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = h < image.shape[0] or w < image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _is_path(item) -> bool:
    return isinstance(item, (str, os.PathLike))


def _as_items(images) -> list:
    """The inputs as a list of paths / (H, W, 3) arrays; raises for a call that is wrong as a whole."""
    if _is_path(images):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"images must be (N, H, W, 3) or (H, W, 3), got shape {images.shape}")
    if isinstance(images, Sequence):
        return list(images)
    raise TypeError(f"images must be an array, a path or a list of them, got {type(images).__name__}")


def _check_array(item) -> str | None:
    """Why an in-memory image cannot be used, or None."""
    if item.dtype != np.uint8:
        return f"image must be uint8 RGB, got dtype {item.dtype}"
    if item.ndim != 3 or item.shape[2] != 3 or 0 in item.shape:
        return f"image must have shape (H, W, 3), got {item.shape}"
    return None


class FaceEmbedder:
    """Embeds, verifies and identifies faces with an exported SavedModel (see the module docstring).

    Args:
      model_dir: a SavedModel version directory.
      detector: optional face detector (``.detect(rgb) -> [Detection]``) for ``align=True``; default a
        :class:`tfface.align.detect.FaceDetector` built on first use.
      policy, min_score: how the face of a photo with several is chosen (:func:`tfface.align.detect.select_face`).
    """

    def __init__(self, model_dir: str, detector=None, policy: str = "largest", min_score: float = 0.8):
        import tensorflow as tf

        from tfface.serving.saved_model import SavedModelEmbedder

        self.model_dir = model_dir
        self._model = SavedModelEmbedder(model_dir)  # validates the serving_default signature
        self._tf = tf
        assets = os.path.join(model_dir, "assets")
        self.info = _read_json(os.path.join(assets, "tfface.json")) or {}
        calibration = _read_json(os.path.join(assets, "thresholds.json"))
        if calibration is None and isinstance(self.info.get("thresholds"), dict):
            calibration = self.info["thresholds"]
        self.calibration = calibration
        size = self._model.image_size or tuple(self.info.get("input_size") or ())
        if len(size) != 2:
            raise ValueError(f"{model_dir}: input size unknown (no static signature shape, no tfface.json)")
        self._input_size = (int(size[0]), int(size[1]))
        dim = self.info.get("embedding_size")
        if dim is None:
            spec = self._model._signature.structured_outputs["embeddings"]
            dim = spec.shape[-1]
        self._embedding_size = int(dim)
        self._detector = detector
        self.policy, self.min_score = policy, float(min_score)
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"{model_dir}: unknown similarity {self.similarity!r} in thresholds.json")

    @classmethod
    def from_saved_model(cls, path: str, **kwargs) -> FaceEmbedder:
        """Loads ``path``: a version directory, or a model directory (its highest integer version)."""
        return cls(resolve_saved_model(os.fspath(path)), **kwargs)

    def __repr__(self) -> str:
        return (f"FaceEmbedder({self.model_dir!r}, input_size={self.input_size}, embedding_size="
                f"{self.embedding_size}, similarity={self.similarity!r}, threshold={self.threshold})")

    # -- metadata -----------------------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the aligned crops the model takes."""
        return self._input_size

    @property
    def embedding_size(self) -> int:
        """D of the signature's output (``2 D`` rows come out of ``embed`` with ``flip_fusion="concat"``)."""
        return self._embedding_size

    @property
    def similarity(self) -> str:
        """``"cosine"`` or ``"squared_l2"``: how :attr:`threshold` is to be compared (cosine if uncalibrated)."""
        return (self.calibration or {}).get("similarity", "cosine")

    @property
    def flip_fusion(self) -> str:
        """The default flip fusion of :meth:`embed`: the calibration's, else ``"none"``."""
        return (self.calibration or {}).get("flip_fusion") or "none"

    @property
    def far(self) -> float | None:
        """The false accept rate the default threshold was calibrated for, or None."""
        return float(self.calibration["default_far"]) if self.calibration else None

    @property
    def threshold(self) -> float | None:
        """The calibrated threshold at the default FAR (in :attr:`similarity` units), or None."""
        if not self.calibration:
            return None
        return float(self.calibration["thresholds"][self.calibration["default_far"]]["threshold"])

    def output_size(self, flip_fusion: str | None = None) -> int:
        """Width of :meth:`embed` rows for ``flip_fusion`` (default: :attr:`flip_fusion`)."""
        return 2 * self.embedding_size if (flip_fusion or self.flip_fusion) == "concat" else self.embedding_size

    # -- embedding ----------------------------------------------------------------------------------------
    @property
    def detector(self):
        """The face detector used by ``align=True`` (MTCNN built on first use)."""
        if self._detector is None:
            from tfface.align.detect import FaceDetector

            self._detector = FaceDetector()
        return self._detector

    def _signature(self, batch: np.ndarray) -> np.ndarray:
        return self._model(batch)

    def _crop(self, item, align: bool, landmarks) -> tuple[np.ndarray | None, str | None]:
        """One input -> (aligned uint8 crop of the model size, None) or (None, reason)."""
        from tfface.align.batch import aligned_crop

        if _is_path(item):
            path = os.fspath(item)
            if align or landmarks is not None:
                from tfface.align.decode import read_photo

                image, reason = read_photo(path)
                if image is None:
                    return None, f"{path}: {reason}"
            else:
                from tfface.eval.features import read_rgb

                try:
                    return read_rgb(path, self.input_size), None
                except (OSError, ValueError, cv2.error) as e:
                    return None, str(e)
        elif isinstance(item, np.ndarray):
            reason = _check_array(item)
            if reason:
                return None, reason
            image = item
        else:
            return None, f"not an image array or a path: {type(item).__name__}"
        if landmarks is not None:
            try:
                return aligned_crop(image, np.asarray(landmarks, np.float64), self.input_size), None
            except ValueError as e:
                return None, f"cannot align from the given landmarks: {e}"
        if not align:
            return _resize(image, self.input_size), None
        from tfface.align.detect import select_face

        detections = self.detector.detect(image)
        chosen, status = select_face(detections, image.shape, self.policy, self.min_score)
        if chosen is None:
            below = f" ({len(detections)} below min_score {self.min_score})" if detections else ""
            return None, f"no face detected{below}"
        return aligned_crop(image, chosen.landmarks, self.input_size), None

    def embed(self, images, batch_size: int = 64, align: bool = False, flip_fusion: str | None = None,
              landmarks=None) -> Embeddings:
        """Embeds images; unusable inputs are rejected with a reason instead of failing the call.

        Args:
          images: uint8 RGB ``(N, H, W, 3)`` or ``(H, W, 3)``, a path, or a list of paths / ``(H, W, 3)`` arrays.
          batch_size: images per signature call.
          align: the inputs are raw photos to detect and align (see the module docstring); False: they are
            aligned crops, resized to :attr:`input_size` if their size differs.
          flip_fusion: ``"sum"``, ``"concat"``, ``"none"`` or None (:attr:`flip_fusion`, matching the threshold).
          landmarks: optional, one ``(5, 2)`` array (pixels, left eye, right eye, nose, mouth left, mouth right)
            or None per input: align those inputs from these points instead of the detector.

        Returns:
          :class:`Embeddings` (float32 rows, L2-normalised).
        """
        fusion = flip_fusion or self.flip_fusion
        if fusion not in FLIP_FUSIONS:
            raise ValueError(f"flip_fusion must be one of {FLIP_FUSIONS}, got {flip_fusion!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        items = _as_items(images)
        if landmarks is not None:
            landmarks = [landmarks] if len(items) == 1 and np.ndim(landmarks) == 2 else list(landmarks)
            if len(landmarks) != len(items):
                raise ValueError(f"got {len(landmarks)} landmark sets for {len(items)} images")
        crops, index, rejected = [], [], []
        for i, item in enumerate(items):
            crop, reason = self._crop(item, align, None if landmarks is None else landmarks[i])
            if crop is None:
                rejected.append((i, reason))
            else:
                crops.append(crop)
                index.append(i)
        dim = self.output_size(fusion)
        if crops:
            out = embed_images(self._signature, np.stack(crops), batch_size=batch_size, flip_fusion=fusion)
        else:
            out = np.zeros((0, dim), np.float32)
        return Embeddings(embeddings=out, index=np.asarray(index, np.int64), rejected=rejected,
                          num_inputs=len(items))

    # -- verification -------------------------------------------------------------------------------------
    def _one(self, x, align: bool, flip_fusion: str | None, what: str) -> np.ndarray:
        """An embedding (1-D float, used as given after normalisation) or an image/path to embed."""
        if isinstance(x, (np.ndarray, list, tuple)) and not _is_path(x):
            arr = np.asarray(x)
            if arr.ndim == 1 and np.issubdtype(arr.dtype, np.floating):
                if arr.shape[0] != self.output_size(flip_fusion):
                    raise ValueError(f"{what}: embedding has {arr.shape[0]} dims, expected "
                                     f"{self.output_size(flip_fusion)}")
                norm = float(np.linalg.norm(arr))
                if not np.isfinite(norm) or norm == 0:
                    raise ValueError(f"{what}: embedding is zero or not finite")
                return (arr / norm).astype(np.float32)
            x = arr
            if x.ndim != 3:
                raise ValueError(f"{what}: expected one image (H, W, 3), a path or a 1-D embedding, got {x.shape}")
        result = self.embed(x, align=align, flip_fusion=flip_fusion)
        if result.rejected:
            raise ValueError(f"{what}: {result.rejected[0][1]}")
        return result.embeddings[0]

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise score of L2-normalised embeddings in :attr:`similarity` units (cosine, or squared L2)."""
        cos = np.sum(np.asarray(a, np.float32) * np.asarray(b, np.float32), axis=-1)
        return cos if self.similarity == "cosine" else np.maximum(2.0 - 2.0 * cos, 0.0)

    def is_same(self, score, threshold: float | None = None):
        """The decision for ``score``: ``>= t`` (cosine) or ``<= t`` (squared L2); default t = :attr:`threshold`."""
        t = self._threshold(threshold)
        return np.asarray(score) >= t if self.similarity == "cosine" else np.asarray(score) <= t

    def _threshold(self, threshold: float | None) -> float:
        t = self.threshold if threshold is None else threshold
        if t is None:
            raise ValueError(_NO_THRESHOLD)
        return float(t)

    def verify(self, a, b, threshold: float | None = None, align: bool = False,
               flip_fusion: str | None = None) -> tuple[bool, float]:
        """Are ``a`` and ``b`` the same person? -> ``(same, score)``.

        ``a`` and ``b`` are each an image ``(H, W, 3)`` uint8, a path, or a precomputed 1-D float embedding
        (from :meth:`embed` with the same flip fusion). ``threshold`` (in :attr:`similarity` units) defaults
        to the export's calibrated one; without either, ValueError. An input that cannot be read or aligned
        raises ValueError with the reason.
        """
        t = self._threshold(threshold)
        ea = self._one(a, align, flip_fusion, "a")
        eb = self._one(b, align, flip_fusion, "b")
        s = float(self.score(ea, eb))
        return bool(self.is_same(s, t)), s

    # -- identification -----------------------------------------------------------------------------------
    def cosine_threshold(self, threshold: float | None = None) -> float:
        """``threshold`` (default :attr:`threshold`) as a cosine, the unit of Gallery scores."""
        t = self._threshold(threshold)
        return t if self.similarity == "cosine" else 1.0 - t / 2.0

    def gallery(self, flip_fusion: str | None = None, **kwargs):
        """An empty :class:`~tfface.serving.gallery.Gallery` of this model's embedding width (kwargs: backend...)."""
        from tfface.serving.gallery import Gallery

        return Gallery(self.output_size(flip_fusion), **kwargs)

    def enroll(self, gallery, ids, images, batch_size: int = 64, align: bool = False,
               flip_fusion: str | None = None, landmarks=None) -> Embeddings:
        """Embeds ``images`` and enrols the accepted ones under their ``ids`` (one per image); returns the
        :class:`Embeddings`, whose ``rejected`` lists the images that were not enrolled."""
        ids = list(ids)
        result = self.embed(images, batch_size=batch_size, align=align, flip_fusion=flip_fusion,
                            landmarks=landmarks)
        if len(ids) != result.num_inputs:
            raise ValueError(f"got {len(ids)} ids for {result.num_inputs} images")
        if len(result):
            gallery.enroll([ids[i] for i in result.index], result.embeddings)
        return result

    def identify(self, gallery, images, k: int = 1, threshold: float | None = None, batch_size: int = 64,
                 align: bool = False, flip_fusion: str | None = None, landmarks=None) -> Identification:
        """Top-k gallery identities of each image (see :meth:`Gallery.identify`).

        ``threshold`` is in :attr:`similarity` units (converted to cosine for the gallery); None: no threshold
        (closed set). The 1:1 calibrated :attr:`threshold` can be passed explicitly, but note that the chance
        of a false match in 1:N search grows with the gallery size.
        """
        result = self.embed(images, batch_size=batch_size, align=align, flip_fusion=flip_fusion,
                            landmarks=landmarks)
        cos = None if threshold is None else self.cosine_threshold(threshold)
        if len(result):
            ids, scores = gallery.identify(result.embeddings, k=k, threshold=cos)
        else:
            ids, scores = np.empty((0, k), object), np.empty((0, k), np.float32)
        return Identification(ids=ids, scores=scores, index=result.index, rejected=result.rejected)
