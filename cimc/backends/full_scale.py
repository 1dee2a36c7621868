"""The ADC full scale of each layer's read plan, resolved once at bind (the rule: docs/arithmetic.md)."""
from __future__ import annotations

import warnings

import numpy as np

from cimc.backends.read_plan import ReadPlan


def max_full_scale(plan: ReadPlan, target, offset: float) -> float:
    """adc.full_scale = "max": the largest current a line can carry (all array rows driven, every device at g_max;
    for "rows": half the rows at g_max - g_min), in current units."""
    spec, dev = target.array, target.device
    amp = max(abs(plan.qmin), plan.qmax) if plan.analog else 1
    if spec.differential == "rows" and target.weights.encoding != "offset":
        return float(spec.rows // 2 * dev.max_level * amp)
    return float(spec.rows * (offset + dev.max_level) * amp)


def resolve_full_scales(plans: dict, graph, target, offset: float, given: dict, calibrate=None) -> None:
    """Each plan's ADC full scale (`full_scale`, `full_scale_source`, `slice_full_scale`): for adc.full_scale =
    "calibrated", the option `given` {op: uA}, else the manifest's, else calibrate() -> ({op: uA}, {op: [uA per
    slice]}) (cimc.backends.crossbar.calibrate_adc_full_scales on the run's calibration data, called once); else
    (or where none is known, with a warning) the "max" full scale. Nothing for a lossless ADC."""
    if target.adc.lossless:
        return
    computed = None
    per_slice = target.adc.full_scale_per_slice and target.adc.full_scale == "calibrated"
    unsliced = []                 # full_scale_per_slice asked, but no per-slice full scales known for these
    for op in graph.xbar_ops():
        plan = plans[op.name]
        ua, source, slices = None, None, None
        if target.adc.full_scale == "calibrated":
            if op.name in given:
                ua, source = given[op.name], "option"
            elif getattr(op, "adc_full_scale_ua", None):
                ua, source, slices = op.adc_full_scale_ua, "manifest", op.adc_slice_full_scale_ua
            elif calibrate is not None:
                if computed is None:
                    computed = calibrate()
                ua, source = computed[0].get(op.name), "calibration data"
                slices = computed[1].get(op.name)
        if ua is not None and ua > 0:
            plan.full_scale, plan.full_scale_source = float(ua) / plan.unit_ua, f"calibrated ({source})"
            if per_slice and slices is not None:     # a slice that never carries current keeps the layer's
                plan.slice_full_scale = np.array([plan.full_scale if v is None or v <= 0 else
                                                  float(v) / plan.unit_ua for v in slices])
                plan.full_scale_source += ", per slice"
            elif per_slice:
                unsliced.append(op.name)
        else:
            plan.full_scale = max_full_scale(plan, target, offset)
            plan.full_scale_source = "max"
            if target.adc.full_scale == "calibrated":
                plan.full_scale_source = "max (no calibrated full scale available)"
    if target.adc.full_scale == "calibrated" and any(p.full_scale_source.startswith("max") for p in
                                                    plans.values()):
        missing = [p.name for p in plans.values() if p.full_scale_source.startswith("max")]
        warnings.warn(f"crossbar backend: adc.full_scale = 'calibrated' but no calibrated full scale is known for "
                      f"{len(missing)} layer(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                      "using the 'max' full scale there. Recompile, or pass calibration data (--calibration).",
                      stacklevel=2)
    if unsliced:
        warnings.warn(f"crossbar backend: adc.full_scale_per_slice is set but no per-slice full scales are known "
                      f"for {len(unsliced)} layer(s) ({', '.join(unsliced[:3])}"
                      f"{', ...' if len(unsliced) > 3 else ''}: a manifest compiled before they were recorded, "
                      "or a full scale given per layer); every slice there uses the layer's one full scale. "
                      "Recompile, or pass calibration data (--calibration).", stacklevel=2)
