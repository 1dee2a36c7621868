"""Pack: choose each crossbar layer's copies *and* place every tile copy on the arrays, several tiles per array, with
one CP-SAT model (`cimc compile --pack`).

Why. With one tile per array (passes/replicate.py + passes/allocate.py) Yao's mCNN on the 8-array chip can only copy
C1 twice. The paper instead puts tiles of different layers on one array and time-shares it (C1's 9 rows and C3's
first 72 rows on one 128x16 array, sharing output lines but read in different slots): 3 groups of C1 + C3 and a
shared FC fit in 8 arrays.

Schedule model (that of passes/estimate.py, extended to shared arrays). Layer l with P_l positions and r_l copies:
every copy processes ceil(P_l / r_l) positions, so each of its tiles is read ceil(P_l / r_l) x b times per inference
(b input slots per vector). An array is one PE with one set of drivers and ADCs: one read per slot, so the tiles on
it time-share it and its load is

    load_j = sum over the tile copies on array j of ceil(P_l / r_l) x b         slots per inference.

The pipelined period is max_j load_j (with one tile per array it is the slowest layer, as before).

The CP-SAT model (units of ceil(P/r); the factor b is applied outside):
* x[l,k]: layer l takes its k-th candidate (r_k, c_k = ceil(P_l/r_k)): for each distinct c only the smallest r, as
  in passes/replication_solver.py; r <= B (see below) and r <= P. Exactly one per layer (a fixed layer has one).
* Tile copies i = (l, c, t) for c < max r_l. Copy c of layer l is active iff r_l > c: act = sum_{k: r_k > c} x[l,k].
* p[i,j]: tile copy i sits on array j; sum_j p[i,j] = act(i).
* Offsets: y_i in [0, H - h_i], x_i in [0, W - w_i] (H x W the array, in rows x device columns; tile rectangle
  h x w = row_count x 2 col_count for differential "columns"; for "rows" the frame is the first row block
  (H = rows/2, w = col_count) because the g- block mirrors it at +rows/2, so non-overlap there implies it there).
  Optional fixed-size intervals [x_i, x_i + w_i) and [y_i, y_i + h_i) present iff p[i,j]; AddNoOverlap2D per array.
* Copies of one tile sit on different arrays (sum_c p[(l,c,t),j] <= 1): a second copy on the same array would be
  read in other slots of the same array, adding cells but no parallelism. This bounds r_l <= B.
* Loads, linear: n[l,k,j] in [0, tiles_l] counts l's tile copies on array j when candidate k is chosen:
  sum_k n[l,k,j] = sum_{c,t} p[(l,c,t),j], n[l,k,j] <= tiles_l x[l,k], sum_j n[l,k,j] = tiles_l r_k x[l,k];
  load_j = sum_{l,k} c_k n[l,k,j] <= T.
* Redundant: per-array cell area <= H x W.
* Symmetry: arrays are interchangeable, so they are labelled in first-fit order of a fixed item order (mandatory
  copies first, largest first): item number i may only use arrays 0..i, and used_j >= used_{j+1}.
* Objective, lexicographic by two solves: min T (the period), then with T fixed min the arrays used (and, as a
  tie-break, the tile copies). The one-tile-per-array optimum (passes/replication_solver.py) is the hint.

This exact model is for small chips: at most MAX_ARRAYS arrays and MAX_TILE_COPIES tile copies; beyond that the
pass raises a ConfigError pointing at the default allocator.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from cimc.errors import ConfigError
from cimc.ir import Graph, Placement
from cimc.passes.estimate import bits_per_vector, stall_factor
from cimc.passes.replicate import fixed_copies
from cimc.passes.replication_solver import (InfeasibleBudget, LayerDemand, candidate_copies, greedy_replication,
                                            solve_replication)

NAME = "pack"
MAX_ARRAYS = 64
MAX_TILE_COPIES = 400


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PackLayer:
    """One crossbar layer for the packing model: its tiles' rectangles (rows, columns) in the packing frame."""
    name: str
    tiles: tuple[tuple[int, int], ...]
    positions: int
    fixed_copies: int | None = None

    def __post_init__(self) -> None:
        if not self.tiles:
            raise ValueError(f"layer {self.name!r}: no tiles")
        if self.positions < 1:
            raise ValueError(f"layer {self.name!r}: positions must be >= 1")
        if self.fixed_copies is not None and self.fixed_copies < 1:
            raise ValueError(f"layer {self.name!r}: fixed_copies must be >= 1")

    @property
    def min_copies(self) -> int:
        return self.fixed_copies or 1


