"""Request builders and response parsers for a tfface export served by TF-Serving.

No TensorFlow import at module level: a REST client needs only NumPy and the standard library. The
payloads follow TF-Serving's JSON mapping for the ``predict`` API:

* row format: ``{"signature_name": ..., "instances": [<one value or {input name: value} per image>]}``;
* binary strings (encoded JPEG/PNG) travel as ``{"b64": <base64 text>}`` objects;
* a model with a single output answers ``{"predictions": [[...D floats...], ...]}`` (the output name is
  omitted), and every error as ``{"error": <message>}``.

Signatures of the export (see ``export/README.md``):

* ``serving_default``: ``images`` uint8 ``[N, H, W, 3]`` (aligned RGB crops) → ``embeddings`` float32 ``[N, D]``;
* ``embed_jpeg``: ``image_bytes`` string ``[N]`` (encoded JPEG/PNG of aligned crops) → ``embeddings``.

``grpc_request`` needs the optional ``tensorflow-serving-api`` package (and TensorFlow), imported only when
called.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Mapping

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
JPEG_SIGNATURE = "embed_jpeg"
IMAGES_INPUT = "images"
JPEG_INPUT = "image_bytes"
OUTPUT = "embeddings"

__all__ = ["DEFAULT_SIGNATURE", "JPEG_SIGNATURE", "IMAGES_INPUT", "JPEG_INPUT", "OUTPUT", "ServingError",
           "predict_url", "rest_request", "parse_rest_response", "post", "grpc_request", "parse_grpc_response"]


class ServingError(RuntimeError):
    """The model server answered with an error (``{"error": ...}`` body, or an HTTP error status)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message if status is None else f"HTTP {status}: {message}")
        self.message = message
        self.status = status


# ---------------------------------------------------------------------------------------------- inputs


