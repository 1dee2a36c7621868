"""What a layer's copies buy: throughput (they pipeline), accuracy (they are read together and averaged), or a mix.

A layer with r = a x g copies forms g pipeline groups of a averaging copies: each position is read on all a copies
of one group and their accumulators averaged (cimc.backends.crossbar), so the layer takes ceil(P / g) x b cycles
and its independent per-copy errors (programming error, read noise) drop in variance by a. With sensitivity s_l
(the model's output error when only layer l is noisy, cimc.sensitivity; an error proportional to the noise
variance), the noise objective is N = sum_l s_l / a_l. Under the array budget, `solve_copies_for` chooses (a_l, g_l)
per layer by CP-SAT to minimise

    w x B / B0 + (1 - w) x N / N0       (B: bottleneck cycles, B0: unreplicated; N0 = sum_l s_l: one copy each)

then, at that optimum, the bottleneck, then the arrays (two solves, lexicographic). w = 0 is `--copies-for
accuracy`, mix:W sets w = W; w = 1 (throughput) is passes/replication_solver.py, untouched. Pure: no cimc imports
beyond the replication solver's demand type.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from cimc.passes.replication_solver import InfeasibleBudget, LayerDemand, candidate_copies

SCALE = 10**9          # the primary objective as an integer: its two terms each between 0 and SCALE


@dataclass
class CopiesPlan:
    copies: dict[str, int]          # a x g per layer
    average: dict[str, int]         # a: copies averaged per read
    bottleneck_cycles: int
    latency_cycles: int
    arrays: int
    noise: float                    # sum_l s_l / a_l
    status: str
    solve_seconds: float
    gap: float = 0.0
    bottleneck_layers: list | None = None


def options(layer: LayerDemand, spare: int, max_average: int) -> list[tuple[int, int]]:
    """(a, g) pairs of one layer: a averaging copies in each of g pipeline groups, within its one copy plus the
    budget's spare arrays (what every layer's single copy leaves); g only where it is the smallest that reaches its
    cycle count (more would waste arrays). A fixed copy count r keeps a x g = r."""
    t = layer.arrays_per_copy
    if layer.fixed_copies is not None:
        r = layer.fixed_copies
        return [(a, r // a) for a in range(1, r + 1) if r % a == 0 and a <= max_average]
    most = 1 + spare // t                          # copies this layer can hold at most
    groups = [g for g, _ in candidate_copies(layer.positions, most)]
    return [(a, g) for a in range(1, min(max_average, most) + 1) for g in groups if a * g <= most]


def solve_copies_for(layers: list[LayerDemand], sensitivity: dict[str, float], input_bits: int, budget: int,
                     weight: float, time_limit: float = 10.0, max_average: int = 16) -> CopiesPlan:
    from ortools.sat.python import cp_model
    start = time.perf_counter()
    need = sum((l.fixed_copies or 1) * l.arrays_per_copy for l in layers)
    if need > budget:
        raise InfeasibleBudget(budget, need, layers)
    cycles = {l.name: lambda g, p=l.positions: math.ceil(p / g) * input_bits for l in layers}
    b0 = max(math.ceil(l.positions) * input_bits for l in layers)
    s = {l.name: max(0.0, float(sensitivity.get(l.name, 0.0))) for l in layers}
    n0 = sum(s.values()) or 1.0
    model = cp_model.CpModel()
    choice = {}
    for l in layers:
        opts = options(l, budget - need, max_average) or [(1, l.fixed_copies or 1)]
        choice[l.name] = [(a, g, model.NewBoolVar(f"{l.name}:{a}x{g}")) for a, g in opts]
        model.AddExactlyOne(v for _, _, v in choice[l.name])
    arrays = sum(a * g * l.arrays_per_copy * v for l in layers for a, g, v in choice[l.name])
    model.Add(arrays <= budget)
    bottleneck = model.NewIntVar(0, b0, "bottleneck")
    for l in layers:
        model.Add(bottleneck >= sum(cycles[l.name](g) * v for _, g, v in choice[l.name]))
    noise = sum(round((1 - weight) * SCALE * s[l.name] / (a * n0)) * v for l in layers for a, _, v in choice[l.name])
    primary = noise + round(weight * SCALE / b0) * bottleneck
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = 1           # deterministic: the same request, the same plan
    model.Minimize(primary)
    picked = {l.name: (1, l.fixed_copies or 1) for l in layers}      # feasible (need <= budget): the start
    for l in layers:
        for a, g, v in choice[l.name]:
            model.AddHint(v, (a, g) == picked[l.name])
    status = solver.Solve(model)
    first_optimal = status == cp_model.OPTIMAL
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):   # else (time out before any solution) keep the start
        picked = {l.name: next((a, g) for a, g, v in choice[l.name] if solver.Value(v)) for l in layers}
    else:
        return _plan(layers, picked, cycles, s, "UNKNOWN (no plan within the time limit: one copy each)", start)
    model.Add(primary <= round(solver.ObjectiveValue()))
    model.ClearObjective()
    model.Minimize(bottleneck * (budget + 1) + arrays)
    model.ClearHints()
    for l in layers:                 # the second solve starts from the first's plan, and keeps it if it finds none
        for a, g, v in choice[l.name]:
            model.AddHint(v, (a, g) == picked[l.name])
    status = solver.Solve(model)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        picked = {l.name: next((a, g) for a, g, v in choice[l.name] if solver.Value(v)) for l in layers}
    return _plan(layers, picked, cycles, s,
                 "OPTIMAL" if first_optimal and status == cp_model.OPTIMAL else "FEASIBLE", start)


def _plan(layers, picked, cycles, s, status, start) -> CopiesPlan:
    per_cycles = [cycles[l.name](picked[l.name][1]) for l in layers]
    return CopiesPlan(
        copies={n: a * g for n, (a, g) in picked.items()}, average={n: a for n, (a, _) in picked.items()},
        bottleneck_cycles=max(per_cycles), latency_cycles=sum(per_cycles),
        arrays=sum(a * g * l.arrays_per_copy for l in layers for a, g in [picked[l.name]]),
        noise=sum(s[n] / a for n, (a, _) in picked.items()), status=status,
        solve_seconds=time.perf_counter() - start,
        bottleneck_layers=[l.name for l, c in zip(layers, per_cycles) if c == max(per_cycles)])