@dataclass
class PackPlan:
    """A packing. Cycles are in units of ceil(P/r) (multiply by the input slots per vector)."""
    copies: dict[str, int]
    period: int                                   # max_j load_j
    arrays: int                                   # arrays used (they are 0..arrays-1)
    loads: list[int]                              # per used array
    placements: dict[tuple[str, int, int], tuple[int, int, int]]   # (layer, copy, tile) -> (array, row, col)
    layer_cycles: dict[str, int]
    status: str
    gap: float
    solve_seconds: float
    arrays_status: str = ""                      # status of the second (min arrays) solve


class PackInfeasible(ValueError):
    """The budget cannot hold one copy (or the fixed copies) of every layer, even packed."""

    def __init__(self, budget: int, minimum: int | None, why: str = ""):
        self.budget, self.minimum = budget, minimum
        need = f"the minimum is {minimum} arrays" if minimum is not None else "the minimum is unknown (time limit)"
        super().__init__(f"a budget of {budget} arrays cannot hold one copy of every layer even with tiles packed "
                         f"together; {need}{why}")


# ------------------------------------------------------------------- helpers


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def layer_candidates(layer: PackLayer, budget: int) -> list[tuple[int, int]]:
    """(copies, ceil(P/copies)) per distinct cycle count, copies <= min(P, budget); a fixed layer has one."""
    if layer.fixed_copies is not None:
        return [(layer.fixed_copies, _ceil_div(layer.positions, layer.fixed_copies))]
    return candidate_copies(layer.positions, min(layer.positions, budget))


def tile_copy_count(layers: Sequence[PackLayer], budget: int) -> int:
    """Tile copies the model holds (every copy that some candidate may use)."""
    return sum(len(l.tiles) * layer_candidates(l, budget)[-1][0] for l in layers)


def _items(layers: Sequence[PackLayer], cands) -> list[tuple[int, int, int]]:
    """Tile copies (layer index, copy, tile) in the fixed order of the first-fit symmetry breaking: mandatory copies
    first, then optional ones by copy; larger tiles first within each group."""
    items = [(li, c, t) for li, (l, cl) in enumerate(zip(layers, cands))
             for c in range(cl[-1][0]) for t in range(len(l.tiles))]

    def key(item):
        li, c, t = item
        h, w = layers[li].tiles[t]
        mandatory = c < cands[li][0][0]
        return (0 if mandatory else 1, 0 if mandatory else c, -h * w, li, c, t)
    return sorted(items, key=key)


def _canonical(assign: dict[tuple[int, int, int], int], items) -> dict[tuple[int, int, int], int]:
    """Relabel arrays in first-fit order of `items` (the labelling the symmetry breaking demands)."""
    label: dict[int, int] = {}
    for it in items:
        if it in assign and assign[it] not in label:
            label[assign[it]] = len(label)
    return {it: label[a] for it, a in assign.items()}


def _lower_bound(layers, cands, budget) -> int:
    fastest = max(cl[-1][1] for cl in cands)
    work = sum(len(l.tiles) * min(r * c for r, c in cl) for l, cl in zip(layers, cands))
    return max(fastest, _ceil_div(work, budget))


# -------------------------------------------------------------------- CP-SAT


