"""im2col for the executor: a conv input [B, C, *spatial] (1-D, 2-D or 3-D) becomes a matrix
[B*positions, C*prod(kernel)] whose columns follow the IR's row order (c, kd, kh, kw) (see cimc.ir), so that
conv = im2col(x) @ matrix. Zero padding is exact for quantised inputs too: every activation quantiser has zero
point 0. A Conv1d runs as a height-1 2-D conv (ConvGeometry.lift)."""
from __future__ import annotations

import itertools

import numpy as np

from cimc.ir import ConvGeometry


def im2col(x: np.ndarray, g: ConvGeometry) -> tuple[np.ndarray, tuple[int, ...]]:
    """x [B, C, *spatial] -> (cols [B*prod(out), C*prod(kernel)], (B, *out)), any dtype. One strided copy per
    kernel offset out of a zero-padded channels-last copy: 2-5x faster than reshaping a sliding-window view."""
    x = g.lift(x)
    n = g.rank
    b, c, sizes = x.shape[0], x.shape[1], x.shape[2:]
    begins, ends = g.pads[:n], g.pads[n:]
    out = g.output_size(sizes)
    padded = np.zeros((b,) + tuple(s + p + q for s, p, q in zip(sizes, begins, ends)) + (c,), x.dtype)
    padded[(slice(None),) + tuple(slice(p, p + s) for p, s in zip(begins, sizes))] = np.moveaxis(x, 1, -1)
    cols = np.empty((b,) + out + (c,) + tuple(g.kernel), x.dtype)
    for offset in itertools.product(*(range(k) for k in g.kernel)):
        window = tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                       for i, d, o, s in zip(offset, g.dilations, out, g.strides))
        cols[(slice(None),) * (n + 2) + offset] = padded[(slice(None),) + window]
    return cols.reshape(b * int(np.prod(out)), c * int(np.prod(g.kernel))), (b,) + out


def col2im(y: np.ndarray, shape: tuple[int, ...], g: ConvGeometry) -> np.ndarray:
    """[B*prod(out), N] -> [B, N, *out] (a Conv1d's height axis dropped again)."""
    out = np.moveaxis(y.reshape(shape + (-1,)), -1, 1)
    return np.ascontiguousarray(g.unlift(out))


def im2col_adjoint(dcols: np.ndarray, x_shape: tuple[int, ...], g: ConvGeometry) -> np.ndarray:
    """The transpose of `im2col`: d cols [B*prod(out), C*prod(kernel)] -> d x [B, C, *spatial] (each input
    position gathers the entries of every column it was copied into; training's backward pass)."""
    lifted = tuple(x_shape[:2]) + ((1,) if g.spatial_rank == 1 else ()) + tuple(x_shape[2:])
    n = g.rank
    b, c, sizes = lifted[0], lifted[1], lifted[2:]
    begins, ends = g.pads[:n], g.pads[n:]
    out = g.output_size(sizes)
    cols = dcols.reshape((b,) + out + (c,) + tuple(g.kernel))
    padded = np.zeros((b,) + tuple(s + p + q for s, p, q in zip(sizes, begins, ends)) + (c,), dcols.dtype)
    for offset in itertools.product(*(range(k) for k in g.kernel)):
        window = tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                       for i, d, o, s in zip(offset, g.dilations, out, g.strides))
        padded[(slice(None),) + window] += cols[(slice(None),) * (n + 2) + offset]
    inner = padded[(slice(None),) + tuple(slice(p, p + s) for p, s in zip(begins, sizes))]
    return np.moveaxis(inner, -1, 1).reshape(x_shape)
