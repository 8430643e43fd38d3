"""Tests of tfface.serving.client against a tiny SavedModel with the export's two signatures.

The TF-Serving binary cannot be obtained on these machines, so there is NO server round trip here. Instead
``_emulate_rest_predict`` reproduces TF-Serving's documented JSON mapping for the REST ``predict`` API in
process: the ``instances`` list becomes the batch; ``{"b64": s}`` becomes the base64-decoded bytes; objects
keyed by input name become one batch per input (a bare value is allowed when the signature has a single
input); the loaded signature is called; a single output comes back as ``{"predictions": <list of per-instance
values>}`` and a failure as ``{"error": <message>}``. The tests check that what ``rest_request`` writes,
pushed through that mapping and the SavedModel's own signature, parses (``parse_rest_response``) to exactly the
embeddings of calling the signature directly. One test puts the emulation behind a local ``http.server`` to
exercise ``post``/``predict_url`` — still not TF-Serving.
"""

import base64
import http.server
import importlib.util
import json
import os
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from tfface.serving import client

SIZE = (16, 16)
EXPORT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export")


def _save_model(path):
    """Colour-statistics "model": embedding = L2-normalise(mean RGB - 100, std RGB), D = 6."""

    def embed(images):
        x = tf.cast(images, tf.float32)
        e = tf.concat([tf.reduce_mean(x, axis=[1, 2]) - 100.0, tf.math.reduce_std(x, axis=[1, 2])], axis=1)
        return {"embeddings": tf.math.l2_normalize(e, axis=1)}

    class ColourStats(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, *SIZE, 3], tf.uint8, name="images")])
        def serving_default(self, images):
            return embed(images)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def embed_jpeg(self, image_bytes):
            def decode(b):
                img = tf.io.decode_image(b, channels=3, expand_animations=False)
                return tf.ensure_shape(img, [*SIZE, 3])

            images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([*SIZE, 3], tf.uint8))
            return embed(images)

    module = ColourStats()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serving_default,
                                                  "embed_jpeg": module.embed_jpeg})


@pytest.fixture(scope="module")
def signatures(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("client") / "tfface" / "1")
    _save_model(path)
    return tf.saved_model.load(path).signatures


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(0)
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.float32)[:, None, None, :]
    return np.clip(base + rng.normal(0, 25, (3, *SIZE, 3)), 0, 255).astype(np.uint8)


