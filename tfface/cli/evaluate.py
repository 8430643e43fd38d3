"""tfface-eval: verification accuracy of an exported SavedModel on an LFW-style pairs file or an
InsightFace ``.bin`` verification set.

Examples::

    tfface-eval --model=export/face_embedding --data_dir=data/lfw_aligned --pairs=data/lfw/pairs.txt \\
        --output=reports/lfw.json
    tfface-eval --model=export/face_embedding --bin=faces_emore/lfw.bin

A ``.bin`` (lfw.bin, cfp_fp.bin, agedb_30.bin) holds aligned 112x112 crops in pair order and is read with
a restricted unpickler (``tfface.data.bins``); its folds are 10 contiguous blocks of pairs, as
InsightFace's own evaluation splits them.

``--model`` is a SavedModel version directory (``.../1``) or a model directory whose highest
integer-named version subdirectory is used (the TF-Serving layout).  The model must have a
``serving_default`` signature taking ``images`` (uint8 [N, H, W, 3] RGB) and returning ``embeddings``;
images are resized to the signature's H, W.  Prints a one-screen summary; ``--output`` also writes
the full report as JSON (atomically).

The few helpers here (model-directory resolution, signature wrapping, the summary table) are
public so they can be imported and tested; the metrics themselves live in ``tfface.eval``.
"""

from __future__ import annotations

import os
import time

from absl import app, flags, logging

import tfface
from tfface.cli import parse_image_size, run_app
from tfface.fileio import atomic_write_json
from tfface.serving.layout import resolve_saved_model

FLIP_FUSIONS = ("sum", "concat", "none")

FLAGS = flags.FLAGS


class SavedModelEmbedder:
    """Callable ``uint8 (B, H, W, 3) -> float32 (B, D)`` over a SavedModel's ``serving_default``.

    Attributes:
        model_dir: the resolved version directory.
        image_size: (H, W) from the signature's input spec, or None if not static.
    """

    def __init__(self, model_dir: str):
        import tensorflow as tf  # imported here so flag errors are reported without loading TF

        self._tf = tf
        self.model_dir = model_dir
        # Keep a reference to the loaded object: signature functions only weakly reference its
        # variables, which would be freed if the object were garbage-collected.
        self._loaded = tf.saved_model.load(model_dir)
        if "serving_default" not in self._loaded.signatures:
            raise ValueError(f"{model_dir}: no 'serving_default' signature "
                             f"(has {sorted(self._loaded.signatures.keys())})")
        self._signature = self._loaded.signatures["serving_default"]
        _, inputs = self._signature.structured_input_signature
        spec = inputs.get("images")
        if spec is None:
            raise ValueError(f"{model_dir}: serving_default has no 'images' input (inputs: {sorted(inputs)})")
        if spec.dtype != tf.uint8 or spec.shape.rank != 4:
            raise ValueError(f"{model_dir}: 'images' must be uint8 [N,H,W,3], got {spec.dtype.name} {spec.shape}")
        if spec.shape[0] is not None:
            raise ValueError(f"{model_dir}: 'images' has a fixed batch size {spec.shape[0]}; need [None,H,W,3]")
        if "embeddings" not in self._signature.structured_outputs:
            raise ValueError(f"{model_dir}: serving_default has no 'embeddings' output "
                             f"(outputs: {sorted(self._signature.structured_outputs)})")
        h, w = spec.shape[1], spec.shape[2]
        self.image_size = (int(h), int(w)) if h is not None and w is not None else None

    def __call__(self, images):
        return self._signature(images=self._tf.constant(images, dtype=self._tf.uint8))["embeddings"].numpy()


def _far_label(key: str) -> str:
    return f"{float(key):.0e}"


