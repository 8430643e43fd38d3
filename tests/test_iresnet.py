"""IResNet trunks (ArcFace / arcface_torch): published sizes, topology, shapes, mixed precision."""

import keras
import numpy as np
import pytest

from tfface.layers import EmbeddingHead
from tfface.layers.prelu import PReLU
from tfface.models.backbones.iresnet import (
    IRESNET_DEPTHS,
    iresnet,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
    iresnet200,
)
from tfface.models.complexity import count_macs, count_params

BUILDERS = {18: iresnet18, 34: iresnet34, 50: iresnet50, 100: iresnet100, 200: iresnet200}
TINY = {"widths": (8, 8, 16, 16), "stem_width": 8}


def _half(n):
    # A 3x3 pad-1 or 1x1 pad-0 convolution with stride 2 maps n pixels to ceil(n / 2).
    return (n + 1) // 2


def closed_form(layers, widths, stem_width, height, width, embedding_size):
    """(params, MACs) of trunk + EmbeddingHead(kind="fc"), derived by hand from the architecture.

    Params count PyTorch-style (weights, BN gamma+beta, PReLU slopes; no BN moving statistics).
    MACs = sum over convolutions of H_out * W_out * k * k * C_in * C_out, plus the FC layer.
    """
    h, w, c_in = height, width, stem_width
    params = 27 * stem_width + 2 * stem_width + stem_width  # conv3x3 from RGB, BN, PReLU
    macs = height * width * 27 * stem_width
    for blocks, c in zip(layers, widths, strict=True):
        for block in range(blocks):
            params += 2 * c_in + 9 * c_in * c + 2 * c + c + 9 * c * c + 2 * c  # bn1 conv1 bn2 prelu conv2 bn3
            macs += h * w * 9 * c_in * c  # conv1 runs at the block's input resolution (stride 1)
            if block == 0:
                h, w = _half(h), _half(w)  # ... conv2 carries the stride
                params += c_in * c + 2 * c  # downsample conv1x1 + BN
                macs += h * w * c_in * c
            macs += h * w * 9 * c * c
            c_in = c
    flat = h * w * c_in
    params += 2 * c_in + flat * embedding_size + embedding_size  # head BN, FC (no bias), BN(scale=False)
    macs += flat * embedding_size
    return params, macs


def with_head(trunk, embedding_size=512):
    inputs = keras.Input(trunk.input_shape[1:])
    return keras.Model(inputs, EmbeddingHead(embedding_size, kind="fc")(trunk(inputs)))


# Published figures at 112x112 with the 512-d "E" output block.
#   arcface_torch: deepinsight/insightface recognition/arcface_torch/README.md, table "3. ViT For Face Recognition",
#     column "FLOPs" (G, from ptflops = multiply-accumulates): r18 2.6, r50 6.3, r100 12.1, r200 23.5.
#   OpenVINO Open Model Zoo model cards (MXNet LResNetxxE-IR, models/public/face-recognition-resnet{34,50,100}-arcface/
#     and models/public/index.md): GFLOPs counts multiply and add separately (= 2 x MACs) --
#     LResNet34E-IR 8.934 GFLOPs / 34.129 MParams, LResNet50E-IR 12.637 / 43.576, LResNet100E-IR 24.209 / 65.131.
#   The tfface issue quotes IResNet-50 ~43.6M and IResNet-100 ~65.2M parameters (consistent with the above).
# None = no published figure found; those models are checked against closed_form() exactly (below) only.
PUBLISHED = {
    18: {"params": None, "macs": (2.6e9,)},
    34: {"params": 34.129e6, "macs": (8.934e9 / 2,)},
    50: {"params": 43.576e6, "macs": (6.3e9, 12.637e9 / 2)},
    100: {"params": 65.131e6, "macs": (12.1e9, 24.209e9 / 2)},
    200: {"params": None, "macs": (23.5e9,)},
}


@pytest.mark.parametrize("depth", sorted(BUILDERS))
def test_published_sizes_at_112(depth):
    # One build per depth (IResNet-200 is built only here: ~119M parameters, ~5 s on 2 cores).
    keras.backend.clear_session()
    trunk = BUILDERS[depth]((112, 112, 3))
    assert trunk.name == f"iresnet{depth}"
    assert trunk.output_shape == (None, 7, 7, 512)
    model = with_head(trunk)
    assert model.output_shape == (None, 512)
    params, macs = count_params(model), count_macs(model)
    # Our own arithmetic must agree exactly; the published figures within 1%.
    assert (params, macs) == closed_form(IRESNET_DEPTHS[depth], (64, 128, 256, 512), 64, 112, 112, 512)
    published = PUBLISHED[depth]
    if published["params"] is not None:
        assert abs(params - published["params"]) <= 0.01 * published["params"], params
    for figure in published["macs"]:
        assert abs(macs - figure) <= 0.01 * figure, macs
    del model, trunk
    keras.backend.clear_session()


def test_exact_counts_without_published_figure():
    # IResNet-18 and -200 parameter counts have no published figure we could cite; these are our exact counts
    # (trunk + 512-d fc head, PyTorch convention minus the FC bias and the frozen BN gamma arcface_torch keeps),
    # pinned so that any change to the topology shows up. They equal closed_form(), checked against the model above.
    assert closed_form(IRESNET_DEPTHS[18], (64, 128, 256, 512), 64, 112, 112, 512) == (24_024_576, 2_609_954_816)
    assert closed_form(IRESNET_DEPTHS[200], (64, 128, 256, 512), 64, 112, 112, 512) == (118_832_896, 23_418_945_536)


