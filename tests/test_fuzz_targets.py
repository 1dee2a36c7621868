"""Bad target values are refused, naming the field; devices with up to 256 levels work exactly (issue 11, items 4
(target/device half) and 5).

The corpus is built from the target's fields: every float field set to NaN, +-Inf, an overflowing 1e400, text and
(where a negative value means nothing) -1; every int field to non-integers, text and out-of-range values; every
enumerated text field to an unknown word; every bool to a non-bool. Each goes through `cimc count --set`, a sample
through `cimc run --backend crossbar --set` and through a target TOML file.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from refusal import assert_refused, run_cli

import cimc
from cimc.backends import lut_reads
from cimc.executor import Session
from cimc.manifest import load
from cimc.targets.registry import preset_names

# Written out here (not read from targets/spec.py) so that the test states what is valid independently.
FLOAT_FIELDS = ["device.g_min_us", "device.g_max_us", "input.read_voltage_v", "input.pulse_ns", "adc.energy_pj",
                "nonideal.program_sigma_us", "nonideal.program_sigma_rel", "nonideal.stuck_rate",
                "nonideal.read_noise_sigma_us", "nonideal.drift_nu", "nonideal.drift_nu_sigma", "nonideal.drift_t0_s",
                "nonideal.drift_time_s", "nonideal.update_sigma_rel", "quant.percentile", "energy.array_pj_per_slot",
                "energy.driver_pj_per_slot", "energy.digital_pj_per_op", "energy.array_area_um2",
                "energy.peripheral_area_um2", "timing.slot_ns", "nonideal.relaxation_sigma_us",
                "nonideal.read_noise_t_read_s"]
NEGATIVE_MEANINGFUL = {"nonideal.drift_nu"}          # a negative drift exponent: conductance that grows
INT_FIELDS = {"array.rows": 1, "array.cols": 2, "device.levels": 2, "input.bits": 2, "adc.bits": 1,
              "adc.columns_per_adc": 1, "chip.arrays_per_pe": 1, "chip.pes_per_chip": 1, "chip.chips": 0}  # minimum
INT_MAXIMA = {"device.levels": 256, "input.bits": 16, "adc.bits": 24}
ENUM_FIELDS = ["array.differential", "input.encoding", "adc.full_scale", "quant.weights", "quant.calibration",
               "nonideal.stuck_at", "nonideal.drift_nu_model", "nonideal.read_noise_1f_model",
               "nonideal.drift_compensation"]
LIST_FIELDS = ["nonideal.program_sigma_levels_us", "nonideal.program_sigma_poly_us", "nonideal.drift_nu_levels",
               "nonideal.drift_nu_sigma_levels", "nonideal.read_noise_1f_levels"]
BOOL_FIELDS = ["adc.lossless", "timing.adc_sharing_stalls"]


def _float_cases():
    for f in FLOAT_FIELDS:
        for v in ("nan", "NaN", "inf", "-inf", "1e400", "abc", "1,5", "0x10"):
            yield f, v
        if f not in NEGATIVE_MEANINGFUL:
            yield f, "-1"
    yield "nonideal.stuck_rate", "1.5"
    yield "quant.percentile", "0"
    yield "quant.percentile", "100.5"
    yield "nonideal.drift_t0_s", "0"
    yield "device.g_max_us", "1"           # below g_min_us = 2.5
    yield "timing.slot_ns", "0"
    yield "nonideal.read_noise_t_read_s", "0"


def _int_cases():
    for f, lo in INT_FIELDS.items():
        for v in ("1.5", "nan", "inf", "abc", "1e3", str(lo - 1), "true"):
            yield f, v
        if f in INT_MAXIMA:
            yield f, str(INT_MAXIMA[f] + 1)
            yield f, str(2 ** 64)
    for v in ("129.0", "257", "1000", "1e9", "-129", "300"):
        yield "device.levels", v
    yield "array.cols", "15"               # odd with differential = "columns"


def _word_cases():
    for f in ENUM_FIELDS:
        yield f, "abc"
        yield f, ""
    for v in ("nan", "NaN", "inf", "-inf", "-1", "1e400", "10 uS"):
        yield "nonideal.stuck_at", v
    for f in BOOL_FIELDS:
        for v in ("maybe", "2", "nan", "-1"):
            yield f, v
    for f in LIST_FIELDS:                  # lists of numbers: comma-separated on --set
        for v in ("nan,1", "1,inf", "a,b", "1;2"):
            yield f, v
        if f != "nonideal.program_sigma_poly_us":    # one value per device level (any count for a polynomial)
            yield f, "1,2"


SET_CASES = list(_float_cases()) + list(_int_cases()) + list(_word_cases())


@pytest.mark.parametrize("field,value", SET_CASES)
def test_count_set_refused(mcnn_dir, field, value):
    assert_refused(["count", mcnn_dir / "mcnn.onnx", "--target", "yao2020-mcnn", "--set", f"{field}={value}"],
                   field, watch=[mcnn_dir])


@pytest.fixture(scope="module")
def compiled(mcnn_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_targets")
    np.savez(root / "x.npz", x=np.random.default_rng(2).random((3, 1, 28, 28), dtype=np.float32))
    code, _, err = run_cli(["compile", mcnn_dir / "mcnn.onnx", "--target", "yao2020-mcnn", "--calibration",
                            mcnn_dir / "calib.npz", "-o", root / "m"])
    assert code == 0, err
    return root


RUN_CASES = [(f, v) for f, v in SET_CASES if f.startswith(("nonideal.", "device.levels", "adc.bits"))
             and v in ("nan", "inf", "-1", "1e400", "abc", "257", "1e9")]


@pytest.mark.parametrize("field,value", RUN_CASES)
def test_run_crossbar_set_refused(compiled, field, value):
    assert_refused(["run", compiled / "m", "--data", compiled / "x.npz", "--backend", "crossbar", "--set",
                    f"{field}={value}"], field, watch=[compiled])


@pytest.mark.parametrize("flag,value", [("--drift-nu", "nan"), ("--drift-nu", "inf"), ("--drift-nu", "-inf"),
                                        ("--drift-nu-sigma", "nan"), ("--stuck-at", "nan"), ("--stuck-at", "-1uS"),
                                        ("--program-sigma", "nan"), ("--read-noise", "inf")])
def test_run_crossbar_flag_refused(compiled, flag, value):
    assert_refused(["run", compiled / "m", "--data", compiled / "x.npz", "--backend", "crossbar", flag, value],
                   flag, watch=[compiled])


def _toml(path, section, field, literal):
    """yao2020-mcnn's fields, with one field of one section replaced by a TOML literal."""
    from cimc.targets.registry import _read_raw
    raw, _ = _read_raw("yao2020-mcnn")
    lines = ['name = "bad"']
    raw.setdefault(section, {})[field] = "@@"
    for sec, values in raw.items():
        if not isinstance(values, dict):
            continue
        lines.append(f"[{sec}]")
        for k, v in values.items():
            lines.append(f"{k} = {literal if v == '@@' else json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


TOML_CASES = [(f, lit) for f in FLOAT_FIELDS for lit in ("nan", "inf", "-inf", "1e400")] + \
             [(f, "-1.0") for f in FLOAT_FIELDS if f not in NEGATIVE_MEANINGFUL] + \
             [(f, lit) for f in INT_FIELDS for lit in ("1.5", '"8"', "true", "-9")] + \
             [("device.levels", "257"), ("device.levels", "1e9"), ("device.levels", "65536"),
              ("nonideal.stuck_at", '"nan"'), ("nonideal.stuck_at", '"-3"'), ("nonideal.stuck_at", "nan")] + \
             [(f, lit) for f in LIST_FIELDS for lit in ("[1.0, nan]", '["a"]', "[true]", "1.0")]


@pytest.mark.parametrize("field,literal", TOML_CASES)
def test_toml_target_refused(mcnn_dir, tmp_path, field, literal):
    section, name = field.split(".")
    path = _toml(tmp_path / "t.toml", section, name, literal)
    assert_refused(["count", mcnn_dir / "mcnn.onnx", "--target", path], [str(path), field.split(".")[1]],
                   watch=[tmp_path, mcnn_dir])


@pytest.mark.parametrize("field,literal", [("name", "3"), ("description", "[1]"), ("name", "true")])
def test_toml_name_must_be_text(mcnn_dir, tmp_path, field, literal):
    from cimc.targets.registry import _read_raw
    raw, _ = _read_raw("yao2020-mcnn")
    text = "\n".join([f"{field} = {literal}"] + (['name = "x"'] if field != "name" else []) +
                     [f"[{s}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in vals.items())
                      for s, vals in raw.items() if isinstance(vals, dict)])
    (tmp_path / "t.toml").write_text(text + "\n")
    assert_refused(["count", mcnn_dir / "mcnn.onnx", "--target", tmp_path / "t.toml"], field,
                   watch=[tmp_path, mcnn_dir])


def test_toml_control_loads(mcnn_dir, tmp_path):
    """The TOML writer above produces a valid target when nothing is spoiled."""
    path = _toml(tmp_path / "t.toml", "device", "g_min_us", "2.5")
    code, _, err = run_cli(["count", mcnn_dir / "mcnn.onnx", "--target", path, "--no-optimize"])
    assert code == 0, err


# -- defect maps ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.inf, -np.inf, -1.0, -1e-3])
def test_defect_map_bad_conductance_at_stuck_cell(compiled, tmp_path, value):
    stuck = np.zeros((8, 128, 16), bool)
    stuck[2, 5, 7] = True
    g = np.full(stuck.shape, np.nan)
    g[2, 5, 7] = value
    np.savez(tmp_path / "dm.npz", stuck=stuck, g_us=g)
    err = assert_refused(["run", compiled / "m", "--data", compiled / "x.npz", "--backend", "crossbar",
                          "--defect-map", tmp_path / "dm.npz"], ["dm.npz", "g_us"], watch=[tmp_path, compiled])
    assert "[2, 5, 7]" in err


def test_defect_map_nan_means_stuck_at(compiled, tmp_path):
    """NaN at a stuck cell is documented as the target's stuck_at: the same run as a map without g_us."""
    stuck = np.zeros((8, 128, 16), bool)
    stuck[2, 5, :] = True
    np.savez(tmp_path / "nan.npz", stuck=stuck, g_us=np.full(stuck.shape, np.nan))
    np.savez(tmp_path / "plain.npz", stuck=stuck)
    outs = []
    for name in ("nan.npz", "plain.npz"):
        code, out, err = run_cli(["run", compiled / "m", "--data", compiled / "x.npz", "--backend", "crossbar",
                                  "--defect-map", tmp_path / name, "--json"])
        assert code == 0, err
        outs.append(json.loads(out))
    for key in ("max_abs_error", "max_abs_diff_vs_integer", "agreement"):
        assert outs[0][key] == outs[1][key], key


# -- device.levels up to 256 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [129, 200, 256])
def test_wide_levels_accepted(mcnn_dir, levels):
    code, _, err = run_cli(["count", mcnn_dir / "mcnn.onnx", "--target", "yao2020-mcnn", "--set",
                            f"device.levels={levels}", "--no-optimize"])
    assert code == 0, err


@pytest.fixture(scope="module")
def wide(mcnn_dir, tmp_path_factory):
    """The mCNN compiled for 16- and 256-level devices (ideal preset otherwise), saved and loaded back."""
    x = np.random.default_rng(3).random((24, 1, 28, 28), dtype=np.float32)
    out = {"x": x}
    for levels in (16, 256):
        m = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=mcnn_dir / "calib.npz",
                         overrides=[f"device.levels={levels}", "nonideal.program_sigma_us=0"], optimize=False)
        out[levels] = load(m.save(tmp_path_factory.mktemp("wide") / f"L{levels}"))
    sess = ort.InferenceSession(str(mcnn_dir / "mcnn.onnx"), providers=["CPUExecutionProvider"])
    out["onnx"] = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return out


