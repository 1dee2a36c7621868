"""The onnx package's own Conv and ConvTranspose conformance cases (onnx/backend/test/case/node/conv.py and
convtranspose.py: hand-written inputs and expected outputs, 1-D, 2-D, 3-D, output_shape, output_padding, pads,
auto_pad, dilations, group): the float backend reproduces the expected outputs. The installed wheel has no
node data files, so the cases are collected by running the generators with `expect` captured."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.backends.reference import FloatBackend
from cimc.frontend import import_onnx
from cimc.graph_run import run_graph


def _cases():
    import onnx.backend.test.case.node.conv as conv
    import onnx.backend.test.case.node.convtranspose as convtranspose
    cases = []
    for module, cls in ((conv, conv.Conv), (convtranspose, convtranspose.ConvTranspose)):
        original = module.expect
        module.expect = lambda node, inputs, outputs, name, **kw: cases.append((name, node, inputs, outputs[0]))
        try:
            for attr in sorted(dir(cls)):
                if attr.startswith("export"):
                    getattr(cls, attr)()
        finally:
            module.expect = original
    return cases


CASES = _cases()


def test_the_cases_are_there():
    names = {name for name, *_ in CASES}
    assert {"test_convtranspose_3d", "test_convtranspose_output_shape", "test_convtranspose_autopad_same",
            "test_convtranspose_group_2_image_3", "test_convtranspose_1d", "test_conv_with_autopad_same"} <= names


@pytest.mark.parametrize("name,node,inputs,expected", CASES, ids=[c[0] for c in CASES])
def test_float_backend_reproduces_the_onnx_case(name, node, inputs, expected):
    x, *params = inputs
    inits = [numpy_helper.from_array(p, t) for p, t in zip(params, node.input[1:])]   # weight (and bias) constant
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT,
                                                                           x.shape)],
                              [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)], inits)
    ir, _ = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    backend = FloatBackend()
    backend.bind(ir, None, None)
    got = run_graph(ir, {node.input[0]: x}, backend)[node.output[0]]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(1.0, float(np.ptp(expected))))
