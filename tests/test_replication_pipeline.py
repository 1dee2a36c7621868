"""Replication inside the compiler: CP-SAT plan under the target's budget, greedy beside it, replication.json
round trip, throughput targets, and the budget boundary."""
from __future__ import annotations

import itertools
import json
import math

import pytest

import cimc
from cimc.cli import main
from cimc.errors import ConfigError


def _brute_force(layers, budget, bits=8):
    """(bottleneck, arrays) of the best plan by enumeration: layers = [(arrays_per_copy, positions)]."""
    best = None
    for copies in itertools.product(*[range(1, budget + 1)] * len(layers)):
        arrays = sum(r * a for r, (a, _p) in zip(copies, layers))
        if arrays > budget:
            continue
        key = (max(math.ceil(p / r) * bits for r, (_a, p) in zip(copies, layers)), arrays)
        best = key if best is None or key < best else best
    return best


def test_mcnn_plan_on_the_eight_array_chip_is_optimal(mcnn_dir, capsys):
    """yao2020-mcnn: C1 1 array x 676 positions, C3 2 arrays x 49, FC 4 arrays x 1, budget 8."""
    out = mcnn_dir / "m"
    assert main(["compile", str(mcnn_dir / "mcnn.onnx"), "--target", "yao2020-mcnn", "--calibration",
                 str(mcnn_dir / "calib.npz"), "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rep = result["replication"]
    assert rep["status"] == "OPTIMAL" and rep["budget"] == 8
    assert (rep["bottleneck_cycles"], rep["arrays"]) == _brute_force([(1, 676), (2, 49), (4, 1)], 8)
    assert rep["copies"] == {"C1": 2, "C3": 1, "FC": 1} and rep["speedup"] == 2.0
    assert rep["bottleneck_cycles"] <= rep["greedy_bottleneck_cycles"]
    assert {"total_arrays", "replication", "seconds"} <= set(result) and result["total_arrays"] == 8
    assert {"status", "bottleneck_cycles", "greedy_bottleneck_cycles", "solve_seconds"} <= set(rep)


def test_replication_file_round_trip(mcnn_dir, capsys):
    out = mcnn_dir / "rt"
    main(["compile", str(mcnn_dir / "mcnn.onnx"), "--target", "yao2020-resnet", "--arrays", "12", "--calibration",
          str(mcnn_dir / "calib.npz"), "-o", str(out)])
    capsys.readouterr()
    doc = json.loads((out / "replication.json").read_text())
    first = doc["copies"]
    doc["copies"] = {"C1": 3, "C3": 1, "FC": 1}
    edited = mcnn_dir / "edited.json"
    edited.write_text(json.dumps(doc))
    again = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-resnet", calibration=mcnn_dir / "calib.npz",
                         replication=edited, optimize=False)
    assert {op.name: op.replicas for op in again.graph.xbar_ops()} == {"C1": 3, "C3": 1, "FC": 1}
    same = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-resnet", calibration=mcnn_dir / "calib.npz",
                        replication=out / "replication.json", optimize=False)
    assert {op.name: op.replicas for op in same.graph.xbar_ops()} == first


def test_budget_at_the_minimum_and_one_below(mcnn_dir):
    table = cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-resnet", arrays=7)   # 144x16: C1 1, C3 2, FC 4 arrays
    assert table["total_arrays"] == 7 and all(layer["copies"] == 1 for layer in table["layers"])
    with pytest.raises(ConfigError, match="below the 7 arrays needed"):
        cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-resnet", arrays=6)


def test_target_fps_gives_the_fewest_arrays(mcnn_dir):
    # 50 ns slots, 8 bits: 2,000 cycles per inference at 10,000 fps -> C1 needs ceil(676*8/2000) = 3 copies
    table = cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-resnet", target_fps=10_000)
    assert {layer["name"]: layer["copies"] for layer in table["layers"]} == {"C1": 3, "C3": 1, "FC": 1}
    assert table["replication"]["bottleneck_cycles"] <= 2000
    with pytest.raises(ConfigError, match="fastest possible"):
        cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-resnet", target_fps=1e8)


def test_fixed_copies_are_kept_by_the_solver(mcnn_dir):
    table = cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-resnet", replicate={"FC": 2}, arrays=14)
    copies = {layer["name"]: layer["copies"] for layer in table["layers"]}
    assert copies["FC"] == 2 and table["total_arrays"] <= 14


def test_bad_replication_file(mcnn_dir, tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text('{"copies": {"C1": 0}}')
    with pytest.raises(ConfigError, match="positive integer"):
        cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-resnet", replication=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        cimc.count(mcnn_dir / "mcnn.onnx", "yao2020-resnet", replication=tmp_path / "none.json")
