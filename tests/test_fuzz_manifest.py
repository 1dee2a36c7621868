"""Edited manifests are refused at load, before any computation (issue 11, item 6 and the manifest half of item 4).

One valid manifest (Yao's mCNN on yao2020-mcnn: C1 with two copies, C3 and FC in several tiles, one tile per
array) and one `--pack` manifest (tiles of different layers time-sharing arrays) are compiled once; every case
copies one, edits manifest.json, params.npz, arrays.npz or conductances.npz, and runs `cimc run DIR --data ...`,
which must exit 2 naming the culprit and touch nothing. The unedited manifests run (exit 0).
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refusal import assert_refused, run_cli

from cimc.manifest import load

# op indices in the mCNN manifest: crossbar C1, C3, FC; digital relu1, S2, relu3, S4, flatten
C1, RELU1, S2, C3, RELU3, S4, FLATTEN, FC = range(8)
XBAR = (C1, C3, FC)
DIGITAL = (RELU1, S2, RELU3, S4, FLATTEN)


@pytest.fixture(scope="module")
def compiled(mcnn_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_manifest")
    data = root / "data"
    data.mkdir()
    np.savez(data / "x.npz", x=np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32))
    out = {"data": data}
    for name, extra in (("plain", []), ("pack", ["--pack"])):
        code, _, err = run_cli(["compile", mcnn_dir / "mcnn.onnx", "--target", "yao2020-mcnn", "--calibration",
                                mcnn_dir / "calib.npz", "-o", root / name, *extra])
        assert code == 0, err
        out[name] = root / name
    return out


def _npz(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def edited(compiled, tmp_path, doc=None, params=None, arrays=None, text=None, files=None, base="plain") -> Path:
    """A copy of a compiled manifest with edits: doc(dict), params(dict), arrays(dict) change in place; text(str)
    -> str rewrites manifest.json; files: {name: bytes or dict of arrays} adds files."""
    m = tmp_path / "m"
    shutil.copytree(compiled[base], m)
    if doc is not None:
        d = json.loads((m / "manifest.json").read_text())
        doc(d)
        (m / "manifest.json").write_text(json.dumps(d))
    if text is not None:
        (m / "manifest.json").write_text(text((m / "manifest.json").read_text()))
    for name, fn in (("params.npz", params), ("arrays.npz", arrays)):
        if fn is not None:
            content = _npz(m / name)
            fn(content)
            np.savez(m / name, **content)
    for name, content in (files or {}).items():
        if isinstance(content, dict):
            np.savez(m / name, **content)
        else:
            (m / name).write_bytes(content)
    return m


def refuse(compiled, m: Path, culprit, backend: str = "integer"):
    return assert_refused(["run", m, "--data", compiled["data"] / "x.npz", "--backend", backend], culprit,
                          watch=[m, compiled["data"]])


@pytest.mark.parametrize("base", ["plain", "pack"])
@pytest.mark.parametrize("backend", ["integer", "crossbar"])
def test_unedited_manifests_run(compiled, base, backend):
    code, _, err = run_cli(["run", compiled[base], "--data", compiled["data"] / "x.npz", "--backend", backend])
    assert code == 0, err


# -- tiles and placements ------------------------------------------------------------------------------------------
PLAIN_TILES = [(C1, 0), (C3, 0), (C3, 1), (FC, 0), (FC, 1), (FC, 2), (FC, 3)]


@pytest.mark.parametrize("op,tile", PLAIN_TILES)
def test_tile_deleted(compiled, tmp_path, op, tile):
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][op]["tiles"].pop(tile))
    refuse(compiled, m, f"ops[{op}].tiles")


@pytest.mark.parametrize("op,tile", PLAIN_TILES)
def test_tile_duplicated(compiled, tmp_path, op, tile):
    """A second tile over the same weights, on its own (free) array: the matrix would be covered twice."""
    def dup(d):
        t = json.loads(json.dumps(d["ops"][op]["tiles"][tile]))
        for p in t["placements"]:
            p["array"] = d["arrays"]["count"]
            del p["pe"], p["chip"]
        d["arrays"]["count"] += 1
        d["ops"][op]["tiles"].append(t)

    def grow(a):
        a["levels"] = np.concatenate([a["levels"], a["levels"][-1:] * 0])
    m = edited(compiled, tmp_path, doc=dup, arrays=grow)
    refuse(compiled, m, f"ops[{op}].tiles")


@pytest.mark.parametrize("op,tile", PLAIN_TILES)
def test_tile_duplicated_onto_its_own_cells(compiled, tmp_path, op, tile):
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][op]["tiles"].append(d["ops"][op]["tiles"][tile]))
    refuse(compiled, m, f"ops[{op}].tiles")


# copy 0 of each tile of the plain manifest sits on this array (C1's second copy on array 1)
HOME = {(C1, 0): 0, (C3, 0): 2, (C3, 1): 3, (FC, 0): 4, (FC, 1): 5, (FC, 2): 6, (FC, 3): 7}


@pytest.mark.parametrize("op,tile,to_array", [(op, t, a) for op, t in PLAIN_TILES for a in range(8)
                                              if a != HOME[op, t]])
def test_placement_moved_onto_used_cells(compiled, tmp_path, op, tile, to_array):
    """Every placement (copy 0) moved onto every other array: in the one-tile-per-array manifest each array's
    cells from (0, 0) are in use, so the moved tile lands on another tile's cells."""
    d0 = json.loads((compiled["plain"] / "manifest.json").read_text())
    assert d0["ops"][op]["tiles"][tile]["placements"][0]["array"] == HOME[op, tile]

    def move(d):
        p = d["ops"][op]["tiles"][tile]["placements"][0]
        p["array"], p["pe"], p["chip"] = to_array, to_array, 0
    m = edited(compiled, tmp_path, doc=move)
    refuse(compiled, m, f"ops[{op}].tiles[{tile}].placements[0]")


