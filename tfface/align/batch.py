"""Aligning a folder tree of raw photos into 5-point-aligned face crops (what ``tfface-align`` runs).

Input and output use the identity-per-folder layout that :mod:`tfface.data.folder` trains on::

    SRC/<identity>/<any/sub/folders>/<photo>.jpg|.png|...   ->   DST/<identity>/<...>/<photo>.<format>
    DST/align_report.json

Per photo (:func:`align_image`): decode (:mod:`tfface.align.decode`), detect (:class:`FaceDetector`),
choose one face (:func:`select_face`), warp it onto the template (:func:`aligned_crop`: the similarity
warp of :func:`tfface.align.transform.align_face`, anti-aliased for large faces), encode, write
atomically. Outcomes:

* ``ok`` - exactly one face (scoring >= ``min_score``); its crop is written.
* ``multi_face`` - several faces; with ``multi_face="pick"`` (default) the policy's choice (largest or
  most central) is written, because in identity folders the subject is nearly always the main face and
  dropping every group photo would lose data; with ``"skip"`` nothing is written. Either way the image
  is listed in the report with the number of faces and which one was taken, to be checked.
* ``no_face`` - nothing written with ``fallback="skip"``; with ``fallback="center_crop"`` the largest
  centred region of the output's aspect ratio is resized to the output size, which is what
  InsightFace-style pipelines do with photos that are already roughly cropped face images (LFW-like
  250x250 crops, where the detector sometimes misses a face that fills the frame).
* ``unreadable`` - empty, corrupt, truncated or non-image file; ``error`` - anything else that went
  wrong on this one photo (the exception is the reason); ``duplicate_output`` - a second source maps to
  an output path already claimed (``a.jpg`` and ``a.png`` both become ``a.jpg``); the first in sorted
  order wins, the other is never written over it.

Resuming: an output that exists is complete (every crop is written to a hidden temporary file and
renamed), so a re-run skips it (``skipped_existing``) and a killed run continues where it stopped;
leftover temporary files (``.name.*.tmp``) are hidden and never taken for crops. Failures that wrote
nothing are retried. The report is written when the run starts (``complete: false``) and again when it
ends; a re-run refuses a DST whose crops have another size or format, and a non-empty DST that has no
report (a folder this function did not create). Failure entries of earlier runs whose crops are now
skipped are kept (with ``"run": "previous"``), so a resumed report still lists every crop to check.

Report (``DST/align_report.json``, sorted keys): ``counts`` (``total`` photos = ``ok`` + ``multi_face`` +
``no_face`` + ``unreadable`` + ``error`` + ``duplicate_output`` + ``skipped_existing``; also ``written``,
``no_face_center_cropped``, ``ignored`` non-photo files), ``settings``, ``seconds``, ``images_per_second``
(photos processed this run / seconds), ``startup_seconds`` and ``images_per_second_after_startup``,
``failures`` (``path`` relative to SRC, ``status``, ``reason``, ``written``; with ``faces``, ``chosen``,
``score`` and ``box`` where faces were found) and ``ignored`` (path, reason).

Parallelism: ``num_workers`` spawned processes, one detector each (:mod:`tfface.align.workers`), while
the parent only lists files, counts results and writes the report (it never imports TensorFlow); with
``num_workers=1`` everything runs in the calling process.
"""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np

import tfface
from tfface.align.decode import PHOTO_EXTENSIONS, read_photo
from tfface.align.detect import DEFAULT_MAX_SIDE, POLICIES, check_detector_settings, select_face
from tfface.align.progress import Progress
from tfface.align.templates import parse_size
from tfface.align.transform import align_face, estimate_alignment
from tfface.align.workers import available_cores, build_detector, run_pool
from tfface.data.folder import list_files
from tfface.fileio import atomic_write_bytes, atomic_write_json

REPORT_NAME = "align_report.json"
FALLBACKS = ("skip", "center_crop")
MULTI_FACE = ("pick", "skip")
FORMATS = ("jpg", "png")
COUNT_KEYS = ("ok", "multi_face", "no_face", "unreadable", "error", "duplicate_output", "skipped_existing")


def center_crop(image: np.ndarray, size) -> np.ndarray:
    """The largest centred region of ``image`` with the aspect ratio of ``size`` = (height, width),
    resized to ``size`` (area interpolation when shrinking, bilinear when enlarging)."""
    h, w = parse_size(size)
    ih, iw = image.shape[:2]
    if iw * h >= ih * w:  # image relatively wider than the output: full height, centred columns
        ch, cw = ih, max(1, min(iw, round(ih * w / h)))
    else:
        ch, cw = max(1, min(ih, round(iw * h / w))), iw
    y0, x0 = (ih - ch) // 2, (iw - cw) // 2
    crop = image[y0:y0 + ch, x0:x0 + cw]
    interpolation = cv2.INTER_AREA if ch > h else cv2.INTER_LINEAR
    return cv2.resize(crop, (w, h), interpolation=interpolation)


