"""The numba kernel of cimc.backends.lut_reads (imported only when a table read runs: numba takes ~0.5 s to
import and compiles this once per machine, then loads it from its cache).

Why it is written this way (each point measured on ResNet-56, see benchmarks/bench_crossbar.py):
* the per-read current and the shift-and-add accumulator live in stack buffers (`_stack_int32`), so LLVM knows
  they cannot alias the table and vectorises the lookup loop without run-time overlap checks;
* eighteen table rows (a 144-row array) are summed per pass over the lines, in registers; a last pass of at most
  6 or 12 groups sums only those (conv1's 27 rows are 4 groups: one pass of 6 lookups, not 18);
* its loops may use 512-bit vectors (`_wide_vectors`): twice the lanes per lookup on AVX-512 CPUs whose LLVM
  tuning prefers 256 (Intel's server cores): reads measured 1.0-1.3x faster per layer there;
* inputs arrive as plane words (byte j of a word: the pattern of plane j), bit-transposed once per eight codes
  rather than once per read, and a position's table row offsets for all planes are computed first, in a loop that
  vectorises (unsigned flat offsets: no multiply per lookup, no negative-index checks; 5-10% faster);
* a plane whose bits are all zero reads a zero current, code 0: it is skipped (with an ADC offset or INL a zero
  current has a code of its own, precomputed per line: `zero_lines`);
* a convolution gathers its positions' words from the padded NHWC plane words (`conv_reads`), no im2col;
* tables start on a 64-byte boundary (lut_reads.aligned_empty): a 32-line int16 row is one cache line;
* a non-ideal ADC's per-line gain, offset and INL (`line_adc`) are resolved by type when numba compiles: the ideal
  ADC (adc=None) compiles to the same loop as without them, the non-ideal one to its own specialisation.
"""
import os

# numba's threading layer (OpenMP here) keeps its worker threads spinning for a while after each parallel kernel
# by default. This process does serial work between kernels (onnxruntime's digital segments, numpy, Python), so a
# spinning worker takes a core from it (and from onnxruntime's own threads); on a shared host the spinning also
# competes with other processes. Measured on ResNet-56, 100 inputs, 2 threads, a host with load average 7-10
# (2026-12-02, min of 10 batches): 5.4-5.9 s and 2.7-2.9 s CPU spinning, 0.9-1.1 s and 0.9 s CPU passive.
# Threads that sleep at once cost a wake-up per kernel (about 230 kernels per batch of 100). A user's own
# OMP_WAIT_POLICY wins; read when numba first starts its threads, so set before any parallel kernel runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numba compiles a kernel's callees (_positions, _two_positions) as libraries of their own, optimised once, then links
# a copy into each caller's module, where LLVM optimises it a second time (and vectorises its read loops). In the
# process that compiles them, the caller's calls resolve to the callee already loaded, the once-optimised copy;
# a later process loads the caller from the disk cache with its own twice-optimised copy. Measured 2026-12-02
# (conv_reads on ResNet-56's stages, one thread): 4-5x slower in the compiling process, so a user's first run
# after installing took 20 s where later ones took 3.5 s (kernel time, 1,000 inputs). NUMBA_OPT=max makes numba's
# first (cheap) pass a full optimisation with loop vectorisation, so the once-optimised copy is already fast:
# 0.0167 s against 0.0642 s per stage-1 call in the compiling process, 0.0138 s against 0.0171 s from the cache.
# It applies to the process's numba code generator, made at the first compilation: set here, before the kernels
# compile, it has no effect where numba compiled something else first (then only the compiling run is slow). A
# user's own NUMBA_OPT wins.
os.environ.setdefault("NUMBA_OPT", "max")

import numpy as np  # noqa: E402
from numba import carray, njit, prange, types  # noqa: E402
from numba.core import config as _numba_config  # noqa: E402

_numba_config.reload_config()   # numba read its environment when first imported, perhaps before the line above
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402