def _decode_b64(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _emulate_rest_predict(body_text, signatures):
    """TF-Serving's row-format JSON mapping around one in-process signature call (see module docstring)."""
    body = json.loads(body_text)
    try:
        fn = signatures[body.get("signature_name", "serving_default")]
        specs = fn.structured_input_signature[1]
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ValueError("'instances' must be a non-empty list")
        if all(isinstance(i, dict) and set(i) != {"b64"} for i in instances):  # named inputs
            if any(set(i) != set(specs) for i in instances):
                raise ValueError(f"each instance must name exactly the inputs {sorted(specs)}")
            batches = {name: [_decode_b64(i[name]) for i in instances] for name in specs}
        else:
            if len(specs) != 1:
                raise ValueError("bare instances need a signature with exactly one input")
            batches = {next(iter(specs)): [_decode_b64(i) for i in instances]}
        tensors = {name: tf.constant(values, dtype=specs[name].dtype) for name, values in batches.items()}
        outputs = fn(**tensors)
    except (KeyError, ValueError, TypeError, tf.errors.OpError) as e:
        return json.dumps({"error": f"{type(e).__name__}: {e}"})
    outputs = {k: v.numpy().tolist() for k, v in outputs.items()}
    if len(outputs) == 1:
        return json.dumps({"predictions": next(iter(outputs.values()))})
    n = len(instances)
    return json.dumps({"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]})


def _direct(signatures, name, value):
    fn = signatures[name]
    (input_name,) = fn.structured_input_signature[1]
    return fn(**{input_name: tf.constant(value)})["embeddings"].numpy()


@pytest.mark.parametrize("named", [True, False])
def test_rest_images_round_trip(signatures, crops, named):
    body = client.rest_request(images=crops, named=named)
    assert body["signature_name"] == "serving_default"
    assert len(body["instances"]) == 3
    first = body["instances"][0]["images"] if named else body["instances"][0]
    assert np.array_equal(np.array(first), crops[0])
    got = client.parse_rest_response(_emulate_rest_predict(json.dumps(body), signatures), expected_n=3)
    want = _direct(signatures, "serving_default", crops)
    assert got.dtype == np.float32 and got.shape == (3, 6)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("named", [True, False])
@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_rest_encoded_round_trip(signatures, crops, named, codec):
    encode = tf.io.encode_png if codec == "png" else tf.io.encode_jpeg
    files = [encode(c).numpy() for c in crops]
    body = client.rest_request(jpeg_bytes=files, named=named)
    assert body["signature_name"] == "embed_jpeg"
    first = body["instances"][0]["image_bytes"] if named else body["instances"][0]
    assert base64.b64decode(first["b64"]) == files[0]
    got = client.parse_rest_response(_emulate_rest_predict(json.dumps(body), signatures), expected_n=3)
    np.testing.assert_array_equal(got, _direct(signatures, "embed_jpeg", files))
    if codec == "png":  # lossless: both signatures see the same pixels
        np.testing.assert_allclose(got, _direct(signatures, "serving_default", crops), atol=1e-6)


def test_rest_single_crop_and_bytes(signatures, crops):
    body = client.rest_request(images=crops[0])
    assert len(body["instances"]) == 1
    got = client.parse_rest_response(_emulate_rest_predict(json.dumps(body), signatures), expected_n=1)
    np.testing.assert_array_equal(got, _direct(signatures, "serving_default", crops[:1]))
    png = tf.io.encode_png(crops[1]).numpy()
    body = client.rest_request(jpeg_bytes=png)  # one bytes object = one instance
    assert len(body["instances"]) == 1
    got = client.parse_rest_response(_emulate_rest_predict(json.dumps(body), signatures))
    np.testing.assert_allclose(got, _direct(signatures, "serving_default", crops[1:2]), atol=1e-6)


def test_server_errors_surface(signatures, crops):
    # A crop of the wrong size sent to embed_jpeg: the graph rejects it, the server answers {"error": ...}.
    big = tf.io.encode_png(np.zeros((20, 20, 3), np.uint8)).numpy()
    body = client.rest_request(jpeg_bytes=[big])
    with pytest.raises(client.ServingError, match="InvalidArgumentError"):
        client.parse_rest_response(_emulate_rest_predict(json.dumps(body), signatures))
    # Undecodable bytes sent to embed_jpeg.
    body = client.rest_request(jpeg_bytes=[b"not an image"])
    with pytest.raises(client.ServingError):
        client.parse_rest_response(_emulate_rest_predict(json.dumps(body), signatures))
    # Unknown signature name.
    body = client.rest_request(images=crops, signature_name="nope")
    with pytest.raises(client.ServingError, match="nope"):
        client.parse_rest_response(_emulate_rest_predict(json.dumps(body), signatures))


@pytest.mark.parametrize("response, match", [
    ('{"error": "Servable not found for request: Latest(tfface)"}', "Servable not found"),
    ({"error": "boom"}, "boom"),
])
def test_parse_error_response(response, match):
    with pytest.raises(client.ServingError, match=match):
        client.parse_rest_response(response)


@pytest.mark.parametrize("response, match", [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    ({"result": []}, "neither"),
    ({"predictions": [0.1, 0.2]}, r"\[N, D\]"),
    ({"predictions": []}, r"\[N, D\]"),
    ({"predictions": [[]]}, r"\[N, D\]"),
    ({"predictions": [[[0.1]]]}, r"\[N, D\]"),
    ({"predictions": [[0.1, 0.2], [0.3]]}, "rectangular"),
    ({"predictions": [["a", "b"]]}, "rectangular"),
    ({"predictions": [{"other": [0.1]}]}, "without"),
    ({"outputs": {"other": [[0.1]]}}, "no 'embeddings'"),
])
def test_parse_bad_shapes(response, match):
    with pytest.raises(ValueError, match=match):
        client.parse_rest_response(response)


def test_parse_other_layouts():
    want = np.array([[0.6, 0.8], [1.0, 0.0]], np.float32)
    multi = {"predictions": [{"embeddings": [0.6, 0.8], "x": 1}, {"embeddings": [1.0, 0.0], "x": 2}]}
    np.testing.assert_array_equal(client.parse_rest_response(multi), want)
    np.testing.assert_array_equal(client.parse_rest_response({"outputs": want.tolist()}), want)
    np.testing.assert_array_equal(client.parse_rest_response(json.dumps({"outputs": {"embeddings": want.tolist()}})
                                                             .encode()), want)
    with pytest.raises(ValueError, match="expected 3"):
        client.parse_rest_response({"predictions": want.tolist()}, expected_n=3)


def test_rest_request_validation(crops):
    with pytest.raises(ValueError, match="exactly one"):
        client.rest_request()
    with pytest.raises(ValueError, match="exactly one"):
        client.rest_request(images=crops, jpeg_bytes=b"x")
    with pytest.raises(TypeError, match="uint8"):
        client.rest_request(images=crops.astype(np.float32))
    with pytest.raises(ValueError, match="0..255"):
        client.rest_request(images=crops.astype(np.int32) + 100)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        client.rest_request(images=np.zeros((2, 16, 16, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        client.rest_request(images=np.zeros((0, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        client.rest_request(jpeg_bytes=[])
    with pytest.raises(ValueError, match="empty"):
        client.rest_request(jpeg_bytes=[b""])
    with pytest.raises(TypeError, match="bytes"):
        client.rest_request(jpeg_bytes=["base64 text is not bytes"])
    # Integer arrays within range are accepted and cast.
    body = client.rest_request(images=crops.astype(np.int64), signature_name="custom")
    assert body["signature_name"] == "custom"
    assert body["instances"][0]["images"] == crops[0].tolist()


def test_predict_url():
    assert client.predict_url("localhost:8501", "tfface") == "http://localhost:8501/v1/models/tfface:predict"
    assert (client.predict_url("https://h.example/", "tfface", version=3)
            == "https://h.example/v1/models/tfface/versions/3:predict")
    for bad in (-1, "3", 1.5, True):
        with pytest.raises(ValueError, match="version"):
            client.predict_url("h:1", "tfface", version=bad)
    for bad in ("", "a/b"):
        with pytest.raises(ValueError, match="model name"):
            client.predict_url("h:1", bad)


def test_post_through_local_http(signatures, crops, tmp_path, capsys):
    """``post`` + ``predict_url`` against a stdlib HTTP server wrapping the emulation (not TF-Serving)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server API)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if not self.path.startswith("/v1/models/tfface") or not self.path.endswith(":predict"):
                answer, status = json.dumps({"error": f"Servable not found for request: {self.path}"}), 404
            else:
                answer = _emulate_rest_predict(body, signatures)
                status = 400 if "error" in json.loads(answer) else 200
            data = answer.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        answer = client.post(client.predict_url(host, "tfface", version=1), client.rest_request(images=crops))
        np.testing.assert_array_equal(client.parse_rest_response(answer, expected_n=3),
                                      _direct(signatures, "serving_default", crops))
        with pytest.raises(client.ServingError, match="HTTP 404: Servable not found"):
            client.post(client.predict_url(host, "other"), client.rest_request(images=crops))
        with pytest.raises(client.ServingError, match="HTTP 400"):
            client.post(client.predict_url(host, "tfface"), client.rest_request(jpeg_bytes=[b"junk"]))

        # export/example_client.py end to end against the same stand-in server.
        paths = []
        for i, c in enumerate(crops):
            paths.append(str(tmp_path / f"crop{i}.png"))
            tf.io.write_file(paths[-1], tf.io.encode_png(c))
        spec = importlib.util.spec_from_file_location("example_client", os.path.join(EXPORT_DIR, "example_client.py"))
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        example.main([*paths, "--rest", host])
        out = capsys.readouterr().out
        assert "embeddings: 3 x 6" in out and out.count(" 1.000") == 3
    finally:
        server.shutdown()
        server.server_close()


def test_grpc_request_without_package(monkeypatch, crops):
    monkeypatch.setitem(sys.modules, "tensorflow_serving", None)
    monkeypatch.setitem(sys.modules, "tensorflow_serving.apis", None)
    with pytest.raises(ImportError, match="tensorflow-serving-api"):
        client.grpc_request(images=crops)


def test_grpc_request(signatures, crops):
    """The PredictRequest's tensors, read back with tf.make_ndarray, give the signature's embeddings."""
    pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    req = client.grpc_request(images=crops, model_name="tfface", version=7)
    assert (req.model_spec.name, req.model_spec.signature_name, req.model_spec.version.value) == (
        "tfface", "serving_default", 7)
    pixels = tf.make_ndarray(req.inputs["images"])
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, crops)

    files = [tf.io.encode_png(c).numpy() for c in crops]
    req = client.grpc_request(jpeg_bytes=files)
    assert req.model_spec.signature_name == "embed_jpeg" and not req.model_spec.HasField("version")
    assert [d.size for d in req.inputs["image_bytes"].tensor_shape.dim] == [3]
    got = signatures["embed_jpeg"](image_bytes=tf.constant(tf.make_ndarray(req.inputs["image_bytes"])))
    np.testing.assert_allclose(got["embeddings"].numpy(), _direct(signatures, "serving_default", crops), atol=1e-6)

    from tensorflow_serving.apis import predict_pb2

    resp = predict_pb2.PredictResponse()
    resp.outputs["embeddings"].CopyFrom(tf.make_tensor_proto(got["embeddings"].numpy()))
    np.testing.assert_array_equal(client.parse_grpc_response(resp, expected_n=3), got["embeddings"].numpy())
    with pytest.raises(ValueError, match="no 'scores'"):
        client.parse_grpc_response(resp, output="scores")


def test_models_config_parses():
    """export/models.config is a valid ModelServerConfig text proto (needs tensorflow-serving-api)."""
    config_pb2 = pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")
    from google.protobuf import text_format

    with open(f"{EXPORT_DIR}/models.config") as f:
        config = text_format.Parse(f.read(), config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("tfface", "/models/tfface", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1


def _batching_parameters_class():
    """BatchingParameters built from its documented .proto fields (the message is not in tensorflow-serving-api)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    f = descriptor_pb2.FileDescriptorProto(name="batching_test.proto", package="tensorflow.serving", syntax="proto3",
                                           dependency=["google/protobuf/wrappers.proto"])
    msg = f.message_type.add(name="BatchingParameters")
    fd = descriptor_pb2.FieldDescriptorProto
    for number, (name, wrapper) in enumerate([("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
                                              ("max_enqueued_batches", "Int64Value"),
                                              ("num_batch_threads", "Int64Value"),
                                              ("thread_pool_name", "StringValue")], start=1):
        msg.field.add(name=name, number=number, type=fd.TYPE_MESSAGE, label=fd.LABEL_OPTIONAL,
                      type_name=f".google.protobuf.{wrapper}")
    msg.field.add(name="allowed_batch_sizes", number=6, type=fd.TYPE_INT64, label=fd.LABEL_REPEATED)
    msg.field.add(name="pad_variable_length_inputs", number=7, type=fd.TYPE_BOOL, label=fd.LABEL_OPTIONAL)
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_batching_parameters_parse():
    from google.protobuf import text_format

    with open(f"{EXPORT_DIR}/batching_parameters.txt") as f:
        params = text_format.Parse(f.read(), _batching_parameters_class()())
    sizes = list(params.allowed_batch_sizes)
    assert sizes == sorted(sizes) and sizes[-1] == params.max_batch_size.value  # TF-Serving's requirements
    assert params.num_batch_threads.value >= 1 and params.batch_timeout_micros.value >= 0
