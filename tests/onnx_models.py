"""Tiny ONNX models (a few channels, 8x8..16x16 images) that exercise the ONNX front end, for tests only.

Every builder is deterministic (seeded numpy weights) and returns an ``onnx.ModelProto`` that passes
``onnx.checker.check_model(m, full_check=True)`` and runs in onnxruntime. Each valid model holds at least one Conv,
Gemm or MatMul with a constant weight (the op a crossbar computes) next to the op under test. Unless said otherwise
the input is "input" with a symbolic batch dim "N", the output is "logits", opset 13. ``random_feeds`` and
``run_ort`` give a model random inputs and its onnxruntime outputs.

``ALL_VALID`` maps a name to a zero-argument builder of every valid model; ``BAD`` lists the models a compiler must
reject (``write_garbage`` / ``write_truncated`` write files that are not valid ONNX).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NEWEST_OPSET = onnx.defs.onnx_opset_version()
_INT64_MAX = np.iinfo(np.int64).max


class _Net:
    """Small graph builder: named nodes whose output tensors carry the node name, seeded initializers."""

    def __init__(self, name: str, seed: int = 0, opset: int = 13):
        self.name, self.opset = name, opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._count: dict[str, int] = {}

    def _name(self, op: str) -> str:
        i = self._count[op] = self._count.get(op, 0) + 1
        return f"{op.lower()}{i}"

    def input(self, shape: list, name: str = "input", dtype: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def const(self, name: str, array) -> str:
        """An initializer holding exactly ``array`` (int lists become int64, floats float32)."""
        a = np.asarray(array)
        a = a.astype(np.int64 if a.dtype.kind in "iu" else np.float32)
        self.inits.append(numpy_helper.from_array(a, name))
        return name

    def rand(self, name: str, shape, scale: float | None = None) -> str:
        """A random float32 initializer, N(0, scale^2); scale defaults to 1/sqrt(fan_in)."""
        if scale is None:
            scale = 1.0 / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else shape[0])
        return self.const(name, self.rng.standard_normal(shape) * scale)

    def node(self, op: str, inputs: list[str], name: str | None = None, out: str | None = None,
             n_out: int = 1, **attrs) -> str:
        name = name or self._name(op)
        outs = [out or name] + [f"{name}.out{i}" for i in range(1, n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    def conv(self, x: str, cin: int, cout: int, k=3, name: str | None = None, bias: bool = True,
             group: int = 1, out: str | None = None, **attrs) -> str:
        name = name or self._name("Conv")
        kh, kw = (k, k) if isinstance(k, int) else k
        ins = [x, self.rand(f"{name}.weight", (cout, cin // group, kh, kw))]
        if bias:
            ins.append(self.rand(f"{name}.bias", (cout,), 0.1))
        if group != 1:
            attrs["group"] = group
        return self.node("Conv", ins, name, out, kernel_shape=[kh, kw], **attrs)

    def gemm(self, x: str, k: int, m: int, name: str | None = None, out: str | None = "logits", **attrs) -> str:
        """Gemm with a PyTorch-style [m, k] weight (transB=1) and bias."""
        name = name or self._name("Gemm")
        ins = [x, self.rand(f"{name}.weight", (m, k)), self.rand(f"{name}.bias", (m,), 0.1)]
        return self.node("Gemm", ins, name, out, transB=1, **attrs)

    def bn(self, x: str, c: int, name: str, out: str | None = None, **attrs) -> str:
        """BatchNormalization with gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1), mean ~ N(0, 0.1), var ~ U(0.5, 1.5)."""
        r = self.rng
        params = {"weight": r.uniform(0.5, 1.5, c), "bias": r.normal(0, 0.1, c),
                  "running_mean": r.normal(0, 0.1, c), "running_var": r.uniform(0.5, 1.5, c)}
        ins = [x] + [self.const(f"{name}.{k}", v) for k, v in params.items()]
        return self.node("BatchNormalization", ins, name, out, **attrs)

    def head(self, x: str, features: int, classes: int = 10) -> str:
        """Flatten - Gemm -> logits."""
        return self.gemm(self.node("Flatten", [x], axis=1), features, classes)

    def build(self, outputs=("logits",), ir_version: int | None = None,
              inits_as_inputs: bool = False) -> onnx.ModelProto:
        inputs = list(self.inputs)
        if inits_as_inputs:
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits]
        # an output is a name (its shape comes from shape inference) or (name, shape)
        outputs = [(o, None) if isinstance(o, str) else o for o in outputs]
        graph = helper.make_graph(self.nodes, self.name, inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outputs],
                                  initializer=self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        if ir_version is None:
            model = helper.make_model_gen_version(graph, opset_imports=opsets, producer_name="cimc-tests")
        else:
            model = helper.make_model(graph, opset_imports=opsets, producer_name="cimc-tests", ir_version=ir_version)
        # declare the output shapes that shape inference finds
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        for (_, shape), o, io in zip(outputs, model.graph.output, inferred.graph.output):
            if shape is None:
                o.CopyFrom(io)
        onnx.checker.check_model(model, full_check=True)
        return model


def _img(net: _Net, c: int = 3, hw: int = 8) -> str:
    return net.input(["N", c, hw, hw])


# --------------------------------------------------------------------------------------------------------------
# 1. a small CNN
# --------------------------------------------------------------------------------------------------------------
def small_cnn(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """Conv+bias - Relu - grouped Conv - depthwise Conv - MaxPool - two branches - Concat - Flatten - Gemm."""
    n = _Net("small_cnn", seed, opset)
    x = n.input(["N", 3, 16, 16])  # a signed, normalised image
    x = n.node("Relu", [n.conv(x, 3, 8, name="conv1", pads=[1, 1, 1, 1])], "relu1")
    x = n.conv(x, 8, 8, name="conv2_grouped", group=2, pads=[1, 1, 1, 1])
    x = n.conv(x, 8, 8, name="conv3_depthwise", group=8, pads=[1, 1, 1, 1])
    x = n.node("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])              # 8x8x8
    a = n.node("Relu", [n.conv(x, 8, 4, 1, name="branch_a.conv")], "branch_a.relu")     # 4x8x8
    b = n.node("Relu", [n.conv(x, 8, 4, 3, name="branch_b.conv", pads=[1, 1, 1, 1])], "branch_b.relu")
    x = n.node("Concat", [a, b], "concat", axis=1)                                        # 8x8x8
    n.head(x, 512)
    return n.build()


# --------------------------------------------------------------------------------------------------------------
# 2. one model per op
# --------------------------------------------------------------------------------------------------------------
def conv(cin: int = 4, cout: int = 6, k=3, hw: int = 8, group: int = 1, bias: bool = True, **attrs) -> onnx.ModelProto:
    """A single Conv (strides/pads/dilations/auto_pad/group passed through as attributes) -> output "logits"."""
    n = _Net("conv")
    n.conv(_img(n, cin, hw), cin, cout, k, name="conv", bias=bias, group=group, out="logits", **attrs)
    return n.build()


def gemm(trans_a: int = 0, trans_b: int = 1, alpha: float = 1.0, beta: float = 1.0, bias: str = "vector",
         k: int = 12, m: int = 5) -> onnx.ModelProto:
    """A single Gemm Y = alpha * A' B' + beta * C with activation A: [N, k], or [k, 4] (fixed batch) when transA=1."""
    n = _Net("gemm")
    x = n.input([k, 4] if trans_a else ["N", k])
    ins = [x, n.rand("gemm.weight", (m, k) if trans_b else (k, m))]
    if bias == "vector":
        ins.append(n.rand("gemm.bias", (m,), 0.1))
    elif bias == "row":
        ins.append(n.rand("gemm.bias", (1, m), 0.1))
    elif bias == "scalar":
        ins.append(n.const("gemm.bias", [0.25]))
    elif bias != "none":
        raise ValueError(bias)
    n.node("Gemm", ins, "gemm", "logits", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    return n.build()


def matmul(rank: int = 2, k: int = 12, m: int = 5) -> onnx.ModelProto:
    """MatMul of an activation [N, k] (rank 2) or [N, 3, k] (rank 3) by a constant [k, m] right operand."""
    n = _Net("matmul")
    x = n.input(["N", k] if rank == 2 else ["N", 3, k])
    n.node("MatMul", [x, n.rand("matmul.weight", (k, m))], "matmul", "logits")
    return n.build()


def matmul_const_left(k: int = 6, m: int = 5, s: int = 4) -> onnx.ModelProto:
    """MatMul with a constant LEFT operand: W [m, k] @ X [N, k, s] -> [N, m, s]."""
    n = _Net("matmul_const_left")
    n.node("MatMul", [n.rand("matmul.weight", (m, k)), n.input(["N", k, s])], "matmul", "logits")
    return n.build()


def matmul_add_bias(k: int = 12, m: int = 5) -> onnx.ModelProto:
    """MatMul by a constant [k, m] then Add of a constant [m] bias (how exporters write a Linear layer)."""
    n = _Net("matmul_add_bias")
    y = n.node("MatMul", [n.input(["N", k]), n.rand("fc.weight", (k, m))], "fc.matmul")
    n.node("Add", [y, n.rand("fc.bias", (m,), 0.1)], "fc.add", "logits")
    return n.build()


def conv_add_bias() -> onnx.ModelProto:
    """Conv without bias followed by Add of a constant [1, C, 1, 1] bias."""
    n = _Net("conv_add_bias")
    y = n.conv(_img(n, 4), 4, 6, name="conv", bias=False, pads=[1, 1, 1, 1])
    n.node("Add", [y, n.rand("conv.add_bias", (1, 6, 1, 1), 0.1)], "add", "logits")
    return n.build()


def conv_bn() -> onnx.ModelProto:
    """Conv followed by BatchNormalization (inference mode)."""
    n = _Net("conv_bn")
    y = n.conv(_img(n, 4), 4, 6, name="conv", pads=[1, 1, 1, 1])
    n.bn(y, 6, "bn", "logits", epsilon=1e-5)
    return n.build()


def conv_arith(op: str = "Mul", per_channel: bool = False, const_first: bool = False) -> onnx.ModelProto:
    """Conv followed by Mul/Div/Sub/Add with a constant (scalar or per-channel [1, C, 1, 1]; optionally c op x)."""
    n = _Net(f"conv_{op.lower()}")
    y = n.conv(_img(n, 4), 4, 6, name="conv", pads=[1, 1, 1, 1])
    c = n.rng.uniform(0.5, 2.0, (1, 6, 1, 1)) if per_channel else np.array(1.5)
    c = n.const(f"{op.lower()}.const", c)
    n.node(op, [c, y] if const_first else [y, c], op.lower(), "logits")
    return n.build()


def activation(op: str = "Relu", **attrs) -> onnx.ModelProto:
    """Conv followed by an activation (Relu, Clip with min/max inputs, LeakyRelu, Sigmoid, ...) then a 1x1 Conv."""
    n = _Net(f"conv_{op.lower()}")
    y = n.conv(_img(n, 4), 4, 6, name="conv1", pads=[1, 1, 1, 1])
    ins = [y]
    if op == "Clip":
        ins += [n.const("clip.min", np.float32(attrs.pop("min", 0.0))),
                n.const("clip.max", np.float32(attrs.pop("max", 6.0)))]
    y = n.node(op, ins, op.lower(), **attrs)
    n.conv(y, 6, 3, 1, name="conv2", out="logits")
    return n.build()


def pool(op: str = "MaxPool", hw: int = 9, **attrs) -> onnx.ModelProto:
    """Conv followed by MaxPool/AveragePool (kernel, strides, pads, ceil_mode, count_include_pad as attributes)."""
    n = _Net(f"conv_{op.lower()}")
    y = n.conv(_img(n, 4, hw), 4, 6, name="conv", pads=[1, 1, 1, 1])
    attrs.setdefault("kernel_shape", [2, 2])
    n.node(op, [y], op.lower(), "logits", **attrs)
    return n.build()


def global_avgpool() -> onnx.ModelProto:
    """Conv - GlobalAveragePool - Flatten - Gemm."""
    n = _Net("global_avgpool")
    y = n.conv(_img(n, 4), 4, 6, name="conv", pads=[1, 1, 1, 1])
    n.head(n.node("GlobalAveragePool", [y], "gap"), 6)
    return n.build()


def add_tensors() -> onnx.ModelProto:
    """Residual block: Add of two activations (Conv-Relu-Conv branch + identity), then Relu and a 1x1 Conv."""
    n = _Net("add_tensors")
    x = n.node("Relu", [n.conv(_img(n, 4), 4, 6, name="conv0", pads=[1, 1, 1, 1])], "relu0")
    y = n.node("Relu", [n.conv(x, 6, 6, name="conv1", pads=[1, 1, 1, 1])], "relu1")
    y = n.conv(y, 6, 6, name="conv2", pads=[1, 1, 1, 1])
    y = n.node("Relu", [n.node("Add", [y, x], "add")], "relu2")
    n.conv(y, 6, 3, 1, name="conv3", out="logits")
    return n.build()


def concat(axis: int = 1) -> onnx.ModelProto:
    """Two Conv branches concatenated on ``axis`` (1 = channels), then a 1x1 Conv."""
    n = _Net("concat")
    x = _img(n, 4)
    a = n.conv(x, 4, 3, name="conv_a", pads=[1, 1, 1, 1])
    b = n.conv(x, 4, 5, 1, name="conv_b")
    if axis != 1:
        b = n.conv(x, 4, 3, 1, name="conv_b2")
    y = n.node("Concat", [a, b], "concat", axis=axis)
    n.conv(y, 8 if axis == 1 else 3, 2, 1, name="conv_out", out="logits")
    return n.build()


def flatten() -> onnx.ModelProto:
    """Conv - Flatten(axis=1) - Gemm."""
    n = _Net("flatten")
    y = n.conv(_img(n, 4), 4, 2, name="conv", strides=[2, 2])  # 2x3x3
    n.head(y, 18)
    return n.build()


def reshape(shape=(0, -1)) -> onnx.ModelProto:
    """Conv - Reshape to ``shape`` (0 copies a dim, -1 infers) - MatMul on the last axis."""
    n = _Net("reshape")
    y = n.conv(_img(n, 4), 4, 2, name="conv", strides=[2, 2])  # 2x3x3
    y = n.node("Reshape", [y, n.const("reshape.shape", list(shape))], "reshape")
    last = {(0, -1): 18, (0, 2, 9): 9, (0, 6, 3): 3}[tuple(shape)]
    n.node("MatMul", [y, n.rand("fc.weight", (last, 5))], "fc", "logits")
    return n.build()


def transpose(perm=(0, 2, 3, 1)) -> onnx.ModelProto:
    """Conv - Transpose to NHWC - MatMul over channels (a 1x1 conv in NHWC layout)."""
    n = _Net("transpose")
    y = n.conv(_img(n, 4), 4, 6, name="conv", pads=[1, 1, 1, 1])
    y = n.node("Transpose", [y], "transpose", perm=list(perm))
    n.node("MatMul", [y, n.rand("fc.weight", (6, 5))], "fc", "logits")
    return n.build()


def pad(mode: str = "constant", value: float = 0.0) -> onnx.ModelProto:
    """Conv - Pad (mode constant/reflect/edge, asymmetric pads) - Conv."""
    n = _Net(f"pad_{mode}")
    y = n.conv(_img(n, 4), 4, 6, name="conv1", pads=[1, 1, 1, 1])
    ins = [y, n.const("pad.pads", [0, 0, 1, 2, 0, 0, 2, 1])]
    if mode == "constant" and value:
        ins.append(n.const("pad.value", np.float32(value)))
    y = n.node("Pad", ins, "pad", mode=mode)
    n.conv(y, 6, 3, name="conv2", out="logits")
    return n.build()


def slice_(starts=(-7, 1), ends=(_INT64_MAX, -1), axes=(2, 3), steps=(2, 3)) -> onnx.ModelProto:
    """Conv - Slice (starts/ends/axes/steps inputs; negative indices and steps allowed) - 1x1 Conv."""
    n = _Net("slice")
    y = n.conv(_img(n, 4, 10), 4, 6, name="conv", pads=[1, 1, 1, 1])
    ins = [y] + [n.const(f"slice.{k}", list(v)) for k, v in
                 (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))]
    y = n.node("Slice", ins, "slice")
    cout = 6
    if 1 in axes:
        i = list(axes).index(1)
        cout = len(range(*slice(starts[i], min(ends[i], 2**31), steps[i]).indices(6)))
    n.conv(y, cout, 2, 1, name="conv_out", out="logits")
    return n.build()


def squeeze_unsqueeze() -> onnx.ModelProto:
    """Conv - GlobalAveragePool - Squeeze(axes 2, 3) - Gemm - Unsqueeze(axis 1) -> [N, 1, 10]."""
    n = _Net("squeeze_unsqueeze")
    y = n.node("GlobalAveragePool", [n.conv(_img(n, 4), 4, 6, name="conv")], "gap")
    y = n.node("Squeeze", [y, n.const("squeeze.axes", [2, 3])], "squeeze")
    y = n.gemm(y, 6, 10, name="fc", out=None)
    n.node("Unsqueeze", [y, n.const("unsqueeze.axes", [1])], "unsqueeze", "logits")
    return n.build()


def softmax(axis: int = -1) -> onnx.ModelProto:
    """Conv - Flatten - Gemm - Softmax."""
    n = _Net("softmax")
    y = n.conv(_img(n, 4), 4, 2, name="conv", strides=[2, 2])
    y = n.gemm(n.node("Flatten", [y], axis=1), 18, 10, name="fc", out=None)
    n.node("Softmax", [y], "softmax", "logits", axis=axis)
    return n.build()


def identity_dropout() -> onnx.ModelProto:
    """Conv - Identity - Dropout (inference: a no-op, with its mask output) - Relu - Flatten - Gemm."""
    n = _Net("identity_dropout")
    y = n.node("Identity", [n.conv(_img(n, 4), 4, 2, name="conv", strides=[2, 2])], "identity")
    y = n.node("Dropout", [y, n.const("dropout.ratio", np.float32(0.3))], "dropout", n_out=2)
    n.head(n.node("Relu", [y], "relu"), 18)
    return n.build()


# --------------------------------------------------------------------------------------------------------------
# 3. legacy and real-world encodings
# --------------------------------------------------------------------------------------------------------------
def legacy_opset8() -> onnx.ModelProto:
    """A small conv net as an old exporter wrote it: opset 8, IR 3, attribute-style ops, weights also graph inputs.

    Clip-6 min/max, Pad-2 pads/value, Slice-1 starts/ends/axes and Squeeze-1 axes are attributes; BatchNormalization
    -7 (spatial=1, one output); Dropout-7 with a ratio attribute; Softmax-1 on a 4-D tensor with axis=1 normalises
    over C*H*W together (the legacy "coerce to 2-D" semantics); Gemm-7 needs its C input.
    """
    n = _Net("legacy_opset8", opset=8)
    x = _img(n, 3)
    y = n.conv(x, 3, 4, name="conv1", pads=[1, 1, 1, 1])                                     # 4x8x8
    y = n.bn(y, 4, "bn1", epsilon=1e-5, momentum=0.9, spatial=1)
    y = n.node("Clip", [y], "clip1", min=0.0, max=6.0)
    y = n.node("Pad", [y], "pad1", mode="constant", pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.0)   # 4x10x10
    y = n.conv(y, 4, 4, name="conv2", bias=False)                                             # 4x8x8
    y = n.node("Slice", [y], "slice1", starts=[1, 1], ends=[7, 7], axes=[2, 3])                # 4x6x6
    y = n.node("MaxPool", [y], "pool1", kernel_shape=[2, 2], strides=[2, 2])                    # 4x3x3
    y = n.node("Dropout", [y], "dropout1", ratio=0.5)
    y = n.conv(y, 4, 6, 1, name="conv3")                                                      # 6x3x3
    y = n.node("Softmax", [y], "softmax1", axis=1)
    y = n.node("GlobalAveragePool", [y], "gap")
    y = n.node("Squeeze", [y], "squeeze", axes=[2, 3])
    n.gemm(y, 6, 10, name="fc")
    return n.build(ir_version=3, inits_as_inputs=True)


def initializers_as_inputs() -> onnx.ModelProto:
    """small_cnn with every initializer also listed in graph.input (keep_initializers_as_inputs=True style)."""
    model = small_cnn()
    inits = model.graph.initializer
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits)
    onnx.checker.check_model(model, full_check=True)
    return model


def constant_weights() -> onnx.ModelProto:
    """Weights, biases and a scale given by Constant nodes instead of initializers."""
    n = _Net("constant_weights")
    x = _img(n, 3)

    def const_node(name, array):
        t = numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)
        return n.node("Constant", [], name, value=t)

    w = const_node("conv.weight", n.rng.standard_normal((4, 3, 3, 3)) / np.sqrt(27))
    b = const_node("conv.bias", n.rng.normal(0, 0.1, 4))
    y = n.node("Relu", [n.node("Conv", [x, w, b], "conv", kernel_shape=[3, 3], strides=[2, 2])], "relu")  # 4x3x3
    s = n.node("Constant", [], "scale", value_float=0.5)
    y = n.node("Flatten", [n.node("Mul", [y, s], "mul")], "flatten", axis=1)
    fw = const_node("fc.weight", n.rng.standard_normal((10, 36)) / 6)
    fb = const_node("fc.bias", n.rng.normal(0, 0.1, 10))
    n.node("Gemm", [y, fw, fb], "fc", "logits", transB=1)
    return n.build()


def folded_weights() -> onnx.ModelProto:
    """Weights computed by constant subgraphs: Reshape of a flat initializer, Transpose, Identity, Mul by a scale."""
    n = _Net("folded_weights")
    x = _img(n, 3)
    flat = n.rand("conv.weight_flat", (4 * 3 * 3 * 3,), 0.2)
    w = n.node("Reshape", [flat, n.const("conv.weight_shape", [4, 3, 3, 3])], "conv.weight_reshape")
    b = n.node("Identity", [n.rand("conv.bias", (4,), 0.1)], "conv.bias_identity")
    y = n.node("Conv", [x, w, b], "conv", kernel_shape=[3, 3], strides=[2, 2])  # 4x3x3
    y = n.node("Flatten", [n.node("Relu", [y], "relu")], "flatten", axis=1)
    wt = n.node("Transpose", [n.rand("fc.weight_t", (36, 10))], "fc.weight_transpose", perm=[1, 0])
    wt = n.node("Mul", [wt, n.const("fc.weight_scale", np.float32(0.5))], "fc.weight_scale_mul")
    n.node("Gemm", [y, wt, n.rand("fc.bias", (10,), 0.1)], "fc", "logits", transB=1)
    return n.build()


def pytorch_flatten(opset: int = 13) -> onnx.ModelProto:
    """PyTorch x.view(x.size(0), -1): Shape - Gather(0) - Unsqueeze - Concat(-1) - Reshape, then Gemm."""
    n = _Net("pytorch_flatten", opset=opset)
    y = n.node("Relu", [n.conv(_img(n, 3), 3, 4, name="conv", strides=[2, 2])], "relu")  # 4x3x3
    shape = n.node("Shape", [y], "shape")
    idx = n.node("Constant", [], "gather.index", value=numpy_helper.from_array(np.array(0, dtype=np.int64)))
    batch = n.node("Gather", [shape, idx], "gather", axis=0)
    if opset >= 13:
        batch = n.node("Unsqueeze", [batch, n.const("unsqueeze.axes", [0])], "unsqueeze")
    else:
        batch = n.node("Unsqueeze", [batch], "unsqueeze", axes=[0])
    minus1 = n.node("Constant", [], "minus_one", value=numpy_helper.from_array(np.array([-1], dtype=np.int64)))
    target = n.node("Concat", [batch, minus1], "concat", axis=0)
    y = n.node("Reshape", [y, target], "reshape")
    n.gemm(y, 36, 10, name="fc")
    return n.build(outputs=[("logits", ["N", 10])])  # shape inference cannot see through the computed shape


def newest_opset() -> onnx.ModelProto:
    """Conv-BN-Clip-Pad(with axes)-Conv-MaxPool-Reshape-Gemm-Softmax at the newest opset this onnx knows."""
    n = _Net("newest_opset", opset=NEWEST_OPSET)
    y = n.conv(_img(n, 3), 3, 4, name="conv1", pads=[1, 1, 1, 1])
    y = n.bn(y, 4, "bn")
    y = n.node("Clip", [y, n.const("clip.min", np.float32(0)), n.const("clip.max", np.float32(6))], "clip")
    y = n.node("Pad", [y, n.const("pad.pads", [1, 1, 1, 1]), "", n.const("pad.axes", [2, 3])], "pad")  # 4x10x10
    y = n.conv(y, 4, 4, name="conv2", strides=[2, 2])                                               # 4x4x4
    y = n.node("MaxPool", [y], "pool", kernel_shape=[2, 2], strides=[2, 2])                          # 4x2x2
    y = n.node("Reshape", [y, n.const("reshape.shape", [0, -1])], "reshape")
    y = n.gemm(y, 16, 10, name="fc", out=None)
    n.node("Softmax", [y], "softmax", "logits", axis=-1)
    return n.build(outputs=[("logits", ["N", 10])])


# --------------------------------------------------------------------------------------------------------------
# 4. bad inputs
# --------------------------------------------------------------------------------------------------------------
def unsupported_op(op_type: str = "Erf") -> onnx.ModelProto:
    """Conv - <op_type> (a unary op a crossbar compiler does not support) named "bad_node" - Flatten - Gemm."""
    n = _Net("unsupported_op")
    y = n.conv(_img(n, 3), 3, 2, name="conv", strides=[2, 2])
    n.head(n.node(op_type, [y], "bad_node"), 18)
    return n.build()


def non_constant_weight() -> onnx.ModelProto:
    """A Conv whose weight "conv.weight" is a graph input with no initializer (not a constant)."""
    n = _Net("non_constant_weight")
    x = _img(n, 3)
    w = n.input([4, 3, 3, 3], name="conv.weight")
    y = n.node("Conv", [x, w, n.rand("conv.bias", (4,), 0.1)], "conv", kernel_shape=[3, 3], strides=[2, 2])
    n.head(y, 36)
    return n.build()


def write_garbage(path, size: int = 256, seed: int = 0) -> Path:
    """Write bytes that do not parse as a protobuf (a text header, then ``size`` random bytes) to ``path``."""
    path = Path(path)
    path.write_bytes(b"this is not an ONNX model\n" + np.random.default_rng(seed).bytes(size))
    return path


def write_truncated(path, model: onnx.ModelProto | None = None) -> Path:
    """Write the first half of a serialized model (small_cnn by default): a cut-off ONNX file."""
    path = Path(path)
    data = (model or small_cnn()).SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------------------------------------------
# running them
# --------------------------------------------------------------------------------------------------------------
def random_feeds(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """N(0, 1) inputs for every graph input that is not an initializer; symbolic dims get ``batch``."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Run ``model`` in onnxruntime (CPU) on ``feeds`` (random_feeds(model) by default); return all outputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no warnings about initializers listed as graph inputs
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds if feeds is not None else random_feeds(model))


