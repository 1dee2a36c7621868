"""The `crossbar` backend: the chip that a manifest describes, simulated read by read.

The integer meaning of every quantity of one array read (input bit, current, ADC LSB, code, clip, shift, partial
sum) is written once, with a worked example, in docs/arithmetic.md; this module implements exactly that.

The parts: the chip instance (cimc.backends.chip: devices, ADC instances, identity), the ADC model
(cimc.targets.adc), the read plans (read_plan.py), and the readers, chosen once at bind (`reader`): bit-plane GEMMs
(plane_reader.py, float32 or int8: int8_reader.py), numba table reads (table_reader.py), or one product per layer
for a lossless ADC (here). This class binds them and walks the samples through their copies.

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
  A layer compiled with averaging copies (`average` = a > 1, `cimc compile --copies-for accuracy|mix`) has
  replicas / a groups of a copies: sample i reads every copy of group i % groups (each with its own devices and its
  own read-noise stream, drawn as for any copy) and the backend averages their accumulators after the ADC and the
  shift-and-add, before the executor's scale and bias (`_averaged`). Ideal copies give the single copy's value bit
  for bit. Such a convolution is read through im2col (no direct table or onnxruntime reads).
* **GEMMs.** A layer's reads are one product per row tile and input chunk: all bit-planes of all its pixels
  ([planes x pixels, rows] of 0/1) times all lines of all its arrays in that row tile ([rows, lines]). float32 holds
  these integer sums exactly up to 2^24 (every ideal plane current is at most rows * (o + L), e.g. 144 * 8). With
  `gemm="int8"` the products run as onnxruntime MatMulInteger (uint8 planes x int8 conductances, exact int32 sums)
  with conductances on a grid of step / q, q = floor(127 / largest conductance in steps) (q = 14, 0.18 uS, for
  Yao's devices with 0.54 uS programming error): about 1.6x faster end to end; ideal levels stay exact. With
  `gemm="lut"` (numba, cimc.backends.lut_reads) each read is r/8 lookups in tables of 8-row subset sums, and the ADC
  and shift-and-add run in the same loop, on a grid of step / ~400 (6 nS): about 6x faster than float32 on
  ResNet-56; on the int8 grid it equals gemm="int8" bit for bit. The default (gemm=None) is "lut" wherever it
  applies and "float32" elsewhere, or where numba cannot be imported (with a warning): `_default_gemm`. A
  convolution whose row tiles hold whole input channels is read without im2col, straight from its padded NHWC
  codes (`_conv_table_reads`). Reads with read noise, or through ADCs with gain, offset, INL or sense noise, keep
  float32 GEMMs (the kernel draws nothing and fuses an ideal ADC).
* Read noise is drawn per sample: the sample of global index i reads layer l's copy c with its own generator,
  cimc.targets.devices.read_generator(seed, l, c, i), which draws its [planes, positions, lines] block of each row
  tile in turn (the planes' sum, [positions, lines], for a lossless read); chunks of reads hold whole samples. So
  the same seed gives a sample the same output at any batch size and with any other samples in its batch. Sense
  noise (ADC) is drawn the same way from its own streams (cimc.targets.adc.sense_generators): [planes, positions,
  lines] per sample and row tile.
"""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np

from cimc.backends import ir_check, lut_reads
from cimc.backends.base import Backend
from cimc.backends.bit_planes import (FLOAT32_EXACT, bit_planes, bit_planes_uint,  # noqa: F401 (re-exported)
                                      plane_weights, rowwise_matmul, uint_codes)
from cimc.backends.chip import Chip
from cimc.backends.int8_reader import Int8Reads
from cimc.backends.plane_reader import PlaneReads
from cimc.backends.read_plan import ReadPlan, RowTile
from cimc.backends.slice_lines import reference_index, slice_adc_lines, slice_lines
from cimc.backends.table_reader import TableReads, _channel_tiles
from cimc.errors import ConfigError
from cimc.graph_run import check_feeds, run_graph
from cimc.ir import block_matmul, put_block_slice
from cimc.layout import placement_rows, program_arrays, read_levels, tile_slices
from cimc.targets.adc import adc_convert, adc_range  # noqa: F401  (re-exported: the conversion rule)
from cimc.targets.spec import NonIdealSpec
from cimc.weight_encoding import combine, encoded, require_pair, tile_planes

