"""The ONNX model boundary: external data stays inside the model's folder and is covered by the provenance digest,
invalid ONNX is refused as onnxruntime would refuse it, and non-finite weights are refused by tensor and index."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
import onnx_models as om
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper
from refusal import assert_refused, run_cli

import cimc
from cimc import Session, frontend
from cimc.errors import ModelError


def _save_external(model, folder, name="m.onnx"):
    """What torch.onnx.export(..., dynamo=True) writes: the graph in NAME, every tensor in NAME.data beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)        # onnx.save moves the tensors of the proto it is given out to the file
    onnx.save(copy, folder / name, save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{name}.data", size_threshold=0)
    return folder / name


def _calibration(model, path):
    np.savez(path, **om.random_feeds(model, batch=8, seed=3))
    return path


def _point_at(tensor: onnx.TensorProto, location: str, length: int) -> None:
    """Make `tensor` read its bytes from external `location` (as a crafted file would)."""
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")


# -- external data -------------------------------------------------------------------------------------------------
def test_external_data_model_compiles_and_runs_from_any_directory(tmp_path, monkeypatch):
    model = om.small_cnn()
    path = _save_external(model, tmp_path / "models")
    calib = _calibration(model, tmp_path / "models" / "calib.npz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(["compile", os.path.relpath(path), "--calibration", calib, "-o", "out"])
    assert code == 0, err
    code, out, err = run_cli(["run", "out", "--data", calib, "--backend", "float"])
    assert code == 0 and "differs from the model" not in err, err
    # the weights are those of the model itself: same manifest numbers as compiling the embedded model
    embedded = cimc.compile(model, "yao2020-resnet", calibration=str(calib))
    loaded = cimc.load("out")
    for a, b in zip(embedded.graph.xbar_ops(), loaded.graph.xbar_ops()):
        np.testing.assert_array_equal(a.matrix, b.matrix)
        np.testing.assert_array_equal(a.levels, b.levels)


@pytest.fixture
def attack(tmp_path, monkeypatch):
    """A user's working directory holding a secret, a downloaded model in another folder, and a folder outside."""
    cwd = tmp_path / "work"
    (cwd / "secret").mkdir(parents=True)
    weight = numpy_helper.to_array(om.conv().graph.initializer[0])
    (cwd / "secret" / "token.txt").write_bytes(b"S" * weight.nbytes)
    downloads = cwd / "downloads"
    downloads.mkdir()
    (downloads / "subdir").mkdir()
    os.symlink(cwd / "secret", downloads / "linked_dir")
    os.symlink(cwd / "secret" / "token.txt", downloads / "linked_file.bin")
    monkeypatch.chdir(cwd)
    return cwd, downloads, weight.nbytes


ESCAPES = {
    "relative_to_cwd": "secret/token.txt",             # the attack: read relative to the working directory
    "dotdot": "../secret/token.txt",
    "dotdot_inside": "subdir/../../secret/token.txt",
    "backslash_dotdot": "..\\secret\\token.txt",
    "absolute": "{cwd}/secret/token.txt",
    "windows_drive": "C:\\secret\\token.txt",
    "symlinked_dir": "linked_dir/token.txt",
    "symlinked_file": "linked_file.bin",
    "missing": "nowhere.bin",
    "a_directory": "subdir",
    "empty": "",
}


@pytest.mark.parametrize("command", ["compile", "count"])
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_external_data_outside_the_model_folder_is_refused(attack, case, command):
    cwd, downloads, nbytes = attack
    location = ESCAPES[case].format(cwd=cwd)
    model = om.conv()
    _point_at(model.graph.initializer[0], location, nbytes)
    path = downloads / "evil.onnx"
    onnx.save(model, path)
    calib = _calibration(om.conv(), cwd / "calib.npz")
    argv = [command, path] + (["--calibration", calib, "-o", cwd / "out"] if command == "compile" else [])
    culprit = ["'conv.weight'", repr(location)[1:-1] if location else "empty"]
    assert_refused(argv, culprit, watch=[cwd], case=f"external data {case} ({command})")


def test_model_digest_covers_external_data(tmp_path):
    model = om.conv()
    path = _save_external(model, tmp_path)
    data = tmp_path / "m.onnx.data"
    recorded = frontend.load_model(path).sha256
    assert recorded == frontend.model_digest(path)
    assert recorded != hashlib.sha256(path.read_bytes()).hexdigest()
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0x40                                       # other weights, same graph file
    data.write_bytes(bytes(raw))
    assert frontend.model_digest(path) != recorded


def test_model_digest_of_a_self_contained_file_is_its_sha256(tmp_path):
    """Digests recorded in manifests before external data was covered still match."""
    path = tmp_path / "m.onnx"
    onnx.save(om.small_cnn(), path)
    assert frontend.model_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert frontend.load_model(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_warns_when_the_external_data_changed(tmp_path):
    model = om.conv()
    path = _save_external(model, tmp_path / "m")
    calib = _calibration(model, tmp_path / "calib.npz")
    assert run_cli(["compile", path, "--calibration", calib, "-o", tmp_path / "out"])[0] == 0
    code, _, err = run_cli(["run", tmp_path / "out", "--data", calib, "--backend", "float"])
    assert code == 0 and "differs from the model" not in err
    weights = numpy_helper.to_array(onnx.load(path).graph.initializer[0]) * 2
    new = onnx.load(path)
    new.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights, "conv.weight"))
    _save_external(new, tmp_path / "m")                  # same graph, other weights in m.onnx.data
    code, _, err = run_cli(["run", tmp_path / "out", "--data", calib, "--backend", "float"])
    assert code == 0 and "differs from the model the manifest was compiled from" in err


def test_model_proto_with_unloaded_external_data_is_refused(tmp_path):
    path = _save_external(om.conv(), tmp_path)
    with pytest.raises(ModelError, match="external data"):
        cimc.count(onnx.load(path, load_external_data=False))


# -- invalid ONNX ------------------------------------------------------------------------------------------------
def _duplicate_initializer(model):
    w = numpy_helper.to_array(model.graph.initializer[0])
    model.graph.initializer.append(numpy_helper.from_array(np.zeros_like(w), model.graph.initializer[0].name))
    return model


def _two_producers(model):
    twin = onnx.NodeProto()
    twin.CopyFrom(model.graph.node[0])
    twin.name = "conv_twin"
    model.graph.node.append(twin)
    return model


def _ir_version(model, version=99):
    model.ir_version = version
    return model


@pytest.mark.parametrize("mutate,culprit", [
    (_duplicate_initializer, ["initializer 'conv.weight'", "more than once"]),
    (_two_producers, ["tensor 'logits'", "'conv'", "'conv_twin'"]),
    (_ir_version, ["ir_version 99"]),
])
def test_invalid_onnx_is_refused_naming_file_and_tensor(tmp_path, mutate, culprit):
    path = tmp_path / "bad.onnx"
    onnx.save(mutate(om.conv()), path)
    assert_refused(["count", path], ["bad.onnx", *culprit], watch=[tmp_path])


@pytest.mark.parametrize("mutate", [lambda m: _ir_version(m, v) for v in (0, 2, 3)], ids=["ir0", "ir2", "ir3"])
def test_what_onnxruntime_runs_but_the_checker_refuses_is_still_compiled(mutate):
    """IR < 4 files whose initializers are not graph inputs: onnx.checker refuses them, onnxruntime runs them.
    (A single conv: shape inference below IR 4 knows no initializer shapes, so deeper such models stop later.)"""
    model = mutate(om.conv())
    feeds = om.random_feeds(model, batch=4, seed=1)
    expected = om.run_ort(model, feeds)[0]
    got = Session(cimc.compile(model, "ideal", calibration=om.random_feeds(model, 8, 2)), backend="float").run(feeds)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


# -- non-finite weights ------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(flat=st.integers(0, 6 * 4 * 3 * 3 - 1), value=st.sampled_from([np.nan, np.inf, -np.inf]),
       tensor=st.sampled_from([0, 1]))
