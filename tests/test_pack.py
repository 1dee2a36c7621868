"""--pack (passes/pack.py): copies and placements chosen together, several tiles per array time-sharing it.

Yao 2020's mCNN on the 8-array yao2020-mcnn chip: the paper packs C1 and C3 tiles onto shared arrays to run 3 groups
of C1 + C3 with a shared FC; packing must do at least that well. The CP-SAT optimum is checked by brute force on tiny
instances, and the packed manifest computes exactly what an unpacked one with the same copies computes."""
from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import onnx
import pytest

import cimc
from cimc import zoo
from cimc.cli import main
from cimc.errors import ConfigError
from cimc.executor import Session
from cimc.layout import tile_cells
from cimc.passes.pack import PackLayer, check_plan, minimum_pack_arrays, solve_pack

PAPER_PERIOD = (math.ceil(676 / 3) + math.ceil(49 / 3)) * 8          # 1944: 3 groups of C1 + C3 on shared arrays


@pytest.fixture(scope="module")
def packed(mcnn_dir):
    return cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz", pack=True)


def _device_cells(manifest):
    """{array: set of (row, col)} of every device a placed tile uses, from cimc.layout itself."""
    spec = manifest.target.array
    used: dict[int, list] = {}
    for op in manifest.graph.xbar_ops():
        for tile in op.tiles:
            for p in tile.placements:
                cells = []
                for rows, cols in tile_cells(tile, p, spec):   # g+ and g- devices
                    rows, cols = np.broadcast_arrays(rows, cols)
                    cells += zip(rows.ravel().tolist(), cols.ravel().tolist())
                used.setdefault(p.array, []).append(cells)
    return used


def test_mcnn_packed_beats_the_paper(packed):
    rep = packed.replication
    assert rep["mode"] == "pack" and rep["status"] == "OPTIMAL" and rep["gap"] == 0.0
    assert rep["bottleneck_cycles"] <= PAPER_PERIOD
    assert rep["copies"]["FC"] == 1 and rep["copies"]["C1"] >= 3 and rep["copies"]["C3"] >= 3
    assert rep["arrays"] <= 8 and packed.total_arrays <= 8
    # one tile per array allows only 2 copies of C1 on 8 arrays
    one = rep["one_tile_per_array"]
    assert one["copies"] == {"C1": 2, "C3": 1, "FC": 1} and one["bottleneck_cycles"] == 338 * 8
    assert rep["bottleneck_cycles"] < one["bottleneck_cycles"]
    assert rep["speedup"] == 5408 / rep["bottleneck_cycles"] >= 5408 / PAPER_PERIOD
    assert rep["speedup_vs_sequential"] == (676 + 49 + 1) * 8 / rep["bottleneck_cycles"]
    # the period is the busiest array's load; every array's load is the sum over its tiles
    loads = rep["array_loads"]
    assert max(loads) == rep["bottleneck_cycles"] == rep["period_cycles"]
    for entry in rep["placements"]:
        assert entry["load_cycles"] == sum(t["cycles"] for t in entry["tiles"])
    # the estimate pass agrees: period = the busiest shared array
    t = packed.estimates["totals"]
    assert t["shared_arrays"] and t["bottleneck_cycles"] == rep["bottleneck_cycles"]
    assert t["arrays"] == packed.total_arrays
    assert rep["arrays_saved"] is not None and rep["arrays_saved"] >= 0


def test_no_two_tiles_overlap_on_an_array(packed):
    spec = packed.target.array
    n = 0
    for array, tiles in _device_cells(packed).items():
        seen: set = set()
        for cells in tiles:
            assert all(0 <= r < spec.rows and 0 <= c < spec.cols for r, c in cells)
            assert seen.isdisjoint(cells), f"tiles overlap on array {array}"
            seen.update(cells)
            n += 1
    assert n == sum(op.replicas * len(op.tiles) for op in packed.graph.xbar_ops())
    assert any(len(tiles) > 1 for tiles in _device_cells(packed).values())     # tiles really share arrays
    # copies of one tile sit on different arrays
    for op in packed.graph.xbar_ops():
        for tile in op.tiles:
            arrays = [p.array for p in tile.placements]
            assert len(set(arrays)) == len(arrays)