from cimc.backends import kernel_cache, kernel_notice  # noqa: E402
from cimc.backends.lut_limits import MAX_LINES  # noqa: E402 (lines per call; read_tile splits wider tiles)

kernel_notice.install()     # a line on a terminal while numba compiles these kernels (first run only)
# _lut_packed inlines this file's helpers and both freeze lut_limits' constants: one cache key for all three files
KERNEL_SOURCES = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
                       for name in ("_lut_kernel.py", "_lut_packed.py", "lut_limits.py"))
kernel_cache.share_stamp(KERNEL_SOURCES)

SUMMED = 18                     # table rows summed per pass (144-row arrays: one pass)
BLOCK = 128                     # positions per parallel work item
_LSB_OF_EACH_BYTE = np.uint64(0x0101010101010101)
_GATHER_BYTE_LSBS = np.uint64(0x0102040810204080)     # multiply: bit 0 of byte i lands at bit 56 + i
_BYTE = np.uint64(255)


@intrinsic
def _stack_int32(typingctx):
    """A pointer to MAX_LINES int32 on the stack of the calling function (alloca in its entry block)."""
    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.int32), size=MAX_LINES)
    return types.CPointer(types.int32)(), codegen


@intrinsic
def _wide_vectors(typingctx):
    """Lets LLVM vectorise the calling function's loops 512 bits wide where the CPU has AVX-512: its tuning for
    Intel's server cores prefers 256 bits, half the lanes per table lookup (reads up to 1.3x slower, measured on a
    Xeon). A function attribute, so it applies to this kernel only; without AVX-512 LLVM keeps its widest."""
    def codegen(context, builder, signature, args):
        try:                                     # a string attribute: llvmlite's add() accepts enum names only
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except TypeError:                        # a future llvmlite: go without the hint (slower, same results)
            pass
        return context.get_dummy_value()
    return types.none(), codegen


@njit(inline="always", cache=True)
def _plane_word(x):
    """Eight codes (byte i of x) -> their eight patterns: byte j holds bit j of every code, code i at bit i."""
    t = np.uint64(0)
    for j in range(8):
        t |= ((((x >> np.uint64(j)) & _LSB_OF_EACH_BYTE) * _GATHER_BYTE_LSBS) >> np.uint64(56)) << np.uint64(8 * j)
    return t


@njit(parallel=True, cache=True, nogil=True)
def row_plane_words(codes, out):
    """uint8 codes [m, r] -> plane words out [m, ceil(r / 8)] (rows past r read as zero codes)."""
    m, r = codes.shape
    for i in prange(m):
        for g in range(out.shape[1]):
            x = np.uint64(0)
            for t in range(min(8, r - 8 * g)):
                x |= np.uint64(codes[i, 8 * g + t]) << np.uint64(8 * t)
            out[i, g] = _plane_word(x)
    return out


@njit(parallel=True, cache=True, nogil=True)
def conv_plane_words(codes, mask, top, left, out):
    """Integer codes [B, C, H, W] (any dtype; each code & mask is its bit pattern: two's complement for negative
    codes) -> plane words of the zero-padded NHWC layout, out [B, Hp, Wp, ceil(C / 8)]: word (b, top + y, left + x,
    o) holds the codes of channels 8 o .. 8 o + 7 at pixel (y, x). The border of out is not written."""
    b, c, h, w = codes.shape
    for i in prange(b * h):
        n, y = i // h, i % h
        word = np.empty(w, np.uint64)
        for o in range(out.shape[3]):
            word[:] = 0
            for t in range(min(8, c - 8 * o)):
                for x in range(w):
                    word[x] |= np.uint64(np.int64(codes[n, 8 * o + t, y, x]) & mask) << np.uint64(8 * t)
            for x in range(w):
                out[n, top + y, left + x, o] = _plane_word(word[x])
    return out


