"""The crossbar backend's per-layer diagnostics (diagnostics=True): the accumulators' error against the exact
integer product, the ADC's clipping, and the circuit model's fast path against its exact solver (ir_check.py)."""
from __future__ import annotations

import numpy as np

from cimc.backends.read_plan import ReadPlan
from cimc.ir import block_matmul


def new_stats(plans: dict, wires: bool) -> dict:
    """Empty statistics per layer (`wires`: line/access resistance, whose fast path ir_check samples)."""
    stats = {name: {"sq_err": 0.0, "sq_ref": 0.0, "clipped": 0, "conversions": 0, "max_abs_err": 0.0}
             for name in plans}
    if wires:
        for st in stats.values():
            st.update(ir_sq_err=0.0, ir_sq_ref=0.0, ir_vectors=0)
    return stats


def observe(stats: dict, plan: ReadPlan, x: np.ndarray, out: np.ndarray) -> None:
    """Diagnostics: the accumulators `out` of codes x against the exact integer product of the levels."""
    ref = block_matmul(x.astype(np.float64), plan.exact_levels)
    err = out.astype(np.float64) - ref
    st = stats[plan.name]
    st["sq_err"] += float(np.square(err).sum())
    st["sq_ref"] += float(np.square(ref).sum())
    if err.size:
        st["max_abs_err"] = max(st["max_abs_err"], float(np.abs(err).max()))


def combine_layer_stats(backends: list) -> list[dict]:
    """Layer statistics summed over several runs (e.g. trials) of bound crossbar backends with diagnostics on:
    rel_error = sqrt(sum (acc - exact)^2 / sum exact^2) over all accumulators of the layer, snr_db = -20 log10 of
    it, adc_clip_rate = clipped conversions / conversions (0 for a lossless ADC)."""
    first = backends[0]
    rows = []
    for name, plan in first.plans.items():
        sums = {k: sum(b.stats[name][k] for b in backends) for k in ("sq_err", "sq_ref", "clipped", "conversions")}
        rel = float(np.sqrt(sums["sq_err"] / sums["sq_ref"])) if sums["sq_ref"] > 0 else None
        snr = None if rel is None else (None if rel == 0 else float(-20 * np.log10(rel)))
        rows.append({"name": name, "rel_error": rel, "snr_db": snr,
                     "max_abs_error": max(b.stats[name]["max_abs_err"] for b in backends),
                     "adc_clip_rate": sums["clipped"] / sums["conversions"] if sums["conversions"] else 0.0,
                     "adc_conversions": int(sums["conversions"]),
                     "adc_full_scale_ua": None if plan.full_scale is None else plan.full_scale * plan.unit_ua,
                     "adc_full_scale_source": plan.full_scale_source})
        if "ir_vectors" in first.stats[name]:     # wire/access resistance: the fast path against the exact circuit
            err, ref = (sum(b.stats[name][k] for b in backends) for k in ("ir_sq_err", "ir_sq_ref"))
            rows[-1]["ir_approx_error"] = float(np.sqrt(err / ref)) if ref > 0 else None
    return rows
