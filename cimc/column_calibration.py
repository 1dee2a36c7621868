"""Column calibration on the chip without labels (`cimc tune --method affine`, issue 13 item 1).

After programming, the chip instance (`seed`, the run's chip options, drawn exactly as `cimc run --seed S` draws
it) runs the data. Layer by layer in execution order, a gain a_n and an offset b_n per output column are fitted by
least squares so that a_n * y_chip + b_n matches the target network's output of the same layer for the same sample:
by default (`target="float"`) the manifest's float network (its float weights, float activations: what the ONNX
model computes), or (`target="ideal"`) the ideal quantised chip (the integer backend). Either runs the whole
network up to that layer from the sample itself; the chip's side runs the already corrected layers before it.
Fitting to a network rather than to the ideal product of the chip's own layer inputs makes each column also absorb
what it can of the errors that reach it from the layers before (the least-squares fit is then the best per-column
affine estimate of the target activation): on the shipped mCNN at 1.5 uS the ideal network as target recovers 0.7
points more than the layer's own inputs. The float network as target also absorbs what each column can of the
weight and activation quantisation error (a per-column bias and gain correction, as post-training quantisation
does on a digital chip): on the trained ResNet-56 stand-in at 0.54 uS it gives 97.37% against the ideal
network's 96.88% (float 97.65%), and on the mCNN at 0.54 uS 97.6% against 97.13% (the ideal quantised chip: 97.2%).
Both targets need only what the manifest holds (its float and quantised weights, digital ops and periphery).
The fit is folded into the layer's digital periphery:

    y = acc * (s_x * w_n * a_n) + (bias_n + b_n * s_x * w_n)

that is a new weight scale and bias per column. The fit runs in output units (y = acc * s + bias is affine in acc,
per column, so the least-squares solution is the same; a ConvTranspose's overlap-add is linear, and its bias comes
after it, so folding stays exact there too) from sums per column over all rows at once, so any batch size gives the
same fit bit for bit (the chip's outputs do not depend on the batch, see Backend.number_samples).

Nothing is written to the devices: a real chip's controller can do the same, with its own reads and the target
network that the manifest describes. The folded scales correct THIS chip instance only; the tuned manifest records
the chip's identity (`provenance.tuning.chip`) and `Session` warns when it runs on another chip or backend.
"""
from __future__ import annotations

import copy as copy_module
import time
from dataclasses import dataclass, field

import numpy as np

from cimc.backends import make_backend
from cimc.backends.crossbar import CrossbarBackend, as_json_value
from cimc.batching import fixed_batch
from cimc.data import Dataset
from cimc.errors import ConfigError
from cimc.graph_run import check_feeds, fixed_batch_runs, run_graph, run_item, run_xbar
from cimc.ir import XbarOp
from cimc.onnx_segments import plan
from cimc.tune_defaults import AFFINE_TARGETS as TARGETS   # the float network, or the ideal quantised chip
from cimc.tune_defaults import DEFAULT_AFFINE_TARGET

FLAT = 1e-12    # a column whose chip outputs vary less than this (relative variance) gets an offset only


