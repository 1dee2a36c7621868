"""Hybrid training (Yao et al. 2020): program the arrays, then train only the last fully connected layer in situ
on that same chip instance, and write the updated manifest. `layers=[...]` (`cimc tune --layers`) trains several
layers the same way, the gradient back-propagated from the logits through the ops between them (cimc.backprop);
each tuned layer gets its own eta by the rule of step 2 (a conv's divided by its output positions).

One iteration on a mini-batch (inputs X, labels y):
1. Forward on the chip (the crossbar backend, chip instance `seed`): the FC layer's input x and its output z.
2. In software: softmax cross-entropy, delta = softmax(z) - onehot(y) per sample; the FC input the array saw is
   V = q * s_x (q its 8-bit codes); as in Yao et al., the update is the gradient summed over the mini-batch,
   dW = -eta * sum_i V_i delta_i (the batch size scales the step).
   `lr` fixes eta relative to the layer, so that it means the same on any network: eta = lr * s_ref / (s_x * q_max),
   with s_ref the layer's mean weight scale (the weight of one device level) and s_x * q_max the full scale of its
   input quantiser. So `lr` is the change of a weight, in device levels, that one sample with a full-scale input and
   an output error of 1 asks for; rescaling a layer's inputs by c and its weights by 1/c leaves the tuning unchanged
   (an absolute eta did not: on a pretrained ResNet-56 its steps never reached the threshold).
3. To conductances: weight w[k, n] = s_w[n] * (G+ - G-) / step, so the pair must change by dG = dW / s_w * step.
   Each device takes half, in opposite directions: G+ += dG/2, G- -= dG/2 (equal and opposite).
4. Thresholded writes: a pair is rewritten only where the weight change in conductance units |dG| is at least the
   threshold (Yao: |dW| >= 1.5 uS); smaller changes are dropped. Each of its two devices gets a new goal: its
   previous goal plus its half of the change, clipped to [g_min, g_max], and is programmed to it with the target's
   programming error (a fresh draw from the tuning generator; the controller programs towards the goals it keeps,
   so errors do not add up over writes), repeated up to `write_verify` more times while it misses the goal by more
   than `verify_tolerance_us`. Stuck devices ignore writes. Nothing else is written. With a pulse model (the target's
   `[pulse]`, cimc.targets.pulse_update) each device is pulsed from what it holds towards its goal instead (the
   model's own write-verify), and `pulses` is reported beside `writes` (devices pulsed at least once).
Steps 3-4 are the differential pair's. Under the offset and bit-sliced weight encodings (target [weights]) each
device's new goal comes from cimc.encoded_writes instead (offset: the weight's one device takes the whole change;
bit-sliced: the integer change applied to the whole weight, carries included, and only the slices whose level
changes are written), and is programmed the same way; writes and pulses count the devices written.
Drift is not applied during tuning (the tuning happens right after programming).

Held-out data: the last `holdout` fraction of the tuning data (at least one sample) is never trained on; the chip
is scored on it before tuning and after every epoch. With keep="best" (the default) the manifest records the chip
state (the conductances at the end of an epoch, or before tuning) that scored best on it, the latest on ties, so the
written chip is never worse on the held-out part than the chip before tuning. If that is not the final state, the
physical chip holds the final state and has to be reprogrammed to the recorded one; the result says which state was
kept and why. An epoch that writes fewer than 0.1% of the layer's devices raises a warning that says what to change.

The tuned manifest holds the FC arrays' nearest device levels in arrays.npz (what an ideal re-transfer would
program) and, in conductances.npz, the exact conductances programmed on this chip instance; the crossbar backend
uses those when it runs the same chip instance (same seed and chip options), so `cimc run DIR2 --seed S`
reproduces the tuned accuracy exactly.
"""
from __future__ import annotations

import copy as copy_module
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from cimc import backprop, encoded_writes
from cimc.backends.crossbar import CrossbarBackend, as_json_value
from cimc.data import Dataset, check_labels
from cimc.errors import ConfigError, DataError
from cimc.evaluate import Progress
from cimc.graph_run import check_feeds, run_graph
from cimc.ir import XbarOp
from cimc.node_names import unknown_layer
from cimc.layout import read_levels, tile_cells
from cimc.weight_encoding import encoded
from cimc.targets.pulse_update import PulsedDevices
from cimc.tune_defaults import DEFAULT_HOLDOUT, DEFAULT_LR

