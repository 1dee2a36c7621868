"""Issue 13 item 2: `cimc tune --layers`, hybrid training of several layers on one chip instance: thresholded pair
writes on every tuned layer's arrays and nowhere else, writes and pulses per layer, `cimc run` reproducing the
tuned chip exactly, and refusals naming the flag. The gradient itself is checked against finite differences in
tests/test_backprop.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from refusal import assert_refused, run_cli

import cimc
from cimc.backends.crossbar import CrossbarBackend
from cimc.data import load_npz
from cimc.manifest import load

ART = Path(__file__).resolve().parents[1] / "examples" / "mcnn_mnist" / "artifacts"
CHIP = ["--seed", "0", "--program-sigma", "1.5uS"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The shipped mCNN tuned with --method affine+fc --layers C3,FC on 150 labelled training images."""
    d = tmp_path_factory.mktemp("tune_layers")
    cimc.compile(ART / "mcnn.onnx", "yao2020-mcnn", calibration=ART / "calib_200.npz").save(d / "m")
    train = load_npz(ART / "train_2000.npz", ["input"])
    np.savez(d / "labelled.npz", x=train.inputs["input"][:150], y=train.labels[:150])
    code, out, err = run_cli(["tune", d / "m", "--data", d / "labelled.npz", "--method", "affine+fc", "--layers",
                              "C3,FC", "--lr", "20", "-o", d / "t", "--json", "--keep", "final", *CHIP])
    assert code == 0, err
    return d, json.loads(out)


def _arrays(manifest, names):
    return sorted({p.array for op in manifest.graph.xbar_ops() if op.name in names for t in op.tiles
                   for p in t.placements})


def test_writes_land_on_the_tuned_layers_only_and_are_counted_per_layer(tuned):
    d, doc = tuned
    fc = doc["fc"]
    assert fc["layers"] == ["C3", "FC"] and fc["layer"] == "C3,FC"
    assert set(fc["writes_per_layer"]) == {"C3", "FC"} and sum(fc["writes_per_layer"].values()) == fc["writes"]
    assert fc["writes_per_layer"]["C3"] > 0 and fc["writes_per_layer"]["FC"] > 0
    assert fc["pulses"] == fc["writes"] and fc["pulses_per_layer"] == fc["writes_per_layer"]   # no write-verify
    before, after = load(d / "m"), load(d / "t")
    chip = CrossbarBackend(seed=0, overrides=["nonideal.program_sigma_us=1.5"])
    chip.bind(before.graph, before.arrays, before.target)
    held = chip.chip.conductance_us
    ids = list(after.conductances["arrays"])
    assert ids == _arrays(before, {"C3", "FC"})
    changed = [a for i, a in enumerate(ids) if not np.array_equal(after.conductances["programmed_us"][i], held[a])]
    assert set(changed) == set(ids)                                 # both layers' arrays were written
    others = set(range(len(held))) - set(ids)
    assert others and not (set(_arrays(before, {"C1"})) & set(ids))   # C1's arrays are not among them
    provenance = after.provenance["tuning"]
    assert provenance["layers"] == ["C3", "FC"] and provenance["writes_per_layer"] == fc["writes_per_layer"]


def test_run_reproduces_the_tuned_chip(tuned):
    d, doc = tuned
    code, out, err = run_cli(["run", d / "t", "--data", d / "labelled.npz", "--backend", "crossbar", "--json", *CHIP])
    assert code == 0, err
    assert json.loads(out)["accuracy"] == doc["fc"]["accuracy_after"]


@pytest.mark.parametrize("extra, culprit", [
    (["--layers", "C3,nope"], "--layers"),
    (["--layers", "C3,"], "--layers"),
    (["--layers", "C1"], "--replicate C1=1"),
    (["--layers", "C3", "--layer", "FC"], "--layers"),
    (["--layers", "C3", "--method", "affine"], "--layers"),
    (["--layers", "C3,FC", "--layer-lr", "C1=3"], "--layer-lr"),
    (["--layers", "FC", "--layer-lr", "FC=fast"], "--layer-lr"),
    (["--layers", "FC", "--layer-lr", "FC=-1"], "--layer-lr"),
])
def test_bad_layers_are_refused_naming_the_flag(tuned, extra, culprit):
    d, _ = tuned
    assert_refused(["tune", d / "m", "--data", d / "labelled.npz", "-o", d / "bad", *extra, *CHIP], culprit,
                   watch=[d])
