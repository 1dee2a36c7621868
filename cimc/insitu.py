"""In-situ training of a 64-54-10 MLP on one Li et al. (Nat. Commun. 2018) 128x64 1T1R array.

    from cimc.insitu import train_in_situ, train_ex_situ_and_transfer, ideal_simulation, defect_tolerance
    r = train_in_situ("li2018", seed=0)                 # the target's 11% of devices stuck at 10 uS, 2% variation
    r["final_accuracy"], r["accuracy_curve"], r["writes"]

**The chip.** One array of the target (`array.rows` x `array.cols`, at least 128 x 64) holds both layers, as in the
paper. A signed weight is a pair of devices in one column: input i drives row i with +v and row i + rows/2 with -v
(`differential = "rows"`), so the column current is I = sum_i v_i (G+_i - G-_i).

* layer 1 (fc1): 64 inputs x 54 outputs: rows 0..63 (+v) and 64..127 (-v), columns 0..53 (128 x 54 devices);
* layer 2 (fc2): 54 inputs x 10 outputs: rows 0..53 (+v) and 64..117 (-v), columns 54..63 (108 x 10 devices).

There are no bias terms: the array has no spare rows for layer 1, and the paper's layer 2 uses 108 x 10 devices.

**Weights and conductances.** w = (G+ - G-) / g_scale with g_scale = (g_max - g_min) / w_max uS per unit weight
(`w_max` = 1 by default), g_min/g_max from the target's `[device]` (li2018: 2.5..20 uS, g_scale = 17.5 uS). Programming
a weight puts the pair symmetrically about the middle of the range, g_ref = (g_min + g_max) / 2:
G+ = g_ref + w g_scale / 2, G- = g_ref - w g_scale / 2, so |w| <= w_max. The devices are analog, as in Li's in-situ
training: conductances are continuous in [g_min, g_max]; `device.levels` is not used.

**Reads.** An input x in [0, 1] is an amplitude v = x * `input.read_voltage_v` (0.2 V). Line currents (V x uS = uA)
are converted back to pre-activations in software, z = I / (read_voltage_v * g_scale); ReLU and softmax are software.
The hidden vector h is scaled per sample to at most read_voltage_v before it drives layer 2 (v = h / max(h) * 0.2 V)
and the readout is scaled back by max(h): with an exact ADC this is the same function as h @ W2. The current
readout is modelled as exact (the default, `adc_bits=None`); `adc_bits=8` instead rounds each layer's currents to a
signed uniform grid whose full scale is the largest |I| of that read (a per-batch calibrated range).

**Offset encoding** (`weights.encoding = "offset"`, the target's `[weights]`): one device per weight, G = g_ref +
w g_scale with g_scale = (g_max - g_min) / (2 w_max) (one device swings +-w_max about g_ref; li2018: 8.75 uS), on
rows 0..63 (fc1) and 0..53 (fc2) with +v only: no -v rows. Each column carries the unipolar I = v . G, read noise
of one device per row, converted (with `adc_bits`) by a unipolar ADC whose full scale is the read's largest
current; g_ref * sum(v) is then subtracted digitally, and drift compensation scales the difference. An update dG =
dW g_scale goes to the one device; global drift compensation's reference is sum |G - g_ref|. With ideal devices it
computes and trains exactly as the pair does. Bit-sliced weights are refused: Li's devices are analog, with no
levels to slice. With `weights.offset_reference = "column"` the reference is a column of devices instead: the
array's last (li2018's 64 columns are all weights, so it needs `array.cols` = 65), every device programmed to g_ref
once at the chip's making (programming error from its own stream, stuck devices as drawn) and never updated. Each
read drives it with the layer's rows, through the same circuit (wires, access devices, 0T1R sneak paths), read
noise and ADC (its own ADC instance, inside the read's full scale) as a weight line, and its current (or code) is
subtracted from every weight column's; a weight read back is (G - G_ref) / g_scale of its row's reference device,
and drift compensation's reference sum |G - G_ref|. The reference current is computed as g_ref * sum(v) + v .
(G_ref - g_ref): the same current, and with reference devices at exactly g_ref and no circuit the very numbers of
the digital reference, so the ideal chip trains bit for bit as it does.

**Non-idealities** (from the target's `[nonideal]`, each can be overridden):

* stuck devices: drawn by `cimc.targets.devices.DeviceModel` on the one array [1, rows, cols] with the run's seed
  (its documented draw order: the same seed gives the same stuck cells, and a higher `stuck_rate` a superset of
  them); a stuck device holds `stuck_at` (li2018: 10 uS; "g_min" = stuck OFF) and never changes. A measured defect
  map (`defect_map=`) is honoured the same way.
* update variation: each conductance change applied to a device is multiplied by (1 + N(0, update_sigma_rel))
  (li2018: 2%), independently per device and per update.
* pulsed updates (the target's `[pulse]`, cimc.targets.pulse_update; li2018-pulsed): each device's change becomes
  SET or RESET pulses from its present conductance towards g + change (clipped to the range), each pulse's step
  depending on the conductance, with c2c and d2d variation; `writes` then counts devices pulsed at least once and
  the result adds `pulses`, `set_pulses`, `reset_pulses`. It replaces the update variation (a target with both is
  refused) and is off in the ideal simulation.
* programming error applies whenever weights are programmed (the initial weights of in-situ training and the
  ex-situ transfer), by DeviceModel's rule `programmed`: sigma(g) = program_sigma_us + program_sigma_rel * g plus the
  conductance-dependent statistics of cimc.targets.device_stats (`program_sigma_poly_us`, a polynomial in g/g_max,
  continuous already; `program_sigma_levels_us`, one sigma per device level: for analog goals it is interpolated
  linearly between the level conductances g_min + k * step and held beyond the ends, the rule `cimc tune` uses for
  its off-level goals), then clipped to [g_min, g_max].
* ADC (with `adc_bits`): the target's `[adc]` gain_sigma_rel, offset_sigma_lsb, inl_lsb and noise_sigma_lsb, applied
  to each layer's currents in LSB before rounding, one ADC per column (cimc.targets.adc).
* read noise (`read_noise_sigma_us`) is added to every line current (`devices.line_noise`) and to every device
  conductance read back for the weights.
* wire and access resistance (`wire_ohm`, `access_ohm`, `cell`; cimc.targets.ir_drop): every read goes through the
  array's circuit, the forward passes and the read-back of the weights alike. 1T1R (the default; Li's array): the
  currents are exactly I = v . T, T = `ir_drop.effective_conductance` of the present conductances, recomputed on
  the first read after each write (one sparse LU and cols solves of the 128x64 array: 0.2-0.6 s of one core, so a
  30-epoch run takes minutes instead of seconds; set OPENBLAS_NUM_THREADS=1 on a busy machine); a weight read back is
  (T+ - T-) / g_scale, each device's row driven alone. 0T1R (`cell = "0t1r"`): undriven rows and rows of zero input
  float, so the circuit changes with every input pattern. Each read is solved exactly by `ir_drop.FloatingRowReads`
  of the present conductances (made on the first read after a write: one sparse LU of the array with every row
  floating and `rows` solves; then each drive pattern is a dense |driven rows|-square solve, a rank update of that
  matrix), which equals `ir_drop.read_currents`' sparse LU per pattern to float rounding (about 1e-12 of the
  largest read; tests/test_ir_drop_floating.py). One batch of 50 (the fc2 read-back row by row, the forward pass,
  the updates) takes 0.15-0.24 s of CPU against 9.8-10.8 s with an LU per pattern (before: 77 s of wall time on a
  loaded machine) and 0.11 s for 1T1R (benchmarks/bench_insitu_0t1r.py). Li 2018 reads conductances "including the
  effects of sneak-paths and wire resistance"; the circuit itself draws nothing.
* time (`drift_time_s`): training reads happen right after each write (t = 0: no drift, and device_stats applies
  its accumulated 1/f noise, sqrt(ln((t + t_r) / 2 t_r)), and relaxation only at t > 0). With `drift_time_s` > 0
  and a drift exponent, 1/f noise or relaxation in the target, the final test (in situ and ex situ) happens that long after the
  last write: `InSituChip.age` applies DeviceModel's drift, 1/f noise and relaxation (the chip's formulas, one draw
  per device, frozen for the test as in aihwkit) and, with `drift_compensation = "global"`, scales each layer's
  outputs by alpha after the ADC; `final_accuracy` is then the aged chip's, `accuracy_before_drift` the one right
  after training, and the accuracy curve stays at t = 0.

**One chip model, analog devices.** The chip shares the physics of a compiled chip (cimc.backends.chip.Chip): stuck
devices and defect maps are DeviceModel's draws, programming is `DeviceModel.programmed` (the rule of chip
programming and of `cimc tune`'s writes, device statistics included), aging is `DeviceModel.exponents` and `aged`
(the chip instance's drift, 1/f noise and relaxation), reads go through `ir_drop.effective_conductance` (1T1R) as
the crossbar backend's do, or the exact 0T1R circuit (`ir_drop.FloatingRowReads`, the backend's `--layers` check
solves the same circuit with `ir_drop.read_currents`), read noise is `devices.line_noise`, and with `adc_bits`
the ADC instances are the chip's `cimc.targets.adc.AdcModel` (the target's per-ADC gain, offset, INL and sense
noise, drawn from the seed; all zero = the plain rounding above, bit for bit). What stays here is what a manifest's
chip does not have: Li's devices are analog (continuous conductances and updates, not the manifest's 8 levels), so
the pair programming about g_ref, the update rule, the per-read calibrated ADC range and the choice of each
device's target for aging (its present conductance) are written here. With every effect of the circuit and the
statistics off (the defaults), results are those of before bit for bit (tests/test_insitu_chip_model.py checks a
transcription of the plain loop).

**In-situ training (Li).** Plain SGD with softmax cross-entropy, batch 50. The forward pass runs on the chip; the
backward pass runs in software on the weights *read back* from the array (the effective weights, stuck devices
included). Each update dW becomes dG = dW * g_scale, applied as equal and opposite changes, +dG/2 on G+ and -dG/2 on
G- (each with its own variation), clipped to [g_min, g_max]; stuck devices ignore it. `writes` counts the device
updates applied (non-zero changes to devices that are not stuck).

**Ex-situ baseline.** The same MLP (same initial weights, batch order, learning rate and epochs) trained in float64
software with the weights clipped to [-w_max, w_max] after each step (the range the chip can hold), then programmed
onto the same defective chip instance (same seed -> same stuck cells) and evaluated there.

**Data.** sklearn.datasets.load_digits (1,797 real 8x8 digits, pixel values 0..16 scaled to [0, 1]), split once with
a fixed seed (`split_seed`, default 0) into 1,347 training and 450 test digits. Every random choice comes from a
numpy Generator derived from `seed`: the same seed gives the identical result (the aging draws come from an eighth
child stream, added after the seven of before, so their draws are unchanged).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cimc.errors import ConfigError, DataError
from cimc.targets import device_stats
from cimc.targets.adc import adc_range
from cimc.targets.devices import line_noise, programmed_us
from cimc.targets.ir_drop import FloatingRowReads, effective_conductance
from cimc.targets.pulse_update import PulseModel, PulsedDevices
from cimc.weight_encoding import require_pair

LAYER_SIZES = (64, 54, 10)
BATCH = 50
DEFAULT_EPOCHS = 30
DEFAULT_LR = 0.1
DEFAULT_W_MAX = 1.0
TEST_SIZE = 450
PAPER = {"in_situ_11pct_accuracy": 91.71, "gap_points": 2.4, "in_situ_50pct_off_min": 60.0,
         "simulated_1024x512_accuracy": 97.3}

# Child streams of np.random.SeedSequence(seed); child 0 is `devices.read_generator(seed)` (read noise).
_STREAM_READ, _STREAM_INIT, _STREAM_ORDER, _STREAM_UPDATE, _STREAM_PROGRAM, _STREAM_SENSE = range(6)
_STREAM_PULSE = 6      # the per-pulse (c2c) draws; added later, children 0..5 stay what they were
_STREAM_AGE = 7        # drift exponent, 1/f and relaxation draws of the final test at drift_time_s; added later too
_STREAM_REFERENCE = 8  # programming error of the offset's reference column (offset_reference = "column"); added later
_STREAMS = 9           # (SeedSequence.spawn: child k is the same whatever the count, so children 0..7 are unchanged)


# -- layout ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerPlacement:
    """Where a layer's n_in x n_out signed weights sit: +v on rows row0 + i, -v on rows minus_row0 + i,
    output j on column col0 + j."""
    name: str
    n_in: int
    n_out: int
    col0: int
    minus_row0: int
    row0: int = 0
    offset: bool = False         # offset encoding: one device per weight, no -v rows (minus_row0 unused)

    @property
    def rows_plus(self) -> slice:
        return slice(self.row0, self.row0 + self.n_in)

    @property
    def rows_minus(self) -> slice:
        return slice(self.minus_row0, self.minus_row0 + self.n_in)

    @property
    def cols(self) -> slice:
        return slice(self.col0, self.col0 + self.n_out)

    @property
    def devices(self) -> int:
        return (1 if self.offset else 2) * self.n_in * self.n_out

    @property
    def row_blocks(self) -> tuple[slice, ...]:
        """The rows that hold the layer's devices: +v and -v blocks, or the offset's one block."""
        return (self.rows_plus,) if self.offset else (self.rows_plus, self.rows_minus)


def li2018_layout(rows: int = 128, offset: bool = False) -> tuple[LayerPlacement, LayerPlacement]:
    """fc1 64x54 in columns 0..53 and fc2 54x10 in columns 54..63; -v rows start at rows/2 (none for `offset`)."""
    half = rows // 2
    n_in, n_hidden, n_out = LAYER_SIZES
    return (LayerPlacement("fc1", n_in, n_hidden, 0, half, offset=offset),
            LayerPlacement("fc2", n_hidden, n_out, n_hidden, half, offset=offset))


# -- the chip -------------------------------------------------------------------------------------------------------
class InSituChip:
    """One analog crossbar array: conductances `g` [rows, cols] in uS, a `stuck` mask, signed weights as device
    pairs on two row blocks, equal-and-opposite in-situ updates. `model` (a cimc.targets.devices.DeviceModel of the
    target) brings the conductance-dependent programming sigma and the aging at its drift time; `wire_ohm`,
    `access_ohm`, `cell` the array's circuit (cimc.targets.ir_drop), through which every read goes. `encoding`
    "offset": one device per weight about g_ref instead of a pair, its reference g_ref * sum(v) subtracted digitally
    or (`offset_reference` "column") read off the array's last column of g_ref devices (module doc)."""

    def __init__(self, rows: int, cols: int, layers, *, g_min_us: float, g_max_us: float, w_max: float = DEFAULT_W_MAX,
                 read_voltage_v: float = 0.2, stuck: np.ndarray | None = None, stuck_g_us: np.ndarray | None = None,
                 update_sigma_rel: float = 0.0, program_sigma_us: float = 0.0, program_sigma_rel: float = 0.0,
                 read_noise_sigma_us: float = 0.0, adc_bits: int | None = None, seed: int | None = 0,
                 adc=None, pulse_model=None, model=None, wire_ohm: float = 0.0, access_ohm: float = 0.0,
                 cell: str = "1t1r", encoding: str = "differential", offset_reference: str = "digital"):
        if not 0 <= g_min_us < g_max_us:
            raise ConfigError(f"conductance range {g_min_us}..{g_max_us} uS: need 0 <= g_min < g_max")
        if not w_max > 0:
            raise ConfigError(f"w_max {w_max}: must be positive")
        if adc_bits is not None and not 2 <= int(adc_bits) <= 24:
            raise ConfigError(f"adc_bits {adc_bits}: must be between 2 and 24 (or None: exact readout)")
        self.rows, self.cols = int(rows), int(cols)
        if encoding not in ("differential", "offset"):
            raise ConfigError(f"encoding {encoding!r}: the in-situ chip holds 'differential' pairs or 'offset' devices")
        self.offset_encoding = encoding == "offset"
        if offset_reference not in ("digital", "column"):
            raise ConfigError(f"offset_reference {offset_reference!r}: 'digital' or 'column'")
        if offset_reference == "column" and not self.offset_encoding:
            raise ConfigError("offset_reference 'column' applies to the offset encoding only")
        # the offset's reference column: the array's last (as ArraySpec.reference_column), None = digital reference
        self.reference_col = self.cols - 1 if offset_reference == "column" else None
        weight_cols = self.cols if self.reference_col is None else self.reference_col
        self.layers = tuple(dataclasses.replace(lay, offset=self.offset_encoding) for lay in layers)
        for lay in self.layers:
            if max(r.stop for r in lay.row_blocks) > self.rows or lay.cols.stop > weight_cols:
                beside = " beside the reference column" if self.reference_col is not None else ""
                raise ConfigError(f"layer {lay.name} ({lay.n_in}x{lay.n_out} as {lay.devices} devices) does not fit "
                                  f"a {self.rows}x{self.cols} array{beside}")
        self.g_min, self.g_max = float(g_min_us), float(g_max_us)
        self.g_ref = (self.g_min + self.g_max) / 2
        self.w_max = float(w_max)
        self.g_scale = (self.g_max - self.g_min) / self.w_max          # uS per unit weight
        if self.offset_encoding:        # one device swings +-w_max about g_ref: half the pair's difference range
            self.g_scale /= 2
        self.read_voltage_v = float(read_voltage_v)
        self.update_sigma_rel = float(update_sigma_rel)
        self.program_sigma_us, self.program_sigma_rel = float(program_sigma_us), float(program_sigma_rel)
        self.read_noise_sigma_us = float(read_noise_sigma_us)
        self.adc_bits = None if adc_bits is None else int(adc_bits)
        self.stuck = np.zeros((self.rows, self.cols), bool) if stuck is None else np.asarray(stuck, bool).copy()
        if self.stuck.shape != (self.rows, self.cols):
            raise ConfigError(f"stuck mask shape {list(self.stuck.shape)} != array {self.rows}x{self.cols}")
        if stuck_g_us is None:
            stuck_g_us = np.full((self.rows, self.cols), self.g_min)
        self.stuck_g = np.broadcast_to(np.asarray(stuck_g_us, np.float64), self.stuck.shape).copy()
        self.g = np.full((self.rows, self.cols), self.g_ref)
        self.g[self.stuck] = self.stuck_g[self.stuck]
        # the chip's ADC instances (cimc.targets.adc.AdcModel: gain, offset, INL, sense noise), used with adc_bits
        self.adc_lines = {} if adc is None else {lay.name: adc.lines(np.zeros(len(cols), np.int64), cols)
                                                 for lay in self.layers for cols in [self._read_columns(lay)]}
        self.sense_sigma_lsb = 0.0 if adc is None else adc.noise_sigma_lsb
        children = np.random.SeedSequence(seed).spawn(_STREAMS)
        self._rng_sense = np.random.default_rng(children[_STREAM_SENSE])
        self._rng_read = np.random.default_rng(children[_STREAM_READ])
        self._rng_update = np.random.default_rng(children[_STREAM_UPDATE])
        self._rng_program = np.random.default_rng(children[_STREAM_PROGRAM])
        # pulsed updates (cimc.targets.pulse_update): None = each update applied as the change asked for
        self.pulsed = None if pulse_model is None else PulsedDevices(pulse_model, (self.rows, self.cols), seed)
        self._rng_pulse = np.random.default_rng(children[_STREAM_PULSE])
        self.writes = 0
        self.updates = 0
        self.model = model
        self._rng_age = np.random.default_rng(children[_STREAM_AGE])
        self.wire_ohm, self.access_ohm, self.cell = float(wire_ohm), float(access_ohm), str(cell)
        self._seen = None           # 1T1R circuit: the effective conductances T of the present g (None: not yet read)
        if self.reference_col is not None:
            self._program_reference(np.random.default_rng(children[_STREAM_REFERENCE]))
        self.drift_scale = None     # global drift compensation after aging: {layer name: alpha}
        self.aged_s = 0.0           # the time the conductances were aged to (age())

    def _read_columns(self, lay: LayerPlacement) -> np.ndarray:
        """The physical columns a read of the layer converts: its own, and the reference column if there is one."""
        own = np.arange(lay.cols.start, lay.cols.stop)
        return own if self.reference_col is None else np.append(own, self.reference_col)

    # programming and reading back
    def layer(self, name_or_index) -> LayerPlacement:
        if isinstance(name_or_index, LayerPlacement):
            return name_or_index
        if isinstance(name_or_index, int):
            return self.layers[name_or_index]
        for lay in self.layers:
            if lay.name == name_or_index:
                return lay
        raise KeyError(name_or_index)

    def program(self, layer, weights: np.ndarray) -> None:
        """Write signed weights [n_in, n_out] as G+ = g_ref + w g_scale/2, G- = g_ref - w g_scale/2 (clipped to the
        device range), with programming error; stuck devices keep their conductance. Offset: G = g_ref + w g_scale."""
        lay = self.layer(layer)
        w = np.asarray(weights, np.float64)
        if w.shape != (lay.n_in, lay.n_out):
            raise ConfigError(f"{lay.name}: weights {list(w.shape)} != [{lay.n_in}, {lay.n_out}]")
        half = w * self.g_scale / 2
        blocks = ((lay.rows_plus, self.g_ref + w * self.g_scale),) if self.offset_encoding else \
            ((lay.rows_plus, self.g_ref + half), (lay.rows_minus, self.g_ref - half))
        for rows, target in blocks:
            self._write(rows, lay.cols, target, self._rng_program)

    def _program_reference(self, rng) -> None:
        """The reference column: every device programmed to g_ref once, with the programming error of `program`
        (its own stream, so the weights' draws are the digital reference's); stuck devices keep theirs; never
        updated."""
        self._write(slice(None), self.reference_col, np.full(self.rows, self.g_ref), rng)

    def _write(self, rows, cols, target: np.ndarray, rng) -> None:
        """Program the devices g[rows, cols] towards `target` (uS) with the programming error drawn from `rng`,
        clipped to the device range; stuck devices keep their conductance."""
        stats = self.model is not None and device_stats.programming_on(self.model.nonideal)
        if self.program_sigma_us or self.program_sigma_rel or stats:
            z = rng.standard_normal(target.shape)
            # the chip's rule (DeviceModel.programmed, floored at 0 uS: the clip below covers it), or the
            # scalar formula for a chip built without a model
            target = self.model.programmed(target, z) if self.model is not None else \
                programmed_us(target, z, self.program_sigma_us, self.program_sigma_rel)
        self.g[rows, cols] = np.where(self.stuck[rows, cols], self.g[rows, cols],
                                      np.clip(target, self.g_min, self.g_max))
        self._seen = None

    def read_weights(self, layer) -> np.ndarray:
        """The effective weights (G+ - G-) / g_scale (offset: (G - g_ref) / g_scale; with a reference column
        (G - G_ref) / g_scale, G_ref the reference device on the weight's row, read with it) read back from the array
        (with read noise if any: one draw per device read, the reference device's once per row)."""
        lay = self.layer(layer)
        if self.offset_encoding:        # one device about g_ref, the reference subtracted digitally
            reads = self.device_reads(lay)
            g = reads[0]
            if self.read_noise_sigma_us:
                g = g + self.read_noise_sigma_us * self._rng_read.standard_normal(g.shape)
            if self.reference_col is None:
                return (g - self.g_ref) / self.g_scale
            ref = reads[1]
            if self.read_noise_sigma_us:
                ref = ref + self.read_noise_sigma_us * self._rng_read.standard_normal(ref.shape)
            return (g - ref) / self.g_scale
        gp, gm = self.device_reads(lay)
        if self.read_noise_sigma_us:
            gp = gp + self.read_noise_sigma_us * self._rng_read.standard_normal(gp.shape)
            gm = gm + self.read_noise_sigma_us * self._rng_read.standard_normal(gm.shape)
        return (gp - gm) / self.g_scale

    def apply_update(self, layer, dw: np.ndarray) -> int:
        """Apply a weight change dW [n_in, n_out]: dG = dW * g_scale, +dG/2 on G+ and -dG/2 on G-, each change times
        (1 + N(0, update_sigma_rel)), clipped to [g_min, g_max]; stuck devices do not change. Returns the number of
        device writes (non-zero changes to devices that are not stuck). Offset: the whole dG on the one device."""
        lay = self.layer(layer)
        dw = np.asarray(dw, np.float64)
        if dw.shape != (lay.n_in, lay.n_out):
            raise ConfigError(f"{lay.name}: update {list(dw.shape)} != [{lay.n_in}, {lay.n_out}]")
        half = dw * self.g_scale / 2
        writes = 0
        blocks = ((lay.rows_plus, dw * self.g_scale),) if self.offset_encoding else \
            ((lay.rows_plus, half), (lay.rows_minus, -half))
        for rows, change in blocks:
            if self.pulsed is not None:
                writes += self._pulse_update(rows, lay.cols, change)
                continue
            if self.update_sigma_rel:
                change = change * (1.0 + self.update_sigma_rel * self._rng_update.standard_normal(change.shape))
            live = ~self.stuck[rows, lay.cols]
            block = self.g[rows, lay.cols]
            self.g[rows, lay.cols] = np.where(live, np.clip(block + change, self.g_min, self.g_max), block)
            writes += int(np.count_nonzero(live & (change != 0)))
        self._seen = None
        self.writes += writes
        self.updates += 1
        return writes

    def _pulse_update(self, rows: slice, cols: slice, change: np.ndarray) -> int:
        """One device block's change as SET/RESET pulses towards g + change (clipped to the range); stuck devices
        get none. Returns the devices pulsed at least once (the writes)."""
        block = self.g[rows, cols]
        goal = np.where(self.stuck[rows, cols], block, np.clip(block + change, self.g_min, self.g_max))
        self.g[rows, cols], n_set, n_reset = self.pulsed.write(block, goal, self._rng_pulse, (rows, cols))
        self._seen = None
        return int(np.count_nonzero(n_set + n_reset))

    # the circuit (cimc.targets.ir_drop) and the time since programming
    @property
    def circuit(self) -> bool:
        """Whether reads go through line or access resistance."""
        return bool(self.wire_ohm or self.access_ohm)

    @property
    def sneaks(self) -> bool:
        """A passive (0T1R) array with line resistance: undriven rows float, so each read is solved exactly."""
        return self.cell == "0t1r" and bool(self.wire_ohm)

    def _effective(self) -> np.ndarray:
        """1T1R: the effective conductances T (I = v . T exactly, ir_drop.effective_conductance) of the present
        conductances, computed on the first read after a write and kept until the next."""
        if self._seen is None:
            self._seen = effective_conductance(self.g, self.wire_ohm, self.access_ohm)
        return self._seen

    def _sneak_currents(self, volts: np.ndarray) -> np.ndarray:
        """0T1R: the exact line currents [reads, cols] of row drives `volts` [reads, rows] (rows with v = 0
        float), every read of the present conductances from one factorisation (ir_drop.FloatingRowReads, made on
        the first read after a write and kept until the next); the same circuit as ir_drop.read_currents' solve
        per pattern, to float rounding."""
        if self._seen is None:
            self._seen = FloatingRowReads(self.g, self.wire_ohm)
        return self._seen.currents(volts)

    def device_reads(self, layer) -> tuple[np.ndarray, ...]:
        """The conductances (uS) of a layer's G+ and G- devices as single-device reads see them (no read noise):
        the devices' own; through a 1T1R circuit T (the current per volt of the device's row driven alone, every
        other row held at 0 V); through a 0T1R circuit each row driven alone (the others floating) and solved
        exactly, sneak paths included. Offset: (G,), or with a reference column (G, G_ref [n_in, 1]), the reference
        device of each row read by the same drive."""
        lay = self.layer(layer)
        ref = self.reference_col
        if not self.sneaks:
            seen = self._effective() if self.circuit else self.g
            out = tuple(seen[rows, lay.cols] for rows in lay.row_blocks)
            return out if ref is None else out + (seen[lay.rows_plus, ref:ref + 1],)
        out = []
        for rows in lay.row_blocks:
            idx = np.arange(rows.start, rows.stop)
            volts = np.zeros((len(idx), self.rows))
            volts[np.arange(len(idx)), idx] = self.read_voltage_v
            lines = self._sneak_currents(volts) / self.read_voltage_v
            out.append(lines[:, lay.cols])
            if ref is not None:
                out.append(lines[:, ref:ref + 1])
        return tuple(out)

    @property
    def ages(self) -> bool:
        """Whether the final test happens at a drift time that changes anything (model.nonideal.drift_time_s with a
        drift exponent, 1/f noise or relaxation)."""
        n = None if self.model is None else self.model.nonideal
        return n is not None and n.drift_time_s > 0 and device_stats.time_matters(n)

    def age(self) -> None:
        """Let the programmed conductances age to the model's drift time: DeviceModel's drift, 1/f noise and
        relaxation (the chip's formulas), taking each device's present conductance as both its target and its
        programmed value (analog devices: what the last write left); stuck devices hold theirs. Draws three
        standard normals per device of the array, always all three and in that order (z_nu, z_1f, z_relax), from
        the chip's aging stream. With nonideal.drift_compensation = "global" each layer's outputs are then scaled
        by alpha = sum |G+ - G-| before / after over its weights, each read as `device_reads` reads (through the
        circuit where there is one): aihwkit's GlobalDriftCompensation, as the crossbar backend applies it."""
        if not self.ages:
            return
        n = self.model.nonideal
        shape = (self.rows, self.cols)
        z_nu, z_1f, z_relax = (self._rng_age.standard_normal(shape) for _ in range(3))
        before = {lay.name: self.device_reads(lay) for lay in self.layers} \
            if n.drift_compensation == "global" else None
        g0 = self.g.copy()
        aged = self.model.aged(g0, g0, self.model.exponents(g0, z_nu), z_1f, z_relax)
        self.g = np.where(self.stuck, self.stuck_g, aged)
        self._seen = None
        self.aged_s = float(n.drift_time_s)
        if before is not None:
            self.drift_scale = {}
            for lay in self.layers:
                ref, now = self._spread(before[lay.name]), self._spread(self.device_reads(lay))
                self.drift_scale[lay.name] = float(ref / now) if now > 0 else 1.0

    def _spread(self, reads) -> float:
        """sum |G+ - G-| over a layer's weights (offset: sum |G - g_ref|, or |G - G_ref| with a reference column),
        global drift compensation's reference."""
        offset = self.g_ref if self.reference_col is None else reads[-1]
        diff = reads[0] - offset if self.offset_encoding else reads[0] - reads[1]
        return float(np.abs(diff).sum())

    # inference
    def currents(self, layer, v: np.ndarray) -> np.ndarray:
        """Line currents (uA) of a layer's columns for row amplitudes v [batch, n_in] in volts: +v on the G+ rows,
        -v on the G- rows."""
        lay = self.layer(layer)
        if self.offset_encoding:
            return self._offset_currents(lay, v)
        if self.sneaks:                         # 0T1R: the exact circuit of each read (rows with v = 0 float)
            volts = np.zeros((len(v), self.rows))
            volts[:, lay.rows_plus], volts[:, lay.rows_minus] = v, -v
            i = self._sneak_currents(volts)[:, lay.cols]
        else:                                   # I = v . G, or v . T through a 1T1R circuit (exact)
            seen = self._effective() if self.circuit else self.g
            drive = np.concatenate([v, -v], axis=1)
            i = drive @ np.concatenate([seen[lay.rows_plus, lay.cols], seen[lay.rows_minus, lay.cols]], axis=0)
        if self.read_noise_sigma_us:
            i = i + line_noise(self._rng_read, np.repeat((2 * v * v).sum(1, keepdims=True), lay.n_out, 1),
                               self.read_noise_sigma_us, dtype=np.float64)
        if self.adc_bits is not None:
            full = float(np.max(np.abs(i))) or 1.0
            top = adc_range(self.adc_bits, bipolar=True)[1]
            step = full / top
            t = i / step                                          # in LSB: the ADC model's gain, offset, INL, noise
            lines = self.adc_lines.get(lay.name)
            if lines is not None:
                lines.apply(t, -top, top)
            if self.sense_sigma_lsb:
                t = t + self.sense_sigma_lsb * self._rng_sense.standard_normal(t.shape)
            i = np.clip(np.round(t), -top, top) * step
        if self.drift_scale is not None:        # global drift compensation: digital, after the ADC
            i = i * self.drift_scale[lay.name]
        return i

    def _offset_currents(self, lay: LayerPlacement, v: np.ndarray) -> np.ndarray:
        """The offset encoding's currents: each column carries the unipolar I = v . G (through the circuit as the
        pair's reads), read noise of one device per row, converted by a unipolar ADC (range 0..max I of the read)
        where `adc_bits` is set; then the reference is subtracted: g_ref * sum(v) digitally, or the reference
        column's line, read by the same drive through the same circuit, noise and ADC as a weight line (its current
        written g_ref * sum(v) + v . (G_ref - g_ref): the same current, and with reference devices at exactly g_ref
        the very numbers the digital reference subtracts); drift compensation last."""
        ref_col = self.reference_col
        if self.sneaks:
            volts = np.zeros((len(v), self.rows))
            volts[:, lay.rows_plus] = v
            lines = self._sneak_currents(volts)
            i = lines[:, lay.cols]
            ref = None if ref_col is None else lines[:, ref_col:ref_col + 1]
        else:
            seen = self._effective() if self.circuit else self.g
            i = v @ seen[lay.rows_plus, lay.cols]
            ref = None if ref_col is None else \
                self.g_ref * v.sum(1, keepdims=True) + v @ (seen[lay.rows_plus, ref_col:ref_col + 1] - self.g_ref)
        if ref is not None:             # the reference line is read as one more line of the layer
            i = np.concatenate([i, ref], axis=1)
        if self.read_noise_sigma_us:
            i = i + line_noise(self._rng_read, np.repeat((v * v).sum(1, keepdims=True), i.shape[1], 1),
                               self.read_noise_sigma_us, dtype=np.float64)
        if self.adc_bits is not None:
            full = float(np.max(np.abs(i))) or 1.0
            lo, top = adc_range(self.adc_bits, bipolar=False)
            step = full / top
            t = i / step
            lines = self.adc_lines.get(lay.name)
            if lines is not None:
                lines.apply(t, lo, top)
            if self.sense_sigma_lsb:
                t = t + self.sense_sigma_lsb * self._rng_sense.standard_normal(t.shape)
            i = np.clip(np.round(t), lo, top) * step
        i = i - self.g_ref * v.sum(1, keepdims=True) if ref is None else i[:, :-1] - i[:, -1:]
        if self.drift_scale is not None:
            i = i * self.drift_scale[lay.name]
        return i

    def matmul(self, layer, x: np.ndarray) -> np.ndarray:
        """x @ W on the chip for non-negative x [batch, n_in]: each row of x scaled to at most read_voltage_v, the
        currents converted back to weight units (exact with an exact ADC)."""
        x = np.asarray(x, np.float64)
        scale = np.max(x, axis=1, keepdims=True)
        scale = np.where(scale > 0, scale, 1.0)
        v = x / scale * self.read_voltage_v
        return self.currents(layer, v) * scale / (self.read_voltage_v * self.g_scale)

    def forward(self, x: np.ndarray):
        """(z1, h, logits) of the 2-layer MLP; x in [0, 1] is applied as x * read_voltage_v (no per-sample scaling
        for layer 1: the pixel amplitudes are already in range)."""
        x = np.asarray(x, np.float64)
        z1 = self.currents(0, x * self.read_voltage_v) / (self.read_voltage_v * self.g_scale)
        h = np.maximum(z1, 0.0)
        return z1, h, self.matmul(1, h)


