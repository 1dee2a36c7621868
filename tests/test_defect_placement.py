"""Defect-aware placement (compile --defect-map): the optimum against brute force on tiny cases, never worse than
allocate's placement on random maps, strictly better on a synthetic one, and a permuted placement computes exactly
what the default one does (bit for bit on an ideal chip)."""
from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cimc
from cimc import Session, zoo
from cimc.cli import main
from cimc.manifest import load
from cimc.passes.defect_assignment import solve_layer
from cimc.targets.devices import save_defect_map


def _physical_error(blocks, arrays, orders, stuck, level, differential):
    """The defect error recomputed cell by cell, written independently of the solver: place each tile copy's g+ and
    g- levels on its array with plain loops, then sum |intended - stuck| over the stuck cells it occupies."""
    total = 0.0
    rows = stuck.shape[1]
    for block, a, order in zip(blocks, arrays, orders):
        for i in range(block.shape[0]):
            for j in range(block.shape[1]):
                w = int(block[i, j])
                r = order[i]
                if differential == "columns":
                    cells = [((r, 2 * j), max(w, 0)), ((r, 2 * j + 1), max(-w, 0))]
                else:
                    cells = [((r, j), max(w, 0)), ((rows // 2 + r, j), max(-w, 0))]
                for (rr, cc), want in cells:
                    if stuck[a, rr, cc]:
                        total += abs(want - level[a, rr, cc])
    return total


def _brute_force(blocks, arrays, stuck, level, differential, usable):
    best = None
    for perm in itertools.permutations(range(len(blocks))):
        cost = 0.0
        for t, block in enumerate(blocks):
            a = arrays[perm[t]]
            cost += min(_physical_error([block], [a], [order], stuck, level, differential)
                        for order in itertools.permutations(range(usable), block.shape[0]))
        best = cost if best is None else min(best, cost)
    return best


def _case(seed, n_tiles, rows, cols, tile_rows, differential, rate):
    rng = np.random.default_rng(seed)
    out = cols // 2 if differential == "columns" else cols
    blocks = [rng.integers(-3, 4, (tile_rows, out)) for _ in range(n_tiles)]
    stuck = rng.random((n_tiles, rows, cols)) < rate
    level = np.where(rng.random(stuck.shape) < 0.5, 0.0, 3.0)       # stuck at g_min or at the top level
    return blocks, list(range(n_tiles)), stuck, level


@pytest.mark.parametrize("differential,rows,usable", [("columns", 4, 4), ("rows", 6, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimum_matches_brute_force_on_tiny_cases(differential, rows, usable, seed):
    blocks, arrays, stuck, level = _case(seed, 2, rows, 4, usable - 1 if differential == "columns" else 2,
                                         differential, 0.35)
    plan = solve_layer(blocks, arrays, stuck, level, differential)
    want = _brute_force(blocks, arrays, stuck, level, differential, usable)
    assert plan.after == pytest.approx(want)
    default = _physical_error(blocks, arrays, [list(range(b.shape[0])) for b in blocks], stuck, level, differential)
    assert plan.before == pytest.approx(default)
    got = _physical_error(blocks, [arrays[k] for k in plan.arrays], plan.row_orders, stuck, level, differential)
    assert got == pytest.approx(plan.after)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3), rate=st.floats(0.0, 0.6),
       differential=st.sampled_from(["columns", "rows"]))
def test_never_increases_the_defect_error(seed, n, rate, differential):
    blocks, arrays, stuck, level = _case(seed, n, 8, 6, 3 if differential == "rows" else 5, differential, rate)
    plan = solve_layer(blocks, arrays, stuck, level, differential)
    default = _physical_error(blocks, arrays, [list(range(b.shape[0])) for b in blocks], stuck, level, differential)
    got = _physical_error(blocks, [arrays[k] for k in plan.arrays], plan.row_orders, stuck, level, differential)
    assert got == pytest.approx(plan.after) and plan.after <= default + 1e-9
    assert sorted(plan.arrays) == list(range(n))          # a permutation of the layer's own arrays
    for order, block in zip(plan.row_orders, blocks):
        assert len(set(order)) == block.shape[0] and max(order) < (8 if differential == "columns" else 4)


def test_strictly_beats_the_default_on_a_synthetic_map():
    """Row 0 of the array is stuck at the top level everywhere; the tile's zero row (row 2) belongs there, or a
    spare row: the default puts its largest row on it."""
    block = np.array([[3, -3], [1, 1], [0, 0]])
    stuck = np.zeros((1, 4, 4), bool)
    stuck[0, 0] = True
    level = np.full(stuck.shape, 3.0)
    plan = solve_layer([block], [0], stuck, level, "columns")
    assert plan.before == 6.0 and plan.after == 0.0    # |0-3| on the g- of 3 and the g+ of -3 and plan.row_orders[0][0] != 0


def _defect_file(path, target, arrays, rate, seed):
    rng = np.random.default_rng(seed)
    stuck = rng.random((arrays, target.array.rows, target.array.cols)) < rate
    return save_defect_map(path, stuck, np.where(stuck, target.device.g_max_us, np.nan))


@pytest.fixture(scope="module")
def placed(mcnn_dir, tmp_path_factory):
    from cimc.targets.registry import load_target
    d = tmp_path_factory.mktemp("defects")
    target = load_target("yao2020-mcnn")
    dm = _defect_file(d / "map.npz", target, 8, 0.1, 3)
    kw = dict(calibration=mcnn_dir / "calib.npz")
    plain = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", **kw)
    moved = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", defect_map=dm, **kw)
    plain.save(d / "plain")
    moved.save(d / "moved")
    return d, dm, plain, moved


def test_compiled_placement_reduces_the_error_and_computes_the_same(placed):
    d, dm, plain, moved = placed
    report = moved.provenance["defect_placement"]
    assert report["error_after"] < report["error_before"]
    assert report["error_before"] == pytest.approx(sum(l["error_before"] for l in report["layers"]))
    again = load(d / "moved")
    orders = [p.row_order for op in again.graph.mapped_ops() for t in op.tiles for p in t.placements]
    assert any(o is not None for o in orders)                      # rows did move and the manifest keeps them
    assert again.total_arrays == plain.total_arrays                # same arrays, same copies
    x = np.random.default_rng(7).random((5, 1, 28, 28), dtype=np.float32)
    ref = Session(load(d / "plain"), backend="integer").run(x)
    assert np.array_equal(Session(again, backend="integer").run(x), ref)
    assert np.array_equal(Session(again, backend="crossbar", ideal=True).run(x), ref)


def test_defect_error_matches_the_programmed_arrays(placed):
    """The reported errors, recomputed from arrays.npz (what the chip is programmed with) and the map."""
    from cimc.passes.place_defects import stuck_levels
    from cimc.targets.devices import load_defect_map
    d, dm, plain, moved = placed
    stuck, level = stuck_levels(load_defect_map(dm), moved.target, moved.total_arrays)

    def measured(m):
        used = np.zeros(stuck.shape, bool)       # the cells the tiles occupy (differential columns: g+ and g-)
        for op in m.graph.mapped_ops():
            for t in op.tiles:
                for p in t.placements:
                    rows = (np.arange(t.row_count) if p.row_order is None else np.array(p.row_order)) + p.row_offset
                    used[p.array, rows[:, None], p.col_offset + np.arange(2 * t.col_count)[None, :]] = True
        return float((np.abs(m.arrays - level) * (stuck & used)).sum())
    report = moved.provenance["defect_placement"]
    assert measured(plain) == pytest.approx(report["error_before"])
    assert measured(moved) == pytest.approx(report["error_after"])


def test_defect_free_map_changes_nothing(mcnn_dir, tmp_path):
    dm = save_defect_map(tmp_path / "clean.npz", np.zeros((8, 128, 16), bool))
    kw = dict(calibration=mcnn_dir / "calib.npz")
    plain = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", **kw)
    clean = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", defect_map=dm, **kw)
    assert np.array_equal(plain.arrays, clean.arrays)
    assert clean.provenance["defect_placement"]["error_after"] == 0.0
    plain_doc, clean_doc = plain.to_json()[0], clean.to_json()[0]
    assert plain_doc["ops"] == clean_doc["ops"] and "defect_placement" not in plain.provenance


def test_cli_reports_and_refuses(placed, mcnn_dir, tmp_path, capsys):
    d, dm, _, _ = placed
    base = ["compile", str(mcnn_dir / "mcnn.onnx"), "--target", "yao2020-mcnn", "--calibration",
            str(mcnn_dir / "calib.npz")]
    assert main(base + ["-o", str(tmp_path / "a"), "--defect-map", str(dm), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["defect_placement"]["error_after"] < out["defect_placement"]["error_before"]
    assert main(base + ["-o", str(tmp_path / "b"), "--defect-map", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "c"), "--defect-map", str(dm), "--pack"]) == 2
    err = capsys.readouterr().err
    assert "cimc: error:" in err and "--pack" in err
    small = save_defect_map(tmp_path / "small.npz", np.zeros((2, 128, 16), bool))
    assert main(base + ["-o", str(tmp_path / "e"), "--defect-map", str(small)]) == 2
    assert "--defect-map" in capsys.readouterr().err


def test_report_shows_the_defect_error(placed, tmp_path):
    from cimc.html_report import render_report
    d, _, _, moved = placed
    page = render_report(load(d / "moved"))
    report = moved.provenance["defect_placement"]
    assert "defect-aware placement" in page and f"{report['error_after']:,.1f}" in page


@pytest.mark.parametrize("seed", range(5))
def test_tile_assignment_is_the_optimum(seed):
    from cimc.passes.defect_assignment import assign_tiles
    costs = np.random.default_rng(seed).integers(0, 6, (5, 5)).astype(float)
    best = min(sum(costs[t, p[t]] for t in range(5)) for p in itertools.permutations(range(5)))
    got = assign_tiles(costs)
    assert sorted(got) == list(range(5)) and sum(costs[t, got[t]] for t in range(5)) == best


def test_run_says_which_map_the_placement_is_for(placed, tmp_path, capsys):
    d, dm, _, moved = placed
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32))
    base = ["run", str(d / "moved"), "--data", str(data), "--backend", "crossbar", "--json"]
    assert main(base) == 0
    assert "placed around the defect map" in capsys.readouterr().err
    assert main(base + ["--defect-map", str(dm)]) == 0
    assert "warning" not in capsys.readouterr().err
    other = save_defect_map(tmp_path / "other.npz", np.zeros((8, 128, 16), bool))
    assert main(base + ["--defect-map", str(other)]) == 0
    assert "is not the map" in capsys.readouterr().err


@pytest.mark.parametrize("differential", ["columns", "rows"])
def test_tile_slices_follow_a_row_order_like_tile_cells(differential):
    """The slice form of a tile's cells (what compile, bind and the manifest checks use) is the index form's cells,
    also when a defect-aware placement permutes the rows."""
    from cimc.ir import Placement, Tile
    from cimc.layout import tile_cells, tile_slices
    from cimc.targets.spec import ArraySpec
    spec = ArraySpec(rows=32, cols=8, differential=differential)
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, size=(32, 8))
    tile = Tile(row_start=0, row_count=5, col_start=0, col_count=3)
    for order in (None, [4, 0, 2, 1, 3], [7, 6, 5, 1, 0]):
        p = Placement(array=0, row_offset=1, col_offset=1, row_order=order)
        for cells, slices in zip(tile_cells(tile, p, spec), tile_slices(tile, p, spec)):
            np.testing.assert_array_equal(array[slices], array[cells])


def test_grouped_convs_are_placed_on_their_compact_blocks(tmp_path):
    """A grouped/depthwise conv holds compact blocks (cimc.ir): the placement weighs each tile's real levels, and
    the placed chip still computes the integer reference bit for bit."""
    import onnx_models as om
    from cimc.targets.registry import load_target
    model = om.small_cnn()
    calib = om.random_feeds(model, batch=8, seed=0)
    plain = cimc.compile(model, "yao2020-resnet", calibration=calib)
    dm = _defect_file(tmp_path / "map.npz", load_target("yao2020-resnet"), plain.total_arrays, 0.05, 2)
    moved = cimc.compile(model, "yao2020-resnet", calibration=calib, defect_map=dm)
    report = moved.provenance["defect_placement"]
    assert report["error_after"] <= report["error_before"]
    # the reported error before placement, recomputed from the default placement's programmed arrays
    from cimc.passes.place_defects import stuck_levels
    from cimc.targets.devices import load_defect_map
    stuck, level = stuck_levels(load_defect_map(dm), plain.target, plain.total_arrays)
    used = np.zeros(stuck.shape, bool)
    for op in plain.graph.mapped_ops():
        for t in op.tiles:
            for p in t.placements:
                used[p.array, p.row_offset:p.row_offset + t.row_count, p.col_offset:p.col_offset + 2 * t.col_count] = 1
    assert float((np.abs(plain.arrays - level) * (stuck & used)).sum()) == pytest.approx(report["error_before"])
    x = om.random_feeds(model, batch=3, seed=1)
    ref = Session(plain, backend="integer").run(x)
    assert np.array_equal(Session(moved, backend="crossbar", ideal=True).run(x), ref)


def test_a_non_differential_encoding_is_refused(mcnn_dir, tmp_path):
    from cimc.errors import ConfigError
    from cimc.targets.registry import load_target
    dm = _defect_file(tmp_path / "map.npz", load_target("yao2020-mcnn"), 8, 0.05, 1)
    with pytest.raises(ConfigError, match="weights.encoding"):
        cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz", defect_map=dm,
                     overrides=["weights.encoding=offset"])
