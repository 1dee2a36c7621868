"""Device physics of a chip instance: the manifest's device levels programmed onto physical devices.

One interface (`DeviceModel`), seeded and vectorised over every cell of every physical array at once.

**Programming.** A cell at level k targets g = g_min + k * step (cimc.targets.spec.DeviceSpec). A chip instance is
drawn once from `np.random.default_rng(seed)`; unless the model is ideal, three arrays of the shape of all physical
arrays [n_arrays, rows, cols] are drawn, always all three and always in this order (C order within each), so that
turning one effect on or off never changes the draws of another:

1. `z_prog  = rng.standard_normal(shape)`  programming (transfer) error,
2. `u_stuck = rng.random(shape)`           stuck devices,
3. `z_nu    = rng.standard_normal(shape)`  per-device drift exponent,

and, only where a conductance-dependent statistic of cimc.targets.device_stats is on (so that instances without
them are drawn exactly as before they existed), two more, both always, in this order:

4. `z_1f    = rng.standard_normal(shape)`  accumulated 1/f read noise at the drift time,
5. `z_relax = rng.standard_normal(shape)`  relaxation.

Then, per cell (all in uS):

* programmed  g0 = max(0, g_target + (program_sigma_us + program_sigma_rel * g_target) * z_prog)   (Yao: 0.54 uS)
* drift       g(t) = g0 * (t / t0) ** -nu with nu = drift_nu + drift_nu_sigma * z_nu, applied when drift_time_s > 0
* statistics  per level or by aihwkit's PCM formulas (programming sigma, drift exponent, 1/f noise, relaxation,
              global drift compensation): cimc.targets.device_stats, which states them
* stuck       where u_stuck < stuck_rate the cell holds the stuck conductance at all times: g_min, g_max or the
              given value (`stuck_at = "10"`: Li 2018's 11% of devices at ~10 uS)
* defect map  cells marked in a measured defect map hold their measured conductance (or the stuck conductance).

**Read noise** is Gaussian per device and per read (sigma `read_noise_sigma_us`), drawn from a separate generator
(`read_generator(seed)`: the first child of `np.random.SeedSequence(seed)`), so it is reproducible too. The
crossbar backend never draws it per device: a line that sums n driven devices with input amplitudes u_r carries
noise N(0, sigma^2 * sum_r u_r^2), which is what i.i.d. per-device draws add up to (exact in distribution);
`line_noise` draws it. The crossbar backend draws it **per sample**: `sample_generators(seed, key, samples)` gives
sample i the child (*key, i) of that read stream (key: layer and copy), so that a sample's noise depends only on the
seed, the read and the sample's own index, never on the batch it runs in; `line_noise` then takes one generator
per entry of its first axis.

**Defect map file** (npz): `stuck` bool/uint8 [n_arrays, rows, cols] (non-zero = stuck cell) and optionally
`g_us` float [n_arrays, rows, cols] (the measured conductance of each stuck cell; NaN = the target's `stuck_at`).
The map must have the target's array geometry and at least as many arrays as the manifest uses (extra arrays are
ignored). `save_defect_map` / `load_defect_map` write and read it.

**Units on the command line.** `parse_conductance("0.54uS")` (S, mS, uS, nS, pS; a bare number is uS),
`parse_duration("1d")` (s, min, h, d, w, y with 1 y = 365.25 d; a bare number is seconds), `parse_fraction`.
Each raises a CimcError naming the flag.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.data import read_npz
from cimc.errors import ConfigError, DataError
from cimc.targets import device_stats

CONDUCTANCE_UNITS_US = {"s": 1e6, "ms": 1e3, "us": 1.0, "µs": 1.0, "ns": 1e-3, "ps": 1e-6}
DURATION_UNITS_S = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
                    "y": 365.25 * 86400.0}
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-zµ]*)\s*$")


# -- command-line values --------------------------------------------------------------------------------------------
def _split(text, flag: str, what: str) -> tuple[float, str]:
    m = _NUMBER.match(str(text))
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected {what}")
    return float(m.group(1)), m.group(2)


def _parse_with_units(text, flag: str, what: str, units: dict, default_unit: str) -> float:
    value, unit = _split(text, flag, what)
    factor = units.get(unit.lower() if unit else default_unit)
    if factor is None:
        raise ConfigError(f"{flag} {text!r}: unknown unit {unit!r}; expected {what}")
    if value < 0:
        raise ConfigError(f"{flag} {text!r}: must be >= 0")
    return value * factor


def parse_conductance(text, flag: str = "conductance") -> float:
    """'0.54uS', '540nS', '0.54' (uS) -> uS; negative values are errors."""
    return _parse_with_units(text, flag, "a conductance such as 0.54uS or 540nS (units S, mS, uS, nS, pS)",
                             CONDUCTANCE_UNITS_US, "us")


def parse_duration(text, flag: str = "duration") -> float:
    """'1d', '3600s', '2h', '10y', '30min', '5' (s) -> seconds; negative values are errors."""
    return _parse_with_units(text, flag, "a time such as 3600s, 30min, 2h, 1d, 1w or 10y", DURATION_UNITS_S, "s")


def parse_fraction(text, flag: str = "fraction") -> float:
    """'0.11' or '11%' -> 0.11; outside [0, 1] is an error."""
    s = str(text).strip()
    pct = s.endswith("%")
    try:
        value = float(s[:-1] if pct else s) / (100.0 if pct else 1.0)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected a fraction between 0 and 1, e.g. 0.11 or 11%") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{flag} {text!r}: must be a fraction between 0 and 1")
    return value


# -- defect maps ------------------------------------------------------------------------------------------------
@dataclass
class DefectMap:
    stuck: np.ndarray                 # bool [n_arrays, rows, cols]
    g_us: np.ndarray | None = None    # float [n_arrays, rows, cols]; NaN = the target's stuck conductance
    path: str | None = None


def save_defect_map(path, stuck: np.ndarray, g_us: np.ndarray | None = None) -> Path:
    stuck = np.asarray(stuck).astype(bool)
    if stuck.ndim != 3:
        raise DataError(f"defect map: 'stuck' must be [n_arrays, rows, cols], got shape {list(stuck.shape)}")
    arrays = {"stuck": stuck}
    if g_us is not None:
        g_us = np.broadcast_to(np.asarray(g_us, dtype=np.float32), stuck.shape)
        arrays["g_us"] = np.ascontiguousarray(g_us)
    path = Path(path)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_defect_map(path) -> DefectMap:
    path = str(path)
    content = read_npz(path, "defect map")
    if "stuck" not in content:
        raise DataError(f"{path}: a defect map holds 'stuck' [n_arrays, rows, cols] (and optionally 'g_us'); "
                        f"keys present: {sorted(content)}")
    stuck = content["stuck"]
    if stuck.ndim != 3 or not (stuck.dtype == bool or np.issubdtype(stuck.dtype, np.integer)):
        raise DataError(f"{path}: 'stuck' must be a bool/integer array [n_arrays, rows, cols], got "
                        f"{stuck.dtype} {list(stuck.shape)}")
    g_us = content.get("g_us")
    if g_us is not None:
        if g_us.shape != stuck.shape or not np.issubdtype(g_us.dtype, np.floating):
            raise DataError(f"{path}: 'g_us' must be a float array of the shape of 'stuck' {list(stuck.shape)}, "
                            f"got {g_us.dtype} {list(g_us.shape)}")
        # NaN means "the target's stuck_at" (documented); anything else at a stuck cell is a conductance
        bad = stuck.astype(bool) & ~np.isnan(g_us) & ~(np.isfinite(g_us) & (g_us >= 0))
        if np.any(bad):
            index = [int(i) for i in np.argwhere(bad)[0]]
            raise DataError(f"{path}: 'g_us'{index} = {g_us[tuple(index)]!r} at a stuck cell; a measured "
                            "conductance must be finite and >= 0 uS (or NaN for the target's stuck_at)")
    return DefectMap(stuck.astype(bool), None if g_us is None else g_us.astype(np.float64), path)


# -- chip instances ---------------------------------------------------------------------------------------------
@dataclass
class ChipInstance:
    """One programmed chip. Conductances in uS, [n_arrays, rows, cols] float64."""
    levels: np.ndarray            # uint8: the manifest's device levels
    target_us: np.ndarray         # g_min + level * step
    programmed_us: np.ndarray     # g0: after programming error (before drift and stuck cells)
    conductance_us: np.ndarray    # what a read sees at the drift time: drift applied, stuck cells overridden
    stuck: np.ndarray             # bool: stuck cells (random and defect map)
    nu: np.ndarray | None         # per-device drift exponent (None for an ideal instance)
    seed: int | None
    reference_us: np.ndarray | None = None   # at programming (no drift/1f/relaxation; stuck cells held), for
    #                                          nonideal.drift_compensation = "global"; else None


class DeviceModel:
    """`DeviceModel(device, nonideal, defect_map=None)`; `.program(levels, seed)` -> ChipInstance."""

    def __init__(self, device, nonideal, defect_map: DefectMap | None = None):
        self.device, self.nonideal, self.defect_map = device, nonideal, defect_map

    @classmethod
    def from_target(cls, target, defect_map: DefectMap | str | Path | None = None) -> "DeviceModel":
        if isinstance(defect_map, (str, Path)):
            defect_map = load_defect_map(defect_map)
        return cls(target.device, target.nonideal, defect_map)

    @property
    def step_us(self) -> float:
        return self.device.step_us

    @property
    def stuck_value_us(self) -> float:
        at = self.nonideal.stuck_at
        if at == "g_min":
            return float(self.device.g_min_us)
        if at == "g_max":
            return float(self.device.g_max_us)
        return float(at)

    @property
    def ideal(self) -> bool:
        """No programming error, stuck cells, drift or defect map (read noise is separate: `read_noise_us`)."""
        n = self.nonideal
        return (n.program_sigma_us == 0 and n.program_sigma_rel == 0 and n.stuck_rate == 0
                and not self.drifts and self.defect_map is None and not device_stats.any_on(n))

    @property
    def drifts(self) -> bool:
        n = self.nonideal
        return n.drift_time_s > 0 and (n.drift_nu != 0 or n.drift_nu_sigma != 0 or device_stats.drift_model_on(n))

    def program_sigma_us(self, goal_us) -> np.ndarray | float:
        """The programming sigma at target conductance(s) goal_us (uS)."""
        n = self.nonideal
        extra = device_stats.extra_program_sigma(n, self.device, goal_us)
        base = n.program_sigma_us + n.program_sigma_rel * np.asarray(goal_us, dtype=np.float64)
        return base if extra is None else base + extra

    def programmed(self, goal_us, z) -> np.ndarray:
        """What devices programmed towards `goal_us` hold: goal + sigma(goal) z (z standard normal, one per device),
        floored at 0 uS. The one rule of chip programming, `cimc tune`'s writes and `cimc insitu`'s programming."""
        n = self.nonideal
        if device_stats.programming_on(n):          # conductance-dependent sigma (cimc.targets.device_stats)
            return np.maximum(goal_us + self.program_sigma_us(goal_us) * z, 0.0)
        return np.maximum(programmed_us(goal_us, z, n.program_sigma_us, n.program_sigma_rel), 0.0)

    def exponents(self, target_us, z_nu) -> np.ndarray:
        """The per-device drift exponents nu at target conductances (z_nu standard normal, one per device)."""
        n = self.nonideal
        if device_stats.any_on(n) and device_stats.drift_model_on(n):
            return device_stats.drift_exponents(n, self.device, target_us, z_nu)
        return n.drift_nu + n.drift_nu_sigma * z_nu

    def aged(self, target_us, programmed_us_, nu, z_1f, z_relax) -> np.ndarray:
        """What programmed devices hold at `drift_time_s`: drift g_P (t/t0)^-nu, then 1/f noise and relaxation
        (device_stats, where on; z_1f and z_relax are then used). Stuck cells are the caller's."""
        n = self.nonideal
        g = programmed_us_ * (n.drift_time_s / n.drift_t0_s) ** -nu if self.drifts else programmed_us_.copy()
        if device_stats.any_on(n):
            g = device_stats.after_programming(n, self.device, target_us, programmed_us_, g, z_1f, z_relax)
        return g

    @property
    def read_noise_us(self) -> float:
        return float(self.nonideal.read_noise_sigma_us)

    def nominal_us(self, levels: np.ndarray) -> np.ndarray:
        return self.device.g_min_us + np.asarray(levels, dtype=np.float64) * self.step_us

    def program(self, levels: np.ndarray, seed: int | None = 0) -> ChipInstance:
        levels = np.asarray(levels)
        if levels.ndim != 3:
            raise ValueError("levels must be [n_arrays, rows, cols]")
        target = self.nominal_us(levels)
        if self.ideal:
            return ChipInstance(levels, target, target, target, np.zeros(levels.shape, bool), None, seed)
        n = self.nonideal
        rng = np.random.default_rng(seed)
        z_prog = rng.standard_normal(levels.shape)
        u_stuck = rng.random(levels.shape)
        z_nu = rng.standard_normal(levels.shape)
        # two more draws only where a statistic is on: instances without them are drawn as before device_stats
        z_1f, z_relax = (rng.standard_normal(levels.shape), rng.standard_normal(levels.shape)) \
            if device_stats.any_on(n) else (None, None)
        programmed = self.programmed(target, z_prog)
        nu = self.exponents(target, z_nu)
        g = self.aged(target, programmed, nu, z_1f, z_relax)
        stuck = u_stuck < n.stuck_rate
        g[stuck] = self.stuck_value_us
        reference = programmed.copy() if n.drift_compensation == "global" else None
        if reference is not None:
            reference[stuck] = self.stuck_value_us
        if self.defect_map is not None:
            dm = self._fit_defect_map(levels.shape)
            g_map = np.full(levels.shape, self.stuck_value_us) if dm.g_us is None else \
                np.where(np.isnan(dm.g_us[:levels.shape[0]]), self.stuck_value_us, dm.g_us[:levels.shape[0]])
            mask = dm.stuck[:levels.shape[0]]
            g[mask] = g_map[mask]
            if reference is not None:
                reference[mask] = g_map[mask]
            stuck = stuck | mask
        return ChipInstance(levels, target, programmed, g, stuck, nu, seed, reference)

    def _fit_defect_map(self, shape) -> DefectMap:
        dm = self.defect_map
        where = dm.path or "defect map"
        if dm.stuck.shape[1:] != tuple(shape[1:]):
            raise DataError(f"{where}: arrays are {dm.stuck.shape[1]}x{dm.stuck.shape[2]}, the target's are "
                            f"{shape[1]}x{shape[2]}")
        if dm.stuck.shape[0] < shape[0]:
            raise DataError(f"{where}: holds {dm.stuck.shape[0]} arrays, the manifest uses {shape[0]}")
        return dm


