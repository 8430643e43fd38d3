"""Embedding whole image sets for 1:N evaluation: identity folders (gallery, probes) and distractor sets.

* An **identity folder** has the ImageFolder layout (``root/<identity>/<images>``, as ``tfface-align``
  writes it). Every file is checked first (:func:`tfface.data.folder.scan_image_folder`); corrupt and
  non-image files are counted, named in the report and skipped, never a crash and never silent.
* A **distractor set** is either a folder of images in any layout (MegaFace's distractors are nested
  several levels deep; identities do not matter) or a ``.npy`` file of precomputed embeddings ``(M, D)``,
  memory-mapped so a million distractors need not fit in RAM twice.

Images are decoded and embedded in chunks, so memory is bounded by the chunk, not by the set.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tfface.data.folder import IMAGE_EXTENSIONS, check_image_file, list_files, scan_image_folder
from tfface.eval.features import embed_images, load_images

# Images decoded at once; 2048 crops of 112x112 are 77 MB of uint8.
LOAD_CHUNK = 2048


@dataclasses.dataclass
class EmbeddedSet:
    """Embeddings of an image set.

    Attributes:
        embeddings: float32 (N, D), L2-normalised.
        labels: identity (folder name) per embedding; empty for distractors.
        paths: source file per embedding (empty for a ``.npy`` set).
        bad_files: ``(path, reason)`` for every skipped file.
    """

    embeddings: np.ndarray
    labels: list[str]
    paths: list[str]
    bad_files: list[tuple[str, str]]


def embed_paths(embed_fn: Callable, paths: list[str], image_size=None, batch_size: int = 64,
                flip_fusion: str = "sum", chunk: int = LOAD_CHUNK) -> np.ndarray:
    """Embeds image files ``paths`` (already checked) ``chunk`` at a time; float32 (N, D)."""
    if not paths:
        raise ValueError("no images to embed")
    parts = []
    for start in range(0, len(paths), chunk):
        images = load_images("", paths[start:start + chunk], image_size=image_size)
        parts.append(embed_images(embed_fn, images, batch_size=batch_size, flip_fusion=flip_fusion))
    return np.concatenate(parts)


def embed_identity_folder(embed_fn: Callable, root: str, image_size=None, batch_size: int = 64,
                          flip_fusion: str = "sum") -> EmbeddedSet:
    """Embeds every readable image of an ImageFolder tree; the label of an image is its identity folder."""
    index = scan_image_folder(root)
    embeddings = embed_paths(embed_fn, index.paths, image_size, batch_size, flip_fusion)
    labels = [index.classes[i] for i in index.labels]
    return EmbeddedSet(embeddings, labels, list(index.paths), list(index.bad_files))


def embed_distractors(embed_fn: Callable | None, source: str, dim: int, image_size=None, batch_size: int = 64,
                      flip_fusion: str = "sum") -> EmbeddedSet:
    """Distractor embeddings from a folder of images (any layout) or a ``.npy`` file of embeddings.

    Args:
        embed_fn: the model (unused for a ``.npy`` source).
        source: folder, or ``.npy`` file with a float (M, D) array (loaded with ``allow_pickle=False``,
            memory-mapped).
        dim: the embedding size the model produces; a ``.npy`` of another width is refused.

    Raises:
        ValueError: a ``.npy`` of the wrong shape/dtype, or a folder without one readable image.
    """
    if os.path.isfile(source):
        if not source.endswith(".npy"):
            raise ValueError(f"{source}: a distractor file must be a .npy array of embeddings (M, D)")
        array = np.load(source, mmap_mode="r", allow_pickle=False)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{source}: expected a float (M, D) array, got {array.dtype} {array.shape}")
        if array.shape[1] != dim:
            raise ValueError(f"{source}: distractor embeddings have {array.shape[1]} dims but the model (with this "
                             f"flip fusion) gives {dim}")
        return EmbeddedSet(array, [], [], [])
    files = list_files(source)
    bad: list[tuple[str, str]] = []
    candidates = []
    for path in files:
        if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
            candidates.append(path)
        else:
            bad.append((path, "not an image file (extension)"))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(check_image_file, candidates))
    good = [p for p, r in zip(candidates, reasons, strict=True) if r is None]
    bad += [(p, r) for p, r in zip(candidates, reasons, strict=True) if r is not None]
    if not good:
        raise ValueError(f"no readable distractor images under {source} ({len(bad)} files skipped)")
    embeddings = embed_paths(embed_fn, good, image_size, batch_size, flip_fusion)
    return EmbeddedSet(embeddings, [], good, bad)


def split_probes(gallery_labels: list[str], probes: EmbeddedSet):
    """Splits probes into mated (identity enrolled) and non-mated ones (identity not in the gallery).

    Returns ``(mated_embeddings, mated_labels, nonmated_embeddings)``.
    """
    enrolled = set(gallery_labels)
    mated = np.array([label in enrolled for label in probes.labels], bool)
    return (probes.embeddings[mated], [lab for lab, m in zip(probes.labels, mated, strict=True) if m],
            probes.embeddings[~mated])
