"""Issue 12 item 5: pulsed updates (cimc.targets.pulse_update) against closed forms, statistics and a slow per-pulse
reference loop; the li2018-pulsed preset's 200-pulse potentiation/depression cycle (Li et al. 2018's shape)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from refusal import assert_refused

from cimc.errors import TargetError
from cimc.targets.pulse_update import PulsedDevices, PulseModel
from cimc.targets.registry import load_target

G_MIN, G_MAX = 2.5, 20.0
SPAN = G_MAX - G_MIN


def _model(*sets) -> PulseModel:
    return PulseModel.from_target(load_target("li2018-pulsed", list(sets)))


def test_li2018_pulsed_cycle_is_the_closed_form_soft_bounds_curve():
    m = _model()
    curve = m.curve(G_MIN, 200, 200)
    a, b = 0.25 / SPAN, 0.35 / SPAN
    n = np.arange(201)
    up = G_MAX - (G_MAX - G_MIN) * (1 - a) ** n                      # G_n = G_max - (G_max - G_0)(1 - a)^n
    down = G_MIN + (up[-1] - G_MIN) * (1 - b) ** n                   # G_n = G_min + (G_0 - G_min)(1 - b)^n
    np.testing.assert_allclose(curve[:201], up, rtol=0, atol=1e-9)
    np.testing.assert_allclose(curve[200:], down, rtol=0, atol=1e-9)


def test_li2018_pulsed_cycle_has_lis_shape():
    """Saturating, nonlinear rise over 200 SET pulses; a steeper, saturating fall over 200 RESET pulses."""
    curve = _model().curve(G_MIN, 200, 200)
    rise, fall = np.diff(curve[:201]), np.diff(curve[200:])
    assert np.all(rise > 0) and np.all(np.diff(rise) < 0)           # rising, each step smaller (concave)
    assert np.all(fall < 0) and np.all(np.diff(fall) > 0)           # falling, each step smaller in magnitude
    assert rise[0] / rise[-1] > 10                                   # strongly nonlinear, not a straight line
    assert 0.9 < (curve[200] - G_MIN) / SPAN < 0.97                  # saturates short of g_max
    assert (curve[400] - G_MIN) / SPAN < 0.03                        # and nearly back at g_min
    assert -fall[0] > rise[0]                                        # RESET steeper than SET (asymmetry)
    assert -fall[0] == pytest.approx(0.35 * (curve[200] - G_MIN) / SPAN)


def test_linear_and_power_step_single_pulses_follow_their_formulas():
    g = np.linspace(G_MIN, G_MAX, 11)
    lin = _model("pulse.model=linear")
    np.testing.assert_allclose(lin.step(g, np.ones(11, bool)), 0.25)
    np.testing.assert_allclose(lin.step(g, np.zeros(11, bool)), -0.35)
    # a constant step up to the hard bound: n pulses add n * 0.25 until g_max
    c = lin.curve(G_MIN, 80, 0)
    np.testing.assert_allclose(c, np.minimum(G_MIN + 0.25 * np.arange(81), G_MAX), atol=1e-9)
    ps = _model("pulse.model=power-step", "pulse.gamma_up=2.0", "pulse.gamma_down=0.5")
    x = (g - G_MIN) / SPAN
    np.testing.assert_allclose(ps.step(g, np.ones(11, bool)), 0.25 * (1 - x) ** 2.0)
    np.testing.assert_allclose(ps.step(g, np.zeros(11, bool)), -0.35 * x ** 0.5)


def test_c2c_and_d2d_statistics():
    m = _model()
    n = 40_000
    dev = PulsedDevices(m, (n,), seed=3)
    for f in (dev.up, dev.down):                                     # d2d factors: mean 1, sigma 10%
        assert f.mean() == pytest.approx(1.0, abs=4 * 0.1 / math.sqrt(n))
        assert f.std() == pytest.approx(0.1, rel=0.03)
    assert abs(np.corrcoef(dev.up, dev.down)[0, 1]) < 0.03           # drawn independently
    # c2c: one SET pulse at mid range on devices without d2d: step = 0.125 uS * (1 + 0.05 N(0, 1))
    g0 = np.full(n, (G_MIN + G_MAX) / 2)
    g1 = m.pulse(g0, np.ones(n, bool), rng=np.random.default_rng(0))
    step = (g1 - g0) / 0.125
    assert step.mean() == pytest.approx(1.0, abs=4 * 0.05 / math.sqrt(n))
    assert step.std() == pytest.approx(0.05, rel=0.03)
    # with d2d: a device's mean step over many pulses is its own factor times the nominal step
    small = PulsedDevices(m, (4,), seed=3)
    rng = np.random.default_rng(1)
    steps = np.array([m.pulse(g0[:4], np.ones(4, bool), small.up, small.down, rng) - g0[:4] for _ in range(4000)])
    np.testing.assert_allclose(steps.mean(0) / 0.125, small.up, rtol=4 * 0.05 / math.sqrt(4000) + 1e-3)


def _reference_nearest(m: PulseModel, g: float, goal: float) -> int:
    """Slow per-pulse loop: fire in the goal's direction while the nominal next pulse gets nearer the goal."""
    up, n = goal > g, 0
    while goal != g and n < m.max_pulses:
        x = min(max((g - G_MIN) / SPAN, 0.0), 1.0)
        nxt = g + m.dg_up * (1 - x) ** m.gamma_up if up else g - m.dg_down * x ** m.gamma_down
        nxt = min(max(nxt, G_MIN), G_MAX)
        if abs(goal - nxt) >= abs(goal - g):
            break
        g, n = nxt, n + 1
    return n if up else -n


