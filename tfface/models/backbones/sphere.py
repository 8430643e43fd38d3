"""SphereFace residual CNNs ("SphereNet", "sphere20a") of Liu, Wen, Yu, Li, Raj, Song: "SphereFace: Deep
Hypersphere Embedding for Face Recognition", CVPR 2017, Table 2; also the trunk of AM-Softmax (Wang et al.
2018) and CosFace (Wang et al. 2018) in their CASIA-WebFace experiments.

Table 2 of the paper, input 112x96x3 (``[3x3, c] x n`` = a residual unit of two 3x3 convolutions)::

    stage     output   layer                                  4-layer  10-layer  20-layer  36-layer  64-layer
    conv1.x   56x48    3x3, 64, stride 2   + [3x3, 64]  x n      0        0         1         2         3
    conv2.x   28x24    3x3, 128, stride 2  + [3x3, 128] x n      0        1         2         4         8
    conv3.x   14x12    3x3, 256, stride 2  + [3x3, 256] x n      0        2         4         8        16
    conv4.x    7x6     3x3, 512, stride 2  + [3x3, 512] x n      0        0         1         2         3
    fc5       512      fully connected                       <- not in this module (see below)

The depth counts the convolutions: ``4 + 2 * sum(n)`` (20 for ``n = (1, 2, 4, 1)``). Every convolution
is followed by PReLU, and a residual unit is ``x + PReLU(conv(PReLU(conv(x))))`` with an identity shortcut
(the stride-2 convolution opening each stage changes width and size, so no projection shortcut is needed).

Deliberate departures from ResNet, as in the authors' Caffe prototxt (``sphereface_model.prototxt``):

* no BatchNorm; PReLU (He et al. 2015) with one slope per channel, initialised to 0.25;
* every convolution has a bias initialised to 0. In Caffe the residual convolutions' biases have
  ``lr_mult: 0`` (frozen at zero) while the stride-2 ones learn; PyTorch ports (sphere20a) train all of
  them. Here all are trainable, like the ports -- and the 22.67M parameter count includes them;
* initialisation: Caffe "xavier" (uniform in ``+-sqrt(3 / fan_in)``, which is Keras' ``lecun_uniform``)
  for the stride-2 convolutions, Gaussian with std 0.01 for the residual ones. The small Gaussian makes
  each residual branch start close to zero, so the untrained network is nearly its four strided layers
  (presumably why the deep variants train without BN).

``batch_norm=True`` inserts BatchNorm between each convolution and its PReLU and drops the convolution
biases (BN's beta replaces them), as many AM-Softmax/CosFace re-implementations do.

The paper's ``fc5`` (a plain 512-d fully connected layer on the flattened 7x6x512 map) is
``tfface.layers.EmbeddingHead(512, kind="fc")`` in tfface: BN -> Flatten -> Dense -> BN. Its two extra BNs
add 1,024 + 512 parameters, and its Dense has no bias (-512), so SphereFace-20 counts 22,671,680 here
against the 22,670,656 of the original (+0.005%).
"""

from __future__ import annotations

import keras

from tfface.models.backbones import common

# Residual units per stage (Table 2; 20/36/64 also in the authors' make_spherenet.py).
UNITS = {
    4: (0, 0, 0, 0),
    10: (0, 1, 2, 0),
    20: (1, 2, 4, 1),
    36: (2, 4, 8, 2),
    64: (3, 8, 16, 3),
}
WIDTHS = (64, 128, 256, 512)
# Four stride-2 convolutions; anything >= 1 pixel survives them, but below 16 px the last stages see
# a 1x1 map whose 3x3 convolutions are all padding, so smaller inputs are refused as a likely mistake.
MIN_INPUT_SIZE = 16

# Caffe "xavier" with its default variance_norm FAN_IN: U(-sqrt(3/fan_in), +sqrt(3/fan_in)).
_STRIDED_INIT = "lecun_uniform"


def _residual_init():
    # Caffe gaussian filler, std 0.01 (a fresh object per layer: Keras initializers are not shared).
    return keras.initializers.RandomNormal(stddev=0.01)


def _check_config(units, widths):
    units, widths = tuple(units), tuple(widths)
    if len(units) != 4 or any(not isinstance(n, int) or n < 0 for n in units):
        raise ValueError(f"sphere: units must be 4 non-negative ints, got {units}")
    if len(widths) != 4 or any(not isinstance(c, int) or c <= 0 for c in widths):
        raise ValueError(f"sphere: widths must be 4 positive ints, got {widths}")
    return units, widths


def _conv_prelu(x, filters, strides, name, act_name, kernel_initializer, batch_norm, bn_momentum, bn_epsilon):
    # Caffe pads 1 pixel on every side for the stride-2 3x3 convolutions; common.conv2d does the same
    # (Keras "same" would pad bottom/right only), so Caffe/PyTorch weights give identical features.
    x = common.conv2d(x, filters, 3, strides=strides, name=name, use_bias=not batch_norm,
                      kernel_initializer=kernel_initializer)
    if batch_norm:
        x = common.batch_norm(x, name + "_bn", momentum=bn_momentum, epsilon=bn_epsilon)
    return common.prelu(x, act_name, init=0.25)


