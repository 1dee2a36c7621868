"""LSTM, GRU and RNN on the crossbar (cimc/recurrent_lowering.py): W and R on arrays once each, R read once per time
step by shared-weight crossbar ops, gates digital. The references: onnxruntime on the source model (on the same
computation in layout 0 for layout 1, which onnxruntime's CPU kernels refuse), numpy for the array counts and the
per-read quantisation bound, the integer backend for the ideal chip."""
from __future__ import annotations

import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import recurrent_models as rm

import cimc
from cimc import Session
from cimc.backends.reference import IntegerBackend
from cimc.errors import ConfigError
from cimc.frontend import import_onnx
from cimc.graph_run import run_graph
from cimc.ir import DigitalOp
from cimc.manifest import load
from cimc.passes.quantize import quantize_weights
from cimc.report import layer_table_text
from cimc.targets.registry import load_target
from cimc.training import tuned_layer

BATCH = 3


def _model(kind, direction="forward", layout=0, initial=None, lbr=0, **kw):
    # layout 0 puts the batch on axis 1, which cimc needs fixed (cimc numbers samples along axis 0)
    fixed = layout == 0 or initial == "const" or kw.get("seq_lens")
    return rm.recurrent(kind, direction, layout, initial=initial, lbr=lbr, peepholes=kind == "LSTM",
                        batch=BATCH if fixed else kw.pop("batch", None), **kw)


def _ort(model, feeds):
    session = ort.InferenceSession(rm.as_layout0(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in model.graph.output], session.run(None, feeds)))


def _as_dict(out, manifest):
    return out if isinstance(out, dict) else {manifest.graph.outputs[0].name: out}


def _float_run(model, feeds):
    graph, _ = import_onnx(model)
    backend = cimc.backends.make_backend("float")
    backend.bind(graph, None, None)
    return graph, run_graph(graph, feeds, backend)


# every kind (GRU with linear_before_reset 0 and 1) in every direction, each layout and kind of initial state
CASES = [(k, d, lay, init, lbr) for k, lbr in (("LSTM", 0), ("GRU", 0), ("GRU", 1), ("RNN", 0))
         for d, lay, init in (("forward", 0, None), ("reverse", 1, "input"), ("bidirectional", 0, "input"),
                              ("bidirectional", 1, "const"))] + [("LSTM", "bidirectional", 1, None, 0)]


@pytest.mark.parametrize("kind,direction,layout,initial,lbr", CASES)
def test_float_backend_matches_onnxruntime(kind, direction, layout, initial, lbr):
    model = _model(kind, direction, layout, initial, lbr)
    feeds = rm.feeds(model, BATCH, seed=1)
    graph, got = _float_run(model, feeds)
    assert not any(op.op_type == kind for op in graph.ops if isinstance(op, DigitalOp))   # it was lowered
    expected = _ort(model, feeds)
    assert set(got) >= set(expected) and len(expected) == (3 if kind == "LSTM" else 2)
    for name, e in expected.items():
        assert got[name].shape == e.shape
        assert np.abs(got[name] - e).max() <= 1e-5 * np.abs(e).max()


@pytest.mark.parametrize("opset", [9, 12])
def test_old_opsets_and_other_activations(opset):
    """Split takes its sizes as an attribute before opset 13; Relu and Softsign instead of Sigmoid and Tanh."""
    model = _model("GRU", "bidirectional", 0, "input", 1, opset=opset, activations=["Relu", "Softsign"] * 2)
    feeds = rm.feeds(model, BATCH, seed=1)
    graph, got = _float_run(model, feeds)
    assert {"Relu", "Softsign"} <= {op.op_type for op in graph.ops} and graph.readers("gru0/R_forward/step0")
    for name, e in _ort(model, feeds).items():
        assert np.abs(got[name] - e).max() <= 1e-5 * np.abs(e).max()


