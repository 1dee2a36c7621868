"""im2col for the executor: a conv input [B, C, H, W] becomes a matrix [B*OH*OW, C*kh*kw] whose columns follow
the IR's row order (c, i, j) (see cimc.ir), so that conv = im2col(x) @ matrix. Zero padding is exact for
quantised inputs too: every activation quantiser has zero point 0."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cimc.ir import ConvGeometry


def im2col(x: np.ndarray, g: ConvGeometry) -> tuple[np.ndarray, tuple[int, int, int]]:
    if g.spatial_rank == 1:
        x = x[:, :, None, :]
    top, left, bottom, right = g.pads
    if any(g.pads):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (kh, kw), (dh, dw), (sh, sw) = g.kernel, g.dilations, g.strides
    windows = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]                  # [B, C, OH, OW, kh, kw]
    b, c, oh, ow = windows.shape[:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(b * oh * ow, c * kh * kw)
    return cols, (b, oh, ow)


def col2im(y: np.ndarray, shape: tuple[int, int, int], g: ConvGeometry) -> np.ndarray:
    """[B*OH*OW, N] -> [B, N, OH, OW] (or [B, N, OW] for a 1-D conv)."""
    b, oh, ow = shape
    out = y.reshape(b, oh, ow, -1).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out[:, :, 0, :] if g.spatial_rank == 1 else out)
