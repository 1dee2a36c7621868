"""The sweep's `index.html`: accuracy against each grid axis (one line per combination of the other axes' values,
error bars = the 95% interval over seeds), and the summary table. Rendered from the jinja2 template
`targets/templates/sweep.html.j2` (autoescaped), inline CSS and SVG only, so it opens offline like `cimc report`.
All plot geometry is computed here; the template only loops.

`axes`: [{"name", "label", "values": [value text, ...], "numbers": [float or None, ...]}] in grid order.
"""
from __future__ import annotations

import itertools
import math
from importlib import resources

import jinja2

from cimc.html_report import layer_colour
from cimc.version import __version__

TEMPLATE = "sweep.html.j2"
_W, _H = 620, 340                          # plot area
_LEFT, _TOP, _RIGHT, _BOTTOM = 64, 20, 20, 52
_TUNED_SHIFT = 6                           # px: a tuned mark sits beside the untuned one

_env = jinja2.Environment(
    loader=jinja2.FunctionLoader(lambda name: (resources.files("cimc.targets") / "templates" / name).read_text()),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=10 * mag)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _x_scale(axis: dict):
    """x position of each value index, the tick marks, and whether the axis is logarithmic."""
    numbers = axis["numbers"]
    k = len(numbers)
    if any(v is None for v in numbers):                 # categorical: evenly spaced in grid order
        pos = [_W * (i + 0.5) / k for i in range(k)]
        return pos, [{"x": round(x, 2), "text": t} for x, t in zip(pos, axis["values"])], False
    lo, hi = min(numbers), max(numbers)
    log = lo > 0 and hi / lo >= 50
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    a, b = f(lo), f(hi)
    pad = (b - a) * 0.05 or 1.0
    a, b = a - pad, b + pad
    pos = [_W * (f(v) - a) / (b - a) for v in numbers]
    return pos, [{"x": round(x, 2), "text": t} for x, t in zip(pos, axis["values"])], log


def _y_range(summary: list[dict], tuned: bool) -> tuple[float, float]:
    keys = ["accuracy"] + (["tuned_accuracy"] if tuned else [])
    values = []
    for entry in summary:
        for key in keys:
            if entry.get(f"{key}_ci95"):
                values += entry[f"{key}_ci95"]
    if not values:
        return 0.0, 1.0
    lo, hi = max(0.0, min(values)), min(1.0, max(values))
    pad = max((hi - lo) * 0.08, 0.005)
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    return (lo, hi) if hi > lo else (lo, lo + 0.01)


def _plot(axis_index: int, axes: list[dict], points: list[dict], summary: list[dict], tuned: bool,
          tuned_kind: str = "hybrid training") -> dict:
    axis = axes[axis_index]
    name = axis["name"]
    others = [a for i, a in enumerate(axes) if i != axis_index and len(a["values"]) > 1]
    xs, x_ticks, log = _x_scale(axis)
    y_lo, y_hi = _y_range(summary, tuned)

    def y(v: float) -> float:
        v = min(max(v, y_lo), y_hi)          # a t interval may reach past 0 or 1: the bar stops at the frame
        return round(_TOP + _H * (1 - (v - y_lo) / (y_hi - y_lo)), 2)

    kind = {False: "as programmed" if tuned else "", True: f"after {tuned_kind}"}
    lines = []
    for g, combo in enumerate(itertools.product(*(a["values"] for a in others))):
        fixed = {a["name"]: v for a, v in zip(others, combo)}
        colour = layer_colour(g)
        label = ", ".join(f"{k}={v}" for k, v in fixed.items())
        for key, dashed in (("accuracy", False), ("tuned_accuracy", True)):
            if key == "tuned_accuracy" and not tuned:
                continue
            marks = []
            for vi, value in enumerate(axis["values"]):
                entry = next((e for e, p in zip(summary, points)
                              if p["params"][name] == value and all(p["params"][k] == v for k, v in fixed.items())),
                             None)
                if entry is None or entry.get(f"{key}_mean") is None:
                    continue
                lo, hi = entry[f"{key}_ci95"]
                x = round(_LEFT + xs[vi] + (_TUNED_SHIFT if dashed else 0), 2)   # bars side by side, not on top
                marks.append({"x": x, "y": y(entry[f"{key}_mean"]), "lo": y(lo), "hi": y(hi),
                              "title": f"{name}={value}{', ' + label if label else ''}: {key.replace('_', ' ')} "
                                       f"{entry[f'{key}_mean']:.4f} (95% interval {lo:.4f}..{hi:.4f}, "
                                       f"{entry['n']} seeds)"})
            if marks:
                lines.append({"colour": colour, "dashed": dashed, "marks": marks,
                              "path": " ".join(f"{m['x']},{m['y']}" for m in marks),
                              "label": ", ".join(part for part in (label, kind[dashed]) if part) or "mean"})
    # the key, inside the frame at its lower left (accuracy falls to the right, so that corner is mostly free)
    legend = [{"x": _LEFT + 10, "y": round(_TOP + _H - 12 - 16 * (len(lines) - 1 - i), 2), "colour": line["colour"],
               "dashed": line["dashed"], "label": line["label"]} for i, line in enumerate(lines)]
    return {"axis": name, "label": axis["label"] + (", log scale" if log else ""), "legend": legend,
            "width": _LEFT + _W + _RIGHT, "height": _TOP + _H + _BOTTOM, "left": _LEFT, "top": _TOP,
            "plot_w": _W, "plot_h": _H, "base": _TOP + _H,
            "x_ticks": [{"x": round(_LEFT + t["x"], 2), "text": t["text"]} for t in x_ticks],
            "y_ticks": [{"y": y(t), "text": f"{t:.3g}"} for t in _ticks(y_lo, y_hi) if y_lo <= t <= y_hi],
            "lines": lines}


def sweep_context(axes: list[dict], points: list[dict], summary: list[dict], seeds: int, samples: int,
                  tuned: bool, title: str = "cimc sweep", tuned_kind: str = "hybrid training") -> dict:
    """`tuned_kind`: what the tuned accuracy is after (the sweep's --tune-method in words)."""
    varied = [i for i, a in enumerate(axes) if len(a["values"]) > 1]
    plots = [_plot(i, axes, points, summary, tuned, tuned_kind) for i in (varied or range(len(axes))[:1])]
    table = []
    for entry in summary:
        row = {"params": entry["params"], "n": entry["n"], "run_flags": " ".join(entry["run_flags"])}
        for key in ("accuracy", "tuned_accuracy"):
            mean = entry.get(f"{key}_mean")
            row[key] = None if mean is None else {
                "mean": f"{mean:.4f}", "std": f"{entry[f'{key}_std']:.4f}",
                "ci": f"{entry[f'{key}_ci95'][0]:.4f} .. {entry[f'{key}_ci95'][1]:.4f}"}
        table.append(row)
    return {"title": title, "axes": axes, "plots": plots, "table": table, "seeds": seeds, "samples": samples,
            "tuned": tuned, "tuned_kind": tuned_kind, "points": len(points), "cimc_version": __version__}


def render_sweep(axes: list[dict], points: list[dict], summary: list[dict], seeds: int, samples: int,
                 tuned: bool, tuned_kind: str = "hybrid training") -> str:
    return _env.get_template(TEMPLATE).render(**sweep_context(axes, points, summary, seeds, samples, tuned,
                                                              tuned_kind=tuned_kind))
