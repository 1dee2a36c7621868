"""Run the model once in onnxruntime at import: it must run, and it tells the shapes onnx's inference leaves unknown.

cimc runs every digital op in onnxruntime, so a model onnxruntime cannot run (a Clip bound that is not a scalar, a
constant that broadcasts only for one batch size, an op no registered domain provides) would otherwise fail at
calibration or at run time. So the importer runs it on zeros, twice, with every intermediate tensor as an output:
at a batch of 1 and of 2 (a fixed batch: that batch both times), with any symbolic size past the batch axis at two
different values. A failure is a ModelError naming the file and onnxruntime's reason (its message names the node),
unless a symbolic size past the batch axis had to be guessed (the model may need a particular one).

The shapes: PyTorch exports compute some at run time (ShuffleNet's channel split: Shape -> Gather -> Div -> Slice),
and onnx's inference, even with data propagation, gives up on them; a crossbar op needs its input's sizes (a conv
its spatial size). A size that came out the same in both runs is fixed; one that changed depends on the batch or on
a symbolic size and stays unknown (None). The values themselves are never used.
"""
from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper

from cimc import ort_session
from cimc.errors import ModelError

_PROBES = ((1, 5), (2, 7))      # (batch, value of other symbolic sizes) per run


def run_model(model: onnx.ModelProto, inputs: dict[str, tuple], where: str) -> dict[str, tuple]:
    """{tensor: shape with None where a size varies} for every node output. `inputs`: the float graph inputs'
    shapes (None for symbolic sizes)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    outputs = [t for node in probe.graph.node for t in node.output if t]
    probe.graph.output.extend(helper.make_value_info(t, onnx.TypeProto()) for t in outputs)
    del probe.graph.value_info[:]
    guessed = any(d is None for shape in inputs.values() for d in shape[1:])
    runs = []
    try:
        try:
            session = ort_session.session(probe, optimize=False)     # every tensor kept
        except Exception as exc:   # at load: which node? onnxruntime's kernel errors do not say
            node = _failing_node(model)
            raise type(exc)(f"node {node.name or '<unnamed>'!r} ({node.op_type}): {exc}" if node else exc) from None
        for batch, other in _PROBES:
            feeds = {name: np.zeros([batch if (axis == 0 and d is None) else other if d is None else d
                                     for axis, d in enumerate(shape)], np.float32)
                     for name, shape in inputs.items()}
            runs.append(dict(zip(outputs, (np.shape(v) for v in session.run(outputs, feeds)))))
    except Exception as exc:          # onnxruntime's own error types
        if guessed:        # the sizes we made up may be what it refuses: the shapes stay unknown
            return {}
        raise ModelError(f"{where}: onnxruntime cannot run this model (on zeros, batch "
                         f"{', '.join(str(b) for b, _ in _PROBES)}): {_reason(exc, model)}") from None
    shapes = {}
    for t in outputs:
        a, b = runs[0][t], runs[1][t]
        if len(a) == len(b):
            shapes[t] = tuple(x if x == y else None for x, y in zip(a, b))
    return shapes


def _failing_node(model: onnx.ModelProto, limit: int = 2000):
    """The first node onnxruntime refuses to load on its own (its inputs typed as in the model), or None."""
    typed = {vi.name: vi for vi in list(model.graph.input) + list(model.graph.value_info)}
    inits = {i.name: i for i in model.graph.initializer}
    for node in list(model.graph.node)[:limit]:
        names = [t for t in node.input if t]
        if any(t not in typed and t not in inits for t in names):
            continue
        graph = helper.make_graph([node], "one", [typed[t] for t in names if t not in inits],
                                  [helper.make_value_info(t, onnx.TypeProto()) for t in node.output if t],
                                  [inits[t] for t in names if t in inits])
        one = helper.make_model(graph, opset_imports=model.opset_import)
        one.ir_version = model.ir_version
        try:
            ort_session.session(one, optimize=False)
        except Exception:
            return node
    return None


def _reason(exc: Exception, model: onnx.ModelProto) -> str:
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    unknown = re.search(r"([\w.]*):(\w+)\(-?\d+\) is not a registered function/op", text)
    if unknown:     # name the node: onnxruntime names only the op
        domain, op_type = unknown.groups()
        nodes = [n.name or "<unnamed>" for n in model.graph.node if n.op_type == op_type and n.domain == domain]
        return (f"node(s) {nodes} ({op_type}, domain {domain or 'ai.onnx'!r}): no onnxruntime kernel runs this op "
                "(a custom domain needs its kernels registered)")
    return text[:600]
