"""Wire resistance and the access device (cimc.targets.ir_drop, the crossbar backend, `--wire-resistance`): the
exact solver against circuits solved by hand, the fast path (effective conductances) against the exact solver, the
backend's reads against the exact solver read by read, effects off = bit-identical, seeds, flags and the sweep axis."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_models as om
import pytest

import cimc
from cimc.backends.crossbar import CrossbarBackend
from cimc.backends.bit_planes import bit_planes
from cimc.cli import main
from cimc.errors import ConfigError, TargetError
from cimc.layout import tile_cells
from cimc.targets.ir_drop import effective_conductance, parse_resistance, read_currents
from cimc.targets.registry import load_target

M = 1e-6           # ohm -> MOhm (= 1/uS), so V / MOhm = uA


# -- the exact solver, by hand ------------------------------------------------------------------------------------
def test_one_row_two_cells_by_hand():
    """Driver -Rw- a (cell 1 -> its column -Rw- amp) -Rw- b (cell 2 -> its column -Rw- amp): series-parallel."""
    rw, ra, g1, g2, v = 100.0, 5000.0, 10.0, 4.0, 0.2
    r1 = 1 / g1 + (ra + rw) * M                 # cell 1, its access transistor, its column's one segment
    rb = rw * M + 1 / g2 + (ra + rw) * M        # the segment to b, then cell 2's branch
    za = 1 / (1 / r1 + 1 / rb)
    va = v * za / (rw * M + za)
    got = read_currents(np.array([[g1, g2]]), [[v]], rw, ra)
    np.testing.assert_allclose(got, [[va / r1, va / rb]], rtol=1e-12)


def test_two_rows_one_column_by_hand():
    """Row 0 driven, row 1 held at 0 V (1T1R): V -Rw- g0 - c0 -Rw- c1, and from c1 to ground both the amplifier's
    segment and row 1's cell plus its driver segment; the amplifier's share of the current is the line current."""
    rw, ra, g0, g1, v = 50.0, 2000.0, 12.0, 6.0, 0.2
    r0, r1 = rw * M + 1 / g0 + ra * M, rw * M + 1 / g1 + ra * M
    par = 1 / (1 / r1 + 1 / (rw * M))
    total = v / (r0 + rw * M + par)
    want = total * r1 / (r1 + rw * M)
    got = read_currents(np.array([[g0], [g1]]), [[v, 0.0]], rw, ra)
    np.testing.assert_allclose(got, [[want]], rtol=1e-12)


def test_passive_sneak_path_by_hand():
    """0T1R, 2 x 2, row 0 driven, row 1 floating, device (0, 1) at 0 uS: the current of (0, 0) reaches column 0's
    lower node and splits between the amplifier's segment and the sneak path (1, 0) -Rw- (1, 1) -Rw- amplifier 1."""
    rw, v = 20.0, 0.2
    g = np.array([[10.0, 0.0], [5.0, 8.0]])
    sneak = 1 / g[1, 0] + rw * M + 1 / g[1, 1] + rw * M
    total = v / (rw * M + 1 / g[0, 0] + rw * M + 1 / (1 / (rw * M) + 1 / sneak))
    want = [total * sneak / (rw * M + sneak), total * rw * M / (rw * M + sneak)]
    got = read_currents(g, [[v, 0.0]], rw, cell="0t1r")
    np.testing.assert_allclose(got, [want], rtol=1e-9)
    held = read_currents(g, [[v, 0.0]], rw)                       # 1T1R: row 1 held, a different circuit
    assert abs(held[0, 1]) < abs(got[0, 1]) / 10


def test_access_resistance_alone_is_a_series_resistor():
    g = np.array([[2.5, 20.0], [0.0, 11.0]])
    np.testing.assert_allclose(effective_conductance(g, 0.0, 5000.0), 1 / (1 / np.where(g, g, np.inf) + 5e-3)
                               * (g > 0), rtol=1e-14)


