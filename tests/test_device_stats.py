"""Conductance-dependent device statistics (cimc.targets.device_stats, issue 12 item 4), each against a closed form:
the sample statistics of a large seeded chip instance against the stated formula, with tolerances of 5-6 standard
errors; with every statistic off, an instance is the one the draws of before give (bit for bit)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from cimc.backends.chip import Chip
from cimc.backends.crossbar import CrossbarBackend
from cimc.errors import TargetError
from cimc.ir import ActQuant, Graph, Placement, TensorInfo, Tile, XbarOp
from cimc.targets.devices import DeviceModel
from cimc.targets.registry import load_target

SHAPE = (8, 256, 256)      # 524,288 cells, 16 levels: ~32,768 per level
DAY = 86400.0


def _levels(levels=16, seed=0):
    return np.random.default_rng(seed).integers(0, levels, SHAPE).astype(np.uint8)


def _pcm(*overrides):
    """The PCM preset with every statistic off, then the given overrides."""
    off = ["nonideal.program_sigma_poly_us=", "nonideal.drift_nu_model=none", "nonideal.read_noise_1f_model=none",
           "nonideal.drift_compensation=none"]
    return load_target("pcm-aihwkit", off + list(overrides))


def _std_ok(sample, sigma, k=5.0):
    return abs(sample.std() - sigma) < k * sigma / np.sqrt(2 * sample.size)


def test_statistics_off_draw_the_instance_of_before():
    """The three draws and formulas of the chip instance as they were (a transcription, not the module's code)."""
    target = load_target("yao2020-resnet", ["nonideal.program_sigma_us=0.54", "nonideal.program_sigma_rel=0.02",
                                            "nonideal.stuck_rate=0.05", "nonideal.drift_nu=0.05",
                                            "nonideal.drift_nu_sigma=0.01", "nonideal.drift_time_s=3600"])
    levels = _levels(8)[:2]
    inst = DeviceModel.from_target(target).program(levels, seed=7)
    rng = np.random.default_rng(7)
    z, u, zn = rng.standard_normal(levels.shape), rng.random(levels.shape), rng.standard_normal(levels.shape)
    g_t = 2.5 + 2.5 * levels.astype(np.float64)
    g = np.maximum(g_t + (0.54 + 0.02 * g_t) * z, 0.0) * (3600 / 1.0) ** -(0.05 + 0.01 * zn)
    g[u < 0.05] = 2.5
    assert np.array_equal(inst.conductance_us, g)
    assert inst.reference_us is None
    chip = Chip(target, levels, seed=7)
    assert set(chip.identity()["nonideal"]) == {"program_sigma_us", "program_sigma_rel", "stuck_rate", "stuck_at",
                                                "read_noise_sigma_us", "drift_nu", "drift_nu_sigma", "drift_t0_s",
                                                "drift_time_s", "update_sigma_rel", "defect_map"}


def test_statistics_off_leave_the_instance_ideal():
    model = DeviceModel.from_target(_pcm())
    assert model.ideal
    levels = _levels()[:1]
    assert np.array_equal(model.program(levels, 3).conductance_us, levels * (25.0 / 15))


def test_programming_sigma_per_level():
    sigmas = [0.1 + 0.05 * k for k in range(16)]
    target = _pcm("nonideal.program_sigma_levels_us=" + ",".join(map(str, sigmas)))
    levels = _levels()
    inst = DeviceModel.from_target(target).program(levels, seed=1)
    err = inst.programmed_us - inst.target_us
    for k in range(1, 16):                       # level 0 (0 uS) is floored at 0: a half normal
        sel = err[levels == k]
        assert abs(sel.mean()) < 5 * sigmas[k] / np.sqrt(sel.size)
        assert _std_ok(sel, sigmas[k])


def test_programming_sigma_polynomial_is_aihwkits():
    target = load_target("pcm-aihwkit", ["nonideal.drift_nu_model=none", "nonideal.read_noise_1f_model=none"])
    levels = _levels()
    inst = DeviceModel.from_target(target).program(levels, seed=2)
    for k in range(2, 16):
        g = 25.0 * k / 15
        sigma = 0.26348 + 1.9650 * g / 25 - 1.1731 * (g / 25) ** 2        # aihwkit prog_coeff, g_max 25 uS
        sel = (inst.programmed_us - inst.target_us)[levels == k]
        assert _std_ok(sel, sigma)


@pytest.mark.parametrize("model", ["pcm", "levels"])
def test_drift_exponents_are_folded_normals_per_level(model):
    if model == "pcm":
        target = _pcm("nonideal.drift_nu_model=pcm", f"nonideal.drift_time_s={DAY}")
    else:
        target = _pcm("nonideal.drift_nu_model=levels", f"nonideal.drift_time_s={DAY}",
                      "nonideal.drift_nu_levels=" + ",".join(str(0.1 - 0.004 * k) for k in range(16)),
                      "nonideal.drift_nu_sigma_levels=" + ",".join(str(0.01 + 0.002 * k) for k in range(16)))
    levels = _levels()
    inst = DeviceModel.from_target(target).program(levels, seed=3)
    for k in range(1, 16, 2):
        g = 25.0 * k / 15
        if model == "pcm":
            x = np.log(g / 25)
            mu, s = np.clip(-0.0155 * x + 0.0244, 0.049, 0.1), np.clip(-0.0125 * x - 0.0059, 0.008, 0.045)
        else:
            mu, s = 0.1 - 0.004 * k, 0.01 + 0.002 * k
        folded = stats.foldnorm(mu / s, scale=s)
        nu = inst.nu[levels == k]
        assert abs(nu.mean() - folded.mean()) < 5 * folded.std() / np.sqrt(nu.size)
        assert _std_ok(nu, folded.std(), 6)
        sel = levels == k             # no programming error here: g(t) = g_T (t / t0)^-nu exactly
        assert np.allclose(inst.conductance_us[sel], g * (DAY / 20.0) ** -inst.nu[sel], rtol=1e-12)


@pytest.mark.parametrize("t", [20.0, DAY])
def test_one_over_f_noise_relative_spread(t):
    target = _pcm("nonideal.read_noise_1f_model=pcm", f"nonideal.drift_time_s={t}")
    levels = _levels()
    inst = DeviceModel.from_target(target).program(levels, seed=4)
    factor = np.sqrt(np.log((t + 250e-9) / (2 * 250e-9)))
    for k in range(1, 16, 3):
        q = min(0.0088 / (k / 15) ** 0.65, 0.2)
        sel = levels == k
        rel = inst.conductance_us[sel] / inst.target_us[sel] - 1
        assert abs(rel.mean()) < 5 * q * factor / np.sqrt(rel.size)
        assert _std_ok(rel, q * factor)


def test_relaxation_spread_grows_with_log_time():
    levels = _levels()
    for t in (200.0, 2e4, 2e6):                  # 1, 3 and 5 decades after t0 = 20 s
        target = _pcm("nonideal.relaxation_sigma_us=0.2", f"nonideal.drift_time_s={t}")
        inst = DeviceModel.from_target(target).program(levels, seed=5)
        sel = levels >= 4                         # away from the 0 uS floor
        err = (inst.conductance_us - inst.target_us)[sel]
        assert _std_ok(err, 0.2 * np.sqrt(np.log10(t / 20.0)))


def test_statistics_draw_from_their_own_streams_and_repeat_by_seed():
    levels = _levels()[:2]
    base = ["nonideal.read_noise_1f_model=pcm", f"nonideal.drift_time_s={DAY}"]
    a = DeviceModel.from_target(_pcm(*base)).program(levels, seed=9)
    b = DeviceModel.from_target(_pcm(*base, "nonideal.relaxation_sigma_us=0.1")).program(levels, seed=9)
    again = DeviceModel.from_target(_pcm(*base)).program(levels, seed=9)
    other = DeviceModel.from_target(_pcm(*base)).program(levels, seed=10)
    assert np.array_equal(a.conductance_us, again.conductance_us)
    assert not np.array_equal(a.conductance_us, other.conductance_us)
    # relaxation adds its own term; the 1/f draws stay (away from the floor at 0 uS)
    rng = np.random.default_rng(9)
    for _ in range(4):
        rng.standard_normal(levels.shape) if _ != 1 else rng.random(levels.shape)
    z_relax = rng.standard_normal(levels.shape)
    sel = levels >= 4
    expect = a.conductance_us + 0.1 * np.sqrt(np.log10(DAY / 20)) * z_relax
    assert np.allclose(b.conductance_us[sel], expect[sel], rtol=0, atol=1e-12)


def test_level_lists_are_checked_against_the_level_count():
    with pytest.raises(TargetError, match="program_sigma_levels_us.*one per device level"):
        _pcm("nonideal.program_sigma_levels_us=0.1,0.2")
    with pytest.raises(TargetError, match="drift_nu_levels"):
        _pcm("nonideal.drift_nu_model=levels")
    with pytest.raises(TargetError, match="drift_compensation"):
        _pcm("nonideal.drift_compensation=perfect")
    with pytest.raises(TargetError, match="comma-separated"):
        _pcm("nonideal.program_sigma_levels_us=a,b")


def _one_layer(rows=256, cols=128, seed=0):
    """One MatMul that fills one 256x256 array (g+ on even columns, g- on odd)."""
    levels = np.random.default_rng(seed).integers(-15, 16, (rows, cols)).astype(np.int8)
    op = XbarOp("fc", "MatMul", ["x"], ["y"], levels.astype(np.float32), None, input_quant=ActQuant(1.0, False, 8),
                levels=levels, weight_scales=np.ones(cols, np.float32),
                tiles=[Tile(0, rows, 0, cols, [Placement(0)])])
    return Graph([TensorInfo("x", (None, rows))], [TensorInfo("y", (None, cols))], [op]), op, levels


@pytest.mark.parametrize("adc", [[], ["adc.lossless=false", "adc.bits=12", "adc.full_scale=max"]],
                         ids=["lossless", "12-bit"])
def test_global_drift_compensation_scales_outputs_by_the_reference_ratio(adc):
    """Digital, after the ADC: compensated = alpha x uncompensated (any reader: the lossless product, lut reads)."""
    graph, op, levels = _one_layer()
    x = np.random.default_rng(1).integers(0, 256, (6, 256)).astype(np.float32)
    out = {}
    for gdc in ("none", "global"):
        target = load_target("pcm-aihwkit", [f"nonideal.drift_time_s={DAY}", f"nonideal.drift_compensation={gdc}",
                                             *adc])
        be = CrossbarBackend(seed=3)
        be.bind(graph, None, target)
        assert be.reader == ("product" if not adc else "lut")
        out[gdc] = be.mvm(op, x, len(x))
        if gdc == "global":
            inst = be.chip.instance
            ref, now = inst.reference_us[0], inst.conductance_us[0]
            alpha = np.abs(ref[:, 0::2] - ref[:, 1::2]).sum() / np.abs(now[:, 0::2] - now[:, 1::2]).sum()
            assert np.isclose(be.plans["fc"].drift_scale[0], alpha, rtol=1e-12)
            assert be.describe()["drift_compensation_alpha"] == {"fc": [be.plans["fc"].drift_scale[0]]}
        else:
            assert "drift_compensation_alpha" not in be.describe()
    assert alpha > 1.2                              # a day of PCM drift loses over a sixth of the signal
    assert np.array_equal(out["global"], out["none"] * np.float32(alpha))
    exact = x.astype(np.float64) @ levels
    scale = lambda y: float((y * exact).sum() / (exact * exact).sum())   # least-squares gain against exact
    assert abs(scale(out["global"]) - 1) < abs(scale(out["none"]) - 1) / 5


def test_compensation_without_drift_is_one():
    """Programming error but no drift: the read at t is the reference read, alpha = 1 exactly."""
    graph, op, _ = _one_layer()
    target = load_target("pcm-aihwkit", ["nonideal.drift_nu_model=none", "nonideal.read_noise_1f_model=none"])
    be = CrossbarBackend(seed=0)
    be.bind(graph, None, target)
    assert be.plans["fc"].drift_scale.tolist() == [1.0]


def test_compensation_without_drift_is_one_through_wire_resistance():
    """The reference read goes through the same circuit as the reads (cimc.targets.ir_drop): without drift they are
    the same read, alpha = 1 exactly (a reference taken from the bare devices would read the IR drop as drift)."""
    graph, op, _ = _one_layer()
    target = load_target("pcm-aihwkit", ["nonideal.drift_nu_model=none", "nonideal.read_noise_1f_model=none",
                                         "nonideal.wire_ohm=5"])
    be = CrossbarBackend(seed=0)
    be.bind(graph, None, target)
    assert be.plans["fc"].drift_scale.tolist() == [1.0]


def test_preset_states_its_source():
    text = (load_target.__globals__["_PRESETS"] / "pcm-aihwkit.toml").read_text()
    assert "src/aihwkit/inference/noise/pcm.py" in text and "Nandakumar" in text
    t = load_target("pcm-aihwkit")
    assert dataclasses.asdict(t.nonideal)["program_sigma_poly_us"] == (0.26348, 1.9650, -1.1731)


@pytest.fixture(scope="module")
def pcm_cnn(tmp_path_factory):
    import onnx
    import onnx_models as om

    import cimc
    model = om.small_cnn()
    path = tmp_path_factory.mktemp("pcm") / "small_cnn.onnx"
    onnx.save(model, path)
    feeds = lambda batch, seed: next(iter(om.random_feeds(model, batch, seed).values()))   # noqa: E731
    return cimc.compile(path, "pcm-aihwkit", calibration=feeds(32, 1), replicate={"conv1": 2}), feeds(4, 2)


@pytest.mark.parametrize("adc, routes", [([], {"onnx"}), (["adc.lossless=false", "adc.bits=10"], {"table", "codes"})],
                         ids=["onnx-conv", "lut-tables"])
def test_compensation_reaches_every_conv_route(pcm_cnn, adc, routes):
    """After 1e6 s of PCM drift (alpha ~1.7) the network's error against the ideal chip falls several-fold with
    compensation, whichever route reads its convolutions (one onnxruntime Conv, lut tables, bit-planes of codes)."""
    from cimc import Session
    manifest, x = pcm_cnn
    ideal = np.asarray(Session(manifest, backend="crossbar", ideal=True).run(x), np.float64)
    errors = {}
    for gdc in ("none", "global"):
        s = Session(manifest, backend="crossbar", seed=1,
                    overrides=["nonideal.drift_time_s=1e6", f"nonideal.drift_compensation={gdc}", *adc])
        out = np.asarray(s.run(x), np.float64)
        assert {p.conv_route for name, p in s.backend.plans.items() if name != "gemm1"} == routes
        errors[gdc] = float(np.linalg.norm(out - ideal) / np.linalg.norm(ideal))
    assert errors["global"] < errors["none"] / 2, errors


def test_drift_time_matters_for_the_pcm_statistics():
    """`cimc run --drift-time` and `cimc sweep --grid drift_time` warn only where the time changes nothing."""
    from cimc.targets.device_stats import time_matters
    assert not time_matters(load_target("yao2020-resnet").nonideal)
    assert time_matters(load_target("yao2020-resnet", ["nonideal.drift_nu=0.05"]).nonideal)
    assert time_matters(load_target("pcm-aihwkit").nonideal)
    assert time_matters(_pcm("nonideal.read_noise_1f_model=pcm").nonideal)
    assert time_matters(_pcm("nonideal.relaxation_sigma_us=0.1").nonideal)
    assert not time_matters(_pcm().nonideal)
