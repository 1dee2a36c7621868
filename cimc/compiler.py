"""The pass pipeline. `compile()` turns an ONNX model into a Manifest; `count()` stops after replication.

Passes are pure steps `run(graph, target, config) -> graph`; timing is recorded here, around them."""
from __future__ import annotations

import importlib
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cimc import calibrate, frontend, resources
from cimc.data import as_float32_input, load_npz
from cimc.errors import ConfigError, DataError
from cimc.executor import check_feeds
from cimc.passes import allocate, canonicalize, estimate, pack, quantize, tile
from cimc.passes import replicate as replicate_pass
from cimc.passes.replicate import read_replication_file
from cimc.targets.registry import load_target


@dataclass
class CompileConfig:
    replicate: dict[str, int] = field(default_factory=dict)   # fixed copies per layer (--replicate)
    replication_file_copies: dict[str, int] | None = None     # fixed copies from --replication FILE
    arrays: int | None = None          # array budget for the replication solver (default: the target's budget)
    target_fps: float | None = None    # or: fewest arrays that reach this throughput
    optimize: bool = True              # False: no solver even if the target has a budget
    time_limit: float = 10.0           # CP-SAT seconds
    pack: bool = False                 # joint copies + placement, several tiles per array (passes/pack.py)
    max_memory: int | str | None = None  # compile memory limit (cimc.resources; default 8 GiB or CIMC_MAX_MEMORY)
    activation_stats: dict | None = None
    replication_report: dict | None = None
    estimates: dict | None = None


def make_config(replicate=None, replication=None, arrays=None, target_fps=None, optimize=True,
                time_limit=10.0, pack=False, max_memory=None) -> CompileConfig:
    """`replication`: a replication.json path (or a {layer: copies} dict) whose copies are kept fixed."""
    if isinstance(replication, (str, Path)):
        replication = read_replication_file(replication)
    if arrays is not None and (isinstance(arrays, bool) or not isinstance(arrays, int) or arrays < 1):
        raise ConfigError(f"--arrays {arrays!r}: must be a positive integer")
    if not _positive_number(time_limit):
        raise ConfigError(f"--time-limit {time_limit!r}: must be a finite number of seconds > 0")
    if target_fps is not None and not _positive_number(target_fps):
        raise ConfigError(f"--target-fps {target_fps!r}: must be a finite number of inferences per second > 0")
    if max_memory is not None:
        resources.memory_limit(max_memory)          # a bad size is refused before any work
    return CompileConfig(replicate=dict(replicate or {}), replication_file_copies=replication, arrays=arrays,
                         target_fps=target_fps, optimize=optimize, time_limit=time_limit, pack=bool(pack),
                         max_memory=max_memory)


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _run_passes(graph, target, config, passes, timings):
    for p in passes:
        start = time.perf_counter()
        graph = p.run(graph, target, config)
        timings[p.NAME] = time.perf_counter() - start
    return graph


def count(model, target="yao2020-resnet", replicate=None, overrides=None, **replication_options) -> dict:
    """Arrays per crossbar layer without quantising (no calibration needed). `replication_options`: see
    make_config (replication, arrays, target_fps, optimize, time_limit, pack)."""
    target = load_target(target, overrides)
    config = make_config(replicate, **replication_options)
    graph, _info = frontend.import_onnx(model)
    graph = _run_passes(graph, target, config, [canonicalize], {})
    resources.check_request(graph, target, config)            # count agrees with compile on what it refuses
    graph = _run_passes(graph, target, config, [tile], {})
    graph = _place(graph, target, config, {})   # compile's placing passes: count refuses what compile refuses
    table = layer_table(graph, target)
    table["replication"] = config.replication_report
    return table


