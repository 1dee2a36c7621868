"""Conv3d and ConvTranspose (1-D, 2-D, 3-D) on the crossbar: lowering against onnxruntime (float backend),
the integer backend within the quantisation bound derived below, the ideal crossbar equal to the integer backend
bit for bit, the manifest round trip and its load checks, `count`, and refusals that name the node and attribute.

The integer bound: with activation scale s (unclipped: calibrated on the very inputs) and per-column weight
scales w_n, every input is off by at most s/2 and every weight by at most w_n/2, so an output is off by at most
  op(|x|, dW) + op(s/2 everywhere the input is, |W| + dW)          (dW: w_n/2 at each weight of column n)
computed with onnxruntime on the same node, plus float32 rounding (1e-5 of the output range)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import cimc
from cimc import Session
from cimc.backends.reference import FloatBackend
from cimc.errors import ManifestError, ModelError
from cimc.frontend import import_onnx
from cimc.graph_run import run_graph
from cimc.manifest import load

NODE = "/up/ConvTranspose"


def _model(op: str, x_shape, w_shape, bias: bool = True, seed: int = 0, weight_input: bool = False, **attrs):
    """One Conv/ConvTranspose node named NODE, batch axis symbolic."""
    rng = np.random.default_rng(seed)
    groups = attrs.get("group", 1)
    inits = [numpy_helper.from_array((rng.standard_normal(w_shape) * 0.5).astype(np.float32), "w")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None] + list(x_shape[1:]))]
    if weight_input:        # the weight a run-time input: not mappable
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w_shape)))
        inits = []
    names = ["x", "w"]
    if bias:
        m = w_shape[0] if op == "Conv" else w_shape[1] * groups
        inits.append(numpy_helper.from_array(rng.standard_normal(m).astype(np.float32), "b"))
        names.append("b")
    node = helper.make_node(op, names, ["y"], name=NODE, **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort(model, x):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def _input(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# (op, input shape, weight shape, attributes)
CASES = [
    ("Conv", [2, 4, 5, 6, 7], [6, 2, 2, 3, 2], dict(group=2, strides=[1, 2, 2], dilations=[2, 1, 1],
                                                    pads=[1, 0, 2, 0, 1, 1])),
    ("Conv", [2, 3, 4, 5, 6], [4, 3, 3, 3, 3], dict(auto_pad="SAME_UPPER", strides=[2, 1, 2])),
    ("Conv", [2, 4, 4, 5, 6], [4, 1, 3, 1, 3], dict(group=4, auto_pad="SAME_LOWER", strides=[1, 2, 3])),   # depthwise
    ("Conv", [2, 3, 5, 5, 5], [2, 3, 2, 2, 2], dict(auto_pad="VALID", dilations=[2, 2, 1])),
    ("ConvTranspose", [2, 4, 5], [4, 3, 3], dict(strides=[2], output_padding=[1])),
    ("ConvTranspose", [2, 4, 7], [4, 2, 4], dict(strides=[3], pads=[2, 1], dilations=[2], group=2)),
    ("ConvTranspose", [2, 3, 5], [3, 2, 3], dict(strides=[2], output_shape=[12])),    # zeros past the full result
    ("ConvTranspose", [2, 4, 5, 6], [4, 3, 3, 2], dict(strides=[3, 2], pads=[1, 0, 2, 1], group=2, dilations=[1, 2])),
    ("ConvTranspose", [2, 4, 5, 6], [4, 3, 3, 3], dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    ("ConvTranspose", [2, 4, 5, 6], [4, 3, 3, 3], dict(strides=[2, 3], auto_pad="SAME_LOWER", output_padding=[1, 2])),
    ("ConvTranspose", [2, 4, 5, 6], [4, 3, 3, 3], dict(strides=[2, 3], output_shape=[8, 15])),
    ("ConvTranspose", [2, 4, 5, 6], [4, 3, 3, 3], dict(strides=[2, 3], auto_pad="SAME_UPPER", output_shape=[9, 16])),
    ("ConvTranspose", [2, 4, 5, 6], [4, 3, 2, 2], dict(strides=[2, 2], auto_pad="VALID")),
    ("ConvTranspose", [2, 6, 4, 5], [6, 1, 3, 3], dict(strides=[2, 2], group=6, pads=[1, 1, 1, 1],
                                                       output_padding=[1, 1])),     # depthwise upsampling
    ("ConvTranspose", [2, 4, 3, 4, 5], [4, 2, 2, 3, 2], dict(strides=[2, 1, 2], pads=[0, 1, 0, 1, 0, 0], group=2)),
]
IDS = [f"{op}{len(x) - 2}d-{i}" for i, (op, x, _w, _a) in enumerate(CASES)]


@pytest.mark.parametrize("op,x_shape,w_shape,attrs", CASES, ids=IDS)
def test_float_backend_equals_onnxruntime(op, x_shape, w_shape, attrs):
    model = _model(op, x_shape, w_shape, **attrs)
    x = _input(x_shape)
    want = _ort(model, x)
    graph, _ = import_onnx(model)
    backend = FloatBackend()
    backend.bind(graph, None, None)
    got = run_graph(graph, {"x": x}, backend)["y"]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.ptp(want)
    xbar = graph.xbar_ops()[0]
    spatial = int(np.prod(x_shape[2:]))
    assert xbar.positions == (spatial if op == "ConvTranspose" else int(np.prod(want.shape[2:])))


def _weight_error(op, w_shape, xbar, groups):
    """dW: half the weight scale of the matrix column that holds each weight of W."""
    scales = xbar.weight_scales.astype(np.float64) / 2
    if op == "Conv":
        return np.broadcast_to(scales.reshape((-1,) + (1,) * (len(w_shape) - 1)), w_shape)
    cin, mg, size = w_shape[0], w_shape[1], int(np.prod(w_shape[2:]))
    cg = cin // groups
    columns = np.array([[(ci // cg * mg + co) * size + np.arange(size) for co in range(mg)] for ci in range(cin)])
    return scales[columns].reshape(w_shape)


def _bound(model, op, w_shape, xbar, groups, x):
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    dw = _weight_error(op, w_shape, xbar, groups)
    half = np.float64(xbar.input_quant.scale) / 2

    def run(weight, inp):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        del m.graph.initializer[:]
        m.graph.initializer.append(numpy_helper.from_array(weight.astype(np.float32), "w"))
        m.graph.node[0].input[:] = ["x", "w"]
        return _ort(m, inp.astype(np.float32)).astype(np.float64)
    return run(dw, np.abs(x)) + run(np.abs(w) + dw, np.full(x.shape, half))


QUANTISED = [CASES[0], CASES[2], CASES[4], CASES[5], CASES[7], CASES[10], CASES[13], CASES[14]]


@pytest.mark.parametrize("op,x_shape,w_shape,attrs", QUANTISED, ids=[IDS[CASES.index(c)] for c in QUANTISED])
def test_integer_within_bound_ideal_crossbar_bit_exact_and_manifest_round_trip(op, x_shape, w_shape, attrs,
                                                                              tmp_path):
    model = _model(op, x_shape, w_shape, **attrs)
    x = _input([5] + x_shape[1:], seed=3)
    manifest = cimc.compile(model, "yao2020-resnet", calibration=np.concatenate([x] * 7))   # 35 samples, x's range
    xbar = manifest.graph.xbar_ops()[0]
    want = _ort(model, x)
    integer = Session(manifest, backend="integer").run(x)
    bound = _bound(model, op, w_shape, xbar, attrs.get("group", 1), x)
    assert np.all(np.abs(integer - want) <= bound + 1e-5 * np.ptp(want))
    assert np.abs(integer - want).max() > 0                     # quantised: not the float result
    for planes in (False, True):
        crossbar = Session(manifest, backend="crossbar", ideal=True, simulate_planes=planes).run(x)
        assert crossbar.dtype == integer.dtype and np.array_equal(crossbar, integer)
    loaded = load(manifest.save(tmp_path / "m"))
    assert loaded.graph.xbar_ops()[0].conv == xbar.conv
    for backend in ("float", "integer"):
        assert np.array_equal(Session(loaded, backend=backend).run(x), Session(manifest, backend=backend).run(x))


def _unet(seed=0):
    """A 3-D U-Net-style down and up path: Conv3d -> ReLU -> grouped Conv3d -> BatchNorm -> grouped ConvTranspose
    (stride 2, output_padding) -> Mul and Add by per-channel constants -> ReLU. The BatchNorm and the Mul/Add fold
    into the matrices (a ConvTranspose's channel scale into all of its kernel offsets' columns)."""
    rng = np.random.default_rng(seed)

    def w(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="/down/Conv", strides=[1, 2, 1],
                              pads=[1, 0, 1, 0, 1, 1], dilations=[1, 1, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="/mid/Conv", group=2, pads=[1] * 6),
             helper.make_node("BatchNormalization", ["c2", "s", "bb", "mu", "var"], ["n2"], name="/mid/bn"),
             helper.make_node("ConvTranspose", ["n2", "w3", "b3"], ["u"], name=NODE, strides=[2, 2, 1],
                              output_padding=[1, 0, 0], group=2),
             helper.make_node("Mul", ["u", "k"], ["uk"]),
             helper.make_node("Add", ["uk", "c"], ["uc"]),
             helper.make_node("Relu", ["uc"], ["y"])]
    inits = [w("w1", [4, 3, 3, 2, 2]), w("b1", [4]), w("w2", [6, 2, 3, 3, 3]), w("w3", [6, 2, 2, 3, 2]),
             w("b3", [4]), numpy_helper.from_array(rng.uniform(0.5, 1.5, 6).astype(np.float32), "s"),
             w("bb", [6]), w("mu", [6]), numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "var"),
             numpy_helper.from_array(np.array([0.5, -2.0, 3.0, 1.5], np.float32).reshape(4, 1, 1, 1), "k"),
             w("c", [4, 1, 1, 1])]
    graph = helper.make_graph(nodes, "unet3d", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              [None, 3, 4, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def unet():
    """The net above compiled, its ConvTranspose on 2 copies."""
    return cimc.compile(_unet(), "yao2020-resnet", calibration=_input([32, 3, 4, 6, 5], seed=6), replicate={NODE: 2})


def test_network_with_batchnorm_folded_into_conv3d_and_transpose_in_count(unet):
    model, manifest = _unet(), unet
    x = _input([4, 3, 4, 6, 5], seed=5)
    assert [op.op_type for op in manifest.graph.ops] == ["Conv", "Relu", "Conv", "ConvTranspose", "Relu"]
    want = _ort(model, x)
    got = Session(manifest, backend="float").run(x)
    assert np.abs(got - want).max() <= 1e-5 * np.ptp(want)
    assert np.array_equal(Session(manifest, backend="crossbar", ideal=True).run(x),
                          Session(manifest, backend="integer").run(x))
    layers = {row["name"]: row for row in cimc.count(model)["layers"]}
    up = layers[NODE]
    assert up["positions"] == 3 * 3 * 5       # its input (3x3x5 after /down/Conv): one read per input position
    assert (up["rows"], up["cols"]) == (6, 4 * 2 * 3 * 2)


def test_conv2d_manifest_entry_keeps_its_fields(tmp_path):
    """A Conv's entry in manifest.json has exactly the fields it had before ConvTranspose (schema version 1)."""
    model = _model("Conv", [2, 3, 6, 6], [4, 3, 3, 3], pads=[1, 1, 1, 1])
    manifest = cimc.compile(model, "yao2020-resnet", calibration=_input([32, 3, 6, 6]))
    doc = json.loads((manifest.save(tmp_path / "m") / "manifest.json").read_text())
    conv = next(op for op in doc["ops"] if op["kind"] == "crossbar")["conv"]
    assert conv == {"kernel": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "groups": 1,
                    "in_channels": 3, "out_channels": 4, "spatial_rank": 2}