def aligned_crop(image: np.ndarray, landmarks, size) -> np.ndarray:
    """:func:`~tfface.align.transform.align_face`, anti-aliased when the face is much larger than the crop.

    ``cv2.warpAffine``'s bilinear sampling reads only the 2x2 source pixels around each output pixel, so
    shrinking a face by more than 2x (a 500 px face into a 112 px crop) skips pixels and aliases fine
    texture. Then the part of the photo the crop covers is first shrunk with area averaging to the
    crop's scale, and the warp that remains is close to 1:1.
    """
    m = estimate_alignment(landmarks, size)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale >= 0.5:
        return align_face(image, landmarks, size)
    h, w = parse_size(size)
    inverse = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    pad = 2.0 / scale  # a couple of output pixels of margin for the interpolation
    x0, y0 = (int(max(0, np.floor(corners[:, i].min() - pad))) for i in (0, 1))
    x1 = int(min(image.shape[1], np.ceil(corners[:, 0].max() + pad)))
    y1 = int(min(image.shape[0], np.ceil(corners[:, 1].max() + pad)))
    if x1 - x0 < 2 or y1 - y0 < 2:  # the crop lies (nearly) outside the photo: nothing to anti-alias
        return align_face(image, landmarks, size)
    region = image[y0:y1, x0:x1]
    nw, nh = max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale))
    small = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
    fx, fy = nw / region.shape[1], nh / region.shape[0]
    # Pixel centres are integer coordinates: x' = (x - x0 + 0.5) * fx - 0.5.
    lm = (np.asarray(landmarks, np.float64) - (x0, y0) + 0.5) * (fx, fy) - 0.5
    return align_face(small, lm, size)


