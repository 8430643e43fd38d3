"""Importing InsightFace ``arcface_torch`` weights (IResNet, MobileFaceNet) from ONNX into tfface models.

arcface_torch publishes PyTorch checkpoints and ONNX files (its ``torch2onnx.py``; InsightFace's model
packs such as ``w600k_r50.onnx``). This module reads an ONNX graph with the ``onnx`` package only (no
onnx-tf, no onnxruntime) and copies its weights into the matching tfface Keras model.

How the two graphs are aligned: both are walked from their outputs back to the input, depth first,
visiting a node's inputs in argument order and listing a node after its inputs (post-order). For these
networks that is PyTorch's ``forward()`` order (main branch, then the shortcut). The parametric ONNX
ops (Conv, BatchNormalization, PRelu, Gemm / MatMul+Add) are then paired one by one with the Keras
layers that hold weights (Conv2D, DepthwiseConv2D, BatchNormalization, PReLU, Dense), checking types and
shapes; the first mismatch raises :class:`ConversionError` naming the Keras layer and the ONNX node.

Layout changes (PyTorch NCHW -> Keras NHWC):

- Conv ``W[O, I/g, kh, kw]`` -> Conv2D ``(kh, kw, I/g, O)``; depthwise ``W[C*m, 1, kh, kw]`` ->
  DepthwiseConv2D ``(kh, kw, C, m)``.
- Linear ``W[D, C*H*W]`` after flattening an NCHW map -> Dense ``(H*W*C, D)`` with rows reordered to
  Keras' NHWC flatten order.
- BatchNorm folded into the preceding Conv (the legacy exporter in eval mode and InsightFace's released
  files do this): the Conv has a bias ``b`` and the Keras Conv -> BN pair gets ``kernel = W`` and an
  identity BN shifted by ``b`` (gamma 1, mean 0, variance ``1 - epsilon``, beta ``b``).
  After a Conv with a bias, an ONNX BN belongs to the Keras BN only if it reads that Conv's output;
  otherwise it is a later BN (IResNet's pre-activation ``bn1``, which exporters cannot fold).
- A bias with no Keras counterpart followed by a BN: ``moving_mean' = mean - b``.
- A BN whose Keras twin has no scale (``EmbeddingHead``'s last BN, ``scale=False``) but whose gamma is
  not 1 (arcface_torch's MobileFaceNet learns it): gamma is folded into the preceding kernel's output
  columns and the mean (``mean' = gamma * (mean - b)``), exactly.
- Epsilons: Keras variance ``var + eps_onnx - eps_keras``, so ``sqrt(var + eps)`` is unchanged.

Input convention: arcface_torch feeds RGB images normalised as ``(x / 255 - 0.5) / 0.5 = (x - 127.5) /
127.5``; tfface models normalise ``(x - 127.5) / 128`` inside (``FaceNormalization``). ``convert_onnx``
multiplies the first convolution's kernel by ``128 / 127.5`` so raw RGB pixels in [0, 255] give the
same features as the original network. Zero padding commutes with that scaling, so this is exact.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from tfface.layers.embedding import EmbeddingHead
from tfface.layers.prelu import PReLU
from tfface.models.onnx_graph import ConversionError, read_onnx_params

# (x - 127.5) / 128 in tfface versus (x - 127.5) / 127.5 in arcface_torch.
ARCFACE_TORCH_INPUT_SCALE = 128.0 / 127.5


# ---------------------------------------------------------------------------------------------- Keras side
_WEIGHTED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization,
             keras.layers.PReLU, PReLU, keras.layers.Dense)


def _history(tensor):
    h = tensor._keras_history
    return h.operation, h.node_index


def keras_weight_layers(model):
    """``[(layer, flatten_from)]``: the layers of ``model`` holding weights, in the order described in the
    module docstring, descending into nested models and ``EmbeddingHead``. ``flatten_from`` is the
    ``(h, w, c)`` map a Dense layer's input was flattened from (None otherwise)."""
    out = []
    done, stack = set(), [(*_history(t), False) for t in reversed(model.outputs)]
    while stack:
        op, node_index, expanded = stack.pop()
        if id(op) in done:
            continue
        node = op._inbound_nodes[node_index]
        if not expanded:
            stack.append((op, node_index, True))
            stack.extend((*_history(t), False) for t in reversed(node.input_tensors))
            continue
        done.add(id(op))
        if isinstance(op, keras.layers.InputLayer):
            continue
        if isinstance(op, keras.Model):
            out.extend(keras_weight_layers(op))
        elif isinstance(op, EmbeddingHead):
            _, h, w, c = node.input_tensors[0].shape
            for sub in ("gdconv", "input_bn", "dense", "output_bn"):  # EmbeddingHead.call order
                layer = getattr(op, sub, None)
                if layer is not None:
                    out.append((layer, (h, w, c) if sub == "dense" and op.kind == "fc" else None))
        elif op.weights:
            if not isinstance(op, _WEIGHTED):
                raise ConversionError(f"Keras layer {op.name!r} ({type(op).__name__}) holds weights this importer "
                                      f"cannot map from ONNX")
            flatten_from = None
            if isinstance(op, keras.layers.Dense):
                src, src_index = _history(node.input_tensors[0])
                if isinstance(src, keras.layers.Flatten):
                    shape = src._inbound_nodes[src_index].input_tensors[0].shape
                    flatten_from = tuple(shape[1:]) if len(shape) == 4 else None
            out.append((op, flatten_from))
    return out


