"""The offset encoding's reference column (`weights.offset_reference = "column"`, cimc.weight_encoding): each array's
last column holds devices at the offset level, read with every read through its own ADC and subtracted from each
weight column's code. Arrays laid out by hand, the geometry that follows, and the physical point of the variant: the
reference devices' errors are shared by every column of their array. The read-by-read loop over lines with read
noise and ADC effects on, the exact circuit and the lut/int8 readers are tests/test_weight_encoding_physics.py's
("offset-column"); the ideal chip equal to the integer reference, tests/test_weight_encoding.py's."""
from __future__ import annotations

import numpy as np
import onnx_models as om
import pytest

import cimc
from cimc import Session
from cimc.backends.crossbar import CrossbarBackend
from cimc.errors import ManifestError, TargetError
from cimc.layout import program_arrays, read_levels
from cimc.targets.registry import load_target

COLUMN = ["weights.encoding=offset", "weights.offset_reference=column"]
IDEAL = ["nonideal.program_sigma_us=0", "nonideal.stuck_rate=0", "adc.lossless=true"]


def test_a_tiny_layer_laid_out_by_hand():
    """A 3 x 7 MatMul on 4 x 4 arrays of 5-level devices (weights -2..2 on levels 0..4, zero at level 2): three
    outputs per array beside the reference column, so outputs 0-2, 3-5 and 6 on three arrays (the digital offset
    fits four per array: two arrays); each array's column 3 holds level 2 on the three rows the tile drives."""
    model = om.matmul(k=3, m=7)
    tiny = ["array.rows=4", "array.cols=4", "device.levels=5"]
    assert cimc.count(model, "ideal-offset", overrides=tiny)["total_arrays"] == 2
    assert cimc.count(model, "ideal-offset", overrides=tiny + ["weights.offset_reference=column"])["total_arrays"] == 3
    calib = next(iter(om.random_feeds(model, 32, 1).values()))
    m = cimc.compile(model, "ideal-offset", calibration=calib, overrides=tiny + ["weights.offset_reference=column"])
    t, op = m.target, m.graph.xbar_ops()[0]
    assert (t.array.inputs_per_tile, t.array.outputs_per_tile, t.array.frame) == (4, 3, (4, 3))
    w = op.levels.astype(np.int64)
    assert w.shape == (3, 7) and w.min() >= -2 and w.max() <= 2
    want = np.zeros((3, 4, 4), np.int64)
    for a, (c0, c1) in enumerate([(0, 3), (3, 6), (6, 7)]):
        want[a, :3, :c1 - c0] = w[:, c0:c1] + 2
        want[a, :3, 3] = 2
    got = program_arrays(m.graph, t)
    assert sorted((tl.col_start, tl.placements[0].array, tl.placements[0].col_offset) for tl in op.tiles) == \
        [(0, 0, 0), (3, 1, 0), (6, 2, 0)]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(read_levels(op, got, t), op.levels)
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    np.testing.assert_array_equal(Session(m, backend="crossbar", ideal=True).run(x),
                                  Session(m, backend="integer").run(x))
    # the footprint a read converts: the tile's columns and the reference line
    assert t.array.tile_footprint(3, 3) == (3, 4)


@pytest.fixture(scope="module")
def matmul():
    """A 200 x 20 MatMul on yao2020-resnet's 144 x 16 arrays: row tiles of 144 and 56 rows, 15 + 5 outputs."""
    model = om.matmul(k=200, m=20)
    calib = next(iter(om.random_feeds(model, 32, 1).values()))
    column = cimc.compile(model, "yao2020-resnet", calibration=calib, overrides=COLUMN + ["chip.chips=0"])
    digital = cimc.compile(model, "yao2020-resnet", calibration=calib,
                           overrides=["weights.encoding=offset", "chip.chips=0"])
    return column, digital


def _bind(manifest, overrides, seed=0, **options):
    be = CrossbarBackend(seed=seed, overrides=overrides, **options)
    be.bind(manifest.graph, None, manifest.target)
    return be


def _codes(op, samples, seed=3):
    q = op.input_quant
    return np.random.default_rng(seed).integers(q.qmin, q.qmax + 1, (samples, op.rows)).astype(np.float32)


