"""Issue 14: `--lr` means the same on any layer, default settings tune a layer whatever its weight scale, and an
epoch that (hardly) writes says so on stderr and in `writes_per_epoch`.

The yardstick is a network that computes exactly the same function as the trained mCNN but whose FC layer sees
inputs 2^8 times smaller and holds weights 2^8 times larger (C3's weights and bias scaled by 2^-8, FC's weights by
2^8; ReLU and max-pooling commute with the scale, and powers of two scale floats exactly). An absolute learning
rate (the old `dW = -0.004 * sum_i V_i delta_i`) gives that FC layer steps 2^16 times smaller in device levels, so
it never wrote; a rate relative to the layer must tune both networks identically."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from refusal import run_cli

import cimc
from cimc.data import Dataset, load_npz
from cimc.evaluate import evaluate
from cimc.training import DEFAULT_LR, FEW_WRITES, tune

ART = Path(__file__).resolve().parents[1] / "examples" / "mcnn_mnist" / "artifacts"
NOISY = ["nonideal.program_sigma_us=1.5"]     # noticeable programming error
SEED = 3


def _rescaled(c: float) -> onnx.ModelProto:
    """The trained mCNN with FC's input scaled by c and FC's weights by 1/c: the same function."""
    model = onnx.load(ART / "mcnn.onnx")
    factor = {"C3.weight": c, "C3.bias": c, "FC.weight": 1 / c}
    for init in model.graph.initializer:
        if init.name in factor:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor[init.name]),
                                                  init.name))
    return model


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune_lr")
    out = {}
    for name, c in (("original", 1.0), ("small_inputs", 2.0 ** -8)):
        onnx.save(_rescaled(c), d / f"{name}.onnx")
        out[name] = cimc.compile(d / f"{name}.onnx", "yao2020-mcnn", calibration=ART / "calib_200.npz")
    tuning = load_npz(ART / "train_2000.npz", ["input"])
    small = Dataset({k: v[:1000] for k, v in tuning.inputs.items()}, tuning.labels[:1000], "tune_1000", None)
    test = load_npz(ART / "test_500.npz", ["input"])
    return out, small, test, d


def _tuned(nets, name):
    """Default settings, chip SEED with 1.5 uS programming error; the warnings raised are returned too."""
    manifests, data, _, _ = nets
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned, result = tune(manifests[name], data, seed=SEED, overrides=NOISY)
    return tuned, result, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def original_tuning(nets):
    return _tuned(nets, "original")


@pytest.fixture(scope="module")
def small_inputs_tuning(nets):
    return _tuned(nets, "small_inputs")


def test_the_rescaled_networks_really_differ_in_weight_scale(nets):
    manifests, _, _, _ = nets
    fc = {k: m.graph.op("FC") for k, m in manifests.items()}
    assert fc["small_inputs"].weight_scales.mean() == pytest.approx(256 * fc["original"].weight_scales.mean())
    assert fc["small_inputs"].input_quant.scale == pytest.approx(fc["original"].input_quant.scale / 256)
    np.testing.assert_array_equal(fc["small_inputs"].levels, fc["original"].levels)


def test_default_lr_tunes_a_rescaled_layer_exactly_like_the_original(original_tuning, small_inputs_tuning):
    """Same function, same chip, same data: the default tuning writes the same devices to the same conductances."""
    tuned0, r0, _ = original_tuning
    tuned, r, _ = small_inputs_tuning
    assert r.writes == r0.writes > 0
    assert r.writes_per_epoch == r0.writes_per_epoch
    np.testing.assert_array_equal(tuned.conductances["programmed_us"], tuned0.conductances["programmed_us"])
    assert r.accuracy_after == r0.accuracy_after


def test_default_settings_write_and_raise_accuracy_on_a_noisy_chip(nets, small_inputs_tuning):
    """On the layer whose weight scale is 256x the original's, the defaults write without a warning, and the test
    accuracy of the tuned chip rises (measured independently with `evaluate` on other images)."""
    manifests, _, test, _ = nets
    tuned, r, messages = small_inputs_tuning
    assert not [m for m in messages if "wrote" in m], "the defaults hardly wrote"
    assert r.writes_per_epoch[0] >= FEW_WRITES * r.devices and sum(r.writes_per_epoch) == r.writes
    opts = {"overrides": NOISY}
    before = evaluate(manifests["small_inputs"], test, backend="crossbar", seed=SEED, backend_options=opts)
    after = evaluate(tuned, test, backend="crossbar", seed=SEED, backend_options=opts)
    assert after["accuracy"] > before["accuracy"]


def test_the_old_absolute_rate_never_writes_and_the_warning_says_so(nets):
    """lr 0.004 in weight units (the old default) is lr = 0.004 * s_x * q_max / mean(s_w) device levels: about 0.35
    on the original layer, 2^16 times less on the rescaled one. There it writes nothing, and a warning says what
    to change; `writes_per_epoch` tells a JSON consumer that the chip was never written."""
    manifests, data, _, _ = nets
    data = Dataset({k: v[:300] for k, v in data.inputs.items()}, data.labels[:300], "tune_300", None)
    fc = manifests["small_inputs"].graph.op("FC")
    q = fc.input_quant
    old_default = 0.004 * q.scale * q.qmax / float(fc.weight_scales.astype(np.float64).mean())
    assert old_default < DEFAULT_LR / 1000
    with pytest.warns(UserWarning, match=r"epoch 1 of 1 wrote no device of layer 'FC'.*raise --lr"):
        _, r = tune(manifests["small_inputs"], data, seed=SEED, overrides=NOISY, lr=old_default)
    assert r.writes == 0 and r.writes_per_epoch == [0]
    assert 0 < r.largest_update_us_per_epoch[0] < 1.5
    assert r.lr_weight_units == pytest.approx(0.004)


@pytest.mark.parametrize("extra,culprit", [(["--threshold", "1000uS"], "--threshold"),
                                           (["--lr", "1e-6"], "--lr")])
def test_cli_warns_when_an_epoch_writes_nothing(nets, extra, culprit):
    """A huge threshold or a tiny lr: exit 0, a `cimc: warning:` naming what to change, writes_per_epoch [0]."""
    manifests, data, _, d = nets
    if not (d / "m").exists():
        manifests["original"].save(d / "m")
        np.savez(d / "data.npz", x=data.inputs["input"][:200], y=data.labels[:200])
    out = d / f"out{culprit}"
    code, stdout, stderr = run_cli(["tune", d / "m", "--data", d / "data.npz", "-o", out, "--seed", SEED,
                                    "--set", NOISY[0], "--json", *extra])
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["writes"] == 0 and result["writes_per_epoch"] == [0]
    assert "cimc: warning: tuning epoch 1 of 1 wrote no device" in stderr and culprit in stderr
    assert result["warnings"] and culprit in result["warnings"][0]
