"""Calling an exported SavedModel's ``serving_default`` from Python, with its signature checked.

TensorFlow is imported when a model is loaded, not at import, so command-line tools can validate their
flags first.
"""

from __future__ import annotations


class SavedModelEmbedder:
    """Callable ``uint8 (B, H, W, 3) -> float32 (B, D)`` over a SavedModel's ``serving_default``.

    Attributes:
        model_dir: the resolved version directory.
        image_size: (H, W) from the signature's input spec, or None if not static.
    """

    def __init__(self, model_dir: str):
        import tensorflow as tf  # imported here so flag errors are reported without loading TF

        self._tf = tf
        self.model_dir = model_dir
        # Keep a reference to the loaded object: signature functions only weakly reference its
        # variables, which would be freed if the object were garbage-collected.
        self._loaded = tf.saved_model.load(model_dir)
        if "serving_default" not in self._loaded.signatures:
            raise ValueError(f"{model_dir}: no 'serving_default' signature "
                             f"(has {sorted(self._loaded.signatures.keys())})")
        self._signature = self._loaded.signatures["serving_default"]
        _, inputs = self._signature.structured_input_signature
        spec = inputs.get("images")
        if spec is None:
            raise ValueError(f"{model_dir}: serving_default has no 'images' input (inputs: {sorted(inputs)})")
        if spec.dtype != tf.uint8 or spec.shape.rank != 4:
            raise ValueError(f"{model_dir}: 'images' must be uint8 [N,H,W,3], got {spec.dtype.name} {spec.shape}")
        if spec.shape[0] is not None:
            raise ValueError(f"{model_dir}: 'images' has a fixed batch size {spec.shape[0]}; need [None,H,W,3]")
        if "embeddings" not in self._signature.structured_outputs:
            raise ValueError(f"{model_dir}: serving_default has no 'embeddings' output "
                             f"(outputs: {sorted(self._signature.structured_outputs)})")
        h, w = spec.shape[1], spec.shape[2]
        self.image_size = (int(h), int(w)) if h is not None and w is not None else None

    def __call__(self, images):
        return self._signature(images=self._tf.constant(images, dtype=self._tf.uint8))["embeddings"].numpy()