def chip_for_target(target, *, stuck_rate: float | None = None, stuck_at: str | float | None = None,
                    update_sigma_rel: float | None = None, ideal: bool = False, w_max: float = DEFAULT_W_MAX,
                    adc_bits: int | None = None, defect_map=None, seed: int | None = 0) -> InSituChip:
    """A chip instance of the target: one array with Li's layout; stuck devices drawn by DeviceModel (seed)."""
    import dataclasses

    from cimc.targets.adc import AdcModel
    from cimc.targets.devices import DeviceModel
    target = _load(target)
    offset = target.weights.encoding == "offset"       # one analog device per weight about g_ref
    if not offset:
        require_pair(target, "in-situ training (cimc insitu)",       # Li's chip: one +v/-v pair per weight
                     " (Li's devices are analog, continuous conductances with no device levels to slice; "
                     "weights.encoding=offset, one analog device per weight, is supported)")
    arr = target.array
    if arr.differential != "rows" and not offset:
        raise ConfigError(f"target {target.name!r}: in-situ training needs a 'rows'-differential array (inputs "
                          f"applied as [+v; -v] on two row blocks, like li2018), not {arr.differential!r}")
    column = target.weights.reference_column          # offset with a reference column: one more column
    need_rows, need_cols = (1 if offset else 2) * LAYER_SIZES[0], LAYER_SIZES[1] + LAYER_SIZES[2] + int(column)
    if arr.rows < need_rows or arr.cols < need_cols:
        what = " (54 + 10 weight columns and the reference column, the array's last)" if column else ""
        hint = (f"; give the array a column more (--set array.cols={need_cols}) or subtract the offset digitally "
                "(weights.offset_reference=digital)" if column and arr.rows >= need_rows else "")
        raise ConfigError(f"target {target.name!r}: the 64-54-10 MLP needs one array of at least "
                          f"{need_rows}x{need_cols} devices{what}, the target's is {arr.rows}x{arr.cols}{hint}")
    nonideal = _nonideal(target, stuck_rate, stuck_at, update_sigma_rel, ideal)
    # adc_bits means a real ADC here, whatever the target's adc.lossless: its [adc] effects apply
    adc = None if ideal or adc_bits is None else AdcModel(dataclasses.replace(target.adc, lossless=False), seed, 1,
                                                          arr.cols)
    # checked for the ideal chip too (which applies updates as asked), so that a bad target fails before any work
    pulse_model = PulseModel.from_target(target)
    sigma = target.nonideal.update_sigma_rel if update_sigma_rel is None else update_sigma_rel
    if pulse_model is not None and sigma:
        raise ConfigError(f"target {target.name!r}: pulse.model = {pulse_model.kind!r} with "
                          f"nonideal.update_sigma_rel = {sigma:g}: a pulsed update's variation is "
                          "pulse.c2c_sigma_rel (per pulse) and pulse.d2d_sigma_rel (per device); set "
                          "nonideal.update_sigma_rel=0")
    pulse_model = None if ideal else pulse_model
    model = DeviceModel(target.device, nonideal, None if ideal else _defect_map(defect_map))
    inst = model.program(np.zeros((1, arr.rows, arr.cols), np.uint8), seed=seed)
    return InSituChip(arr.rows, arr.cols, li2018_layout(arr.rows, offset), g_min_us=target.device.g_min_us,
                      g_max_us=target.device.g_max_us, w_max=w_max, read_voltage_v=target.input.read_voltage_v,
                      stuck=inst.stuck[0], stuck_g_us=inst.conductance_us[0],
                      update_sigma_rel=nonideal.update_sigma_rel, program_sigma_us=nonideal.program_sigma_us,
                      program_sigma_rel=nonideal.program_sigma_rel, read_noise_sigma_us=nonideal.read_noise_sigma_us,
                      adc_bits=adc_bits, seed=seed, adc=adc, pulse_model=pulse_model, model=model,
                      wire_ohm=nonideal.wire_ohm, access_ohm=nonideal.access_ohm, cell=nonideal.cell,
                      encoding=target.weights.encoding, offset_reference=target.weights.offset_reference)


