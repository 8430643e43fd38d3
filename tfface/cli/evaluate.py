"""tfface-eval: verification accuracy of an exported SavedModel on an LFW-style pairs file, an
InsightFace ``.bin`` verification set, or a pairs CSV between two folders.

Examples::

    tfface-eval --model=export/face_embedding --data_dir=data/lfw_aligned --pairs=data/lfw/pairs.txt \\
        --output=reports/lfw.json --plots_dir=reports/lfw
    tfface-eval --model=export/face_embedding --bin=faces_emore/lfw.bin
    tfface-eval --model=export/face_embedding --left_dir=ids --right_dir=selfies --pairs_csv=pairs.csv \\
        --calibrate_far=1e-3 --thresholds_output=thresholds.json
    tfface-eval --model=export/face_embedding --gallery_dir=enrolled --probe_dir=probes \\
        --distractors=megaface_distractors/ --output=reports/1n.json

1:N identification (``--gallery_dir`` and ``--probe_dir``, ImageFolder layouts): closed-set rank-1/rank-5 of the
probes whose identity is enrolled, open-set TPIR@FPIR when some probe identities are not enrolled (they
are the non-mated searches), and with ``--distractors`` (a folder of images or a ``.npy`` of embeddings) the
MegaFace rank-1 versus distractor count (:mod:`tfface.eval.identification`).

A ``.bin`` (lfw.bin, cfp_fp.bin, agedb_30.bin) holds aligned 112x112 crops in pair order and is read with
a restricted unpickler (``tfface.data.bins``); its folds are 10 contiguous blocks of pairs, as
InsightFace's own evaluation splits them.

``--model`` is a SavedModel version directory (``.../1``) or a model directory whose highest
integer-named version subdirectory is used (the TF-Serving layout).  The model must have a
``serving_default`` signature taking ``images`` (uint8 [N, H, W, 3] RGB) and returning ``embeddings``;
images are resized to the signature's H, W.  Prints a one-screen summary; ``--output`` also writes
the full report as JSON (atomically); ``--plots_dir`` adds ``roc.png`` (log-FAR axis) and
``score_histogram.png``.  Features: ``--flip_fusion`` (sum / concat / none), ``--pca_dim`` (PCA fitted on the
training folds only, as Wen et al. evaluate), ``--distance`` (cosine, or FaceNet's squared L2; thresholds
are then distances).  ``--calibrate_far`` writes the threshold for that FAR into ``thresholds.json``
(:mod:`tfface.eval.calibration`).

The few helpers here (model-directory resolution, signature wrapping) are public so they can be imported
and tested; the metrics and the summary tables live in ``tfface.eval``.
"""

from __future__ import annotations

import os
import time

from absl import app, flags, logging

import tfface
from tfface.cli import parse_image_size, run_app
from tfface.eval.summary import far_label, format_identification_summary, format_summary
from tfface.fileio import atomic_write_json
from tfface.serving.layout import resolve_saved_model
from tfface.serving.saved_model import SavedModelEmbedder

FLIP_FUSIONS = ("sum", "concat", "none")
DISTANCES = ("cosine", "squared_l2")

