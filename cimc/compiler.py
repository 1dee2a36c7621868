"""`compile()` turns an ONNX model into a Manifest; `count()` stops once the graph is placed.

Both run the one pass list of cimc.pipeline (compile all of it, count the prefix COUNT_PASSES); the passes return
their results in a CompileContext, from which the manifest is built."""
from __future__ import annotations

import importlib
import sys
import threading
import time

from cimc import frontend
from cimc.calibration_passes import ADC_CALIBRATION_SAMPLES, MIN_CALIBRATION_SAMPLES  # noqa: F401 - API
from cimc.compile_options import CompileConfig, make_config  # noqa: F401 - API
from cimc.errors import ConfigError
from cimc.layer_table import layer_table
from cimc.mac_count import crossbar_macs, mac_table
from cimc.manifest import Manifest
from cimc.passes import replicate as replicate_pass
from cimc.pipeline import COUNT_PASSES, PIPELINE, CompileContext, run_passes, timed
from cimc.targets.registry import load_target


def count(model, target="yao2020-resnet", replicate=None, overrides=None, **replication_options) -> dict:
    """Arrays per crossbar layer without quantising (no calibration needed). `replication_options`: see
    make_config (replication, arrays, target_fps, optimize, time_limit, pack)."""
    target = load_target(target, overrides)
    ctx = CompileContext(make_config(replicate, **replication_options))
    graph, _info = frontend.import_onnx(model)
    graph = run_passes(graph, target, ctx, COUNT_PASSES)   # compile's placing passes: count refuses what it refuses
    table = layer_table(graph, target)
    for row, op in zip(table["layers"], graph.xbar_ops()):
        row["macs"] = crossbar_macs(op)
    table["macs"] = mac_table(graph)
    table["replication"] = ctx.replication_report
    return table


def compile(model, target="yao2020-resnet", calibration=None, replicate=None, overrides=None,
            instruments=(), **replication_options):
    """ONNX model (path or ModelProto) -> Manifest. `calibration`: npz path, array, or dict of arrays.
    `replicate`: fixed copies {layer: n}; `replication_options`: see make_config. `instruments`: objects with
    `after_pass(name, graph, ctx)` run after every pass (cimc.pipeline: DumpGraph, CheckAgainstOnnx)."""
    start = time.perf_counter()
    target = load_target(target, overrides)
    ctx = CompileContext(make_config(replicate, **replication_options), calibration=calibration,
                         instruments=list(instruments))
    with timed(ctx, "import"):
        graph, info = frontend.import_onnx(model)   # its checks run in a forkserver child (onnx_checks.py)
    ctx.model = info.model
    if replicate_pass.uses_solver(ctx.options, target):
        _prefetch("ortools.sat.python.cp_model")
    if calibration is None:
        raise ConfigError("compiling needs calibration data to set the activation ranges: pass a few hundred "
                          "representative inputs (cimc compile ... --calibration calib.npz; "
                          "cimc.compile(..., calibration=array_or_path))")
    graph = run_passes(graph, target, ctx, PIPELINE)
    manifest = Manifest.build(graph, target, info, ctx.calibration_summary, ctx.arrays)
    manifest.replication = ctx.replication_report
    manifest.estimates = ctx.estimates
    if ctx.defect_placement is not None:       # only with --defect-map: other manifests are as before
        manifest.provenance["defect_placement"] = ctx.defect_placement
    manifest.compile_seconds = time.perf_counter() - start
    manifest.pass_seconds = ctx.timings
    return manifest


def _prefetch(module: str) -> None:
    """Import a module on a background thread while calibration runs in onnxruntime (which releases the GIL):
    OR-Tools' CP-SAT module pulls in pandas, about 0.2-0.3 s of CPU. A later `import` waits for it under the import
    lock. (Started before the import pass instead, beside the wait for the model's checks, it fits that wait only
    on a loaded machine: on idle cores the wait is about 0.07 s and the rest of the import would hold the GIL
    against the import pass's own Python.)"""
    if module not in sys.modules:
        threading.Thread(target=importlib.import_module, args=(module,), daemon=True).start()
