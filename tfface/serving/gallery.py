"""1:N identification: enrol face embeddings per identity, search queries for their top-k identities.

Embeddings are float32 and L2-normalised, so cosine similarity is the dot product. An identity's score is the
**maximum** cosine over its enrolled vectors: nearest neighbour over every enrolled image, deduplicated per
identity (as InsightFace users expect). For averaged templates, enrol the output of :func:`mean_templates`.

Design. Every enrolled vector is kept as float32 in RAM, rows in enrolment order, one label per row indexing
the identity list. That copy is the source of truth: ``save`` writes it, ``remove`` compacts it, re-ranking
reads it and FAISS indexes are built from it. Search structures (:mod:`tfface.serving.gallery_index`):
``backend="exact"`` is blocked NumPy matmul; with ``backend="faiss"``, ``index="flat"`` is ``IndexFlatIP``
(both exact, same ids), ``"ivf"`` is ``IndexIVFFlat`` (``nlist`` cells, default 4*sqrt(N); ``nprobe`` of them
scanned) and ``"pq"`` is 4-bit PQ fast-scan over all vectors with the best ``rerank`` candidates re-scored in
float32 (the fastest setting at 1M that kept recall@1 in ``bench/gallery.py``). IVF and PQ are trained at the
first ``identify`` (or :meth:`Gallery.build`) once there are enough vectors (39 per k-means centroid); until
then the search is exact. Later enrolments are added to the trained index: call ``build(retrain=True)`` after
the gallery grew a lot. FAISS ids are per-row serial numbers, which stay sorted as rows are compacted, so
``remove`` is ``remove_ids`` on the index, not a rebuild.

Top-k identities: the index returns the top ``kk`` vectors and the first ``k`` distinct labels among them are
the answer. A query with fewer than ``k`` distinct labels in a full list is searched again with ``4*kk``, up
to ``k`` x the largest identity's vector count (which always holds ``k`` identities): flat search is exact.

On-disk format (a directory; NumPy ``.npy`` read with ``allow_pickle=False``, and JSON; no pickle)::

    gallery.json        {"format": "tfface.gallery", "version": 1, "dim", "backend", "index", "nlist", "nprobe",
                         "pq_m", "rerank", "normalize", "unknown_label", "seed", "num_vectors", "num_identities"}
    identities.json     JSON list of the identity labels (str or int); position = label index
    embeddings.npy      float32 (N, D), L2-normalised
    labels.npy          int64 (N,), row -> index into identities.json
    ivf_centroids.npy   float32 (nlist, D): trained IVF cells (only if trained; reused at load, no retraining)
    pq_centroids.npy    float32 (pq_m, 16, D/pq_m): trained PQ codebooks (likewise)

``save`` writes a temporary sibling directory, renames an existing gallery aside, renames the new one in and
deletes the old one, so readers see the old or the new gallery, never a mix. Not thread-safe: serialise
``enroll``/``remove``/``build`` against ``identify`` (concurrent ``identify`` calls alone are fine once built).
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfface.fileio import atomic_write_json
from tfface.serving import gallery_index as _index

UNKNOWN = "unknown"  # default label of below-threshold and padding entries in identify()
FORMAT_VERSION = 1
NORM_TOLERANCE = 1e-3  # |‖x‖ - 1| above this is refused unless normalize=True
_REQUIRED = ("gallery.json", "identities.json", "embeddings.npy", "labels.npy")
_CONFIG_KEYS = ("dim", "backend", "index", "nlist", "nprobe", "pq_m", "rerank", "normalize", "unknown_label", "seed")


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_label(label):
    label = label.item() if isinstance(label, np.generic) else label
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise TypeError(f"identity labels must be str or int (stored as JSON), got {type(label).__name__} {label!r}")
    return label


def _as_embeddings(x, dim: int, normalize: bool, what: str) -> np.ndarray:
    """Validate (N, dim) or (dim,) input; returns float32 (N, dim), normalised if asked."""
    x = np.asarray(x)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2:
        raise ValueError(f"{what} must have shape (N, {dim}), got {x.shape}")
    if x.shape[1] != dim:
        raise ValueError(f"{what}: expected dimension {dim}, got {x.shape[1]}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{what} must be real numbers, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if normalize:
        if (norms == 0).any():
            raise ValueError(f"{what}: cannot normalise an all-zero vector (row {int(np.argmin(norms))})")
        return x / norms[:, None]
    bad = np.abs(norms - 1.0) > NORM_TOLERANCE
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{what} must be L2-normalised (row {row} has norm {norms[row]:.6g}); "
                         "normalise them or pass normalize=True")
    return x


def mean_templates(ids, embeddings, normalize: bool = False):
    """One L2-normalised mean vector per identity, in first-seen order -> ``(identities, (M, D) float32)``."""
    x = np.asarray(embeddings)
    x = _as_embeddings(x, x.shape[-1], normalize, "embeddings")
    ids = [_check_label(i) for i in ids]
    if len(ids) != len(x):
        raise ValueError(f"got {len(ids)} ids for {len(x)} embeddings")
    order = list(dict.fromkeys(ids))
    position = {label: i for i, label in enumerate(order)}
    index = np.fromiter((position[i] for i in ids), np.int64, len(ids))
    perm = np.argsort(index, kind="stable")  # rows grouped by identity, so one reduceat sums every group
    sums = np.add.reduceat(x[perm].astype(np.float64), np.searchsorted(index[perm], np.arange(len(order))))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return order, (sums / np.maximum(norms, 1e-12)).astype(np.float32)


class Gallery:
    """Enrolled embeddings searched for the top-k identities of each query (see the module docstring).

    Args:
      dim: embedding dimension D.
      backend: "exact" (NumPy) or "faiss" (``faiss-cpu``, imported lazily).
      index: with FAISS, "flat" (exact), "ivf" or "pq" (approximate).
      nlist: IVF cells; default ``round(4*sqrt(N))`` at training time, at most N/39.
      nprobe: IVF cells scanned per query; default ``max(1, nlist // 8)``. Settable later.
      pq_m: PQ sub-quantisers (must divide D); default the largest divisor of D that is <= D/16.
      rerank: PQ candidates per query re-scored with the float32 vectors.
      normalize: L2-normalise inputs instead of refusing unnormalised ones (per-call override available).
      unknown_label: label of below-threshold and padding entries; cannot be enrolled.
      seed: seeds the training sample and k-means.
    """

    def __init__(self, dim: int, backend: str = "exact", index: str = "flat", nlist: int | None = None,
                 nprobe: int | None = None, pq_m: int | None = None, rerank: int = 32, normalize: bool = False,
                 unknown_label=UNKNOWN, seed: int = 0):
        _check_positive("dim", dim)
        if backend not in ("exact", "faiss"):
            raise ValueError(f"backend must be 'exact' or 'faiss', got {backend!r}")
        if index not in ("flat", "ivf", "pq"):
            raise ValueError(f"index must be 'flat', 'ivf' or 'pq', got {index!r}")
        if backend == "exact" and index != "flat":
            raise ValueError(f"index={index!r} needs backend='faiss' (the exact backend is brute force)")
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("pq_m", pq_m), ("rerank", rerank)):
            if value is not None:
                _check_positive(name, value)
        self.dim, self.backend, self.index = int(dim), backend, index
        self.pq_m = int(pq_m) if pq_m else _index.default_pq_m(self.dim)
        if self.dim % self.pq_m:
            raise ValueError(f"pq_m={pq_m} must divide dim={dim}")
        self.nlist, self._nprobe, self.rerank = nlist, nprobe, int(rerank)
        self.normalize, self.seed = bool(normalize), int(seed)
        self.unknown_label = _check_label(unknown_label)
        if backend == "faiss":
            _index.import_faiss()  # fail at construction, not at the first search
        self._vectors = np.empty((0, self.dim), np.float32)  # capacity buffers; rows [:_n] are live
        self._labels = np.empty(0, np.int64)
        self._serials = np.empty(0, np.int64)
        self._n = self._next_serial = 0
        self._identities: list = []
        self._position: dict = {}
        self._counts = np.empty(0, np.int64)
        self._trained: dict[str, np.ndarray] = {}  # "ivf_centroids" / "pq_centroids"
        self._faiss_index = None  # built lazily; None also while too small to train
        self._lookup = None  # cached object array of identities + [unknown_label]

    # -- inspection ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def __contains__(self, identity) -> bool:
        return (identity.item() if isinstance(identity, np.generic) else identity) in self._position

    def __repr__(self) -> str:
        return (f"Gallery(dim={self.dim}, backend={self.backend!r}, index={self.index!r}, vectors={self._n}, "
                f"identities={self.num_identities})")

    @property
    def identities(self) -> list:
        """Enrolled identity labels, in first-enrolment order."""
        return list(self._identities)

    @property
    def num_identities(self) -> int:
        return len(self._identities)

    @property
    def embeddings(self) -> np.ndarray:
        """Read-only view of the enrolled float32 vectors, (len(self), dim)."""
        view = self._vectors[: self._n]
        view.flags.writeable = False
        return view

    @property
    def trained(self) -> bool:
        """Whether the approximate index is trained (always True for exact search)."""
        return self.index == "flat" or f"{self.index}_centroids" in self._trained

    @property
    def nprobe(self) -> int | None:
        """IVF cells scanned per query; default nlist // 8 (None until trained). Settable."""
        centroids = self._trained.get("ivf_centroids")
        return self._nprobe or (None if centroids is None else max(1, len(centroids) // 8))

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = _check_positive("nprobe", value)
        if self._faiss_index is not None and self.index == "ivf":
            self._faiss_index.nprobe = self._nprobe

    # -- enrolment ----------------------------------------------------------------------------------------
    def enroll(self, ids, embeddings, normalize: bool | None = None) -> None:
        """Add embeddings (N, D); `ids` is one label per row, or a single label for all rows."""
        x = _as_embeddings(embeddings, self.dim, self.normalize if normalize is None else normalize, "embeddings")
        if isinstance(ids, (str, int, np.generic)):
            ids = [ids] * len(x)
        ids = [_check_label(i) for i in ids]
        if len(ids) != len(x):
            raise ValueError(f"got {len(ids)} ids for {len(x)} embeddings")
        if self.unknown_label in ids:
            raise ValueError(f"{self.unknown_label!r} is the unknown label and cannot be enrolled")
        for label in dict.fromkeys(ids):  # validated above, so the gallery is never half-updated
            if label not in self._position:
                self._position[label] = len(self._identities)
                self._identities.append(label)
        labels = np.fromiter((self._position[i] for i in ids), np.int64, len(ids))
        start, end = self._n, self._n + len(x)
        if end > len(self._vectors):  # amortised growth for many small enrolments
            cap = max(end, 2 * len(self._vectors), 1024)
            for name in ("_vectors", "_labels", "_serials"):
                old = getattr(self, name)
                new = np.empty((cap,) + old.shape[1:], old.dtype)
                new[:start] = old[:start]
                setattr(self, name, new)
        serials = np.arange(self._next_serial, self._next_serial + len(x), dtype=np.int64)
        self._vectors[start:end], self._labels[start:end], self._serials[start:end] = x, labels, serials
        self._n, self._next_serial = end, self._next_serial + len(x)
        self._counts = np.concatenate([self._counts, np.zeros(len(self._identities) - len(self._counts), np.int64)])
        self._counts += np.bincount(labels, minlength=len(self._identities))
        self._lookup = None
        if self._faiss_index is not None and len(x):
            self._faiss_index.add_with_ids(x, serials)

    def remove(self, identity) -> None:
        """Remove every vector of `identity`; KeyError if it is not enrolled."""
        key = identity.item() if isinstance(identity, np.generic) else identity
        if key not in self._position:
            raise KeyError(f"identity {identity!r} is not enrolled in this gallery")
        label, n = self._position[key], self._n
        drop = self._labels[:n] == label
        if self._faiss_index is not None:
            self._faiss_index.remove_ids(_index.import_faiss().IDSelectorBatch(self._serials[:n][drop]))
        first = int(np.argmax(drop))  # rows before the first removed one stay put
        keep = ~drop[first:]
        m = first + int(keep.sum())
        for buf in (self._vectors, self._labels, self._serials):
            buf[first:m] = buf[first:n][keep]
        self._labels[first:m][self._labels[first:m] > label] -= 1
        self._n = m
        del self._identities[label]
        self._counts = np.delete(self._counts, label)
        self._position = {name: i for i, name in enumerate(self._identities)}
        self._lookup = None

    # -- index --------------------------------------------------------------------------------------------
    def build(self, retrain: bool = False) -> None:
        """Build the FAISS index now (else done at the first identify); `retrain` re-learns IVF/PQ from all vectors."""
        if self.backend != "faiss":
            return
        self._faiss_index = None
        if retrain:
            self._trained.clear()
        if not self.trained:
            trained = _index.train(self.index, self._vectors[: self._n], nlist=self.nlist, pq_m=self.pq_m,
                                   seed=self.seed)
            if trained is None:
                return  # too few vectors to train: searched exactly for now
            self._trained[f"{self.index}_centroids"] = trained
        index = _index.make_index(self.index, self.dim, self._trained.get(f"{self.index}_centroids"), self.nprobe)
        if self._n:
            index.add_with_ids(self._vectors[: self._n], self._serials[: self._n])
        self._faiss_index = index

    # -- search -------------------------------------------------------------------------------------------
    def _search(self, q: np.ndarray, kk: int):
        """(scores, rows) of the best kk (PQ: max(kk, rerank)) vectors per query, descending; row -1 = none."""
        if self._faiss_index is None:
            return _index.exact_topk(self._vectors[: self._n], q, kk)
        wanted = min(self._n, max(kk, self.rerank)) if self.index == "pq" else kk
        scores, serials = self._faiss_index.search(q, wanted)
        rows = np.searchsorted(self._serials[: self._n], serials)  # serials are sorted: ids -> rows
        rows[serials < 0] = -1
        if self.index == "pq":  # PQ scores are approximate: re-score the shortlist with the float32 vectors
            step = max(1, (1 << 22) // (wanted * self.dim))  # bounds the gathered (queries, wanted, D) block
            scores = np.concatenate([np.matmul(self._vectors[np.maximum(rows[i: i + step], 0)],
                                               q[i: i + step, :, None])[..., 0] for i in range(0, len(q), step)])
            scores[rows < 0] = -np.inf
            order = np.argsort(-scores, axis=1, kind="stable")
            scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
        return scores.astype(np.float32), rows

    def identify(self, embeddings, k: int = 1, threshold: float | None = None, normalize: bool | None = None):
        """Top-k distinct identities per query: ``(ids, scores)``, both (Q, k), scores descending.

        ``scores`` are float32 cosines (max over each identity's vectors). Entries scoring below `threshold`
        keep their score but get ``unknown_label``; when the gallery has fewer than k identities (or is
        empty), the missing entries are ``unknown_label`` with score ``-inf``. ``ids`` is an object array.
        "ivf" and "pq" are approximate: an identity can be missed, and a "pq" score is the exact cosine of the
        identity's shortlisted vectors, so it is never above the exact score (no extra false accepts).
        """
        k = _check_positive("k", k)
        q = _as_embeddings(embeddings, self.dim, self.normalize if normalize is None else normalize, "queries")
        labels = np.full((len(q), k), -1, np.int64)
        scores = np.full((len(q), k), -np.inf, np.float32)
        if self._n and len(q):
            if self.backend == "faiss" and self._faiss_index is None:
                self.build()
            # Each identity holds at most `most` of the top vectors, so k*most of them always hold k identities
            # (or all of them); start at k*min(most, 8) and widen 4x only for queries that are still short.
            limit = min(self._n, k * int(self._counts.max()))
            kk, todo = min(limit, 8 * k), np.arange(len(q))
            while todo.size:
                found, full = [], []
                step = max(1, (1 << 22) // kk)  # bounds the (queries, kk) candidate arrays
                for i in range(0, todo.size, step):
                    part = todo[i: i + step]
                    s, rows = self._search(q[part], kk)
                    found.append(self._distinct(s, rows, k, labels, scores, part))
                    full.append((rows >= 0).all(axis=1))  # IVF may return fewer: widening would not help
                if kk >= limit:
                    break
                todo = todo[(np.concatenate(found) < k) & np.concatenate(full)]
                kk = min(limit, 4 * kk)
        if self._lookup is None:
            self._lookup = np.array(self._identities + [self.unknown_label], dtype=object)
        ids = self._lookup[labels]  # label -1 picks the trailing unknown_label
        if threshold is not None:
            ids[scores < threshold] = self.unknown_label
        return ids, scores

    def _distinct(self, s, rows, k, labels_out, scores_out, todo) -> np.ndarray:
        """First k distinct identities in each (descending) candidate row into the outputs; returns counts."""
        lab = np.where(rows >= 0, self._labels[np.maximum(rows, 0)], -1)
        order = np.argsort(lab, axis=1, kind="stable")  # stable: each label's best candidate comes first
        sorted_lab = np.take_along_axis(lab, order, 1)
        first_sorted = np.ones(lab.shape, bool)
        first_sorted[:, 1:] = sorted_lab[:, 1:] != sorted_lab[:, :-1]
        first = np.empty_like(first_sorted)
        np.put_along_axis(first, order, first_sorted, 1)
        first &= lab >= 0
        rank = np.cumsum(first, axis=1) - 1
        qi, ci = np.nonzero(first & (rank < k))
        labels_out[todo[qi], rank[qi, ci]] = lab[qi, ci]
        scores_out[todo[qi], rank[qi, ci]] = s[qi, ci]
        return first.sum(axis=1)

    # -- persistence --------------------------------------------------------------------------------------
    def _config(self) -> dict:
        return {key: getattr(self, "_nprobe" if key == "nprobe" else key) for key in _CONFIG_KEYS}

    def save(self, path) -> None:
        """Write the gallery directory atomically (replacing a previous gallery there; see module docstring)."""
        with _index.atomic_directory(path, marker="gallery.json") as tmp:
            arrays = {"embeddings": self._vectors[: self._n], "labels": self._labels[: self._n], **self._trained}
            for key, array in arrays.items():
                _index.save_npy(os.path.join(tmp, key + ".npy"), array)
            atomic_write_json(os.path.join(tmp, "identities.json"), self._identities, indent=None)
            meta = {"format": "tfface.gallery", "version": FORMAT_VERSION, **self._config(),
                    "num_vectors": self._n, "num_identities": self.num_identities}
            atomic_write_json(os.path.join(tmp, "gallery.json"), meta)

    @classmethod
    def load(cls, path, **overrides) -> Gallery:
        """Read a saved gallery; `overrides` replace saved constructor options (e.g. ``backend="faiss"``)."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no gallery directory at {path}")
        missing = [f for f in _REQUIRED if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise FileNotFoundError(f"{path} is not a complete gallery: missing {', '.join(missing)}")
        with open(os.path.join(path, "gallery.json"), encoding="utf-8") as fh:
            meta = json.load(fh)
        if not isinstance(meta, dict) or meta.get("format") != "tfface.gallery":
            raise ValueError(f"{path}/gallery.json is not a tfface gallery description")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: gallery format version {meta.get('version')!r}; this tfface reads "
                             f"version {FORMAT_VERSION}")
        config = {key: meta[key] for key in _CONFIG_KEYS if key in meta}
        gallery = cls(**{**config, **overrides})
        with open(os.path.join(path, "identities.json"), encoding="utf-8") as fh:
            identities = [_check_label(i) for i in json.load(fh)]
        if len(set(identities)) != len(identities):
            raise ValueError(f"{path}/identities.json lists an identity twice")
        x = _index.load_npy(os.path.join(path, "embeddings.npy"), np.float32, (None, gallery.dim))
        x = _as_embeddings(x, gallery.dim, False, f"{path}/embeddings.npy")
        labels = _index.load_npy(os.path.join(path, "labels.npy"), np.integer, (len(x),))
        if labels.size and (labels.min() < 0 or labels.max() >= len(identities)):
            raise ValueError(f"{path}/labels.npy: labels outside [0, {len(identities)})")
        labels = labels.astype(np.int64)
        counts = np.bincount(labels, minlength=len(identities))
        if (counts == 0).any():
            raise ValueError(f"{path}: identity {identities[int(np.argmin(counts))]!r} has no embeddings")
        if gallery.unknown_label in identities:
            raise ValueError(f"{path}: the unknown label {gallery.unknown_label!r} is enrolled as an identity")
        gallery._vectors, gallery._labels = x, labels
        gallery._serials = np.arange(len(x), dtype=np.int64)
        gallery._n = gallery._next_serial = len(x)
        gallery._identities, gallery._counts = identities, counts.astype(np.int64)
        gallery._position = {label: i for i, label in enumerate(identities)}
        key = f"{gallery.index}_centroids"
        if os.path.isfile(os.path.join(path, key + ".npy")):  # else trained at the first search, as when new
            shape = (None, gallery.dim) if gallery.index == "ivf" else (gallery.pq_m, 16, gallery.dim // gallery.pq_m)
            gallery._trained[key] = _index.load_npy(os.path.join(path, key + ".npy"), np.float32, shape)
            if not len(gallery._trained[key]):
                raise ValueError(f"{path}/{key}.npy is empty")
        return gallery
