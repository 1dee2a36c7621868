"""Hybrid training (Yao et al. 2020): program the arrays, then train only the last fully connected layer in situ
on that same chip instance, and write the updated manifest.

One iteration on a mini-batch (inputs X, labels y):
1. Forward on the chip (the crossbar backend, chip instance `seed`): the FC layer's input x and its output z.
2. In software: softmax cross-entropy, delta = softmax(z) - onehot(y) per sample; the FC input the array saw is
   V = q * s_x (q its 8-bit codes); as in Yao et al., the update sums over the mini-batch:
   dW = -lr * sum_i V_i delta_i (so `lr` is a per-sample rate; the batch size scales the step).
3. To conductances: weight w[k, n] = s_w[n] * (G+ - G-) / step, so the pair must change by dG = dW / s_w * step.
   Each device takes half, in opposite directions: G+ += dG/2, G- -= dG/2 (equal and opposite).
4. Thresholded writes: a pair is rewritten only where the weight change in conductance units |dG| is at least the
   threshold (Yao: |dW| >= 1.5 uS); smaller changes are dropped. Each of its two devices gets a new goal: its
   previous goal plus its half of the change, clipped to [g_min, g_max], and is programmed to it with the target's
   programming error (a fresh draw from the tuning generator; the controller programs towards the goals it keeps,
   so errors do not add up over writes), repeated up to `write_verify` more times while it misses the goal by more
   than `verify_tolerance_us`. Stuck devices ignore writes. Nothing else is written.
Drift is not applied during tuning (the tuning happens right after programming).

The tuned manifest holds the FC arrays' nearest device levels in arrays.npz (what an ideal re-transfer would
program) and, in conductances.npz, the exact conductances programmed on this chip instance; the crossbar backend
uses those when it runs the same chip instance (same seed and chip options), so `cimc run DIR2 --seed S`
reproduces the tuned accuracy exactly.
"""
from __future__ import annotations

import copy as copy_module
import time
from dataclasses import dataclass, field

import numpy as np

from cimc.backends.crossbar import CrossbarBackend, as_json_value
from cimc.data import Dataset
from cimc.errors import ConfigError, DataError
from cimc.evaluate import Progress
from cimc.executor import check_feeds, quantize_activation, run_graph
from cimc.ir import XbarOp
from cimc.layout import read_levels, tile_cells

_PASS_THROUGH = {"Softmax", "Identity"}  # ops allowed between the tuned layer and the model output


@dataclass
class TuneResult:
    accuracy_before: float
    accuracy_after: float
    writes: int
    write_attempts_on_stuck: int
    verify_iterations: int
    iterations: int
    layer: str
    arrays: list[int]
    seconds: float
    per_copy: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def tuned_layer(graph, name: str | None) -> XbarOp:
    """The layer to tune: `name`, or the last crossbar op; it must be a matmul whose output is the model output
    (possibly through Softmax/Identity), so that its output is the logits."""
    ops = graph.xbar_ops()
    op = ops[-1] if name is None else next((o for o in ops if o.name == name), None)
    if op is None:
        raise ConfigError(f"--layer {name!r} is not a crossbar layer; layers are: {', '.join(o.name for o in ops)}")
    if op.conv is not None:
        raise ConfigError(f"layer {op.name!r} is a convolution; hybrid training tunes a fully connected layer")
    tensor = op.outputs[0]
    while not graph.is_graph_output(tensor):
        consumers = graph.consumers(tensor)
        if len(consumers) != 1 or consumers[0].op_type not in _PASS_THROUGH:
            raise ConfigError(f"layer {op.name!r}: its output reaches the model output through "
                              f"{[c.op_type for c in consumers]}; hybrid training needs the layer's output to be the "
                              "logits (followed at most by Softmax)")
        tensor = consumers[0].outputs[0]
    return op


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class _Writer:
    """Programs devices of the tuned arrays on the backend's chip instance."""

    def __init__(self, backend: CrossbarBackend, array_ids: list[int], seed: int, write_verify: int,
                 tolerance_us: float | None):
        self.backend, self.ids = backend, np.array(array_ids)
        dev, nonideal = backend.target.device, backend.target.nonideal
        self.g_min, self.g_max = dev.g_min_us, dev.g_max_us
        self.sigma_abs, self.sigma_rel = nonideal.program_sigma_us, nonideal.program_sigma_rel
        self.seed = seed
        self.rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])   # round 1's tuning stream
        self.write_verify = write_verify
        self.tolerance = tolerance_us if tolerance_us is not None else max(self.sigma_abs, 1e-9)
        self.g = backend.chip.conductance_us[self.ids].copy()        # what the devices hold now
        self.target = backend.chip.target_us[self.ids].copy()        # what they were last asked to hold
        self.stuck = backend.chip.stuck[self.ids]
        self.writes = self.on_stuck = self.verify_iterations = 0

    def resume(self, conductances: dict, round_: int) -> None:
        """Take the goals recorded by an earlier tuning of the same arrays on this chip (this is round `round_`)."""
        recorded = {int(a): i for i, a in enumerate(conductances["arrays"])}
        for i, a in enumerate(self.ids):
            if int(a) in recorded:
                self.target[i] = conductances["target_us"][recorded[int(a)]]
        # a fresh tuning stream per round, so that a later round does not replay an earlier one's errors
        self.rng = np.random.default_rng(np.random.SeedSequence([self.seed, round_]))

    def write(self, dg: np.ndarray) -> None:
        """dg: requested change per device [arrays, rows, cols] (zero where nothing is written)."""
        mask = dg != 0
        self.on_stuck += int((mask & self.stuck).sum())
        mask &= ~self.stuck
        if not mask.any():
            return
        goal = np.clip(self.target[mask] + dg[mask], self.g_min, self.g_max)
        got = self._program(goal)
        for _ in range(self.write_verify):
            miss = np.abs(got - goal) > self.tolerance
            if not miss.any():
                break
            self.verify_iterations += 1
            got[miss] = self._program(goal[miss])
        self.g[mask], self.target[mask] = got, goal
        self.writes += int(mask.sum())
        self.backend.set_conductances(self.ids, self.g)

    def _program(self, goal: np.ndarray) -> np.ndarray:
        sigma = self.sigma_abs + self.sigma_rel * goal
        return np.maximum(goal + sigma * self.rng.standard_normal(goal.shape), 0.0)


