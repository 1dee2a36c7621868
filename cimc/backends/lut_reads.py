"""Fused bit-serial reads by table lookup (the crossbar backend's `gemm="lut"`), compiled with numba.

One row tile of a layer holds integer conductances G [r, lines] (units of step / grid). Its rows are cut into
groups of 8; for every group g and every 8-bit pattern p a table holds T[g, p, :] = sum_i bit_i(p) G[8g + i, :].
The current of one read (one bit-plane of one pixel) is then sum_g T[g, pattern_g, :]: r / 8 lookups instead of r
multiply-adds, exact in int32. The patterns come from the uint8 codes, eight codes to a 64-bit word, bit-transposed
once per code word (`plane_words`): ((word >> j) & 0x0101..01) * 0x0102040810204080 >> 56 is bit j of all eight as
one byte, row 8g + i at bit i, and byte j of the plane word.
Each current goes through the ADC and the shift-and-add at once, so no plane, current or code array is
materialised. The ADC is the one of `cimc.targets.adc.adc_convert`, operation for operation in float32
(float32(current) * float32 gain, then a non-ideal ADC's per-line gain, offset and INL as `AdcLines.apply` adds
them, round half to even, clip), so a table read equals the MatMulInteger read on the same conductance grid bit for
bit. (Sense noise, drawn per conversion, is not fused: such reads run as float32 GEMMs.) The kernel reads at most
MAX_LINES lines per call: `table_pieces` cuts a wider row tile by outputs, keeping each output's g+ and g- lines in
one piece (with their ADC errors), and packs a piece whose entries all fit 0..21845 two lines to a uint32 word
(`pack_piece`), read by the faster kernel of cimc.backends._lut_packed with the same integer currents; other pieces
are read by cimc.backends._lut_kernel.

A convolution whose row tiles hold whole input channels, starting on a multiple of 8, is read without im2col
(`read_conv_tile`): the codes are laid out once as zero-padded NHWC uint8, so that eight consecutive channels at one
input pixel are one 64-bit word. A tile's table then takes its rows in the order (kernel offset, channel) instead of
the IR's (channel, kernel offset) - the same conductances summed in another order, so the same integer currents
(`conv_order`)."""
from __future__ import annotations

import numpy as np

from cimc.backends.lut_limits import MAX_LINES  # lines per kernel call; wider tiles go in pieces

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
    out = aligned_empty(table.shape, np.int16 if largest < 1 << 15 else np.int32)
    out[...] = table
    return out


