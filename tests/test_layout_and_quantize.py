"""Quantisation on hand-computed cases; tiles and the physical layout of device pairs."""
from __future__ import annotations

import numpy as np
import onnx_models as om
import pytest

import cimc
from cimc.ir import XbarOp, dense
from cimc.layout import program_arrays, read_levels
from cimc.passes.quantize import act_quant_from_stats, quantize_weights
from cimc.passes.tile import tiles_for
from cimc.targets.registry import load_target


def test_weight_quantisation_hand_computed():
    w = np.array([[0.875, 0.0], [-0.4375, 0.0], [0.125, 0.0], [0.0625, 0.0], [0.1875, 0.0]], np.float32)
    levels, scales = quantize_weights(w, 7, "column")
    # column 0: scale 0.875 / 7 = 0.125; -3.5 rounds half to even -> -4, 0.5 -> 0, 1.5 -> 2
    np.testing.assert_array_equal(levels[:, 0], [7, -4, 1, 0, 2])
    assert scales[0] == np.float32(0.125) and scales[1] == 1.0 and not levels[:, 1].any()


def test_activation_rule_hand_computed():
    q = act_quant_from_stats({"min": 0.0, "absmax": 5.1, "percentile": 4.0}, 8, "max", 99.9)
    assert (q.signed, q.qmin, q.qmax, q.scale) == (False, 0, 255, pytest.approx(0.02))
    q = act_quant_from_stats({"min": -1.0, "absmax": 12.7, "percentile": 6.35}, 8, "percentile", 99.9)
    assert (q.signed, q.qmin, q.qmax, q.scale) == (True, -127, 127, pytest.approx(0.05))


def test_depthwise_tiles_skip_structural_zeros():
    # 32-channel depthwise 3x3: K = 288, N = 32, block diagonal; 144x8 tiles: 2 x 4 grid, only 4 tiles non-empty
    op = XbarOp("dw", "Conv", ["x"], ["y"], np.zeros((288, 32), np.float32), None)
    op.conv = type("G", (), {"groups": 32})()
    tiles = tiles_for(op, 144, 8)
    assert [(t.row_start, t.col_start) for t in tiles] == [(0, 0), (0, 8), (144, 16), (144, 24)]


@pytest.mark.parametrize("target,overrides", [("yao2020-resnet", None), ("li2018", ["chip.chips=0"])])
def test_arrays_hold_the_levels_of_every_replica(target, overrides):
    model = om.small_cnn()
    manifest = cimc.compile(model, target, calibration=om.random_feeds(model, batch=8, seed=0),
                            replicate={"gemm1": 3}, overrides=overrides)
    t = manifest.target
    for op in manifest.graph.xbar_ops():
        for copy in range(op.replicas):
            levels = dense(read_levels(op, manifest.arrays, t, copy))   # K x N (a grouped op's are compact)
            expected = np.zeros_like(levels)
            for tile in op.tiles:  # structural zeros of a grouped conv are not stored
                sl = (slice(tile.row_start, tile.row_start + tile.row_count),
                      slice(tile.col_start, tile.col_start + tile.col_count))
                expected[sl] = dense(op.levels)[sl]
            np.testing.assert_array_equal(levels, expected)


def test_column_pairs_hand_checked():
    """A 2x2 weight tile on a 4x4 columns-differential array: g+ on even, g- on odd output lines."""
    target = load_target("ideal", ["array.rows=4", "array.cols=4"])
    model = om.gemm(k=2, m=2, bias="none")
    manifest = cimc.compile(model, target, calibration=om.random_feeds(model, batch=8, seed=0))
    op = manifest.graph.xbar_ops()[0]
    op.levels[:] = np.array([[3, -2], [0, 7]], np.int8)
    arrays = program_arrays(manifest.graph, target)
    np.testing.assert_array_equal(arrays[0], [[3, 0, 0, 2], [0, 0, 7, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
