"""Benchmark: embedding throughput (images/s) of one network in each deployment format, on CPU.

    python bench/inference.py [--network=mobilefacenet] [--input_size=112] [--embedding_size=128]
                              [--batch_sizes=1,64] [--seconds=3] [--threads=0] [--formats=saved_model,...]

What is measured. One randomly initialised embedding model (``build_feature_model`` +
``build_embedding_model``; weights do not change the speed) is exported as

* ``saved_model``: :func:`tfface.serving.exporter.export_saved_model`, run in-process through the loaded
  ``serving_default`` signature (uint8 in, what TF-Serving executes; TF's default intra-/inter-op pools);
* ``tflite_float`` / ``tflite_dynamic_int8``: :func:`tfface.serving.formats.export_tflite`, run with the TFLite
  interpreter (XNNPACK delegate) with ``num_threads`` = ``--threads`` (0: all cores);
* ``onnxruntime``: :func:`tfface.serving.formats.export_onnx` (tf2onnx), run with ONNX Runtime's CPU provider,
  ``intra_op_num_threads`` = ``--threads`` (0: ONNX Runtime's default).

For every batch size, each runner gets 2 warm-up calls, then is called on the same uint8 batch of random
pixels until ``--seconds`` have passed (at least 3 calls); images/s = images processed / wall time, and
``ms_per_batch`` the median call. Conversion time and file size are reported per format; ``max_abs_diff``
is the largest difference of its embeddings from the SavedModel's on the benchmark batch. Other processes on
the machine skew the numbers: the load average before and after is printed.

Prints one JSON object per (format, batch size) and a final ``{"summary": ...}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FORMATS = ("saved_model", "tflite_float", "tflite_dynamic_int8", "onnxruntime")


def _time_runner(fn, batch, seconds):
    fn(batch)
    fn(batch)
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t)
    total = sum(times)
    return {"images_per_s": round(len(batch) * len(times) / total, 1),
            "ms_per_batch": round(1000 * statistics.median(times), 2), "calls": len(times)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--network", default="mobilefacenet")
    parser.add_argument("--input_size", type=int, default=112)
    parser.add_argument("--embedding_size", type=int, default=128)
    parser.add_argument("--batch_sizes", default="1,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per format and batch size")
    parser.add_argument("--threads", type=int, default=0, help="TFLite/ONNX Runtime threads; 0: all cores/default")
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args(argv)

    import tensorflow as tf

    from tfface.models.face_model import build_embedding_model, build_feature_model
    from tfface.serving import formats as fmt
    from tfface.serving.exporter import export_saved_model

    wanted = [f for f in args.formats.split(",") if f]
    unknown = set(wanted) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    threads = args.threads or None
    load_before = os.getloadavg()
    s = args.input_size
    model = build_embedding_model(build_feature_model(args.network, input_shape=(s, s, 3),
                                                      embedding_size=args.embedding_size))
    rng = np.random.default_rng(0)
    batches = {b: rng.integers(0, 256, size=(b, s, s, 3), dtype=np.uint8) for b in batch_sizes}
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfface-bench-") as tmp:
        t = time.perf_counter()
        saved = export_saved_model(model, tmp, "face")
        export_s = {"saved_model": time.perf_counter() - t}
        runners = {"saved_model": lambda: fmt.SavedModelEmbedder(saved)}
        paths = {"saved_model": saved}
        for name, quantize in (("tflite_float", "none"), ("tflite_dynamic_int8", "dynamic_int8")):
            if name in wanted:
                t = time.perf_counter()
                paths[name] = fmt.export_tflite(saved, os.path.join(tmp, name + ".tflite"), quantize=quantize)
                export_s[name] = time.perf_counter() - t
                runners[name] = (lambda p: lambda: fmt.TFLiteEmbedder(p, num_threads=threads or os.cpu_count()))(
                    paths[name])
        if "onnxruntime" in wanted:
            try:
                t = time.perf_counter()
                paths["onnxruntime"] = fmt.export_onnx(saved, os.path.join(tmp, "model.onnx"))
                export_s["onnxruntime"] = time.perf_counter() - t
                runners["onnxruntime"] = lambda: fmt.OnnxEmbedder(paths["onnxruntime"], num_threads=threads)
            except ImportError as exc:
                print(json.dumps({"format": "onnxruntime", "skipped": str(exc)}), flush=True)

        reference = {}
        for name in [f for f in FORMATS if f in runners and (f in wanted or f == "saved_model")]:
            runner = runners[name]()
            size = (os.path.getsize(paths[name]) if os.path.isfile(paths[name]) else
                    sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(paths[name]) for f in fs))
            for b in batch_sizes:
                out = runner(batches[b])
                if name == "saved_model":
                    reference[b] = out
                row = {"format": name, "batch": b, **_time_runner(runner, batches[b], args.seconds),
                       "max_abs_diff": float(np.max(np.abs(out - reference[b]))),
                       "file_mb": round(size / 2**20, 2), "convert_s": round(export_s[name], 1)}
                if name not in wanted:
                    continue
                rows.append(row)
                print(json.dumps(row), flush=True)
            del runner

    by = {(r["format"], r["batch"]): r["images_per_s"] for r in rows}
    ratios = {f"saved_model_vs_onnxruntime_b{b}": round(by[("saved_model", b)] / by[("onnxruntime", b)], 2)
              for b in batch_sizes if ("saved_model", b) in by and ("onnxruntime", b) in by}
    print(json.dumps({"summary": rows, "ratios": ratios, "network": args.network, "input_size": s,
                      "embedding_size": args.embedding_size, "threads": args.threads, "cpus": os.cpu_count(),
                      "tensorflow": tf.__version__, "python": platform.python_version(),
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
