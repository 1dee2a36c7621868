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
    levels: the tile's signed levels [R, C]; stuck: bool [rows, cols] of the array; stuck_level: [rows, cols].
    Summed stuck device by stuck device (a few per array), so the work is R x stuck devices."""
    rows = stuck.shape[0]
    n = levels.shape[1]
    plus, minus = np.maximum(levels, 0).astype(np.float64), np.maximum(-levels, 0).astype(np.float64)
    if differential == "columns":
        usable, width = rows, 2 * n
        window = stuck[:, col_offset:col_offset + width]
        r, c = np.nonzero(window)
        j, which = c // 2, c % 2                         # output j, 0: its g+ device, 1: its g- device
        s = stuck_level[r, col_offset + c]
    else:
        usable = rows // 2
        window = stuck[:, col_offset:col_offset + n]
        r, j = np.nonzero(window)
        which = (r >= usable).astype(np.int64)           # the second row block holds the g- devices
        s = stuck_level[r, col_offset + j]
        r = r % usable
    cost = np.zeros((levels.shape[0], usable))
    if len(r):
        intended = np.where(which[None, :] == 0, plus[:, j], minus[:, j])      # [R, stuck devices]
        np.add.at(cost.T, r, np.abs(intended - s[None, :]).T)
    return cost


def default_cost(cost: np.ndarray, row_offset: int = 0) -> float:
    """The defect error of rows in order from `row_offset` (allocate's placement)."""
    r = cost.shape[0]
    return float(cost[np.arange(r), row_offset + np.arange(r)].sum())


def best_rows(cost: np.ndarray) -> tuple[float, list[int]]:
    """The row permutation of least defect error: (error, physical row of each logical row). Exact: a min-cost
    flow (OR-Tools) on integer costs where only the defective rows are nodes, since every clean row costs 0 to any
    logical row: logical row -> a defective row (its cost) or -> "clean" (0; at most the clean rows' count). A
    tie-break of 1 per row off its own place (costs scaled by R + 1, so the optimum is unchanged) keeps rows in
    order where moving gains nothing: a defect-free array keeps the identity."""
    r, usable = cost.shape
    if not cost.any():
        return 0.0, list(range(r))
    from ortools.graph.python import min_cost_flow
    defective = np.flatnonzero(cost.any(axis=0))
    clean_rows = usable - len(defective)
    scale = 1 if np.array_equal(cost, np.rint(cost)) else SCALE     # whole steps (g_min / g_max stuck): as they are
    ints = np.rint(cost[:, defective] * scale).astype(np.int64) * (r + 1)
    ints += np.arange(r)[:, None] != defective[None, :]                 # tie-break: off its own row
    own_defective = np.isin(np.arange(r), defective).astype(np.int64)    # ... or sent away from its own row
    # a defective row needs only its d cheapest logical rows as candidates (d = defective rows): at most d - 1 of
    # them sit on other defective rows, so a cheaper free one (on a clean row) could always be swapped in
    d = len(defective)
    if d < r:
        keep = np.zeros((r, d), bool)
        keep[np.argpartition(ints, d - 1, axis=0)[:d], np.arange(d)] = True
        keep |= np.arange(r)[:, None] == defective[None, :]             # its own row: the identity stays possible
    else:
        keep = np.ones((r, d), bool)
    li, dk = np.nonzero(keep)
    src, clean, sink = 0, 1 + r + d, 2 + r + d
    logical = 1 + np.arange(r)
    tails = np.concatenate([np.full(r, src), 1 + li, logical, 1 + r + np.arange(d), [clean]])
    heads = np.concatenate([logical, 1 + r + dk, np.full(r, clean), np.full(d, sink), [sink]])
    caps = np.concatenate([np.ones(r + len(li) + r + d, np.int64), [clean_rows]])
    costs = np.concatenate([np.zeros(r, np.int64), ints[li, dk], own_defective, np.zeros(d + 1, np.int64)])
    flow = min_cost_flow.SimpleMinCostFlow()
    arcs = flow.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    flow.set_nodes_supplies(np.array([src, sink]), np.array([r, -r]))
    if flow.solve() != flow.OPTIMAL:            # clean rows + defective rows >= R: always feasible
        raise RuntimeError("row assignment: no optimal solution")
    flows = flow.flows(arcs)
    order = [-1] * r
    for i, k in zip(li[flows[r:r + len(li)] > 0], dk[flows[r:r + len(li)] > 0]):
        order[int(i)] = int(defective[k])
    bad = set(defective.tolist())
    for i in range(r):                          # to a clean row: its own where that is clean ...
        if order[i] == -1 and i not in bad:
            order[i] = i
    used = set(order)
    free = iter([x for x in range(usable) if x not in bad and x not in used])
    for i in range(r):                          # ... else the next clean row nobody holds
        if order[i] == -1:
            order[i] = next(free)
    return float(cost[np.arange(r), order].sum()), order


def assign_tiles(costs: np.ndarray, time_limit: float = 10.0) -> list[int]:
    """CP-SAT: the array (column index) of each tile copy (row index) minimising the summed pair costs; one tile
    copy per array; identity where it is as good. The model starts from the exact min-cost assignment (OR-Tools'
    linear sum assignment on the same integer objective) and runs on a deterministic time limit with one worker,
    so it never ends worse than that optimum and the same map gives the same placement on any machine load."""
    n = costs.shape[0]
    if n <= 1 or not costs.any():
        return list(range(n))
    from ortools.graph.python import linear_sum_assignment
    from ortools.sat.python import cp_model
    scale = 1 if np.array_equal(costs, np.rint(costs)) else SCALE
    # the same tie-break as best_rows: costs x (n + 1), plus 1 off the diagonal
    objective = np.rint(costs * scale).astype(np.int64) * (n + 1) + (np.arange(n)[:, None] != np.arange(n)[None, :])
    exact = linear_sum_assignment.SimpleLinearSumAssignment()
    exact.add_arcs_with_cost(np.repeat(np.arange(n), n), np.tile(np.arange(n), n), objective.ravel())
    if exact.solve() != exact.OPTIMAL:
        return list(range(n))
    start = [int(exact.right_mate(t)) for t in range(n)]
    model = cp_model.CpModel()
    x = [[model.NewBoolVar(f"x{t}_{a}") for a in range(n)] for t in range(n)]
    for t in range(n):
        model.AddExactlyOne(x[t])
        for a in range(n):
            model.AddHint(x[t][a], a == start[t])
    for a in range(n):
        model.AddExactlyOne(x[t][a] for t in range(n))
    model.Minimize(sum(int(objective[t, a]) * x[t][a] for t in range(n) for a in range(n)))
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = time_limit
    solver.parameters.num_workers = 1
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return start
    chosen = [next(a for a in range(n) if solver.Value(x[t][a])) for t in range(n)]
    value = lambda pick: int(sum(objective[t, pick[t]] for t in range(n)))    # noqa: E731
    return chosen if value(chosen) <= value(start) else start


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