FEW_WRITES = 1e-3          # an epoch writing fewer than this share of the layer's devices gets a warning


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
    writes_per_epoch: list[int] = field(default_factory=list)
    largest_update_us_per_epoch: list[float] = field(default_factory=list)
    devices: int = 0                     # devices of the tuned layers' weights (pairs, slices or one each)
    lr_weight_units: float = 0.0         # eta of dW = -eta * sum_i V_i delta_i that `lr` gave on this layer
    holdout: dict = field(default_factory=dict)
    kept: str = "final"                  # "final" or "best" (an earlier state, see holdout["kept_epoch"])
    kept_reason: str = ""
    warnings: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)           # the tuned layers, in execution order
    writes_per_layer: dict = field(default_factory=dict)
    # programming pulses: with a pulse model its SET/RESET pulses, else one per write and per write-verify retry
    pulses: int = 0
    pulses_per_layer: dict = field(default_factory=dict)
    pulse_model: dict | None = None      # with a pulse model: {"model", "total", "set", "reset"} (else left out)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not (k == "pulse_model" and v is None)}


def tuned_layers(graph, names=None, flag: str = "--layers") -> list[XbarOp]:
    """The layers to tune, in execution order: `names` (ONNX node names), or the last crossbar op. Each must own its
    arrays, be read once per inference and have one copy; every op between them and the logits needs a backward
    pass (cimc.backprop.path refuses the others)."""
    ops = graph.xbar_ops()
    chosen = []
    for name in (names or [ops[-1].name]):
        op = next((o for o in ops if o.name == name), None)
        if op is None:
            raise ConfigError(unknown_layer(flag, name, [o.name for o in ops]))
        if op.weights_of is not None or graph.readers(op.name):
            raise ConfigError(f"layer {op.name!r} shares its arrays with the reads of other time steps (a recurrent "
                              "layer); hybrid training tunes a layer read once per inference: name another with "
                              f"{flag}")
        if op.replicas != 1:
            raise ConfigError(f"layer {op.name!r} has {op.replicas} copies; hybrid training tunes a shared layer "
                              f"(compile it with --replicate {op.name}=1)")
        if op not in chosen:
            chosen.append(op)
    order = {id(o): i for i, o in enumerate(ops)}
    return sorted(chosen, key=lambda o: order[id(o)])


def tuned_layer(graph, name: str | None) -> XbarOp:
    """One layer to tune (`tuned_layers` with one name)."""
    return tuned_layers(graph, None if name is None else [name], "--layer")[0]