def _build(layers, cands, height, width, budget, period_max=None, force_first=False):
    """The model; returns (model, handles). `force_first`: every layer at its first candidate (fewest copies)."""
    from ortools.sat.python import cp_model

    m = cp_model.CpModel()
    items = _items(layers, cands)
    xs = []
    for li, cl in enumerate(cands):
        xl = [m.new_bool_var(f"x{li}_{k}") for k in range(len(cl))]
        m.add_exactly_one(xl)
        if force_first:
            m.add(xl[0] == 1)
        xs.append(xl)
    act: dict[tuple[int, int], object] = {}
    for li, cl in enumerate(cands):
        for c in range(cl[-1][0]):
            if c < cl[0][0]:
                act[li, c] = None                       # a mandatory copy: always present
            else:
                a = m.new_bool_var(f"act{li}_{c}")
                m.add(a == sum(x for (r, _), x in zip(cl, xs[li]) if r > c))
                act[li, c] = a
    p: dict[tuple, dict[int, object]] = {}
    pos: dict[tuple, tuple] = {}
    per_array: list[list] = [[] for _ in range(budget)]
    for n, it in enumerate(items):
        li, c, t = it
        h, w = layers[li].tiles[t]
        y = m.new_int_var(0, height - h, f"y{n}")
        x = m.new_int_var(0, width - w, f"x{n}")
        pos[it] = (y, x)
        p[it] = {}
        for j in range(min(n, budget - 1) + 1):        # first-fit: item n uses arrays 0..n only
            lit = m.new_bool_var(f"p{n}_{j}")
            p[it][j] = lit
            per_array[j].append((it, lit))
        a = act[li, c]
        m.add(sum(p[it].values()) == (1 if a is None else a))
        if a is not None:                               # an absent copy gets offsets 0 (no free symmetry)
            m.add(y == 0).only_enforce_if(a.Not())
            m.add(x == 0).only_enforce_if(a.Not())
    for j in range(budget):
        if len(per_array[j]) >= 2:
            xi, yi = [], []
            for it, lit in per_array[j]:
                li, c, t = it
                h, w = layers[li].tiles[t]
                y, x = pos[it]
                xi.append(m.new_optional_fixed_size_interval_var(x, w, lit, f"ix{j}"))
                yi.append(m.new_optional_fixed_size_interval_var(y, h, lit, f"iy{j}"))
            m.add_no_overlap_2d(xi, yi)
            m.add(sum(layers[it[0]].tiles[it[2]][0] * layers[it[0]].tiles[it[2]][1] * lit
                      for it, lit in per_array[j]) <= height * width)
    # copies of one tile on different arrays
    for li, l in enumerate(layers):
        for t in range(len(l.tiles)):
            for j in range(budget):
                lits = [p[(li, c, t)][j] for c in range(cands[li][-1][0]) if j in p[(li, c, t)]]
                if len(lits) >= 2:
                    m.add_at_most_one(lits)
    # loads
    lo = _lower_bound(layers, cands, budget)
    hi = sum(len(l.tiles) * cl[0][1] for l, cl in zip(layers, cands))
    if period_max is not None:
        hi = min(hi, period_max)
    period = m.new_int_var(lo, max(lo, hi), "period")
    if period_max is not None:
        m.add(period <= period_max)
    loads = []
    counts: dict[tuple[int, int], list] = {}
    n_vars: dict[tuple[int, int, int], object] = {}
    for j in range(budget):
        terms = []
        for li, (l, cl) in enumerate(zip(layers, cands)):
            on_j = [p[(li, c, t)][j] for c in range(cl[-1][0]) for t in range(len(l.tiles)) if j in p[(li, c, t)]]
            if not on_j:
                continue
            if len(cl) == 1:
                terms.append(cl[0][1] * sum(on_j))
                continue
            ns = []
            for k, (r, cyc) in enumerate(cl):
                n = m.new_int_var(0, len(l.tiles), f"n{li}_{k}_{j}")
                n_vars[li, k, j] = n
                m.add(n <= len(l.tiles) * xs[li][k])
                ns.append(n)
                counts.setdefault((li, k), []).append(n)
                terms.append(cyc * n)
            m.add(sum(ns) == sum(on_j))
        load = m.new_int_var(0, hi, f"load{j}")
        m.add(load == sum(terms)) if terms else m.add(load == 0)
        m.add(load <= period)
        loads.append(load)
    # every copy of candidate k is somewhere: sum_j n[l,k,j] = tiles_l r_k x[l,k] (redundant, tightens the LP)
    for (li, k), ns in counts.items():
        m.add(sum(ns) == len(layers[li].tiles) * cands[li][k][0] * xs[li][k])
    used = []
    for j in range(budget):
        u = m.new_bool_var(f"used{j}")
        lits = [lit for _it, lit in per_array[j]]
        for lit in lits:
            m.add_implication(lit, u)
        m.add(sum(lits) >= u) if lits else m.add(u == 0)
        if used:
            m.add_implication(u, used[-1])
        used.append(u)
    return m, {"items": items, "xs": xs, "p": p, "pos": pos, "period": period, "loads": loads, "used": used,
               "act": act, "n": n_vars, "cands": cands}


