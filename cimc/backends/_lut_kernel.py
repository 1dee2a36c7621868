"""The numba kernel of cimc.backends.lut_reads (imported only when a table read runs: numba takes ~0.5 s to
import and compiles this once per machine, then loads it from its cache)."""
import numpy as np
from numba import njit, prange

_LSB_OF_EACH_BYTE = np.uint64(0x0101010101010101)
_GATHER_BYTE_LSBS = np.uint64(0x0102040810204080)     # multiply: bit 0 of byte i lands at bit 56 + i


@njit(parallel=True, cache=True)
def reads(words, table, weights, gain, lo, top, nb, pairs, out):
    m, groups = words.shape
    width = table.shape[2]
    clipped = np.zeros(m, np.int64)
    for i in prange(m):
        cur = np.empty(width, np.int32)
        code = np.empty(width, np.int32)
        k = 0
        for j in range(weights.shape[0]):
            cur[:] = 0
            shift = np.uint64(j)
            for g in range(groups):                                   # one lookup per 8 rows
                p = (((words[i, g] >> shift) & _LSB_OF_EACH_BYTE) * _GATHER_BYTE_LSBS) >> np.uint64(56)
                row = table[g, p]
                for n in range(width):
                    cur[n] += row[n]
            for n in range(width):                                    # the ADC, as adc_convert in float32
                v = np.rint(np.float32(cur[n]) * gain)
                k += (v > top) + (v < lo)
                code[n] = np.int32(min(max(v, lo), top))
            w = weights[j]                                            # shift-and-add
            if pairs:                                                 # g+ codes minus g- codes
                for n in range(nb):
                    out[i, n] += w * (code[n] - code[nb + n])
            else:
                for n in range(nb):
                    out[i, n] += w * code[n]
        clipped[i] = k
    return clipped.sum()