def test_nonfinite_weight_is_refused_with_tensor_and_index(flat, value, tensor):
    model = om.conv()
    init = model.graph.initializer[tensor]
    w = numpy_helper.to_array(init).copy()
    index = np.unravel_index(flat % w.size, w.shape)
    w[index] = value
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    kind = "NaN" if np.isnan(value) else ("Inf" if value > 0 else "-Inf")
    with pytest.raises(ModelError) as err:
        cimc.count(model)
    assert f"tensor {init.name!r} (initializer) holds {kind} at index {tuple(int(i) for i in index)}" \
        in str(err.value)


def test_nonfinite_folded_weight_is_refused_naming_the_node():
    """A weight computed from finite constants (Sqrt of a negative entry) that comes out NaN."""
    n = om._Net("folded_nan")
    x = n.input(["N", 6])
    squared = np.abs(n.rng.standard_normal((6, 3))).astype(np.float32)
    squared[4, 1] = -1.0
    w = n.node("Sqrt", [n.const("fc.weight_sq", squared)], "fc.weight_sqrt")
    n.node("MatMul", [x, w], "fc", "logits")
    model = n.build()
    expected = r"node 'fc' \(MatMul\): its lowered weight matrix holds NaN at index \(4, 1\)"
    with pytest.raises(ModelError, match=expected):
        cimc.count(model)


