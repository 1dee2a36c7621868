"""The numba kernel of cimc.backends.lut_reads for packed tables (`pack_piece`): the same reads, ADC and
shift-and-add as cimc.backends._lut_kernel, bit for bit, about 1.5-2x faster (ResNet-56's layers, one thread).

A packed table holds two lines in each uint32 word: line n in the low 16 bits, line half + n in the high 16 bits.
Its entries are non-negative and at most 21845 = 65535 / 3, so three table rows add up word by word without a carry
from one line into the other (SWAR): one 32-bit add per two lines and three lookups, where the int16 kernel
sign-extends and adds every entry of every lookup. Each read then splits the sums (mask, shift) into the int32
current of each line, the same integer as the int16 kernel's, so the ADC that follows sees the same current.
Why else it is written this way (each point measured on ResNet-56, one thread, min CPU time over 15-25 calls
interleaved in one process, 2026-12-02, under load):
* a tile of at most 18 groups (every 144-row array) is read in one loop per bit-plane that does the lookups, the ADC
  and the shift-and-add: no current buffer is stored and reloaded;
* clipped conversions are counted per line in a buffer and summed once per call, not reduced once per read;
* the table offsets of all planes come from the words' bytes (byte 8 g + j: plane j of group g) in one loop;
* that fused loop compiles to scalar code (`_six` indexes the offsets tuple with a variable): a variant with
  constant indices that LLVM vectorises 512 bits wide measured 5-10% slower on every stage (stage 1: 0.105 s
  against 0.097 s per 4 layer-calls of 100 images), and prefetching the next plane's rows slower again. The reads
  wait on their table rows more than on arithmetic: the same kernel with every lookup on one L1-resident row was up
  to 20% faster.
* a group whose pattern is 0 reads row 0 (group 0's zero row), not its own zero row: one cache line for every zero
  lookup instead of one per group. After ReLU the high planes are mostly zero patterns (bench ResNet-56, 100
  Gaussian inputs: 11-24% of groups are 0 in planes 0-4, 47-58% in plane 6, 81-95% in plane 7);
* tiles of 13 to 18 groups (`_two_positions`) are read two positions per loop: the second position's lookups and
  ADC are independent work beside the first's.
Measured 2026-12-02 (load average 8-11 on 2 cores) on conv_reads of the bench's ResNet-56 (benchmarks/
bench_crossbar.py), 100 images, one thread, min CPU over 7-9 rounds alternated in one process, tables 64-byte
aligned as lut_reads builds them, in seconds for the stages of 16/32/64 words: before 0.300/0.212/0.215 (0.727),
zero row 0.278/0.199/0.193 (0.671), both 0.238/0.204/0.195 (0.637): 12% less CPU, 21% on stage 1.
Tried on the same figures and not kept (each slower or no faster):
* summing only a plane's nonzero groups (issue 16's idea: a per-position list of their offsets, padded to whole
  triples, one loop per triple count): 1.01 s against 0.74 s; the list alone, still summing all 18 rows, cost
  about 0.17 s. Zero rows are cheap L1 hits once they share row 0; the list and the varying loop cost more;
* uint64 offsets (contiguous 512-bit loads): 0.74 s against 0.67 s;
* four positions per loop on 16-word tables: stage 1 0.283 s against two's 0.246 s;
* a zero row after each group's 256 (staggering one pattern's rows over cache sets): 0.680 against 0.682 s;
* narrower pieces (32 or 16 words, tables of 590 or 295 kB): stage 64 0.27 or 0.53 s against 0.25 s;
* BLOCK 32 or 512; each group's word as one precomputed offset into the flat NHWC words; no clip counting; the
  loop's length a constant for 16-word tables: within the noise (2-5%).
Where the time goes (the same calls): the plane reads about 80%, of which the ADC 6%; the per-position part (word
gather 6%, offsets 3%, output 7%) about 20%; with every lookup on 32 L1-resident rows the reads were 13-31% faster
per stage. Tables without 64-byte alignment (unpickled) read 20-25% slower and reorder such comparisons: two
positions per loop measured slower on them.
A kernel compiled in the running process measured about 4x slower than the same kernel loaded from numba's disk
cache by a later process (0.071 s against 0.018 s per stage-1 call). The cause (found 2026-12-02 16:30): a callee
such as _two_positions is compiled as a library of its own, optimised once, and a copy is linked into its caller
and optimised again (its read loops then vectorise); in the compiling process the caller's call resolves to the
once-optimised callee already loaded, a cached caller uses its own copy. _lut_kernel sets NUMBA_OPT=max, which
optimises fully on the first pass: the compiling process now reads as fast as a cached one. The comparisons above
were made on cached kernels; whether a variant "vectorised 512 bits wide" was timed in a compiling process is not
recorded, so that one may deserve a second look. Re-measured with cached kernels compiled at NUMBA_OPT=max (idle,
one thread, 2026-12-02 17:20-17:45): without the 512-bit hint (`_wide_vectors`) every stage within 3%; table
pieces of at most 64 or 128 lines (lut_limits.MAX_LINES) the whole run within the noise (7.5-8.1 s against
7.6-8.1 s, ResNet-56, 1,000 inputs).
"""
import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

