"""The `crossbar` backend: the chip that a manifest describes, simulated read by read.

The integer meaning of every quantity of one array read (input bit, current, ADC LSB, code, clip, shift, partial
sum) is written once, with a worked example, in docs/arithmetic.md; this module implements exactly that.

The parts: the chip instance (cimc.backends.chip: devices, ADC instances, identity), the ADC model
(cimc.targets.adc), the read plans (read_plan.py, built by plan_builder.py; ADC full scales: full_scale.py), and
one reader object, chosen once at bind (`reads`, its name `reader`; the interface: reader.py): bit-plane GEMMs
(plane_reader.py, float32, or int8: int8_reader.py), numba table reads (table_reader.py), one product per layer
for a lossless ADC (product_reader.py), or the ADC calibration's ideal reads (record_reader.py; the rule:
`calibrate_adc_full_scales`, here). This class binds them and walks the samples through their copies (copies.py).

* A **chip instance** is drawn at `bind()` for every physical array (cimc.backends.chip, seed `seed`; default 0).
  Conductances are kept in *step units* relative to g_min: G' = (g - g_min) / step = level + (g - g_target) / step,
  so an ideal device holds its level exactly; the g_min part of a line current is o * (number of driven rows) with
  o = g_min / step, added only where a physical current is needed (the ADC).
* **Inputs** (integer codes from the executor) go in bit-serially, LSB first: plane j holds bit j of the code, and
  signed codes use two's complement on `input.bits` bits, the MSB plane weighing -2^(bits-1). `input.encoding =
  "analog"` applies the code as one amplitude (q / qmax) * V_read instead (Li 2018).
* For each plane, each array line carries I = V_read * sum_r u_r g_r. Differential "columns" (Yao): the g+ and g-
  lines are converted separately by a unipolar ADC and the codes subtracted digitally; "rows" (Li): the input is
  applied as +u/-u on the two row blocks, the line carries the difference and one bipolar ADC converts it.
* ADC: `bits`, full scale FS, round to nearest (ties to even), clip to the code range; each line's ADC instance
  adds its gain, offset, INL and sense noise before rounding where the target sets them (cimc.targets.adc). Codes
  are shifted (times the plane weight) and added over planes and over the row tiles of a layer, then multiplied
  once by the LSB (in step units), which gives the accumulator in weight-level units: what the integer backend
  returns as sum_k q_k w_k.
* Weight encodings other than the pair (cimc.weight_encoding: offset, bit-sliced): every device line (or each
  slice's +v/-v line) is read and converted on its own, with its own read-noise draw and its own column's ADC, and
  the codes are combined after the ADC (cimc.backends.slice_lines; shifted by L^s and added, or the offset times
  the input sum subtracted, or, with an offset reference column, each tile's reference line - its array's last
  column on the tile's rows, devices at the offset level - read and converted with every read, its code subtracted
  from each of the tile's columns' codes); a lossless read is one product of the combined planes (g - g_ref).
* Row drivers (cimc.targets.drivers): a driver's gain error scales its row's conductances in the read plans; the
  analog DAC's bow (`input.dac_inl_lsb`) bends the codes before any read (`dac_amplitudes`).
* Wire and access resistance (cimc.targets.ir_drop): the chip reads each array through its circuit's effective
  conductances, computed once at bind (`Chip.read_us`), so every reader applies them; with `diagnostics` each layer
  also measures that fast path against the exact circuit solver on a sample of its reads (ir_check.py).
* FS per layer (full_scale.py): `adc.full_scale = "max"`: the largest current a line can carry (all array rows
  driven, every device at g_max; for "rows": half the rows at g_max - g_min); "calibrated": the largest ideal line
  current seen over the calibration set's reads (`calibrate_adc_full_scale`), stored per op as `adc_full_scale_ua`
  in the manifest, given as the option `adc_full_scale={op: uA}`, or computed at bind from `calibration=` data.
* **Lossless ADC** (`adc.lossless`, or `ideal=True`): every conversion is exact, so the g_min offsets cancel and the
  shift-and-add over planes is linear: the backend then forms sum_j w_j (plane_j . G') as one product x . G' (exact
  in real arithmetic and, for ideal devices, in float: every partial sum is an integer below 2^24, else float64),
  and adds read noise with the variance that the per-read noise of all planes adds up to. `simulate_planes=True`
  runs the planes one by one instead (same result). With ideal devices this equals the integer backend bit for bit.
* **Replicas**: the sample of global index i (cimc.backends.base: its index in the data set) runs on copy
  i % replicas of each op (each copy on its own, separately noisy arrays), whatever batch it is in; `copy=k` sends
  every sample through copy k % replicas. A direct `mvm`/`conv` call outside run_graph numbers its samples from 0.
  A layer compiled with averaging copies (`average` = a > 1, `cimc compile --copies-for accuracy|mix`) has
  replicas / a groups of a copies: sample i reads every copy of group i % groups (each with its own devices and its
  own read-noise stream, drawn as for any copy) and the backend averages their accumulators after the ADC and the
  shift-and-add, before the executor's scale and bias (copies.averaged). Ideal copies give the single copy's value bit
  for bit. Such a convolution is read through im2col (no direct table or onnxruntime reads).
* **GEMMs** (float32, int8) or numba table reads (lut), and the default reader: reader_choice.py.
* Read noise is drawn per sample: the sample of global index i reads layer l's copy c with its own generator,
  cimc.targets.devices.read_generator(seed, l, c, i), which draws its [planes, positions, lines] block of each row
  tile in turn (the planes' sum, [positions, lines], for a lossless read); chunks of reads hold whole samples. So
  the same seed gives a sample the same output at any batch size and with any other samples in its batch. Sense
  noise (ADC) is drawn the same way from its own streams (cimc.targets.adc.sense_generators): [planes, positions,
  lines] per sample and row tile.
"""
from __future__ import annotations