def _pair_changes(op: XbarOp, dlevel: np.ndarray, target, array_ids: list[int], step_us: float) -> np.ndarray:
    """Per-device changes on the op's arrays (uS) for a change of the signed level matrix: +d/2 on g+, -d/2 on g-."""
    spec = target.array
    index = {a: i for i, a in enumerate(array_ids)}
    dg = np.zeros((len(array_ids), spec.rows, spec.cols))
    for tile in op.tiles:
        block = dlevel[tile.row_start:tile.row_start + tile.row_count,
                       tile.col_start:tile.col_start + tile.col_count] * step_us / 2
        for placement in tile.placements:
            plus, minus = tile_cells(tile, placement, spec)
            dg[index[placement.array]][plus] += block
            dg[index[placement.array]][minus] -= block
    return dg


def evaluate_chip(session_graph, backend, data: Dataset, batch: int = 100) -> float:
    feeds = check_feeds(session_graph, data.inputs, "tuning data")
    out_name = session_graph.outputs[0].name
    correct, n = 0, len(data)
    for start in range(0, n, batch):
        part = {k: v[start:start + batch] for k, v in feeds.items()}
        y = run_graph(session_graph, part, backend)[out_name]
        correct += int((y.reshape(len(y), -1).argmax(1) == data.labels[start:start + batch]).sum())
    return correct / n


def per_copy_accuracy(graph, backend, data: Dataset, batch: int = 100) -> list[float]:
    """Accuracy with every sample sent through copy k of the replicated layers, k = 0..copies-1 (the paper's
    G1..G3 table); empty when nothing is replicated."""
    copies = max(op.replicas for op in graph.xbar_ops())
    result = []
    for k in range(copies if copies > 1 else 0):
        backend.copy = k
        result.append(evaluate_chip(graph, backend, data, batch))
    backend.copy = None
    return result


