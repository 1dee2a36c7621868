"""In-situ training on a Li 2018 chip instance (cimc.insitu): pair updates, stuck devices, variation, determinism,
defect tolerance, the `cimc insitu` command."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cimc import cli
from cimc.insitu import (InSituChip, LayerPlacement, chip_for_target, ideal_simulation, load_digits_split,
                         train_ex_situ_and_transfer, train_in_situ)


def _tiny(**kw) -> InSituChip:
    # 2 inputs x 2 outputs: +v on rows 0-1, -v on rows 2-3; g_scale = (20 - 2.5) / 1 = 17.5 uS, g_ref = 11.25 uS
    return InSituChip(4, 2, [LayerPlacement("t", 2, 2, col0=0, minus_row0=2)], g_min_us=2.5, g_max_us=20.0,
                      w_max=1.0, **kw)


def test_pair_update_is_equal_and_opposite_and_clipped():
    chip = _tiny()
    assert chip.g_scale == pytest.approx(17.5) and np.all(chip.g == 11.25)
    writes = chip.apply_update("t", np.array([[0.2, -0.4], [1.0, 0.0]]))
    # dG = dW * 17.5 = [[3.5, -7], [17.5, 0]]: +dG/2 on G+ (rows 0-1), -dG/2 on G- (rows 2-3)
    np.testing.assert_allclose(chip.g[:2], [[13.0, 7.75], [20.0, 11.25]])
    np.testing.assert_allclose(chip.g[2:], [[9.5, 14.75], [2.5, 11.25]])
    np.testing.assert_allclose(chip.read_weights("t"), [[0.2, -0.4], [1.0, 0.0]])
    assert writes == 6 and chip.writes == 6 and chip.updates == 1
    chip.apply_update("t", np.array([[1.0, 0.0], [0.0, 0.0]]))      # +8.75 / -8.75 uS: both devices clip
    assert chip.g[0, 0] == 20.0 and chip.g[2, 0] == 2.5
    assert chip.read_weights("t")[0, 0] == pytest.approx(1.0)
    # a stuck G+ keeps its value: only the G- half of the update lands
    stuck = np.zeros((4, 2), bool)
    stuck[0, 1] = True
    chip = _tiny(stuck=stuck, stuck_g_us=10.0)
    assert chip.g[0, 1] == 10.0
    chip.apply_update("t", np.array([[0.0, 0.4], [0.0, 0.0]]))
    assert chip.g[0, 1] == 10.0 and chip.g[2, 1] == pytest.approx(11.25 - 3.5)


def test_stuck_devices_never_change():
    chip = chip_for_target("li2018", stuck_rate=0.3, seed=3)
    frac = chip.stuck.mean()
    assert 0.25 < frac < 0.35 and np.all(chip.g[chip.stuck] == 10.0)
    before = chip.g[chip.stuck].copy()
    rng = np.random.default_rng(0)
    for _ in range(20):
        chip.apply_update(0, rng.normal(0, 0.5, (64, 54)))
        chip.apply_update(1, rng.normal(0, 0.5, (54, 10)))
    chip.program(0, rng.normal(0, 1, (64, 54)))
    np.testing.assert_array_equal(chip.g[chip.stuck], before)
    assert np.all((chip.g >= 2.5) & (chip.g <= 20.0))
    # same seed -> same stuck cells; a higher rate adds cells (DeviceModel's draw order)
    np.testing.assert_array_equal(chip_for_target("li2018", stuck_rate=0.3, seed=3).stuck, chip.stuck)
    more = chip_for_target("li2018", stuck_rate=0.5, seed=3, stuck_at="g_min")
    assert np.all(more.stuck[chip.stuck]) and np.all(more.g[more.stuck] == 2.5)


def test_update_variation_statistics():
    chip = chip_for_target("li2018", stuck_rate=0.0, seed=1)      # li2018: update_sigma_rel = 0.02
    assert chip.update_sigma_rel == pytest.approx(0.02)
    before = chip.g.copy()
    chip.apply_update(0, np.full((64, 54), 0.1))                   # dG/2 = 0.875 uS, far from the range limits
    applied = np.concatenate([(chip.g - before)[:64, :54].ravel(), -(chip.g - before)[64:, :54].ravel()])
    rel = applied / 0.875 - 1.0
    assert abs(rel.mean()) < 0.002
    assert rel.std() == pytest.approx(0.02, rel=0.06)
    assert np.all(chip.g[:, 54:] == before[:, 54:])                # the other layer is untouched


def test_chip_forward_is_the_mlp():
    chip = chip_for_target("li2018", ideal=True)
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.2, (64, 54)), rng.normal(0, 0.3, (54, 10))
    chip.program(0, w1)
    chip.program(1, w2)
    assert chip.stuck.sum() == 0
    np.testing.assert_allclose(chip.read_weights(0), w1, atol=1e-12)
    x = load_digits_split().x_test[:20]
    z1, h, logits = chip.forward(x)
    np.testing.assert_allclose(z1, x @ w1, atol=1e-9)
    np.testing.assert_allclose(logits, np.maximum(x @ w1, 0) @ w2, atol=1e-9)
    assert np.all(chip.g[54:64, 54:] == chip.g_ref) and np.all(chip.g[118:, 54:] == chip.g_ref)   # unused rows


def test_same_seed_same_result():
    a = train_in_situ("li2018", epochs=2, seed=7)
    b = train_in_situ("li2018", epochs=2, seed=7)
    assert a["accuracy_curve"] == b["accuracy_curve"] and a["writes"] == b["writes"]
    assert a["stuck_devices"] == b["stuck_devices"] > 0
    c = train_in_situ("li2018", epochs=2, seed=8)
    assert c["stuck_devices"] != a["stuck_devices"] or c["accuracy_curve"] != a["accuracy_curve"]


def test_in_situ_beats_ex_situ_at_half_stuck_off():
    ins = train_in_situ("li2018", stuck_rate=0.5, stuck_at="g_min", epochs=5, seed=0)
    exs = train_ex_situ_and_transfer("li2018", stuck_rate=0.5, stuck_at="g_min", epochs=5, seed=0)
    assert ins["stuck_devices"] == exs["stuck_devices"]           # the same chip instance
    assert ins["final_accuracy"] > 0.6 and exs["final_accuracy"] < 0.4
    assert exs["software_accuracy"] > 0.85                         # the weights were good before the transfer


def test_ideal_in_situ_learns_digits():
    r = ideal_simulation("li2018", epochs=10, seed=0)
    assert r["stuck_devices"] == 0 and r["update_sigma_rel"] == 0.0
    assert len(r["accuracy_curve"]) == 10 and r["final_accuracy"] > 0.85


def test_cli(capsys):
    assert cli.main(["insitu", "--epochs", "1", "--stuck-rate", "11%"]) == 0
    out = capsys.readouterr().out
    assert "ideal simulation" in out and "in situ" in out and "gap" in out and "ex situ" in out
    assert cli.main(["insitu", "--stuck-rate", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "cimc: error: --stuck-rate '1.5'" in err and "between 0 and 1" in err
    assert cli.main(["insitu", "--target", "yao2020-resnet", "--epochs", "1"]) == 2
    assert "rows" in capsys.readouterr().err
    assert cli.main(["insitu", "--epochs", "1", "--curve", "--json"]) == 0
    curve = json.loads(capsys.readouterr().out)["defect_tolerance"]
    assert [row["stuck_rate"] for row in curve] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert all(row["stuck_at"] == "g_min" and 0 <= row["in_situ"] <= 1 for row in curve)
