"""Place defects: with a chip's defect map (`cimc compile --defect-map FILE`, the file `cimc run --defect-map`
reads), move each layer's tile copies among the layer's own arrays and permute each tile's rows on its array so that
the stuck devices hold the smallest weights (passes/defect_assignment.py: CP-SAT over tiles -> arrays, an exact
assignment over rows). The layer keeps its arrays (so its array count, PEs and pipeline stay as allocated); a row
permutation is undone for free, since the plans read the rows back in logical order (cimc.layout.placement_rows).
Runs after allocate (one tile per array at offset 0); with --pack it is refused. The defect error before and after
goes to ctx.defect_placement (and the manifest's provenance)."""
from __future__ import annotations

import hashlib

import numpy as np

from cimc.errors import ConfigError, DataError
from cimc.ir import Graph, Placement, block_slice
from cimc.passes.defect_assignment import solve_layer
from cimc.targets.devices import DeviceModel

NAME = "place_defects"


def stuck_levels(defect_map, target, n_arrays: int) -> tuple[np.ndarray, np.ndarray]:
    """(stuck bool, stuck level = (stuck conductance - g_min) / step) of the first n_arrays arrays of the map,
    checked against the target's geometry."""
    where = f"--defect-map {defect_map.path}" if defect_map.path else "defect map"
    spec = target.array
    if defect_map.stuck.shape[1:] != (spec.rows, spec.cols):
        raise DataError(f"{where}: arrays are {defect_map.stuck.shape[1]}x{defect_map.stuck.shape[2]}, target "
                        f"{target.name!r} has {spec.rows}x{spec.cols}; give the map of this target's chip")
    if defect_map.stuck.shape[0] < n_arrays:
        raise DataError(f"{where}: holds {defect_map.stuck.shape[0]} arrays, the compiled model uses {n_arrays}; "
                        "give a map of the whole chip (at least as many arrays as the model uses)")
    stuck = defect_map.stuck[:n_arrays].astype(bool)
    at = DeviceModel(target.device, target.nonideal).stuck_value_us
    g = np.full(stuck.shape, at) if defect_map.g_us is None else \
        np.where(np.isnan(defect_map.g_us[:n_arrays]), at, defect_map.g_us[:n_arrays])
    return stuck, (g - target.device.g_min_us) / target.device.step_us


def applies(ctx) -> bool:
    return getattr(ctx.options, "defect_map", None) is not None


def run(graph: Graph, target, ctx) -> Graph:
    dm = ctx.options.defect_map
    if ctx.options.pack:
        raise ConfigError("--defect-map with --pack: defect-aware placement moves whole tiles among a layer's own "
                          "arrays (one tile per array); drop --pack, or drop --defect-map and pass the map to "
                          "`cimc run --defect-map` only")
    if target.weights.encoding != "differential":
        raise ConfigError(f"--defect-map with weights.encoding = {target.weights.encoding!r}: defect-aware placement "
                          "weighs the cells of differential pairs only; compile with the differential encoding, or "
                          "drop --defect-map and pass the map to `cimc run --defect-map` only")
    n_arrays = 1 + max((p.array for op in graph.mapped_ops() for t in op.tiles for p in t.placements), default=-1)
    stuck, level = stuck_levels(dm, target, n_arrays)
    layers, before, after = [], 0.0, 0.0
    for op in graph.mapped_ops():
        copies = [(t, c) for c in range(op.replicas) for t in op.tiles]     # allocate's order
        # a grouped op's levels are its compact blocks (cimc.ir): the tile's K x N view, zeros off the blocks
        blocks = [block_slice(op.levels, t.row_start, t.row_start + t.row_count, t.col_start,
                              t.col_start + t.col_count, np.int16) for t, _ in copies]
        arrays = [t.placements[c].array for t, c in copies]
        if any(t.placements[c].row_offset or t.placements[c].col_offset for t, c in copies):
            raise ConfigError(f"layer {op.name!r}: defect-aware placement needs one tile per array at offset 0")
        plan = solve_layer(blocks, arrays, stuck, level, target.array.differential, ctx.options.time_limit)
        for k, (t, c) in enumerate(copies):
            order = plan.row_orders[k]
            t.placements[c] = Placement(arrays[plan.arrays[k]], 0, 0,
                                        None if order == list(range(t.row_count)) else order)
        layers.append({"name": op.name, "error_before": plan.before, "error_after": plan.after})
        before, after = before + plan.before, after + plan.after
    graph.share_weights()
    ctx.defect_placement = {
        "defect_map": dm.path, "sha256": hashlib.sha256(np.ascontiguousarray(dm.stuck)).hexdigest(),
        "stuck_devices_used": int(stuck.sum()), "unit": "conductance steps (sum |intended - stuck| over stuck devices)",
        "error_before": before, "error_after": after, "layers": layers}
    return graph
