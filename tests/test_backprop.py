"""Issue 13 item 2: the backward pass of multi-layer hybrid training. Each digital op's vector-Jacobian product
(cimc.vjp) against central finite differences of the op as onnxruntime runs it, and the whole chain (cimc.backprop)
against finite differences of the loss in the tuned layers' weights on a tiny CNN."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc import backprop, ort_session
from cimc.backends.reference import FloatBackend
from cimc.errors import ConfigError
from cimc.frontend import import_onnx
from cimc.graph_run import run_graph
from cimc.im2col import im2col, im2col_adjoint
from cimc.ir import ActQuant, ConvGeometry, DigitalOp
from cimc.vjp import vjp

F = TensorProto.FLOAT


def _ort(node, shapes, constants, opset=17):
    """f(inputs) -> first output, the node alone in onnxruntime (float32)."""
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, F, s) for n, s in shapes.items()],
                              [helper.make_value_info(node.output[0], onnx.TypeProto())],
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    session = ort_session.session(ort_session.model(graph, [helper.make_opsetid("", opset)]))
    names = list(shapes)
    return lambda *xs: session.run([node.output[0]], dict(zip(names, [x.astype(np.float32) for x in xs])))[0]


CASES = [   # (node, input shapes, constants, attributes only for our side's input values)
    (helper.make_node("Relu", ["x"], ["y"]), {"x": [2, 3, 4]}, {}),
    (helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.2), {"x": [2, 5]}, {}),
    (helper.make_node("Sigmoid", ["x"], ["y"]), {"x": [2, 5]}, {}),
    (helper.make_node("Tanh", ["x"], ["y"]), {"x": [2, 5]}, {}),
    (helper.make_node("Clip", ["x", "lo", "hi"], ["y"]), {"x": [3, 4]},
     {"lo": np.array(-0.5, np.float32), "hi": np.array(0.6, np.float32)}),
    (helper.make_node("Identity", ["x"], ["y"]), {"x": [2, 3]}, {}),
    (helper.make_node("Flatten", ["x"], ["y"], axis=1), {"x": [2, 3, 2, 2]}, {}),
    (helper.make_node("Reshape", ["x", "s"], ["y"]), {"x": [2, 6]}, {"s": np.array([2, 3, 2], np.int64)}),
    (helper.make_node("Transpose", ["x"], ["y"], perm=[2, 0, 1]), {"x": [2, 3, 4]}, {}),
    (helper.make_node("Add", ["a", "b"], ["y"]), {"a": [2, 3, 4], "b": [3, 1]}, {}),
    (helper.make_node("Sub", ["a", "b"], ["y"]), {"a": [2, 3], "b": [2, 3]}, {}),
    (helper.make_node("Mul", ["a", "b"], ["y"]), {"a": [2, 3, 4], "b": [4]}, {}),
    (helper.make_node("Concat", ["a", "b"], ["y"], axis=1), {"a": [2, 3, 2], "b": [2, 1, 2]}, {}),
    (helper.make_node("Softmax", ["x"], ["y"], axis=1), {"x": [3, 4, 2]}, {}),
    (helper.make_node("LogSoftmax", ["x"], ["y"]), {"x": [3, 5]}, {}),
    (helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3), {"x": [2, 3, 2, 2]},
     {"s": np.array([0.5, -2, 1.5], np.float32), "b": np.array([0.1, 0.2, 0.3], np.float32),
      "m": np.array([0.3, -0.2, 0.0], np.float32), "v": np.array([0.5, 2.0, 1.0], np.float32)}),
    (helper.make_node("GlobalAveragePool", ["x"], ["y"]), {"x": [2, 3, 3, 4]}, {}),
    (helper.make_node("Slice", ["x", "b", "e", "a", "s"], ["y"]), {"x": [2, 4, 6, 5]},
     {"b": np.array([0, 5, 1], np.int64), "e": np.array([2**62, -2**62, 4], np.int64),
      "a": np.array([2, -1, 1], np.int64), "s": np.array([2, -2, 1], np.int64)}),
    (helper.make_node("Pad", ["x", "p"], ["y"]), {"x": [2, 3, 4]},
     {"p": np.array([0, 2, -1, 0, 1, 2], np.int64)}),
    (helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[3, 3], ceil_mode=1),
     {"x": [2, 2, 8, 7]}, {}),
    (helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 0, 1, 1], dilations=[1, 2]),
     {"x": [1, 2, 5, 6]}, {}),
    (helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3], strides=[2], auto_pad="SAME_UPPER"),
     {"x": [2, 3, 7]}, {}),
    (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
     {"x": [2, 2, 5, 5]}, {}),
    (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
     {"x": [1, 2, 4, 5]}, {}),
    (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), {"x": [1, 2, 4, 5]}, {}),
]


@pytest.mark.parametrize("node, shapes, constants", CASES, ids=[f"{c[0].op_type}{i}" for i, c in enumerate(CASES)])
def test_vjp_matches_finite_differences_of_onnxruntime(node, shapes, constants):
    """<w, f(x)> differentiated by central differences of onnxruntime's f, entry by entry, equals vjp(w)."""
    rng = np.random.default_rng(0)
    f = _ort(node, shapes, constants)
    xs = [rng.uniform(-1, 1, s) for s in shapes.values()]     # ties and kinks have probability 0
    y = f(*xs)
    w = rng.normal(size=y.shape)
    op = DigitalOp(node.name or "n", node.op_type, list(node.input), list(node.output), list(node.attribute))
    values = [xs[list(shapes).index(t)] if t in shapes else constants[t] for t in node.input]
    got = vjp(op, values, y, w)
    eps = 1e-3
    for k, x in enumerate(xs):
        expect = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            up, down = [v.copy() for v in xs], [v.copy() for v in xs]
            up[k][i] += eps
            down[k][i] -= eps
            expect[i] = ((w * f(*up)).sum() - (w * f(*down)).sum()) / (2 * eps)
        grad = got[list(node.input).index(list(shapes)[k])]
        np.testing.assert_allclose(grad, expect, atol=2e-3, rtol=2e-3)


