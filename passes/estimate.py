"""Estimate: cycles, latency, throughput, energy, area and efficiency from the target's numbers and the schedule.

An analysis: plain functions returning JSON-ready dicts (`estimate_graph`, `estimate_macro`), plus a pass `run` that
stores the graph's estimate on `ctx.estimates` (cimc.pipeline) and returns the graph unchanged.

Schedule (the model of cimc.passes.replication_solver). Crossbar layer l with P_l sliding-window positions and r_l
copies of its weights takes

    cycles_l = ceil(P_l / r_l) x b x s                 input slots per inference

with b = target.input.bits for bit-serial inputs (one 1-bit pulse per bit), 1 for analog inputs, and s =
adc.columns_per_adc when the target says ADC sharing costs time (timing.adc_sharing_stalls), else 1. A slot lasts
timing.slot_ns (default input.pulse_ns). Latency of one input = sum_l cycles_l slots (layers one after another);
pipelined throughput = 1 / (max_l cycles_l x slot). Digital ops (ReLU, pooling, ...) take no time in this model.

Ops: 2 per multiply-accumulate, as Yao 2020 counts: a layer does 2 x K x N ops per position (K x N its logical weight
matrix; structural zeros of a grouped conv excluded). The single-array macro (`estimate_macro`) counts 2 x rows x
cols of the physical array per input vector, the paper's 2 x 128 x 128 = 32,768 (with differential columns the array
holds rows x cols/2 signed weights, so that count is twice the signed MACs); its `weights` entry follows the weight
encoding: the signed weights the array holds (inputs_per_tile x outputs_per_tile: rows x cols/2 for the pair,
rows x cols/(2S) bit-sliced, rows x cols offset, rows x (cols - 1) with an offset reference column) and their ops,
2 per signed MAC, with the GOP/s and GOPS/W they give.

Energy, per array read (one tile, one slot), scaled to the part of the array the tile uses:
    array    energy.array_pj_per_slot  x cells used / (rows x cols)
    drivers  energy.driver_pj_per_slot x rows driven / rows
    ADC      adc.energy_pj             x columns converted (every column the tile uses, once per slot; an offset
                                         reference column's line too: ArraySpec.tile_footprint counts it)
    digital  energy.digital_pj_per_op  x columns converted (one shift-and-add per conversion)
A layer reads each of its tiles once per slot for each of its P_l x b position-bits, on whichever copy; copies
speed a layer up but do not change its energy (ADC-sharing stalls cost time, not energy).
Area: arrays used x (energy.array_area_um2 + energy.peripheral_area_um2).

A number the target does not give (None) makes everything that depends on it null, and its field is listed under
`missing` — never a silent zero.
"""
from __future__ import annotations

import math

from cimc.ir import Graph, XbarOp

NAME = "estimate"

_COMPONENTS = ("array", "drivers", "adc", "digital")
_FIELDS = {"array": "energy.array_pj_per_slot", "drivers": "energy.driver_pj_per_slot", "adc": "adc.energy_pj",
           "digital": "energy.digital_pj_per_op"}
_AREA_FIELDS = ("energy.array_area_um2", "energy.peripheral_area_um2")


# -- target numbers ---------------------------------------------------------------------------------------------
def slot_ns(target) -> float:
    """Duration of one input slot."""
    return float(target.timing.slot_ns if target.timing.slot_ns is not None else target.input.pulse_ns)


def bits_per_vector(target) -> int:
    """Input slots per input vector: the bits for bit-serial inputs, 1 for analog."""
    return int(target.input.bits) if target.input.encoding == "bit-serial" else 1


def stall_factor(target) -> int:
    """Conversion rounds per input slot: columns_per_adc when ADC sharing costs time, else 1."""
    return int(target.adc.columns_per_adc) if target.timing.adc_sharing_stalls else 1


def _unit_energies(target) -> dict:
    """pj per unit: array per cell, drivers per row, ADC per conversion, digital per conversion (None = unknown)."""
    e, a = target.energy, target.array
    return {"array": None if e.array_pj_per_slot is None else e.array_pj_per_slot / (a.rows * a.cols),
            "drivers": None if e.driver_pj_per_slot is None else e.driver_pj_per_slot / a.rows,
            "adc": target.adc.energy_pj,
            "digital": e.digital_pj_per_op}


