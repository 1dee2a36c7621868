"""ADC and input-driver non-idealities (cimc.targets.adc, the crossbar backend): per-ADC gain and offset, INL,
sense noise and the analog DAC's curve, each against an independent expectation — a slow per-read reference loop
written here from the documented formulas, closed-form statistics — plus seeds, fallbacks and the target fields."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnx_models as om
import pytest

import cimc
from cimc import Session, zoo
from cimc.backends.crossbar import CrossbarBackend, dac_amplitudes
from cimc.errors import TargetError
from cimc.targets.adc import AdcModel, adc_convert, adc_range
from cimc.targets.registry import load_target
from cimc.targets.spec import AdcSpec

F32 = np.float32
IDEAL_DEVICES = ["nonideal.program_sigma_us=0"]
EFFECTS = ["adc.gain_sigma_rel=0.03", "adc.offset_sigma_lsb=0.7", "adc.inl_lsb=1.5", "adc.noise_sigma_lsb=0.4"]
FS_STEPS = 60.0                       # the ADC full scale of the test layer, in conductance steps


@pytest.fixture(scope="module")
def fc(tmp_path_factory):
    """One 20 x 6 fully connected layer (one tile: 20 rows, 12 device columns) on yao2020-resnet (4 columns per
    ADC), signed 8-bit inputs."""
    model = om.matmul(k=20, m=6)
    path = tmp_path_factory.mktemp("adc") / "fc.onnx"
    onnx.save(model, path)
    calib = np.random.default_rng(1).standard_normal((32, 20)).astype(np.float32)
    return cimc.compile(path, "yao2020-resnet", calibration=calib)


def _bound(manifest, overrides, seed=7, **kw):
    op = manifest.graph.xbar_ops()[0]
    unit_ua = 0.2 * manifest.target.device.step_us
    ideal_devices = ["nonideal.program_sigma_us=0"]          # integer currents: the reference sums them exactly
    b = CrossbarBackend(seed=seed, overrides=ideal_devices + list(overrides or []), adc_full_scale={op.name: FS_STEPS * unit_ua}, **kw)
    b.bind(manifest.graph, manifest.arrays, manifest.target)
    return b, op


def _codes(op, n, seed=3):
    q = op.input_quant
    return np.random.default_rng(seed).integers(q.qmin, q.qmax + 1, (n, op.rows)).astype(np.float32)


def _reference(manifest, op, x, seed, gain_sigma, offset_sigma, inl, noise_sigma, grid=1):
    """The documented read, one conversion at a time: bit-plane currents of the g+ and g- lines (ideal devices:
    integer step units plus g_min), c = I * (top / FS) in float32, c' = g c + o + INL(g c + o) + n, rint, clip,
    shift-and-add, g+ codes minus g- codes, times the LSB. ADC k of array a converts columns 4k..4k+3 and draws
    (z_gain, z_offset) from spawn key (0xADC, a) of the seed; sample i's sense noise is spawn key (0xADC+1, 0, 0, i).
    `grid`: currents in units of step / grid (gemm="int8")."""
    t = manifest.target
    tile = op.tiles[0]
    p = tile.placements[0]
    levels = manifest.arrays[p.array].astype(np.int64)
    o = int(t.device.g_min_us / t.device.step_us)
    bits, signed = op.input_quant.bits, op.input_quant.signed
    lo, top = adc_range(t.adc.bits, False)
    per_array = t.array.cols // t.adc.columns_per_adc
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0xADC, p.array))))
    z_gain, z_off = rng.standard_normal(per_array), rng.standard_normal(per_array)
    n_out = tile.col_count
    columns = [p.col_offset + 2 * j for j in range(n_out)] + [p.col_offset + 2 * j + 1 for j in range(n_out)]
    out = np.zeros((len(x), n_out), np.float32)
    for i, row in enumerate(x.astype(np.int64)):
        u = row & ((1 << bits) - 1) if signed else row
        sense = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0xADC + 1, 0, 0, i))))
        z = sense.standard_normal((bits, 1, 2 * n_out), dtype=np.float32)
        acc = np.zeros(2 * n_out)
        for j in range(bits):
            w = -(1 << j) if signed and j == bits - 1 else 1 << j
            for line, col in enumerate(columns):
                current = sum(((int(u[r]) >> j) & 1) * (levels[p.row_offset + r, col] + o) for r in range(op.rows))
                k = col // t.adc.columns_per_adc
                c = F32(current * grid) * F32(top / (FS_STEPS * grid))
                c = c * F32(1.0 + gain_sigma * z_gain[k])
                c = c + F32(offset_sigma * z_off[k])
                s = min(max((c - F32(lo)) * F32(1.0 / (top - lo)), F32(0)), F32(1))
                c = c + (s * (F32(1) - s)) * F32(4 * inl)
                c = c + z[j, 0, line] * F32(noise_sigma)
                acc[line] += w * min(max(float(np.rint(c)), lo), top)
        out[i] = ((acc[:n_out] - acc[n_out:]) * (FS_STEPS / top)).astype(np.float32)
    return out


def test_every_effect_matches_the_per_read_reference(fc):
    b, op = _bound(fc, EFFECTS)
    x = _codes(op, 4)
    got = b.mvm(op, x, len(x))
    want = _reference(fc, op, x, 7, 0.03, 0.7, 1.5, 0.4)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert not np.array_equal(got, _reference(fc, op, x, 7, 0, 0, 0, 0))      # the effects do something


@pytest.mark.parametrize("which", range(4))
def test_each_effect_alone_matches_the_reference(fc, which):
    values = [0.0, 0.0, 0.0, 0.0]
    values[which] = [0.05, 1.2, -2.0, 0.8][which]
    names = ["gain_sigma_rel", "offset_sigma_lsb", "inl_lsb", "noise_sigma_lsb"]
    b, op = _bound(fc, [f"adc.{n}={v}" for n, v in zip(names, values)], seed=11)
    x = _codes(op, 3, seed=which)
    assert np.array_equal(b.mvm(op, x, len(x)), _reference(fc, op, x, 11, *values))


def test_effects_at_zero_are_the_ideal_adc_bit_for_bit(fc):
    """Every effect at zero: the reads equal the reference's ideal ADC and the backend without the fields."""
    zero = ["adc.gain_sigma_rel=0", "adc.offset_sigma_lsb=0", "adc.inl_lsb=0", "adc.noise_sigma_lsb=0"]
    b, op = _bound(fc, zero)
    plain, _ = _bound(fc, None)
    x = _codes(op, 5)
    got = b.mvm(op, x, len(x))
    assert np.array_equal(got, _reference(fc, op, x, 7, 0, 0, 0, 0))
    assert np.array_equal(got, plain.mvm(op, x, len(x)))
    assert b.chip_identity() == plain.chip_identity() and "adc" not in b.chip_identity()


