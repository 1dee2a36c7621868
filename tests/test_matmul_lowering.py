"""MatMul with a constant operand that is not 2-D goes onto the arrays (issue 15): a vector weight [K], leading
sizes of 1, and weights that differ along batch axes (one block-diagonal matrix). Float backend against
onnxruntime; the ideal crossbar equals the integer backend bit for bit."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import cimc


def _model(x_shape, w_shape):
    w = np.random.default_rng(len(w_shape)).normal(size=w_shape).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _on_arrays(model, x, matrix):
    """Compiles `model`: one crossbar op of that matrix shape, the float backend equal to onnxruntime within
    1e-5 of the range, the ideal crossbar equal to the integer backend. Returns (manifest, op, onnxruntime's y)."""
    manifest = cimc.compile(model, "ideal", calibration=np.concatenate([x] * 8))
    (op,) = manifest.graph.xbar_ops()
    assert op.matrix.shape == matrix
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = cimc.Session(manifest, "float").run(x)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-5 * float(np.abs(want).max())
    np.testing.assert_array_equal(cimc.Session(manifest, "crossbar", ideal=True).run(x),
                                  cimc.Session(manifest, "integer").run(x))
    return manifest, op, want


@pytest.mark.parametrize("x_shape,w_shape,matrix", [
    ((4, 3, 5), (5,), (5, 1)),                        # vector weight
    ((4, 3, 5), (1, 5, 2), (5, 2)),                   # a leading 1 that adds no axis
    ((4, 3, 2, 5), (3, 5, 2), (3, 5, 2)),               # per-head weights along axis 1 (block diagonal)
    ((4, 1, 2, 5), (1, 3, 5, 2), (3, 5, 2)),            # the activation's axis of 1 broadcasts against 3 heads
])
def test_constant_matmul_of_any_rank_on_arrays(x_shape, w_shape, matrix):
    x = np.random.default_rng(7).normal(size=x_shape).astype(np.float32)
    manifest, op, want = _on_arrays(_model(x_shape, w_shape), x, matrix)
    integer = cimc.Session(manifest, "integer").run(x)
    # each of the K products errs by at most |x| s_w/2 (weight rounding) + (|w| + s_w/2) s_x/2 (input rounding)
    s_w, s_x = float(op.weight_scales.max()), op.input_quant.scale
    bound = op.rows * (np.abs(x).max() * s_w / 2 + (np.abs(op.matrix).max() + s_w / 2) * s_x / 2)
    assert np.max(np.abs(integer - want)) <= bound


def _einsum(equation, x_shape, w, x_first=True):
    inputs = ["x", "w"] if x_first else ["w", "x"]
    graph = helper.make_graph([helper.make_node("Einsum", inputs, ["y"], name="es", equation=equation)], "es",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("equation,x_shape,w_shape,x_first,matrix", [
    ("bsh,hd->bsd", (3, 4, 5), (5, 6), True, (5, 6)),              # a linear layer on tokens
    ("...h,hd->...d", (3, 4, 5), (5, 6), True, (5, 6)),            # the same with an ellipsis
    ("hd,bsh->bds", (3, 4, 5), (5, 6), False, (5, 6)),             # constant first, output transposed
    ("bshk,hkd->bsd", (3, 4, 2, 5), (2, 5, 6), True, (10, 6)),     # two contracted axes (heads merged)
    ("bsh,hde->bsde", (3, 4, 5), (5, 2, 3), True, (5, 6)),         # two free weight axes
    ("bsh,hdz->bsd", (3, 4, 5), (5, 6, 2), True, (5, 6)),          # a weight axis summed away first
])
def test_einsum_with_a_constant_on_arrays(equation, x_shape, w_shape, x_first, matrix):
    w = np.random.default_rng(3).normal(size=w_shape).astype(np.float32)
    model = _einsum(equation, x_shape, w, x_first)
    x = np.random.default_rng(4).normal(size=x_shape).astype(np.float32)
    _on_arrays(model, x, matrix)


@pytest.mark.parametrize("equation,w_shape", [("bsh,bhd->bsd", (3, 5, 6)),    # weight varies per sample: batched
                                              ("bsh,hd->bs", (5, 6))])        # free weight axis summed: fine
def test_einsum_that_is_not_a_plain_product_still_runs(equation, w_shape):
    """A weight that varies along the sample axis is not a crossbar weight: such a model runs only at the one batch
    size the weight has, and the import (which runs it at batch 1 and 2) refuses it naming the node. A weight axis
    summed away is an ordinary product."""
    w = np.random.default_rng(3).normal(size=w_shape).astype(np.float32)
    x = np.random.default_rng(4).normal(size=(3, 4, 5)).astype(np.float32)
    model = _einsum(equation, x.shape, w)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    try:
        manifest = cimc.compile(model, "ideal", calibration=np.concatenate([x] * 8))
    except cimc.errors.ModelError as exc:
        assert "'es'" in str(exc) and equation == "bsh,bhd->bsd"
        return
    got = cimc.Session(manifest, "float").run(x)
    assert np.max(np.abs(got - want)) <= 1e-5 * float(np.abs(want).max())


def test_per_head_weights_map_only_the_tiles_that_hold_weights(tmp_path):
    """4 heads of 64 x 64: the 256 x 256 block-diagonal matrix on 144-row, 8-output tiles has 2 x 32 tiles, of
    which only those meeting a diagonal block hold a weight (counted here from the dense matrix's non-zeros); the
    others get no array. The manifest says `blocks` and loads back to the same op; a weight off the blocks, or a
    block count that does not divide the matrix, is refused naming the field."""
    x_shape, w_shape = (4, 4, 3, 64), (4, 64, 64)
    model = _model(x_shape, w_shape)
    x = np.random.default_rng(7).normal(size=x_shape).astype(np.float32)
    manifest = cimc.compile(model, "yao2020-resnet", calibration=np.concatenate([x] * 8))
    (op,) = manifest.graph.xbar_ops()
    w = numpy_helper.to_array(model.graph.initializer[0])
    full = np.zeros((256, 256), np.float32)
    for h in range(4):
        full[h * 64:(h + 1) * 64, h * 64:(h + 1) * 64] = w[h]
    holding = sum(bool(full[r:r + 144, c:c + 8].any()) for r in (0, 144) for c in range(0, 256, 8))
    assert holding == 40 and len(op.tiles) == holding
    assert manifest.arrays.shape[0] == holding                   # one tile per array, one copy
    manifest.save(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert doc["ops"][[o["kind"] for o in doc["ops"]].index("crossbar")]["blocks"] == 4
    loaded = cimc.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.graph.xbar_ops()[0].matrix, w)
    for backend, options in (("integer", {}), ("crossbar", {"seed": 2})):
        np.testing.assert_array_equal(cimc.Session(loaded, backend, **options).run(x),
                                      cimc.Session(manifest, backend, **options).run(x))
    params_file = tmp_path / "m" / "params.npz"
    with np.load(params_file) as f:
        params = dict(f)
    key = next(k for k in params if k.endswith("float_matrix"))
    bad = full.copy()
    bad[0, 255] = 1.0                                            # row 0 is head 0's, column 255 head 3's
    np.savez(params_file, **{**params, key: bad})
    with pytest.raises(cimc.errors.ManifestError, match=r"'ops\[\d+\]\.blocks' = 4.*outside"):
        cimc.load(tmp_path / "m")
    np.savez(params_file, **params)
    i = [o["kind"] for o in doc["ops"]].index("crossbar")
    doc["ops"][i]["blocks"] = 3
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(cimc.errors.ManifestError, match=r"'ops\[\d+\]\.blocks' = 3 does not divide"):
        cimc.load(tmp_path / "m")