def _hint(model, h, assign, offsets, chosen):
    """Hint a complete plan (every variable): chosen candidate per layer, item -> array, item -> (row, col)."""
    cands = h["cands"]
    for li, xl in enumerate(h["xs"]):
        for k, x in enumerate(xl):
            model.add_hint(x, k == chosen[li])
    for (li, c), a in h["act"].items():
        if a is not None:
            model.add_hint(a, cands[li][chosen[li]][0] > c)
    count: dict[tuple[int, int], int] = {}
    for it, lits in h["p"].items():
        for j, lit in lits.items():
            model.add_hint(lit, assign.get(it) == j)
        if it in assign:
            count[it[0], assign[it]] = count.get((it[0], assign[it]), 0) + 1
        y, x = h["pos"][it]
        r, c = offsets.get(it, (0, 0))
        model.add_hint(y, r)
        model.add_hint(x, c)
    for (li, k, j), n in h["n"].items():
        model.add_hint(n, count.get((li, j), 0) if k == chosen[li] else 0)
    loads = [0] * len(h["loads"])
    for (li, _c, _t), j in assign.items():
        loads[j] += cands[li][chosen[li]][1]
    for var, load in zip(h["loads"], loads):
        model.add_hint(var, load)
    used = set(assign.values())
    for j, u in enumerate(h["used"]):
        model.add_hint(u, j in used)
    model.add_hint(h["period"], max(loads))


def _solve(model, time_limit, workers, seed):
    from ortools.sat.python import cp_model
    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.max_time_in_seconds = max(float(time_limit), 0.01)
    prm.num_workers = workers
    prm.random_seed = seed
    st = solver.solve(model)
    return solver, solver.status_name(st), st in (cp_model.OPTIMAL, cp_model.FEASIBLE)


def _extract(solver, h, layers, cands):
    chosen = [next(k for k, x in enumerate(xl) if solver.boolean_value(x)) for xl in h["xs"]]
    assign, offsets = {}, {}
    for it, lits in h["p"].items():
        for j, lit in lits.items():
            if solver.boolean_value(lit):
                assign[it] = j
                y, x = h["pos"][it]
                offsets[it] = (solver.value(y), solver.value(x))
    return chosen, assign, offsets


def _compact(assign, offsets, layers) -> dict:
    """Slide every tile up, then left, as far as the others on its array allow, until nothing moves (a valid packing
    stays valid; the layout just reads better: tiles from row 0, column 0)."""
    out = dict(offsets)
    by_array: dict[int, list] = {}
    for it, j in assign.items():
        by_array.setdefault(j, []).append(it)
    for its in by_array.values():
        size = {it: layers[it[0]].tiles[it[2]] for it in its}
        moved = True
        while moved:
            moved = False
            for it in sorted(its, key=lambda i: (out[i], i)):
                y, x = out[it]
                h, w = size[it]
                ny = max([out[o][0] + size[o][0] for o in its if o != it and out[o][0] + size[o][0] <= y
                          and out[o][1] < x + w and x < out[o][1] + size[o][1]], default=0)
                nx = max([out[o][1] + size[o][1] for o in its if o != it and out[o][1] + size[o][1] <= x
                          and out[o][0] < ny + h and ny < out[o][0] + size[o][0]], default=0)
                if (ny, nx) != (y, x):
                    out[it] = (ny, nx)
                    moved = True
    return out


