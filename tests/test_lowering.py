"""Every supported op, lowered and run on the float backend, equals onnxruntime on the source model."""
from __future__ import annotations

import numpy as np
import onnx_models as om
import pytest

import cimc
from cimc import Session

FIXED_BATCH = {"gemm_trans_a", "gemm_trans_ab0"}  # the activation is [K, batch]: calibrate on the same shape


def _calibration(model, name):
    if name in FIXED_BATCH:
        return om.random_feeds(model, batch=4, seed=11)
    parts = [om.random_feeds(model, batch=4, seed=s) for s in range(10, 14)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.parametrize("name", sorted(om.ALL_VALID))
def test_float_backend_matches_onnxruntime(name):
    model = om.ALL_VALID[name]()
    manifest = cimc.compile(model, "ideal", calibration=_calibration(model, name))
    feeds = om.random_feeds(model, batch=4, seed=1)
    expected = om.run_ort(model, feeds)
    got = Session(manifest, backend="float").run(feeds)
    got = [got] if isinstance(got, np.ndarray) else [got[o.name] for o in manifest.graph.outputs]
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        scale = max(float(np.abs(e).max()), 1e-6)
        assert float(np.abs(g - e).max()) / scale < 1e-4
        if e.ndim == 2 and e.shape[1] > 1:
            np.testing.assert_array_equal(g.argmax(1), e.argmax(1))


def test_small_cnn_top1_identical_on_many_inputs():
    model = om.small_cnn()
    manifest = cimc.compile(model, "yao2020-resnet", calibration=om.random_feeds(model, batch=32, seed=3))
    ops = {op.op_type for op in manifest.graph.ops}
    assert {"Concat", "MaxPool"} <= ops
    assert any(op.conv is not None and op.conv.groups > 1 for op in manifest.graph.xbar_ops())
    feeds = om.random_feeds(model, batch=200, seed=4)
    expected = om.run_ort(model, feeds)[0]
    got = Session(manifest, backend="float").run(feeds)
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("builder", [om.conv_bn, om.conv_add_bias, lambda: om.conv_arith("Mul", per_channel=True),
                                     lambda: om.conv_arith("Sub", const_first=True), om.matmul_add_bias])
def test_affine_ops_fold_into_the_crossbar_op(builder):
    manifest = cimc.compile(builder(), "ideal", calibration=om.random_feeds(builder(), batch=8, seed=0))
    assert [op.kind for op in manifest.graph.ops] == ["crossbar"]


def test_shape_side_chain_runs_in_onnxruntime_at_any_batch():
    """PyTorch's Shape -> Gather -> Concat -> Reshape of the batch stays in the graph and runs in onnxruntime, so
    the flatten is right at every batch size (nothing is resolved for one batch at compile time)."""
    model = om.pytorch_flatten()
    manifest = cimc.compile(model, "ideal", calibration=om.random_feeds(model, batch=8, seed=0))
    assert {"Shape", "Reshape"} <= {op.op_type for op in manifest.graph.ops if op.kind == "digital"}
    session = Session(manifest, backend="float")
    for batch in (1, 5, 8):
        feeds = om.random_feeds(model, batch=batch, seed=batch)
        want = om.run_ort(model, feeds)[0]
        np.testing.assert_allclose(session.run(feeds), want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_batch_is_symbolic():
    model = om.small_cnn()
    manifest = cimc.compile(model, "ideal", calibration=om.random_feeds(model, batch=8, seed=0))
    session = Session(manifest, backend="float")
    for batch in (1, 3, 130):  # 130 > the session's chunk size
        feeds = om.random_feeds(model, batch=batch, seed=batch)
        assert session.run(feeds).shape == om.run_ort(model, feeds)[0].shape


def _reordered(model, order):
    out = type(model)()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes[i] for i in order)
    return out


def test_nodes_out_of_topological_order_are_sorted():
    """ONNX requires sorted nodes, but onnxruntime runs files that break the rule; so does cimc."""
    model = om.small_cnn()
    shuffled = _reordered(model, range(len(model.graph.node) - 1, -1, -1))
    feeds = om.random_feeds(model, batch=4, seed=2)
    calib = om.random_feeds(model, batch=8, seed=0)
    got = Session(cimc.compile(shuffled, "ideal", calibration=calib), backend="float").run(feeds)
    np.testing.assert_allclose(got, om.run_ort(shuffled, feeds)[0], rtol=1e-4, atol=1e-5)
    ordered = cimc.compile(model, "ideal", calibration=calib)
    # the same ops (independent branches may come in the file's order)
    assert sorted(op.name for op in cimc.compile(shuffled, "ideal", calibration=calib).graph.ops) == \
        sorted(op.name for op in ordered.graph.ops)


def test_a_cycle_is_a_clear_error():
    from cimc.errors import ModelError
    model = om.small_cnn()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    conv2 = next(n for n in model.graph.node if n.name == "conv2_grouped")
    relu.input[0] = conv2.output[0]                  # relu1 now reads conv2's output, which reads relu1's
    with pytest.raises(ModelError, match="cycle"):
        cimc.count(model, "ideal")
