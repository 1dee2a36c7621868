"""Conductance-dependent device statistics: per-level tables or aihwkit's PCM formulas (issue 12, item 4).

What the `[nonideal]` fields below mean, per device of target conductance g_T (uS), programmed g_P, at time t since
programming (nonideal.drift_time_s; t0 = nonideal.drift_t0_s). All are off by default; with all off a chip
instance is drawn exactly as before they existed (cimc.targets.devices).

* programming sigma(g_T) = program_sigma_us + program_sigma_rel * g_T + levels(g_T) + poly(g_T), where
  `program_sigma_levels_us` gives one sigma per device level (linear in between, for cimc tune's off-level goals)
  and `program_sigma_poly_us` = [c0, c1, ...] gives sum_i c_i (g_T / g_max)^i (aihwkit's prog_coeff, g_max =
  device.g_max_us). Each device: g_P = max(0, g_T + sigma(g_T) z_prog).
* drift exponent, drift_nu_model = "levels": nu = |mean_k + std_k z_nu| with mean and std per level k
  (drift_nu_levels, drift_nu_sigma_levels); "pcm": aihwkit's
      mean = clip(-0.0155 ln(g_T/g_max) + 0.0244, 0.049, 0.1),  std = clip(-0.0125 ln(g_T/g_max) - 0.0059, 0.008, 0.045)
  (g_T/g_max floored at 1e-7). Either replaces drift_nu / drift_nu_sigma; g_D = g_P (t/t0)^-nu.
* accumulated 1/f read noise (aihwkit's model: one draw per device for the time t, frozen for the run, not per
  read; the per-read Gaussian `read_noise_sigma_us` stays as it is): g = g_D + |g_D| Q_s sqrt(ln((t + t_r) /
  (2 t_r))) z_1f, t_r = read_noise_t_read_s, with Q_s per level ("levels": read_noise_1f_levels, at g_T) or
  "pcm": Q_s = min(0.0088 / max((g_P/g_max)^0.65, 1e-3), 0.2).
* relaxation: g += relaxation_sigma_us sqrt(log10(t / t0)) z_relax for t > t0 (a spread whose variance grows by
  relaxation_sigma_us^2 per decade of time after t0).
* the result is floored at 0 uS (as aihwkit's) where any of these is on; stuck cells and defect maps then override.
* drift_compensation = "global" (aihwkit GlobalDriftCompensation): each layer copy's outputs are scaled digitally by
  alpha = sum |g+ - g-| at programming / sum |g+ - g-| at t over its weights: aihwkit's mean |W| read with one-hot
  inputs, taken here exactly (noise-free) from the chip instance (cimc.backends.crossbar applies it).

Source of the PCM formulas: aihwkit, src/aihwkit/inference/noise/pcm.py (PCMLikeNoiseModel:
apply_programming_noise_to_conductance, generate_drift_coefficients, apply_drift_noise_to_conductance) and
src/aihwkit/inference/compensation/drift.py; Nandakumar et al., ICECS 2019; Joshi et al., Nat. Commun. 11, 2473
(2020). aihwkit counts time from t0 (t_inference = t - t0 here).
"""
from __future__ import annotations

import numpy as np

# the fields this module reads; a chip's identity lists them only where set (so older identities still match)
FIELDS = ("program_sigma_levels_us", "program_sigma_poly_us", "drift_nu_model", "drift_nu_levels",
          "drift_nu_sigma_levels", "read_noise_1f_model", "read_noise_1f_levels", "read_noise_t_read_s",
          "relaxation_sigma_us", "drift_compensation")

_PCM_ZERO_CLIP = 1e-7      # aihwkit _ZERO_CLIP


def programming_on(n) -> bool:
    return bool(n.program_sigma_levels_us or n.program_sigma_poly_us)


def drift_model_on(n) -> bool:
    return n.drift_nu_model != "none"


def after_programming_on(n) -> bool:
    """Any effect drawn after programming (1/f noise, relaxation) at this drift time."""
    t = n.drift_time_s
    return t > 0 and (n.read_noise_1f_model != "none" or (n.relaxation_sigma_us > 0 and t > n.drift_t0_s))


def any_on(n) -> bool:
    """Whether a chip instance draws anything for these statistics (also: its extra streams, see devices.py)."""
    return programming_on(n) or (drift_model_on(n) and n.drift_time_s > 0) or after_programming_on(n)


