"""Importing arcface_torch weights from ONNX: torch model -> ONNX -> tfface, same embeddings.

The torch networks below are written here, mirroring the layer order of InsightFace's arcface_torch
(backbones/iresnet.py, backbones/mobilefacenet.py), with random weights including non-trivial BatchNorm
statistics and PReLU slopes; nothing is downloaded. torch and onnx come from the ``[torch-test]`` extra;
without them the module is skipped, unless TFFACE_REQUIRE_TORCH=1 (CI), where their absence is an error.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

if os.environ.get("TFFACE_REQUIRE_TORCH") == "1":
    import onnx  # an ImportError here fails the run instead of skipping it
    import torch
else:
    onnx = pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")

from torch_reference import TorchIResNet, TorchMobileFaceNet  # noqa: E402

from tfface.layers import EmbeddingHead, FaceNormalization  # noqa: E402
from tfface.layers.prelu import PReLU  # noqa: E402
from tfface.models.backbones.iresnet import iresnet  # noqa: E402
from tfface.models.backbones.mobilefacenet import mbf  # noqa: E402
from tfface.models.complexity import count_params  # noqa: E402
from tfface.models.convert import (  # noqa: E402
    ARCFACE_TORCH_INPUT_SCALE,
    ConversionError,
    convert_onnx,
    load_onnx_weights,
)
from tfface.models.onnx_graph import read_onnx_params  # noqa: E402

nn = torch.nn


def randomize(model, seed=0):
    """Random weights with non-trivial BN statistics / affine terms and PReLU slopes; returns model.eval()."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=gen)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(rand(m.bias.shape, -0.2, 0.2))
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(rand(m.weight.shape, 0.5, 1.5))
                m.bias.copy_(rand(m.bias.shape, -0.2, 0.2))
                m.running_mean.copy_(rand(m.running_mean.shape, -0.2, 0.2))
                m.running_var.copy_(rand(m.running_var.shape, 0.5, 2.0))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(rand(m.weight.shape, 0.0, 0.5))
    return model.eval()


def export(model, path, shape, folded=True):
    """ONNX via the TorchScript exporter (dynamo=False: no onnxscript needed). ``folded``: eval-mode export
    with constant folding, which fuses each Conv -> BN into a Conv with a bias (as in InsightFace's
    released files); otherwise every BatchNormalization stays a node (TrainingMode.PRESERVE)."""
    x = torch.zeros(1, 3, *shape)
    kwargs = {} if folded else {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["features"],
                      **kwargs)
    return str(path)


def images(shape, n=4, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape, 3)).astype("float32")