def _tiles(rows, cols, target):
    return -(-rows // target.array.inputs_per_tile) * -(-cols // target.array.outputs_per_tile)


@pytest.mark.parametrize("kind,lbr,initial", [("LSTM", 0, "input"), ("GRU", 0, None), ("GRU", 1, "input"),
                                              ("RNN", 0, None)])
def test_arrays_hold_w_and_r_once(kind, lbr, initial):
    """Bidirectional, T=5, I=6, H=4 on a 72-row target: the arrays are W's tiles plus each direction's R tiles,
    once; every later step reads the owner's arrays (no tiles, no arrays of its own)."""
    model = _model(kind, "bidirectional", 1, initial, lbr, inputs=6, hidden=4, steps=5)
    target = load_target("ideal", ["array.rows=8"])                   # 8 rows, 8 outputs per tile: R spans tiles
    table = cimc.count(model, target)
    gates, hidden, steps = rm.GATES[kind], 4, 5
    if kind == "GRU" and lbr == 0:      # R_zr [H, 2H] and R_h [H, H]: two matrices per direction, each once
        r_tiles = _tiles(hidden, 2 * hidden, target) + _tiles(hidden, hidden, target)
    else:
        r_tiles = _tiles(hidden, gates * hidden, target)
    assert table["total_arrays"] == _tiles(6, 2 * gates * hidden, target) + 2 * r_tiles
    readers = [layer for layer in table["layers"] if "weights_of" in layer]
    owners = [layer for layer in table["layers"] if "weights_of" not in layer]
    matrices = 2 if kind == "GRU" and lbr == 0 else 1
    assert len(owners) == 1 + 2 * matrices
    reads = steps if initial else steps - 1          # no read of the implicit zero initial state
    assert len(readers) == 2 * matrices * (reads - 1)
    assert all(layer["arrays"] == 0 and layer["tiles"] == 0 for layer in readers)
    text = layer_table_text(table, target)
    assert f"0  (reads the arrays of {readers[0]['weights_of']})" in text and "grouped conv" not in text


def _compiled(kind, lbr=0, target="ideal", **kw):
    model = _model(kind, "bidirectional", 1, "input", lbr, **kw)
    return model, cimc.compile(model, target, calibration=rm.feeds(model, 48, seed=7))


@pytest.mark.parametrize("kind,lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1), ("RNN", 0)])
def test_ideal_crossbar_equals_integer_and_reads_stay_in_the_quantisation_bound(kind, lbr):
    model, manifest = _compiled(kind, lbr)
    feeds = rm.feeds(model, BATCH, seed=2)
    integer = _as_dict(Session(manifest, backend="integer").run(feeds), manifest)
    ideal = _as_dict(Session(manifest, backend="crossbar", ideal=True).run(feeds), manifest)
    for name in integer:
        np.testing.assert_array_equal(ideal[name], integer[name])
    # Per read (docs/design.md, "Recurrent layers"): for input x, scale s_x, weight W with column scale s_n,
    # |y_int - (x W + b)| <= sum_k e_k |s_n l_kn| + |x_k| s_n / 2, e_k = max(s_x / 2, |x_k| - qmax s_x) (rounding,
    # or clipping outside the calibrated range); checked on every read of the integer run, with its own inputs.
    graph = manifest.graph
    seen = {}
    backend = IntegerBackend()
    backend.bind(graph, manifest.arrays, manifest.target)
    out = run_graph(graph, feeds, backend, observe=lambda op, x: seen.setdefault(op.name, x.copy()),
                    keep={op.outputs[0] for op in graph.xbar_ops()})
    assert len(seen) == len(graph.xbar_ops())
    for op in graph.xbar_ops():
        x = seen[op.name].astype(np.float64)
        q, w = op.input_quant, op.matrix.astype(np.float64)
        s_n = op.weight_scales.astype(np.float64)
        e = np.maximum(q.scale / 2, np.abs(x) - q.qmax * q.scale)
        bound = e @ np.abs(op.levels * s_n) + np.abs(x) @ np.broadcast_to(s_n / 2, w.shape)
        exact = x @ w + (0 if op.bias is None else op.bias)
        err = np.abs(out[op.outputs[0]] - exact)
        assert np.all(err <= bound * (1 + 1e-5) + 1e-5 * np.abs(exact)), op.name


def test_levels_shared_and_each_read_calibrated_on_its_own_input():
    model, manifest = _compiled("GRU", 1)
    graph = manifest.graph
    ranges = {}
    backend = cimc.backends.make_backend("float")
    backend.bind(graph, None, None)
    cal = rm.feeds(model, 48, seed=7)
    run_graph(graph, cal, backend, observe=lambda op, x: ranges.__setitem__(
        op.name, max(ranges.get(op.name, 0.0), float(np.abs(x).max()))))
    readers = [op for op in graph.xbar_ops() if op.weights_of]
    assert readers
    for op in graph.xbar_ops():
        owner = graph.array_owner(op)
        levels, _ = quantize_weights(owner.matrix, manifest.target.device.max_level, manifest.target.quant.weights)
        np.testing.assert_array_equal(op.levels, levels)
        q = op.input_quant
        assert q.scale == pytest.approx(ranges[op.name] / q.qmax, rel=1e-6)
    assert len({op.input_quant.scale for op in readers}) > 1


def test_every_pass_keeps_the_model_and_pack_places_each_matrix_once():
    """CheckAgainstOnnx after every pass (canonicalize must fold nothing into shared arrays); --pack and a replication
    budget give a shared-weight read its owner's copies and no arrays."""
    from cimc.pipeline import CheckAgainstOnnx
    model = _model("LSTM", "bidirectional", 0, "const", head=True)     # onnxruntime runs the source: layout 0
    cimc.compile(model, "ideal", calibration=rm.feeds(model, 16, seed=7),
                 instruments=[CheckAgainstOnnx(rm.feeds(model, BATCH, seed=8))])
    for options in ({"pack": True, "arrays": 6, "time_limit": 2.0}, {"arrays": 12, "time_limit": 2.0}):
        table = cimc.count(model, "yao2020-resnet", **options)
        rows = {layer["name"]: layer for layer in table["layers"]}
        readers = [layer for layer in table["layers"] if "weights_of" in layer]
        assert readers and table["total_arrays"] <= options["arrays"]
        for layer in readers:
            assert layer["arrays"] == 0 and layer["copies"] == rows[layer["weights_of"]]["copies"]
    # the estimate loads an owner's arrays with all T reads over its copies, as the replication solver counts
    lstm = _model("LSTM", "forward", 1, "input")
    manifest = cimc.compile(lstm, "yao2020-resnet", calibration=rm.feeds(lstm, 16, seed=7), arrays=12)
    owner = next(op for op in manifest.graph.mapped_ops() if manifest.graph.readers(op.name))
    bits = manifest.target.input.bits
    assert owner.replicas > 1 and manifest.replication["bottleneck_cycles"] == -(-5 // owner.replicas) * bits
    assert manifest.estimates["totals"]["bottleneck_cycles"] == manifest.replication["bottleneck_cycles"]


def test_manifest_round_trip_gives_identical_outputs(tmp_path):
    model, manifest = _compiled("LSTM", target="yao2020-resnet")
    feeds = rm.feeds(model, BATCH, seed=4)
    options = {"overrides": ["nonideal.read_noise_sigma_us=0.2"]}
    before = _as_dict(Session(manifest, backend="crossbar", seed=9, **options).run(feeds), manifest)
    manifest.save(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "manifest.json").read_text())
    readers = [o for o in doc["ops"] if o.get("weights_of")]
    assert readers and all(o["tiles"] == [] for o in readers)
    loaded = load(tmp_path / "m")
    after = _as_dict(Session(loaded, backend="crossbar", seed=9, **options).run(feeds), loaded)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    integer = [_as_dict(Session(m, backend="integer").run(feeds), m) for m in (manifest, loaded)]
    for name in integer[0]:
        np.testing.assert_array_equal(integer[1][name], integer[0][name])


def test_manifest_refuses_a_reader_of_an_unknown_owner(tmp_path):
    _, manifest = _compiled("RNN")
    manifest.save(tmp_path / "m")
    path = tmp_path / "m" / "manifest.json"
    doc = json.loads(path.read_text())
    index = next(i for i, o in enumerate(doc["ops"]) if o.get("weights_of"))
    doc["ops"][index]["weights_of"] = "no such layer"
    path.write_text(json.dumps(doc))
    with pytest.raises(cimc.errors.ManifestError, match=rf"ops\[{index}\]\.weights_of.*no earlier crossbar op"):
        load(tmp_path / "m")


def test_same_seed_same_output_whatever_the_batch_size():
    model, manifest = _compiled("GRU", 0, target="yao2020-resnet")
    feeds = rm.feeds(model, 6, seed=5)
    options = {"overrides": ["nonideal.read_noise_sigma_us=0.2"]}
    whole = _as_dict(Session(manifest, backend="crossbar", seed=1, **options).run(feeds), manifest)
    session = Session(manifest, backend="crossbar", seed=1, **options)
    parts = [_as_dict(session.run({k: v[i:i + 2] for k, v in feeds.items()}), manifest) for i in (0, 2, 4)]
    for name in whole:
        np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), whole[name])
    other = _as_dict(Session(manifest, backend="crossbar", seed=2, **options).run(feeds), manifest)
    assert any(not np.array_equal(other[n], whole[n]) for n in whole)      # the noise is real