def programmed_us(goal_us, z, sigma_us: float, sigma_rel: float):
    """What a device programmed towards `goal_us` holds before any bound: goal + (sigma_us + sigma_rel * goal) * z,
    z standard normal (the programming / transfer error; Yao 2020: 0.54 uS). The one formula of chip programming,
    transfer and in-situ writes alike (DeviceModel.program, cimc tune, cimc insitu)."""
    sigma = sigma_us + sigma_rel * goal_us
    return goal_us + sigma * z


def read_generator(seed: int | None, *key: int) -> np.random.Generator:
    """The per-run read-noise generator: independent of the chip-instance stream of the same seed (child 0 of
    `np.random.SeedSequence(seed)`). With `key`, its descendant at that spawn key (what `.spawn` would give):
    read_generator(seed, layer, copy, sample) is one sample's stream of reads on one layer's copy."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0,) + tuple(key))))


def sample_generators(seed: int | None, key: tuple, samples) -> list[np.random.Generator]:
    """One read-noise generator per sample (global sample indices): read_generator(seed, *key, i) for i in samples."""
    return [read_generator(seed, *key, int(i)) for i in samples]


def line_noise(rng, sum_sq_inputs: np.ndarray, sigma: float, dtype=np.float32, shape=None) -> np.ndarray:
    """Read noise on output lines: N(0, sigma^2 * sum_r u_r^2) per entry of `sum_sq_inputs` (any shape; or, with
    `shape`, broadcast to it, e.g. one sum per read for all its lines). `rng`: one Generator, or a list of them, one
    per entry of the first axis (per sample: entry j is drawn, in C order, from rng[j] alone)."""
    dt = np.float32 if dtype == np.float32 else np.float64
    shape = np.shape(sum_sq_inputs) if shape is None else tuple(shape)
    if isinstance(rng, np.random.Generator):
        z = rng.standard_normal(shape, dtype=dt)
    else:
        if len(rng) != shape[0]:
            raise ValueError(f"line_noise: {len(rng)} generators for {shape[0]} samples")
        z = np.empty(shape, dt)
        for j, generator in enumerate(rng):
            generator.standard_normal(shape[1:], dtype=dt, out=z[j])
    z *= np.sqrt(np.asarray(sum_sq_inputs, dtype=z.dtype)) * z.dtype.type(sigma)
    return z