def _classes(graph, op: XbarOp) -> int:
    """Classes the labels index: the logits' size per sample (the last tuned layer's outputs when unknown)."""
    info = graph.tensors.get(backprop.logits_tensor(graph))
    dims = [] if info is None else list(info.shape[1:])
    return int(np.prod(dims)) if dims and all(isinstance(d, int) for d in dims) else op.cols


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
        self.writes = self.on_stuck = self.verify_iterations = self.pulses = 0
        # the target's pulse model (cimc.targets.pulse_update): writes become SET/RESET pulses; ideal = none
        self.pulsed = None if backend.ideal else PulsedDevices.for_target(
            backend.target, backend.chip.conductance_us.shape, seed)

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
        self._commit(mask, np.clip(self.target[mask] + dg[mask], self.g_min, self.g_max))

    def write_goals(self, mask: np.ndarray, goals: np.ndarray) -> None:
        """Program the devices of `mask` towards `goals` ([arrays, rows, cols], uS): the other encodings' writes
        (cimc.encoded_writes), which compute the goals themselves."""
        self.on_stuck += int((mask & self.stuck).sum())
        mask = mask & ~self.stuck
        if mask.any():
            self._commit(mask, goals[mask])

    def _commit(self, mask: np.ndarray, goal: np.ndarray) -> None:
        """Program the devices of `mask` towards `goal` (their new goals, in mask order) and count the writes."""
        if self.pulsed is not None:
            return self._pulse(mask, goal)
        got = self._program(goal)
        self.pulses += got.size
        for _ in range(self.write_verify):
            miss = np.abs(got - goal) > self.tolerance
            if not miss.any():
                break
            self.verify_iterations += 1
            self.pulses += int(miss.sum())
            got[miss] = self._program(goal[miss])
        self.g[mask], self.target[mask] = got, goal
        self.writes += int(mask.sum())
        self.backend.set_conductances(self.ids, self.g)

    def _pulse(self, mask: np.ndarray, goal: np.ndarray) -> None:
        """Pulses from what the devices hold towards their goals; a write is a device pulsed at least once."""
        a, r, c = np.nonzero(mask)
        got, n_set, n_reset = self.pulsed.write(self.g[mask], goal, self.rng, (self.ids[a], r, c))
        self.g[mask], self.target[mask] = got, goal
        self.writes += int(np.count_nonzero(n_set + n_reset))
        self.pulses += int(np.sum(n_set) + np.sum(n_reset))
        self.backend.set_conductances(self.ids, self.g)

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """The chip state of the tuned arrays: what the devices hold and the goals they were last given."""
        return self.g.copy(), self.target.copy()

    def restore(self, state: tuple[np.ndarray, np.ndarray]) -> None:
        self.g, self.target = state[0].copy(), state[1].copy()
        self.backend.set_conductances(self.ids, self.g)

    def _program(self, goal: np.ndarray) -> np.ndarray:
        return self.backend.chip.program(goal, self.rng)


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


def write_update(writer: _Writer, op: XbarOp, dlevel: np.ndarray, target, array_ids: list[int],
                 threshold_us: float) -> float:
    """Write the thresholded change `dlevel` (K x N, weight levels) of the op's weights on the chip; returns the
    largest change asked for, in conductance units (|dlevel| * step, what the threshold compares)."""
    if encoded(target):         # offset, bit-sliced: each device's new goal (cimc.encoded_writes)
        writer.write_goals(*encoded_writes.new_goals(op, dlevel, target, array_ids, writer.target, threshold_us))
        return float(np.abs(dlevel).max()) * target.device.step_us
    dg = _pair_changes(op, dlevel, target, array_ids, target.device.step_us)
    largest = 2 * float(np.abs(dg).max())            # the pair's change, as the threshold
    dg[2 * np.abs(dg) < threshold_us] = 0.0          # each device holds half of the pair's change
    writer.write(dg)
    return largest


def _correct(graph, backend, feeds: dict, labels: np.ndarray, batch: int) -> np.ndarray:
    """Per sample: whether the chip's top-1 class is the label."""
    out_name = graph.outputs[0].name
    n = len(labels)
    hits = np.zeros(n, bool)
    for start in range(0, n, batch):
        part = {k: v[start:start + batch] for k, v in feeds.items()}
        y = run_graph(graph, part, backend, samples=start)[out_name]  # noise by index, as in cimc run
        hits[start:start + batch] = y.reshape(len(y), -1).argmax(1) == labels[start:start + batch]
    return hits


def evaluate_chip(session_graph, backend, data: Dataset, batch: int = 100) -> float:
    feeds = check_feeds(session_graph, data.inputs, data.path or "tuning data")
    return float(_correct(session_graph, backend, feeds, data.labels, batch).mean())


def per_copy_accuracy(graph, backend, data: Dataset, batch: int = 100) -> list[float]:
    """Accuracy with every sample sent through copy k of the replicated layers, k = 0..copies-1 (the paper's
    G1..G3 table); empty when nothing is replicated."""
    copies = max(op.replicas for op in graph.xbar_ops())
    result = []
    for k in range(copies if copies > 1 else 0):
        backend.use_copy(k)
        result.append(evaluate_chip(graph, backend, data, batch))
    backend.use_copy(None)
    return result


