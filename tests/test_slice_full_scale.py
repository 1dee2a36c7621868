"""A calibrated ADC full scale per slice for bit-sliced weights (`adc.full_scale_per_slice`): compile records each
slice's largest ideal line current beside the layer's, the manifest keeps them (old manifests, without, still load),
and the float32 and int8 readers convert each slice's lines in its own range, checked against a slow loop over
reads and lines."""
from __future__ import annotations

import json

import numpy as np
import onnx_models as om
import pytest

import cimc
from cimc import Session
from cimc.backends.bit_planes import plane_weights
from cimc.backends.crossbar import CrossbarBackend
from cimc.errors import ManifestError, TargetError
from cimc.executor import quantize_activation, run_graph
from cimc.im2col import im2col
from cimc.layout import program_arrays
from cimc.targets.adc import adc_convert, adc_range
from cimc.targets.registry import load_target
from cimc.weight_encoding import tile_planes

SLICED = {"columns": ("yao2020-resnet", ["weights.encoding=bit-sliced", "weights.slices=2", "device.levels=4"]),
          "rows": ("li2018", ["weights.encoding=bit-sliced", "weights.slices=2", "input.encoding=bit-serial"])}
PER_SLICE = ["adc.full_scale_per_slice=true"]


@pytest.fixture(scope="module", params=list(SLICED))
def compiled(request):
    """small_cnn (signed inputs, grouped and depthwise convs, two copies of conv1), 16 calibration samples (all read
    by the ADC calibration), 6 test samples."""
    target, overrides = SLICED[request.param]
    model = om.small_cnn()
    calib = next(iter(om.random_feeds(model, 16, 1).values()))
    m = cimc.compile(model, target, calibration=calib, overrides=overrides + ["chip.chips=0"],
                     replicate={"conv1": 2})
    return m, calib, next(iter(om.random_feeds(model, 6, 2).values()))


def _slow_slice_peaks_ua(manifest, x) -> dict:
    """Per op, per slice: the largest ideal line current over every tile, input bit-plane and line of that slice
    (g = g_min + level x step on g+_s and g-_s lines; a +v/-v row pair carries g+ - g-, by magnitude)."""
    t = manifest.target
    arrays = program_arrays(manifest.graph, t)
    seen = {}
    run_graph(manifest.graph, {manifest.graph.inputs[0].name: x}, Session(manifest, backend="integer").backend,
              observe=lambda op, a: seen.__setitem__(op.name, quantize_activation(a, op.input_quant)))
    dev, v = t.device, t.input.read_voltage_v
    pairs = t.array.differential == "rows"
    peaks = {}
    for op in manifest.graph.xbar_ops():
        rows = im2col(seen[op.name], op.conv)[0] if op.conv is not None else seen[op.name].reshape(-1, op.rows)
        u = rows.astype(np.int64) & ((1 << op.input_quant.bits) - 1)
        peak = [0.0] * t.weights.slices
        for tl in op.tiles:
            p = tl.placements[0]
            g = [dev.g_min_us + arrays[p.array][plane].astype(np.float64) * dev.step_us
                 for plane in tile_planes(tl, p, t)]                  # g+_0, g-_0, g+_1, g-_1
            for s in range(t.weights.slices):
                lines = [g[2 * s] - g[2 * s + 1]] if pairs else [g[2 * s], g[2 * s + 1]]
                for j in range(op.input_quant.bits):
                    bits = ((u[:, tl.row_start:tl.row_start + tl.row_count] >> j) & 1).astype(np.float64)
                    for line in lines:
                        peak[s] = max(peak[s], float(np.abs(bits @ line).max()) * v)
        peaks[op.name] = peak
    return peaks


def test_compile_records_each_slices_peak(compiled):
    m, calib, _ = compiled
    want = _slow_slice_peaks_ua(m, calib)
    for op in m.graph.xbar_ops():
        assert op.adc_slice_full_scale_ua == pytest.approx(want[op.name], rel=1e-6)
        assert op.adc_full_scale_ua == pytest.approx(max(want[op.name]), rel=1e-6)   # the layer's: the largest
    assert any(min(v) < 0.9 * max(v) for v in want.values())          # slices do differ


def _slow_reads(be, op, x):
    """Copy 0, one read at a time: per row tile, input bit-plane and line (its current from the chip's conductances
    with g_min's part, or a +v/-v line's difference), the ADC with its slice's full scale, codes shifted and added
    over bit-planes, times L^s (minus for g-) and its slice's LSB FS_s / top."""
    t, plan = be.target, be.plans[op.name]
    pairs = t.array.differential == "rows"
    lo, top = adc_range(t.adc.bits, plan.bipolar)
    bits = op.input_quant.bits
    pw = plane_weights(bits, op.input_quant.signed)
    u = x.astype(np.int64) & ((1 << bits) - 1)
    out = np.zeros((len(x), op.cols))
    for tl in op.tiles:
        p = tl.placements[0]
        g = be.chip.g_units[p.array]
        planes = tile_planes(tl, p, t)
        for s in range(t.weights.slices):
            fs = plan.slice_full_scale[s]
            sides = [(planes[2 * s], planes[2 * s + 1], 1.0)] if pairs else \
                [(planes[2 * s], None, 1.0), (planes[2 * s + 1], None, -1.0)]
            for (rows, cols), minus, sign in sides:
                for jj, col in enumerate(range(cols.start, cols.stop, cols.step)):
                    line = g[rows, col] - g[minus[0], col] if pairs else g[rows, col] + be.offset
                    for i in range(len(x)):
                        xb = u[i, tl.row_start:tl.row_start + tl.row_count]
                        for j in range(bits):
                            cur = np.float32(((xb >> j) & 1) @ line)
                            code = adc_convert(np.array([cur], np.float32), t.adc.bits, fs, plan.bipolar)[0][0]
                            out[i, tl.col_start + jj] += sign * t.device.levels ** s * pw[j] * code * fs / top
    return out


