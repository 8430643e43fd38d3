"""Verification thresholds calibrated for a target false accept rate, stored as ``thresholds.json``.

A similarity threshold only means something for one model, one preprocessing (flip fusion) and one
similarity measure: deepface ships one threshold per model for that reason.  ``tfface-eval
--calibrate_far=1e-3`` picks, on the evaluation pairs, the exact ROC point with the lowest threshold whose
false accept rate is <= the target (the TAR@FAR point of :mod:`tfface.eval.verification`) and records it
together with everything it depends on.  ``tfface-export --thresholds=thresholds.json`` copies the file
into the SavedModel's ``assets/`` and ``assets/tfface.json``, so ``verify()`` gets a meaningful default.

File format (JSON, format ``tfface-thresholds/1``)::

    {
      "format": "tfface-thresholds/1",
      "similarity": "cosine",                 # or "squared_l2" (distance of L2-normalised embeddings)
      "decision": "same if cosine similarity >= threshold",
      "flip_fusion": "sum",
      "default_far": "0.001",
      "thresholds": {"0.001": {"far": 0.001, "threshold": 0.29, "achieved_far": 0.00095, "tar": 0.97,
                               "num_same": 3000, "num_different": 3000,
                               "calibrated_on": {"pairs": "...", "model": "..."}}},
      "tfface_version": "..."
    }

Calibrating again into an existing file with the same similarity and flip fusion adds (or replaces) that
FAR's entry and makes it the default; a file for another setting is refused rather than mixed.  A FAR
below ``1 / num_different`` cannot be measured on the pairs and is refused.
"""

from __future__ import annotations

import json
import os

from tfface.fileio import atomic_write_json

FORMAT = "tfface-thresholds/1"


def far_key(far: float) -> str:
    """The dictionary key of a FAR (``str(float)``, as in verification reports: ``1e-3`` -> ``'0.001'``)."""
    return str(float(far))


def calibration_entry(report: dict, far: float) -> dict:
    """The ``thresholds[far]`` entry from a verification report that lists ``far`` in its TAR@FAR.

    Raises:
        ValueError: ``far`` is not in the report (too few different pairs to measure it).
    """
    key = far_key(far)
    if key not in report["tar_at_far_thresholds"]:
        raise ValueError(f"FAR {far:g} cannot be measured with {report['num_different']} different pairs "
                         f"(the smallest measurable FAR is 1/{report['num_different']} = "
                         f"{1 / report['num_different']:.2g}); use more pairs or a larger FAR")
    return {"far": float(far), "threshold": report["tar_at_far_thresholds"][key],
            "achieved_far": report["tar_at_far_achieved_far"][key], "tar": report["tar_at_far"][key],
            "num_same": report["num_same"], "num_different": report["num_different"]}


def read_thresholds(path: str) -> dict:
    """Reads and checks a ``thresholds.json``; ValueError naming the file if it is not one."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a tfface thresholds file (expected format {FORMAT!r})")
    thresholds = data.get("thresholds")
    if not isinstance(thresholds, dict) or not thresholds or data.get("default_far") not in thresholds:
        raise ValueError(f"{path}: needs a non-empty 'thresholds' mapping that holds 'default_far'")
    for key, entry in thresholds.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("threshold"), (int, float)):
            raise ValueError(f"{path}: thresholds[{key!r}] has no numeric 'threshold'")
    return data


def write_thresholds(path: str, report: dict, far: float, extra: dict | None = None) -> dict:
    """Calibrates ``far`` on ``report`` and writes (or updates) ``path`` atomically; returns the file's content.

    Args:
        path: the ``thresholds.json`` to write.
        report: a ``tfface-eval`` verification report (needs ``distance``, ``decision``, ``flip_fusion``).
        far: the target false accept rate.
        extra: facts recorded in the entry's ``calibrated_on`` (model, pairs file, ...).

    Raises:
        ValueError: FAR not measurable, PCA in the report (its per-fold projection is not part of the
            model, so its threshold would not apply to served embeddings), or an existing file for a
            different similarity / flip fusion.
    """
    import tfface

    if report.get("pca_dim"):
        raise ValueError("cannot calibrate with PCA: the threshold would belong to a per-fold PCA projection "
                         "that served embeddings do not go through; calibrate without --pca_dim")
    entry = {**calibration_entry(report, far), "calibrated_on": dict(extra or {})}
    setting = {"similarity": report.get("distance", "cosine"), "flip_fusion": report.get("flip_fusion")}
    data = {"format": FORMAT, **setting, "decision": report.get("decision"), "thresholds": {}}
    if os.path.exists(path):
        old = read_thresholds(path)
        clash = {k: (old.get(k), v) for k, v in setting.items() if old.get(k) != v}
        if clash:
            raise ValueError(f"{path} holds thresholds for another setting ({clash}: file vs now); "
                             "write to a new file")
        data["thresholds"] = dict(old["thresholds"])
    key = far_key(far)
    data["thresholds"][key] = entry
    data.update(default_far=key, tfface_version=tfface.__version__)
    atomic_write_json(path, data)
    return data
