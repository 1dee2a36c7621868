"""Activation statistics: onnxruntime (taps reduced in the graph, or exposed whole for the percentile rule) against
the cimc float engine on the same IR, which reads every activation in numpy."""
import numpy as np
import pytest

import onnx_models
from cimc import calibrate, frontend
from cimc.passes import canonicalize
from cimc.compiler import make_config
from cimc.targets.registry import load_target


@pytest.mark.parametrize("opset", [8, 13, 18])
@pytest.mark.parametrize("percentile", [None, 99.0])
def test_onnxruntime_stats_equal_the_float_engine(opset, percentile):
    model = onnx_models.small_cnn(opset=opset) if opset != 8 else onnx_models.legacy_opset8()
    graph, info = frontend.import_onnx(model)
    graph = canonicalize.run(graph, load_target("ideal"), make_config())
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(opset).standard_normal((70, *shape)).astype(np.float32)
    fast = calibrate.activation_stats(graph, x, percentile, batch_size=32, model=info.model)
    assert calibrate._onnxruntime_with_taps(info.model, graph, percentile is None) is not None   # not the fallback
    slow = calibrate.activation_stats(graph, x, percentile, batch_size=32, model=None)
    assert fast.keys() == slow.keys() == {op.name for op in graph.xbar_ops()}
    for name in fast:
        for key in ("min", "absmax") + (("percentile",) if percentile else ()):
            assert fast[name][key] == pytest.approx(slow[name][key], rel=1e-5, abs=1e-6), (name, key)
