"""Export an embedding model to TFLite and ONNX, and run each format (TFLite, ONNX Runtime, SavedModel).

Every format has the contract of the SavedModel's ``serving_default`` (see :mod:`tfface.serving.exporter`):

* input ``images``: **uint8** ``[N, H, W, 3]``, aligned RGB crops, pixel values 0..255 (the pixel
  normalisation is inside the network, so callers never scale or centre anything);
* output ``embeddings``: float32 ``[N, D]``, L2-normalised.

Batch dimension. Both exporters keep the batch dimension dynamic by default (``batch_size=None``). The ONNX
model accepts any ``N`` directly. A TFLite interpreter is allocated for one shape at a time: call
``interpreter.resize_tensor_input(input_index, [N, H, W, 3])`` and ``allocate_tensors()`` before feeding a
batch of ``N`` (:class:`TFLiteEmbedder` does this, re-allocating only when ``N`` changes). Pass
``batch_size=1`` to :func:`export_tflite` for runtimes that want fully static shapes (e.g. some delegates);
:class:`TFLiteEmbedder` then feeds a batch one image at a time.

Quantisation. ``export_tflite(..., quantize="dynamic_int8")`` is dynamic-range quantisation: weights stored as
int8 (about 4x smaller file), activations float, no calibration data. Inputs and outputs stay uint8 / float32.

ONNX export needs the optional ``onnx`` extra (``pip install tfface[onnx]``: ``tf2onnx``, ``onnxruntime``).
(:mod:`tfface.models.onnx_graph` is unrelated: it *reads* third-party ONNX weights for ``tfface-convert``.)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from tfface.fileio import atomic_write_bytes
from tfface.serving.saved_model import SavedModelEmbedder  # noqa: F401  (a runner beside the two below)

QUANTIZE_MODES = ("none", "dynamic_int8")
DEFAULT_ONNX_OPSET = 17
SIGNATURE_KEY = "serving_default"


def _input_spec(input_size, batch_size=None):
    h, w = input_size
    return tf.TensorSpec([batch_size, h, w, 3], tf.uint8, name="images")


def _keras_input_size(model):
    _, h, w, c = model.input_shape
    if c != 3 or h is None or w is None:
        raise ValueError(f"embedding model must take (None, H, W, 3) images, got {model.input_shape}")
    return int(h), int(w)


@contextlib.contextmanager
def _uint8_function(model_or_saved_model_dir, batch_size=None):
    """Yields a tf.function ``images (uint8 [N,H,W,3]) -> {"embeddings": float32 [N,D]}``.

    It always wraps the ``serving_default`` of a *loaded* SavedModel: a Keras model is first saved to a
    temporary SavedModel (as :func:`tfface.serving.exporter.export_saved_model` does). Converting a function
    that captures the Keras 3 model's variables directly gave a TFLite model that kept them as resource
    variables (VAR_HANDLE / READ_VARIABLE ops) and returned NaN embeddings with TF 2.21, and dynamic-range
    quantisation found no constant weights to quantise; restored SavedModel variables freeze correctly.
    """
    with tempfile.TemporaryDirectory(prefix="tfface-formats-") as tmp:
        if isinstance(model_or_saved_model_dir, (str, os.PathLike)):
            saved_model_dir = os.fspath(model_or_saved_model_dir)
        else:
            model = model_or_saved_model_dir
            input_size = _keras_input_size(model)
            module = tf.Module()
            module.model = model
            module.serving_default = tf.function(
                lambda images: {"embeddings": tf.cast(model(tf.cast(images, tf.float32), training=False),
                                                      tf.float32)},
                input_signature=[_input_spec(input_size)])
            saved_model_dir = os.path.join(tmp, "saved_model")
            tf.saved_model.save(module, saved_model_dir, signatures={SIGNATURE_KEY: module.serving_default})
        loaded = tf.saved_model.load(saved_model_dir)
        if SIGNATURE_KEY not in loaded.signatures:
            raise ValueError(f"{saved_model_dir} has no {SIGNATURE_KEY!r} signature")
        signature = loaded.signatures[SIGNATURE_KEY]
        spec = signature.structured_input_signature[1].get("images")
        if spec is None or spec.dtype != tf.uint8 or spec.shape.rank != 4 or None in spec.shape[1:3]:
            raise ValueError(f"{SIGNATURE_KEY} must take uint8 images [N,H,W,3], got "
                             f"{signature.structured_input_signature}")
        input_size = (int(spec.shape[1]), int(spec.shape[2]))
        holder = tf.Module()  # keeps the restored variables alive while the converter runs
        holder.loaded = loaded
        holder.embed = tf.function(
            lambda images: {"embeddings": tf.cast(signature(images=images)["embeddings"], tf.float32)},
            input_signature=[_input_spec(input_size, batch_size)])
        yield holder.embed, holder


def export_tflite(model_or_saved_model_dir, path: str, quantize: str = "none", batch_size: int | None = None) -> str:
    """Convert an embedding model to a TFLite flatbuffer at `path` (written atomically); returns `path`.

    Args:
      model_or_saved_model_dir: a Keras embedding model (float pixels 0..255 -> L2-normalised embeddings,
        as built by :func:`tfface.models.face_model.build_embedding_model`), or a SavedModel version
        directory written by :func:`tfface.serving.exporter.export_saved_model` (its ``serving_default``).
      path: output ``.tflite`` file.
      quantize: ``"none"`` (float32 weights) or ``"dynamic_int8"`` (dynamic-range quantisation:
        ``optimizations=[tf.lite.Optimize.DEFAULT]`` without a representative dataset).
      batch_size: ``None`` keeps the batch dimension dynamic (resize the interpreter's input per batch);
        an int fixes it.

    The model takes uint8 ``images [N, H, W, 3]`` and returns float32 ``embeddings [N, D]``. Conversion goes
    through a concrete ``tf.function`` (``TFLiteConverter.from_concrete_functions``), which works the same for
    Keras 3 models (saved to a temporary SavedModel first) and for SavedModel directories.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    with _uint8_function(model_or_saved_model_dir, batch_size) as (fn, holder):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], holder)
        if quantize == "dynamic_int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    atomic_write_bytes(path, flatbuffer)
    return path