@njit(parallel=True, cache=True, nogil=True)
def quantised_plane_words(x, scale, qmin, qmax, mask, top, left, out):
    """conv_plane_words of the executor's quantisation of float32 activations x [B, C, H, W], in the same pass:
    code = clip(rint(x / scale), qmin, qmax) in float32 as cimc.graph_run.quantize_activation forms it (scale, qmin,
    qmax float32; a NaN stays NaN through the clip, as in numpy), then its pattern as conv_plane_words takes it.
    One pass over x instead of three numpy passes and a float32 code array."""
    b, c, h, w = x.shape
    for i in prange(b * h):
        n, y = i // h, i % h
        word = np.empty(w, np.uint64)
        for o in range(out.shape[3]):
            word[:] = 0
            for t in range(min(8, c - 8 * o)):
                for xx in range(w):
                    v = np.rint(x[n, 8 * o + t, y, xx] / scale)
                    if v < qmin:
                        v = qmin
                    if v > qmax:
                        v = qmax
                    word[xx] |= np.uint64(np.int64(v) & mask) << np.uint64(8 * t)
            for xx in range(w):
                out[n, top + y, left + xx, o] = _plane_word(word[xx])
    return out


def line_adc(t, adc, n):
    """Line n's ADC errors on t = float32(current) * gain: cimc.targets.adc.AdcLines.apply, the same float32
    operations in the same order - t * g[n], + o[n], + INL(t) = (s (1 - s)) * 4 inl with s = clip((t - lo) / (top -
    lo), 0, 1). adc: None (an ideal ADC: t unchanged, nothing compiled) or (g, o, lo, 1 / (top - lo), 4 inl float32,
    zero-current codes and clips int32) (lut_reads.piece_adc)."""


@overload(line_adc, inline="always")
def _line_adc(t, adc, n):
    if isinstance(adc, types.NoneType):
        return lambda t, adc, n: t

    def apply(t, adc, n):
        gain, offset, lo, inverse, inl4 = adc[0], adc[1], adc[2], adc[3], adc[4]
        t = t * gain[n]
        t = t + offset[n]
        s = min(max((t - lo) * inverse, np.float32(0)), np.float32(1))
        return t + (s * (np.float32(1) - s)) * inl4
    return apply


def zero_lines(adc, w, acc, width):
    """A plane with no bit set: every line's current is 0. Through an ideal ADC (adc None) its codes are 0 and
    nothing is added (the plane is skipped, nothing compiled); else each line's code of a zero current times w
    (lut_reads.piece_adc). Returns the clipped conversions."""


@overload(zero_lines, inline="always")
def _zero_lines(adc, w, acc, width):
    if isinstance(adc, types.NoneType):
        return lambda adc, w, acc, width: 0

    def add(adc, w, acc, width):
        codes, clips = adc[5], adc[6]
        clipped = 0
        for n in range(width):
            acc[n] += w * codes[n]
            clipped += clips[n]
        return clipped
    return add


def zero_pairs(adc, w, acc, acc_hi, clips, half):
    """zero_lines for the packed kernel: lines n (acc) and half + n (acc_hi), clips counted per word."""


@overload(zero_pairs, inline="always")
def _zero_pairs(adc, w, acc, acc_hi, clips, half):
    if isinstance(adc, types.NoneType):
        return lambda adc, w, acc, acc_hi, clips, half: None

    def add(adc, w, acc, acc_hi, clips, half):
        codes, clipped = adc[5], adc[6]
        for n in range(half):
            acc[n] += w * codes[n]
            acc_hi[n] += w * codes[half + n]
            clips[n] += clipped[n] + clipped[half + n]
    return add


@njit(inline="always", cache=True)
def _six(flat, r0, r1, r2, r3, r4, r5, n):
    """Line n of the sum of the table rows that start at flat offsets r0..r5 (int32). Offsets and n are unsigned:
    numba then adds no negative-index wraparound, which would keep the loop over n from vectorising."""
    return ((np.int32(flat[r0 + n]) + np.int32(flat[r1 + n])) + (np.int32(flat[r2 + n]) + np.int32(flat[r3 + n]))) + \
        (np.int32(flat[r4 + n]) + np.int32(flat[r5 + n]))