@pytest.fixture(scope="module")
def transpose_manifest(tmp_path_factory):
    model = _model("ConvTranspose", [2, 4, 5, 6], [4, 3, 3, 3], strides=[2, 3], output_padding=[1, 2], group=2)
    manifest = cimc.compile(model, "yao2020-resnet", calibration=_input([32, 4, 5, 6]))
    return manifest.save(tmp_path_factory.mktemp("ct") / "m")


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.pop("transposed"), "conv.transposed"),
    (lambda c: c.update(output_padding=[0, 0, 0]), "conv.output_padding"),
    (lambda c: c.update(out_channels=8), "conv.out_channels"),
    (lambda c: c.update(kernel=[3, 3, 1]), "conv.kernel"),
])
def test_manifest_load_checks_transposed_geometry(transpose_manifest, tmp_path, edit, needle):
    import shutil
    path = tmp_path / "m"
    shutil.copytree(transpose_manifest, path)
    doc = json.loads((path / "manifest.json").read_text())
    op = next(op for op in doc["ops"] if op["kind"] == "crossbar")
    edit(op["conv"])
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=needle.replace(".", r"\.")):
        load(path)


def test_manifest_load_checks_transposed_positions(transpose_manifest, tmp_path):
    import shutil
    path = tmp_path / "m"
    shutil.copytree(transpose_manifest, path)
    doc = json.loads((path / "manifest.json").read_text())
    op = next(op for op in doc["ops"] if op["kind"] == "crossbar")
    assert op["positions"] == 30 and op["op_type"] == "ConvTranspose"
    op["positions"] = 12 * 20            # the output's positions: what a conv on the zero-inserted input would read
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="positions"):
        load(path)


