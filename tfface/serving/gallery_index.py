"""Vector search structures behind :class:`tfface.serving.gallery.Gallery` (top-kk *vectors* by inner product).

* :func:`exact_topk`: brute force in NumPy, blocks of 1,024 queries x 4,096 rows (16 MB of scores), a running
  top-kk per block. NumPy's BLAS matmul is what makes batched queries fast on a CPU; float16 is not an
  option there (NumPy has no float16 BLAS: ~0.3 GFLOP/s against ~65 for float32 on the 2-core machine).
* :func:`train` / :func:`make_index`: FAISS ``IndexFlatIP``, ``IndexIVFFlat`` (inner product, spherical
  k-means) and ``IndexPQFastScan`` (4-bit codes). Training results are plain arrays (IVF centroids, PQ
  codebooks) so a gallery can store them as ``.npy`` and rebuild the same index without retraining.

FAISS indexes take int64 ids (``IndexIDMap`` around the flat and PQ indexes; IVF stores ids natively).

Files: :func:`atomic_directory` (write a temporary sibling, swap it in), :func:`save_npy` / :func:`load_npy`
(never pickle, checked dtype and shape).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile

import numpy as np

MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this many training points per k-means centroid
PQ_MIN_TRAIN = MIN_POINTS_PER_CENTROID * 16  # 4-bit PQ: 16 centroids per sub-quantiser
IVF_TRAIN_PER_LIST = 40  # k-means is O(sample x nlist x D x iters): 1M, nlist=4000 built in 83 s on 2 cores
PQ_TRAIN_SAMPLE = 65536
_Q_BLOCK, _G_BLOCK = 1024, 4096  # 16 MB score blocks: ~7% faster than 64 MB ones, less RAM


def import_faiss():
    """``import faiss`` with an install hint (FAISS is the optional ``[faiss]`` extra)."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError("Gallery(backend='faiss') needs FAISS: pip install 'tfface[faiss]' (faiss-cpu)") from err
    return faiss


def exact_topk(vectors: np.ndarray, q: np.ndarray, kk: int):
    """The kk highest ``q @ vectors.T`` per query: ``(scores (Q, kk) float32, rows (Q, kk) int64)``, descending."""
    n, out_s, out_r = len(vectors), [], []
    for qs in range(0, len(q), _Q_BLOCK):
        block, cand_s, cand_r = q[qs: qs + _Q_BLOCK], [], []
        for gs in range(0, n, _G_BLOCK):
            s = block @ vectors[gs: gs + _G_BLOCK].T
            if kk >= s.shape[1]:
                idx = np.broadcast_to(np.arange(s.shape[1]), s.shape)
            elif kk == 1:  # argmax is several times cheaper than argpartition
                idx = s.argmax(axis=1)[:, None]
            else:
                idx = np.argpartition(s, s.shape[1] - kk, axis=1)[:, -kk:]
            cand_s.append(np.take_along_axis(s, idx, 1))
            cand_r.append(idx + gs)
        s, r = np.concatenate(cand_s, 1), np.concatenate(cand_r, 1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        out_s.append(np.take_along_axis(s, order, 1))
        out_r.append(np.take_along_axis(r, order, 1))
    return np.concatenate(out_s), np.concatenate(out_r).astype(np.int64)


def auto_nlist(n: int) -> int:
    """IVF cells for n vectors: ``4*sqrt(n)`` (FAISS's rule of thumb), at most n/39."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))


def default_pq_m(dim: int) -> int:
    """Largest divisor of dim that is <= dim/16: 32 sub-quantisers (16 bytes per vector) for 512-D."""
    return max(m for m in range(1, max(1, dim // 16) + 1) if dim % m == 0)


def train(kind: str, vectors: np.ndarray, *, nlist: int | None, pq_m: int, seed: int) -> np.ndarray | None:
    """IVF centroids (nlist, D) or PQ codebooks (pq_m, 16, D/pq_m) from `vectors`; None if too few to train."""
    faiss, n, dim = import_faiss(), len(vectors), vectors.shape[1]
    rng = np.random.default_rng(seed)

    def sample(size):
        return vectors[np.sort(rng.choice(n, size=min(size, n), replace=False))]

    if kind == "ivf":
        nlist = nlist or auto_nlist(n)
        if n < MIN_POINTS_PER_CENTROID * nlist:
            return None
        trainer = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        trainer.cp.niter, trainer.cp.seed = 10, seed
        trainer.train(sample(IVF_TRAIN_PER_LIST * nlist))
        return trainer.quantizer.reconstruct_n(0, nlist)
    if n < PQ_MIN_TRAIN:
        return None
    trainer = faiss.IndexPQFastScan(dim, pq_m, 4, faiss.METRIC_INNER_PRODUCT)
    trainer.pq.cp.seed = seed
    threads = faiss.omp_get_max_threads()
    # pq_m tiny k-means (16 centroids each) are all OpenMP overhead: one thread trained 65k x 512 in 0.4 s,
    # two threads on the 2-core machine with another job running took 21 s.
    faiss.omp_set_num_threads(1)
    try:
        trainer.train(sample(PQ_TRAIN_SAMPLE))
    finally:
        faiss.omp_set_num_threads(threads)
    return faiss.vector_to_array(trainer.pq.centroids).reshape(pq_m, 16, dim // pq_m)


def make_index(kind: str, dim: int, trained: np.ndarray | None, nprobe: int | None = None):
    """An empty FAISS index taking ids (``add_with_ids``), built from :func:`train`'s arrays without retraining."""
    faiss = import_faiss()
    if kind == "flat":
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(trained)  # a quantizer holding nlist centroids makes the IVF index trained
        index = faiss.IndexIVFFlat(quantizer, dim, len(trained), faiss.METRIC_INNER_PRODUCT)
        index.nprobe = nprobe or 1
        return index
    pq = faiss.IndexPQFastScan(dim, len(trained), 4, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(np.ascontiguousarray(trained, np.float32).ravel(), pq.pq.centroids)
    pq.is_trained = True
    return faiss.IndexIDMap(pq)


# -- files ----------------------------------------------------------------------------------------------------
def save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def load_npy(path: str, dtype, shape: tuple) -> np.ndarray:
    """np.load without pickle, checked against a dtype (or np.integer) and a shape (None = any size)."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays need pickle: never part of a gallery
        raise ValueError(f"{path}: not a plain numeric .npy ({err})") from err
    if (not np.issubdtype(array.dtype, dtype) or array.ndim != len(shape)
            or any(want not in (None, got) for want, got in zip(shape, array.shape, strict=False))):
        kind = "integer" if dtype is np.integer else np.dtype(dtype).name
        raise ValueError(f"{path}: expected {kind} array of shape {tuple('N' if d is None else d for d in shape)}, "
                         f"got {array.dtype} {array.shape}")
    return array


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path, marker: str):
    """Yield a temporary sibling directory to fill; when the block succeeds it replaces `path`.

    An existing `path` must contain `marker` (so a typo cannot delete an unrelated directory). It is renamed
    aside, the new directory renamed in, then the old one deleted: readers see the old or the new directory,
    never a mix. On any error the temporary directory is removed and `path` is left (or put back) as it was.
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    if os.path.lexists(path) and not os.path.isfile(os.path.join(path, marker)):
        raise FileExistsError(f"{path} exists and is not a saved gallery (no {marker}); not replacing it")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the directory from a serving user
        _fsync_dir(tmp)
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
            os.rmdir(old)  # a unique name for the previous directory
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)  # put the previous directory back
            raise
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