@njit(cache=True)
def _positions(words, table, weights, gain, lo, top, adc, nb, pairs, out, col0, add, i0, i1, w0, idx):
    """Positions i0..i1 (rows of out); position i's words are words[i - w0]; `add` to out, else overwrite."""
    _wide_vectors()
    groups = words.shape[1]
    width = table.shape[1]
    uwidth = np.uint64(width)
    flat = table.reshape(-1)
    cur = carray(_stack_int32(), MAX_LINES)
    acc = carray(_stack_int32(), MAX_LINES)
    clipped = 0
    for i in range(i0, i1):
        iw = i - w0
        nonzero = np.uint64(0)
        for g in range(groups):
            nonzero |= words[iw, g]
        for j in range(weights.shape[0]):                  # table row group * 256 + pattern of plane j, as an offset
            shift = np.uint64(8 * j)
            for g in range(groups):
                idx[j, g] = (np.uint64(g * 256) + ((words[iw, g] >> shift) & _BYTE)) * uwidth   # row start
        for n in range(width):
            acc[n] = 0
        for j in range(weights.shape[0]):
            if (nonzero >> np.uint64(8 * j)) & _BYTE == 0:  # no bit set: current 0, code 0 (ideal ADC)
                clipped += zero_lines(adc, np.int32(weights[j]), acc, width)
                continue
            for n in range(width):
                cur[n] = 0
            for q in range(0, groups, SUMMED):            # 18 rows a pass; 6 or 12 in the last where that ends it
                a0, a1, a2, a3, a4, a5 = idx[j, q], idx[j, q + 1], idx[j, q + 2], idx[j, q + 3], idx[j, q + 4], \
                    idx[j, q + 5]                          # padding entries are 0: row 0 (group 0, pattern 0), zeros
                if groups - q <= 6:
                    for n in range(width):
                        cur[n] += _six(flat, a0, a1, a2, a3, a4, a5, np.uint64(n))
                    continue
                b0, b1, b2, b3, b4, b5 = idx[j, q + 6], idx[j, q + 7], idx[j, q + 8], idx[j, q + 9], \
                    idx[j, q + 10], idx[j, q + 11]
                if groups - q <= 12:
                    for n in range(width):
                        un = np.uint64(n)
                        cur[n] += _six(flat, a0, a1, a2, a3, a4, a5, un) + _six(flat, b0, b1, b2, b3, b4, b5, un)
                    continue
                c0, c1, c2, c3, c4, c5 = idx[j, q + 12], idx[j, q + 13], idx[j, q + 14], idx[j, q + 15], \
                    idx[j, q + 16], idx[j, q + 17]
                for n in range(width):
                    un = np.uint64(n)
                    cur[n] += (_six(flat, a0, a1, a2, a3, a4, a5, un) + _six(flat, b0, b1, b2, b3, b4, b5, un)) + \
                        _six(flat, c0, c1, c2, c3, c4, c5, un)
            w = np.int32(weights[j])
            clips = np.int32(0)
            for n in range(width):                         # the ADC, as adc_convert in float32; shift-and-add
                v = np.rint(line_adc(np.float32(cur[n]) * gain, adc, n))
                clips += np.int32(v > top) + np.int32(v < lo)
                acc[n] += w * np.int32(min(max(v, lo), top))
            clipped += clips
        if pairs:                                          # g+ codes minus g- codes
            for n in range(nb):
                acc[n] -= acc[nb + n]
        if add:
            for n in range(nb):
                out[i, col0 + n] += acc[n]
        else:
            for n in range(nb):
                out[i, col0 + n] = acc[n]
    return clipped


