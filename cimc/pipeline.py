"""The compile pipeline: ONE ordered list of passes (PIPELINE), run by `run_passes` with instruments around them.

A pass is a small object (or a module of cimc.passes) with a NAME and `run(graph, target, ctx) -> graph`. It reads
the user's options from `ctx.options` (cimc.compile_options.CompileConfig, read-only) and returns what it finds in
the typed context `CompileContext` (activation stats, replication report, estimates, ADC full scales, ...).
`applies(ctx)` (optional) says whether the pass runs for this request (pack, or replicate then allocate);
NEEDS_CALIBRATION marks the passes that need calibration data: `count` runs the prefix up to the placed graph
(COUNT_PASSES) without them, so it refuses exactly what compile's placing passes refuse.

Instruments run around every pass, once, here: the time of each pass (always, into ctx.timings), and whatever
`ctx.instruments` holds (objects with `after_pass(name, graph, ctx)`): DumpGraph writes the graph after each pass,
CheckAgainstOnnx runs it against onnxruntime, any callable check may raise to stop the compile.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import onnxruntime as ort

from cimc import resources
from cimc.backends.reference import FloatBackend
from cimc.calibration_passes import CalibrateActivations, CalibrateAdc, StartAdcCalibration
from cimc.compile_options import CompileConfig
from cimc.errors import ModelError
from cimc.graph_run import check_feeds, run_graph
from cimc.ir import Graph, XbarOp
from cimc.sensitivity import MeasureSensitivity
from cimc.passes import allocate, canonicalize, estimate, pack, place_defects, quantize, replicate, tile


@dataclass
class CompileContext:
    """Everything a compile knows beyond the graph: the request, and what each pass found."""
    options: CompileConfig                          # the user's request (read-only to the passes)
    model: Any = None                               # the imported onnx.ModelProto (calibration runs it in onnxruntime)
    calibration: Any = None                         # the calibration data as given: npz path, array or dict
    calibration_feeds: dict[str, np.ndarray] | None = None    # ... read and checked (CalibrateActivations)
    calibration_summary: dict | None = None         # path, sha256, samples, ranges, rule, outliers, adc_samples
    activation_stats: dict[str, dict] | None = None  # per crossbar op: min, absmax, percentile (calibrate)
    replication_report: dict | None = None          # replicate / pack
    estimates: dict | None = None                   # estimate
    adc_full_scale: dict[str, float] | None = None  # uA per crossbar op (adc_calibrate)
    adc_job: Any = None                             # adc_calibrate_start's thread (calibration_passes.BackgroundJob)
    arrays: np.ndarray | None = None                # the programmed levels adc_calibrate read (the last pass)
    defect_placement: dict | None = None            # place_defects: the map and the defect error before/after
    sensitivity: dict | None = None                 # sensitivity (--copies-for accuracy|mix): per-layer output error
    timings: dict[str, float] = field(default_factory=dict)   # seconds per pass, in order
    instruments: list = field(default_factory=list)           # after_pass(name, graph, ctx) hooks


class CheckRequest:
    """Refuse a request whose arrays (tiles x fixed copies) would not fit the compile memory limit, from shapes,
    before calibrating or allocating (cimc.resources)."""
    NAME = "check_request"

    def run(self, graph: Graph, target, ctx) -> Graph:
        resources.check_request(graph, target, ctx.options)
        return graph


class CheckPlan:
    """The same limit on the copies actually planned (the solver's included), before allocate places them all."""
    NAME = "check_plan"

    def run(self, graph: Graph, target, ctx) -> Graph:
        resources.check_plan(graph, target, ctx.options)
        return graph


class _When:
    """A pass that runs only for some requests: pack chooses copies and placement together (tiles share arrays);
    otherwise replicate chooses copies and allocate gives every tile copy its own array."""

    def __init__(self, step, applies):
        self.step, self.NAME, self.applies = step, step.NAME, applies

    def run(self, graph: Graph, target, ctx) -> Graph:
        return self.step.run(graph, target, ctx)


def _packing(ctx) -> bool:
    return bool(ctx.options.pack)


def _not_packing(ctx) -> bool:
    return not ctx.options.pack


PIPELINE = [
    canonicalize,
    CheckRequest(),
    CalibrateActivations(),
    quantize,
    tile,
    StartAdcCalibration(),          # the ADC full scales, on a thread beside the placing passes (CP-SAT)
    _When(pack, _packing),
    MeasureSensitivity(),           # only with --copies-for accuracy|mix (its own `applies`)
    _When(replicate, _not_packing),
    CheckPlan(),
    _When(allocate, _not_packing),
    place_defects,                  # only with a defect map (its own `applies`)
    estimate,
    CalibrateAdc(),
]
PLACED = [p.NAME for p in PIPELINE].index("allocate") + 1
COUNT_PASSES = [p for p in PIPELINE[:PLACED] if not getattr(p, "NEEDS_CALIBRATION", False)]


@contextmanager
def timed(ctx: CompileContext, name: str):
    """The one place a step's time is taken (ctx.timings[name], seconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        ctx.timings[name] = time.perf_counter() - start


def run_passes(graph: Graph, target, ctx: CompileContext, passes=PIPELINE) -> Graph:
    try:
        for p in passes:
            applies = getattr(p, "applies", None)
            if applies is not None and not applies(ctx):
                continue
            with timed(ctx, p.NAME):
                graph = p.run(graph, target, ctx)
            for instrument in ctx.instruments:
                instrument.after_pass(p.NAME, graph, ctx)
    except BaseException:
        if ctx.adc_job is not None:      # a pass failed while the ADC calibration ran beside: stop it, then raise
            ctx.adc_job.cancel()
        raise
    return graph


class DumpGraph:
    """After each pass, write the graph as JSON (NN-NAME.json: ops in order, crossbar ops with their shape,
    tiles, copies and placements) into `folder`, which must exist: to see what each pass did."""

    def __init__(self, folder):
        self.folder, self.count = Path(folder), 0

    def after_pass(self, name: str, graph: Graph, ctx) -> None:
        self.count += 1
        ops = [_op_json(op) for op in graph.ops]
        (self.folder / f"{self.count:02d}-{name}.json").write_text(json.dumps({"pass": name, "ops": ops}, indent=1))


def _op_json(op) -> dict:
    row = {"name": op.name, "op_type": op.op_type, "inputs": list(op.inputs), "outputs": list(op.outputs)}
    if isinstance(op, XbarOp):
        row.update(rows=op.rows, cols=op.cols, copies=op.replicas, quantised=op.levels is not None,
                   tiles=[{"row_start": t.row_start, "row_count": t.row_count, "col_start": t.col_start,
                           "col_count": t.col_count,
                           "arrays": [p.array for p in t.placements]} for t in op.tiles])
        if op.weights_of is not None:     # reads that op's arrays
            row["weights_of"] = op.weights_of
    return row


class CheckAgainstOnnx:
    """After each pass, run the graph's float semantics (cimc's float backend: the weights as the graph holds them)
    on `samples` and compare with onnxruntime on the source model (ctx.model): a pass that changed what the model
    computes is stopped at once, naming the pass. `samples`: array (single-input model) or dict of arrays."""

    def __init__(self, samples, rtol: float = 1e-5):
        self.samples, self.rtol, self.expected = samples, rtol, None

    def after_pass(self, name: str, graph: Graph, ctx) -> None:
        feeds = check_feeds(graph, self.samples, "CheckAgainstOnnx samples")
        if self.expected is None:
            session = ort.InferenceSession(ctx.model.SerializeToString(), providers=["CPUExecutionProvider"])
            outputs = session.run([t.name for t in graph.outputs], feeds)
            self.expected = dict(zip([t.name for t in graph.outputs], outputs))
        backend = FloatBackend()
        backend.bind(graph, None, None)
        got = run_graph(graph, feeds, backend)
        for out, want in self.expected.items():
            err = float(np.max(np.abs(got[out] - want))) if want.size else 0.0
            scale = float(np.max(np.abs(want))) if want.size else 0.0
            if not err <= self.rtol * max(scale, 1.0):
                raise ModelError(f"after pass {name!r}: output {out!r} differs from onnxruntime by {err:.3g} "
                                 f"(allowed {self.rtol:g} x {max(scale, 1.0):.3g}); the pass changed what the "
                                 "model computes")