@pytest.mark.parametrize("case", ["runtime_r", "leaky_activation", "clip", "partial_lengths"])
def test_a_node_that_cannot_be_lowered_stays_digital_and_matches_onnxruntime(case):
    kw = {"runtime_r": {"constant_r": False},
          "leaky_activation": {"activations": ["LeakyRelu"], "activation_alpha": [0.1]},
          "clip": {"clip": 0.5},
          "partial_lengths": {"seq_lens": [5, 2, 5]}}[case]       # one sample ends after 2 steps
    model = _model("RNN", head=True, **kw)
    feeds = rm.feeds(model, BATCH, seed=3)
    graph, got = _float_run(model, feeds)
    assert any(op.op_type == "RNN" for op in graph.ops if isinstance(op, DigitalOp))
    for name, e in _ort(model, feeds).items():
        assert np.abs(got[name] - e).max() <= 1e-5 * np.abs(e).max()


def test_batch_first_node_that_cannot_be_lowered_is_refused_naming_why():
    model = _model("GRU", "forward", 1, clip=0.5)
    with pytest.raises(cimc.errors.ModelError, match=r"'gru0' \(GRU.*'layout' is 1.*attribute 'clip' is set"):
        import_onnx(model)


def test_constant_full_sequence_lengths_are_lowered():
    model = _model("LSTM", seq_lens=True)
    feeds = rm.feeds(model, BATCH, seed=3)
    graph, got = _float_run(model, feeds)
    assert graph.readers(next(op.name for op in graph.mapped_ops() if "step" in op.name))
    for name, e in _ort(model, feeds).items():
        assert np.abs(got[name] - e).max() <= 1e-5 * np.abs(e).max()