def test_closed_form_matches_narrow_model_at_odd_size():
    trunk = iresnet((41, 30, 3), layers=(2, 1, 3, 1), widths=(8, 16, 24, 32), stem_width=12)
    assert trunk.output_shape == (None, 3, 2, 32)  # 41 -> 21 -> 11 -> 6 -> 3, 30 -> 15 -> 8 -> 4 -> 2
    model = with_head(trunk, 16)
    assert (count_params(model), count_macs(model)) == closed_form((2, 1, 3, 1), (8, 16, 24, 32), 12, 41, 30, 16)


@pytest.mark.parametrize(
    "shape,expected",
    [((56, 56, 3), (4, 4)), ((112, 96, 3), (7, 6)), ((32, 32, 3), (2, 2)), ((17, 16, 3), (2, 1))],
)
def test_other_input_sizes(shape, expected):
    trunk = iresnet(shape, layers=(1, 1, 1, 1), **TINY)
    assert trunk.output_shape == (None, *expected, 16)
    out = trunk(np.zeros((2, *shape), "float32"))
    assert tuple(out.shape) == (2, *expected, 16)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"input_shape": (15, 112, 3)}, "16"),
        ({"input_shape": (112, 8, 3)}, "16"),
        ({"input_shape": (None, None, 3)}, "static"),
        ({"input_shape": (112, 112, 1)}, "H, W, 3"),
        ({"layers": (2, 2, 2)}, "layers"),
        ({"layers": (2, 0, 2, 2)}, "layers"),
        ({"widths": (8, 8, 16)}, "widths"),
        ({"stem_width": 0}, "stem_width"),
    ],
)
def test_invalid_arguments(kwargs, match):
    kwargs = {"input_shape": (32, 32, 3), **TINY, **kwargs}
    with pytest.raises(ValueError, match=match):
        iresnet(**kwargs)


def test_block_topology():
    layers = (2, 3, 1, 2)
    trunk = iresnet((32, 32, 3), layers=layers, **TINY)
    names = [layer.name for layer in trunk.layers]
    for stage, blocks in enumerate(layers, start=1):
        first = f"layer{stage}_0"
        # arcface_torch puts the stride on the second 3x3 conv of the block, not the first.
        assert trunk.get_layer(first + "_conv1").strides == (1, 1)
        assert trunk.get_layer(first + "_conv2").strides == (2, 2)
        down = trunk.get_layer(first + "_downsample_conv")
        assert down.strides == (2, 2) and down.kernel_size == (1, 1)
        # Per layer type, the main branch comes before the downsample branch, as in arcface_torch's forward():
        # an importer that pairs weights by order within each type then matches conv2 <-> conv2, bn3 <-> bn3.
        assert names.index(first + "_conv2") < names.index(first + "_downsample_conv")
        assert names.index(first + "_bn3") < names.index(first + "_downsample_bn")
        for block in range(1, blocks):
            assert trunk.get_layer(f"layer{stage}_{block}_conv2").strides == (1, 1)
            assert f"layer{stage}_{block}_downsample_conv" not in names
    assert trunk.get_layer("conv1").strides == (1, 1)  # no stride and no max-pool in the stem
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in trunk.layers)
    convs = [layer for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 1 + 2 * sum(layers) + 4 and not any(layer.use_bias for layer in convs)
    prelus = [layer for layer in trunk.layers if isinstance(layer, PReLU)]
    assert len(prelus) == 1 + sum(layers)  # stem + one per block; no activation after the addition
    assert all(p.alpha.shape == (1, 1, p.alpha.shape[-1]) for p in prelus)
    np.testing.assert_allclose(trunk.get_layer("layer2_1_prelu").alpha.numpy(), 0.25)
    assert sum(isinstance(layer, keras.layers.Add) for layer in trunk.layers) == sum(layers)
    bns = [layer for layer in trunk.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 1 + 3 * sum(layers) + 4
    assert all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)
    assert len(set(names)) == len(names)
    # Whole-network order of the weight layers of each type equals arcface_torch's module registration order.
    expected_convs, expected_bns = ["conv1"], ["bn1"]
    for stage, blocks in enumerate(layers, start=1):
        for block in range(blocks):
            prefix = f"layer{stage}_{block}_"
            down = ["downsample"] if block == 0 else []
            expected_convs += [prefix + n for n in ["conv1", "conv2", *(d + "_conv" for d in down)]]
            expected_bns += [prefix + n for n in ["bn1", "bn2", "bn3", *(d + "_bn" for d in down)]]
    assert [layer.name for layer in convs] == expected_convs
    assert [layer.name for layer in bns] == expected_bns


def test_builders_forward_kwargs():
    trunk = iresnet34((32, 32, 3), bn_momentum=0.99, name="r34_small", **TINY)
    assert trunk.name == "r34_small"
    assert sum(isinstance(layer, keras.layers.Add) for layer in trunk.layers) == sum(IRESNET_DEPTHS[34])
    assert trunk.get_layer("bn1").momentum == 0.99
    assert trunk.output_shape == (None, 2, 2, 16)


def test_mixed_float16_forward(mixed_precision):
    trunk = iresnet((32, 32, 3), layers=(1, 2, 1, 1), **TINY)
    rng = np.random.default_rng(0)
    out = trunk(rng.uniform(-1.0, 1.0, (2, 32, 32, 3)).astype("float32"), training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert tuple(out.shape) == (2, 2, 2, 16)
    assert np.all(np.isfinite(np.asarray(out, dtype="float32")))
