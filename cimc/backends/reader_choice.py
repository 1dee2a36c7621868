"""What the crossbar backend decides once at bind about its reads: the reader family of a run that names none
(`default_gemm`), the one reader object every read goes through (`choose_reader`), and how each convolution is
read (`conv_route`).

* **GEMMs.** A layer's reads are one product per row tile and input chunk: all bit-planes of all its pixels
  ([planes x pixels, rows] of 0/1) times all lines of all its arrays in that row tile ([rows, lines]). float32 holds
  these integer sums exactly up to 2^24 (every ideal plane current is at most rows * (o + L), e.g. 144 * 8). With
  `gemm="int8"` the products run as onnxruntime MatMulInteger (uint8 planes x int8 conductances, exact int32 sums)
  with conductances on a grid of step / q, q = floor(127 / largest conductance in steps) (q = 14, 0.18 uS, for
  Yao's devices with 0.54 uS programming error): about 1.6x faster end to end; ideal levels stay exact. With
  `gemm="lut"` (numba, cimc.backends.lut_reads) each read is r/8 lookups in tables of 8-row subset sums, and the ADC
  and shift-and-add run in the same loop, on a grid of step / ~400 (6 nS): about 6x faster than float32 on
  ResNet-56; on the int8 grid it equals gemm="int8" bit for bit. The default (gemm=None) is "lut" wherever it
  applies and "float32" elsewhere, or where numba cannot be imported (with a warning): `default_gemm`. A
  convolution whose row tiles hold whole input channels is read without im2col, straight from its padded NHWC
  codes (`TableReader.conv`, the "table" route). The kernel's ADC has the chip's static per-line gain, offset
  and INL (bit for bit as int8 applies them); reads with read noise or ADC sense noise keep float32 GEMMs (the
  kernel draws nothing)."""
from __future__ import annotations

import warnings

import numpy as np

from cimc.backends import lut_reads
from cimc.backends.int8_reader import Int8Reader, int8_grid
from cimc.backends.plane_reader import PlaneReader
from cimc.backends.product_reader import ProductReader
from cimc.backends.read_plan import ReadPlan
from cimc.backends.reader import ReadContext, Reader
from cimc.backends.record_reader import RecordReader
from cimc.backends.table_reader import TableReader, lut_grid, slice_scales
from cimc.targets.adc import adc_range

GEMMS = ("float32", "int8", "lut")
DEFAULT_GEMM = "lut"      # the reader of a run that names none (gemm=None), where it applies (`default_gemm`)


def default_gemm(plans: dict, target, chip, calibrating: bool) -> str:
    """The reader of a run that names none: DEFAULT_GEMM ("lut") wherever its table reads apply - bit-serial
    reads of inputs of at most 8 bits through a finite ADC without sense noise (its gain, offset and INL are
    fused), no read noise - else "float32" (silently: the float32 GEMMs are then what the lut reader itself would
    fall back to, see table_reader.lut_grid). Where numba cannot be imported, "float32" with one warning that says
    why and how to get the fast path."""
    tables = [p for p in plans.values() if not p.analog and p.bits <= 8]
    if (calibrating or target.adc.lossless or chip.read_sigma > 0 or chip.adc.noise_sigma_lsb > 0
            or not tables or slice_scales(plans)
            or any(adc_range(target.adc.bits, p.bipolar)[1] << p.bits >= 1 << 31 for p in tables)):
        return "float32"                  # the last: ADC codes whose shift-and-add overflows the kernel's int32
    why = lut_reads.import_error()
    if why is not None:
        warnings.warn(f"crossbar backend: numba cannot be imported ({why}), so this run reads through float32 "
                      "GEMMs, up to 6x slower than the default table reads (gemm='lut'); pip install -e '.[fast]' "
                      "(numba is a dependency of cimc) for the fast path, or choose gemm='float32' "
                      "(--gemm float32) to keep this reader without the warning", stacklevel=3)
        return "float32"
    return DEFAULT_GEMM


def choose_reader(ctx: ReadContext, plans: dict, gemm: str, conductance_grid: int | None,
                  simulate_planes: bool) -> Reader:
    """The reader of every read, once: the ADC calibration's, the gemm family's where it applies (int8: every
    conductance fits its grid; lut: `lut_grid` says why not, else), one product per layer for a lossless ADC,
    else float32 GEMMs."""
    lossless = ctx.target.adc.lossless
    if ctx.record_currents:
        return RecordReader(ctx, plans)
    if gemm == "int8" and not lossless:
        grid = int8_grid(plans, ctx.target, conductance_grid)
        if grid is not None:
            return Int8Reader(ctx, plans, grid)
    elif gemm == "lut" and not lossless:
        grid = lut_grid(ctx, plans, conductance_grid)
        if grid is not None:
            return TableReader(ctx, grid)
    if lossless and not simulate_planes:
        return ProductReader(ctx)
    return PlaneReader(ctx)


def conv_route(plan: ReadPlan, reads: Reader, averaging: bool, gemm: str, simulate_planes: bool,
               dac_inl: float) -> str | None:
    """How `conv` reads a convolution, fixed at bind: "record" (exact int8 calibration reads), "table" (lut reads
    from NHWC codes), "codes" (bit-planes of uint8 im2col codes), "onnx" (one exact product as an onnxruntime
    Conv), or None (the executor's im2col + mvm)."""
    if reads.ctx.record_currents:
        return "record" if reads.exact(plan) else None
    encoded_reads = reads.ctx.encoded_reads(plan)
    if averaging:          # every copy of a group read and averaged: through im2col only
        return "codes" if encoded_reads else None
    if isinstance(reads, TableReader) and reads.direct(plan):
        return "table"
    if encoded_reads:
        return "codes"
    if (not reads.target.adc.lossless or simulate_planes or reads.ctx.diagnostics
            or reads.ctx.read_sigma > 0 or gemm != "float32" or plan.dtype != np.float32
            or (plan.analog and dac_inl)):
        return None
    return "onnx"
