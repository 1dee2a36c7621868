"""ir_drop.FloatingRowReads: every 0T1R read of one array state from one factorisation (a rank-|H| update per set H
of driven rows), against a circuit solved by hand and against ir_drop.read_currents' sparse LU per drive pattern;
and `cimc insitu`'s 0T1R chip, whose reads now go through it, against the exact solve read by read."""
from __future__ import annotations

import numpy as np
import pytest

from cimc.errors import ConfigError
from cimc.insitu import InSituChip, LayerPlacement
from cimc.targets.ir_drop import FloatingRowReads, read_currents


def test_one_cell_by_hand():
    """1 x 1 array: driver, one row segment, the device, one column segment to the amplifier: I = v / (2R + 1/g)
    (V / Mohm = uA)."""
    g, r, v = 10.0, 1000.0, 0.2
    got = FloatingRowReads(np.array([[g]]), r).currents(np.array([[v], [0.0]]))
    np.testing.assert_allclose(got, [[v / (2 * r * 1e-6 + 1 / g)], [0.0]], rtol=1e-12)


@pytest.mark.parametrize("shape,wire_ohm,access_ohm", [((12, 5), 50.0, 0.0), ((128, 64), 1.0, 0.0),
                                                       ((20, 9), 5.0, 4000.0)], ids=str)
def test_equals_the_exact_solve_per_pattern(shape, wire_ohm, access_ohm):
    """Random conductances (one row all at 0 uS: a line that reaches no column) and drives with floating rows,
    an undriven read, single rows and repeated patterns: the currents of the exact nodal solve, to rounding."""
    rng = np.random.default_rng(7)
    g = rng.uniform(0.0, 25.0, shape)
    g[2] = 0.0
    rows = shape[0]
    v = rng.uniform(-0.2, 0.2, (12, rows))
    v[rng.uniform(size=v.shape) < 0.4] = 0.0
    v[0] = 0.0                                                    # nothing driven
    v[1] = 0.0
    v[1, 3] = 0.2                                                  # one row alone
    v[2] = 0.0
    v[2, 2] = 0.2                                                  # only the dead row
    v[5] = 0.5 * v[4]                                              # the same pattern again
    fast = FloatingRowReads(g, wire_ohm, access_ohm).currents(v)
    exact = read_currents(g, v, wire_ohm, access_ohm, "0t1r")
    assert (exact[[0, 2]] == 0).all() and (fast[[0, 2]] == 0).all()
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-10 * np.abs(exact).max())
    held = read_currents(g, v, wire_ohm, access_ohm, "1t1r")
    assert np.abs(exact - held).max() > 1e-4 * np.abs(exact).max()      # floating rows do matter here


def test_without_wires_there_is_no_circuit_to_factorise():
    with pytest.raises(ConfigError, match="no wire resistance"):
        FloatingRowReads(np.ones((4, 4)), 0.0)


def test_the_insitu_chip_reads_a_pair_layer_as_the_exact_solve_does_after_writes():
    """A +v/-v pair layer on a 0T1R array at 100 ohm: its forward currents and weights read back (each row driven
    alone) before and after an update equal read_currents' solves of the same conductances, read by read."""
    lay = LayerPlacement("t", 5, 3, col0=1, minus_row0=5)
    chip = InSituChip(10, 5, [lay], g_min_us=2.5, g_max_us=20.0, wire_ohm=100.0, cell="0t1r")
    rng = np.random.default_rng(4)
    chip.program("t", rng.uniform(-1, 1, (5, 3)))
    v = rng.uniform(0, 0.2, (6, 5))
    v[2, [0, 3]] = 0.0
    for _ in range(2):
        volts = np.zeros((6, 10))
        volts[:, :5], volts[:, 5:] = v, -v
        exact = np.vstack([read_currents(chip.g, volts[k:k + 1], 100.0, 0.0, "0t1r") for k in range(6)])[:, 1:4]
        np.testing.assert_allclose(chip.currents("t", v), exact, rtol=1e-9)
        single = np.stack([read_currents(chip.g, 0.2 * np.eye(10)[r][None], 100.0, 0.0, "0t1r")[0, 1:4] / 0.2
                           for r in range(10)])
        np.testing.assert_allclose(chip.read_weights("t"), (single[:5] - single[5:]) / 17.5, rtol=1e-9)
        chip.apply_update("t", np.full((5, 3), 0.2))                 # a write: the next reads see new conductances
