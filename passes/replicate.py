"""Replicate: choose each crossbar layer's number of weight copies.

* Fixed copies come from the user (`--replicate NODE=N`, or an edited `replication.json` via `--replication FILE`).
* With an array budget (`--arrays N`, else the target's chip budget) the remaining layers' copies are chosen by
  CP-SAT to minimise the bottleneck cycles, then the arrays (passes/replication_solver.py). The greedy baseline
  (copy the bottleneck while the budget allows) is computed beside it.
* With a throughput target (`--target-fps F`) the fewest arrays that reach it (the layers are independent there,
  so each takes the smallest copy count that meets the cycle target: exact without a solver).
* Otherwise every layer keeps one copy (or its fixed count).
Cycles follow passes/estimate.py: ceil(positions / copies) x input slots per vector (x ADC-sharing stalls).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from cimc.errors import ConfigError
from cimc.ir import Graph
from cimc.node_names import unknown_layer
from cimc.passes.copies_for import solve_copies_for
from cimc.passes.estimate import bits_per_vector, slot_ns, stall_factor
from cimc.passes.replication_solver import (InfeasibleBudget, LayerDemand, greedy_replication, minimum_arrays,
                                            solve_replication)

NAME = "replicate"
FORMAT = "cimc-replication"


def read_replication_file(path) -> dict[str, int]:
    """`replication.json` as written by `cimc compile` (its `copies` table), or a plain {layer: copies} object."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"replication file {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    copies = doc.get("copies", doc) if isinstance(doc, dict) else None
    if not isinstance(copies, dict):
        raise ConfigError(f"{path}: expected an object with a 'copies' table of layer -> copies")
    for name, n in copies.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{path}: copies[{name!r}] = {n!r}; the number of copies must be a positive integer")
    return dict(copies)


def replication_document(report: dict) -> dict:
    """The editable `replication.json`: what a user changes and passes back with --replication."""
    return {"format": FORMAT, "version": 1,
            "note": "edit 'copies' and pass this file back with `cimc compile --replication FILE`",
            **report}


def _demands(graph: Graph, fixed: dict[str, int]) -> list[LayerDemand]:
    # a layer's arrays serve its own reads and those of its shared-weight readers (a recurrent matrix: T steps)
    return [LayerDemand(op.name, len(op.tiles), graph.reads_per_inference(op), fixed_copies=fixed.get(op.name))
            for op in graph.mapped_ops()]


def fixed_copies(graph: Graph, config) -> dict[str, int]:
    """The copies the user pinned (--replication FILE, then --replicate NODE=N), checked against the layers."""
    fixed = dict(getattr(config, "replication_file_copies", None) or {})
    fixed.update(config.replicate or {})
    names = [op.name for op in graph.mapped_ops()]     # a shared-weight reader follows its owner's copies
    for name in fixed:
        if name not in names:
            what = "--replicate" if name in (config.replicate or {}) else "the replication file's copies entry"
            raise ConfigError(unknown_layer(what, name, names))
    for name, n in fixed.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"--replicate {name}={n!r}: the number of copies must be a positive integer")
    return fixed


def uses_solver(config, target) -> bool:
    """Whether this request's copies may be chosen by CP-SAT (pack; an array budget, given or the target's, unless
    a throughput target asks for the fewest arrays, which needs no solver): so the compiler imports OR-Tools early."""
    if config.pack:
        return True
    if config.target_fps is not None:
        return False
    return config.arrays is not None or (config.optimize and target.chip.array_budget is not None)


