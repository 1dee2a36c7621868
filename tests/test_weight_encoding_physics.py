"""Offset and bit-sliced weights (cimc.weight_encoding) through a real chip: the ADC full scale calibrated from
every device (or slice) line's ideal current, checked against a read-by-read loop over tiles, planes, bit-planes and
lines."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_models as om
import pytest

import cimc
from cimc import Session
from cimc.backends.crossbar import CrossbarBackend, calibrate_adc_full_scale
from cimc.executor import quantize_activation, run_graph
from cimc.im2col import im2col
from cimc.layout import program_arrays
from cimc.weight_encoding import tile_planes

ENCODED = {
    "offset": ("yao2020-resnet", ["weights.encoding=offset"]),
    "sliced-columns": ("yao2020-resnet", ["weights.encoding=bit-sliced", "weights.slices=2", "device.levels=4"]),
    "sliced-rows": ("li2018", ["weights.encoding=bit-sliced", "weights.slices=2", "chip.chips=0",
                               "input.encoding=bit-serial"]),
    "offset-rows": ("li2018", ["weights.encoding=offset", "chip.chips=0", "input.encoding=bit-serial"]),
}


@pytest.fixture(scope="module", params=list(ENCODED))
def compiled(request, tmp_path_factory):
    """small_cnn (signed inputs, grouped and depthwise convs, two copies of conv1, an FC head), compiled with 16
    calibration samples (all of them read by the ADC calibration), and 4 test samples."""
    target, overrides = ENCODED[request.param]
    model = om.small_cnn()
    path = tmp_path_factory.mktemp("encp") / "small_cnn.onnx"
    onnx.save(model, path)
    calib = next(iter(om.random_feeds(model, 16, 1).values()))
    manifest = cimc.compile(path, target, calibration=calib, overrides=overrides, replicate={"conv1": 2})
    return request.param, manifest, calib, next(iter(om.random_feeds(model, 4, 2).values()))


def _slow_peaks_ua(manifest, x) -> dict:
    """The calibration rule read by read: for every op, every tile, every device plane (cimc.weight_encoding) and
    every input bit-plane, the ideal line currents V_read * sum_r bit_r * g_r with g = g_min + level * step; a
    +v/-v row pair ("rows" layout, not offset) carries g+ - g- and counts by magnitude."""
    target = manifest.target
    arrays = program_arrays(manifest.graph, target)
    seen = {}
    run_graph(manifest.graph, {manifest.graph.inputs[0].name: x}, Session(manifest, backend="integer").backend,
              observe=lambda op, a: seen.__setitem__(op.name, quantize_activation(a, op.input_quant)))
    dev, v = target.device, target.input.read_voltage_v
    pairs = target.array.differential == "rows" and target.weights.encoding != "offset"
    peaks = {}
    for op in manifest.graph.xbar_ops():
        rows = im2col(seen[op.name], op.conv)[0] if op.conv is not None else seen[op.name].reshape(-1, op.rows)
        u = rows.astype(np.int64) & ((1 << op.input_quant.bits) - 1)       # two's complement bits
        peak = 0.0
        for t in op.tiles:
            p = t.placements[0]
            g = [dev.g_min_us + arrays[p.array][plane].astype(np.float64) * dev.step_us
                 for plane in tile_planes(t, p, target)]
            lines = [g[k] - g[k + 1] for k in range(0, len(g), 2)] if pairs else g
            for j in range(op.input_quant.bits):
                bits = ((u[:, t.row_start:t.row_start + t.row_count] >> j) & 1).astype(np.float64)
                for line in lines:
                    peak = max(peak, float(np.abs(bits @ line).max()) * v)
        peaks[op.name] = peak
    return peaks


def test_compile_calibrates_each_layer_from_its_slice_and_offset_lines(compiled):
    name, manifest, calib, x = compiled
    want = _slow_peaks_ua(manifest, calib)
    stored = {op.name: op.adc_full_scale_ua for op in manifest.graph.xbar_ops()}
    assert stored == pytest.approx(want, rel=1e-6) and all(v > 0 for v in stored.values())
    assert calibrate_adc_full_scale(manifest.graph, manifest.target, calib) == pytest.approx(want, rel=1e-6)
    be = CrossbarBackend(overrides=["nonideal.program_sigma_us=0"])
    y = Session(manifest, backend=be).run(x)
    assert all(p.full_scale_source == "calibrated (manifest)" for p in be.plans.values())
    # against 'max': a calibrated full scale is a finer LSB, so the ideal devices' reads land closer to the integer
    y_max = Session(manifest, backend=CrossbarBackend(overrides=["nonideal.program_sigma_us=0",
                                                                 "adc.full_scale=max"])).run(x)
    ref = Session(manifest, backend="integer").run(x)
    assert np.linalg.norm(y - ref) < np.linalg.norm(y_max - ref)