import copy as copy_module
import json

import numpy as np

from cimc.backends import ir_check, lut_reads
from cimc.backends.base import Backend
from cimc.backends.bit_planes import (FLOAT32_EXACT, bit_planes, bit_planes_uint,  # noqa: F401 (re-exported)
                                      plane_weights, rowwise_matmul, uint_codes)
from cimc.backends.chip import Chip
from cimc.backends.copies import averaged, by_copy, copy_samples
from cimc.backends.full_scale import resolve_full_scales
from cimc.backends.layer_stats import combine_layer_stats, new_stats, observe
from cimc.backends.plan_builder import PlanBuilder
from cimc.backends.read_plan import ReadPlan
from cimc.backends.reader import ReadContext, Reader
from cimc.backends.reader_choice import (DEFAULT_GEMM, GEMMS, choose_reader, conv_route,  # noqa: F401 (re-exported)
                                         default_gemm)
from cimc.backends.run_target import effective_target
from cimc.errors import ConfigError
from cimc.graph_run import check_feeds, run_graph
from cimc.im2col import col2im, im2col
from cimc.layout import program_arrays
from cimc.targets.adc import adc_convert, adc_range  # noqa: F401  (re-exported: the conversion rule)
from cimc.targets.drivers import dac_amplitudes  # noqa: F401  (re-exported)
from cimc.weight_encoding import encoded, require_pair


