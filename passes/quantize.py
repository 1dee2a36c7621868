"""Quantise: weights to signed device levels with per-column (or per-layer) scales; activations from calibration.

Weights: scale_n = float32(max_k |W[k, n]| / L) (L = device max level, 7 for 8-level devices; per layer: one max
over the whole matrix), level = clip(rint(W / scale_n), -L, L), both divisions in float64, rint rounding half to
even. An all-zero column gets scale 1.
The signed level is held by a device pair: g+ at level max(level, 0), g- at max(-level, 0) (cimc.layout).
Activations (inputs of crossbar ops): see `act_quant_from_stats`.
"""
from __future__ import annotations

import numpy as np

from cimc.errors import ConfigError
from cimc.ir import ActQuant, Graph, block_cols, per_column

NAME = "quantize"
NEEDS_CALIBRATION = True     # its scales come from the activation ranges: `count` (no data) skips it


def quantize_weights(matrix: np.ndarray, max_level: int, granularity: str) -> tuple[np.ndarray, np.ndarray]:
    """(levels, scales) of a matrix in either form (cimc.ir: K x N, or a grouped op's compact blocks, whose levels
    are compact too; the structural zeros around the blocks would only add level 0 and change no column's max)."""
    m = np.abs(matrix.astype(np.float64))
    cols = block_cols(matrix)
    absmax = m.max(axis=-2).reshape(cols) if granularity == "column" else np.full(cols, m.max())
    scales = np.where(absmax > 0, absmax / max_level, 1.0).astype(np.float32)
    levels = np.rint(matrix.astype(np.float64) / per_column(scales.astype(np.float64), matrix))
    levels = np.clip(levels, -max_level, max_level).astype(np.int16)   # up to 256-level devices: -255..255
    return levels, scales


def act_quant_from_stats(stats: dict, bits: int, rule: str, percentile: float) -> ActQuant:
    """The documented calibration rule: the tensor is unsigned if no calibration value was negative, else signed;
    range r = max |x| ("max") or the given percentile of |x| ("percentile"); scale = r / qmax with qmax = 2^bits - 1
    (unsigned) or 2^(bits-1) - 1 (signed, symmetric). A tensor that was always zero gets scale 1."""
    signed = bool(stats["min"] < 0)
    r = stats["absmax"] if rule == "max" else stats["percentile"]
    qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    return ActQuant(scale=float(np.float32(r / qmax)) if r > 0 else 1.0, signed=signed, bits=bits)


def run(graph: Graph, target, ctx) -> Graph:
    stats = ctx.activation_stats
    if stats is None:
        raise ConfigError("quantisation needs activation ranges: give calibration data "
                          "(--calibration x.npz on the command line, calibration=... in Python)")
    for op in graph.xbar_ops():
        if op.name not in stats:   # e.g. calibration data with no samples
            raise ConfigError(f"no activation range for crossbar layer {op.name!r}: the calibration data gave no "
                              "statistics (does it hold any samples?)")
        if op.weights_of is None:     # a shared-weight reader gets its owner's levels and scales (share_weights)
            op.levels, op.weight_scales = quantize_weights(op.matrix, target.max_weight_level,
                                                           target.quant.weights)
        op.input_quant = act_quant_from_stats(stats[op.name], target.input.bits, target.quant.calibration,
                                              target.quant.percentile)
    graph.share_weights()
    return graph
