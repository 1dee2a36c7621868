"""The ADC calibration's lean ideal chip (Chip(levels_only=True): uint8 levels, no float64 conductances) gives the
same full scales, bit for bit, as the full chip instance it replaced."""
from __future__ import annotations

import numpy as np
import onnx_models as om
import pytest

import cimc
from cimc.backends import chip as chip_module
from cimc.backends import crossbar
from cimc.backends.crossbar import calibrate_adc_full_scale

MODELS = {
    "small_cnn": om.small_cnn,                                   # group 2 and depthwise 8
    "depthwise48_k3": lambda: om.conv(cin=48, cout=48, k=3, hw=6, group=48, pads=[1, 1, 1, 1]),
    "group4_k5": lambda: om.conv(cin=24, cout=24, k=5, hw=7, group=4),
}


class _FullChip(chip_module.Chip):
    """The chip the calibration built before: every cell's conductance programmed in float64."""
    def __init__(self, target, levels, seed=0, defect_map=None, levels_only=False):
        super().__init__(target, levels, seed, defect_map)


@pytest.mark.parametrize("target", ["yao2020-resnet", "li2018"])
@pytest.mark.parametrize("name", list(MODELS))
def test_levels_only_chip_calibrates_as_the_full_chip(name, target, monkeypatch):
    model = MODELS[name]()
    calib = om.random_feeds(model, batch=8, seed=0)
    manifest = cimc.compile(model, target, calibration=calib, overrides=["chip.chips=0"])   # li2018: 1 array
    fast = calibrate_adc_full_scale(manifest.graph, manifest.target, calib, arrays=manifest.arrays)
    assert fast and {op.name: op.adc_full_scale_ua for op in manifest.graph.xbar_ops()} == fast
    monkeypatch.setattr(crossbar, "Chip", _FullChip)
    slow = calibrate_adc_full_scale(manifest.graph, manifest.target, calib, arrays=manifest.arrays)
    assert fast == slow


def test_levels_only_refuses_a_non_ideal_target():
    from cimc.targets.registry import load_target
    target = load_target("yao2020-resnet")
    with pytest.raises(ValueError, match="levels_only"):
        chip_module.Chip(target, np.zeros((1, target.array.rows, target.array.cols), np.uint8), levels_only=True)
