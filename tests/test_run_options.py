"""Options of run, tune, count and compile: bad values refused naming the flag; count and compile agree; the hints
that run and compile give about their data (input clipping, few or outlier-dominated calibration samples,
programming error beyond the device range); a reference model that does not fit the manifest."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from refusal import assert_refused, run_cli

import cimc
from cimc.compiler import MIN_CALIBRATION_SAMPLES
from cimc.evaluate import INPUT_CLIP_WARN

SHAPE = (1, 28, 28)


def _images(n, seed=0):
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


@pytest.fixture(scope="module")
def setup(mcnn_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("run_options")
    shutil.copy(mcnn_dir / "mcnn.onnx", root / "mcnn.onnx")
    manifest = cimc.compile(root / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz")
    manifest.save(root / "m")
    np.savez(root / "data.npz", x=_images(40, 1), y=np.arange(40) % 10)
    np.savez(root / "calib64.npz", x=_images(64, 2))
    return {"root": root, "manifest": root / "m", "data": root / "data.npz", "model": root / "mcnn.onnx",
            "calib": root / "calib64.npz"}


def _run(s, *extra):
    return ["run", s["manifest"], "--data", s["data"], *extra]


def _tune(s, *extra):
    return ["tune", s["manifest"], "--data", s["data"], "-o", s["root"] / "tuned", *extra]


RUN_BAD = [
    (("--limit", "0"), "--limit 0"), (("--limit", "-5"), "--limit -5"), (("--limit", "-1"), "--limit -1"),
    (("--limit", "ten"), "--limit"), (("--limit", "1.5"), "--limit"),
    (("--batch-size", "0"), "--batch-size 0"), (("--batch-size", "-3"), "--batch-size -3"),
    (("--batch-size", "nan"), "--batch-size"),
    (("--seed", "1"), "--seed"), (("--seed", "0", "--backend", "float"), "--seed"),
    (("--copy", "0"), "--copy"),
    (("--seed", "-1", "--backend", "crossbar"), "--seed -1"),
    (("--seed", "-100", "--backend", "crossbar", "--trials", "3"), "--seed -100"),
    (("--seed", "x", "--backend", "crossbar"), "--seed"),
    (("--trials", "0", "--backend", "crossbar"), "--trials 0"),
    (("--trials", "-2", "--backend", "crossbar"), "--trials -2"),
    (("--trials", "2"), "--trials"),
    (("--copy", "-1", "--backend", "crossbar"), "--copy -1"),
    (("--program-sigma", "nan", "--backend", "crossbar"), "--program-sigma"),
    (("--program-sigma", "-1uS", "--backend", "crossbar"), "--program-sigma"),
    (("--program-sigma", "0.5uS"), "--program-sigma"),
    (("--drift-nu", "inf", "--backend", "crossbar"), "--drift-nu"),
    (("--adc-bits", "0", "--backend", "crossbar"), "--adc-bits"),
    (("--backend", "crossbar", "--limit", "0", "--seed", "3"), "--limit 0"),
]


@pytest.mark.parametrize("extra,culprit", RUN_BAD, ids=[" ".join(e) for e, _ in RUN_BAD])
def test_run_refuses_bad_options(setup, extra, culprit):
    assert_refused(_run(setup, *extra), culprit, watch=[setup["root"]])


# What the manifest fixed at compile time cannot be changed by a run's --set (it used to be ignored silently).
COMPILE_TIME = ["array.rows=64", "array.cols=32", "array.differential=rows", "device.levels=16", "input.bits=6",
                "quant.weights=layer", "quant.calibration=percentile", "chip.arrays_per_pe=2", "chip.chips=3"]


@pytest.mark.parametrize("command", ["run", "tune"])
@pytest.mark.parametrize("field", COMPILE_TIME)
def test_a_run_cannot_change_what_the_manifest_fixed(setup, command, field):
    argv = _run(setup, "--backend", "crossbar") if command == "run" else _tune(setup)
    assert_refused([*argv, "--set", field], ["--set " + field.split("=")[0], "recompile"], watch=[setup["root"]])


def test_a_run_may_change_the_physics(setup):
    """Devices' conductances, non-idealities and the ADC are the chip's, not the manifest's: they stay settable."""
    code, _out, err = run_cli(_run(setup, "--backend", "crossbar", "--limit", "4", "--set", "device.g_max_us=25",
                                   "--set", "adc.bits=6", "--set", "nonideal.program_sigma_us=0.3"))
    assert code == 0, err


