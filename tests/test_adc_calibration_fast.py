"""The ADC calibration's fast paths give the same full scales, bit for bit, as the slow ones they replaced: the lean
ideal chip (Chip(levels_only=True): uint8 levels, no float64 conductances) as the full chip instance, and the
batched reads of row tiles of one shape as one MatMulInteger per row tile, and the accumulators taken as the codes'
own product (record_reader's fused read) as shift-and-add of the plane currents."""
from __future__ import annotations

import numpy as np
import onnx_models as om
import pytest

import cimc
from cimc.backends import chip as chip_module
from cimc.backends import crossbar, record_reader
from cimc.backends.bit_planes import CHUNK_ELEMENTS, CURRENT_ELEMENTS, bit_planes_uint, plane_weights
from cimc.backends.crossbar import calibrate_adc_full_scale
from cimc.targets.registry import load_target

MODELS = {
    "small_cnn": om.small_cnn,                                   # group 2 and depthwise 8
    "depthwise48_k3": lambda: om.conv(cin=48, cout=48, k=3, hw=6, group=48, pads=[1, 1, 1, 1]),
    "group4_k5": lambda: om.conv(cin=24, cout=24, k=5, hw=7, group=4),
    "depthwise96_k3": lambda: om.conv(cin=96, cout=96, k=3, hw=6, group=96, pads=[1, 1, 1, 1]),   # 6 row tiles
}


class _FullChip(chip_module.Chip):
    """The chip the calibration built before: every cell's conductance programmed in float64."""
    def __init__(self, target, levels, seed=0, defect_map=None, levels_only=False):
        super().__init__(target, levels, seed, defect_map)


@pytest.mark.parametrize("target", ["yao2020-resnet", "li2018"])
@pytest.mark.parametrize("name", list(MODELS))
def test_levels_only_chip_calibrates_as_the_full_chip(name, target, monkeypatch):
    model = MODELS[name]()
    calib = om.random_feeds(model, batch=8, seed=0)
    manifest = cimc.compile(model, target, calibration=calib, overrides=["chip.chips=0"])   # li2018: 1 array
    fast = calibrate_adc_full_scale(manifest.graph, manifest.target, calib, arrays=manifest.arrays)
    assert fast and {op.name: op.adc_full_scale_ua for op in manifest.graph.xbar_ops()} == fast
    monkeypatch.setattr(crossbar, "Chip", _FullChip)
    slow = calibrate_adc_full_scale(manifest.graph, manifest.target, calib, arrays=manifest.arrays)
    assert fast == slow


def test_levels_only_refuses_a_non_ideal_target():
    from cimc.targets.registry import load_target
    target = load_target("yao2020-resnet")
    with pytest.raises(ValueError, match="levels_only"):
        chip_module.Chip(target, np.zeros((1, target.array.rows, target.array.cols), np.uint8), levels_only=True)


