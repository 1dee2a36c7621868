"""The lines of bit-sliced and offset weights (cimc.weight_encoding) as the crossbar's float32 and lut readers
convert them: one ADC conversion per line, then the lines' codes shifted by L^s and added (g- lines subtracted), or
the offset times the input sum subtracted, after the ADC, or (offset_reference = "column") each tile's reference
line's code subtracted from each of its columns' codes (`reference_index`, `minus_reference`); and what each line's
read adds: its own ADC (`slice_adc_lines`) and read-noise draw (`noise_lines_factor` for the lossless sum)."""
from __future__ import annotations

import numpy as np


def slice_lines(planes, spec, offset, encoding: str) -> np.ndarray:
    """A row tile's lines [R, P nb] (tiles' planes side by side, plane after plane): "columns" (and every offset
    encoding): every device line with g_min's offset, P = 2S (g+_s, g-_s) or 1 (offset; with a reference column, the
    nb weight lines then one reference line per tile); "rows": each slice's +v/-v difference line, P = S."""
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


def line_slices(target) -> np.ndarray:
    """The slice each of a bit-sliced row tile's line planes (`slice_lines` order: nb lines each) belongs to:
    g+_s, g-_s -> s, s ("columns"), or s (a "rows" slice's +v/-v line)."""
    slices = np.arange(target.weights.slices)
    return np.repeat(slices, 2) if target.array.differential == "columns" else slices


def line_full_scales(target, slice_full_scale: np.ndarray, nb: int) -> np.ndarray:
    """Per line of a bit-sliced row tile (`slice_lines` order), the full scale of its slice's ADC range."""
    return np.repeat(np.asarray(slice_full_scale, np.float64)[line_slices(target)], nb)


def reference_index(tiles) -> np.ndarray:
    """Per output of a row tile (tiles by column), the index of its tile's reference line among the reference lines
    (`slice_lines` puts them after the nb weight lines): each tile sits on its own array (or rows of one)."""
    return np.concatenate([np.full(t.col_count, k, np.int64) for k, t in enumerate(tiles)])


def minus_reference(lines: np.ndarray, nb: int, index: np.ndarray) -> np.ndarray:
    """Codes (or currents) of a row tile's lines [..., nb + tiles]: each weight line's minus its tile's reference
    line's, [..., nb] (what the column variant of the offset encoding subtracts after the ADC)."""
    return lines[..., :nb] - lines[..., nb:][..., index]


def offset_units(target, offset: float) -> float:
    """What an offset-encoded line carries per unit of input beyond its weights, in current units: g_min's offset
    plus the level that holds weight 0; subtracted digitally, times the input sum (cimc.weight_encoding); 0 with a
    reference column, whose line carries it (`minus_reference`)."""
    if target.weights.reference_column:
        return 0.0
    from cimc.weight_encoding import offset_level
    return float(offset) + offset_level(target)


def slice_adc_lines(adc, tiles, c: int, target):
    """The AdcLines (cimc.targets.adc) of a row tile's lines in `slice_lines` order: each line is converted by the ADC
    of its own physical column (a +v/-v slice line by that of its column; g+ and g- rows share it)."""
    from cimc.weight_encoding import tile_planes
    planes = [tile_planes(t, t.placements[c], target) for t in tiles]
    step = 1 if target.array.differential == "columns" or target.weights.encoding == "offset" else 2
    arrays, columns = [], []
    for k in range(0, len(planes[0]), step):
        for t, tp in zip(tiles, planes):
            cols = tp[k][1]
            at = np.arange(cols.start, cols.stop, cols.step)
            arrays.append(np.full(len(at), t.placements[c].array))
            columns.append(at)
    return adc.lines(np.concatenate(arrays), np.concatenate(columns))


def noise_lines_factor(target) -> float:
    """Read-noise variance of one output's lossless read in units of s^2 sum_r u_r^2: each line read adds its own
    draw (a device line one device per row, a +v/-v difference line two), weighted by its shift-and-add
    coefficient: 2 for the pair on either layout; sum_s 2 L^2s bit-sliced; 1 offset (the offset is digital; with a
    reference column, 1 per line too: the reference line's draw, shared by its tile's outputs, is drawn apart)."""
    difference = target.array.differential == "rows" and target.weights.encoding != "offset"
    return float(np.square(slice_coefficients(target)).sum()) * (2.0 if difference else 1.0)
