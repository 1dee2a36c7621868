"""One chip instance: what a seed draws for a target (devices, ADCs), what is programmed on it, and its identity.

The crossbar backend reads it (`run`), `cimc tune` writes it (`program` + `set_conductances`), and a tuned manifest's
conductances apply only to a chip of the same `identity()`. Device physics: cimc.targets.devices; ADC instances:
cimc.targets.adc.

With wire or access resistance (`nonideal.wire_ohm`, `access_ohm`; cimc.targets.ir_drop) the reads see each array's
effective conductances `read_us` (the circuit's currents per volt, computed once here) instead of the devices' own
`conductance_us`; g_units below are then (read_us - g_min) / step.

Conductances are also kept in *step units* relative to g_min, `g_units` = (g - g_min) / step = level + (g - g_target)
/ step, exact for ideal devices (deviation 0); `offset` = g_min / step is the g_min part of one driven device."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from cimc.targets import device_stats
from cimc.targets.adc import AdcModel
from cimc.targets.devices import DeviceModel, load_defect_map
from cimc.targets.drivers import driver_gains
from cimc.targets.ir_drop import active as wires_active, array_conductances
from cimc.targets.spec import NonIdealSpec

_CIRCUIT = ("wire_ohm", "access_ohm", "cell")      # nonideal fields of the array's circuit (cimc.targets.ir_drop)


class Chip:
    """`Chip(target, levels, seed, defect_map=None, levels_only=False)`: levels uint8 [n_arrays, rows, cols]
    (cimc.layout); defect_map a DefectMap, an npz path or None. levels_only (the ADC calibration's ideal chip):
    g_units are the levels themselves (uint8, exact: ideal devices hold their level), with no conductances
    (`instance` None): the float64 copies of every cell cost seconds on large nets and the calibration reads only
    the levels. Ideal devices and circuits only."""

    def __init__(self, target, levels: np.ndarray, seed: int = 0, defect_map=None, levels_only: bool = False):
        if isinstance(defect_map, (str, bytes)) or hasattr(defect_map, "__fspath__"):
            defect_map = load_defect_map(defect_map)
        self.target, self.seed = target, int(seed)
        self.model = DeviceModel(target.device, target.nonideal, defect_map)
        step = self.model.step_us
        if levels_only:
            if not self.model.ideal or wires_active(target.nonideal) or target.input.driver_gain_sigma_rel:
                raise ValueError("Chip(levels_only=True) is the ideal chip's: ideal devices, circuit and drivers")
            self.instance, self.g_units, self.read_us, self.g_units_reference = None, levels, None, None
            self.offset, self.read_sigma = target.device.g_min_us / step, self.model.read_noise_us / step
            self.adc = AdcModel(target.adc, self.seed, levels.shape[0], target.array.cols)
            self.driver_gain = None
            return
        self.instance = self.model.program(levels, self.seed)
        # line and access resistance: reads see each array's effective conductances T (I = v . T, exact for 1T1R),
        # computed once here, so every reader stays as fast as without them; None when the target has none
        self.read_us = None
        if wires_active(target.nonideal):
            self.read_us = array_conductances(self.instance.conductance_us, target.nonideal)
            self.g_units = (self.read_us - target.device.g_min_us) / step
        elif self.instance.conductance_us is self.instance.target_us:     # ideal devices: no deviation to add
            self.g_units = levels.astype(np.float64)
        else:
            self.g_units = levels.astype(np.float64) + (self.instance.conductance_us - self.instance.target_us) / step
        self.offset = target.device.g_min_us / step
        self.read_sigma = self.model.read_noise_us / step          # read noise in step units
        ref = self.instance.reference_us              # global drift compensation's reference read (else None)
        if ref is None:
            self.g_units_reference = None
        elif self.read_us is not None:                # the reference read goes through the same circuit
            self.g_units_reference = (array_conductances(ref, target.nonideal) - target.device.g_min_us) / step
        else:
            self.g_units_reference = levels.astype(np.float64) + (ref - self.instance.target_us) / step
        self.adc = AdcModel(target.adc, self.seed, levels.shape[0], target.array.cols)
        # row drivers' gains [n_arrays, rows], None for ideal drivers
        self.driver_gain = driver_gains(target.input.driver_gain_sigma_rel, self.seed, levels.shape[0],
                                        target.array.rows)

    # what the devices hold (uS, [n_arrays, rows, cols])
    @property
    def conductance_us(self) -> np.ndarray:
        return self.instance.conductance_us

    @property
    def target_us(self) -> np.ndarray:
        return self.instance.target_us

    @property
    def stuck(self) -> np.ndarray:
        return self.instance.stuck

    def program(self, goal_us: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """What devices programmed towards `goal_us` hold: the target's programming error (one standard normal draw
        per device from `rng`), floored at 0 uS. Writes nothing: `set_conductances` does."""
        return self.model.programmed(goal_us, rng.standard_normal(np.shape(goal_us)))

    def set_conductances(self, array_ids, conductance_us: np.ndarray) -> None:
        """Overwrite the conductances of whole arrays (uS, [len(ids), rows, cols])."""
        ids = np.asarray(array_ids, dtype=np.int64)
        self.instance.conductance_us[ids] = conductance_us
        if self.read_us is not None:
            self.read_us[ids] = array_conductances(np.asarray(conductance_us).reshape((len(ids),) +
                                                                                      self.read_us.shape[1:]),
                                                   self.target.nonideal)
            conductance_us = self.read_us[ids]
        self.g_units[ids] = (conductance_us - self.target.device.g_min_us) / self.model.step_us

    def identity(self) -> dict:
        """What makes two chip instances the same: the seed, the device non-idealities (those of device_stats only
        where set), the defect map, and the ADC and row-driver non-idealities where any is set (so an identity without
        them reads as before they existed)."""
        dm = self.model.defect_map
        nonideal = device_stats.identity_fields(dataclasses.asdict(self.target.nonideal), NonIdealSpec())
        if not wires_active(self.target.nonideal):      # an ideal circuit reads as before it was modelled
            for name in _CIRCUIT:
                nonideal.pop(name, None)
        out = {"seed": self.seed, "nonideal": nonideal,
               "defect_map": None if dm is None else hashlib.sha256(np.ascontiguousarray(dm.stuck)).hexdigest()}
        adc = self.target.adc
        effects = {k: getattr(adc, k) for k in ("gain_sigma_rel", "offset_sigma_lsb", "inl_lsb", "noise_sigma_lsb")}
        if any(effects.values()):
            out["adc"] = effects
        drivers = {k: getattr(self.target.input, k) for k in ("driver_gain_sigma_rel", "dac_inl_lsb")}
        if any(drivers.values()):
            out["drivers"] = drivers
        return out