def test_packed_manifest_computes_what_an_unpacked_one_does(packed, mcnn_dir, tmp_path):
    copies = packed.replication["copies"]
    unpacked = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz", replicate=copies,
                            optimize=False, overrides=["chip.chips=0"])
    assert {op.name: op.replicas for op in unpacked.graph.xbar_ops()} == copies
    assert unpacked.total_arrays == sum(copies[op.name] * len(op.tiles) for op in unpacked.graph.xbar_ops())
    assert packed.total_arrays < unpacked.total_arrays
    for a, b in zip(packed.graph.xbar_ops(), unpacked.graph.xbar_ops()):     # same quantisation
        assert np.array_equal(a.levels, b.levels) and a.input_quant == b.input_quant
    packed.save(tmp_path / "packed")                                        # through the saved arrays too
    x = np.random.default_rng(1).random((24, 1, 28, 28), dtype=np.float32)
    want = Session(unpacked, "integer").run(x)
    assert np.array_equal(Session(tmp_path / "packed", "integer").run(x), want)
    assert np.array_equal(Session(packed, "crossbar", ideal=True).run(x), want)


def test_rows_layout_packs_li2018s_two_layers_on_one_array(tmp_path):
    """Li 2018 put both layers of the 64-54-10 MLP on one 128x64 array; the "rows" frame is the +v block."""
    onnx.save(zoo.mlp(), tmp_path / "mlp.onnx")
    calib = np.random.default_rng(0).random((16, 64), dtype=np.float32)
    m = cimc.compile(tmp_path / "mlp.onnx", "li2018", calibration=calib, pack=True, arrays=1)
    assert m.total_arrays == 1 and m.replication["arrays"] == 1
    ref = cimc.compile(tmp_path / "mlp.onnx", "li2018", calibration=calib, overrides=["chip.chips=0"])
    x = np.random.default_rng(2).random((8, 64), dtype=np.float32)
    assert np.array_equal(Session(m, "integer").run(x), Session(ref, "integer").run(x))


def test_budget_too_small_names_the_minimum(mcnn_dir):
    with pytest.raises(ConfigError, match="minimum is 4 arrays"):
        cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", pack=True, arrays=3)
    table = cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", pack=True, arrays=4)
    assert table["total_arrays"] == 4 and table["replication"]["minimum_arrays"] == 4


def test_pack_needs_a_budget_and_a_small_chip(mcnn_dir):
    with pytest.raises(ConfigError, match="needs an array budget"):
        cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-resnet", pack=True)
    with pytest.raises(ConfigError, match="default allocator"):
        cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-resnet", pack=True, arrays=65)


