"""Issue 15 item 4: user-facing layer names are the ONNX node names, exactly (`/layer1/layer1.0/conv1/Conv`), in
count (text and --json), --replicate, replication.json, run --layers, tune --layer, the report and the manifest; an
unnamed node is OPTYPE_INDEX (cimc.node_names), never the name of another node. A wrong name is refused naming it
and the close matches."""
from __future__ import annotations

import json
import zipfile
from pathlib import PurePosixPath

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import cimc
from cimc.node_names import layer_names
from refusal import assert_refused, run_cli

# The crossbar nodes' names, in order: torch's exporter style, dots, slashes, spaces, unicode, a path escape, names
# that were the same after the old sanitising ('a/b', 'a_b'), an unnamed node (index 5) and a real node named what
# that unnamed node would be called (Conv_5).
CONV_NAMES = ["/layer1/layer1.0/conv1/Conv", "a/b", "a_b", "conv with spaces", "σ.conv/ünï", "", "../../x/..",
              "layer.2 (copy)", "Conv_5"]
LAST = "/fc/MatMul"
# what the docs say the layers are called: the node names; the unnamed Conv at index 5 is Conv_5, taken, so Conv_5_1
EXPECTED = [n or "Conv_5_1" for n in CONV_NAMES] + [LAST]


def _model(names: list[str], last: str, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i, name in enumerate(names):
        w = f"w{i}"
        inits.append(numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) / 6).astype(np.float32), w))
        nodes.append(helper.make_node("Conv", [x, w], [f"t{i}"], name=name, pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
        x = f"t{i}"
    nodes.append(helper.make_node("Relu", [x], ["r"], name=""))
    nodes.append(helper.make_node("Flatten", ["r"], ["f"], name="/Flatten"))
    inits.append(numpy_helper.from_array((rng.standard_normal((256, 10)) / 16).astype(np.float32), "fcw"))
    nodes.append(helper.make_node("MatMul", ["f", "fcw"], ["logits"], name=last))
    graph = helper.make_graph(nodes, "names", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("names")
    onnx.save(_model(CONV_NAMES, LAST), d / "named.onnx")
    onnx.save(_model([f"n{i}" for i in range(len(CONV_NAMES))], "fc"), d / "plain.onnx")   # same weights
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 4, 8, 8)).astype(np.float32)
    np.savez(d / "x.npz", x=x)
    np.savez(d / "xy.npz", x=x, y=rng.integers(0, 10, 40))
    return d


@pytest.fixture(scope="module")
def compiled(files):
    """The named model compiled with 3 copies of 'conv with spaces' (the exact name), and the plain twin."""
    out = {}
    for key, extra in (("named", ["--replicate", "conv with spaces=3"]), ("plain", ["--replicate", "n3=3"])):
        code, _, err = run_cli(["compile", files / f"{key}.onnx", "--calibration", files / "x.npz",
                                "-o", files / f"{key}.m", *extra])
        assert code == 0, err
        out[key] = files / f"{key}.m"
    return out


def _count(files, *extra) -> dict:
    code, out, err = run_cli(["count", files / "named.onnx", "--json", *extra])
    assert code == 0, err
    return json.loads(out)


# -- the names themselves ------------------------------------------------------------------------------------------
def test_count_json_lists_exactly_the_node_names(files):
    assert [row["name"] for row in _count(files)["layers"]] == EXPECTED


def test_count_text_prints_the_node_names(files):
    code, out, err = run_cli(["count", files / "named.onnx"])
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.split(" ")[0] != "layer"]
    for name in EXPECTED:
        assert any(line.startswith(name + " ") for line in rows), (name, out)


def test_manifest_op_names_are_the_node_names(compiled):
    doc = json.loads((compiled["named"] / "manifest.json").read_text())
    xbar = [op for op in doc["ops"] if op["kind"] == "crossbar"]
    assert [op["name"] for op in xbar] == EXPECTED
    assert [op["source_nodes"] for op in xbar] == [[n] for n in EXPECTED]
    assert [op["name"] for op in doc["ops"] if op["op_type"] == "Flatten"] == ["/Flatten"]
    assert len({op["name"] for op in doc["ops"]}) == len(doc["ops"])


def test_params_npz_member_names_are_safe_zip_paths(compiled):
    """Layer names hold '/', '..' and unicode: params.npz is keyed by the manifest field, never by a layer name."""
    doc = json.loads((compiled["named"] / "manifest.json").read_text())
    with zipfile.ZipFile(compiled["named"] / "params.npz") as z:
        members = z.namelist()
    for member in members:
        path = PurePosixPath(member)
        assert not path.is_absolute() and ".." not in path.parts and member.isascii(), member
    keys = {op["weights"]["float_matrix"] for op in doc["ops"] if op["kind"] == "crossbar"}
    assert keys <= {m.removesuffix(".npy") for m in members}