def format_summary(report: dict) -> str:
    """A one-screen, human-readable table of a tfface-eval report."""
    width, rule = 40, "-" * 78
    rows = [
        (f"accuracy ({report['n_folds']}-fold, mean ± std)",
         f"{100 * report['accuracy_mean']:.2f}% ± {100 * report['accuracy_std']:.2f}%"),
        ("best-threshold accuracy (optimistic)",
         f"{100 * report['best_threshold_accuracy']:.2f}%  (threshold {report['best_threshold']:.4f})"),
        ("ROC AUC", f"{report['auc']:.4f}"),
        ("EER", f"{100 * report['eer']:.2f}%  (threshold {report['eer_threshold']:.4f})"),
    ]
    for key, tar in report["tar_at_far"].items():
        rows.append((f"TAR @ FAR={_far_label(key)}",
                     f"{100 * tar:.2f}%  (threshold {report['tar_at_far_thresholds'][key]:.4f})"))
    size = report.get("image_size")
    size = f" at {size[0]}x{size[1]}" if size else ""
    n_diff = report["num_different"]
    lines = [
        f"tfface-eval  model: {report.get('model', '?')}",
        f"pairs: {report.get('pairs', '?')}",
        f"{report['num_pairs']} pairs ({report['num_same']} same / {n_diff} different), "
        f"{report.get('num_images', '?')} images{size}, flip fusion: {report.get('flip_fusion', '?')}",
        rule,
    ]
    lines += [f"{name:<{width}}{value}" for name, value in rows]
    if report["tar_at_far"]:
        lines.append(f"TAR@FAR: exact ROC points, no interpolation; FAR < 1/{n_diff} not measurable")
    else:
        lines.append(f"TAR@FAR: no FAR measurable with {n_diff} different pairs (needs FAR >= 1/{n_diff})")
    lines.append(rule)
    return "\n".join(lines)


def _validated(checker, message):
    """Wraps a checker that may raise into an absl validator whose error names the flag."""
    def validate(value):
        if value is None:
            return True  # required-ness is checked by mark_flags_as_required
        try:
            ok = checker(value)
        except (OSError, ValueError) as e:
            raise flags.ValidationError(str(e)) from e
        if not ok:
            raise flags.ValidationError(message.format(value=value))
        return True
    return validate


