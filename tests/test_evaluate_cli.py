"""End-to-end tests of tfface-eval, run as a subprocess (``python -m tfface.cli.evaluate``) against a
tiny SavedModel, image folder and pairs.txt that the test builds itself."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tfface.data.pairs import read_pairs, write_pairs
from tfface.eval.features import evaluate_pairs, load_pair_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_SIZE = (16, 16)  # the signature's H, W; the images on disk are 20x24 and must be resized
NAMES = {"ann": (200, 40, 40), "bob": (40, 200, 40), "cy": (40, 40, 200), "dee": (200, 200, 40)}


def numpy_embed(batch):
    """NumPy twin of the SavedModel below: (mean colour - 100, per-channel std), L2-normalised later."""
    x = batch.astype(np.float32)
    return np.concatenate([x.mean(axis=(1, 2)) - 100.0, x.std(axis=(1, 2))], axis=1)


def _save_model(path):
    import tensorflow as tf

    class ColourStats(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, *MODEL_SIZE, 3], tf.uint8, name="images")])
        def serve(self, images):
            x = tf.cast(images, tf.float32)
            e = tf.concat([tf.reduce_mean(x, axis=[1, 2]) - 100.0, tf.math.reduce_std(x, axis=[1, 2])], axis=1)
            return {"embeddings": tf.math.l2_normalize(e, axis=1)}

    module = ColourStats()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """model base dir (versions: '2' junk, '10' real, 'abc' junk), images, pairs.txt."""
    root = tmp_path_factory.mktemp("evalcli")
    base = root / "model"
    for junk in ("2", "abc"):  # picking either instead of '10' makes loading fail
        (base / junk).mkdir(parents=True)
        (base / junk / "saved_model.pb").write_bytes(b"junk")
    _save_model(str(base / "10"))

    rng = np.random.default_rng(0)
    data = root / "images"
    for name, rgb in NAMES.items():
        (data / name).mkdir(parents=True)
        for k in (1, 2, 3):
            img = np.clip(np.array(rgb) + rng.normal(0, 25, (20, 24, 3)), 0, 255).astype(np.uint8)
            if name == "dee" and k == 3:  # a grayscale file in the set
                cv2.imwrite(str(data / name / f"{name}_{k:04d}.jpg"), img[..., 0])
            else:
                cv2.imwrite(str(data / name / f"{name}_{k:04d}.jpg"), img[..., ::-1])
    # 2 folds x (5 matched + 5 mismatched): 10 different pairs make FAR = 1e-1 measurable.
    names = sorted(NAMES)
    matched = [(n, i, j) for n in names for i, j in ((1, 2), (1, 3), (2, 3))][:10]
    mismatched = [(a, 1 + k % 3, b, 1 + (k + 1) % 3) for k, (a, b) in
                  enumerate((a, b) for a in names for b in names if a < b)]
    mismatched = (mismatched + [(b, i, a, j) for a, i, b, j in mismatched])[:10]
    folds = [(matched[:5], mismatched[:5]), (matched[5:], mismatched[5:])]
    write_pairs(root / "pairs.txt", folds)
    return root


def _run(*args):
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tfface.cli.evaluate", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


def _flags(ws, **overrides):
    values = {"model": ws / "model", "data_dir": ws / "images", "pairs": ws / "pairs.txt"}
    values.update(overrides)
    return [f"--{k}={v}" for k, v in values.items() if v is not None]


def test_cli_end_to_end(workspace):
    out = workspace / "reports" / "new" / "lfw.json"  # parent dirs do not exist yet
    result = _run(*_flags(workspace, batch_size=3, flip_fusion="sum", output=out))
    assert result.returncode == 0, result.stderr[-3000:]

    report = json.loads(out.read_text())
    assert os.listdir(out.parent) == ["lfw.json"]  # atomic write leaves no temp file behind
    assert report["model"] == str(workspace / "model" / "10")  # highest integer version, numerically
    assert report["image_size"] == list(MODEL_SIZE)
    assert report["num_pairs"] == 20 and report["num_images"] == 12 and report["n_folds"] == 2
    assert report["flip_fusion"] == "sum" and "optimistic" in report["best_threshold_note"]

    # Same numbers as the library with a NumPy twin of the model: the CLI used the signature, the
    # resize to the signature's size and the pairs file's folds.
    pairs = read_pairs(workspace / "pairs.txt")
    pi = load_pair_images(str(workspace / "images"), pairs, image_size=MODEL_SIZE)
    expected = evaluate_pairs(numpy_embed, pi, flip_fusion="sum")
    for key in ("accuracy_mean", "accuracy_std", "best_threshold_accuracy", "auc", "eer"):
        assert report[key] == pytest.approx(expected[key], abs=1e-6), key
    assert report["fold_accuracies"] == pytest.approx(expected["fold_accuracies"], abs=1e-6)
    # 10 different pairs: of the default FARs only 1e-1 (>= 1/10) is measurable and reported.
    assert list(report["tar_at_far"]) == list(expected["tar_at_far"]) == ["0.1"]
    assert report["tar_at_far"]["0.1"] == pytest.approx(expected["tar_at_far"]["0.1"], abs=1e-6)

    summary = result.stdout
    for text in ("accuracy (2-fold, mean ± std)", "best-threshold accuracy (optimistic)", "ROC AUC", "EER",
                 "TAR @ FAR=1e-01", "FAR < 1/10 not measurable", "report written to"):
        assert text in summary, summary
    assert len(summary.splitlines()) <= 24  # one screen


@pytest.mark.parametrize("overrides,flag", [
    ({"batch_size": 0}, "--batch_size"),
    ({"flip_fusion": "mean"}, "--flip_fusion"),
    ({"model": "/nonexistent/model"}, "--model"),
    ({"model": "EMPTY"}, "--model"),
    ({"data_dir": None}, "--data_dir"),
    ({"pairs": "/nonexistent/pairs.txt"}, "--pairs"),
    ({"pairs": "BAD"}, "--pairs"),
    ({"data_dir": "EMPTY"}, "--data_dir"),
    ({"image_size": "12x"}, "--image_size"),
    ({"output": "DIR"}, "--output"),
])
def test_cli_flag_errors_name_the_flag(workspace, overrides, flag, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_pairs = tmp_path / "bad_pairs.txt"
    bad_pairs.write_text("1\t1\nann\t1\n")  # matched line with a missing field
    replace = {"EMPTY": empty, "BAD": bad_pairs, "DIR": tmp_path}
    overrides = {k: replace.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}
    args = _flags(workspace, **overrides)
    if "output" not in overrides:
        args.append(f"--output={tmp_path / 'report.json'}")
    result = _run(*args)
    assert result.returncode != 0
    assert flag in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "report.json").exists()


def test_cli_rejects_model_without_expected_signature(workspace, tmp_path):
    import tensorflow as tf

    class WrongInput(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.uint8, name="pixels")])
        def serve(self, pixels):
            return {"embeddings": tf.reduce_mean(tf.cast(pixels, tf.float32), axis=[1, 2])}

    module = WrongInput()
    tf.saved_model.save(module, str(tmp_path / "wrong" / "1"), signatures={"serving_default": module.serve})
    result = _run(*_flags(workspace, model=tmp_path / "wrong"))
    assert result.returncode != 0
    assert "--model" in result.stderr and "'images'" in result.stderr, result.stderr[-3000:]


def _write_pair_bin(ws, path):
    """The workspace's pairs as an InsightFace .bin: encoded images in pair order + issame."""
    from tfface.data.bins import write_bin

    pairs = read_pairs(ws / "pairs.txt")
    images = []
    for left, right in zip(pairs.left, pairs.right, strict=True):
        for rel in (left, right):
            images.append((ws / "images" / rel).read_bytes())
    write_bin(str(path), images, pairs.issame)
    return pairs