@pytest.mark.parametrize("sets", [(), ("pulse.model=linear",),
                                  ("pulse.model=power-step", "pulse.gamma_up=1.7", "pulse.gamma_down=0.6")])
def test_open_loop_pulse_counts_match_a_per_pulse_reference(sets):
    m = _model(*sets)
    rng = np.random.default_rng(7)
    g = rng.uniform(G_MIN, G_MAX, 300)
    goal = np.clip(g + rng.normal(0, 2.0, 300), G_MIN, G_MAX)
    goal[:5] = g[:5]                                                 # no change asked: no pulse
    expected = [_reference_nearest(m, a, b) for a, b in zip(g, goal)]
    assert m.planned(g, goal).tolist() == expected
    assert np.all(np.array(expected)[:5] == 0)


def test_write_open_loop_and_noise_free_lands_where_the_nominal_model_says():
    m = _model("pulse.c2c_sigma_rel=0", "pulse.d2d_sigma_rel=0")
    dev = PulsedDevices(m, (50,), seed=0)
    rng = np.random.default_rng(0)
    g = rng.uniform(G_MIN, G_MAX, 50)
    goal = np.clip(g + rng.normal(0, 1.0, 50), G_MIN, G_MAX)
    got, n_set, n_reset = dev.write(g, goal, np.random.default_rng(1))
    counts = m.planned(g, goal)
    assert np.array_equal(n_set - n_reset, counts) and np.all(np.minimum(n_set, n_reset) == 0)
    for k in range(50):                                              # per-pulse reference
        x = g[k]
        for _ in range(abs(counts[k])):
            x = float(m.pulse(np.array(x), np.array(counts[k] > 0)))
        assert got[k] == pytest.approx(x, abs=1e-12)
        assert abs(got[k] - goal[k]) <= 0.35 / 2 + 1e-12            # within half a step of the goal


def test_write_verify_reaches_the_tolerance_within_the_budget():
    m = _model("pulse.verify_tolerance_us=0.2", "pulse.max_pulses=300")
    n = 2000
    dev = PulsedDevices(m, (n,), seed=5)
    rng = np.random.default_rng(2)
    g = rng.uniform(G_MIN, G_MAX, n)
    goal = rng.uniform(G_MIN + 0.5, G_MAX - 0.5, n)
    got, n_set, n_reset = dev.write(g, goal, np.random.default_rng(3))
    assert np.all(n_set + n_reset <= 300)
    assert dev.counts() == {"model": "soft-bounds", "total": int((n_set + n_reset).sum()), "set": int(n_set.sum()),
                            "reset": int(n_reset.sum())}
    assert np.all(np.abs(got - goal) <= 0.2)                          # the budget suffices here
    assert np.all(n_set[np.abs(g - goal) <= 0.2] + n_reset[np.abs(g - goal) <= 0.2] == 0)
    # a budget too small leaves devices short, never above the budget
    tight = PulsedDevices(_model("pulse.verify_tolerance_us=0.2", "pulse.max_pulses=3"), (n,), seed=5)
    got3, s3, r3 = tight.write(g, goal, np.random.default_rng(3))
    assert np.all(s3 + r3 <= 3) and np.any(np.abs(got3 - goal) > 0.2)


