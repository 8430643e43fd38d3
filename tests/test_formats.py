"""TFLite / ONNX exports of the embedding model agree with the Keras model and the SavedModel."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfface.models.face_model import build_embedding_model, build_feature_model
from tfface.serving import formats
from tfface.serving.exporter import export_saved_model
from tfface.serving.formats import SavedModelEmbedder, TFLiteEmbedder, export_onnx, export_tflite


def _cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    features = build_feature_model("mobilefacenet", input_shape=(32, 32, 3), embedding_size=16,
                                   backbone_kwargs={"width_multiplier": 0.25})
    model = build_embedding_model(features)
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    expected = model(tf.constant(images, tf.float32), training=False).numpy()
    saved = export_saved_model(model, str(tmp), "face")
    return {"tmp": tmp, "model": model, "images": images, "expected": expected, "saved": saved}


@pytest.fixture(scope="module")
def tflite_float(setup):
    return export_tflite(setup["model"], str(setup["tmp"] / "float.tflite"))


def test_saved_model_embedder_matches_keras(setup):
    out = SavedModelEmbedder(setup["saved"])(setup["images"])
    np.testing.assert_allclose(out, setup["expected"], atol=1e-5)


def test_tflite_float_matches_keras_with_dynamic_batch(setup, tflite_float):
    embedder = TFLiteEmbedder(tflite_float, num_threads=1)
    inp = embedder.interpreter.get_input_details()[0]
    assert inp["dtype"] == np.uint8 and list(inp["shape_signature"]) == [-1, 32, 32, 3]
    assert embedder.fixed_batch is None
    images, expected = setup["images"], setup["expected"]
    out = embedder(images)  # resized to N=5
    assert out.shape == (5, 16) and out.dtype == np.float32
    assert _cosines(out, expected).min() >= 0.9999
    single = embedder(images[2])  # one HWC image -> resized back to N=1
    np.testing.assert_allclose(single[0], out[2], atol=1e-5)
    np.testing.assert_allclose(embedder(images[:3]), out[:3], atol=1e-5)


def test_tflite_dynamic_int8_from_saved_model_with_fixed_batch(setup, tflite_float):
    # One conversion covers three things: the SavedModel source, batch_size=1 and dynamic-range int8.
    path = export_tflite(setup["saved"], str(setup["tmp"] / "int8_b1.tflite"), quantize="dynamic_int8",
                         batch_size=1)
    assert os.path.getsize(path) < 0.75 * os.path.getsize(tflite_float)  # tiny model: ~0.6; big ones ~0.3
    embedder = TFLiteEmbedder(path)
    assert embedder.fixed_batch == 1
    assert list(embedder.interpreter.get_input_details()[0]["shape_signature"]) == [1, 32, 32, 3]
    out = embedder(setup["images"])  # fed one image at a time
    assert out.shape == (5, 16) and out.dtype == np.float32
    assert _cosines(out, setup["expected"]).min() >= 0.99
    np.testing.assert_allclose(embedder(setup["images"][3:4]), out[3:4], atol=1e-6)


def test_tflite_rejects_bad_arguments(setup, tflite_float):
    with pytest.raises(ValueError, match="quantize"):
        export_tflite(setup["model"], str(setup["tmp"] / "x.tflite"), quantize="int4")
    embedder = TFLiteEmbedder(tflite_float)
    with pytest.raises(TypeError, match="uint8"):
        embedder(setup["images"].astype(np.float32))
    with pytest.raises(ValueError, match="crops"):
        embedder(np.zeros((1, 16, 16, 3), np.uint8))


def test_failed_conversion_keeps_the_old_file(setup, monkeypatch):
    target = setup["tmp"] / "keep.tflite"
    target.write_bytes(b"old")

    def boom(self):
        raise RuntimeError("converter failed")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", boom)
    with pytest.raises(RuntimeError, match="converter failed"):
        export_tflite(setup["saved"], str(target))
    assert target.read_bytes() == b"old"
    assert not [name for name in os.listdir(setup["tmp"]) if name.endswith(".tmp")]  # no temporary leftovers


@pytest.mark.parametrize("source", ["saved_model"])  # a Keras model goes through a SavedModel too
def test_onnx_matches_keras(setup, source):
    pytest.importorskip("tf2onnx", reason="ONNX export needs the 'onnx' extra (tf2onnx)")
    pytest.importorskip("onnxruntime", reason="ONNX tests need the 'onnx' extra (onnxruntime)")
    import onnx

    model_or_dir = setup["model"] if source == "keras" else setup["saved"]
    path = export_onnx(model_or_dir, str(setup["tmp"] / f"{source}.onnx"))
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["embeddings"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    embedder = formats.OnnxEmbedder(path, num_threads=1)
    out = embedder(setup["images"])
    assert out.shape == (5, 16) and out.dtype == np.float32
    assert _cosines(out, setup["expected"]).min() >= 0.9999
    np.testing.assert_allclose(embedder(setup["images"][:1]), out[:1], atol=1e-5)


def test_missing_onnx_dependency_has_a_clear_message(setup, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tf2onnx":
            raise ImportError("No module named 'tf2onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"tfface\[onnx\]"):
        export_onnx(setup["model"], str(setup["tmp"] / "never.onnx"))
    assert not (setup["tmp"] / "never.onnx").exists()
