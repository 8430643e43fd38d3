"""Argument checks shared by the data modules (TensorFlow-free, like the rest of :mod:`tfface.data`)."""

from __future__ import annotations

import numpy as np


def positive_int(value, name: str) -> int:
    """``value`` as an int if it is a positive integer (bools refused), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
