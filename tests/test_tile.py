"""Tiling skips tiles of a grouped conv that hold only structural zeros: the constant-time rule in passes/tile.py
against the definition (a tile is kept iff it intersects a group's diagonal block), over many shapes."""
from __future__ import annotations

import numpy as np
import pytest

from cimc.ir import ConvGeometry, XbarOp
from cimc.passes.tile import tiles_for


def _brute_force(op, rows_per_tile, outputs_per_tile):
    kept = []
    for r0 in range(0, op.rows, rows_per_tile):
        r1 = min(r0 + rows_per_tile, op.rows)
        for c0 in range(0, op.cols, outputs_per_tile):
            c1 = min(c0 + outputs_per_tile, op.cols)
            if any(br0 < r1 and r0 < br1 and bc0 < c1 and c0 < bc1
                   for br0, br1, bc0, bc1 in op.structural_mask_blocks):
                kept.append((r0, r1 - r0, c0, c1 - c0))
    return kept


@pytest.mark.parametrize("seed", range(40))
def test_kept_tiles_equal_the_definition(seed):
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 2, 3, 8, 32]))
    cin, cout = groups * int(rng.integers(1, 5)), groups * int(rng.integers(1, 5))
    k = int(rng.choice([1, 3]))
    geometry = ConvGeometry((k, k), (1, 1), (0, 0, 0, 0), (1, 1), groups, cin, cout)
    op = XbarOp("c", "Conv", ["x"], ["y"], np.zeros((cin * k * k, cout), np.float32), None, geometry)
    rows_per_tile, outputs_per_tile = int(rng.integers(1, 40)), int(rng.integers(1, 12))
    got = [(t.row_start, t.row_count, t.col_start, t.col_count)
           for t in tiles_for(op, rows_per_tile, outputs_per_tile)]
    assert got == _brute_force(op, rows_per_tile, outputs_per_tile)