def test_im2col_adjoint_is_the_transpose():
    """<im2col(x), c> = <x, im2col_adjoint(c)> for every x, c: the adjoint, for strides, pads and dilations."""
    rng = np.random.default_rng(1)
    g = ConvGeometry((3, 2), (2, 1), (1, 0, 0, 1), (1, 2), 1, 2, 4)
    x = rng.normal(size=(2, 2, 6, 7))
    cols, _ = im2col(x, g)
    c = rng.normal(size=cols.shape)
    assert np.isclose((cols * c).sum(), (x * im2col_adjoint(c, x.shape, g)).sum(), rtol=1e-12)


def _import(nodes, init, classes=5):
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", F, [None, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", F, [None, classes])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in init.items()])
    graph, _ = import_onnx(ort_session.model(graph, [helper.make_opsetid("", 17)]))
    for op in graph.xbar_ops():           # quantisers far finer than the finite differences
        op.input_quant = ActQuant(2.0 ** -16, True, 32)
    return graph


def _residual():
    """Conv -> Relu -> Conv -> BatchNormalization -> Add (the Relu's output again: a fan-out) -> Relu ->
    GlobalAveragePool -> Flatten -> Gemm -> LogSoftmax: the gradient at the first Relu sums both branches."""
    rng = np.random.default_rng(4)
    init = {"w1": rng.normal(0, 0.5, (3, 1, 3, 3)), "b1": rng.normal(0, 0.1, 3),
            "w2": rng.normal(0, 0.4, (3, 3, 3, 3)), "b2": rng.normal(0, 0.1, 3),
            "s": rng.uniform(0.5, 1.5, 3), "b": rng.normal(0, 0.1, 3), "m": rng.normal(0, 0.1, 3),
            "v": rng.uniform(0.5, 1.5, 3), "w3": rng.normal(0, 0.4, (5, 3)), "b3": rng.normal(0, 0.1, 5)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="C1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="C2", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "s", "b", "m", "v"], ["n2"], name="bn"),
             helper.make_node("Add", ["n2", "r1"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["z"], name="FC", transB=1),
             helper.make_node("LogSoftmax", ["z"], ["y"], name="logsoft")]
    return _import(nodes, init)


def _cnn():
    """Conv -> Sigmoid -> AveragePool -> Conv -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(2)
    init = {"w1": rng.normal(0, 0.5, (3, 1, 3, 3)), "b1": rng.normal(0, 0.1, 3),
            "w2": rng.normal(0, 0.4, (4, 3, 3, 3)), "b2": rng.normal(0, 0.1, 4),
            "w3": rng.normal(0, 0.4, (5, 16)), "b3": rng.normal(0, 0.1, 5)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="C1", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig"),
             helper.make_node("AveragePool", ["s1"], ["p1"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="C2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu"),
             helper.make_node("MaxPool", ["r2"], ["p2"], name="max", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p2"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["z"], name="FC", transB=1),
             helper.make_node("Softmax", ["z"], ["y"], name="soft")]
    return _import(nodes, init)


@pytest.mark.parametrize("build", [_cnn, _residual])
def test_chain_matches_finite_differences_of_the_loss(build):
    """dL/dW of C1, C2 and FC from the chain equal central differences of the softmax cross-entropy of the model run
    forward (float backend) with one weight moved at a time."""
    graph = build()
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (6, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    backend = FloatBackend()
    backend.bind(graph, None, None)
    tuned = graph.xbar_ops()
    ops = backprop.path(graph, tuned)
    assert backprop.logits_tensor(graph) == "z"

    def loss():
        z = run_graph(graph, {"x": x}, backend, keep={"z"})["z"].astype(np.float64)
        z = z - z.max(1, keepdims=True)
        return float((np.log(np.exp(z).sum(1)) - z[np.arange(6), labels]).sum())

    keep = {t for op in ops for t in list(op.inputs) + list(op.outputs) if t and t not in graph.constants}
    env = run_graph(graph, {"x": x}, backend, keep=keep | {"z"})
    z = env["z"].astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(6), labels] -= 1
    grads = backprop.gradients(graph, ops, env, p, tuned, {op.name: op.matrix.astype(np.float64) for op in tuned})
    eps = 1e-3
    for op in tuned:
        for i in [tuple(rng.integers(0, s) for s in op.matrix.shape) for _ in range(6)]:
            keep_value = op.matrix[i]
            op.matrix[i] = keep_value + eps
            up = loss()
            op.matrix[i] = keep_value - eps
            down = loss()
            op.matrix[i] = keep_value
            assert np.isclose(grads[op.name][i], (up - down) / (2 * eps), atol=2e-3, rtol=1e-2), (op.name, i)


def test_an_op_without_a_backward_pass_on_the_path_is_refused_by_name():
    graph = _cnn()
    relu = next(op for op in graph.ops if op.name == "relu")
    relu.op_type = "Elu"
    with pytest.raises(ConfigError, match="'relu' \\(Elu\\)"):
        backprop.path(graph, [graph.xbar_ops()[0]])
    backprop.path(graph, [graph.xbar_ops()[-1]])        # not on the path of the last layer: no refusal
