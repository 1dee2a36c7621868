"""The model builders: cimc.zoo (shipped) and tests/onnx_models.py (test inputs) give valid, runnable ONNX models."""

import functools
import math
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnx_models
from cimc import zoo


@functools.cache
def _zoo_model(name: str) -> onnx.ModelProto:
    return {
        "resnet56_A": lambda: zoo.resnet56(shortcut="A"),
        "resnet56_B": lambda: zoo.resnet56(shortcut="B"),
        "mcnn": zoo.mcnn,
        "mlp": zoo.mlp,
    }[name]()


ZOO = {"resnet56_A": [3, 32, 32], "resnet56_B": [3, 32, 32], "mcnn": [1, 28, 28], "mlp": [64]}
CLASSES = {"resnet56_A": 10, "resnet56_B": 10, "mcnn": 10, "mlp": 10}


def _ops(model):
    return Counter(n.op_type for n in model.graph.node)


def _crossbar_arrays(model, rows=144, cols=16):
    """Arrays for each Conv/Gemm weight (rows = cin*kh*kw, cols = cout, 2 columns per signed output), summed."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            w = weights[node.input[1]]
            n_rows, n_cols = int(np.prod(w.shape[1:])), w.shape[0]
            total += math.ceil(n_rows / rows) * math.ceil(2 * n_cols / cols)
    return total


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_is_valid_and_runs(name):
    model = _zoo_model(name)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    x = np.random.default_rng(1).standard_normal((16, *ZOO[name])).astype(np.float32)
    (y,) = onnx_models.run_ort(model, {"input": x})
    assert y.shape == (16, CLASSES[name])
    assert np.isfinite(y).all()
    assert np.abs(y).max() < 100  # activations stay O(1)
    assert not np.allclose(y, y[0])
    assert len(set(y.argmax(axis=1))) > 1  # top-1 depends on the input


def test_zoo_is_deterministic():
    assert zoo.mcnn(seed=3).SerializeToString() == zoo.mcnn(seed=3).SerializeToString()
    assert zoo.mlp(seed=3).SerializeToString() != zoo.mlp(seed=4).SerializeToString()
    assert _zoo_model("resnet56_A").SerializeToString() == zoo.resnet56().SerializeToString()


@pytest.mark.parametrize("shortcut, convs, arrays", [("A", 55, 740), ("B", 57, 752)])
def test_resnet56_structure(shortcut, convs, arrays):
    model = _zoo_model(f"resnet56_{shortcut}")
    ops = _ops(model)
    assert ops["Conv"] == convs and ops["Gemm"] == 1
    assert ops["BatchNormalization"] == convs and ops["Add"] == 27
    assert (ops["Slice"], ops["Pad"]) == ((2, 2) if shortcut == "A" else (0, 0))
    assert _crossbar_arrays(model) == arrays
    names = {n.name for n in model.graph.node}
    assert {"conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.add", "layer3.8.conv2", "fc"} <= names


def test_resnet20_is_resnet56_with_three_blocks_per_stage():
    """The peers benchmark's ResNet-20: 6n + 2 weighted layers with n = 3, the same names and stages as ResNet-56,
    and onnxruntime runs it (its logits depend on the input)."""
    model = zoo.resnet20(seed=1)
    ops = _ops(model)
    assert ops["Conv"] == 19 and ops["Gemm"] == 1 and ops["BatchNormalization"] == 19 and ops["Add"] == 9
    assert (ops["Slice"], ops["Pad"]) == (2, 2) and model.graph.name == "resnet20a"
    names = {n.name for n in model.graph.node}
    assert {"layer1.2.conv2", "layer3.2.conv2", "fc"} <= names and "layer1.3.conv1" not in names
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)})[0]
    assert y.shape == (4, 10) and not np.allclose(y, y[0])


def test_resnet56_shortcut_a_pads_channels():
    model = _zoo_model("resnet56_A")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    pads = {n.name: inits[n.input[1]].tolist() for n in model.graph.node if n.op_type == "Pad"}
    assert pads == {"layer2.0.shortcut.pad": [0, 8, 0, 0, 0, 8, 0, 0],
                    "layer3.0.shortcut.pad": [0, 16, 0, 0, 0, 16, 0, 0]}
    steps = [inits[n.input[4]].tolist() for n in model.graph.node if n.op_type == "Slice"]
    assert steps == [[2, 2], [2, 2]]


def test_mcnn_shapes():
    model = onnx.shape_inference.infer_shapes(_zoo_model("mcnn"), strict_mode=True)
    shapes = {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
              for vi in model.graph.value_info}
    assert shapes["C1"] == ["N", 8, 26, 26]
    assert shapes["S2"] == ["N", 8, 9, 9]
    assert shapes["C3"] == ["N", 12, 7, 7]
    assert shapes["S4"] == ["N", 12, 4, 4]
    assert shapes["flatten"] == ["N", 192]
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert weights["C1.weight"] == (8, 1, 3, 3) and weights["C3.weight"] == (12, 8, 3, 3)
    assert weights["FC.weight"] == (10, 192)


def test_mlp_sizes():
    model = zoo.mlp((64, 32, 16, 10))
    weights = [tuple(t.dims) for t in model.graph.initializer if t.name.endswith("weight")]
    assert weights == [(32, 64), (16, 32), (10, 16)]
    assert _ops(model) == {"Gemm": 3, "Relu": 2}


def test_resnet50_structure():
    model = zoo.resnet50_imagenet()
    ops = _ops(model)
    assert (ops["Conv"], ops["Gemm"], ops["MaxPool"], ops["Add"]) == (53, 1, 1, 16)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if "running" not in t.name)
    assert params == 25_557_032  # torchvision resnet50


def test_zoo_rejects_bad_arguments():
    with pytest.raises(ValueError):
        zoo.resnet56(shortcut="C")
    with pytest.raises(ValueError):
        zoo.mcnn(opset=9)


CROSSBAR_OPS = {"Conv", "Gemm", "MatMul"}


@pytest.mark.parametrize("name", sorted(onnx_models.ALL_VALID))
def test_test_model_is_valid_and_runs(name):
    model = onnx_models.ALL_VALID[name]()
    onnx.checker.check_model(model, full_check=True)
    assert CROSSBAR_OPS & set(_ops(model))
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    outs = onnx_models.run_ort(model)
    declared = [d.dim_value if d.HasField("dim_value") else 2 for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert list(outs[0].shape) == declared
    assert all(np.isfinite(o).all() for o in outs)
    assert onnx_models.ALL_VALID[name]().SerializeToString() == model.SerializeToString()


def test_test_models_cover_formats():
    assert onnx_models.legacy_opset8().opset_import[0].version == 8
    assert onnx_models.legacy_opset8().ir_version == 3
    assert onnx_models.newest_opset().opset_import[0].version == onnx.defs.onnx_opset_version()
    model = onnx_models.initializers_as_inputs()
    assert {t.name for t in model.graph.initializer} < {i.name for i in model.graph.input}


def test_same_upper_and_lower_differ():
    x = onnx_models.random_feeds(onnx_models.ALL_VALID["conv_same_upper"]())
    (up,) = onnx_models.run_ort(onnx_models.ALL_VALID["conv_same_upper"](), x)
    (low,) = onnx_models.run_ort(onnx_models.ALL_VALID["conv_same_lower"](), x)
    assert up.shape == low.shape and not np.allclose(up, low)


def test_bad_models(tmp_path):
    model = onnx_models.unsupported_op()
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node if n.name == "bad_node"] == ["Erf"]
    model = onnx_models.non_constant_weight()
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert conv.input[1] in {i.name for i in model.graph.input}
    assert conv.input[1] not in {t.name for t in model.graph.initializer}
    assert np.isfinite(onnx_models.run_ort(model)[0]).all()
    for write in (onnx_models.write_garbage, onnx_models.write_truncated):
        path = write(tmp_path / f"{write.__name__}.onnx")
        with pytest.raises(Exception):
            onnx.load(str(path))
