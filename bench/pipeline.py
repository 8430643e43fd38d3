"""Benchmark: images/s of the training input pipeline on TFRecords of aligned 112x112 JPEGs.

    python bench/pipeline.py                                  # temp data, all configurations
    python bench/pipeline.py --data_dir=/tmp/pipe --only=trainer,unseeded,cache --repeats=5

Builds its data once (reused when ``--data_dir`` is given): synthetic aligned faces
(:mod:`tfface.data.synthetic`), converted with :func:`tfface.data.prepare.folder_to_tfrecord` into
``--num_shards`` shards, and the same images as an InsightFace-style ``train.rec``. Then, per configuration,
it builds the dataset, iterates ``--warmup_batches`` batches (tracing, buffers filling; not timed) and times
the next ``--batches``: one window. ``--repeats`` rounds of one window per configuration are run, and the
median window is reported. Prints one JSON object. The input pipeline runs alone here (no model step
competing for the cores).

Configurations: ``trainer`` and ``rec`` are exactly what ``tfface-train --dataset=tfrecord`` / ``rec`` run
(:class:`tfface.train.records.RecordInput`). The others vary one choice of the real function
(:func:`tfface.data.pipeline.build_train_dataset_from_records` over
:func:`tfface.data.tfrecord.tfrecord_dataset`): ``unseeded`` (``deterministic=False`` maps), ``cache``,
``cycle_1`` / ``cycle_2`` (interleave cycle length), ``threads_1`` / ``threads_2``
(``private_threadpool_size``). ``alt_*`` are structures the library does NOT use, kept here so the choice
can be re-checked: ``alt_decode_after_batch`` (batch the encoded strings, decode with ``map_fn``),
``alt_flip_per_batch`` (decode per element, flip a whole batch with one ``where``), ``alt_dct_fast``
(``decode_jpeg(dct_method="INTEGER_FAST")``), ``alt_no_parallel`` (sequential maps). ``files`` is
:func:`tfface.data.pipeline.build_train_dataset` over the JPEG files themselves, for comparison.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Where the benchmark data goes (reused if present); default: a temp dir.")
flags.DEFINE_integer("num_images", 4000, "Training images (20 per identity).", lower_bound=40)
flags.DEFINE_integer("num_shards", 8, "TFRecord shards.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.DEFINE_integer("warmup_batches", 10, "Batches not timed.", lower_bound=0)
flags.DEFINE_integer("batches", 50, "Batches per timed window.", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Rounds, one timed window per configuration each (median reported).",
                     lower_bound=1)
flags.DEFINE_list("only", [], "Subset of configuration names (default: all).")

SIZE = (112, 112)
PER_IDENTITY = 20


def _prepare_data(root: str) -> dict:
    """Synthetic 112x112 faces -> TFRecord shards + train.rec; returns paths and counts."""
    import numpy as np

    from tfface.data.folder import scan_image_folder
    from tfface.data.prepare import folder_to_tfrecord
    from tfface.data.recordio import write_recordio
    from tfface.data.synthetic import ensure_dataset
    from tfface.data.tfrecord import read_manifest

    identities = FLAGS.num_images // PER_IDENTITY
    synth = os.path.join(root, "synth")
    ensure_dataset(synth, num_train_identities=identities, num_heldout_identities=2,
                   images_per_identity=PER_IDENTITY, image_size=SIZE, progress=False)  # fmt: skip
    records = os.path.join(root, "tfrecord")
    try:
        manifest = read_manifest(records)
        fresh = manifest["num_images"] == identities * PER_IDENTITY and manifest["num_shards"] == FLAGS.num_shards
    except (FileNotFoundError, ValueError):
        fresh = False
    if not fresh:
        folder_to_tfrecord(os.path.join(synth, "train"), records, num_shards=FLAGS.num_shards, overwrite=True)
    index = scan_image_folder(os.path.join(synth, "train"), validate=False)
    rec_dir = os.path.join(root, "rec")
    rec = os.path.join(rec_dir, "train.rec")
    if not os.path.exists(rec):
        n = len(index.paths)
        order = np.random.default_rng(0).permutation(n)  # packs are class-sorted; the reader shuffles keys

        def items():
            for key, i in enumerate(order, 1):
                with open(index.paths[i], "rb") as f:
                    yield key, float(index.labels[i]), f.read()

        os.makedirs(rec_dir, exist_ok=True)
        # InsightFace header: images 1..n, identity records n+1 .. n+C (not written: nothing reads them).
        header0 = (n + 1.0, n + 1.0 + len(index.classes))
        write_recordio(rec, os.path.join(rec_dir, "train.idx"), items(), header0=header0)
        with open(os.path.join(rec_dir, "property"), "w") as f:
            f.write(f"{len(index.classes)},{SIZE[0]},{SIZE[1]}\n")
    return {"records": records, "rec": rec, "paths": index.paths, "labels": index.labels,
            "num_images": len(index.paths), "num_classes": len(index.classes)}


def _configurations(data: dict) -> dict:
    """name -> function building the dataset of (float32 [B,112,112,3], int32 [B]) batches."""
    import tensorflow as tf

    from tfface.data.pipeline import build_train_dataset, build_train_dataset_from_records, decode_image
    from tfface.data.tfrecord import tfrecord_dataset
    from tfface.train.config import TrainConfig
    from tfface.train.records import RecordInput

    b, n, autotune = FLAGS.batch_size, data["num_images"], tf.data.AUTOTUNE

    def real(seed=0, cycle_length=None, threads=None, **kwargs):
        records = tfrecord_dataset(data["records"], seed=seed, cycle_length=cycle_length)
        ds = build_train_dataset_from_records(records, b, image_size=SIZE, seed=seed, repeat=True, **kwargs)
        if threads:
            options = tf.data.Options()
            options.threading.private_threadpool_size = threads
            ds = ds.with_options(options)
        return ds

    def trainer(dataset, data_dir):
        cfg = TrainConfig(workdir="-", dataset=dataset, data_dir=data_dir, input_size=SIZE, batch_size=b,
                          cache_images=False)  # fmt: skip
        return RecordInput(cfg).dataset_fn(tf.distribute.InputContext())

    def alternative(kind):
        """The same output from a structure the library does not use (see the module doc)."""
        ds = tfrecord_dataset(data["records"]).map(lambda x, y, s: (x, y)).repeat()
        seeds = tf.data.Dataset.random().batch(2)
        if kind == "no_parallel":
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda e, s: (tf.image.stateless_random_flip_left_right(decode_image(e[0], SIZE), s), e[1]))
            ds = ds.batch(b, drop_remainder=True).map(lambda x, y: (tf.cast(x, tf.float32), y))
        elif kind == "dct_fast":
            def load(e, s):
                image = tf.ensure_shape(tf.io.decode_jpeg(e[0], channels=3, dct_method="INTEGER_FAST"), (*SIZE, 3))
                return tf.image.stateless_random_flip_left_right(image, s), e[1]

            ds = tf.data.Dataset.zip((ds, seeds)).map(load, num_parallel_calls=autotune, deterministic=False)
            ds = ds.batch(b, drop_remainder=True, num_parallel_calls=autotune, deterministic=False)
            ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=autotune, deterministic=False)
        else:
            per_batch_seed = seeds
            if kind == "flip_per_batch":
                ds = ds.map(lambda x, y: (decode_image(x, SIZE), y), num_parallel_calls=autotune,
                            deterministic=False)  # fmt: skip
            ds = tf.data.Dataset.zip((ds.batch(b, drop_remainder=True), per_batch_seed))

            def finish(batch, seed):
                images, labels = batch
                if kind == "decode_after_batch":
                    images = tf.map_fn(lambda x: decode_image(x, SIZE), images, parallel_iterations=16,
                                       fn_output_signature=tf.TensorSpec((*SIZE, 3), tf.uint8))  # fmt: skip
                flip = tf.random.stateless_uniform((b,), seed) < 0.5
                images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
                return tf.cast(images, tf.float32), labels

            ds = ds.map(finish, num_parallel_calls=autotune, deterministic=False)
        return ds.prefetch(autotune)

    return {
        "trainer": lambda: trainer("tfrecord", data["records"]),
        "unseeded": lambda: real(seed=None),
        "cache": lambda: real(cache=True, shuffle_buffer=n),
        "cycle_1": lambda: real(cycle_length=1),
        "cycle_2": lambda: real(cycle_length=2),
        "threads_1": lambda: real(threads=1),
        "threads_2": lambda: real(threads=2),
        "alt_decode_after_batch": lambda: alternative("decode_after_batch"),
        "alt_flip_per_batch": lambda: alternative("flip_per_batch"),
        "alt_dct_fast": lambda: alternative("dct_fast"),
        "alt_no_parallel": lambda: alternative("no_parallel"),
        "rec": lambda: trainer("rec", os.path.dirname(data["rec"])),
        "files": lambda: build_train_dataset(data["paths"], data["labels"], b, image_size=SIZE, seed=0, repeat=True),
    }


def _measure(ds) -> float:
    """Images/s of ``--batches`` batches of a fresh iterator, after ``--warmup_batches``."""
    iterator = iter(ds)
    for _ in range(FLAGS.warmup_batches):
        next(iterator)
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
        images, _ = next(iterator)
    rate = FLAGS.batch_size * FLAGS.batches / (time.perf_counter() - start)
    assert images.shape == (FLAGS.batch_size, *SIZE, 3)
    return rate


def main(argv):
    del argv
    root = FLAGS.data_dir or tempfile.mkdtemp(prefix="tfface_bench_pipeline_")
    try:
        import tensorflow as tf

        data = _prepare_data(root)
        configs = _configurations(data)
        unknown = sorted(set(FLAGS.only) - set(configs))
        if unknown:
            raise app.UsageError(f"--only: unknown configurations {unknown}; known: {sorted(configs)}")
        names = [name for name in configs if not FLAGS.only or name in FLAGS.only]
        rates = {name: [] for name in names}
        # Rounds over all configurations, not all windows of one after another: load from other processes
        # then spreads over every configuration instead of skewing whichever ran during it.
        for _ in range(FLAGS.repeats):
            for name in names:
                rates[name].append(_measure(configs[name]()))
        results = {name: {"images_per_second": round(statistics.median(r)), "windows": [round(x) for x in r]}
                   for name, r in rates.items()}  # fmt: skip
        print(json.dumps({
            "benchmark": "pipeline", "num_images": data["num_images"], "num_classes": data["num_classes"],
            "num_shards": FLAGS.num_shards, "image_size": list(SIZE), "batch_size": FLAGS.batch_size,
            "warmup_batches": FLAGS.warmup_batches, "batches_per_window": FLAGS.batches, "rounds": FLAGS.repeats,
            "results": results, "fastest": max(results, key=lambda k: results[k]["images_per_second"]),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "tensorflow": tf.__version__,
        }))
    finally:
        if not FLAGS.data_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