def _plan(layers, cands, chosen, assign, offsets, status, gap, seconds) -> PackPlan:
    offsets = _compact(assign, offsets, layers)
    cyc = {li: cands[li][k][1] for li, k in enumerate(chosen)}
    n_arrays = 1 + max(assign.values())
    loads = [0] * n_arrays
    for (li, _c, _t), j in assign.items():
        loads[j] += cyc[li]
    placements = {(layers[li].name, c, t): (j, *offsets[(li, c, t)]) for (li, c, t), j in assign.items()}
    return PackPlan(copies={l.name: cands[li][chosen[li]][0] for li, l in enumerate(layers)},
                    period=max(loads), arrays=n_arrays, loads=loads, placements=placements,
                    layer_cycles={l.name: cyc[li] for li, l in enumerate(layers)},
                    status=status, gap=gap, solve_seconds=seconds)


def check_plan(layers: Sequence[PackLayer], plan: PackPlan, height: int, width: int, budget: int) -> None:
    """Independent check of a plan: every active tile copy placed once, inside its array, no overlaps, copies of a
    tile on different arrays, loads and period as stated. Raises AssertionError."""
    by_name = {l.name: l for l in layers}
    cells: dict[int, list] = {}
    for l in layers:
        r = plan.copies[l.name]
        for c in range(r):
            for t, (h, w) in enumerate(l.tiles):
                j, y, x = plan.placements[(l.name, c, t)]
                assert 0 <= j < budget and 0 <= y and y + h <= height and 0 <= x and x + w <= width
                cells.setdefault(j, []).append((y, x, h, w, l.name, t))
    assert len(plan.placements) == sum(plan.copies[l.name] * len(l.tiles) for l in layers)
    for j, rects in cells.items():
        for a in range(len(rects)):
            for b in range(a + 1, len(rects)):
                ya, xa, ha, wa, na, ta = rects[a]
                yb, xb, hb, wb, nb, tb = rects[b]
                assert ya + ha <= yb or yb + hb <= ya or xa + wa <= xb or xb + wb <= xa, f"overlap on array {j}"
                assert (na, ta) != (nb, tb), f"two copies of {na} tile {ta} on array {j}"
    loads = [0] * plan.arrays
    for (name, _c, _t), (j, _y, _x) in plan.placements.items():
        loads[j] += _ceil_div(by_name[name].positions, plan.copies[name])
    assert loads == plan.loads and max(loads) == plan.period


def _arrays_objective(model, h):
    """Fewest arrays, then (a tie-break) the fewest tile copies: copies that no longer shorten the period waste cells."""
    n_items = len(h["items"])
    model.minimize((n_items + 1) * sum(h["used"]) + sum(sum(lits.values()) for lits in h["p"].values()))


