import json
import os
import signal
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfface.models.face_model import build_embedding_model, build_feature_model
from tfface.serving import exporter
from tfface.serving.exporter import export_saved_model, remove_stale_temporaries
from tfface.serving.layout import list_versions, resolve_saved_model

_TINY = dict(input_shape=(32, 32, 3), embedding_size=16, backbone_kwargs={"width_multiplier": 0.25})


@pytest.fixture(scope="module")
def embedding_model():
    return build_embedding_model(build_feature_model("mobilefacenet", **_TINY))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, embedding_model):
    """One plain export shared by the read-only tests (a SavedModel save costs seconds)."""
    return export_saved_model(embedding_model, str(tmp_path_factory.mktemp("export")), "face",
                              metadata={"note": "x"})


@pytest.fixture(scope="module")
def served(exported):
    return tf.saved_model.load(exported)


def _smooth_crops(n, size=(32, 32), seed=0):
    """Low-frequency RGB crops: JPEG keeps them nearly intact, unlike white noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.float32)
    return np.stack([np.clip(cv2.resize(s, size[::-1], interpolation=cv2.INTER_CUBIC), 0, 255).round()
                     for s in small]).astype(np.uint8)


def _png(rgb):
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


def _jpeg(rgb):
    params = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    return cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), params)[1].tobytes()


def _embed(served, images):
    return served.signatures["serving_default"](images=tf.constant(images))["embeddings"].numpy()


def _embed_bytes(served, blobs):
    return served.signatures["embed_jpeg"](image_bytes=tf.constant(blobs, tf.string))["embeddings"].numpy()


def test_export_layout_versions_and_assets(tmp_path, embedding_model):
    os.makedirs(tmp_path / "face" / "1")
    os.makedirs(tmp_path / "face" / "9")  # numeric order: the next version is 10, not 2
    path = export_saved_model(embedding_model, str(tmp_path), "face")
    assert path == str(tmp_path / "face" / "10")
    assert list_versions(str(tmp_path / "face")) == [1, 9, 10]
    assert resolve_saved_model(str(tmp_path / "face")) == path
    assert sorted(os.listdir(tmp_path / "face")) == ["1", "10", "9"]  # no temporary leftovers
    with pytest.raises(FileExistsError):
        export_saved_model(embedding_model, str(tmp_path), "face", version=9)


def test_assets_describe_both_signatures(exported):
    info = json.loads(open(os.path.join(exported, "assets", "tfface.json"), encoding="utf-8").read())
    assert info["input_size"] == [32, 32] and info["embedding_size"] == 16 and info["note"] == "x"
    assert info["flip_fusion"] == "none" and info["tfface_version"]
    sigs = info["signatures"]
    assert set(sigs) == {"serving_default", "embed_jpeg"}
    assert list(sigs["serving_default"]["inputs"]) == ["images"]
    assert list(sigs["embed_jpeg"]["inputs"]) == ["image_bytes"]
    assert all(list(s["outputs"]) == ["embeddings"] for s in sigs.values())
    assert all(s["method"] == "tensorflow/serving/predict" for s in sigs.values())


def test_failed_export_leaves_no_partial_version(tmp_path, embedding_model, monkeypatch):
    def boom(*args, **kwargs):
        os.makedirs(args[1], exist_ok=True)
        open(os.path.join(args[1], "saved_model.pb"), "wb").close()  # half-written
        raise RuntimeError("disk full")

    monkeypatch.setattr(exporter.tf.saved_model, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(embedding_model, str(tmp_path), "face")
    assert os.listdir(tmp_path / "face") == []


def test_killed_export_leaves_no_version_and_is_cleaned_up(tmp_path):
    """SIGKILL in the middle of writing the SavedModel: TF-Serving must see no version; the leftover
    temporary is removed by the next export (here: by the cleanup it runs first)."""
    script = textwrap.dedent(f"""
        import os, signal
        import tensorflow as tf
        from tfface.models.face_model import build_embedding_model, build_feature_model
        from tfface.serving.exporter import export_saved_model

        def killed_midway(obj, export_dir, **kwargs):
            os.makedirs(os.path.join(export_dir, "variables"))
            with open(os.path.join(export_dir, "saved_model.pb"), "wb") as fh:
                fh.write(b"half")
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)

        tf.saved_model.save = killed_midway
        model = build_embedding_model(build_feature_model("mobilefacenet", **{_TINY!r}))
        export_saved_model(model, {str(tmp_path)!r}, "face")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), timeout=300, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    model_dir = str(tmp_path / "face")
    assert list_versions(model_dir) == []
    with pytest.raises(FileNotFoundError):
        resolve_saved_model(model_dir)
    leftovers = os.listdir(model_dir)
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-1-"), leftovers
    # Temporaries of live processes or other hosts are not touched.
    live = os.path.join(model_dir, f".tmp-3-{os.getpid()}-{exporter._host()}")
    other_host = os.path.join(model_dir, ".tmp-4-999999999-some-other-host")
    os.makedirs(live)
    os.makedirs(other_host)
    assert remove_stale_temporaries(model_dir) == [os.path.join(model_dir, leftovers[0])]
    assert sorted(os.listdir(model_dir)) == sorted([os.path.basename(live), os.path.basename(other_host)])


