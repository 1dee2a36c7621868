"""`cimc device fit` (issue 12 item 6): data generated from known parameters (a seeded numpy generator, written here
independently of cimc's chip model) is fitted back within 5 standard errors of each estimator; bad files are refused
naming the key, and nothing is written."""
from __future__ import annotations

import json

import numpy as np
import pytest
from refusal import assert_refused, run_cli

from cimc.targets.devices import DeviceModel
from cimc.targets.registry import load_target

LEVELS, G_MIN, STEP, PER_LEVEL = 8, 2.5, 2.5, 2000
TIMES = np.array([20, 60, 200, 1e3, 1e4, 1e5, 1e6, 1e7])
T_READ = 250e-9
K = np.arange(LEVELS)
SIGMA = 0.3 + 0.05 * K            # programming sigma, uS
NU_MEAN = 0.08 - 0.004 * K
NU_STD = 0.01 + 0.001 * K
Q_S = 0.02 - 0.001 * K            # 1/f: relative sigma Q_s sqrt(ln((t + t_r) / (2 t_r)))


def _measurements(seed=0):
    rng = np.random.default_rng(seed)
    level = np.repeat(K, PER_LEVEL)
    g_t = G_MIN + STEP * level
    g0 = g_t + SIGMA[level] * rng.standard_normal(g_t.shape)
    nu = np.abs(NU_MEAN[level] + NU_STD[level] * rng.standard_normal(g_t.shape))
    f = np.sqrt(np.log((TIMES + T_READ) / (2 * T_READ)))
    g = g0[:, None] * (TIMES / TIMES[0]) ** -nu[:, None] * (1 + Q_S[level, None] * f * rng.standard_normal(
        (len(g_t), len(TIMES))))
    return {"target_uS": g_t, "time_s": TIMES, "measured_uS": g}


def _standard_errors():
    """Large-sample standard errors of the estimators (n devices per level, m read times)."""
    n, m = PER_LEVEL, len(TIMES)
    x = np.log(TIMES / TIMES[0])
    design = np.stack([np.ones(m), -x], axis=1)
    solve = np.linalg.pinv(design)
    cov = solve @ np.diag(np.log((TIMES + T_READ) / (2 * T_READ))) @ solve.T     # per unit Q^2
    resid = np.eye(m) - design @ solve
    spread = resid @ np.diag(np.log((TIMES + T_READ) / (2 * T_READ))) @ resid      # of the log residuals / Q^2
    g = G_MIN + STEP * K
    total_g0 = SIGMA ** 2 + (g * Q_S) ** 2 * cov[0, 0]          # spread of the fitted g(t0) about g_T
    total_nu = NU_STD ** 2 + Q_S ** 2 * cov[1, 1]               # spread of the fitted exponents
    return {"program_sigma_us": total_g0 * np.sqrt(2 / n) / (2 * SIGMA),
            "nu_mean": np.sqrt(total_nu / n),
            "nu_std": total_nu * np.sqrt(2 / n) / (2 * NU_STD),
            "q_s": Q_S * np.sqrt(2 * np.trace(spread @ spread) / n) / (2 * np.trace(spread))}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    np.savez(folder / "data.npz", **_measurements())
    code, out, err = run_cli(["device", "fit", str(folder / "data.npz"), "-o", str(folder / "device.toml"),
                              "--json"])
    assert code == 0, err
    return json.loads(out), folder


def test_fit_recovers_the_generating_parameters(fitted):
    result, _ = fitted
    assert result["device"] == {"levels": 8, "g_min_us": 2.5, "g_max_us": 20.0}
    se = _standard_errors()
    truth = {"program_sigma_us": SIGMA, "nu_mean": NU_MEAN, "nu_std": NU_STD, "q_s": Q_S}
    for key, values in truth.items():
        got = np.array([row[key] for row in result["levels"]])
        assert np.all(np.abs(got - values) < 5 * se[key]), (key, got, values, se[key])


def test_written_toml_is_a_target_that_draws_the_fitted_statistics(fitted):
    result, folder = fitted
    target = load_target(str(folder / "device.toml"), ["nonideal.drift_time_s=1e5"])
    n = target.nonideal
    assert n.drift_nu_model == "levels" and n.read_noise_1f_model == "levels" and n.drift_t0_s == 20.0
    assert np.allclose(n.program_sigma_levels_us, [r["program_sigma_us"] for r in result["levels"]], rtol=1e-5)
    assert np.allclose(n.drift_nu_levels, [r["nu_mean"] for r in result["levels"]], rtol=1e-5)
    assert np.allclose(n.read_noise_1f_levels, [r["q_s"] for r in result["levels"]], rtol=1e-5)
    levels = np.random.default_rng(1).integers(0, 8, (4, 128, 128)).astype(np.uint8)
    inst = DeviceModel.from_target(target).program(levels, seed=1)
    sel = levels == 5
    assert abs((inst.programmed_us - inst.target_us)[sel].std() / n.program_sigma_levels_us[5] - 1) < 0.05


def test_existing_output_is_refused_and_kept(fitted, tmp_path):
    _, folder = fitted
    before = (folder / "device.toml").read_text()
    assert_refused(["device", "fit", str(folder / "data.npz"), "-o", str(folder / "device.toml")], "--force",
                   watch=[folder])
    assert (folder / "device.toml").read_text() == before


@pytest.mark.parametrize("change, culprit", [
    (lambda d: d.pop("measured_uS"), "measured_uS"),
    (lambda d: d.update(measured_uS=d["measured_uS"][:, :3]), "measured_uS"),
    (lambda d: d["measured_uS"].__setitem__((5, 2), np.nan), "measured_uS"),
    (lambda d: d.update(time_s=d["time_s"][::-1].copy()), "time_s"),
    (lambda d: d.update(target_uS=d["target_uS"] ** 1.1), "target_uS"),
    (lambda d: d.update(t_read_s=np.array(-1.0)), "t_read_s"),
])
def test_bad_measurement_files_name_the_key(tmp_path, change, culprit):
    data = _measurements()
    change(data)
    np.savez(tmp_path / "bad.npz", **data)
    assert_refused(["device", "fit", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "out.toml")], culprit,
                   watch=[tmp_path])


def test_one_read_time_fits_programming_only(tmp_path):
    data = _measurements()
    data["measured_uS"], data["time_s"] = data["measured_uS"][:, :1], TIMES[:1]
    np.savez(tmp_path / "one.npz", **data)
    code, out, err = run_cli(["device", "fit", str(tmp_path / "one.npz"), "-o", str(tmp_path / "one.toml"), "--json"])
    assert code == 0, err
    n = load_target(str(tmp_path / "one.toml")).nonideal
    assert n.drift_nu_model == "none" and n.read_noise_1f_model == "none" and len(n.program_sigma_levels_us) == 8
