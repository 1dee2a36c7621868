"""cimc.digital against onnxruntime: one-node ONNX models on seeded random inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.digital import SUPPORTED, run_digital

LATEST = onnx.defs.onnx_opset_version()
I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min


class C:
    """A constant operand: becomes an initializer of the ONNX model."""

    def __init__(self, value, dtype=None):
        self.value = np.asarray(value, dtype=dtype)


def ort_run(op: str, operands: list, attrs: dict | None = None, opset: int = LATEST) -> np.ndarray:
    """Run a one-node model; operands are runtime arrays, C(constants) or None (omitted input)."""
    names, graph_inputs, inits, feeds = [], [], [], {}
    for i, v in enumerate(operands):
        if v is None:
            names.append("")
        elif isinstance(v, C):
            names.append(f"c{i}")
            inits.append(numpy_helper.from_array(v.value, f"c{i}"))
        else:
            names.append(f"x{i}")
            graph_inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, v.shape))
            feeds[f"x{i}"] = v
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    graph = helper.make_graph(
        [node], "g", graph_inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if opset < 13:
        model.ir_version = 7
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def check(op: str, runtime: list[np.ndarray], canonical: dict, operands=None, onnx_attrs=None, opset=LATEST):
    ref = ort_run(op, runtime if operands is None else operands, onnx_attrs, opset)
    got = run_digital(op, runtime, canonical)
    assert got.dtype == np.float32
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def randn(*shape, seed=0, scale=1.0):
    return np.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, dtype=np.float32)


# --------------------------------------------------------------------------- activations


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Identity"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (4, 7), (3,)])
def test_unary(op, shape):
    x = randn(*shape, seed=len(shape), scale=4.0)
    check(op, [x], {})


def test_sigmoid_extremes():
    x = np.array([-100, -30, -10, -1e-3, 0, 1e-3, 10, 30, 100], np.float32)
    check("Sigmoid", [x], {})


@pytest.mark.parametrize("alpha", [0.01, 0.2, 1.5])
def test_leaky_relu(alpha):
    x = randn(2, 4, 6, 6, seed=1, scale=3.0)
    check("LeakyRelu", [x], {"alpha": alpha}, onnx_attrs={"alpha": alpha})


@pytest.mark.parametrize(
    "lo,hi", [(None, None), (-0.5, None), (None, 0.7), (-1.0, 2.0), (0.0, 6.0), (1.0, -1.0)]
)
def test_clip(lo, hi):
    x = randn(2, 3, 4, 5, seed=2, scale=3.0)
    operands = [x, None if lo is None else C(lo, np.float32), None if hi is None else C(hi, np.float32)]
    check("Clip", [x], {"min": lo, "max": hi}, operands=operands)


# --------------------------------------------------------------------------- pooling

POOL_CASES = [
    # shape, kernel, strides, pads, dilations, ceil_mode
    ((2, 3, 8, 8), [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], 0),
    ((2, 3, 9, 7), [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 0),
    ((1, 2, 10, 9), [3, 2], [2, 3], [1, 0, 2, 1], [1, 1], 0),
    ((1, 2, 10, 9), [3, 3], [2, 2], [0, 0, 0, 0], [1, 1], 1),
    ((1, 2, 7, 7), [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 1),
    ((1, 2, 8, 11), [2, 3], [3, 2], [1, 0, 0, 2], [1, 1], 1),
    ((2, 2, 4, 4), [2, 2], [2, 2], [0, 0, 1, 1], [1, 1], 1),  # last window would start in padding
    ((1, 3, 11, 10), [3, 3], [1, 2], [2, 1, 0, 2], [2, 2], 0),
    ((1, 3, 12, 11), [3, 2], [3, 2], [1, 1, 2, 1], [2, 3], 1),
    ((1, 2, 13, 12), [5, 4], [4, 3], [2, 3, 4, 1], [1, 2], 1),
    ((1, 2, 6, 6), [1, 1], [2, 2], [0, 0, 0, 0], [1, 1], 1),
    ((2, 3, 17), [3], [2], [1, 1], [1], 0),  # 1-D (NCW)
    ((2, 3, 16), [4], [3], [2, 0], [2], 1),
    ((1, 2, 6, 7, 5), [2, 3, 2], [2, 2, 1], [1, 0, 1, 0, 1, 1], [1, 1, 2], 1),  # 3-D
]


def _pool_attrs(kernel, strides, pads, dilations, ceil_mode):
    return dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode)


@pytest.mark.parametrize("shape,kernel,strides,pads,dilations,ceil_mode", POOL_CASES)
def test_max_pool(shape, kernel, strides, pads, dilations, ceil_mode):
    x = randn(*shape, seed=3)
    attrs = _pool_attrs(kernel, strides, pads, dilations, ceil_mode)
    check("MaxPool", [x], attrs, onnx_attrs=attrs)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("shape,kernel,strides,pads,dilations,ceil_mode", POOL_CASES)
def test_average_pool(shape, kernel, strides, pads, dilations, ceil_mode, count_include_pad):
    x = randn(*shape, seed=4)
    attrs = _pool_attrs(kernel, strides, pads, dilations, ceil_mode) | {"count_include_pad": count_include_pad}
    check("AveragePool", [x], attrs, onnx_attrs=attrs)


@pytest.mark.parametrize("count_include_pad,expected", [(0, [1.5, 3.0, 4.5]), (1, [1.0, 3.0, 4.5])])
def test_average_pool_ceil_divisor(count_include_pad, expected):
    # Last window [3, 4, <beyond>] runs past the padded input: onnxruntime divides by the
    # positions inside the padded input (incl. declared pads iff count_include_pad), here 2.
    x = np.arange(1, 6, dtype=np.float32).reshape(1, 1, 5)
    attrs = dict(kernel_shape=[3], strides=[2], pads=[1, 0], dilations=[1], ceil_mode=1,
                 count_include_pad=count_include_pad)
    np.testing.assert_allclose(run_digital("AveragePool", [x], attrs).ravel(), expected)
    check("AveragePool", [x], attrs, onnx_attrs=attrs)


@pytest.mark.parametrize("op,count_include_pad", [("MaxPool", None), ("AveragePool", 0), ("AveragePool", 1)])
def test_pool_window_of_only_padding(op, count_include_pad):
    # Dilation lets a window hold only padding: MaxPool gives the lowest float, AveragePool 0.
    x = np.array([[[5.0, -3.0]]], np.float32)
    attrs = dict(kernel_shape=[2], strides=[1], pads=[1, 1], dilations=[3], ceil_mode=0)
    if count_include_pad is not None:
        attrs["count_include_pad"] = count_include_pad
    check(op, [x], attrs, onnx_attrs=attrs)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 4, 5), (2, 2, 3, 4, 5)])
def test_global_pool(op, shape):
    check(op, [randn(*shape, seed=5)], {})


# --------------------------------------------------------------------------- binary


def _pos(x):
    return np.asarray(np.abs(x) + 0.5, dtype=np.float32)  # keep divisors away from zero


BINARY_SHAPES = [((2, 3, 4, 4), (2, 3, 4, 4)), ((2, 3, 4, 4), (3, 1, 1)), ((2, 3, 4, 4), ()), ((1, 4), (3, 1))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("sa,sb", BINARY_SHAPES)
def test_binary_runtime(op, sa, sb):
    a, b = randn(*sa, seed=6), _pos(randn(*sb, seed=7))
    check(op, [a, b], {"constant": None, "constant_index": 1})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("constant_index", [0, 1])
@pytest.mark.parametrize("sx,sc", BINARY_SHAPES)
def test_binary_constant(op, constant_index, sx, sc):
    x, c = _pos(randn(*sx, seed=8)), _pos(randn(*sc, seed=9))
    operands = [C(c), x] if constant_index == 0 else [x, C(c)]
    check(op, [x], {"constant": c, "constant_index": constant_index}, operands=operands)


# --------------------------------------------------------------------------- shape / data movement


@pytest.mark.parametrize("axis", [0, 1, 3, -1, -3])
def test_concat(axis):
    xs = [randn(2, 3, 4, 5, seed=s) for s in range(3)]
    check("Concat", xs, {"axis": axis}, onnx_attrs={"axis": axis})


def test_concat_different_sizes():
    xs = [randn(2, n, 3, seed=n) for n in (1, 4, 2)]
    check("Concat", xs, {"axis": 1}, onnx_attrs={"axis": 1})


@pytest.mark.parametrize("axis", [0, 1, 2, 4, -1, -4])
def test_flatten(axis):
    x = randn(2, 3, 4, 5, seed=10)
    check("Flatten", [x], {"axis": axis}, onnx_attrs={"axis": axis})


@pytest.mark.parametrize(
    "in_shape,shape,allowzero",
    [
        ((2, 3, 4, 5), [0, -1], 0),
        ((2, 3, 4, 5), [-1], 0),
        ((2, 3, 4, 5), [0, 0, 20], 0),
        ((2, 3, 4, 5), [2, -1, 0], 0),  # 0 copies input dim 2 (=4)
        ((2, 3, 4, 5), [6, 20], 1),
        ((2, 3, 4, 5), [0, 3, -1], 0),
        ((0, 3), [3, 0], 1),  # allowzero: 0 is a literal zero
        ((6, 4), [0, 2, 2], 0),
    ],
)
def test_reshape(in_shape, shape, allowzero):
    x = randn(*in_shape, seed=11)
    check("Reshape", [x], {"shape": shape, "allowzero": allowzero},
          operands=[x, C(shape, np.int64)], onnx_attrs={"allowzero": allowzero})


@pytest.mark.parametrize("perm", [None, [0, 2, 3, 1], [3, 1, 0, 2], [0, 1, 2, 3]])
def test_transpose(perm):
    x = randn(2, 3, 4, 5, seed=12)
    check("Transpose", [x], {"perm": perm}, onnx_attrs={} if perm is None else {"perm": perm})


PAD_CASES = [
    ([0, 0, 1, 2, 0, 0, 3, 1], None),
    ([0, 1, 2, 2, 0, 0, 1, 2], None),
    ([0, 0, -1, 0, 0, 0, 0, -2], None),  # pure crop
    ([0, 0, -1, 2, 0, 0, 2, -1], None),  # crop one side, pad the other
    ([1, -2, 0, 2], [2, -1]),  # opset-18 axes input
]


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads,axes", PAD_CASES)
def test_pad(mode, pads, axes):
    x = randn(2, 3, 5, 6, seed=13)
    value = 1.5 if mode == "constant" else 0.0
    operands = [x, C(pads, np.int64), C(value, np.float32)] + ([] if axes is None else [C(axes, np.int64)])
    check("Pad", [x], {"pads": pads, "mode": mode, "value": value, "axes": axes},
          operands=operands, onnx_attrs={"mode": mode})


def test_pad_canonical_without_axes():
    x = randn(1, 2, 4, 4, seed=14)
    pads = [0, 0, 1, 1, 0, 0, 1, 1]
    check("Pad", [x], {"pads": pads, "mode": "constant", "value": 0.0}, operands=[x, C(pads, np.int64)])


SLICE_CASES = [
    # starts, ends, axes, steps on a (4, 6, 7, 5) input
    ([1], [3], [0], [1]),
    ([0, 1], [I64_MAX, -1], [1, 2], [2, 1]),
    ([-3], [I64_MAX], [3], [1]),
    ([-1], [I64_MIN], [2], [-1]),  # full reverse
    ([5], [0], [1], [-2]),
    ([100], [-100], [2], [-3]),  # out-of-range clamping with negative step
    ([-100], [100], [2], [3]),
    ([2, 0], [2, 10], [0, 3], [1, 1]),  # empty result on axis 0
    ([4], [1], [2], [1]),  # start > end with positive step: empty
    ([0, -1, 3], [I64_MAX, -8, -1], [-4, -3, -2], [3, -2, 1]),
    ([I64_MAX], [I64_MIN], [1], [-1]),
    ([1, 0], [-1, 3], [3, 0], [1, 1]),  # axes out of order
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICE_CASES)
def test_slice(starts, ends, axes, steps):
    x = randn(4, 6, 7, 5, seed=15)
    operands = [x, C(starts, np.int64), C(ends, np.int64), C(axes, np.int64), C(steps, np.int64)]
    check("Slice", [x], {"starts": starts, "ends": ends, "axes": axes, "steps": steps}, operands=operands)


@pytest.mark.parametrize("axes", [None, [1], [-1], [1, 3], [3, -4]])
def test_squeeze(axes):
    x = randn(1, 1, 4, 1, seed=16)
    operands = [x] if axes is None else [x, C(axes, np.int64)]
    check("Squeeze", [x], {"axes": axes}, operands=operands)


@pytest.mark.parametrize("axes", [[0], [-1], [1, 4], [0, -1], [5, 0, 2]])
def test_unsqueeze(axes):
    x = randn(2, 3, 4, seed=17)
    check("Unsqueeze", [x], {"axes": axes}, operands=[x, C(axes, np.int64)])


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("axis", [-1, 0, 1, 2, -2])
def test_softmax(axis):
    x = randn(2, 3, 4, 5, seed=18, scale=3.0)
    check("Softmax", [x], {"axis": axis, "legacy": False}, onnx_attrs={"axis": axis})


@pytest.mark.parametrize("opset", [11, 12])
@pytest.mark.parametrize("axis", [1, 0, 2, 3, -1, -3])
def test_softmax_legacy(opset, axis):
    x = randn(2, 3, 4, 5, seed=19, scale=3.0)
    check("Softmax", [x], {"axis": axis, "legacy": True}, onnx_attrs={"axis": axis}, opset=opset)


def test_softmax_large_inputs():
    x = np.array([[1000.0, 999.0, -1000.0], [-50.0, -50.0, -49.0]], np.float32)
    check("Softmax", [x], {"axis": -1, "legacy": False}, onnx_attrs={"axis": -1})


@pytest.mark.parametrize("shape", [(2, 4, 5, 6), (3, 4), (2, 4, 7)])
@pytest.mark.parametrize("epsilon", [1e-5, 1e-3])
def test_batch_norm(shape, epsilon):
    rng = np.random.default_rng(20)
    c = shape[1]
    x = randn(*shape, seed=21, scale=2.0)
    scale, bias, mean = (rng.standard_normal(c).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.1, 2.0, c).astype(np.float32)
    canonical = {"scale": scale, "bias": bias, "mean": mean, "var": var, "epsilon": epsilon}
    operands = [x, C(scale), C(bias), C(mean), C(var)]
    check("BatchNormalization", [x], canonical, operands=operands, onnx_attrs={"epsilon": epsilon})


# --------------------------------------------------------------------------- errors and interface


def test_supported():
    assert SUPPORTED == frozenset({
        "Relu", "Sigmoid", "Identity", "LeakyRelu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
        "GlobalMaxPool", "Add", "Sub", "Mul", "Div", "Concat", "Flatten", "Reshape", "Transpose", "Pad",
        "Slice", "Squeeze", "Unsqueeze", "Softmax", "BatchNormalization",
    })


def test_unknown_op():
    with pytest.raises(ValueError, match="Conv"):
        run_digital("Conv", [randn(1, 1, 3, 3)], {})


X4 = randn(1, 2, 4, 4, seed=22)


@pytest.mark.parametrize(
    "op,inputs,attrs,attr_name",
    [
        ("MaxPool", [X4], {"strides": [1, 1]}, "kernel_shape"),
        ("MaxPool", [X4], {"kernel_shape": [2]}, "kernel_shape"),
        ("AveragePool", [X4], {"kernel_shape": [2, 2], "strides": [0, 1]}, "strides"),
        ("AveragePool", [X4], {"kernel_shape": [7, 2]}, "kernel_shape"),
        ("Concat", [X4, X4], {"axis": 4}, "axis"),
        ("Softmax", [X4], {"axis": -5, "legacy": False}, "axis"),
        ("Reshape", [X4], {"shape": [-1, -1], "allowzero": 0}, "shape"),
        ("Reshape", [X4], {"shape": [3, -1], "allowzero": 0}, "shape"),
        ("Transpose", [X4], {"perm": [0, 1, 1, 2]}, "perm"),
        ("Pad", [X4], {"pads": [1, 1], "mode": "constant", "value": 0.0}, "pads"),
        ("Pad", [X4], {"pads": [0] * 8, "mode": "mirror", "value": 0.0}, "mode"),
        ("Slice", [X4], {"starts": [0], "ends": [1], "axes": [0], "steps": [0]}, "steps"),
        ("Squeeze", [X4], {"axes": [1]}, "axes"),
        ("Unsqueeze", [X4], {"axes": [0, 0]}, "axes"),
        ("Add", [X4], {"constant": np.ones((3,), np.float32), "constant_index": 1}, "shapes"),
        ("Sub", [X4], {"constant": np.ones((1,), np.float32), "constant_index": 2}, "constant_index"),
        ("BatchNormalization", [X4], {"scale": np.ones(3), "bias": np.ones(2), "mean": np.ones(2),
                                      "var": np.ones(2), "epsilon": 1e-5}, "scale"),
    ],
)
def test_bad_attrs(op, inputs, attrs, attr_name):
    with pytest.raises(ValueError, match=f"{op}.*{attr_name}"):
        run_digital(op, inputs, attrs)
