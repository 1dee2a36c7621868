"""Small LSTM/GRU/RNN models built with onnx.helper (random seeded weights) for tests/test_recurrent_lowering.py."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent(kind: str = "LSTM", direction: str = "forward", layout: int = 0, steps: int = 5, inputs: int = 6,
              hidden: int = 4, initial: str | None = None, lbr: int = 0, peepholes: bool = False,
              outputs=("Y", "Y_h", "Y_c"), batch=None, seed: int = 0, constant_r: bool = True,
              opset: int = 14, seq_lens=False, head: bool = False, **attrs) -> onnx.ModelProto:
    """One recurrent node (and with `head` a MatMul of Y_h with a constant, output "head"). initial: None, "input"
    (initial_h/c graph inputs) or "const"; outputs: the node outputs made graph outputs (Y_c only for an LSTM);
    seq_lens: True (every sample's length T) or the lengths, a constant input (needs a fixed batch)."""
    rng = np.random.default_rng(seed)
    d = 2 if direction == "bidirectional" else 1
    g = GATES[kind]
    n = batch if batch is not None else "N"
    x_shape = [steps, n, inputs] if layout == 0 else [n, steps, inputs]
    state_shape = [d, n, hidden] if layout == 0 else [n, d, hidden]
    inits = [numpy_helper.from_array((rng.standard_normal((d, g * hidden, inputs)) * 0.5).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((d, 2 * g * hidden)) * 0.3).astype(np.float32), "B")]
    r = (rng.standard_normal((d, g * hidden, hidden)) * 0.5).astype(np.float32)
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if constant_r:
        inits.append(numpy_helper.from_array(r, "R"))
    else:
        graph_inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, list(r.shape)))
    names = ["X", "W", "R", "B", "", "", ""]
    if seq_lens:
        lens = np.full(batch, steps, np.int32) if seq_lens is True else np.array(seq_lens, np.int32)
        inits.append(numpy_helper.from_array(lens, "lens"))
        names[4] = "lens"
    states = ["h"] + (["c"] if kind == "LSTM" else [])
    for i, s in enumerate(states):
        if initial == "input":
            graph_inputs.append(helper.make_tensor_value_info(f"{s}0", TensorProto.FLOAT, state_shape))
        elif initial == "const":
            inits.append(numpy_helper.from_array(rng.standard_normal([d, batch, hidden] if layout == 0 else
                                                                     [batch, d, hidden]).astype(np.float32), f"{s}0"))
        if initial:
            names[5 + i] = f"{s}0"
    if peepholes:
        inits.append(numpy_helper.from_array((rng.standard_normal((d, 3 * hidden)) * 0.5).astype(np.float32), "P"))
        names.append("P")
    while names and not names[-1]:
        names.pop()
    n_out = 3 if kind == "LSTM" else 2
    node_outputs = [o if o in outputs else "" for o in ["Y", "Y_h", "Y_c"][:n_out]]
    while node_outputs and not node_outputs[-1]:
        node_outputs.pop()
    if kind == "GRU":
        attrs["linear_before_reset"] = lbr
    node = helper.make_node(kind, names, node_outputs, name=f"{kind.lower()}0", hidden_size=hidden,
                            direction=direction, **({"layout": layout} if layout else {}), **attrs)
    y_shape = [steps, d, n, hidden] if layout == 0 else [n, steps, d, hidden]
    graph_outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, y_shape if o == "Y" else state_shape)
                     for o in node_outputs if o]
    nodes = [node]
    if head:
        inits.append(numpy_helper.from_array(rng.standard_normal((hidden, 3)).astype(np.float32), "W_head"))
        nodes.append(helper.make_node("MatMul", ["Y_h", "W_head"], ["head"], name="head"))
        graph_outputs.append(helper.make_tensor_value_info("head", TensorProto.FLOAT, state_shape[:2] + [3]))
    graph = helper.make_graph(nodes, kind.lower(), graph_inputs, graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(model: onnx.ModelProto, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        shape = [batch if not d.dim_value else d.dim_value for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def as_layout0(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same computation with the recurrent node in layout 0, which onnxruntime runs (its CPU kernels refuse
    layout 1): transposes around the node, the graph's inputs and outputs unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    node = g.node[0]
    if not any(a.name == "layout" and a.i == 1 for a in node.attribute):
        return out
    attrs = [a for a in node.attribute if a.name != "layout"]
    del node.attribute[:]
    node.attribute.extend(attrs)
    consts = {i.name: i for i in g.initializer}
    pre, post = [], []
    for i, t in enumerate(node.input):
        if i in (0, 5, 6) and t:
            if t in consts:           # a constant state [N, D, H] becomes [D, N, H]
                value = numpy_helper.to_array(consts[t]).transpose(1, 0, 2).copy()
                consts[t].CopyFrom(numpy_helper.from_array(value, t))
                continue
            pre.append(helper.make_node("Transpose", [t], [f"{t}_l0"], perm=[1, 0, 2]))
            node.input[i] = f"{t}_l0"
    for i, t in enumerate(node.output):
        if t:
            post.append(helper.make_node("Transpose", [f"{t}_l0"], [t], perm=[2, 0, 1, 3] if i == 0 else [1, 0, 2]))
            node.output[i] = f"{t}_l0"
    nodes = pre + [node] + post
    del g.node[:]
    g.node.extend(nodes)
    return out


def classifier(kind: str = "LSTM", steps: int = 5, inputs: int = 6, hidden: int = 4, classes: int = 3,
               seed: int = 0) -> onnx.ModelProto:
    """What torch.onnx.export writes for a batch_first recurrent classifier: X [N, T, I] (N symbolic) ->
    Transpose -> the node in layout 0 -> Y_h [1, N, H] -> Squeeze -> Gemm (logits [N, classes])."""
    rng = np.random.default_rng(seed)
    g = GATES[kind]
    inits = [numpy_helper.from_array((rng.standard_normal((1, g * hidden, inputs)) * 0.5).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((1, g * hidden, hidden)) * 0.5).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((1, 2 * g * hidden)) * 0.3).astype(np.float32), "B"),
             numpy_helper.from_array((rng.standard_normal((classes, hidden))).astype(np.float32), "fc.weight"),
             numpy_helper.from_array((rng.standard_normal(classes) * 0.1).astype(np.float32), "fc.bias"),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]
    outs = ["Y", "Y_h"] + (["Y_c"] if kind == "LSTM" else [])
    extra = {"linear_before_reset": 1} if kind == "GRU" else {}
    nodes = [helper.make_node("Transpose", ["input"], ["x_tnf"], name="/Transpose", perm=[1, 0, 2]),
             helper.make_node(kind, ["x_tnf", "W", "R", "B"], outs, name=f"/{kind.lower()}/{kind}",
                              hidden_size=hidden, **extra),
             helper.make_node("Squeeze", ["Y_h", "axes"], ["h_last"], name="/Squeeze"),
             helper.make_node("Gemm", ["h_last", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm", transB=1)]
    graph = helper.make_graph(nodes, "classifier",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", steps, inputs])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