def plane_words(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [m, r] -> plane words uint64 [m, ceil(r / 8)]: byte j of word g holds bit j (plane j) of codes
    8g .. 8g + 7, code 8g + i at bit i - the table pattern of group g in plane j (zero codes pad the last word)."""
    from cimc.backends._lut_kernel import row_plane_words
    m, r = codes.shape
    return row_plane_words(codes, np.empty((m, -(-r // GROUP)), np.uint64))


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised C array whose data start on a 64-byte boundary: a 32-line int16 table row is then exactly
    one cache line (numpy's 16-byte alignment splits most rows over two; measured 15% slower reads)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(size + 64, np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start:start + size].view(dtype).reshape(shape)


def conv_order(c0: int, c1: int, kernel_size: int) -> np.ndarray:
    """Rows of a tile holding input channels [c0, c1) (IR order: row (c - c0) * kernel_size + k) in the order of a
    direct convolution read: kernel offset k, then octet o, then channel c0 + 8 o + t; -1 marks the zero rows that
    pad the last octet. Returns an index array of kernel_size * 8 * ceil((c1 - c0) / 8) rows."""
    octets = -(-(c1 - c0) // GROUP)
    c = np.arange(octets * GROUP)                                   # channel offset within the tile
    rows = c[None, :] * kernel_size + np.arange(kernel_size)[:, None]    # [k, channel]
    rows[:, c >= c1 - c0] = -1
    return rows.reshape(-1)


def conv_table(g_int: np.ndarray, c0: int, c1: int, kernel_size: int) -> np.ndarray:
    """pattern_table of a tile's integer conductances [r, lines] (IR row order) with rows in conv_order."""
    order = conv_order(c0, c1, kernel_size)
    rows = np.zeros((len(order), g_int.shape[1]), g_int.dtype)
    rows[order >= 0] = g_int[order[order >= 0]]
    return pattern_table(rows)


def conv_groups(c0: int, c1: int, kernel: tuple, dilations: tuple) -> tuple:
    """Where each group of conv_order reads in the padded NHWC words: (dy, dx, octet) int64 arrays, group
    g = k * octets + o at pixel offset (k // kw * dh, k % kw * dw) and word c0 / 8 + o."""
    octets = -(-(c1 - c0) // GROUP)
    k, o = np.divmod(np.arange(kernel[0] * kernel[1] * octets), octets)
    return (k // kernel[1] * dilations[0]).astype(np.int64), (k % kernel[1] * dilations[1]).astype(np.int64), \
        (c0 // GROUP + o).astype(np.int64)


def padded_plane_words(codes: np.ndarray, bits: int, pads: tuple, out: np.ndarray | None = None,
                       quant=None) -> np.ndarray:
    """Integer codes [B, C, H, W] (float or integer dtype, `bits` <= 8 bits each, two's complement when negative)
    -> plane words (as plane_words) of the zero-padded NHWC layout, uint64 [B, top + H + bottom, left + W + right,
    ceil(C / 8)]: word (b, y, x, o) covers channels 8o .. 8o + 7 of padded pixel (y, x). `out`, a previous result
    of the same shape (zero borders), is reused. With `quant` (a cimc.ir.ActQuant) `codes` are the float32
    activations, quantised in the same pass exactly as cimc.graph_run.quantize_activation does."""
    from cimc.backends._lut_kernel import conv_plane_words, quantised_plane_words
    b, c, h, w = codes.shape
    top, left, bottom, right = pads
    shape = (b, top + h + bottom, left + w + right, -(-c // GROUP))
    if out is None or out.shape != shape:
        out = np.zeros(shape, np.uint64)
    if quant is not None:
        return quantised_plane_words(np.ascontiguousarray(codes, np.float32), np.float32(quant.scale),
                                     np.float32(quant.qmin), np.float32(quant.qmax), (1 << bits) - 1, top, left, out)
    return conv_plane_words(np.ascontiguousarray(codes), (1 << bits) - 1, top, left, out)


def table_pieces(table: np.ndarray, nb: int, pairs: bool, max_lines: int = MAX_LINES, adc=None) -> list:
    """pattern_table [groups, 256, lines] -> [(table [groups * 256, <= max_lines lines], first output, outputs,
    ADC errors)], each table packed where it can be (pack_piece: uint32 [groups * 256, lines / 2]); the
    kernel reads at most `max_lines` lines per call; with `pairs` a piece keeps the g+ lines of its outputs followed
    by their g- lines (lines [0, nb) are g+, [nb, 2 nb) are g-). `adc`: the tile's cimc.targets.adc.AdcLines (one
    gain and offset per table line) or None (an ideal ADC); each piece keeps its lines' (gain, offset, INL), or
    None."""
    flat = table.reshape(-1, table.shape[2])
    step = max_lines // 2 if pairs else max_lines
    pieces = []
    for o0 in range(0, nb, step):
        o1 = min(nb, o0 + step)
        lines = np.r_[o0:o1, nb + o0:nb + o1] if pairs else np.arange(o0, o1)
        piece = aligned_empty((len(flat), len(lines)), flat.dtype)
        piece[...] = flat[:, lines]
        pieces.append((pack_piece(piece), o0, o1 - o0, None if adc is None else _piece_lines(adc, lines)))
    return pieces


def _piece_lines(adc, lines: np.ndarray) -> tuple:
    """A piece's per-line ADC (gain, offset float32, INL in LSB), in its table's line order, padded to an even count
    (gain 1, offset 0) so that a packed table's high half, line ceil(lines / 2) + n, always has one."""
    count = len(lines) + len(lines) % 2
    gain, offset = np.ones(count, np.float32), np.zeros(count, np.float32)
    if adc.gain is not None:
        gain[:len(lines)] = adc.gain[lines]
    if adc.offset is not None:
        offset[:len(lines)] = adc.offset[lines]
    return gain, offset, adc.inl


def piece_adc(lines: tuple | None, lo: int, top: int) -> tuple | None:
    """The kernels' ADC errors (_lut_kernel.line_adc) of a piece's (gain, offset, INL): the float32 constants of
    AdcLines.apply, then each line's code of a zero current and whether it clips (int32; the kernels add them for a
    bit-plane with no bit set instead of reading it), the same float32 operations; or None for an ideal ADC."""
    if lines is None:
        return None
    gain, offset, inl = lines
    low, inverse, inl4 = np.float32(lo), np.float32(1.0 / (top - lo)), np.float32(4 * inl)
    t = np.zeros(len(gain), np.float32) * gain + offset
    s = np.minimum(np.maximum((t - low) * inverse, np.float32(0)), np.float32(1))
    t = np.rint(t + (s * (np.float32(1) - s)) * inl4)
    clips = ((t > top) | (t < lo)).astype(np.int32)
    return gain, offset, low, inverse, inl4, np.clip(t, lo, top).astype(np.int32), clips


PACKABLE = (1 << 16) // 3                 # largest entry of a packed table: three add up in 16 bits (21845)


def pack_piece(piece: np.ndarray) -> np.ndarray:
    """A table piece [rows, lines] whose entries are all in 0 .. PACKABLE -> uint32 [rows, ceil(lines / 2)], word n
    holding line n (low 16 bits) and line ceil(lines / 2) + n (high 16 bits; 0 past the last line): the packed
    kernel (cimc.backends._lut_packed) reads it. With g+ and g- lines (`table_pieces`' pairs) the low halves are
    the g+ lines and the high halves the g- lines. Any other piece is returned as it is (the int16 kernel)."""
    if piece.dtype != np.int16 or piece.size == 0 or piece.min() < 0 or piece.max() > PACKABLE:
        return piece
    rows, lines = piece.shape
    half = -(-lines // 2)
    packed = aligned_empty((rows, half), np.uint32)
    packed[...] = piece[:, :half].astype(np.uint32)
    packed[:, :lines - half] |= piece[:, half:].astype(np.uint32) << np.uint32(16)
    return packed


def available() -> bool:
    """numba is installed (without importing it: that takes about 0.5 s)."""
    import importlib.util
    return importlib.util.find_spec("numba") is not None


def import_error() -> str | None:
    """Why the kernel cannot be imported ("ImportError: ..."), or None where it can. Installed is not enough:
    numba refuses to import beside a numpy newer than it supports. Imports numba (about 0.5 s, once a process)."""
    if not available():
        return "ModuleNotFoundError: No module named 'numba'"
    try:
        import cimc.backends._lut_kernel  # noqa: F401
    except Exception as exc:           # numba raises ImportError (or worse) where it does not fit numpy or llvmlite
        return f"{type(exc).__name__}: {exc}"
    return None


def concurrent_threads() -> int:
    """How many threads may run the kernels at once, each kernel on its own thread (cimc.concurrent_chunks):
    numba's thread count where its threading layer takes parallel kernels from several threads at once (OpenMP,
    TBB), else 1 (its workqueue layer aborts the process on a concurrent launch). Starts the layer if no kernel ran
    yet (one tiny kernel call)."""
    import numba

    from cimc.backends import _lut_kernel
    try:
        layer = numba.threading_layer()
    except ValueError:                  # no parallel kernel ran yet: the layer is chosen at the first launch
        _lut_kernel.scaled(np.zeros(1, np.int64), 1.0, np.empty(1))
        layer = numba.threading_layer()
    return numba.get_num_threads() if layer in ("omp", "tbb") else 1


def single_thread() -> None:
    """The kernels that this thread calls from now on run on this thread alone (numba's count is per thread)."""
    import numba
    numba.set_num_threads(1)


def _plane_weights(weights: np.ndarray, top: int) -> np.ndarray:
    """The kernel's plane weights (int64), once it is known that its int32 shift-and-add sums cannot overflow."""
    if top * (1 << len(weights)) >= 1 << 31:
        raise OverflowError("gemm='lut' sums codes in int32: too many ADC bits and planes")
    return weights.astype(np.int64)


def read_tile(words: np.ndarray, pieces: list, weights: np.ndarray, gain: np.float32, lo: int, top: int,
              pairs: bool, out: np.ndarray, col0: int = 0, add: bool = True) -> int:
    """All bit-plane reads of one row tile: words [m, groups] (plane_words), its table pieces (table_pieces), plane
    weights (LSB first), ADC gain (codes per current unit) and range lo..top (each piece's line errors, if any, on
    top: table_pieces' adc); adds sum_j w_j * code_j (g+ minus g-
    codes where `pairs`) into out [m, col0:col0 + outputs] (int64, or int32 where the sums fit), or with add=False
    writes it there. Returns the number of clipped conversions."""
    from cimc.backends import _lut_kernel, _lut_packed   # numba compiles them on first use (cached on disk)
    w = _plane_weights(weights, top)
    clipped = 0
    for piece, o0, nb, lines in pieces:
        args = (words, piece, w, np.float32(gain), np.float32(lo), np.float32(top), piece_adc(lines, lo, top), nb,
                bool(pairs), out, col0 + o0, bool(add))
        if piece.dtype == np.uint32:
            clipped += int(_lut_packed.reads(*args, _lut_packed._slots(words.shape[1])))
        else:
            clipped += int(_lut_kernel.reads(*args))
    return clipped


def read_conv_tile(words: np.ndarray, images: np.ndarray, groups: tuple, strides: tuple, out_hw: tuple, pieces: list,
                   weights: np.ndarray, gain: np.float32, lo: int, top: int, pairs: bool, out: np.ndarray,
                   col0: int = 0, add: bool = True) -> int:
    """read_tile for a convolution, straight from padded_plane_words: the listed images' output positions (rows
    b * oh * ow + p of out), groups from conv_groups, pieces of a conv_table."""
    from cimc.backends import _lut_kernel, _lut_packed
    w = _plane_weights(weights, top)
    dy, dx, octet = groups
    clipped = 0
    for piece, o0, nb, lines in pieces:
        args = (words, images, dy, dx, octet, strides[0], strides[1], out_hw[0], out_hw[1], piece, w,
                np.float32(gain), np.float32(lo), np.float32(top), piece_adc(lines, lo, top), nb, bool(pairs), out,
                col0 + o0, bool(add))
        if piece.dtype == np.uint32:
            clipped += int(_lut_packed.conv_reads(*args, _lut_packed._slots(len(dy))))
        else:
            clipped += int(_lut_kernel.conv_reads(*args))
    return clipped


def scaled(codes: np.ndarray, lsb: float, out: np.ndarray) -> np.ndarray:
    """out = codes (int64) x lsb in float64, rounded once to out's dtype; returns out."""
    from cimc.backends._lut_kernel import scaled
    return scaled(codes, float(lsb), out)


def scaled_transposed(codes: np.ndarray, lsb: float, out: np.ndarray) -> np.ndarray:
    """out [B, N, P] = codes [B, P, N] (int32 or int64) x lsb in float64, rounded once to out's dtype; returns out."""
    from cimc.backends._lut_kernel import scaled_transposed
    return scaled_transposed(codes, float(lsb), out)


def dequantised_transposed(codes: np.ndarray, lsb: float, scale: np.ndarray, bias: np.ndarray | None,
                           out: np.ndarray) -> np.ndarray:
    """out [B, N, P] float32 = float32(codes [B, P, N] x lsb) * scale[n] (+ bias[n]): scaled_transposed followed by
    the executor's dequantisation (cimc.graph_run.run_xbar), bit for bit, in one pass; returns out."""
    from cimc.backends._lut_kernel import dequantised_transposed
    scale = np.ascontiguousarray(scale, np.float32)
    has_bias = bias is not None
    bias = np.ascontiguousarray(bias if has_bias else np.zeros_like(scale), np.float32)
    return dequantised_transposed(codes, float(lsb), scale, bias, has_bias, out)
