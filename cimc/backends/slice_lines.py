"""The lines of bit-sliced and offset weights (cimc.weight_encoding) as the crossbar's float32 reader converts them:
one ADC conversion per line, then the lines' codes shifted by L^s and added (g- lines subtracted), or the offset
times the input sum subtracted, after the ADC."""
from __future__ import annotations

import numpy as np


def slice_lines(planes, spec, offset, encoding: str) -> np.ndarray:
    """A row tile's lines [R, P nb] (tiles' planes side by side, plane after plane): "columns" (and every offset
    encoding): every device line with g_min's offset, P = 2S (g+_s, g-_s) or 1; "rows": each slice's +v/-v difference
    line, P = S."""
    n_planes = len(planes[0])
    if spec.differential == "columns" or encoding == "offset":
        return np.concatenate([np.concatenate([tp[k] for tp in planes], axis=1) for k in range(n_planes)],
                              axis=1).astype(np.float32) + np.float32(offset)
    return np.concatenate([np.concatenate([np.subtract(tp[k], tp[k + 1], dtype=np.float64) for tp in planes], axis=1)
                           for k in range(0, n_planes, 2)], axis=1).astype(np.float32)


def slice_coefficients(target) -> np.ndarray:
    """Shift-and-add weights of a bit-sliced row tile's lines, in `slice_lines` order."""
    base, slices = target.device.levels, target.weights.slices
    if target.weights.encoding == "offset":
        return np.ones(1)
    if target.array.differential == "columns":
        return np.array([sign * base ** s for s in range(slices) for sign in (1, -1)], np.float64)
    return np.array([base ** s for s in range(slices)], np.float64)


def offset_units(target, offset: float) -> float:
    """What an offset-encoded line carries per unit of input beyond its weights, in current units: g_min's offset
    plus the level that holds weight 0; subtracted digitally, times the input sum (cimc.weight_encoding)."""
    from cimc.weight_encoding import offset_level
    return float(offset) + offset_level(target)