def test_same_seed_same_chip_whatever_the_batch(fc):
    x = np.random.default_rng(5).standard_normal((6, 20)).astype(np.float32)
    whole = Session(fc, backend="crossbar", seed=4, overrides=EFFECTS).run(x)
    one_by_one = np.concatenate([Session(fc, backend="crossbar", seed=4, overrides=EFFECTS).run(x[i:i + 1], samples=[i])
                                 for i in range(len(x))])
    assert np.array_equal(whole, one_by_one)
    other = Session(fc, backend="crossbar", seed=5, overrides=EFFECTS).run(x)
    assert not np.array_equal(whole, other)


def test_converted_constant_has_the_closed_form_error_statistics():
    """A constant current c (in LSB) converted by 40,000 ADC instances with sense noise: the code error has mean 0
    and variance (c sigma_gain)^2 + sigma_offset^2 + sigma_noise^2 + 1/12 (rounding of a wide distribution)."""
    spec = AdcSpec(bits=10, columns_per_adc=1, gain_sigma_rel=0.01, offset_sigma_lsb=2.0, noise_sigma_lsb=1.0)
    model = AdcModel(spec, seed=3, n_arrays=2500, cols=16)
    arrays, cols = np.divmod(np.arange(2500 * 16), 16)
    c = 300.25
    full_scale = 1023.0
    current = np.full((1, len(arrays)), c * full_scale / 1023, np.float32)
    noise = np.random.default_rng(9).standard_normal(current.shape).astype(np.float32) * F32(1.0)
    codes, _ = adc_convert(current, 10, full_scale, lines=model.lines(arrays, cols), noise=noise)
    err = codes[0].astype(np.float64) - c
    sigma = np.sqrt((c * 0.01) ** 2 + 2.0 ** 2 + 1.0 ** 2 + 1 / 12)
    assert abs(err.mean()) < 4 * sigma / np.sqrt(err.size)
    assert err.std() == pytest.approx(sigma, rel=0.02)
    # per ADC (without sense noise) the gains and offsets are the documented draws' spread
    assert model.gain.std() == pytest.approx(0.01, rel=0.03) and model.offset_lsb.std() == pytest.approx(2.0, rel=0.03)