# -- --replicate, replication.json ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", EXPECTED)
def test_replicate_with_the_exact_name_changes_its_copies(files, name):
    copies = {row["name"]: row["copies"] for row in _count(files, "--replicate", f"{name}=3")["layers"]}
    assert copies == {n: 3 if n == name else 1 for n in EXPECTED}


def test_compile_replicates_the_named_layer(compiled):
    m = cimc.load(compiled["named"])
    assert {op.name: op.replicas for op in m.graph.xbar_ops()} == {n: 3 if n == "conv with spaces" else 1
                                                                   for n in EXPECTED}


def test_replication_json_round_trips(compiled, tmp_path):
    """compile's replication.json names the layers exactly; an edited copy passed back fixes those copies."""
    doc = json.loads((compiled["named"] / "replication.json").read_text())
    assert list(doc["copies"]) == EXPECTED
    doc["copies"]["σ.conv/ünï"] = 2
    (tmp_path / "r.json").write_text(json.dumps(doc))
    code, _, err = run_cli(["compile", compiled["named"].parent / "named.onnx", "--calibration",
                            compiled["named"].parent / "x.npz", "-o", tmp_path / "m2", "--replication", tmp_path / "r.json"])
    assert code == 0, err
    again = json.loads((tmp_path / "m2" / "replication.json").read_text())["copies"]
    assert again == doc["copies"] == {n: {"conv with spaces": 3, "σ.conv/ünï": 2}.get(n, 1) for n in EXPECTED}


def _misspellings() -> list[tuple[str, str]]:
    """(wrong name, the layer it was meant to be): the old sanitised spelling, case changes, a missing or extra
    character, a missing leading slash. A wrong name that is another layer's real name is left out."""
    cases = []
    for name in EXPECTED:
        wrong = {name.replace("/", "_"), name.upper(), name.lower(), name[1:], name + "x", name[:-1],
                 name.lstrip("/"), name + " ", " " + name}
        cases += [(w, name) for w in sorted(wrong) if w and w not in EXPECTED]
    return cases


MISSPELLINGS = _misspellings()


@pytest.mark.parametrize("wrong,meant", MISSPELLINGS)
def test_a_wrong_name_is_refused_naming_it_and_the_layer_meant(files, tmp_path, wrong, meant):
    err = assert_refused(["compile", files / "named.onnx", "--calibration", files / "x.npz", "-o", tmp_path / "m",
                          "--replicate", f"{wrong}=2"], ["--replicate", repr(wrong), "matches no crossbar layer"],
                         watch=[tmp_path, files])
    assert repr(meant) in err, err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", [n for n in EXPECTED if "/" in n and n.replace("/", "_") not in EXPECTED])
def test_the_old_sanitised_spelling_is_answered_with_the_exact_name(files, name):
    err = assert_refused(["count", files / "named.onnx", "--replicate", f"{name.replace('/', '_')}=2"],
                         f"did you mean {name!r}", watch=[files])
    assert "Traceback" not in err


@pytest.mark.parametrize("wrong", ["nosuch", "conv", "", "=", "Conv_5_2", "/layer1/layer1.0/conv1"])
def test_a_wrong_name_in_the_replication_file_is_refused(files, tmp_path, wrong):
    (tmp_path / "r.json").write_text(json.dumps({"copies": {wrong: 2}}))
    assert_refused(["count", files / "named.onnx", "--replication", tmp_path / "r.json"],
                   ["replication file", repr(wrong), "matches no crossbar layer"], watch=[tmp_path, files])


# -- run, tune, report ---------------------------------------------------------------------------------------------
def test_run_layers_prints_the_node_names(compiled, files):
    code, out, err = run_cli(["run", compiled["named"], "--data", files / "x.npz", "--backend", "crossbar",
                              "--ideal", "--layers"])
    assert code == 0, err
    for name in EXPECTED:
        assert any(line.strip().startswith(name + " ") for line in out.splitlines()), (name, out)
    code, out, err = run_cli(["run", compiled["named"], "--data", files / "x.npz", "--backend", "crossbar",
                              "--ideal", "--layers", "--json"])
    assert code == 0, err
    assert [row["name"] for row in json.loads(out)["layers"]] == EXPECTED


@pytest.mark.parametrize("backend,options", [("float", {}), ("integer", {}), ("crossbar", {"ideal": True}),
                                             ("crossbar", {"seed": 3})])
