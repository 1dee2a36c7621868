"""What test_coverage_models.py compares cimc with, computed without cimc: onnxruntime on the model file, and
onnxruntime on the model with cimc's documented rounding written into the graph as ONNX ops ("fake quantisation").

The rounding (docs/design.md, Quantisation): after onnxruntime's basic constant folding (a weight the exporter
wrote as Transpose(constant) becomes an initializer, BatchNorm folds into the Conv before it, as cimc's front end
and canonicalisation do), every linear op with a constant weight (Conv, ConvTranspose, Gemm, MatMul; the W and R
of LSTM/GRU/RNN) has
- its weight rounded per output column to `levels` steps of max|w| / levels;
- its input rounded per tensor to 8 bits: step max|x| / 127 (or / 255 where calibration saw no negative value),
  clipped to that range, the range from the calibration samples (cimc's default "max" rule).
Not modelled: a recurrent op's hidden state is rounded by cimc at every step (it is the input of R) but stays
float here, inside the op.

Run as a script to print, per committed model, the simulated integer error that the test's bound rests on:

    .venv/bin/python tests/coverage_reference.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

RECURRENT = {"LSTM", "GRU", "RNN"}
LINEAR = {"Conv", "ConvTranspose", "Gemm", "MatMul"} | RECURRENT
SYMBOLIC_DIM = 8          # a symbolic axis after the batch (the BERT-like encoder's sequence): 8 tokens


def graph_input(model: onnx.ModelProto) -> tuple[str, int | None, list[int]]:
    """(name, fixed batch or None, one sample's shape) of the model's only input."""
    (inp,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dims = inp.type.tensor_type.shape.dim
    return inp.name, dims[0].dim_value or None, [d.dim_value or SYMBOLIC_DIM for d in dims[1:]]


def onnxruntime_outputs(model: Path | onnx.ModelProto, name: str, batch: int | None, x: np.ndarray,
                        optimise: bool = True) -> np.ndarray:
    """The first output, run in chunks of a fixed batch (a path: external data read beside the file).
    `optimise=False`: no graph optimisation, so other float32 kernels and summation orders."""
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    step = batch or len(x)
    return np.concatenate([session.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)])


def relative_error(y: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(y - expected) / np.linalg.norm(expected))


def _constant_folded(path: Path) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC      # ONNX ops only
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "folded.onnx")
        ort.InferenceSession(onnx.load(path).SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def _column_axis(node: onnx.NodeProto, slot: int, ndim: int) -> int:
    """The axis of the weight in input `slot` that indexes output columns (one scale per column)."""
    if ndim == 1 or node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose" or node.op_type in RECURRENT:     # [Cin, Cout/g, k..]; [dirs, gates*H, K]
        return 1
    if node.op_type == "Gemm":
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1 if slot == 1 else 0                                 # MatMul: B [.., K, N]; a constant A [M, K]


def _round_weights(model: onnx.ModelProto, levels: int) -> list[tuple[onnx.NodeProto, str]]:
    """Round every constant weight of a linear op in place; return (op, its activation input) per op."""
    inits = {t.name: t for t in model.graph.initializer}
    taps = []
    for node in model.graph.node:
        if node.op_type not in LINEAR:
            continue
        if node.op_type in RECURRENT:
            slots, activation = [1, 2], node.input[0]
        else:
            slots = [s for s in (0, 1) if node.input[s] in inits]
            if len(slots) != 1:                   # activation x activation (attention): digital
                continue
            activation = node.input[1 - slots[0]]
        for slot in slots:
            if node.input[slot] not in inits:
                continue
            tensor = inits[node.input[slot]]
            w = numpy_helper.to_array(tensor).astype(np.float64)
            axis = _column_axis(node, slot, w.ndim)
            scale = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis), keepdims=True) / levels
            scale[scale == 0] = 1
            tensor.CopyFrom(numpy_helper.from_array((np.rint(w / scale) * scale).astype(np.float32), tensor.name))
        taps.append((node, activation))
    return taps


def _ranges(model: onnx.ModelProto, names: list[str], name: str, batch: int | None, x: np.ndarray) -> dict:
    """(min, max) of each tensor in `names` over the samples `x`."""
    tapped = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in tapped.graph.output}
    tapped.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in known)
    session = ort.InferenceSession(tapped.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    step = batch or len(x)
    runs = [dict(zip(outputs, session.run(None, {name: x[i:i + step]}))) for i in range(0, len(x), step)]
    return {n: (min(float(r[n].min()) for r in runs), max(float(r[n].max()) for r in runs)) for n in names}


def fake_quantised(path: Path, calibration: np.ndarray, levels: int = 255,
                   bits: int = 8) -> tuple[onnx.ModelProto, int]:
    """The model with the rounding written in, and the number of linear ops rounded."""
    model = _constant_folded(path)
    name, batch, _ = graph_input(model)
    taps = _round_weights(model, levels)
    ranges = _ranges(model, sorted({a for _, a in taps}), name, batch, calibration)
    rounding = {}
    for i, (node, activation) in enumerate(taps):
        lo, hi = ranges[activation]
        qmax = (1 << bits) - 1 if lo >= 0 else (1 << (bits - 1)) - 1
        p = f"fake_quant{i}"
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(max(-lo, hi) / qmax or 1.0, np.float32), p + ".step"),
            numpy_helper.from_array(np.array(0 if lo >= 0 else -qmax, np.float32), p + ".qmin"),
            numpy_helper.from_array(np.array(qmax, np.float32), p + ".qmax")])
        rounding[id(node)] = [helper.make_node("Div", [activation, p + ".step"], [p + ".x"]),
                              helper.make_node("Clip", [p + ".x", p + ".qmin", p + ".qmax"], [p + ".clipped"]),
                              helper.make_node("Round", [p + ".clipped"], [p + ".codes"]),
                              helper.make_node("Mul", [p + ".codes", p + ".step"], [p])]
        node.input[list(node.input).index(activation)] = p
    nodes = [n for node in model.graph.node for n in rounding.get(id(node), []) + [node]]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, len(taps)


def simulated_error(path: Path, calibration: np.ndarray, x: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    """(relative L2 error of the fake-quantised model against `expected` on `x`, number of linear ops)."""
    model, ops = fake_quantised(path, calibration)
    name, batch, _ = graph_input(model)
    return relative_error(onnxruntime_outputs(model, name, batch, x), expected), ops


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from test_coverage_models import FILES, MODELS, draws
    for file in FILES:
        path = MODELS / file
        name, batch, shape = graph_input(onnx.load(path, load_external_data=False))
        calibration, x = draws(shape)
        error, ops = simulated_error(path, calibration, x, onnxruntime_outputs(path, name, batch, x))
        print(f"{file:36s} linear ops {ops:3d}  simulated integer error {error:.4f}")
