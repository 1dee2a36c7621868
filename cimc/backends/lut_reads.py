"""Fused bit-serial reads by table lookup (the crossbar backend's `gemm="lut"`), compiled with numba.

One row tile of a layer holds integer conductances G [r, lines] (units of step / grid). Its rows are cut into
groups of 8; for every group g and every 8-bit pattern p a table holds T[g, p, :] = sum_i bit_i(p) G[8g + i, :].
The current of one read (one bit-plane of one pixel) is then sum_g T[g, pattern_g, :]: r / 8 lookups instead of r
multiply-adds, exact in int32. The patterns come straight from the uint8 codes: eight codes in one 64-bit word,
((word >> j) & 0x0101..01) * 0x0102040810204080 >> 56 is bit j of all eight as one byte, row 8g + i at bit i.
Each current goes through the ADC and the shift-and-add at once, so no plane, current or code array is
materialised. The ADC is the one of `cimc.backends.crossbar.adc_convert`, operation for operation in float32
(float32(current) * float32 gain, round half to even, clip), so a table read equals the MatMulInteger read on the
same conductance grid bit for bit."""
from __future__ import annotations

import numpy as np

GROUP = 8                                  # rows per lookup: tables have 2^8 entries per group


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


def available() -> bool:
    """numba is installed (without importing it: that takes about 0.5 s)."""
    import importlib.util
    return importlib.util.find_spec("numba") is not None


def read_tile(words: np.ndarray, table: np.ndarray, weights: np.ndarray, gain: np.float32, lo: int, top: int,
              nb: int, pairs: bool, out: np.ndarray) -> int:
    """All bit-plane reads of one row tile: words [m, groups] (pack_codes), table (pattern_table) with `width`
    lines, plane weights (int64, LSB first), ADC gain (codes per current unit) and range lo..top; adds
    sum_j w_j * code_j (g+ minus g- codes where `pairs`: lines [0, nb) and [nb, 2nb)) into out int64 [m, nb].
    Returns the number of clipped conversions."""
    from cimc.backends._lut_kernel import reads       # numba compiles it on first use (cached on disk)
    return int(reads(words, table, weights.astype(np.int64), np.float32(gain), np.float32(lo), np.float32(top),
                       int(nb), bool(pairs), out))
