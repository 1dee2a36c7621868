"""Models with a fixed batch (graph input [1, 1, 28, 28], a Reshape to [1, -1] before the Gemm: what torch writes
without dynamic axes, and the ONNX model zoo's files) calibrate, run and tune on any number of samples, in chunks
of their batch (cimc.batching). The independent expectation is the same network with a symbolic batch: its
activation ranges, and its integer and crossbar results, bit for bit; and onnxruntime run chunk by chunk."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from refusal import assert_refused, run_cli

import cimc
import cimc.errors
from cimc.batching import chunks, fixed_batch
from cimc.calibrate import activation_stats
from cimc.data import Dataset
from cimc.frontend import import_onnx
from cimc.training import tune

N_CAL = 63          # odd: a batch of 2 ends in a partial chunk
N_RUN = 50


def small_cnn(batch) -> onnx.ModelProto:
    """Conv 3x3 stride 2 -> Relu -> MaxPool 2 -> Reshape -> Gemm -> 10 classes. `batch` an int: a fixed batch with
    the Reshape target [batch, -1] (as torch writes it); None: a symbolic batch, Reshape [-1, 144]."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.5
    b = rng.standard_normal(4).astype(np.float32) * 0.1
    fc = rng.standard_normal((10, 144)).astype(np.float32) * 0.1
    fcb = rng.standard_normal(10).astype(np.float32) * 0.1
    target = [batch, -1] if batch else [-1, 144]
    dim = batch if batch else "N"
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv1", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"], name="relu1"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc1", transB=1),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(fcb, "fcb"),
             numpy_helper.from_array(np.array(target, np.int64), "shape")]
    graph = helper.make_graph(nodes, "small_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


VARIANTS = {"batch1": 1, "batch2": 2, "symbolic": None}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Per variant: (model path, manifest dir, Manifest), compiled on the same 63 calibration images."""
    d = tmp_path_factory.mktemp("fixed_batch")
    np.savez(d / "calib.npz", x=images(N_CAL, 0))
    x = images(N_RUN, 1)
    np.savez(d / "data.npz", x=x, y=np.arange(N_RUN) % 10)
    out = {}
    for name, batch in VARIANTS.items():
        path = d / f"{name}.onnx"
        onnx.save(small_cnn(batch), path)
        code, stdout, stderr = run_cli(["compile", path, "--target", "ideal", "--calibration", d / "calib.npz",
                                        "-o", d / name])
        assert code == 0, stderr
        out[name] = (path, d / name, cimc.load(d / name))
    return d, out


def test_the_fixed_batch_models_fix_the_batch():
    """The premise: onnxruntime refuses a second sample in one call of the fixed-batch file."""
    sess = ort.InferenceSession(small_cnn(1).SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):
        sess.run(None, {"x": images(2, 0)})


@pytest.mark.parametrize("name", ["batch1", "batch2"])
@pytest.mark.parametrize("percentile", [None, 99.0])
@pytest.mark.parametrize("onnxruntime_taps", [True, False])
def test_activation_ranges_equal_the_symbolic_batch(name, percentile, onnxruntime_taps):
    x = images(N_CAL, 0)
    stats = {}
    for variant in (name, "symbolic"):
        graph, info = import_onnx(small_cnn(VARIANTS[variant]))
        stats[variant] = activation_stats(graph, x, percentile, batch_size=16,
                                          model=info.model if onnxruntime_taps else None)
    assert stats[name].keys() == stats["symbolic"].keys() == {"conv1", "fc1"}
    for layer, s in stats["symbolic"].items():
        assert stats[name][layer]["min"] == s["min"]
        assert stats[name][layer]["absmax"] == s["absmax"]
        if percentile is None:
            assert stats[name][layer]["percentile"] is None
        else:
            assert stats[name][layer]["percentile"] == pytest.approx(s["percentile"], rel=1e-6)


@pytest.mark.parametrize("name", ["batch1", "batch2"])
def test_compiled_quantisation_equals_the_symbolic_batch(built, name):
    _, out = built
    fixed, symbolic = out[name][2], out["symbolic"][2]
    assert [t.shape for t in fixed.graph.inputs] == [(VARIANTS[name], 1, 28, 28)]
    for a, b in zip(fixed.graph.xbar_ops(), symbolic.graph.xbar_ops()):
        assert a.input_quant.scale == b.input_quant.scale
        np.testing.assert_array_equal(a.weight_scales, b.weight_scales)
    assert fixed.provenance["calibration"]["samples"] == N_CAL


def chunkwise_onnxruntime(model: onnx.ModelProto, x: np.ndarray, batch: int) -> np.ndarray:
    """The expectation: onnxruntime on the fixed-batch file, one call per `batch` samples (the last padded with
    zeros here, an independent choice of padding)."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = []
    for start in range(0, len(x), batch):
        part = x[start:start + batch]
        padded = np.concatenate([part, np.zeros((batch - len(part),) + x.shape[1:], x.dtype)])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: padded})[0][:len(part)])
    return np.concatenate(outs)


