"""Latency / energy / area estimates: Yao 2020's macro numbers, the schedule model, missing numbers, the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import cimc
from cimc import zoo
from cimc.cli import main
from cimc.ir import Graph, XbarOp
from cimc.passes import estimate, tile
from cimc.targets.registry import load_target

CALIB = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)


@pytest.fixture(scope="module")
def mcnn_model():
    return zoo.mcnn()


@pytest.fixture(scope="module")
def mcnn_dir(mcnn_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("estimate") / "m"
    cimc.compile(mcnn_model, "yao2020-mcnn", calibration=CALIB, replicate={"C1": 2}).save(path)
    return path


def _layers(result):
    return {layer["name"]: layer for layer in result["layers"]}


# -- the paper's macro -----------------------------------------------------------------------------------------
def test_yao_macro_reproduces_the_paper():
    r = estimate.estimate_macro(load_target("yao2020-macro"))
    assert r["missing"] == []
    assert r["pj_per_bit_slot"] == pytest.approx(371.89, rel=0.01)
    assert r["gops_per_w"] == pytest.approx(11014, rel=0.01)
    assert r["gops_per_mm2"] == pytest.approx(1164, rel=0.01)
    assert r["tops_per_w"] == pytest.approx(11.014, rel=0.01)
    assert r["area_mm2"] == pytest.approx(0.0704, rel=0.01)
    # the consistent breakdown of Yao 2020's benchmark-macro figures
    assert (r["ops_per_vector"], r["vector_ns"], r["gops"]) == (32768, 400.0, pytest.approx(81.92))
    br = r["breakdown_pj_per_slot"]
    assert br["adc"] == pytest.approx(32 * 4 * 2.55)                       # 326.4 pJ
    assert br["adc"] / br["array"] == pytest.approx(14.4, rel=1e-4)        # ADC power 14.4x the array's
    assert sum(br.values()) == pytest.approx(r["pj_per_bit_slot"])
    assert r["adcs"] == 32 and r["adc_conversions_per_slot"] == 128


def test_macro_equals_a_full_array_layer():
    """A 128 x 64 matmul fills one 128x128 differential array: 8 slots of 371.89 pJ, 400 ns."""
    target = load_target("yao2020-macro")
    op = XbarOp("fc", "MatMul", ["x"], ["y"], np.ones((128, 64), np.float32), None)
    graph = tile.run(Graph([], [], [op]), target)
    r = estimate.estimate_graph(graph, target)
    t = r["totals"]
    assert t["energy_pj"]["total"] == pytest.approx(8 * 371.89, rel=1e-6)
    assert (t["latency_ns"], t["arrays"], t["utilisation"]) == (400.0, 1, 1.0)
    assert t["ops"] == 2 * 128 * 64           # logical signed MACs: half the paper's per-cell count
    assert t["area_mm2"] == pytest.approx(0.0704, rel=0.01)


def test_adc_sharing_stalls_cost_time_not_energy():
    plain = estimate.estimate_macro(load_target("yao2020-macro"))
    stalled = estimate.estimate_macro(load_target("yao2020-macro", ["timing.adc_sharing_stalls=true"]))
    assert stalled["vector_ns"] == 4 * plain["vector_ns"] == 1600
    assert stalled["pj_per_bit_slot"] == pytest.approx(plain["pj_per_bit_slot"])
    assert stalled["gops_per_w"] == pytest.approx(plain["gops_per_w"])
    assert stalled["gops"] == pytest.approx(plain["gops"] / 4)
    assert estimate.estimate_macro(load_target("yao2020-macro", ["timing.slot_ns=25"]))["vector_ns"] == 200


# -- the schedule of a compiled model ---------------------------------------------------------------------------
@pytest.mark.parametrize("copies", [1, 2, 3])
def test_mcnn_cycles_match_hand_computation(mcnn_model, copies):
    m = cimc.compile(mcnn_model, "yao2020-mcnn", calibration=CALIB, replicate={"C1": copies},
                     overrides=["chip.chips=0"])    # 3 copies of C1 need 9 arrays, one more than the chip's 8
    r = estimate.estimate_graph(m.graph, m.target)
    layers = _layers(r)
    assert layers["C1"]["positions"] == 26 * 26
    assert layers["C1"]["cycles"] == math.ceil(676 / copies) * 8          # 5408, 2704, 1808
    assert layers["C3"]["cycles"] == 7 * 7 * 8
    assert layers["FC"]["cycles"] == 8
    t = r["totals"]
    assert t["latency_cycles"] == sum(l["cycles"] for l in layers.values())
    assert t["latency_ns"] == t["latency_cycles"] * 50.0
    assert t["bottleneck_layer"] == "C1" and t["bottleneck_cycles"] == layers["C1"]["cycles"]
    assert t["throughput_per_s"] == pytest.approx(1e9 / (layers["C1"]["cycles"] * 50.0))
    assert layers["C1"]["arrays"] == copies and t["arrays"] == m.total_arrays


def test_mcnn_ops_and_energy_counts(mcnn_dir):
    m = cimc.load(mcnn_dir)
    r = estimate.estimate_graph(m.graph, m.target)
    layers = _layers(r)
    for op in m.graph.xbar_ops():
        assert layers[op.name]["ops"] == 2 * op.rows * op.cols * op.positions
    assert layers["C1"]["ops"] == 2 * 9 * 8 * 676
    assert r["totals"]["ops"] == sum(l["ops"] for l in layers.values())
    # copies do not change energy: C1 reads its one tile (9 rows x 16 columns) 676 x 8 times
    c1 = layers["C1"]
    assert c1["array_reads"] == 676 * 8 and c1["adc_conversions"] == 676 * 8 * 16
    assert c1["energy_pj"]["adc"] == pytest.approx(676 * 8 * 16 * 2.55)
    assert c1["energy_pj"]["array"] == pytest.approx(676 * 8 * 2.833333 * 9 * 16 / (128 * 16))
    assert c1["utilisation"] == pytest.approx(9 * 16 / (128 * 16))


def test_analog_inputs_take_one_slot():
    target = load_target("li2018")
    op = XbarOp("fc", "MatMul", ["x"], ["y"], np.ones((64, 54), np.float32), None)
    result = estimate.estimate_graph(tile.run(Graph([], [], [op]), target), target)
    assert result["layers"][0]["cycles"] == 1 and result["totals"]["latency_ns"] == 50.0


# -- unknown numbers ---------------------------------------------------------------------------------------------
def test_missing_energy_numbers_are_null_and_named(mcnn_dir):
    m = cimc.load(mcnn_dir)
    r = estimate.estimate_graph(m.graph, m.target)
    assert set(r["missing"]) == {"energy.driver_pj_per_slot", "energy.digital_pj_per_op",
                                 "energy.array_area_um2", "energy.peripheral_area_um2"}
    t = r["totals"]
    assert t["energy_pj"]["total"] is None and t["energy_pj"]["drivers"] is None
    assert t["gops_per_w"] is None and t["power_mw"] is None and t["gops_per_mm2"] is None
    assert t["energy_pj"]["adc"] > 0 and t["energy_pj"]["array"] > 0     # what is known is still given
    assert t["gops"] > 0
    ideal = estimate.estimate_macro(load_target("ideal"))
    assert "adc.energy_pj" in ideal["missing"] and ideal["pj_per_bit_slot"] is None
    assert ideal["breakdown_pj_per_slot"]["adc"] is None and ideal["gops_per_w"] is None


def test_pass_stores_estimate_on_config(mcnn_dir):
    m = cimc.load(mcnn_dir)

    class Config:
        pass
    config = Config()
    assert estimate.run(m.graph, m.target, config) is m.graph
    assert config.estimates["totals"]["arrays"] == m.total_arrays


# -- CLI ---------------------------------------------------------------------------------------------------------
def test_cli_manifest_json(mcnn_dir, capsys):
    assert main(["estimate", str(mcnn_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"layers", "totals", "missing", "target"} <= set(out)
    assert [l["name"] for l in out["layers"]] == ["C1", "C3", "FC"]
    assert {"cycles", "latency_ns", "ops", "energy_pj", "gops", "utilisation"} <= set(out["layers"][0])
    assert {"latency_ns", "throughput_per_s", "gops", "gops_per_w", "gops_per_mm2", "area_mm2"} <= set(out["totals"])
    assert out["totals"]["energy_pj"]["total"] is None
    # known numbers supplied on the command line fill in the totals
    assert main(["estimate", str(mcnn_dir), "--json", "--set", "energy.driver_pj_per_slot=22.8",
                 "--set", "energy.digital_pj_per_op=0", "--set", "energy.array_area_um2=800",
                 "--set", "energy.peripheral_area_um2=8000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["missing"] == [] and out["totals"]["gops_per_w"] > 0 and out["totals"]["gops_per_mm2"] > 0


def test_cli_target_json_and_text(capsys):
    assert main(["estimate", "--target", "yao2020-macro", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pj_per_bit_slot"] == pytest.approx(371.89, rel=0.01)
    assert out["gops_per_w"] == pytest.approx(11014, rel=0.01)
    assert out["gops_per_mm2"] == pytest.approx(1164, rel=0.01)
    assert main(["estimate", "--target", "yao2020-macro"]) == 0
    text = capsys.readouterr().out
    assert "371.89 pJ" in text and "11,014 GOPS/W" in text and "1,164 GOPS/mm2" in text


def test_cli_manifest_text(mcnn_dir, capsys):
    assert main(["estimate", str(mcnn_dir)]) == 0
    text = capsys.readouterr().out
    assert "C1" in text and "total" in text and "energy.driver_pj_per_slot" in text


@pytest.mark.parametrize("argv,needle", [
    ([], "needs a manifest directory"),
    (["{tmp}"], "not a manifest directory"),
    (["{tmp}/nope"], "not a manifest directory"),
    (["{manifest}", "--target", "yao2020-macro"], "not both"),
    (["{manifest}", "--set", "array.rows=64"], "array.rows=64"),
    (["--target", "nosuch"], "unknown target"),
])
def test_cli_bad_input(argv, needle, tmp_path, mcnn_dir, capsys):
    argv = [a.format(tmp=tmp_path, manifest=mcnn_dir) for a in argv]
    assert main(["estimate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cimc: error:") and needle in err
