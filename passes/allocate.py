"""Allocate: give every copy of every tile its own physical array, in execution order (one tile per array, the
papers' counting). Array a sits on PE a // arrays_per_pe and chip a // arrays_per_chip."""
from __future__ import annotations

from cimc.errors import ConfigError
from cimc.ir import Graph, Placement

NAME = "allocate"


def run(graph: Graph, target, ctx=None) -> Graph:
    next_array = 0
    for op in graph.xbar_ops():
        for tile in op.tiles:
            tile.placements = []
        for _copy in range(op.replicas):
            for tile in op.tiles:
                tile.placements.append(Placement(next_array))
                next_array += 1
    budget = target.chip.array_budget
    if budget is not None and next_array > budget:
        raise ConfigError(f"the model needs {next_array} arrays but target {target.name!r} has {budget} "
                          f"({target.chip.chips} chip(s) x {target.chip.arrays_per_chip} arrays); use fewer copies, "
                          "a larger target, or --set chip.chips=0 for as many chips as needed")
    return graph

