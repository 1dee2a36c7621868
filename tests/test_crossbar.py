"""The crossbar backend: bit-exact with the integer backend on an ideal chip, the documented arithmetic of one read
(docs/arithmetic.md), ADC rounding and clipping, seeds, replicas and the non-idealities seen through reads."""
from __future__ import annotations

import copy

import json
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnx_models as om
import pytest

import cimc
from cimc import Session, zoo
from cimc.backends.crossbar import (CrossbarBackend, adc_convert, adc_range, bit_planes, calibrate_adc_full_scale,
                                    plane_weights)
from cimc.errors import ConfigError
from cimc.executor import quantize_activation
from cimc.ir import ActQuant, Graph, Placement, TensorInfo, Tile, XbarOp
from cimc.layout import program_arrays
from cimc.targets.adc import AdcLines
from cimc.targets.registry import load_target

DOC = Path(__file__).resolve().parents[1] / "docs" / "arithmetic.md"


def _compile(tmp_path_factory, name, model, target, calib, **kw):
    path = tmp_path_factory.mktemp("xbar") / f"{name}.onnx"
    onnx.save(model, path)
    return cimc.compile(path, target, calibration=calib, **kw)


def _feeds(model, batch, seed):
    return next(iter(om.random_feeds(model, batch, seed).values()))


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    """Signed input (normalised image), a grouped and a depthwise conv, two branches, an FC head."""
    model = om.small_cnn()
    return _compile(tmp_path_factory, "small_cnn", model, "yao2020-resnet", _feeds(model, 16, 1),
                    replicate={"conv1": 2}), _feeds(model, 5, 2)


