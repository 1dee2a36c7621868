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

from cimc.ir import Graph, Tile, XbarOp


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


def program_arrays(graph: Graph, target, n_arrays: int | None = None) -> np.ndarray:
    """Device levels of every physical array, uint8 [n_arrays, rows, cols]."""
    spec = target.array
    if n_arrays is None:
        n_arrays = 1 + max((p.array for op in graph.xbar_ops() for t in op.tiles for p in t.placements), default=-1)
    arrays = np.zeros((n_arrays, spec.rows, spec.cols), dtype=np.uint8)
    for op in graph.xbar_ops():
        for tile in op.tiles:
            block = op.levels[tile.row_start:tile.row_start + tile.row_count,
                              tile.col_start:tile.col_start + tile.col_count].astype(np.int16)
            for placement in tile.placements:
                plus, minus = tile_cells(tile, placement, spec)
                arrays[placement.array][plus] = np.maximum(block, 0)
                arrays[placement.array][minus] = np.maximum(-block, 0)
    return arrays


def read_levels(op: XbarOp, arrays: np.ndarray, target, copy: int = 0) -> np.ndarray:
    """The op's signed K x N level matrix as stored on the arrays of replica `copy` (int16; zeros off-tile)."""
    spec = target.array
    levels = np.zeros((op.rows, op.cols), dtype=np.int16)
    for tile in op.tiles:
        plus, minus = tile_cells(tile, tile.placements[copy], spec)
        array = arrays[tile.placements[copy].array].astype(np.int16)
        levels[tile.row_start:tile.row_start + tile.row_count,
               tile.col_start:tile.col_start + tile.col_count] = array[plus] - array[minus]
    return levels
