"""Weight encodings as target data ([weights], cimc.weight_encoding): round trips for every device level count,
geometry and counts against hand counts, the crossbar's ideal reads equal to the integer reference per encoding,
today's differential pair unchanged, bad values named."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_models as om
import pytest

import cimc
from cimc import Session, zoo
from cimc.cli import main
from cimc.errors import ConfigError, TargetError
from cimc.layout import program_arrays, read_levels
from cimc.passes.quantize import quantize_weights
from cimc.targets.registry import load_target
from cimc.weight_encoding import decode, encode

REFERENCE = ["weights.encoding=offset", "weights.offset_reference=column"]     # the offset's reference column
ENCODINGS = [["weights.encoding=offset"], REFERENCE, ["weights.encoding=bit-sliced", "weights.slices=2"],
             ["weights.encoding=bit-sliced", "weights.slices=4", "device.levels=4"]]


def _slow_digits(w: int, base: int, slices: int) -> list[int]:
    """|w| in base `base`, least significant slice first (schoolbook division, one weight at a time)."""
    digits, m = [], abs(w)
    for _ in range(slices):
        digits.append(m % base)
        m //= base
    assert m == 0
    return digits


@pytest.mark.parametrize("levels", [2, 3, 4, 5, 8, 16, 17, 100, 256])
def test_every_level_round_trips_for_every_encoding(levels):
    cases = [("differential", 1), ("bit-sliced", 1)] + ([("bit-sliced", 2)] if levels ** 2 - 1 <= 32767 else []) \
        + ([("offset", 1)] if levels >= 3 else [])                  # int16 levels; offset needs a level above w = 0
    for encoding, slices in cases:
        t = load_target("yao2020-resnet", [f"device.levels={levels}", f"weights.encoding={encoding}",
                                           f"weights.slices={slices}"])
        top = {"differential": levels - 1, "offset": (levels - 1) // 2}.get(encoding, levels ** slices - 1)
        assert t.max_weight_level == top
        w = np.arange(-top, top + 1, dtype=np.int16).reshape(1, -1)
        planes = encode(w, t)
        assert all(p.dtype == np.uint8 and p.max() <= levels - 1 for p in planes)
        np.testing.assert_array_equal(decode(planes, t), w)
        for k in (0, w.shape[1] // 3, w.shape[1] - 1):        # against the slow expansion, a few weights each
            value = int(w[0, k])
            if encoding == "offset":
                assert [int(p[0, k]) for p in planes] == [value + (levels - 1) // 2]
                continue
            digits = _slow_digits(value, levels, slices)
            assert [int(p[0, k]) for p in planes[0::2]] == [d if value > 0 else 0 for d in digits]
            assert [int(p[0, k]) for p in planes[1::2]] == [d if value < 0 else 0 for d in digits]


def test_hand_example_minus_147_on_2_bit_cells():
    t = load_target("resnet-bitsliced")
    planes = encode(np.array([[-147]], np.int16), t)         # 147 = 2*64 + 1*16 + 0*4 + 3
    assert [int(p[0, 0]) for p in planes] == [0, 3, 0, 0, 0, 1, 0, 2]


@pytest.mark.parametrize("overrides,top", [([], 7), (["weights.encoding=offset"], 3),
                                           (["weights.encoding=bit-sliced", "weights.slices=4", "device.levels=4"],
                                            255)])
def test_quantisation_uses_the_encoding_range(overrides, top):
    t = load_target("yao2020-resnet", overrides)
    w = np.random.default_rng(7).standard_normal((40, 6)).astype(np.float32)
    levels, scales = quantize_weights(w, t.max_weight_level, "column")
    np.testing.assert_array_equal(np.abs(levels).max(axis=0), top)          # each column's max reaches the top
    expected = np.clip(np.rint(w.astype(np.float64) / (np.abs(w).max(axis=0) / top).astype(np.float32)), -top, top)
    np.testing.assert_array_equal(levels, expected)


def _resnet56_hand_count(per_array_out: int, rows: int = 144) -> int:
    """conv1 3x3x3->16, 3 stages of 9 blocks (two 3x3 convs; option-A shortcuts hold no weights), fc 64->10."""
    layers = [(27, 16)] + [(144, 16)] * 18 + [(144, 32)] + [(288, 32)] * 17 + [(288, 64)] + [(576, 64)] * 17 \
        + [(64, 10)]
    return sum(-(-k // rows) * -(-n // per_array_out) for k, n in layers)


@pytest.fixture(scope="module")
def resnet56(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "resnet56.onnx"
    onnx.save(zoo.resnet56(seed=0), path)
    return path


def test_resnet56_counts_follow_the_encoding(resnet56):
    assert _resnet56_hand_count(8) == 740 == cimc.count(resnet56, "yao2020-resnet")["total_arrays"]
    sliced = cimc.count(resnet56, "yao2020-resnet", overrides=["weights.encoding=bit-sliced", "weights.slices=4",
                                                               "device.levels=4"])
    assert sliced["total_arrays"] == _resnet56_hand_count(2) == 2957       # 8 device columns per output
    assert cimc.count(resnet56, "resnet-bitsliced")["total_arrays"] == 2957
    assert sliced["weights"] == {"encoding": "bit-sliced", "slices": 4}
    # three more copies of conv1 (27 x 16: 1 x 8 tiles) for the replication solver and count alike
    assert cimc.count(resnet56, "resnet-bitsliced", replicate={"conv1": 4})["total_arrays"] == 2957 + 3 * 8
    assert cimc.count(resnet56, "yao2020-resnet", overrides=["weights.encoding=offset"])["total_arrays"] \
        == _resnet56_hand_count(16) == 370
    # a reference column per array: 15 outputs per 144x16 array
    column = cimc.count(resnet56, "yao2020-resnet", overrides=REFERENCE)
    assert column["total_arrays"] == _resnet56_hand_count(15) == 494
    assert column["weights"] == {"encoding": "offset", "slices": 1, "offset_reference": "column"}
    assert cimc.count(resnet56, "resnet-offset")["total_arrays"] == 494                # the preset of that variant


def test_rows_layout_with_slices_and_offset_geometry():
    t = load_target("li2018", ["weights.encoding=bit-sliced", "weights.slices=2"])     # 128x64, +v/-v row blocks
    assert (t.array.inputs_per_tile, t.array.outputs_per_tile, t.array.tile_footprint(64, 32)) == (64, 32, (128, 64))
    t = load_target("li2018", ["weights.encoding=offset"])                               # no pair: every row
    assert (t.array.inputs_per_tile, t.array.outputs_per_tile, t.array.tile_footprint(128, 64)) == (128, 64,
                                                                                                  (128, 64))


def _compile(tmp_path_factory, target, overrides):
    model = om.small_cnn()
    path = tmp_path_factory.mktemp("enc") / "small_cnn.onnx"
    onnx.save(model, path)
    calib = next(iter(om.random_feeds(model, 16, 1).values()))
    manifest = cimc.compile(path, target, calibration=calib, overrides=overrides, replicate={"conv1": 2})
    out = tmp_path_factory.mktemp("enc") / "m"
    manifest.save(out)
    return cimc.load(out), next(iter(om.random_feeds(model, 5, 2).values()))


@pytest.mark.parametrize("target,overrides", [("yao2020-resnet", o) for o in ENCODINGS]
                         + [("li2018", ["weights.encoding=bit-sliced", "weights.slices=2", "chip.chips=0"]),
                            ("ideal-offset", [])], ids=lambda v: str(v))
def test_ideal_crossbar_equals_integer_bit_for_bit(tmp_path_factory, target, overrides):
    """small_cnn: signed inputs, a grouped and a depthwise conv (compact blocks), replicas, an FC head."""
    manifest, x = _compile(tmp_path_factory, target, overrides)
    t = manifest.target
    arrays = program_arrays(manifest.graph, t)
    assert arrays.max() <= t.device.max_level
    for op in manifest.graph.xbar_ops():                 # the arrays hold the quantised levels, every copy
        for copy in range(op.replicas):
            np.testing.assert_array_equal(read_levels(op, arrays, t, copy), op.levels)
    y_int = Session(manifest, backend="integer").run(x)
    y_xbar = Session(manifest, backend="crossbar", ideal=True).run(x)
    np.testing.assert_array_equal(y_xbar, y_int)


def test_the_differential_default_is_todays_target():
    t = load_target("yao2020-resnet")
    assert (t.weights.encoding, t.weights.slices, t.max_weight_level) == ("differential", 1, 7)
    assert load_target("yao2020-resnet", ["weights.encoding=differential"]) == t


@pytest.mark.parametrize("overrides,needle", [
    (["weights.encoding=ternary"], "weights.encoding"),
    (["weights.slices=2"], "weights.slices"),                                  # differential takes no slices
    (["weights.encoding=bit-sliced", "weights.slices=0"], "weights.slices"),
    (["weights.encoding=bit-sliced", "weights.slices=2", "device.levels=256"], "weights.slices"),   # > int16
    (["weights.encoding=bit-sliced", "weights.slices=9", "device.levels=2"], "weights.slices"),     # 18 > 16 cols
    (["weights.encoding=offset", "device.levels=2"], "weights.encoding"),
    (["weights.bits=8"], "weights.bits"),
])
def test_bad_values_are_named(overrides, needle):
    with pytest.raises(TargetError, match=needle.replace(".", r"\.")):
        load_target("yao2020-resnet", overrides)


def test_cli_names_the_flag_and_exits_2(resnet56, capsys):
    assert main(["count", str(resnet56), "--set", "weights.encoding=ternary"]) == 2
    err = capsys.readouterr().err
    assert "cimc: error:" in err and "weights.encoding" in err


def test_targets_json_shows_each_encoding(capsys):
    assert main(["targets", "--json"]) == 0
    shown = {t["name"]: t["weights"] for t in json.loads(capsys.readouterr().out)["targets"]}
    assert shown["yao2020-resnet"] == {"encoding": "differential", "slices": 1, "offset_reference": "digital"}
    assert shown["resnet-bitsliced"] == {"encoding": "bit-sliced", "slices": 4, "offset_reference": "digital"}
    assert shown["ideal-offset"] == {"encoding": "offset", "slices": 1, "offset_reference": "digital"}


@pytest.mark.parametrize("overrides,arrays,columns", [([], 1, 128),                       # g+/g- per output
                                                      (["weights.encoding=offset"], 1, 64),
                                                      (REFERENCE, 1, 65),          # + the reference line
                                                      (["weights.encoding=bit-sliced", "weights.slices=2"], 2, 256)])
def test_estimates_convert_every_physical_column(overrides, arrays, columns):
    """A 128 x 64 matmul on the 128x128 macro, 8 input slots: one ADC conversion per device column per slot."""
    from cimc.ir import Graph, XbarOp
    from cimc.passes import estimate, tile
    target = load_target("yao2020-macro", overrides)
    op = XbarOp("fc", "MatMul", ["x"], ["y"], np.ones((128, 64), np.float32), None)
    layer = estimate.estimate_graph(tile.run(Graph([], [], [op]), target), target)["layers"][0]
    assert (layer["arrays"], layer["adc_conversions"]) == (arrays, 8 * columns)


def test_a_run_cannot_change_the_encoding(tmp_path_factory):
    manifest, x = _compile(tmp_path_factory, "yao2020-resnet", [])
    with pytest.raises(ConfigError, match="weights.encoding"):
        Session(manifest, backend="crossbar", overrides=["weights.encoding=offset"]).run(x)


def test_insitu_refuses_bit_slices():
    """`cimc insitu` holds Li's analog +v/-v pairs or offset devices (tests/test_insitu_offset.py); `cimc tune`
    handles every encoding (tests/test_tune_encodings.py)."""
    from cimc.insitu import chip_for_target
    with pytest.raises(ConfigError, match="weights.encoding"):
        chip_for_target(load_target("li2018", ["weights.encoding=bit-sliced", "weights.slices=2"]))


def test_planes_follow_a_placements_row_order():
    """A permuted placement (defect-aware placement's row_order) writes and reads the same weights back."""
    from types import SimpleNamespace
    from cimc.weight_encoding import tile_planes
    t = load_target("li2018", ["weights.encoding=bit-sliced", "weights.slices=2"])
    tile = SimpleNamespace(row_count=3, col_count=2)
    plain = SimpleNamespace(row_offset=4, col_offset=6)
    permuted = SimpleNamespace(row_offset=4, col_offset=6, row_order=[2, 0, 1])
    w = np.array([[5, -63], [0, 17], [-1, 40]], np.int16)
    for placement, rows in ((plain, [4, 5, 6]), (permuted, [6, 4, 5])):
        array = np.zeros((128, 64), np.uint8)
        for plane, cells in zip(tile_planes(tile, placement, t), encode(w, t)):
            array[plane] = cells
        r = rows[0]      # logical row 0: 5 = digits (5, 0) on g+ (+v rows); -63 = digits (7, 7) on g- (rows/2 below)
        assert [array[r, 6], array[r, 7], array[r + 64, 6], array[r + 64, 7]] == [5, 0, 0, 0]
        assert [array[r, 8], array[r, 9], array[r + 64, 8], array[r + 64, 9]] == [0, 0, 7, 7]
        np.testing.assert_array_equal(decode([array[p] for p in tile_planes(tile, placement, t)], t), w)


@pytest.mark.parametrize("target,overrides", [
    ("yao2020-resnet", ["weights.encoding=bit-sliced", "weights.slices=4", "device.levels=4"]),
    ("li2018", ["weights.encoding=bit-sliced", "weights.slices=2", "chip.chips=0", "input.encoding=bit-serial"]),
    ("yao2020-resnet", ["weights.encoding=offset"]),
    ("yao2020-resnet", REFERENCE),
    ("li2018", ["weights.encoding=offset", "chip.chips=0", "input.encoding=bit-serial"]),
    ("li2018", ["weights.encoding=bit-sliced", "weights.slices=2", "chip.chips=0"]),
    ("li2018", ["weights.encoding=offset", "chip.chips=0"]),
    ("li2018", REFERENCE + ["chip.chips=0"])],
    ids=["column-pairs", "row-pairs", "offset", "offset-reference", "offset-on-rows", "row-pairs-analog",
         "offset-analog", "offset-reference-analog"])
def test_finite_adc_reads_each_slice_line_and_is_exact_when_lsb_is_one_step(tmp_path_factory, target, overrides):
    """float32 reads (bit-serial, or analog amplitudes) through a 24-bit ADC whose LSB is one current unit (g_min =
    0, so every ideal line current is an integer): each slice line converted on its own, shifted and added (or the offset times the input sum
    subtracted), equals the integer reference."""
    from cimc.backends.crossbar import CrossbarBackend
    from cimc.targets.adc import adc_range
    manifest, x = _compile(tmp_path_factory, target, overrides)
    t = manifest.target
    pairs = t.array.differential == "rows" and t.weights.encoding != "offset"     # +v/-v difference lines
    analog = t.input.encoding == "analog"          # one amplitude x / qmax per read, signed inputs both ways
    full = {}
    for op in manifest.graph.xbar_ops():
        q = op.input_quant
        top = adc_range(24, pairs or (analog and q.signed))[1]
        unit_ua = t.input.read_voltage_v * (t.device.g_max_us - 0.0) / (t.device.levels - 1) \
            / (max(-q.qmin, q.qmax) if analog else 1)
        full[op.name] = top * unit_ua
    run = ["adc.bits=24", "adc.lossless=false", "device.g_min_us=0", "nonideal.program_sigma_us=0",
           "nonideal.stuck_rate=0"]
    backend = CrossbarBackend(overrides=run, adc_full_scale=full, gemm="float32")
    y = Session(manifest, backend=backend).run(x)
    assert backend.reader == "float32" and "float32 reads" in backend.describe()["weights"]["reads"]
    np.testing.assert_array_equal(y, Session(manifest, backend="integer").run(x))
    coarse = Session(manifest, backend=CrossbarBackend(overrides=["adc.bits=6"])).run(x)   # a real ADC: some error
    assert not np.array_equal(coarse, y)
    with pytest.raises(ConfigError, match="weights.encoding"):       # a lossless ADC's planes: the pair's only
        Session(manifest, backend=CrossbarBackend(ideal=True, simulate_planes=True)).run(x)


def test_replication_solver_charges_a_copy_its_sliced_arrays(resnet56):
    """3,200 arrays leave 243 spare: the 19 layers at 32x32 positions (conv1, stage 1) are the bottleneck, and one
    more copy of each costs 8 bit-sliced arrays (152 in all); a third copy of each would need 152 more (91 left)."""
    table = cimc.count(resnet56, "resnet-bitsliced", arrays=3200, time_limit=20)
    doubled = [layer["name"] for layer in table["layers"] if layer["copies"] == 2]
    assert len(doubled) == 19 and doubled[0] == "conv1" and all(n.startswith("layer1.") for n in doubled[1:])
    assert table["total_arrays"] == 2957 + 19 * 8


@pytest.mark.parametrize("overrides,weights", [([], 128 * 64), (["weights.encoding=offset"], 128 * 128),
                                               (REFERENCE, 128 * 127),
                                               (["weights.encoding=bit-sliced", "weights.slices=2"], 128 * 32),
                                               (["weights.encoding=bit-sliced", "weights.slices=4",
                                                 "device.levels=4"], 128 * 16)])
def test_macro_counts_the_signed_weights_the_encoding_holds(overrides, weights, capsys):
    """Yao's macro: the per-cell count (32,768 ops) and its energy stay; `weights` counts the signed weights one
    128x128 array holds (hand counts: 64, 128, 127 beside a reference column, 32, 16 outputs) and equals a matmul
    layer that fills the array."""
    from cimc.ir import Graph, XbarOp
    from cimc.passes import estimate, tile
    target = load_target("yao2020-macro", overrides)
    r = estimate.estimate_macro(target)
    assert r["ops_per_vector"] == 32768 and r["gops"] == pytest.approx(81.92)
    w = r["weights"]
    assert (w["signed_weights"], w["signed_ops_per_vector"]) == (weights, 2 * weights)
    op = XbarOp("fc", "MatMul", ["x"], ["y"], np.ones((128, weights // 128), np.float32), None)
    full = estimate.estimate_graph(tile.run(Graph([], [], [op]), target), target)["totals"]
    assert (full["arrays"], full["ops"], full["utilisation"]) == (1, w["signed_ops_per_vector"], 1.0)
    assert w["signed_gops"] == pytest.approx(full["gops"]) and w["signed_gops_per_w"] == pytest.approx(
        full["gops_per_w"])
    assert main(["estimate", "--target", "yao2020-macro"] + [a for o in overrides for a in ("--set", o)]) == 0
    out = capsys.readouterr().out
    assert (f"{weights} signed weights" in out) == bool(overrides)       # the pair's text is unchanged
