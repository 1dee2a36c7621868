"""Where each signed weight level sits on the physical devices: the one place both directions are written.

A signed level w in -L..L is held by a device pair, g+ at level max(w, 0) and g- at level max(-w, 0); cells that
hold no weight stay at level 0 (g_min), so both devices of an unused pair cancel. For a tile placed on array a at
(row_offset r0, col_offset c0), logical element (i, j) of the tile (row i, output j) sits at
* differential "columns" (Yao): g+ at [a, r0 + i, c0 + 2j], g- at [a, r0 + i, c0 + 2j + 1] (adjacent output lines);
* differential "rows" (Li): g+ at [a, r0 + i, c0 + j], g- at [a, r0 + rows/2 + i, c0 + j] (input +v on the first
  row block, -v on the second).
A placement with a `row_order` (defect-aware placement) puts logical row i on physical row r0 + row_order[i] instead.
"""
from __future__ import annotations

import numpy as np

from cimc.ir import Graph, Tile, XbarOp, block_slice, put_block_slice
from cimc.weight_encoding import decode, encode, encoded, tile_planes


def placement_rows(tile: Tile, placement) -> np.ndarray:
    """The physical row of each logical row of the tile: in order from row_offset, or permuted by the placement's
    row_order (defect-aware placement; the permutation is undone by reading the rows back in logical order)."""
    order = getattr(placement, "row_order", None)
    return placement.row_offset + (np.arange(tile.row_count) if order is None else np.asarray(order, dtype=np.int64))


def tile_cells(tile: Tile, placement, spec):
    """Index expressions (plus, minus) of the tile's g+ and g- devices on its array (`spec`: the ArraySpec)."""
    r = placement_rows(tile, placement)[:, None]
    c = np.arange(tile.col_count)[None, :]
    if spec.differential == "columns":
        cols = placement.col_offset + 2 * c
        return (r, cols), (r, cols + 1)
    cols = placement.col_offset + c
    return (r, cols), (r + spec.rows // 2, cols)


def tile_slices(tile: Tile, placement, spec):
    """`tile_cells` as slices (plus, minus) of the array: the same cells, read or written without index arrays (a
    view, so writing through it is cheap; what compile and bind do for every tile). Columns are always a slice; rows
    too, except under a placement's row_order (defect-aware placement), where they are the permuted row indices."""
    r0, n = placement.row_offset, tile.row_count
    half = spec.rows // 2
    if getattr(placement, "row_order", None) is None:
        rows, minus_rows = slice(r0, r0 + n), slice(r0 + half, r0 + half + n)
    else:
        rows = placement_rows(tile, placement)
        minus_rows = rows + half
    if spec.differential == "columns":
        c0, m = placement.col_offset, tile.col_count
        return (rows, slice(c0, c0 + 2 * m, 2)), (rows, slice(c0 + 1, c0 + 2 * m, 2))
    cols = slice(placement.col_offset, placement.col_offset + tile.col_count)
    return (rows, cols), (minus_rows, cols)


def program_arrays(graph: Graph, target, n_arrays: int | None = None) -> np.ndarray:
    """Device levels of every physical array, uint8 [n_arrays, rows, cols]."""
    spec = target.array
    if n_arrays is None:
        n_arrays = 1 + max((p.array for op in graph.xbar_ops() for t in op.tiles for p in t.placements), default=-1)
    arrays = np.zeros((n_arrays, spec.rows, spec.cols), dtype=np.uint8)
    for op in graph.xbar_ops():
        for tile in op.tiles:
            block = block_slice(op.levels, tile.row_start, tile.row_start + tile.row_count,
                                tile.col_start, tile.col_start + tile.col_count, np.int16)
            for placement in tile.placements:
                if encoded(target):      # another encoding than the pair: cimc.weight_encoding
                    for plane, cells in zip(tile_planes(tile, placement, target), encode(block, target)):
                        arrays[placement.array][plane] = cells
                    continue
                plus, minus = tile_slices(tile, placement, spec)
                arrays[placement.array][plus] = np.maximum(block, 0)
                arrays[placement.array][minus] = np.maximum(-block, 0)
    return arrays


def read_levels(op: XbarOp, arrays: np.ndarray, target, copy: int = 0) -> np.ndarray:
    """The op's signed level matrix as stored on the arrays of replica `copy` (int16; zeros off-tile), in the form
    of op.matrix (K x N, or a grouped op's compact blocks: cells outside the blocks hold no weight, cimc.ir)."""
    spec = target.array
    levels = np.zeros(op.matrix.shape, dtype=np.int16)
    for tile in op.tiles:
        array = arrays[tile.placements[copy].array]
        if encoded(target):      # another encoding than the pair: cimc.weight_encoding
            planes = [array[p] for p in tile_planes(tile, tile.placements[copy], target)]
            put_block_slice(levels, tile.row_start, tile.col_start, decode(planes, target))
            continue
        plus, minus = tile_slices(tile, tile.placements[copy], spec)
        put_block_slice(levels, tile.row_start, tile.col_start,
                        array[plus].astype(np.int16) - array[minus].astype(np.int16))
    return levels
