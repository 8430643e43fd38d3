"""End-to-end tests of tfface-align through its real entry point (``python -m tfface.cli.align``): usage errors
fail before any work, a two-worker run gives the same crops as an in-process one-worker run, and a re-run
resumes without redoing anything."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from matplotlib import cbook

from tfface.align.batch import align_folder
from tfface.align.detect import FaceDetector
from tfface.data.synthetic_scenes import render_scene

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "tfface.cli.align", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A small tree: the Grace Hopper photo twice, two synthetic scenes with a face, a blank and a broken file."""
    root = tmp_path_factory.mktemp("aligncli") / "src"
    (root / "grace").mkdir(parents=True)
    (root / "scenes").mkdir()
    hopper = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    shutil.copy(hopper, root / "grace/a.jpg")
    cv2.imwrite(str(root / "grace/b.png"), cv2.imread(hopper)[:, ::-1])  # mirrored
    for seed in (0, 3):
        image, _ = render_scene(np.random.default_rng(seed), (256, 256), 1, (110, 140))
        cv2.imwrite(str(root / f"scenes/s{seed}.png"), image[..., ::-1])
    cv2.imwrite(str(root / "scenes/blank.png"), np.full((200, 200, 3), 90, np.uint8))
    (root / "scenes/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return root


@pytest.mark.parametrize("args, message", [
    ([], "expected two arguments"),
    (["{tmp}/missing", "{tmp}/out"], "does not exist"),
    (["{src}", "{src}/aligned"], "must not be inside the source"),
    (["--min_score=1.5", "{src}", "{tmp}/out"], "--min_score must be in [0, 1]"),
    (["--size=112,20", "{src}", "{tmp}/out"], "--size must be"),
    (["--thresholds=0.6,0.7", "{src}", "{tmp}/out"], "--thresholds must be 3 numbers"),
    (["--policy=biggest", "{src}", "{tmp}/out"], "--policy"),
])
def test_usage_errors_fail_before_any_work(photos, tmp_path, args, message):
    result = _run(*[a.format(tmp=tmp_path, src=photos) for a in args], timeout=60)
    assert result.returncode == 1, result.stderr[-2000:]
    assert message in result.stderr
    assert not (tmp_path / "out").exists() and not (photos / "aligned").exists()


def test_two_workers_match_one_worker_and_rerun_resumes(photos, tmp_path):
    dst = tmp_path / "two"
    result = _run("--num_workers=2", "--format=png", photos, dst)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((dst / "align_report.json").read_text())
    assert report["complete"] and report["settings"]["num_workers"] == 2
    c = report["counts"]
    assert (c["total"], c["ok"], c["no_face"], c["unreadable"], c["written"]) == (6, 4, 1, 1, 4)
    assert "6 photos: 4 ok" in result.stdout and "scenes/blank.png: no_face" in result.stdout
    assert "Incompatible shapes" not in result.stderr  # TF's per-photo warnings are kept out of the output

    reference = align_folder(photos, tmp_path / "one", num_workers=1, detector=FaceDetector(), image_format="png",
                             progress=False)
    strip = ("seconds", "images_per_second", "startup_seconds", "images_per_second_after_startup", "dst", "settings")
    assert {k: v for k, v in reference.items() if k not in strip} == {k: v for k, v in report.items() if k not in strip}
    crops = sorted(p for p in os.listdir(dst / "grace") + os.listdir(dst / "scenes"))
    assert crops == ["a.png", "b.png", "s0.png", "s3.png"]
    for sub in ("grace/a.png", "grace/b.png", "scenes/s0.png", "scenes/s3.png"):
        two, one = cv2.imread(str(dst / sub)).astype(int), cv2.imread(str(tmp_path / "one" / sub)).astype(int)
        # Measured identical; the tolerance allows for TensorFlow kernels whose float results depend on the
        # thread count (the workers run 1 thread, this process the default).
        assert np.abs(two - one).max() <= 2, sub

    again = _run("--num_workers=2", "--format=png", photos, dst)
    assert again.returncode == 0, again.stderr[-3000:]
    c = json.loads((dst / "align_report.json").read_text())["counts"]
    assert (c["written"], c["skipped_existing"], c["no_face"], c["unreadable"]) == (0, 4, 1, 1)
    assert "4 already done" in again.stdout