TUNE_BAD = [(("--seed", "-1"), "--seed -1"), (("--seed", "-7", "--epochs", "2"), "--seed -7"),
            (("--seed", "nan"), "--seed"), (("--program-sigma", "inf"), "--program-sigma")]


@pytest.mark.parametrize("extra,culprit", TUNE_BAD, ids=[" ".join(e) for e, _ in TUNE_BAD])
def test_tune_refuses_bad_chip_options(setup, extra, culprit):
    assert_refused(_tune(setup, *extra), culprit, watch=[setup["root"]])


PLAN_BAD = [(("--time-limit", v), "--time-limit") for v in ("nan", "inf", "-inf", "0", "-1", "NaN", "1e999")] + \
           [(("--target-fps", v), "--target-fps") for v in ("nan", "inf", "0", "-5", "-inf", "1e999")] + \
           [(("--arrays", v), "--arrays") for v in ("0", "-1", "nan", "inf", "2.5")]


@pytest.mark.parametrize("command", ["count", "compile"])
@pytest.mark.parametrize("extra,culprit", PLAN_BAD, ids=[" ".join(e) for e, _ in PLAN_BAD])
def test_plan_options_refused_by_count_and_compile(setup, command, extra, culprit):
    argv = [command, setup["model"], "--target", "yao2020-mcnn", *extra]
    if command == "compile":
        argv += ["--calibration", setup["calib"], "-o", setup["root"] / "out"]
    assert_refused(argv, culprit, watch=[setup["root"]])


AGREEMENT = [(), ("--target-fps", "10000"), ("--target-fps", "1000"), ("--target-fps", "3000"),
             ("--replicate", "C1=9", "--no-optimize"), ("--replicate", "C1=2", "--no-optimize"),
             ("--arrays", "8"), ("--arrays", "6"), ("--arrays", "7"),
             ("--set", "chip.chips=0", "--target-fps", "10000"),
             ("--no-optimize",), ("--replicate", "FC=3")]


@pytest.mark.parametrize("flags", AGREEMENT, ids=[" ".join(f) or "defaults" for f in AGREEMENT])
def test_count_and_compile_agree(setup, tmp_path, flags):
    """The same flags through both commands: both succeed with the same arrays, or both refuse (exit 2)."""
    common = [setup["model"], "--target", "yao2020-mcnn", *flags, "--json"]
    count_code, count_out, count_err = run_cli(["count", *common])
    compile_code, compile_out, compile_err = run_cli(["compile", *common, "--calibration", setup["calib"],
                                                      "-o", tmp_path / "out"])
    assert (count_code, "Traceback" in count_err) == (compile_code, False), (count_err, compile_err)
    assert count_code in (0, 2)
    if count_code == 0:
        counted, compiled = json.loads(count_out), json.loads(compile_out)
        assert counted["total_arrays"] == compiled["total_arrays"]
        assert [row["copies"] for row in counted["layers"]] == [row["copies"] for row in compiled["layers"]]
        assert counted["total_arrays"] <= 8 or "chip.chips=0" in flags   # yao2020-mcnn: one chip of 8 arrays
    else:
        assert not (tmp_path / "out").exists()


def test_target_fps_over_the_chip_names_the_rate_and_the_budget(setup):
    """The case of the issue: 10000 fps needs 9 arrays, the chip has 8; count printed OPTIMAL before."""
    assert_refused(["count", setup["model"], "--target", "yao2020-mcnn", "--target-fps", "10000"],
                   ["--target-fps 10000", "9 arrays", "has 8", "--arrays 8"], watch=[setup["root"]])


