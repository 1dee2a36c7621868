"""The crossbar backend's read plans (cimc.backends.read_plan), built once at bind from the chip instance: per
layer and row tile, each copy's conductance differences and device lines in step units (row drivers' gains
applied), their ADC instances, the offset reference lines, and global drift compensation's alphas. Plans of
layers that read the same devices (shared weights) share their row tiles."""
from __future__ import annotations

import numpy as np

from cimc.backends.bit_planes import FLOAT32_EXACT, bit_planes, plane_weights
from cimc.backends.read_plan import ReadPlan, RowTile
from cimc.backends.slice_lines import reference_index, slice_adc_lines, slice_lines
from cimc.backends.table_reader import channel_tiles
from cimc.ir import put_block_slice
from cimc.layout import placement_rows, read_levels, tile_slices
from cimc.targets.adc import adc_range
from cimc.weight_encoding import combine, encoded, tile_planes


class PlanBuilder:
    """`PlanBuilder(graph, arrays, chip, calibrating=False)`: builds the plans of `graph`'s crossbar ops on `chip`
    (cimc.backends.chip.Chip, programmed from the levels `arrays`). calibrating: the ADC calibration's reads (no
    diagnostics levels; device lines even for a lossless ADC)."""

    def __init__(self, graph, arrays, chip, calibrating: bool = False):
        self.graph, self.arrays, self.chip, self.calibrating = graph, arrays, chip, calibrating
        self.target = chip.target
        self._cells_plans: dict = {}      # (owner, dtype) -> its first plan: the reads of shared arrays share cells

    def build(self, op) -> ReadPlan:
        """The read plan of crossbar op `op` (a shared-weight reader's: its owner's devices)."""
        target = self.target
        spec = target.array
        q = op.input_quant
        cells = self.graph.array_owner(op)      # a shared-weight reader reads its owner's tiles and placements
        bits, signed = q.bits, q.signed
        analog = target.input.encoding == "analog"
        pair_rows = spec.differential == "rows" and target.weights.encoding != "offset"     # +v/-v difference lines
        bipolar = pair_rows or (analog and signed)
        qmax = max(abs(q.qmin), q.qmax)
        bound = op.rows * qmax * target.max_weight_level
        dtype = np.float32 if bound < FLOAT32_EXACT else np.float64
        _, top = adc_range(target.adc.bits, bipolar)
        code_bound = top * (qmax if analog else (1 << bits)) * max(1, -(-op.rows // spec.inputs_per_tile))
        if encoded(target):     # slices shifted and added: up to sum_s L^s times one line's codes
            code_bound *= sum(target.device.levels ** s for s in range(target.weights.slices))
        code_dtype = np.float32 if code_bound < FLOAT32_EXACT else np.float64
        # the levels for diagnostics (`_observe`), which the ADC calibration's reads never run
        exact = None if self.calibrating else read_levels(cells, self.arrays, target, 0).astype(np.float64)
        by_start: dict[int, list] = {}
        for tile in cells.tiles:
            by_start.setdefault(tile.row_start, []).append(tile)
        blocks = []
        # K x N, or a grouped op's compact blocks (cimc.ir): off-block devices are read through the row tiles only
        effective = [np.zeros(cells.matrix.shape, dtype) for _ in range(cells.replicas)]
        reference = self.chip.g_units_reference        # global drift compensation: sums of |g+ - g-| per copy
        sums = np.zeros((cells.replicas, 2)) if reference is not None else None
        for r0 in sorted(by_start):
            tiles = sorted(by_start[r0], key=lambda t: t.col_start)
            rc = tiles[0].row_count
            cols = np.concatenate([np.arange(t.col_start, t.col_start + t.col_count) for t in tiles])
            block = RowTile(r0, r0 + rc, cols)
            contiguous = len(cols) and np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols)))
            block.index = slice(int(cols[0]), int(cols[0]) + len(cols)) if contiguous else cols
            if target.weights.reference_column:     # each tile's reference line, subtracted after the ADC
                block.reference = reference_index(tiles)
            for c in range(cells.replicas):
                if encoded(target):     # each plane's line read on its own, combined digitally after the ADC
                    planes = [_driven_planes(self.chip.g_units, t, t.placements[c], self.chip, target) for t in tiles]
                    d = np.concatenate([combine(tp, target) for tp in planes], axis=1)
                    block.diff.append(d.astype(dtype))
                    if not target.adc.lossless or self.calibrating:   # one line per plane (columns, offset)
                        # or slice (row pairs); the ADC calibration reads them too
                        block.lines.append(slice_lines(planes, spec, self.chip.offset, target.weights.encoding))
                    if not self.chip.adc.ideal:      # each line's own ADC: that of its physical column
                        block.adc.append(slice_adc_lines(self.chip.adc, tiles, c, target))
                    if sums is not None:             # the reference read, combined as the reads are
                        ref = [combine(_driven_planes(reference, t, t.placements[c], self.chip, target), target)
                               for t in tiles]
                        sums[c] += [np.abs(np.concatenate(ref, axis=1)).sum(), np.abs(d).sum()]
                    _put_effective(effective[c], d, r0, rc, cols, tiles)
                    continue
                plus, minus, where = [], [], []
                for t in tiles:
                    p = t.placements[c]
                    pi, mi = tile_slices(t, p, spec)
                    gpt, gmt = self.chip.g_units[p.array][pi], self.chip.g_units[p.array][mi]
                    if self.chip.driver_gain is not None:     # a driver's gain scales its row's devices, g_min too
                        gpt, gmt = _driven(gpt, gmt, t, p, self.chip, spec)
                    plus.append(gpt)
                    minus.append(gmt)
                    where.append((p.array, np.arange(pi[1].start, pi[1].stop, pi[1].step),   # the physical
                                  np.arange(mi[1].start, mi[1].stop, mi[1].step)))           # columns of its lines
                gp, gm = np.concatenate(plus, axis=1), np.concatenate(minus, axis=1)
                if gp.dtype.kind == "u":         # the levels of a levels_only chip: signed differences
                    gp, gm = gp.astype(np.int16), gm.astype(np.int16)
                if not self.chip.adc.ideal:
                    block.adc.append(_adc_lines(self.chip.adc, where, spec.differential == "columns"))
                d = gp - gm
                block.diff.append(d.astype(dtype))
                if sums is not None:
                    sums[c] += _reference_sums(reference, tiles, c, spec, self.chip, d)
                if spec.differential == "columns":
                    block.lines.append(np.concatenate([gp, gm], axis=1).astype(np.float32)
                                       + np.float32(self.chip.offset))
                _put_effective(effective[c], d, r0, rc, cols, tiles)
            blocks.append(block)
        channels = channel_tiles(op, blocks)
        step = target.device.step_us
        unit_ua = target.input.read_voltage_v * step / (qmax if analog else 1)
        plan = ReadPlan(op.name, op.rows, op.cols, cells.replicas, bits, signed, analog, bipolar, dtype, code_dtype,
                        blocks, effective, exact, np.array([1.0]) if analog else plane_weights(bits, signed), unit_ua,
                        qmin=q.qmin, qmax=q.qmax, channels=channels, average=cells.average)
        if sums is not None:    # alpha = reference read / read at t, per copy (aihwkit GlobalDriftCompensation)
            plan.drift_scale = np.where(sums[:, 1] > 0, sums[:, 0] / np.where(sums[:, 1] > 0, sums[:, 1], 1), 1.0)
        first = self._cells_plans.setdefault((cells.name, np.dtype(dtype).str), plan)
        if first is not plan:       # the same devices: one copy of their conductances (and their tables) in memory
            plan.blocks, plan.effective, plan.exact_levels = first.blocks, first.effective, first.exact_levels
        if not analog:
            codes = np.arange(q.qmin, q.qmax + 1)
            planes = bit_planes(codes[:, None].astype(np.float32), bits, signed)[:, :, 0]
            plan.noise_lut = (plan.weights[:, None] ** 2 * planes).sum(axis=0)
        return plan


