"""ResNet-56 (CIFAR-10): the array counts on yao2020-resnet and the float backend against onnxruntime."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort

import cimc
from cimc import Session, zoo
from cimc.cli import main


def test_count_without_replication_is_740(resnet56_path):
    table = cimc.count(resnet56_path, "yao2020-resnet")
    assert table["total_arrays"] == 740
    conv1 = table["layers"][0]
    assert (conv1["name"], conv1["rows"], conv1["cols"], conv1["arrays"]) == ("conv1", 27, 16, 2)
    fc = table["layers"][-1]
    assert (fc["rows"], fc["cols"], fc["row_tiles"], fc["col_tiles"]) == (64, 10, 1, 2)
    assert len(table["layers"]) == 56


def test_count_cli_with_conv1_copied_four_times_is_746(resnet56_path, capsys):
    assert main(["count", str(resnet56_path), "--target", "yao2020-resnet", "--replicate", "conv1=4", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["total_arrays"] == 746
    assert set(table["layers"][0]) >= {"name", "rows", "cols", "row_tiles", "col_tiles", "copies", "arrays"}
    assert table["layers"][0]["copies"] == 4 and table["layers"][0]["arrays"] == 8


def test_count_text_table_has_every_layer(resnet56_path, capsys):
    assert main(["count", str(resnet56_path)]) == 0
    out = capsys.readouterr().out
    assert "layer3.8.conv2" in out and out.count("\n") >= 56 and "740" in out


def test_projection_shortcuts_count_752_and_758(tmp_path):
    path = tmp_path / "r56b.onnx"
    onnx.save(zoo.resnet56(shortcut="B"), path)
    assert cimc.count(path, "yao2020-resnet")["total_arrays"] == 752
    assert cimc.count(path, "yao2020-resnet", replicate={"conv1": 4})["total_arrays"] == 758


def test_float_backend_matches_onnxruntime(resnet56_manifest, resnet56_path):
    x = np.random.default_rng(7).standard_normal((8, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(resnet56_path)).run(None, {"input": x})[0]
    got = Session(resnet56_manifest, backend="float").run(x)
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


def test_manifest_holds_the_replicated_arrays(resnet56_manifest):
    assert resnet56_manifest.total_arrays == 746
    conv1 = resnet56_manifest.graph.op("conv1")
    assert conv1.replicas == 4 and all(len(t.placements) == 4 for t in conv1.tiles)
    arrays = sorted(p.array for op in resnet56_manifest.graph.xbar_ops() for t in op.tiles for p in t.placements)
    assert arrays == list(range(746))