def test_inl_is_the_documented_bow():
    """INL alone: the code of a value v is rint(v + inl 4 s (1 - s)), s = (v - lo) / (top - lo); zero at both ends."""
    spec = AdcSpec(bits=8, inl_lsb=3.0)
    lines = AdcModel(spec, 0, 1, 16).lines(np.zeros(1, int), np.zeros(1, int))
    v = np.array([[0.0], [63.75], [127.5], [200.0], [255.0]], np.float32)
    codes, _ = adc_convert(v.copy(), 8, 255.0, lines=lines)
    s = v[:, 0] / 255
    assert codes[:, 0].tolist() == np.clip(np.rint(v[:, 0] + 3.0 * 4 * s * (1 - s)), 0, 255).tolist()
    assert codes[0, 0] == 0 and codes[-1, 0] == 255 and codes[2, 0] == np.rint(127.5 + 3.0)


def test_adc_instances_are_keyed_by_array():
    """Array a's ADCs are the same however many arrays the chip has (drawn per array from the seed)."""
    spec = AdcSpec(gain_sigma_rel=0.1, offset_sigma_lsb=1.0)
    small, big = AdcModel(spec, 5, 3, 16), AdcModel(spec, 5, 9, 16)
    assert np.array_equal(small.gain, big.gain[:3]) and np.array_equal(small.offset_lsb, big.offset_lsb[:3])
    assert not np.array_equal(AdcModel(spec, 6, 3, 16).gain, small.gain)
    # turning the offset off leaves the gains unchanged (both are always drawn)
    assert np.array_equal(AdcModel(AdcSpec(gain_sigma_rel=0.1), 5, 3, 16).gain, small.gain)


def test_lut_reader_falls_back_to_float32_with_sense_noise(fc):
    pytest.importorskip("numba")
    x = np.random.default_rng(5).standard_normal((3, 20)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = Session(fc, backend="crossbar", seed=2, overrides=IDEAL_DEVICES + EFFECTS, gemm="lut")
        y = s.run(x)
    assert any("gemm='lut' draws no sense noise" in str(w.message) for w in caught)
    assert s.backend.reader == "float32"
    assert np.array_equal(y, Session(fc, backend="crossbar", seed=2, overrides=IDEAL_DEVICES + EFFECTS).run(x))


def test_lut_reader_applies_gain_offset_and_inl(fc):
    """Without sense noise the table reads (the default reader) convert through the same ADC instances: the
    per-read reference loop on the lut grid (step / q: currents of q x integer steps), bit for bit."""
    pytest.importorskip("numba")
    static = EFFECTS[:3]                                            # gain, offset, INL
    b, op = _bound(fc, static)
    assert b.reader == "lut" and b.grid > 14
    x = _codes(op, 3, seed=4)
    want = _reference(fc, op, x, 7, 0.03, 0.7, 1.5, 0.0, grid=b.grid)
    assert np.array_equal(b.mvm(op, x, len(x)), want)
    ideal, _ = _bound(fc, [], gemm="lut")
    assert not np.array_equal(ideal.mvm(op, x, len(x)), want)


def test_int8_reader_applies_the_same_adc(fc):
    """gemm="int8" (exact int32 currents on a grid of step / q) goes through the same ADC, effects included."""
    b, op = _bound(fc, EFFECTS, gemm="int8")
    assert b.reader == "int8" and b.grid > 1
    x = _codes(op, 3, seed=4)
    assert np.array_equal(b.mvm(op, x, len(x)), _reference(fc, op, x, 7, 0.03, 0.7, 1.5, 0.4, grid=b.grid))


# -- the input drivers (analog amplitudes) -------------------------------------------------------------------------
def test_dac_curve_closed_form():
    x = np.array([[-127.0, -64.0, 0.0, 32.0, 63.5, 127.0]], np.float32)
    u = dac_amplitudes(x, 127, 2.0)
    s = np.abs(x[0].astype(np.float64)) / 127
    assert np.allclose(u[0], x[0] + 2.0 * 4 * s * (1 - s) * np.sign(x[0]), rtol=0, atol=1e-5)
    assert u[0, 0] == -127 and u[0, 2] == 0 and u[0, -1] == 127
    assert dac_amplitudes(x, 127, 0.0) is x


def test_dac_non_linearity_on_li_arrays_against_float64(tmp_path):
    """li2018 (analog inputs, differential rows), ideal devices and a lossless ADC: the accumulators are the
    bowed amplitudes times the levels (float64 reference), and with the curve off the integer product exactly."""
    model = zoo.mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    calib = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float32)
    m = cimc.compile(path, "li2018", calibration=calib, overrides=["chip.chips=0"])
    op = m.graph.xbar_ops()[0]
    flat = ["nonideal.stuck_rate=0", "nonideal.update_sigma_rel=0", "nonideal.program_sigma_us=0",
            "nonideal.program_sigma_rel=0", "nonideal.read_noise_sigma_us=0", "adc.lossless=true"]
    b = CrossbarBackend(overrides=flat + ["input.dac_inl_lsb=3"])
    b.bind(m.graph, m.arrays, m.target)
    x = _codes(op, 4)
    levels = b.plans[op.name].exact_levels
    qmax = max(abs(op.input_quant.qmin), op.input_quant.qmax)
    s = np.abs(x.astype(np.float64)) / qmax
    want = (x + 3.0 * 4 * s * (1 - s) * np.sign(x)) @ levels
    got = b.mvm(op, x, len(x))
    assert np.allclose(got, want, rtol=1e-5, atol=1e-3) and not np.allclose(got, x @ levels, atol=1e-3)
    off = CrossbarBackend(overrides=flat)
    off.bind(m.graph, m.arrays, m.target)
    assert np.array_equal(off.mvm(op, x, len(x)), (x.astype(np.float64) @ levels).astype(np.float32))


