"""The row drivers (input DACs) of a chip: per-driver gain error drawn from the chip seed, and the bow-shaped
non-linearity of analog amplitudes (`input.dac_inl_lsb`: `dac_amplitudes`, which the crossbar backend applies).

Driver r of array a applies its pulse or amplitude times a_r = 1 + input.driver_gain_sigma_rel * z_r; `driver_gains`
draws z for all rows of array a from spawn key (DRIVER_STREAM, a) of np.random.SeedSequence(seed), so an array's
drivers do not depend on how many arrays the chip has. A gain scales every device of its row alike, so the crossbar
backend folds it into the row's conductances (g_min part included) when it builds a read plan."""
from __future__ import annotations

import numpy as np

DRIVER_STREAM = 0xDAC


def driver_gains(sigma_rel: float, seed: int | None, n_arrays: int, rows: int) -> np.ndarray | None:
    """[n_arrays, rows] gains 1 + sigma_rel * z, or None when sigma_rel is 0 (ideal drivers)."""
    if not sigma_rel:
        return None
    out = np.empty((n_arrays, rows))
    for a in range(n_arrays):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(DRIVER_STREAM, a))))
        out[a] = 1.0 + sigma_rel * rng.standard_normal(rows)
    return out


def dac_amplitudes(x: np.ndarray, qmax: int, inl_lsb: float) -> np.ndarray:
    """Analog inputs: the amplitudes (in input LSB) that row drivers with a bow-shaped non-linearity apply for codes
    x: u = x + inl_lsb * 4 s (1 - s) sign(x), s = |x| / qmax (exact at 0 and full scale, inl_lsb off at mid-scale).
    x itself when inl_lsb is 0."""
    if not inl_lsb:
        return x
    s = np.abs(x.astype(np.float64)) / qmax
    return (x + inl_lsb * 4.0 * s * (1.0 - s) * np.sign(x)).astype(x.dtype)