@pytest.mark.parametrize("name", ["batch1", "batch2"])
@pytest.mark.parametrize("session_batch", [1, 7, 128])
def test_float_backend_agrees_with_onnxruntime_chunk_by_chunk(built, name, session_batch):
    _, out = built
    x = images(N_RUN, 1)
    expected = chunkwise_onnxruntime(small_cnn(VARIANTS[name]), x, VARIANTS[name])
    y = cimc.Session(out[name][1], backend="float", batch_size=session_batch).run(x)
    assert y.shape == (N_RUN, 10)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6 * float(np.abs(expected).max()))


NOISY = ["nonideal.program_sigma_us=0.5", "nonideal.read_noise_sigma_us=0.2"]


@pytest.mark.parametrize("name", ["batch1", "batch2"])
@pytest.mark.parametrize("backend, options", [("integer", {}), ("crossbar", {"ideal": True, "seed": 0}),
                                              ("crossbar", {"seed": 3, "overrides": NOISY})])
def test_quantised_backends_bit_identical_to_the_symbolic_batch(built, name, backend, options):
    """The same network, the same sample indices: the same numbers, noise included (it is drawn per sample)."""
    _, out = built
    x = images(N_RUN, 1)
    fixed = cimc.Session(out[name][1], backend=backend, batch_size=16, **options).run(x)
    symbolic = cimc.Session(out["symbolic"][1], backend=backend, batch_size=16, **options).run(x)
    assert fixed.shape == (N_RUN, 10)
    np.testing.assert_array_equal(fixed, symbolic)


def test_ideal_crossbar_equals_integer_on_a_fixed_batch(built):
    _, out = built
    x = images(N_RUN, 1)
    integer = cimc.Session(out["batch1"][1], backend="integer").run(x)
    np.testing.assert_array_equal(cimc.Session(out["batch1"][1], backend="crossbar", ideal=True).run(x), integer)


@pytest.mark.parametrize("name", ["batch1", "batch2"])
@pytest.mark.parametrize("backend", ["float", "integer", "crossbar"])
@pytest.mark.parametrize("limit", [N_RUN, N_RUN - 1])     # odd: batch 2 ends in a padded chunk
def test_cimc_run_on_a_fixed_batch(built, name, backend, limit):
    d, out = built
    path, folder, _ = out[name]

    def run(model, manifest_dir):
        code, stdout, stderr = run_cli(["run", manifest_dir, "--data", d / "data.npz", "--backend", backend,
                                        "--reference", model, "--limit", limit, "--batch-size", 7, "--json"])
        assert code == 0, stderr
        return json.loads(stdout)

    result = run(path, folder)
    assert result["n"] == limit
    sym = run(*out["symbolic"][:2])
    if backend == "float":
        assert result["max_abs_error"] <= 1e-6 * 10
    else:    # the reference runs chunk by chunk: the same comparison as on the symbolic-batch model
        for key in ("agreement", "accuracy", "max_abs_error", "input_clip_rates"):
            assert result[key] == sym[key], key


@pytest.mark.parametrize("name", ["batch1", "batch2"])
def test_tune_on_a_fixed_batch_equals_the_symbolic_batch(built, name):
    """Mini-batches of 7: a batch of 2 pads every one; the tuned layer's input and output drop the padding."""
    d, out = built
    x = images(N_RUN, 1)
    labels = cimc.Session(out["symbolic"][1], backend="float").run(x).argmax(1)   # learnable labels
    data = Dataset({"x": x}, labels, None, None)
    results = {}
    for variant in (name, "symbolic"):
        manifest, result = tune(out[variant][2], data, seed=2, epochs=2, batch=7, lr=2.0, threshold_us=0.0)
        results[variant] = (manifest, result)
    (tuned, r), (tuned_sym, r_sym) = results[name], results["symbolic"]
    assert r.writes == r_sym.writes > 0
    assert (r.accuracy_before, r.accuracy_after, r.holdout) == (r_sym.accuracy_before, r_sym.accuracy_after,
                                                                r_sym.holdout)
    assert tuned.conductances.keys() == tuned_sym.conductances.keys() != set()
    for key, value in tuned_sym.conductances.items():
        np.testing.assert_array_equal(tuned.conductances[key], value)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 20), batch=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_chunks_cover_every_sample_once_in_order(n, batch, seed):
    """Every chunk has exactly `batch` samples; the real ones, in order, are the data; padding copies the last."""
    x = np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32)
    seen = []
    for start, count, part in chunks({"x": x}, batch):
        assert part["x"].shape == (batch, 3)
        assert start == len(seen)
        seen.extend(part["x"][:count])
        if 0 < count < batch:
            assert (part["x"][count:] == x[start + count - 1]).all()
    np.testing.assert_array_equal(np.reshape(seen, (-1, 3)), x)