def _require_onnx(what):
    try:
        if what == "tf2onnx":
            import tf2onnx
            return tf2onnx
        import onnxruntime
        return onnxruntime
    except ImportError as exc:
        raise ImportError(f"{what} is not installed; ONNX support needs the optional extra: "
                          f"pip install 'tfface[onnx]' (tf2onnx, onnxruntime)") from exc


def export_onnx(model_or_saved_model_dir, path: str, opset: int = DEFAULT_ONNX_OPSET,
                batch_size: int | None = None) -> str:
    """Convert an embedding model to ONNX at `path` with tf2onnx (written atomically); returns `path`.

    Same inputs as :func:`export_tflite`. The ONNX graph has one input ``images`` (uint8 ``[N, H, W, 3]``,
    ``N`` dynamic unless `batch_size` is given) and one output ``embeddings`` (float32 ``[N, D]``), i.e. the
    NHWC layout of the SavedModel (no transpose for the caller). Needs ``tfface[onnx]``.
    """
    tf2onnx = _require_onnx("tf2onnx")
    with _uint8_function(model_or_saved_model_dir, batch_size) as (fn, _):
        model_proto, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=opset)
    atomic_write_bytes(path, model_proto.SerializeToString())
    return path


def _check_images(images, input_size=None):
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 0..255 [N,H,W,3], got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N,H,W,3], got shape {images.shape}")
    if input_size is not None and tuple(images.shape[1:3]) != tuple(input_size):
        raise ValueError(f"images must be {tuple(input_size)} crops, got {tuple(images.shape[1:3])}")
    return np.ascontiguousarray(images)


def _tflite_interpreter_class():
    """LiteRT's interpreter when ``ai-edge-litert`` is installed, else ``tf.lite.Interpreter`` (deprecated)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        return tf.lite.Interpreter


class TFLiteEmbedder:
    """Run a TFLite embedding model on uint8 batches: ``TFLiteEmbedder(path)(images) -> float32 [N, D]``.

    `num_threads` is passed to the interpreter (``None``: its default). A dynamic-batch model is resized
    to each batch's ``N`` (re-allocated only when ``N`` changes); a fixed-batch model is fed in chunks of its
    batch size (the last chunk padded).
    """

    def __init__(self, path: str, num_threads: int | None = None):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            self.interpreter = _tflite_interpreter_class()(model_path=path, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        inp = self.interpreter.get_input_details()[0]
        self._input_index = inp["index"]
        self._output_index = self.interpreter.get_output_details()[0]["index"]
        signature = inp.get("shape_signature", inp["shape"])
        self.input_size = (int(signature[1]), int(signature[2]))
        self.fixed_batch = None if signature[0] == -1 else int(signature[0])
        self._allocated_batch = int(inp["shape"][0])

    def _run(self, batch):
        if batch.shape[0] != self._allocated_batch:
            self.interpreter.resize_tensor_input(self._input_index, list(batch.shape))
            self.interpreter.allocate_tensors()
            self._allocated_batch = batch.shape[0]
        self.interpreter.set_tensor(self._input_index, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output_index).copy()

    def __call__(self, images) -> np.ndarray:
        images = _check_images(images, self.input_size)
        if self.fixed_batch is None:
            return self._run(images)
        n, b = images.shape[0], self.fixed_batch
        outputs = []
        for start in range(0, n, b):
            chunk = images[start:start + b]
            if chunk.shape[0] < b:
                pad = np.zeros((b - chunk.shape[0],) + chunk.shape[1:], np.uint8)
                chunk = np.concatenate([chunk, pad])
            outputs.append(self._run(chunk))
        return np.concatenate(outputs)[:n]


class OnnxEmbedder:
    """Run an ONNX embedding model with ONNX Runtime (CPU): ``OnnxEmbedder(path)(images) -> float32 [N, D]``.

    `num_threads` sets ``intra_op_num_threads`` (``None``: ONNX Runtime's default, one per physical core).
    """

    def __init__(self, path: str, num_threads: int | None = None, providers=("CPUExecutionProvider",)):
        ort = _require_onnx("onnxruntime")
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
        self.session = ort.InferenceSession(path, sess_options=options, providers=list(providers))
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        self.input_size = tuple(inp.shape[1:3]) if all(isinstance(d, int) for d in inp.shape[1:3]) else None

    def __call__(self, images) -> np.ndarray:
        images = _check_images(images, self.input_size)
        return self.session.run(None, {self._input_name: images})[0]
