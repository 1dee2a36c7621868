"""Kernel replication: how many copies of each crossbar layer's weights to program.

Layer ``l`` needs ``a_l`` arrays for one copy of its weights and must process
``P_l`` input vectors per inference (sliding-window positions of a conv, input positions of a ConvTranspose,
1 for a fully-connected layer).  With ``r_l`` copies on separate arrays the positions are
split across the copies, so the layer takes

    cycles_l = ceil(P_l / r_l) * b          (b = input bits, bit-serial inputs)

cycles per inference.  A pipelined network's throughput is set by its slowest
layer (the bottleneck, ``max_l cycles_l``); the latency of a single input is
``sum_l cycles_l``; the hardware cost is ``sum_l r_l * a_l`` arrays.

Only the distinct values of ``ceil(P/r)`` matter, and for each of them only the
smallest ``r`` that reaches it (any larger ``r`` with the same cycle count just
wastes arrays).  There are at most ``2*sqrt(P)`` such values, so even a layer
with ``P = 12544`` has ~224 candidates.

This module is pure: it does not depend on the rest of ``cimc``.

Modes of :func:`solve_replication`:

* ``budget``: minimise the bottleneck subject to ``arrays <= budget``, then, with
  the bottleneck fixed, minimise arrays (two CP-SAT solves, lexicographic).
* ``target_cycles``: fewest arrays such that every layer's cycles are
  ``<= target_cycles``.  The layers are independent in this mode, so each layer
  simply takes the smallest copy count that meets the target; this is exact
  and needs no solver (status ``"OPTIMAL"``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

__all__ = [
    "LayerDemand",
    "ReplicationPlan",
    "InfeasibleBudget",
    "candidate_copies",
    "minimum_arrays",
    "solve_replication",
    "greedy_replication",
]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class LayerDemand:
    """What one crossbar layer needs.

    ``max_copies`` caps the copy count (default and upper clamp: ``positions``,
    since more copies than positions cannot help).  ``fixed_copies`` pins the
    copy count (a user override); it is used as given, even above ``positions``.
    """

    name: str
    arrays_per_copy: int
    positions: int
    max_copies: int | None = None
    fixed_copies: int | None = None

    def __post_init__(self) -> None:
        for attr in ("arrays_per_copy", "positions"):
            v = getattr(self, attr)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"layer {self.name!r}: {attr} must be an integer >= 1, got {v!r}")
        for attr in ("max_copies", "fixed_copies"):
            v = getattr(self, attr)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"layer {self.name!r}: {attr} must be an integer >= 1 or None, got {v!r}")
        if (
            self.fixed_copies is not None
            and self.max_copies is not None
            and self.fixed_copies > self.max_copies
        ):
            raise ValueError(
                f"layer {self.name!r}: fixed_copies={self.fixed_copies} exceeds max_copies={self.max_copies}"
            )

    @property
    def copy_limit(self) -> int:
        """Largest copy count worth considering (``fixed_copies`` if pinned)."""
        if self.fixed_copies is not None:
            return self.fixed_copies
        if self.max_copies is None:
            return self.positions
        return min(self.max_copies, self.positions)

    @property
    def min_copies(self) -> int:
        return self.fixed_copies if self.fixed_copies is not None else 1


@dataclass(frozen=True)
class ReplicationPlan:
    """Result of a replication solve.

    ``status``: ``"OPTIMAL"`` (proved), ``"FEASIBLE"`` (time limit hit; ``gap`` is
    the relative gap on the bottleneck from the solver's bound, and 0.0 if only
    the array tie-break was unproved), ``"GREEDY"`` (heuristic; ``gap`` against the
    trivial bound "slowest layer at its copy limit"), ``"FIXED"`` (every layer
    pinned, nothing to decide).
    """

    copies: dict[str, int]
    arrays: int
    bottleneck_cycles: int
    latency_cycles: int
    status: str
    gap: float
    solve_seconds: float
    layer_cycles: dict[str, int] = field(default_factory=dict)

    def cycles(self, layer: str | LayerDemand) -> int:
        """Cycles per inference of one layer under this plan."""
        name = layer.name if isinstance(layer, LayerDemand) else layer
        return self.layer_cycles[name]

    @property
    def bottleneck_layers(self) -> list[str]:
        return [n for n, c in self.layer_cycles.items() if c == self.bottleneck_cycles]


class InfeasibleBudget(ValueError):
    """The array budget cannot hold even one copy of every layer."""

    def __init__(self, budget: int, minimum_arrays: int, layers: Sequence[LayerDemand]):
        self.budget = budget
        self.minimum_arrays = minimum_arrays
        parts = []
        for l in layers:
            if l.fixed_copies is not None and l.fixed_copies != 1:
                parts.append(f"{l.name}: {l.fixed_copies}x{l.arrays_per_copy} (fixed)")
            else:
                parts.append(f"{l.name}: {l.arrays_per_copy}")
        detail = ", ".join(parts)
        if len(detail) > 400:
            detail = detail[:397] + "..."
        super().__init__(
            f"budget of {budget} arrays is below the {minimum_arrays} arrays needed "
            f"for one copy of every layer ({detail})"
        )


# ------------------------------------------------------------------- helpers


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def candidate_copies(positions: int, max_copies: int | None = None) -> list[tuple[int, int]]:
    """``(copies, ceil(positions/copies))`` for every distinct cycle count.

    For each distinct value ``c`` of ``ceil(P/r)`` with ``1 <= r <= max_copies``
    only the smallest ``r`` giving ``c`` is listed.  Copies increase and cycle
    counts strictly decrease along the list; its length is ``O(sqrt(P))``.
    """
    if positions < 1:
        raise ValueError(f"positions must be >= 1, got {positions}")
    limit = positions if max_copies is None else min(max_copies, positions)
    if limit < 1:
        raise ValueError(f"max_copies must be >= 1, got {max_copies}")
    out: list[tuple[int, int]] = []
    r = 1
    while r <= limit:
        c = _ceil_div(positions, r)
        out.append((r, c))
        if c == 1:
            break
        # smallest r' with ceil(P/r') <= c-1  <=>  r' >= P/(c-1)
        r = _ceil_div(positions, c - 1)
    return out


def _layer_candidates(layer: LayerDemand) -> list[tuple[int, int]]:
    if layer.fixed_copies is not None:
        return [(layer.fixed_copies, _ceil_div(layer.positions, layer.fixed_copies))]
    return candidate_copies(layer.positions, layer.copy_limit)


def _check_layers(layers: Iterable[LayerDemand]) -> list[LayerDemand]:
    layers = list(layers)
    if not layers:
        raise ValueError("no layers to replicate")
    seen: set[str] = set()
    for l in layers:
        if not isinstance(l, LayerDemand):
            raise TypeError(f"expected LayerDemand, got {type(l).__name__}")
        if l.name in seen:
            raise ValueError(f"duplicate layer name {l.name!r}")
        seen.add(l.name)
    return layers


def _check_bits(input_bits: int) -> None:
    if isinstance(input_bits, bool) or not isinstance(input_bits, int) or input_bits < 1:
        raise ValueError(f"input_bits must be an integer >= 1, got {input_bits!r}")


def minimum_arrays(layers: Iterable[LayerDemand]) -> int:
    """Arrays needed for one copy of every layer (``fixed_copies`` where pinned)."""
    return sum(l.min_copies * l.arrays_per_copy for l in _check_layers(layers))


def _make_plan(
    layers: Sequence[LayerDemand],
    copies: dict[str, int],
    input_bits: int,
    status: str,
    gap: float,
    seconds: float,
) -> ReplicationPlan:
    per = {l.name: _ceil_div(l.positions, copies[l.name]) * input_bits for l in layers}
    return ReplicationPlan(
        copies={l.name: copies[l.name] for l in layers},
        arrays=sum(copies[l.name] * l.arrays_per_copy for l in layers),
        bottleneck_cycles=max(per.values()),
        latency_cycles=sum(per.values()),
        status=status,
        gap=gap,
        solve_seconds=seconds,
        layer_cycles=per,
    )


def _check_budget(layers: Sequence[LayerDemand], budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ValueError(f"budget must be an integer, got {budget!r}")
    need = minimum_arrays(layers)
    if budget < need:
        raise InfeasibleBudget(budget, need, layers)


# -------------------------------------------------------------------- greedy


def greedy_replication(
    layers: Iterable[LayerDemand],
    input_bits: int = 8,
    budget: int | None = None,
) -> ReplicationPlan:
    """Greedy heuristic: keep adding copies to the bottleneck layer.

    Starts from one copy per layer (``fixed_copies`` where pinned).  The bottleneck
    layer (ties: the one whose next step costs most arrays, then input order)
    jumps to the smallest copy count that lowers its cycles, while the budget
    allows; it stops as soon as the bottleneck layer cannot be improved (pinned,
    at its copy limit, or too expensive).  ``budget=None`` means unlimited.
    """
    t0 = time.perf_counter()
    layers = _check_layers(layers)
    _check_bits(input_bits)
    if budget is not None:
        _check_budget(layers, budget)
    cands = [_layer_candidates(l) for l in layers]
    idx = [0] * len(layers)
    used = minimum_arrays(layers)

    def step_cost(i: int) -> int | None:
        if idx[i] + 1 >= len(cands[i]):
            return None
        return (cands[i][idx[i] + 1][0] - cands[i][idx[i]][0]) * layers[i].arrays_per_copy

    while True:
        worst = max(cands[i][idx[i]][1] for i in range(len(layers)))
        tied = [i for i in range(len(layers)) if cands[i][idx[i]][1] == worst]
        # among tied layers take one that cannot move (stop at once) or else the
        # dearest step first: fewer arrays wasted on a tie that cannot be broken
        costs = {i: step_cost(i) for i in tied}
        i = max(tied, key=lambda j: (math.inf if costs[j] is None else costs[j], -j))
        extra = costs[i]
        if extra is None or (budget is not None and used + extra > budget):
            break
        idx[i] += 1
        used += extra

    copies = {l.name: cands[i][idx[i]][0] for i, l in enumerate(layers)}
    # gap against a trivial bound: no layer can beat its own copy limit
    lower = max(cl[-1][1] for cl in cands)
    gap = (worst - lower) / worst
    return _make_plan(layers, copies, input_bits, "GREEDY", gap, time.perf_counter() - t0)


# -------------------------------------------------------------------- CP-SAT


def _prune_candidates(layers: Sequence[LayerDemand], budget: int) -> list[list[tuple[int, int]]]:
    """Per-layer candidates that can matter for ``budget``.

    Drops (i) copy counts that alone would overshoot the budget, and (ii) copy
    counts faster than needed: the bottleneck is at least ``lo`` (the slowest
    layer at its fastest), so beyond the first candidate with ``ceil(P/r) <= lo``
    a layer only spends more arrays for nothing.  Neither can change the
    lexicographic optimum.
    """
    full = [_layer_candidates(l) for l in layers]
    slack = budget - minimum_arrays(layers)
    kept = []
    for layer, cl in zip(layers, full):
        r0 = cl[0][0]
        kept.append([(r, c) for r, c in cl if (r - r0) * layer.arrays_per_copy <= slack])
    lo = max(cl[-1][1] for cl in kept)
    out = []
    for cl in kept:
        k = next((i for i, (_, c) in enumerate(cl) if c <= lo), len(cl) - 1)
        out.append(cl[: k + 1])
    return out


def _cp_solve(
    cands: list[list[tuple[int, int]]],
    layers: Sequence[LayerDemand],
    budget: int,
    bound_b: int | None,
    hint: list[int],
    time_limit: float,
    workers: int,
    seed: int,
):
    """One CP-SAT solve on the candidate model.

    One boolean per (layer, candidate), exactly one per layer;
    ``bottleneck >= sum_k c_k x_k`` plus ``x_k => bottleneck >= c_k``;
    ``sum r_k a_l x_k <= budget``.  Cycle counts are in units of ``ceil(P/r)``
    (the factor ``input_bits`` is applied by the caller).

    ``bound_b is None``: minimise the bottleneck.  Otherwise add
    ``bottleneck <= bound_b`` and minimise arrays.
    Returns ``(status_name, chosen candidate index per layer or None, objective, bound)``.
    """
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    lo = max(cl[-1][1] for cl in cands)
    hi = max(cl[0][1] for cl in cands) if bound_b is None else bound_b
    # the bottleneck can only take a value that some candidate takes
    values = sorted({c for cl in cands for _, c in cl if lo <= c <= hi})
    bneck = model.new_int_var_from_domain(cp_model.Domain.from_values(values), "bottleneck")
    xs: list[list] = []
    arrays_terms = []
    for li, (layer, cl) in enumerate(zip(layers, cands)):
        xl = [model.new_bool_var(f"x{li}_{k}") for k in range(len(cl))]
        xs.append(xl)
        model.add_exactly_one(xl)
        model.add(bneck >= sum(c * x for (_, c), x in zip(cl, xl)))
        # redundant per-candidate form: once the bottleneck's upper bound drops
        # below c_k, propagation removes x_k, and the LP relaxation (exactly-one
        # rows + budget row) then refutes that bound at once
        for (_, c), x in zip(cl, xl):
            if c > lo:
                model.add(bneck >= c).only_enforce_if(x)
        arrays_terms.extend((r * layer.arrays_per_copy) * x for (r, _), x in zip(cl, xl))
    arrays = sum(arrays_terms)
    model.add(arrays <= budget)
    if bound_b is None:
        model.minimize(bneck)
        # branch on the bottleneck by halving its domain: a binary search whose
        # every wrong half is refuted at the root by propagation + LP
        model.add_decision_strategy([bneck], cp_model.CHOOSE_FIRST, cp_model.SELECT_LOWER_HALF)
    else:
        model.minimize(arrays)
        # dive: per layer, take the fewest copies not yet excluded by the bottleneck bound
        model.add_decision_strategy(
            [x for xl in xs for x in xl], cp_model.CHOOSE_FIRST, cp_model.SELECT_MAX_VALUE
        )
    for xl, h in zip(xs, hint):
        if h is None:
            continue
        for k, x in enumerate(xl):
            model.add_hint(x, k == h)

    solver = cp_model.CpSolver()
    p = solver.parameters
    p.max_time_in_seconds = max(float(time_limit), 0.01)
    p.num_workers = workers
    p.random_seed = seed
    p.log_search_progress = False
    # the model is already tight; CP-SAT's presolve (probing) costs more than the search
    p.cp_model_presolve = False
    if workers == 1:
        p.search_branching = cp_model.FIXED_SEARCH
    st = solver.solve(model)
    name = solver.status_name(st)
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return name, None, None, None
    chosen = [next(k for k, x in enumerate(xl) if solver.boolean_value(x)) for xl in xs]
    return name, chosen, int(round(solver.objective_value)), solver.best_objective_bound


def _solve_target(layers: Sequence[LayerDemand], input_bits: int, target_cycles: int) -> dict[str, int]:
    if isinstance(target_cycles, bool) or not isinstance(target_cycles, int) or target_cycles < 1:
        raise ValueError(f"target_cycles must be an integer >= 1, got {target_cycles!r}")
    per_copy = target_cycles // input_bits  # allowed ceil(P/r)
    copies: dict[str, int] = {}
    for l in layers:
        best = _layer_candidates(l)[-1]  # fastest reachable
        best_cycles = best[1] * input_bits
        if best[1] > per_copy:
            if l.fixed_copies is not None:
                why = f"with its fixed {l.fixed_copies} copies"
            elif l.copy_limit >= l.positions:
                why = f"even with one copy per position ({best[0]} copies)"
            else:
                why = f"at its maximum of {best[0]} copies"
            raise ValueError(
                f"target of {target_cycles} cycles is unreachable: layer {l.name!r} "
                f"takes {best_cycles} cycles {why} ({l.positions} positions x {input_bits} input bits)"
            )
        if l.fixed_copies is not None:
            copies[l.name] = l.fixed_copies
        else:
            copies[l.name] = _ceil_div(l.positions, per_copy)  # smallest r with ceil(P/r) <= per_copy
    return copies


def solve_replication(
    layers: Iterable[LayerDemand],
    input_bits: int = 8,
    budget: int | None = None,
    target_cycles: int | None = None,
    time_limit: float = 10.0,
    workers: int = 1,
    seed: int = 0,
) -> ReplicationPlan:
    """Choose copies per layer.  Give exactly one of ``budget`` / ``target_cycles``.

    ``budget``: lexicographic (min bottleneck, then min arrays) via two CP-SAT
    solves, hinted with :func:`greedy_replication`.  ``time_limit`` (seconds) is
    for the whole call: the first solve may use all of it, the second gets what
    is left (at least 10% of it).  ``workers`` and ``seed`` are fixed CP-SAT
    parameters; with ``workers=1`` (default) the search is deterministic, and when
    both solves are proved optimal the plan is unique anyway (the min-array plan
    for a given bottleneck is unique), so the same input gives the same plan.

    ``target_cycles``: fewest arrays with every layer at ``<= target_cycles``;
    raises ``ValueError`` naming a layer that cannot reach the target.

    Raises :class:`InfeasibleBudget` when ``budget < minimum_arrays(layers)``.
    """
    t0 = time.perf_counter()
    layers = _check_layers(layers)
    _check_bits(input_bits)
    if (budget is None) == (target_cycles is None):
        raise ValueError("give exactly one of budget= or target_cycles=")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")

    all_fixed = all(l.fixed_copies is not None for l in layers)

    if target_cycles is not None:
        copies = _solve_target(layers, input_bits, target_cycles)
        return _make_plan(
            layers, copies, input_bits, "FIXED" if all_fixed else "OPTIMAL", 0.0, time.perf_counter() - t0
        )

    _check_budget(layers, budget)
    if all_fixed:
        copies = {l.name: l.fixed_copies for l in layers}
        return _make_plan(layers, copies, input_bits, "FIXED", 0.0, time.perf_counter() - t0)

    cands = _prune_candidates(layers, budget)
    greedy = greedy_replication(layers, input_bits, budget)
    # greedy is a feasible start (its copy counts are never pruned, see _prune_candidates)
    hint = [
        next((k for k, (r, _) in enumerate(cl) if r == greedy.copies[l.name]), None)
        for l, cl in zip(layers, cands)
    ]

    # phase 1: minimise the bottleneck
    st1, sol1, obj1, bound1 = _cp_solve(cands, layers, budget, None, hint, time_limit, workers, seed)
    if sol1 is None:  # no solution within the time limit: fall back on the heuristic
        return _make_plan(layers, greedy.copies, input_bits, "GREEDY", greedy.gap, time.perf_counter() - t0)
    gap = 0.0 if st1 == "OPTIMAL" else max(0.0, (obj1 - bound1) / obj1) if obj1 > 0 else 0.0

    # phase 2: fix the bottleneck, minimise arrays
    left = max(time_limit - (time.perf_counter() - t0), 0.1 * time_limit)
    st2, sol2, _, _ = _cp_solve(cands, layers, budget, obj1, sol1, left, workers, seed)
    sol = sol2 if sol2 is not None else sol1
    status = "OPTIMAL" if (st1 == "OPTIMAL" and st2 == "OPTIMAL") else "FEASIBLE"
    copies = {l.name: cl[k][0] for l, cl, k in zip(layers, cands, sol)}
    return _make_plan(layers, copies, input_bits, status, gap, time.perf_counter() - t0)
