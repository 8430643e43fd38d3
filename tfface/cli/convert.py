"""`tfface-convert`: import an arcface_torch (InsightFace) ONNX file into a tfface work directory.

    tfface-convert --onnx=w600k_r50.onnx --backbone=iresnet50 --output=runs/r50_imported
    tfface-export --workdir=runs/r50_imported            # -> SavedModel taking raw RGB pixels
    tfface-train --init_from=runs/r50_imported ...       # fine-tune from the imported weights

The converted model takes RGB pixels in [0, 255] (arcface_torch's channel order; its own
``(x - 127.5) / 127.5`` normalisation is folded into the first convolution).
"""

from __future__ import annotations

import os

from absl import app, flags

from tfface.cli import run_app

FLAGS = flags.FLAGS
flags.DEFINE_string("onnx", None, "ONNX file of an arcface_torch IResNet or MobileFaceNet (e.g. w600k_r50.onnx).")
flags.DEFINE_string("backbone", None, "tfface backbone with the same architecture (iresnet50, mbf, ...).")
flags.DEFINE_string("output", None, "Work directory to create (config.json, classes.txt, checkpoints/).")
flags.DEFINE_list("input_size", None, "H,W of the input images (default: the backbone's paper size, 112,112 "
                  "for IResNet / MobileFaceNet).")
flags.DEFINE_integer("embedding_size", None, "Embedding size D (default: read from the ONNX file).", lower_bound=1)
flags.mark_flags_as_required(["onnx", "backbone", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not os.path.isfile(FLAGS.onnx):
        raise app.UsageError(f"--onnx={FLAGS.onnx}: file not found")
    from tfface.models.convert import ConversionError, convert_onnx
    from tfface.models.registry import default_input_size, list_backbones

    if FLAGS.backbone not in list_backbones():
        raise app.UsageError(f"--backbone={FLAGS.backbone}: unknown; available: {', '.join(list_backbones())}")
    size = FLAGS.input_size or default_input_size(FLAGS.backbone)
    try:
        height, width = (int(s) for s in size)
    except ValueError as exc:
        raise app.UsageError(f"--input_size={','.join(map(str, size))}: expected H,W") from exc
    try:
        _, summary = convert_onnx(FLAGS.onnx, FLAGS.backbone, (height, width, 3), FLAGS.embedding_size,
                                  output_dir=FLAGS.output)
    except (ConversionError, FileExistsError) as exc:
        # A wrong --backbone shows up here as the first Keras layer whose ONNX weights do not fit.
        raise app.UsageError(f"{FLAGS.onnx} -> --backbone={FLAGS.backbone}: {exc}") from exc
    print(f"{FLAGS.output}: {summary['layers']} layers loaded from {summary['onnx_ops']} ONNX weight ops "
          f"({summary['folded_bn']} BatchNorms had been folded into convolutions); input: RGB pixels in [0, 255]")


def run():
    run_app(main, __name__)


if __name__ == "__main__":
    run()