# -- data -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DigitsSplit:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


_DIGITS_CACHE: dict = {}


def load_digits_split(split_seed: int = 0, test_size: int = TEST_SIZE) -> DigitsSplit:
    """sklearn's 1,797 8x8 digits scaled to [0, 1], split with a fixed seed (1,347 train / 450 test by default)."""
    key = (split_seed, test_size)
    if key not in _DIGITS_CACHE:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DataError("in-situ training uses sklearn.datasets.load_digits, and scikit-learn is not installed: "
                            "pip install -e '.[insitu]'") from None
        d = load_digits()
        x = (d.data / 16.0).astype(np.float64)
        y = d.target.astype(np.int64)
        if not 0 < test_size < len(y):
            raise ConfigError(f"test_size {test_size}: must be between 1 and {len(y) - 1}")
        order = np.random.default_rng(split_seed).permutation(len(y))
        test, train = order[:test_size], order[test_size:]
        _DIGITS_CACHE[key] = DigitsSplit(x[train], y[train], x[test], y[test])
    return _DIGITS_CACHE[key]


# -- training -------------------------------------------------------------------------------------------------------
def init_weights(seed: int | None) -> list[np.ndarray]:
    """He-normal initial weights [64, 54] and [54, 10], from the seed's init stream (no biases)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(5)[_STREAM_INIT])
    sizes = LAYER_SIZES
    return [rng.standard_normal((sizes[k], sizes[k + 1])) * math.sqrt(2.0 / sizes[k]) for k in range(2)]


def _batches(seed, n: int, epochs: int):
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(5)[_STREAM_ORDER])
    return [[perm[i:i + BATCH] for i in range(0, n, BATCH)] for perm in (rng.permutation(n) for _ in range(epochs))]


def _softmax_grad(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p / len(y)


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))


def _software_forward(weights, x):
    z1 = x @ weights[0]
    h = np.maximum(z1, 0.0)
    return z1, h, h @ weights[1]


def _check(epochs, lr):
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ConfigError(f"epochs {epochs!r}: must be a positive integer")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning rate {lr!r}: must be a positive number")


def train_in_situ(target="li2018", stuck_rate: float | None = None, epochs: int = DEFAULT_EPOCHS,
                  seed: int | None = 0, *, stuck_at: str | float | None = None, update_sigma_rel: float | None = None,
                  lr: float = DEFAULT_LR, w_max: float = DEFAULT_W_MAX, adc_bits: int | None = None,
                  ideal: bool = False, defect_map=None, split_seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Li's in-situ training on one chip instance of `target`. stuck_rate/stuck_at/update_sigma_rel default to the
    target's; `ideal=True` turns every non-ideality off (no stuck devices, variation, programming or read noise).

    Returns {"method": "in_situ", "accuracy_curve": test accuracy after each epoch, "train_accuracy_curve",
    "final_accuracy", "writes" (device updates applied), "updates" (batch update steps), "stuck_devices",
    "stuck_fraction", "stuck_at_us", "chip": {...}, "seconds", ...}."""
    _check(epochs, lr)
    target = _load(target)
    data = load_digits_split(split_seed)
    chip = chip_for_target(target, stuck_rate=stuck_rate, stuck_at=stuck_at, update_sigma_rel=update_sigma_rel,
                           ideal=ideal, w_max=w_max, adc_bits=adc_bits, defect_map=defect_map, seed=seed)
    t0 = time.perf_counter()
    for k, w in enumerate(init_weights(seed)):
        chip.program(k, w)
    curve, train_curve = [], []
    for epoch, batches in enumerate(_batches(seed, len(data.y_train), epochs), 1):
        for idx in batches:
            x, y = data.x_train[idx], data.y_train[idx]
            w2 = chip.read_weights(1)                        # the weights as they are on the chip
            z1, h, logits = chip.forward(x)
            d2 = _softmax_grad(logits, y)
            d1 = (d2 @ w2.T) * (z1 > 0)
            chip.apply_update(1, -lr * (h.T @ d2))
            chip.apply_update(0, -lr * (x.T @ d1))
        curve.append(_accuracy(chip.forward(data.x_test)[2], data.y_test))
        train_curve.append(_accuracy(chip.forward(data.x_train)[2], data.y_train))
        if progress:
            progress(f"in situ epoch {epoch}/{epochs}: test {100 * curve[-1]:.2f}%")
    result = _result("in_situ", chip, target, seed, epochs, lr, ideal, _final_test(chip, data, curve[-1]), t0)
    result.update(accuracy_curve=curve, train_accuracy_curve=train_curve, writes=chip.writes, updates=chip.updates)
    _aging_fields(result, chip, curve[-1])
    if chip.pulsed is not None:
        n = chip.pulsed.counts()
        result.update(pulses=n["total"], set_pulses=n["set"], reset_pulses=n["reset"],
                      pulse_model=dataclasses.asdict(chip.pulsed.model))
    return result