@pytest.mark.parametrize("build,needles", [
    (lambda: _model("ConvTranspose", [2, 4, 5], [4, 3, 3], weight_input=True), ["input 1", "constant"]),
    (lambda: _model("ConvTranspose", [2, 4, 5], [4, 3, 3], strides=[2], output_shape=[14]),
     ["'output_shape'", "inconsistent"]),
    (lambda: _model("ConvTranspose", [2, 4, 5], [4, 3, 3], strides=[2], output_padding=[2]),
     ["'output_padding'", "max(stride, dilation)"]),
    (lambda: _model("ConvTranspose", [2, 4, 5], [4, 3, 3], dilations=[2], output_padding=[1]),
     ["'output_padding'", "too large for stride 1"]),
    (lambda: _model("ConvTranspose", [2, 4, 5], [4, 3, 3], strides=[2], pads=[6, 5]), ["'pads'", "0 positions"]),
    (lambda: _model("ConvTranspose", [2, 4, 5], [4, 3, 3], kernel_shape=[2]), ["'kernel_shape'"]),
    (lambda: _model("Conv", [2, 3, 4, 5, 6], [2, 3, 5, 2, 2]), ["kernel", "spatial axis 0"]),
])
def test_bad_geometry_names_the_node_and_attribute(build, needles):
    model = build()
    with pytest.raises(ModelError) as info:
        cimc.count(model)
    message = str(info.value)
    assert NODE in message, message
    for needle in needles:
        assert needle in message, message
    with pytest.raises(Exception):          # onnxruntime refuses the same model
        _ort(model, _input([2] + [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]))