@pytest.fixture(scope="module")
def mlp_li(tmp_path_factory):
    """FC-only 64-54-10 perceptron on Li's array: differential rows, analog inputs, signed first-layer inputs."""
    model = zoo.mlp()
    calib = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float32)
    return _compile(tmp_path_factory, "mlp", model, "li2018", calib, overrides=["chip.chips=0"]), \
        np.random.default_rng(4).standard_normal((6, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def mcnn(tmp_path_factory):
    model = zoo.mcnn()
    calib = np.random.default_rng(5).random((16, 1, 28, 28), dtype=np.float32)
    m = _compile(tmp_path_factory, "mcnn", model, "yao2020-mcnn", calib, replicate={"C1": 3},
                 overrides=["chip.chips=0"])
    return m, calib, np.random.default_rng(6).random((6, 1, 28, 28), dtype=np.float32)


def _integer(manifest, x):
    return Session(manifest, backend="integer").run(x)


# -- bit accuracy ------------------------------------------------------------------------------------------------
def test_ideal_equals_integer_on_resnet56(resnet56_manifest):
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = _integer(resnet56_manifest, x)
    y = Session(resnet56_manifest, backend="crossbar", ideal=True).run(x)
    assert y.dtype == ref.dtype and np.array_equal(y, ref)


def test_ideal_bit_serial_equals_integer_on_resnet56_one_sample(resnet56_manifest):
    """The plane-by-plane path (every read simulated, lossless ADC) on the full network, first sample."""
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    y = Session(resnet56_manifest, backend="crossbar", ideal=True, simulate_planes=True).run(x)
    assert np.array_equal(y, _integer(resnet56_manifest, x))


@pytest.mark.parametrize("simulate_planes", [False, True])
def test_ideal_equals_integer_grouped_and_signed(small_cnn, simulate_planes):
    manifest, x = small_cnn
    ops = {op.name: op for op in manifest.graph.xbar_ops()}
    assert ops["conv1"].input_quant.signed                      # two's-complement planes
    assert ops["conv2_grouped"].conv.groups == 2 and ops["conv3_depthwise"].conv.groups == 8
    y = Session(manifest, backend="crossbar", ideal=True, simulate_planes=simulate_planes).run(x)
    assert np.array_equal(y, _integer(manifest, x))


@pytest.mark.parametrize("simulate_planes", [False, True])
def test_ideal_equals_integer_fc_only_on_differential_rows(mlp_li, simulate_planes):
    manifest, x = mlp_li
    assert manifest.target.array.differential == "rows" and manifest.target.input.encoding == "analog"
    y = Session(manifest, backend="crossbar", ideal=True, simulate_planes=simulate_planes).run(x)
    assert np.array_equal(y, _integer(manifest, x))


def test_ideal_equals_integer_with_replicas(mcnn):
    manifest, _, x = mcnn
    y = Session(manifest, backend="crossbar", ideal=True).run(x)
    assert np.array_equal(y, _integer(manifest, x))


def test_fine_adc_on_ideal_devices_is_close_and_exact_when_lsb_is_one_step():
    """A 24-bit ADC whose LSB is a whole current unit converts every ideal (integer) current exactly."""
    graph, target, _ = _example_graph(input_bits=3)
    target = load_target(target, ["adc.bits=24", "adc.lossless=false"])
    top = (1 << 24) - 1
    be = CrossbarBackend(adc_full_scale={"fc": top * 0.5})           # FS = top current units -> LSB = 1 unit
    be.bind(graph, program_arrays(graph, target), target)
    x = np.array([[5, 3, 0, 7], [7, 7, 7, 7], [0, 0, 0, 0]], np.float32)
    assert np.array_equal(be.mvm(graph.ops[0], x, 3)[:, 0], x @ np.array([2, -1, 3, -7], np.float32))


# -- the documented arithmetic -------------------------------------------------------------------------------------
def _doc_example() -> dict:
    text = DOC.read_text()
    block = re.search(r"```json\n(.*?)```", text, re.S).group(1)
    return json.loads(block)


def _example_graph(input_bits=3, signed=False, target="yao2020-resnet"):
    levels = np.array([[2], [-1], [3], [-7]], np.int8)
    op = XbarOp("fc", "MatMul", ["x"], ["y"], levels.astype(np.float32), None,
                input_quant=ActQuant(1.0, signed, input_bits), levels=levels,
                weight_scales=np.ones(1, np.float32), tiles=[Tile(0, 4, 0, 1, [Placement(0)])])
    graph = Graph([TensorInfo("x", (None, 4))], [TensorInfo("y", (None, 1))], [op])
    return graph, load_target(target, [f"input.bits={input_bits}", "nonideal.program_sigma_us=0"]), levels


def test_worked_example_from_docs():
    ex = _doc_example()
    graph, target, levels = _example_graph(ex["input_bits"], target=ex["target"])
    assert levels[:, 0].tolist() == ex["levels"]
    op = graph.ops[0]
    x = np.array([ex["codes"]], np.float32)
    assert float((x @ levels.astype(np.float32))[0, 0]) == ex["exact"]
    # currents of each plane on the g+ and g- lines, from the chip instance's conductances
    be = CrossbarBackend(ideal=True)
    be.bind(graph, program_arrays(graph, target), target)
    planes = bit_planes(x, ex["input_bits"], False)[:, 0, :]
    lines = be.plans["fc"].blocks[0].lines[0]                          # [rows, (g+, g-)] in steps, g_min included
    currents = planes @ lines
    assert currents.tolist() == ex["plane_currents_steps"]
    assert be.plans["fc"].unit_ua == ex["current_unit_ua"]
    assert float(be.mvm(op, x, 1)[0, 0]) == ex["exact"]               # lossless: exact
    for case in ex["cases"]:
        fs_steps = case["full_scale_ua"] / ex["current_unit_ua"]
        codes, clipped = adc_convert(currents.astype(np.float32), ex["adc_bits"], fs_steps)
        assert codes.tolist() == case["codes"] and clipped == case["clipped"]
        t = load_target(target, [f"adc.bits={ex['adc_bits']}", "adc.lossless=false", "adc.full_scale=calibrated"])
        be = CrossbarBackend(adc_full_scale={"fc": case["full_scale_ua"]}, diagnostics=True)
        be.bind(graph, program_arrays(graph, t), t)
        acc = be.mvm(op, x, 1)
        assert float(acc[0, 0]) == pytest.approx(case["accumulator"], abs=1e-5)
        stats = be.layer_stats()[0]
        assert stats["adc_conversions"] == 6 and stats["adc_clip_rate"] == pytest.approx(case["clipped"] / 6)
    # signed inputs: two's complement, the MSB plane weighs -4
    graph, target, _ = _example_graph(ex["input_bits"], signed=True, target=ex["target"])
    assert plane_weights(3, True).tolist() == [1, 2, -4]
    xs = np.array([ex["signed"]["codes"]], np.float32)
    for simulate in (False, True):
        be = CrossbarBackend(ideal=True, simulate_planes=simulate)
        be.bind(graph, program_arrays(graph, target), target)
        assert float(be.mvm(graph.ops[0], xs, 1)[0, 0]) == ex["signed"]["accumulator"]


@pytest.mark.parametrize("current, bits, fs, bipolar, codes, clipped", [
    ([0.0, 0.5, 1.5, 2.5, 3.49, 3.5], 2, 3.0, False, [0, 0, 2, 2, 3, 3], 1),      # ties to even; 3.5 -> 4 clips
    ([-0.2, -0.6, 7.0, 7.4, 7.6, 100.0], 3, 7.0, False, [0, 0, 7, 7, 7, 7], 3),  # -0.6 and 7.6 up clip
    ([-4.0, -3.5, -0.5, 0.5, 2.5, 3.6], 3, 3.0, True, [-3, -3, 0, 0, 2, 3], 3),   # bipolar -3..3; -3.5 -> -4
    ([1.0, 2.0], 8, 10.0, False, [26, 51], 0),                                    # 25.5 -> 26, 51 -> 51
])
def test_adc_rounding_and_clipping(current, bits, fs, bipolar, codes, clipped):
    got, n = adc_convert(np.array(current, np.float32), bits, fs, bipolar)
    assert got.tolist() == codes and n == clipped


def test_bit_planes_lsb_first_and_twos_complement():
    x = np.array([[5, 0, 255]], np.float32)
    assert bit_planes(x, 8, False)[:, 0, 0].tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
    assert bit_planes(x, 8, False)[:, 0, 2].tolist() == [1] * 8
    xs = np.array([[-1, -127, 127, -3]], np.float32)
    p = bit_planes(xs, 8, True)[:, 0, :]
    assert np.array_equal(plane_weights(8, True) @ p, xs[0])


# -- ADC full scale ----------------------------------------------------------------------------------------------
def test_calibrated_full_scale_covers_the_calibration_set_without_clipping(mcnn):
    manifest, calib, _ = mcnn
    scales = calibrate_adc_full_scale(manifest.graph, manifest.target, calib)
    assert set(scales) == {"C1", "C3", "FC"} and all(v > 0 for v in scales.values())
    be = CrossbarBackend(adc_full_scale=scales, diagnostics=True, overrides=["nonideal.program_sigma_us=0"])
    Session(manifest, backend=be).run(calib)
    stats = {r["name"]: r for r in be.layer_stats()}
    assert all(r["adc_clip_rate"] == 0 for r in stats.values())
    assert all(r["adc_full_scale_source"] == "calibrated (option)" for r in stats.values())
    assert all(r["rel_error"] < 0.05 for r in stats.values())          # an 8-bit ADC on ideal devices
    # the same numbers when the backend calibrates at bind from data, and the rule is the peak current:
    # halving the full scale makes some conversions clip
    be2 = CrossbarBackend(calibration=calib, overrides=["nonideal.program_sigma_us=0"])
    Session(manifest, backend=be2)
    assert {k: p.full_scale * p.unit_ua for k, p in be2.plans.items()} == pytest.approx(scales)
    be3 = CrossbarBackend(adc_full_scale={k: v / 2 for k, v in scales.items()}, diagnostics=True,
                          overrides=["nonideal.program_sigma_us=0"])
    Session(manifest, backend=be3).run(calib)
    assert any(r["adc_clip_rate"] > 0 for r in be3.layer_stats())


def test_max_full_scale_and_missing_calibration_warns(mcnn):
    manifest, _, x = mcnn
    manifest = copy.deepcopy(manifest)
    assert all(op.adc_full_scale_ua for op in manifest.graph.xbar_ops())   # compile calibrates the ADC ...
    for op in manifest.graph.xbar_ops():                                     # ... an older manifest did not
        op.adc_full_scale_ua = None
    with pytest.warns(UserWarning, match="calibrated"):
        be = CrossbarBackend()
        Session(manifest, backend=be)
    assert all(p.full_scale_source.startswith("max") for p in be.plans.values())
    be = CrossbarBackend(overrides=["adc.full_scale=max"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Session(manifest, backend=be)
    # 128 rows x g_max (8 steps) x 0.5 uA per step
    assert [p.full_scale * p.unit_ua for p in be.plans.values()] == [512.0] * 3


# -- seeds, replicas, non-idealities -----------------------------------------------------------------------------
def _noisy(manifest, x, seed, **kw):
    opts = dict(overrides=["adc.full_scale=max", "nonideal.read_noise_sigma_us=0.05"])
    opts.update(kw)
    return Session(manifest, backend="crossbar", seed=seed, **opts).run(x)


def test_same_seed_identical_different_seed_differs(mcnn):
    manifest, _, x = mcnn
    a, b, c = _noisy(manifest, x, 5), _noisy(manifest, x, 5), _noisy(manifest, x, 6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, _integer(manifest, x))


def test_replicas_sample_b_uses_copy_b_mod_copies(mcnn):
    manifest, _, x = mcnn
    assert manifest.graph.op("C1").replicas == 3
    kw = dict(overrides=["adc.full_scale=max"])                   # no read noise: each run is deterministic
    y = _noisy(manifest, x, 1, **kw)
    for k in range(3):
        yk = _noisy(manifest, x, 1, copy=k, **kw)
        assert np.array_equal(y[k::3], yk[k::3])
    assert not np.array_equal(_noisy(manifest, x, 1, copy=0, **kw), _noisy(manifest, x, 1, copy=1, **kw))
    with pytest.raises(ConfigError, match="copy=3"):
        Session(manifest, backend="crossbar", copy=3)


def test_use_copy_after_bind_reads_as_a_backend_built_with_that_copy(mcnn):
    """Training's per-copy accuracy switches copies on a bound chip (`use_copy`): each switch reads exactly as a
    backend constructed with copy=k (the default lut reader, so the convolutions' routes are re-chosen too)."""
    manifest, _, x = mcnn
    session = Session(manifest, backend="crossbar", seed=1)
    for k in (2, 0, None):
        session.backend.use_copy(k)
        assert np.array_equal(session.run(x), Session(manifest, backend="crossbar", seed=1, copy=k).run(x))
    with pytest.raises(ConfigError, match="copy=-1"):
        session.backend.use_copy(-1)
    with pytest.raises(ConfigError, match="copy=3: the manifest's layers have at most 3 copies"):
        session.backend.use_copy(3)                     # as Session(..., copy=3) refuses at bind
    assert session.backend.copy is None                 # a refused switch leaves the routing as it was


def test_read_noise_statistics_on_a_lossless_read():
    """One read of n driven rows: the accumulator's noise has variance 2 s^2 sum_j w_j^2 n_j (both lines)."""
    graph, target, levels = _example_graph(input_bits=3)
    target = load_target(target, ["nonideal.read_noise_sigma_us=0.25", "adc.lossless=true"])
    x = np.tile(np.array([[5, 3, 0, 7]], np.float32), (40_000, 1))
    exact = float(x[0] @ levels[:, 0])
    # planes: n = [3, 2, 2] driven rows with weights [1, 2, 4]: sum w^2 n = 3 + 8 + 32 = 43; s = 0.25/2.5 steps
    expect = np.sqrt(2 * 0.1 ** 2 * 43)
    for simulate in (False, True):
        be = CrossbarBackend(simulate_planes=simulate)
        be.bind(graph, program_arrays(graph, target), target)
        err = be.mvm(graph.ops[0], x, len(x))[:, 0].astype(np.float64) - exact
        assert abs(err.mean()) < 5 * expect / np.sqrt(len(err))
        assert abs(err.std() - expect) < 5 * expect / np.sqrt(2 * len(err))


def test_programming_error_seen_through_a_read():
    """sigma on every device: the lossless accumulator's error has variance s^2 sum_r q_r^2 per line, 2 lines."""
    levels = np.zeros((144, 8), np.int8)
    op = XbarOp("fc", "MatMul", ["x"], ["y"], levels.astype(np.float32), None, input_quant=ActQuant(1.0, False, 8),
                levels=levels, weight_scales=np.ones(8, np.float32),
                tiles=[Tile(0, 144, 0, 8, [Placement(a)]) for a in range(1)])
    graph = Graph([TensorInfo("x", (None, 144))], [TensorInfo("y", (None, 8))], [op])
    target = load_target("yao2020-resnet", ["nonideal.program_sigma_us=0.54", "adc.lossless=true"])
    x = np.ones((1, 144), np.float32)
    errs = []
    for seed in range(300):
        be = CrossbarBackend(seed=seed)
        be.bind(graph, None, target)
        errs.append(be.mvm(op, x, 1)[0])
    errs = np.concatenate(errs).astype(np.float64)
    expect = 0.54 / 2.5 * np.sqrt(2 * 144)
    assert abs(errs.std() - expect) < 5 * expect / np.sqrt(2 * len(errs))


def test_stuck_devices_and_defect_map_change_the_result(mcnn, tmp_path):
    from cimc.targets.devices import save_defect_map
    manifest, _, x = mcnn
    ideal = Session(manifest, backend="crossbar", ideal=True).run(x)
    kw = dict(overrides=["adc.lossless=true"])
    stuck = Session(manifest, backend="crossbar", overrides=["adc.lossless=true", "nonideal.program_sigma_us=0",
                                                             "nonideal.stuck_rate=0.11", "nonideal.stuck_at=10"]).run(x)
    assert not np.array_equal(stuck, ideal)
    none = np.zeros((manifest.total_arrays, 128, 16), bool)
    path = save_defect_map(tmp_path / "none.npz", none)
    clean = Session(manifest, backend="crossbar", defect_map=str(path),
                    overrides=["adc.lossless=true", "nonideal.program_sigma_us=0"]).run(x)
    assert np.array_equal(clean, ideal)
    none[:, :, :] = True
    path = save_defect_map(tmp_path / "all.npz", none, np.full(none.shape, 2.5, np.float32))
    dead = Session(manifest, backend="crossbar", defect_map=str(path), **kw)   # every device at g_min: no signal
    out = dead.run(x)
    bias_only = Session(manifest, backend="crossbar", ideal=True)
    assert out.shape == bias_only.run(x).shape
    fc = manifest.graph.op("FC")
    assert np.allclose(out, np.broadcast_to(fc.bias, out.shape), atol=1e-6)


def test_describe_and_layer_stats(mcnn):
    manifest, _, x = mcnn
    s = Session(manifest, backend="crossbar", seed=3, diagnostics=True, overrides=["adc.full_scale=max"])
    s.run(x)
    d = s.backend.describe()
    assert d["backend"] == "crossbar" and d["seed"] == 3 and d["nonideal"]["program_sigma_us"] == 0.54
    rows = s.backend.layer_stats()
    assert [r["name"] for r in rows] == ["C1", "C3", "FC"]
    assert all(0 < r["rel_error"] < 1 and r["snr_db"] > 0 for r in rows)


def test_int8_gemm_is_exact_for_ideal_levels_and_close_for_noisy(mcnn):
    manifest, calib, x = mcnn
    scales = calibrate_adc_full_scale(manifest.graph, manifest.target, calib)
    ideal_dev = dict(adc_full_scale=scales, overrides=["nonideal.program_sigma_us=0"])
    f32 = Session(manifest, backend="crossbar", **ideal_dev).run(x)
    be = CrossbarBackend(gemm="int8", **ideal_dev)
    assert np.array_equal(Session(manifest, backend=be).run(x), f32)
    assert be.grid == 15                                   # 127 // 8 steps (g_max)
    noisy = {}
    for gemm in ("float32", "int8"):
        b = CrossbarBackend(seed=2, gemm=gemm, adc_full_scale=scales, diagnostics=True)
        Session(manifest, backend=b).run(x)
        noisy[gemm] = [r["rel_error"] for r in b.layer_stats()]
        if gemm == "int8":
            assert b.describe()["conductance_grid_us"] == pytest.approx(2.5 / b.grid)
    assert np.allclose(noisy["int8"], noisy["float32"], rtol=0.1)
    with pytest.raises(ConfigError, match="gemm"):
        CrossbarBackend(gemm="int4")


def test_worked_example_with_int8_gemm():
    ex = _doc_example()
    graph, target, _ = _example_graph(ex["input_bits"], target=ex["target"])
    x = np.array([ex["codes"]], np.float32)
    for case in ex["cases"]:
        t = load_target(target, [f"adc.bits={ex['adc_bits']}", "adc.lossless=false"])
        be = CrossbarBackend(adc_full_scale={"fc": case["full_scale_ua"]}, gemm="int8")
        be.bind(graph, program_arrays(graph, t), t)
        assert float(be.mvm(graph.ops[0], x, 1)[0, 0]) == pytest.approx(case["accumulator"], abs=1e-5)


def test_adc_calibration_uses_only_max_samples(mcnn):
    """calibrate_adc_full_scale(max_samples=k) reads exactly the first k samples, not a whole batch."""
    from cimc.backends.crossbar import calibrate_adc_full_scale
    manifest, calib, _x = mcnn
    limited = calibrate_adc_full_scale(manifest.graph, manifest.target, calib, max_samples=2, batch_size=64)
    first_two = calibrate_adc_full_scale(manifest.graph, manifest.target, calib[:2], batch_size=64)
    assert limited == first_two


def _brute_force_peak_ua(manifest, x):
    """The calibration rule read by read, in plain loops over tiles, bit-planes and lines: the largest ideal line
    current I = V_read * sum_r bit_r * (g_min + level_r * step) over the inputs of every op (integer activations)."""
    from cimc.executor import run_graph
    from cimc.im2col import im2col
    from cimc.layout import tile_cells
    target, arrays = manifest.target, program_arrays(manifest.graph, manifest.target)
    seen = {}
    integer = Session(manifest, backend="integer").backend
    run_graph(manifest.graph, {manifest.graph.inputs[0].name: x}, integer,
              observe=lambda op, a: seen.__setitem__(op.name, quantize_activation(a, op.input_quant)))
    dev, v = target.device, target.input.read_voltage_v
    peaks = {}
    for op in manifest.graph.xbar_ops():
        codes = seen[op.name]
        rows = im2col(codes, op.conv)[0] if op.conv is not None else codes.reshape(-1, op.rows)
        q = op.input_quant
        u = rows.astype(np.int64) & ((1 << q.bits) - 1)            # two's complement bits for signed codes
        peak = 0.0
        for t in op.tiles:
            p = t.placements[0]
            for cells in tile_cells(t, p, target.array):
                g = dev.g_min_us + arrays[p.array][cells] * dev.step_us                   # [row_count, col_count]
                for j in range(q.bits):
                    bits = (u[:, t.row_start:t.row_start + t.row_count] >> j) & 1
                    peak = max(peak, float((bits @ g).max()) * v)
        peaks[op.name] = peak
    return peaks


@pytest.mark.parametrize("fixture", ["mcnn", "small_cnn"])
def test_adc_calibration_equals_the_read_by_read_rule_and_follows_the_integer_chip(fixture, request):
    """The fast calibration reads (uint8 im2col, one MatMulInteger per row tile, accumulators by shift-and-add) give
    the brute-force peak current, and the activations they pass on are the integer backend's, bit for bit."""
    from cimc.executor import run_graph
    data = request.getfixturevalue(fixture)
    manifest, x = data[0], data[-1]
    scales = calibrate_adc_full_scale(manifest.graph, manifest.target, x)
    want = _brute_force_peak_ua(manifest, x)
    assert scales == pytest.approx(want, rel=1e-9)
    be = CrossbarBackend(record_currents=True)
    be.bind(manifest.graph, None, manifest.target)
    assert all(be.reads.exact(p) for p in be.plans.values())                     # the fast path ran
    feeds = {manifest.graph.inputs[0].name: x}
    assert np.array_equal(run_graph(manifest.graph, feeds, be)[manifest.graph.outputs[0].name], _integer(manifest, x))


# -- table reads (gemm="lut", numba) --------------------------------------------------------------------------------
from cimc.backends import lut_reads  # noqa: E402

needs_numba = pytest.mark.skipif(not lut_reads.available(), reason="numba (in the dev extra) is not installed")
@pytest.fixture(scope="module")
def small_cnn_rows(tmp_path_factory):
    """small_cnn on arrays whose g- devices sit in the lower half of the rows (one bipolar line per output)."""
    model = om.small_cnn()
    return _compile(tmp_path_factory, "small_cnn_rows", model, "yao2020-resnet", _feeds(model, 16, 1),
                    overrides=["array.differential=rows"]), _feeds(model, 5, 2)


@needs_numba
@pytest.mark.parametrize("fixture,overrides", [("mcnn", []), ("small_cnn", []), ("small_cnn_rows", ["adc.bits=6"])])
def test_lut_reads_equal_the_int8_gemm_on_the_same_grid(fixture, overrides, request):
    """Table lookups + fused ADC + shift-and-add equal planes x MatMulInteger + adc_convert + Horner bit for bit on the
    same conductance grid (noisy devices, stuck cells, calibrated 8-bit ADCs, several copies, signed inputs, both
    differential schemes), including the clipping counts."""
    manifest, x = request.getfixturevalue(fixture)[0], request.getfixturevalue(fixture)[-1]
    scales = calibrate_adc_full_scale(manifest.graph, manifest.target, x)
    common = dict(seed=4, adc_full_scale={k: v / 3 for k, v in scales.items()},   # a third: some reads clip
                  overrides=["nonideal.stuck_rate=0.02", *overrides])
    outs, stats = {}, {}
    for gemm in ("int8", "lut"):
        grid = None if gemm == "int8" else outs["grid"]
        for diagnostics in (False, True):
            be = CrossbarBackend(gemm=gemm, conductance_grid=grid, diagnostics=diagnostics, **common)
            y = Session(manifest, backend=be).run(x)
            outs.setdefault("grid", be.grid)
            outs[gemm, diagnostics] = y
            if diagnostics:
                stats[gemm] = [(r["adc_clip_rate"], r["adc_conversions"]) for r in be.layer_stats()]
    assert np.array_equal(outs["int8", False], outs["lut", False])
    assert np.array_equal(outs["int8", True], outs["lut", True])
    assert np.array_equal(outs["lut", True], outs["lut", False])
    assert stats["int8"] == stats["lut"] and any(rate > 0 for rate, _ in stats["lut"])


ADC_STATIC = ["adc.gain_sigma_rel=0.03", "adc.offset_sigma_lsb=0.7", "adc.inl_lsb=1.5"]   # per chip, no sense noise


@needs_numba
@pytest.mark.parametrize("fixture,seed,overrides", [
    ("mcnn", 1, []), ("mcnn", 2, []), ("mcnn", 3, []),
    ("small_cnn", 5, []),                                   # convolutions read straight from NHWC codes
    ("small_cnn_rows", 6, ["adc.bits=6"]),                  # one bipolar line per output: int16 tables
])
def test_lut_reads_through_adcs_with_gain_offset_and_inl_equal_the_int8_gemm(fixture, seed, overrides, request):
    """The kernel applies each line's ADC gain and offset and the INL (cimc.targets.adc.AdcLines.apply, numpy, in
    the int8 reader) with the same float32 operations: int8 and lut agree bit for bit on the same grid, on both
    read routes (direct convolutions; im2col rows with diagnostics), clipping counts included; and the errors are
    really applied (the ideal ADC's outputs differ)."""
    manifest, x = request.getfixturevalue(fixture)[0], request.getfixturevalue(fixture)[-1]
    scales = calibrate_adc_full_scale(manifest.graph, manifest.target, x)
    common = dict(seed=seed, adc_full_scale={k: v / 3 for k, v in scales.items()})
    devices = ["nonideal.stuck_rate=0.02", *overrides]
    int8 = CrossbarBackend(gemm="int8", diagnostics=True, overrides=devices + ADC_STATIC, **common)
    want = Session(manifest, backend=int8).run(x)
    stats = {}
    for diagnostics in (False, True):
        lut = CrossbarBackend(gemm="lut", conductance_grid=int8.grid, diagnostics=diagnostics,
                              overrides=devices + ADC_STATIC, **common)
        got = Session(manifest, backend=lut).run(x)
        assert lut.reader == "lut"
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
        if diagnostics:
            stats = [[(r["adc_clip_rate"], r["adc_conversions"]) for r in b.layer_stats()] for b in (int8, lut)]
    assert stats[0] == stats[1] and any(rate > 0 for rate, _ in stats[0])
    ideal = CrossbarBackend(gemm="lut", conductance_grid=int8.grid, overrides=devices, **common)
    assert not np.array_equal(Session(manifest, backend=ideal).run(x), want)


def _conv1d(cin: int = 16, cout: int = 6) -> onnx.ModelProto:
    """A Conv1d (kernel 3, stride 2, pads 1 and 2) on [N, cin, 20]."""
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((cout, cin, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["logits"], name="conv", kernel_shape=[3], pads=[1, 2], strides=[2])
    graph = helper.make_graph([node], "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, 20])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@needs_numba
@pytest.mark.parametrize("make,tiles,replicas", [
    (lambda: om.conv(cin=23, cout=6, k=3, hw=9, strides=[2, 2], pads=[1, 1, 1, 1]), 2, 2),   # 16 + 7 channels
    (lambda: om.conv(cin=32, cout=8, k=3, hw=9, group=2, dilations=[2, 2], pads=[2, 2, 2, 2]), 2, 1),  # half outputs
    (lambda: om.conv(cin=200, cout=5, k=1, hw=9, pads=[0, 1, 0, 1], bias=False), 2, 1),   # 1x1: 144 + 56 channels
    (_conv1d, 1, 1),
], ids=["partial-octet-stride-replicas", "grouped-dilated", "1x1-no-bias", "conv1d"])
def test_lut_conv_reads_without_im2col_equal_the_int8_gemm(tmp_path_factory, make, tiles, replicas):
    """A convolution whose row tiles hold whole channels is read straight from its padded NHWC codes (tables in
    (kernel offset, channel) row order); it must equal the int8 GEMM on im2col rows on the same grid, and the table
    reads on im2col rows (the path diagnostics take), bit for bit, with several row tiles, strides, dilation,
    groups, signed inputs and replicas. The direct reads also dequantise (conv_output): the float32 logits must
    match the executor's, sign bits included."""
    model = make()
    x = _feeds(model, 5, 3)
    manifest = _compile(tmp_path_factory, "conv", model, "yao2020-resnet", _feeds(model, 8, 4),
                        replicate={"conv": replicas} if replicas > 1 else None)
    scales = calibrate_adc_full_scale(manifest.graph, manifest.target, x)
    common = dict(seed=2, adc_full_scale={n: v / 2 for n, v in scales.items()}, overrides=["nonideal.stuck_rate=0.02"])
    int8 = CrossbarBackend(gemm="int8", **common)
    want = Session(manifest, backend=int8).run(x)
    direct = CrossbarBackend(gemm="lut", conductance_grid=int8.grid, **common)
    session = Session(manifest, backend=direct)
    got = session.run(x)
    # work arrays reused: nothing stale (the samples keep their indices, so their copies)
    assert np.array_equal(session.run(x[::-1], samples=np.arange(len(x))[::-1]), got[::-1])
    rows = CrossbarBackend(gemm="lut", conductance_grid=int8.grid, diagnostics=True, **common)
    plan = direct.plans["conv"]
    assert plan.channels is not None and len(plan.blocks) == tiles and plan.replicas == replicas
    rows = CrossbarBackend(gemm="lut", conductance_grid=int8.grid, diagnostics=True, **common)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(Session(manifest, backend=rows).run(x).view(np.uint32), want.view(np.uint32))
    op = manifest.graph.xbar_ops()[0]                                # the accumulators alone (Backend.conv)
    q = quantize_activation(x, op.input_quant)
    assert np.array_equal(direct.conv(op, q), int8.conv(op, q))


@needs_numba
def test_lut_reads_on_the_fine_grid_match_float32(mcnn):
    """The default table grid (step / ~400, 6 nS against 0.54 uS of programming error) is as faithful as float32
    GEMMs: each layer's error against the exact product is the same within 2% (int8's 0.18 uS grid: 10%), and
    the top-1 class agrees (a read near an ADC threshold may round the other way, as with any summation order)."""
    manifest, calib, _x = mcnn
    scales = calibrate_adc_full_scale(manifest.graph, manifest.target, calib)
    rel, top = {}, {}
    for gemm in ("float32", "lut"):
        be = CrossbarBackend(seed=1, adc_full_scale=scales, gemm=gemm, diagnostics=True)
        top[gemm] = Session(manifest, backend=be).run(calib).argmax(1)
        rel[gemm] = [r["rel_error"] for r in be.layer_stats()]
        if gemm == "lut":
            assert be.grid > 300 and be.describe()["conductance_grid_us"] == pytest.approx(2.5 / be.grid)
    assert np.allclose(rel["lut"], rel["float32"], rtol=0.02)
    assert np.mean(top["lut"] == top["float32"]) >= 0.9


@needs_numba
def test_lut_grid_and_option_errors(mcnn):
    manifest, _, x = mcnn
    with pytest.raises(ConfigError, match="conductance_grid"):
        CrossbarBackend(conductance_grid=0)
    with pytest.raises(ConfigError, match="does not fit int8"):
        Session(manifest, backend=CrossbarBackend(gemm="int8", conductance_grid=100))
    with pytest.warns(UserWarning, match="per-read noise"):
        be = CrossbarBackend(gemm="lut", overrides=["nonideal.read_noise_sigma_us=0.1"])
        Session(manifest, backend=be).run(x)
    assert be.grid == 1
    with pytest.raises(ConfigError, match=r"adc.bits=24 .* 8-bit inputs of layer 'C1'.* at most 23 ADC bits"):
        Session(manifest, backend=CrossbarBackend(gemm="lut", overrides=["adc.bits=24"]))     # 2^24 x 2^8 >= 2^31
    Session(manifest, backend=CrossbarBackend(gemm="lut", overrides=["adc.bits=23"])).run(x)


def test_pattern_tables_and_plane_words_by_hand():
    """T[g, p] is the sum of the rows of group g whose bit is set in p; byte j of plane word g holds bit j of codes
    8g .. 8g + 7 (code 8g + i at bit i), zero codes padding the last word."""
    g = np.arange(1, 11, dtype=np.int64)[:, None] * np.array([[1, -1]])        # rows 1..10, two lines
    t = lut_reads.pattern_table(g)
    assert t.shape == (2, 256, 2) and t.dtype == np.int16
    assert t[0, 0b00000101].tolist() == [1 + 3, -4] and t[0, 255, 0] == sum(range(1, 9))
    assert t[1, 0b11].tolist() == [9 + 10, -19] and t[1, 0b100, 0] == 0                     # padded rows weigh 0
    assert t.ctypes.data % 64 == 0                                            # a 64-byte row: one cache line
    codes = np.arange(10, dtype=np.uint8)[None, :].repeat(2, axis=0)         # codes 0..9
    words = lut_reads.plane_words(codes)
    assert words.shape == (2, 2) and words.dtype == np.uint64
    # plane 0 of codes 0..7 (bits 0,1,0,1,...): 0b10101010; plane 1 (0,0,1,1,0,0,1,1): 0b11001100; plane 2: 0xF0
    assert words[0, 0:1].view(np.uint8).tolist() == [0b10101010, 0b11001100, 0b11110000, 0, 0, 0, 0, 0]
    # codes 8, 9 (then zero padding): plane 0 = 0b10 (9 is odd), plane 3 = 0b11 (both have bit 3)
    assert words[0, 1:2].view(np.uint8).tolist() == [0b10, 0, 0, 0b11, 0, 0, 0, 0]
    assert np.array_equal(words[0], words[1])
    nchw = np.arange(2 * 10 * 3 * 2, dtype=np.uint8).reshape(2, 10, 3, 2)
    padded = lut_reads.padded_plane_words(nchw, 8, (1, 0, 2, 1))
    assert padded.shape == (2, 6, 3, 2)
    assert np.array_equal(padded[:, 1:4, :2], lut_reads.plane_words(
        nchw.transpose(0, 2, 3, 1).reshape(-1, 10)).reshape(2, 3, 2, 2))
    assert not padded[:, [0, 4, 5]].any() and not padded[:, :, 2].any()      # the zero border
    signed = np.array([-1, -128, 5, 0, 0, 0, 0, 0], np.float32)[None, :, None, None]   # two's complement bytes
    assert np.array_equal(lut_reads.padded_plane_words(signed, 8, (0, 0, 0, 0))[0, 0, 0],
                          lut_reads.plane_words(np.array([[255, 128, 5, 0, 0, 0, 0, 0]], np.uint8))[0])


@needs_numba
@pytest.mark.parametrize("signed,bits", [(False, 8), (True, 8), (False, 4)])
def test_plane_words_quantise_as_the_executor(signed, bits):
    """The direct conv reads quantise float activations while forming the plane words: the same words as the
    executor's quantize_activation (x / scale in float32, rint with ties to even, clip) followed by the words of
    its codes, on values at and near the rounding ties (a float64 division rounds 40% of those the other way),
    beyond the clip, infinite and signed zero."""
    rng = np.random.default_rng(bits + signed)
    for scale in (0.0371, 1 / 3, 2.5e-3):
        q = ActQuant(scale, signed, bits)
        x = (rng.standard_normal((3, 13, 5, 7)) * scale * (1 << bits) / 3).astype(np.float32)
        ties = ((rng.integers(-300, 300, x.shape) + 0.5) * np.float32(scale)).astype(np.float32)
        x = np.where(rng.random(x.shape) < 0.5, ties, x).astype(np.float32)
        x[0, 0, 0, :4] = [np.inf, -np.inf, 0.0, -0.0]
        want = lut_reads.padded_plane_words(quantize_activation(x, q), bits, (1, 2, 0, 1))
        got = lut_reads.padded_plane_words(x, bits, (1, 2, 0, 1), quant=q)
        assert np.array_equal(got, want)
        assert got[0, 1, 2].view(np.uint8)[0] != 0                     # the words hold codes, not zeros


def _reads_by_loop(codes, g_int, weights, gain, lo, top, pairs, adc=None):
    """Every read one at a time: plane j of position i, current = bits . G, the ADC as adc_convert (with `adc`, an
    AdcLines: its per-line gain, offset and INL, applied by numpy), shift-and-add."""
    m, nb = len(codes), g_int.shape[1] // 2 if pairs else g_int.shape[1]
    out, clipped = np.zeros((m, nb), np.int64), 0
    for i in range(m):
        for j, w in enumerate(weights):
            bits = (codes[i].astype(np.int64) >> j) & 1
            v = np.float32(bits @ g_int) * np.float32(gain)
            if adc is not None:
                adc.apply(v, lo, top)
            v = np.rint(v)
            clipped += int(np.count_nonzero(v > top) + np.count_nonzero(v < lo))
            code = np.clip(v, lo, top).astype(np.int64)
            out[i] += w * (code[:nb] - code[nb:] if pairs else code)
    return out, clipped


@needs_numba
@pytest.mark.parametrize("rows,outputs,pairs,signed,bipolar,high,packed", [
    (144, 16, True, False, False, 400, True),     # one 144-row array, g+ and g- lines: one pass of 18 lookups
    (150, 300, True, True, False, 400, True),     # 19 groups (two passes), 600 lines in two pieces, negative MSB
    (80, 24, True, False, False, 400, True),      # 10 groups: a pass of 12 slots
    (37, 531, False, False, False, 400, True),    # a partial group (6 slots), odd lines: 512 + 19 in two pieces
    (37, 530, False, False, True, 400, False),    # bipolar lines (negative entries), codes below lo: int16 tables
    (100, 16, True, False, False, 4000, False),   # entries up to 8 x 3999 > 21845: too large to pack
])
@pytest.mark.parametrize("nonideal", [False, True], ids=["ideal-adc", "adc-gain-offset-inl"])
def test_lut_kernel_equals_a_read_by_read_loop(rows, outputs, pairs, signed, bipolar, high, packed, nonideal):
    """Both kernels (packed uint32 tables where every entry fits 0 .. 21845, int16 tables otherwise) against one
    read at a time; with a non-ideal ADC (per-line gain and offset, INL) against numpy's AdcLines.apply on each
    read's float32 values, bit for bit (the pieces' lines keep their own gain and offset, odd counts padded)."""
    rng = np.random.default_rng(rows)
    lines = 2 * outputs if pairs else outputs
    g_int = rng.integers(-300 if bipolar else 0, high, (rows, lines))
    codes = rng.integers(0, 256, (70, rows)).astype(np.uint8)
    codes[:, ::3] = 0
    codes[5] = 0                                                    # a position whose planes are all skipped
    codes[6] &= 0x0F                                                # high planes all zero
    weights = plane_weights(8, signed).astype(np.int64)
    lo, top = adc_range(8, bipolar)
    gain = top / (0.25 * rows * 400)                                # a quarter of the largest current: clips
    adc = None
    if nonideal:                        # errors large enough to move many codes (1.5 LSB offsets, 4 LSB of INL)
        adc = AdcLines(1 + 0.05 * rng.standard_normal(lines), 1.5 * rng.standard_normal(lines), 4.0)
    want, want_clipped = _reads_by_loop(codes, g_int, weights, gain, lo, top, pairs, adc)
    if nonideal:
        assert not np.array_equal(want, _reads_by_loop(codes, g_int, weights, gain, lo, top, pairs)[0])
    pieces = lut_reads.table_pieces(lut_reads.pattern_table(g_int), outputs, pairs, adc=adc)
    assert len(pieces) == -(-lines // lut_reads.MAX_LINES)
    assert all((piece.dtype == np.uint32) == packed for piece, *_ in pieces)
    out = np.zeros((len(codes), outputs), np.int64)
    clipped = lut_reads.read_tile(lut_reads.plane_words(codes), pieces, weights, gain, lo, top, pairs, out)
    assert want_clipped > 0 and clipped == want_clipped
    assert np.array_equal(out, want)



@needs_numba
@pytest.mark.parametrize("rows,positions,signed", [
    (104, 71, False),                     # 13 groups, an odd count: the last position is read alone
    (144, 2 * 128 + 1, True),             # 18 groups, over two blocks of 128 and one more; negative MSB weight
])
def test_packed_kernel_two_positions_at_a_time_equals_a_read_by_read_loop(rows, positions, signed):
    """The packed kernel reads tiles of 13 to 18 groups two positions per loop: a position whose high planes are
    zero beside one whose are not (its zero planes read as code 0), a position alone at the end of a block, against
    one read at a time."""
    rng = np.random.default_rng(rows)
    g_int = rng.integers(0, 400, (rows, 32))
    codes = rng.integers(0, 256, (positions, rows)).astype(np.uint8)
    codes[::2] &= 0x0F                                               # even positions: high planes all zero
    codes[3] = 0                                                     # a position with no bit set at all
    weights = plane_weights(8, signed).astype(np.int64)
    lo, top = adc_range(8, False)
    gain = top / (0.25 * rows * 400)                                 # a quarter of the largest current: clips
    want, want_clipped = _reads_by_loop(codes, g_int, weights, gain, lo, top, True)
    pieces = lut_reads.table_pieces(lut_reads.pattern_table(g_int), 16, True)
    assert [piece.dtype for piece, *_ in pieces] == [np.uint32]
    out = np.zeros((positions, 16), np.int64)
    clipped = lut_reads.read_tile(lut_reads.plane_words(codes), pieces, weights, gain, lo, top, True, out)
    assert want_clipped > 0 and clipped == want_clipped
    assert np.array_equal(out, want)

def test_lut_without_numba_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(lut_reads, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[fast\]'"):
        CrossbarBackend(gemm="lut")
