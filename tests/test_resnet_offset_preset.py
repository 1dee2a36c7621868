"""The `resnet-offset` preset: yao2020-resnet's 144x16 arrays with offset weights and a reference column per array
(`weights.offset_reference = "column"`). Its geometry against a hand count: 15 outputs beside the reference column,
the reference devices at the offset level (3 of Yao's 8) on the rows each tile drives; `cimc targets --json` lists
its encoding; ResNet-56 takes ceil(rows/144) x ceil(cols/15) arrays per layer."""
from __future__ import annotations

import json

import numpy as np
import onnx_models as om
import pytest

import cimc
from cimc import Session
from cimc.cli import main
from cimc.layout import program_arrays, read_levels
from cimc.targets.registry import load_target


def test_the_preset_is_yao2020_resnet_with_a_reference_column():
    t, yao = load_target("resnet-offset"), load_target("yao2020-resnet")
    assert (t.weights.encoding, t.weights.offset_reference, t.array.reference_column) == ("offset", "column", 15)
    assert (t.array.inputs_per_tile, t.array.outputs_per_tile, t.max_weight_level) == (144, 15, 3)
    # everything but the weights is Yao's
    for section in ("array", "device", "input", "adc", "nonideal", "chip"):
        assert getattr(t, section) == getattr(yao, section), section


@pytest.mark.parametrize("model,rows,cols", [(om.matmul(k=200, m=20), 200, 20),
                                             (om.conv(cin=20, cout=20, k=3, bias=False), 20 * 3 * 3, 20)],
                         ids=["matmul", "conv"])
def test_a_small_model_lays_out_as_counted_by_hand(model, rows, cols):
    """rows x cols weights: row tiles of 144 (and the rest), column tiles of 15 (and the rest), one array each;
    every array's column 15 holds level 3 on the rows its tile drives and 0 below; the weight columns hold w + 3."""
    row_tiles = [(r, min(144, rows - r)) for r in range(0, rows, 144)]
    col_tiles = [(c, min(15, cols - c)) for c in range(0, cols, 15)]
    assert cimc.count(model, "resnet-offset")["total_arrays"] == len(row_tiles) * len(col_tiles) == 4
    calib = next(iter(om.random_feeds(model, 16, 1).values()))
    m = cimc.compile(model, "resnet-offset", calibration=calib)
    op = m.graph.xbar_ops()[0]
    assert op.levels.shape == (rows, cols) and -3 <= op.levels.min() and op.levels.max() <= 3
    assert sorted((tl.row_start, tl.row_count, tl.col_start, tl.col_count) for tl in op.tiles) == \
        sorted((r, nr, c, nc) for r, nr in row_tiles for c, nc in col_tiles)
    arrays = program_arrays(m.graph, m.target)
    assert arrays.shape == (4, 144, 16)
    for tl in op.tiles:
        (p,) = tl.placements
        assert (p.row_offset, p.col_offset) == (0, 0)
        a = arrays[p.array]
        np.testing.assert_array_equal(a[:tl.row_count, :tl.col_count],
                                      op.levels[tl.row_start:tl.row_start + tl.row_count,
                                                tl.col_start:tl.col_start + tl.col_count] + 3)
        assert (a[:tl.row_count, 15] == 3).all() and (a[tl.row_count:, :] == 0).all()
        assert (a[:, tl.col_count:15] == 0).all()                   # a narrow tile leaves its columns empty
    np.testing.assert_array_equal(read_levels(op, arrays, m.target), op.levels)
    x = next(iter(om.random_feeds(model, 3, 2).values()))
    np.testing.assert_array_equal(Session(m, backend="crossbar", ideal=True).run(x),
                                  Session(m, backend="integer").run(x))


def test_targets_json_lists_the_preset_with_its_encoding(capsys):
    assert main(["targets", "--json"]) == 0
    shown = {t["name"]: t["weights"] for t in json.loads(capsys.readouterr().out)["targets"]}
    assert shown["resnet-offset"] == {"encoding": "offset", "slices": 1, "offset_reference": "column"}
    assert main(["targets"]) == 0
    assert "resnet-offset    144x16 (offset weights, reference column, 144 in x 15 out per array)" in \
        capsys.readouterr().out
