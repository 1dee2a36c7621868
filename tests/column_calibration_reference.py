"""The column calibration as it ran until 2026-12-02, kept as the slow reference of cimc.column_calibration's
calibrate_graph: for every calibrated layer, the whole chip graph and the whole ideal reference graph re-run over
all data (O(L^2) network runs), the layer fitted and folded. The one-pass calibrate_graph must give the same folded
scales, biases and per-layer rows bit for bit."""
from __future__ import annotations

import copy

import numpy as np

from cimc.column_calibration import ColumnFit, calibrated_layers
from cimc.graph_run import run_graph


def _columns(y, op):
    if op.conv is None:
        return y.reshape(-1, y.shape[-1])
    return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])


def fit_layer(graph, op, chip, ideal, feeds, batch, reference):
    n = len(next(iter(feeds.values())))
    chip_out, ideal_out = [], []
    for start in range(0, n, batch):
        part = {k: v[start:start + batch] for k, v in feeds.items()}
        out = run_graph(graph, part, chip, keep={op.inputs[0], op.outputs[0]}, samples=start)
        chip_out.append(_columns(out[op.outputs[0]], op))
        ideal_out.append(_columns(run_graph(reference, part, ideal, keep={op.outputs[0]})[op.outputs[0]], op))
    fit = ColumnFit(chip_out[0].shape[1])
    fit.add(np.concatenate(chip_out), np.concatenate(ideal_out))
    return fit.solve()


def fold(op, a, b):
    scales = op.weight_scales.astype(np.float64)
    gain = np.repeat(a, len(scales) // len(a)) if len(scales) != len(a) else a
    bias = np.zeros(len(a)) if op.bias is None else op.bias.astype(np.float64)
    op.weight_scales = (scales * gain).astype(np.float32)
    op.bias = (a * bias + b).astype(np.float32)


def calibrate_graph_slow(graph, chip, ideal, feeds, batch=100):
    rows = []
    reference = copy.deepcopy(graph)
    for op in calibrated_layers(graph):
        a, b, flat = fit_layer(graph, op, chip, ideal, feeds, batch, reference)
        scales = op.weight_scales.astype(np.float64)
        if len(scales) != len(a):
            scales = scales.reshape(len(a), -1)[:, 0]
        unit = float(np.float32(op.input_quant.scale)) * scales
        bias = np.zeros(len(a)) if op.bias is None else op.bias.astype(np.float64)
        b_acc = ((a - 1) * bias + b) / unit
        fold(op, a, b)
        rows.append({"layer": op.name, "columns": len(a), "mean_abs_gain_error": float(np.abs(a - 1).mean()),
                     "mean_abs_offset_acc": float(np.abs(b_acc).mean()), "flat_columns": flat,
                     "gain": [float(v) for v in a], "offset_acc": [float(v) for v in b_acc]})
    return rows