def test_infinite_clip_bound_is_accepted_and_agrees_with_onnxruntime():
    """+-Inf in a Clip bound means 'no bound' (onnxruntime runs it): not a weight, so not refused."""
    model = om.activation("Clip", min=0.0, max=np.inf)
    feeds = om.random_feeds(model, batch=4, seed=1)
    expected = om.run_ort(model, feeds)[0]
    got = Session(cimc.compile(model, "ideal", calibration=om.random_feeds(model, 8, 2)), backend="float").run(feeds)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_nan_clip_bound_is_refused():
    model = om.activation("Clip", min=np.nan, max=6.0)
    with pytest.raises(ModelError, match="tensor 'clip.min' .* holds NaN"):
        cimc.count(model)


def test_nonfinite_constant_node_is_refused():
    model = om.constant_weights()
    node = next(n for n in model.graph.node if n.output[0] == "fc.bias")
    b = numpy_helper.to_array(node.attribute[0].t).copy()
    b[7] = np.inf
    node.attribute[0].t.CopyFrom(numpy_helper.from_array(b, "fc.bias"))
    with pytest.raises(ModelError, match=r"tensor 'fc.bias' \(output of Constant node 'fc.bias'\) holds Inf at "
                                         r"index \(7,\)"):
        cimc.count(model)


def test_unmutated_models_are_accepted():
    """Guard for the tests above: the models they mutate pass the full checker and are accepted."""
    for model in (om.conv(), om.constant_weights(), om.activation("Clip", min=0.0, max=6.0)):
        onnx.checker.check_model(model, full_check=True)
        assert cimc.count(model)["layers"]


def test_checks_run_in_this_process_when_no_child_can_be_started(monkeypatch):
    from cimc import onnx_checks

    def no_fork(*args):
        raise OSError("Resource temporarily unavailable")
    monkeypatch.setattr(onnx_checks, "_check_in_child", no_fork)
    assert cimc.count(om.conv())["layers"][0]["rows"] == 4 * 3 * 3
    with pytest.raises(ModelError, match="initializer 'conv.weight' is defined more than once"):
        cimc.count(_duplicate_initializer(om.conv()))
    with pytest.raises(ModelError, match="strides"):
        model = om.conv()
        model.graph.node[0].attribute.append(onnx.helper.make_attribute("strides", [0, 0]))
        cimc.count(model)
