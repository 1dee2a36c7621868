"""`cimc insitu` on the one chip model (issue 12): with every new effect off, training is the plain loop of before
bit for bit; reads through wires equal targets/ir_drop's exact solver; programming follows the device statistics'
sigma (continuous conductances: the per-level table interpolated); aging at the drift time follows the closed forms
of drift, 1/f noise and global drift compensation; everything is reproducible from the seed."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cimc.insitu import (BATCH, InSituChip, LayerPlacement, _batches, _softmax_grad, chip_for_target,
                         init_weights, load_digits_split, train_ex_situ_and_transfer, train_in_situ)
from cimc.targets.ir_drop import read_currents
from cimc.targets.registry import load_target

pytest.importorskip("sklearn")


# -- every effect off: the plain loop of before -------------------------------------------------------------------
def _plain_li2018(seed: int, epochs: int):
    """A transcription of the in-situ training loop as it was before the shared chip model (li2018: devices analog
    in 2.5..20 uS, stuck cells as DeviceModel draws them, 2% update variation from the chip's fourth child stream,
    exact readout): pair programming about g_ref, reads G . v, clipped equal-and-opposite updates."""
    chip = chip_for_target("li2018", seed=seed)              # only for the stuck cells (DeviceModel's draw)
    stuck, g = chip.stuck, np.full((128, 64), 11.25)
    g[stuck] = chip.stuck_g[stuck]
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(7)[3])
    v_read, scale_g = 0.2, 17.5
    blocks = ((slice(0, 64), slice(64, 128), slice(0, 54)), (slice(0, 54), slice(64, 118), slice(54, 64)))

    def currents(k, v):
        p, m, c = blocks[k]
        return np.concatenate([v, -v], axis=1) @ np.concatenate([g[p, c], g[m, c]], axis=0)

    def forward(x):
        z1 = currents(0, x * v_read) / (v_read * scale_g)
        h = np.maximum(z1, 0.0)
        s = np.max(h, axis=1, keepdims=True)
        s = np.where(s > 0, s, 1.0)
        return z1, h, currents(1, h / s * v_read) * s / (v_read * scale_g)

    for k, w in enumerate(init_weights(seed)):
        p, m, c = blocks[k]
        for rows, goal in ((p, 11.25 + w * scale_g / 2), (m, 11.25 - w * scale_g / 2)):
            g[rows, c] = np.where(stuck[rows, c], g[rows, c], np.clip(goal, 2.5, 20.0))
    data, writes, curve = load_digits_split(0), 0, []
    for batches in _batches(seed, len(data.y_train), epochs):
        for idx in batches:
            x, y = data.x_train[idx], data.y_train[idx]
            p, m, c = blocks[1]
            w2 = (g[p, c] - g[m, c]) / scale_g
            z1, h, logits = forward(x)
            d2 = _softmax_grad(logits, y)
            d1 = (d2 @ w2.T) * (z1 > 0)
            for k, dw in ((1, -0.1 * (h.T @ d2)), (0, -0.1 * (x.T @ d1))):
                p, m, c = blocks[k]
                half = dw * scale_g / 2
                for rows, change in ((p, half), (m, -half)):
                    change = change * (1.0 + 0.02 * rng.standard_normal(change.shape))
                    live = ~stuck[rows, c]
                    g[rows, c] = np.where(live, np.clip(g[rows, c] + change, 2.5, 20.0), g[rows, c])
                    writes += int(np.count_nonzero(live & (change != 0)))
        curve.append(float(np.mean(np.argmax(forward(data.x_test)[2], axis=1) == data.y_test)))
    return curve, writes


def test_every_new_effect_off_is_the_plain_loop_bit_for_bit():
    curve, writes = _plain_li2018(seed=3, epochs=2)
    r = train_in_situ("li2018", epochs=2, seed=3)
    assert r["accuracy_curve"] == curve and r["final_accuracy"] == curve[-1] and r["writes"] == writes
    assert BATCH == 50 and "drift_time_s" not in r and "wire_ohm" not in r["chip"]
    # the circuit fields at 0 and a drift time without any drift exponent change nothing either
    same = load_target("li2018", ["nonideal.wire_ohm=0", "nonideal.access_ohm=0", "nonideal.drift_time_s=86400"])
    assert train_in_situ(same, epochs=2, seed=3)["accuracy_curve"] == curve


# -- wire and access resistance -------------------------------------------------------------------------------------
def _programmed(target, seed=0):
    chip = chip_for_target(target, seed=seed)
    rng = np.random.default_rng(seed)
    chip.program(0, rng.normal(0, 0.3, (64, 54)))
    chip.program(1, rng.normal(0, 0.3, (54, 10)))
    return chip


def test_1t1r_reads_are_the_exact_circuit_and_follow_every_write():
    chip = _programmed(load_target("li2018", ["nonideal.wire_ohm=2", "nonideal.access_ohm=3000"]))
    x = load_digits_split().x_test[:6]
    h = np.random.default_rng(1).uniform(0, 1, (6, 54))
    for _ in range(2):                          # before and after an update: T is recomputed for the new g
        volts = np.zeros((6, 128))
        volts[:, :64], volts[:, 64:] = 0.2 * x, -0.2 * x
        exact = read_currents(chip.g, volts, 2.0, 3000.0, "1t1r")
        np.testing.assert_allclose(chip.currents(0, 0.2 * x), exact[:, :54], rtol=1e-9, atol=1e-12)
        volts = np.zeros((6, 128))                              # layer 2: rows 54..63 and 118..127 held at 0 V
        volts[:, :54], volts[:, 64:118] = 0.2 * h, -0.2 * h
        exact = read_currents(chip.g, volts, 2.0, 3000.0, "1t1r")
        np.testing.assert_allclose(chip.currents(1, 0.2 * h), exact[:, 54:], rtol=1e-9, atol=1e-12)
        # the weights read back: each device's row driven alone, its column's current per volt
        single = read_currents(chip.g, 0.2 * np.eye(128)[list(range(54)) + list(range(64, 118))], 2.0, 3000.0) / 0.2
        np.testing.assert_allclose(chip.read_weights(1), (single[:54, 54:] - single[54:, 54:]) / 17.5, rtol=1e-9,
                                   atol=1e-12)
        assert np.abs(chip.read_weights(1) - (chip.g[:54, 54:] - chip.g[64:118, 54:]) / 17.5).max() > 1e-3
        chip.apply_update(0, np.full((64, 54), 0.05))
        chip.apply_update(1, np.full((54, 10), -0.05))


def test_0t1r_reads_solve_each_read_with_its_floating_rows():
    lay = LayerPlacement("t", 3, 2, col0=1, minus_row0=4)
    chip = InSituChip(8, 4, [lay], g_min_us=2.5, g_max_us=20.0, wire_ohm=200.0, cell="0t1r")
    chip.g = np.random.default_rng(2).uniform(2.5, 20.0, (8, 4))
    v = np.array([[0.2, 0.0, 0.1], [0.05, 0.15, 0.2]])        # a zero input: its two rows float
    volts = np.zeros((2, 8))
    volts[:, 0:3], volts[:, 4:7] = v, -v
    exact = read_currents(chip.g, volts, 200.0, 0.0, "0t1r")[:, 1:3]
    np.testing.assert_allclose(chip.currents("t", v), exact, rtol=1e-9)
    held = read_currents(chip.g, volts, 200.0, 0.0, "1t1r")[:, 1:3]
    assert np.abs(exact - held).max() > 1e-3 * np.abs(exact).max()      # the sneak paths matter here
    rows = [0, 1, 2, 4, 5, 6]
    single = np.stack([read_currents(chip.g, 0.2 * np.eye(8)[r][None], 200.0, 0.0, "0t1r")[0, 1:3] / 0.2
                       for r in rows])
    np.testing.assert_allclose(chip.read_weights("t"), (single[:3] - single[3:]) / 17.5, rtol=1e-9)


# -- device statistics: programming ---------------------------------------------------------------------------------
def test_programming_sigma_of_the_statistics_applies_to_analog_conductances():
    # li2018: 8 levels at 2.5 + 2.5 k uS; a zero weight puts both devices at g_ref = 11.25 uS, between levels 3 (10)
    # and 4 (12.5): the per-level table is interpolated linearly there (0.2 + 0.6) / 2, and the polynomial adds
    # 0.1 + 0.4 * 11.25 / 20
    target = load_target("li2018", ["nonideal.stuck_rate=0", "nonideal.program_sigma_levels_us=0,0,0,0.2,0.6,0,0,0",
                                    "nonideal.program_sigma_poly_us=0.1,0.4"])
    chip = chip_for_target(target, seed=4)
    chip.program(0, np.zeros((64, 54)))
    dev = np.concatenate([chip.g[:64, :54].ravel(), chip.g[64:, :54].ravel()]) - 11.25
    expected = (0.2 + 0.6) / 2 + 0.1 + 0.4 * 11.25 / 20
    assert abs(dev.mean()) < 4 * expected / math.sqrt(dev.size)
    assert dev.std() == pytest.approx(expected, rel=0.04)


# -- aging at the drift time ----------------------------------------------------------------------------------------
def _aged_chip(sets, seed=5):
    chip = _programmed(load_target("li2018", ["nonideal.stuck_rate=0", *sets]), seed)
    before = chip.g.copy()
    assert chip.ages
    chip.age()
    return before, chip


@pytest.mark.parametrize("q, t", [(0.03, 3600.0), (0.1, 86400.0)])
def test_1f_noise_per_level_has_the_closed_form_spread(q, t):
    table = ",".join([str(q)] * 8)
    before, chip = _aged_chip(["nonideal.read_noise_1f_model=levels", f"nonideal.read_noise_1f_levels={table}",
                               f"nonideal.drift_time_s={t}"])
    rel = ((chip.g - before) / before).ravel()
    sigma = q * math.sqrt(math.log((t + 250e-9) / (2 * 250e-9)))       # Q_s sqrt(ln((t + t_r) / 2 t_r))
    assert rel.std() == pytest.approx(sigma, rel=0.04) and abs(rel.mean()) < 4 * sigma / math.sqrt(rel.size)


def test_1f_noise_pcm_follows_aihwkits_q_s():
    t = 3600.0
    before, chip = _aged_chip(["nonideal.read_noise_1f_model=pcm", f"nonideal.drift_time_s={t}"])
    q_s = np.minimum(0.0088 / np.maximum((before / 20.0) ** 0.65, 1e-3), 0.2)       # aihwkit, g_max = 20 uS
    z = (chip.g - before) / (before * q_s * math.sqrt(math.log((t + 250e-9) / (2 * 250e-9))))
    assert z.std() == pytest.approx(1.0, rel=0.04) and abs(z.mean()) < 0.05


def test_uniform_drift_scales_the_weights_and_global_compensation_undoes_it():
    nu, t = 0.06, 86400.0
    before, chip = _aged_chip([f"nonideal.drift_nu={nu}", f"nonideal.drift_time_s={t}",
                               "nonideal.drift_compensation=global"])
    factor = (t / 1.0) ** -nu
    np.testing.assert_allclose(chip.g, before * factor, rtol=1e-12)
    for name in ("fc1", "fc2"):
        assert chip.drift_scale[name] == pytest.approx(1 / factor, rel=1e-12)
    x = load_digits_split().x_test[:5]
    fresh = chip_for_target(load_target("li2018", ["nonideal.stuck_rate=0"]), seed=5)
    fresh.g = before
    np.testing.assert_allclose(chip.forward(x)[0], fresh.forward(x)[0], rtol=1e-9)   # compensated: as programmed


def test_stuck_devices_hold_their_conductance_while_the_others_drift():
    chip = _programmed(load_target("li2018", ["nonideal.drift_nu=0.05", "nonideal.drift_time_s=1e4"]))
    stuck = chip.g[chip.stuck].copy()
    chip.age()
    np.testing.assert_array_equal(chip.g[chip.stuck], stuck)


# -- seeds ----------------------------------------------------------------------------------------------------------
def test_everything_on_is_reproducible_from_the_seed():
    target = load_target("li2018", ["nonideal.wire_ohm=1", "nonideal.access_ohm=2000",
                                    "nonideal.program_sigma_poly_us=0.2,0.5", "nonideal.read_noise_sigma_us=0.05",
                                    "nonideal.read_noise_1f_model=pcm", "nonideal.drift_nu_model=pcm",
                                    "nonideal.drift_time_s=3600", "nonideal.drift_compensation=global"])
    kw = dict(epochs=1, adc_bits=8)
    a, b = train_in_situ(target, seed=2, **kw), train_in_situ(target, seed=2, **kw)
    for key in ("accuracy_curve", "final_accuracy", "accuracy_before_drift", "writes", "drift_compensation_alpha"):
        assert a[key] == b[key]
    assert a["drift_time_s"] == 3600 and a["chip"]["wire_ohm"] == 1 and a["chip"]["cell"] == "1t1r"
    ex = [train_ex_situ_and_transfer(target, seed=s, **kw) for s in (2, 2, 3)]
    assert ex[0]["final_accuracy"] == ex[1]["final_accuracy"]
    assert ex[0]["drift_compensation_alpha"] != ex[2]["drift_compensation_alpha"]