# -- the target fields ------------------------------------------------------------------------------------------
def test_fields_are_settable_shown_and_checked():
    t = load_target("yao2020-resnet", EFFECTS)
    d = t.to_dict()["adc"]
    assert (d["gain_sigma_rel"], d["offset_sigma_lsb"], d["inl_lsb"], d["noise_sigma_lsb"]) == (0.03, 0.7, 1.5, 0.4)
    with pytest.raises(TargetError, match="adc.offset_sigma_lsb"):
        load_target("yao2020-resnet", ["adc.offset_sigma_lsb=-1"])
    with pytest.raises(TargetError, match="input.dac_inl_lsb.*analog"):
        load_target("yao2020-resnet", ["input.dac_inl_lsb=1"])
    assert load_target("li2018", ["input.dac_inl_lsb=1.5"]).input.dac_inl_lsb == 1.5


# -- cimc insitu's chip uses the same ADC instances ----------------------------------------------------------------
def test_insitu_chip_converts_through_the_targets_adc_instances():
    """Li's in-situ chip with adc_bits: each column's current in LSB of the read's range (full = max |I|) goes
    through its ADC's gain, offset and the INL bow before rounding; ADC k = column k, drawn from key (0xADC, 0)."""
    from cimc.insitu import chip_for_target
    target = load_target("li2018", ["adc.gain_sigma_rel=0.04", "adc.offset_sigma_lsb=0.8", "adc.inl_lsb=0.6"])
    chip = chip_for_target(target, adc_bits=6, seed=2, stuck_rate=0.0)
    w = np.random.default_rng(0).uniform(-1, 1, (64, 54))
    chip.program(0, w)
    v = np.random.default_rng(1).uniform(0, 0.2, (5, 64))
    lay = chip.layers[0]
    exact = np.concatenate([v, -v], 1) @ np.concatenate([chip.g[lay.rows_plus, lay.cols], chip.g[lay.rows_minus,
                                                                                                   lay.cols]])
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(2, spawn_key=(0xADC, 0))))
    z_gain, z_off = rng.standard_normal(64)[:54], rng.standard_normal(64)[:54]
    top = 31
    step = np.abs(exact).max() / top
    t = exact / step * np.float32(1 + 0.04 * z_gain).astype(np.float64) + np.float32(0.8 * z_off).astype(np.float64)
    s = np.clip((t + top) / (2 * top), 0, 1)
    want = np.clip(np.round(t + s * (1 - s) * 4 * 0.6), -top, top) * step
    got = chip.currents(0, v)
    assert np.allclose(got, want, rtol=0, atol=1e-9 * step)
    plain = chip_for_target(load_target("li2018"), adc_bits=6, seed=2, stuck_rate=0.0)
    plain.program(0, w)
    assert np.array_equal(plain.currents(0, v), np.round(exact / step) * step)