@pytest.mark.parametrize("op,tile,copy,to_array,row_offset", [
    (FC, 3, 0, 0, 64),       # FC's last tile onto C1's array, below C1's rows: free cells that hold zeros
    (C1, 0, 0, 2, 100),      # C1 onto C3's array, below C3's 72 rows
    (C1, 0, 1, 3, 80),       # C1's second copy likewise: every copy is checked
    (C3, 1, 0, 0, 20),       # C3's second column tile onto C1's array
])
def test_placement_moved_to_free_cells_of_another_layer(compiled, tmp_path, op, tile, copy, to_array, row_offset):
    def move(d):
        p = d["ops"][op]["tiles"][tile]["placements"][copy]
        p["array"], p["pe"], p["chip"], p["row_offset"] = to_array, to_array, 0, row_offset
    m = edited(compiled, tmp_path, doc=move)
    refuse(compiled, m, f"ops[{op}].tiles[{tile}].placements[{copy}]")


@pytest.mark.parametrize("op,tile", PLAIN_TILES)
@pytest.mark.parametrize("field,value", [("row_offset", 1), ("row_offset", 10 ** 6), ("col_offset", 1),
                                         ("col_offset", 10 ** 9)])
def test_placement_out_of_bounds(compiled, tmp_path, op, tile, field, value):
    d0 = json.loads((compiled["plain"] / "manifest.json").read_text())
    t = d0["ops"][op]["tiles"][tile]
    if field == "row_offset" and value + t["row_count"] <= 128 or field == "col_offset" and \
            value + 2 * t["col_count"] <= 16:
        value = 128 - t["row_count"] + 1 if field == "row_offset" else 16 - 2 * t["col_count"] + 1
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][op]["tiles"][tile]["placements"][0].update({field: value}))
    refuse(compiled, m, f"ops[{op}].tiles[{tile}].placements[0]")


@pytest.mark.parametrize("field,value", [("array", 8), ("array", 10 ** 6), ("array", -1), ("array", 1.5),
                                         ("array", "0"), ("array", None), ("pe", 7), ("chip", 1), ("row_offset", -1)])
def test_placement_bad_field(compiled, tmp_path, field, value):
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][FC]["tiles"][0]["placements"][0].update({field: value}))
    refuse(compiled, m, "ops[7].tiles[0].placements[0]")


@pytest.mark.parametrize("op,tile,change", [
    (FC, 0, {"row_count": 127}), (FC, 0, {"row_count": 129}), (FC, 2, {"row_start": 129}),
    (FC, 1, {"col_start": 9}), (FC, 1, {"col_count": 1}), (C3, 1, {"col_start": 7}), (C3, 0, {"col_count": 7}),
    (C1, 0, {"row_count": 8}), (C1, 0, {"row_count": 10}), (C1, 0, {"col_count": 9}), (C1, 0, {"row_start": 1}),
    (FC, 3, {"row_start": 128, "row_count": 63}), (C3, 1, {"col_count": 5}), (C3, 0, {"row_count": 0}),
])
def test_tile_geometry_inconsistent(compiled, tmp_path, op, tile, change):
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][op]["tiles"][tile].update(change))
    refuse(compiled, m, f"ops[{op}].tiles")


