"""`cimc insitu --set weights.encoding=offset --set weights.offset_reference=column`: the offset's reference read off
a column of devices programmed to g_ref on the same array (its last), through the same circuit, instead of g_ref *
sum(v) subtracted digitally. Ideal devices without wires: the digital reference bit for bit. Through wire and access
resistance: the chip's reads against ir_drop's exact nodal solve of the whole array and a hand-computed access
shift, where the column cancels the shift its array's columns share and the digital reference does not."""
from __future__ import annotations

import numpy as np
import pytest
from refusal import assert_refused, run_cli

from cimc.errors import ConfigError
from cimc.insitu import (InSituChip, LayerPlacement, _batches, _softmax_grad, chip_for_target, init_weights,
                         load_digits_split, train_in_situ)
from cimc.targets.ir_drop import read_currents
from cimc.targets.registry import load_target

pytest.importorskip("sklearn")
COLUMN = ["weights.encoding=offset", "weights.offset_reference=column", "array.cols=65"]
DIGITAL = ["weights.encoding=offset", "array.cols=65"]


def _train_steps(chip, batches: int):
    """A few of train_in_situ's steps by hand, returning every read the chip made."""
    reads = []
    for k, w in enumerate(init_weights(0)):
        chip.program(k, w)
    data = load_digits_split(0)
    for idx in _batches(0, len(data.y_train), 1)[0][:batches]:
        x, y = data.x_train[idx], data.y_train[idx]
        w2 = chip.read_weights(1)
        z1, h, logits = chip.forward(x)
        d1 = (_softmax_grad(logits, y) @ w2.T) * (z1 > 0)
        chip.apply_update(1, -0.1 * (h.T @ _softmax_grad(logits, y)))
        chip.apply_update(0, -0.1 * (x.T @ d1))
        reads += [w2, z1, logits, chip.read_weights(0)]
    return reads


def test_ideal_devices_without_wires_equal_the_digital_reference_bit_for_bit():
    """Reference devices at exactly g_ref: every read and update of training is the digital reference's, to the
    last bit, and so is a whole run's accuracy curve (on 65 and on li2018's own 64 columns)."""
    column = chip_for_target(load_target("li2018", COLUMN), ideal=True)
    assert column.reference_col == 64 and (column.g[:, 64] == column.g_ref).all()
    digital = chip_for_target(load_target("li2018", DIGITAL), ideal=True)
    for a, b in zip(_train_steps(column, 4), _train_steps(digital, 4), strict=True):
        np.testing.assert_array_equal(a, b)
    curve = train_in_situ(load_target("li2018", COLUMN), epochs=2, seed=1, ideal=True)["accuracy_curve"]
    assert curve == train_in_situ(load_target("li2018", DIGITAL), epochs=2, seed=1, ideal=True)["accuracy_curve"]
    assert curve == train_in_situ(load_target("li2018", ["weights.encoding=offset"]), epochs=2, seed=1,
                                  ideal=True)["accuracy_curve"]


def test_the_reference_devices_are_programmed_once_and_never_written():
    """0.5 uS programming error: the reference column is g_ref + N(0, 0.5) (clipped), drawn from its own stream so
    the weights' programming draws stay the digital reference's; stuck reference devices hold their value; the
    training updates never touch the column; the weights read back are (G - G_ref) / g_scale by hand."""
    overrides = ["nonideal.program_sigma_us=0.5", "nonideal.stuck_rate=0.1", "nonideal.update_sigma_rel=0"]
    chip = chip_for_target(load_target("li2018", COLUMN + overrides), seed=3)
    digital = chip_for_target(load_target("li2018", DIGITAL + overrides), seed=3)
    ref = chip.g[:, 64].copy()
    live = ~chip.stuck[:, 64]
    assert chip.stuck[:, 64].any() and (ref[~live] == chip.stuck_g[~live, 64]).all()
    err = ref[live] - chip.g_ref
    assert 0.3 < err.std() < 0.7 and abs(err.mean()) < 0.2
    w = np.random.default_rng(0).uniform(-0.5, 0.5, (54, 10))
    chip.program(1, w)
    digital.program(1, w)
    np.testing.assert_array_equal(chip.g[:, :64], digital.g[:, :64])           # the same weight draws
    chip.apply_update(1, np.full((54, 10), 0.05))
    np.testing.assert_array_equal(chip.g[:, 64], ref)
    np.testing.assert_allclose(chip.read_weights(1), (chip.g[:54, 54:64] - ref[:54, None]) / chip.g_scale,
                               rtol=0, atol=1e-13)