def test_batch_size_has_help_text():
    code, out, _ = run_cli(["run", "--help"])
    assert code == 0
    line = out[out.index("  --batch-size"):].split("--json")[0]
    assert "samples" in line and "default 100" in line


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("cimc: warning:")]


def _clip_share(x: np.ndarray, scale: float, qmax: int, qmin: int) -> float:
    t = np.rint(x / np.float32(scale))
    return float(np.mean((t > qmax) | (t < qmin)))


@pytest.mark.parametrize("backend", ["integer", "crossbar"])
def test_raw_pixels_warn_about_input_clipping(setup, tmp_path, backend):
    """Pixels 0..255 into a model calibrated on 0..1: the share that clips at C1's input quantiser is reported
    and warned about, equal to an independent count of the codes beyond the quantiser's range."""
    x = _images(40, 1) * 255
    path = tmp_path / "raw.npz"
    np.savez(path, x=x)
    extra = ["--backend", backend] + (["--layers"] if backend == "crossbar" else [])
    code, out, err = run_cli(["run", setup["manifest"], "--data", path, "--json", *extra])
    assert code == 0, err
    result = json.loads(out)
    q = cimc.load(setup["manifest"]).graph.op("C1").input_quant
    expected = _clip_share(x, q.scale, q.qmax, q.qmin)
    assert expected > INPUT_CLIP_WARN
    assert result["input_clip_rates"]["C1"] == pytest.approx(expected, abs=1e-12)
    assert any("'C1'" in w and f"{expected:.1%}" in w for w in _warnings(err)), err
    if backend == "crossbar":
        row = next(r for r in result["layers"] if r["name"] == "C1")
        assert row["input_clip_rate"] == pytest.approx(expected, abs=1e-12)


def test_layers_table_has_an_input_clip_column(setup):
    code, out, err = run_cli(_run(setup, "--backend", "crossbar", "--layers", "--limit", "5"))
    assert code == 0, err
    header = next(line for line in out.splitlines() if "rel.error" in line)
    assert "input clip" in header
    assert not _warnings(err), err   # data scaled like the calibration data: no clipping warning


def test_normal_data_gives_no_clipping_warning_and_same_numbers(setup):
    """The clipping count only observes: the outputs of the integer run are those of a plain Session."""
    code, out, err = run_cli(_run(setup, "--json"))
    assert code == 0 and not _warnings(err), err
    result = json.loads(out)
    assert result["input_clip_rates"]["C1"] <= INPUT_CLIP_WARN
    with np.load(setup["data"]) as f:
        x, y = f["x"], f["y"]
    logits = cimc.Session(setup["manifest"], backend="integer").run(x)
    assert result["accuracy"] == float(np.mean(logits.argmax(1) == y))


@pytest.mark.parametrize("sigma,warns", [("30uS", True), ("17.6uS", True), ("0.54uS", False), ("17uS", False)])
def test_program_sigma_beyond_the_conductance_range_warns(setup, sigma, warns):
    """yao2020-mcnn devices span 2.5..20 uS: a sigma above 17.5 uS (a unit slip) is warned about."""
    code, _, err = run_cli(_run(setup, "--backend", "crossbar", "--program-sigma", sigma, "--limit", "4"))
    assert code == 0, err
    assert any("--program-sigma" in w and "conductance range" in w for w in _warnings(err)) == warns, err


@pytest.mark.parametrize("n,warns", [(3, True), (MIN_CALIBRATION_SAMPLES - 1, True),
                                     (MIN_CALIBRATION_SAMPLES, False), (64, False)])
