"""Fit a device's statistics to measured conductances (`cimc device fit`, issue 12 item 6).

Data (npz; conductances in uS, times in s):

* `target_uS`   float [n]      each device's target conductance; the distinct targets must be equally spaced: they
                               are the device levels g_min + k * step (k = 0 .. levels-1)
* `time_s`      float [m]      read times since programming, increasing; the first is t0, the drift reference
* `measured_uS` float [n, m]   device i read at time j
* `t_read_s`    scalar, optional: the 1/f law's t_r (default 250 ns, aihwkit's)

What is fitted, per level k (the statistics of cimc.targets.device_stats, the model that then draws them):

* drift (m >= 2): per device, ordinary least squares of ln g on x = ln(t / t0): ln g = a - nu x. The exponents of a
  level are a folded normal |N(mean, std^2)| (scipy.stats.foldnorm, maximum likelihood); its std is then reduced by
  the variance the regression itself adds to each exponent (from the fitted 1/f noise below).
* accumulated 1/f read noise (m >= 3): a reading g (1 + e), e ~ N(0, Q^2 F(t)), F(t) = ln((t + t_r) / (2 t_r)),
  deviates by ln(1 + e) in the log, of variance v = Q^2 F + 2.5 Q^4 F^2 (to fourth order); the regression's
  residuals r then have E[sum r^2] = trace((I - H) diag(v) (I - H)) per device (H the hat matrix), solved for Q.
* programming sigma: the spread about the target of each device's regression value at t0, exp(a), less the 1/f
  variance the regression leaves in it (g_T^2 Q^2 [(X'X)^-1 X' F X (X'X)^-1]_aa); for a level without a
  regression, of the readings at t0 less g_T^2 Q^2 F(t0). A polynomial sigma(g) = sum_i c_i (g / g_max)^i (degree 2, least squares over the levels, as
  aihwkit's prog_coeff) is reported too; the TOML uses the per-level values and names the polynomial in a comment.

Drift and 1/f use the devices whose readings are all above 0 uS (a log needs them); a level with fewer than 3 such
devices (e.g. a level at 0 uS) takes the drift and 1/f statistics of the nearest level that has them, and says so.
Not fitted here (left for later): relaxation, and pulse-train (programming) data.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from cimc.errors import DataError

T_READ_S = 250e-9
MIN_DEVICES = 3


def check_data(content: dict, path: str) -> dict:
    """The arrays of a measurement file, checked; every error names the file and the key."""
    for key in ("target_uS", "time_s", "measured_uS"):
        if key not in content:
            raise DataError(f"{path}: missing key {key!r}; a measurement file holds target_uS [n], time_s [m] and "
                            f"measured_uS [n, m] (keys present: {sorted(content)})")
    arrays = {}
    for key, ndim in (("target_uS", 1), ("time_s", 1), ("measured_uS", 2)):
        a = content[key]
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) or a.ndim != ndim:
            raise DataError(f"{path}: {key!r} must be a {ndim}-d array of numbers, got {a.dtype} {list(a.shape)}")
        if not np.all(np.isfinite(a)):
            raise DataError(f"{path}: {key!r} holds non-finite values (NaN or inf) at "
                            f"{[int(i) for i in np.argwhere(~np.isfinite(a))[0]]}; drop those devices or reads")
        arrays[key] = a.astype(np.float64)
    g_t, t, meas = arrays["target_uS"], arrays["time_s"], arrays["measured_uS"]
    if meas.shape != (len(g_t), len(t)):
        raise DataError(f"{path}: 'measured_uS' must be [n, m] = [{len(g_t)}, {len(t)}] (target_uS x time_s), got "
                        f"{list(meas.shape)}")
    if np.any(g_t < 0):
        raise DataError(f"{path}: 'target_uS' must be >= 0 uS")
    if len(t) == 0 or np.any(t <= 0) or np.any(np.diff(t) <= 0):
        raise DataError(f"{path}: 'time_s' must be positive and strictly increasing (s since programming)")
    t_read = T_READ_S
    if "t_read_s" in content:
        t_read = content["t_read_s"]
        if t_read.shape != () or not np.isfinite(t_read) or t_read <= 0:
            raise DataError(f"{path}: 't_read_s' must be one positive number (s), got {t_read!r}")
        t_read = float(t_read)
    arrays["t_read_s"] = t_read
    arrays["grid"] = _level_grid(g_t, path)
    return arrays


def _level_grid(g_t: np.ndarray, path: str) -> tuple[float, float, int]:
    """(g_min, step, levels) of the targets; they must be an equally spaced grid with every level measured."""
    values = np.unique(g_t)
    if len(values) < 2:
        raise DataError(f"{path}: 'target_uS' holds {len(values)} distinct target(s); a device needs at least 2 "
                        "levels")
    steps = np.diff(values)
    if np.max(np.abs(steps - steps.mean())) > 1e-6 * max(values[-1], 1.0):
        raise DataError(f"{path}: 'target_uS' must hold equally spaced levels g_min + k * step with every level "
                        f"measured; the distinct targets are {values.tolist()[:20]}")
    return float(values[0]), float(steps.mean()), len(values)


def fit(data: dict) -> dict:
    """The fitted statistics (plain floats and lists) of checked data (`check_data`)."""
    g_t, t, meas, t_read = data["target_uS"], data["time_s"], data["measured_uS"], data["t_read_s"]
    g_min, step, n_levels = data["grid"]
    level = np.rint((g_t - g_min) / step).astype(int)
    g_level = g_min + step * np.arange(n_levels)
    f2 = np.log((t + t_read) / (2 * t_read))                       # F(t): the 1/f variance factor
    m = len(t)
    x = np.log(t / t[0])
    design = np.stack([np.ones(m), -x], axis=1)                    # ln g = a - nu x
    solve = np.linalg.pinv(design)                                 # [2, m]: coefficients = solve @ ln g
    resid_op = np.eye(m) - design @ solve                          # I - H
    trace_f = float(np.trace(resid_op @ np.diag(f2) @ resid_op))
    trace_f2 = float(np.trace(resid_op @ np.diag(f2 * f2) @ resid_op))
    coef_f = solve @ np.diag(f2) @ solve.T                         # covariance of (a, nu) per unit Q^2
    rows = []
    for k in range(n_levels):
        meas_k = meas[level == k]
        usable = meas_k[np.all(meas_k > 0, axis=1)]
        row = {"level": k, "g_us": float(g_level[k]), "devices": int(len(meas_k)), "devices_in_fit": int(len(usable))}
        if m >= 2 and len(usable) >= MIN_DEVICES:
            coef = np.log(usable) @ solve.T                         # [devices, 2]
            if m >= 3 and trace_f > 0:
                r = np.log(usable) - coef @ design.T
                row["q_s"] = _q_s(np.sum(r * r) / len(usable), trace_f, trace_f2)
            row["_g0"] = np.exp(coef[:, 0])                          # each device's fitted conductance at t0
            nu = coef[:, 1]
            if np.ptp(nu) > 0:
                c, _, scale = stats.foldnorm.fit(np.abs(nu), floc=0)
                mean = c * scale
            else:                                                   # every exponent the same: no spread to fit
                mean, scale = abs(float(nu[0])), 0.0
            noise_var = row.get("q_s", 0.0) ** 2 * coef_f[1, 1]
            row["nu_mean"] = float(mean)
            row["nu_std"] = float(np.sqrt(max(scale ** 2 - noise_var, 0.0)))
        rows.append(row)
    _fill_from_nearest(rows, ("q_s",))
    _fill_from_nearest(rows, ("nu_mean", "nu_std"))
    for k, row in enumerate(rows):
        if "_g0" in row:     # the regression's value at t0 (its 1/f variance: Q^2 coef_f[0, 0], below F(t0) Q^2)
            first, noise = row.pop("_g0") - g_level[k], coef_f[0, 0]
        else:                # the readings at t0
            first, noise = meas[level == k][:, 0] - g_level[k], f2[0]
        one_f_var = (g_level[k] * row.get("q_s", 0.0)) ** 2 * noise
        row["program_sigma_us"] = float(np.sqrt(max(first.var(ddof=1) - one_f_var, 0.0))) if len(first) > 1 else 0.0
    sig = np.array([r["program_sigma_us"] for r in rows])
    g_max = float(g_level[-1])
    poly = np.polynomial.polynomial.polyfit(g_level / g_max, sig, min(2, n_levels - 1)).tolist()
    return {"device": {"levels": n_levels, "g_min_us": g_min, "g_max_us": g_max}, "t0_s": float(t[0]),
            "t_read_s": t_read, "devices": int(len(g_t)), "times": int(m), "levels": rows,
            "program_sigma_poly_us": poly, "drift_fitted": m >= 2, "read_noise_fitted": m >= 3}


def _q_s(mean_sq: float, trace_f: float, trace_f2: float) -> float:
    """Q from the mean sum of squared log residuals per device: a reading's log deviation ln(1 + e), e ~ N(0, s^2),
    has variance s^2 + 2.5 s^4 (to fourth order), s^2 = Q^2 F(t), so 2.5 Q^4 trace_f2 + Q^2 trace_f = mean_sq."""
    a, b = 2.5 * trace_f2, trace_f
    q2 = 2 * mean_sq / (b + np.sqrt(b * b + 4 * a * mean_sq))      # the positive root, stable
    return float(np.sqrt(q2))


def _fill_from_nearest(rows: list, keys: tuple) -> None:
    """Levels without a fit of `keys` take them from the nearest level that has one (recorded as `<key>_from`)."""
    have = [r["level"] for r in rows if keys[0] in r]
    if not have:
        return
    for r in rows:
        if keys[0] not in r:
            src = min(have, key=lambda k: abs(k - r["level"]))
            for key in keys:
                r[key] = rows[src][key]
            r[f"{keys[0]}_from_level"] = src


def toml_text(result: dict, name: str, source: str) -> str:
    """The [device] and [nonideal] sections (and a name, so the file is a target on its own)."""
    rows = result["levels"]

    def floats(key):
        return "[" + ", ".join(f"{r[key]:.6g}" for r in rows) + "]"

    dev = result["device"]
    lines = [f"# Written by `cimc device fit` from {source}: {result['devices']} devices, {result['times']} read "
             f"times, t0 = {result['t0_s']:g} s.",
             "# Merge these sections into a target (other sections here are cimc's defaults).",
             f'name = "{name}"', f'description = "device statistics fitted to {source}"', "",
             "[device]", f"levels = {dev['levels']}", f"g_min_us = {dev['g_min_us']!r}", f"g_max_us = {dev['g_max_us']!r}",
             "", "[nonideal]", f"program_sigma_levels_us = {floats('program_sigma_us')}",
             "# or, as aihwkit's prog_coeff (least squares over the levels): program_sigma_poly_us = ["
             + ", ".join(f"{c:.6g}" for c in result["program_sigma_poly_us"]) + "]",
             f"drift_t0_s = {result['t0_s']!r}"]
    if result["drift_fitted"] and "nu_mean" in rows[0]:
        lines += ['drift_nu_model = "levels"', f"drift_nu_levels = {floats('nu_mean')}",
                  f"drift_nu_sigma_levels = {floats('nu_std')}"]
    if result["read_noise_fitted"] and "q_s" in rows[0]:
        lines += ['read_noise_1f_model = "levels"', f"read_noise_1f_levels = {floats('q_s')}",
                  f"read_noise_t_read_s = {result['t_read_s']!r}"]
    return "\n".join(lines) + "\n"