@njit(parallel=True, cache=True, nogil=True)
def reads(words, table, weights, gain, lo, top, adc, nb, pairs, out, col0, add):
    """All reads of positions whose plane words (row_plane_words) are words [m, groups], on table
    [groups * 256, width <= MAX_LINES]; adds the shift-and-add sums into out[:, col0:col0 + nb] (`add`) or writes
    them there. adc: None (an ideal ADC) or the per-line errors of `line_adc`. Returns the clipped conversions."""
    m, groups = words.shape
    padded = -(-groups // SUMMED) * SUMMED
    blocks = -(-m // BLOCK)
    clipped = np.zeros(blocks, np.int64)
    for b in prange(blocks):
        _wide_vectors()
        idx = np.zeros((weights.shape[0], padded), np.uint64)
        clipped[b] = _positions(words, table, weights, gain, lo, top, adc, nb, pairs, out, col0, add, b * BLOCK,
                                min(m, b * BLOCK + BLOCK), 0, idx)
    return clipped.sum()


@njit(inline="always", cache=True)
def conv_words(xw, b, p0, p1, dy, dx, octet, sh, sw, ow):
    """The im2col words of output positions p0..p1 of image b (L1-resident): group g of position (oy, ox) is
    xw[b, oy * sh + dy[g], ox * sw + dx[g], octet[g]]."""
    groups = len(dy)
    words = np.empty((p1 - p0, groups), np.uint64)
    for p in range(p0, p1):
        y, x = (p // ow) * sh, (p % ow) * sw
        for g in range(groups):
            words[p - p0, g] = xw[b, y + dy[g], x + dx[g], octet[g]]
    return words


@njit(parallel=True, cache=True, nogil=True)
def conv_reads(xw, images, dy, dx, octet, sh, sw, oh, ow, table, weights, gain, lo, top, adc, nb, pairs, out, col0,
               add):
    """All reads of a convolution straight from the plane words of its padded NHWC codes (conv_plane_words): group
    g of output position (oy, ox) of image b is the word xw[b, oy * sh + dy[g], ox * sw + dx[g], octet[g]] (the
    table's rows follow the same order). Only the images listed in `images` are read; output row b * oh * ow + p.
    Otherwise as `reads`."""
    groups = len(dy)
    positions = oh * ow
    per_image = -(-positions // BLOCK)
    padded = -(-groups // SUMMED) * SUMMED
    items = len(images) * per_image
    clipped = np.zeros(items, np.int64)
    for t in prange(items):
        _wide_vectors()
        b = images[t // per_image]
        p0 = (t % per_image) * BLOCK
        p1 = min(positions, p0 + BLOCK)
        words = conv_words(xw, b, p0, p1, dy, dx, octet, sh, sw, ow)
        idx = np.zeros((weights.shape[0], padded), np.uint64)
        i0 = b * positions + p0
        clipped[t] = _positions(words, table, weights, gain, lo, top, adc, nb, pairs, out, col0, add, i0,
                                b * positions + p1, i0, idx)
    return clipped.sum()


@njit(parallel=True, cache=True, nogil=True)
def scaled(codes, lsb, out):
    """out = codes x lsb in float64, rounded once to out's dtype (numpy's multiply-then-cast, in one pass)."""
    flat, res = codes.reshape(-1), out.reshape(-1)
    for i in prange(flat.size):
        res[i] = flat[i] * lsb
    return out


@njit(parallel=True, cache=True, nogil=True)
def scaled_transposed(codes, lsb, out):
    """out [B, N, P] = codes [B, P, N] x lsb in float64, rounded once to out's dtype (scaled, into NCHW order)."""
    for b in prange(codes.shape[0]):
        for n in range(codes.shape[2]):
            for p in range(codes.shape[1]):
                out[b, n, p] = codes[b, p, n] * lsb
    return out


@njit(parallel=True, cache=True, nogil=True)
def dequantised_transposed(codes, lsb, scale, bias, has_bias, out):
    """out [B, N, P] float32 = float32(codes [B, P, N] x lsb) x scale[n] (+ bias[n]), each step rounded to float32
    as numpy rounds `scaled` and the executor's dequantisation (float32 multiply, then float32 add)."""
    for b in prange(codes.shape[0]):
        for n in range(codes.shape[2]):
            s, c = scale[n], bias[n]
            for p in range(codes.shape[1]):
                y = np.float32(codes[b, p, n] * lsb) * s
                out[b, n, p] = y + c if has_bias else y
    return out
