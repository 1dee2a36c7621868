"""ONNX -> IR. Real-world files: opset 8 up to the newest the onnx package knows, IR-3 files whose weights are also
graph inputs, Constant nodes and constant subgraphs (folded with onnx's reference evaluator), a symbolic batch.

Every Conv, Gemm and MatMul with a constant weight is lowered to an `XbarOp` (see cimc.ir for the matrix layout);
LSTM, GRU and RNN with constant weights to crossbar reads plus digital gates (cimc.recurrent_lowering).
Every other node that the outputs depend on stays the ONNX node it is (`DigitalOp`: op type, domain, attributes and
inputs verbatim; its constant inputs in `Graph.constants`) and runs in onnxruntime (cimc.onnx_segments), so any op
onnxruntime runs works in a digital position, at the model's own opset. Nodes whose inputs are all constant are
folded, and so is Shape of a tensor whose shape is fully known.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from cimc import (conv_transpose_geometry, einsum_plan, onnx_checks, onnx_external, ort_session,
                  recurrent_lowering)
from cimc.errors import ModelError
from cimc.ir import ConvGeometry, DigitalOp, Graph, TensorInfo, XbarOp
from cimc.node_names import layer_names
from cimc.onnx_segments import subgraph_reads
from cimc import shape_probe

MIN_OPSET = 8
_MAX_SAMPLE_VALUES = 1 << 28   # an activation larger than this per sample (1 GiB of float32) is a broken attribute
# op types that may become crossbar ops (op_<type>); every other op stays digital
_LOWERED = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum")


@dataclass
class ModelInfo:
    path: str | None
    sha256: str
    opset: int
    ir_version: int
    producer: str
    model: onnx.ModelProto


def load_model(path_or_model) -> ModelInfo:
    """Read and check an ONNX file (or take a ModelProto); errors name the file. External data is read from the
    model file's own folder only (cimc.onnx_external)."""
    if isinstance(path_or_model, onnx.ModelProto):
        model, path = path_or_model, None
        data = model.SerializeToString()
        if any(uses_external_data(t) for t in onnx_external.graph_tensors(model.graph)):
            raise ModelError("the model holds tensors with external data but no file they belong to; pass the "
                             "model's path (or onnx.load it, which reads the external data) instead")
        sha256 = hashlib.sha256(data).hexdigest()
    else:
        path = str(path_or_model)
        if not Path(path).is_file():
            raise ModelError(f"model file {path!r} does not exist")
        data = Path(path).read_bytes()
        try:
            model = onnx.load_from_string(data)
        except Exception as exc:  # protobuf DecodeError and friends
            raise ModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
        if not model.graph.node and not model.graph.output:
            raise ModelError(f"{path}: not an ONNX model (no graph found)")
        files = onnx_external.load_external_data(model, path)
        sha256 = onnx_external.digest(data, path, files)
    where = path or "model"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError(f"{where}: imports no default-domain opset")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ModelError(f"{where}: opset {opset} is outside the supported range {MIN_OPSET}..{newest}; "
                         "convert it with onnx.version_converter")
    return ModelInfo(path, sha256, opset, model.ir_version, model.producer_name, model)


def model_digest(path) -> str:
    """The provenance sha256 of an ONNX file: its bytes and those of its external data files (if any)."""
    data = Path(path).read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception:   # not ONNX: the digest of the bytes; whoever loads it says what is wrong
        return hashlib.sha256(data).hexdigest()
    return onnx_external.digest(data, path, onnx_external.external_data_files(model, path))


def import_onnx(path_or_model) -> tuple[Graph, ModelInfo]:
    info = load_model(path_or_model)
    return _Importer(info).run(), info


def _topologically_sorted(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """The model with its nodes in topological order. ONNX requires it, but files that break the rule exist and
    onnxruntime runs them; a file already in order keeps its order exactly (ties go by position in the file)."""
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    if all(producer.get(t, -1) < i for i, node in enumerate(nodes) for t in node.input):
        return model          # every edge points forward: already sorted, no cycle (and no networkx import)
    import networkx as nx
    g = nx.DiGraph()
    g.add_nodes_from(range(len(nodes)))
    g.add_edges_from((producer[t], i) for i, node in enumerate(nodes) for t in node.input if t in producer)
    try:
        order = list(nx.lexicographical_topological_sort(g))
    except nx.NetworkXUnfeasible:
        cycle = [nodes[i].name or nodes[i].op_type for i, _ in nx.find_cycle(g)]
        raise ModelError(f"{where}: the graph has a cycle through nodes {cycle}") from None
    if order == list(range(len(nodes))):
        return model
    ordered = onnx.ModelProto()
    ordered.CopyFrom(model)
    del ordered.graph.node[:]
    ordered.graph.node.extend(nodes[i] for i in order)
    return ordered


def _evaluate_node(node, opset_import, feeds: dict) -> list:
    """Run one node with onnx's reference evaluator at the model's opset (a bare NodeProto would get the newest)."""
    from onnx.reference import ReferenceEvaluator      # imported only when a model needs constant folding
    untyped = onnx.TensorProto.UNDEFINED
    graph = helper.make_graph([node], "fold", [helper.make_tensor_value_info(n, untyped, None) for n in feeds],
                              [helper.make_tensor_value_info(n, untyped, None) for n in node.output if n])
    return ReferenceEvaluator(helper.make_model(graph, opset_imports=opset_import)).run(None, feeds)


def _evaluate_nodes(nodes, opset_import, values: dict) -> dict:
    """Run the constant-only nodes together in one onnxruntime session (one session instead of one reference
    evaluator per node: seconds on a large torch export)."""
    made = {o for n in nodes for o in n.output if o}
    needed = sorted({t for n in nodes for t in n.input if t and t not in made})
    outputs = [o for n in nodes for o in n.output if o]
    graph = helper.make_graph(list(nodes), "fold", [], [helper.make_value_info(t, onnx.TypeProto()) for t in outputs],
                              [numpy_helper.from_array(np.asarray(values[t]), t) for t in needed])
    session = ort_session.session(ort_session.model(graph, opset_import), optimize=False)
    return dict(zip(outputs, (np.asarray(v) for v in session.run(outputs, {}))))


def _shape_of(value_info) -> tuple | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)