@pytest.mark.parametrize("op,tile,to_array", [(C3, 0, 3), (C3, 1, 0), (FC, 1, 0), (FC, 0, 1)])
def test_pack_manifest_tiles_may_share_arrays_but_not_cells(compiled, tmp_path, op, tile, to_array):
    """In a --pack manifest several layers' tiles legitimately share an array; moving one onto occupied cells is
    still refused."""
    d0 = json.loads((compiled["pack"] / "manifest.json").read_text())
    p0 = d0["ops"][op]["tiles"][tile]["placements"][0]
    occupied = {(p["array"], p["row_offset"], p["col_offset"]) for o in d0["ops"] if o["kind"] == "crossbar"
                for t in o["tiles"] for p in t["placements"]}
    target = next((a, r, c) for a, r, c in sorted(occupied) if a == to_array)

    def move(d):
        p = d["ops"][op]["tiles"][tile]["placements"][0]
        p["array"], p["row_offset"], p["col_offset"], p["pe"], p["chip"] = target[0], target[1], target[2], \
            target[0], 0
    assert (p0["array"], p0["row_offset"], p0["col_offset"]) != target
    m = edited(compiled, tmp_path, doc=move, base="pack")
    refuse(compiled, m, f"ops[{op}].tiles[{tile}].placements[0]")


# -- numbers -------------------------------------------------------------------------------------------------------
BAD_FLOATS = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("op", XBAR)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0, 0.0, -np.inf, "int64", "float64", "shape"])
def test_weight_scales(compiled, tmp_path, op, bad):
    key = json.loads((compiled["plain"] / "manifest.json").read_text())["ops"][op]["weights"]["scales"]

    def spoil(p):
        s = p[key]
        if bad == "int64":
            p[key] = np.ones_like(s, dtype=np.int64)
        elif bad == "float64":
            p[key] = s.astype(np.float64)
        elif bad == "shape":
            p[key] = s[:-1]
        else:
            s[len(s) // 2] = bad
    m = edited(compiled, tmp_path, params=spoil)
    refuse(compiled, m, f"ops[{op}].weights.scales")


@pytest.mark.parametrize("op", XBAR)
@pytest.mark.parametrize("key,field", [("matrix", "weights.float_matrix"), ("bias", "bias")])
@pytest.mark.parametrize("bad", BAD_FLOATS + ["float64", "int32", "shape", "complex"])
def test_matrix_and_bias(compiled, tmp_path, op, key, field, bad):
    d = json.loads((compiled["plain"] / "manifest.json").read_text())["ops"][op]
    param = d["bias"] if field == "bias" else d["weights"]["float_matrix"]   # the params.npz key manifest.json names

    def spoil(p):
        a = p[param]
        if bad == "float64":
            p[param] = a.astype(np.float64)
        elif bad == "int32":
            p[param] = a.astype(np.int32)
        elif bad == "complex":
            p[param] = a.astype(np.complex64)
        elif bad == "shape":
            p[param] = a[..., :-1]
        else:
            a.flat[a.size // 3] = bad
    m = edited(compiled, tmp_path, params=spoil)
    refuse(compiled, m, f"ops[{op}].{field}")


@pytest.mark.parametrize("op", XBAR)
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
def test_input_quant_scale_literals(compiled, tmp_path, op, literal):
    """JSON has no NaN/Infinity; Python's json accepts them (and 1e400 overflows to inf): refused at parse."""
    def put(text):
        d = json.loads(text)
        d["ops"][op]["input_quant"]["scale"] = "@@"
        return json.dumps(d).replace('"@@"', literal)
    m = edited(compiled, tmp_path, text=put)
    refuse(compiled, m, ["manifest.json", literal.lstrip("-") if "e" not in literal else "infinity"])


@pytest.mark.parametrize("path", [("target", "device", "g_min_us"), ("target", "adc", "energy_pj"),
                                  ("ops", FC, "adc_full_scale_ua"), ("summary", "total_arrays"),
                                  ("provenance", "source_model", "opset"), ("estimates",)])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_literal_anywhere(compiled, tmp_path, path, literal):
    def put(text):
        d = json.loads(text)
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = "@@"
        return json.dumps(d).replace('"@@"', literal)
    m = edited(compiled, tmp_path, text=put)
    refuse(compiled, m, ["manifest.json", literal.lstrip("-")])


@pytest.mark.parametrize("op", XBAR)
@pytest.mark.parametrize("field,value,culprit", [
    ("scale", 0, "input_quant.scale"), ("scale", -0.5, "input_quant.scale"), ("scale", "1", "input_quant.scale"),
    ("bits", 1, "input_quant.bits"), ("bits", 17, "input_quant.bits"), ("bits", 4, "input_quant.bits"),
    ("bits", 8.5, "input_quant.bits"), ("signed", "no", "input_quant.signed"),
])
def test_input_quant(compiled, tmp_path, op, field, value, culprit):
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][op]["input_quant"].update({field: value}))
    refuse(compiled, m, f"ops[{op}].{culprit}")


