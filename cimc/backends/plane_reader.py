"""The crossbar backend's bit-plane reads (the `float32` reader, and the GEMM loop the `int8` reader shares):
planes x lines -> read noise -> ADC (with its instances' gain, offset, INL and sense noise) -> shift-and-add."""
from __future__ import annotations

import numpy as np

from cimc.backends.bit_planes import (CHUNK_ELEMENTS, CURRENT_ELEMENTS, FLOAT32_EXACT, bit_planes_uint,
                                      rowwise_matmul, uint_codes)
from cimc.backends.read_plan import ReadPlan
from cimc.backends.reader import Reader
from cimc.backends.slice_lines import line_full_scales, minus_reference, offset_units, slice_coefficients
from cimc.targets.adc import adc_convert, adc_range, sense_generators
from cimc.targets.devices import line_noise


class PlaneReader(Reader):
    """gemm="float32" (and every read the int8 and lut readers leave to it): each row tile's bit-planes times its
    lines as float32 GEMMs, exact while every plane current is an integer below 2^24 (ideal devices)."""
    name = "float32"
    session = None          # the int8 reader's MatMulInteger

    def read(self, plan: ReadPlan, c: int, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self._planes(plan, c, x, ids)

    def read_codes(self, plan: ReadPlan, c: int, xi: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self._planes(plan, c, xi, ids, encoded=True)

    def quantised(self, plan: ReadPlan) -> bool:
        """Whether the plan's reads run on the int8 grid (`block.quantised`, exact int32 sums)."""
        return False

    def _planes(self, plan: ReadPlan, c: int, x: np.ndarray, ids: np.ndarray, encoded: bool = False) -> np.ndarray:
        """Read by read: planes x lines -> (noise) -> ADC -> shift-and-add -> subtract -> row tiles -> x LSB.
        `encoded`: x already holds uint_codes (the conv hook's uint8 im2col). ids: the global indices of the samples
        whose rows x holds; with read noise, each sample's generator draws, row tile by row tile, its
        [planes, positions, lines] block (so chunks hold whole samples)."""
        ctx = self.ctx
        lossless = self.target.adc.lossless
        adc_bits = self.target.adc.bits
        columns = self.target.array.differential == "columns"
        sliced = self.target.weights.encoding != "differential" and not lossless     # cimc.weight_encoding
        use_lines = (columns or sliced) and not lossless
        difference = not use_lines or (not columns and self.target.weights.encoding != "offset")   # +v/-v lines
        coefficients = slice_coefficients(self.target) if sliced else None
        shift = offset_units(self.target, ctx.offset) if sliced and self.target.weights.encoding == "offset" \
            else 0.0          # offset encoding: subtracted per column, times the input sum, in codes
        xi = x if plan.analog or encoded else uint_codes(x, plan.bits, plan.signed)
        m = len(x)
        n_planes = 1 if plan.analog else plan.bits
        lo, top = adc_range(adc_bits, plan.bipolar)
        # shift-and-add of one row tile is exact in float32 while |sum| < 2^24
        per_read = top if not lossless else self.target.array.rows * (ctx.offset + self.target.device.max_level)
        horner_dtype = np.float32 if per_read * (1 << n_planes) * (plan.qmax if plan.analog else 1) < FLOAT32_EXACT \
            else np.float64
        # per-slice full scales (adc.full_scale_per_slice): slice s's codes weigh L^s x FS_s / FS, not integers
        per_slice = plan.slice_full_scale if sliced else None
        if per_slice is not None:
            coefficients = coefficients * line_full_scales(self.target, per_slice, 1) / plan.full_scale
        acc_dtype = np.float64 if lossless or per_slice is not None else plan.code_dtype
        codes = np.zeros((m, plan.cols), acc_dtype)
        int8 = self.quantised(plan)
        code_bound = max(abs(plan.qmin), abs(plan.qmax)) if plan.analog else 1   # largest |input| of a read
        grid = self.grid if int8 else 1                     # currents in units of step / grid
        noisy = ctx.read_sigma > 0
        generators = self.noise_generators(plan, c, ids) if noisy else None
        sensing = ctx.sense_sigma > 0 and not lossless
        senses = sense_generators(ctx.seed, (ctx.layer_index[plan.name], c), ids) if sensing else None
        positions = m // max(len(ids), 1)
        clipped = conversions = 0
        for block in plan.blocks:
            r = block.r1 - block.r0
            nb = len(block.cols)
            if int8:
                mat = block.quantised[c]
            else:
                mat = block.lines[c] if use_lines else block.diff[c].astype(np.float32, copy=False)
            width = mat.shape[1]
            chunk = max(1, min(CHUNK_ELEMENTS // (n_planes * r), CURRENT_ELEMENTS // (n_planes * width)))
            if noisy or sensing:
                chunk = max(1, chunk // positions) * positions                 # whole samples
            planes = None
            for s in range(0, m, chunk):
                xb = xi[s:s + chunk, block.r0:block.r1]
                mc = len(xb)
                if plan.analog:
                    u = xb.astype(np.float32)[None]
                else:
                    if planes is None or planes.shape[1] != mc:
                        planes = np.empty((n_planes, mc, r), np.uint8 if int8 else np.float32)
                    u = bit_planes_uint(xb, n_planes, planes)
                flat = u.reshape(n_planes * mc, r)
                if int8:                                          # exact int32 sums (units of step / grid)
                    cur = self.session.run(None, {"A": flat, "B": mat})[0]
                else:
                    cur = rowwise_matmul(flat, mat, code_bound)   # [planes*mc, lines], step units
                if noisy:
                    sq = (np.square(flat) if plan.analog else flat).sum(axis=1, keepdims=True, dtype=np.float32)
                    per_line = 2.0 if difference else 1.0         # a difference line reads two devices per row
                    cur = cur.astype(np.float32, copy=False)
                    # [planes, samples, positions, lines] <- per sample [samples, planes, positions, lines]
                    sq = (per_line * sq).reshape(n_planes, -1, positions, 1).transpose(1, 0, 2, 3)
                    first = s // positions
                    noise = line_noise(generators[first:first + sq.shape[0]], sq, ctx.read_sigma * grid,
                                       shape=sq.shape[:3] + (width,))
                    by_sample = cur.reshape(n_planes, -1, positions, width)         # a view of cur
                    by_sample += noise.transpose(1, 0, 2, 3)
                if not lossless:                                  # the ADC (in place, or int32 -> float32 codes)
                    sense = None
                    if sensing:                                   # per sample: [planes, positions, lines], LSB
                        first = s // positions
                        sense = np.empty((mc // positions, n_planes, positions, width), np.float32)
                        for j, generator in enumerate(senses[first:first + len(sense)]):
                            generator.standard_normal(sense.shape[1:], dtype=np.float32, out=sense[j])
                        sense *= np.float32(ctx.sense_sigma)
                        sense = sense.transpose(1, 0, 2, 3).reshape(cur.shape)
                    full_scale = plan.full_scale if per_slice is None else \
                        line_full_scales(self.target, per_slice, nb)         # each line its slice's range
                    cur, n_clipped = adc_convert(cur, adc_bits, full_scale * grid, plan.bipolar,
                                                 out=cur if cur.dtype == np.float32 else None,
                                                 count=ctx.diagnostics, lines=block.adc[c] if block.adc else None,
                                                 noise=sense)
                    clipped += n_clipped
                    conversions += cur.size
                d = cur.reshape(n_planes, mc, width)
                acc = d[n_planes - 1].astype(horner_dtype)        # shift-and-add, MSB first (Horner)
                if plan.weights[n_planes - 1] < 0:
                    np.negative(acc, out=acc)
                for j in range(n_planes - 2, -1, -1):
                    acc *= 2
                    acc += d[j]
                if sliced and block.reference is not None:       # each tile's reference code subtracted
                    acc = minus_reference(acc.astype(acc_dtype), nb, block.reference)
                elif sliced:                                      # each slice line's codes, shifted and added
                    acc = acc.astype(acc_dtype).reshape(mc, -1, nb)
                    acc = np.einsum("mpn,p->mn", acc, coefficients.astype(acc_dtype))
                    if shift:                                     # the input sum, from the same planes
                        xsum = np.tensordot(plan.weights.astype(np.float64), u.sum(axis=2, dtype=np.float64), 1)
                        # (o + zero level) steps per unit input are shift x top / FS codes on any grid
                        acc -= (shift * top / plan.full_scale * xsum)[:, None].astype(acc_dtype)
                elif use_lines:
                    acc = acc[:, :nb] - acc[:, nb:]               # g+ codes minus g- codes
                codes[s:s + chunk, block.index] += acc
        ctx.count(plan, clipped, conversions)
        if lossless:
            return codes.astype(plan.dtype, copy=False)
        return (codes.astype(np.float64) * (plan.full_scale / top)).astype(plan.dtype)
