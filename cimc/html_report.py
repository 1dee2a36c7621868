"""`cimc report`: one self-contained HTML page about a compiled manifest.

The page is rendered from the jinja2 template `targets/templates/report.html.j2` (autoescaped) with inline CSS and
inline SVG only: no scripts, stylesheets, fonts or images from elsewhere, so it opens offline and can be mailed.

This module turns a Manifest into plain dicts and lists the template only has to loop over; all geometry of the two
pictures (the array map and the cycles chart) is computed here:

* summary: model, target, arrays, chips/PEs, calibration, provenance, and the estimate totals of
  `cimc.passes.estimate.estimate_graph` (a number the target does not give is "unknown (needs <field>)");
* per-layer table: shape, tiles, copies, arrays, positions, cycles, energy per inference, share of the bottleneck;
* array map: one square per physical array grouped by chip and PE (array a is on PE a // arrays_per_pe and chip
  a // arrays_per_chip), coloured by layer, hatched for copies after copy 0, fill opacity = the share of the
  array's cells that hold weights; an array that several tiles share (--pack) is split into one stripe per tile.
  Above `MAX_SQUARES` arrays it shows one square per PE, or per group of arrays;
* cycles chart: per layer, the cycles with one copy of every layer (ceil(P) x b x s) beside the cycles with the
  compiled copies (ceil(P / r) x b x s), on a log axis when the range is wide;
* results: a tuned manifest's hybrid-training record (provenance.tuning, and earlier rounds), and the JSON objects
  of `cimc run --json` / `cimc tune --json` passed with `--results` (cimc.results_view).
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import tempfile
from importlib import resources
from pathlib import Path

import jinja2

from cimc.version import __version__
from cimc.errors import CimcError
from cimc.ir import XbarOp
from cimc.results_view import tuning_history

MAX_SQUARES = 5000          # above this many arrays the map aggregates
TEMPLATE = "report.html.j2"

_ENERGY_FIELDS = ("energy.array_pj_per_slot", "energy.driver_pj_per_slot", "adc.energy_pj",
                  "energy.digital_pj_per_op")
_AREA_FIELDS = ("energy.array_area_um2", "energy.peripheral_area_um2")

_env = jinja2.Environment(
    loader=jinja2.FunctionLoader(lambda name: (resources.files("cimc.targets") / "templates" / name).read_text()),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


class ReportError(CimcError):
    """The report cannot be written (for example the output folder does not exist)."""


# -- formatting --------------------------------------------------------------------------------------------------
def layer_colour(index: int) -> str:
    """A deterministic, well-spread colour for layer `index` (golden-angle hues, alternating lightness)."""
    hue = (index * 137.508) % 360.0
    light = (0.42, 0.55, 0.35)[index % 3]
    r, g, b = colorsys.hls_to_rgb(hue / 360.0, light, 0.68)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _num(value: float, digits: int = 3) -> str:
    """A readable number: thousands separators for big ones, `digits` significant digits for small ones."""
    if value == 0:
        return "0"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _energy_text(pj: float) -> str:
    for unit, scale in (("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{_num(pj / scale)} {unit}"
    return f"{_num(pj)} pJ"


def _time_text(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if abs(ns) >= scale:
            return f"{_num(ns / scale)} {unit}"
    return f"{_num(ns)} ns"


def _plain(value, limit: int = 12) -> str:
    """A JSON value as short text: a {layer: copies} dict lists only the entries that are not 1."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if v != 1] if all(isinstance(v, int) for v in value.values()) \
            else list(value.items())
        if not items:
            return "none (all 1)" if value else "none"
        text = ", ".join(f"{k} × {v}" if isinstance(v, int) else f"{k}: {v}" for k, v in items[:limit])
        return text + (f", … ({len(items) - limit} more)" if len(items) > limit else "")
    if isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value[:limit])
        return text + (f", … ({len(value) - limit} more)" if len(value) > limit else "")
    return str(value)


def _unknown(missing: list[str], fields) -> str:
    need = [f for f in missing if f in fields] or list(missing)
    return f"unknown (needs {', '.join(need)})" if need else "unknown"


def _metric(label: str, value, text, missing: list[str], fields) -> dict:
    return {"label": label, "value": value, "known": value is not None,
            "text": text(value) if value is not None else _unknown(missing, fields)}