# -- the fast path against the exact solver ----------------------------------------------------------------------
def test_effective_conductance_is_exact_for_1t1r():
    """Superposition: I = v . T for any drive (T from cols solves by reciprocity, the exact solve from rows)."""
    rng = np.random.default_rng(0)
    g = rng.uniform(2.5, 20, (24, 10))
    t = effective_conductance(g, 3.0, 4000.0)
    v = 0.2 * (rng.random((6, 24)) < 0.5)
    v[0] = 0.2 * rng.random(24)                                  # an analog drive too
    np.testing.assert_allclose(v @ t, read_currents(g, v, 3.0, 4000.0), rtol=1e-10, atol=1e-12)
    assert np.all(t < g)                                         # every path loses current


def test_passive_error_of_the_fast_path_shrinks_with_the_wire():
    """0T1R: the held-row T ignores sneak paths; its error against the exact solve goes to 0 about as R."""
    rng = np.random.default_rng(1)
    g = rng.uniform(2.5, 20, (32, 8))
    v = 0.2 * (rng.random((8, 32)) < 0.5)
    errs = []
    for r in (10.0, 1.0, 0.1):
        exact = read_currents(g, v, r, cell="0t1r")
        errs.append(np.linalg.norm(v @ effective_conductance(g, r) - exact) / np.linalg.norm(exact))
    assert errs[0] > 1e-4 and errs[1] < errs[0] / 5 and errs[2] < errs[1] / 5, errs
    np.testing.assert_allclose(read_currents(g, v, 1e-6, cell="0t1r"), v @ g, rtol=1e-6)


# -- units and fields -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, ohm", [("1ohm", 1.0), ("0.5ohm", 0.5), ("5kohm", 5000.0), ("2.5kohm", 2500.0),
                                       ("3", 3.0), ("0", 0.0), ("2 Ohm", 2.0)])
def test_resistance_units(text, ohm):
    assert parse_resistance(text, "--wire-resistance") == ohm


@pytest.mark.parametrize("text, words", [("-1ohm", ">= 0"), ("1e999ohm", "finite"), ("5Mohm", "unknown unit"),
                                         ("abc", "a resistance such as")])
def test_bad_resistances_name_the_flag(text, words):
    with pytest.raises(ConfigError, match="--access-resistance") as e:
        parse_resistance(text, "--access-resistance")
    assert words in str(e.value)


@pytest.mark.parametrize("override, words", [("nonideal.wire_ohm=nan", "nonideal.wire_ohm"),
                                             ("nonideal.access_ohm=-5", "nonideal.access_ohm"),
                                             ("nonideal.cell=2t2r", "nonideal.cell")])
def test_bad_target_fields(override, words):
    with pytest.raises(TargetError, match=words):
        load_target("yao2020-resnet", [override])
    with pytest.raises(TargetError, match="passive array"):
        load_target("yao2020-resnet", ["nonideal.cell=0t1r", "nonideal.access_ohm=5000"])


# -- the backend ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fc(tmp_path_factory):
    """A 20 x 6 fully connected layer (one tile: 20 rows, 12 device columns of a 144 x 16 array), signed inputs."""
    d = tmp_path_factory.mktemp("ir")
    onnx.save(om.matmul(k=20, m=6), d / "fc.onnx")
    calib = np.random.default_rng(1).standard_normal((32, 20)).astype(np.float32)
    m = cimc.compile(d / "fc.onnx", "yao2020-resnet", calibration=calib)
    m.save(d / "m")
    rng = np.random.default_rng(2)
    np.savez(d / "x.npz", x=rng.standard_normal((12, 20)).astype(np.float32), y=rng.integers(0, 6, 12))
    return m, d


def _bound(manifest, overrides, seed=3, **kw):
    b = CrossbarBackend(seed=seed, overrides=overrides, **kw)
    b.bind(manifest.graph, manifest.arrays, manifest.target)
    return b, manifest.graph.xbar_ops()[0]


def _codes(op, n, seed=4):
    q = op.input_quant
    return np.random.default_rng(seed).integers(q.qmin, q.qmax + 1, (n, op.rows)).astype(np.float32)


