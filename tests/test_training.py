"""Hybrid training (cimc tune): the thresholded pair-update rule, only the tuned layer's arrays change, the tuned
chip reproduces by seed, and tuning recovers accuracy on the committed mCNN on a noisy chip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cimc
from cimc.backends.crossbar import CrossbarBackend
from cimc.cli import main
from cimc.data import load_npz
from cimc.errors import ConfigError, DataError
from cimc.executor import Session
from cimc.training import _pair_changes, _Writer, tune

ART = Path(__file__).resolve().parents[1] / "examples" / "mcnn_mnist" / "artifacts"
NOISY = ["nonideal.program_sigma_us=1.5"]


@pytest.fixture(scope="module")
def mcnn():
    manifest = cimc.compile(ART / "mcnn.onnx", "yao2020-mcnn", calibration=ART / "calib_200.npz")
    data = load_npz(ART / "train_2000.npz", ["input"])
    return manifest, data


def _subset(data, n):
    return type(data)({k: v[:n] for k, v in data.inputs.items()}, data.labels[:n], data.path, data.sha256)


def test_pair_changes_are_equal_and_opposite(mcnn):
    manifest, _ = mcnn
    fc = manifest.graph.op("FC")
    ids = sorted({p.array for t in fc.tiles for p in t.placements})
    dlevel = np.zeros((fc.rows, fc.cols))
    dlevel[3, 2], dlevel[150, 9] = 1.6, -0.4
    dg = _pair_changes(fc, dlevel, manifest.target, ids, step_us=2.5)
    assert np.count_nonzero(dg) == 4
    assert sorted(dg[dg != 0].round(6).tolist()) == [-2.0, -0.5, 0.5, 2.0]   # +-1.6*2.5/2 and -+0.4*2.5/2
    # output 2 of row 3 lies in the first tile (rows 0..127, outputs 0..7): g+ on line 4, g- on line 5
    first = ids.index(fc.tiles[0].placements[0].array)
    assert dg[first, 3, 4] == pytest.approx(2.0) and dg[first, 3, 5] == pytest.approx(-2.0)


def test_writer_thresholds_counts_and_skips_stuck_devices(mcnn):
    manifest, _ = mcnn
    backend = CrossbarBackend(seed=1, overrides=["nonideal.stuck_rate=0.5"])
    backend.bind(manifest.graph, manifest.arrays, manifest.target)
    ids = [6, 7]
    writer = _Writer(backend, ids, seed=1, write_verify=0, tolerance_us=None)
    g0 = writer.g.copy()
    t_before = writer.target.copy()
    dg = np.zeros_like(g0)
    dg[:, 10, :] = 3.0                          # 2 arrays x 16 devices asked to rise by 3 uS
    writer.write(dg)
    stuck_row = writer.stuck[:, 10, :]
    assert writer.writes == int((~stuck_row).sum()) and writer.on_stuck == int(stuck_row.sum())
    np.testing.assert_array_equal(writer.g[:, 10, :][stuck_row], g0[:, 10, :][stuck_row])
    moved = ~stuck_row
    # goals move from the previous goals (the programmed levels), not from the erroneous conductances
    np.testing.assert_allclose(writer.target[:, 10, :][moved], np.minimum(t_before[:, 10, :][moved] + 3.0, 20.0))
    other = np.ones(g0.shape, bool)
    other[:, 10, :] = False
    np.testing.assert_array_equal(writer.g[other], g0[other])   # nothing else written
    # the backend reads what was written
    np.testing.assert_array_equal(backend.chip.conductance_us[ids], writer.g)


def test_tuning_only_touches_the_fc_arrays_and_reproduces_by_seed(mcnn, tmp_path, capsys):
    manifest, data = mcnn
    small = _subset(data, 300)
    tuned, result = tune(manifest, small, seed=5, overrides=NOISY, lr=0.44)
    fc_arrays = set(result.arrays)
    assert result.writes > 0
    others = [a for a in range(manifest.total_arrays) if a not in fc_arrays]
    np.testing.assert_array_equal(tuned.arrays[others], manifest.arrays[others])
    assert set(tuned.conductances["arrays"].tolist()) == fc_arrays
    path = tuned.save(tmp_path / "tuned")
    np.savez(tmp_path / "d.npz", x=small.inputs["input"], y=small.labels)
    assert main(["run", str(path), "--data", str(tmp_path / "d.npz"), "--backend", "crossbar", "--seed", "5",
                 "--set", NOISY[0], "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["accuracy"] == result.accuracy_after             # the same chip instance, exactly
    reloaded = Session(path, backend="crossbar", seed=5, overrides=NOISY)
    assert reloaded.backend.tuning_applied
    other_chip = Session(path, backend="crossbar", seed=6, overrides=NOISY)
    assert not other_chip.backend.tuning_applied               # another chip gets the nearest levels
    prov = json.loads((path / "manifest.json").read_text())["provenance"]["tuning"]
    assert prov["seed"] == 5 and prov["writes"] == result.writes and prov["data"]["samples"] == 300


def test_tuning_recovers_accuracy_on_a_noisy_chip(mcnn):
    manifest, data = mcnn
    test = load_npz(ART / "test_500.npz", ["input"])
    tuned, result = tune(manifest, _subset(data, 1000), seed=3, overrides=NOISY, lr=0.27, epochs=2)
    assert result.accuracy_after > result.accuracy_before
    before = Session(manifest, backend="crossbar", seed=3, overrides=NOISY).run(test.inputs["input"])
    after = Session(tuned, backend="crossbar", seed=3, overrides=NOISY).run(test.inputs["input"])
    assert (after.argmax(1) == test.labels).mean() > (before.argmax(1) == test.labels).mean()


def test_same_seed_same_tuning(mcnn):
    manifest, data = mcnn
    small = _subset(data, 200)
    a, ra = tune(manifest, small, seed=2, overrides=NOISY, lr=0.44)
    b, rb = tune(manifest, small, seed=2, overrides=NOISY, lr=0.44)
    np.testing.assert_array_equal(a.conductances["programmed_us"], b.conductances["programmed_us"])
    assert ra.accuracy_after == rb.accuracy_after and ra.writes == rb.writes


def test_bad_tuning_input(mcnn, tmp_path, capsys):
    manifest, data = mcnn
    unlabeled = type(data)(data.inputs, None, "x.npz", None)
    with pytest.raises(DataError, match="needs labels"):
        tune(manifest, unlabeled)
    with pytest.raises(ConfigError, match="2 copies"):        # C1 is replicated: its copies hold different errors
        tune(manifest, _subset(data, 10), layer="C1")
    with pytest.raises(ConfigError, match="matches no crossbar layer"):
        tune(manifest, _subset(data, 10), layer="nope")
    manifest.save(tmp_path / "m")
    np.savez(tmp_path / "d.npz", x=data.inputs["input"][:10], y=data.labels[:10])
    out = tmp_path / "t"
    assert main(["tune", str(tmp_path / "m"), "--data", str(tmp_path / "d.npz"), "-o", str(out),
                 "--threshold", "1.5 parsecs"]) == 2
    assert not out.exists() and "--threshold" in capsys.readouterr().err


def test_a_second_tuning_continues_from_the_first(mcnn):
    """Tuning a tuned manifest on the same chip starts from the conductances the first round programmed."""
    manifest, data = mcnn
    small = _subset(data, 300)
    # keep="final": the second round must start from a state the first one wrote, not from a kept earlier one
    once, first = tune(manifest, small, seed=4, overrides=NOISY, lr=0.44, keep="final")
    twice, second = tune(once, small, seed=4, overrides=NOISY, lr=0.44, keep="final")
    assert second.accuracy_before == first.accuracy_after
    assert twice.provenance["previous_tunings"][0]["writes"] == first.writes
    other_chip, third = tune(once, small, seed=9, overrides=NOISY, lr=0.44)
    assert "previous_tunings" in other_chip.provenance   # the history stays, but chip 9 starts from the levels