@pytest.mark.parametrize("adc", [["adc.lossless=true"], ["adc.lossless=false", "adc.bits=8"]],
                         ids=["lossless", "8-bit"])
def test_a_reference_device_error_shifts_every_column_of_its_array_alike(matmul, adc):
    """One reference device (logical row i of the first tile) programmed delta above its level: every output of that
    tile moves by the same amount, -delta/step x the input on row i for a lossless ADC (the same code step for
    each through a finite one); the other tiles' outputs do not move."""
    m = matmul[0]
    op = m.graph.xbar_ops()[0]
    tile = next(tl for tl in op.tiles if tl.row_start == 0 and tl.col_start == 0)
    p, i = tile.placements[0], 17
    exact = ["nonideal.program_sigma_us=0", "nonideal.stuck_rate=0"] + adc
    be = _bind(m, exact, gemm="float32")
    x = _codes(op, 8)
    before = be.mvm(op, x, len(x)).astype(np.float64)
    g = be.chip.conductance_us[[p.array]].copy()
    delta = 0.8 * be.target.device.step_us
    assert be.target.array.reference_column == 15
    g[0, p.row_offset + i, 15] += delta
    be.set_conductances([p.array], g)
    shift = be.mvm(op, x, len(x)).astype(np.float64) - before
    inside = shift[:, tile.col_start:tile.col_start + tile.col_count]
    np.testing.assert_array_equal(np.delete(shift, np.s_[tile.col_start:tile.col_start + tile.col_count], axis=1), 0)
    if adc == ["adc.lossless=true"]:          # float32 products of non-integer conductances: rounding apart
        np.testing.assert_allclose(inside, np.repeat(-0.8 * x[:, i:i + 1], tile.col_count, axis=1), atol=1e-3)
    else:            # the same reference code step subtracted from every column's codes (float32 outputs apart)
        plan = be.plans[op.name]
        codes = inside / (plan.full_scale / 255)                   # the 8-bit unipolar ADC's LSB
        np.testing.assert_allclose(codes, np.rint(codes), atol=1e-3)
        np.testing.assert_array_equal(np.rint(codes), np.repeat(np.rint(codes[:, :1]), tile.col_count, axis=1))
        assert np.abs(codes).max() >= 1
    # a weight device's error moves its own output only
    be2 = _bind(m, exact, gemm="float32")
    g = be2.chip.conductance_us[[p.array]].copy()
    g[0, p.row_offset + i, 2] += delta
    be2.set_conductances([p.array], g)
    moved = np.flatnonzero(np.abs(be2.mvm(op, x, len(x)).astype(np.float64) - before).max(axis=0) > 0)
    np.testing.assert_array_equal(moved, [tile.col_start + 2])


def _tile_columns_correlation(err: np.ndarray, op, rows: slice) -> tuple[float, float]:
    """Mean correlation of the error columns (over `rows` of err) of the same tile, and of different tiles."""
    tiles = sorted((tl for tl in op.tiles if tl.row_start == 0), key=lambda tl: tl.col_start)
    c = np.corrcoef(err[rows].T)
    same, other = [], []
    for a in tiles:
        for b in tiles:
            block = c[a.col_start:a.col_start + a.col_count, b.col_start:b.col_start + b.col_count]
            if a is b:
                same.append(block[~np.eye(a.col_count, dtype=bool)])
            else:
                other.append(block.ravel())
    return float(np.concatenate(same).mean()), float(np.concatenate(other).mean())


def test_programming_errors_of_the_reference_are_shared_by_the_arrays_columns(matmul):
    """0.54 uS programming error: the weight error of column j on row r is e_rj - e_r(ref). With equal variances
    the columns of one array then correlate by 1/2 over their rows (the reference's share), columns of different
    arrays by 0; with the digital offset by 0 throughout. Read off one-hot inputs through a lossless ADC."""
    column, digital = matmul
    results = {}
    for name, m in (("column", column), ("digital", digital)):
        op = m.graph.xbar_ops()[0]
        x = np.eye(op.rows, dtype=np.float32)            # code 1 on one row: row r of the effective matrix
        noisy = _bind(m, ["nonideal.program_sigma_us=0.54", "nonideal.stuck_rate=0", "adc.lossless=true"], seed=5)
        err = noisy.mvm(op, x, len(x)).astype(np.float64) - op.levels
        results[name] = _tile_columns_correlation(err, op, slice(0, 144))
    same, other = results["column"]
    assert 0.35 < same < 0.65 and abs(other) < 0.1
    same, other = results["digital"]
    assert abs(same) < 0.1 and abs(other) < 0.1


