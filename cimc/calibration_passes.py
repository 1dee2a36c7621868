"""The two calibration passes of the pipeline (cimc.pipeline): activation ranges from the calibration data (before
quantising), and each crossbar op's ADC full scale from the ideal chip's line currents (after placing)."""
from __future__ import annotations

import sys
from pathlib import Path

from cimc import calibrate
from cimc.backends.crossbar import calibrate_adc_full_scales
from cimc.data import as_float32_input, load_npz
from cimc.errors import DataError
from cimc.graph_run import check_feeds
from cimc.ir import Graph
from cimc.layout import program_arrays

MIN_CALIBRATION_SAMPLES = 32   # fewer: warn (README, Data files); the activation ranges then rest on a few inputs
ADC_CALIBRATION_SAMPLES = 16   # every bit-plane read of 16 images: >100k reads per layer; ~60 ms per ResNet-56 image


class CalibrateActivations:
    """Read and check the calibration data (ctx.calibration: npz path, array or dict of arrays), then the input
    range of every crossbar op -> ctx.activation_stats, ctx.calibration_feeds and ctx.calibration_summary."""
    NAME = "calibrate"
    NEEDS_CALIBRATION = True

    def run(self, graph: Graph, target, ctx) -> Graph:
        summary, data = _calibration_data(ctx.calibration, graph)
        percentile = target.quant.percentile if target.quant.calibration == "percentile" else None
        stats = calibrate.activation_stats(graph, data, percentile, model=ctx.model)
        calibrate.check_finite_ranges(stats, summary["path"] or "the calibration data")
        summary["ranges"] = {name: {"min": s["min"], "absmax": s["absmax"]} for name, s in stats.items()}
        summary["rule"] = target.quant.calibration
        summary["outliers"] = calibrate.input_outliers(graph, data, target.quant.calibration)
        for row in summary["outliers"]:
            _warn(calibrate.outlier_message(row, target.quant.calibration))
        ctx.activation_stats, ctx.calibration_feeds, ctx.calibration_summary = stats, data, summary
        return graph


class CalibrateAdc:
    """Each crossbar op's ADC full scale: the largest ideal line current over the reads of the first
    ADC_CALIBRATION_SAMPLES calibration samples (the rule of cimc.backends.crossbar.calibrate_adc_full_scales),
    stored on the op (op.adc_full_scale_ua, saved in the manifest) and in ctx.adc_full_scale; for bit-sliced weights
    also each slice's (op.adc_slice_full_scale_ua, for adc.full_scale_per_slice)."""
    NAME = "adc_calibrate"
    NEEDS_CALIBRATION = True

    def run(self, graph: Graph, target, ctx) -> Graph:
        data = ctx.calibration_feeds
        ctx.arrays = program_arrays(graph, target)      # the manifest's too: placements change no more
        scales, slices = calibrate_adc_full_scales(graph, target, data, max_samples=ADC_CALIBRATION_SAMPLES,
                                                   arrays=ctx.arrays)
        for op in graph.xbar_ops():
            op.adc_full_scale_ua = scales.get(op.name)
            op.adc_slice_full_scale_ua = slices.get(op.name)      # bit-sliced weights: each slice's own
        ctx.adc_full_scale = scales
        ctx.calibration_summary["adc_samples"] = min(ADC_CALIBRATION_SAMPLES, len(next(iter(data.values()))))
        return graph


def _warn(message: str) -> None:
    print(f"cimc: warning: {message}", file=sys.stderr)


def _calibration_data(calibration, graph):
    """(summary, {input: float32 array}): finite real inputs with at least one sample, from a file or arrays."""
    names = [t.name for t in graph.inputs]
    if isinstance(calibration, (str, Path)):
        ds = load_npz(calibration, names, what="calibration file")
        summary = {"path": str(Path(calibration).resolve()), "sha256": ds.sha256, "samples": len(ds)}
        data, where = ds.inputs, str(calibration)
    else:
        raw = calibration if isinstance(calibration, dict) else {names[0]: calibration}
        if not raw:
            raise DataError("calibration: no arrays given; pass an array or a dict of arrays by input name")
        data = {k: as_float32_input(v, f"calibration input {k!r}") for k, v in raw.items()}
        sizes = {k: len(v) for k, v in data.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(f"calibration: the input arrays hold different numbers of samples {sizes}")
        if next(iter(sizes.values())) == 0:
            raise DataError("calibration: the calibration inputs hold 0 samples; pass a few hundred")
        summary = {"path": None, "sha256": None, "samples": int(next(iter(sizes.values())))}
        where = "calibration data"
    data = check_feeds(graph, data, where)     # names and shapes against the model, naming the file
    if summary["samples"] < MIN_CALIBRATION_SAMPLES:
        _warn(f"{where}: only {summary['samples']} calibration sample(s); the activation ranges rest on them. "
              f"Use at least {MIN_CALIBRATION_SAMPLES} (a few hundred representative inputs are best)")
    return summary, data
