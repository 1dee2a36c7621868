"""Manifest: save -> load round trip, schema validation naming the field, atomic writes."""
from __future__ import annotations

import json

import numpy as np
import onnx_models as om
import pytest

import cimc
from cimc import Session
from cimc.errors import ManifestError
from cimc.manifest import load


@pytest.fixture
def saved(tmp_path):
    model = om.small_cnn()
    manifest = cimc.compile(model, "yao2020-resnet", calibration=om.random_feeds(model, batch=16, seed=0),
                            replicate={"gemm1": 2})
    return manifest, manifest.save(tmp_path / "m")


def test_round_trip_gives_identical_outputs(saved):
    manifest, path = saved
    x = om.random_feeds(om.small_cnn(), batch=5, seed=9)
    loaded = load(path)
    for backend in ("float", "integer"):
        np.testing.assert_array_equal(Session(manifest, backend=backend).run(x), Session(loaded, backend=backend).run(x))
    np.testing.assert_array_equal(loaded.arrays, manifest.arrays)
    for a, b in zip(manifest.graph.xbar_ops(), loaded.graph.xbar_ops()):
        np.testing.assert_array_equal(a.levels, b.levels)
        assert a.input_quant == b.input_quant and a.replicas == b.replicas


def test_manifest_content(saved):
    manifest, path = saved
    doc = json.loads((path / "manifest.json").read_text())
    assert doc["format"] == "cimc-manifest" and doc["schema_version"] == 2
    assert doc["provenance"]["source_model"]["sha256"] == manifest.provenance["source_model"]["sha256"]
    assert doc["provenance"]["calibration"]["samples"] == 16
    assert doc["target"]["name"] == "yao2020-resnet"
    assert doc["arrays"]["count"] == manifest.total_arrays == doc["summary"]["total_arrays"]
    assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "digital.onnx", "manifest.json", "params.npz",
                                                      "replication.json"]
    gemm = next(o for o in doc["ops"] if o["name"] == "gemm1")
    assert gemm["replicas"] == 2 and all(len(t["placements"]) == 2 for t in gemm["tiles"])


def _corrupt(path, edit):
    doc = json.loads((path / "manifest.json").read_text())
    edit(doc)
    (path / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["ops"][0]["tiles"][0].__setitem__("row_count", 0), "ops[0].tiles[0].row_count"),
    (lambda d: d.pop("target"), "'target' is a required property"),
    (lambda d: d["ops"][0]["input_quant"].__setitem__("scale", -1.0), "ops[0].input_quant.scale"),
    (lambda d: d.__setitem__("schema_version", 99), "schema_version 99"),
    (lambda d: d["ops"][0]["tiles"][0]["placements"][0].__setitem__("array", 10**6), "placements[0].array"),
    (lambda d: d["ops"][0].__setitem__("inputs", ["ghost"]), "'ghost'"),
    (lambda d: d["arrays"].__setitem__("count", 1), "'levels' is uint8"),
    (lambda d: d["ops"][0]["weights"].__setitem__("scales", "nope/scales"), "ops[0].weights.scales"),
])
def test_corrupt_manifest_names_the_field(saved, edit, needle):
    _manifest, path = saved
    _corrupt(path, edit)
    with pytest.raises(ManifestError) as exc:
        load(path)
    assert needle in str(exc.value)


def test_missing_files(saved, tmp_path):
    _manifest, path = saved
    (path / "arrays.npz").unlink()
    with pytest.raises(ManifestError, match="arrays.npz"):
        load(path)
    with pytest.raises(ManifestError, match="no manifest.json"):
        load(tmp_path)


def test_failed_save_leaves_the_old_manifest_intact(saved, monkeypatch):
    manifest, path = saved
    before = (path / "manifest.json").read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", boom)
    with pytest.raises(ManifestError, match="disk full"):
        manifest.save(path)
    assert (path / "manifest.json").read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["m"]  # no temporary directory left behind


def test_save_replaces_an_existing_manifest(saved):
    manifest, path = saved
    (path / "replication.json").unlink()             # a cimc-written folder holding a subset of cimc's files
    manifest.save(path)
    assert (path / "replication.json").exists()
    load(path)