class CrossbarBackend(Backend):
    """`CrossbarBackend(seed=0, overrides=None, ideal=False, copy=None, defect_map=None, adc_full_scale=None,
    calibration=None, diagnostics=False, simulate_planes=False, gemm=None, conductance_grid=None)`.

    overrides: target overrides (["nonideal.program_sigma_us=0.54", ...] or a dict) applied to the manifest's target;
    ideal: ideal devices and a lossless ADC (then equal to the integer backend bit for bit); copy: force one replica;
    defect_map: npz path (cimc.targets.devices); adc_full_scale: {op name: uA}; calibration: input data to calibrate
    the ADC full scale at bind when the manifest holds none; diagnostics: per-layer error and clipping statistics
    (`layer_stats()`); simulate_planes: run every bit-plane even with a lossless ADC; gemm: "float32", "int8",
    "lut" or None, the default: "lut" where it applies, else "float32" (see the module doc and
    reader_choice.default_gemm); conductance_grid: the int8 or lut reader's grid (subdivisions of one step) instead
    of the finest that fits. `record_currents` is internal (`calibrate_adc_full_scale`)."""
    name = "crossbar"
    quantized = True

    def __init__(self, seed: int | None = None, overrides=None, ideal: bool = False, copy: int | None = None,
                 defect_map=None, adc_full_scale: dict | None = None, calibration=None, diagnostics: bool = False,
                 simulate_planes: bool = False, record_currents: bool = False, gemm: str | None = None,
                 conductance_grid: int | None = None):
        super().__init__(seed)
        self.chip_seed = 0 if seed is None else int(seed)
        self.overrides = overrides
        self.ideal = bool(ideal)
        self.copy = _replica_index(copy)
        self.defect_map = defect_map
        self.adc_full_scale = dict(adc_full_scale or {})
        self.calibration = calibration
        self.diagnostics = bool(diagnostics)
        self.simulate_planes = bool(simulate_planes)
        self.record_currents = bool(record_currents)
        if gemm is not None and gemm not in GEMMS:
            raise ConfigError(f"gemm={gemm!r}: choose one of {', '.join(GEMMS)} (or None: the fastest faithful "
                              "reader, see DEFAULT_GEMM)")
        if gemm == "lut":
            why = lut_reads.import_error()
            if why is not None:
                raise ConfigError(f"gemm='lut' (--gemm lut) runs a kernel compiled with numba, which cannot be "
                                  f"imported ({why}): pip install -e '.[fast]' (numba is a dependency of cimc), or "
                                  "choose gemm='float32' or 'int8'")
        if conductance_grid is not None and (not isinstance(conductance_grid, (int, np.integer))
                                             or conductance_grid < 1):
            raise ConfigError(f"conductance_grid={conductance_grid!r}: must be a positive integer (subdivisions "
                              "of one conductance step)")
        self.requested_gemm = gemm          # None: DEFAULT_GEMM where it applies, resolved at bind (default_gemm)
        self.gemm = gemm                    # the reader family in use, from bind on
        self.conductance_grid = conductance_grid
        self.stats: dict[str, dict] = {}
        self.reads: Reader | None = None    # the reader chosen at bind (reader_choice.choose_reader)

    def effective_target(self, target):
        """The target this backend reads for a manifest's (cimc.backends.run_target)."""
        return effective_target(target, self.overrides, self.ideal or self.record_currents)

    # -- bind ---------------------------------------------------------------------------------------------------------
    def bind(self, graph, arrays, target) -> None:
        self.graph = graph
        self.tuning_applied = False
        self.target = target = self.effective_target(target)
        if arrays is None:
            arrays = program_arrays(graph, target)
        self.arrays = arrays
        defect_map = None
        if not (self.ideal or self.record_currents):                    # ideal: no defects either
            defect_map = self.defect_map
            if defect_map is None:
                defect_map = target.nonideal.defect_map   # the target may name a measured defect map
        # the ADC calibration's chip is ideal: its levels are its conductances in step units (no float64 copy)
        self.chip = Chip(target, arrays, self.chip_seed, defect_map, levels_only=self.record_currents)
        if encoded(target):     # slices and offsets combined after a lossless ADC only, so far (cimc.weight_encoding)
            self._refuse_encoding(target)
        self.dac_inl = float(target.input.dac_inl_lsb) if target.input.encoding == "analog" else 0.0
        self.layer_index = {op.name: i for i, op in enumerate(graph.xbar_ops())}   # keys of the read-noise streams
        self._check_copy(self.copy)
        builder = PlanBuilder(graph, arrays, self.chip, calibrating=self.record_currents)
        self.plans = {op.name: builder.build(op) for op in graph.xbar_ops()}   # readers: the owner's devices
        calibrate = None if self.calibration is None else \
            (lambda: calibrate_adc_full_scales(graph, target, self.calibration, arrays=arrays))
        resolve_full_scales(self.plans, graph, target, self.offset, self.adc_full_scale, calibrate)
        # with line/access resistance the stats also hold the fast path's sampled error (ir_check)
        self.stats = new_stats(self.plans, wires=self.chip.read_us is not None)
        ctx = ReadContext(target, self.chip, self.chip_seed, self.layer_index, self.stats, self.diagnostics,
                          self.record_currents)
        self.gemm = self.requested_gemm or default_gemm(self.plans, target, self.chip, self.record_currents)
        self.reads = choose_reader(ctx, self.plans, self.gemm, self.conductance_grid, self.simulate_planes)
        self.grid = self.reads.grid
        self._route_convolutions()

    def _route_convolutions(self) -> None:
        for plan in self.plans.values():
            plan.conv_route = conv_route(plan, self.reads, self._averaging(plan), self.gemm, self.simulate_planes,
                                         self.dac_inl)

    def use_copy(self, copy: int | None) -> None:
        """Send every sample through replica `copy` of each replicated layer from now on (None: the manifest's own
        routing again), as CrossbarBackend(copy=...) would; the convolutions' routes follow (averaging copies are
        read one by one while a copy is forced)."""
        copy = _replica_index(copy)
        if getattr(self, "plans", None) is not None:
            self._check_copy(copy)
            self.copy = copy
            self._route_convolutions()
        else:
            self.copy = copy

    def _check_copy(self, copy: int | None) -> None:
        """A forced copy must exist in the bound manifest (some layer has that many copies)."""
        max_replicas = max((op.replicas for op in self.graph.xbar_ops()), default=1)
        if copy is not None and copy >= max_replicas:
            raise ConfigError(f"copy={copy}: the manifest's layers have at most {max_replicas} "
                              f"cop{'y' if max_replicas == 1 else 'ies'} (copies 0..{max_replicas - 1})")

    # the bound chip's, under the names callers and tests read
    @property
    def model(self):
        return self.chip.model                  # its DeviceModel

    @property
    def offset(self) -> float:
        return self.chip.offset                 # g_min in step units

    @property
    def read_sigma(self) -> float:
        return self.chip.read_sigma             # read noise in step units

    @property
    def reader(self) -> str | None:
        """How reads run (the name of the reader chosen at bind): "record" (ADC calibration), "product" (lossless:
        one product per layer), or every bit-plane as "float32" / "int8" GEMMs or "lut" table reads."""
        return None if self.reads is None else self.reads.name

    def chunk_workers(self) -> int:
        """Table reads (the lut reader) run one batch per core (cimc.concurrent_chunks), each batch's kernels on one
        thread: numba's thread count, where its threading layer takes kernels from several threads at once
        (lut_reads.concurrent_threads). Every other reader, and diagnostics or recorded currents (statistics
        added up as batches run), one batch at a time."""
        if self.reader != "lut" or self.diagnostics or self.record_currents:
            return 1
        return lut_reads.concurrent_threads()

    def worker_view(self) -> "CrossbarBackend":
        """The same bound chip and tables; its own batch indices and the reader's work arrays."""
        view = copy_module.copy(self)
        view.samples = None
        view.reads = self.reads.worker_view()
        return view

    def enter_worker(self) -> None:
        lut_reads.single_thread()

    def _refuse_encoding(self, target) -> None:
        if self.simulate_planes and target.adc.lossless:
            require_pair(target, "the crossbar backend with simulate_planes with a lossless ADC")

    # -- reads --------------------------------------------------------------------------------------------------
    def conv(self, op, x: np.ndarray) -> np.ndarray | None:
        """Calibration reads and bit-serial reads through a real ADC run im2col on the uint8 codes themselves
        ("record", "codes"). A lossless read without read noise is one exact product x . G' per copy (see the module
        doc): the whole convolution in onnxruntime, like the integer backend ("onnx"); the lut reader reads
        convolutions whose row tiles hold whole channels from their NHWC codes ("table"). Any other read goes
        bit-plane by bit-plane through the executor's im2col + mvm."""
        if not op.conv.planar:      # a Conv3d or ConvTranspose: the executor's operand + mvm
            return None
        plan = self.plans[op.name]
        route = plan.conv_route
        if route in ("record", "codes"):
            cols, shape = im2col(uint_codes(x, plan.bits, plan.signed), op.conv)
            out = col2im(self._by_copy(plan, cols, len(x), self.reads.read_codes), shape, op.conv)
            return out if route == "record" else self._compensate(plan, out, len(x))
        if route in ("table", "onnx"):        # the lut or the product reader's whole convolution
            return self._compensate(plan, self.reads.conv(op, plan, x, self._copies(plan, len(x))), len(x))
        return None

    def conv_output(self, op, x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None) -> np.ndarray | None:
        """Direct table reads also apply the executor's quantisation, in the pass that forms the plane words, and
        its dequantisation, in the pass that scales the codes. Not with global drift compensation: its per-copy
        scale is applied to the accumulators (`conv`)."""
        plan = self.plans[op.name]
        if not op.conv.planar or plan.conv_route != "table" or plan.dtype != np.float32 or \
                plan.drift_scale is not None:
            return None
        return self.reads.conv(op, plan, x, self._copies(plan, len(x)), (scale, bias), op.input_quant)

    def mvm(self, op, x: np.ndarray, batch: int) -> np.ndarray:
        plan = self.plans[op.name]
        applied = dac_amplitudes(x, max(abs(plan.qmin), plan.qmax), self.dac_inl) if plan.analog else x
        out = self._compensate(plan, self._by_copy(plan, applied, batch, self.reads.read), batch)
        if self.diagnostics:
            observe(self.stats, plan, x, out)
            if self.chip.read_us is not None:
                ir_check.measure(self, plan, op, x)
        return out

    def _compensate(self, plan: ReadPlan, out, batch: int):
        """Global drift compensation: each sample's outputs times its copy's alpha (digital, after the ADC)."""
        if plan.drift_scale is None or out is None or batch == 0:
            return out
        ids = self._sample_ids(batch)
        per_sample = out.reshape(batch, -1)
        for c, samples in self._copy_samples(plan, ids):
            per_sample[samples] *= out.dtype.type(plan.drift_scale[c])
        return out

    def _by_copy(self, plan: ReadPlan, x: np.ndarray, batch: int, run) -> np.ndarray:
        """Each sample's rows of x [m, K] through its copy (cimc.backends.copies.by_copy), the copies of an
        averaging group read and averaged."""
        ids = self._sample_ids(batch)
        run = averaged(run) if self._averaging(plan) else run
        return by_copy(plan, x, batch, run, ids, self._copy_samples(plan, ids))

    def _sample_ids(self, batch: int) -> np.ndarray:
        """The global indices of the batch's samples: those run_graph set; a direct call is a batch on its own,
        numbered from 0."""
        if self.samples is not None and len(self.samples) == batch:
            return self.samples
        return np.arange(batch, dtype=np.int64)

    def _copy_samples(self, plan: ReadPlan, ids: np.ndarray) -> list[tuple[int, object]]:
        """[(copy, the positions in the batch of the samples it reads)] (cimc.backends.copies.copy_samples)."""
        return copy_samples(plan, ids, self.copy, self._averaging(plan))

    def _copies(self, plan: ReadPlan, batch: int) -> list[tuple[int, object]]:
        return self._copy_samples(plan, self._sample_ids(batch))

    def _averaging(self, plan: ReadPlan) -> bool:
        """Copies averaged per sample: the plan says so, and no `copy=` forces one copy, and these are not the
        ideal calibration reads (every copy the same there)."""
        return plan.average > 1 and self.copy is None and not self.record_currents

    # -- in-situ writes (hybrid training) -------------------------------------------------------------------
    def set_conductances(self, array_ids, conductance_us: np.ndarray) -> None:
        """Overwrite the conductances of whole arrays on this chip instance (uS, [len(ids), rows, cols]) and
        rebuild the read plans of the layers placed on them (their ADC full scales stay)."""
        self.chip.set_conductances(array_ids, conductance_us)
        touched = set(np.asarray(array_ids, dtype=np.int64).tolist())
        builder = PlanBuilder(self.graph, self.arrays, self.chip, calibrating=self.record_currents)
        for op in self.graph.xbar_ops():
            if any(p.array in touched for t in self.graph.array_owner(op).tiles for p in t.placements):
                old = self.plans[op.name]
                plan = builder.build(op)
                plan.full_scale, plan.full_scale_source = old.full_scale, old.full_scale_source
                plan.slice_full_scale = old.slice_full_scale
                plan.conv_route = old.conv_route
                self.reads.adopt(plan)              # gemm="int8": the new conductances on the same grid
                self.plans[op.name] = plan

    def chip_identity(self) -> dict:
        """What makes two chip instances the same (cimc.backends.chip.Chip.identity)."""
        return self.chip.identity()

    def apply_tuning(self, tuning: dict | None, conductances: dict | None) -> bool:
        """A tuned manifest's conductances, where this is the chip instance they were programmed on."""
        if not tuning or not conductances or tuning.get("chip") != as_json_value(self.chip_identity()):
            self.tuning_applied = False
            return False
        self.set_conductances(conductances["arrays"], conductances["programmed_us"])
        self.tuning_applied = True
        return True

    def layer_stats(self) -> list[dict]:
        """Per layer (with diagnostics=True): relative error and SNR of the accumulators against the exact integer
        product on the same inputs, the largest absolute error (weight-level units), and the ADC clipping rate."""
        return combine_layer_stats([self])

    def describe(self) -> dict:
        t = getattr(self, "target", None)
        d = {"backend": self.name, "seed": self.chip_seed, "ideal": self.ideal, "copy": self.copy,
             "simulate_planes": self.simulate_planes, "gemm": self.gemm, "reader": getattr(self, "reader", None),
             "conductance_grid_us": None if getattr(self, "grid", 1) <= 1 or t is None
             else t.device.step_us / self.grid}
        if t is not None:
            d["nonideal"] = t.to_dict()["nonideal"]
            d["adc"] = t.to_dict()["adc"]
            d["defect_map"] = None if self.model.defect_map is None else self.model.defect_map.path
            d["adc_full_scale"] = {name: {"ua": None if p.full_scale is None else p.full_scale * p.unit_ua,
                                          "source": p.full_scale_source,
                                          **({} if p.slice_full_scale is None else
                                             {"slices_ua": (p.slice_full_scale * p.unit_ua).tolist()})}
                                   for name, p in self.plans.items()}
            alphas = {name: p.drift_scale.tolist() for name, p in self.plans.items() if p.drift_scale is not None}
            if alphas:              # global drift compensation: each layer's alpha per copy
                d["drift_compensation_alpha"] = alphas
            if encoded(t):          # cimc.weight_encoding: how this run reads the other encodings
                d["weights"] = dict(t.to_dict()["weights"], reads=(
                    "one lossless product of the combined planes" if self.reader == "product" else
                    f"{self.reader} reads, one ADC conversion per device line, combined after the ADC"
                    + ("; each tile's reference line converted with every read and its code subtracted from its "
                       "columns' codes" if t.weights.reference_column else "")))
        return d


