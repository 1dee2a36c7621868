"""The compile pipeline (cimc.pipeline): one ordered pass list, results in a typed context, instruments around the
passes, and `count` as a prefix of the same list that refuses exactly what compile's placing passes refuse."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from refusal import assert_refused

import cimc
from cimc import frontend
from cimc.compile_options import make_config
from cimc.errors import ModelError
from cimc.layer_table import layer_table
from cimc.passes import canonicalize
from cimc.pipeline import COUNT_PASSES, PIPELINE, CheckAgainstOnnx, CompileContext, DumpGraph, run_passes
from cimc.targets.registry import load_target

TARGET = "yao2020-mcnn"          # 8 arrays; the mCNN's layers C1, C3, FC take 1 + 2 + 4 tiles


@pytest.fixture(scope="module")
def calib(mcnn_dir):
    return np.load(mcnn_dir / "calib.npz")["x"]


def _compile_ctx(mcnn_dir, calib, target=TARGET, instruments=(), passes=PIPELINE, **options):
    graph, info = frontend.import_onnx(mcnn_dir / "mcnn.onnx")
    ctx = CompileContext(make_config(**options), model=info.model, calibration=calib, instruments=list(instruments))
    return run_passes(graph, load_target(target), ctx, passes), ctx


# -- one list ---------------------------------------------------------------------------------------------------
def test_count_runs_a_prefix_of_the_compile_list():
    names = [p.NAME for p in PIPELINE]
    assert len(set(names)) == len(names)
    assert [p.NAME for p in COUNT_PASSES] == [p.NAME for p in PIPELINE[:names.index("allocate") + 1]
                                               if not getattr(p, "NEEDS_CALIBRATION", False)]
    assert {"canonicalize", "check_request", "tile", "pack", "replicate", "check_plan", "allocate"} == \
        {p.NAME for p in COUNT_PASSES}


@pytest.mark.parametrize("pack", [False, True])
def test_timings_name_every_pass_that_ran_in_order(mcnn_dir, calib, pack):
    m = cimc.compile(mcnn_dir / "mcnn.onnx", TARGET, calibration=calib, pack=pack)
    placing = ["pack", "check_plan"] if pack else ["replicate", "check_plan", "allocate"]
    assert list(m.pass_seconds) == ["import", "canonicalize", "check_request", "calibrate", "quantize", "tile",
                                    "adc_calibrate_start", *placing, "estimate", "adc_calibrate"]
    assert all(s >= 0 for s in m.pass_seconds.values())


# -- the context --------------------------------------------------------------------------------------------------
def test_results_come_back_in_the_context_and_the_options_stay_as_given(mcnn_dir, calib):
    options = make_config(arrays=8)
    before = copy.deepcopy(options)
    graph, info = frontend.import_onnx(mcnn_dir / "mcnn.onnx")
    ctx = CompileContext(options, model=info.model, calibration=calib)
    graph = run_passes(graph, load_target(TARGET), ctx)
    assert ctx.options == before                               # the passes wrote nothing into the request
    assert not {"activation_stats", "replication_report", "estimates"} & {f.name for f in
                                                                           dataclasses.fields(options)}
    names = [op.name for op in graph.xbar_ops()]
    assert sorted(ctx.activation_stats) == sorted(names)
    assert ctx.replication_report["copies"] == {op.name: op.replicas for op in graph.xbar_ops()}
    assert ctx.estimates["totals"]["arrays"] == layer_table(graph, load_target(TARGET))["total_arrays"]
    assert ctx.adc_full_scale == {op.name: op.adc_full_scale_ua for op in graph.xbar_ops()
                                  if op.adc_full_scale_ua is not None}
    assert ctx.calibration_summary["samples"] == len(calib)
    assert ctx.calibration_summary["adc_samples"] == min(16, len(calib))


def test_the_context_gives_the_same_manifest_as_compile(mcnn_dir, calib, tmp_path):
    """run_passes on a context and cimc.compile build the same crossbar ops (the compile is the list, nothing more)."""
    graph, _ctx = _compile_ctx(mcnn_dir, calib)
    m = cimc.compile(mcnn_dir / "mcnn.onnx", TARGET, calibration=calib)
    for a, b in zip(graph.xbar_ops(), m.graph.xbar_ops()):
        assert a.name == b.name and np.array_equal(a.levels, b.levels) and a.input_quant == b.input_quant
        assert a.adc_full_scale_ua == b.adc_full_scale_ua and a.replicas == b.replicas


# -- instruments --------------------------------------------------------------------------------------------------
def test_dump_writes_the_graph_after_each_pass(mcnn_dir, calib, tmp_path):
    _graph, ctx = _compile_ctx(mcnn_dir, calib, instruments=[DumpGraph(tmp_path)])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{i + 1:02d}-{name}.json" for i, name in enumerate(n for n in ctx.timings)]
    docs = {f.split("-", 1)[1][:-5]: json.loads((tmp_path / f).read_text()) for f in files}
    xbar = lambda doc: [op for op in doc["ops"] if "rows" in op]   # noqa: E731
    assert not any(op["quantised"] for op in xbar(docs["calibrate"]))
    assert all(op["quantised"] for op in xbar(docs["quantize"]))
    assert all(not op["tiles"] for op in xbar(docs["quantize"]))
    assert [len(op["tiles"]) for op in xbar(docs["tile"])] == [1, 2, 4]
    arrays = [a for op in xbar(docs["allocate"]) for t in op["tiles"] for a in t["arrays"]]
    assert sorted(arrays) == list(range(len(arrays)))         # one array per tile copy


def test_check_against_onnxruntime_passes_every_pass(mcnn_dir, calib):
    check = CheckAgainstOnnx(calib[:4])
    seen = []

    class Spy:
        def after_pass(self, name, graph, ctx):
            seen.append(name)
    _compile_ctx(mcnn_dir, calib, instruments=[check, Spy()])
    assert check.expected is not None and seen[-1] == "adc_calibrate"


class _ScaleWeights:
    """A broken pass: doubles one layer's weights (what the check instrument exists to catch)."""
    NAME = "broken"

    def __init__(self, factor):
        self.factor = factor

    def run(self, graph, target, ctx):
        op = graph.xbar_ops()[-1]
        op.matrix = op.matrix * np.float32(self.factor)
        return graph


