"""Wire resistance and the access device: the circuit of one array read (nodal analysis, scipy.sparse).

The circuit (`nonideal.wire_ohm` per line segment, `nonideal.access_ohm` the 1T1R transistor's on-resistance):
* row line i is driven at its column-0 end by its input voltage v_i through one segment; a segment joins each cell's
  row node to the next one along the row (columns 0..cols-1);
* cell (i, j) joins row node (i, j) to column node (i, j): the device's conductance g in series with the access
  resistance, 1 / (1/g + R_access);
* column line j runs from row 0 towards its sense amplifier past the last row: a segment joins column node (i, j)
  to (i+1, j), and one more joins (rows-1, j) to the amplifier's virtual ground (0 V). The line current I_j is what
  flows through that last segment.
So device (i, j) is reached through j + 1 row segments and rows - i column segments.

Rows without an input: in a 1T1R array ("1t1r", the default) every row's driver holds its line (0 V where the input
bit is 0). The circuit is then linear in the inputs with a fixed topology, so by superposition the line currents are
exactly I = v . T with T [rows, cols] the currents of unit drives one row at a time: `effective_conductance`, the
conductances the crossbar backend reads instead of the devices' own (whatever its reader). In a passive 0T1R array
("0t1r", no access device) a row whose input is 0 is left floating (driver at high impedance), as are rows the read
does not use: currents then sneak from driven rows through a column, a cell, a floating row and another cell into
other columns. That circuit changes with the input pattern, so `read_currents` solves it read by read; the backend's
fast path keeps the held-row T, and `--layers` prints its error against this exact solve.

Units: conductances in uS, resistances in ohm (1 ohm = 1e-6 / uS), voltages in V, currents in uA."""
from __future__ import annotations

import math

import numpy as np

from cimc.errors import ConfigError
from cimc.targets.devices import _split

RESISTANCE_UNITS_OHM = {"": 1.0, "ohm": 1.0, "kohm": 1e3}
CELLS = ("1t1r", "0t1r")
# a floating row line whose cells are all at 0 uS would be an isolated node: this leak to ground (1e-12 uS, a
# tera-ohm) keeps the nodal matrix regular and moves no current that matters
_FLOAT_LEAK_US = 1e-12


def parse_resistance(text, flag: str = "resistance") -> float:
    """'1ohm', '0.5ohm', '5kohm', '2.5kohm', '3' (ohm) -> ohm; negative or non-finite values are errors."""
    what = "a resistance such as 1ohm, 0.5ohm or 5kohm (units ohm, kohm)"
    value, unit = _split(text, flag, what)
    factor = RESISTANCE_UNITS_OHM.get(unit.lower())
    if factor is None:
        raise ConfigError(f"{flag} {text!r}: unknown unit {unit!r}; expected {what}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{flag} {text!r}: must be a finite resistance >= 0 (0 = ideal)")
    return value * factor


def active(nonideal) -> bool:
    """Whether the target models any line or access resistance (else every read is as before they existed)."""
    return nonideal.wire_ohm > 0 or nonideal.access_ohm > 0


def cell_conductance(g_us: np.ndarray, access_ohm: float) -> np.ndarray:
    """A device in series with its access transistor: 1 / (1/g + R_access), uS (g = 0 stays 0)."""
    if not access_ohm:
        return np.asarray(g_us, dtype=np.float64)
    g = np.asarray(g_us, dtype=np.float64)
    return g / (1.0 + g * access_ohm * 1e-6)


def _system(gc: np.ndarray, wire_ohm: float, held: np.ndarray):
    """The nodal matrix (csc) of one array: row nodes first (i * cols + j), then column nodes; `held` [rows] bool:
    rows whose driver is connected (through one segment) to its line."""
    rows, cols = gc.shape
    n = rows * cols
    gw = 1e6 / wire_ohm
    ids = np.arange(n).reshape(rows, cols)
    a, b, w = [], [], []
    a.append(ids[:, :-1].ravel()); b.append(ids[:, 1:].ravel()); w.append(np.full((cols - 1) * rows, gw))
    a.append(n + ids[:-1, :].ravel()); b.append(n + ids[1:, :].ravel()); w.append(np.full((rows - 1) * cols, gw))
    a.append(ids.ravel()); b.append(n + ids.ravel()); w.append(gc.ravel())
    a, b, w = np.concatenate(a), np.concatenate(b), np.concatenate(w)
    diag = np.zeros(2 * n)
    np.add.at(diag, a, w)
    np.add.at(diag, b, w)
    diag[ids[:, 0]] += np.where(held, gw, 0.0)                   # driver segment
    diag[ids[~held].ravel()] += _FLOAT_LEAK_US
    diag[n + ids[-1, :]] += gw                                   # segment to the sense amplifier (0 V)
    import scipy.sparse as sp       # here, not at import: scipy costs every `cimc count` ~0.15 s CPU otherwise
    m = sp.coo_matrix((np.concatenate([-w, -w, diag]),
                       (np.concatenate([a, b, np.arange(2 * n)]), np.concatenate([b, a, np.arange(2 * n)]))),
                      shape=(2 * n, 2 * n))
    return m.tocsc(), gw, ids


def _splu(system):
    import scipy.sparse.linalg as spla
    return spla.splu(system)


def _solve(gc: np.ndarray, wire_ohm: float, held: np.ndarray, volts: np.ndarray) -> np.ndarray:
    """Line currents [reads, cols] (uA) of drives `volts` [reads, rows] with the rows `held` connected."""
    rows, cols = gc.shape
    system, gw, ids = _system(gc, wire_ohm, held)
    rhs = np.zeros((2 * rows * cols, len(volts)))
    rhs[ids[:, 0]] = gw * (volts * held).T
    nodes = _splu(system).solve(rhs)
    return (gw * nodes[rows * cols + ids[-1, :]]).T