def _area_per_array_um2(target) -> dict:
    e = target.energy
    total = None if e.array_area_um2 is None or e.peripheral_area_um2 is None else \
        e.array_area_um2 + e.peripheral_area_um2
    return {"array": e.array_area_um2, "peripheral": e.peripheral_area_um2, "total": total}


def _missing(target) -> list[str]:
    unit = _unit_energies(target)
    missing = [_FIELDS[c] for c in _COMPONENTS if unit[c] is None]
    area = _area_per_array_um2(target)
    missing += [f for f, v in zip(_AREA_FIELDS, (area["array"], area["peripheral"])) if v is None]
    return missing


def _energy(unit: dict, counts: dict) -> dict:
    """Energy breakdown in pJ from unit energies and event counts {cells, rows, conversions}; None where unknown."""
    per = {"array": counts["cells"], "drivers": counts["rows"], "adc": counts["conversions"],
           "digital": counts["conversions"]}
    out = {c: None if unit[c] is None else unit[c] * per[c] for c in _COMPONENTS}
    out["total"] = None if any(out[c] is None for c in _COMPONENTS) else sum(out[c] for c in _COMPONENTS)
    return out


def _div(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _mul(a, b):
    return None if a is None or b is None else a * b


# -- one array ---------------------------------------------------------------------------------------------------
def estimate_macro(target) -> dict:
    """One full-array MVM on a single array with every row and column in use (Yao's benchmark macro)."""
    a = target.array
    b, s, slot = bits_per_vector(target), stall_factor(target), slot_ns(target)
    per_slot = _energy(_unit_energies(target), {"cells": a.rows * a.cols, "rows": a.rows, "conversions": a.cols})
    ops = 2 * a.rows * a.cols
    vector_ns = b * s * slot
    gops = ops / vector_ns                                         # ops per ns = GOP/s
    pj_vector = _mul(per_slot["total"], b)
    gops_per_w = _div(ops * 1e3, pj_vector)                        # ops/pJ = 1e3 GOP/J
    area = _area_per_array_um2(target)
    area_mm2 = None if area["total"] is None else area["total"] * 1e-6
    # the signed weights the array holds under its encoding (cimc.weight_encoding): a pair, S slices' pairs or one
    # offset device per weight, each a MAC of 2 ops on the inputs it sees; Yao's count above is per cell
    weights = a.inputs_per_tile * a.outputs_per_tile
    signed_ops = 2 * weights
    return {
        "target": target.name,
        "array": {"rows": a.rows, "cols": a.cols},
        "weights": {"encoding": target.weights.encoding, "slices": target.weights.slices,
                    **({"offset_reference": target.weights.offset_reference}
                       if target.weights.encoding == "offset" else {}),
                    "signed_weights": weights, "signed_ops_per_vector": signed_ops,
                    "signed_gops": signed_ops / vector_ns,
                    "signed_gops_per_w": _div(signed_ops * 1e3, pj_vector)},
        "input_bits": target.input.bits, "encoding": target.input.encoding,
        "slot_ns": slot, "slots_per_vector": b * s, "vector_ns": vector_ns,
        "adc_conversions_per_slot": a.cols, "adcs": -(-a.cols // target.adc.columns_per_adc),
        "ops_per_vector": ops,
        "pj_per_bit_slot": per_slot["total"],
        "breakdown_pj_per_slot": {c: per_slot[c] for c in _COMPONENTS},
        "pj_per_vector": pj_vector,
        "power_mw": _div(pj_vector, vector_ns),                    # pJ/ns = mW
        "gops": gops,
        "gops_per_w": gops_per_w,
        "tops_per_w": _div(gops_per_w, 1e3),
        "area_um2": area,
        "area_mm2": area_mm2,
        "gops_per_mm2": _div(gops, area_mm2),
        "missing": _missing(target),
        "conventions": f"one {b}-bit input vector on all {a.rows} rows, all {a.cols} columns converted each slot; "
                       f"ops = 2 x {a.rows} x {a.cols} (a MAC per cell = 2 ops, as Yao 2020 counts)",
    }


# -- a compiled graph --------------------------------------------------------------------------------------------
def _weights(op: XbarOp) -> int:
    """Logical multiply-accumulates per position: K x N without the structural zeros of a grouped conv."""
    return sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in op.structural_mask_blocks)


def _tiles(op: XbarOp, target):
    if op.tiles:
        return op.tiles
    from cimc.passes.tile import tiles_for
    return tiles_for(op, target.array.inputs_per_tile, target.array.outputs_per_tile)


def estimate_graph(graph: Graph, target) -> dict:
    """Per crossbar layer and in total: cycles, latency, throughput, ops, energy, area and utilisation."""
    b, s, slot = bits_per_vector(target), stall_factor(target), slot_ns(target)
    unit, area_array = _unit_energies(target), _area_per_array_um2(target)
    cells_per_array = target.array.rows * target.array.cols
    layers, busy_slots = [], []
    for op in graph.xbar_ops():
        # a shared-weight reader reads its owner's tiles (and is charged its reads) but holds no arrays
        tiles = _tiles(graph.array_owner(op), target)
        shapes = [target.array.tile_footprint(t.row_count, t.col_count) for t in tiles]
        rows_used, cols_used = sum(r for r, _ in shapes), sum(c for _, c in shapes)
        cells_used = sum(r * c for r, c in shapes)
        copies, positions = int(op.replicas), int(op.positions)
        average = int(op.average)           # copies read together per position (averaging); the rest pipeline
        arrays = len(tiles) * copies if op.weights_of is None else 0
        slots_work = positions * b * average                       # position-bits, each on `average` copies
        cycles = math.ceil(positions / (copies // average)) * b * s
        ops = 2 * _weights(op) * positions
        energy = _energy(unit, {"cells": slots_work * cells_used, "rows": slots_work * rows_used,
                                "conversions": slots_work * cols_used})
        layers.append({
            "name": op.name, "op_type": op.op_type, "rows": op.rows, "cols": op.cols, "positions": positions,
            "copies": copies, "tiles": len(tiles), "arrays": arrays, "cycles": cycles,
            "latency_ns": cycles * slot, "ops": ops, "gops": ops / (cycles * slot),
            "array_reads": slots_work * len(tiles), "adc_conversions": slots_work * cols_used,
            "energy_pj": energy,
            "gops_per_w": _div(ops * 1e3, energy["total"]),
            "area_um2": _mul(area_array["total"], arrays),
            "utilisation": cells_used * copies / (arrays * cells_per_array) if arrays else 0.0,
        })
        busy_slots.append(slots_work * s * len(tiles))   # array-slots the layer keeps busy per inference
    bottleneck = max(layers, key=lambda l: l["cycles"]) if layers else None
    bottleneck_cycles = bottleneck["cycles"] if layers else 0
    # Tiles that share an array (passes/pack.py) time-share it: one read per array per slot, so an array's load is
    # the sum of the cycles of the tile copies on it, and the pipelined period is the largest load. With one tile
    # per array each load is one layer's cycles and this is the slowest layer, as above.
    # Shared-weight readers' reads load their owner's arrays (a recurrent matrix is busy for all T steps): an
    # owner's arrays take ceil(its reads and its readers' / copies) slots, the replication solver's model.
    loads: dict[int, int] = {}
    for op, layer in zip(graph.xbar_ops(), layers):
        if op.weights_of is not None:
            continue
        reads = graph.reads_per_inference(op)
        cycles = layer["cycles"] if reads == op.positions else math.ceil(reads / (op.replicas // op.average)) * b * s
        for t in op.tiles:
            for p in t.placements:
                loads[p.array] = loads.get(p.array, 0) + cycles
    bottleneck_cycles = max([bottleneck_cycles, *loads.values()])
    shared = len(loads) < sum(len(t.placements) for op in graph.mapped_ops() for t in op.tiles)
    if shared:        # a layer's "arrays" is then the arrays it touches; the total counts each array once
        touched = [{p.array for t in op.tiles for p in t.placements} for op in graph.xbar_ops()]
        for layer, arrays in zip(layers, touched):
            if not arrays:
                continue
            layer["arrays"] = len(arrays)
            layer["area_um2"] = _mul(area_array["total"], len(arrays))
            layer["utilisation"] = layer["utilisation"] * layer["copies"] * layer["tiles"] / len(arrays)
    for layer, busy in zip(layers, busy_slots):  # share of its arrays' slots kept busy at the bottleneck's pace
        layer["pipeline_utilisation"] = busy / (layer["arrays"] * bottleneck_cycles) if layer["arrays"] else 0.0
    total_arrays = len(loads) if shared else sum(l["arrays"] for l in layers)
    latency_cycles = sum(l["cycles"] for l in layers)
    ops = sum(l["ops"] for l in layers)
    energy = {c: None if any(l["energy_pj"][c] is None for l in layers) else sum(l["energy_pj"][c] for l in layers)
              for c in _COMPONENTS + ("total",)}
    period_ns = bottleneck_cycles * slot
    throughput = 1e9 / period_ns if period_ns else None             # inferences per second, pipelined
    gops = ops / period_ns if period_ns else None
    area_um2 = _mul(area_array["total"], total_arrays)
    area_mm2 = None if area_um2 is None else area_um2 * 1e-6
    gops_per_w = _div(ops * 1e3, energy["total"])
    busy = sum(busy_slots)
    totals = {
        "arrays": total_arrays, "ops": ops,
        "latency_cycles": latency_cycles, "latency_ns": latency_cycles * slot,
        "bottleneck_cycles": bottleneck_cycles, "bottleneck_layer": bottleneck["name"] if layers else None,
        "shared_arrays": shared,
        "bottleneck_arrays": sorted(a for a, load in loads.items() if load == bottleneck_cycles) if shared else None,
        "throughput_per_s": throughput,
        "gops": gops,                                                # pipelined
        "gops_unpipelined": ops / (latency_cycles * slot) if latency_cycles else None,
        "energy_pj": energy,
        "power_mw": _div(energy["total"], period_ns),                # pipelined, pJ/ns = mW
        "gops_per_w": gops_per_w, "tops_per_w": _div(gops_per_w, 1e3),
        "area_um2": area_um2, "area_mm2": area_mm2, "gops_per_mm2": _div(gops, area_mm2),
        "utilisation": sum(l["utilisation"] * l["arrays"] for l in layers) / total_arrays if total_arrays else 0.0,
        "pipeline_utilisation": busy / (total_arrays * bottleneck_cycles) if total_arrays and bottleneck_cycles
        else 0.0,
    }
    return {
        "target": target.name,
        "array": {"rows": target.array.rows, "cols": target.array.cols, "differential": target.array.differential},
        "input_bits": target.input.bits, "encoding": target.input.encoding,
        "slot_ns": slot, "slots_per_bit": s, "adc_sharing_stalls": bool(target.timing.adc_sharing_stalls),
        "layers": layers, "totals": totals, "missing": _missing(target),
        "conventions": (
            f"cycles = ceil(positions / copies) x {b} input slot(s){f' x {s} ADC rounds' if s > 1 else ''}, "
            f"{slot:g} ns each; latency = sum over layers, throughput = 1 / slowest layer (pipelined; "
            "with tiles sharing an array, 1 / the busiest array's summed cycles); "
            "ops = 2 x K x N x positions; energy per tile read scales with the cells (array), rows (drivers) and "
            "columns (ADC, digital shift-and-add) the tile uses; digital layers (ReLU, pooling, ...) not counted; "
            "area = arrays x (array + periphery); utilisation = cells used / cells of the arrays used"),
    }


def run(graph: Graph, target, ctx=None) -> Graph:
    """As a pass: store `estimate_graph` on `ctx.estimates` (the pipeline's context) and return the graph."""
    if ctx is not None:
        ctx.estimates = estimate_graph(graph, target)
    return graph
