"""Activation statistics for quantisation: for the input of every crossbar op, its minimum, max |x| and (for the
"percentile" rule) a percentile of |x| computed on a deterministic strided subsample of at most 2^20 values per
batch. The float model runs in onnxruntime with those tensors exposed as extra outputs (for min and max alone, as
onnxruntime ReduceMin and ReduceMax outputs, so that no activation leaves onnxruntime); where a crossbar input is a
tensor the front end made (a transpose it inserted), the cimc float engine runs the IR instead."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from cimc import ort_session
from cimc.backends.reference import FloatBackend
from cimc.batching import chunks, fixed_batch
from cimc.graph_run import check_feeds, run_graph
from cimc.ir import Graph, XbarOp

_SUBSAMPLE = 1 << 20


class _Stats:
    def __init__(self, percentile: float | None):
        self.percentile = percentile
        self.mins, self.maxs, self.samples = {}, {}, {}

    def add(self, name: str, x: np.ndarray) -> None:
        self.mins[name] = min(self.mins.get(name, np.inf), float(x.min()))
        self.maxs[name] = max(self.maxs.get(name, 0.0), float(max(-x.min(), x.max())))
        if self.percentile is not None:
            a = np.abs(x).ravel()
            self.samples.setdefault(name, []).append(a[::max(1, a.size // _SUBSAMPLE)])

    def result(self) -> dict[str, dict]:
        return {name: {"min": self.mins[name], "absmax": self.maxs[name],
                       "percentile": None if self.percentile is None else
                       float(np.percentile(np.concatenate(self.samples[name]), self.percentile))}
                for name in self.mins}


def activation_stats(graph: Graph, data, percentile: float | None = None, batch_size: int = 64,
                     model: onnx.ModelProto | None = None, where: str = "calibration data") -> dict[str, dict]:
    """`percentile`: also estimate that percentile of |x| (None: min and max |x| only)."""
    feeds = check_feeds(graph, data, where)
    n = len(next(iter(feeds.values())))
    stats = _Stats(percentile)
    reduce = percentile is None        # min and max only: onnxruntime reduces each tap to two scalars itself
    session = _onnxruntime_with_taps(model, graph, reduce) if model is not None else None
    if session is not None:
        taps = {op.inputs[0]: [] for op in graph.xbar_ops()}
        for op in graph.xbar_ops():
            taps[op.inputs[0]].append(op.name)
        names = [f"{t}{suffix}" for t in taps for suffix in _REDUCED] if reduce else list(taps)
        fixed = fixed_batch([t.shape for t in graph.inputs])
        for _, count, part in chunks(feeds, fixed) if fixed else _slices(feeds, n, batch_size):
            values = session.run(names, part)
            if fixed and not reduce:     # drop the padding; min and max over copies of a sample do not change
                values = [v[:count] for v in values]
            if reduce:
                values = [np.array([lo, hi]) for lo, hi in zip(values[0::2], values[1::2])]
            for tensor, value in zip(taps, values):
                for op_name in taps[tensor]:
                    stats.add(op_name, value)
        return stats.result()
    backend = FloatBackend()
    backend.bind(graph, None, None)
    for start in range(0, n, batch_size):
        run_graph(graph, {k: v[start:start + batch_size] for k, v in feeds.items()}, backend,
                  observe=lambda op, x: stats.add(op.name, x))
    return stats.result()


_REDUCED = ("__cimc_min", "__cimc_max")


def _slices(feeds: dict, n: int, batch_size: int):
    for start in range(0, n, batch_size):
        part = {k: v[start:start + batch_size] for k, v in feeds.items()}
        yield start, len(next(iter(part.values()))), part


def _onnxruntime_with_taps(model: onnx.ModelProto, graph: Graph, reduce: bool = False):
    """The source model with every crossbar input added as an output (`reduce`: as its ReduceMin and ReduceMax
    over all axes, named tensor + _REDUCED), or None if one is not an ONNX tensor."""
    produced = {t for node in model.graph.node for t in node.output} | {i.name for i in model.graph.input}
    wanted = [op.inputs[0] for op in graph.xbar_ops()]
    if any(t not in produced for t in wanted):
        return None
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    existing = {o.name for o in tapped.graph.output}
    for t in dict.fromkeys(wanted):
        if reduce:   # no axes: every axis, in every opset
            for op_type, suffix in zip(("ReduceMin", "ReduceMax"), _REDUCED):
                tapped.graph.node.append(helper.make_node(op_type, [t], [t + suffix], keepdims=0))
                tapped.graph.output.append(helper.make_tensor_value_info(t + suffix, onnx.TensorProto.FLOAT, None))
        elif t not in existing:
            tapped.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    try:
        return ort_session.session(tapped)    # quiet, no spin-waiting (idle threads burnt CPU between nodes)
    except Exception:  # onnxruntime cannot run it: fall back to the cimc float engine
        return None


def check_finite_ranges(stats: dict[str, dict], where: str) -> None:
    """Refuse an activation range that is not finite (the float model overflowed float32 on the calibration
    data): its scale would be inf and every code 0."""
    from cimc.errors import DataError
    for name, s in stats.items():
        values = [s["min"], s["absmax"]] + ([] if s.get("percentile") is None else [s["percentile"]])
        if not all(np.isfinite(values)):
            raise DataError(f"{where}: the input of crossbar layer {name!r} is not finite on the calibration data "
                            f"(min {s['min']}, max |x| {s['absmax']}): the float model overflows; check the "
                            "calibration inputs for extreme values and their scale (normalisation)")


OUTLIER_RATIO = 1000.0     # max |x| above this many times the OUTLIER_PERCENTILE of |x|: a few values set the range
OUTLIER_PERCENTILE = 99.99


def first_layers(graph: Graph) -> dict[str, list[str]]:
    """For each model input, the crossbar ops that read it directly or through digital ops only."""
    reach = {t.name: {t.name} for t in graph.inputs}       # tensor -> the model inputs it derives from digitally
    layers: dict[str, list[str]] = {t.name: [] for t in graph.inputs}
    for op in graph.ops:
        sources = set().union(*(reach.get(t, set()) for t in op.inputs))
        if isinstance(op, XbarOp):
            for source in sorted(reach.get(op.inputs[0], set())):
                layers[source].append(op.name)
        else:
            for t in op.outputs:
                reach[t] = sources
    return layers


def input_outliers(graph: Graph, data: dict[str, np.ndarray], rule: str) -> list[dict]:
    """Model inputs whose range is dominated by a few values: max |x| > OUTLIER_RATIO x the OUTLIER_PERCENTILE
    of |x| (on a strided subsample of at most 2^20 values). `rule` is recorded with each."""
    rows = []
    readers = first_layers(graph)
    for name, x in data.items():
        if x.size == 0:
            continue
        absmax = float(max(-x.min(), x.max()))
        flat = x.reshape(-1)
        p = float(np.percentile(np.abs(flat[::max(1, flat.size // _SUBSAMPLE)]), OUTLIER_PERCENTILE))
        if p > 0 and absmax > OUTLIER_RATIO * p:
            rows.append({"input": name, "absmax": absmax, "percentile": OUTLIER_PERCENTILE, "percentile_value": p,
                         "layers": readers.get(name, []), "rule": rule})
    return rows


def outlier_message(row: dict, rule: str) -> str:
    layers = ", ".join(map(repr, row["layers"])) or "no crossbar layer directly"
    applied = ("the 'max' rule sets their input range from these few values, so most inputs quantise to a few "
               "codes; compile with --set quant.calibration=percentile, or remove the outliers"
               if rule == "max" else f"the '{rule}' rule clips them")
    return (f"calibration input {row['input']!r} (read by {layers}): max |x| {row['absmax']:.4g} is over "
            f"{OUTLIER_RATIO:g}x its {row['percentile']:g}th percentile {row['percentile_value']:.4g}; {applied}")
