"""`--layers` with wire or access resistance: the error of the fast path against the exact circuit, per layer.

The backend reads every array through its effective conductances T (cimc.targets.ir_drop: I = v . T, computed once
at bind). Here a sample of the layer's real reads is also solved exactly (nodal analysis of the whole array,
`read_currents`) and the two sets of line currents compared: rel = sqrt(sum (I_fast - I_exact)^2 / sum I_exact^2).
For a 1T1R array the two agree to rounding (superposition is exact there); for a passive 0T1R array the error is
that of ignoring the sneak paths through the rows a read leaves floating.

The sample: the first SAMPLE_VECTORS input vectors a layer sees (rows of its im2col operand, spread evenly over the
first batch's), all of their bit-planes (or the one analog read), on copy 0 (or the forced copy), through at most
SAMPLE_TILES of its tiles. Row voltages are ideal (V_read per input bit; the driver gains are left out of both sides).
Deterministic: no random draw."""
from __future__ import annotations

import numpy as np

from cimc.backends.bit_planes import bit_planes
from cimc.layout import tile_cells
from cimc.targets.ir_drop import read_currents
from cimc.weight_encoding import encoded, tile_planes

SAMPLE_VECTORS = 4
SAMPLE_TILES = 4


def measure(backend, plan, op, x: np.ndarray) -> None:
    """Add the fast path's and the exact solver's line currents of a sample of reads of codes x [m, K] to the
    layer's statistics (ir_sq_err, ir_sq_ref, ir_vectors)."""
    st = backend.stats[plan.name]
    left = SAMPLE_VECTORS - st["ir_vectors"]
    if left <= 0 or len(x) == 0:
        return
    xs = x[np.unique(np.linspace(0, len(x) - 1, min(left, len(x))).astype(np.int64))].astype(np.float64)
    st["ir_vectors"] += len(xs)
    target, chip = backend.target, backend.chip
    spec, n = target.array, target.nonideal
    v_read = target.input.read_voltage_v
    if plan.analog:
        drives = (xs / max(abs(plan.qmin), plan.qmax))[None]           # [1, vectors, K]
    else:
        drives = bit_planes(xs.astype(np.float32), plan.bits, plan.signed).astype(np.float64)   # [planes, vectors, K]
    drives = drives.reshape(-1, xs.shape[1]) * v_read
    owner = backend.graph.array_owner(op)
    c = 0 if backend.copy is None else backend.copy % plan.replicas
    for tile in owner.tiles[:SAMPLE_TILES]:
        p = tile.placements[c]
        u = drives[:, tile.row_start:tile.row_start + tile.row_count]
        volts = np.zeros((len(u), spec.rows))
        if encoded(target):
            plus, minus, cols = _encoded_lines(tile, p, target)
        else:
            (pr, pc), (mr, mc) = tile_cells(tile, p, spec)
            plus, minus = pr[:, 0], (mr[:, 0] if spec.differential == "rows" else None)
            cols = np.unique(np.concatenate([pc[0], mc[0]]))
        volts[:, plus] = u
        if minus is not None:
            volts[:, minus] = -u
        exact = read_currents(chip.conductance_us[p.array], volts, n.wire_ohm, n.access_ohm, n.cell)[:, cols]
        fast = volts @ chip.read_us[p.array][:, cols]
        st["ir_sq_err"] += float(np.square(fast - exact).sum())
        st["ir_sq_ref"] += float(np.square(exact).sum())


def _encoded_lines(tile, placement, target):
    """Another encoding's (cimc.weight_encoding) drive of a tile: (rows driven at +u, rows at -u or None, the
    physical columns of its lines): +v/-v row blocks for slices on "rows" pairs, else one block of rows."""
    planes = tile_planes(tile, placement, target)
    every = np.arange(target.array.rows)
    pairs = target.array.differential == "rows" and target.weights.encoding != "offset"
    cols = np.unique(np.concatenate([np.arange(c.start, c.stop, c.step) for _, c in planes]))
    return every[planes[0][0]], (every[planes[1][0]] if pairs else None), cols
