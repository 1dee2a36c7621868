"""Canonicalise: fold per-output-channel affine ops into the crossbar op that feeds them.

BatchNormalization, and Add/Sub/Mul/Div by a constant that is per output channel (or scalar), fold into the
matrix columns and the bias when the crossbar op's output feeds nothing else. Folding is done in float64.
Affine ops *before* a crossbar op (an input normalisation) stay digital: zero padding makes that fold inexact.
"""
from __future__ import annotations

import numpy as np

from cimc.ir import DigitalOp, Graph, XbarOp, per_column

NAME = "canonicalize"
_FOLDABLE = ("BatchNormalization", "Add", "Sub", "Mul", "Div")


def run(graph: Graph, target=None, ctx=None) -> Graph:
    changed = True
    while changed:
        changed = False
        for op in list(graph.ops):
            if isinstance(op, DigitalOp) and op.op_type in _FOLDABLE and _try_fold(graph, op):
                changed = True
    return graph


def _try_fold(graph: Graph, op: DigitalOp) -> bool:
    runtime = [t for t in op.inputs if t and t not in graph.constants]
    if len(runtime) != 1 or op.domain or len([t for t in op.outputs if t]) != 1:
        return False
    xbar = graph.producer(runtime[0])
    if not isinstance(xbar, XbarOp) or graph.is_graph_output(runtime[0]) or len(graph.consumers(runtime[0])) != 1:
        return False
    if xbar.weights_of is not None or graph.readers(xbar.name):   # shared arrays: a fold would change every read
        return False
    scale_shift = _affine(op, xbar, graph)
    if scale_shift is None:
        return False
    scale, shift = scale_shift                      # y = x * scale + shift, per output channel
    # a ConvTranspose's columns are (channel, kernel offset): a channel's scale applies to all of its columns
    matrix = xbar.matrix.astype(np.float64) * per_column(np.repeat(scale, xbar.cols // xbar.output_channels),
                                                          xbar.matrix)
    bias = np.zeros(xbar.output_channels) if xbar.bias is None else xbar.bias.astype(np.float64)
    xbar.matrix = matrix.astype(np.float32)
    xbar.bias = (bias * scale + shift).astype(np.float32)
    xbar.outputs = [op.outputs[0]]
    xbar.source_nodes = xbar.source_nodes + op.source_nodes
    graph.ops.remove(op)
    return True


def _affine(op: DigitalOp, xbar: XbarOp, graph: Graph):
    """(scale, shift) vectors, one entry per output channel, if `op` is a per-output-channel affine map of the
    crossbar output."""
    n = xbar.output_channels
    if op.op_type == "BatchNormalization":
        params = [graph.constants.get(t) for t in op.inputs[1:5]]
        if xbar.conv is None or len(params) != 4 or op.attr("training_mode", 0) or op.attr("spatial", 1) != 1 \
                or any(p is None or p.shape != (n,) for p in params):
            return None
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        s = scale / np.sqrt(var + float(np.float32(op.attr("epsilon", 1e-5))))
        return s, shift - mean * s
    if len(op.inputs) != 2:
        return None
    first = op.inputs[0] in graph.constants
    c = graph.constants[op.inputs[0 if first else 1]]
    if not np.issubdtype(c.dtype, np.floating):
        return None
    v = _per_channel(np.asarray(c, dtype=np.float64), xbar, graph)
    if v is None:
        return None
    ones, zeros = np.ones(n), np.zeros(n)
    if op.op_type == "Add":
        return ones, v
    if op.op_type == "Sub":
        return (-ones, v) if first else (ones, -v)
    if op.op_type == "Mul":
        return v, zeros
    if op.op_type == "Div" and not first and np.all(v != 0):
        return 1.0 / v, zeros
    return None


def _per_channel(c: np.ndarray, xbar: XbarOp, graph: Graph):
    """The constant as a length-N vector if it broadcasts along the output-channel axis only, else None."""
    out = graph.tensors.get(xbar.outputs[0])
    if out is None or c.ndim > len(out.shape):
        return None
    rank = len(out.shape)
    shape = (1,) * (rank - c.ndim) + c.shape
    channel_axis = 1 if xbar.conv is not None else rank - 1
    if any(d != 1 for i, d in enumerate(shape) if i != channel_axis):
        return None
    if shape[channel_axis] not in (1, xbar.output_channels):
        return None
    return np.broadcast_to(c.reshape(-1), (xbar.output_channels,)).astype(np.float64)