def _replica_index(copy) -> int | None:
    """`copy=` as given to the backend: None (each sample's own copy) or a replica index >= 0."""
    if copy is not None and (not isinstance(copy, (int, np.integer)) or copy < 0):
        raise ConfigError(f"copy={copy!r}: must be a replica index >= 0")
    return None if copy is None else int(copy)


def as_json_value(value):
    """The value as it reads back from a manifest's JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def calibrate_adc_full_scale(graph, target, data, batch_size: int = 64, arrays=None,
                             max_samples: int | None = None, stop=None) -> dict[str, float]:
    """{op name: uA}: the first part of `calibrate_adc_full_scales` (the rule is written there)."""
    return calibrate_adc_full_scales(graph, target, data, batch_size, arrays, max_samples, stop)[0]


def calibrate_adc_full_scales(graph, target, data, batch_size: int = 64, arrays=None,
                              max_samples: int | None = None, stop=None) -> tuple[dict[str, float], dict[str, list]]:
    """The documented calibration rule of the ADC full scale: for each crossbar op, the largest line current (uA)
    that the ideal chip (ideal devices, the manifest's levels) carries in any read of the calibration set — every
    bit-plane (or analog read), every row tile and line, every sample; including the g_min part of a "columns" line;
    the magnitude for a bipolar ("rows") line. Offset and bit-sliced weights (cimc.weight_encoding): every device
    line, or every slice's +v/-v line, that their finite-ADC reads convert (cimc.backends.slice_lines). Activations
    follow the integer (ideal) chip. Ops whose lines never carry current are left out (the backend then uses the
    'max' full scale). `data`: array or dict of arrays; `max_samples`: use only its first samples (ResNet-56 costs
    about 60 ms per sample on 2 cores). `stop`: a threading.Event; once it is set the reads end at the next crossbar
    op, raising Cancelled (a compile that failed elsewhere while this ran on a thread of its own). Returns
    ({op: uA}, {op: [uA per slice]}): the second for bit-sliced weights only, the same rule over each slice's lines
    alone (None for a slice whose lines never carry current)."""
    feeds = check_feeds(graph, data, "ADC calibration data")
    n = len(next(iter(feeds.values())))
    if max_samples is not None:
        n = min(n, max_samples)
    backend = CrossbarBackend(record_currents=True)
    backend.bind(graph, arrays, target)
    observe = None if stop is None else lambda op, x: _raise_if_set(stop)
    for start in range(0, n, batch_size):
        run_graph(graph, {k: v[start:min(start + batch_size, n)] for k, v in feeds.items()}, backend, observe)
    reads = backend.reads                                   # the RecordReader: its peaks, in step units
    scales = {name: peak * backend.plans[name].unit_ua for name, peak in reads.peaks.items() if peak > 0}
    slices = {name: [float(p * backend.plans[name].unit_ua) if p > 0 else None for p in peaks]
              for name, peaks in reads.slice_peaks.items() if name in scales}
    return scales, slices


class Cancelled(Exception):
    """calibrate_adc_full_scale stopped before its end (its `stop` was set)."""


def _raise_if_set(stop) -> None:
    if stop.is_set():
        raise Cancelled("ADC calibration cancelled")