def train_software(epochs: int = DEFAULT_EPOCHS, seed: int | None = 0, *, lr: float = DEFAULT_LR,
                   w_max: float = DEFAULT_W_MAX, split_seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> tuple[list[np.ndarray], list[float]]:
    """The same MLP, initial weights, batch order and SGD in float64 software, weights clipped to [-w_max, w_max].
    Returns (weights, test accuracy per epoch)."""
    _check(epochs, lr)
    data = load_digits_split(split_seed)
    w1, w2 = init_weights(seed)
    curve = []
    for epoch, batches in enumerate(_batches(seed, len(data.y_train), epochs), 1):
        for idx in batches:
            x, y = data.x_train[idx], data.y_train[idx]
            z1, h, logits = _software_forward((w1, w2), x)
            d2 = _softmax_grad(logits, y)
            d1 = (d2 @ w2.T) * (z1 > 0)
            w2 = np.clip(w2 - lr * (h.T @ d2), -w_max, w_max)
            w1 = np.clip(w1 - lr * (x.T @ d1), -w_max, w_max)
        curve.append(_accuracy(_software_forward((w1, w2), data.x_test)[2], data.y_test))
        if progress:
            progress(f"software epoch {epoch}/{epochs}: test {100 * curve[-1]:.2f}%")
    return [w1, w2], curve


def train_ex_situ_and_transfer(target="li2018", stuck_rate: float | None = None, epochs: int = DEFAULT_EPOCHS,
                               seed: int | None = 0, *, stuck_at: str | float | None = None, lr: float = DEFAULT_LR,
                               w_max: float = DEFAULT_W_MAX, adc_bits: int | None = None, ideal: bool = False,
                               defect_map=None, split_seed: int = 0,
                               progress: Callable[[str], None] | None = None) -> dict:
    """Train in software (train_software), program the weights onto the chip instance of the same seed (same stuck
    cells as train_in_situ), evaluate there. Returns {"method": "ex_situ", "final_accuracy" (on the chip),
    "software_accuracy", "software_accuracy_curve", "clipped_weights" (software weights at +-w_max), ...}."""
    target = _load(target)
    data = load_digits_split(split_seed)
    weights, curve = train_software(epochs, seed, lr=lr, w_max=w_max, split_seed=split_seed, progress=progress)
    chip = chip_for_target(target, stuck_rate=stuck_rate, stuck_at=stuck_at, ideal=ideal, w_max=w_max,
                           adc_bits=adc_bits, defect_map=defect_map, seed=seed)
    t0 = time.perf_counter()
    for k, w in enumerate(weights):
        chip.program(k, w)
    programmed = _accuracy(chip.forward(data.x_test)[2], data.y_test)
    result = _result("ex_situ", chip, target, seed, epochs, lr, ideal, _final_test(chip, data, programmed), t0)
    _aging_fields(result, chip, programmed)
    result.update(software_accuracy=curve[-1], software_accuracy_curve=curve,
                  clipped_weights=int(sum(np.count_nonzero(np.abs(w) >= w_max) for w in weights)))
    return result


def ideal_simulation(target="li2018", epochs: int = DEFAULT_EPOCHS, seed: int | None = 0, **kwargs) -> dict:
    """In-situ training on a defect-free chip: no stuck devices, no update variation, no programming or read noise
    (the conductance range and its clipping stay)."""
    kwargs.pop("stuck_rate", None)
    return train_in_situ(target, epochs=epochs, seed=seed, ideal=True, **kwargs)


def defect_tolerance(target="li2018", rates=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5), epochs: int = DEFAULT_EPOCHS,
                     seed: int | None = 0, *, stuck_at: str | float | None = "g_min", seeds=None,
                     progress: Callable[[str], None] | None = None, **kwargs) -> list[dict]:
    """In situ vs ex situ accuracy per stuck rate (stuck OFF = g_min by default, as in the paper's tolerance
    experiment). With `seeds` (a list) each point is the mean over those chip instances, and the per-seed values
    are kept. Returns [{"stuck_rate", "in_situ", "ex_situ", ...}]."""
    target = _load(target)
    seed_list = list(seeds) if seeds is not None else [seed]
    if not seed_list:
        raise ConfigError("defect_tolerance: seeds is empty")
    rows = []
    for rate in rates:
        rate = _fraction(rate)
        ins, exs = [], []
        for s in seed_list:
            ins.append(train_in_situ(target, rate, epochs, s, stuck_at=stuck_at, **kwargs)["final_accuracy"])
            exs.append(train_ex_situ_and_transfer(target, rate, epochs, s, stuck_at=stuck_at,
                                                  **_ex_kwargs(kwargs))["final_accuracy"])
        row = {"stuck_rate": rate, "stuck_at": _stuck_at_text(stuck_at, target), "in_situ": float(np.mean(ins)),
               "ex_situ": float(np.mean(exs))}
        if len(seed_list) > 1:
            row.update(seeds=seed_list, in_situ_per_seed=ins, ex_situ_per_seed=exs)
        rows.append(row)
        if progress:
            progress(f"stuck {100 * rate:.0f}%: in situ {100 * row['in_situ']:.2f}%, "
                     f"ex situ {100 * row['ex_situ']:.2f}%")
    return rows


