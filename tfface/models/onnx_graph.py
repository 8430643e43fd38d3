"""Reading the weights of an ONNX graph: its parametric ops (Conv, BatchNormalization, PRelu, Gemm /
MatMul+Add) in PyTorch ``forward()`` order, with the ``onnx`` package only (no onnx-tf, no onnxruntime).

The walk goes from the graph's outputs back to its input, depth first, visiting a node's inputs in
argument order and listing a node after its inputs (post-order); for IResNet and MobileFaceNet that is
the order of ``forward()``: main branch, then the shortcut. ``tfface.models.convert`` pairs the result
with the Keras layers.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

# ONNX ops that carry no weights and may appear in an arcface_torch graph (shape plumbing of
# ``x.view(x.size(0), -1)``, residual Add, eval-mode Dropout, casts of the fp16 path).
_PASSIVE_OPS = {"Add", "Relu", "Flatten", "Reshape", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat",
                "Dropout", "Identity", "Cast", "Constant", "Slice"}
# Ops evaluated at load time when all their inputs are constants (weights fed through them).
_FOLDABLE_OPS = {"Identity", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Cast", "Flatten"}


class ConversionError(ValueError):
    """The ONNX graph cannot be loaded into the Keras model (mismatch, unsupported op, not ONNX)."""


@dataclasses.dataclass
class OnnxParam:
    """One parametric ONNX op. ``kind``: "conv" (W, b, group, strides), "bn" (gamma, beta, mean, var,
    eps), "prelu" (slope) or "fc" (W as torch ``[D, K]``, b)."""

    kind: str
    node: str
    op: str
    arrays: dict
    attrs: dict = dataclasses.field(default_factory=dict)
    data_in: str = ""  # name of the data (non-weight) input tensor
    data_out: str = ""

    def describe(self):
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.arrays.items() if v is not None)
        return f"ONNX node {self.node!r} ({self.op}: {shapes})"


def _attrs(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fold(op, inputs, attrs):
    """numpy value of a constant-only ``op`` (the few ops exporters put between a weight and its use)."""
    x = inputs[0]
    if op in ("Identity",):
        return x
    if op in ("Unsqueeze", "Squeeze"):
        axes = attrs.get("axes", inputs[1] if len(inputs) > 1 else None)
        if op == "Squeeze":
            return np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes))
        rank = x.ndim + len(axes)
        for axis in sorted(int(a) % rank for a in axes):
            x = np.expand_dims(x, axis)
        return x
    if op == "Reshape":
        shape = [int(d) if int(d) != 0 else x.shape[i] for i, d in enumerate(inputs[1])]
        return x.reshape(shape)
    if op == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if op == "Cast":
        from onnx import helper

        return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    axis = attrs.get("axis", 1)  # Flatten
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def read_onnx_params(onnx_path):
    """The parametric ops of an ONNX file, in PyTorch ``forward()`` order (see the module docstring).

    Raises FileNotFoundError for a missing file and :class:`ConversionError` for a file that is not an
    ONNX model or holds an op this importer does not handle.
    """
    import onnx
    from onnx import numpy_helper

    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(f"no ONNX file {onnx_path}")
    try:
        graph = onnx.load(onnx_path).graph
    except Exception as exc:  # protobuf raises DecodeError / RuntimeError, version-dependent
        raise ConversionError(f"{onnx_path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    if not graph.node or not graph.output:
        raise ConversionError(f"{onnx_path}: not an ONNX model (no graph nodes)")

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    names = [node.name or f"{node.op_type}#{i}" for i, node in enumerate(graph.node)]
    for node in graph.node:  # ONNX files are topologically sorted, so one pass folds chains
        if node.op_type == "Constant":
            attrs = _attrs(node)
            value = attrs.get("value", attrs.get("value_float", attrs.get("value_floats",
                              attrs.get("value_int", attrs.get("value_ints")))))
            consts[node.output[0]] = numpy_helper.to_array(value) if hasattr(value, "dims") else np.asarray(value)
        elif node.op_type in _FOLDABLE_OPS and all(i in consts for i in node.input if i):
            consts[node.output[0]] = _fold(node.op_type, [consts[i] for i in node.input if i], _attrs(node))

    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    order, done, stack = [], set(), [(producer[o.name], False) for o in reversed(graph.output) if o.name in producer]
    while stack:
        index, expanded = stack.pop()
        if index in done:
            continue
        if expanded:
            done.add(index)
            order.append(index)
            continue
        stack.append((index, True))
        for name in reversed(graph.node[index].input):
            if name and name not in consts and name in producer and producer[name] not in done:
                stack.append((producer[name], False))

    params, fc_outputs = [], {}

    def const(node, k, what):
        name = node.input[k] if len(node.input) > k else ""
        if not name:
            return None
        if name not in consts:
            raise ConversionError(f"ONNX node {names[index]!r} ({node.op_type}): its {what} {name!r} is computed "
                                  f"at run time, not a stored weight; unsupported")
        return np.asarray(consts[name], dtype=np.float64)

    for index in order:
        node, op = graph.node[index], graph.node[index].op_type
        attrs = _attrs(node)
        count = len(params)
        if op == "Conv":
            if any(d != 1 for d in attrs.get("dilations", [1])):
                raise ConversionError(f"ONNX node {names[index]!r}: dilated Conv is not supported")
            arrays = {"W": const(node, 1, "weight"), "b": const(node, 2, "bias")}
            conv_attrs = {"group": int(attrs.get("group", 1)), "strides": tuple(attrs.get("strides", (1, 1)))}
            params.append(OnnxParam("conv", names[index], op, arrays, conv_attrs))
        elif op == "BatchNormalization":
            arrays = {k: const(node, i, k) for i, k in enumerate(("gamma", "beta", "mean", "var"), start=1)}
            params.append(OnnxParam("bn", names[index], op, arrays, {"eps": float(attrs.get("epsilon", 1e-5))}))
        elif op == "PRelu":
            params.append(OnnxParam("prelu", names[index], op, {"slope": const(node, 1, "slope")}))
        elif op in ("Gemm", "MatMul"):
            w = const(node, 1, "weight")
            if op == "Gemm":
                if attrs.get("transA", 0):
                    raise ConversionError(f"ONNX node {names[index]!r}: Gemm with transA=1 is not supported")
                w = (w if attrs.get("transB", 0) else w.T) * attrs.get("alpha", 1.0)
                b = const(node, 2, "bias")
                b = None if b is None else np.broadcast_to(b * attrs.get("beta", 1.0), w.shape[:1]).copy()
            else:
                w, b = w.T, None
            params.append(OnnxParam("fc", names[index], op, {"W": w, "b": b}))
            fc_outputs[node.output[0]] = params[-1]
        elif op == "Add" and any(i in consts for i in node.input):
            data = [i for i in node.input if i not in consts]
            fc = fc_outputs.get(data[0]) if len(data) == 1 else None
            if fc is None or fc.arrays["b"] is not None:
                raise ConversionError(f"ONNX node {names[index]!r}: Add of a constant outside a Linear layer's bias "
                                      f"is not supported")
            k = next(k for k, name in enumerate(node.input) if name in consts)
            fc.arrays["b"] = np.broadcast_to(const(node, k, "bias").reshape(-1), fc.arrays["W"].shape[:1]).copy()
            fc.data_out = node.output[0]  # the biased sum is the Linear layer's output
        elif op in ("Sub", "Mul", "Div"):
            raise ConversionError(f"unsupported ONNX op {op} (node {names[index]!r}): arithmetic on the data, e.g. "
                                  f"input normalisation inside the graph, is not supported; export the network "
                                  f"without it (arcface_torch normalises outside the model)")
        elif op not in _PASSIVE_OPS:
            raise ConversionError(f"unsupported ONNX op {op} (node {names[index]!r}); tfface-convert reads "
                                  f"arcface_torch IResNet / MobileFaceNet graphs (Conv, BatchNormalization, "
                                  f"PRelu, Add, Flatten/Reshape, Gemm/MatMul)")
        if len(params) > count:
            params[-1].data_in, params[-1].data_out = node.input[0], node.output[0]
    return params