FLAGS = flags.FLAGS


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
    f.DEFINE_string("pairs_csv", None, "CSV of pairs 'left,right,same[,fold]' between --left_dir and --right_dir.",
                    flag_values=fv)
    f.DEFINE_string("left_dir", None, "Folder the pairs CSV's 'left' paths are relative to.", flag_values=fv)
    f.DEFINE_string("right_dir", None, "Folder the pairs CSV's 'right' paths are relative to.", flag_values=fv)
    f.DEFINE_integer("pca_dim", 0, "Project onto this many principal components, fitted on the training folds "
                     "only (0: no PCA).", lower_bound=0, flag_values=fv)
    f.DEFINE_enum("distance", "cosine", DISTANCES,
                  "cosine similarity (accept >= threshold) or squared L2 of the normalised embeddings "
                  "(FaceNet; accept <= threshold). Same accuracy and ROC, other threshold scale.", flag_values=fv)
    f.DEFINE_string("plots_dir", None, "Write roc.png and score_histogram.png (1:N: cmc.png, distractor_curve.png) "
                    "here (needs tfface[plots]).",
                    flag_values=fv)
    f.DEFINE_float("calibrate_far", None, "Write the threshold for this false accept rate to "
                   "--thresholds_output.", flag_values=fv)
    f.DEFINE_string("thresholds_output", "thresholds.json",
                    "Where --calibrate_far writes (or updates) the thresholds file.", flag_values=fv)
    f.DEFINE_string("gallery_dir", None, "1:N: enrolled identities, ImageFolder layout (root/<identity>/<images>).",
                    flag_values=fv)
    f.DEFINE_string("probe_dir", None, "1:N: probe images, ImageFolder layout; identities not in the gallery are the "
                    "non-mated searches of the open-set metrics.", flag_values=fv)
    f.DEFINE_string("distractors", None, "1:N: MegaFace-style distractors: a folder of images (any layout) or a .npy "
                    "of embeddings (M, D).", flag_values=fv)
    f.DEFINE_list("distractor_counts", None, "Distractor counts of the rank-1 curve (default 10, 100, ... and all).",
                  flag_values=fv)
    f.DEFINE_integer("distractor_seed", None, "Shuffle the distractors with this seed before taking nested subsets.",
                     flag_values=fv)
    f.mark_flags_as_required(["model"], flag_values=fv)

    sources = {"bin": ("bin",), "pairs": ("data_dir", "pairs"), "pairs_csv": ("left_dir", "right_dir", "pairs_csv"),
               "identification": ("gallery_dir", "probe_dir")}

    def one_source(values):
        given = [name for name, needs in sources.items() if any(values[n] is not None for n in needs)]
        if len(given) != 1:
            raise flags.ValidationError(
                "give exactly one source: --data_dir and --pairs (an image folder and its pairs.txt), --bin (an "
                "InsightFace .bin set), --left_dir, --right_dir and --pairs_csv, or --gallery_dir and --probe_dir "
                "(1:N identification)" +
                (f"; got flags of {given}" if given else ""))
        missing = [f"--{n}" for n in sources[given[0]] if values[n] is None]
        if missing:
            raise flags.ValidationError(f"{' and '.join(missing)} missing: "
                                        f"{' and '.join('--' + n for n in sources[given[0]])} go together")
        return True

    f.register_multi_flags_validator(["bin", "data_dir", "pairs", "left_dir", "right_dir", "pairs_csv",
                                      "gallery_dir", "probe_dir"], one_source, flag_values=fv)
    verification_only = ("pca_dim", "calibrate_far")

    def fits_mode(values):
        if values["gallery_dir"] is not None:
            used = [f"--{n}" for n in verification_only if values[n]]
            if used:
                raise flags.ValidationError(f"{', '.join(used)} apply to verification pairs, not to 1:N "
                                            "identification (--gallery_dir)")
        elif any(values[n] is not None for n in ("distractors", "distractor_counts", "distractor_seed")):
            raise flags.ValidationError("--distractors, --distractor_counts and --distractor_seed need "
                                        "--gallery_dir and --probe_dir (1:N identification)")
        return True

    f.register_multi_flags_validator(["gallery_dir", *verification_only, "distractors", "distractor_counts",
                                      "distractor_seed"], fits_mode, flag_values=fv)
    f.register_multi_flags_validator(
        ["calibrate_far", "pca_dim"], lambda v: not (v["calibrate_far"] is not None and v["pca_dim"]),
        "--calibrate_far cannot be used with --pca_dim: served embeddings do not go through the per-fold PCA",
        flag_values=fv)
    validators = {
        "model": _validated(resolve_saved_model, ""),
        "bin": _validated(os.path.isfile, "{value} is not a file"),
        "data_dir": _validated(os.path.isdir, "{value} is not a directory"),
        "pairs": _validated(os.path.isfile, "{value} is not a file"),
        "pairs_csv": _validated(os.path.isfile, "{value} is not a file"),
        "left_dir": _validated(os.path.isdir, "{value} is not a directory"),
        "right_dir": _validated(os.path.isdir, "{value} is not a directory"),
        "thresholds_output": _validated(_output_ok, ""),
        "gallery_dir": _validated(os.path.isdir, "{value} is not a directory"),
        "probe_dir": _validated(os.path.isdir, "{value} is not a directory"),
        "distractors": _validated(os.path.exists, "{value} does not exist"),
        "distractor_counts": _validated(lambda v: all(c.isdigit() and int(c) > 0 for c in v),
                                        "must be positive integers, got {value}"),
        "calibrate_far": _validated(lambda v: 0 < v < 1, "must be in (0, 1), got {value}"),
        "output": _validated(_output_ok, ""),
        "image_size": _validated(parse_image_size, ""),
        "image_ext": _validated(lambda v: v.startswith("."), "must start with '.', got {value!r}"),
    }
    for name, checker in validators.items():
        f.register_validator(name, checker, flag_values=fv)


define_flags()


