"""SavedModel export laid out for TF-Serving.

Layout: ``<export_base>/<model_name>/<version>/{saved_model.pb, variables/, assets/tfface.json}``.
TF-Serving polls ``<export_base>/<model_name>`` and loads the highest integer version it finds, so a
version directory must never be visible half-written: the SavedModel is written into a hidden sibling
(``.tmp-<version>-<pid>``, which TF-Serving ignores because it is not an integer) and renamed into place
only when complete. A rename within one directory is atomic on POSIX file systems.

Signature ``serving_default``: ``images`` uint8 ``[N, H, W, 3]`` (aligned RGB crops) → ``embeddings``
float32 ``[N, D]``, L2-normalised. The pixel normalisation lives inside the model, so clients send raw
pixels.
"""

from __future__ import annotations

import json
import os
import shutil

import tensorflow as tf

import tfface
from tfface.serving.layout import list_versions

ASSET_NAME = "tfface.json"


class _EmbeddingModule(tf.Module):
    """Holds the Keras embedding model and the serving functions, so variables are tracked once."""

    def __init__(self, model, input_size):
        super().__init__()
        self.model = model
        h, w = input_size
        self.serving_default = tf.function(
            self._embed_uint8,
            input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8, name="images")],
        )

    def _embed_uint8(self, images):
        embeddings = self.model(tf.cast(images, tf.float32), training=False)
        return {"embeddings": tf.cast(embeddings, tf.float32)}


def export_saved_model(model, export_base: str, model_name: str, version: int | None = None,
                       metadata: dict | None = None, extra_assets: dict[str, str] | None = None) -> str:
    """Export the embedding `model` (float pixels 0..255 → L2-normalised embeddings) for TF-Serving.

    Args:
      model: a Keras model with input ``(None, H, W, 3)``.
      export_base: the base directory TF-Serving is pointed at (``--model_base_path`` is
        ``<export_base>/<model_name>``).
      model_name: the model's directory name.
      version: integer version; ``None`` picks one more than the highest present (1 when empty).
      metadata: extra JSON-serialisable facts stored in ``assets/tfface.json``.
      extra_assets: ``{asset file name: source path}`` copied into ``assets/`` (e.g. ``thresholds.json``).

    Returns the final version directory. Raises FileExistsError if that version already exists.
    """
    model_dir = os.path.join(export_base, model_name)
    os.makedirs(model_dir, exist_ok=True)
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
    module = _EmbeddingModule(model, (h, w))
    tmp = os.path.join(model_dir, f".tmp-{int(version)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        asset_dir = os.path.join(tmp, "assets")
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serving_default})
        os.makedirs(asset_dir, exist_ok=True)
        info = {
            "tfface_version": tfface.__version__,
            "input_size": [int(h), int(w)],
            "input": "uint8 RGB [N,H,W,3], aligned to the ArcFace 5-point template",
            "normalisation": "(x - 127.5) / 128, inside the model",
            "embedding_size": int(model.output_shape[-1]),
            "embedding": "float32, L2-normalised; similarity = cosine (dot product)",
            "signatures": {"serving_default": {"inputs": {"images": "uint8 [N,H,W,3]"},
                                               "outputs": {"embeddings": "float32 [N,D]"}}},
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