def layer_table(graph, target) -> dict:
    layers = []
    for op in graph.xbar_ops():
        row_tiles = -(-op.rows // target.array.inputs_per_tile)
        col_tiles = -(-op.cols // target.array.outputs_per_tile)
        placed = {p.array for t in op.tiles for p in t.placements}
        layers.append({"name": op.name, "op_type": op.op_type, "rows": op.rows, "cols": op.cols,
                       "row_tiles": row_tiles, "col_tiles": col_tiles, "tiles": len(op.tiles),
                       "copies": op.replicas, "arrays": len(placed) if placed else len(op.tiles) * op.replicas,
                       "positions": op.positions})
    # packed tiles share arrays (passes/pack.py): the total is the distinct arrays placed, not the sum over layers
    placed_all = {p.array for op in graph.xbar_ops() for t in op.tiles for p in t.placements}
    tile_copies = sum(len(op.tiles) * op.replicas for op in graph.xbar_ops())
    return {"target": target.name, "array": {"rows": target.array.rows, "cols": target.array.cols,
                                             "differential": target.array.differential},
            "total_arrays": len(placed_all) if placed_all else sum(layer["arrays"] for layer in layers),
            "packed": bool(placed_all) and len(placed_all) < tile_copies, "layers": layers}


def compile(model, target="yao2020-resnet", calibration=None, replicate=None, overrides=None,
            **replication_options):
    """ONNX model (path or ModelProto) -> Manifest. `calibration`: npz path, array, or dict of arrays.
    `replicate`: fixed copies {layer: n}; `replication_options`: see make_config."""
    from cimc.manifest import Manifest
    start = time.perf_counter()
    target = load_target(target, overrides)
    config = make_config(replicate, **replication_options)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    graph, info = frontend.import_onnx(model)   # before any thread starts: its checks may fork (onnx_checks.py)
    timings["import"] = time.perf_counter() - t0
    if config.optimize or config.pack:
        _prefetch("ortools.sat.python.cp_model")
    if calibration is None:
        raise ConfigError("compiling needs calibration data to set the activation ranges: pass a few hundred "
                          "representative inputs (cimc compile ... --calibration calib.npz; "
                          "cimc.compile(..., calibration=array_or_path))")
    graph = _run_passes(graph, target, config, [canonicalize], timings)
    resources.check_request(graph, target, config)            # from shapes, before calibrating or allocating
    t0 = time.perf_counter()
    calib_summary, data = _calibration_data(calibration, graph)
    percentile = target.quant.percentile if target.quant.calibration == "percentile" else None
    config.activation_stats = calibrate.activation_stats(graph, data, percentile, model=info.model)
    timings["calibrate"] = time.perf_counter() - t0
    calibrate.check_finite_ranges(config.activation_stats, calib_summary["path"] or "the calibration data")
    calib_summary["ranges"] = {name: {"min": s["min"], "absmax": s["absmax"]}
                               for name, s in config.activation_stats.items()}
    calib_summary["rule"] = target.quant.calibration
    calib_summary["outliers"] = calibrate.input_outliers(graph, data, target.quant.calibration)
    for row in calib_summary["outliers"]:
        _warn(calibrate.outlier_message(row, target.quant.calibration))
    graph = _run_passes(graph, target, config, [quantize, tile], timings)
    graph = _place(graph, target, config, timings)
    graph = _run_passes(graph, target, config, [estimate], timings)
    t0 = time.perf_counter()
    _calibrate_adc(graph, target, data)
    timings["adc_calibrate"] = time.perf_counter() - t0
    calib_summary["adc_samples"] = min(ADC_CALIBRATION_SAMPLES, len(next(iter(data.values()))))
    manifest = Manifest.build(graph, target, info, calib_summary)
    manifest.replication = config.replication_report
    manifest.estimates = config.estimates
    manifest.compile_seconds = time.perf_counter() - start
    manifest.pass_seconds = timings
    return manifest


def _place(graph, target, config, timings):
    """Copies and placements: pack chooses both together (tiles share arrays); otherwise replicate, then allocate
    one array per tile copy. The memory check runs before allocate places every copy."""
    if config.pack:
        graph = _run_passes(graph, target, config, [pack], timings)
        resources.check_plan(graph, target, config)
        return graph
    graph = _run_passes(graph, target, config, [replicate_pass], timings)
    resources.check_plan(graph, target, config)
    return _run_passes(graph, target, config, [allocate], timings)


def _prefetch(module: str) -> None:
    """Import a module on a background thread while calibration runs in onnxruntime (which releases the GIL):
    OR-Tools' CP-SAT module pulls in pandas, about 0.2 s. A later `import` waits for it under the import lock."""
    if module not in sys.modules:
        threading.Thread(target=importlib.import_module, args=(module,), daemon=True).start()


ADC_CALIBRATION_SAMPLES = 16  # every bit-plane read of 16 images: >100k reads per layer; ~60 ms per ResNet-56 image


def _calibrate_adc(graph, target, data) -> None:
    """Each crossbar op's ADC full scale: the largest ideal line current over the reads of the first
    ADC_CALIBRATION_SAMPLES calibration samples (the rule in cimc.backends.crossbar.calibrate_adc_full_scale)."""
    from cimc.backends.crossbar import calibrate_adc_full_scale
    scales = calibrate_adc_full_scale(graph, target, data, max_samples=ADC_CALIBRATION_SAMPLES)
    for op in graph.xbar_ops():
        op.adc_full_scale_ua = scales.get(op.name)


MIN_CALIBRATION_SAMPLES = 32   # fewer: warn (README, Data files); the activation ranges then rest on a few inputs


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