def test_tune_and_replicate_name_the_arrays_owner():
    model = _model("LSTM", "forward", 1, "input", head=True)
    graph, _ = import_onnx(model)
    reader = next(op for op in graph.xbar_ops() if op.weights_of)
    assert reader.matrix is graph.op(reader.weights_of).matrix        # one matrix in memory, not one per step
    with pytest.raises(ConfigError, match="recurrent"):
        tuned_layer(graph, reader.name)
    with pytest.raises(ConfigError, match=re.escape(reader.name)):
        cimc.count(model, "ideal", replicate={reader.name: 2})
    owner = reader.weights_of
    table = cimc.count(model, "ideal", replicate={owner: 2})
    rows = {layer["name"]: layer for layer in table["layers"]}
    assert rows[owner]["copies"] == 2 and rows[reader.name]["copies"] == 2 and rows[reader.name]["arrays"] == 0


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_torch_style_classifier_with_a_symbolic_batch(kind):
    """Batch-first input, the node in layout 0 between transposes, as torch exports it: float = onnxruntime, the
    ideal chip = integer, and a noisy chip gives each sample the same logits whatever batch it runs in."""
    model = rm.classifier(kind)
    manifest = cimc.compile(model, "yao2020-resnet", calibration=rm.feeds(model, 48, seed=7))
    assert manifest.graph.readers(f"/{kind.lower()}/{kind}/R/step1")
    feeds = rm.feeds(model, 5, seed=6)
    expected = _ort(model, feeds)["logits"]
    assert np.abs(Session(manifest, backend="float").run(feeds) - expected).max() <= 1e-5 * np.abs(expected).max()
    np.testing.assert_array_equal(Session(manifest, backend="crossbar", ideal=True).run(feeds),
                                  Session(manifest, backend="integer").run(feeds))
    options = {"overrides": ["nonideal.read_noise_sigma_us=0.2"], "seed": 4}
    whole = Session(manifest, backend="crossbar", **options).run(feeds)
    one_by_one = Session(manifest, backend="crossbar", **options)
    np.testing.assert_array_equal(np.concatenate([one_by_one.run(feeds["input"][i:i + 1]) for i in range(5)]), whole)