def _read_pairlist():
    """The pairs file (pairs.txt or CSV), after checking that every image it names exists (before TF loads)."""
    from tfface.data.pairs import read_pairs, read_pairs_csv

    flag = "--pairs_csv" if FLAGS.pairs_csv else "--pairs"
    try:
        if FLAGS.pairs_csv:
            pairlist = read_pairs_csv(FLAGS.pairs_csv)
        else:
            pairlist = read_pairs(FLAGS.pairs, ext=FLAGS.image_ext)
    except ValueError as e:
        raise app.UsageError(f"{flag}: {e}") from e
    left_dir = FLAGS.left_dir or FLAGS.data_dir
    right_dir = FLAGS.right_dir or FLAGS.data_dir
    for side, root, paths in (("left", left_dir, pairlist.left), ("right", right_dir, pairlist.right)):
        missing = [p for p in dict.fromkeys(paths) if not os.path.isfile(os.path.join(root, p))]
        if missing:
            dir_flag = f"--{side}_dir" if FLAGS.pairs_csv else "--data_dir"
            raise app.UsageError(f"{dir_flag}: {len(missing)} {side} image(s) named in "
                                 f"{FLAGS.pairs_csv or FLAGS.pairs} are missing under {root}, e.g. {missing[:3]}")
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


def _identify(embedder, image_size) -> dict:
    """The 1:N report of --gallery_dir / --probe_dir (/ --distractors); skipped files are counted in it."""
    from tfface.eval import image_sets
    from tfface.eval.identification import identification_report

    opts = {"image_size": image_size, "batch_size": FLAGS.batch_size, "flip_fusion": FLAGS.flip_fusion}
    sets = {}
    for flag in ("gallery_dir", "probe_dir"):
        try:
            sets[flag] = image_sets.embed_identity_folder(embedder, FLAGS[flag].value, **opts)
        except ValueError as e:
            raise app.UsageError(f"--{flag}: {e}") from e
    gallery, probes = sets["gallery_dir"], sets["probe_dir"]
    mated, mated_labels, nonmated = image_sets.split_probes(gallery.labels, probes)
    if not mated_labels:
        raise app.UsageError(f"--probe_dir: none of its {len(set(probes.labels))} identities is in --gallery_dir, "
                             "so there is no mated search to measure")
    distractors = None
    if FLAGS.distractors:
        try:
            distractors = image_sets.embed_distractors(embedder, FLAGS.distractors, gallery.embeddings.shape[1],
                                                       **opts)
        except ValueError as e:
            raise app.UsageError(f"--distractors: {e}") from e
    counts = [int(c) for c in FLAGS.distractor_counts] if FLAGS.distractor_counts else None
    try:
        report = identification_report(
            gallery.embeddings, gallery.labels, mated, mated_labels,
            nonmated_probe_embeddings=nonmated if len(nonmated) else None,
            distractor_embeddings=None if distractors is None else distractors.embeddings,
            counts=counts, seed=FLAGS.distractor_seed)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    skipped = {"gallery": gallery.bad_files, "probes": probes.bad_files,
               "distractors": distractors.bad_files if distractors else []}
    report.update(gallery_dir=os.path.abspath(FLAGS.gallery_dir), probe_dir=os.path.abspath(FLAGS.probe_dir),
                  distractors=os.path.abspath(FLAGS.distractors) if FLAGS.distractors else None,
                  flip_fusion=FLAGS.flip_fusion, embedding_size=int(gallery.embeddings.shape[1]),
                  skipped_files={k: [{"path": p, "reason": r} for p, r in v] for k, v in skipped.items()},
                  num_skipped_files={k: len(v) for k, v in skipped.items()})
    return report


def _write_plots(report, scores, issame, plots_dir) -> list[str]:
    """roc.png and score_histogram.png of the pooled scores (thresholds in the report's own scale)."""
    from tfface.eval import plots

    distance = report.get("distance", "cosine") == "squared_l2"
    # The ROC needs "higher = same"; distances are negated for it and plotted as they are in the histogram.
    roc = plots.roc_from_scores(-scores if distance else scores, issame)
    far_keys = list(report["tar_at_far"])
    thresholds = {"k-fold mean": float(sum(report["fold_thresholds"]) / len(report["fold_thresholds"])),
                  "EER": report["eer_threshold"]}
    if far_keys:
        thresholds[f"FAR={far_label(far_keys[-1])}"] = report["tar_at_far_thresholds"][far_keys[-1]]
    name = "/".join(os.path.normpath(report.get("model", "model")).split(os.sep)[-2:])  # <model name>/<version>
    label = "squared L2 distance" if distance else "cosine similarity"
    return [
        plots.plot_roc(os.path.join(plots_dir, "roc.png"), {name: roc},
                       fars_marked=[float(k) for k in far_keys], title=f"ROC, {report['num_pairs']} pairs"),
        plots.plot_score_histogram(os.path.join(plots_dir, "score_histogram.png"), scores, issame,
                                   thresholds=thresholds, title=f"{label} of same / different pairs"),
    ]


