"""Issue 12 item 5: `cimc tune` with a pulse model: each thresholded write becomes SET/RESET pulses (open loop or
write-verify), reported beside the writes; without one the result is today's."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from refusal import assert_refused, run_cli

import cimc
from cimc.data import Dataset, load_npz
from cimc.training import tune

ART = Path(__file__).resolve().parents[1] / "examples" / "mcnn_mnist" / "artifacts"
N = 200
PULSED = ["nonideal.program_sigma_us=0.54", "pulse.model=soft-bounds", "pulse.dg_up_us=0.25",
          "pulse.dg_down_us=0.35", "pulse.c2c_sigma_rel=0.05", "pulse.d2d_sigma_rel=0.1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune_pulsed")
    manifest = cimc.compile(ART / "mcnn.onnx", "yao2020-mcnn", calibration=ART / "calib_200.npz")
    manifest.save(d / "m")
    full = load_npz(ART / "train_2000.npz", ["input"])
    data = Dataset({k: v[:N] for k, v in full.inputs.items()}, full.labels[:N], "tune_200", None)
    np.savez(d / "tune.npz", x=data.inputs["input"], y=data.labels)
    return manifest, data, d


def _tune(setup, overrides, **kw):
    manifest, data, _ = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tune(manifest, data, seed=1, overrides=overrides, lr=1.0, **kw)


@pytest.fixture(scope="module")
def pulsed(setup):
    return _tune(setup, PULSED)


def test_writes_become_pulses_and_both_are_reported(pulsed):
    tuned, result = pulsed
    p = result.pulse_model
    assert p["model"] == "soft-bounds" and p["total"] == p["set"] + p["reset"] == result.pulses
    assert 0 < result.writes <= p["total"]
    # a thresholded write asks each device for at least 0.75 uS, several pulses of at most 0.25/0.35 uS
    assert p["total"] >= 2 * result.writes
    assert result.to_dict()["pulse_model"] == p and tuned.provenance["tuning"]["pulse_model"] == p


def test_same_seed_same_pulsed_tuning(setup, pulsed):
    tuned, result = _tune(setup, PULSED)
    assert result.pulse_model == pulsed[1].pulse_model and result.accuracy_after == pulsed[1].accuracy_after
    np.testing.assert_array_equal(tuned.conductances["programmed_us"], pulsed[0].conductances["programmed_us"])


def test_write_verify_lands_written_devices_within_the_tolerance(setup):
    tuned, result = _tune(setup, PULSED + ["pulse.verify_tolerance_us=0.3"], keep="final")
    manifest = setup[0]
    dev = manifest.target.device
    ids = tuned.conductances["arrays"]
    nominal = dev.g_min_us + manifest.arrays[ids].astype(np.float64) * dev.step_us
    goal, got = tuned.conductances["target_us"], tuned.conductances["programmed_us"]
    written = goal != nominal
    assert written.sum() > 0 and result.pulse_model["total"] > 0
    miss = np.abs(got[written] - goal[written]) > 0.3 + 1e-12
    assert miss.mean() < 0.01                                      # the 200-pulse budget nearly always suffices


def test_without_a_pulse_model_the_result_has_no_pulse_model(setup):
    _, result = _tune(setup, ["nonideal.program_sigma_us=0.54"], epochs=1)
    assert result.pulse_model is None and "pulse_model" not in result.to_dict()
    assert result.pulses >= result.writes > 0       # without a model: one pulse per write and per retry


def test_cli_prints_pulses_and_refuses_write_verify_flags(setup, tmp_path):
    _, _, d = setup
    sets = [a for s in PULSED for a in ("--set", s)]
    code, out, err = run_cli(["tune", d / "m", "--data", d / "tune.npz", "-o", tmp_path / "t", "--lr", "1",
                              "--json", *sets])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["pulse_model"]["total"] == doc["pulse_model"]["set"] + doc["pulse_model"]["reset"] == doc["pulses"] > 0
    code, out, err = run_cli(["tune", d / "m", "--data", d / "tune.npz", "-o", tmp_path / "t2", "--lr", "1", *sets])
    assert code == 0 and "soft-bounds pulses" in out and "SET" in out
    assert_refused(["tune", d / "m", "--data", d / "tune.npz", "-o", tmp_path / "t3", "--write-verify", "2", *sets],
                   ["--write-verify", "pulse.verify_tolerance_us"], watch=[tmp_path])
