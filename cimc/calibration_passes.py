"""The calibration passes of the pipeline (cimc.pipeline): activation ranges from the calibration data (before
quantising), and each crossbar op's ADC full scale from the ideal chip's line currents.

The ADC full scale does not depend on the copies or on where they sit: the ideal chip's copies hold the same levels
and carry the same currents, and a line's current sums over its own tile's rows only. So it is read on a layout of
its own, one copy of every tile on an array of its own (`single_copy_layout`), from the moment the tiles are cut
(StartAdcCalibration), on a thread beside the passes that choose and place the copies: CP-SAT's solve releases the
GIL, and onnxruntime's reads of the calibration release it too. CalibrateAdc, after placing, takes the result."""
from __future__ import annotations

import dataclasses
import sys
import threading
from pathlib import Path

from cimc import calibrate
from cimc.backends.crossbar import calibrate_adc_full_scales
from cimc.data import as_float32_input, load_npz
from cimc.errors import DataError
from cimc.graph_run import check_feeds
from cimc.ir import Graph, Placement, SessionCache, XbarOp
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


class StartAdcCalibration:
    """Start the ADC full-scale calibration (`adc_full_scales`) on a thread of its own, on a single-copy layout of
    the tiles as they are now (quantised, tiled): ctx.adc_job, whose result CalibrateAdc takes."""
    NAME = "adc_calibrate_start"
    NEEDS_CALIBRATION = True

    def run(self, graph: Graph, target, ctx) -> Graph:
        layout = single_copy_layout(graph)          # its own ops, tiles and placements: the passes go on with theirs
        ctx.adc_job = BackgroundJob(lambda stop: adc_full_scales(layout, target, ctx.calibration_feeds, stop))
        return graph


class CalibrateAdc:
    """Each crossbar op's ADC full scale: the largest ideal line current over the reads of the first
    ADC_CALIBRATION_SAMPLES calibration samples (the rule of cimc.backends.crossbar.calibrate_adc_full_scales, on a
    single-copy layout: the module doc), stored on the op (op.adc_full_scale_ua, saved in the manifest) and in
    ctx.adc_full_scale; for bit-sliced weights also each slice's (op.adc_slice_full_scale_ua, for
    adc.full_scale_per_slice). The result of StartAdcCalibration's thread where it ran, else read here."""
    NAME = "adc_calibrate"
    NEEDS_CALIBRATION = True

    def run(self, graph: Graph, target, ctx) -> Graph:
        data = ctx.calibration_feeds
        ctx.arrays = program_arrays(graph, target)      # the manifest's: placements change no more
        if ctx.adc_job is not None:
            scales, slices = ctx.adc_job.result()
        else:
            scales, slices = adc_full_scales(single_copy_layout(graph), target, data)
        for op in graph.xbar_ops():
            op.adc_full_scale_ua = scales.get(op.name)
            op.adc_slice_full_scale_ua = slices.get(op.name)      # bit-sliced weights: each slice's own
        ctx.adc_full_scale = scales
        ctx.calibration_summary["adc_samples"] = min(ADC_CALIBRATION_SAMPLES, len(next(iter(data.values()))))
        return graph


def single_copy_layout(graph: Graph) -> Graph:
    """The graph with one copy of every tile, each on an array of its own in execution order (allocate's layout for
    one copy), in new op, tile and placement objects (the weights, levels and digital ops are shared, read only),
    and sessions of its own."""
    ops, next_array = [], 0
    for op in graph.ops:
        if isinstance(op, XbarOp):
            tiles = []
            for tile in op.tiles:           # a shared-weight reader has none: it reads its owner's (share_weights)
                tiles.append(dataclasses.replace(tile, placements=[Placement(next_array)]))
                next_array += 1
            op = dataclasses.replace(op, tiles=tiles, replicas=1, average=1)
        ops.append(op)
    layout = dataclasses.replace(graph, ops=ops, sessions=SessionCache())
    layout.share_weights()
    return layout


def adc_full_scales(layout: Graph, target, data, stop: threading.Event | None = None) -> tuple[dict, dict]:
    """({op: uA}, {op: [uA per slice]}) on `layout`'s ideal chip, over the first ADC_CALIBRATION_SAMPLES samples of
    `data` (calibrate_adc_full_scales)."""
    return calibrate_adc_full_scales(layout, target, data, max_samples=ADC_CALIBRATION_SAMPLES, stop=stop)


class BackgroundJob:
    """fn(stop) on a daemon thread. `result()` waits for it and returns its value or raises its exception;
    `cancel()` sets `stop` (fn ends at its next check) and waits: run_passes cancels it when a pass fails, so no
    job outlives its compile."""

    def __init__(self, fn):
        self.stop = threading.Event()
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="cimc-adc-calibration", daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._value = fn(self.stop)
        except BaseException as exc:  # noqa: BLE001 - raised again in the compiling thread by result()
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def cancel(self) -> None:
        self.stop.set()
        self._thread.join()


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
