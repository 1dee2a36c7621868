"""Fused bit-serial reads by table lookup (the crossbar backend's `gemm="lut"`), compiled with numba.

One row tile of a layer holds integer conductances G [r, lines] (units of step / grid). Its rows are cut into
groups of 8; for every group g and every 8-bit pattern p a table holds T[g, p, :] = sum_i bit_i(p) G[8g + i, :].
The current of one read (one bit-plane of one pixel) is then sum_g T[g, pattern_g, :]: r / 8 lookups instead of r
multiply-adds, exact in int32. The patterns come straight from the uint8 codes: eight codes in one 64-bit word,
((word >> j) & 0x0101..01) * 0x0102040810204080 >> 56 is bit j of all eight as one byte, row 8g + i at bit i.
Each current goes through the ADC and the shift-and-add at once, so no plane, current or code array is
materialised. The ADC is the one of `cimc.backends.crossbar.adc_convert`, operation for operation in float32
(float32(current) * float32 gain, round half to even, clip), so a table read equals the MatMulInteger read on the
same conductance grid bit for bit. The kernel reads at most MAX_LINES lines per call: `table_pieces` cuts a wider
row tile by outputs, keeping each output's g+ and g- lines in one piece."""
from __future__ import annotations

import numpy as np

GROUP = 8                                  # rows per lookup: tables have 2^8 entries per group
MAX_LINES = 512                            # lines per kernel call (its stack buffers); wider tiles go in pieces


def pattern_table(g_int: np.ndarray) -> np.ndarray:
    """Integer conductances [r, lines] -> table int32 [ceil(r / 8), 256, lines] of every subset sum of 8 rows."""
    r, lines = g_int.shape
    groups = -(-r // GROUP)
    padded = np.zeros((groups * GROUP, lines), np.int64)
    padded[:r] = g_int
    bits = (np.arange(256)[:, None] >> np.arange(GROUP)[None, :]) & 1                 # [256, 8]
    table = np.einsum("pi,gil->gpl", bits, padded.reshape(groups, GROUP, lines))
    largest = int(np.abs(table).max(initial=0))
    if largest * groups >= 1 << 31:
        raise OverflowError("conductance grid too fine for int32 currents")
    return np.ascontiguousarray(table, dtype=np.int16 if largest < 1 << 15 else np.int32)


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [m, r] -> uint64 words [m, ceil(r / 8)], 8 codes each (zero rows pad the last word)."""
    m, r = codes.shape
    groups = -(-r // GROUP)
    if r % GROUP == 0 and codes.flags.c_contiguous:
        return codes.view(np.uint64)
    padded = np.zeros((m, groups * GROUP), np.uint8)
    padded[:, :r] = codes
    return padded.view(np.uint64)


def table_pieces(table: np.ndarray, nb: int, pairs: bool, max_lines: int = MAX_LINES) -> list:
    """pattern_table [groups, 256, lines] -> [(table [groups * 256, <= max_lines lines], first output, outputs)]: the
    kernel reads at most `max_lines` lines per call; with `pairs` a piece keeps the g+ lines of its outputs followed
    by their g- lines (lines [0, nb) are g+, [nb, 2 nb) are g-)."""
    flat = table.reshape(-1, table.shape[2])
    step = max_lines // 2 if pairs else max_lines
    pieces = []
    for o0 in range(0, nb, step):
        o1 = min(nb, o0 + step)
        lines = np.r_[o0:o1, nb + o0:nb + o1] if pairs else np.arange(o0, o1)
        pieces.append((np.ascontiguousarray(flat[:, lines]), o0, o1 - o0))
    return pieces


def available() -> bool:
    """numba is installed (without importing it: that takes about 0.5 s)."""
    import importlib.util
    return importlib.util.find_spec("numba") is not None


def read_tile(words: np.ndarray, pieces: list, weights: np.ndarray, gain: np.float32, lo: int, top: int,
              pairs: bool, out: np.ndarray, col0: int = 0) -> int:
    """All bit-plane reads of one row tile: words [m, groups] (pack_codes), its table pieces (table_pieces), plane
    weights (LSB first), ADC gain (codes per current unit) and range lo..top; adds sum_j w_j * code_j (g+ minus g-
    codes where `pairs`) into out int64 [m, col0:col0 + outputs]. Returns the number of clipped conversions."""
    from cimc.backends._lut_kernel import reads       # numba compiles it on first use (cached on disk)
    if top * (1 << len(weights)) >= 1 << 31:
        raise OverflowError("gemm='lut' sums codes in int32: too many ADC bits and planes")
    w = weights.astype(np.int64)
    return sum(int(reads(words, piece, w, np.float32(gain), np.float32(lo), np.float32(top), nb, bool(pairs), out,
                         col0 + o0)) for piece, o0, nb in pieces)


def scaled(codes: np.ndarray, lsb: float, out: np.ndarray) -> np.ndarray:
    """out = codes (int64) x lsb in float64, rounded once to out's dtype; returns out."""
    from cimc.backends._lut_kernel import scaled
    return scaled(codes, float(lsb), out)
