"""Multiply-accumulates per inference: how much of a model's work the crossbar does and how much stays digital.

A crossbar layer does rows x cols MACs per position (a grouped conv only its diagonal blocks: rows x cols / groups).
A digital op counts when it multiplies and accumulates: MatMul and Gemm of run-time tensors (attention's Q K^T), a
Conv/ConvTranspose/Einsum/LSTM/GRU/RNN that could not go onto arrays. Element-wise ops, pooling and normalisation
are not MACs. Shapes come from onnx shape inference on the source model (Graph.tensors), with the batch axis at 1;
an op whose shapes inference left unknown counts as None (unknown), never as 0.
"""
from __future__ import annotations

import math

from cimc.batching import fixed_batch
from cimc.ir import DigitalOp, Graph, XbarOp


def crossbar_macs(op: XbarOp) -> int:
    return op.rows * op.cols // op.groups * op.positions


def mac_table(graph: Graph) -> dict:
    """{"crossbar": total, "digital": total or None, "digital_share", "digital_ops": [{"name", "op_type", "macs"}]}"""
    per_sample = fixed_batch([t.shape for t in graph.inputs]) or 1
    crossbar = sum(crossbar_macs(op) for op in graph.xbar_ops())
    rows, unknown = [], False
    for op in graph.ops:
        if not isinstance(op, DigitalOp):
            continue
        macs = digital_macs(op, graph)
        if macs is None:                      # a MAC op whose shapes inference left unknown
            unknown = True
            continue
        if macs:
            rows.append({"name": op.name, "op_type": op.op_type, "macs": macs // per_sample})
    digital = None if unknown else sum(r["macs"] for r in rows)
    total = crossbar + (digital or 0)
    return {"crossbar": crossbar, "digital": digital,
            "digital_share": None if digital is None or not total else digital / total, "digital_ops": rows}


def _shape(graph: Graph, tensor: str):
    if tensor in graph.constants:
        return tuple(graph.constants[tensor].shape)
    info = graph.tensors.get(tensor)
    if info is None or info.shape is None:
        return None
    shape = tuple(info.shape)
    if any(d is None for d in shape[1:]):
        return None
    return ((1 if shape[0] is None else shape[0]),) + shape[1:] if shape else shape


def digital_macs(op: DigitalOp, graph: Graph) -> int | None:
    """MACs of one digital op per run of the graph (0 for ops that do none; None if shapes are unknown)."""
    if op.op_type not in _MAC_OPS:
        return 0
    shapes = [_shape(graph, t) if t else None for t in op.inputs]
    out = _shape(graph, op.outputs[0]) if op.outputs and op.outputs[0] else None
    try:
        return _MAC_OPS[op.op_type](op, shapes, out)
    except (TypeError, IndexError, ValueError):   # a shape inference left unknown
        return None


def _matmul(op, shapes, out):
    return math.prod(out) * shapes[0][-1]


def _gemm(op, shapes, out):
    k = shapes[0][0] if op.attr("transA", 0) else shapes[0][-1]
    return math.prod(out) * k


def _conv(op, shapes, out):
    w = shapes[1]
    return math.prod(out) * math.prod(w[1:])          # each output: Cin/group x kernel products


def _conv_transpose(op, shapes, out):
    x, w = shapes[0], shapes[1]
    return math.prod(x) * math.prod(w[1:])            # each input: (Cout/group) x kernel products


def _einsum(op, shapes, out):
    """The product of the sizes of every index (the loop nest of a contraction)."""
    equation = op.attr("equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    terms = equation.replace(" ", "").split("->")[0].split(",")
    sizes = {}
    for term, shape in zip(terms, shapes):
        if "..." in term:
            return None
        for letter, size in zip(term, shape):
            sizes[letter] = size
    return math.prod(sizes.values()) if len(terms) > 1 else 0


def _recurrent(gates: int):
    def count(op, shapes, out):
        x, w, r = shapes[0], shapes[1], shapes[2]
        directions, hidden = w[0], r[-1]
        layout = op.attr("layout", 0)
        steps, batch = (x[1], x[0]) if layout else (x[0], x[1])
        return directions * steps * batch * gates * hidden * (x[-1] + hidden)
    return count


_MAC_OPS = {"MatMul": _matmul, "Gemm": _gemm, "Conv": _conv, "ConvTranspose": _conv_transpose, "Einsum": _einsum,
            "LSTM": _recurrent(4), "GRU": _recurrent(3), "RNN": _recurrent(1)}
