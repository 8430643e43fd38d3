"""SphereFace residual CNNs: published size and cost, Table 2 structure, options, mixed precision."""

import keras
import numpy as np
import pytest

from tfface.layers import EmbeddingHead
from tfface.models import complexity
from tfface.models.backbones.sphere import UNITS, sphere, sphere4, sphere10, sphere20, sphere36, sphere64

NARROW = (8, 16, 32, 64)


def with_fc5(trunk, input_shape):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, EmbeddingHead(512, kind="fc")(trunk(inputs)))


def expected_trunk_params(units, widths, batch_norm=False):
    """Table 2 counted by hand: 3x3 convolutions (+ bias, or + BN gamma/beta) and one PReLU slope per channel."""
    total, c_in = 0, 3
    for n, c in zip(units, widths, strict=True):
        per_conv_extra = 2 * c if batch_norm else c  # BN gamma + beta, or the conv bias
        total += 9 * c_in * c + per_conv_extra + c  # stride-2 conv, PReLU
        total += 2 * n * (9 * c * c + per_conv_extra + c)  # residual units: two convs + PReLUs each
        c_in = c
    return total


def test_sphere20_matches_published_params_and_flops():
    trunk = sphere20()
    assert trunk.output_shape == (None, 7, 6, 512)
    model = with_fc5(trunk, (112, 96, 3))
    params = complexity.count_params(model)
    # Published: OpenVINO Open Model Zoo "Sphereface" (the authors' Caffe SphereFace-20, input 1x3x112x96,
    # fc5 512-d): "MParams 22.671", "GFLOPs 3.504" (docs.openvino.ai/2021.4/omz_models_model_Sphereface.html).
    # Their model's fc5 is a plain InnerProduct with bias: 21504 * 512 + 512 = 11,010,560, total 22,670,656.
    # Our EmbeddingHead("fc") instead has BN(7x6x512: gamma+beta = 1024) -> Dense(no bias) -> BN(beta only,
    # 512): +1024 + 512 - 512 = +1024 parameters over the paper's fc5.
    assert abs(params - 22.671e6) / 22.671e6 < 0.01
    assert params == 22_670_656 + 1024
    assert complexity.count_params(trunk) == expected_trunk_params(UNITS[20], (64, 128, 256, 512))
    # OpenVINO's GFLOPs count a multiply and an add separately (2 x MACs), and also count biases, PReLU and
    # the residual additions, which count_macs leaves out: 1.7497 GMACs = 3.4995 GFLOPs, 0.13% below 3.504.
    macs = complexity.count_macs(model)
    assert abs(2 * macs - 3.504e9) / 3.504e9 < 0.01
    assert macs == 1_749_737_472


@pytest.mark.parametrize(
    "builder,depth", [(sphere4, 4), (sphere10, 10), (sphere20, 20), (sphere36, 36), (sphere64, 64)]
)
def test_table2_depths(builder, depth):
    trunk = builder((32, 32, 3), widths=NARROW)
    units = UNITS[depth]
    convs = [layer for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D)]
    # Depth counts the convolutions: four stride-2 ones + two per residual unit (fc5 is not counted).
    assert len(convs) == depth == 4 + 2 * sum(units)
    assert sum(isinstance(layer, keras.layers.Add) for layer in trunk.layers) == sum(units)
    assert complexity.count_params(trunk) == expected_trunk_params(units, NARROW)
    assert trunk.name == f"sphere{depth}"


@pytest.mark.parametrize("shape,expected", [((112, 96, 3), (7, 6)), ((112, 112, 3), (7, 7)), ((64, 64, 3), (4, 4))])
def test_output_shapes(shape, expected):
    trunk = sphere20(shape, widths=NARROW)
    assert trunk.output_shape == (None, *expected, 64)
    out = trunk(np.random.default_rng(0).normal(size=(1, *shape)).astype("float32"))
    assert tuple(out.shape) == (1, *expected, 64)
    assert np.all(np.isfinite(out))


def test_odd_sizes_round_up_like_caffe():
    # Caffe/PyTorch: out = floor((n + 2*1 - 3) / 2) + 1 per stride-2 conv -> 100 -> 50 -> 25 -> 13 -> 7.
    assert sphere4((100, 17, 3), widths=NARROW).output_shape == (None, 7, 2, 64)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"input_shape": (15, 96, 3)}, "H, W >= 16"),
        ({"input_shape": (112, 96)}, "input_shape"),
        ({"input_shape": (None, 96, 3)}, "static"),
        ({"units": (1, 2, 4)}, "units"),
        ({"units": (1, -1, 4, 1)}, "units"),
        ({"widths": (64, 128, 0, 512)}, "widths"),
    ],
)
def test_invalid_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sphere(**kwargs)