def _adc_lines(adc, where: list, columns: bool):
    """The AdcLines of a row tile's lines: `where` holds, per tile in line order, (array, g+ columns, g- columns);
    "columns" lines are all g+ lines then all g- lines, "rows" lines one per output (its g+ column)."""
    arrays = np.concatenate([np.full(len(cp), a) for a, cp, _ in where])
    plus = np.concatenate([cp for _, cp, _ in where])
    if not columns:
        return adc.lines(arrays, plus)
    minus = np.concatenate([cm for _, _, cm in where])
    return adc.lines(np.concatenate([arrays, arrays]), np.concatenate([plus, minus]))


def _driven(gp: np.ndarray, gm: np.ndarray, tile, placement, chip, spec) -> tuple[np.ndarray, np.ndarray]:
    """A row tile's g+ and g- (step units above g_min) as its rows' drivers apply them: (g + o) * a_r - o, so the
    read current sum_r u_r a_r (g_r + o) keeps the plan's form (o added back where a physical current is needed)."""
    a = chip.driver_gain[placement.array]
    rows = placement_rows(tile, placement)
    ap = a[rows][:, None]
    am = ap if spec.differential == "columns" else a[rows + spec.rows // 2][:, None]
    return _drive(gp, ap, chip.offset), _drive(gm, am, chip.offset)


def _drive(g: np.ndarray, a: np.ndarray, offset: float) -> np.ndarray:
    """Conductances g (step units above g_min) read through row drivers of gain a: the current a (g + o), written
    back above g_min."""
    return (g + offset) * a - offset


def _driven_planes(g_units, tile, placement, chip, target) -> list[np.ndarray]:
    """A tile's device planes (cimc.weight_encoding.tile_planes; step units above g_min) as its rows' drivers apply
    them: (g + o) * a_r - o, as `_driven` does for a pair."""
    g = g_units[placement.array]
    planes = []
    for rows, cols in tile_planes(tile, placement, target):
        plane = g[rows, cols]
        if chip.driver_gain is not None:
            plane = _drive(plane, chip.driver_gain[placement.array][rows][:, None], chip.offset)
        planes.append(plane)
    return planes


def _reference_sums(reference: np.ndarray, tiles, c: int, spec, chip, d: np.ndarray) -> np.ndarray:
    """[sum |g+ - g-| at programming, at t] over a row tile's weights on copy c (step units, drivers applied)."""
    ref = []
    for t in tiles:
        p = t.placements[c]
        pi, mi = tile_slices(t, p, spec)
        gp, gm = reference[p.array][pi], reference[p.array][mi]
        if chip.driver_gain is not None:
            gp, gm = _driven(gp, gm, t, p, chip, spec)
        ref.append(gp - gm)
    return np.array([np.abs(np.concatenate(ref, axis=1)).sum(), np.abs(d).sum()])


def _put_effective(effective, d, r0, rc, cols, tiles) -> None:
    """A row tile's conductance differences into the op's effective matrix (K x N, or compact blocks)."""
    if effective.ndim == 2:
        effective[r0:r0 + rc, cols] = d
        return
    at = 0
    for t in tiles:
        put_block_slice(effective, r0, t.col_start, d[:, at:at + t.col_count])
        at += t.col_count
