"""Tile: cut each crossbar op's K x N matrix into array-sized blocks.

An array holds `inputs_per_tile` logical rows and `outputs_per_tile` signed outputs (cimc.targets.spec.ArraySpec).
Tiles wholly outside a grouped conv's diagonal blocks hold only structural zeros and get no array.
"""
from __future__ import annotations

from cimc.ir import Graph, Tile, XbarOp

NAME = "tile"


def tiles_for(op: XbarOp, rows_per_tile: int, outputs_per_tile: int) -> list[Tile]:
    blocks = op.structural_mask_blocks
    tiles = []
    for r0 in range(0, op.rows, rows_per_tile):
        r1 = min(r0 + rows_per_tile, op.rows)
        for c0 in range(0, op.cols, outputs_per_tile):
            c1 = min(c0 + outputs_per_tile, op.cols)
            if any(br0 < r1 and r0 < br1 and bc0 < c1 and c0 < bc1 for br0, br1, bc0, bc1 in blocks):
                tiles.append(Tile(r0, r1 - r0, c0, c1 - c0))
    return tiles


def run(graph: Graph, target, ctx=None) -> Graph:
    for op in graph.xbar_ops():     # a shared-weight reader has no tiles of its own: it reads its owner's
        op.tiles = tiles_for(op, target.array.inputs_per_tile, target.array.outputs_per_tile) \
            if op.weights_of is None else []
    return graph