def test_embed_jpeg_matches_serving_default(served):
    images = _smooth_crops(4)
    expected = _embed(served, images)
    np.testing.assert_array_equal(_embed_bytes(served, [_png(x) for x in images]), expected)  # lossless
    jpegs = [_jpeg(x) for x in images]
    from_jpeg = _embed_bytes(served, jpegs)
    assert from_jpeg.shape == (4, 16) and from_jpeg.dtype == np.float32
    decoded = np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in jpegs])
    assert np.mean(np.abs(decoded.astype(int) - images)) < 2  # quality 100, 4:4:4: a few levels off
    np.testing.assert_allclose(from_jpeg, _embed(served, decoded), atol=1e-6)
    # An untrained net amplifies the few-level JPEG error more than a trained one would.
    assert np.min(np.sum(from_jpeg * expected, axis=1)) > 0.99
    grey = images[:1].mean(axis=-1).round().astype(np.uint8)  # 1-channel PNG → RGB
    np.testing.assert_allclose(_embed_bytes(served, [cv2.imencode(".png", grey[0])[1].tobytes()]),
                               _embed(served, np.repeat(grey[..., None], 3, axis=-1)), atol=1e-6)
    assert _embed_bytes(served, []).shape == (0, 16)


def test_embed_jpeg_resizes_other_sizes(served):
    big = _smooth_crops(2, size=(48, 40), seed=1)
    resized = tf.image.resize(tf.constant(big, tf.float32), [32, 32], method="bilinear", antialias=True)
    expected = _embed(served, np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8))
    mixed = [_png(big[0]), _png(_smooth_crops(1, seed=2)[0]), _png(big[1])]  # sizes may differ in a batch
    out = _embed_bytes(served, mixed)
    np.testing.assert_allclose(out[[0, 2]], expected, atol=1e-5)
    np.testing.assert_allclose(out[1], _embed(served, _smooth_crops(1, seed=2))[0], atol=1e-6)


@pytest.mark.parametrize("bad, message", [(b"not an image", "Unknown image file format"),
                                          (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "PNG")], ids=["garbage", "broken-png"])