# -- the parts ---------------------------------------------------------------------------------------------------
def _target_info(t) -> dict:
    a, d, i, adc, chip = t.array, t.device, t.input, t.adc, t.chip
    diff = (f"g+/g− on adjacent columns: {a.inputs_per_tile} inputs × {a.outputs_per_tile} signed outputs per array"
            if a.differential == "columns" else
            f"+v/−v on paired rows: {a.inputs_per_tile} inputs × {a.outputs_per_tile} signed outputs per array")
    w = t.weights
    if w.encoding == "offset":      # the weight encoding (cimc.weight_encoding) decides the columns per output
        how = ("a reference column of offset-level devices per array, its code subtracted after the ADC"
               if w.reference_column else "offset subtracted digitally")
        diff = (f"offset weights, one device each ({how}): {a.inputs_per_tile} inputs × "
                f"{a.outputs_per_tile} signed outputs per array")
    elif w.encoding == "bit-sliced":
        diff = f"bit-sliced over {w.slices} device pairs (shift-and-add after the ADC); " + diff
    if adc.lossless:
        adc_text = "lossless (ideal)"
    else:
        adc_text = f"{adc.bits}-bit, {adc.columns_per_adc} column(s) per ADC, full scale {adc.full_scale}"
        if adc.energy_pj is not None:
            adc_text += f", {adc.energy_pj:g} pJ per conversion"
        effects = [f"{label} {value:g}" for label, value in (("gain σ", adc.gain_sigma_rel), ("offset σ LSB",
                   adc.offset_sigma_lsb), ("INL LSB", adc.inl_lsb), ("sense noise σ LSB", adc.noise_sigma_lsb)) if value]
        if effects:
            adc_text += "; " + ", ".join(effects)
    chips = "unlimited chips" if chip.chips == 0 else f"{chip.chips} chip(s) ({chip.array_budget} arrays)"
    return {
        "name": t.name, "description": t.description,
        "geometry": f"{a.rows} × {a.cols} cells",
        "differential": diff,
        "device": f"{d.levels} levels, {d.g_min_us:g}–{d.g_max_us:g} µS "
                  f"(signed weights −{t.max_weight_level}..{t.max_weight_level})",
        "input": f"{i.bits}-bit {i.encoding}, {i.read_voltage_v:g} V / {i.pulse_ns:g} ns",
        "adc": adc_text,
        "chip": f"{chip.arrays_per_pe} array(s) per PE, {chip.pes_per_chip} PEs per chip, {chips}",
    }


def _nested(value) -> bool:
    """A list of dicts or a dict holding dicts/lists: too structured for one table cell."""
    if isinstance(value, list):
        return any(isinstance(v, (dict, list)) for v in value)
    if isinstance(value, dict):
        return any(isinstance(v, (dict, list)) for v in value.values())
    return False


def _cimc_version(manifest) -> str:
    version = manifest.provenance.get("cimc_version")
    if version is None and manifest.path is not None:
        try:
            version = json.loads((Path(manifest.path) / "manifest.json").read_text()).get("cimc_version")
        except (OSError, ValueError):
            version = None
    return str(version) if version is not None else f"{__version__} (not recorded)"


def _array_records(ops: list[XbarOp], target, n_arrays: int) -> list[dict]:
    """One record per physical array: the share of its cells that hold weights and every tile placed on it, as
    (layer index, copy, copies, tile, row_start, col_start, used). An array shared by several tiles (--pack) has
    several; the record's own layer, copy and tile are its largest tile's."""
    cells = target.array.rows * target.array.cols
    parts: list[list[dict]] = [[] for _ in range(n_arrays)]
    for li, op in enumerate(ops):
        for ti, tile in enumerate(op.tiles):
            r, c = target.array.tile_footprint(tile.row_count, tile.col_count)
            for copy, p in enumerate(tile.placements):
                if 0 <= p.array < n_arrays:
                    parts[p.array].append({"layer": li, "copy": copy, "copies": len(tile.placements), "tile": ti,
                                           "row_start": tile.row_start, "col_start": tile.col_start,
                                           "used": r * c / cells})
    records = []
    for a, on in enumerate(parts):
        if not on:
            records.append({"array": a, "layer": None, "copy": 0, "copies": 1, "tile": None, "row_start": 0,
                            "col_start": 0, "used": 0.0, "parts": []})
            continue
        big = max(on, key=lambda t: t["used"])
        records.append(dict(big, array=a, used=sum(t["used"] for t in on), parts=on))
    return records


