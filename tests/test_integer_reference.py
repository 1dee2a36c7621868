"""The integer backend against a slow, independent per-element reference: weights quantised element by element
from the ONNX initializers, a direct convolution loop, the documented dequantisation. Equal bit for bit."""
from __future__ import annotations

import numpy as np
import onnx_models as om
import pytest
from onnx import numpy_helper

import cimc
from cimc import Session

L = 7  # 8-level devices


def _levels_per_channel(w_rows):
    """w_rows[n] = all weights of output n; scale = max|w| / 7, level = round-half-even(w / scale) in -7..7."""
    scales, levels = [], []
    for row in w_rows:
        m = max(abs(float(v)) for v in row.ravel())
        s = np.float32(m / L) if m > 0 else np.float32(1.0)
        scales.append(s)
        levels.append(np.array([max(-L, min(L, round(float(v) / float(s)))) for v in row.ravel()]).reshape(row.shape))
    return np.array(scales, np.float32), levels


def _quantise_input(x, q):
    return np.clip(np.rint(x / np.float32(q.scale)), q.qmin, q.qmax)


def _slow_conv(model, manifest, x):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "Conv")
    w, b = inits[node.input[1]], inits.get(node.input[2]) if len(node.input) > 2 else None
    op = manifest.graph.xbar_ops()[0]
    g = op.conv
    scales, levels = _levels_per_channel(list(w))
    q = _quantise_input(x, op.input_quant)
    bsz, cin, h, wd = q.shape
    oh, ow = g.output_hw(h, wd)
    cout, cg, kh, kw = w.shape
    ng = cout // g.groups
    out = np.zeros((bsz, cout, oh, ow), np.float32)
    for n in range(bsz):
        for co in range(cout):
            group = co // ng
            for y in range(oh):
                for xx in range(ow):
                    acc = 0
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                r = y * g.strides[0] - g.pads[0] + i * g.dilations[0]
                                c = xx * g.strides[1] - g.pads[1] + j * g.dilations[1]
                                if 0 <= r < h and 0 <= c < wd:
                                    acc += int(q[n, group * cg + ci, r, c]) * int(levels[co][ci, i, j])
                    scale = np.float32(np.float32(op.input_quant.scale) * scales[co])
                    out[n, co, y, xx] = np.float32(np.float32(acc) * scale) + (np.float32(b[co]) if b is not None else 0)
    return out


@pytest.mark.parametrize("kwargs", [dict(), dict(strides=[2, 2], pads=[1, 0, 0, 1]), dict(dilations=[2, 2]),
                                    dict(group=2), dict(cin=4, cout=4, group=4, pads=[1, 1, 1, 1]),
                                    dict(bias=False, k=1)])
def test_conv_integer_equals_slow_reference(kwargs):
    model = om.conv(cin=kwargs.pop("cin", 4), cout=kwargs.pop("cout", 6), hw=6, **kwargs)
    manifest = cimc.compile(model, "yao2020-resnet", calibration=om.random_feeds(model, batch=8, seed=0))
    x = om.random_feeds(model, batch=2, seed=5)["input"]
    got = Session(manifest, backend="integer").run(x)
    np.testing.assert_array_equal(got, _slow_conv(model, manifest, x))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_integer_equals_slow_reference(trans_b):
    model = om.gemm(trans_b=trans_b, k=20, m=9)
    manifest = cimc.compile(model, "yao2020-resnet", calibration=om.random_feeds(model, batch=16, seed=0))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = model.graph.node[0]
    w = inits[node.input[1]]
    w = w if trans_b else w.T                       # rows = outputs
    bias = inits[node.input[2]].reshape(-1)
    op = manifest.graph.xbar_ops()[0]
    scales, levels = _levels_per_channel(list(w))
    x = om.random_feeds(model, batch=3, seed=7)["input"]
    q = _quantise_input(x, op.input_quant)
    expected = np.zeros((3, w.shape[0]), np.float32)
    for n in range(3):
        for o in range(w.shape[0]):
            acc = sum(int(q[n, k]) * int(levels[o][k]) for k in range(w.shape[1]))
            scale = np.float32(np.float32(op.input_quant.scale) * scales[o])
            expected[n, o] = np.float32(np.float32(acc) * scale) + np.float32(bias[o])
    np.testing.assert_array_equal(Session(manifest, backend="integer").run(x), expected)


def test_layer_granularity_uses_one_scale():
    model = om.conv()
    manifest = cimc.compile(model, "ideal", calibration=om.random_feeds(model, batch=8, seed=0),
                            overrides=["quant.weights=layer"])
    op = manifest.graph.xbar_ops()[0]
    assert len(set(op.weight_scales.tolist())) == 1
    assert np.abs(op.levels).max() == L


@pytest.mark.parametrize("name", ["conv", "conv_stride2_pad1", "conv_asym_pads", "conv_dilation2", "conv_group2",
                                  "conv_depthwise", "conv_depthwise_x2", "conv_same_lower", "small_cnn",
                                  "legacy_opset8"])
def test_onnxruntime_conv_path_equals_the_im2col_path(name):
    """The integer backend runs exact convolutions in onnxruntime; they must equal im2col + matmul bit for bit."""
    from cimc.backends.reference import IntegerBackend
    model = om.ALL_VALID[name]()
    manifest = cimc.compile(model, "yao2020-resnet", calibration=om.random_feeds(model, batch=8, seed=0))
    x = om.random_feeds(model, batch=3, seed=1)
    fast = Session(manifest, backend="integer")
    assert fast.backend.sessions                                     # the onnxruntime path is taken
    slow_backend = IntegerBackend()
    slow = Session(manifest, backend=slow_backend)
    slow_backend.sessions = {}                                       # force im2col + matmul
    np.testing.assert_array_equal(fast.run(x), slow.run(x))
