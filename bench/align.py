"""Benchmark: tfface-align's speed and MTCNN's accuracy on synthetic scenes with known landmarks.

    python bench/align.py --num_identities=50 --images_per_identity=4 --workers=1,2

Writes ``num_identities x images_per_identity`` synthetic scenes (:mod:`tfface.data.synthetic_scenes`:
one procedural face per 320x320 cluttered scene, its 5 true landmarks in ``truth.json``) and reports,
as one JSON object:

* ``detection``: with one in-process :class:`~tfface.align.detect.FaceDetector`, the fraction of scenes
  whose face is found (a detection whose mean landmark error is below ``--match_nme`` x the true
  inter-ocular distance), also counting only faces scoring >= 0.9 / 0.95 (tfface-align's ``--min_score``),
  and by thirds of the identities' skin luminance; scores of found faces; other detections (false
  positives) per scene; seconds per scene.
* ``landmarks``: for found faces, the landmark error in pixels (mean, median, p95), as a fraction of
  the inter-ocular distance (NME), and the mean signed error per landmark (a systematic offset between
  MTCNN's and the renderer's landmark definitions shows up here).
* ``alignment``: the residual (``tfface.align.transform.alignment_error``, mean px in the 112x112 crop)
  of the detected landmarks and, for reference, of the true ones.
* ``throughput``: ``align_folder`` over the scenes and over copies of a real photo (matplotlib's
  ``grace_hopper.jpg``, 512x600) with each ``--workers`` count: images/s including the start-up
  (building the detector, spawning workers that import TensorFlow), the start-up seconds, and images/s
  after it, as the align report states them. With 1 worker align_folder runs in this process, where
  TensorFlow is already loaded (start-up ~0) and uses its default thread pools; with N > 1 it spawns N
  workers with one TensorFlow thread each.

Throughput depends on everything else running on the machine; compare runs only on an idle one.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_identities", 50, "Identities (folders) of synthetic scenes.")
flags.DEFINE_integer("images_per_identity", 4, "Scenes per identity.")
flags.DEFINE_integer("seed", 0, "Seed of the scenes.")
flags.DEFINE_float("difficulty", 0.3, "render_face nuisance of the scenes' faces.")
flags.DEFINE_float("max_rotation", 15.0, "In-plane rotation range of the scenes' faces, degrees.")
flags.DEFINE_float("shading", 0.6, "Head shading of the scenes' faces (0 = the renderer's flat colours).")
flags.DEFINE_list("face_size", ["100", "160"], "lo,hi face size (ArcFace frame side, px) in the scenes.")
flags.DEFINE_list("workers", ["1", "2"], "Worker counts to time align_folder with (empty: no timing).")
flags.DEFINE_integer("photo_copies", 40, "Copies of the Grace Hopper photo in the throughput tree.")
flags.DEFINE_float("match_nme", 0.35, "A detection matches the true face if its mean landmark error / IOD is below.")
flags.DEFINE_string("workdir", None, "Scratch folder (default: a temporary one, removed afterwards).")


def _stats(values) -> dict:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4),
            "p95": round(float(np.percentile(v, 95)), 4), "max": round(float(v.max()), 4)}


def _accuracy(scene_dir: str, truth: dict, min_score: float) -> dict:
    from tfface.align.decode import read_photo
    from tfface.align.detect import FaceDetector
    from tfface.align.transform import alignment_error, estimate_alignment
    from tfface.data.synthetic_render import sample_identity

    detector = FaceDetector()
    found_any, scores, extra, seconds = 0, [], 0, []
    skin, hit = [], []  # skin luminance of each scene's identity, and whether its face was found
    px, nme, signed, res_det, res_true = [], [], [], [], []
    for rel, faces in sorted(truth["faces"].items()):
        image, reason = read_photo(os.path.join(scene_dir, rel))
        assert reason is None, reason
        true = np.asarray(faces[0], np.float64)
        iod = float(np.linalg.norm(true[1] - true[0]))
        start = time.perf_counter()
        detections = detector.detect(image)
        seconds.append(time.perf_counter() - start)
        errors = [np.linalg.norm(d.landmarks - true, axis=1) for d in detections]
        best = int(np.argmin([e.mean() for e in errors])) if errors else -1
        matched = best >= 0 and errors[best].mean() / iod < FLAGS.match_nme
        extra += len(detections) - int(matched)
        identity = sample_identity(np.random.default_rng([truth["arguments"]["seed"], int(rel[3:8])]))
        skin.append(float(np.mean(identity["skin"])))
        hit.append(bool(matched))
        m = estimate_alignment(true)
        res_true.append(alignment_error(m, true)[0])
        if not matched:
            continue
        d = detections[best]
        found_any += 1
        scores.append(d.score)
        px.extend(errors[best].tolist())
        nme.append(errors[best].mean() / iod)
        signed.append(d.landmarks - true)
        res_det.append(alignment_error(estimate_alignment(d.landmarks), d.landmarks)[0])
    n = len(truth["faces"])
    names = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    bias = np.mean(signed, axis=0) if signed else np.zeros((5, 2))
    edges = np.percentile(skin, [100 / 3, 200 / 3])
    tercile = np.digitize(skin, edges)
    hit = np.asarray(hit)
    by_skin = {name: {"scenes": int((tercile == k).sum()), "rate": round(float(hit[tercile == k].mean()), 4)}
               for k, name in enumerate(("darkest_third", "middle_third", "lightest_third")) if (tercile == k).any()}
    return {
        "detection": {"scenes": n, "rate": round(found_any / n, 4),
                      "rate_by_min_score": {str(t): round(float(np.sum(np.asarray(scores) >= t)) / n, 4)
                                            for t in sorted({0.8, 0.9, 0.95, min_score})},
                      "rate_by_skin_luminance_at_0.8": by_skin, "scores_of_found_faces": _stats(scores),
                      "false_positives_per_scene": round(extra / n, 4),
                      "seconds_per_scene_one_process": _stats(seconds)},
        "landmarks": {"error_px": _stats(px), "nme_mean_error_over_iod": _stats(nme),
                      "mean_signed_error_px": {k: [round(float(v), 2) for v in b] for k, b in zip(names, bias,
                                                                                              strict=True)}},
        "alignment": {"residual_px_detected": _stats(res_det), "residual_px_true_landmarks": _stats(res_true)},
    }


def _throughput(src: str, work: str, workers: list[int]) -> dict:
    from tfface.align.batch import align_folder

    out = {}
    for n in workers:
        dst = os.path.join(work, f"out_{os.path.basename(src)}_{n}")
        shutil.rmtree(dst, ignore_errors=True)
        start = time.perf_counter()
        report = align_folder(src, dst, num_workers=n, progress=False)
        out[f"{n}_workers"] = {"images": report["counts"]["total"], "written": report["counts"]["written"],
                               "wall_seconds": round(time.perf_counter() - start, 2),
                               "images_per_second": report["images_per_second"],
                               "startup_seconds": report["startup_seconds"],
                               "images_per_second_after_startup": report["images_per_second_after_startup"]}
    return out


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from matplotlib import cbook

    from tfface.align.batch import align_folder
    from tfface.data.synthetic_scenes import write_scene_tree

    work = FLAGS.workdir or tempfile.mkdtemp(prefix="tfface-bench-align-")
    try:
        scenes = os.path.join(work, "scenes")
        shutil.rmtree(scenes, ignore_errors=True)
        truth = write_scene_tree(scenes, FLAGS.num_identities, FLAGS.images_per_identity, FLAGS.seed,
                                 face_size=tuple(int(v) for v in FLAGS.face_size), difficulty=FLAGS.difficulty,
                                 max_rotation=FLAGS.max_rotation, shading=FLAGS.shading)
        min_score = inspect.signature(align_folder).parameters["min_score"].default
        result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                  "scenes": truth["arguments"], "match_nme": FLAGS.match_nme, "min_score": min_score}
        result.update(_accuracy(scenes, truth, min_score))

        photos = os.path.join(work, "photos")
        shutil.rmtree(photos, ignore_errors=True)
        hopper = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        for i in range(FLAGS.photo_copies):
            folder = os.path.join(photos, f"person_{i % 4}")
            os.makedirs(folder, exist_ok=True)
            shutil.copy(hopper, os.path.join(folder, f"{i:04d}.jpg"))
        workers = [int(v) for v in FLAGS.workers]
        result["throughput"] = {} if not workers else {"synthetic_scenes_320x320": _throughput(scenes, work, workers),
                                "grace_hopper_512x600": _throughput(photos, work, workers)}
        print(json.dumps(result, indent=2))
    finally:
        if not FLAGS.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
