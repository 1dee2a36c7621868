"""Weight encodings (target [weights], cimc.targets.spec.WeightSpec): which device planes hold a signed level.

A tile's devices form planes: basic slices of its array, one per (slice, side), each plane one device per logical
weight. `encode` gives each plane's device levels, `decode` the signed levels back, `tile_planes` where each plane
sits; encode and decode are exact inverses for every level the encoding holds. With L device levels, for the
tile's logical element (i, j) on array rows r0 + i and output group c0 + W j (W = ArraySpec.columns_per_output):
* "differential" (slices = 1) and "bit-sliced" (S slices): slice s holds digit s of |w| in base L on g+ (w > 0)
  or g- (w < 0); w = sum_s L^s (g+_s - g-_s). Columns layout: g+_s at column c0 + W j + 2s, g-_s at + 2s + 1;
  rows layout: both at column c0 + W j + s, g- rows/2 below. With S = 1 this is cimc.layout's pair, cell for cell.
* "offset": one device at level w + (L-1)//2, column c0 + j; the offset is subtracted digitally
  (`offset_reference` = "digital"), or (= "column") a second plane, the array's reference column (its last, the
  ArraySpec's `reference_column`) on the tile's rows, every device at level (L-1)//2: one device per row, shared by
  the tile's columns, whose line is read and converted with every read and subtracted from each column's after the
  ADC; w = g - g_ref (the reference plane [rows, 1] broadcast over the columns).
A placement's `row_order` (defect-aware placement), where present, puts logical row i on row r0 + row_order[i].
"""
from __future__ import annotations

import numpy as np


def offset_level(target) -> int:
    """The device level that holds weight 0 in the offset encoding."""
    return (target.device.levels - 1) // 2


def tile_planes(tile, placement, target) -> list[tuple[slice, slice]]:
    """The tile's device planes on its array, in encode/decode order."""
    spec, w = target.array, target.weights
    r0, n, c0, m = placement.row_offset, tile.row_count, placement.col_offset, tile.col_count
    width = spec.columns_per_output
    order = getattr(placement, "row_order", None)     # defect-aware placement (main's place13) permutes rows
    rows = slice(r0, r0 + n) if order is None else r0 + np.asarray(order, dtype=np.int64)

    def cols(k):
        return slice(c0 + k, c0 + k + width * m, width) if m else slice(c0, c0)
    if w.encoding == "offset":
        ref = spec.reference_column
        return [(rows, cols(0))] + ([] if ref is None else [(rows, slice(ref, ref + 1))])
    if spec.differential == "columns":
        return [(rows, cols(2 * s + side)) for s in range(w.slices) for side in (0, 1)]
    half = spec.rows // 2
    below = slice(r0 + half, r0 + half + n) if order is None else rows + half
    return [(r, cols(s)) for s in range(w.slices) for r in (rows, below)]


def encode(levels: np.ndarray, target) -> list[np.ndarray]:
    """Device levels (uint8) of each plane for signed levels `levels` (any shape)."""
    levels = levels.astype(np.int32)
    if target.weights.encoding == "offset":
        planes = [(levels + offset_level(target)).astype(np.uint8)]
        if target.weights.reference_column:      # the reference devices, one per row: [..., 1]
            planes.append(np.full(levels.shape[:-1] + (1,), offset_level(target), np.uint8))
        return planes
    base, mag = target.device.levels, np.abs(levels)
    planes = []
    for s in range(target.weights.slices):
        digit = (mag // base ** s) % base
        planes += [np.where(levels > 0, digit, 0).astype(np.uint8), np.where(levels < 0, digit, 0).astype(np.uint8)]
    return planes


def combine(planes: list[np.ndarray], target) -> np.ndarray:
    """The signed weight the planes hold, in device level units (float64; any values, e.g. a chip's conductances
    over the level step): slices shifted by L^s and added, g- subtracted, the offset subtracted (the level, or the
    reference column's devices row by row), all after sensing."""
    if target.weights.encoding == "offset":
        if target.weights.reference_column:
            return planes[0].astype(np.float64) - planes[1].astype(np.float64)
        return planes[0].astype(np.float64) - offset_level(target)
    base = target.device.levels
    total = np.zeros(planes[0].shape, np.float64)
    for s in range(target.weights.slices):
        total += base ** s * (planes[2 * s].astype(np.float64) - planes[2 * s + 1].astype(np.float64))
    return total


def decode(planes: list[np.ndarray], target) -> np.ndarray:
    """The signed levels (int16) the planes' device levels hold (inverse of `encode`; exact: integers < 2^53)."""
    return combine(planes, target).astype(np.int16)


def encoded(target) -> bool:
    """Whether the target's weights are held other than as today's one differential pair (cimc.layout's own)."""
    return target.weights.encoding != "differential" or target.weights.slices != 1


def require_pair(target, what: str, why: str = "") -> None:
    """Refuse a consumer that reads devices as today's one pair per weight (g+ - g-) under another encoding; `why`
    adds the consumer's own reason."""
    if encoded(target):
        from cimc.errors import ConfigError
        raise ConfigError(f"weights.encoding = {target.weights.encoding!r}: {what} handles each weight as one "
                          f"g+/g- device pair and cannot handle this encoding yet{why}; use --set "
                          "weights.encoding=differential for it (`cimc run` and `cimc tune` handle every encoding)")