def test_access_resistance_shift_is_cancelled_by_the_column_only():
    """5 kohm access transistors, no wires, ideal devices, all weights 0: every cell reads g' = g_ref / (1 +
    g_ref R) (hand formula) instead of g_ref, a shift every column shares. The digital reference leaves
    (g' - g_ref) sum(v) on every output; the reference column, read through the same transistors, cancels it."""
    v = np.random.default_rng(2).uniform(0, 0.2, (5, 64))
    outs = {}
    for name, ov in (("column", COLUMN), ("digital", DIGITAL)):
        chip = chip_for_target(load_target("li2018", ov + ["nonideal.access_ohm=5000"]), ideal=True)
        chip.access_ohm = 5000.0          # ideal=True switches the circuit off: put the transistors back
        chip.program(0, np.zeros((64, 54)))
        outs[name] = chip.currents(0, v)
    g = 11.25 / (1 + 11.25 * 5000e-6)
    np.testing.assert_allclose(outs["digital"], np.repeat((g - 11.25) * v.sum(1, keepdims=True), 54, 1),
                               rtol=1e-12)
    np.testing.assert_allclose(outs["column"], 0.0, atol=1e-12)


def _small_chip(reference: str, wire_ohm: float) -> InSituChip:
    """A 10 x 7 array: layer a (6 inputs x 4 outputs, columns 0..3) and b (4 x 2, columns 4..5), reference on
    column 6 (or none: the digital reference), 20 ohm segments so that the drops show on so small an array."""
    layers = (LayerPlacement("a", 6, 4, 0, 5), LayerPlacement("b", 4, 2, 4, 5))
    return InSituChip(10, 7, layers, g_min_us=2.5, g_max_us=20.0, encoding="offset", offset_reference=reference,
                      wire_ohm=wire_ohm)


@pytest.mark.parametrize("cell", ["1t1r", "0t1r"])
def test_wire_resistance_reads_against_the_exact_nodal_solve(cell):
    """Random weights and inputs: each output is the exact solve's (weight line - reference line) current with
    the column, (weight line - g_ref sum(v)) with the digital reference: ir_drop.read_currents of the whole array,
    the layer's rows driven (0T1R: the other rows floating), each read solved on its own."""
    rng = np.random.default_rng(5)
    w = rng.uniform(-1, 1, (6, 4))
    v = rng.uniform(0, 0.2, (4, 6))
    v[1, 2] = 0.0                                          # a row left floating in 0T1R
    for reference in ("column", "digital"):
        chip = _small_chip(reference, 20.0)
        chip.cell = cell
        chip.program(0, w)
        volts = np.zeros((len(v), 10))
        volts[:, :6] = v
        exact = np.vstack([read_currents(chip.g, volts[k:k + 1], 20.0, 0.0, cell) for k in range(len(v))])
        ref = exact[:, 6:7] if reference == "column" else 11.25 * v.sum(1, keepdims=True)
        np.testing.assert_allclose(chip.currents(0, v), exact[:, :4] - ref, rtol=1e-9, atol=1e-9)


def test_wire_resistance_zero_weights_read_far_closer_to_zero_with_the_column():
    """All weights 0 and every input at full scale on the small array: every line loses current to the wires
    alike, so the digital reference reads every zero weight well below 0; the reference column, whose line
    loses nearly as much, takes most of it off (the rest: the reference sits farthest from the row drivers).
    Figures by the exact solve; li2018's 128x65 at 1 ohm: -11.5..-14.2 uA digital, +0.09..+2.8 uA column."""
    v = np.full((1, 6), 0.2)
    out = {}
    for reference in ("column", "digital"):
        chip = _small_chip(reference, 20.0)
        chip.program(0, np.zeros((6, 4)))
        out[reference] = chip.currents(0, v)[0]
    assert (out["digital"] < -0.03).all()                       # 6 x 0.2 V x 11.25 uS = 13.5 uA per line
    assert np.abs(out["column"]).max() < 0.5 * np.abs(out["digital"]).min()          # every output
    assert np.abs(out["column"]).mean() < 0.3 * np.abs(out["digital"]).mean()       # on average: 0.2 here
    assert (out["column"] > 0).all()        # the weight lines sit nearer the drivers than the reference
    # and without wires both read exactly 0
    for reference in ("column", "digital"):
        chip = _small_chip(reference, 0.0)
        chip.program(0, np.zeros((6, 4)))
        np.testing.assert_array_equal(chip.currents(0, v), 0.0)


def test_the_column_needs_a_column_of_its_own(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"array\.cols=65"):
        chip_for_target(load_target("li2018", ["weights.encoding=offset", "weights.offset_reference=column"]))
    with pytest.raises(ConfigError, match="beside the reference column"):
        InSituChip(10, 6, (LayerPlacement("a", 6, 4, 0, 5), LayerPlacement("b", 4, 2, 4, 5)), g_min_us=2.5,
                   g_max_us=20.0, encoding="offset", offset_reference="column")
    monkeypatch.chdir(tmp_path)
    assert_refused(["insitu", "--epochs", "1", "--set", "weights.encoding=offset", "--set",
                    "weights.offset_reference=column"], ["array.cols=65", "offset_reference"], watch=[tmp_path])
    code, out, err = run_cli(["insitu", "--epochs", "1"] + sum((["--set", o] for o in COLUMN), []))
    assert code == 0, err
    assert "one 128x65 array" in out and "offset encoding, reference column 64" in out
