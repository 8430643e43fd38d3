"""Batched embedding extraction for evaluation: image loading, flip fusion, pair scores, PCA.

Deliberately free of TensorFlow imports: ``embed_fn`` can be anything that maps a batch of images to
embeddings (a Keras model, a SavedModel signature wrapper, a NumPy function in tests), so the same
code evaluates a model in training, an exported SavedModel, or a baseline.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from tfface.eval import verification

FLIP_FUSIONS = ("sum", "concat", "none")
DISTANCES = ("cosine", "squared_l2")


def l2_normalize(x, axis: int = -1, epsilon: float = 1e-12) -> np.ndarray:
    """``x / max(||x||_2, epsilon)`` along ``axis`` (NumPy, float32 for float32 input).

    ``epsilon`` keeps an all-zero vector at zero instead of producing NaN.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    norm = np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True))
    return x / np.maximum(norm, epsilon).astype(x.dtype)


def _call_embed(embed_fn: Callable, batch: np.ndarray) -> np.ndarray:
    """Calls ``embed_fn`` and returns a float32 (B, D) NumPy array.

    A SavedModel signature returns a dict; accept that too (key ``embeddings``, or its only value).
    """
    out = embed_fn(batch)
    if isinstance(out, Mapping):
        if "embeddings" in out:
            out = out["embeddings"]
        elif len(out) == 1:
            out = next(iter(out.values()))
        else:
            raise ValueError(f"embed_fn returned a dict without an 'embeddings' key: {sorted(out)}")
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != batch.shape[0]:
        raise ValueError(f"embed_fn must return (batch, dim) embeddings; got shape {out.shape} "
                         f"for a batch of {batch.shape[0]}")
    return out


def embed_images(embed_fn: Callable, images: np.ndarray, batch_size: int = 64,
                 flip_fusion: str = "sum") -> np.ndarray:
    """Embeds ``images`` in batches, with optional horizontal-flip test-time augmentation.

    Args:
        embed_fn: callable mapping an image batch (B, H, W, 3), the dtype of ``images``, to (B, D)
            embeddings (array, tensor, or a dict with key ``embeddings`` as SavedModel signatures return).
        images: (N, H, W, 3) uint8 RGB (or float in [0, 255]); normalisation is the model's job.
        batch_size: images per ``embed_fn`` call.
        flip_fusion: ``"sum"``: ``normalise(e(x) + e(flip x))`` (InsightFace; the sum of unnormalised
            features if ``embed_fn`` returns those); ``"concat"``: ``normalise([e(x), e(flip x)])``
            (2D dims); ``"none"``: ``normalise(e(x))``.

    Returns:
        float32 (N, D) (or (N, 2D) for concat) L2-normalised embeddings.
    """
    if flip_fusion not in FLIP_FUSIONS:
        raise ValueError(f"flip_fusion must be one of {FLIP_FUSIONS}, got {flip_fusion!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("no images to embed")
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        batch = np.ascontiguousarray(images[start:start + batch_size])
        emb = _call_embed(embed_fn, batch)
        if flip_fusion != "none":
            # Flip the width axis; copy so that frameworks never see a negative-stride view.
            flipped = _call_embed(embed_fn, np.ascontiguousarray(batch[:, :, ::-1]))
            emb = emb + flipped if flip_fusion == "sum" else np.concatenate([emb, flipped], axis=1)
        chunks.append(l2_normalize(emb))
    return np.concatenate(chunks, axis=0).astype(np.float32, copy=False)


def read_rgb(path: str, image_size: tuple[int, int] | None) -> np.ndarray:
    """Reads one image as uint8 RGB (H, W, 3), resized to ``image_size`` (H, W) if given."""
    try:
        # np.fromfile + imdecode (instead of imread) works for non-ASCII paths and lets missing
        # files and undecodable files be told apart.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise FileNotFoundError(f"cannot read image file {path}: {e}") from e
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image file {path} (not an image or corrupt)")
    if image.dtype != np.uint8:  # e.g. 16-bit PNG: keep the most significant 8 bits
        image = (image.astype(np.float32) * (255.0 / np.iinfo(image.dtype).max)).round().astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"image file {path} has unsupported channel count {image.shape[2]}")
    if image_size is not None and image.shape[:2] != tuple(image_size):
        h, w = image_size
        # INTER_AREA avoids aliasing when shrinking; linear is the better choice when enlarging.
        shrink = h < image.shape[0] or w < image.shape[1]
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return image


