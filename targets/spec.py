"""What the hardware is: frozen dataclasses of physical quantities, one per concern.

A target is data: `targets/presets/*.toml` (or a user's own TOML) is read into `Target` by `targets.registry`.
Units are in the field names (`_us` microsiemens, `_v` volts, `_ns` nanoseconds, `_pj` picojoules).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from cimc.errors import TargetError

DIFFERENTIAL_LAYOUTS = ("columns", "rows")
WEIGHT_ENCODINGS = ("differential", "offset", "bit-sliced")
OFFSET_REFERENCES = ("digital", "column")   # how the offset encoding's offset is taken off (WeightSpec)
MAX_WEIGHT_LEVEL = 32767    # signed weight levels are int16
PULSE_MODELS = ("none", "linear", "soft-bounds", "power-step")
MAX_DEVICE_LEVELS = 256     # arrays.npz stores a device level as uint8 (0..255); signed weight levels need int16


@dataclass(frozen=True)
class ArraySpec:
    """One crossbar array. `differential` says where the two devices of a signed weight sit:
    "columns": g+ and g- on adjacent output lines, subtracted after sensing (Yao 2020) -> rows inputs x cols/2 outputs;
    "rows": the input is applied as +v and -v on two row blocks, subtracted on the line (Li 2018) -> rows/2 x cols."""
    rows: int
    cols: int
    differential: str = "columns"

    def __post_init__(self):
        _require(self.rows >= 1, "array.rows", f"must be positive, got {self.rows!r}")
        _require(self.cols >= 1, "array.cols", f"must be positive, got {self.cols!r}")
        _require(self.differential in DIFFERENTIAL_LAYOUTS, "array.differential",
                 f"must be one of {DIFFERENTIAL_LAYOUTS}, got {self.differential!r}")
        if self.differential == "columns":
            _require(self.cols % 2 == 0, "array.cols", "must be even for differential = 'columns'")
        else:
            _require(self.rows % 2 == 0, "array.rows", "must be even for differential = 'rows'")

    # How a signed weight sits on devices (WeightSpec), set by Target from its [weights] section: not an [array]
    # field (a plain class attribute, so neither TOML nor asdict sees it). (paired, lines, reserved): `paired` = a
    # device pair per line (differential, bit-sliced); `lines` = device lines per pair side (1, or S slices);
    # `reserved` = device columns per array that hold no weight (the offset encoding's reference column: 1).
    _weight_lines = (True, 1, 0)

    @property
    def reference_column(self) -> int | None:
        """The physical column of the offset encoding's reference devices (the array's last), or None."""
        return self.cols - 1 if self._weight_lines[2] else None

    @property
    def _pair_rows(self) -> bool:
        """Whether g+/g- take two row blocks (the "rows" layout with a paired encoding)."""
        return self._weight_lines[0] and self.differential == "rows"

    @property
    def columns_per_output(self) -> int:
        """Device columns one signed output takes: 2 per slice for column pairs, 1 per slice otherwise."""
        paired, lines, _ = self._weight_lines
        return lines * (2 if paired and self.differential == "columns" else 1)

    @property
    def inputs_per_tile(self) -> int:
        """Logical weight rows (inputs) one array holds."""
        return self.rows // 2 if self._pair_rows else self.rows

    @property
    def outputs_per_tile(self) -> int:
        """Logical signed outputs one array holds (the reference column, where there is one, holds none)."""
        return (self.cols - self._weight_lines[2]) // self.columns_per_output

    # Tile geometry, answered here only (cimc.layout places each device; estimates, packing and reports count them).
    def tile_footprint(self, row_count: int, col_count: int) -> tuple[int, int]:
        """Physical (rows, columns) of devices a tile of row_count inputs x col_count signed outputs occupies:
        "columns": g+/g- on adjacent lines (rows x 2 cols); "rows": +v/-v row blocks (2 rows x cols); times the
        slices of a bit-sliced encoding; an offset encoding holds one device per weight (rows x cols), plus, with a
        reference column, that column's devices on the tile's rows (read, and converted, with every read)."""
        return (2 if self._pair_rows else 1) * row_count, self.columns_per_output * col_count + self._weight_lines[2]

    @property
    def frame(self) -> tuple[int, int]:
        """(height, width) of the region tiles are placed in: the array, or its first row block for "rows" (the
        -v block mirrors it rows/2 below); without the reference column, where there is one (the last)."""
        width = self.cols - self._weight_lines[2]
        return (self.rows // 2, width) if self._pair_rows else (self.rows, width)

    def tile_rectangle(self, row_count: int, col_count: int) -> tuple[int, int]:
        """(rows, device columns) a tile covers in `frame`."""
        return row_count, self.columns_per_output * col_count


@dataclass(frozen=True)
class WeightSpec:
    """How a signed weight level is held by devices of `device.levels` = L levels (cimc.encoding writes and reads
    them). "differential" (today's default): a device pair, levels -(L-1)..L-1, placed as `array.differential` says.
    "offset": one unipolar device per weight at level w + (L-1)//2, levels -(L-1)//2..(L-1)//2; the offset times the
    input sum is subtracted per column: `offset_reference` = "digital" (today's default) subtracts the offset level
    times the input sum digitally; "column" gives each array one more column of devices all at the offset level (its
    last), read with every read through its own ADC, whose code is subtracted from each weight column's code of that
    array (CrossSim's OFFSET mapping with a reference column; ISAAC): its devices' errors are shared by the array's
    columns, and the array holds one output fewer. "bit-sliced": |w| in base L over `slices` = S device pairs
    (slice s weighs L^s; with 2^b levels, b bits per slice), the sign by the pair, levels -(L^S-1)..L^S-1; each slice
    line is converted on its own and the slices combined by shift-and-add after the ADC."""
    encoding: str = "differential"
    slices: int = 1
    offset_reference: str = "digital"

    def __post_init__(self):
        _require(self.encoding in WEIGHT_ENCODINGS, "weights.encoding",
                 f"must be one of {', '.join(WEIGHT_ENCODINGS)}, got {self.encoding!r}")
        _require(isinstance(self.slices, int) and not isinstance(self.slices, bool) and 1 <= self.slices <= 16,
                 "weights.slices", f"must be an integer from 1 to 16, got {self.slices!r}")
        _require(self.slices == 1 or self.encoding == "bit-sliced", "weights.slices",
                 f"applies to weights.encoding = 'bit-sliced' only; set it to 1 for {self.encoding!r}")
        _require(self.offset_reference in OFFSET_REFERENCES, "weights.offset_reference",
                 f"must be one of {', '.join(OFFSET_REFERENCES)}, got {self.offset_reference!r}")
        _require(self.offset_reference == "digital" or self.encoding == "offset", "weights.offset_reference",
                 f"applies to weights.encoding = 'offset' only; leave it out (or 'digital') for {self.encoding!r}")

    def max_level(self, device_levels: int) -> int:
        """The largest signed weight level the encoding holds with devices of `device_levels` levels."""
        top = device_levels - 1
        if self.encoding == "offset":
            return top // 2
        return top if self.encoding == "differential" else device_levels ** self.slices - 1

    @property
    def reference_column(self) -> bool:
        """Whether each array holds a reference column (the offset encoding with offset_reference = "column")."""
        return self.encoding == "offset" and self.offset_reference == "column"

    @property
    def lines(self) -> tuple[bool, int, int]:
        """(paired, lines, reserved columns) for ArraySpec's geometry."""
        return self.encoding != "offset", self.slices, int(self.reference_column)


@dataclass(frozen=True)
class DeviceSpec:
    """A multi-level device: `levels` conductances g_min + k*step, k = 0..levels-1. A differential pair gives
    2*levels-1 signed weight levels (8 levels -> -7..+7)."""
    levels: int = 8
    g_min_us: float = 2.5
    g_max_us: float = 20.0

    def __post_init__(self):
        _require(isinstance(self.levels, int) and not isinstance(self.levels, bool)
                 and 2 <= self.levels <= MAX_DEVICE_LEVELS, "device.levels",
                 f"must be an integer from 2 to {MAX_DEVICE_LEVELS} (arrays.npz stores a device level in one "
                 f"byte), got {self.levels!r}")
        _require(self.g_min_us >= 0, "device.g_min_us", f"must be >= 0, got {self.g_min_us!r}")
        _require(self.g_min_us < self.g_max_us, "device.g_max_us",
                 f"must be above device.g_min_us = {self.g_min_us!r}, got {self.g_max_us!r}")

    @property
    def max_level(self) -> int:
        return self.levels - 1

    @property
    def step_us(self) -> float:
        return (self.g_max_us - self.g_min_us) / (self.levels - 1)


@dataclass(frozen=True)
class InputSpec:
    """How activations reach the rows. "bit-serial": one 1-bit pulse per bit, LSB first (Yao); "analog": one
    amplitude-coded pulse (Li). `bits` is the activation precision either way."""
    bits: int = 8
    encoding: str = "bit-serial"
    read_voltage_v: float = 0.2
    pulse_ns: float = 50.0
    # "analog" inputs: the row driver's (DAC's) bow-shaped non-linearity, peak deviation in input LSB (one code)
    dac_inl_lsb: float = 0.0
    # every row driver's gain error, relative, drawn per driver from the chip seed (cimc.targets.drivers)
    driver_gain_sigma_rel: float = 0.0

    def __post_init__(self):
        _require(2 <= self.bits <= 16, "input.bits", "must be between 2 and 16")
        _require(self.encoding in ("bit-serial", "analog"), "input.encoding", "must be 'bit-serial' or 'analog'")
        _require(self.read_voltage_v > 0, "input.read_voltage_v", f"must be positive, got {self.read_voltage_v!r}")
        _require(self.pulse_ns > 0, "input.pulse_ns", f"must be positive, got {self.pulse_ns!r}")
        _require(self.driver_gain_sigma_rel >= 0, "input.driver_gain_sigma_rel",
                 f"must be >= 0 (0 = ideal drivers), got {self.driver_gain_sigma_rel!r}")
        _require(abs(self.dac_inl_lsb) <= 2 ** (self.bits - 2), "input.dac_inl_lsb",
                 f"must be at most a quarter of the code range ({2 ** (self.bits - 2)} LSB for {self.bits} bits) in "
                 f"magnitude, got {self.dac_inl_lsb!r}")
        _require(self.dac_inl_lsb == 0 or self.encoding == "analog", "input.dac_inl_lsb",
                 "applies to analog-amplitude inputs only (input.encoding = 'analog'); bit-serial pulses are 0 or "
                 "V_read, so set it to 0")


@dataclass(frozen=True)
class AdcSpec:
    """Per-array ADC. `lossless = true` converts every column current exactly (the ideal chip);
    otherwise `bits` with a full-scale range set by `full_scale` ("calibrated" per layer, or "max": the largest
    current the column can carry). `columns_per_adc` columns share one ADC in time. `full_scale_per_slice` (bit-sliced
    weights, "calibrated"): each slice's lines get a full scale of their own, the largest ideal current of that
    slice's lines (slices of different significance carry very different currents), instead of the layer's one."""
    bits: int = 8
    lossless: bool = False
    columns_per_adc: int = 1
    full_scale: str = "calibrated"
    full_scale_per_slice: bool = False
    energy_pj: float | None = None
    # non-idealities of each ADC instance (cimc.targets.adc; 0 = ideal): per-ADC gain error and offset drawn from
    # the chip seed, a bow-shaped INL of this peak, sense noise drawn per conversion
    gain_sigma_rel: float = 0.0
    offset_sigma_lsb: float = 0.0
    inl_lsb: float = 0.0
    noise_sigma_lsb: float = 0.0

    def __post_init__(self):
        _require(1 <= self.bits <= 24, "adc.bits", "must be between 1 and 24")
        for name in ("gain_sigma_rel", "offset_sigma_lsb", "noise_sigma_lsb"):
            _require(getattr(self, name) >= 0, f"adc.{name}", f"must be >= 0 (0 = ideal), got {getattr(self, name)!r}")
        _require(abs(self.inl_lsb) <= 0.25 * 2 ** self.bits, "adc.inl_lsb",
                 f"must be at most a quarter of the code range ({0.25 * 2 ** self.bits:g} LSB for {self.bits} bits) "
                 f"in magnitude, got {self.inl_lsb!r}")
        _require(self.columns_per_adc >= 1, "adc.columns_per_adc", "must be at least 1")
        _require(self.full_scale in ("calibrated", "max"), "adc.full_scale", "must be 'calibrated' or 'max'")
        _require(self.energy_pj is None or self.energy_pj >= 0, "adc.energy_pj",
                 f"must be >= 0 (or omitted: unknown), got {self.energy_pj!r}")


@dataclass(frozen=True)
class NonIdealSpec:
    """Device non-idealities of a chip instance (used by the crossbar backend). All zero = ideal devices."""
    program_sigma_us: float = 0.0      # Gaussian programming (transfer) error per device, absolute
    program_sigma_rel: float = 0.0     # ... plus a part proportional to the target conductance
    stuck_rate: float = 0.0            # fraction of devices stuck
    stuck_at: str = "g_min"            # "g_min", "g_max" or a conductance in uS, e.g. "10"
    read_noise_sigma_us: float = 0.0   # Gaussian noise per read
    drift_nu: float = 0.0              # g(t) = g0 * (t/t0)^-nu
    drift_nu_sigma: float = 0.0
    drift_t0_s: float = 1.0
    drift_time_s: float = 0.0          # time since programming; 0 = no drift
    update_sigma_rel: float = 0.0      # relative variation of an in-situ conductance update (Li 2018: 2%)
    defect_map: str | None = None      # npz of measured stuck cells (cimc.targets.devices), a path
    # the array's circuit (cimc.targets.ir_drop): resistance of one row/column line segment, the 1T1R access
    # transistor's on-resistance, and the cell: "1t1r" (undriven rows held at 0 V) or "0t1r" (passive, they float)
    wire_ohm: float = 0.0
    access_ohm: float = 0.0
    cell: str = "1t1r"
    # Conductance-dependent statistics (cimc.targets.device_stats; all empty/zero = off, results as before them).
    # Per-level lists hold one value per device level 0..levels-1 (what `cimc device fit` writes).
    program_sigma_levels_us: tuple[float, ...] = ()   # programming sigma per level (added to the above)
    program_sigma_poly_us: tuple[float, ...] = ()     # sigma = sum_i c_i (g_T / g_max)^i uS (aihwkit prog_coeff)
    drift_nu_model: str = "none"       # "none", "levels" (the two lists below) or "pcm" (aihwkit's formulas)
    drift_nu_levels: tuple[float, ...] = ()           # mean drift exponent per level; nu = |mean + std z|
    drift_nu_sigma_levels: tuple[float, ...] = ()     # its spread per level
    read_noise_1f_model: str = "none"  # "none", "levels" (Q_s per level below) or "pcm": accumulated 1/f noise
    read_noise_1f_levels: tuple[float, ...] = ()      # Q_s per level: sigma/g = Q_s sqrt(ln((t + t_r) / (2 t_r)))
    read_noise_t_read_s: float = 250e-9               # t_r of the 1/f law (aihwkit t_read)
    relaxation_sigma_us: float = 0.0   # spread added after programming: sigma^2 = this^2 * log10(t / t0), t > t0
    drift_compensation: str = "none"   # "none" or "global": outputs scaled by a reference read at t0 over one at t

    def __post_init__(self):
        for name in ("program_sigma_us", "program_sigma_rel", "read_noise_sigma_us", "drift_nu_sigma",
                     "drift_time_s", "update_sigma_rel", "relaxation_sigma_us"):
            _require(getattr(self, name) >= 0, f"nonideal.{name}", "must be >= 0")
        for name in ("wire_ohm", "access_ohm"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, f"nonideal.{name}",
                     f"must be a finite resistance >= 0 in ohm (0 = ideal), got {value!r}")
        _require(self.cell in ("1t1r", "0t1r"), "nonideal.cell",
                 f"must be '1t1r' (access transistor) or '0t1r' (passive array), got {self.cell!r}")
        _require(self.cell == "1t1r" or self.access_ohm == 0, "nonideal.access_ohm",
                 "a passive array (nonideal.cell = '0t1r') has no access transistor: set it to 0, or use '1t1r'")
        _require(self.read_noise_t_read_s > 0, "nonideal.read_noise_t_read_s", "must be positive")
        for name in ("program_sigma_levels_us", "drift_nu_sigma_levels", "read_noise_1f_levels"):
            _require(all(v >= 0 for v in getattr(self, name)), f"nonideal.{name}", "every value must be >= 0")
        _require(self.drift_nu_model in ("none", "levels", "pcm"), "nonideal.drift_nu_model",
                 f"must be 'none', 'levels' or 'pcm', got {self.drift_nu_model!r}")
        _require(self.read_noise_1f_model in ("none", "levels", "pcm"), "nonideal.read_noise_1f_model",
                 f"must be 'none', 'levels' or 'pcm', got {self.read_noise_1f_model!r}")
        _require(self.drift_compensation in ("none", "global"), "nonideal.drift_compensation",
                 f"must be 'none' or 'global', got {self.drift_compensation!r}")
        _require((self.drift_nu_model == "levels") == bool(self.drift_nu_levels), "nonideal.drift_nu_levels",
                 "is given exactly when nonideal.drift_nu_model = 'levels' (one mean exponent per device level)")
        _require(not self.drift_nu_sigma_levels or self.drift_nu_model == "levels", "nonideal.drift_nu_sigma_levels",
                 "needs nonideal.drift_nu_model = 'levels'")
        _require((self.read_noise_1f_model == "levels") == bool(self.read_noise_1f_levels),
                 "nonideal.read_noise_1f_levels",
                 "is given exactly when nonideal.read_noise_1f_model = 'levels' (one Q_s per device level)")
        _require(0.0 <= self.stuck_rate <= 1.0, "nonideal.stuck_rate", "must be a fraction between 0 and 1")
        _require(self.drift_t0_s > 0, "nonideal.drift_t0_s", "must be positive")
        if self.stuck_at not in ("g_min", "g_max"):
            try:
                value = float(self.stuck_at)
            except ValueError:
                value = math.nan
            _require(math.isfinite(value) and value >= 0, "nonideal.stuck_at",
                     f"must be 'g_min', 'g_max' or a finite conductance >= 0 in uS, got {self.stuck_at!r}")


@dataclass(frozen=True)
class ChipSpec:
    """How arrays group into processing elements (PEs) and chips. `chips = 0` means as many as the model needs."""
    arrays_per_pe: int = 1
    pes_per_chip: int = 8
    chips: int = 0

    def __post_init__(self):
        _require(self.arrays_per_pe >= 1, "chip.arrays_per_pe", f"must be positive, got {self.arrays_per_pe!r}")
        _require(self.pes_per_chip >= 1, "chip.pes_per_chip", f"must be positive, got {self.pes_per_chip!r}")
        _require(self.chips >= 0, "chip.chips", "must be >= 0 (0 = unlimited)")

    @property
    def arrays_per_chip(self) -> int:
        return self.arrays_per_pe * self.pes_per_chip

    @property
    def array_budget(self) -> int | None:
        """The most arrays the target has, or None when unlimited."""
        return self.arrays_per_chip * self.chips if self.chips else None


@dataclass(frozen=True)
class QuantSpec:
    """Quantisation policy. `weights`: one scale per output column ("column") or per layer ("layer", the paper's
    choice). `calibration`: activation range rule, "max" (largest |x| seen) or "percentile" (`percentile` of |x|)."""
    weights: str = "column"
    calibration: str = "max"
    percentile: float = 99.99

    def __post_init__(self):
        _require(self.weights in ("column", "layer"), "quant.weights", "must be 'column' or 'layer'")
        _require(self.calibration in ("max", "percentile"), "quant.calibration", "must be 'max' or 'percentile'")
        _require(0 < self.percentile <= 100, "quant.percentile", "must be in (0, 100]")


@dataclass(frozen=True)
class EnergySpec:
    """Energy and area numbers of one array and its periphery where known (None = unknown: estimates that need a
    number report null for what depends on it and name the field, never a silent zero). ADC energy is
    `adc.energy_pj` (per conversion). `cimc.passes.estimate` scales the per-array figures to the part of an array a
    tile uses: array energy by the cells used, driver energy by the rows driven, ADC and digital energy by the
    columns converted."""
    array_pj_per_slot: float | None = None      # read energy of one full array, one input slot, all rows driven
    driver_pj_per_slot: float | None = None     # row drivers and other non-ADC periphery of one array, one slot
    digital_pj_per_op: float | None = None      # digital shift-and-add of one converted column, one slot
    array_area_um2: float | None = None         # one crossbar array (cells and selectors)
    peripheral_area_um2: float | None = None    # the periphery of one array: ADCs, drivers, shift-and-add

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _require(value is None or value >= 0, f"energy.{f.name}", "must be >= 0 (or omitted: unknown)")


@dataclass(frozen=True)
class TimingSpec:
    """How long an input slot lasts. A slot is one 1-bit pulse (bit-serial inputs) or the one amplitude pulse
    (analog inputs); `slot_ns` omitted = `input.pulse_ns`. `adc_sharing_stalls`: whether the `adc.columns_per_adc`
    columns that share one ADC cost time. false: all of them are converted inside the slot (Yao's macro: 4 columns
    per ADC within the 50 ns slot, 8 x 50 ns = 400 ns per 8-bit vector); true: each slot is repeated
    columns_per_adc times, one conversion round each."""
    slot_ns: float | None = None
    adc_sharing_stalls: bool = False

    def __post_init__(self):
        _require(self.slot_ns is None or self.slot_ns > 0, "timing.slot_ns",
                 "must be positive (or omitted: input.pulse_ns)")


@dataclass(frozen=True)
class PulseSpec:
    """How a device responds to one programming pulse, for in-situ writes (`cimc insitu`, `cimc tune`;
    cimc.targets.pulse_update). `model = "none"` (the default): a write sets the requested conductance directly, as
    before pulse models existed. Otherwise with x = (g - g_min) / (g_max - g_min), a SET pulse adds
    dg_up_us * (1 - x)^gamma_up and a RESET pulse removes dg_down_us * x^gamma_down ("linear": gamma 0, a constant
    step; "soft-bounds": gamma 1; "power-step": the gamma fields), each times (1 + c2c_sigma_rel * N(0, 1)) per pulse
    and a per-device factor (1 + d2d_sigma_rel * N(0, 1)) per direction drawn once from the chip seed. Open loop
    (verify_tolerance_us = 0): the pulses the nominal model needs; write-verify: pulse, read, repeat until within
    verify_tolerance_us. Either way at most max_pulses per write."""
    model: str = "none"
    dg_up_us: float = 0.0
    dg_down_us: float = 0.0
    gamma_up: float = 1.0
    gamma_down: float = 1.0
    c2c_sigma_rel: float = 0.0
    d2d_sigma_rel: float = 0.0
    verify_tolerance_us: float = 0.0
    max_pulses: int = 200
    rounding: str = "nearest"          # open loop: "nearest" pulse count, or "stochastic" (unbiased in the mean)

    def __post_init__(self):
        _require(self.model in PULSE_MODELS, "pulse.model", f"must be one of {PULSE_MODELS}, got {self.model!r}")
        for name in ("dg_up_us", "dg_down_us", "gamma_up", "gamma_down", "c2c_sigma_rel", "d2d_sigma_rel",
                     "verify_tolerance_us"):
            _require(getattr(self, name) >= 0, f"pulse.{name}", f"must be >= 0, got {getattr(self, name)!r}")
        _require(self.max_pulses >= 1, "pulse.max_pulses", f"must be at least 1, got {self.max_pulses!r}")
        _require(self.rounding in ("nearest", "stochastic"), "pulse.rounding",
                 f"must be 'nearest' or 'stochastic', got {self.rounding!r}")
        if self.model == "none":     # a pulse field without a model would be silently unused
            for f in dataclasses.fields(self):
                _require(f.name == "model" or getattr(self, f.name) == f.default, f"pulse.{f.name}",
                         "is set but pulse.model is 'none'; set pulse.model to 'linear', 'soft-bounds' or "
                         "'power-step', or leave the field out")
            return
        for name in ("dg_up_us", "dg_down_us"):
            _require(getattr(self, name) > 0, f"pulse.{name}",
                     f"must be > 0 with pulse.model = {self.model!r} (the step of one pulse, in uS)")
        if self.model != "power-step":
            for name in ("gamma_up", "gamma_down"):
                _require(getattr(self, name) == 1.0, f"pulse.{name}",
                         f"applies to pulse.model = 'power-step' only ({self.model!r} fixes it); leave it out")


@dataclass(frozen=True)
class Target:
    name: str
    description: str = ""
    array: ArraySpec = field(default_factory=lambda: ArraySpec(144, 16))
    device: DeviceSpec = field(default_factory=DeviceSpec)
    input: InputSpec = field(default_factory=InputSpec)
    adc: AdcSpec = field(default_factory=AdcSpec)
    nonideal: NonIdealSpec = field(default_factory=NonIdealSpec)
    chip: ChipSpec = field(default_factory=ChipSpec)
    quant: QuantSpec = field(default_factory=QuantSpec)
    energy: EnergySpec = field(default_factory=EnergySpec)
    timing: TimingSpec = field(default_factory=TimingSpec)
    pulse: PulseSpec = field(default_factory=PulseSpec)
    weights: WeightSpec = field(default_factory=WeightSpec)

    def __post_init__(self):
        self._check_weights()
        n = self.nonideal
        for name in ("program_sigma_levels_us", "drift_nu_levels", "drift_nu_sigma_levels", "read_noise_1f_levels"):
            values = getattr(n, name)
            _require(not values or len(values) == self.device.levels, f"nonideal.{name}",
                     f"holds {len(values)} values; give one per device level (device.levels = {self.device.levels})")

    def _check_weights(self) -> None:
        w = self.weights
        if self.array._weight_lines != w.lines:     # a fresh ArraySpec: others may share this one
            array = dataclasses.replace(self.array)
            object.__setattr__(array, "_weight_lines", w.lines)
            object.__setattr__(self, "array", array)
        _require(w.encoding != "offset" or self.device.levels >= 3, "weights.encoding",
                 f"'offset' needs device.levels >= 3 (w + (L-1)//2 on one device; {self.device.levels} levels hold "
                 "only weight 0); use 'differential' or more levels")
        _require(w.max_level(self.device.levels) <= MAX_WEIGHT_LEVEL, "weights.slices",
                 f"{w.slices} slices of {self.device.levels}-level devices give weights up to "
                 f"{w.max_level(self.device.levels)}, above the int16 limit {MAX_WEIGHT_LEVEL}: use fewer slices")
        _require(not self.adc.full_scale_per_slice or w.encoding == "bit-sliced", "adc.full_scale_per_slice",
                 f"applies to weights.encoding = 'bit-sliced' only (its slices' lines), not {w.encoding!r}; leave it "
                 "out or false")
        field = "weights.offset_reference" if w.reference_column else "weights.slices"
        _require(self.array.outputs_per_tile >= 1, field,
                 f"one output needs {self.array.columns_per_output} device columns"
                 f"{' besides the reference column' if w.reference_column else ''} but array.cols = "
                 f"{self.array.cols}: use {'offset_reference = digital' if w.reference_column else 'fewer slices'} "
                 "or wider arrays")

    @property
    def max_weight_level(self) -> int:
        """The largest signed weight level (quantisation's L): device.max_level for the default encoding."""
        return self.weights.max_level(self.device.levels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "target") -> "Target":
        """Build from nested dicts (TOML or manifest JSON); unknown sections or fields are errors naming them."""
        data = dict(data)
        if "name" not in data:
            raise TargetError(f"{source}: missing field 'name'")
        kwargs: dict[str, Any] = {}
        sections = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in sections:
                raise TargetError(f"{source}: unknown field {key!r} (known: {', '.join(sections)})")
            section_type = _SECTION_TYPES.get(key)
            if section_type is None:                    # name, description: plain text
                if not isinstance(value, str):
                    raise TargetError(f"{source}: field {key!r} must be a string, got {value!r}")
                kwargs[key] = value
                continue
            if not isinstance(value, dict):
                raise TargetError(f"{source}: [{key}] must be a table of fields")
            kwargs[key] = _build_section(section_type, key, value, source)
        return cls(**kwargs)

    def replace(self, **sections) -> "Target":
        return dataclasses.replace(self, **sections)


_SECTION_TYPES = {"array": ArraySpec, "device": DeviceSpec, "input": InputSpec, "adc": AdcSpec,
                  "nonideal": NonIdealSpec, "chip": ChipSpec, "quant": QuantSpec, "energy": EnergySpec,
                  "timing": TimingSpec, "pulse": PulseSpec,
                  "weights": WeightSpec}


def _build_section(section_type, key: str, values: dict, source: str):
    known = {f.name: f for f in dataclasses.fields(section_type)}
    for name in values:
        if name not in known:
            raise TargetError(f"{source}: unknown field '{key}.{name}' (known: {', '.join(known)})")
    try:
        return section_type(**{name: _coerce(values[name], known[name].type, f"{key}.{name}", source)
                               for name in values})
    except TargetError as exc:
        raise TargetError(f"{source}: {exc}") from None


def _coerce(value, type_text: str, where: str, source: str):
    """Check a TOML/JSON value against the field's declared type (`int`, `float | None`, ...)."""
    allowed = [t.strip() for t in str(type_text).split("|")]
    if value is None and "None" in allowed:
        return None
    if "bool" in allowed and isinstance(value, bool):
        return value
    if "int" in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "float" in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise TargetError(f"{where}: must be finite, got {value!r}")
        return float(value)
    if "str" in allowed and isinstance(value, str):
        return value
    if allowed[0].startswith("tuple[float") and isinstance(value, (list, tuple)):      # a list of numbers
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
                   for v in value):
            raise TargetError(f"field '{where}' must be a list of finite numbers, got {value!r}")
        return tuple(float(v) for v in value)
    raise TargetError(f"{source}: field '{where}' must be {type_text}, got {value!r}")


def _require(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise TargetError(f"{where}: {what}")