def check_options(epochs: int = 1, batch: int = 100, lr: float = DEFAULT_LR, threshold_us: float = 1.5,
                  write_verify: int = 0, verify_tolerance_us: float | None = None,
                  holdout: float = DEFAULT_HOLDOUT, keep: str = "best") -> None:
    """Refuse, naming the flag, any tuning option that cannot mean anything (before any work is done)."""
    def number(value) -> bool:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)

    def finite(value) -> bool:
        return number(value) and math.isfinite(value)

    checks = (
        ("--epochs", epochs, number(epochs) and int(epochs) == epochs and epochs >= 1, "a whole number >= 1"),
        ("--batch", batch, number(batch) and int(batch) == batch and batch >= 1, "a whole number >= 1"),
        ("--lr", lr, finite(lr) and lr > 0, "a finite number > 0 (device levels per full-scale sample, "
         f"default {DEFAULT_LR})"),
        ("--threshold", threshold_us, finite(threshold_us) and threshold_us >= 0,
         "a finite conductance >= 0, e.g. 1.5uS"),
        ("--write-verify", write_verify, number(write_verify) and int(write_verify) == write_verify
         and write_verify >= 0, "a whole number >= 0"),
        ("--verify-tolerance", verify_tolerance_us,
         verify_tolerance_us is None or (finite(verify_tolerance_us) and verify_tolerance_us >= 0),
         "a finite conductance >= 0, e.g. 0.5uS"),
        ("--holdout", holdout, finite(holdout) and 0 < holdout < 1,
         f"a fraction strictly between 0 and 1 (default {DEFAULT_HOLDOUT}: the last 20% of --data)"),
        ("--keep", keep, keep in ("best", "final"), "'best' or 'final'"),
    )
    for flag, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{flag} {value}: out of range; expected {expected}")


def _split(data: Dataset, holdout: float) -> tuple[int, int]:
    """(training samples, held-out samples): the held-out part is the last round(holdout * n), at least 1."""
    n = len(data)
    n_hold = max(1, int(round(holdout * n)))
    if n - n_hold < 1:
        raise DataError(f"{data.path or 'tuning data'}: {n} sample(s) cannot be split into training and a held-out "
                        f"part (--holdout {holdout}); give at least 2 labelled samples, better several hundred")
    return n - n_hold, n_hold


def _layer_devices(op: XbarOp, target) -> int:
    if encoded(target):
        return encoded_writes.layer_devices(op, target)
    return sum(2 * t.row_count * t.col_count * len(t.placements) for t in op.tiles)


def _few_writes_warning(ops, epoch: int, epochs: int, writes: int, devices: int, largest_us: float,
                        threshold_us: float, lr: float, running_accuracy: float, least_us: float = 0.0) -> str:
    what = "no device" if writes == 0 else f"only {writes} of {devices} devices"
    if 0 < largest_us < least_us and largest_us >= threshold_us:   # bit slices: below half a level rounds to none
        hint = (f"the largest change asked for, {largest_us:.3g} uS, stayed below half a weight level "
                f"({least_us:.3g} uS), the least change a bit-sliced weight takes; raise --lr (now {lr:g}) about "
                f"{least_us / largest_us:.2g}x")
    elif largest_us < threshold_us:
        factor = f" about {threshold_us / largest_us:.2g}x" if largest_us > 0 else ""
        hint = (f"the largest change asked for, {largest_us:.3g} uS, stayed below --threshold {threshold_us:g}uS; "
                f"raise --lr (now {lr:g}){factor} or lower --threshold")
    else:
        hint = (f"few changes reached --threshold {threshold_us:g}uS (the largest was {largest_us:.3g} uS); raise "
                f"--lr (now {lr:g}) or lower --threshold for more")
    which = f"layer {ops[0].name!r}" if len(ops) == 1 else f"layers {', '.join(repr(o.name) for o in ops)}"
    return (f"tuning epoch {epoch} of {epochs} wrote {what} of {which} (fewer than {FEW_WRITES:.1%} of its "
            f"{devices} devices): {hint}. Running accuracy on the tuning data: {running_accuracy:.4f}; if that is "
            "as good as this chip gets, the layer has converged, otherwise the chip was hardly tuned")


