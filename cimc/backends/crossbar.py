"""The `crossbar` backend: the chip that a manifest describes, simulated read by read.

The integer meaning of every quantity of one array read (input bit, current, ADC LSB, code, clip, shift, partial
sum) is written once, with a worked example, in docs/arithmetic.md; this module implements exactly that.

* A **chip instance** is drawn at `bind()` for every physical array (cimc.targets.devices, seed `seed`; default 0).
  Conductances are kept in *step units* relative to g_min: G' = (g - g_min) / step = level + (g - g_target) / step,
  so an ideal device holds its level exactly; the g_min part of a line current is o * (number of driven rows) with
  o = g_min / step, added only where a physical current is needed (the ADC).
* **Inputs** (integer codes from the executor) go in bit-serially, LSB first: plane j holds bit j of the code, and
  signed codes use two's complement on `input.bits` bits, the MSB plane weighing -2^(bits-1). `input.encoding =
  "analog"` applies the code as one amplitude (q / qmax) * V_read instead (Li 2018).
* For each plane, each array line carries I = V_read * sum_r u_r g_r. Differential "columns" (Yao): the g+ and g-
  lines are converted separately by a unipolar ADC and the codes subtracted digitally; "rows" (Li): the input is
  applied as +u/-u on the two row blocks, the line carries the difference and one bipolar ADC converts it.
* ADC: `bits`, full scale FS, round to nearest (ties to even), clip to the code range. Codes are shifted (times the
  plane weight) and added over planes and over the row tiles of a layer, then multiplied once by the LSB (in step
  units), which gives the accumulator in weight-level units: what the integer backend returns as sum_k q_k w_k.
* FS per layer: `adc.full_scale = "max"`: the largest current a line can carry (all array rows driven, every device at
  g_max; for "rows": half the rows at g_max - g_min); "calibrated": the largest ideal line current seen over the
  calibration set's reads (`calibrate_adc_full_scale`), stored per op as `adc_full_scale_ua` in the manifest, given
  as the option `adc_full_scale={op: uA}`, or computed at bind from `calibration=` data.
* **Lossless ADC** (`adc.lossless`, or `ideal=True`): every conversion is exact, so the g_min offsets cancel and the
  shift-and-add over planes is linear: the backend then forms sum_j w_j (plane_j . G') as one product x . G' (exact
  in real arithmetic and, for ideal devices, in float: every partial sum is an integer below 2^24, else float64),
  and adds read noise with the variance that the per-read noise of all planes adds up to. `simulate_planes=True`
  runs the planes one by one instead (same result). With ideal devices this equals the integer backend bit for bit.
* **Replicas**: the sample of global index i (cimc.backends.base: its index in the data set) runs on copy
  i % replicas of each op (each copy on its own, separately noisy arrays), whatever batch it is in; `copy=k` sends
  every sample through copy k % replicas. A direct `mvm`/`conv` call outside run_graph numbers its samples from 0.
* **GEMMs.** A layer's reads are one product per row tile and input chunk: all bit-planes of all its pixels
  ([planes x pixels, rows] of 0/1) times all lines of all its arrays in that row tile ([rows, lines]). float32 holds
  these integer sums exactly up to 2^24 (every ideal plane current is at most rows * (o + L), e.g. 144 * 8). With
  `gemm="int8"` the products run as onnxruntime MatMulInteger (uint8 planes x int8 conductances, exact int32 sums)
  with conductances on a grid of step / q, q = floor(127 / largest conductance in steps) (q = 14, 0.18 uS, for
  Yao's devices with 0.54 uS programming error): about 1.6x faster end to end; ideal levels stay exact. With
  `gemm="lut"` (numba, cimc.backends.lut_reads) each read is r/8 lookups in tables of 8-row subset sums, and the ADC
  and shift-and-add run in the same loop, on a grid of step / ~400 (6 nS): about 6x faster than float32 on
  ResNet-56; on the int8 grid it equals gemm="int8" bit for bit. A convolution whose row tiles hold whole input
  channels is read without im2col, straight from its padded NHWC codes (`_conv_table_reads`). Reads with read
  noise keep float32 GEMMs (the kernel draws nothing).
* Read noise is drawn per sample: the sample of global index i reads layer l's copy c with its own generator,
  cimc.targets.devices.read_generator(seed, l, c, i), which draws its [planes, positions, lines] block of each row
  tile in turn (the planes' sum, [positions, lines], for a lossless read); chunks of reads hold whole samples. So
  the same seed gives a sample the same output at any batch size and with any other samples in its batch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field

import numpy as np

from cimc.backends import lut_reads
from cimc.backends.base import Backend
from cimc.errors import ConfigError
from cimc.graph_run import check_feeds, run_graph
from cimc.im2col import col2im, im2col
from cimc.layout import program_arrays, read_levels, tile_cells
from cimc.targets.devices import DeviceModel, line_noise, load_defect_map, sample_generators
from cimc.targets.spec import NonIdealSpec

GEMMS = ("float32", "int8", "lut")
FLOAT32_EXACT = 1 << 24        # float32 adds integers exactly while every partial sum stays below 2^24
CHUNK_ELEMENTS = 1 << 23       # a layer's input rows go in chunks of at most this many plane elements ...
CURRENT_ELEMENTS = 1 << 22     # ... and this many line currents (large GEMMs; about 50 MB of temporaries)


def plane_weights(bits: int, signed: bool) -> np.ndarray:
    """Weight of each bit-plane, LSB first: 2^j, the MSB -2^(bits-1) for two's-complement signed codes."""
    w = np.array([float(1 << j) for j in range(bits)])
    if signed:
        w[-1] = -w[-1]
    return w


