"""Copies as noise averaging (compile --copies-for): the solver against brute force and on a constructed case,
the measured error variance of r averaged copies against the closed form (1/r of one copy's), bit identity with
ideal devices, and the default compile untouched."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import onnx
import onnx_models as om
import pytest

import cimc
from cimc import Session
from cimc.backends.crossbar import CrossbarBackend
from cimc.cli import main
from cimc.compile_options import parse_copies_for
from cimc.errors import ConfigError
from cimc.passes.copies_for import solve_copies_for
from cimc.passes.replication_solver import LayerDemand


def _brute(layers, s, bits, budget, weight, max_average=16):
    """The best (primary, bottleneck, arrays) over every (a, g) per layer, by enumeration."""
    b0 = max(l.positions * bits for l in layers)
    n0 = sum(s.values()) or 1.0
    per = [[(a, g) for a in range(1, max_average + 1) for g in range(1, budget + 1) if a * g * l.arrays_per_copy
            <= budget] for l in layers]
    best = None
    for pick in itertools.product(*per):
        arrays = sum(a * g * l.arrays_per_copy for (a, g), l in zip(pick, layers))
        if arrays > budget:
            continue
        bottleneck = max(math.ceil(l.positions / g) * bits for (a, g), l in zip(pick, layers))
        noise = sum(s[l.name] / a for (a, g), l in zip(pick, layers))
        key = (round(weight * bottleneck / b0 + (1 - weight) * noise / n0, 9), bottleneck, arrays)
        best = key if best is None or key < best else best
    return best


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.7])
@pytest.mark.parametrize("budget", [4, 6, 7])
def test_solver_matches_brute_force(weight, budget):
    layers = [LayerDemand("a", 1, 9), LayerDemand("b", 2, 4), LayerDemand("c", 1, 1)]
    s = {"a": 0.2, "b": 1.0, "c": 3.0}
    plan = solve_copies_for(layers, s, 8, budget, weight)
    b0 = 9 * 8
    primary = round(weight * plan.bottleneck_cycles / b0 + (1 - weight) * plan.noise / sum(s.values()), 9)
    assert (primary, plan.bottleneck_cycles, plan.arrays) == pytest.approx(_brute(layers, s, 8, budget, weight))
    assert all(plan.copies[n] % plan.average[n] == 0 for n in plan.copies) and plan.status == "OPTIMAL"


def test_accuracy_averages_the_most_sensitive_layer():
    """Two equal layers, one spare array: accuracy mode gives it to the sensitive layer as an averaging copy;
    throughput weight 1 would rather pipeline (here it cannot gain: both layers set the bottleneck)."""
    layers = [LayerDemand("quiet", 1, 4), LayerDemand("loud", 1, 4)]
    plan = solve_copies_for(layers, {"quiet": 0.1, "loud": 5.0}, 8, 3, 0.0)
    assert plan.average == {"quiet": 1, "loud": 2} and plan.copies == {"quiet": 1, "loud": 2}
    swapped = solve_copies_for(layers, {"quiet": 5.0, "loud": 0.1}, 8, 3, 0.0)
    assert swapped.average == {"quiet": 2, "loud": 1}


def test_mix_trades_throughput_for_accuracy():
    layers = [LayerDemand("conv", 1, 100), LayerDemand("fc", 1, 1)]
    s = {"conv": 0.01, "fc": 1.0}
    fast = solve_copies_for(layers, s, 8, 4, 1.0)
    careful = solve_copies_for(layers, s, 8, 4, 0.0)
    assert fast.average == {"conv": 1, "fc": 1} and fast.copies["conv"] == 3
    assert careful.average["fc"] == 3 and careful.noise < fast.noise
    assert careful.bottleneck_cycles > fast.bottleneck_cycles


def test_parse_copies_for():
    assert parse_copies_for("throughput") == ("throughput", 1.0)
    assert parse_copies_for("accuracy") == ("accuracy", 0.0)
    assert parse_copies_for("mix:0.25") == ("mix", 0.25) and parse_copies_for("mix") == ("mix", 0.5)
    for bad in ("speed", "mix:2", "mix:x"):
        with pytest.raises(ConfigError, match="--copies-for"):
            parse_copies_for(bad)


@pytest.fixture(scope="module")
def averaged(tmp_path_factory):
    """One MatMul (one tile) compiled with copies for accuracy under a 4-array budget: 4 averaging copies."""
    d = tmp_path_factory.mktemp("avg")
    model = om.matmul(k=12, m=5)
    onnx.save(model, d / "mm.onnx")
    calib = np.random.default_rng(0).standard_normal((64, 12)).astype(np.float32)
    m = cimc.compile(d / "mm.onnx", "yao2020-mcnn", calibration=calib, arrays=4, copies_for="accuracy")
    return d, m, calib


def _errors(manifest, x, seeds, copy, overrides):
    """Accumulator errors (acc - exact integer product) over chip seeds: [seeds, samples, outputs]."""
    op = manifest.graph.xbar_ops()[0]
    codes = np.clip(np.rint(x / op.input_quant.scale), op.input_quant.qmin, op.input_quant.qmax).astype(np.float32)
    exact = codes.astype(np.float64) @ op.levels
    out = []
    for seed in seeds:
        b = CrossbarBackend(seed=seed, copy=copy, overrides=overrides, gemm="float32")
        b.bind(manifest.graph, manifest.arrays, manifest.target)
        out.append(b.mvm(op, codes, len(codes)).astype(np.float64) - exact)
    return np.array(out), codes


def test_plan_and_manifest_say_which_copies_average(averaged):
    d, m, _ = averaged
    op = m.graph.xbar_ops()[0]
    assert (op.replicas, op.average) == (4, 4)
    assert m.replication["average"] == {op.name: 4} and m.replication["pipeline"] == {op.name: 1}
    m.save(d / "m")
    doc = json.loads((d / "m" / "manifest.json").read_text())
    assert doc["ops"][0]["average"] == 4
    rep = json.loads((d / "m" / "replication.json").read_text())
    assert rep["average"] == {op.name: 4} and rep["copies_for"]["mode"] == "accuracy"
    assert cimc.load(d / "m").graph.xbar_ops()[0].average == 4


def test_averaging_divides_the_programming_error_variance(averaged):
    """Lossless ADC, programming error sigma per device: one copy's accumulator error has variance
    2 (sigma/step)^2 sum_k q_k^2 (g+ and g- each); the average of r = 4 copies has 1/4 of it. The sample variance
    of n normal draws has a relative standard deviation sqrt(2 / (n - 1)); the test allows 5 of them."""
    d, m, calib = averaged
    sigma_us = 0.3
    overrides = [f"nonideal.program_sigma_us={sigma_us}", "adc.lossless=true"]
    seeds = range(200)
    step = m.target.device.step_us
    x = calib[:4]
    for copy, r in ((0, 1), (None, 4)):
        err, codes = _errors(m, x, seeds, copy, overrides)
        want = 2 * (sigma_us / step) ** 2 * np.square(codes.astype(np.float64)).sum(axis=1) / r    # per sample
        ratio = (np.square(err).mean(axis=(0, 2)) / want)             # per sample: seeds x outputs draws
        n = err.shape[0] * err.shape[2]
        assert np.all(np.abs(ratio - 1) < 5 * math.sqrt(2 / (n - 1))), (r, ratio)


def test_averaging_divides_the_read_noise_variance(averaged):
    """Read noise (per read, per copy stream): the variance ratio of one copy to four averaged is 4, within 5
    standard deviations of a ratio of two sample variances (relative sd about sqrt(2/n1 + 2/n2))."""
    d, m, calib = averaged
    overrides = ["nonideal.read_noise_sigma_us=0.5", "adc.lossless=true"]
    x = np.repeat(calib[:1], 400, axis=0)        # one input, 400 samples: each its own read-noise streams
    one, _ = _errors(m, x, [0], 0, overrides)
    four, _ = _errors(m, x, [0], None, overrides)
    n = one.size
    ratio = np.square(one).mean() / np.square(four).mean()
    assert abs(ratio / 4 - 1) < 5 * math.sqrt(4 / (n - 1))


def test_ideal_averaging_equals_the_integer_reference(averaged, tmp_path_factory):
    d, m, calib = averaged
    x = calib[:7]
    ref = Session(m, backend="integer").run(x)
    assert np.array_equal(Session(m, backend="crossbar", ideal=True).run(x), ref)
    assert np.array_equal(Session(m, backend="crossbar", ideal=True, simulate_planes=True).run(x), ref)


def test_averaging_conv_bit_identical_when_ideal(mcnn_dir):
    m = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz",
                     copies_for="accuracy", overrides=["chip.chips=2"])
    assert any(op.average > 1 and op.conv is not None for op in m.graph.xbar_ops())
    assert m.replication["arrays"] <= 16
    x = np.random.default_rng(2).random((3, 1, 28, 28), dtype=np.float32)
    assert np.array_equal(Session(m, backend="crossbar", ideal=True).run(x), Session(m, backend="integer").run(x))
    cycles = {l["name"]: l["cycles"] for l in m.estimates["layers"]}
    for op in m.graph.xbar_ops():      # averaging copies add no throughput: P / pipeline groups, 8 input bits
        assert cycles[op.name] == math.ceil(op.positions / (op.replicas // op.average)) * 8
    assert max(cycles.values()) == m.replication["bottleneck_cycles"]
    assert set(m.replication["sensitivity"]) == {"C1", "C3", "FC"}
    assert all(v > 0 for v in m.replication["sensitivity"].values())


def test_default_compile_has_no_averaging(mcnn_dir, tmp_path):
    m = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz")
    assert all(op.average == 1 for op in m.graph.xbar_ops())
    assert not {"average", "pipeline", "copies_for", "sensitivity"} & set(m.replication)
    doc = m.to_json()[0]
    assert all("average" not in op for op in doc["ops"])
    assert all("row_order" not in p for op in doc["ops"] for t in op.get("tiles", []) for p in t["placements"])


def test_cli_refusals(mcnn_dir, tmp_path, capsys):
    base = ["compile", str(mcnn_dir / "mcnn.onnx"), "--target", "yao2020-mcnn", "--calibration",
            str(mcnn_dir / "calib.npz"), "-o", str(tmp_path / "o")]
    assert main(base + ["--copies-for", "speed"]) == 2
    assert "cimc: error: --copies-for 'speed'" in capsys.readouterr().err
    assert main(base + ["--copies-for", "accuracy", "--no-optimize"]) == 2
    assert "--copies-for accuracy" in capsys.readouterr().err
    assert main(base + ["--copies-for", "accuracy", "--pack"]) == 2
    assert "--pack" in capsys.readouterr().err