@pytest.mark.parametrize("op", XBAR)
@pytest.mark.parametrize("field,value", [("adc_full_scale_ua", -1.0), ("adc_full_scale_ua", 0),
                                         ("adc_full_scale_ua", "21"), ("replicas", 0), ("positions", 0),
                                         ("rows", 0), ("cols", 1000)])
def test_crossbar_op_fields(compiled, tmp_path, op, field, value):
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][op].update({field: value}))
    refuse(compiled, m, f"ops[{op}]")


@pytest.mark.parametrize("op", XBAR)
@pytest.mark.parametrize("field,value", [("max_level", 3), ("max_level", 127), ("granularity", "layer")])
def test_weights_made_for_another_target(compiled, tmp_path, op, field, value):
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][op]["weights"].update({field: value}))
    refuse(compiled, m, f"ops[{op}].weights.{field}")


# -- conv geometry -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [C1, C3])
@pytest.mark.parametrize("change", [
    {"kernel": [5, 5]}, {"kernel": [3, 2]}, {"kernel": [0, 3]}, {"in_channels": 2}, {"in_channels": 0},
    {"out_channels": 9}, {"out_channels": 1}, {"groups": 2}, {"groups": 3}, {"groups": 0}, {"strides": [0, 1]},
    {"strides": [1, -1]}, {"dilations": [0, 1]}, {"pads": [-1, 0, 0, 0]}, {"pads": [0, 0, 0]},
    {"spatial_rank": 1}, {"spatial_rank": 3}, {"kernel": [3]},
])
def test_conv_geometry(compiled, tmp_path, op, change):
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][op]["conv"].update(change))
    refuse(compiled, m, f"ops[{op}].conv")


# -- digital ops (digital.onnx) ------------------------------------------------------------------------------------
def with_digital(m: Path, edit) -> Path:
    """Edit the ModelProto of m/digital.onnx in place (edit(model))."""
    import onnx
    model = onnx.load(m / "digital.onnx")
    edit(model)
    onnx.save(model, m / "digital.onnx")
    return m


def node_of(model, index):
    return model.graph.node[index]


@pytest.mark.parametrize("op", DIGITAL + XBAR)
def test_digital_onnx_node_differs_from_manifest_json(compiled, tmp_path, op):
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][op].update({"name": "renamed"}))
    refuse(compiled, m, ["digital.onnx", f"ops[{op}]"])


@pytest.mark.parametrize("op", DIGITAL)
@pytest.mark.parametrize("op_type", ["relu", "NoSuchOp", "maxpool", "Gelu"])
def test_unknown_digital_op(compiled, tmp_path, op, op_type):
    """The same op type in both files, one ONNX does not define at the model's opset: onnx's checker refuses."""
    m = edited(compiled, tmp_path, doc=lambda d: d["ops"][op].update({"op_type": op_type}))
    with_digital(m, lambda model: setattr(node_of(model, op), "op_type", op_type))
    refuse(compiled, m, ["digital.onnx", op_type])


@pytest.mark.parametrize("op", DIGITAL)
@pytest.mark.parametrize("attr", ["foo", "storage_order_x", "Axis"])
def test_unknown_digital_attribute(compiled, tmp_path, op, attr):
    from onnx import helper
    m = edited(compiled, tmp_path)
    with_digital(m, lambda model: node_of(model, op).attribute.append(helper.make_attribute(attr, 1)))
    refuse(compiled, m, ["digital.onnx", attr])


