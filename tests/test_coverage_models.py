"""Issue 15's front-door coverage suite: every ONNX file committed under tests/models (written by
tests/models/make_models.py from torchvision-style CNNs, a ViT, a BERT-like encoder, LSTM/GRU classifiers, a U-Net,
Conv1d/Conv3d nets; both torch exporters; fixed-batch files; one with external data) compiles and runs on every
backend. Per file, on inputs drawn from a seeded N(0, 1) (calibration: 16 samples, checks: 4 others), on the
`ideal` preset with 256-level devices (weights -255..255 per column, 8-bit activations):

- float backend vs onnxruntime (run chunk by chunk on a fixed-batch file): max |error| <= 1e-5 x output range
  (the issue's figure). These random nets amplify float32 rounding: onnxruntime with and without its graph
  optimisations differs by a median 1e-6 x range over 20 draws of 4 samples, up to 1.1e-5 on mobilenet_v3_small
  (4.6e-6 mnasnet, 2.5e-6 efficientnet_b0); on the test's draw at most 6e-6 (mnasnet). A failure message gives
  that figure for its draw;
- integer backend vs onnxruntime: the relative L2 error E is the one cimc's documented rounding gives. The
  expectation comes without cimc (coverage_reference.py): the same file in onnxruntime with that rounding written
  into the graph (per-column weight levels, 8-bit per-tensor inputs with the calibration's max range), error S.
  Two realisations of the same rounding noise differ by sampling (4 samples x a few outputs), so the bound is a
  factor: S / 2 <= E <= 2 S + 0.002 (the floor: float32 order effects on an almost exact model). A recurrent
  model gets 3 S: cimc also rounds the hidden state at each step, which the reference leaves float inside the op.
  The lower bound checks that the integer backend really rounds.
- the ideal crossbar (ideal devices, lossless ADC) equals the integer backend bit for bit.

Why not a fixed bound such as 0.02 sqrt(depth)? These random nets, like most random deep nets, amplify a
perturbation layer by layer: the simulated error is 0.30 on regnet (24 linear ops), 0.57 on efficientnet_b0
(52), 0.02 on conv1d_net (3). Measured with cimc on the files that compiled on branch `fixtures` (front end
before issue 15): regnet_legacy E = 0.299 for S = 0.296, conv1d_net_legacy E = 0.021 for S = 0.020.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pytest
from coverage_reference import (RECURRENT, fake_quantised, graph_input, onnxruntime_outputs, relative_error,
                                simulated_error)

import cimc

MODELS = Path(__file__).parent / "models"
FILES = sorted(p.name for p in MODELS.glob("*.onnx"))
TARGET, OVERRIDES = "ideal", ["device.levels=256"]
N_CAL, N_RUN = 16, 4


def draws(shape) -> tuple[np.ndarray, np.ndarray]:
    """(calibration samples, check samples), N(0, 1) from one seeded generator."""
    rng = np.random.default_rng(15)
    return (rng.standard_normal((N_CAL, *shape), dtype=np.float32),
            rng.standard_normal((N_RUN, *shape), dtype=np.float32))


class Case(NamedTuple):
    file: str
    manifest: cimc.Manifest
    feeds: dict
    expected: np.ndarray        # onnxruntime on the file
    unoptimised: np.ndarray     # the same without graph optimisations: what float32 order alone changes
    simulated: float            # relative error of the fake-quantised file (coverage_reference)
    recurrent: bool


@pytest.fixture(scope="module", params=FILES)
def case(request) -> Case:
    """Compile one file (pytest keeps the result, or the error, for the module)."""
    path = MODELS / request.param
    model = onnx.load(path, load_external_data=False)
    name, batch, shape = graph_input(model)
    calibration, x = draws(shape)
    manifest = cimc.compile(path, TARGET, calibration={name: calibration}, overrides=OVERRIDES, optimize=False)
    expected = onnxruntime_outputs(path, name, batch, x)
    simulated, _ = simulated_error(path, calibration, x, expected)
    unoptimised = onnxruntime_outputs(path, name, batch, x, optimise=False)
    return Case(request.param, manifest, {name: x}, expected, unoptimised, simulated,
                bool(RECURRENT & {n.op_type for n in model.graph.node}))


_INTEGER: dict[str, np.ndarray] = {}


def _integer(case: Case) -> np.ndarray:
    """The integer backend's outputs, run once per file for the two tests that need them."""
    if case.file not in _INTEGER:
        _INTEGER[case.file] = cimc.Session(case.manifest, backend="integer").run(case.feeds)
    return _INTEGER[case.file]


