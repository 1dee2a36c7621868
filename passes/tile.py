"""Tile: cut each crossbar op's K x N matrix into array-sized blocks.

An array holds `inputs_per_tile` logical rows and `outputs_per_tile` signed outputs (cimc.targets.spec.ArraySpec).
Tiles wholly outside a grouped conv's diagonal blocks hold only structural zeros and get no array.
"""
from __future__ import annotations

import numpy as np

from cimc.ir import Graph, Tile, XbarOp

NAME = "tile"


def tiles_for(op: XbarOp, rows_per_tile: int, outputs_per_tile: int) -> list[Tile]:
    # the groups' diagonal blocks are equal (kg rows x ng columns each, op.structural_mask_blocks): a tile holds a
    # weight iff the groups its rows span and the groups its columns span overlap; decided for all tiles at once
    groups = op.groups
    kg, ng = op.rows // groups, op.cols // groups
    r0 = np.arange(0, op.rows, rows_per_tile)
    r1 = np.minimum(r0 + rows_per_tile, op.rows)
    c0 = np.arange(0, op.cols, outputs_per_tile)
    c1 = np.minimum(c0 + outputs_per_tile, op.cols)
    keep = (r0[:, None] // kg <= (c1[None, :] - 1) // ng) & (c0[None, :] // ng <= (r1[:, None] - 1) // kg)
    return [Tile(int(r0[i]), int(r1[i] - r0[i]), int(c0[j]), int(c1[j] - c0[j])) for i, j in zip(*np.nonzero(keep))]


def run(graph: Graph, target, ctx=None) -> Graph:
    for op in graph.xbar_ops():     # a shared-weight reader has no tiles of its own: it reads its owner's
        op.tiles = tiles_for(op, target.array.inputs_per_tile, target.array.outputs_per_tile) \
            if op.weights_of is None else []
    return graph