def test_4d_convolution_stays_digital():
    """cimc maps 1-D to 3-D convolutions; a 4-D one stays digital (onnxruntime runs it), so a model holding only
    that has nothing for the arrays, and count says so."""
    with pytest.raises(ModelError, match="nothing to map onto crossbar arrays"):
        cimc.count(_model("Conv", [2, 3, 4, 4, 4, 4], [2, 3, 1, 1, 1, 1]))


def test_dead_conv_transpose_that_onnxruntime_refuses_is_refused():
    """onnxruntime runs a node nobody reads (and refuses this one); cimc drops such nodes but refuses it too."""
    model = _model("Conv", [2, 4, 5], [3, 4, 3], pads=[1, 1])
    model.graph.node.append(helper.make_node("ConvTranspose", ["x", "wt"], ["unused"], name="/dead/ConvTranspose",
                                             strides=[2], output_padding=[3]))
    model.graph.initializer.append(numpy_helper.from_array(np.ones((4, 2, 3), np.float32), "wt"))
    with pytest.raises(Exception):
        _ort(model, _input([2, 4, 5]))
    with pytest.raises(ModelError, match=r"'/dead/ConvTranspose'.*'output_padding' \[3\]"):
        cimc.count(model)


@pytest.mark.parametrize("gemm,noisy", [("int8", ["nonideal.read_noise_sigma_us=0.3", "nonideal.program_sigma_us=0.5"]),
                                        ("lut", ["nonideal.program_sigma_us=0.5"])])