def test_float_backend_equals_onnxruntime(case):
    y = cimc.Session(case.manifest, backend="float").run(case.feeds)
    assert y.shape == case.expected.shape
    error, scale = float(np.abs(y - case.expected).max()), float(np.ptp(case.expected))
    itself = float(np.abs(case.unoptimised - case.expected).max())
    assert error <= 1e-5 * scale, (f"{case.file}: max |float - onnxruntime| {error:.3g}, output range {scale:.3g}; "
                                   f"onnxruntime itself, optimisations off vs on: {itself:.3g}")


def test_integer_backend_within_the_quantisation_bound(case):
    error = relative_error(_integer(case), case.expected)
    high = (3 if case.recurrent else 2) * case.simulated + 0.002
    assert case.simulated / 2 <= error <= high, (
        f"{case.file}: relative L2 error {error:.4f}, the rounding simulated in onnxruntime gives "
        f"{case.simulated:.4f}, bound [{case.simulated / 2:.4f}, {high:.4f}]")


def test_ideal_crossbar_equals_integer_bit_for_bit(case):
    np.testing.assert_array_equal(cimc.Session(case.manifest, backend="crossbar", ideal=True).run(case.feeds),
                                  _integer(case))


# -- the suite itself ------------------------------------------------------------------------------------------------
FAMILIES = ["mobilenet_v3_small", "shufflenet_v2", "mnasnet", "efficientnet_b0", "regnet", "vit_tiny", "bert_tiny",
            "lstm", "gru", "unet_tiny", "conv1d_net", "conv3d_net"]


def test_the_committed_suite_is_small_and_covers_the_issue():
    """Under 3 MB in all; every family present; both exporters for at least two; fixed-batch files; exactly one
    file with external data, which sits beside it; the ops the issue names appear."""
    files = list(MODELS.glob("*.onnx")) + list(MODELS.glob("*.onnx.data"))
    assert sum(p.stat().st_size for p in files) < 3 * 2**20
    assert {f for f in FAMILIES if any(n.startswith(f + "_") for n in FILES)} == set(FAMILIES)
    both = [f for f in FAMILIES if any(n.startswith(f + "_legacy") for n in FILES)
            and any(n.startswith(f + "_dynamo") for n in FILES)]
    assert len(both) >= 2, both
    external, ops = [], set()
    for name in FILES:
        model = onnx.load(MODELS / name, load_external_data=False)
        ops |= {n.op_type for n in model.graph.node}
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            external.append(name)
        if name.endswith("_b1.onnx"):
            assert graph_input(model)[1] == 1, name
    assert external == ["regnet_dynamo_b1.onnx"]
    assert (MODELS / "regnet_dynamo_b1.onnx.data").is_file()
    assert {"HardSwish", "HardSigmoid", "ReduceMean", "Split", "LayerNormalization", "Gelu", "Erf", "Gather",
            "LSTM", "GRU", "ConvTranspose", "Resize", "BatchNormalization", "MatMul", "Softmax"} <= ops


def test_the_reference_rounding_is_what_it_claims():
    """The fake quantisation on a hand-checkable Gemm: y = round(x / s_x) s_x . round(w / s_w) s_w, with
    s_x = max|x| / 127 over the calibration samples and s_w = max|column| / 255."""
    w = np.array([[1.0, 0.3], [-0.5, 0.001]], np.float32)        # [K=2, N=2]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    calibration = np.array([[2.54, -1.0]], np.float32)             # signed, max |x| 2.54: s_x = 0.02
    x = np.array([[0.011, 0.5], [9.0, -0.029]], np.float32)          # 9.0 clips to 127 steps
    with tempfile.TemporaryDirectory() as folder:
        onnx.save(model, Path(folder) / "gemm.onnx")
        quantised, ops = fake_quantised(Path(folder) / "gemm.onnx", calibration)
    assert ops == 1
    y = onnxruntime_outputs(quantised, "x", None, x)
    s_x = 2.54 / 127
    codes = np.clip(np.rint(x.astype(np.float64) / s_x), -127, 127) * s_x
    s_w = np.abs(w.astype(np.float64)).max(axis=0) / 255
    np.testing.assert_allclose(y, codes @ (np.rint(w / s_w) * s_w), rtol=1e-6, atol=1e-7)
