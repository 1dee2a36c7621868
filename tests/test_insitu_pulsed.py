"""Issue 12 item 5: `cimc insitu` with a pulse model: updates become SET/RESET pulses, results report writes and
pulses; without one (every preset but li2018-pulsed) nothing changes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from refusal import run_cli

from cimc.insitu import InSituChip, li2018_layout, train_in_situ
from cimc.targets.pulse_update import PulseModel
from cimc.targets.registry import load_target


@pytest.fixture(scope="module")
def pulsed_run():
    return train_in_situ("li2018-pulsed", epochs=2, seed=3)


def test_pulsed_training_reports_writes_and_pulses(pulsed_run):
    r = pulsed_run
    assert r["pulses"] == r["set_pulses"] + r["reset_pulses"]
    assert 0 < r["writes"] <= r["pulses"]                    # a write is a device pulsed at least once
    assert r["set_pulses"] > 0 and r["reset_pulses"] > 0
    assert r["pulse_model"]["kind"] == "soft-bounds"


def test_stochastic_rounding_trains_at_lis_learning_rate():
    """Updates below half a pulse step are dropped by "nearest" rounding; "stochastic" keeps them in the mean, and
    the MLP trains well above chance (0.10) within two epochs at the default lr 0.1."""
    r = train_in_situ(load_target("li2018-pulsed", ["pulse.rounding=stochastic"]), epochs=2, seed=3)
    assert r["final_accuracy"] > 0.5


def test_same_seed_same_pulsed_training(pulsed_run):
    again = train_in_situ("li2018-pulsed", epochs=2, seed=3)
    for key in ("accuracy_curve", "writes", "pulses", "set_pulses", "reset_pulses"):
        assert again[key] == pulsed_run[key]
    other = train_in_situ("li2018-pulsed", epochs=2, seed=4)
    assert (other["pulses"], other["accuracy_curve"]) != (pulsed_run["pulses"], pulsed_run["accuracy_curve"])


def test_without_a_pulse_model_the_result_has_no_pulses():
    r = train_in_situ("li2018", epochs=1, seed=0)
    assert not {"pulses", "set_pulses", "reset_pulses", "pulse_model"} & set(r)
    same = train_in_situ(load_target("li2018", ["pulse.model=none"]), epochs=1, seed=0)
    assert same["accuracy_curve"] == r["accuracy_curve"] and same["writes"] == r["writes"]


def test_ideal_simulation_applies_updates_as_asked():
    ideal = train_in_situ("li2018-pulsed", epochs=1, seed=0, ideal=True)
    plain = train_in_situ("li2018", epochs=1, seed=0, ideal=True)
    assert "pulses" not in ideal and ideal["accuracy_curve"] == plain["accuracy_curve"]


def test_an_update_is_the_per_pulse_reference_on_every_device():
    """Noise-free pulses: every device ends where the nominal model's planned pulses take it, one pulse at a time;
    stuck devices get none."""
    target = load_target("li2018-pulsed", ["pulse.c2c_sigma_rel=0", "pulse.d2d_sigma_rel=0"])
    model = PulseModel.from_target(target)
    rng = np.random.default_rng(0)
    stuck = rng.random((128, 64)) < 0.1
    chip = InSituChip(128, 64, li2018_layout(), g_min_us=2.5, g_max_us=20.0, stuck=stuck,
                      stuck_g_us=np.full((128, 64), 10.0), pulse_model=model, seed=0)
    chip.program(0, rng.normal(0, 0.4, (64, 54)))
    before = chip.g.copy()
    dw = rng.normal(0, 0.05, (64, 54))
    writes = chip.apply_update(0, dw)
    lay = chip.layer(0)
    expected = before.copy()
    pulses = 0
    for rows, sign in ((lay.rows_plus, 1), (lay.rows_minus, -1)):
        for i, r in enumerate(range(rows.start, rows.stop)):
            for j, c in enumerate(range(lay.cols.start, lay.cols.stop)):
                if stuck[r, c]:
                    continue
                g = before[r, c]
                goal = min(max(g + sign * dw[i, j] * 17.5 / 2, 2.5), 20.0)
                n = int(model.planned(np.array([g]), np.array([goal]))[0])
                for _ in range(abs(n)):
                    g = float(model.pulse(np.array(g), np.array(n > 0)))
                expected[r, c] = g
                pulses += abs(n)
    np.testing.assert_allclose(chip.g, expected, rtol=0, atol=1e-12)
    assert np.array_equal(chip.g[stuck], before[stuck])
    assert chip.pulsed.counts()["total"] == pulses
    assert writes == int(np.count_nonzero(chip.g != before))


def test_cli_prints_pulses_beside_writes():
    code, out, err = run_cli(["insitu", "--target", "li2018-pulsed", "--epochs", "1"])
    assert code == 0, err
    line = next(l for l in out.splitlines() if l.startswith("in situ"))
    assert "soft-bounds pulses" in line and "device writes" in line and "SET" in line and "RESET" in line
    code, out, err = run_cli(["insitu", "--target", "li2018-pulsed", "--epochs", "1", "--json"])
    doc = json.loads(out)["in_situ"]
    assert doc["pulses"] == doc["set_pulses"] + doc["reset_pulses"] and doc["writes"] > 0


def test_cli_seeds_lines_carry_writes_and_pulses():
    code, out, err = run_cli(["insitu", "--target", "li2018-pulsed", "--epochs", "1", "--seeds", "2"])
    assert code == 0, err
    rows = [l for l in out.splitlines() if l.startswith("seed ")]
    assert len(rows) == 2 and all("writes" in l and "pulses" in l for l in rows)
    code, out, err = run_cli(["insitu", "--epochs", "1", "--seeds", "2"])
    assert code == 0 and not any("pulses" in l for l in out.splitlines() if l.startswith("seed "))