def run(graph: Graph, target, ctx) -> Graph:
    """Copies per layer (op.replicas); the report goes to ctx.replication_report. Options: ctx.options."""
    config = ctx.options
    fixed = fixed_copies(graph, config)
    bits = bits_per_vector(target) * stall_factor(target)
    layers = _demands(graph, fixed)
    budget = getattr(config, "arrays", None)
    fps = getattr(config, "target_fps", None)
    if budget is None and fps is None and getattr(config, "optimize", True):
        budget = target.chip.array_budget
    time_limit = getattr(config, "time_limit", 10.0)
    mode, weight = getattr(config, "copies_for", ("throughput", 1.0))
    if mode != "throughput" and (fps is not None or budget is None):
        raise ConfigError(f"--copies-for {mode}: copies are chosen for accuracy under an array budget; give "
                          "--arrays N (or a target with a chip budget) instead of --target-fps / --no-optimize")
    report: dict = {"mode": "fixed", "budget": budget, "target_fps": fps, "input_slots_per_vector": bits,
                    "greedy_copies": None, "greedy_bottleneck_cycles": None, "greedy_arrays": None}  # budget mode only
    try:
        if fps is not None:
            if fps <= 0:
                raise ConfigError(f"--target-fps {fps}: must be positive")
            target_cycles = math.floor(1e9 / (fps * slot_ns(target)))
            if target_cycles < bits:
                raise ConfigError(f"--target-fps {fps}: one input vector alone takes {bits} slots of "
                                  f"{slot_ns(target)} ns; the fastest possible is {1e9 / (bits * slot_ns(target)):.0f}")
            plan = solve_replication(layers, input_bits=bits, target_cycles=target_cycles, time_limit=time_limit)
            chip = target.chip.array_budget
            if chip is not None and plan.arrays > chip:   # allocate would refuse it: say why here, for count too
                raise ConfigError(f"--target-fps {fps:g} needs {plan.arrays} arrays but target {target.name!r} has "
                                  f"{chip}; ask for a lower rate, use --arrays {chip} for the fastest plan on this "
                                  "chip, or --set chip.chips=0 for as many chips as needed")
            report.update(mode="target-fps", target_cycles=target_cycles)
        elif budget is not None and mode != "throughput":
            plan = _averaging_plan(layers, ctx, bits, budget, weight, time_limit)
            report.update(mode=f"budget, copies for {mode}" + (f" (throughput weight {weight:g})"
                                                               if mode == "mix" else ""))
        elif budget is not None:
            plan = solve_replication(layers, input_bits=bits, budget=budget, time_limit=time_limit)
            greedy = greedy_replication(layers, input_bits=bits, budget=budget)
            report.update(mode="budget", greedy_copies=greedy.copies,
                          greedy_bottleneck_cycles=greedy.bottleneck_cycles, greedy_arrays=greedy.arrays)
        else:
            plan = None
    except InfeasibleBudget as exc:
        raise ConfigError(f"{exc}; pass --arrays N with N >= {exc.minimum_arrays}, fewer fixed copies, "
                          "or a target with more arrays") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    copies = plan.copies if plan is not None else {op.name: fixed.get(op.name, 1) for op in graph.mapped_ops()}
    average = getattr(plan, "average", None) or {}
    for op in graph.mapped_ops():
        op.replicas = copies[op.name]
        op.average = average.get(op.name, 1)
    graph.share_weights()
    baseline = max((math.ceil(l.positions / 1) * bits for l in layers), default=0)
    if plan is not None:
        report.update(status=plan.status, gap=plan.gap, solve_seconds=plan.solve_seconds,
                      bottleneck_cycles=plan.bottleneck_cycles, latency_cycles=plan.latency_cycles,
                      arrays=plan.arrays, bottleneck_layers=plan.bottleneck_layers)
    else:
        cycles = [math.ceil(l.positions / copies[l.name]) * bits for l in layers]
        report.update(status="FIXED", gap=0.0, solve_seconds=0.0, bottleneck_cycles=max(cycles, default=0),
                      latency_cycles=sum(cycles), arrays=sum(copies[l.name] * l.arrays_per_copy for l in layers))
    report.update(copies=copies, fixed=fixed, minimum_arrays=minimum_arrays(_demands(graph, {})),
                  unreplicated_bottleneck_cycles=baseline,
                  speedup=baseline / report["bottleneck_cycles"] if report["bottleneck_cycles"] else None)
    if average:          # only --copies-for accuracy|mix: the default report (and replication.json) as before
        report.update(copies_for={"mode": mode, "throughput_weight": weight},
                      average=average, pipeline={n: copies[n] // a for n, a in average.items()},
                      sensitivity=ctx.sensitivity, noise=plan.noise,
                      noise_unaveraged=sum(ctx.sensitivity.values()))
    ctx.replication_report = report
    return graph


def _averaging_plan(layers, ctx, bits, budget, weight, time_limit):
    """--copies-for accuracy|mix: copies that average or pipeline by CP-SAT (passes/copies_for.py), weighted by
    the layers' measured sensitivity (cimc.sensitivity, the compile's calibration inputs)."""
    if ctx.sensitivity is None:
        raise ConfigError("--copies-for accuracy|mix needs each layer's sensitivity, measured on calibration data: "
                          "use `cimc compile --calibration ...` (count has no calibration data)")
    return solve_copies_for(layers, ctx.sensitivity, bits, budget, weight, time_limit)