def test_embed_jpeg_rejects_undecodable_bytes(served, bad, message):
    good = _png(_smooth_crops(1)[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _embed_bytes(served, [good, bad])


def test_flip_fusion_sum(tmp_path, embedding_model, served):
    with pytest.raises(ValueError, match="flip_fusion"):
        export_saved_model(embedding_model, str(tmp_path), "face", flip_fusion="mean")
    path = export_saved_model(embedding_model, str(tmp_path), "face", flip_fusion="sum")
    info = json.loads(open(os.path.join(path, "assets", "tfface.json"), encoding="utf-8").read())
    assert info["flip_fusion"] == "sum"
    fused = tf.saved_model.load(path)
    images = _smooth_crops(3, seed=3)
    summed = _embed(served, images) + _embed(served, images[:, :, ::-1])
    expected = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    np.testing.assert_allclose(_embed(fused, images), expected, atol=1e-5)
    np.testing.assert_allclose(_embed_bytes(fused, [_png(x) for x in images]), expected, atol=1e-5)


def test_fresh_process_without_tfface_runs_both_signatures(tmp_path, exported, embedding_model):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "pngs.npy", np.array([_png(x) for x in images], dtype=object), allow_pickle=True)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        model = tf.saved_model.load({exported!r})
        fn = model.signatures["serving_default"]
        assert fn.structured_input_signature[1]["images"].dtype == tf.uint8, fn.structured_input_signature
        out = fn(images=tf.constant(np.load({str(tmp_path / "images.npy")!r})))
        assert list(out) == ["embeddings"], list(out)
        np.save({str(tmp_path / "out.npy")!r}, out["embeddings"].numpy())
        fn = model.signatures["embed_jpeg"]
        assert fn.structured_input_signature[1]["image_bytes"].dtype == tf.string, fn.structured_input_signature
        pngs = list(np.load({str(tmp_path / "pngs.npy")!r}, allow_pickle=True))
        out = fn(image_bytes=tf.constant(pngs))
        assert list(out) == ["embeddings"], list(out)
        np.save({str(tmp_path / "out_bytes.npy")!r}, out["embeddings"].numpy())
        assert not any(m == "tfface" or m.startswith("tfface.") for m in sys.modules), "imported tfface"
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path), env=env, timeout=300)
    served_out = np.load(tmp_path / "out.npy")
    expected = embedding_model(tf.constant(images, tf.float32), training=False).numpy()
    assert served_out.shape == (5, 16) and served_out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(served_out, axis=1), 1.0, atol=1e-5)
    assert np.max(np.abs(served_out - expected)) <= 1e-5
    np.testing.assert_array_equal(np.load(tmp_path / "out_bytes.npy"), served_out)


def test_saved_model_cli_shows_both_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip("saved_model_cli not installed beside this python")
    out = subprocess.run([cli, "show", "--dir", exported, "--all"],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    sections = {}
    for block in out.split("signature_def['")[1:]:
        name, body = block.split("']", 1)
        sections[name] = body
    assert {"serving_default", "embed_jpeg"} <= set(sections)
    default, jpeg = sections["serving_default"], sections["embed_jpeg"]
    assert "inputs['images']" in default and "DT_UINT8" in default and "(-1, 32, 32, 3)" in default
    assert "inputs['image_bytes']" in jpeg and "DT_STRING" in jpeg and "shape: (-1)" in jpeg
    for body in (default, jpeg):
        assert "outputs['embeddings']" in body and "DT_FLOAT" in body and "(-1, 16)" in body
        assert "Method name is: tensorflow/serving/predict" in body


def test_client_requests_fit_the_real_export(served):
    """tfface.serving.client's REST bodies, decoded the way TF-Serving documents (test_client's emulation), run
    against this exporter's own signatures: the names and dtypes the client sends are the ones exported."""
    from test_client import _emulate_rest_predict

    from tfface.serving import client

    crops = _smooth_crops(3)
    for body, expected in ((client.rest_request(images=crops), _embed(served, crops)),
                           (client.rest_request(jpeg_bytes=[_png(c) for c in crops]), _embed(served, crops))):
        response = _emulate_rest_predict(json.dumps(body), served.signatures)
        np.testing.assert_allclose(client.parse_rest_response(response, expected_n=3), expected, atol=1e-6)
    bad = _emulate_rest_predict(json.dumps(client.rest_request(jpeg_bytes=[b"not an image"])), served.signatures)
    with pytest.raises(client.ServingError, match="Unknown image file format"):
        client.parse_rest_response(bad)
