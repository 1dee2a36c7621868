"""`cimc insitu --set weights.encoding=offset`: Li's analog chip with one device per weight about g_ref (the
reference current g_ref * sum(v) subtracted digitally) instead of a +v/-v pair. Checked against software SGD with
clipping (the ideal chip), hand-computed conductances and reads, and the unipolar ADC; bit-sliced stays refused."""
from __future__ import annotations

import numpy as np
import pytest
from refusal import assert_refused, run_cli

from cimc.errors import ConfigError
from cimc.insitu import (_batches, _softmax_grad, _software_forward, chip_for_target, init_weights,
                         load_digits_split, train_in_situ)
from cimc.targets.registry import load_target

pytest.importorskip("sklearn")
OFFSET = load_target("li2018", ["weights.encoding=offset"])


def test_layout_and_conductances_by_hand():
    """li2018 (2.5..20 uS): g_ref 11.25 uS, and one device swings +-w_max about it, so g_scale = 17.5 / 2 =
    8.75 uS per unit weight (the pair's is 17.5: two devices of +-8.75). fc1 on rows 0..63, fc2 on rows 0..53, no
    -v rows; w = 0.4 programs 11.25 + 3.5 = 14.75 uS, w = -2 clips to g_min."""
    chip = chip_for_target(OFFSET, ideal=True)
    assert (chip.g_ref, chip.g_scale) == (11.25, 8.75)
    assert [(lay.devices, lay.row_blocks) for lay in chip.layers] == [(64 * 54, (slice(0, 64),)),
                                                                       (54 * 10, (slice(0, 54),))]
    w = np.zeros((54, 10))
    w[0, 0], w[1, 1] = 0.4, -2.0
    chip.program(1, w)
    assert chip.g[0, 54] == pytest.approx(14.75) and chip.g[1, 55] == 2.5 and chip.g[2, 56] == 11.25
    assert (chip.g[64:, :] == 11.25).all()                     # nothing below the used rows was written
    read = chip.read_weights(1)
    assert read[0, 0] == pytest.approx(0.4) and read[1, 1] == pytest.approx(-1.0) and read[2, 2] == 0.0
    # the line current less g_ref * sum(v): v . (G - g_ref), in weight units exactly x @ W
    x = np.random.default_rng(1).uniform(0, 1, (5, 54))
    np.testing.assert_allclose(chip.matmul(1, x), x @ read, rtol=1e-12, atol=1e-12)
    assert chip.apply_update(1, np.full((54, 10), 0.1)) == 540          # one write per weight


def test_a_stuck_device_holds_its_weight():
    """A device stuck at 10 uS holds w = (10 - 11.25) / 8.75 = -1/7 whatever is programmed or updated."""
    chip = chip_for_target(OFFSET, stuck_rate=0.2, stuck_at=10.0, update_sigma_rel=0.0, seed=4)
    stuck = chip.stuck[0:54, 54:64]
    assert stuck.any()
    chip.program(1, np.full((54, 10), 0.5))
    chip.apply_update(1, np.full((54, 10), 0.2))
    w = chip.read_weights(1)
    np.testing.assert_allclose(w[stuck], -1 / 7)
    np.testing.assert_allclose(w[~stuck], 0.7)


def test_ideal_offset_chip_trains_as_software_sgd_with_clipping():
    """No stuck devices, variation or noise: G = g_ref + w g_scale clipped to [g_min, g_max] is w clipped to
    [-w_max, w_max] (the initial weights too), so in-situ training follows software SGD with clipping step by
    step, and its accuracy curve is the ideal pair chip's (which clips the same way)."""
    chip = chip_for_target(OFFSET, ideal=True, seed=0)
    w1, w2 = (np.clip(w, -1, 1) for w in init_weights(0))
    for k, w in enumerate((w1, w2)):
        chip.program(k, w)
    data = load_digits_split(0)
    for idx in _batches(0, len(data.y_train), 1)[0][:6]:
        x, y = data.x_train[idx], data.y_train[idx]
        z1, h, logits = _software_forward((w1, w2), x)
        d2 = _softmax_grad(logits, y)
        d1 = (d2 @ w2.T) * (z1 > 0)
        cz1, ch, clog = chip.forward(x)
        np.testing.assert_allclose(clog, logits, rtol=1e-9, atol=1e-12)
        cd2 = _softmax_grad(clog, y)
        cd1 = (cd2 @ chip.read_weights(1).T) * (cz1 > 0)           # the weights read back before the update
        chip.apply_update(1, -0.1 * (ch.T @ cd2))
        chip.apply_update(0, -0.1 * (x.T @ cd1))
        w2 = np.clip(w2 - 0.1 * (h.T @ d2), -1, 1)
        w1 = np.clip(w1 - 0.1 * (x.T @ d1), -1, 1)
    np.testing.assert_allclose(chip.read_weights(0), w1, atol=1e-9)
    np.testing.assert_allclose(chip.read_weights(1), w2, atol=1e-9)
    assert train_in_situ(OFFSET, epochs=2, seed=0, ideal=True)["accuracy_curve"] == \
        train_in_situ("li2018", epochs=2, seed=0, ideal=True)["accuracy_curve"]


def test_offset_adc_converts_the_unipolar_line_current():
    """adc_bits=4: each read's full scale is its largest line current (all positive: one device per row), 15
    codes 0..15, and g_ref * sum(v) is subtracted after conversion: by hand for one read."""
    chip = chip_for_target(OFFSET, ideal=True, adc_bits=4)
    w = np.zeros((54, 10))
    w[0, :] = np.linspace(-1, 1, 10)
    chip.program(1, w)
    v = np.zeros((1, 54))
    v[0, 0] = 0.2
    raw = 0.2 * (11.25 + 8.75 * np.linspace(-1, 1, 10))           # uA: 0.5 .. 4.0
    lsb = raw.max() / 15
    expected = np.round(raw / lsb) * lsb - 11.25 * 0.2
    np.testing.assert_allclose(chip.currents(1, v)[0], expected, rtol=1e-12)


def test_bit_sliced_is_refused_naming_the_field(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="weights.encoding"):
        chip_for_target(load_target("li2018", ["weights.encoding=bit-sliced", "weights.slices=2"]))
    monkeypatch.chdir(tmp_path)
    assert_refused(["insitu", "--epochs", "1", "--set", "weights.encoding=bit-sliced"],
                   ["weights.encoding", "offset"], watch=[tmp_path])


def test_cli_runs_the_offset_chip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["insitu", "--epochs", "1", "--set", "weights.encoding=offset"])
    assert code == 0, err
    assert "fc1 64x54 devices, fc2 54x10, offset encoding" in out
