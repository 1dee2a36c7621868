"""`cimc tune --method affine` walks the graph once (cimc.column_calibration.calibrate_graph, every batch stepped
through the chip's graph and the ideal reference side by side), where it re-ran both whole graphs per layer. The
slow reference (tests/column_calibration_reference.py, the code as it ran before) is the expectation: the folded
weight scales and biases and the per-layer rows are the same bit for bit, on the shipped mCNN (with the default
reader, and with read noise through the float32 reader), on a small residual net, and on a fixed-batch model."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from column_calibration_reference import calibrate_graph_slow
from test_fixed_batch import images, small_cnn

import cimc
from cimc import zoo
from cimc.backends.crossbar import CrossbarBackend
from cimc.backends.reference import FloatBackend, IntegerBackend
from cimc.column_calibration import calibrate_graph
from cimc.data import load_npz
from cimc.graph_run import check_feeds

ART = Path(__file__).resolve().parents[1] / "examples" / "mcnn_mnist" / "artifacts"


def _both(manifest, x, overrides, batch, gemm=None, reference=IntegerBackend):
    """(rows, graph) of the one-pass and of the slow calibration, each on a fresh chip instance 3, fitted to the
    `reference` backend's network (the integer one: --affine-target ideal; the float one: float)."""
    out = []
    for calibrate in (calibrate_graph, calibrate_graph_slow):
        graph = copy.deepcopy(manifest.graph)
        chip = CrossbarBackend(seed=3, overrides=overrides, gemm=gemm)
        chip.bind(graph, manifest.arrays, manifest.target)
        ideal = reference()
        ideal.bind(graph, manifest.arrays, manifest.target)
        out.append((calibrate(graph, chip, ideal, check_feeds(graph, x), batch=batch), graph, chip.gemm))
    return out


def _assert_same(manifest, runs):
    (rows, graph, _), (slow_rows, slow_graph, _) = runs
    assert rows == slow_rows and len(rows) == len(manifest.graph.xbar_ops())
    for op, slow, before in zip(graph.xbar_ops(), slow_graph.xbar_ops(), manifest.graph.xbar_ops()):
        assert np.array_equal(op.weight_scales, slow.weight_scales) and np.array_equal(op.bias, slow.bias)
        assert not np.array_equal(op.weight_scales, before.weight_scales)       # the fit did change every layer


@pytest.fixture(scope="module")
def mcnn():
    manifest = cimc.compile(ART / "mcnn.onnx", "yao2020-mcnn", calibration=ART / "calib_200.npz")
    return manifest, load_npz(ART / "train_2000.npz", ["input"]).inputs["input"][:45]


@pytest.mark.parametrize("overrides, reader", [
    (["nonideal.program_sigma_us=1.5"], "lut"),                                        # the default reader
    (["nonideal.program_sigma_us=1.5", "nonideal.read_noise_sigma_us=0.3"], "float32"),  # noise by sample index
])
def test_one_pass_equals_the_per_layer_reruns_on_the_mcnn(mcnn, overrides, reader):
    manifest, x = mcnn
    runs = _both(manifest, x, overrides, batch=16)       # 45 = 16 + 16 + 13: a partial last batch
    assert runs[0][2] == reader
    _assert_same(manifest, runs)


def tiny_resnet(seed: int = 0) -> onnx.ModelProto:
    """cimc.zoo's CIFAR ResNet in miniature on 3x8x8 inputs: a stem, an identity block and a stride-2 block with the
    option-A shortcut, global pooling and the FC (6 crossbar layers), random weights."""
    b = zoo._Builder(seed, 13, zoo._calibration_batch(seed, (8, 3, 8, 8)))
    x = b.relu(b.bn(b.conv("input", "conv1", 8, 3, pad=1), "bn1"), "relu")
    for p, planes, stride in (("layer1.0", 8, 1), ("layer2.0", 16, 2)):
        y = b.relu(b.bn(b.conv(x, f"{p}.conv1", planes, 3, stride, 1), f"{p}.bn1"), f"{p}.relu1")
        y = b.bn(b.conv(y, f"{p}.conv2", planes, 3, 1, 1), f"{p}.bn2")
        sc = x if stride == 1 else b.shortcut_a(x, f"{p}.shortcut", planes)
        x = b.relu(b.add(y, sc, f"{p}.add"), f"{p}.relu2")
    b.head(x, 10)
    return b.model("tiny_resnet", [3, 8, 8], 10, "a tiny CIFAR-style ResNet")


@pytest.mark.parametrize("reference", [IntegerBackend, FloatBackend])
def test_one_pass_equals_the_per_layer_reruns_on_a_residual_net(tmp_path, reference):
    """The residual adds read tensors that live across calibrated layers (freed after their last reader)."""
    onnx.save(tiny_resnet(), tmp_path / "r.onnx")
    x = np.random.default_rng(4).standard_normal((40, 3, 8, 8)).astype(np.float32)
    manifest = cimc.compile(tmp_path / "r.onnx", "yao2020-resnet", calibration=x)
    assert len(manifest.graph.xbar_ops()) == 6
    _assert_same(manifest, _both(manifest, x, ["nonideal.program_sigma_us=1.0"], batch=15, reference=reference))


def test_one_pass_equals_the_per_layer_reruns_on_a_fixed_batch(tmp_path):
    """A model with a fixed batch of 2 runs in padded chunks of 2 (cimc.batching), the padding left out of the fit;
    and it calibrates as the same model with a symbolic batch does."""
    x = images(21, 1)
    runs = {}
    for name, batch in (("fixed", 2), ("symbolic", None)):
        onnx.save(small_cnn(batch), tmp_path / f"{name}.onnx")
        manifest = cimc.compile(tmp_path / f"{name}.onnx", "yao2020-mcnn", calibration=images(40, 0))
        runs[name] = _both(manifest, x, ["nonideal.program_sigma_us=1.5"], batch=7)
        _assert_same(manifest, runs[name])
    assert runs["fixed"][0][0] == runs["symbolic"][0][0]
