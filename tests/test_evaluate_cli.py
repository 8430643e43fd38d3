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
    assert result.returncode != 0 and "exactly one source" in result.stderr and "--bin" in result.stderr


def _write_image(path, rgb, rng, size=(20, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.clip(np.array(rgb) + rng.normal(0, 25, (*size, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), img[..., ::-1])


def test_cli_pairs_csv_two_folders_pca_distance_plots_and_calibration(workspace, tmp_path):
    pytest.importorskip("matplotlib")
    from tfface.data.pairs import read_pairs_csv
    from tfface.eval.calibration import read_thresholds

    rng = np.random.default_rng(3)
    rows = ["left,right,same,fold"]
    for k in range(40):  # 'ids' and 'selfies' hold different images under the same relative names
        a, b = sorted(NAMES)[k % 4], sorted(NAMES)[(k + 1 + k // 4 % 3) % 4]
        _write_image(tmp_path / "ids" / a / f"{k}.png", NAMES[a], rng)
        same = k % 2 == 0
        _write_image(tmp_path / "selfies" / a / f"{k}.png", NAMES[a if same else b], rng)
        rows.append(f"{a}/{k}.png,{a}/{k}.png,{int(same)},{k // 10}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    common = [f"--model={workspace / 'model'}", f"--left_dir={tmp_path / 'ids'}", f"--right_dir={tmp_path / 'selfies'}",
              f"--pairs_csv={tmp_path / 'pairs.csv'}", "--flip_fusion=none"]
    out = tmp_path / "l2.json"
    result = _run(*common, "--distance=squared_l2", f"--plots_dir={tmp_path / 'plots'}", "--calibrate_far=0.1",
                  f"--thresholds_output={tmp_path / 'thresholds.json'}", f"--output={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    pi = load_pair_images(str(tmp_path / "ids"), read_pairs_csv(tmp_path / "pairs.csv"), image_size=MODEL_SIZE,
                          right_root=str(tmp_path / "selfies"))
    expected = evaluate_pairs(numpy_embed, pi, flip_fusion="none", distance="squared_l2")
    assert report["n_folds"] == 4 and report["num_images"] == 80 and report["distance"] == "squared_l2"
    for key in ("accuracy_mean", "auc", "eer", "eer_threshold"):
        assert report[key] == pytest.approx(expected[key], abs=1e-5), key
    for name in ("roc.png", "score_histogram.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    thresholds = read_thresholds(str(tmp_path / "thresholds.json"))
    entry = thresholds["thresholds"]["0.1"]
    assert thresholds["similarity"] == "squared_l2" and thresholds["flip_fusion"] == "none"
    assert entry["threshold"] == pytest.approx(report["tar_at_far_thresholds"]["0.1"])
    assert "squared L2 distance" in result.stdout and "written to" in result.stdout

    pca = _run(*common, "--pca_dim=3", f"--output={tmp_path / 'pca.json'}")
    assert pca.returncode == 0, pca.stderr[-3000:]
    expected = evaluate_pairs(numpy_embed, pi, flip_fusion="none", pca_dim=3)
    assert json.loads((tmp_path / "pca.json").read_text())["accuracy_mean"] == pytest.approx(
        expected["accuracy_mean"], abs=1e-6)
    assert "PCA to 3 dims on the training folds" in pca.stdout


def test_cli_identification_with_distractors_and_a_corrupt_file(workspace, tmp_path):
    from tfface.eval import image_sets
    from tfface.eval.identification import identification_report

    rng = np.random.default_rng(4)
    names = sorted(NAMES)
    for name in names[:3]:  # enrolled: ann, bob, cy; 'dee' is only a probe (a non-mated search)
        _write_image(tmp_path / "gallery" / name / "1.jpg", NAMES[name], rng)
    for name in names:
        for k in (2, 3):
            _write_image(tmp_path / "probes" / name / f"{k}.jpg", NAMES[name], rng)
    (tmp_path / "probes" / "ann" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    for k in range(30):
        _write_image(tmp_path / "distractors" / f"d{k // 10}" / f"{k}.png", rng.integers(0, 256, 3), rng)
    out = tmp_path / "1n.json"
    result = _run(f"--model={workspace / 'model'}", f"--gallery_dir={tmp_path / 'gallery'}",
                  f"--probe_dir={tmp_path / 'probes'}", f"--distractors={tmp_path / 'distractors'}",
                  "--distractor_counts=10,30", "--flip_fusion=none", f"--output={out}",
                  f"--plots_dir={tmp_path / 'plots'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "plots")) == ["cmc.png", "distractor_curve.png"]
    report = json.loads(out.read_text())
    assert report["num_gallery_identities"] == 3 and report["num_probes"] == 6 and report["num_nonmated_probes"] == 2
    assert report["num_skipped_files"] == {"gallery": 0, "probes": 1, "distractors": 0}
    assert report["skipped_files"]["probes"][0]["path"].endswith("broken.jpg")
    opts = {"image_size": MODEL_SIZE, "flip_fusion": "none"}
    g = image_sets.embed_identity_folder(numpy_embed, str(tmp_path / "gallery"), **opts)
    p = image_sets.embed_identity_folder(numpy_embed, str(tmp_path / "probes"), **opts)
    d = image_sets.embed_distractors(numpy_embed, str(tmp_path / "distractors"), 6, **opts)
    mated, mated_labels, nonmated = image_sets.split_probes(g.labels, p)
    expected = identification_report(g.embeddings, g.labels, mated, mated_labels, nonmated_probe_embeddings=nonmated,
                                     distractor_embeddings=d.embeddings, counts=[10, 30])
    assert report["closed_set"]["rank_accuracy"] == pytest.approx(expected["closed_set"]["rank_accuracy"])
    assert report["open_set"]["tpir_at_fpir"] == pytest.approx(expected["open_set"]["tpir_at_fpir"])
    assert report["distractor_curve"]["rank1"] == pytest.approx(expected["distractor_curve"]["rank1"])
    assert "closed-set rank-1" in result.stdout and "skipped unreadable files: probes 1" in result.stdout

    # Distractors as a .npy of embeddings give the same curve; a wrong width is refused, naming the flag.
    np.save(tmp_path / "d.npy", d.embeddings)
    np.save(tmp_path / "wrong.npy", d.embeddings[:, :4])
    common = [f"--model={workspace / 'model'}", f"--gallery_dir={tmp_path / 'gallery'}",
              f"--probe_dir={tmp_path / 'probes'}", "--flip_fusion=none", "--distractor_counts=10,30"]
    npy = _run(*common, f"--distractors={tmp_path / 'd.npy'}", f"--output={tmp_path / 'npy.json'}")
    assert npy.returncode == 0, npy.stderr[-3000:]
    curve = json.loads((tmp_path / "npy.json").read_text())["distractor_curve"]["rank1"]
    assert curve == pytest.approx(report["distractor_curve"]["rank1"], abs=1e-6)
    wrong = _run(*common, f"--distractors={tmp_path / 'wrong.npy'}")
    assert wrong.returncode != 0 and "--distractors" in wrong.stderr and "4 dims" in wrong.stderr


@pytest.mark.parametrize("extra,message", [
    (["--pca_dim=4", "--calibrate_far=0.1"], "--calibrate_far cannot be used with --pca_dim"),
    (["--distractors=/tmp"], "need --gallery_dir and --probe_dir"),
    (["--calibrate_far=2"], "--calibrate_far"),
    (["--left_dir=/tmp"], "exactly one source"),
])
def test_cli_verification_flag_combinations(workspace, extra, message):
    result = _run(*_flags(workspace), *extra)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