def tune(manifest, data: Dataset, seed: int = 0, overrides=None, defect_map=None, ideal: bool = False,
         epochs: int = 1, batch: int = 100, lr: float = DEFAULT_LR, threshold_us: float = 1.5,
         layer: str | None = None, layers: list[str] | None = None, write_verify: int = 0,
         verify_tolerance_us: float | None = None,
         progress: bool = False, holdout: float = DEFAULT_HOLDOUT, keep: str = "best", gemm: str | None = None,
         layer_lr: dict | None = None):
    """Hybrid training of `layer`, or of `layers` (default: the last crossbar layer), on chip instance `seed`, with
    `layer_lr` {name: lr} overriding `lr` per layer. Returns (tuned Manifest, TuneResult).
    Warnings (an epoch that hardly wrote, a kept state that is not the final one) go through `warnings.warn` and
    are also listed in the result. `gemm`: the chip's reader, as CrossbarBackend's (None: the same default as
    `cimc run --backend crossbar`, so the tuned chip reads as it then runs)."""
    check_options(epochs, batch, lr, threshold_us, write_verify, verify_tolerance_us, holdout, keep)
    for name, value in (layer_lr or {}).items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"--layer-lr {name}={value}: out of range; expected a finite number > 0")
    if data.labels is None:
        raise DataError(f"{data.path or 'tuning data'}: hybrid training needs labels ('y')")
    start_time = time.perf_counter()
    graph = copy_module.deepcopy(manifest.graph)
    backend = CrossbarBackend(seed=seed, overrides=overrides, defect_map=defect_map, ideal=ideal, gemm=gemm)
    backend.bind(graph, manifest.arrays, manifest.target)
    # a manifest tuned before on this very chip continues from what was programmed then
    previous = manifest.provenance.get("tuning")
    resumed = backend.apply_tuning(previous, manifest.conductances)
    if layer is not None and layers:
        raise ConfigError("--layer and --layers: give one of them (--layers NAME[,NAME...] names every layer to tune)")
    flag = "--layer" if layer is not None else "--layers"
    chosen = tuned_layers(graph, [layer] if layer is not None else layers, flag)
    ops_on_path = backprop.path(graph, chosen, flag)
    stray = sorted(set(layer_lr or {}) - {o.name for o in chosen})
    if stray:
        raise ConfigError(f"--layer-lr: {stray} not among the tuned layers {[o.name for o in chosen]}; name them "
                          "with --layers")
    op = chosen[-1]
    target = backend.target
    labels = data.labels
    check_labels(labels, _classes(graph, op), data.path or "tuning data")     # the logits are the classes
    array_ids = sorted({p.array for o in chosen for t in o.tiles for p in t.placements})
    writer = _Writer(backend, array_ids, seed, write_verify, verify_tolerance_us)
    if writer.pulsed is not None and (write_verify or verify_tolerance_us is not None):
        raise ConfigError("--write-verify/--verify-tolerance: the target has a pulse model (pulse.model = "
                          f"{writer.pulsed.model.kind!r}), whose writes verify by pulses: set "
                          "pulse.verify_tolerance_us and pulse.max_pulses (e.g. --set pulse.verify_tolerance_us=0.5) "
                          "instead")
    if resumed:
        writer.resume(manifest.conductances, round_=2 + len(manifest.provenance.get("previous_tunings", [])))
    n_train, n_hold = _split(data, holdout)
    feeds = check_feeds(graph, data.inputs, data.path or "tuning data")
    held_feeds = {k: v[n_train:] for k, v in feeds.items()}
    held_labels = labels[n_train:]
    before_copies = per_copy_accuracy(graph, backend, data, batch)
    before = evaluate_chip(graph, backend, data, batch)
    held = [float(_correct(graph, backend, held_feeds, held_labels, batch).mean())]   # before, after each epoch
    best_epoch, best_state = 0, writer.state()
    order_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[1])    # the shuffling stream
    bar = Progress("cimc tune", epochs * -(-n_train // batch), progress)
    iterations = 0
    # lr in device levels -> weight units, per layer (module doc)
    # a conv's gradient sums over its output positions: per position it asks what one sample asks of a matmul
    rates = {o.name: (layer_lr or {}).get(o.name, lr) for o in chosen}
    etas = {o.name: rates[o.name] * float(o.weight_scales.astype(np.float64).mean())
            / (o.input_quant.scale * o.input_quant.qmax) / o.positions for o in chosen}
    devices = sum(_layer_devices(o, target) for o in chosen)
    writes_per_layer = {o.name: 0 for o in chosen}
    pulses_per_layer = {o.name: 0 for o in chosen}
    logits = backprop.logits_tensor(graph)
    # the forward tensors the backward pass reads
    kept_tensors = {t for o in ops_on_path for t in list(o.inputs) + list(o.outputs) if t and t not in graph.constants}
    kept_tensors.add(logits)
    writes_per_epoch, largest_per_epoch, messages = [], [], []
    for epoch in range(1, epochs + 1):
        order = order_rng.permutation(n_train)
        writes_at_start, largest, correct_run, seen = writer.writes, 0.0, 0, 0
        for start in range(0, n_train, batch):
            idx = order[start:start + batch]
            part = {k: v[idx] for k, v in feeds.items()}
            out = run_graph(graph, part, backend, keep=kept_tensors)
            z = out[logits].astype(np.float64).reshape(len(idx), -1)
            p = _softmax(z)
            correct_run += int((p.argmax(1) == labels[idx]).sum())
            seen += len(idx)
            p[np.arange(len(idx)), labels[idx]] -= 1.0
            # the chip's weights of the crossbar layers the gradient passes through (before any write of this batch)
            chip_w = {o.name: backprop.chip_weights(o, backend.chip.conductance_us, target)
                      for o in ops_on_path[1:] if isinstance(o, XbarOp)}
            grads = backprop.gradients(graph, ops_on_path, out, p, chosen, chip_w)
            for o in chosen:
                dw = -etas[o.name] * grads[o.name]                            # K x N, weight units
                dlevel = dw / o.weight_scales.astype(np.float64)[None, :]
                before_write, before_pulses = writer.writes, writer.pulses
                largest = max(largest, write_update(writer, o, dlevel, target, array_ids, threshold_us))
                writes_per_layer[o.name] += writer.writes - before_write
                pulses_per_layer[o.name] += writer.pulses - before_pulses
            iterations += 1
            bar.update(iterations, f"epoch {epoch}/{epochs}, running accuracy {correct_run / seen:.4f}, "
                       f"writes {writer.writes}")
        writes_per_epoch.append(writer.writes - writes_at_start)
        largest_per_epoch.append(largest)
        if writes_per_epoch[-1] < FEW_WRITES * devices:
            messages.append(_few_writes_warning(chosen, epoch, epochs, writes_per_epoch[-1], devices, largest,
                                                threshold_us, lr, correct_run / seen,
                                                encoded_writes.least_change_us(target)))
        held.append(float(_correct(graph, backend, held_feeds, held_labels, batch).mean()))
        if held[-1] >= held[best_epoch]:      # the latest of equally good states
            best_epoch, best_state = epoch, writer.state()
    bar.close()
    kept, kept_epoch = "final", epochs
    reason = (f"the final state; held-out accuracy {held[0]:.4f} before tuning, {held[-1]:.4f} after")
    if keep == "best" and best_epoch != epochs:
        kept, kept_epoch = "best", best_epoch
        writer.restore(best_state)
        when = "before tuning" if best_epoch == 0 else f"after epoch {best_epoch}"
        reason = (f"the state {when}: it scored {held[best_epoch]:.4f} on the held-out part "
                  f"({n_hold} samples, the last {holdout:.0%} of the tuning data), the final state {held[-1]:.4f}")
        messages.append(f"tuning made the chip worse on the held-out data ({held[-1]:.4f} after epoch {epochs} "
                        f"against {held[best_epoch]:.4f} {when}): the manifest records the state {when}. The chip "
                        "was written meanwhile, so a physical chip has to be reprogrammed to it (the simulated chip "
                        "runs it as recorded); --keep final keeps the last state instead")
    elif held[-1] < held[0]:
        messages.append(f"the final state scores worse on the held-out data than the chip before tuning "
                        f"({held[-1]:.4f} against {held[0]:.4f}); it is kept because of --keep final (the default, "
                        "--keep best, would keep the better state)")
    for message in messages:
        warnings.warn(message, stacklevel=2)
    after = evaluate_chip(graph, backend, data, batch)
    after_copies = per_copy_accuracy(graph, backend, data, batch)
    per_copy = [{"copy": k, "accuracy_before": b, "accuracy_after": a}
                for k, (b, a) in enumerate(zip(before_copies, after_copies))]
    held_out = {"fraction": holdout, "samples": n_hold, "first_sample": n_train, "accuracy_before": held[0],
                "accuracy_per_epoch": held[1:], "accuracy_after": held[kept_epoch], "kept_epoch": kept_epoch}
    names = [o.name for o in chosen]
    result = TuneResult(before, after, writer.writes, writer.on_stuck, writer.verify_iterations, iterations,
                        ",".join(names), array_ids, time.perf_counter() - start_time, per_copy, writes_per_epoch,
                        largest_per_epoch, devices, etas[op.name], held_out, kept, reason, messages, names,
                        writes_per_layer, writer.pulses, pulses_per_layer,
                        pulse_model=None if writer.pulsed is None else writer.pulsed.counts())
    options = dict(epochs=epochs, batch=batch, lr=lr, lr_units="device levels per full-scale sample",
                   lr_weight_units=etas[op.name], threshold_us=threshold_us, write_verify=write_verify,
                   holdout=holdout, keep=keep)
    if len(chosen) > 1:     # several layers: their names, per-layer rates and writes (one layer's record as before)
        options.update(layers=names, lr_weight_units_per_layer=etas, writes_per_layer=writes_per_layer,
                       pulses=writer.pulses, pulses_per_layer=pulses_per_layer)
    tuned = _tuned_manifest(manifest, graph, chosen, writer, backend, data, seed, overrides, defect_map, options,
                            result)
    return tuned, result


def _tuned_manifest(manifest, graph, chosen, writer, backend, data, seed, overrides, defect_map, options, result):
    from cimc.manifest import Manifest
    target = manifest.target
    dev = target.device
    arrays = manifest.arrays.copy()
    nearest = np.clip(np.rint((writer.target - dev.g_min_us) / dev.step_us), 0, dev.max_level).astype(np.uint8)
    arrays[writer.ids] = nearest
    graph = copy_module.deepcopy(manifest.graph)
    for op in chosen:
        tuned_op = next(o for o in graph.xbar_ops() if o.name == op.name)
        # int16: up to 256-level devices; the float matrix stays the source model's (the float backend still
        # proves lowering)
        tuned_op.levels = read_levels(tuned_op, arrays, target)
    provenance = copy_module.deepcopy(manifest.provenance)
    if provenance.get("tuning"):   # tuned before: keep the history
        provenance.setdefault("previous_tunings", []).append(provenance["tuning"])
    provenance["tuning"] = {
        "layer": result.layer, "seed": seed, "chip": as_json_value(backend.chip_identity()),
        "chip_options": {"overrides": list(overrides or [])},
        "data": {"path": data.path, "sha256": data.sha256, "samples": len(data)}, **options,
        "writes": result.writes, "write_attempts_on_stuck": result.write_attempts_on_stuck,
        "verify_iterations": result.verify_iterations, "iterations": result.iterations,
        "accuracy_before": result.accuracy_before, "accuracy_after": result.accuracy_after,
        "writes_per_epoch": result.writes_per_epoch, "held_out": result.holdout, "kept": result.kept,
        "kept_reason": result.kept_reason,
        **({"pulse_model": result.pulse_model} if result.pulse_model else {}),
    }
    tuned = Manifest(graph, target, arrays, provenance, manifest.replication, manifest.estimates)
    tuned.conductances = {"arrays": writer.ids.astype(np.int64), "programmed_us": writer.g.astype(np.float64),
                          "target_us": writer.target.astype(np.float64)}
    return tuned
