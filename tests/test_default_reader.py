"""The default reader of a noisy crossbar run: numba's table reads (gemm="lut") wherever they apply, the same for
`cimc run`, `cimc tune`, `cimc sweep` and `Session(..., "crossbar")`; float32 GEMMs where they do not apply, and,
with one warning, where numba cannot be imported."""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import onnx
import pytest

import cimc
from cimc import Session, zoo
from cimc.backends import lut_reads
from cimc.backends.crossbar import CrossbarBackend
from cimc.cli import main
from cimc.targets.adc import adc_range

needs_numba = pytest.mark.skipif(lut_reads.import_error() is not None, reason="numba cannot be imported here")

SIGMA_US = 0.54                   # Yao's programming error (the yao2020-mcnn preset's)


@pytest.fixture(scope="module")
def mcnn(tmp_path_factory):
    """Yao's mCNN (random weights) on its preset: 0.54 uS programming error, 8-bit ADCs, calibrated full scale."""
    d = tmp_path_factory.mktemp("default_reader")
    onnx.save(zoo.mcnn(), d / "mcnn.onnx")
    calib = np.random.default_rng(5).random((32, 1, 28, 28), dtype=np.float32)
    manifest = cimc.compile(d / "mcnn.onnx", "yao2020-mcnn", calibration=calib, overrides=["chip.chips=0"])
    manifest.save(d / "compiled")
    x = np.random.default_rng(7).random((48, 1, 28, 28), dtype=np.float32)
    np.savez(d / "data.npz", x=x[:8], y=np.arange(8) % 10)
    return manifest, x, d


def _grid_tolerance(be: CrossbarBackend, name: str, grid: int, rel: float) -> float:
    """How far a conductance grid of step / grid can move a layer's relative error `rel` (the float32 reader's).

    The grid moves a device's conductance by at most step / (2 grid), uniformly: a read of R driven rows moves its
    line current by eps ~ N(0, R / (12 grid^2)) steps. The grid changes an output only through the ADC: a code
    changes where a rounding threshold lies between the two currents (an ADC's offset or INL moves where its
    thresholds lie, not how often a current's shift crosses one; its gain of 1 +- a few % scales p alike),
    with probability p = E|eps| / LSB = sqrt(2 / pi) sqrt(R / 12) / (grid LSB). A changed code moves the accumulator
    by w_j LSB (plane weight w_j), so over the layer's conversions the two readers' outputs differ by D with
    ||D||^2 = conversions x p x mean_j(w_j^2) x LSB^2; let B = ||D|| / ||exact||. With the error e = out - exact,
    rel'^2 - rel^2 = (2 <e, D> + ||D||^2) / ||exact||^2: the mean of the cross term is 0 (D does not know the
    programming error's sign; where a code flips, its rounding error just changes sign) and its spread over N
    accumulators is 2 rms(e) ||D||, so |rel' - rel| <= B^2 / (2 rel) + 4 B / sqrt(N) (four standard deviations).
    (Beyond the first layer the inputs also differ by what earlier layers' codes changed: the same order.)"""
    plan, st = be.plans[name], be.stats[name]
    _, top = adc_range(be.target.adc.bits, plan.bipolar)
    lsb = plan.full_scale / top                                    # step units
    eps = np.sqrt(be.target.array.rows / 12.0) / grid              # std of the current's shift, step units
    p = min(1.0, np.sqrt(2.0 / np.pi) * eps / lsb)
    b = float(np.sqrt(st["conversions"] * p * np.mean(plan.weights ** 2)) * lsb / np.sqrt(st["sq_ref"]))
    lines = 2 if be.target.array.differential == "columns" else 1
    n = st["conversions"] * plan.cols / (plan.bits * lines * sum(len(blk.cols) for blk in plan.blocks))
    return b * b / (2 * rel) + 4 * b / np.sqrt(n)