def _assign(layer, variable, value, what):
    value = np.asarray(value)
    if tuple(variable.shape) != value.shape:
        raise ConversionError(f"Keras layer {layer.name!r}: {what} shape {tuple(variable.shape)} != converted "
                              f"ONNX shape {value.shape}")
    variable.assign(value.astype(variable.dtype))


class _Loader:
    """Pairs Keras layers with ONNX params one by one (see the module docstring) and assigns weights."""

    def __init__(self, params, input_scale):
        self.params, self.j, self.input_scale = params, 0, input_scale
        self.bias = None  # a conv / fc bias with no Keras counterpart, owed to the next BatchNorm
        self.bias_from = None  # the OnnxParam that bias came from
        self.previous = None  # (layer, kernel) last assigned, for folding a BN gamma into it
        self.folded_bn = 0

    def take(self, kind, layer):
        kinds = {"conv": "Conv", "bn": "BatchNormalization", "prelu": "PRelu", "fc": "Gemm/MatMul"}
        if self.j >= len(self.params):
            raise ConversionError(f"Keras layer {layer.name!r} ({type(layer).__name__}) has no ONNX counterpart: the "
                                  f"ONNX graph has only {len(self.params)} weight ops (a different architecture "
                                  f"or depth?)")
        p = self.params[self.j]
        if p.kind != kind:
            raise ConversionError(f"Keras layer {layer.name!r} ({type(layer).__name__}) expects an ONNX {kinds[kind]} "
                                  f"but the next weight op is {p.describe()} (a different architecture or depth?)")
        self.j += 1
        return p

    def mismatch(self, layer, p, expected, found):
        return ConversionError(f"Keras layer {layer.name!r} ({type(layer).__name__}) expects {expected} but "
                               f"{p.describe()} gives {found} (a different architecture, depth or width?)")

    def kernel(self, layer, value, p):
        if self.previous is None and self.input_scale != 1.0:
            value = value * self.input_scale  # the first layer sees tfface's differently scaled input
        shape = tuple(layer.kernel.shape)
        if value.shape != shape:
            raise self.mismatch(layer, p, f"kernel {shape}", f"{value.shape}")
        _assign(layer, layer.kernel, value, "kernel")
        self.previous = (layer, value)
        b = p.arrays["b"]
        if getattr(layer, "use_bias", False):
            _assign(layer, layer.bias, np.zeros(shape[-1]) if b is None else b, "bias")
        else:
            self.bias, self.bias_from = b, p

    def conv(self, layer):
        p = self.take("conv", layer)
        w, group = p.arrays["W"], p.attrs["group"]
        if tuple(layer.strides) != tuple(p.attrs["strides"]):
            raise self.mismatch(layer, p, f"strides {tuple(layer.strides)}", f"strides {p.attrs['strides']}")
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            channels = layer.kernel.shape[2]
            if group != channels or w.shape[1] != 1:
                raise self.mismatch(layer, p, f"a depthwise conv over {channels} channels", f"group={group}")
            value = w.reshape(channels, -1, *w.shape[2:]).transpose(2, 3, 0, 1)
        else:
            if group != layer.groups:
                raise self.mismatch(layer, p, f"groups={layer.groups}", f"group={group}")
            value = w.transpose(2, 3, 1, 0)
        self.kernel(layer, value, p)

    def dense(self, layer, flatten_from):
        p = self.take("fc", layer)
        w = p.arrays["W"]
        if flatten_from and flatten_from[0] * flatten_from[1] > 1:
            h, wd, c = flatten_from
            if w.shape[1] != h * wd * c:
                raise self.mismatch(layer, p, f"{h * wd * c} inputs (a {h}x{wd}x{c} map)", f"{w.shape[1]} inputs")
            # torch flattens (C, H, W), Keras (H, W, C).
            w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        self.kernel(layer, w.T, p)

    def prelu(self, layer):
        p = self.take("prelu", layer)
        slope = p.arrays["slope"].reshape(-1)
        channels = int(np.prod(layer.alpha.shape))
        if slope.size not in (1, channels):
            raise self.mismatch(layer, p, f"{channels} slopes", f"{slope.size}")
        _assign(layer, layer.alpha, np.broadcast_to(slope, (channels,)).reshape(layer.alpha.shape), "alpha")
        self.previous = (layer, None)

    def batch_norm(self, layer):
        channels = int(layer.moving_mean.shape[0])
        bias, self.bias = self.bias, None
        nxt = self.params[self.j] if self.j < len(self.params) else None
        # After a conv with a bias, an ONNX BN belongs to this Keras BN only if it reads that conv's output;
        # otherwise the exporter folded this BN into the conv and the ONNX BN is a later one.
        folded = nxt is None or nxt.kind != "bn" or (bias is not None and nxt.data_in != self.bias_from.data_out)
        if folded:
            if bias is None:
                self.take("bn", layer)  # raises the mismatch error
            # BN folded into the preceding conv / fc by the exporter: identity BN shifted by the bias.
            gamma, beta, mean, var, eps = np.ones(channels), bias, np.zeros(channels), None, None
            self.folded_bn += 1
        else:
            p = self.take("bn", layer)
            eps = p.attrs["eps"]
            gamma, beta, mean, var = (np.broadcast_to(p.arrays[k], (channels,)) if p.arrays[k].size in (1, channels)
                                      else p.arrays[k] for k in ("gamma", "beta", "mean", "var"))
            if mean.shape != (channels,):
                raise self.mismatch(layer, p, f"{channels} channels", f"{mean.shape}")
            if bias is not None:
                mean = mean - bias
        keras_eps = float(layer.epsilon)
        var = np.full(channels, 1.0 - keras_eps) if var is None else var + eps - keras_eps
        if layer.scale:
            _assign(layer, layer.gamma, gamma, "gamma")
        elif not np.all(gamma == 1.0):
            # Keras BN without a scale: fold gamma into the kernel columns of the layer before it.
            prev, kernel = self.previous or (None, None)
            if kernel is None or getattr(prev, "groups", 1) != 1 or isinstance(prev, keras.layers.DepthwiseConv2D):
                raise ConversionError(f"Keras layer {layer.name!r} has no scale (gamma) and the ONNX gamma is not 1; "
                                      f"it can only be folded into a directly preceding Dense / Conv2D")
            _assign(prev, prev.kernel, kernel * gamma, "kernel")
            mean = gamma * mean
        if not layer.center and np.any(beta != 0):
            raise ConversionError(f"Keras layer {layer.name!r} has no offset (beta) but the ONNX one is not 0")
        if layer.center:
            _assign(layer, layer.beta, beta, "beta")
        _assign(layer, layer.moving_mean, mean, "moving_mean")
        _assign(layer, layer.moving_variance, var, "moving_variance")
        self.previous = (layer, None)


