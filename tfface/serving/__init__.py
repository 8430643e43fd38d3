"""Deployment: SavedModel export, the Python inference API (``FaceEmbedder``) and ``Gallery`` for 1:N search.

Importing this package does not import TensorFlow; loading a model does.
"""

from tfface.serving.embedder import Embeddings, FaceEmbedder, Identification
from tfface.serving.gallery import UNKNOWN, Gallery, mean_templates

__all__ = ["UNKNOWN", "Embeddings", "FaceEmbedder", "Gallery", "Identification", "mean_templates"]
