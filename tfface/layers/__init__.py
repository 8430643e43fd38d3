"""Keras layers users import: classification/margin heads, embedding head, normalisation, center loss.

All layers are registered for Keras serialisation under the package name ``"tfface"``, so a ``.keras``
file containing them loads with ``keras.saving.load_model`` once ``tfface.layers`` is imported.
"""

from tfface.layers.embedding import EmbeddingHead, L2Normalize
from tfface.layers.heads import HEADS, build_head, head_kwargs_names
from tfface.layers.margins import ArcFace, CombinedMargin, CosFace, SubCenterArcFace
from tfface.layers.partial_fc import PartialFC
from tfface.layers.preprocessing import FaceNormalization
from tfface.layers.softmax import NormFace, Softmax
from tfface.layers.sphereface import SphereFace

__all__ = [
    "HEADS",
    "ArcFace",
    "CenterLoss",
    "CombinedMargin",
    "CosFace",
    "EmbeddingHead",
    "FaceNormalization",
    "L2Normalize",
    "NormFace",
    "PartialFC",
    "Softmax",
    "SphereFace",
    "SubCenterArcFace",
    "build_head",
    "head_kwargs_names",
]

from tfface.layers.center import CenterLoss  # noqa: E402
