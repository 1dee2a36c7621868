"""im2col for the executor: a conv input [B, C, H, W] becomes a matrix [B*OH*OW, C*kh*kw] whose columns follow
the IR's row order (c, i, j) (see cimc.ir), so that conv = im2col(x) @ matrix. Zero padding is exact for
quantised inputs too: every activation quantiser has zero point 0."""
from __future__ import annotations

import numpy as np

from cimc.ir import ConvGeometry


def im2col(x: np.ndarray, g: ConvGeometry) -> tuple[np.ndarray, tuple[int, int, int]]:
    """x [B, C, H, W] (or [B, C, W]) -> (cols [B*OH*OW, C*kh*kw], (B, OH, OW)), any dtype. One strided copy per
    kernel offset (i, j) out of a zero-padded NHWC copy: 2-5x faster than reshaping a sliding-window view."""
    if g.spatial_rank == 1:
        x = x[:, :, None, :]
    top, left, bottom, right = g.pads
    (kh, kw), (dh, dw), (sh, sw) = g.kernel, g.dilations, g.strides
    b, c, h, w = x.shape
    hp, wp = h + top + bottom, w + left + right
    oh, ow = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw - 1) // sw + 1
    padded = np.zeros((b, hp, wp, c), x.dtype)
    padded[:, top:top + h, left:left + w, :] = x.transpose(0, 2, 3, 1)
    cols = np.empty((b, oh, ow, c, kh, kw), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, :, i, j] = padded[:, i * dh:i * dh + (oh - 1) * sh + 1:sh,
                                            j * dw:j * dw + (ow - 1) * sw + 1:sw, :]
    return cols.reshape(b * oh * ow, c * kh * kw), (b, oh, ow)


def col2im(y: np.ndarray, shape: tuple[int, int, int], g: ConvGeometry) -> np.ndarray:
    """[B*OH*OW, N] -> [B, N, OH, OW] (or [B, N, OW] for a 1-D conv)."""
    b, oh, ow = shape
    out = y.reshape(b, oh, ow, -1).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out[:, :, 0, :] if g.spatial_rank == 1 else out)
