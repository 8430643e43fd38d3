"""tfface-prepare: convert training data into sharded TFRecords + dataset.json (what --dataset=tfrecord reads).

Usage::

    tfface-prepare folder SRC OUT [--num_shards=N] [--reencode [--jpeg_quality=95]] [--num_workers=N]
                                  [--noshuffle] [--overwrite]
    tfface-prepare rec TRAIN_REC OUT [--idx=train.idx] [--num_shards=N] [--image_size=112,112] [--num_workers=N]
                                     [--noshuffle] [--overwrite]

``folder``: SRC is an ImageFolder tree of aligned crops (one sub-folder per identity, e.g. tfface-align's
output). ``rec``: TRAIN_REC is an InsightFace/MXNet ``train.rec`` (or the directory holding it, with
``train.idx`` and ``property``). Every image is checked; corrupt ones are listed in dataset.json
(``skipped_files`` / ``skipped_records``) and in the summary, never written. An OUT that already holds a
dataset is refused unless --overwrite. All arguments are checked before any work; the logic lives in
:mod:`tfface.data.prepare`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from tfface.cli import is_image_size, parse_image_size, run_app

FLAGS = flags.FLAGS

MODES = ("folder", "rec")
_FOLDER_ONLY = ("reencode", "jpeg_quality")
_REC_ONLY = ("idx", "image_size")

flags.DEFINE_integer("num_shards", None, "Shard files; default: about 128 MiB of images per shard.")
flags.DEFINE_integer("num_workers", None, "Threads checking images; default: all CPU cores.")
flags.DEFINE_bool("shuffle", True, "Write the images in a seeded random order (readers then need only a small "
                  "shuffle buffer); --noshuffle keeps source order (rec: one sequential pass, for slow disks).")
flags.DEFINE_bool("overwrite", False, "Replace a dataset already in OUT (its stale shards are removed).")
flags.DEFINE_bool("reencode", False, "folder: re-encode every image as JPEG (smaller shards for PNG/BMP; lossy).")
flags.DEFINE_integer("jpeg_quality", 95, "folder: JPEG quality for --reencode (1..100).")
flags.DEFINE_string("idx", None, "rec: the .idx file; default: next to the .rec.")
flags.DEFINE_string("image_size", None, "rec: skip (and list) images whose size is not 'height,width', e.g. "
                    "112,112 for InsightFace packs; default: any size.")

flags.register_validator("num_shards", lambda v: v is None or v >= 1, "--num_shards must be >= 1")
flags.register_validator("num_workers", lambda v: v is None or v >= 1, "--num_workers must be >= 1")
flags.register_validator("jpeg_quality", lambda v: v is not None and 1 <= v <= 100, "--jpeg_quality must be in 1..100")



flags.register_validator("image_size", lambda v: v is None or is_image_size(v, 1),
                         "--image_size must be 'height,width' (or one number)")


def _arguments(argv) -> tuple[str, str, str]:
    """(mode, source, output) from the positional arguments, all checked; UsageError otherwise."""
    if len(argv) != 4:
        raise app.UsageError(f"expected MODE SRC OUT (MODE: {' or '.join(MODES)}), got {argv[1:]}")
    mode, src, out = argv[1:]
    if mode not in MODES:
        raise app.UsageError(f"unknown mode {mode!r}: expected {' or '.join(MODES)}")
    wrong = [n for n in (_REC_ONLY if mode == "folder" else _FOLDER_ONLY) if FLAGS[n].present]
    if wrong:
        raise app.UsageError(f"--{wrong[0]} does not apply to mode {mode!r}")
    if mode == "folder" and not os.path.isdir(src):
        raise app.UsageError(f"SRC {src!r} is not a directory (expected an ImageFolder root)")
    from tfface.data.prepare import check_output_dir, resolve_rec_path  # no TensorFlow: fast

    try:
        if mode == "rec":
            resolve_rec_path(src, FLAGS.idx)
        check_output_dir(out, FLAGS.overwrite, source_root=src if mode == "folder" else None)
    except (OSError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    return mode, src, out


def main(argv):
    mode, src, out = _arguments(argv)
    from tfface.data import prepare  # after the arguments are known good

    try:
        if mode == "folder":
            manifest = prepare.folder_to_tfrecord(src, out, num_shards=FLAGS.num_shards, reencode=FLAGS.reencode,
                                                  jpeg_quality=FLAGS.jpeg_quality, num_workers=FLAGS.num_workers,
                                                  overwrite=FLAGS.overwrite, shuffle=FLAGS.shuffle)  # fmt: skip
            skipped = [f"{s['path']}: {s['reason']}" for s in manifest["skipped_files"]]
        else:
            size = parse_image_size(FLAGS.image_size) if FLAGS.image_size else None
            manifest = prepare.recordio_to_tfrecord(src, out, idx_path=FLAGS.idx, num_shards=FLAGS.num_shards,
                                                    image_size=size, num_workers=FLAGS.num_workers,
                                                    overwrite=FLAGS.overwrite, shuffle=FLAGS.shuffle)  # fmt: skip
            skipped = [f"record {s['key']}: {s['reason']}" for s in manifest["skipped_records"]]
    except (ValueError, OSError) as e:  # bad data found during the conversion: no manifest was written
        sys.exit(f"tfface-prepare: error: {e}")
    print(f"tfface-prepare: wrote {os.path.abspath(out)}: {manifest['num_classes']} classes, "
          f"{manifest['num_images']} images, {manifest['num_shards']} shards, {len(skipped)} skipped", flush=True)
    for line in skipped[:20]:
        print(f"  skipped {line}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more (all listed in dataset.json)")


def run():
    """Console-script entry point (``tfface-prepare``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
