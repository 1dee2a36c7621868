"""`cimc tune` (fc, --layers, affine, affine+fc) on the offset and bit-sliced weight encodings (cimc.encoded_writes):
hand-computed carries, write counts equal to the devices whose level changed, the same integer updates giving the
ideal differential chip's weights and accuracy, and the column calibration's exact recovery of an injected gain
and offset on an offset and a bit-sliced chip."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from refusal import run_cli

import cimc
from cimc import backprop
from cimc.backends.crossbar import CrossbarBackend
from cimc.backends.reference import IntegerBackend
from cimc.column_calibration import calibrate_graph
from cimc.data import Dataset, load_npz
from cimc.encoded_writes import new_goals
from cimc.graph_run import check_feeds, run_graph
from cimc.layout import read_levels
from cimc.targets.adc import adc_range
from cimc.targets.registry import load_target
from cimc.training import _Writer, tune, write_update
from cimc.weight_encoding import decode, encode, tile_planes

ART = Path(__file__).resolve().parents[1] / "examples" / "mcnn_mnist" / "artifacts"
OFFSET = ["weights.encoding=offset"]
SLICED = ["weights.encoding=bit-sliced", "weights.slices=2", "chip.chips=0"]


def _one_tile(rows: int, cols: int):
    placement = SimpleNamespace(array=0, row_offset=0, col_offset=0)
    tile = SimpleNamespace(row_start=0, col_start=0, row_count=rows, col_count=cols, placements=[placement])
    return SimpleNamespace(tiles=[tile]), tile, placement


def _goals_holding(w: np.ndarray, target, tile, placement) -> np.ndarray:
    """The goals (uS, [1, rows, cols]) of an array whose tile holds the signed levels w, as compile programs them."""
    levels = np.zeros((1, target.array.rows, target.array.cols), np.uint8)
    for plane, cells in zip(tile_planes(tile, placement, target), encode(w, target)):
        levels[0][plane] = cells
    return target.device.g_min_us + levels.astype(np.float64) * target.device.step_us


def test_bit_sliced_carries_by_hand():
    """8-bit weights on 2-bit cells x 4 (resnet-bitsliced, step 17.5/3 uS, threshold 1.5 uS), digits base 4 from
    slice 0: 63 = (3,3,3,0) + 1 -> 64 = (0,0,0,1): all four g+ devices; 64 - 1 -> 63: the four again; 1 - 2 -> -1:
    g+_0 1->0 and g-_0 0->1; -10 = (2,2,0,0) on g- + 16 -> 6 = (2,1,0,0) on g+: four; 255 + 3 clips to 255 and
    5 + 0.4 rounds to 5: nothing; 7 + 0.2 (1.2 uS, below the threshold): nothing."""
    t = load_target("resnet-bitsliced")
    op, tile, placement = _one_tile(4, 2)
    w = np.array([[63, 64], [1, -10], [255, 5], [7, 0]], np.int16)
    d = np.array([[1, -1], [-2, 16], [3, 0.4], [0.2, 0]])
    goals = _goals_holding(w, t, tile, placement)
    mask, new = new_goals(op, d, t, [0], goals, threshold_us=1.5)
    levels = np.rint((new - t.device.g_min_us) / t.device.step_us).astype(np.uint8)
    planes = tile_planes(tile, placement, t)
    np.testing.assert_array_equal(decode([levels[0][p] for p in planes], t),
                                  [[64, 63], [-1, 6], [255, 5], [7, 0]])
    # column pairs: output j's g+_s at column 8 j + 2 s, g-_s at 8 j + 2 s + 1
    assert [levels[0, 0, 2 * s] for s in range(4)] == [0, 0, 0, 1]                 # 64
    assert [levels[0, 0, 8 + 2 * s] for s in range(4)] == [3, 3, 3, 0]             # 63
    assert (levels[0, 1, 0], levels[0, 1, 1]) == (0, 1)                            # -1 on g-_0
    assert [levels[0, 1, 8 + 2 * s] for s in range(2)] == [2, 1]                   # 6 on g+
    assert [levels[0, 1, 9 + 2 * s] for s in range(2)] == [0, 0]
    written = {(int(r), int(c)) for r, c in np.argwhere(mask[0])}
    assert written == {(0, 0), (0, 2), (0, 4), (0, 6), (0, 8), (0, 10), (0, 12), (0, 14),
                       (1, 0), (1, 1), (1, 8), (1, 9), (1, 10), (1, 11)}
    np.testing.assert_array_equal(new[~mask], goals[~mask])                        # nothing else moves
    # a permuted placement (defect-aware placement's row_order) writes the same weights on its own rows
    placement.row_order = [2, 0, 3, 1]
    mask, new = new_goals(op, d, t, [0], _goals_holding(w, t, tile, placement), threshold_us=1.5)
    levels = np.rint((new - t.device.g_min_us) / t.device.step_us).astype(np.uint8)
    np.testing.assert_array_equal(decode([levels[0][p] for p in tile_planes(tile, placement, t)], t),
                                  [[64, 63], [-1, 6], [255, 5], [7, 0]])
    assert mask.sum() == 14 and mask[0, 2].sum() == 8           # logical row 0 (63 -> 64, 64 -> 63) on row 2


def test_offset_update_moves_one_device_within_the_encodings_levels():
    """ideal-offset on a 0..30 uS window: 16 levels of 2 uS, weight 0 at level 7, weights -7..7 on levels 0..14
    (15 stays unused, as at compile). Threshold 1.5 uS: 5 + 1.6 -> level 13.6 (a continuous goal, as the pair's);
    6 + 3 -> clipped to level 14; -7 - 1 stays at level 0 (no write); 2 + 0.3 (0.6 uS): no write."""
    t = load_target("ideal-offset", ["device.g_min_us=0", "device.g_max_us=30"])       # step 2 uS
    op, tile, placement = _one_tile(2, 2)
    w = np.array([[5, 6], [-7, 2]], np.int16)
    d = np.array([[1.6, 3.0], [-1.0, 0.3]])
    goals = _goals_holding(w, t, tile, placement)
    mask, new = new_goals(op, d, t, [0], goals, threshold_us=1.5)
    (rows, cols), = tile_planes(tile, placement, t)
    np.testing.assert_allclose(new[0][rows, cols] / 2.0, [[13.6, 14], [0, 9]])
    np.testing.assert_array_equal(mask[0][rows, cols], [[True, True], [False, False]])
    assert mask.sum() == 2


@pytest.fixture(scope="module")
def mcnn_data():
    full = load_npz(ART / "train_2000.npz", ["input"])
    return Dataset({k: v[:120] for k, v in full.inputs.items()}, full.labels[:120], "tune_120", None)


@pytest.fixture(scope="module")
def same_levels():
    """The shipped mCNN on three encodings that hold the same signed levels -7..7 with the same 2.5 uS step: the
    pair (yao2020-mcnn), one bit slice (cell for cell the pair's layout), offset on 15-level devices, with the
    offset subtracted digitally or read from a reference column (which tuning leaves as programmed)."""
    manifests = {}
    for name, overrides in (("differential", []), ("bit-sliced", ["weights.encoding=bit-sliced"]),
                            ("offset", OFFSET + ["device.levels=15", "device.g_max_us=37.5"]),
                            ("offset-column", OFFSET + ["device.levels=15", "device.g_max_us=37.5",
                                                        "weights.offset_reference=column"])):
        manifests[name] = cimc.compile(ART / "mcnn.onnx", "yao2020-mcnn", calibration=ART / "calib_200.npz",
                                       overrides=overrides)
    fc = {k: next(o for o in m.graph.xbar_ops() if o.name == "FC") for k, m in manifests.items()}
    first = read_levels(fc["differential"], manifests["differential"].arrays, manifests["differential"].target)
    for k, m in manifests.items():
        np.testing.assert_array_equal(read_levels(fc[k], m.arrays, m.target), first)
    return manifests


def test_same_integer_updates_give_the_ideal_pairs_weights_and_accuracy(same_levels, mcnn_data):
    """On ideal chips, updates that move each FC weight towards 0 by a whole number of levels (never past it, so
    neither of the pair's devices leaves [g_min, g_max]: the pair's rule is exact there) leave all three chips
    holding w + d, and they then score the same on the data; the writes: 2 per changed weight for the pair, 1 for
    offset and for one slice (towards 0 a slice changes only the side that holds the weight)."""
    rng = np.random.default_rng(7)
    results = {}
    for name, manifest in same_levels.items():
        graph = copy.deepcopy(manifest.graph)
        backend = CrossbarBackend(ideal=True)
        backend.bind(graph, manifest.arrays, manifest.target)
        fc = next(o for o in graph.xbar_ops() if o.name == "FC")
        w = read_levels(fc, manifest.arrays, backend.target).astype(np.int64)
        if not results:
            d = -np.sign(w) * rng.integers(0, np.abs(w) + 1)
        ids = sorted({p.array for t in fc.tiles for p in t.placements})
        writer = _Writer(backend, ids, 0, 0, None)
        write_update(writer, fc, d.astype(np.float64), backend.target, ids, threshold_us=0.0)
        held = backprop.chip_weights(fc, backend.chip.conductance_us, backend.target)
        np.testing.assert_allclose(held, (w + d) * fc.weight_scales.astype(np.float64)[None, :], rtol=1e-12)
        feeds = check_feeds(graph, mcnn_data.inputs)
        results[name] = (writer.writes, run_graph(graph, feeds, backend)[graph.outputs[0].name])
    changed = int(np.count_nonzero(d))
    assert changed > 100
    assert [results[k][0] for k in ("differential", "bit-sliced", "offset", "offset-column")] == \
        [2 * changed, changed, changed, changed]
    for name in ("bit-sliced", "offset", "offset-column"):
        np.testing.assert_allclose(results[name][1], results["differential"][1], rtol=1e-6, atol=1e-6)
        assert (results[name][1].argmax(1) == results["differential"][1].argmax(1)).all()


@pytest.fixture(scope="module")
def encoded():
    return {"offset": cimc.compile(ART / "mcnn.onnx", "yao2020-mcnn", calibration=ART / "calib_200.npz",
                                   overrides=OFFSET),
            "bit-sliced": cimc.compile(ART / "mcnn.onnx", "yao2020-mcnn", calibration=ART / "calib_200.npz",
                                       overrides=SLICED)}


def _tune(manifest, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tune(manifest, data, keep="final", **kw)


def _changed(manifest, tuned) -> int:
    """Devices whose goal differs from the level compile programmed (one iteration: each was written once)."""
    dev = manifest.target.device
    ids = tuned.conductances["arrays"]
    nominal = dev.g_min_us + manifest.arrays[ids].astype(np.float64) * dev.step_us
    return int((tuned.conductances["target_us"] != nominal).sum())


@pytest.mark.parametrize("name", ["offset", "bit-sliced"])
def test_one_iteration_on_an_ideal_chip_writes_exactly_the_changed_devices(encoded, mcnn_data, name):
    """One mini-batch (batch = the 96 training samples): writes = the devices whose level (bit-sliced: the nearest
    level in arrays.npz; offset: the continuous goal) changed; the ideal chip holds its goals exactly, and the
    tuned manifest's levels are the chip's weights."""
    manifest = encoded[name]
    tuned, result = _tune(manifest, mcnn_data, ideal=True, lr=5.0, batch=96, epochs=1, threshold_us=1.0)
    assert result.iterations == 1 and result.writes > 0
    assert result.writes == _changed(manifest, tuned) == result.pulses
    if name == "bit-sliced":        # goals on the level grid
        assert result.writes == int((tuned.arrays != manifest.arrays).sum())
    np.testing.assert_array_equal(tuned.conductances["programmed_us"], tuned.conductances["target_us"])
    if name == "bit-sliced":        # the chip's weights are the tuned manifest's levels
        dev = manifest.target.device
        g = dev.g_min_us + manifest.arrays.astype(np.float64) * dev.step_us
        g[tuned.conductances["arrays"]] = tuned.conductances["programmed_us"]
        fc = next(o for o in tuned.graph.xbar_ops() if o.name == "FC")
        np.testing.assert_allclose(backprop.chip_weights(fc, g, tuned.target),
                                   fc.levels * fc.weight_scales.astype(np.float64)[None, :], rtol=1e-12)
        assert not np.array_equal(fc.levels, read_levels(fc, manifest.arrays, manifest.target))


def test_changes_below_half_a_slice_level_warn_what_to_change(encoded, mcnn_data):
    """Bit slices take whole levels: lr 0.5 on the ideal chip asks for at most 0.77 uS (0.31 of a 2.5 uS level),
    above --threshold 0.5 but below half a level, so nothing is written and the warning names that and --lr."""
    _, result = _tune(encoded["bit-sliced"], mcnn_data, ideal=True, lr=0.5, batch=96, threshold_us=0.5)
    assert result.writes == 0 and 0.5 <= result.largest_update_us_per_epoch[0] < 1.25
    assert any("half a weight level (1.25 uS)" in w and "raise --lr" in w for w in result.warnings)


def test_chip_weights_of_an_untuned_ideal_chip_are_the_compiled_levels(encoded):
    """The backward pass reads the encoded planes combined (backprop.chip_weights): on the ideal chip, exactly the
    levels the integer layout reads (cimc.layout.read_levels) times the scales, every layer."""
    for manifest in encoded.values():
        backend = CrossbarBackend(ideal=True)
        backend.bind(copy.deepcopy(manifest.graph), manifest.arrays, manifest.target)
        for op in manifest.graph.xbar_ops():
            expected = read_levels(op, manifest.arrays, manifest.target) * op.weight_scales.astype(np.float64)
            np.testing.assert_array_equal(backprop.chip_weights(op, backend.chip.conductance_us, backend.target),
                                          expected)


def test_write_verify_and_pulses_count_per_device_written(encoded, mcnn_data):
    """A noisy bit-sliced chip, one iteration: with write-verify every device whose level changed is written once,
    its retries are pulses too; with a pulse model a write is a device pulsed at least once (at most the changed
    ones) and the pulses are the model's."""
    manifest = encoded["bit-sliced"]
    noisy = ["nonideal.program_sigma_us=1.0"]
    tuned, result = _tune(manifest, mcnn_data, seed=2, overrides=noisy, lr=5.0, batch=96, write_verify=3,
                          verify_tolerance_us=0.5)
    changed = _changed(manifest, tuned)
    assert result.writes == changed > 0 and result.verify_iterations > 0
    assert result.pulses > result.writes
    pulsed = noisy + ["pulse.model=soft-bounds", "pulse.dg_up_us=0.5", "pulse.dg_down_us=0.5",
                      "pulse.verify_tolerance_us=0.5"]
    tuned, result = _tune(manifest, mcnn_data, seed=2, overrides=pulsed, lr=5.0, batch=96)
    assert 0 < result.writes <= _changed(manifest, tuned)
    assert result.pulse_model["total"] == result.pulses >= result.writes


def test_layers_tunes_several_encoded_layers(encoded, mcnn_data):
    """--layers C3,FC on an offset chip: the gradient passes FC's encoded weights back to C3, both get writes."""
    _, result = _tune(encoded["offset"], mcnn_data, seed=1, overrides=["nonideal.program_sigma_us=1.5"],
                      layers=["C3", "FC"], lr=0.3, layer_lr={"C3": 5.0}, batch=32)
    assert result.layers == ["C3", "FC"] and all(v > 0 for v in result.writes_per_layer.values())


class _InjectedCrossbar(CrossbarBackend):
    """A crossbar chip whose `layer`'s combined accumulators (after the slices' shift-and-add, or the offset's
    subtraction) carry a known gain and offset per column."""

    def __init__(self, layer, gain, offset, **kw):
        super().__init__(**kw)
        self.layer, self.gain, self.injected = layer, gain, offset

    def conv_output(self, op, x, scale, bias):
        return None

    def conv(self, op, x):
        return None               # every layer through mvm, where the error is injected

    def mvm(self, op, x, batch):
        acc = super().mvm(op, x, batch).astype(np.float64)
        return acc * self.gain + self.injected if op.name == self.layer else acc


@pytest.mark.parametrize("name", ["offset", "bit-sliced"])
def test_affine_recovers_an_injected_gain_and_offset_on_an_encoded_chip(encoded, mcnn_data, name):
    """Each slice or offset line converted on its own by a 24-bit ADC whose LSB is one current step (g_min = 0: the
    reads equal the integer reference), a known g, o per column injected into C3's combined accumulators: the fit
    gives a = 1/g and offset -o/g on C3, and a = 1, offset 0 on the exact C1."""
    manifest = encoded[name]
    t = manifest.target
    graph = copy.deepcopy(manifest.graph)
    c3 = next(op for op in graph.xbar_ops() if op.name == "C3")
    rng = np.random.default_rng(5)
    g, o = rng.uniform(0.7, 1.3, c3.cols), rng.uniform(-300, 300, c3.cols)
    unit_ua = t.input.read_voltage_v * t.device.g_max_us / (t.device.levels - 1)
    full = {op.name: adc_range(24, False)[1] * unit_ua for op in graph.xbar_ops()}
    chip = _InjectedCrossbar("C3", g, o, adc_full_scale=full, gemm="float32",
                             overrides=["adc.bits=24", "adc.lossless=false", "device.g_min_us=0",
                                        "nonideal.program_sigma_us=0", "nonideal.stuck_rate=0"])
    chip.bind(graph, manifest.arrays, t)
    ideal = IntegerBackend()
    ideal.bind(graph, manifest.arrays, t)
    feeds = check_feeds(graph, {"input": mcnn_data.inputs["input"][:40]})
    exact = _InjectedCrossbar("none", 1.0, 0.0, adc_full_scale=full, gemm="float32", overrides=chip.overrides)
    exact.bind(copy.deepcopy(graph), manifest.arrays, t)
    np.testing.assert_array_equal(run_graph(graph, feeds, exact)[graph.outputs[0].name],
                                  run_graph(graph, feeds, ideal)[graph.outputs[0].name])   # the reads are exact
    rows = {r["layer"]: r for r in calibrate_graph(graph, chip, ideal, feeds, batch=16)}
    np.testing.assert_allclose(rows["C3"]["gain"], 1 / g, rtol=1e-6)
    np.testing.assert_allclose(rows["C3"]["offset_acc"], -o / g, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(rows["C1"]["gain"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(rows["C1"]["offset_acc"], 0.0, atol=1e-6)


def test_affine_fc_on_an_offset_chip_and_run_reproduces_it(encoded, mcnn_data, tmp_path):
    """`cimc tune --method affine+fc` on a noisy offset chip: both steps run (the calibration writes nothing, the
    fc step writes devices), and `cimc run` of the tuned manifest on the same chip gives the tune's after-figure.
    A 0.5 uS write threshold: after the calibration to the float network the FC step asks for less than 1.5 uS."""
    encoded["offset"].save(tmp_path / "m")
    np.savez(tmp_path / "d.npz", x=mcnn_data.inputs["input"], y=mcnn_data.labels)
    chip = ["--seed", "3", "--program-sigma", "1.5uS"]
    code, out, err = run_cli(["tune", tmp_path / "m", "--data", tmp_path / "d.npz", "--method", "affine+fc",
                              "--lr", "0.3", "--threshold", "0.5uS", "--batch", "32", "--keep", "final", "-o",
                              tmp_path / "t", "--json", *chip])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["affine"]["device_writes"] == 0
    fc = doc["fc"]
    assert fc["writes"] > 0
    code, out, err = run_cli(["run", tmp_path / "t", "--data", tmp_path / "d.npz", "--backend", "crossbar",
                              "--json", *chip])
    assert code == 0, err
    assert json.loads(out)["accuracy"] == fc["accuracy_after"]