def study(target="li2018", stuck_rate: float | None = None, epochs: int = DEFAULT_EPOCHS, seed: int | None = 0, *,
          curve: bool = False, rates=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5), curve_stuck_at="g_min",
          progress: Callable[[str], None] | None = None, **kwargs) -> dict:
    """What `cimc insitu` prints: ideal simulation, in situ on the defective chip, their gap, ex situ transferred
    (and with curve=True the defect-tolerance table)."""
    target = _load(target)
    stuck_at = kwargs.pop("stuck_at", None)
    ideal = ideal_simulation(target, epochs, seed, progress=progress, **kwargs)
    ins = train_in_situ(target, stuck_rate, epochs, seed, stuck_at=stuck_at, progress=progress, **kwargs)
    exs = train_ex_situ_and_transfer(target, stuck_rate, epochs, seed, stuck_at=stuck_at, progress=progress,
                                     **_ex_kwargs(kwargs))
    out = {"target": target.name, "seed": seed, "epochs": epochs, "batch": BATCH,
           "ideal_simulation": ideal, "in_situ": ins, "ex_situ": exs,
           "gap_points": 100 * (ideal["final_accuracy"] - ins["final_accuracy"]), "paper": dict(PAPER)}
    if curve:
        out["defect_tolerance"] = defect_tolerance(target, rates, epochs, seed, stuck_at=curve_stuck_at,
                                                   progress=progress, **kwargs)
    return out