def test_cli_bin_set(workspace, tmp_path):
    from tfface.cli.evaluate import bin_pair_images
    from tfface.data.bins import read_bin

    bin_path = tmp_path / "lfw.bin"
    _write_pair_bin(workspace, bin_path)
    out = tmp_path / "bin.json"
    result = _run(f"--model={workspace / 'model'}", f"--bin={bin_path}", "--flip_fusion=none", f"--output={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["num_pairs"] == 20 and report["num_images"] == 40 and report["n_folds"] == 10
    assert report["folds"] == "contiguous"  # InsightFace's KFold(10, shuffle=False) over the .bin's pairs
    expected = evaluate_pairs(numpy_embed, bin_pair_images(read_bin(str(bin_path)), MODEL_SIZE), flip_fusion="none")
    for key in ("accuracy_mean", "auc", "eer"):
        assert report[key] == pytest.approx(expected[key], abs=1e-6), key


def test_cli_bin_errors(workspace, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([Evil()], [True])))
    result = _run(f"--model={workspace / 'model'}", f"--bin={evil}")
    assert result.returncode != 0 and "--bin" in result.stderr and not marker.exists()
    # --bin replaces the folder + pairs inputs; giving both is an error naming the flags.
    result = _run(*_flags(workspace), f"--bin={evil}")
    assert result.returncode != 0 and "--bin replaces" in result.stderr