def test_stochastic_rounding_is_unbiased_for_changes_below_one_pulse():
    m = _model("pulse.rounding=stochastic", "pulse.c2c_sigma_rel=0", "pulse.d2d_sigma_rel=0")
    n = 40_000
    g = np.full(n, 10.0)
    nominal = 0.25 * (1 - (10.0 - G_MIN) / SPAN)                     # one SET step at 10 uS
    counts = m.planned(g, g + 0.3 * nominal, np.random.default_rng(4))
    assert set(np.unique(counts)) == {0, 1}
    assert counts.mean() == pytest.approx(0.3, abs=4 * math.sqrt(0.21 / n))
    assert np.all(_model().planned(g, g + 0.3 * nominal) == 0)        # "nearest" drops it


def test_same_seed_same_pulses():
    m = _model("pulse.rounding=stochastic")
    g = np.random.default_rng(0).uniform(G_MIN, G_MAX, 500)
    goal = np.clip(g + np.random.default_rng(1).normal(0, 0.5, 500), G_MIN, G_MAX)
    a = PulsedDevices(m, (500,), seed=9).write(g, goal, np.random.default_rng(2))
    b = PulsedDevices(m, (500,), seed=9).write(g, goal, np.random.default_rng(2))
    c = PulsedDevices(m, (500,), seed=10).write(g, goal, np.random.default_rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_no_model_is_the_default_and_every_preset_but_the_pulsed_one_has_none():
    from cimc.targets.registry import preset_names
    for name in preset_names():
        assert (PulseModel.from_target(load_target(name)) is None) == (name != "li2018-pulsed")


def test_li2018_pulsed_is_li2018_plus_the_pulse_model():
    base, pulsed = load_target("li2018").to_dict(), load_target("li2018-pulsed").to_dict()
    for key in ("name", "description", "pulse"):
        base.pop(key), pulsed.pop(key)
    assert pulsed["nonideal"].pop("update_sigma_rel") == 0.0          # replaced by pulse.c2c_sigma_rel
    base["nonideal"].pop("update_sigma_rel")
    assert base == pulsed


@pytest.mark.parametrize("sets,culprit", [
    (["pulse.model=exponential"], "pulse.model"),
    (["pulse.dg_up_us=0.3"], "pulse.dg_up_us"),                         # a field without a model
    (["pulse.model=soft-bounds"], "pulse.dg_up_us"),                     # a model without its steps
    (["pulse.model=soft-bounds", "pulse.dg_up_us=0.2", "pulse.dg_down_us=0.2", "pulse.gamma_up=2"],
     "pulse.gamma_up"),
    (["pulse.model=linear", "pulse.dg_up_us=0.2", "pulse.dg_down_us=-1"], "pulse.dg_down_us"),
    (["pulse.model=linear", "pulse.dg_up_us=0.2", "pulse.dg_down_us=0.2", "pulse.max_pulses=0"],
     "pulse.max_pulses"),
    (["pulse.model=linear", "pulse.dg_up_us=0.2", "pulse.dg_down_us=0.2", "pulse.rounding=up"], "pulse.rounding"),
    (["pulse.model=linear", "pulse.dg_up_us=0.2", "pulse.dg_down_us=0.2", "pulse.c2c_sigma_rel=nan"],
     "pulse.c2c_sigma_rel"),
    (["pulse.model=linear", "pulse.dg_up_us=20", "pulse.dg_down_us=0.2", "nonideal.update_sigma_rel=0"],
     "pulse.dg_up_us"),                                                # a step wider than the range
    (["pulse.model=linear", "pulse.dg_up_us=0.2", "pulse.dg_down_us=0.2"], "nonideal.update_sigma_rel"),
])
def test_bad_pulse_fields_are_refused_naming_the_field(sets, culprit):
    argv = ["insitu", "--epochs", "1"]
    for s in sets:
        argv += ["--set", s]
    assert_refused(argv, culprit)


def test_library_refuses_a_step_wider_than_the_range():
    with pytest.raises(TargetError, match="pulse.dg_down_us"):
        _model("pulse.dg_down_us=17.5")