def uint_codes(x: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Integer codes (float) -> unsigned integers whose bits are the planes: the code itself, or its two's complement
    on `bits` bits for signed codes (uint8 up to 8 bits, else uint16 / uint32)."""
    dtype = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    if not signed:
        return x.astype(dtype)
    xi = x.astype(np.int32)
    xi &= (1 << bits) - 1
    return xi.astype(dtype)


def bit_planes_uint(xi: np.ndarray, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """Unsigned integers [m, r] -> planes [bits, m, r] float32 of 0/1, LSB first."""
    if out is None:
        out = np.empty((bits,) + xi.shape, np.float32)
    if xi.dtype == np.uint8 and out.dtype == np.uint8 and xi.size % 8 == 0 and out.flags.c_contiguous:
        # eight codes per 64-bit word: (word >> j) & 0x01..01 is plane j of all eight at once
        words = np.ascontiguousarray(xi).reshape(-1).view(np.uint64)
        planes = out.reshape(bits, -1).view(np.uint64)
        for j in range(bits):
            np.right_shift(words, np.uint64(j), out=planes[j])
            np.bitwise_and(planes[j], np.uint64(0x0101010101010101), out=planes[j])
        return out
    tmp = np.empty(xi.shape, xi.dtype)
    one = xi.dtype.type(1)
    for j in range(bits):
        np.right_shift(xi, j, out=tmp)
        np.bitwise_and(tmp, one, out=tmp)
        out[j] = tmp
    return out


def bit_planes(x: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Integer codes [m, r] (float) -> planes [bits, m, r] float32 of 0/1, LSB first (two's complement if signed)."""
    return bit_planes_uint(uint_codes(x, bits, signed), bits)


def rowwise_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b where each row's sums come out the same whatever the number of rows: numpy hands a one-row product to a
    matrix-vector BLAS routine, which adds in another order (float32 sums of non-integer conductances differ in the
    last bit), so a single row goes through the matrix-matrix routine as two."""
    if a.shape[0] == 1:
        return (np.concatenate([a, a]) @ b)[:1]
    return a @ b


def adc_range(bits: int, bipolar: bool) -> tuple[int, int]:
    """(lowest code, highest code): 0..2^bits-1 unipolar, symmetric -(2^(bits-1)-1)..2^(bits-1)-1 bipolar."""
    top = (1 << (bits - 1)) - 1 if bipolar else (1 << bits) - 1
    return (-top if bipolar else 0), top


def adc_convert(current: np.ndarray, bits: int, full_scale: float, bipolar: bool = False,
                out: np.ndarray | None = None, count: bool = True) -> tuple[np.ndarray, int]:
    """An ADC: code = clip(rint(current * (top / full_scale)), lo, top), rint rounding half to even, LSB =
    full_scale / top (cimc.backends.crossbar.adc_range gives lo and top). `current` and `full_scale` share one unit;
    the gain top / full_scale is rounded once to float32. Returns (codes as float32, clipped conversions; 0 unless
    `count`). With `out=current` it works in place."""
    lo, top = adc_range(bits, bipolar)
    t = np.multiply(current, np.float32(top / full_scale), out=out, dtype=np.float32)
    np.rint(t, out=t)
    clipped = int(np.count_nonzero(t > top)) + int(np.count_nonzero(t < lo)) if count else 0
    np.clip(t, lo, top, out=t)
    return t, clipped


@dataclass
class _Block:
    """One row tile of a layer: logical rows [r0, r1) and the outputs its tiles cover, with per-copy matrices."""
    r0: int
    r1: int
    cols: np.ndarray                                     # logical output indices, tiles in col_start order
    index: object = None                                 # cols as a slice where contiguous
    diff: list = field(default_factory=list)             # per copy [R, nb]: G'+ - G'- (step units)
    lines: list = field(default_factory=list)            # per copy [R, 2nb]: [o + G'+ | o + G'-] ("columns" only)
    quantised: list = field(default_factory=list)        # gemm="int8": per copy, lines (or diff) x grid as int8
    tables: dict = field(default_factory=dict)           # gemm="lut": per copy, lut_reads.table_pieces
    conv_tables: dict = field(default_factory=dict)      # gemm="lut", direct conv reads: per copy, of a conv_table
    conv_groups: tuple | None = None                     # ... and where its groups read (lut_reads.conv_groups)


@dataclass
class _Plan:
    name: str
    rows: int
    cols: int
    replicas: int
    bits: int
    signed: bool
    analog: bool
    bipolar: bool
    dtype: type                      # accumulator dtype: float32 while exact, else float64
    code_dtype: type
    blocks: list
    effective: list                  # per copy [K, N] in step units (G'+ - G'- where a tile sits, else 0)
    exact_levels: np.ndarray         # [K, N] the levels programmed (for diagnostics)
    weights: np.ndarray              # plane weights
    unit_ua: float                   # one current unit (step units x V_read, / qmax for analog) in uA
    full_scale: float | None = None  # ADC full scale in current units (None for a lossless ADC)
    full_scale_source: str = "lossless"
    noise_lut: np.ndarray | None = None   # sum_j w_j^2 bit_j(q), indexed by q - qmin (bit-serial read noise)
    conv_sessions: dict = field(default_factory=dict)   # per copy: onnxruntime Conv of `effective` (single-product reads)
    qmin: int = 0
    qmax: int = 0
    channels: list | None = None     # per block, its input channels (c0, c1) where conv reads can skip im2col


# What the manifest fixed when it was compiled (geometry, level count, input coding, quantisation, placement): a
# chip override cannot change it, only the physics (devices' conductances, non-idealities, ADC, timing, energy).
_FIXED_AT_COMPILE = (("array", None), ("quant", None), ("chip", None), ("device", "levels"), ("input", "bits"),
                     ("input", "encoding"))


def _refuse_compile_time_changes(compiled, chip):
    """`chip` (the manifest's target with the run's overrides), unless an override changed what the manifest fixed."""
    for section, name in _FIXED_AT_COMPILE:
        before, after = getattr(compiled, section), getattr(chip, section)
        for f in dataclasses.fields(before):
            if (name is None or f.name == name) and getattr(before, f.name) != getattr(after, f.name):
                raise ConfigError(f"--set {section}.{f.name}={getattr(after, f.name)!r}: the manifest was compiled "
                                  f"with {section}.{f.name}={getattr(before, f.name)!r}, which a run cannot change; "
                                  f"recompile with `cimc compile ... --set {section}.{f.name}=...` instead")
    return chip


class CrossbarBackend(Backend):
    """`CrossbarBackend(seed=0, overrides=None, ideal=False, copy=None, defect_map=None, adc_full_scale=None,
    calibration=None, diagnostics=False, simulate_planes=False, gemm="float32")`.

    overrides: target overrides (["nonideal.program_sigma_us=0.54", ...] or a dict) applied to the manifest's target;
    ideal: ideal devices and a lossless ADC (then equal to the integer backend bit for bit); copy: force one replica;
    defect_map: npz path (cimc.targets.devices); adc_full_scale: {op name: uA}; calibration: input data to calibrate
    the ADC full scale at bind when the manifest holds none; diagnostics: per-layer error and clipping statistics
    (`layer_stats()`); simulate_planes: run every bit-plane even with a lossless ADC; gemm: "float32" or "int8"
    (see the module doc). `record_currents` is internal (`calibrate_adc_full_scale`)."""
    name = "crossbar"
    quantized = True

    def __init__(self, seed: int | None = None, overrides=None, ideal: bool = False, copy: int | None = None,
                 defect_map=None, adc_full_scale: dict | None = None, calibration=None, diagnostics: bool = False,
                 simulate_planes: bool = False, record_currents: bool = False, gemm: str = "float32",
                 conductance_grid: int | None = None):
        super().__init__(seed)
        self.chip_seed = 0 if seed is None else int(seed)
        self.overrides = overrides
        self.ideal = bool(ideal)
        if copy is not None and (not isinstance(copy, (int, np.integer)) or copy < 0):
            raise ConfigError(f"copy={copy!r}: must be a replica index >= 0")
        self.copy = None if copy is None else int(copy)
        self.defect_map = defect_map
        self.adc_full_scale = dict(adc_full_scale or {})
        self.calibration = calibration
        self.diagnostics = bool(diagnostics)
        self.simulate_planes = bool(simulate_planes)
        self.record_currents = bool(record_currents)
        if gemm not in GEMMS:
            raise ConfigError(f"gemm={gemm!r}: choose one of {', '.join(GEMMS)}")
        if gemm == "lut" and not lut_reads.available():
            raise ConfigError("gemm='lut' runs a kernel compiled with numba, which is not installed: "
                              "pip install -e '.[fast]' (or choose gemm='float32' or 'int8')")
        if conductance_grid is not None and (not isinstance(conductance_grid, (int, np.integer))
                                             or conductance_grid < 1):
            raise ConfigError(f"conductance_grid={conductance_grid!r}: must be a positive integer (subdivisions "
                              "of one conductance step)")
        self.gemm = gemm
        self.conductance_grid = conductance_grid
        self.peaks: dict[str, float] = {}
        self.stats: dict[str, dict] = {}
        self._scratch_arrays: dict[str, np.ndarray] = {}     # gemm="lut": work arrays reused across layers

    # -- bind -------------------------------------------------------------------------------------------------
    def effective_target(self, target):
        from cimc.targets.registry import load_target
        if self.overrides:
            target = _refuse_compile_time_changes(target, load_target(target, self.overrides))
        if self.ideal or self.record_currents:
            target = target.replace(nonideal=NonIdealSpec(), adc=_lossless(target.adc))
        return target

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
        if isinstance(defect_map, (str, bytes)) or hasattr(defect_map, "__fspath__"):
            defect_map = load_defect_map(defect_map)
        self.model = DeviceModel(target.device, target.nonideal, defect_map)
        self.chip = self.model.program(arrays, self.chip_seed)
        step = self.model.step_us
        # step units relative to g_min, exact for ideal devices (deviation 0)
        self.g_units = (arrays.astype(np.float64)
                        + (self.chip.conductance_us - self.chip.target_us) / step)
        self.offset = target.device.g_min_us / step
        self.read_sigma = self.model.read_noise_us / step          # read noise in step units
        self.layer_index = {op.name: i for i, op in enumerate(graph.xbar_ops())}   # keys of the read-noise streams
        max_replicas = max((op.replicas for op in graph.xbar_ops()), default=1)
        if self.copy is not None and self.copy >= max_replicas:
            raise ConfigError(f"copy={self.copy}: the manifest's layers have at most {max_replicas} "
                              f"cop{'y' if max_replicas == 1 else 'ies'} (copies 0..{max_replicas - 1})")
        self._cells_plans: dict = {}      # (owner, dtype) -> its first plan: the reads of shared arrays share cells
        self.plans = {op.name: self._plan(op, target) for op in graph.xbar_ops()}   # readers: the owner's devices
        self._resolve_full_scale(graph, target)
        self.grid, self._int_session, self._lut = 1, None, False
        if self.gemm == "int8" and not target.adc.lossless:
            self._quantise_conductances(target, self.conductance_grid)
        elif self.gemm == "lut" and not target.adc.lossless:
            self._lut_grid(target)
        elif self.record_currents and float(self.offset).is_integer() and self.offset + target.device.max_level <= 127:
            self._quantise_conductances(target, grid=1)          # ideal levels + integer g_min: exact in int8
        self.stats = {name: {"sq_err": 0.0, "sq_ref": 0.0, "clipped": 0, "conversions": 0, "max_abs_err": 0.0}
                      for name in self.plans}
        self.peaks = {name: 0.0 for name in self.plans}

    def _plan(self, op, target) -> _Plan:
        spec = target.array
        q = op.input_quant
        cells = self.graph.array_owner(op)      # a shared-weight reader reads its owner's tiles and placements
        bits, signed = q.bits, q.signed
        analog = target.input.encoding == "analog"
        bipolar = spec.differential == "rows" or (analog and signed)
        qmax = max(abs(q.qmin), q.qmax)
        bound = op.rows * qmax * target.device.max_level
        dtype = np.float32 if bound < FLOAT32_EXACT else np.float64
        _, top = adc_range(target.adc.bits, bipolar)
        code_bound = top * (qmax if analog else (1 << bits)) * max(1, -(-op.rows // spec.inputs_per_tile))
        code_dtype = np.float32 if code_bound < FLOAT32_EXACT else np.float64
        exact = read_levels(cells, self.arrays, target, 0).astype(np.float64)
        by_start: dict[int, list] = {}
        for tile in cells.tiles:
            by_start.setdefault(tile.row_start, []).append(tile)
        blocks = []
        effective = [np.zeros((op.rows, op.cols), dtype) for _ in range(cells.replicas)]
        for r0 in sorted(by_start):
            tiles = sorted(by_start[r0], key=lambda t: t.col_start)
            rc = tiles[0].row_count
            cols = np.concatenate([np.arange(t.col_start, t.col_start + t.col_count) for t in tiles])
            block = _Block(r0, r0 + rc, cols)
            contiguous = len(cols) and np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols)))
            block.index = slice(int(cols[0]), int(cols[0]) + len(cols)) if contiguous else cols
            for c in range(cells.replicas):
                plus, minus = [], []
                for t in tiles:
                    p = t.placements[c]
                    pi, mi = tile_cells(t, p, spec)
                    plus.append(self.g_units[p.array][pi])
                    minus.append(self.g_units[p.array][mi])
                gp, gm = np.concatenate(plus, axis=1), np.concatenate(minus, axis=1)
                d = gp - gm
                block.diff.append(d.astype(dtype))
                if spec.differential == "columns":
                    block.lines.append(np.concatenate([gp, gm], axis=1).astype(np.float32) + np.float32(self.offset))
                effective[c][r0:r0 + rc, cols] = d
            blocks.append(block)
        channels = _channel_tiles(op, blocks)
        step = target.device.step_us
        unit_ua = target.input.read_voltage_v * step / (qmax if analog else 1)
        plan = _Plan(op.name, op.rows, op.cols, cells.replicas, bits, signed, analog, bipolar, dtype, code_dtype,
                     blocks, effective, exact, np.array([1.0]) if analog else plane_weights(bits, signed), unit_ua,
                     qmin=q.qmin, qmax=q.qmax, channels=channels)
        first = self._cells_plans.setdefault((cells.name, np.dtype(dtype).str), plan)
        if first is not plan:       # the same devices: one copy of their conductances (and their tables) in memory
            plan.blocks, plan.effective, plan.exact_levels = first.blocks, first.effective, first.exact_levels
        if not analog:
            codes = np.arange(q.qmin, q.qmax + 1)
            planes = bit_planes(codes[:, None].astype(np.float32), bits, signed)[:, :, 0]
            plan.noise_lut = (plan.weights[:, None] ** 2 * planes).sum(axis=0)
        return plan

    def _quantise_conductances(self, target, grid: int | None = None) -> None:
        """gemm="int8": read conductances on a grid of step / grid, grid = floor(127 / largest |conductance|) in
        steps (14 for Yao's devices with 0.54 uS programming error: a 0.18 uS grid), so that bit-planes (uint8) times
        conductances (int8) run as onnxruntime's MatMulInteger with exact int32 sums. Ideal levels stay exact."""
        import onnxruntime as ort
        from onnx import TensorProto, helper
        columns = target.array.differential == "columns"
        mats = [m for p in self.plans.values() if not p.analog for b in p.blocks
                for m in (b.lines if columns else b.diff)]
        if not mats:
            return
        largest = max(float(np.abs(m).max(initial=0.0)) for m in mats)
        if largest > 127:
            warnings.warn(f"crossbar backend: a conductance of {largest:.0f} steps (device.levels="
                          f"{target.device.levels}) does not fit gemm='int8'; using float32", stacklevel=3)
            return
        if grid is not None and grid * largest > 127:
            raise ConfigError(f"conductance_grid={grid}: a conductance of {largest:.2f} steps does not fit int8 on "
                              f"that grid; at most {int(127 // largest)} for gemm='int8'")
        self.grid = grid or max(1, int(127 // max(largest, 1e-30)))
        for plan in self.plans.values():
            if plan.analog:
                continue
            for b in plan.blocks:
                b.quantised = [np.rint(np.asarray(m, np.float64) * self.grid).astype(np.int8)
                               for m in (b.lines if columns else b.diff)]
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        g = helper.make_graph([node], "planes_x_conductances",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", "K"]),
                               helper.make_tensor_value_info("B", TensorProto.INT8, ["K", "N"])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", "N"])])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        self._int_session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def _lut_grid(self, target) -> None:
        """gemm="lut": integer conductances on a grid of step / grid, the finest for which every 8-row subset sum
        fits an int16 table entry: grid = floor(32767 / (8 x largest conductance in steps)), about 400 (6 nS) for
        Yao's devices with 0.54 uS programming error. Tables are built per row tile and copy on first use."""
        if self.read_sigma > 0:
            warnings.warn("crossbar backend: gemm='lut' draws no per-read noise; reads with read noise run as "
                          "float32 GEMMs", stacklevel=3)
            return
        columns = target.array.differential == "columns"
        mats = [m for p in self.plans.values() if not p.analog and p.bits <= 8
                for b in p.blocks for m in (b.lines if columns else b.diff)]
        if not mats:
            return
        for plan in self.plans.values():                     # the kernel adds shift-and-add codes in int32
            _, top = adc_range(target.adc.bits, plan.bipolar)
            if not plan.analog and plan.bits <= 8 and top << plan.bits >= 1 << 31:
                raise ConfigError(f"gemm='lut' adds ADC codes in int32: adc.bits={target.adc.bits} with the "
                                  f"{plan.bits}-bit inputs of layer {plan.name!r} can overflow it; use at most "
                                  f"{31 - plan.bits} ADC bits, or gemm='float32'")
        largest = max(float(np.abs(m).max(initial=0.0)) for m in mats)
        self.grid = self.conductance_grid or max(1, int(((1 << 15) - 1) // max(lut_reads.GROUP * largest, 1e-30)))
        self._lut = True

    def _max_full_scale(self, plan: _Plan, target) -> float:
        spec, dev = target.array, target.device
        amp = max(abs(plan.qmin), plan.qmax) if plan.analog else 1
        if spec.differential == "rows":
            return float(spec.rows // 2 * dev.max_level * amp)
        return float(spec.rows * (self.offset + dev.max_level) * amp)

    def _resolve_full_scale(self, graph, target) -> None:
        if target.adc.lossless:
            return
        computed = None
        for op in graph.xbar_ops():
            plan = self.plans[op.name]
            ua, source = None, None
            if target.adc.full_scale == "calibrated":
                if op.name in self.adc_full_scale:
                    ua, source = self.adc_full_scale[op.name], "option"
                elif getattr(op, "adc_full_scale_ua", None):
                    ua, source = op.adc_full_scale_ua, "manifest"
                elif self.calibration is not None:
                    if computed is None:
                        computed = calibrate_adc_full_scale(graph, target, self.calibration, arrays=self.arrays)
                    ua, source = computed.get(op.name), "calibration data"
            if ua is not None and ua > 0:
                plan.full_scale, plan.full_scale_source = float(ua) / plan.unit_ua, f"calibrated ({source})"
            else:
                plan.full_scale = self._max_full_scale(plan, target)
                plan.full_scale_source = "max"
                if target.adc.full_scale == "calibrated":
                    plan.full_scale_source = "max (no calibrated full scale available)"
        if target.adc.full_scale == "calibrated" and any(p.full_scale_source.startswith("max") for p in
                                                        self.plans.values()):
            missing = [p.name for p in self.plans.values() if p.full_scale_source.startswith("max")]
            warnings.warn(f"crossbar backend: adc.full_scale = 'calibrated' but no calibrated full scale is known for "
                          f"{len(missing)} layer(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                          "using the 'max' full scale there. Recompile, or pass calibration data (--calibration).",
                          stacklevel=2)

    # -- the product --------------------------------------------------------------------------------------------
    def conv(self, op, x: np.ndarray) -> np.ndarray | None:
        """Calibration reads and bit-serial reads through a real ADC run im2col on the uint8 codes themselves
        (`_conv_on_codes`). A lossless read without read noise is one exact product x . G' per copy (see the module
        doc): run the whole convolution in onnxruntime, like the integer backend. Any other read goes bit-plane by
        bit-plane through the executor's im2col + mvm."""
        plan = self.plans[op.name]
        if not op.conv.planar:      # a Conv3d or ConvTranspose: the executor's operand + mvm
            return None
        if self.record_currents and self._exact_record(plan):
            return self._conv_on_codes(op, plan, x, lambda p, c, xs, ids: self._record_exact(p, c, xs))
        if self._direct_table_reads(plan):
            return self._conv_table_reads(op, plan, x)
        if self._encoded_reads(plan):
            return self._conv_on_codes(op, plan, x, lambda p, c, xs, ids: self._planes(p, c, xs, ids, encoded=True))
        if (not self.target.adc.lossless or self.simulate_planes or self.record_currents or self.diagnostics
                or self.read_sigma > 0 or self.gemm != "float32" or plan.dtype != np.float32):
            return None
        from cimc.backends.reference import conv_session
        copies = self._copy_samples(plan, self._sample_ids(len(x)))
        rank1 = op.conv.spatial_rank == 1
        xin = x[:, :, None, :] if rank1 else x
        out = None
        for c, samples in copies:
            if c not in plan.conv_sessions:
                plan.conv_sessions[c] = conv_session(op, plan.effective[c])
            part = xin if len(copies) == 1 else np.ascontiguousarray(xin[samples])
            y = plan.conv_sessions[c].run(None, {"x": part})[0]
            if len(copies) == 1:
                out = y
            else:
                if out is None:
                    out = np.empty((len(x),) + y.shape[1:], np.float32)
                out[samples] = y
        return out[:, :, 0, :] if rank1 else out

    def mvm(self, op, x: np.ndarray, batch: int) -> np.ndarray:
        plan = self.plans[op.name]
        out = self._by_copy(plan, x, batch, self._run_copy)
        if self.diagnostics:
            self._observe(plan, x, out)
        return out

    def _by_copy(self, plan: _Plan, x: np.ndarray, batch: int, run) -> np.ndarray:
        """Each sample's rows of x [m, K] go through its copy (`_copy_samples`): run(plan, c, rows, ids) -> [., N],
        ids: the global indices of the samples whose rows those are."""
        m = x.shape[0]
        ids = self._sample_ids(batch)
        copies = self._copy_samples(plan, ids)
        if len(copies) == 1 or m == 0:
            return run(plan, copies[0][0], x, ids)
        positions = m // batch
        xs = x.reshape(batch, positions, x.shape[1])
        out = np.empty((batch, positions, plan.cols), plan.dtype)
        for c, samples in copies:
            sel = np.ascontiguousarray(xs[samples]).reshape(-1, x.shape[1])
            out[samples] = run(plan, c, sel, ids[samples]).reshape(-1, positions, plan.cols)
        return out.reshape(m, plan.cols)

    def _sample_ids(self, batch: int) -> np.ndarray:
        """The global indices of the batch's samples: those run_graph set; a direct call is a batch on its own,
        numbered from 0."""
        if self.samples is not None and len(self.samples) == batch:
            return self.samples
        return np.arange(batch, dtype=np.int64)

    def _copy_samples(self, plan: _Plan, ids: np.ndarray) -> list[tuple[int, object]]:
        """[(copy, the positions in the batch of the samples it reads)]: the sample of global index i reads copy
        i % replicas, whatever batch it is in; or every sample copy `self.copy`."""
        if plan.replicas == 1 or self.copy is not None or len(ids) == 0:
            return [(0 if self.copy is None else self.copy % plan.replicas, slice(None))]
        copy_of = ids % plan.replicas
        if np.all(copy_of == copy_of[0]):
            return [(int(copy_of[0]), slice(None))]
        return [(c, np.flatnonzero(copy_of == c)) for c in range(plan.replicas) if np.any(copy_of == c)]

    def _noise_generators(self, plan: _Plan, c: int, ids: np.ndarray) -> list:
        """One read-noise generator per sample: keyed by (chip seed, layer, copy, global sample index) alone."""
        return sample_generators(self.chip_seed, (self.layer_index[plan.name], c), ids)

    def _lut_adc(self, plan: _Plan) -> tuple[int, int, np.float32]:
        """(lo, top, gain) of the table kernel's ADC: adc_convert's, in current units of step / grid."""
        lo, top = adc_range(self.target.adc.bits, plan.bipolar)
        return lo, top, np.float32(top / (plan.full_scale * self.grid))

    def _grid_lines(self, block: _Block, c: int, use_lines: bool) -> np.ndarray:
        """A row tile's conductances of copy c (its g+ and g- lines, or differences) as integers on the lut grid."""
        return np.rint(np.asarray(block.lines[c] if use_lines else block.diff[c], np.float64) * self.grid)

    def _run_copy(self, plan: _Plan, c: int, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self.record_currents:
            if self._exact_record(plan):
                return self._record_exact(plan, c, uint_codes(x, plan.bits, plan.signed))
            self._record(plan, c, x)
            return x.astype(plan.dtype, copy=False) @ plan.effective[c]
        if self.target.adc.lossless and not self.simulate_planes:
            acc = rowwise_matmul(x.astype(plan.dtype, copy=False), plan.effective[c])
            if self.read_sigma > 0:
                self._lossless_noise(plan, c, x, acc, ids)
            return acc
        return self._planes(plan, c, x, ids)

    def _lossless_noise(self, plan: _Plan, c: int, x: np.ndarray, acc: np.ndarray, ids: np.ndarray) -> None:
        """Read noise of all planes of a lossless read, summed: per row tile and output line, g+ and g- (or the
        +u/-u row blocks) each add N(0, s^2 sum_r u_r^2) per plane, weighted by w_j: variance 2 s^2 sum_r f(q_r).
        Each sample's generator draws, row tile by row tile, its [positions, lines] block."""
        generators = self._noise_generators(plan, c, ids)
        samples = len(ids)
        for block in plan.blocks:
            xb = x[:, block.r0:block.r1]
            if plan.analog:
                f = np.square(xb, dtype=np.float64).sum(axis=1)
            else:
                f = plan.noise_lut[xb.astype(np.int64) - plan.qmin].sum(axis=1)
            f = f.reshape(samples, -1, 1)
            noise = line_noise(generators, 2.0 * f, self.read_sigma, np.float64, f.shape[:2] + (len(block.cols),))
            acc[:, block.cols] += noise.reshape(len(x), -1).astype(acc.dtype)

    def _planes(self, plan: _Plan, c: int, x: np.ndarray, ids: np.ndarray, encoded: bool = False) -> np.ndarray:
        """Read by read: planes x lines -> (noise) -> ADC -> shift-and-add -> subtract -> row tiles -> x LSB.
        `encoded`: x already holds uint_codes (the conv hook's uint8 im2col). ids: the global indices of the samples
        whose rows x holds; with read noise, each sample's generator draws, row tile by row tile, its
        [planes, positions, lines] block (so chunks hold whole samples)."""
        lossless = self.target.adc.lossless
        adc_bits = self.target.adc.bits
        columns = self.target.array.differential == "columns"
        use_lines = columns and not lossless
        xi = x if plan.analog or encoded else uint_codes(x, plan.bits, plan.signed)
        if self._lut and not lossless and not plan.analog and plan.bits <= 8 and self.read_sigma == 0:
            return self._table_reads(plan, c, xi, use_lines)
        m = len(x)
        n_planes = 1 if plan.analog else plan.bits
        lo, top = adc_range(adc_bits, plan.bipolar)
        # shift-and-add of one row tile is exact in float32 while |sum| < 2^24
        per_read = top if not lossless else self.target.array.rows * (self.offset + self.target.device.max_level)
        horner_dtype = np.float32 if per_read * (1 << n_planes) * (plan.qmax if plan.analog else 1) < FLOAT32_EXACT \
            else np.float64
        acc_dtype = np.float64 if lossless else plan.code_dtype
        codes = np.zeros((m, plan.cols), acc_dtype)
        int8 = self._int_session is not None and not lossless and not plan.analog
        grid = self.grid if int8 else 1                     # currents in units of step / grid
        noisy = self.read_sigma > 0
        generators = self._noise_generators(plan, c, ids) if noisy else None
        positions = m // max(len(ids), 1)
        clipped = conversions = 0
        for block in plan.blocks:
            r = block.r1 - block.r0
            nb = len(block.cols)
            if int8:
                mat = block.quantised[c]
            else:
                mat = block.lines[c] if use_lines else block.diff[c].astype(np.float32, copy=False)
            width = mat.shape[1]
            chunk = max(1, min(CHUNK_ELEMENTS // (n_planes * r), CURRENT_ELEMENTS // (n_planes * width)))
            if noisy:
                chunk = max(1, chunk // positions) * positions                 # whole samples
            planes = None
            for s in range(0, m, chunk):
                xb = xi[s:s + chunk, block.r0:block.r1]
                mc = len(xb)
                if plan.analog:
                    u = xb.astype(np.float32)[None]
                else:
                    if planes is None or planes.shape[1] != mc:
                        planes = np.empty((n_planes, mc, r), np.uint8 if int8 else np.float32)
                    u = bit_planes_uint(xb, n_planes, planes)
                flat = u.reshape(n_planes * mc, r)
                if int8:                                          # exact int32 sums (units of step / grid)
                    cur = self._int_session.run(None, {"A": flat, "B": mat})[0]
                else:
                    cur = rowwise_matmul(flat, mat)               # [planes*mc, lines], step units
                if noisy:
                    sq = (np.square(u) if plan.analog else flat).sum(axis=1, keepdims=True, dtype=np.float32)
                    per_line = 1.0 if use_lines else 2.0          # a difference line reads two devices per row
                    cur = cur.astype(np.float32, copy=False)
                    # [planes, samples, positions, lines] <- per sample [samples, planes, positions, lines]
                    sq = (per_line * sq).reshape(n_planes, -1, positions, 1).transpose(1, 0, 2, 3)
                    first = s // positions
                    noise = line_noise(generators[first:first + sq.shape[0]], sq, self.read_sigma * grid,
                                       shape=sq.shape[:3] + (width,))
                    by_sample = cur.reshape(n_planes, -1, positions, width)         # a view of cur
                    by_sample += noise.transpose(1, 0, 2, 3)
                if not lossless:                                  # the ADC (in place, or int32 -> float32 codes)
                    cur, n_clipped = adc_convert(cur, adc_bits, plan.full_scale * grid, plan.bipolar,
                                                 out=cur if cur.dtype == np.float32 else None,
                                                 count=self.diagnostics)
                    clipped += n_clipped
                    conversions += cur.size
                d = cur.reshape(n_planes, mc, width)
                acc = d[n_planes - 1].astype(horner_dtype)        # shift-and-add, MSB first (Horner)
                if plan.weights[n_planes - 1] < 0:
                    np.negative(acc, out=acc)
                for j in range(n_planes - 2, -1, -1):
                    acc *= 2
                    acc += d[j]
                if use_lines:
                    acc = acc[:, :nb] - acc[:, nb:]               # g+ codes minus g- codes
                codes[s:s + chunk, block.index] += acc
        if self.diagnostics:
            self.stats[plan.name]["clipped"] += clipped
            self.stats[plan.name]["conversions"] += conversions
        if lossless:
            return codes.astype(plan.dtype, copy=False)
        return (codes.astype(np.float64) * (plan.full_scale / top)).astype(plan.dtype)

    def _table_reads(self, plan: _Plan, c: int, xi: np.ndarray, use_lines: bool) -> np.ndarray:
        """gemm="lut": the fused table reads of cimc.backends.lut_reads, row tile by row tile, on uint8 codes xi."""
        lo, top, gain = self._lut_adc(plan)
        m = len(xi)
        codes = np.zeros((m, plan.cols), np.int64)
        clipped = conversions = 0
        for block in plan.blocks:
            nb = len(block.cols)
            if c not in block.tables:
                block.tables[c] = lut_reads.table_pieces(
                    lut_reads.pattern_table(self._grid_lines(block, c, use_lines)), nb, use_lines)
            words = lut_reads.plane_words(xi[:, block.r0:block.r1])
            if isinstance(block.index, slice):              # the kernel adds into codes[:, start:stop] itself
                clipped += lut_reads.read_tile(words, block.tables[c], plan.weights, gain, lo, top, use_lines, codes,
                                               block.index.start or 0)
            else:
                acc = np.zeros((m, nb), np.int64)
                clipped += lut_reads.read_tile(words, block.tables[c], plan.weights, gain, lo, top, use_lines, acc)
                codes[:, block.index] += acc
            conversions += m * plan.bits * (2 * nb if use_lines else nb)
        if self.diagnostics:
            self.stats[plan.name]["clipped"] += clipped
            self.stats[plan.name]["conversions"] += conversions
        # codes x LSB in float64, rounded once to the accumulator dtype (as the GEMM paths)
        return lut_reads.scaled(codes, plan.full_scale / top, np.empty((m, plan.cols), plan.dtype))

    def conv_output(self, op, x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None) -> np.ndarray | None:
        """Direct table reads (below) also apply the executor's dequantisation, in the pass that scales the codes."""
        plan = self.plans[op.name]
        if not op.conv.planar or self.record_currents or not self._direct_table_reads(plan) \
                or plan.dtype != np.float32:
            return None
        return self._conv_table_reads(op, plan, x, (scale, bias))

    def _direct_table_reads(self, plan: _Plan) -> bool:
        return self._lut and plan.channels is not None and self._encoded_reads(plan)

    def _conv_table_reads(self, op, plan: _Plan, x: np.ndarray, dequantise: tuple | None = None) -> np.ndarray:
        """gemm="lut" on a convolution whose row tiles hold whole channels: table reads straight from the padded
        NHWC codes (lut_reads.read_conv_tile), no im2col; the same codes as _table_reads on im2col rows. Returns
        the accumulators, or with `dequantise` = (scale, bias) the executor's float32 output."""
        g = op.conv
        xs = x[:, :, None, :] if g.spatial_rank == 1 else x
        bsz, _, h, w = xs.shape
        oh, ow = g.output_hw(h, w)
        words = lut_reads.padded_plane_words(xs, plan.bits, g.pads, self._scratch_arrays.get("words"))
        self._scratch_arrays["words"] = words
        lo, top, gain = self._lut_adc(plan)
        use_lines = self.target.array.differential == "columns"
        size = g.kernel[0] * g.kernel[1]
        # the first row tile writes every output (when it covers them all), the others add: no zero fill, and the
        # codes array is reused from layer to layer (a fresh one costs a page fault per 4 kB on first touch)
        covers = isinstance(plan.blocks[0].index, slice) and len(plan.blocks[0].cols) == plan.cols
        # |sum of codes| <= top * 2^bits per row tile: int32 while that fits (half the traffic of int64)
        wide = np.int32 if top * (1 << plan.bits) * len(plan.blocks) < 1 << 31 else np.int64
        codes = self._scratch("codes", (bsz * oh * ow, plan.cols), wide, zero=not covers)
        for c, samples in self._copy_samples(plan, self._sample_ids(bsz)):
            images = np.arange(bsz)[samples]
            for k, (block, (c0, c1)) in enumerate(zip(plan.blocks, plan.channels)):
                nb = len(block.cols)
                if c not in block.conv_tables:
                    table = lut_reads.conv_table(self._grid_lines(block, c, use_lines), c0, c1, size)
                    block.conv_tables[c] = lut_reads.table_pieces(table, nb, use_lines)
                    block.conv_groups = lut_reads.conv_groups(c0, c1, g.kernel, g.dilations)
                groups = block.conv_groups
                if isinstance(block.index, slice):
                    lut_reads.read_conv_tile(words, images, groups, g.strides, (oh, ow), block.conv_tables[c],
                                             plan.weights, gain, lo, top, use_lines, codes, block.index.start or 0,
                                             add=k > 0 or not covers)
                else:
                    acc = np.zeros((len(codes), nb), wide)
                    lut_reads.read_conv_tile(words, images, groups, g.strides, (oh, ow), block.conv_tables[c],
                                             plan.weights, gain, lo, top, use_lines, acc)
                    codes[:, block.index] += acc
        out = np.empty((bsz, plan.cols, oh * ow), np.float32 if dequantise else plan.dtype)
        if dequantise:
            lut_reads.dequantised_transposed(codes.reshape(bsz, oh * ow, plan.cols), plan.full_scale / top,
                                             *dequantise, out)
        else:
            lut_reads.scaled_transposed(codes.reshape(bsz, oh * ow, plan.cols), plan.full_scale / top, out)
        return out.reshape((bsz, plan.cols) + ((ow,) if g.spatial_rank == 1 else (oh, ow)))

    def _scratch(self, name: str, shape: tuple, dtype, zero: bool = False) -> np.ndarray:
        """A work array kept from call to call while its shape and dtype stay the same (filled with 0 if `zero`)."""
        buf = self._scratch_arrays.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._scratch_arrays[name] = np.zeros(shape, dtype)
        elif zero:
            buf.fill(0)
        return buf

    def _encoded_reads(self, plan: _Plan) -> bool:
        """Bit-serial reads through a real ADC whose inputs can be encoded before im2col (uint8 codes; diagnostics
        compare against the float codes, so they keep the executor's im2col)."""
        return (not self.target.adc.lossless and not plan.analog and plan.bits <= 8 and not self.diagnostics
                and not self.record_currents)

    def _exact_record(self, plan: _Plan) -> bool:
        """Calibration reads can run exactly in int8 (ideal levels and an integer g_min, 8-bit planes)."""
        return self._int_session is not None and self.grid == 1 and not plan.analog and plan.bits <= 8

    def _conv_on_codes(self, op, plan: _Plan, x: np.ndarray, run) -> np.ndarray:
        """A whole convolution read plane by plane: im2col on the uint8 codes (a quarter of float32's traffic), then
        run(plan, copy, rows) per copy; returns the accumulators [B, N, *out_spatial]."""
        cols, shape = im2col(uint_codes(x, plan.bits, plan.signed), op.conv)
        return col2im(self._by_copy(plan, cols, len(x), run), shape, op.conv)

    def _record_exact(self, plan: _Plan, c: int, xi: np.ndarray) -> np.ndarray:
        """Ideal reads of uint8 codes [m, r]: every bit-plane of a row tile in one MatMulInteger, the peak line
        current recorded, and the exact accumulators formed from the same currents by shift-and-add (the g_min
        parts cancel in g+ - g-)."""
        columns = self.target.array.differential == "columns"
        n = plan.bits
        w = plane_weights(n, plan.signed).astype(np.int64)
        out = np.zeros((len(xi), plan.cols), np.int64)
        peak = self.peaks[plan.name]
        planes = None
        for block in plan.blocks:
            r, nb = block.r1 - block.r0, len(block.cols)
            mat = block.quantised[c]
            chunk = max(1, min(CHUNK_ELEMENTS // (n * r), CURRENT_ELEMENTS // (n * mat.shape[1])))
            for s in range(0, len(xi), chunk):
                xb = xi[s:s + chunk, block.r0:block.r1]
                if planes is None or planes.shape[1:] != xb.shape:
                    planes = np.empty((n,) + xb.shape, np.uint8)
                bit_planes_uint(xb, n, planes)
                cur = self._int_session.run(None, {"A": planes.reshape(-1, r), "B": mat})[0]
                if cur.size:
                    peak = max(peak, float(cur.max()), 0.0 if columns else -float(cur.min()))
                # |current| <= 127 r per plane, at most 2^n times that over the planes: int32 while that fits
                wide = np.int32 if 127 * r << n < 1 << 31 else np.int64
                acc = np.einsum("jmn,j->mn", cur.reshape(n, len(xb), -1).astype(wide, copy=False), w.astype(wide))
                out[s:s + chunk, block.index] += acc[:, :nb] - acc[:, nb:] if columns else acc
        self.peaks[plan.name] = peak
        return out.astype(plan.dtype)

    def _record(self, plan: _Plan, c: int, x: np.ndarray) -> None:
        """Largest ideal line current (step units, magnitude) over all reads: the calibrated ADC full scale."""
        columns = self.target.array.differential == "columns"
        n_planes = 1 if plan.analog else plan.bits
        xi = x if plan.analog else uint_codes(x, plan.bits, plan.signed)
        peak = self.peaks[plan.name]
        for block in plan.blocks:
            r = block.r1 - block.r0
            mat = block.lines[c] if columns else block.diff[c].astype(np.float32)
            chunk = max(1, CHUNK_ELEMENTS // (n_planes * max(r, mat.shape[1])))
            int8 = self._int_session is not None and not plan.analog
            for s in range(0, len(x), chunk):
                xb = xi[s:s + chunk, block.r0:block.r1]
                if plan.analog:
                    cur = xb.astype(np.float32) @ mat
                elif int8:
                    u = bit_planes_uint(xb, n_planes, np.empty((n_planes,) + xb.shape, np.uint8))
                    cur = self._int_session.run(None, {"A": u.reshape(-1, r), "B": block.quantised[c]})[0]
                else:
                    cur = bit_planes_uint(xb, n_planes).reshape(-1, r) @ mat
                if cur.size:
                    peak = max(peak, float(cur.max()), -float(cur.min()))
        self.peaks[plan.name] = peak

    def _observe(self, plan: _Plan, x: np.ndarray, out: np.ndarray) -> None:
        ref = x.astype(np.float64) @ plan.exact_levels
        err = out.astype(np.float64) - ref
        st = self.stats[plan.name]
        st["sq_err"] += float(np.square(err).sum())
        st["sq_ref"] += float(np.square(ref).sum())
        if err.size:
            st["max_abs_err"] = max(st["max_abs_err"], float(np.abs(err).max()))

    # -- reports ----------------------------------------------------------------------------------------------
    # -- in-situ writes (hybrid training) -------------------------------------------------------------------
    def set_conductances(self, array_ids, conductance_us: np.ndarray) -> None:
        """Overwrite the conductances of whole arrays on this chip instance (uS, [len(ids), rows, cols]) and
        rebuild the read plans of the layers placed on them (their ADC full scales stay)."""
        ids = np.asarray(array_ids, dtype=np.int64)
        self.chip.conductance_us[ids] = conductance_us
        self.g_units[ids] = (conductance_us - self.target.device.g_min_us) / self.model.step_us
        touched = set(ids.tolist())
        self._cells_plans = {}
        for op in self.graph.xbar_ops():
            if any(p.array in touched for t in self.graph.array_owner(op).tiles for p in t.placements):
                old = self.plans[op.name]
                plan = self._plan(op, self.target)
                plan.full_scale, plan.full_scale_source = old.full_scale, old.full_scale_source
                self.plans[op.name] = plan

    def chip_identity(self) -> dict:
        """What makes two chip instances the same: the seed, the device non-idealities and the defect map."""
        dm = self.model.defect_map
        return {"seed": self.chip_seed, "nonideal": dataclasses.asdict(self.target.nonideal),
                "defect_map": None if dm is None else hashlib.sha256(np.ascontiguousarray(dm.stuck)).hexdigest()}

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
             "simulate_planes": self.simulate_planes, "gemm": self.gemm,
             "conductance_grid_us": None if getattr(self, "grid", 1) <= 1 or t is None
             else t.device.step_us / self.grid}
        if t is not None:
            d["nonideal"] = t.to_dict()["nonideal"]
            d["adc"] = t.to_dict()["adc"]
            d["defect_map"] = None if self.model.defect_map is None else self.model.defect_map.path
            d["adc_full_scale"] = {name: {"ua": None if p.full_scale is None else p.full_scale * p.unit_ua,
                                          "source": p.full_scale_source} for name, p in self.plans.items()}
        return d


def _channel_tiles(op, blocks: list) -> list | None:
    """Per row tile of a convolution, the input channels [c0, c1) it holds, where every tile holds whole channels
    starting on a multiple of 8 and padding its last octet wastes at most a quarter of its lookups (gemm="lut" then
    reads the convolution without im2col); else None."""
    if op.conv is None or not op.conv.planar:
        return None
    size = op.conv.kernel[0] * op.conv.kernel[1]
    channels = []
    for block in blocks:
        if block.r0 % size or block.r1 % size or (block.r0 // size) % lut_reads.GROUP:
            return None
        c0, c1 = block.r0 // size, block.r1 // size
        direct = -(-(c1 - c0) // lut_reads.GROUP) * size         # lookups per plane without im2col ...
        if 4 * direct > 5 * -(-(block.r1 - block.r0) // lut_reads.GROUP):   # ... against on im2col rows
            return None
        channels.append((c0, c1))
    return channels


def combine_layer_stats(backends: list) -> list[dict]:
    """Layer statistics summed over several runs (e.g. trials) of bound crossbar backends with diagnostics on:
    rel_error = sqrt(sum (acc - exact)^2 / sum exact^2) over all accumulators of the layer, snr_db = -20 log10 of
    it, adc_clip_rate = clipped conversions / conversions (0 for a lossless ADC)."""
    first = backends[0]
    rows = []
    for name, plan in first.plans.items():
        sums = {k: sum(b.stats[name][k] for b in backends) for k in ("sq_err", "sq_ref", "clipped", "conversions")}
        rel = float(np.sqrt(sums["sq_err"] / sums["sq_ref"])) if sums["sq_ref"] > 0 else None
        snr = None if rel is None else (None if rel == 0 else float(-20 * np.log10(rel)))
        rows.append({"name": name, "rel_error": rel, "snr_db": snr,
                     "max_abs_error": max(b.stats[name]["max_abs_err"] for b in backends),
                     "adc_clip_rate": sums["clipped"] / sums["conversions"] if sums["conversions"] else 0.0,
                     "adc_conversions": int(sums["conversions"]),
                     "adc_full_scale_ua": None if plan.full_scale is None else plan.full_scale * plan.unit_ua,
                     "adc_full_scale_source": plan.full_scale_source})
    return rows


def as_json_value(value):
    """The value as it reads back from a manifest's JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _lossless(adc):
    import dataclasses
    return dataclasses.replace(adc, lossless=True)


def calibrate_adc_full_scale(graph, target, data, batch_size: int = 64, arrays=None,
                             max_samples: int | None = None) -> dict[str, float]:
    """The documented calibration rule of the ADC full scale: for each crossbar op, the largest line current (uA)
    that the ideal chip (ideal devices, the manifest's levels) carries in any read of the calibration set — every
    bit-plane (or analog read), every row tile and line, every sample; including the g_min part of a "columns" line;
    the magnitude for a bipolar ("rows") line. Activations follow the integer (ideal) chip. Ops whose lines never
    carry current are left out (the backend then uses the 'max' full scale). `data`: array or dict of arrays;
    `max_samples`: use only its first samples (ResNet-56 costs about 60 ms per sample on 2 cores)."""
    feeds = check_feeds(graph, data, "ADC calibration data")
    n = len(next(iter(feeds.values())))
    if max_samples is not None:
        n = min(n, max_samples)
    backend = CrossbarBackend(record_currents=True)
    backend.bind(graph, arrays, target)
    for start in range(0, n, batch_size):
        run_graph(graph, {k: v[start:min(start + batch_size, n)] for k, v in feeds.items()}, backend)
    return {name: peak * backend.plans[name].unit_ua for name, peak in backend.peaks.items() if peak > 0}