def load_onnx_weights(model, onnx_path, input_scale=1.0):
    """Copies the weights of an ONNX file into ``model`` (a built Keras model of the same architecture).

    ``input_scale`` multiplies the first layer's kernel: the ratio between the normalisation the ONNX
    network was trained with and the one ``model`` applies (``ARCFACE_TORCH_INPUT_SCALE`` for an
    arcface_torch network inside a tfface feature model, 1 for a bare backbone fed the same input).

    Returns ``{"layers": Keras layers loaded, "onnx_ops": ONNX weight ops, "folded_bn": BNs the exporter
    had folded into convolutions}``. Raises :class:`ConversionError` naming the first mismatching layer.
    """
    params = read_onnx_params(onnx_path)
    layers = keras_weight_layers(model)
    loader = _Loader(params, float(input_scale))
    for layer, flatten_from in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            loader.batch_norm(layer)
            continue
        if loader.bias is not None:
            raise ConversionError(f"{params[loader.j - 1].describe()} has a bias but the Keras layer before "
                                  f"{layer.name!r} has none and no BatchNorm follows it")
        if loader.previous is None and loader.input_scale != 1.0 and not isinstance(layer, keras.layers.Conv2D):
            raise ConversionError(f"input_scale needs a convolution first; the first Keras layer is {layer.name!r}")
        if isinstance(layer, (keras.layers.PReLU, PReLU)):
            loader.prelu(layer)
        elif isinstance(layer, keras.layers.Dense):
            loader.dense(layer, flatten_from)
        else:
            loader.conv(layer)
    if loader.bias is not None:
        raise ConversionError(f"the last Keras layer {layers[-1][0].name!r} has no bias for the ONNX bias of "
                              f"{params[loader.j - 1].describe()}")
    if loader.j != len(params):
        raise ConversionError(f"{params[loader.j].describe()} and {len(params) - loader.j - 1} more ONNX weight ops "
                              f"have no Keras counterpart: the Keras model ends at layer {layers[-1][0].name!r} "
                              f"(a deeper network in the ONNX file?)")
    return {"layers": len(layers), "onnx_ops": len(params), "folded_bn": loader.folded_bn}


