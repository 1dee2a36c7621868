"""`cimc run --backend crossbar`, in process: trials, the JSON fields, --layers, device options and bad values."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

import cimc
from cimc import zoo
from cimc.cli import main
from cimc.targets.devices import save_defect_map

TIMING = {"backend_seconds", "reference_seconds", "integer_seconds", "bind_seconds"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("run_cli")
    onnx.save(zoo.mcnn(), d / "mcnn.onnx")
    rng = np.random.default_rng(0)
    calib = rng.random((16, 1, 28, 28), dtype=np.float32)
    np.savez(d / "calib.npz", x=calib)
    np.savez(d / "test.npz", x=rng.random((40, 1, 28, 28), dtype=np.float32), y=rng.integers(0, 10, 40))
    manifest = cimc.compile(d / "mcnn.onnx", "yao2020-mcnn", calibration=calib)
    manifest.save(d / "m")
    return d


def _run(setup, capsys, *extra):
    d = setup
    rc = main(["run", str(d / "m"), "--data", str(d / "test.npz"), "--backend", "crossbar", "--json", *extra])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else None), out.err


def test_ideal_run_equals_integer(setup, capsys):
    rc, r, _ = _run(setup, capsys, "--ideal")
    assert rc == 0
    assert r["agreement_with_integer"] == 1.0 and r["max_abs_diff_vs_integer"] == 0.0
    assert r["accuracy"] == r["integer_accuracy"] and r["trials"] == [r["integer_accuracy"]]
    assert r["crossbar"]["adc"]["lossless"] is True and r["warnings"] == []


def test_compiled_manifest_carries_the_calibrated_full_scale(setup, capsys):
    rc, r, err = _run(setup, capsys, "--adc-bits", "8")
    assert rc == 0 and "warning" not in err and not r["warnings"]
    assert all(p["source"] == "calibrated (manifest)" for p in r["crossbar"]["adc_full_scale"].values())


def test_missing_calibrated_full_scale_is_a_warning(setup, capsys, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(setup / "m", old)
    doc = json.loads((old / "manifest.json").read_text())
    for op in doc["ops"]:
        op.pop("adc_full_scale_ua", None)            # a manifest written before ADC calibration existed
    (old / "manifest.json").write_text(json.dumps(doc))
    rc = main(["run", str(old), "--data", str(setup / "test.npz"), "--backend", "crossbar", "--json",
               "--adc-bits", "8"])
    out = capsys.readouterr()
    r = json.loads(out.out)
    assert rc == 0 and "cimc: warning:" in out.err and "'max' full scale" in out.err
    assert r["warnings"] and all(layer_fs.startswith("max") for layer_fs in
                                 [p["source"] for p in r["crossbar"]["adc_full_scale"].values()])


def test_trials_fields_and_reproducibility(setup, capsys):
    args = ("--seed", "7", "--trials", "3", "--program-sigma", "540nS", "--adc-full-scale", "max",
            "--read-noise", "0.05uS")
    rc, r, err = _run(setup, capsys, *args)
    assert rc == 0 and err == ""                                       # no progress bar with --json
    for key in ("trials", "accuracy_mean", "accuracy_std", "agreement_with_integer", "max_abs_diff_vs_integer",
                "backend_seconds", "reference_seconds", "seeds", "per_trial"):
        assert key in r
    assert r["seeds"] == [7, 8, 9] and len(r["trials"]) == 3 and len(r["per_trial"]) == 3
    assert r["accuracy_mean"] == pytest.approx(np.mean(r["trials"]))
    assert r["accuracy_std"] == pytest.approx(np.std(r["trials"], ddof=1))
    assert r["max_abs_diff_vs_integer"] > 0 and r["crossbar"]["nonideal"]["program_sigma_us"] == pytest.approx(0.54)
    assert r["backend_seconds"] > 0 and r["reference_seconds"] > 0
    diffs = [p["max_abs_diff_vs_integer"] for p in r["per_trial"]]
    assert len(set(diffs)) == 3                                        # independent chips
    rc, again, _ = _run(setup, capsys, *args)
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING | {"per_trial"}}  # noqa: E731
    assert strip(again) == strip(r)
    assert [{k: v for k, v in p.items() if k not in TIMING} for p in again["per_trial"]] == \
           [{k: v for k, v in p.items() if k not in TIMING} for p in r["per_trial"]]


def test_layers_report(setup, capsys):
    rc, r, _ = _run(setup, capsys, "--layers", "--calibration", str(setup / "calib.npz"), "--adc-bits", "6")
    assert rc == 0
    names = [layer["name"] for layer in r["layers"]]
    assert names == [op.name for op in cimc.load(setup / "m").graph.xbar_ops()]
    for layer in r["layers"]:
        assert 0 < layer["rel_error"] < 1 and layer["snr_db"] > 0 and 0 <= layer["adc_clip_rate"] <= 1
        assert layer["adc_full_scale_source"].startswith("calibrated")
    assert r["crossbar"]["adc"]["bits"] == 6


def test_text_output_with_layers(setup, capsys):
    d = setup
    rc = main(["run", str(d / "m"), "--data", str(d / "test.npz"), "--backend", "crossbar", "--trials", "2",
               "--stuck-rate", "11%", "--stuck-at", "10uS", "--drift-time", "1d", "--drift-nu", "0.05",
               "--adc-full-scale", "max", "--layers"])
    out = capsys.readouterr().out
    assert rc == 0 and "over 2 chips" in out and "agreement with integer" in out and "C1" in out


def test_defect_map_option(setup, capsys, tmp_path):
    n = cimc.load(setup / "m").total_arrays
    stuck = np.zeros((n, 128, 16), bool)
    path = save_defect_map(tmp_path / "defects.npz", stuck)
    rc, r, _ = _run(setup, capsys, "--defect-map", str(path), "--set", "nonideal.program_sigma_us=0",
                    "--set", "adc.lossless=true")
    assert rc == 0 and r["max_abs_diff_vs_integer"] == 0.0 and r["crossbar"]["defect_map"] == str(path)
    stuck[:] = True
    save_defect_map(tmp_path / "dead.npz", stuck)
    rc, r, _ = _run(setup, capsys, "--defect-map", str(tmp_path / "dead.npz"))
    assert rc == 0 and r["max_abs_diff_vs_integer"] > 0


@pytest.mark.parametrize("extra, message", [
    (["--program-sigma=-0.5uS"], "--program-sigma"),
    (["--program-sigma", "0.5uF"], "unknown unit"),
    (["--stuck-rate", "1.5"], "--stuck-rate"),
    (["--drift-time", "3fortnights"], "--drift-time"),
    (["--read-noise", "x"], "--read-noise"),
    (["--adc-bits", "0"], "--adc-bits"),
    (["--trials", "0"], "--trials"),
    (["--ideal", "--program-sigma", "0.54uS"], "--ideal"),
    (["--copy", "5"], "copy=5"),
    (["--set", "nonideal.bogus=1"], "bogus"),
    (["--defect-map", "/nonexistent/defects.npz"], "defect map"),
])
def test_bad_values_exit_2(setup, capsys, extra, message):
    rc, _, err = _run(setup, capsys, *extra)
    assert rc == 2 and message in err and err.startswith("cimc: error:")


def test_crossbar_options_need_the_crossbar_backend(setup, capsys):
    d = setup
    rc = main(["run", str(d / "m"), "--data", str(d / "test.npz"), "--backend", "integer", "--trials", "2"])
    assert rc == 2 and "--backend crossbar" in capsys.readouterr().err


def test_defect_map_named_in_the_target(setup, capsys, tmp_path):
    """A target field (nonideal.defect_map) names the map as well as --defect-map does."""
    n = cimc.load(setup / "m").total_arrays
    path = save_defect_map(tmp_path / "dead.npz", np.ones((n, 128, 16), bool))
    rc, r, _ = _run(setup, capsys, "--set", f"nonideal.defect_map={path}")
    assert rc == 0 and r["max_abs_diff_vs_integer"] > 0
    rc, r, _ = _run(setup, capsys, "--set", f"nonideal.defect_map={tmp_path / 'missing.npz'}")
    assert rc == 2
