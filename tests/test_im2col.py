"""im2col against a per-element loop: cols[(b, y, x), (c, i, j)] = padded input at (y*s + i*d, x*s + j*d)."""
import numpy as np
import pytest

from cimc.im2col import col2im, im2col
from cimc.ir import ConvGeometry


def _slow_im2col(x, g):
    if g.spatial_rank == 1:
        x = x[:, :, None, :]
    top, left, bottom, right = g.pads
    b, c, h, w = x.shape
    (kh, kw), (dh, dw), (sh, sw) = g.kernel, g.dilations, g.strides
    oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    cols = np.zeros((b * oh * ow, c * kh * kw), x.dtype)
    for n in range(b):
        for y in range(oh):
            for xx in range(ow):
                for ch in range(c):
                    for i in range(kh):
                        for j in range(kw):
                            r, s = y * sh + i * dh - top, xx * sw + j * dw - left
                            if 0 <= r < h and 0 <= s < w:
                                cols[(n * oh + y) * ow + xx, (ch * kh + i) * kw + j] = x[n, ch, r, s]
    return cols, (b, oh, ow)


CASES = [((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
         ((3, 2), (2, 1), (0, 1, 2, 0), (1, 1), 2),     # asymmetric pads, stride 2 rows only
         ((2, 3), (1, 2), (1, 0, 0, 1), (2, 1), 2),     # dilation
         ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 2),     # 1x1 stride 2
         ((1, 3), (1, 2), (0, 1, 0, 2), (1, 2), 1)]     # 1-D conv (kernel, strides, pads, dilations on W)


@pytest.mark.parametrize("kernel,strides,pads,dilations,rank", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_im2col_equals_the_per_element_loop(kernel, strides, pads, dilations, rank, dtype):
    g = ConvGeometry(kernel, strides, pads, dilations, 1, 3, 4, spatial_rank=rank)
    shape = (2, 3, 7) if rank == 1 else (2, 3, 6, 7)
    x = np.random.default_rng(1).integers(1, 200, shape).astype(dtype)
    cols, out_shape = im2col(x, g)
    want, want_shape = _slow_im2col(x, g)
    assert out_shape == want_shape and cols.dtype == dtype and np.array_equal(cols, want)
    flat = np.arange(len(cols) * 4, dtype=np.float32).reshape(len(cols), 4)   # [(b, y, x), n]
    y = col2im(flat, out_shape, g)
    b, oh, ow = out_shape
    assert y.shape == ((b, 4, ow) if rank == 1 else (b, 4, oh, ow))
    assert y[1, 3].ravel()[-1] == flat[-1, 3] and y[0, 2].ravel()[0] == flat[0, 2]


def _slow_im2col_3d(x, g):
    """cols[(b, z, y, x), (c, a, i, j)] = padded input at (z*s0 + a*d0, y*s1 + i*d1, x*s2 + j*d2)."""
    b, c, *sizes = x.shape
    out = [(n + g.pads[a] + g.pads[3 + a] - (k - 1) * d - 1) // s + 1
           for a, (n, k, d, s) in enumerate(zip(sizes, g.kernel, g.dilations, g.strides))]
    cols = np.zeros((b * int(np.prod(out)), c * int(np.prod(g.kernel))), x.dtype)
    row = 0
    for n in range(b):
        for pos in np.ndindex(*out):
            col = 0
            for ch in range(c):
                for offset in np.ndindex(*g.kernel):
                    at = [p * s + o * d - pad for p, s, o, d, pad in zip(pos, g.strides, offset, g.dilations, g.pads)]
                    if all(0 <= a < size for a, size in zip(at, sizes)):
                        cols[row, col] = x[(n, ch) + tuple(at)]
                    col += 1
            row += 1
    return cols, (b, *out)


@pytest.mark.parametrize("kernel,strides,pads,dilations", [((2, 3, 2), (1, 2, 2), (1, 0, 2, 0, 1, 1), (2, 1, 1)),
                                                           ((1, 1, 1), (2, 1, 3), (0, 0, 0, 0, 0, 0), (1, 1, 1))])
def test_im2col_3d_equals_the_per_element_loop(kernel, strides, pads, dilations):
    g = ConvGeometry(kernel, strides, pads, dilations, 1, 2, 3, spatial_rank=3)
    x = np.random.default_rng(2).integers(1, 200, (2, 2, 4, 5, 6)).astype(np.float32)
    cols, out_shape = im2col(x, g)
    want, want_shape = _slow_im2col_3d(x, g)
    assert out_shape == want_shape and np.array_equal(cols, want)
    assert out_shape[1:] == g.output_size(x.shape[2:])
    y = col2im(np.arange(len(cols) * 3, dtype=np.float32).reshape(len(cols), 3), out_shape, g)
    assert y.shape == (2, 3) + out_shape[1:] and y[1, 2].ravel()[-1] == len(cols) * 3 - 1