def time_matters(n) -> bool:
    """Whether nonideal.drift_time_s changes anything: a drift exponent, or 1/f noise or relaxation."""
    return (n.drift_nu != 0 or n.drift_nu_sigma != 0 or drift_model_on(n) or n.read_noise_1f_model != "none"
            or n.relaxation_sigma_us > 0)


def level_conductances(device) -> np.ndarray:
    return device.g_min_us + np.arange(device.levels) * device.step_us


def _per_level(values, device, g_us) -> np.ndarray:
    """A per-level table at conductances g (linear in between, held at the ends)."""
    return np.interp(g_us, level_conductances(device), np.asarray(values, dtype=np.float64))


def extra_program_sigma(n, device, g_us) -> np.ndarray | None:
    """The conductance-dependent part of the programming sigma at target g (uS), or None when none is set."""
    if not programming_on(n):
        return None
    g = np.asarray(g_us, dtype=np.float64)
    sigma = np.zeros(g.shape)
    if n.program_sigma_levels_us:
        sigma = sigma + _per_level(n.program_sigma_levels_us, device, g)
    if n.program_sigma_poly_us:
        sigma = sigma + np.polynomial.polynomial.polyval(g / device.g_max_us, n.program_sigma_poly_us)
    return sigma


def pcm_nu_mean_std(g_us, g_max_us: float) -> tuple[np.ndarray, np.ndarray]:
    """aihwkit generate_drift_coefficients: the mean and spread of nu at target g."""
    log_g = np.log(np.maximum(np.abs(np.asarray(g_us, dtype=np.float64)) / g_max_us, _PCM_ZERO_CLIP))
    return np.clip(-0.0155 * log_g + 0.0244, 0.049, 0.1), np.clip(-0.0125 * log_g - 0.0059, 0.008, 0.045)


def nu_mean_std(n, device, g_us) -> tuple[np.ndarray, np.ndarray]:
    if n.drift_nu_model == "pcm":
        return pcm_nu_mean_std(g_us, device.g_max_us)
    std = n.drift_nu_sigma_levels or (0.0,) * device.levels
    return _per_level(n.drift_nu_levels, device, g_us), _per_level(std, device, g_us)


def drift_exponents(n, device, g_target_us, z_nu) -> np.ndarray:
    """nu = |mean(g_T) + std(g_T) z| (aihwkit folds it: measured PCM exponents are never negative)."""
    mean, std = nu_mean_std(n, device, g_target_us)
    return np.abs(mean + std * z_nu)


def pcm_q_s(g_us, g_max_us: float) -> np.ndarray:
    """aihwkit apply_drift_noise_to_conductance: Q_s at conductance g."""
    ratio = (np.abs(np.asarray(g_us, dtype=np.float64)) / g_max_us) ** 0.65
    return np.minimum(0.0088 / np.maximum(ratio, 1e-3), 0.2)


def one_over_f_factor(t_s: float, t_read_s: float) -> float:
    """sqrt(ln((t + t_r) / (2 t_r))): how the accumulated 1/f noise grows with time t."""
    return float(np.sqrt(np.log((t_s + t_read_s) / (2.0 * t_read_s))))


def after_programming(n, device, g_target_us, g_programmed_us, g_drifted_us, z_1f, z_relax) -> np.ndarray:
    """1/f noise and relaxation at the drift time on top of the drifted conductance, floored at 0 uS."""
    t = n.drift_time_s
    g = g_drifted_us
    if t > 0 and n.read_noise_1f_model != "none":
        q = pcm_q_s(g_programmed_us, device.g_max_us) if n.read_noise_1f_model == "pcm" else \
            _per_level(n.read_noise_1f_levels, device, g_target_us)
        g = g + np.abs(g) * q * one_over_f_factor(t, n.read_noise_t_read_s) * z_1f
    if n.relaxation_sigma_us > 0 and t > n.drift_t0_s:
        g = g + n.relaxation_sigma_us * np.sqrt(np.log10(t / n.drift_t0_s)) * z_relax
    return np.maximum(g, 0.0)


def identity_fields(nonideal_dict: dict, defaults) -> dict:
    """A nonideal dict without the fields of this module that are at their defaults."""
    return {k: v for k, v in nonideal_dict.items() if k not in FIELDS or v != getattr(defaults, k)}