def test_lossless_read_noise_draws_the_reference_line_once_per_read(matmul):
    """Read noise through a lossless ADC: each output's error is its line's draw minus its tile's reference line's,
    variance 2 s^2 sum_j w_j^2 popcount_j (tests/test_weight_encoding_physics.py), and outputs of one tile share
    the reference draw: correlation 1/2 between them, 0 across tiles (2,000 samples)."""
    m = matmul[0]
    op = m.graph.xbar_ops()[0]
    x = _codes(op, 2000)
    noisy = _bind(m, IDEAL + ["nonideal.read_noise_sigma_us=0.6"], seed=2)
    assert noisy.reader == "product"
    err = noisy.mvm(op, x, len(x)).astype(np.float64) - _bind(m, IDEAL, seed=2).mvm(op, x, len(x))
    same, other = _tile_columns_correlation(err, op, slice(None))
    assert 0.45 < same < 0.55 and abs(other) < 0.05


def test_the_array_holds_one_output_fewer_and_packing_keeps_off_the_reference():
    """Packed tiles of small_cnn (several layers on one array) all stay left of the reference column, whose cells
    hold the zero level (or 0 where no tile drives the row); the manifest check refuses a tile on it."""
    from cimc.manifest_checks import ArrayOccupancy
    model = om.small_cnn()
    calib = next(iter(om.random_feeds(model, 32, 1).values()))
    n_tiles = cimc.count(model, "yao2020-resnet", overrides=COLUMN + ["chip.chips=0"])["total_arrays"]
    m = cimc.compile(model, "yao2020-resnet", calibration=calib, overrides=COLUMN + ["chip.chips=0"], pack=True,
                     arrays=n_tiles - 2)
    t = m.target
    arrays = program_arrays(m.graph, t)
    placed = [(tl, p) for op in m.graph.xbar_ops() for tl in op.tiles for p in tl.placements]
    assert len({p.array for _, p in placed}) < len(placed)                       # packing shared arrays
    assert all(p.col_offset + tl.col_count <= 15 for tl, p in placed)
    assert t.device.levels == 8 and set(np.unique(arrays[:, :, 15])) <= {0, 3}     # zero level (8 - 1) // 2
    for tl, p in placed:
        assert (arrays[p.array, p.row_offset:p.row_offset + tl.row_count, 15] == 3).all()
    x = next(iter(om.random_feeds(model, 3, 2).values()))
    np.testing.assert_array_equal(Session(m, backend="crossbar", ideal=True).run(x),
                                  Session(m, backend="integer").run(x))
    occupancy = ArrayOccupancy(1, t)
    occupancy.place({"row_count": 4, "col_count": 15}, {"array": 0, "row_offset": 0, "col_offset": 0}, "f", "here")
    with pytest.raises(ManifestError, match="outside"):
        occupancy.place({"row_count": 4, "col_count": 1}, {"array": 0, "row_offset": 8, "col_offset": 15}, "g",
                        "here")


def test_manifests_keep_the_variant_and_old_ones_load_as_digital(matmul, tmp_path):
    import json
    column = matmul[0]
    column.save(tmp_path / "c")
    assert cimc.load(tmp_path / "c").target.weights.offset_reference == "column"
    digital = matmul[1]
    digital.save(tmp_path / "d")
    doc = json.loads((tmp_path / "d" / "manifest.json").read_text())
    del doc["target"]["weights"]["offset_reference"]                 # as written before the field existed
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(doc))
    assert cimc.load(tmp_path / "d").target.weights.offset_reference == "digital"
    with pytest.raises(Exception, match="weights.offset_reference"):   # fixed at compile time, as the encoding
        Session(column, backend="crossbar", overrides=["weights.offset_reference=digital"]).run(
            np.zeros((1, 200), np.float32))