def id_ranges(ids) -> str:
    """Array ids as exact ranges: {0, 2, 3, 7} -> "0, 2–3, 7"."""
    ids = sorted(set(ids))
    if not ids:
        return "–"
    runs, start = [], ids[0]
    for prev, cur in zip(ids, ids[1:] + [None]):
        if cur is None or cur != prev + 1:          # a run ends at prev
            runs.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = cur
    return ", ".join(runs)


def _array_map(ops: list[XbarOp], layer_names: list[str], target, n_arrays: int, width: int = 1320) -> dict:
    """Geometry of the array map: squares grouped into PEs and chips, wrapped into rows of chips."""
    chip = target.chip
    records = _array_records(ops, target, n_arrays)
    apc, app = chip.arrays_per_chip, chip.arrays_per_pe
    if n_arrays <= MAX_SQUARES:
        return _exact_map(records, layer_names, apc, app, chip.pes_per_chip, width)
    return _aggregate_map(records, layer_names, target, width)


def _grid(n: int, wide: bool = False) -> tuple[int, int]:
    """Columns and rows for n items: a row when small (or `wide`), else close to square."""
    if n <= 8 or (wide and n <= 16):
        return n, 1
    cols = math.ceil(math.sqrt(n))
    return cols, math.ceil(n / cols)