def solve_pack(layers: Sequence[PackLayer], height: int, width: int, budget: int, time_limit: float = 10.0,
               hint: PackPlan | None = None, period_max: int | None = None, minimize: str = "period",
               workers: int = 1, seed: int = 0) -> PackPlan:
    """minimize="period": lexicographic min period, then min arrays (two solves sharing `time_limit`).
    minimize="arrays": the fewest arrays with period <= period_max (one solve). Cycles in units of ceil(P/r).
    Raises PackInfeasible when the budget cannot hold one copy of every layer (its message names the minimum), or,
    with period_max, when no plan reaches it (minimum None); TimeoutError when no plan is found in time."""
    t0 = time.perf_counter()
    layers = list(layers)
    names = [l.name for l in layers]
    if len(set(names)) != len(names):
        raise ValueError("duplicate layer names")
    if minimize not in ("period", "arrays") or (minimize == "arrays" and period_max is None):
        raise ValueError("minimize is 'period', or 'arrays' with a period_max")
    for l in layers:
        for h, w in l.tiles:
            if not (1 <= h <= height and 1 <= w <= width):
                raise ValueError(f"layer {l.name!r}: a {h}x{w} tile does not fit a {height}x{width} array")
        if l.fixed_copies is not None and l.fixed_copies > budget:
            raise ValueError(f"layer {l.name!r}: {l.fixed_copies} fixed copies need {l.fixed_copies} arrays (copies "
                             f"of one tile sit on different arrays) but the budget is {budget}")
    cands = [layer_candidates(l, budget) for l in layers]
    area = sum(h * w * l.min_copies for l in layers for h, w in l.tiles)
    if area > budget * height * width:
        raise PackInfeasible(budget, minimum_pack_arrays(layers, height, width, time_limit=time_limit))

    model, h = _build(layers, cands, height, width, budget, period_max)
    if hint is not None:
        items = h["items"]
        idx = {l.name: li for li, l in enumerate(layers)}
        raw = {(idx[n], c, t): v[0] for (n, c, t), v in hint.placements.items()}
        assign = _canonical(raw, items)
        offsets = {(idx[n], c, t): (v[1], v[2]) for (n, c, t), v in hint.placements.items()}
        chosen = [next((k for k, (r, _) in enumerate(cl) if r == hint.copies[l.name]), 0)
                  for l, cl in zip(layers, cands)]
        _hint(model, h, assign, offsets, chosen)
    if minimize == "period":
        model.minimize(h["period"])
    else:
        _arrays_objective(model, h)
    solver, st1, ok = _solve(model, time_limit, workers, seed)
    if not ok:
        if st1 == "INFEASIBLE" and period_max is None:
            left = max(time_limit - (time.perf_counter() - t0), 0.2 * time_limit)
            raise PackInfeasible(budget, minimum_pack_arrays(layers, height, width, time_limit=left))
        if st1 == "INFEASIBLE":
            raise PackInfeasible(budget, None, f" (no plan with period <= {period_max})")
        raise TimeoutError(f"CP-SAT found no packing within {time_limit:g} s (status {st1})")
    chosen, assign, offsets = _extract(solver, h, layers, cands)
    if minimize == "arrays":
        plan = _plan(layers, cands, chosen, assign, offsets, st1, 0.0, time.perf_counter() - t0)
        plan.arrays_status = st1
        return plan
    best = int(round(solver.objective_value))
    bound = solver.best_objective_bound
    gap = 0.0 if st1 == "OPTIMAL" else max(0.0, (best - bound) / best) if best > 0 else 0.0

    # second solve: period fixed, fewest arrays
    left = max(time_limit - (time.perf_counter() - t0), 0.1 * time_limit)
    model2, h2 = _build(layers, cands, height, width, budget, best)
    _hint(model2, h2, assign, offsets, chosen)
    _arrays_objective(model2, h2)
    solver2, st2, ok2 = _solve(model2, left, workers, seed)
    if ok2:
        chosen, assign, offsets = _extract(solver2, h2, layers, cands)
    status = "OPTIMAL" if st1 == "OPTIMAL" and st2 == "OPTIMAL" else "FEASIBLE"
    plan = _plan(layers, cands, chosen, assign, offsets, status, gap, time.perf_counter() - t0)
    plan.arrays_status = st2
    return plan


def minimum_pack_arrays(layers: Sequence[PackLayer], height: int, width: int, time_limit: float = 10.0,
                        limit: int | None = None, workers: int = 1) -> int | None:
    """Fewest arrays that hold one copy (or the fixed copies) of every layer with tiles packed (None: time limit)."""
    layers = list(layers)
    limit = limit or min(sum(len(l.tiles) * l.min_copies for l in layers), MAX_ARRAYS)
    cands = [layer_candidates(l, limit) for l in layers]
    model, h = _build(layers, cands, height, width, limit, force_first=True)
    model.minimize(sum(h["used"]))
    solver, st, ok = _solve(model, time_limit, workers, 0)
    return int(round(solver.objective_value)) if st == "OPTIMAL" else None


# -------------------------------------------------------------------- the pass


def pack_frame(target) -> tuple[int, int]:
    """(height, width) of the packing frame: the array, or its first row block for differential "rows"."""
    return target.array.frame


def tile_rectangle(tile, target) -> tuple[int, int]:
    """Rows x device columns a tile covers in the packing frame (cimc.layout)."""
    return target.array.tile_rectangle(tile.row_count, tile.col_count)