@pytest.mark.parametrize("op,attr,value", [(S2, "kernel_shape", "abc"), (S2, "kernel_shape", 2.5),
                                           (S4, "pads", "x"), (FLATTEN, "axis", "1"), (FLATTEN, "axis", 1.5)])
def test_digital_attribute_of_wrong_kind(compiled, tmp_path, op, attr, value):
    from onnx import helper

    def spoil(model):
        node = node_of(model, op)
        kept = [a for a in node.attribute if a.name != attr]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute(attr, value)])
    m = with_digital(edited(compiled, tmp_path), spoil)
    refuse(compiled, m, ["digital.onnx", attr])


@pytest.mark.parametrize("op,attr", [(S2, "kernel_shape"), (S4, "kernel_shape")])
def test_digital_required_attribute_missing(compiled, tmp_path, op, attr):
    def drop(model):
        node = node_of(model, op)
        kept = [a for a in node.attribute if a.name != attr]
        del node.attribute[:]
        node.attribute.extend(kept)
    m = with_digital(edited(compiled, tmp_path), drop)
    refuse(compiled, m, ["digital.onnx", attr])


def _relu1_to_mul(value):
    """relu1 turned into a Mul by a constant initializer in both files."""
    from onnx import numpy_helper

    def doc(d):
        d["ops"][RELU1].update(op_type="Mul", inputs=d["ops"][RELU1]["inputs"] + ["relu1/constant"])

    def model_edit(model):
        node = node_of(model, RELU1)
        node.op_type = "Mul"
        node.input.append("relu1/constant")
        model.graph.initializer.append(numpy_helper.from_array(value, "relu1/constant"))
    return doc, model_edit


@pytest.mark.parametrize("value", [np.array([np.nan], np.float32), np.array([1.0, np.inf], np.float32)])
def test_digital_constant_not_finite(compiled, tmp_path, value):
    doc, model_edit = _relu1_to_mul(value)
    m = with_digital(edited(compiled, tmp_path, doc=doc), model_edit)
    refuse(compiled, m, ["digital.onnx", "relu1/constant"])


def test_digital_constant_control(compiled, tmp_path):
    """The same edit with a finite constant loads and multiplies: the refusals above are about the values."""
    from cimc.executor import Session
    doc, model_edit = _relu1_to_mul(np.array([2.0], np.float32))
    m = with_digital(edited(compiled, tmp_path, doc=doc), model_edit)
    manifest = load(m)
    assert manifest.graph.ops[RELU1].op_type == "Mul"
    x = np.load(compiled["data"] / "x.npz")["x"]
    assert Session(manifest, "float").run(x).shape == Session(load(compiled["plain"]), "float").run(x).shape


@pytest.mark.parametrize("content", [b"", b"not onnx at all", b"\x08\x07" * 10])
def test_digital_onnx_unreadable(compiled, tmp_path, content):
    m = edited(compiled, tmp_path, files={"digital.onnx": content})
    refuse(compiled, m, "digital.onnx")


def test_digital_onnx_missing(compiled, tmp_path):
    m = edited(compiled, tmp_path)
    (m / "digital.onnx").unlink()
    refuse(compiled, m, "digital.onnx")


def test_digital_onnx_external_data_refused(compiled, tmp_path):
    """A digital.onnx constant pointing at a file outside the manifest is never read."""
    doc, model_edit = _relu1_to_mul(np.array([2.0], np.float32))

    def external(model):
        model_edit(model)
        init = model.graph.initializer[-1]
        init.data_location = 1                      # EXTERNAL
        del init.external_data[:]
        entry = init.external_data.add()
        entry.key, entry.value = "location", "/etc/passwd"
        init.ClearField("float_data")
        init.ClearField("raw_data")
    m = with_digital(edited(compiled, tmp_path, doc=doc), external)
    refuse(compiled, m, ["digital.onnx", "external"])