def _exact_map(records, layer_names, apc, app, pes_per_chip, width) -> dict:
    n = len(records)
    cell = 44 if n <= 32 else 26 if n <= 160 else 14
    gap = max(2, cell // 8)
    pe_cols, pe_rows = _grid(app)
    chip_cols, chip_rows = _grid(pes_per_chip, wide=True)
    pe_pad = 2 if app > 1 else 0
    pe_w = pe_cols * (cell + gap) - gap + 2 * pe_pad
    pe_h = pe_rows * (cell + gap) - gap + 2 * pe_pad
    pe_gap = gap + (3 if app > 1 else 0)
    chip_pad, label_h = 5, 14
    chip_w = chip_cols * (pe_w + pe_gap) - pe_gap + 2 * chip_pad
    chip_h = chip_rows * (pe_h + pe_gap) - pe_gap + 2 * chip_pad + label_h
    chip_gap = 10
    n_chips = math.ceil(n / apc)
    per_row = max(1, min(n_chips, (width + chip_gap) // (chip_w + chip_gap)))
    squares, chips, pes, free = [], [], [], []
    show_free = n_chips * apc - n <= 64         # outline the free slots of the last chip unless there are many
    for c in range(n_chips):
        cx = (c % per_row) * (chip_w + chip_gap)
        cy = (c // per_row) * (chip_h + chip_gap)
        h = chip_h
        if not show_free:               # the last chip is drawn only as far as its PEs are used
            used_rows = math.ceil(min(pes_per_chip, math.ceil((n - c * apc) / app)) / chip_cols)
            h = used_rows * (pe_h + pe_gap) - pe_gap + 2 * chip_pad + label_h
        chips.append({"x": cx, "y": cy, "w": chip_w, "h": h, "label": f"chip {c}",
                      "lx": cx + chip_pad, "ly": cy + label_h - 3})
        for p in range(pes_per_chip):
            pe = c * pes_per_chip + p
            if pe * app >= n and not show_free:
                break
            px = cx + chip_pad + (p % chip_cols) * (pe_w + pe_gap)
            py = cy + label_h + chip_pad + (p // chip_cols) * (pe_h + pe_gap)
            if app > 1:
                pes.append({"x": px, "y": py, "w": pe_w, "h": pe_h, "pe": pe})
            for k in range(app):
                a = pe * app + k
                x = px + pe_pad + (k % pe_cols) * (cell + gap)
                y = py + pe_pad + (k // pe_cols) * (cell + gap)
                if a >= n:                  # an array slot of the last chip that the model leaves free
                    if show_free:
                        free.append({"x": x + 1, "y": y + 1, "size": cell - 1})
                else:
                    squares.append(_square(records[a], layer_names, x, y, cell, a // app, a // apc))
    return {"aggregated": False, "unit": "array", "squares": squares, "chips": chips, "pes": pes, "free": free,
            "shared": any(sq["stripes"] for sq in squares),
            "cell": cell, "show_index": cell >= 26,
            "width": per_row * (chip_w + chip_gap) - chip_gap + 2,
            "height": max((ch["y"] + ch["h"] for ch in chips), default=0) + 2,
            "note": None}


def _tile_text(part, layer_names) -> str:
    # copies count from 0, as `cimc run --copy K` and `cimc tune` count them
    return (f"{layer_names[part['layer']]}, tile {part['tile']} (rows {part['row_start']}+, outputs "
            f"{part['col_start']}+), copy {part['copy']} (copies 0–{part['copies'] - 1})")


def _square(rec, layer_names, x, y, cell, pe, chip) -> dict:
    li = rec["layer"]
    where = f"array {rec['array']} · PE {pe} · chip {chip}"
    use = f"{rec['used'] * 100:.0f}% of cells hold weights"
    shared = len(rec["parts"]) > 1
    if li is None:
        fill, layer, what = "#bbbbbb", None, "unused"
    elif shared:            # drawn as one vertical stripe per tile, in the tiles' own colours (below)
        fill, layer = "#ffffff", ""
        what = f"shared, time-multiplexed, by {'; '.join(_tile_text(t, layer_names) for t in rec['parts'])}"
    else:
        fill, layer, what = layer_colour(li), layer_names[li], _tile_text(rec, layer_names)
    stripes = []
    if shared:
        w = (cell - 1) / len(rec["parts"])
        for k, t in enumerate(rec["parts"]):
            stripes.append({"x": round(x + 1 + k * w, 2), "w": round(w, 2), "fill": layer_colour(t["layer"]),
                            "layer": layer_names[t["layer"]], "copy_index": t["copy"], "tile": t["tile"],
                            "hatched": t["copy"] > 0,
                            "title": f"{where} · {_tile_text(t, layer_names)} · shares the array with "
                                     f"{len(rec['parts']) - 1} other tile(s) · {use}"})
    return {"x": x, "y": y, "size": cell, "fill": fill, "opacity": round(max(rec["used"], 0.0), 3),
            "array": rec["array"], "layer": layer, "copy_index": rec["copy"], "tile": rec["tile"],
            "hatched": rec["copy"] > 0 and not shared, "stripes": stripes,
            "label": str(rec["copy"]) if rec["copies"] > 1 and not shared else "",
            "title": f"{where} · {what} · {use}"}


def _aggregate_map(records, layer_names, target, width) -> dict:
    """One square per PE when that is few enough, else per group of 2^k arrays; coloured by the majority layer."""
    n, app = len(records), target.chip.arrays_per_pe
    group = app if app > 1 and math.ceil(n / app) <= MAX_SQUARES else 16
    while math.ceil(n / group) > MAX_SQUARES:
        group *= 2
    unit = "PE" if group == app else f"{group} arrays"
    cell, gap = 12, 2
    per_row = max(1, (width + gap) // (cell + gap))
    squares = []
    for g in range(math.ceil(n / group)):
        members = records[g * group:(g + 1) * group]
        counts: dict = {}
        for rec in members:
            counts[rec["layer"]] = counts.get(rec["layer"], 0) + 1
        li = max(counts, key=lambda k: (counts[k], -1 if k is None else -k))
        used = sum(r["used"] for r in members) / len(members)
        copies = sum(1 for r in members if r["copy"] > 0)
        names = [("unused" if k is None else layer_names[k]) for k in counts]
        first, last = members[0]["array"], members[-1]["array"]
        x, y = (g % per_row) * (cell + gap), (g // per_row) * (cell + gap)
        squares.append({"x": x, "y": y, "size": cell, "fill": "#bbbbbb" if li is None else layer_colour(li),
                        "opacity": round(used, 3), "array": None, "group": g, "stripes": [], "tile": None,
                        "layer": None if li is None else layer_names[li], "copy_index": 0,
                        "hatched": copies * 2 > len(members),
                        "label": "",
                        "title": f"arrays {first}–{last} · {len(members)} arrays · layers {', '.join(names[:6])}"
                                 f"{' …' if len(names) > 6 else ''} · {copies} copy arrays · "
                                 f"{used * 100:.0f}% of cells hold weights"})
    rows = math.ceil(len(squares) / per_row)
    chips = group / target.chip.arrays_per_chip
    what = (f"one PE ({group} arrays)" if unit == "PE" else
            f"{group} consecutive arrays ({chips:g} chip{'' if chips == 1 else 's'})")
    return {"aggregated": True, "unit": unit, "squares": squares, "chips": [], "pes": [], "free": [], "cell": cell,
            "shared": False,
            "show_index": False, "width": per_row * (cell + gap), "height": rows * (cell + gap),
            "note": f"{n:,} arrays are too many to draw one by one: each square stands for {what}, in array "
                    "order, coloured by the layer that holds most of them, shaded by their mean share of cells in "
                    "use, and hatched where most of them hold extra copies."}


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values from lo to at least hi, whole numbers apart (cycles are integers)."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = max(1.0, min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=10 * mag))
    start = math.ceil(lo / step) * step
    ticks, v = [], start
    while v <= hi + 1e-9 * step:
        ticks.append(v)
        v += step
    return ticks


def _cycles_chart(layers: list[dict], before: list[int], period: int | None = None) -> dict:
    """Grouped bars per layer: cycles with one copy of each layer, and with the compiled copies. The dashed line
    is the pipeline period: the slowest layer, or with packed arrays the busiest array's summed load."""
    after = [layer["cycles"] for layer in layers]
    n = len(layers)
    values = [v for v in before + after + [period or 0] if v > 0] or [1]
    vmin, vmax = min(values), max(values)
    log = vmax / vmin > 30
    slot = max(16, min(64, 1100 // max(n, 1)))
    rotate = -55 if slot < 60 else -30
    texts = [_short(layer["name"]) for layer in layers]
    longest = max((len(t) for t in texts), default=4)
    left, top, right = 78, 44, 16
    bottom = int(48 + longest * 6.2 * math.sin(math.radians(-rotate)))
    plot_w, plot_h = max(slot * n, 600), 300
    slot = plot_w / max(n, 1)
    width, height = left + plot_w + right, top + plot_h + bottom
    if log:
        lo, hi = 10 ** math.floor(math.log10(vmin)), 10 ** math.ceil(math.log10(vmax))
        if lo == hi:
            hi *= 10
        ticks = [10 ** e for e in range(int(round(math.log10(lo))), int(round(math.log10(hi))) + 1)]
        minor = [m * t for t in ticks[:-1] for m in range(2, 10)]

        def scale(v):
            return plot_h * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
    else:
        lo = 0.0
        ticks = _nice_ticks(0.0, vmax * 1.05)
        if ticks[-1] < vmax * 1.05:
            ticks.append(ticks[-1] + (ticks[1] - ticks[0] if len(ticks) > 1 else 1))
        hi = ticks[-1]
        minor = []

        def scale(v):
            return plot_h * v / hi
    base = top + plot_h
    bar_w = min(max(3.0, (slot - 4) / 2), 30.0)
    bars, labels = [], []
    for i, layer in enumerate(layers):
        x0 = left + i * slot + (slot - 2 * bar_w) / 2
        for kind, value, x, copies in (("before", before[i], x0, 1),
                                       ("after", after[i], x0 + bar_w, layer["copies"])):
            h = max(scale(value), 1.0)
            bars.append({"kind": kind, "layer": layer["name"], "x": round(x, 2), "y": round(base - h, 2),
                         "w": round(bar_w, 2), "h": round(h, 2), "value": value,
                         "fill": "#b8bec6" if kind == "before" else layer_colour(i),
                         "title": f"{layer['name']}: {value:,} cycles with {copies} "
                                  f"cop{'y' if copies == 1 else 'ies'}"})
        cx = left + i * slot + slot / 2
        labels.append({"x": round(cx, 2), "y": base + 10, "text": texts[i], "replicated": layer["copies"] > 1})
    tick_marks = [{"y": round(base - scale(t), 2), "text": f"{t:,.0f}" if t < 1e8 else f"{t:.0e}"} for t in ticks]
    minor_marks = [round(base - scale(m), 2) for m in minor if lo < m < hi]
    bottleneck = period or (max(after) if after else 0)
    legend_before = f"1 copy of every layer (max {max(before, default=0):,})"
    legend_after = f"compiled copies (colour = layer; max {max(after, default=0):,})"
    return {"legend_before": legend_before, "legend_after": legend_after,
            "legend_after_x": left + 18 + round(len(legend_before) * 6.8) + 28,
            "swatch": [layer_colour(i) for i in range(min(n, 3))] or ["#4a6fa5"],
            "replicated": any(layer["copies"] > 1 for layer in layers),
            "width": width, "height": height, "left": left, "top": top, "plot_w": plot_w, "plot_h": plot_h,
            "base": base, "log": log, "bars": bars, "labels": labels, "ticks": tick_marks, "minor": minor_marks,
            "bottleneck_y": round(base - scale(bottleneck), 2) if bottleneck else None,
            "bottleneck": bottleneck, "before_max": max(before) if before else 0,
            "y_label": "cycles per inference (input slots)" + (", log scale" if log else ""),
            "x_label": "crossbar layer, in execution order", "label_rotate": rotate}


def _short(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


# -- the context -------------------------------------------------------------------------------------------------
def report_context(manifest, target=None, results=()) -> dict:
    """Everything the template shows, as plain dicts, lists, strings and numbers. `target`: the manifest's target
    with `--set` overrides applied (default: the manifest's own); `results`: cimc.results_view.load_results(...)."""
    from cimc.passes.estimate import bits_per_vector, estimate_graph, stall_factor, slot_ns
    target, graph = target or manifest.target, manifest.graph
    ops = graph.xbar_ops()
    est = estimate_graph(graph, target)
    totals, missing = est["totals"], est["missing"]
    n_arrays = manifest.total_arrays
    chip = target.chip
    prov = manifest.provenance or {}
    src = prov.get("source_model") or {}
    calib = prov.get("calibration") or {}
    sha = src.get("sha256")
    b, s = bits_per_vector(target), stall_factor(target)
    before = [int(op.positions) * b * s for op in ops]          # every layer with one copy: ceil(P / 1) x b x s
    bottleneck = totals["bottleneck_cycles"] or 0
    names = [op.name for op in ops]

    layers = []
    for i, (op, e) in enumerate(zip(ops, est["layers"])):
        ids = [p.array for t in op.tiles for p in t.placements]
        energy = e["energy_pj"]["total"]
        share = e["cycles"] / bottleneck if bottleneck else 0.0
        layers.append({
            "index": i, "name": op.name, "op_type": op.op_type, "rows": op.rows, "cols": op.cols,
            "tiles": e["tiles"], "copies": e["copies"], "arrays": e["arrays"], "positions": e["positions"],
            "array_ids": id_ranges(ids),
            "cycles": e["cycles"], "cycles_before": before[i],
            "energy": _energy_text(energy) if energy is not None else "unknown",
            "energy_known": energy is not None,
            "energy_parts": "; ".join(f"{c} {'unknown' if v is None else _energy_text(v)}"
                                      for c, v in e["energy_pj"].items() if c != "total"),
            "utilisation": f"{e['utilisation'] * 100:.0f}%",
            "share": share, "share_text": f"{share * 100:.1f}%", "share_pct": round(min(share, 1.0) * 100, 1),
            "bottleneck": e["cycles"] == bottleneck and bottleneck > 0, "colour": layer_colour(i),
        })

    estimate_rows = [
        {"label": "latency (one input, layers in turn)", "known": True,
         "text": f"{_time_text(totals['latency_ns'])} ({totals['latency_cycles']:,} cycles)"},
        {"label": "pipelined throughput", "known": totals["throughput_per_s"] is not None,
         "text": (f"{_num(totals['throughput_per_s'])} inferences/s (bottleneck {totals['bottleneck_layer']}, "
                  f"{bottleneck:,} cycles)") if totals["throughput_per_s"] is not None else "unknown"},
        _metric("energy per inference", totals["energy_pj"]["total"], _energy_text, missing, _ENERGY_FIELDS),
        _metric("GOPS/W", totals["gops_per_w"], lambda v: f"{_num(v)} GOPS/W", missing, _ENERGY_FIELDS),
        _metric("GOPS/mm²", totals["gops_per_mm2"], lambda v: f"{_num(v)} GOPS/mm²", missing, _AREA_FIELDS),
        {"label": "ops per inference", "known": True,
         "text": f"{_num(totals['ops'] / 1e6)} M (2 per multiply-accumulate)"},
        {"label": "cell utilisation", "known": True,
         "text": f"{totals['utilisation'] * 100:.1f}% of the cells of the arrays used"},
    ]
    energy_components = [{"name": c, "text": _energy_text(v) if v is not None else "unknown"}
                         for c, v in totals["energy_pj"].items() if c != "total"]

    replication = []
    if isinstance(manifest.replication, dict):
        # per-array placements and nested plans are drawn in the array map / kept in replication.json, not dumped
        replication = [{"key": str(k).replace("_", " "), "value": _plain(v)} for k, v in manifest.replication.items()
                       if not _nested(v)]

    summary = [
        ("model", src.get("path") or "(in memory)"),
        ("model sha256", sha[:12] if sha else "unknown"),
        ("opset", str(src.get("opset", "?"))),
        ("total arrays", f"{n_arrays:,}"),
        ("PEs used", f"{math.ceil(n_arrays / chip.arrays_per_pe):,}"),
        ("chips used", f"{math.ceil(n_arrays / chip.arrays_per_chip):,}"
                       + (f" of {chip.chips}" if chip.chips else "")),
        ("crossbar layers", f"{len(ops)} (+ {len(graph.ops) - len(ops)} digital ops)"),
        ("calibration samples", str(calib.get("samples", "unknown"))),
        ("calibration file", calib.get("path") or "(array passed in memory)"),
        ("cimc version", _cimc_version(manifest)),
        ("created (UTC)", str(prov.get("created_utc", "unknown"))),
    ]
    placed = prov.get("defect_placement")
    if placed:          # compile --defect-map
        summary.append(("defect-aware placement", f"defect error {placed['error_before']:,.1f} -> "
                        f"{placed['error_after']:,.1f} conductance steps (map {placed['defect_map']})"))
    averaged = {n: a for n, a in ((manifest.replication or {}).get("average") or {}).items() if a > 1}
    if averaged:        # compile --copies-for accuracy|mix
        summary.append(("copies averaged", ", ".join(f"{n} {a}x" for n, a in averaged.items())))

    model_name = (Path(src["path"]).name if src.get("path") else
                  f"{Path(manifest.path).name} (model compiled from memory)" if manifest.path else "model")
    return {
        "title": f"cimc report: {model_name} on {target.name}",
        "summary": [{"label": k, "value": v} for k, v in summary],
        "target": _target_info(target),
        "estimate": estimate_rows, "energy_components": energy_components,
        "missing": missing, "slot_ns": slot_ns(target), "input_slots": b, "stall": s,
        "conventions": est["conventions"],
        "layers": layers, "bottleneck_cycles": bottleneck, "bottleneck_layer": totals["bottleneck_layer"],
        "total_arrays": n_arrays,
        "legend": [{"name": op.name, "colour": layer_colour(i), "arrays": len(op.tiles) * op.replicas}
                   for i, op in enumerate(ops)],
        "map": _array_map(ops, names, target, n_arrays),
        "chart": _cycles_chart(est["layers"], before, totals["bottleneck_cycles"]),
        "replication": replication,
        "tuning": tuning_history(prov),
        "results": list(results),
        "cimc_version": __version__,
    }


def render_report(manifest, target=None, results=()) -> str:
    return _env.get_template(TEMPLATE).render(**report_context(manifest, target, results))


def _is_report(path: Path) -> bool:
    """`path` holds a page this module wrote (its generator tag near the top), so replacing it loses nothing."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'<meta name="generator" content="cimc ' in head


def write_report(manifest, path, target=None, results=()) -> Path:
    """Render and write atomically: a temporary file next to `path`, then os.replace. An existing `path` is
    replaced only if it is a report cimc wrote."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ReportError(f"{path}: the folder {parent} does not exist (create it first)")
    if path.is_dir():
        raise ReportError(f"{path}: is a directory; give a file name such as report.html")
    if path.exists() and not _is_report(path):
        raise ReportError(f"{path}: exists and is not a report cimc wrote; give another file name (or remove it "
                          "first): cimc replaces only its own reports")
    html = render_report(manifest, target, results)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise ReportError(f"{path}: cannot write there ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)               # mkstemp makes it 0600; give it an ordinary file's mode
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise ReportError(f"{path}: cannot write it ({exc.strerror or exc})") from None
        raise
    return path


__all__ = ["report_context", "render_report", "write_report", "layer_colour", "id_ranges", "ReportError"]