class _Importer:
    def __init__(self, info: ModelInfo):
        self.info = info
        self.where = info.path or "model"
        self.opset = info.opset
        ordered = _topologically_sorted(info.model, self.where)
        # Refuse what onnxruntime would refuse; the shapes come from inference on the graph inputs and
        # initializers. A shape the file declares (value_info, graph outputs) only fills in what inference leaves
        # unknown: onnxruntime, too, runs files whose declared shapes are wrong (it merges them leniently), and
        # cimc must compute what onnxruntime computes.
        self.model = onnx_checks.check_valid(ordered, self.where)
        declared = {vi.name: _shape_of(vi) for vi in list(ordered.graph.value_info) + list(ordered.graph.output)}
        g = self.model.graph
        self.consts: dict[str, np.ndarray] = {i.name: self.tensor_value(i, "initializer") for i in g.initializer}
        self.check_finite_constants(g)
        self.shapes: dict[str, tuple] = {}
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            shape = _shape_of(vi)
            if shape is not None:
                self.shapes[vi.name] = shape
        for name, shape in declared.items():
            inferred = self.shapes.get(name)
            if shape is not None and (inferred is None or len(inferred) == len(shape)):
                self.shapes[name] = shape if inferred is None else \
                    tuple(d if d is not None else s for d, s in zip(inferred, shape))
        self.used = {t for n in g.node for t in n.input} | {o.name for o in g.output}
        self.alias: dict[str, str] = {}
        self.names: set[str] = set()
        self.ops: list = []
        self.check_finite_attributes(g)
        self.ran = False                  # the model was run in onnxruntime (run_in_onnxruntime)
        self.run_error: ModelError | None = None   # why onnxruntime could not run it
        self.lowered_batch_first = False  # a layout-1 LSTM/GRU/RNN went onto arrays (onnxruntime cannot run it)

    # -- helpers -------------------------------------------------------------------------------------------
    def tensor_value(self, tensor, what: str) -> np.ndarray:
        try:
            return numpy_helper.to_array(tensor)
        except Exception as exc:  # data longer than its dims say (the checker only catches shorter), odd types
            raise ModelError(f"{self.where}: tensor {tensor.name!r} ({what}) cannot be read as "
                             f"{onnx.TensorProto.DataType.Name(tensor.data_type)} of shape {list(tensor.dims)} "
                             f"({exc}); re-export the model") from None

    def check_finite_attributes(self, g) -> None:
        """Float attributes (an epsilon, an alpha) are finite: cimc folds some into weights, and a manifest holds
        only finite numbers."""
        for node in g.node:
            for a in node.attribute:
                values = [a.f] if a.type == onnx.AttributeProto.FLOAT else \
                    list(a.floats) if a.type == onnx.AttributeProto.FLOATS else []
                if any(not np.isfinite(v) for v in values):
                    raise self.fail(node, f"attribute {a.name!r} is {values[0] if len(values) == 1 else values}; "
                                          "cimc needs finite attributes: fix the model")

    def check_finite_constants(self, g) -> None:
        """Every initializer and Constant holds finite numbers; only a Clip bound may be +-Inf (no bound)."""
        bounds = onnx_checks.clip_bounds_only(g.node)
        named = [(name, value, "initializer") for name, value in self.consts.items()]
        named += [(n.output[0], self.constant_value(n), f"output of Constant node {n.name or '<unnamed>'!r}")
                  for n in g.node if n.op_type == "Constant" and n.output]
        for name, value, what in named:
            bad = onnx_checks.first_nonfinite(value)
            if bad and not (bad.startswith(("Inf", "-Inf")) and name in bounds):
                raise ModelError(f"{self.where}: tensor {name!r} ({what}) holds {bad}; cimc needs finite weights "
                                 "and constants: fix the model (or re-export it from a checkpoint without NaN/Inf)")

    def check_shapes(self) -> None:
        """A crossbar op whose input (as shape inference sees it) does not fit its weight, or any op whose output
        is absurdly large per sample, is refused now, naming the node, instead of failing mid-calibration. Digital
        ops are checked by onnx's strict shape inference (check_valid) and by onnxruntime when they first run."""
        for op in self.ops:
            node = op.source_nodes[0] if op.source_nodes else op.name
            for out in op.outputs:
                inferred = self.shapes.get(out)
                if inferred and None not in inferred[1:] and \
                        np.prod(inferred[1:], dtype=float) > _MAX_SAMPLE_VALUES:
                    raise ModelError(f"{self.where}: node {node!r} ({op.op_type}): its output {list(inferred)} "
                                     f"holds more than {_MAX_SAMPLE_VALUES} values per sample; check its attributes")
            x = self.shapes.get(op.inputs[0]) if isinstance(op, XbarOp) else None
            if x is not None and None not in x[1:]:
                self.xbar_output_shape(op, (2,) + tuple(x[1:]), node)

    def xbar_output_shape(self, op, x: tuple, node: str) -> tuple | None:
        rows = op.rows
        if op.conv is not None:
            g = op.conv
            if len(x) != 2 + g.spatial_rank or x[1] != g.in_channels:
                raise ModelError(f"{self.where}: node {node!r} ({op.op_type}): its input has shape {list(x)}, the "
                                 f"weight needs {g.spatial_rank} spatial axes and {g.in_channels} channels")
            out = g.output_size(((1,) if g.spatial_rank == 1 else ()) + tuple(x[2:]))
            return (x[0], g.out_channels) + out[len(out) - g.spatial_rank:]
        if not x or x[-1] != rows:
            raise ModelError(f"{self.where}: node {node!r} ({op.op_type}): its input has shape {list(x)} but the "
                             f"weight has {rows} rows; the last axis must have {rows} entries")
        return tuple(x[:-1]) + (op.cols,)

    def check_finite_op(self, op) -> None:
        """The lowered numbers of a crossbar op (weights and biases after folding) are finite."""
        for key, value in {"weight": op.matrix, "bias": op.bias}.items():
            if value is None:
                continue
            bad = onnx_checks.first_nonfinite(value)
            if bad is None:
                continue
            what = "lowered weight matrix" if key == "weight" else "bias"
            node = op.source_nodes[0] if op.source_nodes else op.name
            raise ModelError(f"{self.where}: node {node!r} ({op.op_type}): its {what} holds {bad} "
                             "(computed from the model's constants and "
                             "attributes); cimc needs finite weights and parameters: fix the model")

    def fail(self, node, message: str) -> ModelError:
        return ModelError(f"{self.where}: node {node.name or '<unnamed>'!r} ({node.op_type}, opset {self.opset}): "
                          f"{message}")

    def const(self, name: str):
        return self.consts.get(name) if name else None

    def need_const(self, node, index: int, what: str):
        if index >= len(node.input) or not node.input[index]:
            return None
        value = self.const(node.input[index])
        if value is None:
            raise self.fail(node, f"input {index} ({what}, tensor {node.input[index]!r}) must be a constant "
                                  "(an initializer or computable from initializers); it is computed at run time")
        return value

    def attrs(self, node) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def resolve(self, tensor: str) -> str:
        while tensor in self.alias:
            tensor = self.alias[tensor]
        return tensor

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def shape(self, tensor: str) -> tuple | None:
        """The tensor's shape (None for sizes unknown); where inference left a size past the batch axis unknown,
        the model is run in onnxruntime to find it (run_in_onnxruntime)."""
        shape = self.shapes.get(tensor)
        if shape is None or None in shape[1:]:
            self.run_in_onnxruntime()
            shape = self.shapes.get(tensor)
        return shape

    def run_in_onnxruntime(self) -> None:
        """Once per import: run the model in onnxruntime (cimc.shape_probe), which fills in the sizes past the
        batch axis that shape inference left unknown. A refusal is kept in `run_error`, not raised: cimc's own
        checks, which name the tensor or attribute at fault, come first (check_runs)."""
        if self.ran:
            return
        self.ran = True
        inputs = {vi.name: self.shapes[vi.name] for vi in self.model.graph.input
                  if vi.name not in self.consts and vi.name in self.shapes
                  and vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
        if len(inputs) != len([vi for vi in self.model.graph.input if vi.name not in self.consts]):
            return          # an input cimc refuses by name (no shape, not float32)
        try:
            found_shapes = shape_probe.run_model(self.model, inputs, self.where)
        except ModelError as exc:
            self.run_error = exc
            return
        for name, found in found_shapes.items():
            known = self.shapes.get(name)
            if known is None or len(known) != len(found):
                self.shapes[name] = found
            else:
                self.shapes[name] = tuple(k if k is not None else f for k, f in zip(known, found))

    def check_runs(self) -> None:
        """After cimc's own checks: the model must run in onnxruntime, which runs every digital op of it. Except
        where it holds batch-first recurrent nodes that cimc lowered: onnxruntime's CPU kernels refuse layout 1,
        and what cimc runs instead (their lowering) is ordinary ops."""
        self.run_in_onnxruntime()
        if self.run_error is not None and not self.lowered_batch_first:
            raise self.run_error

    # -- the pass ------------------------------------------------------------------------------------------
    def run(self) -> Graph:
        g = self.model.graph
        self.fold_constants(g)
        live = self.live_nodes(g)
        names = layer_names(g.node)
        self.names.update(names)     # the names the pass generates (`NAME/bias`, ...) never take a node's name
        self.constants: dict[str, np.ndarray] = {}
        for index, node in enumerate(g.node):
            if index not in live:
                if node.op_type in ("Conv", "ConvTranspose"):
                    self.check_dead_conv(node)
                continue
            self.check_weight_not_input(node)
            if node.op_type in _LOWERED and self.has_constant_weight(node):
                getattr(self, f"op_{node.op_type}")(node, names[index])
            elif node.op_type in recurrent_lowering.RECURRENT and node.domain in ("", "ai.onnx") \
                    and self.recurrent_lowerable(node):
                recurrent_lowering.lower(self, node, names[index])     # else onnxruntime runs it whole
                self.lowered_batch_first |= int(self.attrs(node).get("layout", 0)) == 1
            elif node.op_type == "Identity" or (node.op_type == "Dropout" and self.is_identity_dropout(node)):
                self.alias[node.output[0]] = self.resolve(node.input[0])
            else:
                self.add_node(node, names[index])
        inputs = []
        for vi in g.input:
            if vi.name in self.consts:
                continue  # IR-3 style: an initializer listed as an input is a weight
            shape = self.shapes.get(vi.name)
            if shape is None:
                raise ModelError(f"{self.where}: graph input {vi.name!r} has no shape")
            # a symbolic size past the batch axis (a sequence length) is allowed: crossbar ops multiply along the
            # last axis whatever the rest; a conv needs its spatial size and says so (conv_setup)
            elem = vi.type.tensor_type.elem_type
            if elem != onnx.TensorProto.FLOAT:
                raise ModelError(f"{self.where}: graph input {vi.name!r} has element type "
                                 f"{onnx.TensorProto.DataType.Name(elem)}; cimc takes float32 inputs")
            inputs.append(TensorInfo(vi.name, shape))
        outputs = []
        for vi in g.output:
            source = self.resolve(vi.name)
            if source in self.consts:
                raise ModelError(f"{self.where}: graph output {vi.name!r} is a constant; nothing to compute")
            if source != vi.name:  # the output was an Identity/Dropout of another tensor: keep its name
                self.digital_step(f"{vi.name}_identity", "Identity", [source], vi.name)
            elem = vi.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
            outputs.append(TensorInfo(vi.name, self.shapes.get(vi.name, ()),
                                      np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name))
        for op in self.ops:
            if isinstance(op, XbarOp):
                if 0 in op.matrix.shape:
                    raise ModelError(f"{self.where}: node {op.source_nodes[0]!r} ({op.op_type}): its weight matrix "
                                     f"is {op.rows} x {op.cols} (an empty dimension); nothing "
                                     "to map onto crossbar arrays")
                self.check_finite_op(op)
        self.check_shapes()
        self.check_runs()
        tensors = {name: TensorInfo(name, shape) for name, shape in self.shapes.items()}
        opsets = {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in self.model.opset_import}
        graph = Graph(inputs, outputs, self.ops, tensors, self.constants, opsets)
        if not graph.xbar_ops():
            raise ModelError(f"{self.where}: no Conv, ConvTranspose, Gemm, MatMul, Einsum, LSTM, GRU or RNN with "
                             "constant weights; nothing to map onto crossbar arrays")
        return graph

    def recurrent_lowerable(self, node) -> bool:
        """Whether an LSTM/GRU/RNN goes onto arrays; if not, onnxruntime runs it whole, which it cannot for
        layout 1 (its CPU kernels refuse batch-first recurrent ops): that is refused now, naming why."""
        reason = recurrent_lowering.why_digital(self, node)
        if reason is not None and int(self.attrs(node).get("layout", 0)) == 1:
            raise self.fail(node, f"attribute 'layout' is 1 (batch first), which onnxruntime does not run, and cimc "
                                  f"cannot put this node on arrays: {reason}. Export it with layout 0 (PyTorch: "
                                  "batch_first=False), or with constant weights and default options")
        return reason is None

    def has_constant_weight(self, node) -> bool:
        """Whether a Conv/ConvTranspose/Gemm/MatMul/Einsum multiplies by a constant cimc can put on arrays; if not,
        it stays digital (onnxruntime multiplies two run-time tensors, e.g. attention's Q K^T)."""
        if node.op_type in ("Conv", "ConvTranspose"):     # 1-D to 3-D; a 4-D conv stays digital
            w = self.const(node.input[1]) if len(node.input) > 1 else None
            bias_ok = len(node.input) < 3 or not node.input[2] or self.const(node.input[2]) is not None
            return w is not None and w.ndim in (3, 4, 5) and bias_ok
        if node.op_type == "Gemm":
            return self.const(node.input[1]) is not None
        if node.op_type == "Einsum":
            return self.einsum_plan(node) is not None
        left, right = self.const(node.input[0]), self.const(node.input[1])
        if right is not None and left is None:
            return right.ndim == 2 or self.batched_weight(node, right) is not None
        return left is not None and left.ndim == 2 and right is None

    def einsum_plan(self, node):
        """An Einsum of a run-time tensor and a constant that is a product with a constant matrix, else None."""
        if len(node.input) != 2:
            return None
        consts = [self.const(t) for t in node.input]
        if (consts[0] is None) == (consts[1] is None):
            return None
        x_first = consts[1] is not None
        shape = self.shape(node.input[0 if x_first else 1])
        equation = self.attrs(node).get("equation", b"")
        equation = equation.decode() if isinstance(equation, bytes) else equation
        return None if shape is None else einsum_plan.plan(equation, shape, consts[1 if x_first else 0], x_first)

    def op_Einsum(self, node, name):
        plan = self.einsum_plan(node)
        operand = node.input[0 if self.const(node.input[1]) is not None else 1]
        x, shape = self.resolve(operand), self.shape(operand)
        rank = len(plan.x_perm)

        if plan.x_perm != list(range(rank)):
            self.digital_step(f"{name}/transpose", "Transpose", [x], f"{name}/x_moved", perm=plan.x_perm)
            x = f"{name}/x_moved"
        flat = f"{name}/x_flat"
        flat_shape = self.add_constant(f"{name}/shape", np.array([0] * plan.free_x + [-1], np.int64))
        self.digital_step(f"{name}/reshape", "Reshape", [x, flat_shape], flat)
        product = f"{name}/product"
        inner = [shape[a] for a in plan.x_perm[1:plan.free_x]]
        self.ops.append(XbarOp(name, "Einsum", [flat], [product], plan.matrix, None, None, [node.name or name],
                               positions=int(np.prod(inner)) if None not in inner else 1))
        identity = plan.out_perm == list(range(len(plan.out_perm)))
        unflat = node.output[0] if identity else f"{name}/unflat"
        out_shape = self.add_constant(f"{name}/shape", np.array([0] * plan.free_x + plan.free_w_sizes, np.int64))
        self.digital_step(f"{name}/reshape", "Reshape", [product, out_shape], unflat)
        if not identity:
            self.digital_step(f"{name}/transpose", "Transpose", [unflat], node.output[0], perm=plan.out_perm)

    def batched_weight(self, node, w):
        """How a constant right MatMul operand that is not 2-D goes onto arrays, or None (it stays digital):
        ("vector",) for w [K]; ("matrix", K x N) for leading sizes all 1 that add no axis; ("blocks", wb) for
        weights that differ along batch axes wb: one block-diagonal matrix, the batch axes moved next to K.
        The run-time operand must keep its own leading (sample) axis in front of the weight's axes: a weight that
        varies along the sample axis is not a crossbar weight."""
        x = self.shape(node.input[0])
        if x is None or len(x) < 2 or w.ndim < 1 or w.shape[-2 if w.ndim > 1 else 0] != x[-1]:
            return None
        if w.ndim == 1:
            return ("vector",)
        lead = 0
        while lead < w.ndim - 2 and w.shape[lead] == 1:
            lead += 1
        wb = tuple(int(d) for d in w.shape[lead:-2])
        if not wb:
            return ("matrix",) if len(x) >= w.ndim else None
        xb = x[len(x) - 2 - len(wb):-2]
        if len(x) <= len(wb) + 2 or any(d is None or d not in (1, b) for d, b in zip(xb, wb)):
            return None
        return ("blocks", wb)

    def check_weight_not_input(self, node) -> None:
        """A Conv weight or Gemm B fed straight from a graph input is an export that left the weights out of
        the file (a crossbar holds constant weights; onnxruntime would ask for them at every run)."""
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 2:
            return
        graph_inputs = {vi.name for vi in self.model.graph.input} - set(self.consts)
        if node.input[1] in graph_inputs:
            raise self.fail(node, f"input 1 (weight, tensor {node.input[1]!r}) must be a constant (an initializer "
                                  "or computable from initializers); it is a graph input given at run time: "
                                  "export the model with its weights")

    def is_identity_dropout(self, node) -> bool:
        """An inference Dropout: no used mask output and no training_mode input that could be true."""
        if any(extra and extra in self.used for extra in node.output[1:]):
            return False
        if len(node.input) > 2 and node.input[2]:
            mode = self.const(node.input[2])
            return mode is not None and not bool(np.asarray(mode).reshape(-1)[0])
        return True

    def add_node(self, node, name: str) -> None:
        """Keep a node as it is, its inputs read through Identity aliases and its constant inputs recorded."""
        inputs = [self.resolve(t) if t else "" for t in node.input]
        for t in inputs + sorted(subgraph_reads(node.attribute)):
            if t in self.consts:
                self.constants[t] = self.consts[t]
        self.ops.append(DigitalOp(name, node.op_type, inputs, list(node.output), list(node.attribute),
                                  "" if node.domain == "ai.onnx" else node.domain, [node.name or name]))

    def digital_step(self, base: str, op_type: str, inputs: list[str], output: str, **attrs) -> None:
        """A digital op the front end makes around a crossbar op (a transpose, a reshape, a bias add), named
        `base` (made unique), its attributes given as Python values."""
        self.ops.append(DigitalOp(self.unique(base), op_type, list(inputs), [output],
                                  [helper.make_attribute(k, v) for k, v in attrs.items()]))

    def add_constant(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        self.constants[name] = value
        return name

    def fold_constants(self, g) -> None:
        """Evaluate every node whose inputs are all constant (in one onnxruntime run; node by node with onnx's
        reference evaluator if that fails, so the message names the node); Shape of a known part of a tensor's
        shape too."""
        values = self.consts
        foldable, known = [], set(values)
        for node in g.node:
            if any(o in known for o in node.output if o):
                continue
            if node.op_type == "Constant":
                values[node.output[0]] = self.constant_value(node)
                known.add(node.output[0])
                continue
            if node.op_type == "Shape":
                shape = self.shape(node.input[0])
                if shape:
                    a = self.attrs(node)
                    part = list(shape)[a.get("start", 0):a.get("end", len(shape))]
                    if None not in part:
                        values[node.output[0]] = np.array(part, dtype=np.int64)
                        known.add(node.output[0])
                continue
            if not node.input or any(n and n not in known for n in node.input):
                continue
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                continue
            if node.op_type.startswith("Random") or node.op_type in ("Bernoulli", "Multinomial"):
                continue                # drawn anew at each run by onnxruntime: not a constant
            foldable.append(node)
            known.update(o for o in node.output if o)
        if not foldable:
            return
        try:
            values.update(_evaluate_nodes(foldable, self.model.opset_import, values))
            return
        except Exception:       # onnxruntime cannot run them together: one by one, naming the node that fails
            pass
        for node in foldable:
            try:
                results = _evaluate_node(node, self.model.opset_import, {n: values[n] for n in node.input if n})
            except Exception as exc:
                raise self.fail(node, f"constant folding failed: {exc}") from None
            for name, value in zip(node.output, results):
                if name:
                    values[name] = np.asarray(value)

    def constant_value(self, node) -> np.ndarray:
        a = self.attrs(node)
        if "value" in a:
            return self.tensor_value(a["value"], f"value of Constant node {node.name or '<unnamed>'!r}")
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                           ("value_ints", np.int64)):
            if key in a:
                return np.array(a[key], dtype=dtype)
        raise self.fail(node, f"unsupported Constant attribute(s) {sorted(a)}")

    def live_nodes(self, g) -> set[int]:
        """Indices of the nodes the graph outputs depend on (constants stop the walk: they are folded)."""
        nodes = list(g.node)
        producer = {out: i for i, node in enumerate(nodes) for out in node.output}
        live: set[int] = set()
        stack = [o.name for o in g.output]
        seen: set[str] = set()
        while stack:
            tensor = stack.pop()
            if tensor in seen or tensor in self.consts:
                continue
            seen.add(tensor)
            index = producer.get(tensor)
            if index is None:
                continue
            live.add(index)
            node = nodes[index]
            stack.extend(t for t in node.input if t)
            stack.extend(subgraph_reads(node.attribute))
        return live

    def data_inputs(self, node, indices=(0,)) -> list[str]:
        return [self.resolve(node.input[i]) for i in indices]

    def check_extra_outputs(self, node):
        for extra in node.output[1:]:
            if extra and extra in self.used:
                raise self.fail(node, f"output {extra!r} (training-mode or index output) is used; cimc supports "
                                      "only the first output of this op")

    def spatial(self, node, tensor) -> tuple:
        shape = self.shape(tensor)
        if (shape is None or len(shape) < 3 or None in shape[2:]) and self.run_error is not None:
            raise self.run_error           # it could not run: say why (it names the node), not "unknown"
        if shape is None or len(shape) < 3 or None in shape[2:]:
            raise self.fail(node, f"the spatial size of input {tensor!r} is unknown after shape inference")
        return shape[2:]

    def window_pads(self, node, a, kernel, strides, dilations, spatial) -> list[int]:
        """Explicit pads [begins..., ends...] from `pads` or `auto_pad` (SAME_UPPER/SAME_LOWER/VALID)."""
        n = len(kernel)
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            return list(a.get("pads", [0] * (2 * n)))
        if auto == "VALID":
            return [0] * (2 * n)
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            raise self.fail(node, f"unknown auto_pad {auto!r}")
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            target = -(-size // s)                         # SAME: ceil(size / stride) outputs
            total = (target - 1) * s + (k - 1) * d + 1 - size
            if total >= 0:
                small, big = total // 2, total - total // 2
                begins.append(small if auto == "SAME_UPPER" else big)
                ends.append(big if auto == "SAME_UPPER" else small)
                continue
            # A stride longer than the window: the rule asks for negative padding (cropping). onnxruntime refuses
            # that for pooling; for Conv it crops the head by int((total + lower) / 2), rounded toward zero (a
            # cropped tail changes nothing here).
            head = int((total + (auto == "SAME_LOWER")) / 2)
            if head < 0 or node.op_type != "Conv" or (size + head - ((k - 1) * d + 1)) // s + 1 != target:
                raise self.fail(node, f"attribute 'auto_pad' {auto} with stride {s} on an axis of size {size} "
                                      f"and kernel {k} would crop the input (negative padding {total}), which cimc "
                                      "does not support; give explicit 'pads' instead")
            begins.append(head)
            ends.append(0)
        return begins + ends

    # -- crossbar ops --------------------------------------------------------------------------------------
    def conv_weight(self, node, what: str):
        """A Conv's or ConvTranspose's constant weight (1-D to 3-D), its bias (or None) and its attributes."""
        w = self.need_const(node, 1, "weight")
        if w is None:
            raise self.fail(node, "has no weight")
        if w.ndim not in (3, 4, 5):
            raise self.fail(node, f"weight {node.input[1]!r} has shape {list(w.shape)}: a {w.ndim - 2}-D "
                                  f"{what}; cimc supports 1-D, 2-D and 3-D")
        return w, self.need_const(node, 2, "bias"), self.attrs(node)

    def conv_setup(self, node):
        """A Conv's weight, bias and geometry, checked (check_conv)."""
        w, b, a = self.conv_weight(node, "convolution")
        groups = int(a.get("group", 1))
        kernel = list(w.shape[2:])
        n = len(kernel)
        strides = list(a.get("strides", [1] * n))
        dilations = list(a.get("dilations", [1] * n))
        spatial = self.spatial(node, node.input[0])
        pads = self.window_pads(node, a, kernel, strides, dilations, spatial)
        self.check_conv(node, a, w, b, groups, strides, dilations, pads, spatial)
        return w, b, groups, kernel, strides, dilations, pads, spatial

    def check_dead_conv(self, node) -> None:
        """onnxruntime runs nodes whose results nobody uses (cimc drops them): a Conv or ConvTranspose there that
        onnxruntime would refuse at run time is refused now too. Only what cimc could lower is checked."""
        w, shape = self.const(node.input[1]), self.shape(node.input[0])
        bias_known = len(node.input) < 3 or not node.input[2] or self.const(node.input[2]) is not None
        if w is not None and w.ndim in (3, 4, 5) and bias_known and shape and len(shape) == w.ndim \
                and None not in shape[2:]:
            (self.conv_setup if node.op_type == "Conv" else self.conv_transpose_setup)(node)

    def op_Conv(self, node, name):
        w, b, groups, kernel, strides, dilations, pads, spatial = self.conv_setup(node)
        m, cg = w.shape[:2]
        n = len(kernel)
        cin = cg * groups
        ng, kg = m // groups, cg * int(np.prod(kernel))
        # block g (rows g*kg.., columns g*ng..): K x N itself for one group, else the compact blocks (cimc.ir)
        matrix = np.ascontiguousarray(w.reshape(groups, ng, kg).transpose(0, 2, 1), dtype=np.float32)
        if groups == 1:
            matrix = matrix[0]
        if n == 1:  # Conv1d runs as a height-1 2-D conv
            kernel, strides, dilations, pads = [1] + kernel, [1] + strides, [1] + dilations, [0, pads[0], 0, pads[1]]
        geometry = ConvGeometry(tuple(kernel), tuple(strides), tuple(pads), tuple(dilations), groups, cin, m, n)
        out_spatial = geometry.output_size(([1] if n == 1 else []) + list(spatial))
        self.check_extra_outputs(node)
        self.ops.append(XbarOp(name, "Conv", self.data_inputs(node), [node.output[0]], matrix,
                               None if b is None else b.astype(np.float32), geometry, [node.name or name],
                               positions=int(np.prod(out_spatial))))

    def op_ConvTranspose(self, node, name):
        """The transposed kernel as a Cin x (Cout * kernel size) matrix, read once per input position, and a
        digital overlap-add in the op's run stage (cimc.overlap_add). The alternative, a conv on the zero-inserted
        input with the flipped kernel, has the same cells but reads prod(stride) times as many positions, most of
        their inputs zeros (docs/design.md, ConvTranspose)."""
        matrix, b, geometry, spatial = self.conv_transpose_setup(node)
        self.check_extra_outputs(node)
        self.ops.append(XbarOp(name, "ConvTranspose", self.data_inputs(node), [node.output[0]], matrix,
                               None if b is None else b.astype(np.float32), geometry, [node.name or name],
                               positions=int(np.prod(spatial))))

    def conv_transpose_setup(self, node):
        """A ConvTranspose's matrix, bias, geometry and input spatial size, checked."""
        w, b, a = self.conv_weight(node, "transposed convolution")
        groups = int(a.get("group", 1))
        cin, mg, kernel = int(w.shape[0]), int(w.shape[1]), [int(k) for k in w.shape[2:]]
        n, m = len(kernel), mg * groups
        spatial = self.spatial(node, node.input[0])
        strides = [int(v) for v in a.get("strides", [1] * n)]
        dilations = [int(v) for v in a.get("dilations", [1] * n)]
        output_padding = [int(v) for v in a.get("output_padding", [0] * n)]
        pads = [int(v) for v in a.get("pads", [0] * (2 * n))]
        self.check_conv_transpose(node, a, w, b, groups, spatial, strides, dilations, output_padding, pads)
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", "", "SAME_UPPER", "SAME_LOWER", "VALID"):
            raise self.fail(node, f"unknown auto_pad {auto!r}")
        output_shape = [int(v) for v in a["output_shape"]] if "output_shape" in a else None
        try:
            begins, ends, appended = conv_transpose_geometry.resolve(spatial, kernel, strides, dilations,
                                                                     output_padding, pads, auto, output_shape)
        except ValueError as exc:
            raise self.fail(node, str(exc)) from None
        size = int(np.prod(kernel))
        # block g: rows g*cg.., columns g*mg*size..; compact blocks when grouped (cimc.ir)
        matrix = np.ascontiguousarray(w.reshape(groups, cin // groups, mg * size), dtype=np.float32)
        if groups == 1:
            matrix = matrix[0]
        pads = begins + ends
        if n == 1:  # runs as a height-1 2-D transposed conv, like Conv1d
            kernel, strides, dilations = [1] + kernel, [1] + strides, [1] + dilations
            pads, appended = [0, pads[0], 0, pads[1]], [0] + appended
        geometry = ConvGeometry(tuple(kernel), tuple(strides), tuple(pads), tuple(dilations), groups, cin, m, n,
                                transposed=True, output_padding=tuple(appended))
        return matrix, b, geometry, spatial

    def check_conv_transpose(self, node, a, w, b, groups, spatial, strides, dilations, output_padding, pads):
        """What onnxruntime would refuse at run time, named by attribute (the output geometry: resolve)."""
        cin, mg, kernel = int(w.shape[0]), int(w.shape[1]), [int(k) for k in w.shape[2:]]
        n = len(kernel)
        self.check_kernel(node, a, w, spatial, "input channels, output channels")
        for attr, values, low, count in (("group", [groups], 1, 1), ("strides", strides, 1, n),
                                         ("dilations", dilations, 1, n), ("pads", pads, 0, 2 * n),
                                         ("output_padding", output_padding, 0, n)):
            if len(values) != count or any(v < low for v in values):
                raise self.fail(node, f"attribute {attr!r} is {list(values)}; it needs "
                                      f"{'one value' if count == 1 else f'{count} values'} >= {low}")
        x_channels = (self.shape(node.input[0]) or (None, None))[1]
        if cin % groups or (x_channels is not None and x_channels != cin):
            raise self.fail(node, f"attribute 'group' {groups} does not fit: the input has {x_channels} channels "
                                  f"and the weight {node.input[1]!r} {list(w.shape)} takes {cin} input channels "
                                  "(divisible by group) and gives group x its second dimension output channels")
        if b is not None and b.shape != (mg * groups,):
            raise self.fail(node, f"bias {node.input[2]!r} has shape {list(b.shape)}; it needs [{mg * groups}] "
                                  "(one value per output channel)")

    def check_kernel(self, node, a, w, spatial, channels: str) -> None:
        """A conv weight's kernel fits the input's spatial axes, has no empty axis, and agrees with kernel_shape."""
        kernel = [int(k) for k in w.shape[2:]]
        if len(spatial) != len(kernel):
            raise self.fail(node, f"weight {node.input[1]!r} has shape {list(w.shape)} (a {len(kernel)}-D kernel) "
                                  f"but the input has {len(spatial)} spatial axes")
        if 0 in w.shape:
            raise self.fail(node, f"weight {node.input[1]!r} has shape {list(w.shape)}: zero {channels} or kernel "
                                  "size; nothing to compute")
        if "kernel_shape" in a and [int(k) for k in a["kernel_shape"]] != kernel:
            raise self.fail(node, f"attribute 'kernel_shape' {list(a['kernel_shape'])} disagrees with the weight's "
                                  f"kernel {kernel}")

    def check_conv(self, node, a, w, b, groups, strides, dilations, pads, spatial) -> None:
        """What onnxruntime would refuse at run time (or what would crash a later pass), named by attribute."""
        m, cg, kernel = int(w.shape[0]), int(w.shape[1]), [int(k) for k in w.shape[2:]]
        n = len(kernel)
        self.check_kernel(node, a, w, spatial, "output channels, input channels")
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", "") and "pads" in a:   # onnxruntime: "has both 'auto_pad' and 'pads' attributes"
            raise self.fail(node, f"attributes 'auto_pad' ({auto}) and 'pads' are both set; keep one")
        if auto in ("SAME_UPPER", "SAME_LOWER") and any(int(d) != 1 for d in dilations):
            raise self.fail(node, f"attribute 'auto_pad' {auto} with 'dilations' {list(dilations)}: onnxruntime "
                                  "does not support dilation with SAME padding; give explicit 'pads' instead")
        for attr, values, ok, rule in (("group", [groups], lambda v: v >= 1, ">= 1"),
                                       ("strides", strides, lambda v: v >= 1, ">= 1"),
                                       ("dilations", dilations, lambda v: v >= 1, ">= 1"),
                                       ("pads", pads, lambda v: v >= 0, ">= 0")):
            if len(values) != (2 * n if attr == "pads" else 1 if attr == "group" else n) or \
                    not all(ok(int(v)) for v in values):
                raise self.fail(node, f"attribute {attr!r} is {values}; it needs "
                                      f"{'one value' if attr == 'group' else f'{len(values)} values'} {rule}")
        cin = (self.shape(node.input[0]) or (None, None))[1]
        if m % groups or (cin is not None and cin != cg * groups):
            raise self.fail(node, f"attribute 'group' {groups} does not fit: the input has {cin} channels and the "
                                  f"weight {node.input[1]!r} {list(w.shape)} asks for {cg} x {groups} input and "
                                  f"{m} output channels (both must be divisible by group)")
        for axis, (size, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations)):
            padded, reach = size + pads[axis] + pads[n + axis], (k - 1) * d + 1
            if reach > padded:
                raise self.fail(node, f"the kernel (size {k}, dilation {d}: spans {reach}) is larger than the "
                                      f"padded input ({size} + pads {pads[axis]}+{pads[n + axis]} = {padded}) on "
                                      f"spatial axis {axis}; check 'kernel_shape', 'dilations' and 'pads'")
        if b is not None and b.shape != (m,):
            raise self.fail(node, f"bias {node.input[2]!r} has shape {list(b.shape)}; it needs [{m}] "
                                  "(one value per output channel)")

    def op_Gemm(self, node, name):
        a = self.attrs(node)
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        trans_a, trans_b = int(a.get("transA", 0)), int(a.get("transB", 0))
        if self.const(node.input[1]) is None:
            raise self.fail(node, "operand B (the weight) must be constant; a Gemm of two run-time tensors "
                                  "cannot be mapped onto crossbar arrays")
        w = self.const(node.input[1]).astype(np.float32)
        matrix = alpha * (w.T if trans_b else w)
        x = self.resolve(node.input[0])
        if trans_a:
            x = self.transpose(name, x, [1, 0])
        out = node.output[0]
        c_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        c = self.const(c_name) if c_name else None
        rows = (self.shape(node.input[0]) or (None, None))[1 if trans_a else 0]   # M, None when symbolic
        self.check_contracted(node, node.input[0], 0 if trans_a else -1, matrix.shape[0])
        c_shape = c.shape if c is not None else (self.shape(c_name) if c_name else None)
        n_out = matrix.shape[1]
        if c_shape is not None and (len(c_shape) > 2 or (len(c_shape) >= 1 and c_shape[-1] not in (1, n_out))
                                    or (len(c_shape) == 2 and c_shape[0] not in (1, rows))):
            raise self.fail(node, f"operand C {c_name!r} has shape {list(c_shape)}; it must broadcast to the "
                                  f"output's [{rows or 'M'}, {matrix.shape[1]}]")
        bias, add_after = None, None
        if c is not None and c.size in (1, matrix.shape[1]) and (c.ndim < 2 or c.shape[0] == 1):
            bias = np.broadcast_to(beta * c.astype(np.float32).reshape(-1), (matrix.shape[1],)).copy()
        elif c_name:
            add_after = c_name
        xbar_out = f"{name}/matmul" if add_after else out
        self.ops.append(XbarOp(name, "Gemm", [x], [xbar_out], matrix.astype(np.float32), bias, None,
                               [node.name or name]))
        if add_after:   # a C that is not one bias per column: added digitally after the product
            if c is not None:
                c_in = self.add_constant(f"{name}/C", (beta * c).astype(np.float32))
            elif beta != 1.0:
                c_in = f"{name}/betaC"
                beta_name = self.add_constant(f"{name}/beta", np.array(beta, np.float32))
                self.digital_step(f"{name}/scale_C", "Mul", [self.resolve(c_name), beta_name], c_in)
            else:
                c_in = self.resolve(c_name)
            self.digital_step(f"{name}/bias", "Add", [xbar_out, c_in], out)

    def check_contracted(self, node, tensor, axis: int, size: int) -> None:
        """The run-time operand's contracted axis has the weight's size (shape inference lets a symbolic size
        pass, and onnxruntime fails only when it runs)."""
        shape = self.shape(tensor)
        if shape is None or len(shape) < 2 or shape[axis] == size:
            return
        got = "a size that varies with the batch" if shape[axis] is None else f"size {shape[axis]}"
        raise self.fail(node, f"the run-time operand {tensor!r} (shape {['N' if d is None else d for d in shape]}) "
                              f"has {got} on the axis multiplied with the weight, which needs {size}")

    def op_MatMul(self, node, name):
        left, right = self.const(node.input[0]), self.const(node.input[1])
        if right is not None and right.ndim != 2:
            self.batched_matmul(node, name, right, self.batched_weight(node, right))
        elif right is not None and right.ndim == 2:
            self.check_contracted(node, node.input[0], -1, right.shape[0])
            x = self.resolve(node.input[0])
            self.ops.append(XbarOp(name, "MatMul", [x], [node.output[0]], right.astype(np.float32), None, None,
                                   [node.name or name], positions=self.matmul_positions(node.input[0])))
        elif left is not None and left.ndim == 2:
            self.check_contracted(node, node.input[1], -2, left.shape[1])
            # Y = A X  <=>  Y^T = X^T A^T: transpose the run-time operand, multiply by A^T, transpose back.
            x = self.resolve(node.input[1])
            rank = len(self.shape(node.input[1]) or (None, None))
            if rank < 2:
                raise self.fail(node, "a constant left operand needs a run-time operand of rank >= 2")
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            xt = self.transpose(name, x, perm)
            yt = f"{name}/yT"
            self.ops.append(XbarOp(name, "MatMul", [xt], [yt], left.T.astype(np.float32).copy(), None, None,
                                   [node.name or name]))
            self.digital_step(f"{name}/transpose_out", "Transpose", [yt], node.output[0], perm=perm)

    def batched_matmul(self, node, name, w, plan) -> None:
        """x @ w for a constant w of rank 1 or > 2 (batched_weight): reshapes and transposes digitally around one
        crossbar matmul."""
        x, out = self.resolve(node.input[0]), node.output[0]
        rank = len(self.shape(node.input[0]))
        positions = self.matmul_positions(node.input[0])

        def shape_const(values):
            return self.add_constant(f"{name}/shape", np.array(values, np.int64))
        if plan[0] == "matrix":
            self.ops.append(XbarOp(name, "MatMul", [x], [out], w.reshape(w.shape[-2:]).astype(np.float32), None,
                                   None, [node.name or name], positions=positions))
            return
        if plan[0] == "vector":          # [..., K] @ [K] = [...]: a one-column matrix, its column axis dropped
            column = f"{name}/column"
            self.ops.append(XbarOp(name, "MatMul", [x], [column], w.reshape(-1, 1).astype(np.float32), None, None,
                                   [node.name or name], positions=positions))
            self.digital_step(f"{name}/reshape", "Reshape", [column, shape_const([0] * (rank - 1))], out)
            return
        wb = plan[1]
        k, n, b = w.shape[-2], w.shape[-1], int(np.prod(wb))
        # the block-diagonal matrix kept as its diagonal blocks [b, k, n] (cimc.ir: compact blocks): the tiles
        # off the diagonal hold only zeros and get no array
        matrix = w.reshape(b, k, n).astype(np.float32)
        lead = rank - 2 - len(wb)                      # the run-time operand's own leading axes (sample first)
        expanded = f"{name}/expanded"
        self.digital_step(f"{name}/expand", "Expand", [x, shape_const([1] * lead + list(wb) + [1, 1])], expanded)
        moved = f"{name}/moved"                        # [..., M, *wb, K]
        self.digital_step(f"{name}/transpose", "Transpose", [expanded], moved,
                          perm=list(range(lead)) + [rank - 2] + list(range(lead, lead + len(wb))) + [rank - 1])
        flat = f"{name}/flat"
        self.digital_step(f"{name}/reshape", "Reshape", [moved, shape_const([0] * (lead + 1) + [-1])], flat)
        product = f"{name}/product"
        inner = list(self.shape(node.input[0])[1:lead]) + [self.shape(node.input[0])[-2]]  # [x[:lead], M, B*K]
        self.ops.append(XbarOp(name, "MatMul", [flat], [product], matrix, None, None, [node.name or name],
                               positions=int(np.prod(inner)) if None not in inner else 1))
        unflat = f"{name}/unflat"
        self.digital_step(f"{name}/reshape", "Reshape", [product, shape_const([0] * (lead + 1) + list(wb) + [n])],
                          unflat)
        back = list(range(lead)) + list(range(lead + 1, lead + 1 + len(wb))) + [lead, lead + 1 + len(wb)]
        self.digital_step(f"{name}/transpose", "Transpose", [unflat], out, perm=back)

    def matmul_positions(self, tensor) -> int:
        shape = self.shape(tensor) or ()
        inner = shape[1:-1]
        return int(np.prod(inner)) if inner and None not in inner else 1

    def transpose(self, name, x, perm) -> str:
        out = f"{name}/{x}_T"
        self.digital_step(f"{name}/transpose_in", "Transpose", [x], out, perm=perm)
        return out