# -- arrays.npz and conductances.npz -------------------------------------------------------------------------------
@pytest.mark.parametrize("change", ["level8", "level255", "int16", "shape", "missing"])
def test_arrays_npz(compiled, tmp_path, change):
    def spoil(a):
        lv = a["levels"]
        if change == "level8":
            lv[3, 100, 5] = 8
        elif change == "level255":
            lv[0, 0, 0] = 255
        elif change == "int16":
            a["levels"] = lv.astype(np.int16)
        elif change == "shape":
            a["levels"] = lv[:, :-1]
        else:
            a["other"] = a.pop("levels")
    m = edited(compiled, tmp_path, arrays=spoil)
    refuse(compiled, m, ["arrays.npz", "levels"])


@pytest.mark.parametrize("array,row,col", [(0, 0, 0), (2, 71, 15), (6, 63, 1), (7, 5, 3)])
def test_arrays_npz_level_edited_under_a_tile(compiled, tmp_path, array, row, col):
    """A cell under a tile changed to another valid level: the weights read back no longer match."""
    def spoil(a):
        lv = a["levels"]
        lv[array, row, col] = (lv[array, row, col] + 1) % 8
    m = edited(compiled, tmp_path, arrays=spoil)
    refuse(compiled, m, ["arrays.npz", "placements[0]"])


def _tuned(d):
    d["provenance"]["tuning"] = {"seed": 0}


@pytest.mark.parametrize("spoil,culprit", [
    (lambda c: c["programmed_us"].__setitem__((0, 3, 4), np.nan), "programmed_us"),
    (lambda c: c["programmed_us"].__setitem__((1, 0, 0), -2.0), "programmed_us"),
    (lambda c: c["target_us"].__setitem__((0, 127, 15), np.inf), "target_us"),
    (lambda c: c.update(programmed_us=c["programmed_us"][:, :-1]), "programmed_us"),
    (lambda c: c.update(target_us=c["target_us"].astype(np.int64)), "target_us"),
    (lambda c: c.update(arrays=np.array([4, 4])), "arrays"),
    (lambda c: c.update(arrays=np.array([4, 99])), "arrays"),
    (lambda c: c.update(arrays=np.array([4.0, 5.0])), "arrays"),
    (lambda c: c.pop("target_us"), "target_us"),
])
def test_conductances_npz(compiled, tmp_path, spoil, culprit):
    g = np.full((2, 128, 16), 5.0)
    content = {"arrays": np.array([4, 5]), "programmed_us": g.copy(), "target_us": g.copy()}
    spoil(content)
    m = edited(compiled, tmp_path, doc=_tuned, files={"conductances.npz": content})
    refuse(compiled, m, ["conductances.npz", culprit])


# -- random edits: refused cleanly or run, never a traceback ------------------------------------------------------
def _paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))
    if prefix and prefix[0] in ("ops", "arrays", "inputs", "outputs", "target"):
        yield prefix