@pytest.mark.parametrize("factor", [2.0, 1.01, -1.0, 0.0])
def test_check_against_onnxruntime_stops_a_pass_that_changes_the_model(mcnn_dir, calib, factor):
    with pytest.raises(ModelError, match="after pass 'broken'"):
        _compile_ctx(mcnn_dir, calib, instruments=[CheckAgainstOnnx(calib[:4])],
                     passes=[canonicalize, _ScaleWeights(factor)])


def test_an_instrument_sees_every_pass_and_may_stop_the_compile(mcnn_dir, calib):
    class StopAfter:
        def __init__(self):
            self.names = []

        def after_pass(self, name, graph, ctx):
            self.names.append(name)
            if name == "tile":
                raise ModelError("stopped after tile")
    stop = StopAfter()
    with pytest.raises(ModelError, match="stopped after tile"):
        cimc.compile(mcnn_dir / "mcnn.onnx", TARGET, calibration=calib, instruments=[stop])
    assert stop.names == ["canonicalize", "check_request", "calibrate", "quantize", "tile"]


# -- count refuses what compile refuses ---------------------------------------------------------------------------
PLACING_FAULTS = (
    [(["--arrays", str(n)], "--arrays") for n in range(1, 7)]                      # below the 7 tiles
    + [(["--pack", "--arrays", str(n)], "--arrays") for n in range(1, 4)]
    + [(["--pack", "--target-fps", str(f)], "--target-fps") for f in (1, 1e3, 1e6)]
    + [(["--replicate", f"{layer}={n}"], layer) for layer in ("C1", "C3", "FC") for n in (9, 20, 100)]
    + [(["--no-optimize", "--replicate", f"{layer}={n}"], "arrays") for layer, n in (("C1", 3), ("C3", 2), ("FC", 2))]
    + [(["--replicate", f"{layer}=0"], layer) for layer in ("C1", "C3", "FC")]
    + [(["--replicate", f"{layer}=2"], layer) for layer in ("c1", "Conv", "C2", "/C1")]
    + [(["--max-memory", size], "--max-memory") for size in ("1K", "100K", "500K")]
    + [(["--target", "yao2020-resnet", "--pack"], "--pack")]
)


@pytest.mark.parametrize("flags,culprit", PLACING_FAULTS, ids=[" ".join(f) for f, _ in PLACING_FAULTS])
def test_count_and_compile_refuse_the_same_placing_request(mcnn_dir, tmp_path, flags, culprit):
    target = [] if "--target" in flags else ["--target", TARGET]
    model = str(mcnn_dir / "mcnn.onnx")
    counted = assert_refused(["count", model, *target, *flags], culprit, watch=[mcnn_dir, tmp_path])
    compiled = assert_refused(["compile", model, *target, *flags, "--calibration", str(mcnn_dir / "calib.npz"),
                               "-o", str(tmp_path / "out")], culprit, watch=[mcnn_dir, tmp_path])
    assert counted.splitlines()[-1] == compiled.splitlines()[-1]


@settings(max_examples=8, deadline=None)
@given(copies=st.dictionaries(st.sampled_from(["C1", "C3", "FC"]), st.integers(1, 3), max_size=3))
def test_count_gives_compiles_layer_table(mcnn_dir, calib, copies):
    target = "yao2020-resnet"                        # no budget: every request places
    counted = cimc.count(mcnn_dir / "mcnn.onnx", target, replicate=copies)
    m = cimc.compile(mcnn_dir / "mcnn.onnx", target, calibration=calib, replicate=copies)
    summary = m.summary()                            # count adds the MACs (cimc.mac_count) to the same table
    assert {k: v for k, v in counted.items() if k not in ("replication", "macs")} == \
        {**summary, "layers": [{**row, "macs": got["macs"]} for row, got in zip(summary["layers"], counted["layers"])]}
    assert counted["replication"] == m.replication