def tune(manifest, data: Dataset, seed: int = 0, overrides=None, defect_map=None, ideal: bool = False,
         epochs: int = 1, batch: int = 100, lr: float = 0.004, threshold_us: float = 1.5, layer: str | None = None,
         write_verify: int = 0, verify_tolerance_us: float | None = None, progress: bool = False):
    """Hybrid training of one layer on chip instance `seed`. Returns (tuned Manifest, TuneResult)."""
    if data.labels is None:
        raise DataError(f"{data.path or 'tuning data'}: hybrid training needs labels ('y')")
    for name, value, ok in (("--epochs", epochs, epochs >= 1), ("--batch", batch, batch >= 1),
                            ("--lr", lr, lr > 0), ("--threshold", threshold_us, threshold_us >= 0),
                            ("--write-verify", write_verify, write_verify >= 0)):
        if not ok:
            raise ConfigError(f"{name} {value}: out of range")
    start_time = time.perf_counter()
    graph = copy_module.deepcopy(manifest.graph)
    backend = CrossbarBackend(seed=seed, overrides=overrides, defect_map=defect_map, ideal=ideal)
    backend.bind(graph, manifest.arrays, manifest.target)
    # a manifest tuned before on this very chip continues from what was programmed then
    previous = manifest.provenance.get("tuning")
    resumed = backend.apply_tuning(previous, manifest.conductances)
    op = tuned_layer(graph, layer)
    if op.replicas != 1:
        raise ConfigError(f"layer {op.name!r} has {op.replicas} copies; hybrid training tunes a shared layer "
                          "(compile it with --replicate {op.name}=1)")
    target = backend.target
    array_ids = sorted({p.array for t in op.tiles for p in t.placements})
    writer = _Writer(backend, array_ids, seed, write_verify, verify_tolerance_us)
    if resumed:
        writer.resume(manifest.conductances, round_=2 + len(manifest.provenance.get("previous_tunings", [])))
    labels = data.labels
    n_classes = op.cols
    if labels.min() < 0 or labels.max() >= n_classes:
        raise DataError(f"{data.path or 'tuning data'}: labels must lie in 0..{n_classes - 1} (layer {op.name!r} "
                        f"has {n_classes} outputs)")
    before_copies = per_copy_accuracy(graph, backend, data, batch)
    before = evaluate_chip(graph, backend, data, batch)
    feeds = check_feeds(graph, data.inputs, "tuning data")
    n = len(data)
    order_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[1])    # the shuffling stream
    bar = Progress("cimc tune", epochs * -(-n // batch), progress)
    iterations, correct_run, seen = 0, 0, 0
    scales = op.weight_scales.astype(np.float64)
    s_x = op.input_quant.scale
    for _epoch in range(epochs):
        order = order_rng.permutation(n)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            part = {k: v[idx] for k, v in feeds.items()}
            out = run_graph(graph, part, backend, keep={op.inputs[0], op.outputs[0]})
            x, z = out[op.inputs[0]], out[op.outputs[0]].astype(np.float64)
            z = z.reshape(len(idx), -1)
            v = quantize_activation(x, op.input_quant).astype(np.float64).reshape(len(idx), -1) * s_x
            p = _softmax(z)
            correct_run += int((p.argmax(1) == labels[idx]).sum())
            seen += len(idx)
            p[np.arange(len(idx)), labels[idx]] -= 1.0
            dw = -lr * (v.T @ p)                                              # K x N, weight units
            dlevel = dw / scales[None, :]
            dg = _pair_changes(op, dlevel, target, array_ids, target.device.step_us)
            dg[2 * np.abs(dg) < threshold_us] = 0.0     # each device holds half of the pair's change
            writer.write(dg)
            iterations += 1
            bar.update(iterations, f"running accuracy {correct_run / seen:.4f}, writes {writer.writes}")
    bar.close()
    after = evaluate_chip(graph, backend, data, batch)
    after_copies = per_copy_accuracy(graph, backend, data, batch)
    per_copy = [{"copy": k, "accuracy_before": b, "accuracy_after": a}
                for k, (b, a) in enumerate(zip(before_copies, after_copies))]
    result = TuneResult(before, after, writer.writes, writer.on_stuck, writer.verify_iterations, iterations,
                        op.name, array_ids, time.perf_counter() - start_time, per_copy)
    tuned = _tuned_manifest(manifest, graph, op, writer, backend, data, seed, overrides, defect_map,
                            dict(epochs=epochs, batch=batch, lr=lr, threshold_us=threshold_us,
                                 write_verify=write_verify), result)
    return tuned, result


def _tuned_manifest(manifest, graph, op, writer, backend, data, seed, overrides, defect_map, options, result):
    from cimc.manifest import Manifest
    target = manifest.target
    dev = target.device
    arrays = manifest.arrays.copy()
    nearest = np.clip(np.rint((writer.target - dev.g_min_us) / dev.step_us), 0, dev.max_level).astype(np.uint8)
    arrays[writer.ids] = nearest
    graph = copy_module.deepcopy(manifest.graph)
    tuned_op = next(o for o in graph.xbar_ops() if o.name == op.name)
    levels = read_levels(tuned_op, arrays, target)     # int16: up to 256-level devices
    tuned_op.levels = levels   # the float matrix stays the source model's: the float backend still proves lowering
    provenance = copy_module.deepcopy(manifest.provenance)
    if provenance.get("tuning"):   # tuned before: keep the history
        provenance.setdefault("previous_tunings", []).append(provenance["tuning"])
    provenance["tuning"] = {
        "layer": op.name, "seed": seed, "chip": as_json_value(backend.chip_identity()),
        "chip_options": {"overrides": list(overrides or [])},
        "data": {"path": data.path, "sha256": data.sha256, "samples": len(data)}, **options,
        "writes": result.writes, "write_attempts_on_stuck": result.write_attempts_on_stuck,
        "verify_iterations": result.verify_iterations, "iterations": result.iterations,
        "accuracy_before": result.accuracy_before, "accuracy_after": result.accuracy_after,
    }
    tuned = Manifest(graph, target, arrays, provenance, manifest.replication, manifest.estimates)
    tuned.conductances = {"arrays": writer.ids.astype(np.int64), "programmed_us": writer.g.astype(np.float64),
                          "target_us": writer.target.astype(np.float64)}
    return tuned
