"""The crossbar backend's `lut` reader (gemm="lut"): bit-serial reads as numba table lookups with the ADC and the
shift-and-add fused (cimc.backends.lut_reads), on im2col rows or straight from a convolution's padded NHWC codes.
Chosen once at bind where `lut_grid` allows, never for reads it cannot model (read noise and ADC sense noise, drawn
per read: those fall back to float32 GEMMs); an ADC's static errors (per-line gain and offset, INL) are fused into
the kernel's conversion, bit for bit as the int8 reader applies them on the same grid. Analog reads and inputs of
more than 8 bits go through the float32 reader's GEMMs."""
from __future__ import annotations

import copy
import threading
import warnings

import numpy as np

from cimc.backends import lut_reads
from cimc.backends.bit_planes import signed_values, uint_codes
from cimc.backends.plane_reader import PlaneReader
from cimc.backends.read_plan import ReadPlan, RowTile
from cimc.backends.reader import ReadContext
from cimc.backends.slice_lines import minus_reference, offset_units, slice_coefficients
from cimc.errors import ConfigError
from cimc.targets.adc import adc_range
from cimc.weight_encoding import encoded


class TableReader(PlaneReader):
    """gemm="lut": integer conductances on the grid `lut_grid` chose; tables built per row tile and copy on first
    use (kept in the plan's row tiles), each with its lines' ADC errors (the tile's AdcLines) where the ADC has
    any."""
    name = "lut"

    def __init__(self, ctx: ReadContext, grid: int):
        super().__init__(ctx)
        self.grid = grid
        self._scratch_arrays: dict[str, np.ndarray] = {}     # work arrays reused across layers
        self._build_lock = threading.Lock()                  # worker threads build each table once between them

    def worker_view(self) -> "TableReader":
        """This reader for one worker thread (cimc.concurrent_chunks): the same tables, work arrays of its own."""
        view = copy.copy(self)
        view._scratch_arrays = {}
        return view

    def _once(self, store: dict, key, build):
        """store[key], made by build() on first use: once, whichever worker thread asks first."""
        value = store.get(key)
        if value is None:
            with self._build_lock:
                value = store.get(key)
                if value is None:
                    value = store[key] = build()
        return value

    def read(self, plan: ReadPlan, c: int, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if plan.analog or plan.bits > 8:
            return super().read(plan, c, x, ids)
        return self._table_reads(plan, c, uint_codes(x, plan.bits, plan.signed), self.ctx.line_reads())

    def read_codes(self, plan: ReadPlan, c: int, xi: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if plan.analog or plan.bits > 8:
            return super().read_codes(plan, c, xi, ids)
        return self._table_reads(plan, c, xi, self.ctx.line_reads())

    def direct(self, plan: ReadPlan) -> bool:
        """Convolutions straight from NHWC codes: pairs only (other encodings read im2col rows, `_table_reads`)."""
        return plan.channels is not None and self.ctx.encoded_reads(plan) and not encoded(self.target)

    def _lut_adc(self, plan: ReadPlan) -> tuple[int, int, np.float32]:
        """(lo, top, gain) of the table kernel's ADC: adc_convert's, in current units of step / grid."""
        lo, top = adc_range(self.target.adc.bits, plan.bipolar)
        return lo, top, np.float32(top / (plan.full_scale * self.grid))

    def _grid_lines(self, block: RowTile, c: int, use_lines: bool) -> np.ndarray:
        """A row tile's conductances of copy c (its g+ and g- lines, or differences) as integers on the lut grid."""
        return np.rint(np.asarray(block.lines[c] if use_lines else block.diff[c], np.float64) * self.grid)

    @staticmethod
    def _adc_lines(block: RowTile, c: int):
        """The AdcLines of a row tile's lines in copy c (one per table line), or None for an ideal ADC."""
        return block.adc[c] if block.adc else None

    def _table_reads(self, plan: ReadPlan, c: int, xi: np.ndarray, use_lines: bool) -> np.ndarray:
        """gemm="lut": the fused table reads of cimc.backends.lut_reads, row tile by row tile, on uint8 codes xi."""
        if encoded(self.target):
            return self._slice_table_reads(plan, c, xi)
        lo, top, gain = self._lut_adc(plan)
        m = len(xi)
        codes = np.zeros((m, plan.cols), np.int64)
        clipped = conversions = 0
        for block in plan.blocks:
            nb = len(block.cols)
            tables = self._once(block.tables, c, lambda: lut_reads.table_pieces(
                lut_reads.pattern_table(self._grid_lines(block, c, use_lines)), nb, use_lines,
                adc=self._adc_lines(block, c)))
            words = lut_reads.plane_words(xi[:, block.r0:block.r1])
            if isinstance(block.index, slice):              # the kernel adds into codes[:, start:stop] itself
                clipped += lut_reads.read_tile(words, tables, plan.weights, gain, lo, top, use_lines, codes,
                                               block.index.start or 0)
            else:
                acc = np.zeros((m, nb), np.int64)
                clipped += lut_reads.read_tile(words, tables, plan.weights, gain, lo, top, use_lines, acc)
                codes[:, block.index] += acc
            conversions += m * plan.bits * (2 * nb if use_lines else nb)
        self.ctx.count(plan, clipped, conversions)
        # codes x LSB in float64, rounded once to the accumulator dtype (as the GEMM paths)
        return lut_reads.scaled(codes, plan.full_scale / top, np.empty((m, plan.cols), plan.dtype))

    def _slice_table_reads(self, plan: ReadPlan, c: int, xi: np.ndarray) -> np.ndarray:
        """gemm="lut" for offset and bit-sliced weights (cimc.weight_encoding): every line of a row tile
        (cimc.backends.slice_lines) read by the kernel as an output of its own (ADC and shift-and-add over the
        input bit-planes fused), then, as the float32 reader does in its code dtype, the lines' codes shifted by
        L^s and added (g- subtracted), the offset x the input sum subtracted (or each tile's reference line's code),
        and the codes x LSB."""
        lo, top, gain = self._lut_adc(plan)
        m = len(xi)
        coefficients = slice_coefficients(self.target).astype(np.int64)
        shift = offset_units(self.target, self.ctx.offset) if self.target.weights.encoding == "offset" else 0.0
        acc_dtype = plan.code_dtype
        codes = np.zeros((m, plan.cols), acc_dtype)
        signed = (signed_values(xi, plan.bits) if plan.signed else xi).astype(np.int64)     # the codes' values
        clipped = conversions = 0
        for block in plan.blocks:
            nb, width = len(block.cols), block.lines[c].shape[1]
            tables = self._once(block.tables, c, lambda: lut_reads.table_pieces(
                lut_reads.pattern_table(self._grid_lines(block, c, True)), width, False,
                adc=self._adc_lines(block, c)))
            lines = np.zeros((m, width), np.int64)
            clipped += lut_reads.read_tile(lut_reads.plane_words(xi[:, block.r0:block.r1]), tables,
                                           plan.weights, gain, lo, top, False, lines)
            if block.reference is not None:          # offset reference column: its tile's reference code off
                acc = minus_reference(lines, nb, block.reference).astype(acc_dtype)
            else:
                acc = (lines.reshape(m, -1, nb) * coefficients[:, None]).sum(axis=1).astype(acc_dtype)
            if shift:                                # the same operations as the float32 reader's (plane_reader)
                xsum = signed[:, block.r0:block.r1].sum(axis=1).astype(np.float64)
                acc -= (shift * top / plan.full_scale * xsum)[:, None].astype(acc_dtype)
            codes[:, block.index] += acc
            conversions += m * plan.bits * width
        self.ctx.count(plan, clipped, conversions)
        return (codes.astype(np.float64) * (plan.full_scale / top)).astype(plan.dtype)

    def conv(self, op, plan: ReadPlan, x: np.ndarray, copies: list, dequantise: tuple | None = None,
             quant=None) -> np.ndarray:
        """gemm="lut" on a convolution whose row tiles hold whole channels: table reads straight from the padded
        NHWC codes (lut_reads.read_conv_tile), no im2col; the same codes as _table_reads on im2col rows. Returns
        the accumulators, or with `dequantise` = (scale, bias) the executor's float32 output. x: the codes, or
        with `quant` (the op's ActQuant) the float activations, quantised as the plane words are formed."""
        g = op.conv
        xs = x[:, :, None, :] if g.spatial_rank == 1 else x
        bsz, _, h, w = xs.shape
        oh, ow = g.output_hw(h, w)
        words = lut_reads.padded_plane_words(xs, plan.bits, g.pads, self._scratch_arrays.get("words"), quant)
        self._scratch_arrays["words"] = words
        lo, top, gain = self._lut_adc(plan)
        use_lines = self.target.array.differential == "columns"
        # the first row tile writes every output (when it covers them all), the others add: no zero fill, and the
        # codes array is reused from layer to layer (a fresh one costs a page fault per 4 kB on first touch)
        covers = isinstance(plan.blocks[0].index, slice) and len(plan.blocks[0].cols) == plan.cols
        # |sum of codes| <= top * 2^bits per row tile: int32 while that fits (half the traffic of int64)
        wide = np.int32 if top * (1 << plan.bits) * len(plan.blocks) < 1 << 31 else np.int64
        codes = self._scratch("codes", (bsz * oh * ow, plan.cols), wide, zero=not covers)
        for c, samples in copies:
            images = np.arange(bsz)[samples]
            for k, (block, (c0, c1)) in enumerate(zip(plan.blocks, plan.channels)):
                nb = len(block.cols)
                tables = self._once(block.conv_tables, c, lambda: self._conv_tables(block, c, c0, c1, g, use_lines))
                groups = block.conv_groups
                if isinstance(block.index, slice):
                    lut_reads.read_conv_tile(words, images, groups, g.strides, (oh, ow), tables,
                                             plan.weights, gain, lo, top, use_lines, codes, block.index.start or 0,
                                             add=k > 0 or not covers)
                else:
                    acc = np.zeros((len(codes), nb), wide)
                    lut_reads.read_conv_tile(words, images, groups, g.strides, (oh, ow), tables,
                                             plan.weights, gain, lo, top, use_lines, acc)
                    codes[:, block.index] += acc
        out = np.empty((bsz, plan.cols, oh * ow), np.float32 if dequantise else plan.dtype)
        if dequantise:
            lut_reads.dequantised_transposed(codes.reshape(bsz, oh * ow, plan.cols), plan.full_scale / top,
                                             *dequantise, out)
        else:
            lut_reads.scaled_transposed(codes.reshape(bsz, oh * ow, plan.cols), plan.full_scale / top, out)
        return out.reshape((bsz, plan.cols) + ((ow,) if g.spatial_rank == 1 else (oh, ow)))

    def _conv_tables(self, block: RowTile, c: int, c0: int, c1: int, g, use_lines: bool) -> list:
        """A row tile's table pieces for direct convolution reads of copy c; sets the tile's conv_groups first (a
        thread that finds the pieces finds them too)."""
        block.conv_groups = lut_reads.conv_groups(c0, c1, g.kernel, g.dilations)
        table = lut_reads.conv_table(self._grid_lines(block, c, use_lines), c0, c1, g.kernel[0] * g.kernel[1])
        return lut_reads.table_pieces(table, len(block.cols), use_lines, adc=self._adc_lines(block, c))

    def _scratch(self, name: str, shape: tuple, dtype, zero: bool = False) -> np.ndarray:
        """A work array kept from call to call while its shape and dtype stay the same (filled with 0 if `zero`)."""
        buf = self._scratch_arrays.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._scratch_arrays[name] = np.zeros(shape, dtype)
        elif zero:
            buf.fill(0)
        return buf


def lut_grid(ctx: ReadContext, plans: dict, grid: int | None = None) -> int | None:
    """gemm="lut": integer conductances on a grid of step / grid, the finest for which every 8-row subset sum
    fits an int16 table entry: grid = floor(32767 / (8 x largest conductance in steps)), about 400 (6 nS) for
    Yao's devices with 0.54 uS programming error; `grid` a chosen one (conductance_grid). None (float32 reads, with
    a warning where that is why) where the kernel cannot model the reads (read noise, ADC sense noise, per-slice
    full scales) or no layer reads bit-planes of at most 8 bits. ADC gain, offset and INL it models."""
    target = ctx.target
    if ctx.read_sigma > 0:
        warnings.warn("crossbar backend: gemm='lut' draws no per-read noise; reads with read noise run as "
                      "float32 GEMMs", stacklevel=4)
        return None
    if ctx.sense_sigma > 0:
        warnings.warn("crossbar backend: gemm='lut' draws no sense noise (its kernel fuses the ADC's static gain, "
                      "offset and INL only); reads through ADCs with sense noise (adc.noise_sigma_lsb) run as "
                      "float32 GEMMs", stacklevel=4)
        return None
    if slice_scales(plans):
        warnings.warn("crossbar backend: gemm='lut' fuses one ADC full scale per layer into its kernel; layers "
                      "whose slices have full scales of their own (adc.full_scale_per_slice) run as float32 "
                      "GEMMs", stacklevel=4)
        return None
    columns = target.array.differential == "columns" or encoded(target)    # other encodings: slice lines
    mats = [m for p in plans.values() if not p.analog and p.bits <= 8
            for b in p.blocks for m in (b.lines if columns else b.diff)]
    if not mats:
        return None
    for plan in plans.values():                     # the kernel adds shift-and-add codes in int32
        _, top = adc_range(target.adc.bits, plan.bipolar)
        if not plan.analog and plan.bits <= 8 and top << plan.bits >= 1 << 31:
            raise ConfigError(f"gemm='lut' adds ADC codes in int32: adc.bits={target.adc.bits} with the "
                              f"{plan.bits}-bit inputs of layer {plan.name!r} can overflow it; use at most "
                              f"{31 - plan.bits} ADC bits, or gemm='float32'")
    largest = max(float(np.abs(m).max(initial=0.0)) for m in mats)
    return grid or max(1, int(((1 << 15) - 1) // max(lut_reads.GROUP * largest, 1e-30)))


def slice_scales(plans: dict) -> bool:
    """Whether some layer converts its slices' lines with full scales of their own (adc.full_scale_per_slice):
    the float32 and int8 readers do; the lut kernel fuses one ADC gain per layer."""
    return any(p.slice_full_scale is not None for p in plans.values())


def channel_tiles(op, blocks: list) -> list | None:
    """Per row tile of a convolution, the input channels [c0, c1) it holds, where every tile holds whole channels
    starting on a multiple of 8 and padding its last octet wastes at most a quarter of its lookups (gemm="lut" then
    reads the convolution without im2col); else None."""
    if op.conv is None or not op.conv.planar:
        return None
    size = op.conv.kernel[0] * op.conv.kernel[1]
    channels = []
    for block in blocks:
        if block.r0 % size or block.r1 % size or (block.r0 // size) % lut_reads.GROUP:
            return None
        c0, c1 = block.r0 // size, block.r1 // size
        direct = -(-(c1 - c0) // lut_reads.GROUP) * size         # lookups per plane without im2col ...
        if 4 * direct > 5 * -(-(block.r1 - block.r0) // lut_reads.GROUP):   # ... against on im2col rows
            return None
        channels.append((c0, c1))
    return channels
