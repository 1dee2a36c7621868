"""The target a crossbar run reads: the manifest's, with the run's overrides (never of what the manifest fixed at
compile time), and ideal physics for an ideal run or the ADC calibration."""
from __future__ import annotations

import dataclasses

from cimc.errors import ConfigError
from cimc.targets.spec import NonIdealSpec

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


def effective_target(target, overrides=None, ideal: bool = False):
    """The manifest's `target` with `overrides` applied (["section.field=value", ...] or a dict); `ideal`: ideal
    devices, drivers and DAC and a lossless ADC."""
    from cimc.targets.registry import load_target
    if overrides:
        target = _refuse_compile_time_changes(target, load_target(target, overrides))
    if ideal:
        target = target.replace(nonideal=NonIdealSpec(), adc=dataclasses.replace(target.adc, lossless=True),
                                input=dataclasses.replace(target.input, dac_inl_lsb=0.0,
                                                          driver_gain_sigma_rel=0.0))
    return target