def _write_identification_plots(report, plots_dir) -> list[str]:
    """cmc.png, and distractor_curve.png when distractors were given."""
    from tfface.eval import identification_plots as plots

    paths = [plots.plot_cmc(os.path.join(plots_dir, "cmc.png"), report["closed_set"]["cmc"],
                            title=f"CMC, {report['num_gallery_identities']} enrolled identities")]
    curve = report.get("distractor_curve")
    if curve:
        paths.append(plots.plot_distractor_curve(os.path.join(plots_dir, "distractor_curve.png"), curve["counts"],
                                                 curve["rank1"], title="Rank-1 vs distractors (MegaFace protocol)"))
    return paths


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
    elif not FLAGS.gallery_dir:
        pairlist = _read_pairlist()
    model_dir = resolve_saved_model(FLAGS.model)
    logging.info("loading SavedModel %s", model_dir)
    try:
        embedder = SavedModelEmbedder(model_dir)
    except ValueError as e:  # a loadable SavedModel without the expected signature
        raise app.UsageError(f"--model: {e}") from e
    image_size = embedder.image_size or (parse_image_size(FLAGS.image_size) if FLAGS.image_size else None)
    if FLAGS.gallery_dir:
        report = _identify(embedder, image_size)
        report.update(model=os.path.abspath(model_dir), tfface_version=tfface.__version__,
                      elapsed_s=round(time.time() - start, 3))
        print(format_identification_summary(report))
        if FLAGS.plots_dir:
            for path in _write_identification_plots(report, FLAGS.plots_dir):
                print(f"plot written to {path}")
        if FLAGS.output:
            atomic_write_json(FLAGS.output, report)
            print(f"report written to {FLAGS.output}")
        return
    if verification_bin is not None:
        try:
            pair_images = bin_pair_images(verification_bin, image_size)
        except ValueError as e:  # undecodable images: named, never dropped (that would shift every pair)
            raise app.UsageError(f"--bin: {e}") from e
    else:
        from tfface.eval.features import load_pair_images

        pair_images = load_pair_images(FLAGS.left_dir or FLAGS.data_dir, pairlist, image_size=image_size,
                                       right_root=FLAGS.right_dir)
    logging.info("embedding %d images of %d pairs", len(pair_images.images), len(pair_images.issame))
    try:
        report, scores = evaluate_pairs(embedder, pair_images, batch_size=FLAGS.batch_size,
                                        flip_fusion=FLAGS.flip_fusion, pca_dim=FLAGS.pca_dim,
                                        distance=FLAGS.distance, return_scores=True)
    except ValueError as e:
        if "PCA dim" in str(e):
            raise app.UsageError(f"--pca_dim: {e}") from e
        raise

    source = FLAGS.bin or FLAGS.pairs or FLAGS.pairs_csv
    report.update(model=os.path.abspath(model_dir), pairs=os.path.abspath(source),
                  data_dir=os.path.abspath(FLAGS.data_dir) if FLAGS.data_dir else None,
                  image_size=list(pair_images.images.shape[1:3]),
                  tfface_version=tfface.__version__, elapsed_s=round(time.time() - start, 3))
    if FLAGS.pairs_csv:
        report.update(left_dir=os.path.abspath(FLAGS.left_dir), right_dir=os.path.abspath(FLAGS.right_dir))
    print(format_summary(report))
    if FLAGS.plots_dir:
        for path in _write_plots(report, scores, pair_images.issame, FLAGS.plots_dir):
            print(f"plot written to {path}")
    if FLAGS.calibrate_far is not None:
        from tfface.eval.calibration import write_thresholds

        try:
            data = write_thresholds(FLAGS.thresholds_output, report, FLAGS.calibrate_far,
                                    extra={"model": report["model"], "pairs": report["pairs"],
                                           "num_pairs": report["num_pairs"]})
        except ValueError as e:
            raise app.UsageError(f"--calibrate_far: {e}") from e
        entry = data["thresholds"][data["default_far"]]
        print(f"threshold for FAR={FLAGS.calibrate_far:g}: {entry['threshold']:.4f} (TAR {100 * entry['tar']:.2f}%, "
              f"achieved FAR {entry['achieved_far']:.2g}) written to {FLAGS.thresholds_output}")
    if FLAGS.output:
        atomic_write_json(FLAGS.output, report)  # temp file + os.replace: never half-written
        print(f"report written to {FLAGS.output}")


def run():
    """Console-script entry point (``tfface-eval``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
