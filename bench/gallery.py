"""Benchmark: 1:N search queries/s and recall@1 against exact search, for 100k and 1M x 512 galleries, on CPU.

    python bench/gallery.py [--sizes=100000,1000000] [--queries=1000] [--dim=512] [--uniform_sizes=100000]

Data. ``clustered`` (every size) models a face gallery: identity centres uniform on the sphere,
``--per_identity`` enrolled images per identity, each ``normalise(centre + noise)`` with the noise scaled so
that two images of one person have cosine ``--mated_cos`` (0.6: what trained ArcFace-type models give for
genuine pairs) and different people ~0 (std 1/sqrt(D)). Queries are fresh images of enrolled identities.
Real embeddings are probably lumpier than uniform centres, which would help IVF (not measured here: no
1M-face embedding set offline). ``uniform`` (``--uniform_sizes``) is gallery and queries uniform on the
sphere, one vector per identity: the worst case for any approximate index (the exact top-1 beats the
runner-up by a hair), reported so nobody reads the clustered recall as a guarantee.

Recall@1 = fraction of queries whose top-1 *identity* equals the exact search's top-1 identity. Queries/s =
all ``--queries`` in one ``identify(k=1)`` call (batched), FAISS using its default OpenMP threads (all
cores); ``exact_numpy_f32_unbatched`` sends them one at a time. Build time = copy + training + adding.
``index_bytes`` = the FAISS index as serialised (about its RAM; exact rows: the float32 matrix); every
Gallery also keeps the float32 vectors (N x D x 4 bytes) for save/remove/re-ranking. Methods (Gallery API
unless marked raw):

* ``exact_numpy_f32``: ``Gallery(backend="exact")``, blocked NumPy matmul.
* ``exact_numpy_f16``: raw NumPy float16 matmul on a slice, extrapolated to the gallery (no BLAS for float16).
* ``faiss_flat``: ``Gallery(backend="faiss")``, ``IndexFlatIP``.
* ``faiss_ivf_flat``: ``Gallery(index="ivf")``, nlist = 4*sqrt(N), one row per ``--nprobes`` value.
* ``faiss_ivf_sq8_rerank`` (raw faiss): ``IndexIVFScalarQuantizer`` 8-bit on the same IVF cells, top
  ``--sq_shortlist`` re-scored with the float32 vectors.
* ``faiss_pq4fs_rerank``: ``Gallery(index="pq")``, 4-bit PQ fast-scan over all vectors with ``--pq_ms``
  sub-quantisers, the best ``--reranks`` candidates re-scored exactly.

Prints one JSON object per row and a final ``{"summary": [...], ...}`` line with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from tfface.serving.gallery import Gallery

CHUNK = 65536


def make_data(kind: str, n: int, queries: int, dim: int, per_identity: int, mated_cos: float, seed: int):
    """(gallery (n, dim) float32, labels (n,), queries (Q, dim), query labels (Q,)); generated in chunks."""
    rng = np.random.default_rng(seed)

    def unit(x):
        x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        return x

    gallery = np.empty((n, dim), np.float32)
    if kind == "uniform":
        for s in range(0, n, CHUNK):
            gallery[s: s + CHUNK] = unit(rng.standard_normal((min(CHUNK, n - s), dim), dtype=np.float32))
        return gallery, np.arange(n), unit(rng.standard_normal((queries, dim), dtype=np.float32)), None
    # E[cos] of two images of one identity is ~1 / (1 + sigma^2) for noise of norm sigma around a unit centre
    sigma = np.float32(np.sqrt(1.0 / mated_cos - 1.0) / np.sqrt(dim))
    num_ids = -(-n // per_identity)
    centres = np.empty((num_ids, dim), np.float32)
    for s in range(0, num_ids, CHUNK):
        centres[s: s + CHUNK] = unit(rng.standard_normal((min(CHUNK, num_ids - s), dim), dtype=np.float32))
    labels = np.arange(n) // per_identity
    for s in range(0, n, CHUNK):
        noise = rng.standard_normal((min(CHUNK, n - s), dim), dtype=np.float32)
        noise *= sigma
        noise += centres[labels[s: s + CHUNK]]
        gallery[s: s + CHUNK] = unit(noise)
    qlabels = rng.integers(0, num_ids, queries)
    q = unit(centres[qlabels] + sigma * rng.standard_normal((queries, dim), dtype=np.float32))
    return gallery, labels, q, qlabels


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).size)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def run_size(kind, n, args, emit):
    (g, labels, q, qlabels), gen_s = timed(lambda: make_data(kind, n, args.queries, args.dim, args.per_identity,
                                                             args.mated_cos, args.seed))
    base = {"data": kind, "gallery": n, "dim": args.dim, "queries": len(q)}
    stats = {"generate_s": round(gen_s, 1)}
    if kind == "clustered" and args.per_identity > 1:
        m = min(n // args.per_identity, 10000)
        stats["mated_cos_mean"] = round(float(np.einsum("ij,ij->i", g[0: m * args.per_identity: args.per_identity],
                                                        g[1: m * args.per_identity: args.per_identity]).mean()), 3)
    stats["nonmated_cos_std"] = round(float((g[:2000] @ g[-2000:].T).std()), 3)
    emit({**base, "method": "data", **stats})

    def row(method, ids, seconds, build_s=None, nbytes=None, queries=None, **extra):
        queries = queries or len(q)
        top1 = None if ids is None else ids[:, 0]
        r = {**base, "method": method, **extra, "queries_per_s": round(queries / seconds, 1),
             "recall_at_1": None if ids is None else round(float(np.mean(top1 == ref[: len(top1)])), 4),
             "build_s": None if build_s is None else round(build_s, 2), "index_bytes": nbytes}
        if kind == "clustered" and ids is not None:
            r["true_identity_at_1"] = round(float(np.mean(top1 == qlabels[: len(top1)])), 4)
        emit(r)

    def gallery(**kw):
        gal = Gallery(args.dim, **kw)
        _, build_s = timed(lambda: (gal.enroll(labels, g), gal.build()))
        return gal, build_s

    # exact reference: recall 1 by definition
    gal, build_s = gallery()
    (ids, _), seconds = timed(gal.identify, q, k=1)
    ref = np.asarray(ids[:, 0], dtype=np.int64)
    row("exact_numpy_f32", ids, seconds, build_s, n * args.dim * 4)
    few = min(len(q), args.unbatched_queries)
    (one, seconds) = timed(lambda: np.concatenate([gal.identify(q[i], k=1)[0] for i in range(few)]))
    row("exact_numpy_f32_unbatched", one, seconds, queries=few)
    del gal
    rows16 = min(n, 20000)
    g16, q16 = g[:rows16].astype(np.float16), q[:4].astype(np.float16)
    _, seconds = timed(lambda: q16 @ g16.T)
    row("exact_numpy_f16", None, seconds * n / rows16, queries=len(q16), extrapolated_from_rows=rows16)

    if not args.skip_faiss:
        import faiss

        gal, build_s = gallery(backend="faiss")
        (ids, _), seconds = timed(gal.identify, q, k=1)
        row("faiss_flat", ids, seconds, build_s, index_bytes(gal._faiss_index))
        del gal
        gal, build_s = gallery(backend="faiss", index="ivf", nlist=args.nlist or None)
        nbytes, centroids = index_bytes(gal._faiss_index), gal._trained["ivf_centroids"]
        for nprobe in args.nprobes:
            gal.nprobe = nprobe
            (ids, _), seconds = timed(gal.identify, q, k=1)
            row("faiss_ivf_flat", ids, seconds, build_s, nbytes, nlist=len(centroids), nprobe=nprobe)
        del gal
        if args.sq_shortlist:
            quantizer = faiss.IndexFlatIP(args.dim)
            quantizer.add(centroids)
            sq = faiss.IndexIVFScalarQuantizer(quantizer, args.dim, len(centroids), faiss.ScalarQuantizer.QT_8bit,
                                               faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(args.seed)
            _, build_s = timed(lambda: (sq.train(g[rng.choice(n, min(n, 65536), replace=False)]), sq.add(g)))
            for nprobe in args.nprobes:
                sq.nprobe = nprobe

                def search():
                    _, cand = sq.search(q, args.sq_shortlist)
                    exact = np.matmul(g[np.maximum(cand, 0)], q[:, :, None])[..., 0]
                    exact[cand < 0] = -np.inf
                    return labels[cand[np.arange(len(q)), exact.argmax(1)]][:, None]

                ids, seconds = timed(search)
                row("faiss_ivf_sq8_rerank", ids, seconds, build_s, index_bytes(sq), nlist=len(centroids),
                    nprobe=nprobe, shortlist=args.sq_shortlist, raw_faiss=True)
            del sq
        for pq_m in args.pq_ms:
            gal, build_s = gallery(backend="faiss", index="pq", pq_m=pq_m or None)
            for rerank in args.reranks:
                gal.rerank = rerank
                (ids, _), seconds = timed(gal.identify, q, k=1)
                row("faiss_pq4fs_rerank", ids, seconds, build_s, index_bytes(gal._faiss_index), pq_m=gal.pq_m,
                    rerank=rerank)
            del gal


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[100000, 1000000], help="Clustered gallery sizes N.")
    parser.add_argument("--uniform_sizes", type=ints, default=[100000], help="Uniform-on-sphere gallery sizes.")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per_identity", type=int, default=2, help="Enrolled images per identity (clustered).")
    parser.add_argument("--mated_cos", type=float, default=0.6, help="Mean cosine of two images of one identity.")
    parser.add_argument("--nlist", type=int, default=0, help="IVF cells; 0 = the Gallery default 4*sqrt(N).")
    parser.add_argument("--nprobes", type=ints, default=[16, 64, 256, 512, 1024])
    parser.add_argument("--sq_shortlist", type=int, default=32, help="IVF-SQ8 candidates re-scored; 0 skips it.")
    parser.add_argument("--pq_ms", type=ints, default=[0, 16, 64],
                        help="PQ sub-quantisers (bytes per vector x 2); 0 = the Gallery default D/16.")
    parser.add_argument("--reranks", type=ints, default=[8, 32])
    parser.add_argument("--unbatched_queries", type=int, default=20)
    parser.add_argument("--skip_faiss", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = []

    def emit(r):
        print(json.dumps(r), flush=True)
        results.append(r)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for kind, sizes in (("clustered", args.sizes), ("uniform", args.uniform_sizes)):
        for n in sizes:
            run_size(kind, n, args, emit)
    print(json.dumps({"summary": [r for r in results if r["method"] != "data"],
                      "data": [r for r in results if r["method"] == "data"],
                      "load_before": load_before, "load_after": os.getloadavg(), "cpus": os.cpu_count(),
                      "machine": platform.processor() or platform.machine(),
                      "total_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