def test_noisy_chip_same_seed_same_result_whatever_the_batch(unet, gemm, noisy):
    """A real ADC (with read noise, or table reads): a sample's output through a Conv3d and a ConvTranspose (the
    3-D net above, on 2 copies of its ConvTranspose) is the same bit for bit in a batch of 5 and alone."""
    manifest = unet
    x = _input([5, 3, 4, 6, 5], seed=7)

    def run(batch, **kw):
        return Session(manifest, backend="crossbar", seed=3, batch_size=batch, gemm=gemm, overrides=noisy).run(x, **kw)
    together = run(5)
    alone = run(1)
    assert np.array_equal(together, alone)
    reversed_order = Session(manifest, backend="crossbar", seed=3, gemm=gemm, overrides=noisy).run(
        x[::-1].copy(), samples=np.arange(5)[::-1].copy())
    assert np.array_equal(reversed_order[::-1], together)
    assert not np.array_equal(together, Session(manifest, backend="crossbar", seed=4, gemm=gemm,
                                                overrides=noisy).run(x))


def test_cli_refuses_an_inconsistent_output_shape_with_exit_2(tmp_path):
    from refusal import assert_refused
    path = tmp_path / "bad.onnx"
    onnx.save(_model("ConvTranspose", [2, 4, 5, 6], [4, 3, 3, 3], strides=[2, 2], output_shape=[9, 20]), path)
    assert_refused(["count", path], [str(path), NODE, "'output_shape' [9, 20]", "spatial axis 1", "at most 14"],
                   watch=[tmp_path],
                   case="count: ConvTranspose output_shape the stride cannot reach")


# -- a property: any ConvTranspose geometry is run by onnxruntime and cimc alike, or refused by both ------------
@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 4), stride=st.integers(0, 3), dilation=st.integers(0, 2), pad=st.integers(-1, 3),
       adj=st.integers(0, 2), group=st.sampled_from([0, 1, 2, 3]), auto=st.sampled_from(["NOTSET", "SAME_UPPER",
                                                                                       "SAME_LOWER", "VALID"]),
       extra=st.sampled_from([None, -4, -1, 0, 1, 2, 3]))
def test_conv_transpose_geometry_agrees_with_onnxruntime(k, stride, dilation, pad, adj, group, auto, extra):
    size, cin = 5, 4
    attrs = dict(strides=[stride, 1], dilations=[dilation, 1], output_padding=[adj, 0], group=group)
    if auto != "NOTSET":
        attrs["auto_pad"] = auto
    else:
        attrs["pads"] = [pad, 0, 0, pad]
    if extra is not None:      # an output_shape near the full result's size
        attrs["output_shape"] = [(size - 1) * max(stride, 1) + (k - 1) * max(dilation, 1) + 1 + extra, size + 1]
    model = _model("ConvTranspose", [2, cin, size, size], [cin, 2, k, 2], **attrs)
    x = _input([2, cin, size, size])
    try:
        want = _ort(model, x)
        runs = want.size > 0
    except Exception:
        runs = False
    if not runs:
        with pytest.raises(ModelError, match=NODE):
            import_onnx(model)
        return
    graph, _ = import_onnx(model)
    backend = FloatBackend()
    backend.bind(graph, None, None)
    got = run_graph(graph, {"x": x}, backend)["y"]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * max(np.ptp(want), 1e-6)


def test_manifest_with_a_stride_that_blows_the_output_up_is_refused_before_it_is_made(transpose_manifest,
                                                                                        tmp_path):
    import shutil
    path = tmp_path / "m"
    shutil.copytree(transpose_manifest, path)
    doc = json.loads((path / "manifest.json").read_text())
    op = next(op for op in doc["ops"] if op["kind"] == "crossbar")
    op["conv"]["strides"] = [1 << 20, 1 << 20]
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"more than \d+; check its 'conv.strides'"):
        load(path)
