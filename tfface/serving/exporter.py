"""SavedModel export laid out for TF-Serving.

Layout: ``<export_base>/<model_name>/<version>/{saved_model.pb, variables/, assets/tfface.json}``.
TF-Serving polls ``<export_base>/<model_name>`` and loads the highest integer version it finds, so a
version directory must never be visible half-written: the SavedModel is written into a hidden sibling
(``.tmp-<version>-<pid>-<host>``, which TF-Serving ignores because it is not an integer) and renamed into
place only when complete. A rename within one directory is atomic on POSIX file systems. An export killed
midway leaves only that hidden temporary behind; the next export into the same model directory removes
temporaries of this host whose process is gone.

Signatures (both ``tensorflow/serving/predict``, so TF-Serving's Predict API and REST ``:predict`` serve
them unchanged; the names below are part of the interface and stay stable):

* ``serving_default``: ``images`` uint8 ``[N, H, W, 3]`` (aligned RGB crops) → ``embeddings`` float32
  ``[N, D]``, L2-normalised.
* ``embed_jpeg``: ``image_bytes`` string ``[N]``, each an encoded JPEG or PNG (whatever
  ``tf.io.decode_image`` reads also works: BMP, WebP, a GIF's first frame) of an *aligned* crop, grey or
  RGB → ``embeddings`` float32 ``[N, D]``. Decoded in the graph to RGB; a crop whose size is not
  ``H x W`` is resized bilinearly (with antialiasing) and rounded to whole 0..255 values, i.e. the same
  pixels a client would send to ``serving_default`` after resizing to uint8 itself. Bytes that do not
  decode fail the whole request with ``InvalidArgumentError`` ("Unknown image file format ..." or the
  decoder's own message, e.g. "Invalid PNG ..."); no embedding is returned for a bad batch.

The pixel normalisation lives inside the model, so clients send raw pixels. With ``flip_fusion="sum"``
both signatures embed each crop and its left-right mirror and return the L2-normalised sum (flip-test
fusion, done in the graph); ``assets/tfface.json`` records the choice under ``flip_fusion``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket

import tensorflow as tf

import tfface
from tfface.serving.layout import list_versions

ASSET_NAME = "tfface.json"
INPUT_IMAGES = "images"
INPUT_IMAGE_BYTES = "image_bytes"
OUTPUT_EMBEDDINGS = "embeddings"
FLIP_FUSIONS = ("none", "sum")
_TMP_RE = re.compile(r"^\.tmp-(\d+)-(\d+)-(.+)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as e:  # EPERM: alive but another user's
        return e.errno != errno.ESRCH
    return True


def remove_stale_temporaries(model_dir: str) -> list[str]:
    """Remove ``.tmp-<version>-<pid>-<host>`` directories left in `model_dir` by killed exports of this host
    (their pid no longer exists); return the removed paths. Temporaries of other hosts (a shared file system)
    or of live processes are left alone."""
    removed = []
    if not os.path.isdir(model_dir):
        return removed
    host = _host()
    for name in os.listdir(model_dir):
        m = _TMP_RE.match(name)
        if m and m.group(3) == host and int(m.group(2)) != os.getpid() and not _pid_alive(int(m.group(2))):
            path = os.path.join(model_dir, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class _EmbeddingModule(tf.Module):
    """Holds the Keras embedding model and the serving functions, so variables are tracked once."""

    def __init__(self, model, input_size, flip_fusion: str = "none"):
        super().__init__()
        self.model = model
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.flip_fusion = flip_fusion
        h, w = self.input_size
        self.serving_default = tf.function(
            self._embed_uint8,
            input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8, name=INPUT_IMAGES)],
        )
        self.embed_jpeg = tf.function(
            self._embed_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_IMAGE_BYTES)],
        )

    def _embed_float(self, pixels):
        """float32 0..255 [N,H,W,3] → {"embeddings": L2-normalised float32 [N,D]}."""
        if self.flip_fusion == "sum":
            n = tf.shape(pixels)[0]
            both = self.model(tf.concat([pixels, tf.reverse(pixels, axis=[2])], axis=0), training=False)
            both = tf.cast(both, tf.float32)
            embeddings = tf.math.l2_normalize(both[:n] + both[n:], axis=-1)
        else:
            embeddings = tf.cast(self.model(pixels, training=False), tf.float32)
        return {OUTPUT_EMBEDDINGS: embeddings}

    def _embed_uint8(self, images):
        return self._embed_float(tf.cast(images, tf.float32))

    def _decode_one(self, data):
        h, w = self.input_size
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        image = tf.cast(image, tf.float32)
        same = tf.logical_and(tf.equal(tf.shape(image)[0], h), tf.equal(tf.shape(image)[1], w))

        def resize():
            resized = tf.image.resize(image, [h, w], method="bilinear", antialias=True)
            return tf.clip_by_value(tf.round(resized), 0.0, 255.0)

        image = tf.cond(same, lambda: image, resize)
        return tf.ensure_shape(image, [h, w, 3])

    def _embed_bytes(self, image_bytes):
        h, w = self.input_size
        pixels = tf.map_fn(self._decode_one, image_bytes,
                           fn_output_signature=tf.TensorSpec([h, w, 3], tf.float32))
        return self._embed_float(pixels)


def export_saved_model(model, export_base: str, model_name: str, version: int | None = None,
                       metadata: dict | None = None, extra_assets: dict[str, str] | None = None,
                       flip_fusion: str = "none") -> str:
    """Export the embedding `model` (float pixels 0..255 → L2-normalised embeddings) for TF-Serving.

    Args:
      model: a Keras model with input ``(None, H, W, 3)``.
      export_base: the base directory TF-Serving is pointed at (``--model_base_path`` is
        ``<export_base>/<model_name>``).
      model_name: the model's directory name.
      version: integer version; ``None`` picks one more than the highest present (1 when empty).
      metadata: extra JSON-serialisable facts stored in ``assets/tfface.json``.
      extra_assets: ``{asset file name: source path}`` copied into ``assets/`` (e.g. ``thresholds.json``).
      flip_fusion: ``"none"`` or ``"sum"`` (embed crop and mirror, sum, L2-normalise; in both signatures).

    Returns the final version directory. Raises FileExistsError if that version already exists.
    """
    if flip_fusion not in FLIP_FUSIONS:
        raise ValueError(f"flip_fusion must be one of {FLIP_FUSIONS}, got {flip_fusion!r}")
    model_dir = os.path.join(export_base, model_name)
    os.makedirs(model_dir, exist_ok=True)
    remove_stale_temporaries(model_dir)
    if version is None:
        existing = list_versions(model_dir)
        version = existing[-1] + 1 if existing else 1
    if int(version) < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}")
    final = os.path.join(model_dir, str(int(version)))
    if os.path.exists(final):
        raise FileExistsError(f"export version already exists: {final}")

    _, h, w, c = model.input_shape
    if c != 3 or h is None or w is None:
        raise ValueError(f"embedding model must take (None, H, W, 3) images, got {model.input_shape}")
    module = _EmbeddingModule(model, (h, w), flip_fusion)
    tmp = os.path.join(model_dir, f".tmp-{int(version)}-{os.getpid()}-{_host()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        asset_dir = os.path.join(tmp, "assets")
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serving_default,
                                                     "embed_jpeg": module.embed_jpeg})
        os.makedirs(asset_dir, exist_ok=True)
        outputs = {OUTPUT_EMBEDDINGS: "float32 [N,D], L2-normalised"}
        info = {
            "tfface_version": tfface.__version__,
            "input_size": [int(h), int(w)],
            "input": "uint8 RGB [N,H,W,3], aligned to the ArcFace 5-point template",
            "normalisation": "(x - 127.5) / 128, inside the model",
            "embedding_size": int(model.output_shape[-1]),
            "embedding": "float32, L2-normalised; similarity = cosine (dot product)",
            "flip_fusion": flip_fusion,
            "signatures": {
                "serving_default": {"method": "tensorflow/serving/predict",
                                    "inputs": {INPUT_IMAGES: "uint8 [N,H,W,3], aligned RGB crops"},
                                    "outputs": outputs},
                "embed_jpeg": {"method": "tensorflow/serving/predict",
                               "inputs": {INPUT_IMAGE_BYTES: "string [N], encoded JPEG/PNG of aligned crops; "
                                                             "other sizes are resized bilinearly to H x W"},
                               "outputs": outputs},
            },
        }
        info.update(metadata or {})
        for name, source in (extra_assets or {}).items():
            if os.path.basename(name) != name or name == ASSET_NAME:
                raise ValueError(f"asset name must be a plain file name other than {ASSET_NAME}, got {name!r}")
            shutil.copyfile(source, os.path.join(asset_dir, name))
        with open(os.path.join(asset_dir, ASSET_NAME), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2, sort_keys=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