def sphere(
    input_shape=(112, 96, 3),
    *,
    units=UNITS[20],
    widths=WIDTHS,
    batch_norm=False,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    name="sphere",
):
    """Builds a SphereFace residual CNN (Liu et al. 2017, Table 2), from a normalised image to conv4.x.

    Input: float ``(B, H, W, 3)`` already normalised, ``(x - 127.5) / 128`` as in the paper's Caffe data layer.
    Output: ``(B, h, w, widths[3])`` with ``h = ceil(H / 16)``, ``w = ceil(W / 16)`` (each stride-2
    convolution pads 1 and maps ``n`` to ``floor((n - 1) / 2) + 1``): ``(7, 6, 512)`` at 112x96 (paper),
    ``(7, 7, 512)`` at 112x112. Add ``EmbeddingHead(512, kind="fc")`` for the paper's fc5.

    Stage ``s`` is ``conv{s}_1`` (3x3, ``widths[s]``, stride 2) + PReLU, then ``units[s]`` residual units
    ``x + PReLU(conv(PReLU(conv(x))))``. Layer names follow the authors' prototxt (``conv2_1``,
    ``relu2_1``, ..., ``res2_3`` for the addition closing a unit), so sphere20 maps one-to-one onto the
    released Caffe model and its PyTorch port.

    Paper defaults: input 112x96, 20 layers ``units=(1, 2, 4, 1)``, widths 64/128/256/512, no BatchNorm,
    PReLU slopes 0.25, convolution biases, xavier (strided) / N(0, 0.01) (residual) initialisation,
    512-d fc5 -> 22.67M parameters, 1.75 G multiply-accumulates.

    Args:
        input_shape: ``(H, W, 3)``; H and W at least 16.
        units: residual units per stage (4 non-negative ints), see ``UNITS``.
        widths: channels of the four stages.
        batch_norm: insert BatchNorm after every convolution (convolutions then have no bias).
        bn_momentum, bn_epsilon: BatchNorm settings when ``batch_norm`` (torch momentum 0.1 = Keras 0.9).
        name: model name.
    """
    units, widths = _check_config(units, widths)
    input_shape = common.check_input_shape(input_shape, MIN_INPUT_SIZE, "SphereFace CNN")
    bn = dict(batch_norm=bool(batch_norm), bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for stage, (n, filters) in enumerate(zip(units, widths, strict=True), start=1):
        x = _conv_prelu(x, filters, 2, f"conv{stage}_1", f"relu{stage}_1", _STRIDED_INIT, **bn)
        for unit in range(n):
            # Unit i holds conv{stage}_{2i+2} and conv{stage}_{2i+3}, the prototxt's numbering.
            first, second = 2 * unit + 2, 2 * unit + 3
            y = _conv_prelu(x, filters, 1, f"conv{stage}_{first}", f"relu{stage}_{first}", _residual_init(), **bn)
            y = _conv_prelu(y, filters, 1, f"conv{stage}_{second}", f"relu{stage}_{second}", _residual_init(), **bn)
            x = keras.layers.Add(name=f"res{stage}_{second}")([x, y])
    return keras.Model(inputs, x, name=name)


def _by_depth(depth, input_shape, kwargs):
    kwargs.setdefault("name", f"sphere{depth}")
    return sphere(input_shape, units=UNITS[depth], **kwargs)


def sphere4(input_shape=(112, 96, 3), **kwargs):
    """SphereFace-4 (Liu et al. 2017, Table 2): the four stride-2 conv + PReLU layers only,
    ``units=(0, 0, 0, 0)``; 112x96 input, 512-d fc5. Keyword arguments go to ``sphere``."""
    return _by_depth(4, input_shape, kwargs)


def sphere10(input_shape=(112, 96, 3), **kwargs):
    """SphereFace-10 (Liu et al. 2017, Table 2): ``units=(0, 1, 2, 0)``; 112x96 input, 512-d fc5.
    Keyword arguments go to ``sphere``."""
    return _by_depth(10, input_shape, kwargs)


def sphere20(input_shape=(112, 96, 3), **kwargs):
    """SphereFace-20 / "sphere20a" (Liu et al. 2017, Table 2), the network of SphereFace, AM-Softmax and
    CosFace's CASIA-WebFace experiments: ``units=(1, 2, 4, 1)``; 112x96 input, no BN, PReLU, 512-d fc5
    from ``EmbeddingHead(512, kind="fc")``: 22.67M parameters, 1.75 GMACs. Keyword arguments go to ``sphere``."""
    return _by_depth(20, input_shape, kwargs)


def sphere36(input_shape=(112, 96, 3), **kwargs):
    """SphereFace-36 (Liu et al. 2017, Table 2): ``units=(2, 4, 8, 2)``; 112x96 input, 512-d fc5.
    Keyword arguments go to ``sphere``."""
    return _by_depth(36, input_shape, kwargs)


def sphere64(input_shape=(112, 96, 3), **kwargs):
    """SphereFace-64 (Liu et al. 2017, Table 2; the authors' Sphereface-64 prototxt): ``units=(3, 8, 16, 3)``;
    112x96 input, 512-d fc5. Keyword arguments go to ``sphere``."""
    return _by_depth(64, input_shape, kwargs)
