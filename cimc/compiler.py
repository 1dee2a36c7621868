"""The pass pipeline. `compile()` turns an ONNX model into a Manifest; `count()` stops after replication.

Passes are pure steps `run(graph, target, config) -> graph`; timing is recorded here, around them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cimc import calibrate, frontend
from cimc.data import load_npz
from cimc.errors import ConfigError
from cimc.passes import allocate, canonicalize, quantize, tile
from cimc.passes import replicate as replicate_pass
from cimc.targets.registry import load_target


@dataclass
class CompileConfig:
    replicate: dict[str, int] = field(default_factory=dict)
    activation_stats: dict | None = None


def _run_passes(graph, target, config, passes, timings):
    for p in passes:
        start = time.perf_counter()
        graph = p.run(graph, target, config)
        timings[p.NAME] = time.perf_counter() - start
    return graph


def count(model, target="yao2020-resnet", replicate=None, overrides=None) -> dict:
    """Arrays per crossbar layer without quantising (no calibration needed)."""
    target = load_target(target, overrides)
    graph, _info = frontend.import_onnx(model)
    config = CompileConfig(replicate=dict(replicate or {}))
    graph = _run_passes(graph, target, config, [canonicalize, tile, replicate_pass], {})
    return layer_table(graph, target)


def layer_table(graph, target) -> dict:
    layers = []
    for op in graph.xbar_ops():
        row_tiles = -(-op.rows // target.array.inputs_per_tile)
        col_tiles = -(-op.cols // target.array.outputs_per_tile)
        layers.append({"name": op.name, "op_type": op.op_type, "rows": op.rows, "cols": op.cols,
                       "row_tiles": row_tiles, "col_tiles": col_tiles, "tiles": len(op.tiles),
                       "copies": op.replicas, "arrays": len(op.tiles) * op.replicas, "positions": op.positions})
    return {"target": target.name, "array": {"rows": target.array.rows, "cols": target.array.cols,
                                             "differential": target.array.differential},
            "total_arrays": sum(layer["arrays"] for layer in layers), "layers": layers}


def compile(model, target="yao2020-resnet", calibration=None, replicate=None, overrides=None):
    """ONNX model (path or ModelProto) -> Manifest. `calibration`: npz path, array, or dict of arrays."""
    from cimc.manifest import Manifest
    start = time.perf_counter()
    target = load_target(target, overrides)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    graph, info = frontend.import_onnx(model)
    timings["import"] = time.perf_counter() - t0
    if calibration is None:
        raise ConfigError("compiling needs calibration data to set the activation ranges: pass a few hundred "
                          "representative inputs (cimc compile ... --calibration calib.npz; "
                          "cimc.compile(..., calibration=array_or_path))")
    config = CompileConfig(replicate=dict(replicate or {}))
    graph = _run_passes(graph, target, config, [canonicalize], timings)
    t0 = time.perf_counter()
    calib_summary, data = _calibration_data(calibration, graph)
    percentile = target.quant.percentile if target.quant.calibration == "percentile" else None
    config.activation_stats = calibrate.activation_stats(graph, data, percentile, model=info.model)
    timings["calibrate"] = time.perf_counter() - t0
    calib_summary["ranges"] = {name: {"min": s["min"], "absmax": s["absmax"]}
                               for name, s in config.activation_stats.items()}
    graph = _run_passes(graph, target, config,
                        [quantize, tile, replicate_pass, allocate], timings)
    manifest = Manifest.build(graph, target, info, calib_summary)
    manifest.compile_seconds = time.perf_counter() - start
    manifest.pass_seconds = timings
    return manifest


def _calibration_data(calibration, graph):
    names = [t.name for t in graph.inputs]
    if isinstance(calibration, (str, Path)):
        ds = load_npz(calibration, names)
        return {"path": str(Path(calibration).resolve()), "sha256": ds.sha256, "samples": len(ds)}, ds.inputs
    data = calibration if isinstance(calibration, dict) else {names[0]: np.asarray(calibration)}
    n = len(next(iter(data.values())))
    return {"path": None, "sha256": None, "samples": int(n)}, data
