"""Estimate, without cimc, the integer backend's error on each committed model: the evidence for the bound
test_coverage_models.py states. Run by hand (onnx, onnxruntime, numpy; no torch):

    .venv/bin/python tests/models/quantisation_error.py

After onnxruntime's constant folding (as cimc's front end folds), each linear op with a constant weight (Conv, ConvTranspose, Gemm, MatMul; LSTM/GRU/RNN weights W and R) gets
cimc's quantisation as fake quantisation in the ONNX graph itself: weights rounded per output column to 255 levels
(max|w| / 255 steps, the 256-level devices the test compiles for), the op's input rounded per tensor to 8 bits
(step max|x| / 127, or max / 255 when calibration saw no negative value; clipped to the range) with the range from
the same 16 calibration samples. A recurrent op's hidden state (inside the op) is not rounded. It prints, per file,
D (the test's depth: these ops, plus the time steps of a recurrent model), the relative L2 error of the
fake-quantised model against the float model on the test's 4 samples, and the test's bound 0.02 sqrt(D).
"""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from test_coverage_models import (BOUND_PER_LAYER, FILES, N_CAL, N_RUN, RECURRENT,  # noqa: E402
                                  _graph_input, _onnxruntime)

LEVELS = 255
LINEAR = {"Conv", "ConvTranspose", "Gemm", "MatMul"} | RECURRENT


def _column_axis(node: onnx.NodeProto, slot: int, w: np.ndarray) -> int:
    """The axis of `w` that indexes output columns (one scale per column)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    if node.op_type in RECURRENT:
        return 1                                   # W, R: [directions, gates x hidden, K]
    return w.ndim - 1 if slot == 1 else 0         # MatMul: B [.., K, N]; a constant A [M, K] rows


def _quantise_weights(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """Round every constant weight of a linear op in place; return the (op, activation input) pairs."""
    inits = {t.name: t for t in model.graph.initializer}
    taps = []
    for node in model.graph.node:
        if node.op_type not in LINEAR:
            continue
        slots = [1, 2] if node.op_type in RECURRENT else [s for s in (0, 1) if node.input[s] in inits]
        if not slots or (node.op_type not in RECURRENT and len(slots) == 2):
            continue
        for slot in slots:
            tensor = inits[node.input[slot]]
            w = numpy_helper.to_array(tensor).astype(np.float64)
            axis = _column_axis(node, slot, w)
            if w.ndim == 1:
                axis = 0
            other = tuple(i for i in range(w.ndim) if i != axis)
            scale = np.abs(w).max(axis=other, keepdims=True) / LEVELS
            scale[scale == 0] = 1
            tensor.CopyFrom(numpy_helper.from_array((np.rint(w / scale) * scale).astype(np.float32), tensor.name))
        activation = node.input[0] if node.op_type in RECURRENT or slots == [1] else node.input[1]
        taps.append((node, activation))
    return taps


def _ranges(model: onnx.ModelProto, path: Path, names: list[str], feeds: dict, batch) -> dict:
    """(min, max) of each tensor in `names` over the calibration samples, run in onnxruntime."""
    tapped = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in tapped.graph.output}
    tapped.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in known)
    session = ort.InferenceSession(tapped.SerializeToString(), providers=["CPUExecutionProvider"])
    name, x = next(iter(feeds.items()))
    step = batch or len(x)
    outs = [dict(zip([o.name for o in session.get_outputs()], session.run(None, {name: x[i:i + step]})))
            for i in range(0, len(x), step)]
    return {n: (min(float(o[n].min()) for o in outs), max(float(o[n].max()) for o in outs)) for n in names}


def constant_folded(path: Path) -> onnx.ModelProto:
    """onnxruntime's basic (ONNX-only) graph optimisations: constants folded, so a weight that the exporter wrote
    as Transpose(constant) is an initializer, as cimc's front end sees it; BatchNorm folded into the Conv."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "folded.onnx")
        whole = onnx.load(path).SerializeToString()               # external data read beside the file
        ort.InferenceSession(whole, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def fake_quantised(path: Path, calibration: np.ndarray, batch) -> tuple[onnx.ModelProto, int]:
    """The model with cimc's rounding written in as ONNX ops, and the number of linear ops rounded."""
    model = constant_folded(path)
    taps = _quantise_weights(model)
    name = _graph_input(model)[0]
    ranges = _ranges(model, path, sorted({a for _, a in taps}), {name: calibration}, batch)
    nodes, inits = [], []
    for i, (node, activation) in enumerate(taps):
        lo, hi = ranges[activation]
        qmax = 255 if lo >= 0 else 127
        step = max(abs(lo), abs(hi)) / qmax or 1.0
        s, q = f"fq{i}.step", f"fq{i}.out"
        inits.append(numpy_helper.from_array(np.array(step, np.float32), s))
        inits.append(numpy_helper.from_array(np.array(-qmax if lo < 0 else 0, np.float32), s + ".lo"))
        inits.append(numpy_helper.from_array(np.array(qmax, np.float32), s + ".hi"))
        nodes.append((node, [helper.make_node("Div", [activation, s], [q + ".d"]),
                             helper.make_node("Clip", [q + ".d", s + ".lo", s + ".hi"], [q + ".c"]),
                             helper.make_node("Round", [q + ".c"], [q + ".r"]),
                             helper.make_node("Mul", [q + ".r", s], [q])]))
        node.input[list(node.input).index(activation)] = q
    order = []
    rounding = {id(n): extra for n, extra in nodes}
    for node in model.graph.node:
        order.extend(rounding.get(id(node), []))
        order.append(node)
    del model.graph.node[:]
    model.graph.node.extend(order)
    model.graph.initializer.extend(inits)
    for tensor in model.graph.initializer:                         # one self-contained proto
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return model, len(taps)


def main() -> None:
    for file in FILES:
        path = HERE / file
        model = onnx.load(path, load_external_data=False)
        name, batch, shape = _graph_input(model)
        rng = np.random.default_rng(15)                            # the test's draws, in the test's order
        calibration = rng.standard_normal((N_CAL, *shape), dtype=np.float32)
        x = rng.standard_normal((N_RUN, *shape), dtype=np.float32)
        quantised, ops = fake_quantised(path, calibration, batch)
        session = ort.InferenceSession(quantised.SerializeToString(), providers=["CPUExecutionProvider"])
        step = batch or len(x)
        y = np.concatenate([session.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)])
        expected = _onnxruntime(path, name, batch, x)
        steps = shape[0] if RECURRENT & {n.op_type for n in model.graph.node} else 0
        depth = ops + steps
        relative = float(np.linalg.norm(y - expected) / np.linalg.norm(expected))
        print(f"{file:36s} D={depth:3d}  relative L2 {relative:.4f}  bound {BOUND_PER_LAYER * math.sqrt(depth):.4f}")


if __name__ == "__main__":
    main()