def test_256_levels_use_the_full_range(wide):
    """Signed levels reach +-255 (they wrapped in int8 before) and survive save/load."""
    m = wide[256]
    assert max(int(np.abs(op.levels).max()) for op in m.graph.xbar_ops()) == 255
    assert int(m.arrays.max()) == 255
    for op in m.graph.xbar_ops():
        scales = op.weight_scales.astype(np.float64)
        expected = np.clip(np.rint(op.matrix.astype(np.float64) / scales), -255, 255)
        np.testing.assert_array_equal(op.levels, expected)


def test_256_levels_ideal_crossbar_equals_integer_bit_for_bit(wide):
    m, x = wide[256], wide["x"]
    integer = Session(m, "integer").run(x)
    crossbar = Session(m, "crossbar", ideal=True).run(x)
    np.testing.assert_array_equal(crossbar, integer)


def test_256_levels_agree_with_onnxruntime_at_least_as_well_as_16(wide):
    errors = {}
    for levels in (16, 256):
        y = Session(wide[levels], "integer").run(wide["x"])
        errors[levels] = float(np.abs(y - wide["onnx"]).max())
    assert errors[256] <= errors[16], errors


def test_256_levels_int8_falls_back_to_float32_bit_for_bit(wide):
    """Ideal devices through a real (8-bit) ADC: a conductance of 255 steps does not fit int8, so gemm='int8' reads
    as gemm='float32' does and gives its numbers exactly."""
    m, x = wide[256], wide["x"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = Session(m, "crossbar", gemm="int8")
        y = int8.run(x)
    assert int8.backend.reader == "float32"
    np.testing.assert_array_equal(y, Session(m, "crossbar", gemm="float32").run(x))


def test_256_levels_lut_differs_from_float32_only_at_half_lsb_ties(wide, monkeypatch):
    """g_min is 510/14 steps at 256 levels: exact on the lut grid (14), while the float32 reader sums float32(level +
    g_min) and multiplies a float32 current by the float32 gain top / FS. So their ADC inputs differ by a few float32
    ulps, and a conversion within that of a half-LSB threshold may round apart (on this mCNN: C3's full scale is
    its calibrated peak, 60264/14 steps, and a read of exactly 10044/14 = 1/6 of it sits at 255/6 = 42.5 LSB).
    Independent expectation: every float32 conversion farther than 1e-4 LSB from a tie equals the ADC applied in
    float64 to the exact grid current; with the few near-tie ones rounded as the lut kernel rounds them
    (float32(current) x float32(gain), ties to even), the float32 reader's outputs equal the lut's bit for bit."""
    if not lut_reads.available():
        pytest.skip("numba not installed")
    from cimc.backends import plane_reader
    m, x = wide[256], wide["x"]
    lut = Session(m, "crossbar", gemm="lut")
    expected = lut.run(x)
    grid = lut.backend.grid
    assert lut.backend.reader == "lut" and grid == 14
    convert, seen = plane_reader.adc_convert, {"conversions": 0, "ties": 0, "wrong": 0}

    def converted_exactly_except_at_ties(current, bits, full_scale, bipolar=False, out=None, **kw):
        lo, top = plane_reader.adc_range(bits, bipolar)
        steps = np.rint(current.astype(np.float64) * grid)             # the exact current, in grid steps
        assert np.abs(current * grid - steps).max() < 0.05
        exact = steps * top / (full_scale * grid)                       # float64
        codes, _ = convert(current.copy(), bits, full_scale, bipolar, **kw)
        tie = np.abs(exact - np.floor(exact) - 0.5) < 1e-4
        seen["conversions"] += current.size
        seen["ties"] += int(tie.sum())
        seen["wrong"] += int(np.count_nonzero((codes != np.clip(np.rint(exact), lo, top)) & ~tie))
        as_lut = np.rint(steps.astype(np.float32) * np.float32(top / (full_scale * grid)))
        codes[tie] = np.clip(as_lut, lo, top)[tie]
        if out is not None:
            out[...] = codes
            codes = out
        return codes, 0

    monkeypatch.setattr(plane_reader, "adc_convert", converted_exactly_except_at_ties)
    y = Session(m, "crossbar", gemm="float32").run(x)
    assert seen["conversions"] > 200_000 and seen["wrong"] == 0
    assert seen["ties"] <= 1e-3 * seen["conversions"], seen
    np.testing.assert_array_equal(y, expected)


def test_presets_load():
    """Every preset is still valid under the stricter checks."""
    from cimc.targets.registry import load_target
    for name in preset_names():
        assert load_target(name).name == name