def read_currents(g_us: np.ndarray, volts: np.ndarray, wire_ohm: float, access_ohm: float = 0.0,
                  cell: str = "1t1r") -> np.ndarray:
    """The exact line currents (uA) [reads, cols] of one array with device conductances `g_us` [rows, cols] for
    row drives `volts` [reads, rows] (V): nodal analysis of the whole circuit, one sparse LU per set of driven rows
    (1t1r: one for all reads; 0t1r: rows with v = 0 float, so one per pattern)."""
    gc = cell_conductance(g_us, access_ohm)
    volts = np.atleast_2d(np.asarray(volts, dtype=np.float64))
    if not wire_ohm:
        return volts @ gc
    rows = gc.shape[0]
    if cell == "1t1r":
        return _solve(gc, wire_ohm, np.ones(rows, bool), volts)
    out = np.empty((len(volts), gc.shape[1]))
    dead = _dead_rows(gc)
    for held, sel in _drive_patterns(volts):
        out[sel] = _solve(gc, wire_ohm, held | dead, volts[sel]) if (held & ~dead).any() else 0.0
    return out


def _dead_rows(gc: np.ndarray) -> np.ndarray:
    """Rows whose cells are all at 0 uS: they carry no current to any column whatever their driver does; floating,
    such a row's line would be an isolated node (its leak is below the rounding of its node sums: an exactly
    singular matrix), so the 0T1R solves hold it instead."""
    return ~(gc > 0).any(axis=1)


def _drive_patterns(volts: np.ndarray):
    """0T1R: each distinct set of driven rows (v != 0; the others float) and the reads [indices] that drive it."""
    patterns, which = np.unique(volts != 0, axis=0, return_inverse=True)
    which = which.ravel()
    for k, held in enumerate(patterns):
        yield held, np.flatnonzero(which == k)


class FloatingRowReads:
    """The exact 0T1R reads of one array state for any drive pattern, from one factorisation: the nodal matrix A0
    with every row floating is factorised once, and `rows` solves give Z = A0^-1 at the rows' first nodes. Holding
    rows H through their driver segment (conductance gw) adds gw at those nodes, a rank-|H| change, so (Woodbury)
    the line currents of drives v on H are I = gw Z_amp,H (1/gw + Z_H,H)^-1 v_H: one |H| x |H| dense solve per
    pattern instead of a sparse LU of the whole array. The same circuit as `read_currents`, to float rounding (the
    held rows keep the 1e-12 uS leak of a floating one, which their 2e6 uS node sums do not resolve);
    tests/test_ir_drop_floating.py compares them."""

    def __init__(self, g_us: np.ndarray, wire_ohm: float, access_ohm: float = 0.0):
        if not wire_ohm:
            raise ConfigError("FloatingRowReads: no wire resistance, so no circuit to solve (reads are v . G)")
        gc = cell_conductance(g_us, access_ohm)
        rows, cols = gc.shape
        self.dead = _dead_rows(gc)                         # held in A0 and never read
        system, self.gw, ids = _system(gc, wire_ohm, self.dead)
        rhs = np.zeros((2 * rows * cols, rows))
        rhs[ids[:, 0], np.arange(rows)] = 1.0
        z = _splu(system).solve(rhs)
        self.z_drivers = z[ids[:, 0]]                      # [rows, rows]: V at row i's first node per unit current
        self.z_amps = z[rows * cols + ids[-1, :]]          # [cols, rows]: V at column j's last node, likewise
        self.shape = (rows, cols)

    def currents(self, volts: np.ndarray) -> np.ndarray:
        """Line currents (uA) [reads, cols] of row drives `volts` [reads, rows] (V); rows with v = 0 float."""
        volts = np.atleast_2d(np.asarray(volts, dtype=np.float64))
        out = np.zeros((len(volts), self.shape[1]))
        for held, sel in _drive_patterns(volts):
            h = np.flatnonzero(held & ~self.dead)
            if not h.size:
                continue                                   # nothing driven: no current
            m = self.z_drivers[np.ix_(h, h)] + np.eye(len(h)) / self.gw
            y = np.linalg.solve(m, volts[np.ix_(sel, h)].T)
            out[sel] = (self.gw * (self.z_amps[:, h] @ y)).T
        return out


def effective_conductance(g_us: np.ndarray, wire_ohm: float, access_ohm: float = 0.0) -> np.ndarray:
    """T [rows, cols] (uS): the line currents per volt of each row driven alone, every other row held at 0 V, so
    that I = v . T for any drive of a 1T1R array (superposition). Without wire resistance, each device in series
    with its access resistance."""
    gc = cell_conductance(g_us, access_ohm)
    if not wire_ohm:
        return gc
    rows, cols = gc.shape
    # the nodal matrix is symmetric (reciprocity): the current into amplifier j per volt on driver i equals gw^2 times
    # the voltage at row i's first node per unit current into column j's last node, so cols solves, not rows
    system, gw, ids = _system(gc, wire_ohm, np.ones(rows, bool))
    rhs = np.zeros((2 * rows * cols, cols))
    rhs[rows * cols + ids[-1, :], np.arange(cols)] = 1.0
    nodes = _splu(system).solve(rhs)
    return gw * gw * nodes[ids[:, 0]]


def array_conductances(conductance_us: np.ndarray, nonideal) -> np.ndarray:
    """The read conductances T of every array [n_arrays, rows, cols] (uS) as `effective_conductance` gives them."""
    return np.stack([effective_conductance(g, nonideal.wire_ohm, nonideal.access_ohm) for g in conductance_us]) \
        if len(conductance_us) else np.asarray(conductance_us, dtype=np.float64)