def test_backend_reads_equal_the_exact_circuit(fc):
    """Ideal devices, lossless ADC, 2 ohm segments, 5 kohm transistors: each accumulator is the shift-and-add over
    bit-planes of (I+ - I-) / (V_read step), the currents solved here array read by array read."""
    manifest, _ = fc
    b, op = _bound(manifest, ["nonideal.program_sigma_us=0", "adc.lossless=true", "nonideal.wire_ohm=2",
                              "nonideal.access_ohm=5000"])
    x = _codes(op, 5)
    got = b.mvm(op, x, len(x)).astype(np.float64)
    t = manifest.target
    tile = op.tiles[0]
    p = tile.placements[0]
    (pr, pc), (_, mc) = tile_cells(tile, p, t.array)
    g = t.device.g_min_us + manifest.arrays[p.array].astype(np.float64) * t.device.step_us
    planes = bit_planes(x, op.input_quant.bits, op.input_quant.signed).astype(np.float64)
    weights = 2.0 ** np.arange(len(planes))
    if op.input_quant.signed:
        weights[-1] = -weights[-1]
    want = np.zeros((len(x), op.cols))
    for w, plane in zip(weights, planes):
        volts = np.zeros((len(x), t.array.rows))
        volts[:, pr[:, 0]] = 0.2 * plane
        i = read_currents(g, volts, 2.0, 5000.0)
        want += w * (i[:, pc[0]] - i[:, mc[0]]) / (0.2 * t.device.step_us)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-3)
    ideal, _ = _bound(manifest, ["nonideal.program_sigma_us=0", "adc.lossless=true"])
    assert np.abs(ideal.mvm(op, x, len(x)) - got).max() > 0.5           # the effect is there


@pytest.mark.parametrize("gemm", [None, "float32", "int8"])
def test_effects_off_are_bit_identical(fc, gemm):
    manifest, _ = fc
    base = ["nonideal.program_sigma_us=0.54"]
    b0, op = _bound(manifest, base, gemm=gemm)
    b1, _ = _bound(manifest, base + ["nonideal.wire_ohm=0", "nonideal.access_ohm=0", "nonideal.cell=0t1r"],
                   gemm=gemm)
    x = _codes(op, 9)
    assert b0.reader == b1.reader and b1.chip.read_us is None
    np.testing.assert_array_equal(b0.mvm(op, x, len(x)), b1.mvm(op, x, len(x)))
    assert b0.chip_identity() == b1.chip_identity() and "wire_ohm" not in b0.chip_identity()["nonideal"]


def test_seeded_and_batch_independent(fc):
    manifest, _ = fc
    over = ["nonideal.program_sigma_us=0.54", "nonideal.wire_ohm=1", "nonideal.access_ohm=5000"]
    a, op = _bound(manifest, over, seed=5)
    b, _ = _bound(manifest, over, seed=5)
    c, _ = _bound(manifest, over, seed=6)
    x = _codes(op, 8)
    whole = a.mvm(op, x, len(x))
    halves = np.concatenate([b.mvm(op, x[:3], 3), b.mvm(op, x[3:], 5)])
    np.testing.assert_array_equal(whole, halves)
    assert not np.array_equal(whole, c.mvm(op, x, len(x)))
    assert a.chip_identity()["nonideal"]["wire_ohm"] == 1.0


def test_written_conductances_are_read_through_the_circuit(fc):
    """cimc tune writes arrays with set_conductances: their reads use the new devices' effective conductances."""
    manifest, _ = fc
    b, _ = _bound(manifest, ["nonideal.wire_ohm=4", "nonideal.access_ohm=3000"])
    t = manifest.target
    new = np.random.default_rng(0).uniform(t.device.g_min_us, t.device.g_max_us, (1,) + b.chip.read_us.shape[1:])
    b.set_conductances([0], new)
    np.testing.assert_allclose(b.chip.g_units[0], (effective_conductance(new[0], 4.0, 3000.0) - t.device.g_min_us)
                               / t.device.step_us, rtol=1e-12)