def load_images(root: str, relpaths: Sequence[str], image_size: tuple[int, int] | None = None,
                num_workers: int | None = None) -> np.ndarray:
    """Loads images ``root/relpath`` as one uint8 RGB array (N, H, W, 3).

    Grayscale and RGBA files become RGB (alpha dropped).  Images are resized to ``image_size`` =
    (H, W) where their size differs; with ``image_size=None`` all images must have the same size.

    Raises:
        FileNotFoundError / ValueError naming the offending file (missing, undecodable, or of a
        different size when ``image_size`` is None).
    """
    if image_size is not None:
        image_size = (int(image_size[0]), int(image_size[1]))
        if min(image_size) < 1:
            raise ValueError(f"image_size must be positive (H, W), got {image_size}")
    paths = [os.path.join(root, p) for p in relpaths]
    if not paths:
        raise ValueError("no images to load")
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"image file not found: {p}")
    # cv2 decoding releases the GIL, so threads give a real speed-up without pickling images.
    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(lambda p: read_rgb(p, image_size), paths))
    first = images[0].shape
    for p, im in zip(paths, images, strict=True):
        if im.shape != first:
            raise ValueError(f"image file {p} has size {im.shape[:2]} but {paths[0]} has {first[:2]}; "
                             "pass image_size to resize them to one size")
    return np.stack(images)


@dataclasses.dataclass
class PairImages:
    """Images of a pair list, each unique image stored once.

    Attributes:
        images: uint8 (N, H, W, 3) RGB, N = number of distinct image paths.
        left_index, right_index: int64 (P,) indices into ``images`` for each pair.
        issame: bool (P,).
        fold: int32 (P,) fold id per pair.
        relpaths: the N relative paths, in ``images`` order.
    """

    images: np.ndarray
    left_index: np.ndarray
    right_index: np.ndarray
    issame: np.ndarray
    fold: np.ndarray
    relpaths: list[str] = dataclasses.field(default_factory=list)


def load_pair_images(root: str, pairlist, image_size: tuple[int, int] | None = None,
                     num_workers: int | None = None, right_root: str | None = None) -> PairImages:
    """Loads the images referenced by ``pairlist`` (a :class:`tfface.data.pairs.PairList`), each once.

    LFW's 6000 pairs reference ~7700 distinct images; loading and embedding every image only once
    halves the work compared with embedding both sides of every pair.  ``right_root`` (default: ``root``)
    is where the right-hand images live, for pair lists between two folders (e.g. ID photos vs. selfies);
    ``relpaths`` then holds paths joined with their root.
    """
    index: dict[str, int] = {}
    if right_root is None or os.path.abspath(right_root) == os.path.abspath(root):
        sides = [(p, p) for p in list(pairlist.left) + list(pairlist.right)]
        base = root
    else:
        sides = ([(p, os.path.join(root, p)) for p in pairlist.left]
                 + [(p, os.path.join(right_root, p)) for p in pairlist.right])
        base = ""
    for _, key in sides:
        index.setdefault(key, len(index))
    relpaths = list(index)
    images = load_images(base, relpaths, image_size=image_size, num_workers=num_workers)
    keys = [key for _, key in sides]
    n = len(pairlist.left)
    return PairImages(
        images=images,
        left_index=np.array([index[k] for k in keys[:n]], dtype=np.int64),
        right_index=np.array([index[k] for k in keys[n:]], dtype=np.int64),
        issame=np.asarray(pairlist.issame, dtype=bool),
        fold=np.asarray(pairlist.fold, dtype=np.int32),
        relpaths=relpaths,
    )


def pair_scores(embeddings, left_index, right_index, distance: str = "cosine") -> np.ndarray:
    """Similarity per pair, float32 (P,); higher means more likely the same person.

    Embeddings are re-normalised first, so ``cosine`` is a true cosine even for unnormalised features.
    ``squared_l2`` returns the *negated* squared distance ``-||a - b||^2`` of the normalised features
    (FaceNet's metric) so that every metric keeps "higher = same"; :func:`distance_report` turns the
    thresholds of a report back into distances.  On unit vectors ``||a - b||^2 = 2 - 2 cos``, so both give
    the same ranking, accuracy and ROC; only the threshold scale differs.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    e = l2_normalize(np.asarray(embeddings, dtype=np.float32))
    a, b = e[np.asarray(left_index)], e[np.asarray(right_index)]
    if distance == "cosine":
        return np.sum(a * b, axis=1)
    return -np.sum(np.square(a - b), axis=1)


@dataclasses.dataclass
class Pca:
    """A PCA projection ``(x - mean) @ components.T`` (components: (dim, D), orthonormal rows)."""

    mean: np.ndarray
    components: np.ndarray

    def transform(self, x) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mean) @ self.components.T).astype(np.float32)


def fit_pca(features, dim: int) -> Pca:
    """Principal components of ``features`` (N, D): the top ``dim`` right singular vectors of the centred data.

    Raises ValueError if ``dim`` exceeds ``min(N - 1, D)`` (beyond that the components are not determined
    by the data).
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    limit = min(x.shape[0] - 1, x.shape[1])
    if not 1 <= dim <= limit:
        raise ValueError(f"PCA dim must be in 1..{limit} (min(N-1, D) with N={x.shape[0]} fitting vectors, "
                         f"D={x.shape[1]}), got {dim}")
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return Pca(mean=mean.astype(np.float32), components=vt[:dim].astype(np.float32))


