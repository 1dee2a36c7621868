"""Digital segments of the same shape share one onnxruntime session (cimc.onnx_segments: positional names), compute
what onnxruntime computes on the whole model, and an error still names the segment's own node."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc import frontend
from cimc.backends.reference import FloatBackend
from cimc.errors import ModelError
from cimc.graph_run import run_graph
from cimc.ir import DigitalOp, Graph, TensorInfo
from cimc.onnx_segments import Segment, plan, run_segment


def _relu_chain(layers: int = 3) -> onnx.ModelProto:
    """x -> (Gemm with a constant weight -> Relu) x layers: a Relu segment after every crossbar op."""
    rng = np.random.default_rng(0)
    nodes, inits, t = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Gemm", [t, f"w{i}"], [f"g{i}"], name=f"gemm{i}"),
                  helper.make_node("Relu", [f"g{i}"], [f"r{i}"], name=f"relu{i}")]
        t = f"r{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_relu_segments_share_a_session_and_match_onnxruntime():
    model = _relu_chain()
    graph, _info = frontend.import_onnx(model)
    segments = [item for item in plan(graph).items if isinstance(item, Segment)]
    assert len(segments) == 3
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    backend = FloatBackend()
    backend.bind(graph, None, None)
    got = run_graph(graph, {"x": x}, backend)["r2"]
    assert len(graph.sessions.sessions) == 1           # three Relu segments, one session
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_an_error_names_the_segments_own_node():
    """A Reshape to a constant [2, 8] fed 3 x 8 values: onnxruntime's message, which names the session's node, comes
    back with the graph's node name."""
    op = DigitalOp("my_reshape", "Reshape", ["act", "target_shape"], ["out"])
    graph = Graph([TensorInfo("act", (None, 8))], [TensorInfo("out", (2, 8))], [op],
                  constants={"target_shape": np.array([2, 8], np.int64)}, opsets={"": 17})
    segment = plan(graph).items[0]
    assert run_segment(graph, segment, {"act": np.ones((2, 8), np.float32)})["out"].shape == (2, 8)
    with pytest.raises(ModelError) as err:
        run_segment(graph, segment, {"act": np.ones((3, 8), np.float32)})
    message = str(err.value)
    assert "'my_reshape' (Reshape) failed in onnxruntime" in message
    assert "my_reshape" in message.split("failed in onnxruntime", 1)[1]     # onnxruntime's own part, renamed
    assert "'n0'" not in message