def _record_exact_by_block(self, plan, c, xi):         # a RecordReader's method
    """The calibration's reads before batching: one MatMulInteger per row tile and chunk of rows."""
    columns = self.target.array.differential == "columns"
    n = plan.bits
    w = plane_weights(n, plan.signed).astype(np.int64)
    out = np.zeros((len(xi), plan.cols), np.int64)
    peak = self.peaks[plan.name]
    for block in plan.blocks:
        r, nb = block.r1 - block.r0, len(block.cols)
        mat = block.quantised[c]
        chunk = max(1, min(CHUNK_ELEMENTS // (n * r), CURRENT_ELEMENTS // (n * mat.shape[1])))
        for s in range(0, len(xi), chunk):
            xb = xi[s:s + chunk, block.r0:block.r1]
            planes = bit_planes_uint(xb, n, np.empty((n,) + xb.shape, np.uint8))
            cur = self.session.run(None, {"A": planes.reshape(-1, r), "B": mat})[0]
            if cur.size:
                peak = max(peak, float(cur.max()), 0.0 if columns else -float(cur.min()))
            acc = np.einsum("jmn,j->mn", cur.reshape(n, len(xb), -1).astype(np.int64), w)
            out[s:s + chunk, block.index] += acc[:, :nb] - acc[:, nb:] if columns else acc
    self.peaks[plan.name] = peak
    return out.astype(plan.dtype)


@pytest.mark.parametrize("target", ["yao2020-resnet", "li2018"])
@pytest.mark.parametrize("name", ["small_cnn", "depthwise96_k3"])
def test_batched_reads_calibrate_as_one_read_per_row_tile(name, target, monkeypatch):
    model = MODELS[name]()
    calib = om.random_feeds(model, batch=8, seed=0)
    manifest = cimc.compile(model, target, calibration=calib, overrides=["chip.chips=0"])
    fast = calibrate_adc_full_scale(manifest.graph, manifest.target, calib, arrays=manifest.arrays)
    with monkeypatch.context() as m:        # small chunks: row tiles split into runs, rows into chunks
        m.setattr(record_reader, "CHUNK_ELEMENTS", 1 << 13)
        m.setattr(record_reader, "CURRENT_ELEMENTS", 1 << 11)
        assert calibrate_adc_full_scale(manifest.graph, manifest.target, calib, arrays=manifest.arrays) == fast
    monkeypatch.setattr(record_reader.RecordReader, "record_exact", _record_exact_by_block)
    assert calibrate_adc_full_scale(manifest.graph, manifest.target, calib, arrays=manifest.arrays) == fast


@pytest.mark.parametrize("bits", [4, 8])
def test_fused_reads_calibrate_as_shift_and_add_of_the_planes(bits, monkeypatch):
    """Signed first-layer codes on fewer than 8 bits (sign-extended to int8) and unsigned ones: the fused read's
    accumulators (codes x matrices) and peaks equal the per-row-tile reads that add the plane currents."""
    model = MODELS["small_cnn"]()
    calib = om.random_feeds(model, batch=8, seed=0)          # normal samples: the first layer's codes are signed
    manifest = cimc.compile(model, "yao2020-resnet", calibration=calib, overrides=["chip.chips=0", f"input.bits={bits}"])
    signed = [op.input_quant.signed for op in manifest.graph.xbar_ops()]
    assert any(signed) and not all(signed) and manifest.graph.xbar_ops()[0].input_quant.bits == bits
    fused = record_reader.RecordReader._fused_record_session
    used = []
    monkeypatch.setattr(record_reader.RecordReader, "_fused_record_session",
                        lambda self, signed: used.append(signed) or fused(self, signed))
    fast = calibrate_adc_full_scale(manifest.graph, manifest.target, calib, arrays=manifest.arrays)
    assert set(used) == {True, False}
    monkeypatch.setattr(record_reader.RecordReader, "record_exact", _record_exact_by_block)
    assert calibrate_adc_full_scale(manifest.graph, manifest.target, calib, arrays=manifest.arrays) == fast


def test_non_integer_lines_calibrate_alike_in_any_chunking(mcnn_dir, monkeypatch):
    """256-level devices do not fit the exact int8 reads, so the calibration reads float sums; its full scales must
    not depend on how many reads go into one product (a BLAS sgemm's sum order does; so do its threads, which moved
    C3's full scale in its last bits under OPENBLAS_NUM_THREADS=1): small chunks equal the default ones bit for bit,
    and both equal the largest line current formed read by read in float64 from the plans' own lines (exact: at most
    128 float32 conductances below 2^9 per sum), rounded once to float32 as the readers' currents are."""
    m = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz",
                     overrides=["device.levels=256"], optimize=False)
    target = load_target(m.target, ["nonideal.program_sigma_us=0"])
    data = np.random.default_rng(5).random((6, 1, 28, 28), dtype=np.float32)
    peaks, units = {}, {}
    record = record_reader.RecordReader.record

    def record_and_read_one_by_one(self, plan, c, x):
        codes = record_reader.uint_codes(x, plan.bits, plan.signed).astype(np.int64)
        for block in plan.blocks:
            lines = block.lines[c].astype(np.float64)
            for row in codes[:, block.r0:block.r1]:
                for j in range(plan.bits):
                    current = ((row >> j) & 1).astype(np.float64) @ lines
                    peaks[plan.name] = max(peaks.get(plan.name, 0.0), float(np.abs(current).max()))
        units[plan.name] = plan.unit_ua
        return record(self, plan, c, x)

    with monkeypatch.context() as mp:
        mp.setattr(record_reader.RecordReader, "record", record_and_read_one_by_one)
        default = crossbar.calibrate_adc_full_scale(m.graph, target, data)
    assert set(peaks) == set(default) == {op.name for op in m.graph.xbar_ops()}
    assert default == {name: float(np.float32(peaks[name])) * units[name] for name in peaks}
    with monkeypatch.context() as mp:
        mp.setattr(record_reader, "CHUNK_ELEMENTS", 1 << 10)
        assert crossbar.calibrate_adc_full_scale(m.graph, target, data) == default