def fold_pca_scores(embeddings, left_index, right_index, folds, pca_dim: int,
                    distance: str = "cosine") -> np.ndarray:
    """Per-fold pair scores with PCA fitted on the training folds only (Wen et al. 2016 evaluate LFW with
    PCA + cosine).

    For each fold k (sorted ids), PCA is fitted on the images of the *other* folds' pairs, leaving out any
    image that also appears in fold k, then every pair is scored in that projection (re-normalised).

    Returns:
        float32 (K, P): row k is what :func:`tfface.eval.verification.kfold_accuracy` uses for fold k.
    """
    emb = l2_normalize(np.asarray(embeddings, np.float32))
    left, right = np.asarray(left_index), np.asarray(right_index)
    folds = np.asarray(folds).reshape(-1)
    rows = []
    for f in np.unique(folds):
        test = folds == f
        seen_in_test = np.zeros(emb.shape[0], bool)
        seen_in_test[left[test]] = seen_in_test[right[test]] = True
        fit = np.zeros(emb.shape[0], bool)
        fit[left[~test]] = fit[right[~test]] = True
        fit &= ~seen_in_test
        pca = fit_pca(emb[fit], pca_dim)
        rows.append(pair_scores(pca.transform(emb), left, right, distance=distance))
    return np.stack(rows)


_THRESHOLD_KEYS = ("best_threshold", "eer_threshold")
_THRESHOLD_LIST_KEYS = ("fold_thresholds",)
_THRESHOLD_DICT_KEYS = ("tar_at_far_thresholds",)


def distance_report(report: dict) -> dict:
    """A report computed on ``-squared_l2`` scores, with its thresholds turned back into distances.

    Pairs with ``squared L2 <= threshold`` are then "same" (``decision`` says so).
    """
    out = dict(report)
    for key in _THRESHOLD_KEYS:
        out[key] = -report[key]
    for key in _THRESHOLD_LIST_KEYS:
        out[key] = [-t for t in report[key]]
    for key in _THRESHOLD_DICT_KEYS:
        out[key] = {k: -t for k, t in report[key].items()}
    out["decision"] = "same if squared L2 distance of the normalised embeddings <= threshold"
    return out


def evaluate_pair_embeddings(embeddings, left_index, right_index, issame, folds=None, pca_dim: int = 0,
                             distance: str = "cosine", return_scores: bool = False):
    """:func:`tfface.eval.verification.verification_report` of already computed embeddings.

    Args:
        embeddings: (N, D) features of the distinct images; pairs index into them.
        left_index, right_index, issame: the pairs.
        folds: fold id per pair, or None for 10 contiguous folds.
        pca_dim: 0 for none, else project onto that many principal components fitted on the training
            folds only (:func:`fold_pca_scores`); the pooled metrics then use out-of-fold scores.
        distance: ``cosine`` (thresholds on cosine, accept >=) or ``squared_l2`` (thresholds on the squared
            distance of normalised features, accept <=).

    Returns:
        the report, plus ``distance``, ``pca_dim`` and ``decision``; with ``return_scores`` also the pooled
        scores in the thresholds' scale (see :func:`evaluate_pairs`).
    """
    issame = np.asarray(issame, bool)
    if pca_dim:
        if folds is None:
            folds = verification.contiguous_folds(issame.size)
        scores = fold_pca_scores(embeddings, left_index, right_index, folds, pca_dim, distance=distance)
    else:
        scores = pair_scores(embeddings, left_index, right_index, distance=distance)
    report = verification.verification_report(scores, issame, folds=folds)
    if distance == "squared_l2":
        report = distance_report(report)
    else:
        report["decision"] = "same if cosine similarity >= threshold"
    report.update(distance=distance, pca_dim=int(pca_dim))
    if not return_scores:
        return report
    pooled = verification.out_of_fold_scores(scores, issame, folds=folds) if pca_dim else scores
    return report, (-pooled if distance == "squared_l2" else pooled)


def evaluate_pairs(embed_fn: Callable, pair_images: PairImages, batch_size: int = 64,
                   flip_fusion: str = "sum", pca_dim: int = 0, distance: str = "cosine",
                   return_scores: bool = False):
    """Embeds ``pair_images`` and returns :func:`evaluate_pair_embeddings`'s report, plus ``flip_fusion``,
    ``folds``, ``num_images`` and ``embedding_size``.  With ``return_scores``, returns ``(report, scores)``:
    the pooled per-pair scores in the report's threshold scale (cosine, or squared L2 distance; out-of-fold
    with PCA), for plots.

    Folds come from ``pair_images.fold`` (pairs.txt order); a single-fold list (e.g. a
    pairsDevTrain-style file) has no protocol folds, so 10 contiguous folds are used instead.
    """
    emb = embed_images(embed_fn, pair_images.images, batch_size=batch_size, flip_fusion=flip_fusion)
    folds = pair_images.fold if np.unique(pair_images.fold).size >= 2 else None
    out = evaluate_pair_embeddings(emb, pair_images.left_index, pair_images.right_index, pair_images.issame,
                                   folds=folds, pca_dim=pca_dim, distance=distance, return_scores=return_scores)
    report = out[0] if return_scores else out
    report.update(flip_fusion=flip_fusion, folds="pairs file" if folds is not None else "contiguous",
                  num_images=int(emb.shape[0]), embedding_size=int(emb.shape[1]))
    return out