_p = functools.partial
ALL_VALID = {
    "small_cnn": small_cnn,
    # Conv attributes
    "conv": conv,
    "conv_nobias": _p(conv, bias=False),
    "conv_1x1": _p(conv, k=1),
    "conv_rect_kernel": _p(conv, k=(3, 1), strides=[2, 1], pads=[1, 0, 1, 0]),
    "conv_stride2_pad1": _p(conv, strides=[2, 2], pads=[1, 1, 1, 1]),
    "conv_asym_pads": _p(conv, pads=[0, 1, 2, 1]),
    "conv_dilation2": _p(conv, dilations=[2, 2], pads=[2, 2, 2, 2]),
    "conv_same_upper": _p(conv, strides=[2, 2], auto_pad="SAME_UPPER"),   # 8 -> 4, total pad 1: 0 before, 1 after
    "conv_same_lower": _p(conv, strides=[2, 2], auto_pad="SAME_LOWER"),   # 1 before, 0 after
    "conv_same_upper_k2": _p(conv, k=2, auto_pad="SAME_UPPER"),
    "conv_valid": _p(conv, auto_pad="VALID"),
    "conv_group2": _p(conv, group=2),
    "conv_depthwise": _p(conv, cout=4, group=4, pads=[1, 1, 1, 1]),
    "conv_depthwise_x2": _p(conv, cout=8, group=4, pads=[1, 1, 1, 1]),
    # Gemm / MatMul
    "gemm": gemm,
    "gemm_notrans": _p(gemm, trans_b=0),
    "gemm_trans_a": _p(gemm, trans_a=1),
    "gemm_trans_ab0": _p(gemm, trans_a=1, trans_b=0),
    "gemm_alpha_beta": _p(gemm, alpha=0.5, beta=2.0),
    "gemm_nobias": _p(gemm, bias="none"),
    "gemm_bias_row": _p(gemm, bias="row"),
    "gemm_bias_scalar": _p(gemm, bias="scalar", beta=0.5),
    "matmul_2d": matmul,
    "matmul_3d": _p(matmul, rank=3),
    "matmul_const_left": matmul_const_left,
    "matmul_add_bias": matmul_add_bias,
    # elementwise with constants
    "conv_add_bias": conv_add_bias,
    "conv_bn": conv_bn,
    "conv_mul_scalar": _p(conv_arith, "Mul"),
    "conv_mul_channel": _p(conv_arith, "Mul", True),
    "conv_div_scalar": _p(conv_arith, "Div"),
    "conv_div_channel": _p(conv_arith, "Div", True),
    "conv_sub_scalar": _p(conv_arith, "Sub"),
    "conv_sub_channel": _p(conv_arith, "Sub", True),
    "conv_rsub_scalar": _p(conv_arith, "Sub", False, True),
    "conv_add_scalar": _p(conv_arith, "Add"),
    # activations
    "relu": _p(activation, "Relu"),
    "clip": _p(activation, "Clip", min=0.0, max=6.0),
    "clip_signed": _p(activation, "Clip", min=-1.0, max=1.0),
    "leaky_relu": _p(activation, "LeakyRelu", alpha=0.1),
    "sigmoid": _p(activation, "Sigmoid"),
    # pooling
    "maxpool": _p(pool, "MaxPool", hw=8, strides=[2, 2]),
    "maxpool_ceil": _p(pool, "MaxPool", hw=8, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),  # 8 -> 4 (floor: 3)
    "maxpool_pads": _p(pool, "MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "maxpool_stride1": _p(pool, "MaxPool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "avgpool": _p(pool, "AveragePool", hw=8, strides=[2, 2]),
    "avgpool_ceil": _p(pool, "AveragePool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),  # 9 -> 5 (floor: 4)
    "avgpool_pads_include": _p(pool, "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                               count_include_pad=1),
    "avgpool_pads_exclude": _p(pool, "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                               count_include_pad=0),
    "global_avgpool": global_avgpool,
    # tensor plumbing
    "add_tensors": add_tensors,
    "concat": concat,
    "concat_spatial": _p(concat, axis=2),
    "flatten": flatten,
    "reshape": reshape,
    "reshape_3d": _p(reshape, (0, 2, 9)),
    "transpose": transpose,
    "pad_constant": pad,
    "pad_constant_value": _p(pad, "constant", 0.5),
    "pad_reflect": _p(pad, "reflect"),
    "pad_edge": _p(pad, "edge"),
    "slice": slice_,
    "slice_channels": _p(slice_, starts=(1,), ends=(-1,), axes=(1,), steps=(1,)),
    "slice_reverse": _p(slice_, starts=(-1,), ends=(-_INT64_MAX,), axes=(3,), steps=(-1,)),
    "squeeze_unsqueeze": squeeze_unsqueeze,
    "softmax": softmax,
    "identity_dropout": identity_dropout,
    # legacy and real-world encodings
    "legacy_opset8": legacy_opset8,
    "initializers_as_inputs": initializers_as_inputs,
    "constant_weights": constant_weights,
    "folded_weights": folded_weights,
    "pytorch_flatten": pytorch_flatten,
    "pytorch_flatten_opset11": _p(pytorch_flatten, 11),
    "newest_opset": newest_opset,
    "small_cnn_newest_opset": _p(small_cnn, NEWEST_OPSET),
}

BAD = {
    "unsupported_op": unsupported_op,
    "non_constant_weight": non_constant_weight,
}