def _output_ok(path: str) -> bool:
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; give a file path for the JSON report")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # the nearest existing ancestor must be a writable directory
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"cannot create {path}: {parent} is not a writable directory")
    return True


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Defines tfface-eval's flags and their validators on ``fv``.

    Validators run when absl parses the command line, so bad values fail before any work, with
    absl's message ``flag --name=value: reason``.
    """
    f = flags
    f.DEFINE_string("model", None, "SavedModel version dir, or model dir (its highest integer version is used).",
                    flag_values=fv)
    f.DEFINE_string("data_dir", None, "Root directory the pairs file's image paths are relative to.",
                    flag_values=fv)
    f.DEFINE_string("pairs", None, "LFW-format pairs.txt.", flag_values=fv)
    f.DEFINE_string("bin", None, "InsightFace .bin verification set (instead of --data_dir and --pairs).",
                    flag_values=fv)
    f.DEFINE_enum("flip_fusion", "sum", FLIP_FUSIONS,
                  "Horizontal-flip test-time augmentation: sum (InsightFace), concat, or none.", flag_values=fv)
    f.DEFINE_integer("batch_size", 64, "Images per model call.", lower_bound=1, flag_values=fv)
    f.DEFINE_string("output", None, "Optional path of the JSON report (written atomically).", flag_values=fv)
    f.DEFINE_string("image_ext", ".jpg", "File extension of the images named in the pairs file.", flag_values=fv)
    f.DEFINE_string("image_size", None,
                    "'H,W' to resize images to; only needed when the signature's input size is not static.",
                    flag_values=fv)
    f.mark_flags_as_required(["model"], flag_values=fv)

    def one_source(values):
        if values["bin"] is not None:
            if values["data_dir"] is not None or values["pairs"] is not None:
                raise flags.ValidationError("--bin replaces --data_dir and --pairs; give one or the other")
        elif values["data_dir"] is None or values["pairs"] is None:
            raise flags.ValidationError("give --data_dir and --pairs (an image folder and its pairs file), "
                                        "or --bin (an InsightFace .bin set)")
        return True

    f.register_multi_flags_validator(["bin", "data_dir", "pairs"], one_source, flag_values=fv)
    validators = {
        "model": _validated(resolve_saved_model, ""),
        "bin": _validated(os.path.isfile, "{value} is not a file"),
        "data_dir": _validated(os.path.isdir, "{value} is not a directory"),
        "pairs": _validated(os.path.isfile, "{value} is not a file"),
        "output": _validated(_output_ok, ""),
        "image_size": _validated(parse_image_size, ""),
        "image_ext": _validated(lambda v: v.startswith("."), "must start with '.', got {value!r}"),
    }
    for name, checker in validators.items():
        f.register_validator(name, checker, flag_values=fv)


define_flags()


def _read_pairlist():
    """The pairs file, after checking that every image it names exists (before TF and the model load)."""
    from tfface.data.pairs import read_pairs

    try:
        pairlist = read_pairs(FLAGS.pairs, ext=FLAGS.image_ext)
    except ValueError as e:
        raise app.UsageError(f"--pairs: {e}") from e
    missing = [p for p in dict.fromkeys(list(pairlist.left) + list(pairlist.right))
               if not os.path.isfile(os.path.join(FLAGS.data_dir, p))]
    if missing:
        raise app.UsageError(f"--data_dir: {len(missing)} image(s) named in {FLAGS.pairs} are missing under "
                             f"{FLAGS.data_dir}, e.g. {missing[:3]}")
    return pairlist


def bin_pair_images(verification_bin, image_size=None):
    """``PairImages`` of an InsightFace ``.bin``: images 2k and 2k+1 form pair k; one fold id for all, so
    evaluation uses 10 contiguous folds (InsightFace's ``KFold(10, shuffle=False)``)."""
    import numpy as np

    from tfface.data.bins import decode_bin_images
    from tfface.eval.features import PairImages

    images = decode_bin_images(verification_bin, size=image_size)
    n = len(verification_bin.issame)
    return PairImages(images=images, left_index=np.arange(0, 2 * n, 2, dtype=np.int64),
                      right_index=np.arange(1, 2 * n, 2, dtype=np.int64), issame=verification_bin.issame,
                      fold=np.zeros(n, np.int32), relpaths=[])


def main(argv):
    """Runs the evaluation described by the flags (already validated by absl at parse time)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfface.eval.features import evaluate_pairs

    start = time.time()
    verification_bin = pairlist = None
    if FLAGS.bin:
        from tfface.data.bins import UnsafePickleError, read_bin

        try:
            verification_bin = read_bin(FLAGS.bin)
        except (ValueError, UnsafePickleError) as e:
            raise app.UsageError(f"--bin: {e}") from e
    else:
        pairlist = _read_pairlist()
    model_dir = resolve_saved_model(FLAGS.model)
    logging.info("loading SavedModel %s", model_dir)
    try:
        embedder = SavedModelEmbedder(model_dir)
    except ValueError as e:  # a loadable SavedModel without the expected signature
        raise app.UsageError(f"--model: {e}") from e
    image_size = embedder.image_size or (parse_image_size(FLAGS.image_size) if FLAGS.image_size else None)
    if verification_bin is not None:
        try:
            pair_images = bin_pair_images(verification_bin, image_size)
        except ValueError as e:  # undecodable images: named, never dropped (that would shift every pair)
            raise app.UsageError(f"--bin: {e}") from e
    else:
        from tfface.eval.features import load_pair_images

        pair_images = load_pair_images(FLAGS.data_dir, pairlist, image_size=image_size)
    logging.info("embedding %d images of %d pairs", len(pair_images.images), len(pair_images.issame))
    report = evaluate_pairs(embedder, pair_images, batch_size=FLAGS.batch_size, flip_fusion=FLAGS.flip_fusion)

    source = FLAGS.bin or FLAGS.pairs
    report.update(model=os.path.abspath(model_dir), pairs=os.path.abspath(source),
                  data_dir=os.path.abspath(FLAGS.data_dir) if FLAGS.data_dir else None,
                  image_size=list(pair_images.images.shape[1:3]),
                  tfface_version=tfface.__version__, elapsed_s=round(time.time() - start, 3))
    print(format_summary(report))
    if FLAGS.output:
        atomic_write_json(FLAGS.output, report)  # temp file + os.replace: never half-written
        print(f"report written to {FLAGS.output}")


def run():
    """Console-script entry point (``tfface-eval``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