def onnx_embedding_size(onnx_path):
    """D of an arcface_torch ONNX file: the output width of its last Linear (Gemm / MatMul) layer."""
    fcs = [p for p in read_onnx_params(onnx_path) if p.kind == "fc"]
    if not fcs:
        raise ConversionError(f"{onnx_path}: no Linear (Gemm/MatMul) layer, so no embedding size to read")
    return int(fcs[-1].arrays["W"].shape[0])


def convert_onnx(onnx_path, backbone, input_shape=(112, 112, 3), embedding_size=None, output_dir=None,
                 backbone_kwargs=None, head_kwargs=None):
    """Builds the tfface feature model for ``backbone`` and loads an arcface_torch ONNX file into it.

    The model is ``tfface.models.face_model.build_feature_model(backbone, input_shape, embedding_size)``:
    raw RGB pixels in [0, 255] -> features (un-normalised; cosine compares them). The first kernel is
    scaled by ``ARCFACE_TORCH_INPUT_SCALE`` (module docstring), so it matches the original network fed
    ``(x - 127.5) / 127.5`` RGB images. ``embedding_size`` defaults to the ONNX model's.

    With ``output_dir``, writes a tfface work directory holding no training data::

        config.json      TrainConfig with backbone, input_size, embedding_size (export name = backbone)
        classes.txt      empty: imported weights come without a classifier
        checkpoints/     tf.train.Checkpoint(model=feature model), what tfface-train writes
        convert.json     the source ONNX file and the conversion summary

    ``tfface-train --init_from=<output_dir>`` fine-tunes from it and ``tfface-export --workdir=<output_dir>``
    exports its SavedModel. ``backbone_kwargs`` (non-default builder arguments) cannot be recorded in
    config.json, so they are refused together with ``output_dir``.

    Returns ``(feature_model, summary)`` where ``summary`` is ``load_onnx_weights``' dict.
    """
    from tfface.models.face_model import build_feature_model

    input_shape = tuple(int(d) for d in input_shape)
    if backbone_kwargs and output_dir:
        raise ValueError("backbone_kwargs cannot be stored in a work directory's config.json; build the model "
                         "and call load_onnx_weights yourself")
    size = int(embedding_size or onnx_embedding_size(onnx_path))
    model = build_feature_model(backbone, input_shape, size, backbone_kwargs=backbone_kwargs, head_kwargs=head_kwargs)
    summary = load_onnx_weights(model, onnx_path, input_scale=ARCFACE_TORCH_INPUT_SCALE)
    if output_dir:
        _write_workdir(model, output_dir, backbone, input_shape, size, onnx_path, summary)
    return model, summary


def _write_workdir(model, output_dir, backbone, input_shape, embedding_size, onnx_path, summary):
    import tensorflow as tf

    from tfface.train.config import TrainConfig

    os.makedirs(output_dir, exist_ok=True)
    if tf.train.latest_checkpoint(os.path.join(output_dir, "checkpoints")):
        raise FileExistsError(f"{output_dir} already holds checkpoints; choose an empty --output")
    cfg = TrainConfig(workdir=output_dir, backbone=backbone, input_size=input_shape[:2],
                      embedding_size=embedding_size, export_name=backbone)
    with open(os.path.join(output_dir, "config.json"), "w", encoding="utf-8") as fh:
        fh.write(cfg.to_json())
    open(os.path.join(output_dir, "classes.txt"), "w", encoding="utf-8").close()
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), os.path.join(output_dir, "checkpoints"),
                                         max_to_keep=1)
    manager.save()
    with open(os.path.join(output_dir, "convert.json"), "w", encoding="utf-8") as fh:
        json.dump({"onnx": os.path.abspath(onnx_path), "backbone": backbone, "input_shape": list(input_shape),
                   "embedding_size": embedding_size, "input": "RGB, float pixels in [0, 255]", **summary}, fh, indent=2)