# (importing _lut_kernel keys this file's numba cache on _lut_kernel.py and lut_limits.py too: kernel_cache)
from cimc.backends._lut_kernel import BLOCK, SUMMED, _wide_vectors, conv_words, line_adc, zero_pairs
from cimc.backends.lut_limits import MAX_LINES

HALF = MAX_LINES // 2           # words per row at most
_LOW = np.uint32(0xFFFF)
_SIXTEEN = np.uint32(16)
_BYTE = np.uint64(255)


@intrinsic
def _stack_half(typingctx):
    """A pointer to HALF int32 on the stack of the calling function (see _lut_kernel._stack_int32). Its own, half
    the size: with _stack_int32's MAX_LINES buffers the ResNet-56 default run took 12.1-14.7 s against 10.7-11.6 s
    (2026-12-02, alternated on a noisy 2-core host: suggestive, not proven)."""
    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.int32), size=HALF)
    return types.CPointer(types.int32)(), codegen


@njit(inline="always", cache=True)
def _three(flat, a, b, c, n):
    """Word n of the sum of three table rows (at flat offsets a, b, c): two 16-bit line sums, no carry between."""
    return np.uint32(np.uint32(flat[a + n] + flat[b + n]) + flat[c + n])


@njit(inline="always", cache=True)
def _split(s0, s1):
    """Two SWAR sums -> (low line, high line) int32 currents."""
    return np.int32(s0 & _LOW) + np.int32(s1 & _LOW), np.int32(s0 >> _SIXTEEN) + np.int32(s1 >> _SIXTEEN)


@njit(inline="always", cache=True)
def _six(flat, o, k, n):
    """Low and high currents of word n over the six rows at offsets o[k] .. o[k + 5] (k variable: the loops stay
    scalar, measured faster than vectorised; see the module notes)."""
    return _split(_three(flat, o[k], o[k + 1], o[k + 2], n), _three(flat, o[k + 3], o[k + 4], o[k + 5], n))


@njit(inline="always", cache=True)
def _eighteen(flat, o, n):
    l0, h0 = _six(flat, o, 0, n)
    l1, h1 = _six(flat, o, 6, n)
    l2, h2 = _six(flat, o, 12, n)
    return (l0 + l1) + l2, (h0 + h1) + h2


@njit(inline="always", cache=True)
def _twelve(flat, o, n):
    l0, h0 = _six(flat, o, 0, n)
    l1, h1 = _six(flat, o, 6, n)
    return l0 + l1, h0 + h1


