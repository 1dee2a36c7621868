"""The `onnx` package's own backend test cases for the ops a crossbar computes (Conv, ConvTranspose, Gemm, MatMul,
LSTM, GRU, RNN), with their weights made constant: cimc's float backend reproduces onnx's expected outputs within
onnx's own runner tolerance (each case's rtol 1e-3, atol 1e-7; onnx.backend.test.runner compares the same way).

Where the cases come from:
- "node" cases: onnx's generator, `onnx.backend.test.case.node.<op>` (importing a module runs its `export*`
  functions, whose `expect(...)` records model, inputs and expected outputs). That is the source of the wheel's
  `onnx/backend/test/data/node/<case>/` files, which this onnx wheel does not ship. Every input but the first is fed
  from the case's data as an initializer: weights W/R/B/P, the Gemm bias C, the LSTM's sequence_lens and initial
  states. The first input (x, X or a: the activation) stays the model's input.
- "pytorch-converted" cases shipped in the wheel's data folder (test_Conv1d*, test_Conv2d*, test_Conv3d*,
  test_ConvTranspose2d*, test_Linear*): weights already initializers; opset 6, converted to 13 with
  onnx.version_converter (cimc reads opset 7 and later); the initializers listed as graph inputs (IR 3 style) are
  removed from the inputs.

In scope: every case of those op types, all float32 (see NODE_MODULES). Out of scope: ConvInteger, MatMulInteger,
QLinearConv, QLinearMatMul (integer-typed ops, another op type), DeformConv and Einsum (not linear ops with one
weight a crossbar holds in this list), and the pytorch-converted cases of other ops.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import onnx.backend.test.case.node as node_cases
import onnxruntime as ort
import pytest
from onnx import numpy_helper, version_converter

import cimc

NODE_MODULES = ["conv", "convtranspose", "gemm", "matmul", "lstm", "gru", "rnn"]
OP_TYPES = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"}
PYTORCH_PREFIXES = ("test_Conv1d", "test_Conv2d", "test_Conv3d", "test_ConvTranspose2d", "test_Linear")
PYTORCH_DATA = Path(onnx.__file__).parent / "backend/test/data/pytorch-converted"
CONVERTED_OPSET = 13


def _node_cases() -> dict:
    """name -> (model, inputs, expected outputs, rtol, atol) from onnx's generator."""
    for module in NODE_MODULES:
        importlib.import_module(f"onnx.backend.test.case.node.{module}")   # its export* functions call expect()
    cases = {}
    for case in node_cases._NodeTestCases:
        if {n.op_type for n in case.model.graph.node} <= OP_TYPES:
            (inputs, outputs), = case.data_sets
            cases[case.name] = (case.model, list(inputs), list(outputs), case.rtol, case.atol)
    return cases


def _read_tensor(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def _pytorch_cases() -> dict:
    cases = {}
    for folder in sorted(PYTORCH_DATA.glob("test_*")):
        if folder.name.startswith(PYTORCH_PREFIXES):
            data = folder / "test_data_set_0"
            cases[folder.name] = (onnx.load(folder / "model.onnx"),
                                  [_read_tensor(p) for p in sorted(data.glob("input_*.pb"))],
                                  [_read_tensor(p) for p in sorted(data.glob("output_*.pb"))], 1e-3, 1e-7)
    return cases


# Cases whose constant operand is not a crossbar weight: cimc's activations carry a sample axis first, and a
# weight must be the same for every sample. In these the "weight" varies along the activation's first axis
# (matmul_3d: a [2,3,4] @ b [2,4,3] multiplies sample i by its own b[i]), or the activation has no sample axis at
# all (a 1-D vector). cimc leaves such a MatMul digital, so these models hold nothing for the arrays.
NOT_A_CROSSBAR_WEIGHT = {"test_matmul_3d": "b varies along a's first (sample) axis",
                         "test_matmul_1d_3d": "a is a 1-D vector: no sample axis",
                         "test_matmul_1d_1d": "a is a 1-D vector: no sample axis"}
CASES = {name: case for name, case in {**_node_cases(), **_pytorch_cases()}.items()
         if name not in NOT_A_CROSSBAR_WEIGHT}


def constant_weights(model: onnx.ModelProto, inputs: list[np.ndarray]) -> tuple[onnx.ModelProto, str, np.ndarray]:
    """The model with every graph input but the first fed as an initializer from `inputs` (the case's data, in the
    order of the graph's inputs that are not initializers); returns (model, activation name, activation)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if model.opset_import[0].version < 7:
        model = version_converter.convert_version(model, CONVERTED_OPSET)
        graph = model.graph
    known = {t.name for t in graph.initializer}
    fed = [i for i in graph.input if i.name not in known]
    assert len(fed) == len(inputs), (len(fed), len(inputs))
    graph.initializer.extend(numpy_helper.from_array(np.asarray(a), i.name) for i, a in zip(fed[1:], inputs[1:]))
    keep = fed[0]
    del graph.input[:]
    graph.input.append(keep)
    model.ir_version = max(model.ir_version, 7)      # initializers that are not inputs need IR >= 4
    onnx.checker.check_model(model, full_check=True)
    return model, keep.name, inputs[0]


def test_the_cases_cover_every_op():
    """Every op type in scope has cases (a renamed onnx module would otherwise silently shrink the list)."""
    ops = {n.op_type for model, *_ in CASES.values() for n in model.graph.node}
    assert OP_TYPES <= ops
    assert len(CASES) >= 70


def _batchwise(model: onnx.ModelProto) -> bool:
    return any(a.name == "layout" and a.i == 1 for n in model.graph.node for a in n.attribute)


# onnxruntime's CPU provider refuses batchwise (layout=1) LSTM/GRU/RNN: "Batchwise recurrent operations (layout == 1)
# are not supported"; those three cases are checked against onnx's expected outputs by the cimc test only
RUNS_IN_ONNXRUNTIME = sorted(name for name, (model, *_) in CASES.items() if not _batchwise(model))


@pytest.mark.parametrize("name", RUNS_IN_ONNXRUNTIME)
def test_the_constant_weight_model_still_gives_the_expected_outputs_in_onnxruntime(name):
    """The harness itself: making the weights initializers (and converting opset 6) keeps the case's meaning."""
    model, inputs, expected, rtol, atol = CASES[name]
    model, input_name, x = constant_weights(model, inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(session.run(None, {input_name: x}), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float_backend_reproduces_onnx_expected_outputs(name):
    model, inputs, expected, rtol, atol = CASES[name]
    model, input_name, x = constant_weights(model, inputs)
    manifest = cimc.compile(model, "ideal", calibration={input_name: x})
    y = cimc.Session(manifest, backend="float").run({input_name: x})
    outputs = [o.name for o in model.graph.output]
    y = y if isinstance(y, dict) else {outputs[0]: y}
    assert len(outputs) == len(expected)
    for out, want in zip(outputs, expected):
        assert y[out].shape == want.shape, (out, y[out].shape, want.shape)
        np.testing.assert_allclose(y[out], want, rtol=rtol, atol=atol, err_msg=f"{name}: output {out}")