# -- the command line ---------------------------------------------------------------------------------------------
def test_cli_targets_json_shows_the_fields_and_run_refuses_a_bad_value(fc, tmp_path, capsys):
    import json

    from cimc.cli import main
    assert main(["targets", "--json"]) == 0
    shown = {t["name"]: t for t in json.loads(capsys.readouterr().out)["targets"]}
    assert shown["yao2020-resnet"]["adc"]["offset_sigma_lsb"] == 0.0 and "dac_inl_lsb" in shown["li2018"]["input"]
    fc.save(tmp_path / "m")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((4, 20)).astype(np.float32))
    rc = main(["run", str(tmp_path / "m"), "--data", str(tmp_path / "x.npz"), "--backend", "crossbar",
               "--set", "adc.offset_sigma_lsb=-0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "adc.offset_sigma_lsb" in err
    rc = main(["run", str(tmp_path / "m"), "--data", str(tmp_path / "x.npz"), "--backend", "crossbar", "--json",
               "--set", "adc.offset_sigma_lsb=0.5", "--set", "adc.noise_sigma_lsb=0.2"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and r["crossbar"]["adc"]["offset_sigma_lsb"] == 0.5 and r["crossbar"]["reader"] == "float32"


def test_a_tuned_chip_is_the_same_chip_only_with_the_same_adcs(fc):
    """cimc tune writes the chip instance it reads, ADCs included: its identity records the ADC effects, so the
    tuned conductances apply to the same seed and ADCs and to nothing else."""
    from cimc.data import Dataset
    from cimc.training import tune
    name = fc.graph.inputs[0].name
    x = np.random.default_rng(2).standard_normal((60, 20)).astype(np.float32)
    labels = Session(fc, backend="float").run(x).argmax(1)
    chip = ["nonideal.program_sigma_us=1.0"] + EFFECTS
    tuned, result = tune(fc, Dataset({name: x}, labels, None, None), seed=3, overrides=chip, holdout=0.2)
    recorded = json.loads(json.dumps(tuned.provenance["tuning"]["chip"]))
    assert recorded["adc"] == {"gain_sigma_rel": 0.03, "offset_sigma_lsb": 0.7, "inl_lsb": 1.5, "noise_sigma_lsb": 0.4}
    assert Session(tuned, backend="crossbar", seed=3, overrides=chip).backend.tuning_applied
    other_adcs = chip[:-1] + ["adc.noise_sigma_lsb=0.5"]
    assert not Session(tuned, backend="crossbar", seed=3, overrides=other_adcs).backend.tuning_applied


# -- row drivers' gain errors ---------------------------------------------------------------------------------------
def _driver_gains(seed, array, rows, sigma):
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0xDAC, array))))
    return 1.0 + sigma * rng.standard_normal(rows)


def test_driver_gains_scale_their_rows_columns_layout(fc):
    """Yao's column pairs, lossless ADC, ideal devices: the accumulator is sum_r x_r a_r (G+_r - G-_r), a_r the
    gain of the driver of physical row r (drawn from key (0xDAC, array)); g_min cancels in the pair."""
    b = CrossbarBackend(seed=4, overrides=IDEAL_DEVICES + ["adc.lossless=true", "input.driver_gain_sigma_rel=0.05"])
    b.bind(fc.graph, fc.arrays, fc.target)
    op = fc.graph.xbar_ops()[0]
    p = op.tiles[0].placements[0]
    a = _driver_gains(4, p.array, fc.target.array.rows, 0.05)[p.row_offset:p.row_offset + op.rows]
    x = _codes(op, 4)
    levels = b.plans[op.name].exact_levels
    want = x.astype(np.float64) @ (a[:, None] * levels)
    got = b.mvm(op, x, len(x))
    assert np.allclose(got, want, rtol=1e-5, atol=1e-2) and not np.allclose(got, x @ levels, atol=1)
    assert b.chip_identity()["drivers"]["driver_gain_sigma_rel"] == 0.05


