"""``keras.layers.PReLU`` with tfface's initial slope (0.25), for the benchmarks that compare the two PReLUs.

Imported by ``bench/train_step.py --prelu_impl=keras`` and ``bench/prelu.py`` (scripts run as
``python bench/X.py`` have ``bench/`` on their import path).
"""

from __future__ import annotations


def keras_prelu_class():
    """A ``keras.layers.PReLU`` subclass taking ``tfface.layers.PReLU``'s arguments and defaults."""
    import keras

    class KerasPReLU(keras.layers.PReLU):
        def __init__(self, alpha_initializer=None, **kwargs):
            super().__init__(alpha_initializer=alpha_initializer or keras.initializers.Constant(0.25), **kwargs)

    return KerasPReLU