class ColumnFit:
    """Least squares t ~ a * x + b per column, from running sums (float64), so batches can be added in any split."""

    def __init__(self, columns: int):
        self.n = 0
        self.sx, self.st, self.sxx, self.sxt = (np.zeros(columns) for _ in range(4))

    def add(self, x: np.ndarray, t: np.ndarray) -> None:
        """x, t: [rows, columns], the chip's and the ideal outputs for the same inputs."""
        x, t = x.astype(np.float64), t.astype(np.float64)
        self.n += len(x)
        self.sx += x.sum(0)
        self.st += t.sum(0)
        self.sxx += np.einsum("ij,ij->j", x, x)
        self.sxt += np.einsum("ij,ij->j", x, t)

    def solve(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(a, b, flat): per column; a column whose chip output does not vary (or whose gain comes out <= 0, which
        no read path produces) keeps a = 1 and gets the mean difference as its offset; `flat` counts those."""
        n = max(self.n, 1)
        mx, mt = self.sx / n, self.st / n
        var = self.sxx / n - mx * mx
        cov = self.sxt / n - mx * mt
        scale = np.maximum(self.sxx / n, 1e-300)
        ok = var > FLAT * scale
        a = np.ones_like(mx)
        a[ok] = cov[ok] / var[ok]
        ok &= a > 0
        a[~ok] = 1.0
        b = mt - a * mx
        return a, b, int((~ok).sum())


@dataclass
class AffineResult:
    layers: list[dict]                 # per layer: name, columns, mean |a-1|, mean |b| (accumulator units), flat
    inputs: int                        # samples fed through the chip
    seed: int
    accuracy_before: float | None      # on --data when it holds labels (never used for the fit)
    accuracy_after: float | None
    device_writes: int = 0             # the calibration writes no device
    seconds: float = 0.0
    method: str = "affine"
    target: str = DEFAULT_AFFINE_TARGET   # TARGETS
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def calibrated_layers(graph) -> list[XbarOp]:
    """The layers the calibration fits, in execution order: every crossbar op read once per inference (a recurrent
    layer's shared arrays serve several time steps, whose errors one gain cannot describe; they keep theirs)."""
    return [op for op in graph.xbar_ops() if op.weights_of is None and not graph.readers(op.name)]


def _columns(y: np.ndarray, op: XbarOp) -> np.ndarray:
    """An op's output as [rows, output columns]: the last axis of a matmul, axis 1 (channels) of a conv."""
    if op.conv is None:
        return y.reshape(-1, y.shape[-1])
    return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])


