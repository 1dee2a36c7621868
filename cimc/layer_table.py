"""The layer table: arrays, tiles and copies per crossbar layer of a placed graph (`cimc count`, the manifest's
summary). Below both the compiler and the manifest, so that neither imports the other."""
from __future__ import annotations


def layer_table(graph, target) -> dict:
    layers = []
    for op in graph.xbar_ops():
        row_tiles = -(-op.rows // target.array.inputs_per_tile)
        col_tiles = -(-op.cols // target.array.outputs_per_tile)
        placed = {p.array for t in op.tiles for p in t.placements}
        layers.append({"name": op.name, "op_type": op.op_type, "rows": op.rows, "cols": op.cols,
                       "row_tiles": row_tiles, "col_tiles": col_tiles, "tiles": len(op.tiles),
                       "copies": op.replicas, "arrays": len(placed) if placed else len(op.tiles) * op.replicas,
                       "positions": op.positions})
        if op.weights_of is not None:   # reads another layer's arrays: no tiles or arrays of its own
            layers[-1]["weights_of"] = op.weights_of
    # packed tiles share arrays (passes/pack.py): the total is the distinct arrays placed, not the sum over layers
    placed_all = {p.array for op in graph.xbar_ops() for t in op.tiles for p in t.placements}
    tile_copies = sum(len(op.tiles) * op.replicas for op in graph.xbar_ops())
    return {"target": target.name, "array": {"rows": target.array.rows, "cols": target.array.cols,
                                             "differential": target.array.differential},
            "weights": {"encoding": target.weights.encoding, "slices": target.weights.slices,
                        **({"offset_reference": target.weights.offset_reference}
                           if target.weights.encoding == "offset" else {})},
            "total_arrays": len(placed_all) if placed_all else sum(layer["arrays"] for layer in layers),
            "packed": bool(placed_all) and len(placed_all) < tile_copies, "layers": layers}
