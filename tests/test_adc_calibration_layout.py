"""The ADC full-scale calibration reads a single-copy layout of its own, on a thread beside the placing passes
(cimc.calibration_passes): the full scales equal the rule read on the compiled chip itself (every copy, samples
spread over the copies), the thread gives what the same pass gives without it, and a failing pass stops it."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cimc
from cimc import frontend
from cimc.backends.crossbar import Cancelled, calibrate_adc_full_scale
from cimc.compile_options import make_config
from cimc.errors import ConfigError
from cimc.pipeline import PIPELINE, CompileContext, run_passes
from cimc.targets.registry import load_target

UNLIMITED = ["chip.chips=0"]      # room for copies on every target
COPIES = {"C1": 3, "C3": 2, "FC": 2}


@pytest.fixture(scope="module")
def calib(mcnn_dir):
    return np.load(mcnn_dir / "calib.npz")["x"]


@pytest.mark.parametrize("target, options", [
    ("yao2020-mcnn", dict(overrides=UNLIMITED, replicate=COPIES)),
    ("li2018", dict(overrides=UNLIMITED, replicate=COPIES)),
    ("resnet-bitsliced", dict(overrides=UNLIMITED, replicate=COPIES)),
    ("yao2020-mcnn", dict(pack=True)),                                       # tiles share arrays (and lines)
    ("li2018", dict(pack=True, overrides=UNLIMITED, arrays=12)),
])
def test_full_scales_equal_the_rule_on_the_compiled_copies(mcnn_dir, calib, target, options):
    """g+/g- columns (Yao), +v/-v rows (Li) and bit-sliced weights, a tile per array or packed: the single-copy
    layout's full scales are those of the manifest's own arrays, read with every copy in use (sample i on copy
    i % copies)."""
    m = cimc.compile(mcnn_dir / "mcnn.onnx", target, calibration=calib, **options)
    assert max(op.replicas for op in m.graph.xbar_ops()) > 1
    if "replicate" in options:
        assert {op.name: op.replicas for op in m.graph.xbar_ops()} == COPIES
    on_chip = calibrate_adc_full_scale(m.graph, m.target, calib[:16], arrays=m.arrays)
    assert on_chip and all(v > 0 for v in on_chip.values())
    assert {op.name: op.adc_full_scale_ua for op in m.graph.xbar_ops()} == on_chip


def _run(mcnn_dir, calib, passes, **options):
    graph, info = frontend.import_onnx(mcnn_dir / "mcnn.onnx")
    ctx = CompileContext(make_config(**options), model=info.model, calibration=calib)
    graph = run_passes(graph, load_target("yao2020-mcnn"), ctx, passes)
    return graph, ctx


def test_the_thread_gives_what_the_pass_reads_without_it(mcnn_dir, calib):
    """CP-SAT under the target's 8 arrays chooses the copies while the thread reads; without the start pass,
    CalibrateAdc reads the same layout itself: the same full scales, arrays and ops."""
    threaded, ctx = _run(mcnn_dir, calib, PIPELINE)
    assert ctx.adc_job is not None and ctx.replication_report["mode"] == "budget"
    inline, ctx2 = _run(mcnn_dir, calib, [p for p in PIPELINE if p.NAME != "adc_calibrate_start"])
    assert ctx2.adc_job is None
    assert ctx.adc_full_scale == ctx2.adc_full_scale and ctx.adc_full_scale
    assert np.array_equal(ctx.arrays, ctx2.arrays)
    for a, b in zip(threaded.xbar_ops(), inline.xbar_ops()):
        assert (a.name, a.replicas, a.adc_full_scale_ua) == (b.name, b.replicas, b.adc_full_scale_ua)


def test_a_failing_pass_stops_the_thread(mcnn_dir, calib):
    """An array budget below one copy of every layer (the mCNN needs 7) fails in replicate, after the thread
    started: the compile raises that error, and the thread has been stopped and joined."""
    graph, info = frontend.import_onnx(mcnn_dir / "mcnn.onnx")
    ctx = CompileContext(make_config(arrays=3), model=info.model, calibration=calib)
    with pytest.raises(ConfigError, match="budget of 3 arrays"):
        run_passes(graph, load_target("yao2020-mcnn"), ctx)
    assert ctx.adc_job is not None and ctx.adc_job.stop.is_set()
    assert not ctx.adc_job._thread.is_alive()


def test_a_set_stop_ends_the_reads(mcnn_dir, calib):
    m = cimc.compile(mcnn_dir / "mcnn.onnx", "yao2020-mcnn", calibration=calib)
    stop = threading.Event()
    assert calibrate_adc_full_scale(m.graph, m.target, calib, stop=stop) == \
        {op.name: op.adc_full_scale_ua for op in m.graph.xbar_ops()}
    stop.set()
    with pytest.raises(Cancelled):
        calibrate_adc_full_scale(m.graph, m.target, calib, stop=stop)
