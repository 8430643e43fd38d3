"""Model size and cost as papers report them: parameter counts and multiply-accumulates."""

from __future__ import annotations

import keras
import numpy as np


def _is_moving_statistic(weight):
    # BatchNorm running mean/variance are buffers in PyTorch, not parameters; papers don't count them.
    return weight.path.split("/")[-1] in ("moving_mean", "moving_variance")


def count_params(model):
    """Parameters as PyTorch's ``sum(p.numel() for p in model.parameters())`` counts them.

    Every weight of ``model`` except BatchNorm moving statistics, trainable or not (a frozen BN scale
    is still a parameter). This is the figure papers and model zoos publish.
    """
    return int(sum(int(np.prod(w.shape)) for w in model.weights if not _is_moving_statistic(w)))


def _leaf_layers(model):
    # Nested models and composite layers (EmbeddingHead) are descended into; leaves do the arithmetic.
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True) if not layer._layers]


def layer_macs(layer):
    """Multiply-accumulates of one forward pass of ``layer`` for one image (0 for layers without a kernel).

    Convolutions: ``H_out * W_out * k_h * k_w * (C_in / groups) * C_out``; dense: ``C_in * C_out``.
    BatchNorm, activations, additions and pooling are not counted: they are a fraction of a percent
    of a face CNN's cost and the published figures (ptflops / arcface_torch, the MobileFaceNet
    paper's "MAdds") leave them out or count them the same negligible way.
    """
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
        return 0
    if not layer.built:
        raise ValueError(f"layer {layer.name!r} is not built; build the model before counting")
    input_shape = next(iter(layer._build_shapes_dict.values()))
    output_shape = layer.compute_output_shape(input_shape)
    kernel_shape = layer.kernel.shape
    if isinstance(layer, keras.layers.Dense):
        return int(kernel_shape[0] * kernel_shape[1])
    _, h, w, _ = output_shape
    if h is None or w is None:
        raise ValueError(f"layer {layer.name!r} has a dynamic spatial size; build the model for a fixed input")
    # Conv2D kernels are (kh, kw, C_in / groups, C_out); depthwise kernels (kh, kw, C_in, multiplier),
    # and every one of their C_in * multiplier outputs sums over kh * kw inputs.
    return int(h * w * np.prod(kernel_shape))


def count_macs(model):
    """Multiply-accumulates of one forward pass for one image, at the input size ``model`` was built for.

    Model zoos call this "FLOPs" (arcface_torch, ptflops: IResNet-50 6.3 G) or "MAdds" (MobileFaceNet:
    221 M); OpenVINO's "GFLOPs" are twice this figure (one multiply plus one add).
    """
    return int(sum(layer_macs(layer) for layer in _leaf_layers(model)))
