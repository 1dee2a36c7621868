"""The `onnx` package's own LSTM, GRU and RNN node test cases (onnx.backend.test.case.node: the node, its inputs
and the outputs of onnx's numpy reference), with the weights, biases, peepholes, sequence lengths and initial states
made constants: the lowered graph on the float backend reproduces the expected outputs."""
from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.backends import make_backend
from cimc.frontend import import_onnx
from cimc.graph_run import run_graph
from cimc.ir import DigitalOp

EXPORTS = {"LSTM": ["defaults", "initial_bias", "peepholes", "batchwise", "reverse", "bidirectional"],
           "GRU": ["defaults", "initial_bias", "seq_length", "batchwise", "reverse", "bidirectional"],
           "RNN": ["defaults", "initial_bias", "seq_length", "batchwise", "reverse", "bidirectional"]}


def _case(op: str, export: str):
    """(node, inputs, outputs) that onnx's export_<export> passes to `expect`."""
    module = importlib.import_module(f"onnx.backend.test.case.node.{op.lower()}")
    captured = []
    saved = module.expect
    module.expect = lambda node, inputs, outputs, name, **kw: captured.append((node, inputs, outputs))
    try:
        getattr(getattr(module, op), f"export_{export}")()
    finally:
        module.expect = saved
    return captured[0]


def _model(node, inputs) -> onnx.ModelProto:
    """X the graph input, every other input an initializer; every node output a graph output."""
    x = np.asarray(inputs[0], np.float32)
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in zip(node.input[1:], inputs[1:]) if name]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output if o]
    graph = helper.make_graph([node], "case", [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT,
                                                                             list(x.shape))], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("op,export", [(op, e) for op, exports in EXPORTS.items() for e in exports])
def test_onnx_node_case_on_the_float_backend(op, export):
    node, inputs, expected = _case(op, export)
    graph, _ = import_onnx(_model(node, inputs))
    assert not any(isinstance(o, DigitalOp) and o.op_type == op for o in graph.ops)        # lowered
    backend = make_backend("float")
    backend.bind(graph, None, None)
    got = run_graph(graph, {node.input[0]: np.asarray(inputs[0], np.float32)}, backend)
    names = [o for o in node.output if o]
    for name, e in zip(names, expected):
        e = np.asarray(e)
        assert got[name].shape == e.shape
        assert np.abs(got[name] - e).max() <= 1e-5 * max(np.abs(e).max(), 1e-6), name
