"""Bad input: a clear message naming the culprit, exit code 2, and nothing written."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_models as om
import pytest

import cimc
from cimc.cli import main
from cimc.errors import CimcError, ConfigError, ModelError


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    return path


@pytest.fixture
def cnn(tmp_path):
    """A valid model (small_cnn) and calibration data that fits it."""
    calib_path = tmp_path / "c.npz"
    np.savez(calib_path, x=np.zeros((4, 3, 16, 16), np.float32))
    return _save(tmp_path, om.small_cnn()), calib_path


def _compile(tmp_path, model_path, calib_path, *extra):
    out = tmp_path / "out"
    code = main(["compile", str(model_path), "--calibration", str(calib_path), "-o", str(out), *extra])
    return code, out


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def test_unknown_op_names_node_op_and_opset(tmp_path, calib, capsys):
    """Every op onnxruntime runs is accepted in a digital position; one that ONNX does not define at the model's
    opset (Gelu arrived in opset 20) is refused, naming the node, the op and the opset."""
    model = om.unsupported_op("Erf")
    next(n for n in model.graph.node if n.name == "bad_node").op_type = "Gelu"
    code, out = _compile(tmp_path, _save(tmp_path, model), calib)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "bad_node" in err and "Gelu" in err and "13" in err


def test_non_constant_weight(tmp_path, capsys):
    path = _save(tmp_path, om.non_constant_weight())
    assert main(["count", str(path)]) == 2
    assert "must be a constant" in capsys.readouterr().err


@pytest.mark.parametrize("writer", [om.write_garbage, om.write_truncated])
def test_not_an_onnx_file(tmp_path, calib, capsys, writer):
    path = writer(tmp_path / "bad.onnx")
    code, out = _compile(tmp_path, path, calib)
    assert code == 2 and not out.exists()
    assert "bad.onnx" in capsys.readouterr().err


def test_missing_model_file(tmp_path, capsys):
    assert main(["count", str(tmp_path / "nope.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_calibration_problems(tmp_path, capsys):
    model = _save(tmp_path, om.small_cnn())
    wrong_key = tmp_path / "k.npz"
    np.savez(wrong_key, images=np.zeros((4, 3, 16, 16), np.float32))
    wrong_shape = tmp_path / "s.npz"
    np.savez(wrong_shape, x=np.zeros((4, 3, 8, 8), np.float32))
    for path, needle in ((wrong_key, "keys present: ['images']"), (wrong_shape, "has shape [4, 3, 8, 8]"),
                         (tmp_path / "missing.npz", "does not exist")):
        code, out = _compile(tmp_path, model, path)
        assert code == 2 and not out.exists()
        assert needle in capsys.readouterr().err


def test_compile_without_calibration_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="calibration"):
        cimc.compile(om.small_cnn(), "ideal")
    with pytest.raises(SystemExit) as exc:  # argparse: the option is required
        main(["compile", str(_save(tmp_path, om.small_cnn())), "-o", str(tmp_path / "o")])
    assert exc.value.code == 2


@pytest.mark.parametrize("extra,needle", [
    (["--target", "nosuch"], "unknown target 'nosuch'"),
    (["--set", "adc.bits=many"], "adc.bits"),
    (["--set", "array.rows=0"], "array.rows"),
    (["--set", "adc.nonsense=1"], "adc.nonsense"),
    (["--replicate", "nosuch=2"], "'nosuch' matches no crossbar layer"),
    (["--replicate", "conv1=0"], "positive integer"),
    (["--replicate", "conv1"], "NODE=COPIES"),
])
def test_bad_options(tmp_path, cnn, capsys, extra, needle):
    model, calib = cnn
    code, out = _compile(tmp_path, model, calib, *extra)
    assert code == 2 and not out.exists()
    assert needle in capsys.readouterr().err


def test_over_budget_target_is_refused(tmp_path, cnn, capsys):
    model, calib = cnn
    code, out = _compile(tmp_path, model, calib, "--target", "yao2020-mcnn", "--set", "chip.pes_per_chip=1")
    assert code == 2 and not out.exists()
    assert "budget of 1 arrays is below the" in capsys.readouterr().err
    code, out = _compile(tmp_path, model, calib, "--target", "yao2020-mcnn", "--set", "chip.pes_per_chip=1",
                         "--no-optimize")
    assert code == 2 and not out.exists()
    assert "arrays but target 'yao2020-mcnn' has 1" in capsys.readouterr().err


def test_refuses_to_overwrite_a_non_manifest_directory(tmp_path, cnn, capsys):
    model, calib = cnn
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert _compile(tmp_path, model, calib)[0] == 2
    assert (out / "precious.txt").read_text() == "keep me"
    assert "refusing to overwrite" in capsys.readouterr().err


def test_errors_are_cimc_errors():
    model = om.unsupported_op("Sin")                  # Sin runs in onnxruntime; NoSuchOp exists nowhere
    next(n for n in model.graph.node if n.name == "bad_node").op_type = "NoSuchOp"
    with pytest.raises(ModelError):
        cimc.count(model)
    assert issubclass(ModelError, CimcError)