@needs_numba
@pytest.mark.parametrize("adc", [[], ["adc.offset_sigma_lsb=0.5"]], ids=["ideal-adc", "adc-offset"])
def test_default_reader_has_float32s_per_layer_error_statistics(mcnn, adc):
    """The `--layers` statistics (each layer's relative error against the exact integer product, over all its
    outputs and samples) of the default reader equal the float32 reader's on a noisy chip (0.54 uS, 8-bit
    calibrated ADCs), within what the conductance grid allows (`_grid_tolerance`, for grid >= 300: a step of
    2.5 uS / 300 = 8.3 nS, 65 times finer than the programming error): on the mCNN and 48 inputs about 1.7e-4
    (C1), 3.9e-4 (C3) and 1.2e-3 (FC), under 2% of each layer's error (measured: 2e-5, 2e-5, 3e-4). The same
    with ADC offsets of 0.5 LSB (per ADC, static: the default reader is still the table reads, the offsets fused
    into its kernel; measured: 6e-6, 1.4e-4, 1.4e-4 against tolerances 1.7e-4, 3.8e-4, 1.2e-3)."""
    manifest, x, _ = mcnn
    rel, outs, default = {}, {}, None
    for gemm in (None, "float32"):
        be = CrossbarBackend(seed=1, gemm=gemm, diagnostics=True, overrides=adc)
        outs[gemm] = Session(manifest, backend=be).run(x)
        rel[gemm] = {r["name"]: r["rel_error"] for r in be.layer_stats()}
        if gemm is None:
            default = be
    assert default.gemm == "lut" and default.reader == "lut"
    grid_us = default.describe()["conductance_grid_us"]
    assert default.grid >= 300 and grid_us == pytest.approx(2.5 / default.grid) and grid_us < SIGMA_US / 60
    for name in rel["float32"]:
        tolerance = _grid_tolerance(default, name, 300, rel["float32"][name])
        assert tolerance < 0.02 * rel["float32"][name]         # the check can see a 2% change of the error
        assert abs(rel[None][name] - rel["float32"][name]) <= tolerance, name
    assert np.mean(outs[None].argmax(1) == outs["float32"].argmax(1)) >= 0.9
    if adc:                          # the offsets are applied: the ideal ADC's errors differ
        ideal = CrossbarBackend(seed=1, diagnostics=True)
        Session(manifest, backend=ideal).run(x)
        assert all(r["rel_error"] != rel[None][r["name"]] for r in ideal.layer_stats())
        return
    # the same chip on the int8 grid (step / 14, 0.18 uS) is farther from float32 than the default's
    coarse = CrossbarBackend(seed=1, gemm="lut", conductance_grid=14, diagnostics=True)
    Session(manifest, backend=coarse).run(x)
    far = {r["name"]: r["rel_error"] for r in coarse.layer_stats()}
    assert sum(abs(far[n] - rel["float32"][n]) for n in far) > sum(abs(rel[None][n] - rel["float32"][n])
                                                                   for n in far)


