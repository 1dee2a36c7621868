"""Defect-aware placement, the optimisation: which array each tile copy of a layer takes, and which physical row
each of the tile's logical rows takes on it, so that stuck devices hold what they can (the smallest weights).

**Defect error** (the objective, in conductance steps): the sum over the stuck devices a tile occupies of
|intended level - stuck level|, where the intended level of a weight w is max(w, 0) on its g+ device and max(-w, 0)
on its g- device, and the stuck level is (stuck conductance - g_min) / step. A stuck device outside every tile's
rows and columns is never driven or never read, so it costs nothing (a tile may move rows onto an array's spare
rows). It is the L1 error the stuck devices add to the programmed weights, the same for every input.

The problem separates exactly: with the array of each tile copy fixed, the rows of each (tile, array) pair are an
independent linear assignment (logical rows -> physical rows, spare rows as zero-cost dummies), solved exactly by
OR-Tools' min-cost-flow assignment; the tiles -> arrays assignment over those optimal pair costs is then a CP-SAT
model (one array per tile copy, one tile copy per array). Costs go to the solvers as integers (1/1000 step);
the default placement (identity: allocate's arrays, rows in order) is kept unless the optimum is strictly better
in exact arithmetic, so the result never has a larger defect error than the default.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALE = 1000           # integer cost units per conductance step


def pair_costs(levels: np.ndarray, stuck: np.ndarray, stuck_level: np.ndarray, differential: str,
               col_offset: int = 0) -> np.ndarray:
    """cost[i, r]: the defect error of the tile's logical row i on physical row r of one array (r < usable rows).
    levels: the tile's signed levels [R, C]; stuck: bool [rows, cols] of the array; stuck_level: [rows, cols]."""
    rows = stuck.shape[0]
    plus, minus = np.maximum(levels, 0).astype(np.float64), np.maximum(-levels, 0).astype(np.float64)
    n = levels.shape[1]
    err = np.where(stuck, stuck_level, 0.0)            # stuck level where stuck (0 elsewhere, masked below)
    if differential == "columns":
        cp, cm = col_offset + 2 * np.arange(n), col_offset + 2 * np.arange(n) + 1
        sp, sm = stuck[:, cp], stuck[:, cm]            # [rows, n]
        lp, lm = err[:, cp], err[:, cm]
    else:
        half = rows // 2
        cols = col_offset + np.arange(n)
        sp, sm = stuck[:half, cols], stuck[half:, cols]
        lp, lm = err[:half, cols], err[half:, cols]
    # |intended - stuck| summed over the row's stuck devices: [R, usable rows]
    cost = (np.abs(plus[:, None, :] - lp[None]) * sp[None]).sum(-1) + \
           (np.abs(minus[:, None, :] - lm[None]) * sm[None]).sum(-1)
    return cost


def default_cost(cost: np.ndarray, row_offset: int = 0) -> float:
    """The defect error of rows in order from `row_offset` (allocate's placement)."""
    r = cost.shape[0]
    return float(cost[np.arange(r), row_offset + np.arange(r)].sum())


def best_rows(cost: np.ndarray) -> tuple[float, list[int]]:
    """The row permutation of least defect error: (error, physical row of each logical row). Exact (OR-Tools'
    linear sum assignment on integer costs; spare physical rows are dummy logical rows of cost 0); rows that gain
    nothing stay where the order puts them, so a defect-free array keeps the identity."""
    from ortools.graph.python import linear_sum_assignment
    r, usable = cost.shape
    if not cost.any():
        return 0.0, list(range(r))
    ints = np.rint(cost * SCALE).astype(np.int64)
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    # a tiny preference for the identity (rows in order) breaks ties towards it without changing the optimum:
    # every cost is a multiple of `usable + 1` plus 1 off the diagonal
    big = ints * (usable + 1) + (np.arange(r)[:, None] != np.arange(usable)[None, :])
    left = np.repeat(np.arange(usable), usable)
    right = np.tile(np.arange(usable), usable)
    full = np.zeros((usable, usable), np.int64)
    full[:r] = big
    full[r:] = (np.arange(r, usable)[:, None] != np.arange(usable)[None, :])
    solver.add_arcs_with_cost(left, right, full.ravel())
    if solver.solve() != solver.OPTIMAL:            # a complete bipartite graph always has one
        raise RuntimeError("row assignment: no optimal solution")
    order = [int(solver.right_mate(i)) for i in range(r)]
    return float(cost[np.arange(r), order].sum()), order


def assign_tiles(costs: np.ndarray, time_limit: float = 10.0) -> list[int]:
    """CP-SAT: the array (column index) of each tile copy (row index) minimising the summed pair costs; one tile
    copy per array. costs: [n, n] float. Identity where it is as good."""
    n = costs.shape[0]
    if n <= 1 or not costs.any():
        return list(range(n))
    from ortools.sat.python import cp_model
    ints = np.rint(costs * SCALE).astype(np.int64)
    model = cp_model.CpModel()
    x = [[model.NewBoolVar(f"x{t}_{a}") for a in range(n)] for t in range(n)]
    for t in range(n):
        model.AddExactlyOne(x[t])
    for a in range(n):
        model.AddExactlyOne(x[t][a] for t in range(n))
    # the same tie-break as best_rows: identity preferred among equal costs
    model.Minimize(sum(int(ints[t, a]) * (n + 1) * x[t][a] + (t != a) * x[t][a]
                       for t in range(n) for a in range(n)))
    for t in range(n):
        model.AddHint(x[t][t], 1)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = 1                 # deterministic: same map, same placement
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return list(range(n))
    return [next(a for a in range(n) if solver.Value(x[t][a])) for t in range(n)]


@dataclass
class LayerAssignment:
    arrays: list[int]           # per tile copy: the index (into the layer's arrays) it takes
    row_orders: list[list[int]]  # per tile copy: physical row of each logical row (relative to the row offset)
    before: float               # defect error of the default placement
    after: float                # ... of this one (never larger)


def solve_layer(blocks: list[np.ndarray], arrays: list[int], stuck: np.ndarray, stuck_level: np.ndarray,
                differential: str, time_limit: float = 10.0) -> LayerAssignment:
    """One layer's tile copies (`blocks`: each copy's signed levels [R, C], placed by default on `arrays[k]` at
    row and column offset 0) reassigned among the same arrays. stuck / stuck_level: [n_arrays, rows, cols]."""
    n = len(blocks)
    pair = [[None] * n for _ in range(n)]
    costs = np.zeros((n, n))
    before = 0.0
    for t, block in enumerate(blocks):
        for k, a in enumerate(arrays):
            cost = pair_costs(block, stuck[a], stuck_level[a], differential)
            if k == t:
                before += default_cost(cost)
            costs[t, k], order = best_rows(cost)
            pair[t][k] = order
    chosen = assign_tiles(costs, time_limit)
    after = float(sum(costs[t, chosen[t]] for t in range(n)))
    if not after < before:          # keep allocate's placement unless strictly better (exact arithmetic)
        return LayerAssignment(list(range(n)), [list(range(b.shape[0])) for b in blocks], before, before)
    return LayerAssignment(chosen, [pair[t][chosen[t]] for t in range(n)], before, after)