def test_original_has_no_bn_conv_bias_caffe_padding_and_inits():
    trunk = sphere20((64, 64, 3), widths=(16, 32, 64, 64))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trunk.layers)
    convs = [layer for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(conv.use_bias for conv in convs)
    assert all(np.all(conv.bias.numpy() == 0) for conv in convs)
    # Caffe pad 1 on every side before each stride-2 conv (Keras "same" would pad bottom/right only).
    pads = [layer for layer in trunk.layers if isinstance(layer, keras.layers.ZeroPadding2D)]
    assert [p.name for p in pads] == [f"conv{s}_1_pad" for s in range(1, 5)]
    assert all(tuple(map(tuple, p.padding)) == ((1, 1), (1, 1)) for p in pads)
    # Strided convs: Caffe xavier = U(+-sqrt(3 / fan_in)); residual convs: N(0, 0.01).
    strided = trunk.get_layer("conv3_1").kernel.numpy()
    assert np.abs(strided).max() <= np.sqrt(3.0 / (9 * 32)) + 1e-7
    assert np.std(strided) > 0.05
    residual = trunk.get_layer("conv3_2").kernel.numpy()  # 9 * 64 * 64 samples
    assert abs(np.std(residual) - 0.01) < 0.001
    # PReLU after every conv, one slope per channel shared over space, 0.25 at start (He et al. 2015).
    prelu = trunk.get_layer("relu2_3")
    assert prelu.alpha.shape == (1, 1, 32)
    np.testing.assert_allclose(prelu.alpha.numpy(), 0.25)
    assert sum("alpha" in w.path for w in trunk.weights) == len(convs)


def test_batch_norm_option():
    plain = sphere20((32, 32, 3), widths=NARROW)
    trunk = sphere20((32, 32, 3), widths=NARROW, batch_norm=True, bn_momentum=0.99, bn_epsilon=1e-3)
    convs = [layer for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D)]
    bns = [layer for layer in trunk.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == len(convs) == 20
    assert not any(conv.use_bias for conv in convs)
    assert [bn.name for bn in bns] == [conv.name + "_bn" for conv in convs]
    assert all(bn.momentum == 0.99 and bn.epsilon == 1e-3 for bn in bns)
    # conv -> BN -> PReLU: the BN sits between each conv and its activation.
    names = [layer.name for layer in trunk.layers]
    assert names.index("conv2_3_bn") == names.index("conv2_3") + 1 == names.index("relu2_3") - 1
    assert complexity.count_params(trunk) == expected_trunk_params(UNITS[20], NARROW, batch_norm=True)
    assert complexity.count_params(trunk) > complexity.count_params(plain)
    out = trunk(np.ones((2, 32, 32, 3), "float32"), training=True)
    assert tuple(out.shape) == (2, 2, 2, 64)


def test_shortcut_is_identity():
    # With the residual branch zeroed (kernels and biases 0 -> PReLU(0) = 0), a residual unit must pass its
    # input through unchanged, so a net with units equals the same net without them.
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    base = sphere((32, 32, 3), units=(0, 0, 0, 0), widths=NARROW)
    deep = sphere((32, 32, 3), units=(1, 1, 0, 2), widths=NARROW)
    for layer in deep.layers:
        if isinstance(layer, keras.layers.Conv2D):
            if layer.name.endswith("_1"):
                layer.set_weights(base.get_layer(layer.name).get_weights())
            else:
                layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    np.testing.assert_allclose(deep(x).numpy(), base(x).numpy(), rtol=1e-6, atol=1e-6)
    assert [layer.name for layer in deep.layers if isinstance(layer, keras.layers.Add)] == [
        "res1_3", "res2_3", "res4_3", "res4_5"
    ]


@pytest.mark.usefixtures("mixed_precision")
@pytest.mark.parametrize("batch_norm", [False, True])
def test_mixed_float16_forward(batch_norm):
    trunk = sphere20((32, 32, 3), widths=NARROW, batch_norm=batch_norm)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    out = trunk(x, training=False)
    assert out.dtype == "float16"
    assert np.all(np.isfinite(np.asarray(out, dtype="float32")))
    assert trunk.get_layer("conv1_1").kernel.dtype == "float32"  # variables stay float32


def test_keras_file_round_trip(tmp_path):
    # Plain Keras layers plus tfface's registered PReLU: the model reloads (and exports) without custom code.
    trunk = sphere10((32, 32, 3), widths=NARROW, batch_norm=True)
    path = str(tmp_path / "sphere10.keras")
    trunk.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(3).normal(size=(1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), trunk(x).numpy(), rtol=1e-6, atol=1e-6)