@needs_numba
def test_the_default_is_the_same_for_session_run_tune_and_sweep(mcnn, tmp_path, capsys):
    manifest, x, d = mcnn
    be = CrossbarBackend(seed=3, overrides=["nonideal.program_sigma_us=0.3"])
    y = Session(manifest, backend=be).run(x[:8])
    assert (be.gemm, be.reader) == ("lut", "lut")
    named = Session(manifest, "crossbar", seed=3, overrides=["nonideal.program_sigma_us=0.3"], gemm="lut").run(x[:8])
    assert np.array_equal(y.view(np.uint32), named.view(np.uint32))
    assert main(["run", str(d / "compiled"), "--data", str(d / "data.npz"), "--backend", "crossbar", "--seed", "3",
                 "--program-sigma", "0.3uS", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)["crossbar"]
    assert (described["gemm"], described["reader"]) == ("lut", "lut")
    # an ADC offset (static per chip) keeps the table reads: the kernel converts through the chip's ADCs
    offset = Session(manifest, "crossbar", seed=3, overrides=["adc.offset_sigma_lsb=0.5"])
    offset.run(x[:2])
    assert offset.backend.describe()["reader"] == "lut"
    # cimc tune reads the chip it tunes with the same default (it used to ignore --gemm and read float32)
    from cimc.commands.run import crossbar_options
    from cimc.commands.sweep_grid import _options
    import argparse
    from cimc.commands.run import add_chip_options
    parser = argparse.ArgumentParser()
    add_chip_options(parser)
    assert crossbar_options(parser.parse_args([]))["gemm"] is None          # run and tune: the backend's default
    assert _options({"program_sigma": "0.3uS"}, [], None)["gemm"] is None    # sweep points: the same
    import inspect
    from cimc.training import tune
    assert inspect.signature(tune).parameters["gemm"].default is None


def test_where_lut_cannot_apply_the_default_reads_float32_silently(mcnn):
    """Read noise and ADC sense noise (drawn per read) and ADCs above 23 bits (the kernel's int32 shift-and-add)
    keep float32 GEMMs; a run that named no reader gets no warning about one it did not ask for, and float32's
    numbers exactly."""
    manifest, x, _ = mcnn
    for overrides in (["nonideal.read_noise_sigma_us=0.1"], ["adc.noise_sigma_lsb=0.3", "adc.offset_sigma_lsb=0.5"],
                      ["adc.bits=24"]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            be = CrossbarBackend(seed=2, overrides=overrides)
            y = Session(manifest, backend=be).run(x[:4])
        assert (be.gemm, be.reader) == ("float32", "float32")
        ref = Session(manifest, "crossbar", seed=2, overrides=overrides, gemm="float32").run(x[:4])
        assert np.array_equal(y.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("missing", ["numba", "cimc.backends._lut_kernel"])
def test_without_numba_the_default_falls_back_to_float32_with_one_warning(mcnn, monkeypatch, missing, capsys):
    """numba not installed, or installed but failing to import (e.g. beside a numpy it does not support): the
    default reads float32, says why once and how to get the fast path; an explicit --gemm lut is refused."""
    manifest, x, d = mcnn
    monkeypatch.delitem(sys.modules, "cimc.backends._lut_kernel", raising=False)
    monkeypatch.setitem(sys.modules, missing, None)           # `import numba` / the kernel now raises ImportError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        be = CrossbarBackend(seed=1)
        y = Session(manifest, backend=be).run(x[:4])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "numba cannot be imported (" in messages[0]
    why = "No module named 'numba'" if missing == "numba" else "Error: import of cimc.backends._lut_kernel"
    assert why in messages[0]
    assert "pip install -e '.[fast]'" in messages[0] and "--gemm float32" in messages[0]
    assert (be.gemm, be.reader) == ("float32", "float32")
    ref = Session(manifest, "crossbar", seed=1, gemm="float32").run(x[:4])
    assert np.array_equal(y.view(np.uint32), ref.view(np.uint32))
    # the command line: one warning on stderr, the run completes on float32
    assert main(["run", str(d / "compiled"), "--data", str(d / "data.npz"), "--backend", "crossbar", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("numba cannot be imported") == 1
    assert json.loads(captured.out)["crossbar"]["reader"] == "float32"
    assert main(["run", str(d / "compiled"), "--data", str(d / "data.npz"), "--backend", "crossbar",
                 "--gemm", "lut"]) == 2
    assert "--gemm lut" in capsys.readouterr().err


def test_a_sweep_folder_written_before_the_lut_default_resumes_only_with_gemm_float32(tmp_path):
    """Its marker says gemm None, which then meant float32 reads: the new default is another command (refused,
    naming --gemm); `--gemm float32` is the same one and resumes it."""
    from cimc.sweep_store import SweepError, SweepFolder
    old = SweepFolder(tmp_path / "out", {"grid": [["adc_bits", ["8"]]], "seeds": 1, "gemm": None})
    assert old.open() == {}
    old.write_row({"point": 0, "seed": 0, "accuracy": 0.5})
    old.close()
    with pytest.raises(SweepError, match='--gemm: "float32" there, "default" here'):
        SweepFolder(tmp_path / "out", {"grid": [["adc_bits", ["8"]]], "seeds": 1, "gemm": "default"}).open()
    again = SweepFolder(tmp_path / "out", {"grid": [["adc_bits", ["8"]]], "seeds": 1, "gemm": "float32"})
    assert again.open() == {(0, 0): {"point": 0, "seed": 0, "accuracy": 0.5}}
    again.close()