@pytest.mark.parametrize("shapes, expected", [
    ([(1, 1, 28, 28)], 1), ([(2, 3)], 2), ([(None, 3)], None), ([(1, 3), (1, 5)], 1), ([(1, 3), (2, 5)], None),
    ([(1, 3), (None, 5)], None), ([()], None)])
def test_fixed_batch_of_input_shapes(shapes, expected):
    assert fixed_batch(shapes) == expected


# -- bad input: a fixed batch frees the sample count, not the other dimensions --------------------------------------
BAD_SHAPES = [(5, 1, 28, 27), (5, 2, 28, 28), (5, 1, 27, 28), (5, 28, 28), (5, 1, 1, 28, 28), (5,), (5, 784),
              (2, 1, 28, 29), (2, 3, 28, 28), (3, 1, 56, 28), (4, 1, 28, 1), (2, 28, 28, 1)]


@pytest.mark.parametrize("name", ["batch1", "batch2"])
@pytest.mark.parametrize("shape", BAD_SHAPES, ids=str)
@pytest.mark.parametrize("command", ["compile", "run", "tune"])
def test_wrong_sample_shape_is_refused(built, tmp_path, name, shape, command):
    d, out = built
    path, folder, _ = out[name]
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(shape, np.float32), y=np.zeros(shape[0], np.int64))
    argv = {"compile": ["compile", path, "--target", "ideal", "--calibration", bad, "-o", tmp_path / "out"],
            "run": ["run", folder, "--data", bad, "--reference", path],
            "tune": ["tune", folder, "--data", bad, "--seed", "0", "-o", tmp_path / "out"]}[command]
    err = assert_refused(argv, ["bad.npz", "'x'", str(list(shape))], watch=[tmp_path, folder])
    assert "['N', 1, 28, 28]" in err      # the sample count is free


def test_a_model_zoo_file_with_a_fixed_batch(tmp_path):
    """The onnx package's light_squeezenet (model zoo layout, input [1, 3, 224, 224], weights from
    ConstantOfShape) compiles on 3 images and runs them: float backend as onnxruntime one sample at a time."""
    path = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
    if not path.is_file():
        pytest.skip("this onnx package ships no light_squeezenet.onnx")
    x = np.random.default_rng(5).random((3, 3, 224, 224), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    code, _, stderr = run_cli(["compile", path, "--target", "ideal", "--calibration", tmp_path / "calib.npz",
                               "-o", tmp_path / "out"])
    assert code == 0, stderr
    model = onnx.load(path)
    expected = chunkwise_onnxruntime(model, x, 1)
    y = cimc.Session(tmp_path / "out", backend="float").run({"data_0": x})
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6 * float(np.abs(expected).max()))


def two_input_model(batch) -> onnx.ModelProto:
    """y = Gemm(a + b): two inputs [batch, 8] (batch None: symbolic)."""
    w = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    dim = batch if batch else "N"
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"], name="add"),
         helper.make_node("Gemm", ["s", "w"], ["y"], name="fc")], "two_inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [dim, 8]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, 4])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("two_inputs")
    rng = np.random.default_rng(4)
    calib = {"a": rng.standard_normal((9, 8)).astype(np.float32), "b": rng.standard_normal((9, 8)).astype(np.float32)}
    manifests = {}
    for batch in (1, 3, None):
        onnx.save(two_input_model(batch), d / f"{batch}.onnx")
        manifests[batch] = cimc.compile(d / f"{batch}.onnx", "ideal", calibration=calib)
    return manifests


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 10])
def test_two_inputs_with_a_fixed_batch_equal_the_symbolic_batch(two_inputs, batch, n):
    rng = np.random.default_rng(n)
    x = {"a": rng.standard_normal((n, 8)).astype(np.float32), "b": rng.standard_normal((n, 8)).astype(np.float32)}
    for backend in ("float", "integer"):
        np.testing.assert_array_equal(cimc.Session(two_inputs[batch], backend=backend).run(x),
                                      cimc.Session(two_inputs[None], backend=backend).run(x))


@pytest.mark.parametrize("batch", [1, 3, None])
@pytest.mark.parametrize("counts", [(5, 6), (1, 0), (3, 1), (0, 2)])
@pytest.mark.parametrize("use", ["run", "compile"])
def test_inputs_with_different_sample_counts_are_refused(two_inputs, tmp_path, batch, counts, use):
    x = {name: np.zeros((count, 8), np.float32) for name, count in zip("ab", counts)}
    with pytest.raises(cimc.errors.DataError, match=r"different numbers of samples \{'a': %d, 'b': %d\}" % counts):
        if use == "run":
            cimc.Session(two_inputs[batch], backend="integer").run(x)
        else:
            onnx.save(two_input_model(batch), tmp_path / "m.onnx")
            cimc.compile(tmp_path / "m.onnx", "ideal", calibration=x)
