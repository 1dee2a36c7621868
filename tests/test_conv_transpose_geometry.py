"""cimc.conv_transpose_geometry.resolve against onnxruntime on 1-D ConvTransposes drawn from a grid of sizes,
kernels, strides, dilations, output_padding, pads, auto_pad and output_shape: the same models refused, and
where onnxruntime runs, the same output (values, so the crop's split between head and tail is checked too),
computed here by a direct overlap-add loop over the resolved crop."""
from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from cimc.conv_transpose_geometry import resolve


def _ort(x, w, attrs):
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options).run(None, {"x": x})[0][0, 0]


def _direct(x, w, s, d, begin, out):
    """Every input position p adds x[p] * w[j] at p*s + j*d of the full result; output = [begin, begin + out)."""
    full = np.zeros(max((len(x) - 1) * s + (len(w) - 1) * d + 1, begin + out))
    for p, j in itertools.product(range(len(x)), range(len(w))):
        full[p * s + j * d] += float(x[p]) * float(w[j])
    return full[begin:begin + out]


def _grid():
    rng = np.random.default_rng(0)
    modes = [("NOTSET", None, (0, 0)), ("NOTSET", None, (1, 2)), ("NOTSET", None, (3, 0)), ("SAME_UPPER", None, None),
             ("SAME_LOWER", None, None), ("VALID", None, None)]
    cases = []
    for size, k, s, d, adj in itertools.product((1, 4, 5), (1, 2, 3), (1, 2, 3), (1, 2), (0, 1, 2)):
        full = (size - 1) * s + (k - 1) * d + 1
        options = modes + [(mode, out, None) for mode in ("NOTSET", "SAME_UPPER", "SAME_LOWER")
                           for out in (full - 3, full - 2, full + adj, full + adj + 1, full + s)]
        cases.append((size, k, s, d, adj) + options[rng.integers(len(options))])
    return cases


def test_resolve_matches_onnxruntime():
    """One test over the grid (a parametrised test per case costs more than the case itself)."""
    cases = _grid()
    assert len(cases) == 162
    for case in cases:
        _check(*case)


def _check(size, k, s, d, adj, mode, out_shape, pads):
    x = np.arange(1, size + 1, dtype=np.float32).reshape(1, 1, size) ** 2      # distinct values: shifts show
    w = np.arange(1, k + 1, dtype=np.float32).reshape(1, 1, k) * 10
    attrs = {"strides": [s], "dilations": [d], "output_padding": [adj], "auto_pad": mode}
    if out_shape is not None:
        attrs["output_shape"] = [out_shape]
    if pads is not None:
        attrs["pads"] = list(pads)
    try:
        want = _ort(x, w, attrs)
    except Exception:         # onnxruntime refuses (InvalidArgument, Fail): so must resolve
        want = None
    try:
        begins, ends, appended = resolve([size], [k], [s], [d], [adj], list(pads or (0, 0)), mode,
                                           None if out_shape is None else [out_shape])
    except ValueError:
        assert want is None, (size, k, s, d, adj, mode, out_shape, pads)
        return
    assert want is not None, (size, k, s, d, adj, mode, out_shape, pads)
    full = (size - 1) * s + (k - 1) * d + 1
    out = full - begins[0] - ends[0] + appended[0]
    assert min(ends[0], appended[0]) == 0
    np.testing.assert_array_equal(want, _direct(x[0, 0], w[0, 0], s, d, begins[0], out))