@pytest.mark.parametrize("overrides,needle", [
    (["weights.encoding=offset", "weights.offset_reference=row"], "weights.offset_reference"),
    (["weights.offset_reference=column"], "applies to weights.encoding = 'offset' only"),
    (COLUMN + ["array.cols=1", "array.differential=rows"], "besides the reference column")])
def test_bad_values_are_named(overrides, needle):
    with pytest.raises(TargetError, match=needle):
        load_target("yao2020-resnet", overrides)


def test_the_reads_say_how_they_subtract_the_reference(matmul):
    be = _bind(matmul[0], ["adc.bits=8"])
    d = be.describe()["weights"]
    assert d["offset_reference"] == "column" and "reference line" in d["reads"]
    assert "reference line" not in _bind(matmul[1], ["adc.bits=8"]).describe()["weights"]["reads"]


def test_worked_example_from_docs():
    """docs/arithmetic.md's reference-column example, read from its JSON block: the devices laid out, each plane's
    weight and reference line currents, the lossless accumulator and the 4-bit ADC's codes and accumulator."""
    import json
    import re
    from pathlib import Path

    from cimc.backends.bit_planes import bit_planes
    from cimc.ir import ActQuant, Graph, Placement, TensorInfo, Tile, XbarOp
    from cimc.targets.adc import adc_convert
    text = (Path(__file__).resolve().parents[1] / "docs" / "arithmetic.md").read_text()
    ex = json.loads(re.findall(r"```json\n(.*?)```", text, re.S)[-1])
    levels = np.array(ex["levels"], np.int16)[:, None]
    op = XbarOp("fc", "MatMul", ["x"], ["y"], levels.astype(np.float32), None,
                input_quant=ActQuant(1.0, False, ex["input_bits"]), levels=levels,
                weight_scales=np.ones(1, np.float32), tiles=[Tile(0, 4, 0, 1, [Placement(0)])])
    graph = Graph([TensorInfo("x", (None, 4))], [TensorInfo("y", (None, 1))], [op])
    target = load_target(ex["target"], COLUMN + [f"input.bits={ex['input_bits']}", "nonideal.program_sigma_us=0",
                                                 "nonideal.stuck_rate=0"])
    arrays = program_arrays(graph, target)
    assert arrays[0, :4, 0].tolist() == ex["device_levels"] and (arrays[0, :4, 15] == ex["reference_level"]).all()
    x = np.array([ex["codes"]], np.float32)
    assert float((x @ levels.astype(np.float32))[0, 0]) == ex["exact"]
    be = CrossbarBackend(ideal=True)
    be.bind(graph, arrays, target)
    assert float(be.mvm(op, x, 1)[0, 0]) == ex["exact"]
    t = load_target(target, [f"adc.bits={ex['adc_bits']}", "adc.lossless=false", "adc.full_scale=calibrated"])
    be = CrossbarBackend(adc_full_scale={"fc": ex["full_scale_ua"]}, diagnostics=True, gemm="float32")
    be.bind(graph, arrays, t)
    currents = bit_planes(x, ex["input_bits"], False)[:, 0, :] @ be.plans["fc"].blocks[0].lines[0]
    assert currents.tolist() == ex["plane_currents_steps"]                # [weight line, reference line]
    codes, _ = adc_convert(currents.astype(np.float32), ex["adc_bits"], ex["full_scale_ua"] / be.plans["fc"].unit_ua)
    assert codes.tolist() == ex["adc_codes"]
    assert float(be.mvm(op, x, 1)[0, 0]) == pytest.approx(ex["accumulator"], abs=1e-5)
    assert be.layer_stats()[0]["adc_conversions"] == 6                   # 3 planes x (weight + reference line)


def test_cli_sets_the_variant_and_names_a_bad_one(capsys, tmp_path):
    import json
    import onnx

    from cimc.cli import main
    path = tmp_path / "mm.onnx"
    onnx.save(om.matmul(k=200, m=20), path)
    assert main(["count", str(path), "--json", "--set", "weights.encoding=offset",
                 "--set", "weights.offset_reference=column"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["total_arrays"] == 2 * 2 and table["weights"]["offset_reference"] == "column"   # 15 + 5 outputs
    assert main(["count", str(path), "--set", "weights.offset_reference=column"]) == 2
    assert "weights.offset_reference" in capsys.readouterr().err