def test_few_calibration_samples_warn(setup, tmp_path, n, warns):
    path = tmp_path / "calib.npz"
    np.savez(path, x=_images(n, 5))
    code, out, err = run_cli(["compile", setup["model"], "--target", "yao2020-mcnn", "--calibration", path,
                              "-o", tmp_path / "out", "--json"])
    assert code == 0, err
    assert any("calibration sample" in w and str(n) in w for w in _warnings(err)) == warns, err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["provenance"]["calibration"]["samples"] == n


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("rule", ["max", "percentile"])
@pytest.mark.parametrize("outlier", [3e38, 1e4, 2000.0])
def test_outlier_in_calibration_is_named_and_the_rule_applied(setup, tmp_path, outlier, rule):
    """One extreme pixel among 64 images: compile applies the documented rule (max: the range is the outlier;
    percentile: clipped), warns naming the input and the layer reading it, and writes valid JSON."""
    x = _images(64, 3)
    x[17, 0, 3, 5] = outlier
    path = tmp_path / "calib.npz"
    np.savez(path, x=x)
    code, _, err = run_cli(["compile", setup["model"], "--target", "yao2020-mcnn", "--calibration", path,
                            "-o", tmp_path / "out", "--set", f"quant.calibration={rule}"])
    assert code == 0, err
    doc = _strict_json((tmp_path / "out" / "manifest.json").read_text())
    warned = [w for w in _warnings(err) if "'C1'" in w and "percentile" in w]
    assert len(warned) == 1, err
    outliers = doc["provenance"]["calibration"]["outliers"]
    assert [o["input"] for o in outliers] == ["input"] and outliers[0]["layers"] == ["C1"]
    assert outliers[0]["absmax"] == pytest.approx(float(np.float32(outlier)))
    scale = cimc.load(tmp_path / "out").graph.op("C1").input_quant.scale
    if rule == "max":
        assert scale == pytest.approx(float(np.float32(outlier)) / 255, rel=1e-6)
        assert "--set quant.calibration=percentile" in warned[0]
    else:
        assert scale < 1.0 / 255 * 1.01    # the percentile of 0..1 pixels, not the outlier


def test_calibration_without_outliers_gives_no_outlier_warning(setup, tmp_path):
    code, out, err = run_cli(["compile", setup["model"], "--target", "yao2020-mcnn", "--calibration", setup["calib"],
                              "-o", tmp_path / "out"])
    assert code == 0 and not _warnings(err), err


def test_calibration_that_overflows_the_float_model_is_refused(setup):
    """Every pixel 3e38: the activations overflow float32 to inf, which would make scale inf; refused naming the
    layer."""
    path = setup["root"] / "huge.npz"
    np.savez(path, x=np.full((40, *SHAPE), 3e38, np.float32))
    assert_refused(["compile", setup["model"], "--target", "yao2020-mcnn", "--calibration", path,
                    "-o", setup["root"] / "out"], ["huge.npz", "not finite", "layer"], watch=[setup["root"]])


def _renamed_input(model_path, new_name):
    model = onnx.load(model_path)
    old = model.graph.input[0].name
    model.graph.input[0].name = new_name
    for node in model.graph.node:
        node.input[:] = [new_name if t == old else t for t in node.input]
    return model


def _other_input_size(model_path):
    model = onnx.load(model_path)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 32
    return model


@pytest.mark.parametrize("backend", ["integer", "float", "crossbar"])
@pytest.mark.parametrize("kind", ["renamed", "resized"])
def test_reference_with_other_inputs_is_refused(setup, tmp_path_factory, backend, kind):
    d = tmp_path_factory.mktemp("reference")
    ref = d / "other.onnx"
    model = _renamed_input(setup["model"], "image") if kind == "renamed" else _other_input_size(setup["model"])
    onnx.save(model, ref)
    expected = "'image'" if kind == "renamed" else "shape"
    assert_refused(_run(setup, "--reference", ref, "--backend", backend), ["other.onnx", "input", expected],
                   watch=[setup["root"], d])


def test_recorded_source_model_with_other_inputs_is_refused(setup, mcnn_dir, tmp_path):
    """The source model recorded in the manifest was replaced by one with other input names."""
    model = tmp_path / "mcnn.onnx"
    shutil.copy(mcnn_dir / "mcnn.onnx", model)
    cimc.compile(model, "yao2020-mcnn", calibration=setup["calib"]).save(tmp_path / "m")
    onnx.save(_renamed_input(model, "pixels"), model)
    assert_refused(["run", tmp_path / "m", "--data", setup["data"]], ["mcnn.onnx", "'pixels'", "--reference"],
                   watch=[tmp_path])