def _check_images(images) -> np.ndarray:
    """``[N, H, W, 3]`` (or one ``[H, W, 3]`` crop) → uint8 array; integer arrays within 0..255 are cast."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ValueError(f"images must be uint8 [N, H, W, 3] (or one [H, W, 3] crop) with N >= 1, "
                         f"got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iu":
            raise TypeError(f"images must hold raw 0..255 pixels as uint8 (normalisation is inside the model), "
                            f"got dtype {arr.dtype}")
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"integer images must lie in 0..255, got {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
    return arr


def _check_encoded(jpeg_bytes) -> list[bytes]:
    """One encoded image or an iterable of them → list of ``bytes`` (at least one, none empty)."""
    items = [jpeg_bytes] if isinstance(jpeg_bytes, bytes | bytearray | memoryview) else list(jpeg_bytes)
    if not items:
        raise ValueError("jpeg_bytes is empty: pass at least one encoded image")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, bytes | bytearray | memoryview):
            raise TypeError(f"jpeg_bytes[{i}] must be bytes (the encoded file), got {type(item).__name__}")
        if len(item) == 0:
            raise ValueError(f"jpeg_bytes[{i}] is empty")
        out.append(bytes(item))
    return out


def _pick_input(images, jpeg_bytes):
    if (images is None) == (jpeg_bytes is None):
        raise ValueError("pass exactly one of images= (uint8 pixels) or jpeg_bytes= (encoded JPEG/PNG)")
    if images is not None:
        return IMAGES_INPUT, DEFAULT_SIGNATURE, _check_images(images)
    return JPEG_INPUT, JPEG_SIGNATURE, _check_encoded(jpeg_bytes)


# ------------------------------------------------------------------------------------------------ REST


def predict_url(host: str, model_name: str, version: int | None = None) -> str:
    """``http://<host>/v1/models/<model_name>[/versions/<version>]:predict``.

    ``host`` is ``"host:port"`` (REST port, 8501 by default in ``export/README.md``) or a URL with a scheme.
    Without ``version`` the server uses the highest version it has loaded.
    """
    if not host:
        raise ValueError("host is empty")
    if not model_name or "/" in model_name or ":" in model_name:
        raise ValueError(f"bad model name {model_name!r}")
    base = host.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    url = f"{base}/v1/models/{model_name}"
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int | np.integer) or version < 0:
            raise ValueError(f"version must be a non-negative integer, got {version!r}")
        url += f"/versions/{int(version)}"
    return url + ":predict"


def rest_request(images=None, jpeg_bytes=None, signature_name: str | None = None, named: bool = True) -> dict:
    """JSON-ready body of a REST ``predict`` request in row (``instances``) format.

    Args:
      images: uint8 ``[N, H, W, 3]`` aligned RGB crops (or one ``[H, W, 3]``) for ``serving_default``.
      jpeg_bytes: one encoded JPEG/PNG (``bytes``) or a list of them, for ``embed_jpeg``.
      signature_name: defaults to ``serving_default`` for images and ``embed_jpeg`` for encoded bytes.
      named: ``True`` writes each instance as ``{"images": ...}`` / ``{"image_bytes": {"b64": ...}}``;
        ``False`` writes the bare value (``[[[r, g, b], ...]]`` / ``{"b64": ...}``). TF-Serving accepts both
        for a signature with a single input.

    Exactly one of ``images`` / ``jpeg_bytes``. Serialise with ``json.dumps``.
    """
    name, default_signature, values = _pick_input(images, jpeg_bytes)
    if name == IMAGES_INPUT:
        rows = values.tolist()  # uint8 → nested lists of Python ints
    else:
        rows = [{"b64": base64.b64encode(b).decode("ascii")} for b in values]
    instances = [{name: row} for row in rows] if named else rows
    return {"signature_name": signature_name or default_signature, "instances": instances}


def parse_rest_response(response, expected_n: int | None = None, output: str = OUTPUT) -> np.ndarray:
    """Embeddings float32 ``[N, D]`` from a REST ``predict`` response (JSON text/bytes or parsed dict).

    Accepts the row-format answer ``{"predictions": [[...], ...]}`` (also a list of ``{output: [...]}``
    objects, as the server writes when a signature has several outputs) and the columnar answer
    ``{"outputs": ...}``. Raises ``ServingError`` on ``{"error": ...}`` and ``ValueError`` on anything that
    is not an ``[N, D]`` numeric array (or has ``N != expected_n``).
    """
    if isinstance(response, bytes | bytearray | str):
        try:
            response = json.loads(response)
        except json.JSONDecodeError as e:
            raise ValueError(f"response is not JSON: {e}") from None
    if not isinstance(response, Mapping):
        raise ValueError(f"response must be a JSON object, got {type(response).__name__}")
    if "error" in response:
        raise ServingError(str(response["error"]))
    if "predictions" in response:
        value = response["predictions"]
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            if not all(output in v for v in value):
                raise ValueError(f"predictions hold objects without the {output!r} output: {sorted(value[0])}")
            value = [v[output] for v in value]
    elif "outputs" in response:
        value = response["outputs"]
        if isinstance(value, Mapping):
            if output not in value:
                raise ValueError(f"outputs has no {output!r} entry: {sorted(value)}")
            value = value[output]
    else:
        raise ValueError(f"response has neither 'predictions' nor 'outputs' (nor 'error'): keys {sorted(response)}")
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise ValueError(f"embeddings are not a rectangular numeric array: {e}") from None
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"embeddings must have shape [N, D] with N, D >= 1, got {arr.shape}")
    if expected_n is not None and arr.shape[0] != expected_n:
        raise ValueError(f"expected {expected_n} embeddings, got {arr.shape[0]}")
    return arr


def post(url: str, body: Mapping, timeout: float = 30.0) -> dict:
    """POST ``body`` as JSON to ``url`` (standard library only) and return the parsed JSON answer.

    An HTTP error status raises ``ServingError`` carrying the server's ``error`` message when it sent one.
    """
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        try:
            message = json.loads(text).get("error", text)
        except (json.JSONDecodeError, AttributeError):
            message = text
        raise ServingError(message or e.reason, status=e.code) from None


# ------------------------------------------------------------------------------------------------ gRPC


def _predict_pb2():
    try:
        from tensorflow_serving.apis import predict_pb2
    except ImportError as e:
        raise ImportError("grpc_request needs the optional 'tensorflow-serving-api' package (pip install "
                          "tensorflow-serving-api matching your TensorFlow version); the REST helpers "
                          "(rest_request / parse_rest_response) need nothing extra") from e
    return predict_pb2


def grpc_request(images=None, jpeg_bytes=None, model_name: str = "tfface", signature_name: str | None = None,
                 version: int | None = None):
    """A ``tensorflow_serving.apis.predict_pb2.PredictRequest`` for ``PredictionService/Predict`` (port 8500).

    Same inputs as ``rest_request``; ``version=None`` lets the server pick its highest loaded version.
    Imports ``tensorflow-serving-api`` and TensorFlow lazily; raises ImportError when the former is missing.
    """
    predict_pb2 = _predict_pb2()
    name, default_signature, values = _pick_input(images, jpeg_bytes)
    import tensorflow as tf

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name or default_signature
    if version is not None:
        request.model_spec.version.value = int(version)
    if name == IMAGES_INPUT:
        proto = tf.make_tensor_proto(values, dtype=tf.uint8)
    else:
        proto = tf.make_tensor_proto(values, dtype=tf.string, shape=[len(values)])
    request.inputs[name].CopyFrom(proto)
    return request


def parse_grpc_response(response, expected_n: int | None = None, output: str = OUTPUT) -> np.ndarray:
    """Embeddings float32 ``[N, D]`` from a ``PredictResponse`` (``response.outputs[output]``)."""
    import tensorflow as tf

    if output not in response.outputs:
        raise ValueError(f"response has no {output!r} output: {sorted(response.outputs)}")
    arr = np.asarray(tf.make_ndarray(response.outputs[output]), dtype=np.float32)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"embeddings must have shape [N, D] with N, D >= 1, got {arr.shape}")
    if expected_n is not None and arr.shape[0] != expected_n:
        raise ValueError(f"expected {expected_n} embeddings, got {arr.shape[0]}")
    return arr