def test_layers_print_the_fast_paths_error(fc, capsys):
    manifest, d = fc
    args = ["run", str(d / "m"), "--data", str(d / "x.npz"), "--backend", "crossbar", "--layers", "--json",
            "--wire-resistance", "2ohm"]
    assert main(args + ["--access-resistance", "5kohm"]) == 0
    row = json.loads(capsys.readouterr().out)["layers"][0]
    assert row["ir_approx_error"] < 1e-9                            # 1T1R: superposition is exact
    assert main(args + ["--set", "nonideal.cell=0t1r"]) == 0
    row = json.loads(capsys.readouterr().out)["layers"][0]
    assert 1e-6 < row["ir_approx_error"] < 0.5                      # passive: the sneak paths it ignores
    table = args[:-3]                                               # the printed table, no circuit effect
    assert main(table) == 0
    assert "IR approx" not in capsys.readouterr().out               # the table as before
    assert main(table + ["--wire-resistance", "2ohm"]) == 0
    assert "IR approx" in capsys.readouterr().out


@pytest.mark.parametrize("flags, words", [(["--wire-resistance=-1ohm"], "--wire-resistance"),
                                          (["--access-resistance", "5Mohm"], "--access-resistance"),
                                          (["--ideal", "--wire-resistance", "1ohm"], "--ideal")])
def test_bad_flags_exit_2(fc, capsys, flags, words):
    _, d = fc
    assert main(["run", str(d / "m"), "--data", str(d / "x.npz"), "--backend", "crossbar", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cimc: error:") and words in err
    assert main(["run", str(d / "m"), "--data", str(d / "x.npz"), "--wire-resistance", "1ohm"]) == 2
    assert "--backend crossbar only" in capsys.readouterr().err


def test_wire_resistance_is_a_sweep_axis(fc, tmp_path, capsys):
    _, d = fc
    assert main(["sweep", str(d / "m"), "--data", str(d / "x.npz"), "--grid", "wire_resistance=0,5ohm", "--seeds",
                 "1", "-o", str(tmp_path / "o"), "--json"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in (tmp_path / "o" / "rows.jsonl").read_text().splitlines()]
    assert [r["params"]["wire_resistance"] for r in rows] == ["0", "5ohm"], captured.err
    flags = [p["run_flags"] for p in json.loads((tmp_path / "o" / "summary.json").read_text())["points"]]
    assert flags == [["--wire-resistance", "0"], ["--wire-resistance", "5ohm"]]
    for row, point_flags in zip(rows, flags):              # a row is `cimc run --seed S` with the point's flags
        assert main(["run", str(d / "m"), "--data", str(d / "x.npz"), "--backend", "crossbar", "--seed", "0",
                     "--json", *point_flags]) == 0
        assert json.loads(capsys.readouterr().out)["accuracy"] == row["accuracy"]


def test_li_rows_differential_analog_reads_equal_the_exact_circuit(tmp_path):
    """Li's layout: inputs as amplitudes +v on the first row block and -v on the second, one bipolar line per
    output, 128 x 64 array: the accumulator is I_line / (V_read step / qmax), the current solved here."""
    onnx.save(om.matmul(k=20, m=6), tmp_path / "fc.onnx")
    calib = np.random.default_rng(1).standard_normal((32, 20)).astype(np.float32)
    manifest = cimc.compile(tmp_path / "fc.onnx", "li2018", calibration=calib)
    b, op = _bound(manifest, ["nonideal.stuck_rate=0", "adc.lossless=true", "nonideal.wire_ohm=2",
                              "nonideal.access_ohm=3000"], diagnostics=True)
    x = _codes(op, 4)
    got = b.mvm(op, x, len(x)).astype(np.float64)
    t = manifest.target
    tile = op.tiles[0]
    p = tile.placements[0]
    (pr, pc), (mr, _) = tile_cells(tile, p, t.array)
    g = t.device.g_min_us + manifest.arrays[p.array].astype(np.float64) * t.device.step_us
    qmax = max(abs(op.input_quant.qmin), op.input_quant.qmax)
    volts = np.zeros((len(x), t.array.rows))
    volts[:, pr[:, 0]] = 0.2 * x / qmax
    volts[:, mr[:, 0]] = -0.2 * x / qmax
    want = read_currents(g, volts, 2.0, 3000.0)[:, pc[0]] / (0.2 * t.device.step_us / qmax)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-3)
    assert b.layer_stats()[0]["ir_approx_error"] < 1e-9