def test_driver_gains_on_li_row_pairs_do_not_cancel_g_min(tmp_path):
    """Li's +v/-v row blocks are driven by different drivers: the line carries sum_r u_r ((L+_r + o) a_r -
    (L-_r + o) a'_r) with o = g_min / step, so g_min no longer cancels exactly."""
    path = tmp_path / "mlp.onnx"
    onnx.save(zoo.mlp(), path)
    calib = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float32)
    m = cimc.compile(path, "li2018", calibration=calib, overrides=["chip.chips=0"])
    op = m.graph.xbar_ops()[0]
    flat = ["nonideal.stuck_rate=0", "nonideal.update_sigma_rel=0", "adc.lossless=true",
            "input.driver_gain_sigma_rel=0.1"]
    b = CrossbarBackend(seed=6, overrides=flat)
    b.bind(m.graph, m.arrays, m.target)
    tile = op.tiles[0]
    p = tile.placements[0]
    half = m.target.array.rows // 2
    a = _driver_gains(6, p.array, m.target.array.rows, 0.1)
    rows = p.row_offset + np.arange(tile.row_count)
    cols = p.col_offset + np.arange(tile.col_count)
    arr = m.arrays[p.array].astype(np.float64)
    o = m.target.device.g_min_us / m.target.device.step_us
    eff = (arr[np.ix_(rows, cols)] + o) * a[rows, None] - (arr[np.ix_(rows + half, cols)] + o) * a[rows + half, None]
    x = _codes(op, 3)
    want = x[:, tile.row_start:tile.row_start + tile.row_count].astype(np.float64) @ eff
    got = b.mvm(op, x, len(x))[:, tile.col_start:tile.col_start + tile.col_count]
    assert len(op.tiles) == 1 and np.allclose(got, want, rtol=1e-5, atol=1e-2)


def test_sense_noise_on_replicated_convolutions_is_batch_independent(tmp_path):
    """Convolutions read from uint8 im2col codes, a replicated layer's copies each take their samples: sample i's
    conversions still come from its own stream, so one batch equals sample-by-sample runs."""
    model = om.small_cnn()
    path = tmp_path / "cnn.onnx"
    onnx.save(model, path)
    calib = next(iter(om.random_feeds(model, 16, 1).values()))
    m = cimc.compile(path, "yao2020-resnet", calibration=calib, replicate={"conv1": 2})
    x = next(iter(om.random_feeds(model, 5, 2).values()))
    session = Session(m, backend="crossbar", seed=3, overrides=EFFECTS)
    with_adc = session.run(x)
    assert {p.conv_route for p in session.backend.plans.values()} >= {"codes"}
    alone = np.concatenate([Session(m, backend="crossbar", seed=3, overrides=EFFECTS).run(x[i:i + 1], samples=[i])
                            for i in range(len(x))])
    assert np.array_equal(with_adc, alone)
    assert not np.array_equal(with_adc, Session(m, backend="crossbar", seed=3).run(x))


def test_analog_reads_with_read_noise_through_a_finite_adc(tmp_path):
    """Li's analog inputs with read noise and an 8-bit ADC (this crashed before: the noise variance summed the wrong
    axis): each sample's noise is its own, whatever the batch, and ADC effects add to it."""
    path = tmp_path / "mlp.onnx"
    onnx.save(zoo.mlp(), path)
    calib = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float32)
    m = cimc.compile(path, "li2018", calibration=calib, overrides=["chip.chips=0"])
    x = np.random.default_rng(4).standard_normal((5, 64)).astype(np.float32)
    noisy = ["nonideal.read_noise_sigma_us=0.3"]
    whole = Session(m, backend="crossbar", seed=2, overrides=noisy).run(x)
    alone = np.concatenate([Session(m, backend="crossbar", seed=2, overrides=noisy).run(x[i:i + 1], samples=[i])
                            for i in range(len(x))])
    assert np.array_equal(whole, alone) and np.all(np.isfinite(whole))
    assert not np.array_equal(whole, Session(m, backend="crossbar", seed=2).run(x))
    with_adc = Session(m, backend="crossbar", seed=2, overrides=noisy + ["adc.offset_sigma_lsb=1"]).run(x)
    assert not np.array_equal(with_adc, whole)
