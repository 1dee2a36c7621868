"""Device physics of a chip instance (cimc.targets.devices) against its analytic statistics."""
from __future__ import annotations

import numpy as np
import pytest

from cimc.errors import CimcError, DataError
from cimc.targets.devices import (DeviceModel, line_noise, load_defect_map, parse_conductance, parse_duration,
                                  parse_fraction, read_generator, save_defect_map)
from cimc.targets.registry import load_target

SHAPE = (40, 128, 64)     # 327,680 cells


def _levels(seed=0):
    return np.random.default_rng(seed).integers(0, 8, SHAPE).astype(np.uint8)


def _model(*overrides, defect_map=None):
    target = load_target("yao2020-resnet", ["nonideal.program_sigma_us=0", *overrides])
    return DeviceModel.from_target(target, defect_map)


def test_ideal_instance_is_the_nominal_conductance():
    levels = _levels()
    chip = _model().program(levels, seed=3)
    assert np.array_equal(chip.conductance_us, 2.5 + 2.5 * levels.astype(np.float64))
    assert not chip.stuck.any()


def test_programming_error_has_the_requested_sigma():
    levels = _levels()
    chip = _model("nonideal.program_sigma_us=0.54").program(levels, seed=1)
    err = chip.conductance_us - chip.target_us
    n = err.size
    assert abs(err.mean()) < 5 * 0.54 / np.sqrt(n)
    assert abs(err.std() - 0.54) < 5 * 0.54 / np.sqrt(2 * n)          # std of a sample std: sigma / sqrt(2n)


def test_relative_programming_error_scales_with_conductance():
    levels = _levels()
    chip = _model("nonideal.program_sigma_rel=0.05").program(levels, seed=2)
    rel = (chip.conductance_us - chip.target_us) / chip.target_us
    assert abs(rel.std() - 0.05) < 5 * 0.05 / np.sqrt(2 * rel.size)
    for k in (0, 7):                                                   # same relative spread at both ends
        sel = rel[levels == k]
        assert abs(sel.std() - 0.05) < 6 * 0.05 / np.sqrt(2 * sel.size)


@pytest.mark.parametrize("stuck_at, value", [("g_min", 2.5), ("g_max", 20.0), ("10", 10.0)])
def test_stuck_fraction_and_value(stuck_at, value):
    levels = _levels()
    rate = 0.11
    chip = _model(f"nonideal.stuck_rate={rate}", f"nonideal.stuck_at={stuck_at}").program(levels, seed=4)
    frac = chip.stuck.mean()
    assert abs(frac - rate) < 5 * np.sqrt(rate * (1 - rate) / chip.stuck.size)
    assert np.all(chip.conductance_us[chip.stuck] == value)
    assert np.array_equal(chip.conductance_us[~chip.stuck], chip.target_us[~chip.stuck])


def test_drift_follows_the_power_law_with_the_spread_of_nu():
    levels = _levels()
    nu, nu_sigma, t, t0 = 0.05, 0.01, 86400.0, 1.0
    chip = _model("nonideal.program_sigma_us=0.2", f"nonideal.drift_nu={nu}", f"nonideal.drift_nu_sigma={nu_sigma}",
                  f"nonideal.drift_time_s={t}").program(levels, seed=5)
    est = -np.log(chip.conductance_us / chip.programmed_us) / np.log(t / t0)   # per-device exponent
    assert np.allclose(est, chip.nu)
    assert abs(est.mean() - nu) < 5 * nu_sigma / np.sqrt(est.size)
    assert abs(est.std() - nu_sigma) < 5 * nu_sigma / np.sqrt(2 * est.size)
    # no drift time -> no drift, and the programmed conductances do not depend on the drift settings
    chip0 = _model("nonideal.program_sigma_us=0.2", f"nonideal.drift_nu={nu}").program(levels, seed=5)
    assert np.array_equal(chip0.conductance_us, chip.programmed_us)


def test_effects_use_independent_draws():
    """Turning stuck cells on changes nothing else: programmed conductances of unstuck cells are identical."""
    levels = _levels()
    a = _model("nonideal.program_sigma_us=0.54").program(levels, seed=9)
    b = _model("nonideal.program_sigma_us=0.54", "nonideal.stuck_rate=0.3").program(levels, seed=9)
    assert np.array_equal(a.programmed_us, b.programmed_us)
    assert np.array_equal(a.conductance_us[~b.stuck], b.conductance_us[~b.stuck])