BAD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.sampled_from([0, -1, 1, 2, 255]),
                       st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
                       st.lists(st.integers(-3, 300), max_size=4), st.dictionaries(st.text(max_size=3),
                                                                                   st.integers(), max_size=2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_field_edit_is_refused_or_runs(compiled, data):
    doc = json.loads((compiled["plain"] / "manifest.json").read_text())
    paths = sorted(set(_paths(doc)), key=repr)
    path = data.draw(st.sampled_from(paths))
    value = data.draw(BAD_VALUES)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with tempfile.TemporaryDirectory() as tmp:
        m = Path(tmp) / "m"
        shutil.copytree(compiled["plain"], m)
        (m / "manifest.json").write_text(json.dumps(doc))
        code, out, err = run_cli(["run", m, "--data", compiled["data"] / "x.npz"])
    assert "Traceback" not in out + err, f"{path} = {value!r}\n{err}"
    assert code in (0, 2), f"{path} = {value!r}: exit {code}\n{err}"
    if code == 2:
        assert re.search(r"error:", err)


@pytest.mark.parametrize("op,tensor", [(RELU3, "C1"), (FC, "input"), (S4, "relu3"), (FLATTEN, "S2")])
def test_tensor_written_twice(compiled, tmp_path, op, tensor):
    """The same second writer in both files (manifest.json and digital.onnx)."""
    def rewire(model):
        node = node_of(model, op)
        del node.output[:]
        node.output.append(tensor)
    m = with_digital(edited(compiled, tmp_path, doc=lambda d: d["ops"][op].update({"outputs": [tensor]})), rewire)
    refuse(compiled, m, tensor)


# -- structural edits that load must not change a single number ----------------------------------------------------
STRUCTURE = st.one_of(
    st.tuples(st.sampled_from(XBAR), st.sampled_from(["rows", "cols", "positions", "replicas"])),
    st.tuples(st.sampled_from([C1, C3]), st.just("conv"),
              st.sampled_from(["kernel", "strides", "pads", "dilations", "groups", "in_channels", "out_channels",
                               "spatial_rank"])),
    st.tuples(st.sampled_from(PLAIN_TILES), st.sampled_from(["row_start", "row_count", "col_start", "col_count"])),
    st.tuples(st.sampled_from(PLAIN_TILES), st.integers(0, 1),
              st.sampled_from(["array", "row_offset", "col_offset", "pe", "chip"])),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=STRUCTURE, value=st.integers(-2, 200), index=st.integers(0, 3))
def test_structural_edit_that_loads_gives_identical_numbers(compiled, where, value, index):
    """A tile, placement, geometry or conv field set to another integer: load either refuses it (ManifestError)
    or the integer backend computes exactly what the unedited manifest computes (the edit was harmless)."""
    from cimc.errors import ManifestError
    from cimc.executor import Session
    x = np.load(compiled["data"] / "x.npz")["x"]
    doc = json.loads((compiled["plain"] / "manifest.json").read_text())
    if where[1] == "conv":
        node, key = doc["ops"][where[0]]["conv"], where[2]
        if isinstance(node[key], list):
            node, key = node[key], index % len(node[key])
    elif isinstance(where[0], tuple) and len(where) == 2:
        node, key = doc["ops"][where[0][0]]["tiles"][where[0][1]], where[1]
    elif isinstance(where[0], tuple):
        placements = doc["ops"][where[0][0]]["tiles"][where[0][1]]["placements"]
        node, key = placements[where[1] % len(placements)], where[2]
    else:
        node, key = doc["ops"][where[0]], where[1]
    node[key] = value
    with tempfile.TemporaryDirectory() as tmp:
        m = Path(tmp) / "m"
        shutil.copytree(compiled["plain"], m)
        (m / "manifest.json").write_text(json.dumps(doc))
        try:
            manifest = load(m)
        except ManifestError:
            return
    expected = Session(load(compiled["plain"]), "integer").run(x)
    np.testing.assert_array_equal(Session(manifest, "integer").run(x), expected, err_msg=f"{where} = {value}")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_params_array_is_refused_or_runs(compiled, data):
    """One params.npz array replaced by a random one (shape, dtype, values including NaN and Inf): refused
    cleanly, or the run completes; never a traceback."""
    from hypothesis.extra import numpy as hnp
    params = _npz(compiled["plain"] / "params.npz")
    key = data.draw(st.sampled_from(sorted(params)))
    shape = data.draw(st.sampled_from([params[key].shape, params[key].shape[:-1], (1,), (), (3, 3)]))
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int64, np.int8, np.bool_]))
    params[key] = data.draw(hnp.arrays(dtype, shape))
    with tempfile.TemporaryDirectory() as tmp:
        m = Path(tmp) / "m"
        shutil.copytree(compiled["plain"], m)
        np.savez(m / "params.npz", **params)
        code, out, err = run_cli(["run", m, "--data", compiled["data"] / "x.npz"])
    assert "Traceback" not in out + err, f"{key}: {params[key]!r}\n{err}"
    assert code in (0, 2), f"{key}: exit {code}\n{err}"


@pytest.mark.parametrize("op,pads", [(S2, [0, 0, 10 ** 6, 10 ** 6]), (S4, [10 ** 5, 10 ** 5, 0, 0]),
                                     (S2, [2 ** 40, 0, 0, 0])])
def test_huge_pads_refused_before_allocating(compiled, tmp_path, op, pads):
    from onnx import helper

    def spoil(model):
        node = node_of(model, op)
        kept = [a for a in node.attribute if a.name != "pads"]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("pads", pads)])
    m = with_digital(edited(compiled, tmp_path), spoil)
    refuse(compiled, m, "digital.onnx")


@pytest.mark.parametrize("dim", [225786973, 10 ** 12, 0])
def test_huge_or_empty_input_shape(compiled, tmp_path, dim):
    """A model input declared huge is not allocated at load; the data (28 x 28) does not match it."""
    m = edited(compiled, tmp_path, doc=lambda d: d["inputs"][0]["shape"].__setitem__(3, dim))
    refuse(compiled, m, "input")
