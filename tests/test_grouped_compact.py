"""A grouped conv keeps only its diagonal blocks (cimc.ir, "compact blocks"): checked against the K x N
block-diagonal form every pass and backend also reads (the slow reference; XbarOp.groups falls back to the conv's
groups for it). Same levels, scales, tiles, programmed arrays and outputs bit for bit, and no K x N matrix held."""
from __future__ import annotations

import copy

import numpy as np
import onnx_models as om
import pytest
from test_conv_nd import _unet

import cimc
from cimc import Session
from cimc.backends.crossbar import CrossbarBackend
from cimc.ir import dense
from cimc.layout import program_arrays, read_levels
from cimc.manifest import load
from cimc.passes.quantize import quantize_weights
from cimc.passes.tile import tiles_for

MODELS = {
    "small_cnn": om.small_cnn,                                   # group 2 and depthwise 8
    "depthwise48_k3": lambda: om.conv(cin=48, cout=48, k=3, hw=6, group=48, pads=[1, 1, 1, 1]),   # 3 groups/tile
    "group4_k5": lambda: om.conv(cin=24, cout=24, k=5, hw=7, group=4),   # 150-row blocks cross 144-row tiles
    "unet3d": _unet,                                             # grouped Conv3d (BN folded) + grouped ConvTranspose
}


def _dense(manifest):
    """The same manifest with every grouped op held as its K x N block-diagonal matrix (the form before)."""
    m = copy.deepcopy(manifest)
    for op in m.graph.xbar_ops():
        if op.matrix.ndim == 3:
            op.matrix, op.levels = dense(op.matrix), dense(op.levels)
    m.graph.share_weights()
    return m


def _compile(name):
    model = MODELS[name]()
    calib = om.random_feeds(model, batch=16, seed=0)
    return model, cimc.compile(model, "yao2020-resnet", calibration=calib)


@pytest.mark.parametrize("name", list(MODELS))
def test_compact_blocks_equal_the_dense_block_diagonal_path(name):
    model, manifest = _compile(name)
    slow = _dense(manifest)
    grouped = [op for op in manifest.graph.xbar_ops() if op.conv is not None and op.conv.groups > 1]
    assert grouped
    target = manifest.target
    for op, ref in zip(manifest.graph.xbar_ops(), slow.graph.xbar_ops()):
        assert (op.rows, op.cols, op.groups) == (ref.rows, ref.cols, ref.groups)
        levels, scales = quantize_weights(ref.matrix, target.device.max_level, target.quant.weights)
        np.testing.assert_array_equal(dense(op.levels), levels)
        np.testing.assert_array_equal(op.weight_scales, scales)
        tiles = tiles_for(ref, target.array.inputs_per_tile, target.array.outputs_per_tile)
        assert [(t.row_start, t.row_count, t.col_start, t.col_count) for t in op.tiles] == \
            [(t.row_start, t.row_count, t.col_start, t.col_count) for t in tiles]
        np.testing.assert_array_equal(dense(read_levels(op, manifest.arrays, target)),
                                      read_levels(ref, manifest.arrays, target))
    np.testing.assert_array_equal(program_arrays(manifest.graph, target), program_arrays(slow.graph, target))
    np.testing.assert_array_equal(program_arrays(manifest.graph, target), manifest.arrays)
    x = om.random_feeds(model, batch=3, seed=1)
    for backend, options in (("integer", {}), ("crossbar", {"ideal": True}), ("crossbar", {"seed": 1}),
                             ("crossbar", {"seed": 1, "gemm": "float32"})):
        np.testing.assert_array_equal(Session(manifest, backend, **options).run(x),
                                      Session(slow, backend, **options).run(x), err_msg=f"{backend} {options}")
    # ideal devices, lossless ADC: the crossbar backend equals the integer reference bit for bit
    np.testing.assert_array_equal(Session(manifest, "crossbar", ideal=True).run(x),
                                  Session(manifest, "integer").run(x))
    # float: the same products, summed group by group instead of over the zeros too
    want = Session(slow, "float").run(x)
    np.testing.assert_allclose(Session(manifest, "float").run(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_depthwise_layer_holds_no_k_by_n_matrix(tmp_path):
    """256 channels, 3x3: 2,304 weights; its K x N form would hold 256 times as many cells (589,824)."""
    model = om.conv(cin=256, cout=256, k=3, hw=4, group=256, pads=[1, 1, 1, 1])
    manifest = cimc.compile(model, "yao2020-resnet", calibration=om.random_feeds(model, batch=4, seed=0))
    op = manifest.graph.xbar_ops()[0]
    weights = 256 * 9
    assert (op.rows, op.cols) == (256 * 9, 256)
    assert op.matrix.size == op.levels.size == weights
    chip = CrossbarBackend(ideal=True)
    chip.bind(manifest.graph, manifest.arrays, manifest.target)
    plan = chip.plans[op.name]
    assert plan.exact_levels.size == weights and all(e.size == weights for e in plan.effective)
    manifest.save(tmp_path / "m")
    loaded = load(tmp_path / "m")
    with np.load(tmp_path / "m" / "params.npz") as params:
        assert max(v.size for v in params.values()) == weights       # params.npz stores the blocks alone
    lop = loaded.graph.xbar_ops()[0]
    assert lop.matrix.size == lop.levels.size == weights
    np.testing.assert_array_equal(lop.levels, op.levels)
    x = om.random_feeds(model, batch=2, seed=1)
    np.testing.assert_array_equal(Session(loaded, "integer").run(x), Session(manifest, "integer").run(x))


def test_a_manifest_with_the_k_by_n_matrix_still_loads(tmp_path):
    """Manifests written before compact blocks hold a grouped op's float matrix K x N: it loads to the same blocks,
    and a weight outside the diagonal blocks is refused, naming the field."""
    model = om.conv(cin=8, cout=8, k=3, hw=5, group=4, pads=[1, 1, 1, 1])
    manifest = cimc.compile(model, "yao2020-resnet", calibration=om.random_feeds(model, batch=4, seed=0))
    manifest.save(tmp_path / "m")
    params_file = tmp_path / "m" / "params.npz"
    with np.load(params_file) as f:
        params = dict(f)
    key = next(k for k in params if k.endswith("float_matrix"))
    params[key] = dense(params[key])
    np.savez(params_file, **params)
    loaded = load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.graph.xbar_ops()[0].matrix, manifest.graph.xbar_ops()[0].matrix)
    params[key][0, -1] = 1.0                                      # row 0 is group 0's; the last column group 3's
    np.savez(params_file, **params)
    with pytest.raises(cimc.errors.ManifestError, match=r"float_matrix|groups"):
        load(tmp_path / "m")