@pytest.mark.parametrize("gemm", ["float32", "int8"])
def test_reads_convert_each_slice_in_its_own_range(compiled, gemm):
    """Programming error (non-integer currents), a 6-bit ADC: the backend equals the slow loop read by read."""
    m, _, x = compiled
    op = m.graph.xbar_ops()[-1]                  # the FC head: a MatMul
    be = CrossbarBackend(seed=3, gemm=gemm, overrides=PER_SLICE + ["nonideal.program_sigma_us=0.3",
                                                                   "nonideal.stuck_rate=0", "adc.bits=6"])
    be.bind(m.graph, None, m.target)
    assert be.reader == gemm and be.plans[op.name].slice_full_scale is not None
    q = op.input_quant
    codes = np.random.default_rng(1).integers(q.qmin, q.qmax + 1, (3, op.rows)).astype(np.float32)
    got = be.mvm(op, codes, len(codes)).astype(np.float64)
    if gemm == "float32":
        want = _slow_reads(be, op, codes)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    else:                                        # the int8 grid's currents: close to the float32 reads
        ref = CrossbarBackend(seed=3, gemm="float32", overrides=PER_SLICE + ["nonideal.program_sigma_us=0.3",
                                                                           "nonideal.stuck_rate=0", "adc.bits=6"])
        ref.bind(m.graph, None, m.target)
        want = ref.mvm(op, codes, len(codes)).astype(np.float64)
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    layer = CrossbarBackend(seed=3, gemm=gemm, overrides=["nonideal.program_sigma_us=0.3", "nonideal.stuck_rate=0",
                                                          "adc.bits=6"])
    layer.bind(m.graph, None, m.target)
    assert not np.array_equal(got, layer.mvm(op, codes, len(codes)))     # the per-slice ranges show


def test_finer_slices_err_less_and_the_lut_reader_falls_back(compiled):
    """A 6-bit ADC: each slice in its own range lands closer to the integer reference (ideal devices); gemm='lut'
    fuses one full scale per layer, so it warns and reads float32, which describe() says."""
    m, _, x = compiled
    ref = Session(m, backend="integer").run(x)
    ideal = ["nonideal.program_sigma_us=0", "nonideal.stuck_rate=0", "adc.bits=6"]
    one = Session(m, backend=CrossbarBackend(overrides=ideal, gemm="float32")).run(x)
    with pytest.warns(UserWarning, match="full_scale_per_slice"):
        be = CrossbarBackend(overrides=ideal + PER_SLICE, gemm="lut")
        each = Session(m, backend=be).run(x)
    assert be.reader == "float32"
    d = be.describe()["adc_full_scale"]
    assert all(v["source"] == "calibrated (manifest), per slice" and len(v["slices_ua"]) == 2 for v in d.values())
    assert np.linalg.norm(each - ref) < np.linalg.norm(one - ref)


def test_manifests_keep_them_and_old_ones_read_with_one_full_scale(compiled, tmp_path):
    m, _, x = compiled
    m.save(tmp_path / "m")
    back = cimc.load(tmp_path / "m")
    assert [op.adc_slice_full_scale_ua for op in back.graph.xbar_ops()] == \
        [op.adc_slice_full_scale_ua for op in m.graph.xbar_ops()]             # JSON keeps float64 exactly
    doc = json.loads((tmp_path / "m" / "manifest.json").read_text())
    for op in doc["ops"]:
        op.pop("adc_slice_full_scale_ua", None)             # as written before they were recorded
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(doc))
    old = cimc.load(tmp_path / "m")
    with pytest.warns(UserWarning, match="no per-slice full scales are known"):
        y = Session(old, backend=CrossbarBackend(overrides=PER_SLICE + ["adc.bits=6"], gemm="float32")).run(x)
    np.testing.assert_array_equal(y, Session(old, backend=CrossbarBackend(overrides=["adc.bits=6"],
                                                                          gemm="float32")).run(x))
    first = next(op for op in doc["ops"] if op["kind"] == "crossbar")
    first["adc_slice_full_scale_ua"] = [1.0]                                 # one for two slices
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="adc_slice_full_scale_ua"):
        cimc.load(tmp_path / "m")


def test_only_bit_sliced_weights_take_it():
    with pytest.raises(TargetError, match="adc.full_scale_per_slice"):
        load_target("yao2020-resnet", PER_SLICE)
    assert load_target("resnet-bitsliced", PER_SLICE).adc.full_scale_per_slice is True