def fold(op: XbarOp, a: np.ndarray, b: np.ndarray) -> None:
    """y' = a * y + b per output channel folded into the op's weight scales and bias (float32, as the manifest stores
    them). A ConvTranspose's matrix column n is channel n // (kernel size) (cimc.ir), its bias per channel."""
    scales = op.weight_scales.astype(np.float64)
    gain = np.repeat(a, len(scales) // len(a)) if len(scales) != len(a) else a
    bias = np.zeros(len(a)) if op.bias is None else op.bias.astype(np.float64)
    op.weight_scales = (scales * gain).astype(np.float32)
    op.bias = (a * bias + b).astype(np.float32)


def calibrate_graph(graph, chip, ideal, feeds: dict, batch: int = 100) -> list[dict]:
    """Fit and fold every calibrated layer of `graph` in execution order (mutates `graph`); per-layer summary. Each
    layer is fitted against the target network (`ideal`, the float or the integer backend, on a copy of `graph` as
    it was before any fold).

    One pass over the graph's plan: every batch of the data (the batches of `cimc run`, range(0, n, batch), each
    sample numbered by its index, so its noise and copy are those of the run) steps through the chip's graph and,
    side by side, the reference graph. At a calibrated layer the chip reads it with the periphery as it is, the
    fit is folded, and the chip reads it again: the layers after see what a run of the folded graph gives them. A
    layer is read twice and the graph run once on each side, where re-running the network per layer cost O(L^2)."""
    rows = []
    reference = copy_module.deepcopy(graph)       # the periphery as it was: the ideal chip's network
    fitted = {op.name for op in calibrated_layers(graph)}
    chip_runs, ideal_runs = _runs(graph, chip, feeds, batch), _runs(reference, ideal, feeds, batch)
    order, ideal_order = plan(graph), plan(reference)
    keep = frozenset(t.name for t in graph.outputs)
    try:
        for i, item in enumerate(order.items):
            _step(reference, ideal_order, i, ideal_runs, ideal, keep)
            if isinstance(item, XbarOp) and item.name in fitted:
                chip_out = _read(item, chip_runs, chip)
                ideal_out = np.concatenate([_columns(env[item.outputs[0]][:count], item)
                                            for env, _, count in ideal_runs])
                # one sum over all rows: the float64 sums, hence the folded float32 scales, do not depend on the batch
                fit = ColumnFit(chip_out.shape[1])
                fit.add(chip_out, ideal_out)
                del chip_out, ideal_out
                rows.append(_fold_layer(item, *fit.solve()))
            _step(graph, order, i, chip_runs, chip, keep)
    finally:
        chip.samples = ideal.samples = None
    return rows


def _runs(graph, backend, feeds: dict, batch: int) -> list[tuple[dict, np.ndarray, int]]:
    """The runs `cimc run` makes of the data in batches of `batch`: [(tensors, the backend's sample indices, real
    samples)], a fixed-batch model's batches in chunks of its batch (as run_graph runs them)."""
    n = len(next(iter(feeds.values())))
    fixed = fixed_batch([t.shape for t in graph.inputs])
    runs = []
    for start in range(0, n, batch):
        part = {k: v[start:start + batch] for k, v in feeds.items()}
        ids = backend.number_samples(len(next(iter(part.values()))), start)       # noise by the sample's index
        if fixed is None or len(ids) == fixed:
            runs.append((dict(part), ids, len(ids)))
        else:
            runs.extend((dict(chunk), chunk_ids, count)
                        for chunk, chunk_ids, count in fixed_batch_runs(part, ids, fixed))
    return runs


def _step(graph, order, i: int, runs: list, backend, keep) -> None:
    """Item i of the plan on every run. What it makes is copied into memory of its own: an onnxruntime session's
    outputs live in its memory arena, which keeps (for that session alone) as much as was alive at once, and here
    every batch's is (ResNet-56 on 2,000 inputs: 14.8 GB resident without the copies, 2.7 GB with them)."""
    for env, ids, _ in runs:
        backend.samples = ids
        run_item(graph, order, i, env, backend, keep)
        for t in order.items[i].outputs:
            if t in env:
                env[t] = np.array(env[t])


def _read(op: XbarOp, runs: list, chip) -> np.ndarray:
    """The chip's outputs of `op` as it is now, over all runs: [rows, output columns] (the padding dropped)."""
    out = []
    for env, ids, count in runs:
        chip.samples = ids
        out.append(_columns(run_xbar(op, env[op.inputs[0]], chip)[:count], op))
    return np.concatenate(out)


def _fold_layer(op: XbarOp, a: np.ndarray, b: np.ndarray, flat: int) -> dict:
    """Fold the fit into `op`; its summary row (the offset also in accumulator units)."""
    scales = op.weight_scales.astype(np.float64)
    if len(scales) != len(a):         # a ConvTranspose: one scale per matrix column, the first of each channel
        scales = scales.reshape(len(a), -1)[:, 0]
    unit = float(np.float32(op.input_quant.scale)) * scales     # output per accumulator step
    bias = np.zeros(len(a)) if op.bias is None else op.bias.astype(np.float64)
    b_acc = ((a - 1) * bias + b) / unit               # the offset in accumulator units (acc' = a acc + b_acc)
    fold(op, a, b)
    return {"layer": op.name, "columns": len(a), "mean_abs_gain_error": float(np.abs(a - 1).mean()),
            "mean_abs_offset_acc": float(np.abs(b_acc).mean()), "flat_columns": flat,
            "gain": [float(v) for v in a], "offset_acc": [float(v) for v in b_acc]}


def _accuracy(graph, chip, feeds: dict, labels: np.ndarray, batch: int) -> float:
    """Top-1 accuracy of the chip, each sample's noise by its index in the data (as `cimc run` scores it)."""
    n, hits = len(labels), 0
    for start in range(0, n, batch):
        part = {k: v[start:start + batch] for k, v in feeds.items()}
        y = run_graph(graph, part, chip, samples=start)[graph.outputs[0].name]
        hits += int((y.reshape(len(y), -1).argmax(1) == labels[start:start + batch]).sum())
    return hits / n


def calibrate(manifest, data: Dataset, seed: int = 0, overrides=None, defect_map=None, ideal: bool = False,
              batch: int = 100, gemm: str | None = None, target: str = DEFAULT_AFFINE_TARGET):
    """`cimc tune --method affine`: returns (tuned Manifest, AffineResult). Labels, where `data` has them, only
    score the chip before and after. `gemm`: the chip's reader, as CrossbarBackend's (None: `cimc run`'s default).
    `target`: fit the columns to the float network ("float") or to the ideal quantised chip ("ideal")."""
    if target not in TARGETS:
        raise ConfigError(f"--affine-target {target!r}: choose float (the manifest's float network) or ideal "
                          "(the ideal quantised chip)")
    if target == "float" and affine_rounds(manifest.provenance):
        # a fold rewrote the biases (b = a * bias + offset): the float network x @ W + bias is no longer in them
        raise ConfigError("--affine-target float: this manifest's periphery was column-calibrated before (tune "
                          "--method affine), so its biases no longer hold the float network's; calibrate the "
                          "manifest from before that round, or use --affine-target ideal")
    start_time = time.perf_counter()
    graph = copy_module.deepcopy(manifest.graph)
    chip = CrossbarBackend(seed=seed, overrides=overrides, defect_map=defect_map, ideal=ideal, gemm=gemm)
    chip.bind(graph, manifest.arrays, manifest.target)
    chip.apply_tuning(manifest.provenance.get("tuning"), manifest.conductances)   # a chip tuned before stays so
    reference = make_backend("integer" if target == "ideal" else "float")
    reference.bind(graph, manifest.arrays, manifest.target)
    feeds = check_feeds(graph, data.inputs, data.path or "calibration data")
    labelled = data.labels is not None
    before = _accuracy(graph, chip, feeds, data.labels, batch) if labelled else None
    layers = calibrate_graph(graph, chip, reference, feeds, batch)
    after = _accuracy(graph, chip, feeds, data.labels, batch) if labelled else None
    result = AffineResult(layers, len(data), seed, before, after, seconds=time.perf_counter() - start_time,
                          target=target)
    return _calibrated_manifest(manifest, graph, chip, data, seed, overrides, result), result


def _calibrated_manifest(manifest, graph, chip, data, seed, overrides, result):
    from cimc.manifest import Manifest
    provenance = copy_module.deepcopy(manifest.provenance)
    if provenance.get("tuning"):   # tuned before: keep the history
        provenance.setdefault("previous_tunings", []).append(provenance["tuning"])
    provenance["tuning"] = {
        "method": "affine", "target": result.target, "seed": seed, "chip": as_json_value(chip.chip_identity()),
        "chip_options": {"overrides": list(overrides or [])},
        "data": {"path": data.path, "sha256": data.sha256, "samples": len(data)},
        "writes": 0, "accuracy_before": result.accuracy_before, "accuracy_after": result.accuracy_after,
        "layers": [{k: v for k, v in row.items() if k not in ("gain", "offset_acc")} for row in result.layers],
    }
    tuned = Manifest(graph, manifest.target, manifest.arrays.copy(), provenance, manifest.replication,
                     manifest.estimates)
    # the devices hold what the chip holds now: a previous tuning's conductances, or none written (empty)
    previous = manifest.conductances
    spec = manifest.target.array
    tuned.conductances = previous if previous is not None and chip.tuning_applied else {
        "arrays": np.zeros(0, np.int64), "programmed_us": np.zeros((0, spec.rows, spec.cols)),
        "target_us": np.zeros((0, spec.rows, spec.cols))}
    return tuned


def affine_rounds(provenance: dict) -> list[dict]:
    """The manifest's column-calibration rounds, oldest first (provenance.previous_tunings, then .tuning)."""
    rounds = list(provenance.get("previous_tunings") or []) + [provenance.get("tuning")]
    return [t for t in rounds if isinstance(t, dict) and t.get("method") == "affine"]


def other_chip_warning(provenance: dict, backend) -> str | None:
    """A manifest whose periphery was calibrated (`--method affine`) for one chip instance, run on another chip
    instance: the folded gains correct errors this chip does not have. The message says how to run the right chip.
    The integer and float backends (the references `cimc run` scores beside the chip) are not warned about: they run
    the calibrated periphery on an ideal chip, as documented."""
    fitted = affine_rounds(provenance)
    identity = getattr(backend, "chip_identity", None)
    if not fitted or identity is None or as_json_value(identity()) == fitted[-1].get("chip"):
        return None
    record = fitted[-1]
    return (f"the manifest's column calibration (tune --method affine) was fitted on chip instance "
            f"{record.get('seed')} with chip options {record.get('chip_options', {}).get('overrides', [])}; on "
            f"this chip instance its gains and offsets correct errors that are not there. Run it with --seed "
            f"{record.get('seed')} and the same chip options, or run the manifest before tuning")