def test_names_do_not_change_the_numbers(compiled, files, backend, options):
    """The named model and its plainly named twin (same weights) compute the same numbers, bit for bit, on the
    noisy chip too (its draws are keyed by layer index, not name); the float backend agrees with onnxruntime."""
    x = np.load(files / "x.npz")["x"]
    named = cimc.Session(compiled["named"], backend, **options).run(x)
    plain = cimc.Session(compiled["plain"], backend, **options).run(x)
    np.testing.assert_array_equal(named, plain)
    if backend == "float":
        ref = ort.InferenceSession(str(files / "named.onnx")).run(None, {"input": x})[0]
        np.testing.assert_allclose(named, ref, rtol=0, atol=1e-5 * float(np.ptp(ref)))


def test_old_manifest_keyed_by_op_name_still_loads(compiled, tmp_path):
    """A manifest written before params.npz was keyed by field (keys `OPNAME/matrix`) loads and runs the same: the
    loader follows the keys manifest.json names."""
    import shutil
    old = tmp_path / "old"
    shutil.copytree(compiled["plain"], old)
    doc = json.loads((old / "manifest.json").read_text())
    with np.load(old / "params.npz") as f:
        params = {k: f[k] for k in f.files}
    renamed = {}
    for op in doc["ops"]:
        if op["kind"] == "crossbar":
            for holder, field, suffix in ((op["weights"], "scales", "weight_scales"),
                                          (op["weights"], "float_matrix", "matrix"), (op, "bias", "bias")):
                if holder[field] is not None:
                    renamed[f"{op['name']}/{suffix}"] = params[holder[field]]
                    holder[field] = f"{op['name']}/{suffix}"
    assert len(renamed) == len(params)
    (old / "manifest.json").write_text(json.dumps(doc))
    np.savez(old / "params.npz", **renamed)
    x = np.load(compiled["plain"].parent / "x.npz")["x"]
    for backend in ("float", "integer"):
        np.testing.assert_array_equal(cimc.Session(old, backend).run(x), cimc.Session(compiled["plain"], backend).run(x))


def test_tune_takes_the_exact_name_and_refuses_a_wrong_one(compiled, files, tmp_path):
    assert_refused(["tune", compiled["named"], "--data", files / "xy.npz", "-o", tmp_path / "t", "--layer",
                    "/fc/matmul"], ["--layer", "'/fc/matmul'", f"did you mean {LAST!r}"], watch=[tmp_path, files])
    assert_refused(["tune", compiled["named"], "--data", files / "xy.npz", "-o", tmp_path / "t", "--layer",
                    "_fc_MatMul"], ["'_fc_MatMul'", f"did you mean {LAST!r}"], watch=[tmp_path, files])
    code, out, err = run_cli(["tune", compiled["named"], "--data", files / "xy.npz", "-o", tmp_path / "t",
                              "--layer", LAST, "--json"])
    assert code == 0, err
    assert json.loads(out)["layer"] == LAST


def test_report_shows_the_node_names(compiled, tmp_path):
    import html
    code, _, err = run_cli(["report", compiled["named"], "-o", tmp_path / "r.html"])
    assert code == 0, err
    page = html.unescape((tmp_path / "r.html").read_text())
    for name in EXPECTED:
        assert name in page, name


# -- the naming rule ----------------------------------------------------------------------------------------------
def _nodes(specs):
    return [helper.make_node(op, [], [f"o{i}"], name=name) for i, (name, op) in enumerate(specs)]


@pytest.mark.parametrize("specs,expected", [
    ([("", "Conv"), ("", "Relu")], ["Conv_0", "Relu_1"]),
    ([("x", "Conv"), ("", "Conv")], ["x", "Conv_1"]),
    ([("", "Conv"), ("Conv_0", "Relu")], ["Conv_0_1", "Conv_0"]),
    ([("", "Conv"), ("Conv_0", "Relu"), ("Conv_0_1", "Relu")], ["Conv_0_2", "Conv_0", "Conv_0_1"]),
    ([("d", "Conv"), ("d", "Conv"), ("d_1", "Relu")], ["d", "d_2", "d_1"]),
    ([("/a/b", "Conv"), ("_a_b", "Conv")], ["/a/b", "_a_b"]),
])
def test_layer_names_rule(specs, expected):
    assert layer_names(_nodes(specs)) == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "a", "a_1", "Conv_0", "Conv_1", "Conv_1_1", "/x/y", "_x_y", "é"]),
                          st.sampled_from(["Conv", "Relu"])), max_size=8))
def test_layer_names_are_distinct_and_keep_every_first_real_name(specs):
    names = layer_names(_nodes(specs))
    assert len(names) == len(specs) and len(set(names)) == len(names) and all(names)
    real = {name for name, _ in specs if name}
    seen = set()
    for (name, op), got in zip(specs, names):
        if name and name not in seen:
            assert got == name
        else:
            assert got not in real and got.startswith(name or op)
        seen.add(name)
    assert layer_names(_nodes(specs)) == names        # stable
