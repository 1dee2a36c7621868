"""Shapes that onnx shape inference leaves unknown, found by running the model.

PyTorch exports compute some shapes at run time (ShuffleNet's channel split: Shape -> Gather -> Div -> Slice), and
onnx's inference, even with data propagation, gives up on them; a crossbar op needs its input's sizes (a conv its
spatial size). So the model runs in onnxruntime on zeros, twice, with every intermediate tensor as an output: at a
batch of 1 and of 2 (a fixed batch: that batch both times) and with any symbolic size past the batch axis at two
different values. A size that came out the same both times is fixed; one that changed depends on the batch or on
a symbolic size and stays unknown (None). Shapes only: the values are never used.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

_PROBES = ((1, 5), (2, 7))      # (batch, value of other symbolic sizes) per run


def probe_shapes(model: onnx.ModelProto, inputs: dict[str, tuple]) -> dict[str, tuple]:
    """{tensor: shape with None where a size varies} for every node output; {} if onnxruntime cannot run it.
    `inputs`: the float graph inputs' shapes (None for symbolic sizes)."""
    import onnxruntime as ort
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    outputs = [t for node in probe.graph.node for t in node.output if t]
    probe.graph.output.extend(helper.make_value_info(t, onnx.TypeProto()) for t in outputs)
    del probe.graph.value_info[:]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # keep every tensor
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        runs = []
        for batch, other in _PROBES:
            feeds = {name: np.zeros([batch if (axis == 0 and d is None) else other if d is None else d
                                     for axis, d in enumerate(shape)], np.float32)
                     for name, shape in inputs.items()}
            runs.append(dict(zip(outputs, (np.shape(v) for v in session.run(outputs, feeds)))))
    except Exception:          # the shapes stay unknown; the op that needs them says so
        return {}
    shapes = {}
    for t in outputs:
        a, b = runs[0][t], runs[1][t]
        if len(a) == len(b):
            shapes[t] = tuple(x if x == y else None for x, y in zip(a, b))
    return shapes
