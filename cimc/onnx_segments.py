"""Digital ops run in onnxruntime, never re-implemented.

A crossbar computes only the product with a constant matrix; every other op of the model stays the ONNX node it
was (cimc.ir.DigitalOp) and onnxruntime runs it, with exact ONNX semantics at the model's own opset. The graph walk
(cimc.graph_run) runs the ops in order; a maximal run of consecutive digital ops is a *segment*, run as one small
ONNX model: its inputs are the tensors it reads that earlier ops made, its initializers the constants it reads,
its outputs the tensors that later ops (or the caller) need. Each segment's onnxruntime session is built once per
graph (Graph.sessions), keyed by the segment's shape (its ops with run-time tensors and nodes named by position,
`_shape_names`: segments alike share a session), the outputs asked for, the input types and the calling thread's
intra-op thread count (cimc.ort_session.use_threads). Worker threads may build one at the same time: the cache
keeps the first (equal sessions, so which one does not matter).

The same nodes, with a `cimc.Crossbar` placeholder for each crossbar op, make the manifest's `digital.onnx`
(`graph_model`): a standard ONNX file that Netron opens.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cimc import ort_session
from cimc.errors import ModelError
from cimc.ir import DigitalOp, Graph, XbarOp

CROSSBAR_DOMAIN = "cimc"          # placeholders for crossbar ops in digital.onnx
CROSSBAR_OP = "Crossbar"


def node_proto(op: DigitalOp) -> onnx.NodeProto:
    node = helper.make_node(op.op_type, list(op.inputs), list(op.outputs), name=op.name, domain=op.domain or None)
    node.attribute.extend(op.attributes)
    return node


def placeholder_proto(op: XbarOp) -> onnx.NodeProto:
    return helper.make_node(CROSSBAR_OP, list(op.inputs), list(op.outputs), name=op.name, domain=CROSSBAR_DOMAIN,
                            source_op_type=op.op_type)


def subgraph_reads(attributes) -> set[str]:
    """Tensors that the subgraphs of If/Loop/Scan attributes read from the enclosing scope."""
    reads: set[str] = set()
    for a in attributes:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else \
            list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
        for g in graphs:
            defined = {vi.name for vi in g.input} | {i.name for i in g.initializer}
            for node in g.node:
                for t in list(node.input) + sorted(subgraph_reads(node.attribute)):
                    if t and t not in defined:
                        reads.add(t)
                defined.update(node.output)
    return reads


def reads(op) -> list[str]:
    """Every tensor an op reads: its inputs and, for a digital op with subgraphs, their outer-scope names."""
    names = [t for t in op.inputs if t]
    if isinstance(op, DigitalOp) and op.attributes:
        names += sorted(subgraph_reads(op.attributes) - set(names))
    return names


@dataclass
class Segment:
    ops: list[DigitalOp]
    inputs: list[str]          # run-time tensors it reads (not constants, not made inside it)
    constants: list[str]       # names in Graph.constants it reads
    outputs: list[str]         # tensors it makes that a later op or the graph's outputs need

    @property
    def names(self) -> list[str]:
        return [op.name for op in self.ops]


@dataclass
class Plan:
    items: list                # crossbar ops and Segments, in execution order
    last_read: dict            # tensor -> index of the last item that reads it (when a run may free it)


def plan(graph: Graph) -> Plan:
    """The ops in order, each maximal run of consecutive digital ops gathered into one Segment."""
    items: list = []
    for op in graph.ops:
        if isinstance(op, DigitalOp):
            if items and isinstance(items[-1], list):
                items[-1].append(op)
            else:
                items.append([op])
        else:
            items.append(op)
    read_from = {}                                   # tensor -> index of the last item that reads it
    for index, item in enumerate(items):
        for op in item if isinstance(item, list) else [item]:
            for t in reads(op):
                read_from[t] = index
    graph_outputs = {t.name for t in graph.outputs}
    result = []
    for index, item in enumerate(items):
        if not isinstance(item, list):
            result.append(item)
            continue
        made, inputs, constants = set(), [], []
        for op in item:
            for t in reads(op):
                if t in made or t in inputs or t in constants:
                    continue
                (constants if t in graph.constants else inputs).append(t)
            made.update(t for t in op.outputs if t)
        outputs = [t for op in item for t in op.outputs
                   if t and (read_from.get(t, -1) > index or t in graph_outputs)]
        result.append(Segment(item, inputs, constants, outputs))
    return Plan(result, read_from)


def run_segment(graph: Graph, segment: Segment, env: dict, extra_outputs=()) -> dict[str, np.ndarray]:
    """Run `segment` on the tensors in `env`; returns its outputs (and those of `extra_outputs` it makes)."""
    made = {t for op in segment.ops for t in op.outputs if t}
    outputs = list(dict.fromkeys(segment.outputs + [t for t in extra_outputs if t in made]))
    if not outputs:
        return {}
    feeds = {t: np.asarray(env[t]) for t in segment.inputs}
    session, names = _session(graph, segment, feeds, outputs)
    try:
        values = session.run([names.get(t, t) for t in outputs], {names.get(t, t): v for t, v in feeds.items()})
    except Exception as exc:   # onnxruntime's own error types; its message names the node
        shapes = ", ".join(f"{t} {list(v.shape)}" for t, v in feeds.items())
        raise ModelError(f"digital op(s) {_shown(segment)} failed in onnxruntime on inputs {shapes}: "
                         f"{_own_names(_first_line(exc), segment, names)}") from None
    return dict(zip(outputs, values))


def segment_model(graph: Graph, segment: Segment, feeds: dict, outputs: list[str]) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(v.dtype), None)
              for t, v in feeds.items()]
    body = helper.make_graph([node_proto(op) for op in segment.ops], "digital_segment", inputs,
                             [helper.make_value_info(t, onnx.TypeProto()) for t in outputs],
                             [numpy_helper.from_array(np.asarray(graph.constants[t]), t) for t in segment.constants])
    return _model(body, graph.opsets)


def graph_model(graph: Graph) -> onnx.ModelProto:
    """The whole graph as one ONNX model: digital ops as they are, crossbar ops as cimc.Crossbar placeholders
    (the manifest's digital.onnx)."""
    nodes = [node_proto(op) if isinstance(op, DigitalOp) else placeholder_proto(op) for op in graph.ops]
    used = {t for op in graph.ops for t in reads(op)}

    def info(t):
        dtype = onnx.TensorProto.FLOAT if t.dtype == "float32" else \
            helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
        return helper.make_tensor_value_info(t.name, dtype, [None if d is None else int(d) for d in t.shape])
    body = helper.make_graph(nodes, "cimc_digital", [info(t) for t in graph.inputs], [info(t) for t in graph.outputs],
                             [numpy_helper.from_array(np.asarray(v), k) for k, v in graph.constants.items()
                              if k in used])
    return _model(body, {**graph.opsets, CROSSBAR_DOMAIN: 1})


def _model(body, opsets: dict[str, int]) -> onnx.ModelProto:
    return ort_session.model(body, [helper.make_opsetid(d, v) for d, v in sorted(opsets.items())])


def _session(graph: Graph, segment: Segment, feeds: dict, outputs: list[str]):
    """(session, names): the segment's session, and the names it gives the segment's tensors and ops (see
    `_shape_names`; {} where it keeps the segment's own)."""
    names = _shape_names(segment)
    if names:
        ops = tuple((op.op_type, op.domain, tuple(names.get(t, t) for t in op.inputs),
                     tuple(names[t] if t else t for t in op.outputs),
                     tuple(a.SerializeToString() for a in op.attributes)) for op in segment.ops)
    else:
        ops = tuple((op.name, op.op_type, tuple(op.inputs), tuple(op.outputs)) for op in segment.ops)
    key = (ops, tuple(names.get(t, t) for t in outputs),
           tuple((names.get(t, t), v.dtype.str) for t, v in feeds.items()), ort_session.thread_count())
    cache = graph.sessions.sessions
    session = cache.get(key)
    if session is None:
        model = segment_model(graph, segment, feeds, outputs)
        if names:
            _rename(model.graph, names)
        try:
            session = ort_session.session(model)
        except Exception as exc:
            raise ModelError(f"digital op(s) {_shown(segment)}: onnxruntime cannot run them: "
                             f"{_own_names(_first_line(exc), segment, names)}") from None
        session = cache.setdefault(key, session)
    return session, names


def _shape_names(segment: Segment) -> dict[str, str]:
    """Names by position for the segment's run-time tensors (x0, x1, ... in order of first use) and its nodes (n0,
    ...), so that segments of the same shape (ResNet-56's 55 are Relu or Add + Relu) share one onnxruntime session:
    onnxruntime computes the same whatever the names. Constants keep their names (their values are part of the
    segment). {} (the segment's own names) where an op has a subgraph (If, Loop, Scan), which may read outer
    tensors by name."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for op in segment.ops
           for a in op.attributes):
        return {}
    constants = set(segment.constants)
    if any(_POSITIONAL.fullmatch(t) for t in constants):
        return {}                       # a constant named like a positional name: keep every name
    names: dict[str, str] = {}
    for op in segment.ops:
        for t in list(op.inputs) + list(op.outputs):
            if t and t not in constants and t not in names:
                names[t] = f"x{len(names)}"
    for i, op in enumerate(segment.ops):
        names[_NODE + op.name] = f"n{i}"
    return names


_NODE = "\0node:"      # node names in `_shape_names` (apart from tensor names)
_POSITIONAL = re.compile(r"[xn]\d+")


def _rename(body: onnx.GraphProto, names: dict[str, str]) -> None:
    for node in body.node:
        node.name = names[_NODE + node.name]
        node.input[:] = [names.get(t, t) for t in node.input]
        node.output[:] = [names.get(t, t) for t in node.output]
    for vi in list(body.input) + list(body.output):
        vi.name = names.get(vi.name, vi.name)


def _own_names(text: str, segment: Segment, names: dict[str, str]) -> str:
    """onnxruntime's message with the segment's own node and tensor names for the positional ones
    (`_shape_names`)."""
    if not names:
        return text
    own = {short: (name[len(_NODE):] if name.startswith(_NODE) else name) for name, short in names.items()}
    return re.sub(r"(?<![\w.])[xn]\d+(?![\w.])", lambda m: own.get(m.group(0), m.group(0)), text)


def _shown(segment: Segment) -> str:
    names = [f"{op.name!r} ({op.op_type})" for op in segment.ops]
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