@njit(inline="always", cache=True)
def _convert(cur, gain, lo, top, adc, n):
    """The ADC of _lut_kernel (adc_convert in float32, the same operations; line n's errors: line_adc): (code, 1
    if clipped else 0)."""
    v = np.rint(line_adc(np.float32(cur) * gain, adc, n))
    return np.int32(min(max(v, lo), top)), np.int32(v > top) + np.int32(v < lo)


@njit(inline="always", cache=True)
def _offsets(idx, j, q):
    """The table offsets of plane j's reads in groups q .. q + 17 (idx: 8 planes per group)."""
    k = 8 * q + j
    return (idx[k], idx[k + 8], idx[k + 16], idx[k + 24], idx[k + 32], idx[k + 40], idx[k + 48], idx[k + 56],
            idx[k + 64], idx[k + 72], idx[k + 80], idx[k + 88], idx[k + 96], idx[k + 104], idx[k + 112],
            idx[k + 120], idx[k + 128], idx[k + 136])


@njit(inline="always", cache=True)
def _row_offsets(patterns, iw, groups, uhalf, idx, base):
    """idx[base + 8 g + j] = the table row offset of plane j of group g of position iw (byte 8 g + j of its words);
    pattern 0 reads row 0 (group 0's zero row), one cache line for every zero lookup."""
    for k in range(8 * groups):
        p = np.uint32(patterns[iw, k])
        idx[base + k] = (np.uint32((k >> 3) << 8) + p) * uhalf if p != 0 else np.uint32(0)


@njit(inline="always", cache=True)
def _store(out, i, acc, acc_hi, nb, half, pairs, add, col0):
    """Position i's shift-and-add sums into row i of out (g+ minus g- codes with `pairs`); `add`, else overwrite."""
    if pairs:                                              # g+ codes (low lines) minus g- codes (high lines)
        for n in range(nb):
            acc[n] -= acc_hi[n]
    low = min(nb, half)
    if add:
        for n in range(low):
            out[i, col0 + n] += acc[n]
        for n in range(nb - low):                          # without pairs the high lines continue the outputs
            out[i, col0 + half + n] += acc_hi[n]
    else:
        for n in range(low):
            out[i, col0 + n] = acc[n]
        for n in range(nb - low):
            out[i, col0 + half + n] = acc_hi[n]


@njit(cache=True)
def _two_positions(words, table, weights, gain, lo, top, nb, pairs, out, col0, add, i0, i1, w0, idx):
    """_positions for tiles of 13 to 18 groups (one pass of 18 lookups) through an ideal ADC (adc None: a
    zero plane is then code 0, and the phantom position past i1 adds nothing), two positions per loop: the second
    position's lookups and ADC are independent work beside the first's (15-18% faster on 32-line tables, the same
    on wider ones; see the module notes). idx: 288 uint32, positions i and i + 1 at 0 and 144. A position past
    i1 reads zero rows (code 0) and is not stored; a plane is skipped where both positions' bits are all 0."""
    _wide_vectors()
    groups = words.shape[1]
    half = table.shape[1]
    uhalf = np.uint32(half)
    flat = table.reshape(-1)
    patterns = words.view(np.uint8)
    clips = carray(_stack_half(), HALF)
    acc = carray(_stack_half(), HALF)
    acc_hi = carray(_stack_half(), HALF)
    acc2 = carray(_stack_half(), HALF)
    acc2_hi = carray(_stack_half(), HALF)
    for n in range(half):
        clips[n] = 0
    for k in range(2 * 8 * SUMMED):                        # groups past the tile's read row 0 (zeros)
        idx[k] = 0
    for i in range(i0, i1, 2):
        two = i + 1 < i1
        iw = i - w0
        nonzero = np.uint64(0)
        for g in range(groups):
            nonzero |= words[iw, g]
        _row_offsets(patterns, iw, groups, uhalf, idx, 0)
        if two:
            for g in range(groups):
                nonzero |= words[iw + 1, g]
            _row_offsets(patterns, iw + 1, groups, uhalf, idx, 8 * SUMMED)
        else:
            for k in range(8 * SUMMED):
                idx[8 * SUMMED + k] = 0
        for n in range(half):
            acc[n] = 0
            acc_hi[n] = 0
            acc2[n] = 0
            acc2_hi[n] = 0
        for j in range(weights.shape[0]):
            if (nonzero >> np.uint64(8 * j)) & _BYTE == 0:
                continue                                   # no bit set in either position: codes 0
            w = np.int32(weights[j])
            o = _offsets(idx, j, 0)
            o2 = _offsets(idx, j, SUMMED)
            for n in range(half):
                un = np.uint32(n)
                a, b = _eighteen(flat, o, un)
                a2, b2 = _eighteen(flat, o2, un)
                ca, xa = _convert(a, gain, lo, top, None, n)
                cb, xb = _convert(b, gain, lo, top, None, n)
                ca2, xa2 = _convert(a2, gain, lo, top, None, n)
                cb2, xb2 = _convert(b2, gain, lo, top, None, n)
                clips[n] += (xa + xb) + (xa2 + xb2)
                acc[n] += w * ca
                acc_hi[n] += w * cb
                acc2[n] += w * ca2
                acc2_hi[n] += w * cb2
        _store(out, i, acc, acc_hi, nb, half, pairs, add, col0)
        if two:
            _store(out, i + 1, acc2, acc2_hi, nb, half, pairs, add, col0)
    clipped = 0
    for n in range(half):
        clipped += clips[n]
    return clipped


