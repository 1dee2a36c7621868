"""The run stage of a ConvTranspose on the crossbar (cimc.ir): its operand is the input itself, one row per input
position, and its product holds, per input position, every output channel at every kernel offset. This module
forms the operand and adds the products into the output (overlap-add): the product at input position p and
kernel offset o lands at output position p * stride + o * dilation of the full result, which is then cropped by
the pads and extended by output_padding. The adds run in a fixed order (kernel offsets in row-major order), in
float32, so two backends with equal products give bit-identical outputs."""
from __future__ import annotations

import itertools

import numpy as np

from cimc.ir import ConvGeometry


def input_rows(x: np.ndarray, g: ConvGeometry) -> tuple[np.ndarray, tuple[int, ...]]:
    """x [B, C, *spatial] -> (rows [B*prod(spatial), C] channels-last, (B, *spatial) of the lifted input)."""
    x = g.lift(x)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, x.shape[1]), (x.shape[0],) + x.shape[2:]


def overlap_add(y: np.ndarray, shape: tuple[int, ...], g: ConvGeometry, bias: np.ndarray | None) -> np.ndarray:
    """y [B*prod(spatial), out_channels*prod(kernel)] (float32, columns (cout, *kernel offset)) -> the output
    [B, out_channels, *out], bias added once per output channel after the adds."""
    b, sizes = shape[0], shape[1:]
    n = g.rank
    out = g.output_size(sizes)
    head = g.pads[:n]
    full = tuple((size - 1) * s + (k - 1) * d + 1 for size, s, k, d in zip(sizes, g.strides, g.kernel, g.dilations))
    canvas_size = tuple(max(f, h + o) for f, h, o in zip(full, head, out))   # output_padding's zeros lie past full
    canvas = np.zeros((b, g.out_channels) + canvas_size, np.float32)
    # [B, *spatial, Cout, *kernel] -> [*kernel, B, Cout, *spatial]: one strided view per kernel offset
    parts = np.moveaxis(y.reshape((b,) + sizes + (g.out_channels,) + tuple(g.kernel)),
                        tuple(range(n + 2, 2 * n + 2)) + (n + 1,), tuple(range(n)) + (n + 1,))
    for offset in itertools.product(*(range(k) for k in g.kernel)):
        window = tuple(slice(i * d, i * d + (size - 1) * s + 1, s)
                       for i, d, size, s in zip(offset, g.dilations, sizes, g.strides))
        canvas[(slice(None), slice(None)) + window] += parts[offset]
    result = canvas[(slice(None), slice(None)) + tuple(slice(h, h + o) for h, o in zip(head, out))]
    if bias is not None:
        result = result + bias.astype(np.float32).reshape((-1,) + (1,) * n)
    return np.ascontiguousarray(g.unlift(result))
