"""Targets are data: presets, user TOML files, field overrides, clear errors."""
from __future__ import annotations

import pytest

from cimc.errors import TargetError
from cimc.targets.registry import load_target, preset_names


def test_presets_and_geometry():
    assert {"yao2020-resnet", "yao2020-mcnn", "li2018", "ideal"} <= set(preset_names())
    resnet = load_target("yao2020-resnet")
    assert (resnet.array.rows, resnet.array.cols) == (144, 16)
    assert (resnet.array.inputs_per_tile, resnet.array.outputs_per_tile) == (144, 8)
    assert resnet.device.step_us == pytest.approx(2.5) and resnet.device.max_level == 7
    assert resnet.nonideal.program_sigma_us == pytest.approx(0.54)
    mcnn = load_target("yao2020-mcnn")
    assert (mcnn.array.rows, mcnn.array.cols, mcnn.chip.array_budget) == (128, 16, 8)
    li = load_target("li2018")
    assert (li.array.inputs_per_tile, li.array.outputs_per_tile) == (64, 64)
    assert li.nonideal.stuck_rate == pytest.approx(0.11)
    assert load_target("ideal").adc.lossless


def test_overrides_are_typed():
    t = load_target("yao2020-resnet", ["adc.bits=6", "adc.lossless=true", "nonideal.stuck_at=10", "chip.chips=2"])
    assert (t.adc.bits, t.adc.lossless, t.nonideal.stuck_at, t.chip.array_budget) == (6, True, "10", 16)


def test_user_toml(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[array]\nrows = 256\ncols = 64\n')
    t = load_target(str(path), ["array.differential=rows"])
    assert (t.name, t.array.rows, t.array.inputs_per_tile, t.array.outputs_per_tile) == ("mine", 256, 128, 64)


@pytest.mark.parametrize("name,overrides,needle", [
    ("nosuch", None, "built-in targets are"),
    ("yao2020-resnet", ["adc.bits"], "SECTION.FIELD=VALUE"),
    ("yao2020-resnet", ["nonideal.stuck_rate=1.5"], "nonideal.stuck_rate"),
    ("yao2020-resnet", ["nonideal.program_sigma_us=-0.1"], "program_sigma_us"),
    ("yao2020-resnet", ["array.cols=15"], "array.cols"),
    ("yao2020-resnet", ["array.differential=diagonal"], "array.differential"),
    ("yao2020-resnet", ["device.levels=x"], "device.levels"),
])
def test_errors_name_the_field(name, overrides, needle):
    with pytest.raises(TargetError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        load_target(name, overrides)


def test_bad_toml_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(TargetError, match="bad.toml: not valid TOML"):
        load_target(str(bad))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('name = "u"\n[adc]\nbitz = 3\n')
    with pytest.raises(TargetError, match="adc.bitz"):
        load_target(str(unknown))
    with pytest.raises(TargetError, match="does not exist"):
        load_target(str(tmp_path / "missing.toml"))
