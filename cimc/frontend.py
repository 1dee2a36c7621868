"""ONNX -> IR. Real-world files: opset 8 up to the newest the onnx package knows, IR-3 files whose weights are also
graph inputs, Constant nodes and constant subgraphs (folded with onnx's reference evaluator), a symbolic batch.

Only nodes on a *data* path from the graph inputs to the outputs become ops; side chains that compute a shape
(PyTorch's Shape -> Gather -> Concat -> Reshape) are resolved from onnx shape inference and dropped.
Every op is normalised to the canonical attributes of `cimc.digital` (latest-opset meaning, constant inputs turned
into attributes, defaults filled) or lowered to an `XbarOp` (see cimc.ir for the matrix layout).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from cimc import conv_transpose_geometry, onnx_checks, onnx_external
from cimc.digital import run_digital
from cimc.errors import ModelError
from cimc.ir import ConvGeometry, DigitalOp, Graph, TensorInfo, XbarOp
from cimc.node_names import layer_names

MIN_OPSET = 8
_MAX_SAMPLE_VALUES = 1 << 28   # an activation larger than this per sample (1 GiB of float32) is a broken attribute
_PROBE_BATCHES = (3, 7)  # batch sizes used to tell batch-dependent entries of a computed shape
SUPPORTED_OPS = frozenset({
    "ConvTranspose",
    "Conv", "Gemm", "MatMul", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "LeakyRelu",
    "Sigmoid", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Concat", "Flatten", "Reshape",
    "Transpose", "Pad", "Slice", "Squeeze", "Unsqueeze", "Softmax", "Identity", "Dropout", "Constant"})
# Ops allowed only where they fold away: on constants or in a shape-computing side chain.
_SHAPE_OPS = frozenset({"Shape", "Gather", "Cast", "Size", "Range", "ConstantOfShape", "ReduceProd", "Equal",
                        "Where", "Expand", "Floor", "Ceil", "Sqrt", "Pow", "Neg", "Abs", "Exp", "Log", "Min",
                        "Max", "Tile"})
# Inputs that carry run-time data; all other inputs of these ops are parameters and must be constant.
_DATA_INPUTS = {"ConvTranspose": (0,),
                "Conv": (0,), "Gemm": (0, 1, 2), "MatMul": (0, 1), "BatchNormalization": (0,), "Clip": (0,),
                "Reshape": (0,), "Pad": (0,), "Slice": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Dropout": (0,)}


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
        for node in info.model.graph.node:  # name an unsupported op before shape inference trips over it
            if node.domain not in ("", "ai.onnx"):
                raise self.fail(node, f"custom domain {node.domain!r} is not supported")
            if node.op_type not in SUPPORTED_OPS and node.op_type not in _SHAPE_OPS:
                raise self.fail(node, f"op type {node.op_type!r} is not supported by cimc "
                                      f"(supported: {', '.join(sorted(SUPPORTED_OPS))})")
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

    # -- helpers -------------------------------------------------------------------------------------------
    def tensor_value(self, tensor, what: str) -> np.ndarray:
        try:
            return numpy_helper.to_array(tensor)
        except Exception as exc:  # data longer than its dims say (the checker only catches shorter), odd types
            raise ModelError(f"{self.where}: tensor {tensor.name!r} ({what}) cannot be read as "
                             f"{onnx.TensorProto.DataType.Name(tensor.data_type)} of shape {list(tensor.dims)} "
                             f"({exc}); re-export the model") from None

    def check_finite_constants(self, g) -> None:
        """Every initializer and Constant holds finite numbers; only a Clip bound may be +-Inf (no bound)."""
        clip_bounds = {t for n in g.node if n.op_type == "Clip" for t in n.input[1:3] if t}
        other_uses = {t for n in g.node for i, t in enumerate(n.input) if n.op_type != "Clip" or i == 0}
        named = [(name, value, "initializer") for name, value in self.consts.items()]
        named += [(n.output[0], self.constant_value(n), f"output of Constant node {n.name or '<unnamed>'!r}")
                  for n in g.node if n.op_type == "Constant" and n.output]
        for name, value, what in named:
            bad = onnx_checks.first_nonfinite(value)
            if bad and not (bad.startswith(("Inf", "-Inf")) and name in clip_bounds and name not in other_uses):
                raise ModelError(f"{self.where}: tensor {name!r} ({what}) holds {bad}; cimc needs finite weights "
                                 "and constants: fix the model (or re-export it from a checkpoint without NaN/Inf)")

    def dry_run(self, inputs: list[TensorInfo]) -> None:
        """Zeros of batch 2 through the lowered ops, tracking shapes: a digital op whose attributes do not fit its
        data (a Reshape target, an axis, a pool window, a constant that broadcasts only against a batch of 1) or a
        crossbar op whose input does not have the weight's row count is refused now, naming the node, instead of
        failing mid-calibration. Ops whose inputs are too big to probe cheaply are skipped (and what they feed)."""
        shapes = {t.name: tuple(2 if d is None else d for d in t.shape) for t in inputs}
        for op in self.ops:
            node = op.source_nodes[0] if op.source_nodes else op.name
            inferred = self.shapes.get(op.outputs[0])
            if inferred and None not in inferred[1:] and np.prod(inferred[1:], dtype=float) > _MAX_SAMPLE_VALUES:
                raise ModelError(f"{self.where}: node {node!r} ({op.op_type}): its output {list(inferred)} holds "
                                 f"more than {_MAX_SAMPLE_VALUES} values per sample; check its attributes")
            given = [shapes.get(t) for t in op.inputs]
            if any(s is None for s in given) or sum(int(np.prod(s)) for s in given) > 1 << 24:
                continue
            if isinstance(op, XbarOp):
                out = self.xbar_output_shape(op, given[0], node)
            else:
                try:
                    out = run_digital(op.op_type, [np.zeros(s, np.float32) for s in given], op.attrs).shape
                except (ValueError, IndexError, TypeError, MemoryError) as exc:
                    raise ModelError(f"{self.where}: node {node!r} ({op.op_type}): "
                                     f"{'its output is too large to hold' if isinstance(exc, MemoryError) else exc}") \
                        from None
            shapes[op.outputs[0]] = tuple(out)

    def xbar_output_shape(self, op, x: tuple, node: str) -> tuple | None:
        rows = op.matrix.shape[0]
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
        return tuple(x[:-1]) + (op.matrix.shape[1],)

    def check_finite_op(self, op) -> None:
        """The lowered numbers of an op (weights and biases after folding, digital op parameters) are finite."""
        if isinstance(op, XbarOp):
            values = {"weight": op.matrix, "bias": op.bias}
        else:
            values = {k: v for k, v in op.attrs.items() if isinstance(v, (float, np.ndarray))}
        for key, value in values.items():
            if value is None:
                continue
            bad = onnx_checks.first_nonfinite(value)
            if bad is None or (op.op_type == "Clip" and key in ("min", "max") and not bad.startswith("NaN")):
                continue
            what = "lowered weight matrix" if key == "weight" else f"parameter {key!r}"
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
        return self.shapes.get(tensor)

    # -- the pass ------------------------------------------------------------------------------------------
    def run(self) -> Graph:
        g = self.model.graph
        self.fold_constants(g)
        live = self.live_nodes(g)
        names = layer_names(g.node)
        self.names.update(names)     # the names the pass generates (`NAME/bias`, ...) never take a node's name
        for index, node in enumerate(g.node):
            if index not in live:
                if node.op_type in ("Conv", "ConvTranspose"):
                    self.check_dead_conv(node)
                continue
            if node.op_type not in SUPPORTED_OPS:
                raise self.fail(node, f"op type {node.op_type!r} is not supported by cimc "
                                      f"(supported: {', '.join(sorted(SUPPORTED_OPS))})")
            getattr(self, f"op_{node.op_type}")(node, names[index])
        inputs = []
        for vi in g.input:
            if vi.name in self.consts:
                continue  # IR-3 style: an initializer listed as an input is a weight
            shape = self.shapes.get(vi.name)
            if shape is None:
                raise ModelError(f"{self.where}: graph input {vi.name!r} has no shape")
            for axis, dim in enumerate(shape[1:], start=1):
                if dim is None:
                    raise ModelError(f"{self.where}: graph input {vi.name!r} has a symbolic size at axis {axis}; "
                                     "cimc needs fixed sizes except the batch axis (re-export with a fixed size)")
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
                self.ops.append(DigitalOp(self.unique(f"{vi.name}_identity"), "Identity", [source], [vi.name]))
            outputs.append(TensorInfo(vi.name, self.shapes.get(vi.name, ())))
        for op in self.ops:
            if isinstance(op, XbarOp) and 0 in op.matrix.shape:
                raise ModelError(f"{self.where}: node {op.source_nodes[0]!r} ({op.op_type}): its weight matrix is "
                                 f"{op.matrix.shape[0]} x {op.matrix.shape[1]} (an empty dimension); nothing to "
                                 "map onto crossbar arrays")
            self.check_finite_op(op)
        self.dry_run(inputs)
        tensors = {name: TensorInfo(name, shape) for name, shape in self.shapes.items()}
        graph = Graph(inputs, outputs, self.ops, tensors)
        if not graph.xbar_ops():
            raise ModelError(f"{self.where}: no Conv, Gemm or MatMul with a constant weight; nothing to map onto "
                             "crossbar arrays")
        return graph

    def fold_constants(self, g) -> None:
        """Evaluate every node whose inputs are all constant; Shape of a fully known tensor is a constant too.
        Shape chains that depend on the symbolic batch are evaluated twice more, with the batch set to two
        different sizes (`self.batch_variants`), so a Reshape can tell its batch-dependent dimension (-1)."""
        self._fold(g, self.consts, batch=None)
        self.batch_variants = []
        for batch in _PROBE_BATCHES:
            values = dict(self.consts)
            self._fold(g, values, batch=batch)
            self.batch_variants.append({k: v for k, v in values.items() if k not in self.consts})

    def _fold(self, g, values: dict, batch: int | None) -> None:
        for node in g.node:
            if any(o in values for o in node.output if o):
                continue
            if node.op_type == "Constant":
                values[node.output[0]] = self.constant_value(node)
                continue
            if node.op_type == "Shape":
                shape = self.shape(node.input[0])
                if shape and batch is not None and shape[0] is None:
                    shape = (batch,) + tuple(shape[1:])
                if shape and None not in shape:
                    a = self.attrs(node)
                    full = np.array(shape, dtype=np.int64)
                    values[node.output[0]] = full[a.get("start", 0):a.get("end", len(full))]
                continue
            if not node.input or any(n and n not in values for n in node.input):
                continue
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                continue
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
        """Indices of the nodes reachable backwards from the graph outputs through data inputs only."""
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
            indices = _DATA_INPUTS.get(node.op_type, range(len(node.input)))
            stack.extend(node.input[i] for i in indices if i < len(node.input) and node.input[i])
        return live

    def data_inputs(self, node, indices=(0,)) -> list[str]:
        return [self.resolve(node.input[i]) for i in indices]

    def add_digital(self, node, name, op_type, attrs, inputs=None):
        inputs = self.data_inputs(node) if inputs is None else inputs
        self.check_extra_outputs(node)
        self.ops.append(DigitalOp(name, op_type, inputs, [node.output[0]], attrs, [node.name or name]))

    def check_extra_outputs(self, node):
        for extra in node.output[1:]:
            if extra and extra in self.used:
                raise self.fail(node, f"output {extra!r} (training-mode or index output) is used; cimc supports "
                                      "only the first output of this op")

    def spatial(self, node, tensor) -> tuple:
        shape = self.shape(tensor)
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
    def conv_setup(self, node):
        """A Conv's weight, bias and geometry, checked (check_conv)."""
        w = self.need_const(node, 1, "weight")
        if w is None:
            raise self.fail(node, "has no weight")
        b = self.need_const(node, 2, "bias")
        a = self.attrs(node)
        if w.ndim not in (3, 4, 5):
            raise self.fail(node, f"weight {node.input[1]!r} has shape {list(w.shape)}: a {w.ndim - 2}-D "
                                  "convolution; cimc supports 1-D, 2-D and 3-D")
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
        matrix = np.zeros((cin * int(np.prod(kernel)), m), dtype=np.float32)
        for g in range(groups):
            matrix[g * kg:(g + 1) * kg, g * ng:(g + 1) * ng] = w[g * ng:(g + 1) * ng].reshape(ng, kg).T
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
        w = self.need_const(node, 1, "weight")
        if w is None:
            raise self.fail(node, "has no weight")
        b = self.need_const(node, 2, "bias")
        a = self.attrs(node)
        if w.ndim not in (3, 4, 5):
            raise self.fail(node, f"weight {node.input[1]!r} has shape {list(w.shape)}: a {w.ndim - 2}-D "
                                  "transposed convolution; cimc supports 1-D, 2-D and 3-D")
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
        matrix = np.zeros((cin, m * size), dtype=np.float32)
        cg = cin // groups
        for g in range(groups):
            matrix[g * cg:(g + 1) * cg, g * mg * size:(g + 1) * mg * size] = w[g * cg:(g + 1) * cg].reshape(cg, -1)
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
        if len(spatial) != n:
            raise self.fail(node, f"weight {node.input[1]!r} has shape {list(w.shape)} (a {n}-D kernel) but the "
                                  f"input has {len(spatial)} spatial axes")
        if cin < 1 or mg < 1 or 0 in kernel:
            raise self.fail(node, f"weight {node.input[1]!r} has shape {list(w.shape)}: zero input channels, output "
                                  "channels or kernel size; nothing to compute")
        if "kernel_shape" in a and [int(k) for k in a["kernel_shape"]] != kernel:
            raise self.fail(node, f"attribute 'kernel_shape' {list(a['kernel_shape'])} disagrees with the weight's "
                                  f"kernel {kernel}")
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

    def check_conv(self, node, a, w, b, groups, strides, dilations, pads, spatial) -> None:
        """What onnxruntime would refuse at run time (or what would crash a later pass), named by attribute."""
        m, cg, kernel = int(w.shape[0]), int(w.shape[1]), [int(k) for k in w.shape[2:]]
        n = len(kernel)
        if len(spatial) != n:
            raise self.fail(node, f"weight {node.input[1]!r} has shape {list(w.shape)} (a {n}-D kernel) but the "
                                  f"input has {len(spatial)} spatial axes")
        if m < 1 or cg < 1 or 0 in kernel:
            raise self.fail(node, f"weight {node.input[1]!r} has shape {list(w.shape)}: zero output channels, input "
                                  "channels or kernel size; nothing to compute")
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", "") and "pads" in a:   # onnxruntime: "has both 'auto_pad' and 'pads' attributes"
            raise self.fail(node, f"attributes 'auto_pad' ({auto}) and 'pads' are both set; keep one")
        if auto in ("SAME_UPPER", "SAME_LOWER") and any(int(d) != 1 for d in dilations):
            raise self.fail(node, f"attribute 'auto_pad' {auto} with 'dilations' {list(dilations)}: onnxruntime "
                                  "does not support dilation with SAME padding; give explicit 'pads' instead")
        if "kernel_shape" in a and [int(k) for k in a["kernel_shape"]] != kernel:
            raise self.fail(node, f"attribute 'kernel_shape' {list(a['kernel_shape'])} disagrees with the weight's "
                                  f"kernel {kernel}")
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
        if add_after:
            if c is not None:
                attrs = {"constant": (beta * c).astype(np.float32), "constant_index": 1}
                self.ops.append(DigitalOp(self.unique(f"{name}/bias"), "Add", [xbar_out], [out], attrs))
            else:
                if beta != 1.0:
                    raise self.fail(node, "a run-time C operand with beta != 1 is not supported")
                self.ops.append(DigitalOp(self.unique(f"{name}/bias"), "Add", [xbar_out, self.resolve(c_name)],
                                          [out], {"constant": None, "constant_index": 1}))

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
        if right is not None and right.ndim == 2:
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
            self.ops.append(DigitalOp(self.unique(f"{name}/transpose_out"), "Transpose", [yt], [node.output[0]],
                                      {"perm": perm}))
        elif left is None and right is None:
            raise self.fail(node, "both operands are computed at run time; only a MatMul with a constant 2-D "
                                  "operand can be mapped onto crossbar arrays")
        else:
            raise self.fail(node, "the constant operand must be 2-D")

    def matmul_positions(self, tensor) -> int:
        shape = self.shape(tensor) or ()
        inner = shape[1:-1]
        return int(np.prod(inner)) if inner and None not in inner else 1

    def transpose(self, name, x, perm) -> str:
        out = f"{name}/{x}_T"
        self.ops.append(DigitalOp(self.unique(f"{name}/transpose_in"), "Transpose", [x], [out], {"perm": perm}))
        return out

    # -- digital ops ---------------------------------------------------------------------------------------
    def op_Identity(self, node, name):
        self.alias[node.output[0]] = self.resolve(node.input[0])

    def op_Dropout(self, node, name):
        self.check_extra_outputs(node)
        self.alias[node.output[0]] = self.resolve(node.input[0])

    def op_Relu(self, node, name):
        self.add_digital(node, name, "Relu", {})

    def op_Sigmoid(self, node, name):
        self.add_digital(node, name, "Sigmoid", {})

    def op_LeakyRelu(self, node, name):
        self.add_digital(node, name, "LeakyRelu", {"alpha": float(self.attrs(node).get("alpha", 0.01))})

    def op_Clip(self, node, name):
        if self.opset < 11:
            a = self.attrs(node)
            lo, hi = a.get("min"), a.get("max")
        else:
            lo, hi = self.need_const(node, 1, "min"), self.need_const(node, 2, "max")
            for i, bound in ((1, lo), (2, hi)):
                if bound is not None and bound.size != 1:   # onnxruntime: "min should be a scalar"
                    raise self.fail(node, f"input {i} ({'min' if i == 1 else 'max'}, tensor {node.input[i]!r}) "
                                          f"has shape {list(bound.shape)}; a Clip bound must be a scalar")
        lo, hi = (None if b is None else float(np.asarray(b).reshape(-1)[0]) for b in (lo, hi))
        if (lo is not None and lo == np.inf) or (hi is not None and hi == -np.inf):
            raise self.fail(node, f"Clip bounds min={lo}, max={hi} make every output infinite; re-export the model")
        # an infinite bound on its own side is no bound (and a manifest holds only finite numbers)
        self.add_digital(node, name, "Clip", {"min": None if lo is None or lo == -np.inf else lo,
                                              "max": None if hi is None or hi == np.inf else hi})

    def pool_attrs(self, node, with_count_pad: bool) -> dict:
        a = self.attrs(node)
        kernel = list(a["kernel_shape"])
        n = len(kernel)
        strides, dilations = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER") and any(int(d) != 1 for d in dilations):
            # the ONNX spec pads for the dilated window, onnxruntime for the undilated one: their outputs differ
            raise self.fail(node, f"attribute 'auto_pad' {auto} with 'dilations' {dilations}: onnxruntime and the "
                                  "ONNX specification disagree on the padding; give explicit 'pads' instead")
        pads = self.window_pads(node, a, kernel, strides, dilations, self.spatial(node, node.input[0]))
        if len(pads) == 2 * n and any(int(p) >= int(k) for p, k in zip(pads, kernel + kernel)):
            # onnxruntime: "Pad should be smaller than kernel" (a window of padding only)
            raise self.fail(node, f"attribute 'pads' {pads} has a pad as large as the kernel {kernel}; each pad "
                                  "must be smaller than the kernel along its axis")
        attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dilations,
                 "ceil_mode": int(a.get("ceil_mode", 0))}
        if with_count_pad:
            attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
        return attrs

    def op_MaxPool(self, node, name):
        self.add_digital(node, name, "MaxPool", self.pool_attrs(node, False))

    def op_AveragePool(self, node, name):
        self.add_digital(node, name, "AveragePool", self.pool_attrs(node, True))

    def op_GlobalAveragePool(self, node, name):
        self.add_digital(node, name, "GlobalAveragePool", {})

    def op_GlobalMaxPool(self, node, name):
        self.add_digital(node, name, "GlobalMaxPool", {})

    def op_BatchNormalization(self, node, name):
        a = self.attrs(node)
        if self.opset < 9 and int(a.get("spatial", 1)) != 1:
            raise self.fail(node, "spatial=0 (per-activation statistics) is not supported")
        if int(a.get("training_mode", 0)):
            raise self.fail(node, "training_mode=1; export the model in eval mode")
        params = [self.need_const(node, i, what).astype(np.float32)
                  for i, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))]
        channels = (self.shape(node.input[0]) or (None, None))[1]
        for i, (what, p) in enumerate(zip(("scale", "bias", "mean", "var"), params), start=1):
            if p.shape != (channels,):   # shape inference does not check them; onnxruntime refuses at run time
                raise self.fail(node, f"input {i} ({what}, tensor {node.input[i]!r}) has shape {list(p.shape)}; "
                                      f"it needs one value per channel: [{channels}]")
        self.add_digital(node, name, "BatchNormalization",
                         dict(zip(("scale", "bias", "mean", "var"), params), epsilon=float(a.get("epsilon", 1e-5))))

    def binary(self, node, name):
        c0, c1 = self.const(node.input[0]), self.const(node.input[1])
        if c0 is None and c1 is None:
            self.add_digital(node, name, node.op_type, {"constant": None, "constant_index": 1},
                             self.data_inputs(node, (0, 1)))
        else:
            index = 0 if c0 is not None else 1
            value = (c0 if index == 0 else c1).astype(np.float32)
            self.add_digital(node, name, node.op_type, {"constant": value, "constant_index": index},
                             self.data_inputs(node, (1 - index,)))

    op_Add = op_Sub = op_Mul = op_Div = binary

    def op_Concat(self, node, name):
        for i, t in enumerate(node.input):
            if t in self.consts:
                raise self.fail(node, f"input {i} ({t!r}) is a constant; cimc concatenates run-time tensors only")
        self.add_digital(node, name, "Concat", {"axis": int(self.attrs(node)["axis"])},
                         self.data_inputs(node, range(len(node.input))))

    def op_Flatten(self, node, name):
        self.add_digital(node, name, "Flatten", {"axis": int(self.attrs(node).get("axis", 1))})

    def op_Reshape(self, node, name):
        shape = self.const(node.input[1])
        if shape is None:
            shape = self.batch_dependent_shape(node)
        self.add_digital(node, name, "Reshape", {"shape": [int(d) for d in shape],
                                                 "allowzero": int(self.attrs(node).get("allowzero", 0))})

    def batch_dependent_shape(self, node) -> list[int]:
        """A target shape computed at run time (e.g. from Shape of the batch): the entries that change with the
        batch size become -1; else the shape inferred for the output."""
        probes = [v.get(node.input[1]) for v in self.batch_variants]
        in_shape = self.shape(node.input[0]) or ()
        if all(p is not None for p in probes) and len({p.shape for p in probes}) == 1:
            varying = probes[0] != probes[1]
            if varying.sum() == 1:
                axis = int(np.argmax(varying))
                shape = [int(d) for d in probes[0]]
                # the batch entry: 0 ("copy the input's dimension") where it sits on the input's batch axis and
                # allowzero is off, else -1 ("infer") if no other entry already is -1
                if axis == 0 and in_shape and in_shape[0] is None and not self.attrs(node).get("allowzero", 0):
                    shape[0] = 0
                elif -1 not in shape:
                    shape[axis] = -1
                else:
                    raise self.fail(node, f"target shape {list(probes[0])} has a batch-dependent entry and a -1")
                return shape
        out = self.shape(node.output[0])
        if out is None or sum(d is None for d in out) > 1:
            raise self.fail(node, "its target shape is computed at run time and could not be resolved to at "
                                  "most one batch-dependent dimension")
        return [-1 if d is None else d for d in out]

    def op_Transpose(self, node, name):
        perm = self.attrs(node).get("perm")
        self.add_digital(node, name, "Transpose", {"perm": None if perm is None else list(perm)})

    def op_Pad(self, node, name):
        a = self.attrs(node)
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("constant", "reflect", "edge"):
            raise self.fail(node, f"pad mode {mode!r} is not supported (constant, reflect, edge)")
        if self.opset < 11:
            pads, value = list(a["pads"]), float(a.get("value", 0.0))
        else:
            pads = [int(p) for p in self.need_const(node, 1, "pads")]
            v = self.need_const(node, 2, "constant_value")
            if v is not None and v.size > 1:   # onnxruntime: "Value tensor should be a 1D tensor of size 1"
                raise self.fail(node, f"input 2 (constant_value, tensor {node.input[2]!r}) has shape "
                                      f"{list(v.shape)}; the pad value must be a single number")
            value = 0.0 if v is None or v.size == 0 else float(v.reshape(-1)[0])
            axes = self.need_const(node, 3, "axes")
            if axes is not None:
                rank = len(self.shape(node.input[0]))
                full = [0] * (2 * rank)
                for i, ax in enumerate(int(x) % rank for x in axes):
                    full[ax], full[rank + ax] = pads[i], pads[len(axes) + i]
                pads = full
        self.add_digital(node, name, "Pad", {"pads": pads, "mode": mode, "value": value})

    def op_Slice(self, node, name):
        if self.opset < 10:
            a = self.attrs(node)
            starts, ends = list(a["starts"]), list(a["ends"])
            axes, steps = list(a.get("axes", range(len(starts)))), [1] * len(starts)
        else:
            starts = [int(v) for v in self.need_const(node, 1, "starts")]
            ends = [int(v) for v in self.need_const(node, 2, "ends")]
            axes = self.need_const(node, 3, "axes")
            steps = self.need_const(node, 4, "steps")
            axes = list(range(len(starts))) if axes is None else [int(v) for v in axes]
            steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
        self.add_digital(node, name, "Slice", {"starts": starts, "ends": ends, "axes": axes, "steps": steps})

    def axes_param(self, node, required: bool):
        axes = self.attrs(node).get("axes") if self.opset < 13 else self.need_const(node, 1, "axes")
        if axes is None and required:
            raise self.fail(node, "needs axes")
        return None if axes is None else [int(v) for v in axes]

    def op_Squeeze(self, node, name):
        self.add_digital(node, name, "Squeeze", {"axes": self.axes_param(node, False)})

    def op_Unsqueeze(self, node, name):
        self.add_digital(node, name, "Unsqueeze", {"axes": self.axes_param(node, True)})

    def op_Softmax(self, node, name):
        legacy = self.opset < 13
        axis = int(self.attrs(node).get("axis", 1 if legacy else -1))
        self.add_digital(node, name, "Softmax", {"axis": axis, "legacy": legacy})

    def op_Constant(self, node, name):  # folded in fold_constants; never on a data path
        raise self.fail(node, "a Constant on a data path")
