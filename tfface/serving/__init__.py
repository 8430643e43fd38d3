"""Deployment: SavedModel export and inference helpers; ``Gallery`` for 1:N search (NumPy, optional FAISS)."""

from tfface.serving.gallery import UNKNOWN, Gallery, mean_templates

__all__ = ["UNKNOWN", "Gallery", "mean_templates"]