def torch_features(model, pixels):
    """arcface_torch preprocessing: RGB, (x / 255 - 0.5) / 0.5, NCHW."""
    x = torch.from_numpy(((pixels / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        return model(x).numpy()


def cosines(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def feature_model(trunk, embedding_size, kind):
    inputs = keras.Input(trunk.input_shape[1:])
    x = trunk(FaceNormalization()(inputs))
    return keras.Model(inputs, EmbeddingHead(embedding_size, kind=kind)(x))


NARROW = {"layers": (1, 2, 1, 1), "widths": (16, 32, 48, 64), "stem_width": 16}


def narrow_iresnet_pair(shape=(64, 48), layers=NARROW["layers"], embedding_size=24):
    """Torch IResNet and its tfface twin; 64x48 gives a non-square 4x3 map, so the Linear layer's
    NCHW -> NHWC row reordering is exercised."""
    torch_model = randomize(TorchIResNet(layers, NARROW["widths"], 16, embedding_size, map_hw=(shape[0] // 16,
                                                                                               shape[1] // 16)))
    trunk = iresnet((*shape, 3), layers=layers, widths=NARROW["widths"], stem_width=NARROW["stem_width"])
    return torch_model, feature_model(trunk, embedding_size, "fc")


def assert_same_features(torch_model, tf_model, shape):
    pixels = images(shape)
    expected, got = torch_features(torch_model, pixels), tf_model.predict(pixels, verbose=0)
    cos = cosines(expected, got)
    assert np.all(cos >= 0.9999), cos
    return cos


@pytest.mark.parametrize("folded", [True, False], ids=["bn_folded", "bn_nodes"])
def test_narrow_iresnet_matches_torch(tmp_path, folded):
    torch_model, tf_model = narrow_iresnet_pair()
    path = export(torch_model, tmp_path / "r.onnx", (64, 48), folded)
    summary = load_onnx_weights(tf_model, path, input_scale=ARCFACE_TORCH_INPUT_SCALE)
    # 3 stem + 6 per block (+2 downsample) + 4 head layers; with folding, every conv's BN is gone.
    assert summary["layers"] == 3 + 6 * 5 + 2 * 4 + 3
    assert summary["folded_bn"] == (15 if folded else 0)
    assert summary["onnx_ops"] == summary["layers"] - summary["folded_bn"]
    assert_same_features(torch_model, tf_model, (64, 48))


def test_mbf_real_size_matches_torch_and_param_count(tmp_path):
    torch_model = randomize(TorchMobileFaceNet())
    path = export(torch_model, tmp_path / "mbf.onnx", (112, 112), folded=True)
    tf_model, summary = convert_onnx(path, "mbf", (112, 112, 3))  # embedding size read from the file
    assert tf_model.output_shape == (None, 512) and summary["folded_bn"] > 0
    # Same parameters as arcface_torch minus its BatchNorm1d scale, which tfface fixes (and folds) instead.
    assert count_params(tf_model) == sum(p.numel() for p in torch_model.parameters()) - 512 == 2_059_008
    assert_same_features(torch_model, tf_model, (112, 112))


@pytest.mark.parametrize("blocks", [(1, 1, 1, 1), (2, 1, 1, 1)], ids=["conv2_depthwise", "stage1_residual"])
def test_mbf_variants_match_torch(tmp_path, blocks):
    # scale 1: the groups=64 ConvBlock becomes depthwise; blocks[0] = 2: the residual stage-1 branch of mbf_large.
    torch_model = randomize(TorchMobileFaceNet(64, blocks=blocks, scale=1), seed=3)
    path = export(torch_model, tmp_path / "mbf.onnx", (112, 112), folded=False)
    tf_model = feature_model(mbf((112, 112, 3), blocks=blocks, scale=1), 64, "gdc")
    load_onnx_weights(tf_model, path, input_scale=ARCFACE_TORCH_INPUT_SCALE)
    assert_same_features(torch_model, tf_model, (112, 112))


def test_iresnet18_real_size_matches_torch(tmp_path):
    torch_model = randomize(TorchIResNet((2, 2, 2, 2)), seed=5)
    tf_model, summary = convert_onnx(export(torch_model, tmp_path / "r18.onnx", (112, 112)), "iresnet18")
    # torch counts the Linear bias and BatchNorm1d scale that tfface folds into the last BN.
    assert count_params(tf_model) == sum(p.numel() for p in torch_model.parameters()) - 2 * 512
    assert_same_features(torch_model, tf_model, (112, 112))


def test_wrong_depth_or_width_names_the_first_mismatching_layer(tmp_path):
    torch_model, _ = narrow_iresnet_pair()
    path = export(torch_model, tmp_path / "r.onnx", (64, 48))
    shallow = feature_model(iresnet((64, 48, 3), layers=(1, 1, 1, 1), widths=NARROW["widths"], stem_width=16),
                            24, "fc")
    # The ONNX file's layer2 has a second block; the shallow model's layer3 starts there instead.
    with pytest.raises(ConversionError, match=r"'layer3_0_conv1'.*blocks\.2/conv1"):
        load_onnx_weights(shallow, path)
    deep = feature_model(iresnet((64, 48, 3), layers=(1, 2, 1, 2), widths=NARROW["widths"], stem_width=16), 24, "fc")
    # The deeper model's extra block takes the trunk's last BN, then finds the embedding Linear layer.
    with pytest.raises(ConversionError, match=r"'layer4_1_conv1'.*expects an ONNX Conv.*/fc/Gemm"):
        load_onnx_weights(deep, path)
    wide = feature_model(iresnet((64, 48, 3), layers=NARROW["layers"], widths=(16, 32, 48, 96), stem_width=16),
                         24, "fc")
    with pytest.raises(ConversionError, match=r"'layer4_0_conv1'.*kernel \(3, 3, 48, 96\)"):
        load_onnx_weights(wide, path)
    with pytest.raises(ConversionError, match="Keras layer 'conv1'"):  # an IResNet file into MobileFaceNet
        convert_onnx(path, "mbf", (64, 48, 3))


def test_not_onnx_missing_file_and_unsupported_op(tmp_path):
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"\x00\x01 certainly not a protobuf \xff" * 10)
    with pytest.raises(ConversionError, match="not an ONNX model"):
        read_onnx_params(str(junk))
    with pytest.raises(FileNotFoundError):
        read_onnx_params(str(tmp_path / "missing.onnx"))
    pooled = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2)).eval()
    with pytest.raises(ConversionError, match="unsupported ONNX op MaxPool"):
        read_onnx_params(export(pooled, tmp_path / "pool.onnx", (16, 16)))


def test_hand_written_graph_constants_matmul_add_and_epsilons(tmp_path):
    """A graph another exporter might write: weights in Constant nodes, a PRelu slope of shape [C, 1, 1],
    MatMul + Add instead of Gemm, BN epsilon 1e-3 against Keras' 1e-5, a final BN gamma != 1 that must be
    folded into the Dense kernel (Keras' last BN has no scale), and a 3x2 NCHW map flattened before the fc."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, eps=1e-3), nn.PReLU(4),
                        nn.Flatten(), nn.Linear(24, 5), nn.BatchNorm1d(5, eps=1e-3))
    randomize(ref, seed=11)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    consts = {"w": sd["0.weight"], "g": sd["1.weight"], "b": sd["1.bias"], "m": sd["1.running_mean"],
              "v": sd["1.running_var"], "slope": sd["2.weight"].reshape(4, 1, 1), "fcw": sd["4.weight"].T.copy(),
              "fcb": sd["4.bias"], "g2": sd["5.weight"], "b2": sd["5.bias"], "m2": sd["5.running_mean"],
              "v2": sd["5.running_var"]}
    nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v.astype("float32"), k))
             for k, v in consts.items()]
    nodes += [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], epsilon=1e-3),
              helper.make_node("PRelu", ["n", "slope"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("MatMul", ["f", "fcw"], ["mm"]), helper.make_node("Add", ["mm", "fcb"], ["z"]),
              helper.make_node("BatchNormalization", ["z", "g2", "b2", "m2", "v2"], ["y"], epsilon=1e-3)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])])
    path = str(tmp_path / "hand.onnx")
    onnx.save(helper.make_model(graph), path)

    inputs = keras.Input((3, 2, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(epsilon=1e-5)(x)
    x = PReLU(shared_axes=[1, 2])(x)
    x = keras.layers.Dense(5, use_bias=False)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, keras.layers.BatchNormalization(scale=False, epsilon=1e-5)(x))
    assert load_onnx_weights(model, path) == {"layers": 5, "onnx_ops": 5, "folded_bn": 0}
    pixels = rng.normal(size=(3, 3, 2, 3)).astype("float32")
    with torch.no_grad():
        expected = ref(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, rtol=1e-4, atol=1e-5)


def test_work_directory_restores_and_exports(tmp_path):
    from tfface.models.face_model import build_feature_model
    from tfface.train.workdir import export_from_workdir, restore_feature_model

    torch_model = randomize(TorchMobileFaceNet(128), seed=7)
    path = export(torch_model, tmp_path / "mbf.onnx", (112, 112))
    workdir = str(tmp_path / "run")
    tf_model, _ = convert_onnx(path, "mbf", output_dir=workdir)
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert (config["backbone"], config["embedding_size"], config["input_size"]) == ("mbf", 128, [112, 112])
    # What tfface-train --init_from does: a fresh model restored from the work directory's checkpoint.
    fresh = build_feature_model("mbf", (112, 112, 3), 128)
    restore_feature_model(fresh, workdir)
    pixels = images((112, 112), n=2)
    np.testing.assert_allclose(fresh.predict(pixels, verbose=0), tf_model.predict(pixels, verbose=0), atol=1e-5)
    # What tfface-export does; the SavedModel takes uint8 RGB pixels and gives the torch network's embedding.
    exported = export_from_workdir(workdir)
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    pixels = np.round(pixels)
    (served,) = serve(tf.constant(pixels.astype("uint8"))).values()
    assert np.all(cosines(torch_features(torch_model, pixels), served.numpy()) >= 0.9999)
    with pytest.raises(FileExistsError):
        convert_onnx(path, "mbf", output_dir=workdir)


def test_cli(tmp_path):
    """Through the module the ``tfface-convert`` console script runs (tfface.cli.convert:run)."""
    path = export(randomize(TorchMobileFaceNet(64), seed=9), tmp_path / "mbf.onnx", (112, 112))
    out = tmp_path / "imported"
    cli = [sys.executable, "-m", "tfface.cli.convert"]
    proc = subprocess.run([*cli, f"--onnx={path}", "--backbone=mbf", f"--output={out}", "--input_size=112,112"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RGB pixels in [0, 255]" in proc.stdout
    assert json.load(open(out / "config.json"))["embedding_size"] == 64
    assert json.load(open(out / "convert.json"))["onnx"] == os.path.abspath(path)
    proc = subprocess.run([*cli, f"--onnx={tmp_path / 'nope.onnx'}", "--backbone=mbf", f"--output={out}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "file not found" in proc.stderr