@njit(cache=True)
def _positions(words, table, weights, gain, lo, top, adc, nb, pairs, out, col0, add, i0, i1, w0, idx):
    """Positions i0..i1 (rows of out); position i's words are words[i - w0]; `add` to out, else overwrite.
    idx [8 (slots + 18)] uint32 zeros, 8 planes per group: slots = groups rounded up to 6 (at most 18 groups) or
    to 18."""
    _wide_vectors()
    groups = words.shape[1]
    if 12 < groups <= SUMMED and adc is None:              # one pass of 18 lookups: two positions at a time
        return _two_positions(words, table, weights, gain, lo, top, nb, pairs, out, col0, add, i0, i1, w0, idx)
    half = table.shape[1]
    uhalf = np.uint32(half)
    slots = -(-groups // 6) * 6 if groups <= SUMMED else -(-groups // SUMMED) * SUMMED
    last = slots - SUMMED if groups > SUMMED else 0       # the last pass (fused with the ADC) starts here
    flat = table.reshape(-1)
    patterns = words.view(np.uint8)                        # [positions, 8 groups]: the table row of every read
    cl = carray(_stack_half(), HALF)
    ch = carray(_stack_half(), HALF)
    clips = carray(_stack_half(), HALF)
    acc = carray(_stack_half(), HALF)
    acc_hi = carray(_stack_half(), HALF)
    for n in range(half):
        clips[n] = 0
    for i in range(i0, i1):
        iw = i - w0
        nonzero = np.uint64(0)
        for g in range(groups):
            nonzero |= words[iw, g]
        _row_offsets(patterns, iw, groups, uhalf, idx, 0)   # byte k of the words: plane k % 8 of group k // 8
        for n in range(half):
            acc[n] = 0
            acc_hi[n] = 0
        for j in range(weights.shape[0]):
            if (nonzero >> np.uint64(8 * j)) & _BYTE == 0:
                zero_pairs(adc, np.int32(weights[j]), acc, acc_hi, clips, half)   # ideal ADC: nothing
                continue                                   # no bit set: current 0, code 0
            for q in range(0, last, SUMMED):               # tiles of more than 18 groups: all passes but the last
                o = _offsets(idx, j, q)
                if q == 0:
                    for n in range(half):
                        cl[n], ch[n] = _eighteen(flat, o, np.uint32(n))
                else:
                    for n in range(half):
                        a, b = _eighteen(flat, o, np.uint32(n))
                        cl[n] += a
                        ch[n] += b
            w = np.int32(weights[j])
            o = _offsets(idx, j, last)                    # padding slots are 0: row 0 (group 0, pattern 0), zeros
            if last > 0:
                for n in range(half):
                    a, b = _eighteen(flat, o, np.uint32(n))
                    ca, xa = _convert(a + cl[n], gain, lo, top, adc, n)
                    cb, xb = _convert(b + ch[n], gain, lo, top, adc, half + n)
                    clips[n] += xa + xb
                    acc[n] += w * ca
                    acc_hi[n] += w * cb
            elif slots == 18:                              # (an ideal ADC: _two_positions)
                for n in range(half):
                    a, b = _eighteen(flat, o, np.uint32(n))
                    ca, xa = _convert(a, gain, lo, top, adc, n)
                    cb, xb = _convert(b, gain, lo, top, adc, half + n)
                    clips[n] += xa + xb
                    acc[n] += w * ca
                    acc_hi[n] += w * cb
            elif slots == 12:
                for n in range(half):
                    a, b = _twelve(flat, o, np.uint32(n))
                    ca, xa = _convert(a, gain, lo, top, adc, n)
                    cb, xb = _convert(b, gain, lo, top, adc, half + n)
                    clips[n] += xa + xb
                    acc[n] += w * ca
                    acc_hi[n] += w * cb
            else:
                for n in range(half):
                    a, b = _six(flat, o, 0, np.uint32(n))
                    ca, xa = _convert(a, gain, lo, top, adc, n)
                    cb, xb = _convert(b, gain, lo, top, adc, half + n)
                    clips[n] += xa + xb
                    acc[n] += w * ca
                    acc_hi[n] += w * cb
        _store(out, i, acc, acc_hi, nb, half, pairs, add, col0)
    clipped = 0
    for n in range(half):
        clipped += clips[n]
    return clipped


def _slots(groups):
    """Groups the offset array holds (8 uint32 offsets each): slots (see _positions) plus one pass of padding."""
    return (-(-groups // 6) * 6 if groups <= SUMMED else -(-groups // SUMMED) * SUMMED) + SUMMED


@njit(parallel=True, cache=True, nogil=True)
def reads(words, table, weights, gain, lo, top, adc, nb, pairs, out, col0, add, width):
    """_lut_kernel.reads on a packed table; `width` = _slots(groups)."""
    m = words.shape[0]
    blocks = -(-m // BLOCK)
    clipped = np.zeros(blocks, np.int64)
    for b in prange(blocks):
        _wide_vectors()
        idx = np.zeros(8 * width, np.uint32)
        clipped[b] = _positions(words, table, weights, gain, lo, top, adc, nb, pairs, out, col0, add, b * BLOCK,
                                min(m, b * BLOCK + BLOCK), 0, idx)
    return clipped.sum()


@njit(parallel=True, cache=True, nogil=True)
def conv_reads(xw, images, dy, dx, octet, sh, sw, oh, ow, table, weights, gain, lo, top, adc, nb, pairs, out, col0, add,
               width):
    """_lut_kernel.conv_reads on a packed table; `width` = _slots(groups)."""
    positions = oh * ow
    per_image = -(-positions // BLOCK)
    items = len(images) * per_image
    clipped = np.zeros(items, np.int64)
    for t in prange(items):
        _wide_vectors()
        b = images[t // per_image]
        p0 = (t % per_image) * BLOCK
        p1 = min(positions, p0 + BLOCK)
        words = conv_words(xw, b, p0, p1, dy, dx, octet, sh, sw, ow)
        idx = np.zeros(8 * width, np.uint32)
        i0 = b * positions + p0
        clipped[t] = _positions(words, table, weights, gain, lo, top, adc, nb, pairs, out, col0, add, i0,
                                b * positions + p1, i0, idx)
    return clipped.sum()