def _encode(image_rgb: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if image_format == "jpg" else []
    ok, buf = cv2.imencode("." + image_format, bgr, params)
    if not ok:
        raise RuntimeError(f"{image_format} encoding failed")
    return buf.tobytes()


def align_image(detector, src_path: str, dst_path: str, options: dict) -> dict:
    """Aligns one photo and writes its crop (if any); returns the outcome (see the module docstring).

    ``options``: size, policy, min_score, fallback, multi_face, format, jpeg_quality. Returns a dict with
    ``status``, ``reason`` (None when ok), ``written`` and, when faces were found, ``faces`` (how many
    scored >= min_score), ``chosen`` (index of the kept one among them, by score), ``score`` and ``box``.
    """
    image, reason = read_photo(src_path)
    if image is None:
        return {"status": "unreadable", "reason": reason, "written": False}
    detections = detector.detect(image)
    chosen, status = select_face(detections, image.shape, options["policy"], options["min_score"])
    result = {"status": status, "reason": None, "written": False}
    crop = None
    if chosen is not None:
        faces = [d for d in detections if d.score >= options["min_score"]]
        result.update(faces=len(faces), chosen=faces.index(chosen), score=round(chosen.score, 4),
                      box=[round(float(v), 1) for v in chosen.box])
    if status == "no_face":
        seen = f" ({len(detections)} below min_score {options['min_score']})" if detections else ""
        if options["fallback"] == "center_crop":
            crop = center_crop(image, options["size"])
            result["reason"] = f"no face detected{seen}; centre crop written"
        else:
            result["reason"] = f"no face detected{seen}; skipped"
    elif status == "multi_face":
        which = f"{result['faces']} faces; #{result['chosen']} is the {options['policy']} (score {chosen.score:.3f})"
        if options["multi_face"] == "pick":
            crop = aligned_crop(image, chosen.landmarks, options["size"])
            result["reason"] = which + ", written"
        else:
            result["reason"] = which + "; skipped (multi_face=skip)"
    else:
        crop = aligned_crop(image, chosen.landmarks, options["size"])
    if crop is not None:
        atomic_write_bytes(dst_path, _encode(crop, options["format"], options["jpeg_quality"]))
        result["written"] = True
    return result


def _align_chunk(tasks, detector, options: dict) -> list[tuple[str, dict]]:
    """Runs :func:`align_image` over ``(rel, src, dst)`` tasks; an exception becomes that photo's error."""
    out = []
    for rel, src, dst in tasks:
        try:
            result = align_image(detector, src, dst, options)
        except Exception as e:  # one bad photo (or detector failure on it) must not stop the run
            result = {"status": "error", "reason": f"{type(e).__name__}: {e}", "written": False}
        out.append((rel, result))
    return out


def _validate_args(size, policy, min_score, fallback, multi_face, image_format, jpeg_quality, num_workers):
    size = parse_size(size)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score must be a number in [0, 1], got {min_score!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if multi_face not in MULTI_FACE:
        raise ValueError(f"multi_face must be one of {MULTI_FACE}, got {multi_face!r}")
    if image_format not in FORMATS:
        raise ValueError(f"image_format must be one of {FORMATS}, got {image_format!r}")
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an integer in [1, 100], got {jpeg_quality!r}")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 1):
        raise ValueError(f"num_workers must be a positive integer or None, got {num_workers!r}")
    return size


def check_paths(src, dst) -> tuple[str, str]:
    """Absolute ``(src, dst)``; raises if SRC is not a folder or one of them lies inside the other."""
    src, dst = os.path.abspath(os.fspath(src)), os.path.abspath(os.fspath(dst))
    if not os.path.isdir(src):
        raise FileNotFoundError(f"source folder does not exist or is not a folder: {src}")
    rs, rd = os.path.realpath(src), os.path.realpath(dst)
    if rd == rs or rd.startswith(rs + os.sep):
        raise ValueError(f"the output folder {dst} must not be inside the source folder {src}")
    if rs.startswith(rd + os.sep):
        raise ValueError(f"the source folder {src} must not be inside the output folder {dst}")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise NotADirectoryError(f"output path exists and is not a folder: {dst}")
    return src, dst


def _previous_report(dst: str, settings: dict) -> dict | None:
    """The report of an earlier run into ``dst`` (None if none); refuses an incompatible or foreign DST."""
    path = os.path.join(dst, REPORT_NAME)
    if not os.path.exists(path):
        if os.path.isdir(dst) and any(not n.startswith(".") for n in os.listdir(dst)):
            raise ValueError(f"{dst} is not empty and has no {REPORT_NAME}: it was not written by tfface-align; "
                             "choose an empty or new output folder")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        old = report["settings"]
        if not isinstance(old, dict) or not isinstance(report.get("failures", []), list):
            raise TypeError("unexpected structure")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read {path} of an earlier run ({e}); remove it or choose a new output folder") from e
    for key in ("size", "format"):
        if old.get(key) != settings[key]:
            raise ValueError(f"{dst} holds crops made with {key}={old.get(key)!r}, this run asks for "
                             f"{settings[key]!r}; use another output folder (or the same {key})")
    return report


def _plan(src: str, dst: str, image_format: str):
    """Lists the work: (tasks, skipped rels, duplicate results, ignored files, total images)."""
    tasks, skipped, duplicates, ignored, claimed = [], [], [], [], {}
    images = 0
    for path in list_files(src):
        rel = os.path.relpath(path, src)
        if os.sep not in rel:
            ignored.append({"path": rel, "reason": "not inside an identity folder"})
            continue
        if os.path.splitext(rel)[1].lower() not in PHOTO_EXTENSIONS:
            ignored.append({"path": rel, "reason": "not an image file type"})
            continue
        images += 1
        out_rel = os.path.splitext(rel)[0] + "." + image_format
        if out_rel in claimed:
            duplicates.append((rel, {"status": "duplicate_output", "written": False,
                                     "reason": f"output {out_rel} already comes from {claimed[out_rel]}"}))
            continue
        claimed[out_rel] = rel
        out = os.path.join(dst, out_rel)
        if os.path.exists(out):
            skipped.append(rel)
        else:
            tasks.append((rel, path, out))
    return tasks, skipped, duplicates, ignored, images


def align_folder(src, dst, size=(112, 112), policy: str = "largest", min_score: float = 0.8,
                 fallback: str = "skip", multi_face: str = "pick", num_workers: int | None = None,
                 min_face_size: int = 20, thresholds=(0.6, 0.7, 0.8), max_side: int | None = DEFAULT_MAX_SIDE,
                 image_format: str = "jpg", jpeg_quality: int = 95, progress: bool = True,
                 detector=None) -> dict:
    """Aligns every photo under ``src`` into ``dst`` (layout, outcomes and resuming: module docstring).

    Args:
      src: identity-per-folder tree of photos (:data:`~tfface.align.decode.PHOTO_EXTENSIONS`; other
        files, and files directly under ``src``, are listed in the report as ignored).
      dst: output folder (created); must not be inside ``src`` or contain it.
      size: crop (height, width) or an int; see :func:`tfface.align.templates.template`.
      policy: which face of a multi-face photo: ``"largest"`` or ``"central"``.
      min_score: detections scoring below it are ignored. The default equals MTCNN's ONet threshold
        (``thresholds[2]``), i.e. no extra filter: on the synthetic scenes a quarter of the true faces
        score 0.8-0.9 while false detections are rare (``bench/align.py``); raise it for cluttered photos.
      fallback: photos with no face: ``"skip"`` or ``"center_crop"``.
      multi_face: photos with several faces: ``"pick"`` (write the policy's choice) or ``"skip"``.
      num_workers: processes; default: the cores this process may use; 1 runs in this process.
      min_face_size, thresholds, max_side: :class:`~tfface.align.detect.FaceDetector` settings.
      image_format: ``"jpg"`` or ``"png"`` (lossless) for the crops; ``jpeg_quality`` for jpg.
      progress: show a progress bar on stderr (a log line every 10% when stderr is not a terminal).
      detector: an object with ``detect(image) -> list[Detection]`` to use instead of building a
        FaceDetector; only with ``num_workers=1`` (tests, custom detectors).

    Returns:
      The report written to ``dst/align_report.json``.
    """
    size = _validate_args(size, policy, min_score, fallback, multi_face, image_format, jpeg_quality, num_workers)
    src, dst = check_paths(src, dst)
    # Checked here, before any work: in a worker a bad setting would only show as a dead process pool.
    detector_kwargs = check_detector_settings(min_face_size, thresholds, max_side=max_side)
    options = {"size": size, "policy": policy, "min_score": float(min_score), "fallback": fallback,
               "multi_face": multi_face, "format": image_format, "jpeg_quality": int(jpeg_quality)}
    if num_workers is None:
        num_workers = available_cores()
    if detector is not None and num_workers != 1:
        raise ValueError("a detector instance can only be used with num_workers=1 (workers build their own)")
    settings = {**options, "size": list(size), **detector_kwargs, "num_workers": num_workers}
    previous = _previous_report(dst, settings)
    start = time.perf_counter()
    tasks, skipped, duplicates, ignored, total = _plan(src, dst, image_format)
    # Failure entries of earlier runs whose crops exist stay listed: they still need checking.
    skipped_set = set(skipped)
    carried = [dict(f, run="previous") for f in (previous or {}).get("failures", [])
               if f.get("written") and f.get("path") in skipped_set]
    report = {"format": "tfface-align-report", "tfface_version": tfface.__version__, "complete": False,
              "src": src, "dst": dst, "settings": settings, "failures": sorted(carried, key=lambda f: f["path"]),
              "ignored": ignored}
    atomic_write_json(os.path.join(dst, REPORT_NAME), report)

    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts.update(total=total, skipped_existing=len(skipped), written=0, no_face_center_cropped=0,
                  ignored=len(ignored))
    failures = list(carried)
    bar = Progress(len(tasks), "tfface-align", enabled=progress)

    first = {}  # when the first photo came back: start-up (detector build, worker spawn) ends there

    def on_results(results, tick=True):
        if tick and not first:
            first.update(time=time.perf_counter(), n=len(results))
        for rel, r in results:
            counts[r["status"]] += 1
            counts["written"] += bool(r["written"])
            if r["status"] == "no_face" and r["written"]:
                counts["no_face_center_cropped"] += 1
            if r["status"] != "ok":
                failures.append({"path": rel, **r})
        if tick:
            bar.update(len(results), failed=len(failures) - len(carried))

    on_results(duplicates, tick=False)  # the bar counts photos sent to the detector only
    def on_lost(lost_tasks):  # a worker died: the photos it held get an error, the run goes on
        on_results([(rel, {"status": "error", "written": False,
                           "reason": "worker process died (out of memory?); re-run to retry"})
                    for rel, _, _ in lost_tasks])

    workers = max(1, min(num_workers, len(tasks)))
    if tasks and workers == 1:
        if detector is None:
            detector = build_detector(detector_kwargs)
        for task in tasks:
            on_results(_align_chunk([task], detector, options))
    elif tasks:
        run_pool(_align_chunk, tasks, workers, detector_kwargs, options, on_results, on_lost)
    bar.close()
    seconds = time.perf_counter() - start
    processed = len(tasks)
    after = None
    if first and processed > first["n"]:
        after = round((processed - first["n"]) / max(time.perf_counter() - first["time"], 1e-9), 3)
    report.update(complete=True, counts=counts, seconds=round(seconds, 3),
                  images_per_second=round(processed / seconds, 3) if processed and seconds > 0 else None,
                  startup_seconds=round(first["time"] - start, 3) if first else None,
                  images_per_second_after_startup=after,
                  failures=sorted(failures, key=lambda f: (f["path"], f.get("run", ""))))
    atomic_write_json(os.path.join(dst, REPORT_NAME), report)
    return report
