"""Integer input codes as bit-planes (LSB first, two's complement for signed codes), and the one product routine
whose rows add the same whatever their number. Used by the crossbar backend's readers."""
from __future__ import annotations

import math

import numpy as np

FLOAT32_EXACT = 1 << 24        # float32 adds integers exactly while every partial sum stays below 2^24
CHUNK_ELEMENTS = 1 << 23       # a layer's input rows go in chunks of at most this many plane elements ...
CURRENT_ELEMENTS = 1 << 22     # ... and this many line currents (large GEMMs; about 50 MB of temporaries)


def plane_weights(bits: int, signed: bool) -> np.ndarray:
    """Weight of each bit-plane, LSB first: 2^j, the MSB -2^(bits-1) for two's-complement signed codes."""
    w = np.array([float(1 << j) for j in range(bits)])
    if signed:
        w[-1] = -w[-1]
    return w


def uint_codes(x: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Integer codes (float) -> unsigned integers whose bits are the planes: the code itself, or its two's complement
    on `bits` bits for signed codes (uint8 up to 8 bits, else uint16 / uint32)."""
    dtype = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    if not signed:
        return x.astype(dtype)
    xi = x.astype(np.int32)
    xi &= (1 << bits) - 1
    return xi.astype(dtype)


def signed_values(xb: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement codes on `bits` <= 8 bits (uint8, as uint_codes gives them) -> their values as int8
    (sign-extended)."""
    shift = 8 - bits
    return xb.view(np.int8) if shift == 0 else (xb << np.uint8(shift)).view(np.int8) >> np.int8(shift)


def bit_planes_uint(xi: np.ndarray, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """Unsigned integers [m, r] -> planes [bits, m, r] float32 of 0/1, LSB first."""
    if out is None:
        out = np.empty((bits,) + xi.shape, np.float32)
    if xi.dtype == np.uint8 and out.dtype == np.uint8 and xi.size % 8 == 0 and out.flags.c_contiguous:
        # eight codes per 64-bit word: (word >> j) & 0x01..01 is plane j of all eight at once
        words = np.ascontiguousarray(xi).reshape(-1).view(np.uint64)
        planes = out.reshape(bits, -1).view(np.uint64)
        for j in range(bits):
            np.right_shift(words, np.uint64(j), out=planes[j])
            np.bitwise_and(planes[j], np.uint64(0x0101010101010101), out=planes[j])
        return out
    tmp = np.empty(xi.shape, xi.dtype)
    one = xi.dtype.type(1)
    for j in range(bits):
        np.right_shift(xi, j, out=tmp)
        np.bitwise_and(tmp, one, out=tmp)
        out[j] = tmp
    return out


def bit_planes(x: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Integer codes [m, r] (float) -> planes [bits, m, r] float32 of 0/1, LSB first (two's complement if signed)."""
    return bit_planes_uint(uint_codes(x, bits, signed), bits)


def rowwise_matmul(a: np.ndarray, b: np.ndarray, a_bound: float = 1.0) -> np.ndarray:
    """a @ b where each row's sums come out the same whatever the rows beside it (batch size, the row's place in the
    batch, the BLAS kernel, threads). A float32 GEMM adds in an order that depends on all of those (OpenBLAS's
    Haswell sgemm on an AMD EPYC host: 1-3% of the sums of non-integer conductances differ in the last bit between
    batch sizes; numpy's one-row product goes to a matrix-vector routine besides). So the sums are formed exactly and
    rounded once: `a` holds integers with |a| <= a_bound (bit-planes: 1; codes: their largest magnitude), and `b` is
    snapped to the power-of-two grid 2^-e for which k * a_bound * max|b| <= 2^(52 - e); then every product and
    partial sum is a whole number of grid steps below 2^52, exact in float64 in any order. The snap moves only
    values finer than the grid (|b| below about 2^-17 of a step for a 144-row plane read), and integer levels (ideal
    devices) not at all, so ideal reads are the exact integer sums as before. (Amplitudes bent by an analog DAC's bow are
    not integers: their sums are float64-accurate, not exact.)"""
    out_dtype = np.result_type(a, b)
    top = float(np.abs(b).max()) if b.size else 0.0
    if a.shape[1] == 0 or top == 0.0:
        return np.zeros((a.shape[0], b.shape[1]), out_dtype)
    grid = 2.0 ** (52 - math.ceil(math.log2(a.shape[1] * max(a_bound, 1.0) * top)))
    exact_b = np.rint(b.astype(np.float64) * grid) / grid          # scaling by a power of two is exact
    return (a.astype(np.float64) @ exact_b).astype(out_dtype, copy=False)
