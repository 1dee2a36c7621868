"""Issue 15's front-door coverage suite: every ONNX file committed under tests/models (written by
tests/models/make_models.py from torchvision-style CNNs, a ViT, a BERT-like encoder, LSTM/GRU classifiers, a U-Net,
Conv1d/Conv3d nets; both torch exporters; fixed-batch files; one with external data) compiles and runs on every
backend. Per file, on inputs drawn from a seeded N(0, 1) (calibration: 16 samples, checks: 4 others):

- float backend vs onnxruntime (run chunk by chunk on a fixed-batch file): max |error| <= 1e-5 x output range;
- integer backend vs onnxruntime: relative L2 error <= BOUND_PER_LAYER x sqrt(D) (derived below);
- the ideal crossbar (ideal devices, lossless ADC) equals the integer backend bit for bit.

The target is the `ideal` preset with 256-level devices (weights in -255..255 per column, 8-bit activations).

The integer bound. One crossbar layer y = W x rounds x to a step s_x = range / qmax (qmax = 127 signed, 255
unsigned) and each weight column to s_w = max|w| / 255. Rounding errors are uniform, so their rms is step / sqrt(12),
and relative to the rms of the rounded quantity they are (range / rms) / (qmax sqrt(12)). Calibrated activation
ranges are at most ~6 rms here (the max of a few thousand roughly Gaussian values over 16 samples; heavier tails
after ReLU), weight columns ~4 rms (max over >= 27 Gaussian/uniform values): 6 / (127 x 3.46) + 4 / (255 x 3.46)
~= 0.0137 + 0.0045, so <= BOUND_PER_LAYER = 0.02 per layer. Independent errors add in quadrature along a chain of
D layers whose gain is about 1 (BatchNorm, LayerNorm and random He-style weights keep activations at unit scale):
sqrt(D) x 0.02. D counts the crossbar ops of the manifest, and for a recurrent model adds its time steps (the same
matrices are read once per step and the state carries the error on).

Evidence, independent of cimc: tests/models/quantisation_error.py writes this rounding into each ONNX graph as
fake-quantisation ops and runs it in onnxruntime on the test's samples. Relative L2 error / bound: regnet 0.028 /
0.098 (the largest ratio), vit_tiny 0.027 / 0.063, bert_tiny 0.008 / 0.060, efficientnet_b0 0.005 / 0.144,
mobilenet_v3_small 0.0006 / 0.147, mnasnet 0.005 / 0.146, shufflenet_v2 0.002 / 0.104, lstm and gru 0.005 / 0.057,
unet_tiny 0.005 / 0.053, conv1d_net 0.006 / 0.035, conv3d_net 0.002 / 0.035. cimc's integer backend on the files
that compiled on branch `fixtures` (front end before issue 15): regnet_legacy 0.026, conv1d_net_legacy 0.005.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cimc

MODELS = Path(__file__).parent / "models"
FILES = sorted(p.name for p in MODELS.glob("*.onnx"))
TARGET, OVERRIDES = "ideal", ["device.levels=256"]
N_CAL, N_RUN = 16, 4
SYMBOLIC_DIM = 8          # a symbolic axis after the batch (the BERT-like encoder's sequence): 8 tokens
BOUND_PER_LAYER = 0.02
RECURRENT = {"LSTM", "GRU", "RNN"}


def _graph_input(model: onnx.ModelProto) -> tuple[str, int | None, list[int]]:
    """(name, fixed batch or None, one sample's shape) of the model's only input."""
    (inp,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dims = inp.type.tensor_type.shape.dim
    batch = dims[0].dim_value or None
    return inp.name, batch, [d.dim_value or SYMBOLIC_DIM for d in dims[1:]]


def _onnxruntime(path: Path, name: str, batch: int | None, x: np.ndarray) -> np.ndarray:
    """The reference: onnxruntime on the file itself (external data read beside it), in chunks of a fixed batch."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = batch or len(x)
    return np.concatenate([session.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)])


@pytest.fixture(scope="module", params=FILES)
def case(request):
    """Compile one file (pytest keeps the result, or the error, for the module): (name, manifest, x, reference)."""
    path = MODELS / request.param
    model = onnx.load(path, load_external_data=False)
    name, batch, shape = _graph_input(model)
    rng = np.random.default_rng(15)
    calibration = rng.standard_normal((N_CAL, *shape), dtype=np.float32)
    x = rng.standard_normal((N_RUN, *shape), dtype=np.float32)
    manifest = cimc.compile(path, TARGET, calibration={name: calibration}, overrides=OVERRIDES, optimize=False)
    steps = shape[0] if RECURRENT & {n.op_type for n in model.graph.node} else 0     # batch-first [N, T, F]
    return request.param, manifest, {name: x}, _onnxruntime(path, name, batch, x), steps


_INTEGER: dict[str, np.ndarray] = {}


def _integer(case) -> np.ndarray:
    """The integer backend's outputs, run once per file for the two tests that need them."""
    file, manifest, x, _, _ = case
    if file not in _INTEGER:
        _INTEGER[file] = cimc.Session(manifest, backend="integer").run(x)
    return _INTEGER[file]


def test_float_backend_equals_onnxruntime(case):
    file, manifest, x, expected, _ = case
    y = cimc.Session(manifest, backend="float").run(x)
    assert y.shape == expected.shape
    error, scale = float(np.abs(y - expected).max()), float(np.ptp(expected))
    assert error <= 1e-5 * scale, f"{file}: max |float - onnxruntime| {error:.3g}, output range {scale:.3g}"


def test_integer_backend_within_the_quantisation_bound(case):
    file, manifest, _, expected, steps = case
    y = _integer(case)
    depth = len(manifest.graph.xbar_ops()) + steps
    relative = float(np.linalg.norm(y - expected) / np.linalg.norm(expected))
    bound = BOUND_PER_LAYER * math.sqrt(depth)
    assert relative <= bound, f"{file}: relative L2 error {relative:.4f} > {bound:.4f} (D = {depth})"


def test_ideal_crossbar_equals_integer_bit_for_bit(case):
    _, manifest, x, _, _ = case
    np.testing.assert_array_equal(cimc.Session(manifest, backend="crossbar", ideal=True).run(x), _integer(case))


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
            assert _graph_input(model)[1] == 1, name
    assert external == ["regnet_dynamo_b1.onnx"]
    assert (MODELS / "regnet_dynamo_b1.onnx.data").is_file()
    assert {"HardSwish", "HardSigmoid", "ReduceMean", "Split", "LayerNormalization", "Gelu", "Erf", "Gather",
            "LSTM", "GRU", "ConvTranspose", "Resize", "BatchNormalization", "MatMul", "Softmax"} <= ops