def _stats(values) -> dict:
    """mean and std (population, ddof=0, as examples/li2018_mlp reports) over seeds, with the per-seed values."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_seed": [float(v) for v in values]}


def study_seeds(target="li2018", stuck_rate: float | None = None, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
                n_seeds: int = 1, *, progress: Callable[[str], None] | None = None, **kwargs) -> dict:
    """`study` on chip instances seed, seed+1, ..., seed+n_seeds-1 (each exactly the single-seed study) and
    mean ± std over them: one chip instance is a noisy sample (its gap can come out negative), the README's
    figures are means over 5."""
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise ConfigError(f"seeds {n_seeds!r}: must be a whole number of chip instances, at least 1")
    target = _load(target)
    seeds = list(range(seed, seed + n_seeds))
    runs = []
    for s in seeds:
        runs.append(study(target, stuck_rate, epochs, s, progress=progress, **kwargs))
    summary = {
        "ideal_simulation": _stats([r["ideal_simulation"]["final_accuracy"] for r in runs]),
        "in_situ": _stats([r["in_situ"]["final_accuracy"] for r in runs]),
        "ex_situ": _stats([r["ex_situ"]["final_accuracy"] for r in runs]),
        "software": _stats([r["ex_situ"]["software_accuracy"] for r in runs]),
        "gap_points": _stats([r["gap_points"] for r in runs]),
    }
    if runs and "defect_tolerance" in runs[0]:
        summary["defect_tolerance"] = [
            {"stuck_rate": row["stuck_rate"], "stuck_at": row["stuck_at"],
             "in_situ": _stats([r["defect_tolerance"][k]["in_situ"] for r in runs]),
             "ex_situ": _stats([r["defect_tolerance"][k]["ex_situ"] for r in runs])}
            for k, row in enumerate(runs[0]["defect_tolerance"])]
    return {"target": target.name, "seeds": seeds, "epochs": epochs, "batch": BATCH, "summary": summary,
            "runs": runs, "paper": dict(PAPER)}


# -- helpers --------------------------------------------------------------------------------------------------------
def _load(target):
    from cimc.targets.registry import load_target
    from cimc.targets.spec import Target
    return target if isinstance(target, Target) else load_target(target)


def _fraction(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"stuck rate {value!r}: expected a fraction between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"stuck rate {value!r}: must be a fraction between 0 and 1")
    return value


def _nonideal(target, stuck_rate, stuck_at, update_sigma_rel, ideal):
    import dataclasses

    from cimc.targets.spec import NonIdealSpec
    if ideal:
        return NonIdealSpec()
    changes = {}
    if stuck_rate is not None:
        changes["stuck_rate"] = _fraction(stuck_rate)
    if stuck_at is not None:
        changes["stuck_at"] = str(stuck_at)
    if update_sigma_rel is not None:
        changes["update_sigma_rel"] = float(update_sigma_rel)
    return dataclasses.replace(target.nonideal, **changes)      # NonIdealSpec validates (TargetError)


def _defect_map(defect_map):
    if defect_map is None:
        return None
    from cimc.targets.devices import DefectMap, load_defect_map
    return defect_map if isinstance(defect_map, DefectMap) else load_defect_map(defect_map)


def _ex_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "update_sigma_rel"}


def _stuck_at_text(stuck_at, target) -> str:
    return str(stuck_at) if stuck_at is not None else target.nonideal.stuck_at


def _final_test(chip: InSituChip, data, accuracy: float) -> float:
    """The test accuracy at the target's drift time: `accuracy` (read right after the last write) where aging
    changes nothing, else the accuracy of the aged chip (InSituChip.age)."""
    if not chip.ages:
        return accuracy
    chip.age()
    return _accuracy(chip.forward(data.x_test)[2], data.y_test)


def _aging_fields(result: dict, chip: InSituChip, before: float) -> None:
    if chip.aged_s:
        result.update(drift_time_s=chip.aged_s, accuracy_before_drift=float(before),
                      drift_compensation_alpha=chip.drift_scale)


def _result(method, chip: InSituChip, target, seed, epochs, lr, ideal, accuracy, t0) -> dict:
    stuck_values = chip.stuck_g[chip.stuck]
    return {"method": method, "target": target.name, "seed": seed, "epochs": epochs, "batch": BATCH, "lr": lr,
            "ideal": bool(ideal), "final_accuracy": float(accuracy),
            "stuck_devices": int(chip.stuck.sum()), "stuck_fraction": float(chip.stuck.mean()),
            "stuck_at_us": float(np.median(stuck_values)) if stuck_values.size else None,
            "update_sigma_rel": chip.update_sigma_rel if method == "in_situ" else None,
            "chip": {"rows": chip.rows, "cols": chip.cols, "g_min_us": chip.g_min, "g_max_us": chip.g_max,
                     "g_ref_us": chip.g_ref, "g_scale_us": chip.g_scale, "w_max": chip.w_max,
                     **({"encoding": "offset"} if chip.offset_encoding else {}),
                     **({"offset_reference": "column", "reference_column": chip.reference_col}
                        if chip.reference_col is not None else {}),
                     "read_voltage_v": chip.read_voltage_v,
                     "adc": "exact" if chip.adc_bits is None else f"{chip.adc_bits}-bit",
                     **({"wire_ohm": chip.wire_ohm, "access_ohm": chip.access_ohm, "cell": chip.cell}
                        if chip.circuit else {}),
                     "layers": [{"name": l.name, "inputs": l.n_in, "outputs": l.n_out, "devices": l.devices,
                                 "columns": [l.cols.start, l.cols.stop - 1]} for l in chip.layers]},
            "seconds": time.perf_counter() - t0}