def test_same_seed_same_chip_different_seed_different_chip():
    levels = _levels()
    m = _model("nonideal.program_sigma_us=0.54", "nonideal.stuck_rate=0.05")
    assert np.array_equal(m.program(levels, 7).conductance_us, m.program(levels, 7).conductance_us)
    assert not np.array_equal(m.program(levels, 7).conductance_us, m.program(levels, 8).conductance_us)


def test_defect_map_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    stuck = rng.random(SHAPE) < 0.02
    g = np.full(SHAPE, np.nan, np.float32)
    g[stuck] = rng.uniform(0, 30, int(stuck.sum()))
    path = save_defect_map(tmp_path / "defects.npz", stuck, g)
    dm = load_defect_map(path)
    assert np.array_equal(dm.stuck, stuck)
    assert np.array_equal(dm.g_us[stuck], g[stuck].astype(np.float64))
    chip = _model(defect_map=dm).program(_levels(), seed=0)
    assert np.array_equal(chip.stuck, stuck)
    assert np.array_equal(chip.conductance_us[stuck], g[stuck].astype(np.float64))
    # without measured values, stuck cells hold the target's stuck_at conductance
    save_defect_map(tmp_path / "d2.npz", stuck)
    chip2 = _model("nonideal.stuck_at=g_max", defect_map=load_defect_map(tmp_path / "d2.npz")).program(_levels(), 0)
    assert np.all(chip2.conductance_us[stuck] == 20.0)
    # a map with fewer arrays than the manifest, or another geometry, is an error naming the file
    save_defect_map(tmp_path / "small.npz", stuck[:3])
    with pytest.raises(DataError, match="small.npz"):
        _model(defect_map=load_defect_map(tmp_path / "small.npz")).program(_levels(), 0)
    np.savez(tmp_path / "bad.npz", cells=np.zeros(3))
    with pytest.raises(DataError, match="'stuck'"):
        load_defect_map(tmp_path / "bad.npz")


def test_line_noise_statistics():
    rng = read_generator(0)
    s = np.full(200_000, 9.0)                                         # 9 driven rows
    z = line_noise(rng, s, 0.5, np.float64)
    assert abs(z.std() - 0.5 * 3) < 5 * 1.5 / np.sqrt(2 * z.size)
    assert np.array_equal(line_noise(read_generator(4), s, 0.5), line_noise(read_generator(4), s, 0.5))


@pytest.mark.parametrize("text, value", [("0.54uS", 0.54), ("540nS", 0.54), ("0.54", 0.54), ("1mS", 1000.0),
                                         ("2e-6S", 2.0), ("0.54 uS", 0.54)])
def test_parse_conductance(text, value):
    assert parse_conductance(text, "--program-sigma") == pytest.approx(value)


@pytest.mark.parametrize("text, value", [("1d", 86400), ("3600s", 3600), ("2h", 7200), ("10y", 10 * 365.25 * 86400),
                                         ("30min", 1800), ("5", 5)])
def test_parse_duration(text, value):
    assert parse_duration(text, "--drift-time") == pytest.approx(value)


@pytest.mark.parametrize("fn, text, flag", [(parse_conductance, "-0.5uS", "--program-sigma"),
                                            (parse_conductance, "0.54uF", "--program-sigma"),
                                            (parse_conductance, "abc", "--read-noise"),
                                            (parse_duration, "3fortnights", "--drift-time"),
                                            (parse_duration, "-1d", "--drift-time"),
                                            (parse_fraction, "1.5", "--stuck-rate"),
                                            (parse_fraction, "-0.1", "--stuck-rate"),
                                            (parse_fraction, "lots", "--stuck-rate")])
def test_bad_values_name_the_flag(fn, text, flag):
    with pytest.raises(CimcError, match=flag):
        fn(text, flag)


def test_parse_fraction_percent():
    assert parse_fraction("11%", "--stuck-rate") == pytest.approx(0.11)