GEMMS = ("float32", "int8", "lut")
DEFAULT_GEMM = "lut"      # the reader of a run that names none (gemm=None), where it applies (_default_gemm)


# What the manifest fixed when it was compiled (geometry, level count, input coding, quantisation, placement): a
# chip override cannot change it, only the physics (devices' conductances, non-idealities, ADC, timing, energy).
_FIXED_AT_COMPILE = (("array", None), ("quant", None), ("chip", None), ("device", "levels"), ("input", "bits"),
                     ("input", "encoding"), ("weights", None))


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


class CrossbarBackend(PlaneReads, Int8Reads, TableReads, Backend):
    """`CrossbarBackend(seed=0, overrides=None, ideal=False, copy=None, defect_map=None, adc_full_scale=None,
    calibration=None, diagnostics=False, simulate_planes=False, gemm="float32")`.

    overrides: target overrides (["nonideal.program_sigma_us=0.54", ...] or a dict) applied to the manifest's target;
    ideal: ideal devices and a lossless ADC (then equal to the integer backend bit for bit); copy: force one replica;
    defect_map: npz path (cimc.targets.devices); adc_full_scale: {op name: uA}; calibration: input data to calibrate
    the ADC full scale at bind when the manifest holds none; diagnostics: per-layer error and clipping statistics
    (`layer_stats()`); simulate_planes: run every bit-plane even with a lossless ADC; gemm: "float32", "int8",
    "lut" or None, the default: "lut" where it applies, else "float32" (see the module doc and `_default_gemm`).
    `record_currents` is internal (`calibrate_adc_full_scale`)."""
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
        if copy is not None and (not isinstance(copy, (int, np.integer)) or copy < 0):
            raise ConfigError(f"copy={copy!r}: must be a replica index >= 0")
        self.copy = None if copy is None else int(copy)
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
        self.requested_gemm = gemm          # None: DEFAULT_GEMM where it applies, resolved at bind (`_default_gemm`)
        self.gemm = gemm                    # the reader family in use, from bind on
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
            target = target.replace(nonideal=NonIdealSpec(), adc=_lossless(target.adc),
                                    input=dataclasses.replace(target.input, dac_inl_lsb=0.0,
                                                              driver_gain_sigma_rel=0.0))
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
        # the ADC calibration's chip is ideal: its levels are its conductances in step units (no float64 copy)
        self.chip = Chip(target, arrays, self.chip_seed, defect_map, levels_only=self.record_currents)
        self.model = self.chip.model
        self.g_units, self.offset, self.read_sigma = self.chip.g_units, self.chip.offset, self.chip.read_sigma
        self.sense_sigma = self.chip.adc.noise_sigma_lsb
        if encoded(target):     # slices and offsets combined after a lossless ADC only, so far (cimc.weight_encoding)
            self._refuse_encoding(target)
        self.dac_inl = float(target.input.dac_inl_lsb) if target.input.encoding == "analog" else 0.0
        self.layer_index = {op.name: i for i, op in enumerate(graph.xbar_ops())}   # keys of the read-noise streams
        max_replicas = max((op.replicas for op in graph.xbar_ops()), default=1)
        if self.copy is not None and self.copy >= max_replicas:
            raise ConfigError(f"copy={self.copy}: the manifest's layers have at most {max_replicas} "
                              f"cop{'y' if max_replicas == 1 else 'ies'} (copies 0..{max_replicas - 1})")
        self._cells_plans: dict = {}      # (owner, dtype) -> its first plan: the reads of shared arrays share cells
        self.plans = {op.name: self._plan(op, target) for op in graph.xbar_ops()}   # readers: the owner's devices
        self._resolve_full_scale(graph, target)
        self.grid, self._int_session, self._lut = 1, None, False
        self._batched_session, self._record_cache = None, {}      # the ADC calibration's batched reads (int8_reader)
        self._fused_sessions, self._planes_memory = {}, None
        self.gemm = self.requested_gemm or self._default_gemm(target)
        if self.gemm == "int8" and not target.adc.lossless:
            self._quantise_conductances(target, self.conductance_grid)
        elif self.gemm == "lut" and not target.adc.lossless:
            self._lut_grid(target)
        elif (self.record_currents and float(self.offset).is_integer() and self.offset + target.device.max_level <= 127
              and not encoded(target)):           # the exact int8 reads form pairs' accumulators (int8_reader)
            self._quantise_conductances(target, grid=1)          # ideal levels + integer g_min: exact in int8
        self.reader = self._reader(target)
        for plan in self.plans.values():
            plan.conv_route = self._conv_route(plan)
        self.stats = {name: {"sq_err": 0.0, "sq_ref": 0.0, "clipped": 0, "conversions": 0, "max_abs_err": 0.0}
                      for name in self.plans}
        if self.chip.read_us is not None:        # line/access resistance: the fast path's error, sampled (ir_check)
            for st in self.stats.values():
                st.update(ir_sq_err=0.0, ir_sq_ref=0.0, ir_vectors=0)
        self.peaks = {name: 0.0 for name in self.plans}
        # bit-sliced: each slice's peak too (the ADC calibration's reads; cimc.backends.slice_lines.line_slices)
        self.slice_peaks = {name: np.zeros(target.weights.slices) for name in self.plans} \
            if target.weights.encoding == "bit-sliced" else {}

    def _refuse_encoding(self, target) -> None:
        if self.simulate_planes and target.adc.lossless:
            require_pair(target, "the crossbar backend with simulate_planes with a lossless ADC")

    def _default_gemm(self, target) -> str:
        """The reader of a run that names none: DEFAULT_GEMM ("lut") wherever its table reads apply - bit-serial
        reads of inputs of at most 8 bits through an ideal finite ADC, no read noise - else "float32" (silently: the
        float32 GEMMs are then what the lut reader itself would fall back to, see `_lut_grid`). Where numba cannot be
        imported, "float32" with one warning that says why and how to get the fast path."""
        tables = [p for p in self.plans.values() if not p.analog and p.bits <= 8]
        if (self.record_currents or target.adc.lossless or self.read_sigma > 0 or not self.chip.adc.ideal
                or self.sense_sigma > 0 or not tables or self._slice_scales()
                or any(adc_range(target.adc.bits, p.bipolar)[1] << p.bits >= 1 << 31 for p in tables)):
            return "float32"                  # the last: ADC codes whose shift-and-add overflows the kernel's int32
        why = lut_reads.import_error()
        if why is not None:
            warnings.warn(f"crossbar backend: numba cannot be imported ({why}), so this run reads through float32 "
                          "GEMMs, up to 6x slower than the default table reads (gemm='lut'); pip install -e '.[fast]' "
                          "(numba is a dependency of cimc) for the fast path, or choose gemm='float32' "
                          "(--gemm float32) to keep this reader without the warning", stacklevel=3)
            return "float32"
        return DEFAULT_GEMM

    def _slice_scales(self) -> bool:
        """Whether some layer converts its slices' lines with full scales of their own (adc.full_scale_per_slice):
        the float32 and int8 readers do; the lut kernel fuses one ADC gain per layer."""
        return any(p.slice_full_scale is not None for p in self.plans.values())

    def _reader(self, target) -> str:
        """How reads run, chosen once here: "record" (ADC calibration), "product" (lossless: one product per
        layer), or every bit-plane as "float32" / "int8" GEMMs or "lut" table reads (see the module doc)."""
        if self.record_currents:
            return "record"
        if target.adc.lossless and not self.simulate_planes:
            return "product"
        if self._lut:
            return "lut"
        return "int8" if self._int_session is not None and not target.adc.lossless else "float32"

    def _plan(self, op, target) -> ReadPlan:
        spec = target.array
        q = op.input_quant
        cells = self.graph.array_owner(op)      # a shared-weight reader reads its owner's tiles and placements
        bits, signed = q.bits, q.signed
        analog = target.input.encoding == "analog"
        pair_rows = spec.differential == "rows" and target.weights.encoding != "offset"     # +v/-v difference lines
        bipolar = pair_rows or (analog and signed)
        qmax = max(abs(q.qmin), q.qmax)
        bound = op.rows * qmax * target.max_weight_level
        dtype = np.float32 if bound < FLOAT32_EXACT else np.float64
        _, top = adc_range(target.adc.bits, bipolar)
        code_bound = top * (qmax if analog else (1 << bits)) * max(1, -(-op.rows // spec.inputs_per_tile))
        if encoded(target):     # slices shifted and added: up to sum_s L^s times one line's codes
            code_bound *= sum(target.device.levels ** s for s in range(target.weights.slices))
        code_dtype = np.float32 if code_bound < FLOAT32_EXACT else np.float64
        # the levels for diagnostics (`_observe`), which the ADC calibration's reads never run
        exact = None if self.record_currents else read_levels(cells, self.arrays, target, 0).astype(np.float64)
        by_start: dict[int, list] = {}
        for tile in cells.tiles:
            by_start.setdefault(tile.row_start, []).append(tile)
        blocks = []
        # K x N, or a grouped op's compact blocks (cimc.ir): off-block devices are read through the row tiles only
        effective = [np.zeros(cells.matrix.shape, dtype) for _ in range(cells.replicas)]
        reference = self.chip.g_units_reference        # global drift compensation: sums of |g+ - g-| per copy
        sums = np.zeros((cells.replicas, 2)) if reference is not None else None
        for r0 in sorted(by_start):
            tiles = sorted(by_start[r0], key=lambda t: t.col_start)
            rc = tiles[0].row_count
            cols = np.concatenate([np.arange(t.col_start, t.col_start + t.col_count) for t in tiles])
            block = RowTile(r0, r0 + rc, cols)
            contiguous = len(cols) and np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols)))
            block.index = slice(int(cols[0]), int(cols[0]) + len(cols)) if contiguous else cols
            if target.weights.reference_column:     # each tile's reference line, subtracted after the ADC
                block.reference = reference_index(tiles)
            for c in range(cells.replicas):
                if encoded(target):     # each plane's line read on its own, combined digitally after the ADC
                    planes = [_driven_planes(self.g_units, t, t.placements[c], self.chip, target) for t in tiles]
                    d = np.concatenate([combine(tp, target) for tp in planes], axis=1)
                    block.diff.append(d.astype(dtype))
                    if not target.adc.lossless or self.record_currents:   # one line per plane (columns, offset)
                        # or slice (row pairs); the ADC calibration reads them too
                        block.lines.append(slice_lines(planes, spec, self.offset, target.weights.encoding))
                    if not self.chip.adc.ideal:      # each line's own ADC: that of its physical column
                        block.adc.append(slice_adc_lines(self.chip.adc, tiles, c, target))
                    if sums is not None:             # the reference read, combined as the reads are
                        ref = [combine(_driven_planes(reference, t, t.placements[c], self.chip, target), target)
                               for t in tiles]
                        sums[c] += [np.abs(np.concatenate(ref, axis=1)).sum(), np.abs(d).sum()]
                    _put_effective(effective[c], d, r0, rc, cols, tiles)
                    continue
                plus, minus, where = [], [], []
                for t in tiles:
                    p = t.placements[c]
                    pi, mi = tile_slices(t, p, spec)
                    gpt, gmt = self.g_units[p.array][pi], self.g_units[p.array][mi]
                    if self.chip.driver_gain is not None:     # a driver's gain scales its row's devices, g_min too
                        gpt, gmt = _driven(gpt, gmt, t, p, self.chip, spec)
                    plus.append(gpt)
                    minus.append(gmt)
                    where.append((p.array, np.arange(pi[1].start, pi[1].stop, pi[1].step),   # the physical
                                  np.arange(mi[1].start, mi[1].stop, mi[1].step)))           # columns of its lines
                gp, gm = np.concatenate(plus, axis=1), np.concatenate(minus, axis=1)
                if gp.dtype.kind == "u":         # the levels of a levels_only chip: signed differences
                    gp, gm = gp.astype(np.int16), gm.astype(np.int16)
                if not self.chip.adc.ideal:
                    block.adc.append(_adc_lines(self.chip.adc, where, spec.differential == "columns"))
                d = gp - gm
                block.diff.append(d.astype(dtype))
                if sums is not None:
                    sums[c] += _reference_sums(reference, tiles, c, spec, self.chip, d)
                if spec.differential == "columns":
                    block.lines.append(np.concatenate([gp, gm], axis=1).astype(np.float32) + np.float32(self.offset))
                _put_effective(effective[c], d, r0, rc, cols, tiles)
            blocks.append(block)
        channels = _channel_tiles(op, blocks)
        step = target.device.step_us
        unit_ua = target.input.read_voltage_v * step / (qmax if analog else 1)
        plan = ReadPlan(op.name, op.rows, op.cols, cells.replicas, bits, signed, analog, bipolar, dtype, code_dtype,
                        blocks, effective, exact, np.array([1.0]) if analog else plane_weights(bits, signed), unit_ua,
                        qmin=q.qmin, qmax=q.qmax, channels=channels, average=cells.average)
        if sums is not None:    # alpha = reference read / read at t, per copy (aihwkit GlobalDriftCompensation)
            plan.drift_scale = np.where(sums[:, 1] > 0, sums[:, 0] / np.where(sums[:, 1] > 0, sums[:, 1], 1), 1.0)
        first = self._cells_plans.setdefault((cells.name, np.dtype(dtype).str), plan)
        if first is not plan:       # the same devices: one copy of their conductances (and their tables) in memory
            plan.blocks, plan.effective, plan.exact_levels = first.blocks, first.effective, first.exact_levels
        if not analog:
            codes = np.arange(q.qmin, q.qmax + 1)
            planes = bit_planes(codes[:, None].astype(np.float32), bits, signed)[:, :, 0]
            plan.noise_lut = (plan.weights[:, None] ** 2 * planes).sum(axis=0)
        return plan


    def _max_full_scale(self, plan: ReadPlan, target) -> float:
        spec, dev = target.array, target.device
        amp = max(abs(plan.qmin), plan.qmax) if plan.analog else 1
        if spec.differential == "rows" and target.weights.encoding != "offset":
            return float(spec.rows // 2 * dev.max_level * amp)
        return float(spec.rows * (self.offset + dev.max_level) * amp)

    def _resolve_full_scale(self, graph, target) -> None:
        if target.adc.lossless:
            return
        computed = None
        per_slice = target.adc.full_scale_per_slice and target.adc.full_scale == "calibrated"
        unsliced = []                 # full_scale_per_slice asked, but no per-slice full scales known for these
        for op in graph.xbar_ops():
            plan = self.plans[op.name]
            ua, source, slices = None, None, None
            if target.adc.full_scale == "calibrated":
                if op.name in self.adc_full_scale:
                    ua, source = self.adc_full_scale[op.name], "option"
                elif getattr(op, "adc_full_scale_ua", None):
                    ua, source, slices = op.adc_full_scale_ua, "manifest", op.adc_slice_full_scale_ua
                elif self.calibration is not None:
                    if computed is None:
                        computed = calibrate_adc_full_scales(graph, target, self.calibration, arrays=self.arrays)
                    ua, source = computed[0].get(op.name), "calibration data"
                    slices = computed[1].get(op.name)
            if ua is not None and ua > 0:
                plan.full_scale, plan.full_scale_source = float(ua) / plan.unit_ua, f"calibrated ({source})"
                if per_slice and slices is not None:     # a slice that never carries current keeps the layer's
                    plan.slice_full_scale = np.array([plan.full_scale if v is None or v <= 0 else
                                                      float(v) / plan.unit_ua for v in slices])
                    plan.full_scale_source += ", per slice"
                elif per_slice:
                    unsliced.append(op.name)
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
        if unsliced:
            warnings.warn(f"crossbar backend: adc.full_scale_per_slice is set but no per-slice full scales are known "
                          f"for {len(unsliced)} layer(s) ({', '.join(unsliced[:3])}"
                          f"{', ...' if len(unsliced) > 3 else ''}: a manifest compiled before they were recorded, "
                          "or a full scale given per layer); every slice there uses the layer's one full scale. "
                          "Recompile, or pass calibration data (--calibration).", stacklevel=2)

    # -- the product --------------------------------------------------------------------------------------------
    def conv(self, op, x: np.ndarray) -> np.ndarray | None:
        """Calibration reads and bit-serial reads through a real ADC run im2col on the uint8 codes themselves
        (`_conv_on_codes`). A lossless read without read noise is one exact product x . G' per copy (see the module
        doc): run the whole convolution in onnxruntime, like the integer backend. Any other read goes bit-plane by
        bit-plane through the executor's im2col + mvm."""
        if not op.conv.planar:      # a Conv3d or ConvTranspose: the executor's operand + mvm
            return None
        plan = self.plans[op.name]
        route = plan.conv_route
        if route == "record":
            return self._conv_on_codes(op, plan, x, lambda p, c, xs, ids: self._record_exact(p, c, xs))
        if route == "table":
            return self._compensate(plan, self._conv_table_reads(op, plan, x), len(x))
        if route == "codes":
            return self._compensate(plan, self._conv_on_codes(
                op, plan, x, lambda p, c, xs, ids: self._planes(p, c, xs, ids, encoded=True)), len(x))
        if route != "onnx":
            return None
        return self._compensate(plan, self._onnx_conv(op, plan, x), len(x))

    def _onnx_conv(self, op, plan: ReadPlan, x: np.ndarray) -> np.ndarray:
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

    def _conv_route(self, plan: ReadPlan) -> str | None:
        """How `conv` reads a convolution, fixed at bind: "record" (exact int8 calibration reads), "table" (lut reads
        from NHWC codes), "codes" (bit-planes of uint8 im2col codes), "onnx" (one exact product as an onnxruntime
        Conv), or None (the executor's im2col + mvm)."""
        if self.record_currents and self._exact_record(plan):
            return "record"
        if self._averaging(plan):          # every copy of a group read and averaged: through `_by_copy` only
            return "codes" if self._encoded_reads(plan) else None
        if self._direct_table_reads(plan):
            return "table"
        if self._encoded_reads(plan):
            return "codes"
        if (not self.target.adc.lossless or self.simulate_planes or self.record_currents or self.diagnostics
                or self.read_sigma > 0 or self.gemm != "float32" or plan.dtype != np.float32
                or (plan.analog and self.dac_inl)):
            return None
        return "onnx"

    def mvm(self, op, x: np.ndarray, batch: int) -> np.ndarray:
        plan = self.plans[op.name]
        applied = dac_amplitudes(x, max(abs(plan.qmin), plan.qmax), self.dac_inl) if plan.analog else x
        out = self._compensate(plan, self._by_copy(plan, applied, batch, self._run_copy), batch)
        if self.diagnostics:
            self._observe(plan, x, out)
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
        """Each sample's rows of x [m, K] go through its copy (`_copy_samples`): run(plan, c, rows, ids) -> [., N],
        ids: the global indices of the samples whose rows those are."""
        m = x.shape[0]
        ids = self._sample_ids(batch)
        copies = self._copy_samples(plan, ids)
        if self._averaging(plan):
            run = self._averaged(run)
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

    def _copy_samples(self, plan: ReadPlan, ids: np.ndarray) -> list[tuple[int, object]]:
        """[(copy, the positions in the batch of the samples it reads)]: the sample of global index i reads copy
        i % replicas, whatever batch it is in; or every sample copy `self.copy`. An averaging layer (plan.average
        = a > 1) has replicas / a groups: the sample reads group g = i % groups, and the entry is g's first copy,
        g * a (`_averaged` reads all a of them)."""
        groups = plan.replicas // plan.average if self._averaging(plan) else plan.replicas
        if groups == 1 or self.copy is not None or len(ids) == 0:
            return [(0 if self.copy is None else self.copy % plan.replicas, slice(None))]
        a = plan.replicas // groups
        copy_of = ids % groups
        if np.all(copy_of == copy_of[0]):
            return [(int(copy_of[0]) * a, slice(None))]
        return [(c * a, np.flatnonzero(copy_of == c)) for c in range(groups) if np.any(copy_of == c)]

    def _averaging(self, plan: ReadPlan) -> bool:
        """Copies averaged per sample: the plan says so, and no `copy=` forces one copy, and these are not the
        ideal calibration reads (every copy the same there)."""
        return plan.average > 1 and self.copy is None and not self.record_currents

    def _averaged(self, run):
        """run(plan, c, x, ids) over the plan's averaging group starting at copy c: every copy read (its own devices,
        its own read-noise streams), the accumulators (after the ADC and shift-and-add, before the executor's
        scale and bias) summed in float64 and divided by the group size. Equal copies give their own value exactly
        (a sum of a equal integers below 2^53, divided by a)."""
        def run_group(plan, c, x, ids):
            total = None
            for k in range(c, c + plan.average):
                acc = run(plan, k, x, ids)
                total = acc.astype(np.float64) if total is None else total + acc
            return (total / plan.average).astype(plan.dtype, copy=False)
        return run_group


    def _run_copy(self, plan: ReadPlan, c: int, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self.reader == "record":
            if self._exact_record(plan):
                return self._record_exact(plan, c, uint_codes(x, plan.bits, plan.signed))
            self._record(plan, c, x)
            return self._product(plan, c, x.astype(plan.dtype, copy=False))
        if self.reader == "product":
            acc = self._product(plan, c, x.astype(plan.dtype, copy=False))
            if self.read_sigma > 0:
                self._lossless_noise(plan, c, x, acc, ids)
            return acc
        return self._planes(plan, c, x, ids)


    def _product(self, plan: ReadPlan, c: int, x: np.ndarray) -> np.ndarray:
        """x [m, K] times copy c's conductance differences: one product with the K x N matrix; a grouped op's (compact,
        cimc.ir) row tile by row tile, so the devices of its tiles outside the diagonal blocks are read too."""
        bound = max(abs(plan.qmin), abs(plan.qmax))        # the codes' largest magnitude
        if plan.effective[c].ndim == 2:
            return rowwise_matmul(x, plan.effective[c], bound)
        out = np.zeros((len(x), plan.cols), plan.dtype)
        for block in plan.blocks:
            out[:, block.index] += rowwise_matmul(np.ascontiguousarray(x[:, block.r0:block.r1]),
                                                  block.diff[c].astype(plan.dtype, copy=False), bound)
        return out

    def _observe(self, plan: ReadPlan, x: np.ndarray, out: np.ndarray) -> None:
        ref = block_matmul(x.astype(np.float64), plan.exact_levels)
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
        self.chip.set_conductances(array_ids, conductance_us)
        touched = set(np.asarray(array_ids, dtype=np.int64).tolist())
        self._cells_plans = {}
        for op in self.graph.xbar_ops():
            if any(p.array in touched for t in self.graph.array_owner(op).tiles for p in t.placements):
                old = self.plans[op.name]
                plan = self._plan(op, self.target)
                plan.full_scale, plan.full_scale_source = old.full_scale, old.full_scale_source
                plan.slice_full_scale = old.slice_full_scale
                plan.conv_route = old.conv_route
                if self._int_session is not None:       # gemm="int8": the new conductances on the same grid
                    self._quantise_plan(plan)
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


def _adc_lines(adc, where: list, columns: bool):
    """The AdcLines of a row tile's lines: `where` holds, per tile in line order, (array, g+ columns, g- columns);
    "columns" lines are all g+ lines then all g- lines, "rows" lines one per output (its g+ column)."""
    arrays = np.concatenate([np.full(len(cp), a) for a, cp, _ in where])
    plus = np.concatenate([cp for _, cp, _ in where])
    if not columns:
        return adc.lines(arrays, plus)
    minus = np.concatenate([cm for _, _, cm in where])
    return adc.lines(np.concatenate([arrays, arrays]), np.concatenate([plus, minus]))


def _driven(gp: np.ndarray, gm: np.ndarray, tile, placement, chip, spec) -> tuple[np.ndarray, np.ndarray]:
    """A row tile's g+ and g- (step units above g_min) as its rows' drivers apply them: (g + o) * a_r - o, so the
    read current sum_r u_r a_r (g_r + o) keeps the plan's form (o added back where a physical current is needed)."""
    a = chip.driver_gain[placement.array]
    rows = placement_rows(tile, placement)
    ap = a[rows][:, None]
    am = ap if spec.differential == "columns" else a[rows + spec.rows // 2][:, None]
    return _drive(gp, ap, chip.offset), _drive(gm, am, chip.offset)


def _drive(g: np.ndarray, a: np.ndarray, offset: float) -> np.ndarray:
    """Conductances g (step units above g_min) read through row drivers of gain a: the current a (g + o), written
    back above g_min."""
    return (g + offset) * a - offset


def _driven_planes(g_units, tile, placement, chip, target) -> list[np.ndarray]:
    """A tile's device planes (cimc.weight_encoding.tile_planes; step units above g_min) as its rows' drivers apply
    them: (g + o) * a_r - o, as `_driven` does for a pair."""
    g = g_units[placement.array]
    planes = []
    for rows, cols in tile_planes(tile, placement, target):
        plane = g[rows, cols]
        if chip.driver_gain is not None:
            plane = _drive(plane, chip.driver_gain[placement.array][rows][:, None], chip.offset)
        planes.append(plane)
    return planes


def _reference_sums(reference: np.ndarray, tiles, c: int, spec, chip, d: np.ndarray) -> np.ndarray:
    """[sum |g+ - g-| at programming, at t] over a row tile's weights on copy c (step units, drivers applied)."""
    ref = []
    for t in tiles:
        p = t.placements[c]
        pi, mi = tile_slices(t, p, spec)
        gp, gm = reference[p.array][pi], reference[p.array][mi]
        if chip.driver_gain is not None:
            gp, gm = _driven(gp, gm, t, p, chip, spec)
        ref.append(gp - gm)
    return np.array([np.abs(np.concatenate(ref, axis=1)).sum(), np.abs(d).sum()])


def dac_amplitudes(x: np.ndarray, qmax: int, inl_lsb: float) -> np.ndarray:
    """Analog inputs: the amplitudes (in input LSB) that row drivers with a bow-shaped non-linearity apply for codes
    x: u = x + inl_lsb * 4 s (1 - s) sign(x), s = |x| / qmax (exact at 0 and full scale, inl_lsb off at mid-scale).
    x itself when inl_lsb is 0."""
    if not inl_lsb:
        return x
    s = np.abs(x.astype(np.float64)) / qmax
    return (x + inl_lsb * 4.0 * s * (1.0 - s) * np.sign(x)).astype(x.dtype)


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
        if "ir_vectors" in first.stats[name]:     # wire/access resistance: the fast path against the exact circuit
            err, ref = (sum(b.stats[name][k] for b in backends) for k in ("ir_sq_err", "ir_sq_ref"))
            rows[-1]["ir_approx_error"] = float(np.sqrt(err / ref)) if ref > 0 else None
    return rows


def as_json_value(value):
    """The value as it reads back from a manifest's JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _lossless(adc):
    import dataclasses
    return dataclasses.replace(adc, lossless=True)


def _put_effective(effective, d, r0, rc, cols, tiles) -> None:
    """A row tile's conductance differences into the op's effective matrix (K x N, or compact blocks)."""
    if effective.ndim == 2:
        effective[r0:r0 + rc, cols] = d
        return
    at = 0
    for t in tiles:
        put_block_slice(effective, r0, t.col_start, d[:, at:at + t.col_count])
        at += t.col_count


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
    scales = {name: peak * backend.plans[name].unit_ua for name, peak in backend.peaks.items() if peak > 0}
    slices = {name: [float(p * backend.plans[name].unit_ua) if p > 0 else None for p in peaks]
              for name, peaks in backend.slice_peaks.items() if name in scales}
    return scales, slices


class Cancelled(Exception):
    """calibrate_adc_full_scale stopped before its end (its `stop` was set)."""


def _raise_if_set(stop) -> None:
    if stop.is_set():
        raise Cancelled("ADC calibration cancelled")