def _one_tile_per_array_plan(graph, plan_copies: dict[str, int]) -> PackPlan:
    """The allocate pass's placement of a copy plan (one tile per array, offset 0), as a PackPlan hint."""
    placements, j = {}, 0
    for op in graph.mapped_ops():
        for c in range(plan_copies[op.name]):
            for t in range(len(op.tiles)):
                placements[(op.name, c, t)] = (j, 0, 0)
                j += 1
    return PackPlan(copies=dict(plan_copies), period=0, arrays=j, loads=[], placements=placements,
                    layer_cycles={}, status="HINT", gap=0.0, solve_seconds=0.0)


def run(graph: Graph, target, ctx) -> Graph:
    """Copies and placements together; the report goes to ctx.replication_report. Options: ctx.options."""
    config = ctx.options
    t0 = time.perf_counter()
    fixed = fixed_copies(graph, config)
    ops = graph.mapped_ops()        # a shared-weight reader reads its owner's tiles: its reads count there
    names = [op.name for op in ops]
    reads = {op.name: graph.reads_per_inference(op) for op in ops}
    if getattr(config, "target_fps", None) is not None:
        raise ConfigError("--pack minimises the period under an array budget; it does not take --target-fps "
                          "(drop --pack, or give --arrays N instead)")
    budget = getattr(config, "arrays", None) or target.chip.array_budget
    if budget is None:
        raise ConfigError(f"--pack needs an array budget: pass --arrays N (target {target.name!r} has no chip "
                          "budget)")
    if not getattr(config, "optimize", True):       # --no-optimize: keep the copies, still pack the tiles
        fixed = {name: fixed.get(name, 1) for name in names}
    if not ops:
        ctx.replication_report = None
        return graph
    if budget > MAX_ARRAYS:
        raise ConfigError(f"--pack: a budget of {budget} arrays is beyond this exact model (at most {MAX_ARRAYS} "
                          "arrays); drop --pack to use the default allocator (one tile per array), or pass "
                          f"--arrays N with N <= {MAX_ARRAYS}")
    height, width = pack_frame(target)
    layers = [PackLayer(op.name, tuple(tile_rectangle(t, target) for t in op.tiles), reads[op.name],
                        fixed.get(op.name)) for op in ops]
    for l in layers:
        if l.fixed_copies is not None and l.fixed_copies > budget:
            raise ConfigError(f"--pack: {l.name} has {l.fixed_copies} fixed copies, but copies of one tile sit on "
                              f"different arrays and the budget is {budget} arrays")
    n_items = tile_copy_count(layers, budget)
    if n_items > MAX_TILE_COPIES:
        raise ConfigError(f"--pack: {n_items} tile copies to place on {budget} arrays is beyond this exact model "
                          f"(at most {MAX_TILE_COPIES}); drop --pack to use the default allocator (one tile per "
                          "array), fix some layers' copies with --replicate, or give a smaller --arrays")
    bits = bits_per_vector(target) * stall_factor(target)
    time_limit = getattr(config, "time_limit", 10.0)

    # the one-tile-per-array optimum beside it (and the hint)
    demands = [LayerDemand(op.name, len(op.tiles), reads[op.name], max_copies=budget,
                           fixed_copies=fixed.get(op.name)) for op in ops]
    try:
        otpa = solve_replication(demands, input_bits=bits, budget=budget, time_limit=0.2 * time_limit)
    except InfeasibleBudget:
        otpa = None
    hint = _one_tile_per_array_plan(graph, otpa.copies) if otpa is not None else None
    left = max(time_limit - (time.perf_counter() - t0), 0.5 * time_limit)
    try:
        plan = solve_pack(layers, height, width, budget, time_limit=0.8 * left, hint=hint)
    except PackInfeasible as exc:
        raise ConfigError(f"--pack: {exc}; pass --arrays N with N >= {exc.minimum}, fewer fixed copies, or a target "
                          "with more arrays" if exc.minimum is not None else f"--pack: {exc}") from None
    except TimeoutError as exc:
        raise ConfigError(f"--pack: {exc}; raise --time-limit or drop --pack") from None

    # packing at the one-tile-per-array period: how many arrays it needs there, and so saves
    saved = arrays_at_otpa = None
    if otpa is not None:
        rest = max(time_limit - (time.perf_counter() - t0), 0.1 * time_limit)
        try:
            at = solve_pack(layers, height, width, budget, time_limit=rest, hint=hint,
                            period_max=otpa.bottleneck_cycles // bits, minimize="arrays")
            arrays_at_otpa = at.arrays
            saved = otpa.arrays - at.arrays
        except (PackInfeasible, TimeoutError):
            pass
    rest = max(time_limit - (time.perf_counter() - t0), 0.1 * time_limit)
    minimum_packed = minimum_pack_arrays(layers, height, width, time_limit=rest)

    # apply
    by_name = {op.name: op for op in ops}
    for op in ops:
        op.replicas = plan.copies[op.name]
        for t, tile in enumerate(op.tiles):
            tile.placements = [Placement(*plan.placements[(op.name, c, t)]) for c in range(op.replicas)]
    graph.share_weights()
    period = plan.period * bits
    cycles = {name: c * bits for name, c in plan.layer_cycles.items()}
    unreplicated = max(reads.values()) * bits
    sequential = sum(reads.values()) * bits
    per_array = []
    for j in range(plan.arrays):
        tiles = [{"layer": n, "copy": c, "tile": t, "row_offset": y, "col_offset": x,
                  "rows": by_name[n].tiles[t].row_count, "cols": tile_rectangle(by_name[n].tiles[t], target)[1],
                  "cycles": cycles[n]}
                 for (n, c, t), (a, y, x) in sorted(plan.placements.items(), key=lambda kv: kv[1]) if a == j]
        per_array.append({"array": j, "load_cycles": plan.loads[j] * bits, "tiles": tiles})
    report = {
        "mode": "pack", "budget": budget, "target_fps": None, "input_slots_per_vector": bits,
        "status": plan.status, "gap": plan.gap, "solve_seconds": time.perf_counter() - t0,
        "bottleneck_cycles": period, "period_cycles": period,
        "latency_cycles": sum(cycles.values()), "layer_cycles": cycles,
        "arrays": plan.arrays, "copies": plan.copies, "fixed": fixed,
        "bottleneck_arrays": [j for j, load in enumerate(plan.loads) if load == plan.period],
        "array_loads": [load * bits for load in plan.loads], "placements": per_array,
        "minimum_arrays": minimum_packed,
        "minimum_arrays_one_tile_per_array": sum(len(op.tiles) * fixed.get(op.name, 1) for op in ops),
        "pack_solve_seconds": plan.solve_seconds,
        "unreplicated_bottleneck_cycles": unreplicated,
        "speedup": unreplicated / period if period else None,
        "sequential_latency_cycles": sequential,
        "speedup_vs_sequential": sequential / period if period else None,
        "one_tile_per_array": None if otpa is None else {
            "status": otpa.status, "copies": otpa.copies, "bottleneck_cycles": otpa.bottleneck_cycles,
            "arrays": otpa.arrays},
        "gain_vs_one_tile_per_array": None if otpa is None else otpa.bottleneck_cycles / period,
        "arrays_at_one_tile_per_array_period": arrays_at_otpa,
        "arrays_saved": saved,
        "conventions": ("period = max over arrays of the load (sum of ceil(P/r) x slots over the tile copies on "
                        "it: one read per array per slot); speedup = slowest layer unreplicated / period; "
                        "speedup_vs_sequential = sum of all layers unreplicated (one input at a time) / period"),
    }
    if otpa is not None:      # the replicate pass's greedy baseline (one tile per array), under the same keys
        greedy = greedy_replication(demands, input_bits=bits, budget=budget)
        report.update(greedy_bottleneck_cycles=greedy.bottleneck_cycles, greedy_arrays=greedy.arrays,
                      greedy_copies=greedy.copies)
    ctx.replication_report = report
    return graph
