"""tfface-align: detect, align and crop every face photo of an identity-per-folder tree.

Example::

    tfface-align --size=112,112 --policy=largest --fallback=skip raw_photos/ aligned/

reads ``raw_photos/<identity>/**/<photo>`` and writes ``aligned/<identity>/**/<photo>.jpg`` (112x112,
ArcFace template) plus ``aligned/align_report.json`` (counts, settings, every photo that was not a clean
single-face alignment and why). Re-running the same command resumes: crops already written are skipped.
Exit status 0 when the run completed, whatever some photos' outcome (they are in the report); 1 for
usage errors (bad flags, missing SRC, DST inside SRC, DST holding crops of another size). All logic
lives in :mod:`tfface.align.batch`; this module only parses and validates flags.
"""

from __future__ import annotations

import os

from absl import app, flags

from tfface.cli import parse_image_size, run_app

FLAGS = flags.FLAGS

flags.DEFINE_string("size", "112,112", "Crop 'height,width' (or one number): 112,112 ArcFace, 112,96 SphereFace, "
                    "96,96 OpenFace, 160,160 FaceNet; other sizes scale the ArcFace template.")
flags.DEFINE_enum("policy", "largest", ["largest", "central"],
                  "Which face of a photo with several: the largest box, or the box nearest the image centre.")
flags.DEFINE_float("min_score", 0.8, "Ignore detections scoring below this (MTCNN's ONet threshold is 0.8, so "
                   "the default adds no filter; raise it for cluttered photos).")
flags.DEFINE_integer("min_face_size", 20, "Smallest face to detect, pixels of the (shrunk, see --max_side) photo; "
                     ">= 12 (PNet's window).")
flags.DEFINE_list("thresholds", ["0.6", "0.7", "0.8"], "MTCNN score thresholds of PNet, RNet, ONet.")
flags.DEFINE_integer("max_side", 1280, "Shrink photos whose longer side exceeds this before detection (the crop is "
                     "still taken from the full-resolution photo); 0 = never shrink.")
flags.DEFINE_enum("fallback", "skip", ["skip", "center_crop"],
                  "Photos with no face: skip them, or write the largest centred crop resized to --size.")
flags.DEFINE_enum("multi_face", "pick", ["pick", "skip"],
                  "Photos with several faces: write the --policy's choice (listed in the report), or skip them.")
flags.DEFINE_integer("num_workers", None, "Worker processes; default: all CPU cores. 1 = run in this process.")
flags.DEFINE_enum("format", "jpg", ["jpg", "png"], "File format of the crops (png is lossless).")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of the crops, 1-100.")


def _valid_size(text):
    try:
        from tfface.align.templates import template

        template(parse_image_size(text, minimum=16))
    except ValueError:
        return False
    return True


def _valid_thresholds(values):
    try:
        t = [float(v) for v in values]
    except (TypeError, ValueError):
        return False
    return len(t) == 3 and all(0.0 <= v <= 1.0 for v in t)


flags.register_validator("size", _valid_size, "--size must be 'height,width' (or one number), each >= 16, "
                         "and the 5-point template must fit in it")
flags.register_validator("min_score", lambda v: v is not None and 0.0 <= v <= 1.0, "--min_score must be in [0, 1]")
flags.register_validator("min_face_size", lambda v: v is not None and v >= 12, "--min_face_size must be >= 12")
flags.register_validator("thresholds", _valid_thresholds, "--thresholds must be 3 numbers in [0, 1]")
flags.register_validator("max_side", lambda v: v is not None and (v == 0 or v >= 32),
                         "--max_side must be 0 (never shrink) or >= 32")
flags.register_validator("num_workers", lambda v: v is None or v >= 1, "--num_workers must be >= 1")
flags.register_validator("jpeg_quality", lambda v: v is not None and 1 <= v <= 100, "--jpeg_quality must be in 1..100")


def _summary(report: dict, limit: int = 15) -> str:
    c = report["counts"]
    rate = report["images_per_second"]
    lines = [
        f"tfface-align: {report['src']} -> {report['dst']}",
        f"  {c['total']} photos: {c['ok']} ok, {c['multi_face']} multi-face, {c['no_face']} no face "
        f"({c['no_face_center_cropped']} centre-cropped), {c['unreadable']} unreadable, {c['error']} errors, "
        f"{c['duplicate_output']} duplicate outputs, {c['skipped_existing']} already done",
        f"  {c['written']} crops written in {report['seconds']:.1f} s"
        + (f" ({rate:.1f} photos/s)" if rate else "")
        + (f"; {c['ignored']} non-photo files ignored" if c["ignored"] else ""),
    ]
    failures = [f for f in report["failures"] if f.get("run") != "previous"]
    if failures:
        lines.append(f"  Not a clean single-face alignment ({len(failures)}):")
        lines += [f"    {f['path']}: {f['status']}: {f['reason']}" for f in failures[:limit]]
        if len(failures) > limit:
            lines.append(f"    ... and {len(failures) - limit} more")
    lines.append(f"  Report: {os.path.join(report['dst'], 'align_report.json')}")
    return "\n".join(lines)


def main(argv):
    if len(argv) != 3:
        raise app.UsageError(f"expected two arguments, SRC and DST; got {argv[1:]}")
    src, dst = argv[1], argv[2]
    # Before TensorFlow is imported (here or in the spawned workers, which inherit the environment):
    # hides its per-photo C++ warnings ("Incompatible shapes ...") when MTCNN finds no face.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfface.align.batch import align_folder, check_paths

    try:
        check_paths(src, dst)
        report = align_folder(
            src, dst, size=parse_image_size(FLAGS.size, minimum=16), policy=FLAGS.policy,
            min_score=FLAGS.min_score, fallback=FLAGS.fallback, multi_face=FLAGS.multi_face,
            num_workers=FLAGS.num_workers, min_face_size=FLAGS.min_face_size,
            thresholds=[float(v) for v in FLAGS.thresholds], max_side=FLAGS.max_side or None,
            image_format=FLAGS.format, jpeg_quality=FLAGS.jpeg_quality, progress=True)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        raise app.UsageError(str(e)) from None
    print(_summary(report), flush=True)


def run():
    """Console-script entry point (``tfface-align``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
