"""`ArraySpec` answers "which cells does a tile occupy" for estimates, packing and the report; cimc.layout places
each device. The two must agree: the footprint is the extent of the devices layout.tile_cells addresses, every one
of them distinct, and the frame rectangle is the part of it in the packing frame."""
from __future__ import annotations

import numpy as np
import pytest

from cimc.ir import Placement, Tile
from cimc.layout import tile_cells
from cimc.targets.spec import ArraySpec


@pytest.mark.parametrize("spec", [ArraySpec(144, 16, "columns"), ArraySpec(128, 64, "rows")])
@pytest.mark.parametrize("rows,cols", [(1, 1), (20, 6), (64, 8)])
def test_footprint_is_what_layout_places(spec, rows, cols):
    tile = Tile(0, rows, 0, cols)
    at = Placement(0, row_offset=0, col_offset=0)
    plus, minus = tile_cells(tile, at, spec)
    cells = {(int(r), int(c)) for idx in (plus, minus)
             for r, c in zip(*np.broadcast_arrays(*idx)) for r, c in zip(r.ravel(), c.ravel())}
    assert len(cells) == 2 * rows * cols                       # every device of the tile its own cell
    r_used = {r for r, _ in cells}
    c_used = {c for _, c in cells}
    assert spec.tile_footprint(rows, cols) == (len(r_used), len(c_used))
    frame_rows = {r for r in r_used if r < spec.frame[0]}
    assert spec.tile_rectangle(rows, cols) == (len(frame_rows), len({c for r, c in cells if r in frame_rows}))
    assert spec.frame == ((spec.rows, spec.cols) if spec.differential == "columns" else (spec.rows // 2, spec.cols))
