"""`cimc count --json` reports multiply-accumulates per inference: crossbar and digital, per layer and in total
(issue 15). Expected numbers are computed by hand from the layer shapes."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from refusal import run_cli

import cimc


def _attention_like(tmp_path):
    """x [N, 4, 8] -> MatMul W_q [8, 6] (crossbar: 4 tokens x 8 x 6) and W_k [8, 6]; scores = q @ k^T (digital:
    4 x 4 outputs x 6); a grouped 1x1 Conv on [N, 4, 3, 3] (groups 2: 3*3 positions x (4/2) x 4 outputs)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float32), n) for n in ("wq", "wk")]
    inits.append(numpy_helper.from_array(rng.normal(size=(4, 2, 1, 1)).astype(np.float32), "wc"))
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
             helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
             helper.make_node("Conv", ["img", "wc"], ["c"], name="grouped", group=2)]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8]),
                                              helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 4, 3, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("c", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "attn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_count_json_reports_crossbar_and_digital_macs(tmp_path):
    code, out, err = run_cli(["count", _attention_like(tmp_path), "--target", "ideal", "--json"])
    assert code == 0, err
    table = json.loads(out)
    per_layer = {row["name"]: row["macs"] for row in table["layers"]}
    assert per_layer == {"q_proj": 4 * 8 * 6, "k_proj": 4 * 8 * 6, "grouped": 9 * 2 * 4}
    macs = table["macs"]
    assert macs["crossbar"] == 2 * 4 * 8 * 6 + 9 * 2 * 4
    assert macs["digital_ops"] == [{"name": "scores", "op_type": "MatMul", "macs": 4 * 4 * 6}]
    assert macs["digital"] == 4 * 4 * 6
    assert abs(macs["digital_share"] - 96 / (96 + 384 + 72)) < 1e-12


def test_attention_runs_digitally_like_onnxruntime(tmp_path):
    """The activation x activation MatMul stays digital and runs in onnxruntime: the float backend agrees."""
    import onnxruntime as ort
    path = _attention_like(tmp_path)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(5, 4, 8)).astype(np.float32), "img": rng.normal(size=(5, 4, 3, 3)).astype(np.float32)}
    manifest = cimc.compile(str(path), "ideal", calibration={k: np.concatenate([v] * 8) for k, v in feeds.items()})
    got = cimc.Session(manifest, "float").run(feeds)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for name, w in zip(("scores", "c"), want):
        assert np.max(np.abs(got[name] - w)) <= 1e-5 * max(1.0, float(np.abs(w).max()))