def test_cli_pack_json(mcnn_dir, capsys):
    out = mcnn_dir / "cli"
    assert main(["compile", str(mcnn_dir / "mcnn.onnx"), "--target", "yao2020-mcnn", "--calibration",
                 str(mcnn_dir / "calib.npz"), "-o", str(out), "--pack", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["replication"]["mode"] == "pack" and result["total_arrays"] <= 8
    assert result["estimates"]["bottleneck_cycles"] == result["replication"]["bottleneck_cycles"] <= PAPER_PERIOD
    assert json.loads((out / "replication.json").read_text())["mode"] == "pack"
    assert main(["count", str(mcnn_dir / "mcnn.onnx"), "--target", "yao2020-mcnn", "--pack"]) == 0
    assert "(pack)" in capsys.readouterr().out


# -- brute force on tiny instances ---------------------------------------------------------------------------
def _fits(rects, height, width, _memo={}):
    """Can these rectangles be placed without overlap in a height x width frame? (exhaustive backtracking)"""
    key = (tuple(sorted(rects)), height, width)
    if key in _memo:
        return _memo[key]
    order = sorted(rects, key=lambda r: -r[0] * r[1])

    def place(i, taken):
        if i == len(order):
            return True
        h, w = order[i]
        for y in range(height - h + 1):
            for x in range(width - w + 1):
                cells = {(y + a, x + b) for a in range(h) for b in range(w)}
                if taken.isdisjoint(cells) and place(i + 1, taken | cells):
                    return True
        return False
    _memo[key] = place(0, frozenset())
    return _memo[key]


def _brute_force(layers, height, width, budget, period_max=None):
    """(period, arrays) of the best packing by enumeration: copies, then every array for every tile copy.
    With period_max: (0, arrays) of the fewest arrays among plans with period <= period_max."""
    best = None
    for copies in itertools.product(*[range(1, min(l.positions, budget) + 1) for l in layers]):
        cyc = [math.ceil(l.positions / r) for l, r in zip(layers, copies)]
        items = [(li, c, t) for li, (l, r) in enumerate(zip(layers, copies)) for c in range(r)
                 for t in range(len(l.tiles))]
        for assign in itertools.product(range(budget), repeat=len(items)):
            per: dict[int, list] = {}
            for (li, _c, t), j in zip(items, assign):
                per.setdefault(j, []).append((li, t))
            if any(len(set(v)) < len(v) for v in per.values()):      # two copies of one tile on one array
                continue
            loads = [sum(cyc[li] for li, _t in v) for v in per.values()]
            if period_max is not None and max(loads) > period_max:
                continue
            key = (max(loads) if period_max is None else 0, len(per))
            if best is not None and key >= best:
                continue
            if all(_fits([layers[li].tiles[t] for li, t in v], height, width) for v in per.values()):
                best = key
    return best


def _tiny(seed):
    rng = random.Random(seed)
    height, width = rng.choice([(4, 4), (4, 6), (6, 4)])
    budget = rng.choice([2, 3])
    layers = []
    for name, n_tiles in zip(("A", "B"), rng.choice([(1, 1), (1, 2), (2, 1)])):
        tiles = tuple((rng.randint(1, height), rng.randint(1, width)) for _ in range(n_tiles))
        layers.append(PackLayer(name, tiles, rng.randint(1, 7)))
    return layers, height, width, budget


@pytest.mark.parametrize("seed", range(16))
def test_cp_sat_optimum_equals_brute_force(seed):
    layers, height, width, budget = _tiny(seed)
    want = _brute_force(layers, height, width, budget)
    if want is None:
        with pytest.raises(ValueError, match="minimum is"):
            solve_pack(layers, height, width, budget, time_limit=5)
        assert minimum_pack_arrays(layers, height, width) > budget
        return
    plan = solve_pack(layers, height, width, budget, time_limit=5)
    check_plan(layers, plan, height, width, budget)
    assert plan.status == "OPTIMAL"
    assert (plan.period, plan.arrays) == want


def test_cp_sat_equals_brute_force_where_packing_matters():
    """Two layers whose tiles fit side by side: the optimum shares arrays (one tile per array could not do it)."""
    layers = [PackLayer("A", ((2, 4),), 6), PackLayer("B", ((2, 4), (2, 2)), 3)]
    plan = solve_pack(layers, 4, 4, 3, time_limit=5)
    check_plan(layers, plan, 4, 4, 3)
    assert (plan.period, plan.arrays) == _brute_force(layers, 4, 4, 3)
    assert len({j for j, _y, _x in plan.placements.values()}) < len(plan.placements)


@pytest.mark.parametrize("seed", [3, 6, 12, 19])
def test_fewest_arrays_for_a_period_equals_brute_force(seed):
    """The 'arrays saved' solve: fewest arrays whose packing reaches a given period."""
    layers, height, width, budget = _tiny(seed)
    best = solve_pack(layers, height, width, budget, time_limit=5)
    slack = best.period + 2
    plan = solve_pack(layers, height, width, budget, time_limit=5, period_max=slack, minimize="arrays")
    check_plan(layers, plan, height, width, budget)
    assert plan.status == "OPTIMAL" and plan.period <= slack
    assert plan.arrays == _brute_force(layers, height, width, budget, period_max=slack)[1]
