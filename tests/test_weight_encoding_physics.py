"""Offset and bit-sliced weights (cimc.weight_encoding) through a real chip: the ADC full scale calibrated from
every device (or slice) line's ideal current, checked against a read-by-read loop over tiles, planes, bit-planes and
lines."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_models as om
import pytest

import cimc
from cimc import Session
from cimc.backends.crossbar import CrossbarBackend, calibrate_adc_full_scale
from cimc.executor import quantize_activation, run_graph
from cimc.im2col import im2col
from cimc.layout import program_arrays
from cimc.weight_encoding import tile_planes

ENCODED = {
    "offset": ("yao2020-resnet", ["weights.encoding=offset"]),
    "sliced-columns": ("yao2020-resnet", ["weights.encoding=bit-sliced", "weights.slices=2", "device.levels=4"]),
    "sliced-rows": ("li2018", ["weights.encoding=bit-sliced", "weights.slices=2", "chip.chips=0",
                               "input.encoding=bit-serial"]),
    "offset-rows": ("li2018", ["weights.encoding=offset", "chip.chips=0", "input.encoding=bit-serial"]),
    "offset-column": ("yao2020-resnet", ["weights.encoding=offset", "weights.offset_reference=column"]),
}


@pytest.fixture(scope="module", params=list(ENCODED))
def compiled(request, tmp_path_factory):
    """small_cnn (signed inputs, grouped and depthwise convs, two copies of conv1, an FC head), compiled with 16
    calibration samples (all of them read by the ADC calibration), and 4 test samples."""
    target, overrides = ENCODED[request.param]
    model = om.small_cnn()
    path = tmp_path_factory.mktemp("encp") / "small_cnn.onnx"
    onnx.save(model, path)
    calib = next(iter(om.random_feeds(model, 16, 1).values()))
    manifest = cimc.compile(path, target, calibration=calib, overrides=overrides, replicate={"conv1": 2})
    return request.param, manifest, calib, next(iter(om.random_feeds(model, 4, 2).values()))


def _slow_peaks_ua(manifest, x) -> dict:
    """The calibration rule read by read: for every op, every tile, every device plane (cimc.weight_encoding) and
    every input bit-plane, the ideal line currents V_read * sum_r bit_r * g_r with g = g_min + level * step; a
    +v/-v row pair ("rows" layout, not offset) carries g+ - g- and counts by magnitude."""
    target = manifest.target
    arrays = program_arrays(manifest.graph, target)
    seen = {}
    run_graph(manifest.graph, {manifest.graph.inputs[0].name: x}, Session(manifest, backend="integer").backend,
              observe=lambda op, a: seen.__setitem__(op.name, quantize_activation(a, op.input_quant)))
    dev, v = target.device, target.input.read_voltage_v
    pairs = target.array.differential == "rows" and target.weights.encoding != "offset"
    analog = target.input.encoding == "analog"        # one read per input, amplitude x / qmax
    peaks = {}
    for op in manifest.graph.xbar_ops():
        rows = im2col(seen[op.name], op.conv)[0] if op.conv is not None else seen[op.name].reshape(-1, op.rows)
        u = rows.astype(np.int64) & ((1 << op.input_quant.bits) - 1)       # two's complement bits
        q = op.input_quant
        peak = 0.0
        if analog:
            for t in op.tiles:
                p = t.placements[0]
                g = [dev.g_min_us + arrays[p.array][plane].astype(np.float64) * dev.step_us
                     for plane in tile_planes(t, p, target)]
                amp = rows[:, t.row_start:t.row_start + t.row_count].astype(np.float64) / max(-q.qmin, q.qmax)
                for line in ([g[k] - g[k + 1] for k in range(0, len(g), 2)] if pairs else g):
                    peak = max(peak, float(np.abs(amp @ line).max()) * v)
            peaks[op.name] = peak
            continue
        for t in op.tiles:
            p = t.placements[0]
            g = [dev.g_min_us + arrays[p.array][plane].astype(np.float64) * dev.step_us
                 for plane in tile_planes(t, p, target)]
            lines = [g[k] - g[k + 1] for k in range(0, len(g), 2)] if pairs else g
            for j in range(op.input_quant.bits):
                bits = ((u[:, t.row_start:t.row_start + t.row_count] >> j) & 1).astype(np.float64)
                for line in lines:
                    peak = max(peak, float(np.abs(bits @ line).max()) * v)
        peaks[op.name] = peak
    return peaks


@pytest.mark.parametrize("overrides", [["weights.encoding=offset"], ["weights.encoding=bit-sliced",
                                                                      "weights.slices=2"]], ids=["offset", "sliced"])
def test_analog_inputs_calibrate_and_read_through_a_finite_adc(overrides):
    """li2018's amplitude-coded inputs (signed into the first layer: bipolar ADCs there): the calibrated full scale
    is the slow loop's peak, and without stuck cells the reads converge on the integer reference as the ADC gains
    bits (exactly at 24 bits: tests/test_weight_encoding.py)."""
    model = om.small_cnn()
    calib = next(iter(om.random_feeds(model, 16, 1).values()))
    manifest = cimc.compile(model, "li2018", calibration=calib, overrides=overrides + ["chip.chips=0"])
    assert manifest.target.input.encoding == "analog"
    want = _slow_peaks_ua(manifest, calib)
    assert {op.name: op.adc_full_scale_ua for op in manifest.graph.xbar_ops()} == pytest.approx(want, rel=1e-6)
    x = next(iter(om.random_feeds(model, 4, 2).values()))
    ref = Session(manifest, backend="integer").run(x)
    errors = [np.linalg.norm(Session(manifest, backend=CrossbarBackend(overrides=[
        "nonideal.stuck_rate=0", f"adc.bits={bits}"])).run(x) - ref) / np.linalg.norm(ref) for bits in (8, 12, 16)]
    assert 0.2 > errors[0] > errors[1] > errors[2] > 0


def test_compile_calibrates_each_layer_from_its_slice_and_offset_lines(compiled):
    name, manifest, calib, x = compiled
    want = _slow_peaks_ua(manifest, calib)
    stored = {op.name: op.adc_full_scale_ua for op in manifest.graph.xbar_ops()}
    assert stored == pytest.approx(want, rel=1e-6) and all(v > 0 for v in stored.values())
    assert calibrate_adc_full_scale(manifest.graph, manifest.target, calib) == pytest.approx(want, rel=1e-6)
    be = CrossbarBackend(overrides=["nonideal.program_sigma_us=0"])
    y = Session(manifest, backend=be).run(x)
    assert all(p.full_scale_source == "calibrated (manifest)" for p in be.plans.values())
    # against 'max': a calibrated full scale is a finer LSB, so the ideal devices' reads land closer to the integer
    y_max = Session(manifest, backend=CrossbarBackend(overrides=["nonideal.program_sigma_us=0",
                                                                 "adc.full_scale=max"])).run(x)
    ref = Session(manifest, backend="integer").run(x)
    assert np.linalg.norm(y - ref) < np.linalg.norm(y_max - ref)


# -- read noise, ADC non-idealities, drivers, drift: the backend against a slow loop over reads --------------------
from cimc.backends.bit_planes import plane_weights  # noqa: E402
from cimc.backends.slice_lines import noise_lines_factor  # noqa: E402
from cimc.targets.adc import AdcLines, adc_convert, adc_generator, adc_range, sense_generators  # noqa: E402
from cimc.targets.devices import read_generator  # noqa: E402

EXACT = ["device.g_min_us=0", "nonideal.program_sigma_us=0", "nonideal.stuck_rate=0"]   # integer line currents


@pytest.fixture(scope="module", params=list(ENCODED))
def matmul(request):
    """A 200 x 20 MatMul: two row tiles (144 + 56 rows) on several arrays per row tile."""
    target, overrides = ENCODED[request.param]
    model = om.matmul(k=200, m=20)
    calib = next(iter(om.random_feeds(model, 16, 1).values()))
    manifest = cimc.compile(model, target, calibration=calib, overrides=overrides + ["chip.chips=0"])
    return request.param, manifest


def _bind(manifest, seed, overrides, gemm=None):
    be = CrossbarBackend(seed=seed, overrides=overrides, gemm=gemm)
    be.bind(manifest.graph, None, manifest.target)
    return be


def _codes(op, samples, seed=3):
    q = op.input_quant
    return np.random.default_rng(seed).integers(q.qmin, q.qmax + 1, (samples, op.rows)).astype(np.float32)


def _slow_reads(be, op, x: np.ndarray, grid: int | None = None) -> np.ndarray:
    """Accumulators of codes x [samples, K] on copy 0, one read at a time: for each sample, row tile (ascending),
    input bit-plane and line (slice_lines order: plane after plane, tiles by column, columns ascending), the
    line's current sum_r bit_r g_r (device lines + g_min's part; +v/-v slice lines g+ - g-), plus its read-noise
    draw N(0, s^2 n_devices_per_row sum_r bit_r), then the ADC of its physical column (gain, offset, INL, sense
    noise), then shift-and-add over bit-planes, times the line's L^s (minus for g-), the offset x the input sum
    subtracted (or, with a reference column, after every tile's weight lines one line per tile: its array's
    last column on the tile's rows, subtracted from each of the tile's outputs), times the LSB. The draws come,
    per sample, from its read-noise and sense-noise generators in that order of [planes, positions, lines] blocks
    per row tile; the ADC instances from the array's ADC generator.
    With `grid` q (gemm="lut"): each line's float32 conductances rounded to integers of step / q, currents in
    those units, the ADC's full scale in them too (no read noise there)."""
    t, chip, plan = be.target, be.chip, be.plans[op.name]
    spec, w = t.array, t.weights
    offset_enc = w.encoding == "offset"
    column = offset_enc and w.offset_reference == "column"
    pairs = spec.differential == "rows" and not offset_enc
    lo, top = adc_range(t.adc.bits, plan.bipolar)
    fs = plan.full_scale
    bits = op.input_quant.bits
    pw = plane_weights(bits, op.input_quant.signed)
    layer = [o.name for o in be.graph.xbar_ops()].index(op.name)
    read_sigma, sense_sigma = np.float32(be.read_sigma), np.float32(t.adc.noise_sigma_lsb)
    per_adc, base = t.adc.columns_per_adc, t.device.levels
    u = (x.astype(np.int64) & ((1 << bits) - 1)).astype(np.int64)
    out = np.zeros((len(x), op.cols))
    for i in range(len(x)):
        rg, sg = read_generator(be.chip_seed, layer, 0, i), sense_generators(be.chip_seed, (layer, 0), [i])[0]
        for r0 in sorted({tl.row_start for tl in op.tiles}):
            tiles = sorted([tl for tl in op.tiles if tl.row_start == r0], key=lambda tl: tl.col_start)
            lines = []            # (conductances [rows] step units, coefficient, array, column, outputs)
            planes = {id(tl): tile_planes(tl, tl.placements[0], t) for tl in tiles}
            n_planes = len(planes[id(tiles[0])])
            for k in range(0, n_planes, 2 if pairs else 1):
                coefficient = 1.0 if offset_enc else float(base ** (k // 2)) * (1 if pairs or k % 2 == 0 else -1)
                for tl in tiles:
                    p = tl.placements[0]
                    rows, cols = planes[id(tl)][k]
                    g = chip.g_units[p.array]
                    if column and k == 1:       # the reference line: the array's last column, every output's
                        cols = range(spec.cols - 1, spec.cols)
                        coefficient = -1.0
                    for j, col in enumerate(range(cols.start, cols.stop, cols.step)):
                        line = g[rows, col] - g[planes[id(tl)][k + 1][0], col] if pairs else g[rows, col] + be.offset
                        if grid:
                            line = np.rint(np.float64(np.float32(g[rows, col]) + np.float32(be.offset)) * grid) \
                                if not pairs else np.rint(np.float32(line).astype(np.float64) * grid)
                        outputs = [tl.col_start + j] if not (column and k == 1) else \
                            list(range(tl.col_start, tl.col_start + tl.col_count))
                        lines.append((line, coefficient, p.array, col, outputs))
            z_read = rg.standard_normal((bits, 1, len(lines)), dtype=np.float32) if read_sigma else None
            z_sense = sg.standard_normal((bits, 1, len(lines)), dtype=np.float32) if sense_sigma else None
            xb = u[i, r0:r0 + tiles[0].row_count]
            for li, (g, coefficient, array, col, o) in enumerate(lines):
                rng = adc_generator(be.chip_seed, array)
                n_adc = -(-spec.cols // per_adc)
                z_gain, z_off = rng.standard_normal(n_adc), rng.standard_normal(n_adc)
                adc = AdcLines(np.array([1.0 + t.adc.gain_sigma_rel * z_gain[col // per_adc]]),
                               np.array([t.adc.offset_sigma_lsb * z_off[col // per_adc]]), t.adc.inl_lsb)
                for j in range(bits):
                    b = (xb >> j) & 1
                    cur = np.float32(b @ g)
                    if read_sigma:
                        per_row = np.float32((2.0 if pairs else 1.0) * b.sum())
                        cur = np.float32(cur + z_read[j, 0, li] * (np.sqrt(per_row) * read_sigma))
                    noise = np.array([z_sense[j, 0, li] * sense_sigma]) if sense_sigma else None
                    code = adc_convert(np.array([cur], np.float32), t.adc.bits, fs * (grid or 1), plan.bipolar,
                                       lines=adc,
                                       noise=noise)[0][0]
                    out[i, o] += coefficient * pw[j] * float(code)
        if offset_enc and not column:       # the zero level (and g_min's part) times the input sum, digitally
            xsum = float(pw @ np.array([((u[i] >> j) & 1).sum() for j in range(bits)]))
            out[i] -= (be.offset + (t.device.levels - 1) // 2) * top / fs * xsum
    return out * (fs / top)


EFFECTS = {"read noise": ["nonideal.read_noise_sigma_us=0.6"],
           "adc": ["adc.gain_sigma_rel=0.03", "adc.offset_sigma_lsb=0.7", "adc.inl_lsb=0.8"],
           "sense noise": ["adc.noise_sigma_lsb=0.4"],
           "all": ["nonideal.read_noise_sigma_us=0.6", "adc.gain_sigma_rel=0.03", "adc.offset_sigma_lsb=0.7",
                   "adc.inl_lsb=0.8", "adc.noise_sigma_lsb=0.4"]}


@pytest.mark.parametrize("effect", list(EFFECTS))
def test_finite_adc_reads_equal_a_slow_loop_over_reads(matmul, effect):
    name, manifest = matmul
    op = manifest.graph.xbar_ops()[0]
    be = _bind(manifest, 11, EXACT + EFFECTS[effect], gemm="float32")
    assert be.reader == "float32"
    x = _codes(op, 6)
    got = be.mvm(op, x, len(x)).astype(np.float64)
    want = _slow_reads(be, op, x)
    # integer currents and codes: equal but for the offset's non-integer subtraction in float32 accumulators
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    ideal = _bind(manifest, 11, EXACT).mvm(op, x, len(x))
    assert not np.array_equal(got, ideal)           # the effect shows


def _hand_noise_factor(target) -> float:
    """Lines per output and their shift-and-add weights, counted by hand: offset one device line (weight 1);
    bit-sliced S slices, each a g+ and a g- line (or one +v/-v line reading two devices per row) of weight L^s;
    offset with a reference column: its device line and the reference line (weight -1)."""
    if target.weights.encoding == "offset":
        return 2.0 if target.weights.offset_reference == "column" else 1.0
    return 2.0 * sum(float(target.device.levels) ** (2 * s) for s in range(target.weights.slices))


def test_lossless_read_noise_has_each_lines_variance(matmul):
    """Ideal devices, a lossless ADC, read noise s per device read: out - ideal ~ N(0, s^2 F sum_j w_j^2 popcount_j),
    F the hand count of lines and their weights; the normalised error has variance 1 (8,000 values: +-7%)."""
    name, manifest = matmul
    op = manifest.graph.xbar_ops()[0]
    lossless = EXACT + ["adc.lossless=true"]
    be = _bind(manifest, 2, lossless + ["nonideal.read_noise_sigma_us=0.6"])
    per_line = 2.0 if be.target.weights.offset_reference == "column" else 1.0    # reference drawn apart (below)
    assert be.reader == "product" and noise_lines_factor(be.target) * per_line == _hand_noise_factor(be.target)
    x = _codes(op, 400)
    err = be.mvm(op, x, len(x)).astype(np.float64) - _bind(manifest, 2, lossless).mvm(op, x, len(x))
    q = op.input_quant
    u = x.astype(np.int64) & ((1 << q.bits) - 1)
    pw = plane_weights(q.bits, q.signed)
    f = sum(pw[j] ** 2 * ((u >> j) & 1).sum(axis=1) for j in range(q.bits))
    z = err / np.sqrt(be.read_sigma ** 2 * _hand_noise_factor(be.target) * f)[:, None]
    assert abs(z.mean()) < 0.05 and 0.93 < z.var() < 1.07


def test_noisy_reads_are_seeded_and_batch_independent(matmul):
    name, manifest = matmul
    x = next(iter(om.random_feeds(om.matmul(k=200, m=20), 6, 4).values()))
    noisy = EFFECTS["all"] + ["nonideal.program_sigma_us=0.3", "input.driver_gain_sigma_rel=0.02"]
    whole = Session(manifest, backend=CrossbarBackend(seed=8, overrides=noisy)).run(x)
    split = [Session(manifest, backend=CrossbarBackend(seed=8, overrides=noisy)).run(x[s], samples=np.arange(6)[s])
             for s in (slice(0, 1), slice(1, 6))]
    np.testing.assert_array_equal(whole, np.concatenate(split))
    np.testing.assert_array_equal(whole, Session(manifest, backend=CrossbarBackend(seed=8, overrides=noisy)).run(x))
    assert not np.array_equal(whole, Session(manifest, backend=CrossbarBackend(seed=9, overrides=noisy)).run(x))


def _physical_weights(be, op, g_units) -> np.ndarray:
    """The K x N matrix a lossless read applies, from the circuit: a device line carries sum_r u_r a_r (g_r + o)
    (a_r: row r's driver gain, o: g_min in steps); a slice's g+ and g- lines (or +v/-v rows r and r + rows/2)
    are subtracted and weighed L^s; offset weights have (o + the zero level) x the input sum subtracted."""
    t, chip = be.target, be.chip
    o, L = be.offset, t.device.levels
    w = np.zeros((op.rows, op.cols))
    for tl in op.tiles:
        p = tl.placements[0]
        a = chip.driver_gain[p.array] if chip.driver_gain is not None else np.ones(t.array.rows)
        planes = tile_planes(tl, p, t)
        for i in range(tl.row_count):
            for j in range(tl.col_count):
                if t.weights.encoding == "offset":
                    rows, cols = planes[0]
                    r, cc = np.arange(t.array.rows)[rows][i], range(cols.start, cols.stop, cols.step)[j]
                    value = a[r] * (g_units[p.array][r, cc] + o) - o - (L - 1) // 2
                    if t.weights.offset_reference == "column":      # the line minus the reference line
                        value = a[r] * (g_units[p.array][r, cc] - g_units[p.array][r, t.array.cols - 1])
                else:
                    value = 0.0
                    for s in range(t.weights.slices):
                        for side, sign in ((0, 1), (1, -1)):
                            rows, cols = planes[2 * s + side]
                            r, cc = np.arange(t.array.rows)[rows][i], range(cols.start, cols.stop, cols.step)[j]
                            g = a[r] * (g_units[p.array][r, cc] + o)
                            value += sign * L ** s * g
                w[tl.row_start + i, tl.col_start + j] = value
    return w


def test_driver_gains_scale_each_row_of_every_plane(matmul):
    name, manifest = matmul
    op = manifest.graph.xbar_ops()[0]
    be = _bind(manifest, 4, ["nonideal.program_sigma_us=0.3", "adc.lossless=true", "input.driver_gain_sigma_rel=0.05"])
    x = _codes(op, 5)
    want = x.astype(np.float64) @ _physical_weights(be, op, be.chip.g_units)
    np.testing.assert_allclose(be.mvm(op, x, len(x)), want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


def test_global_drift_compensation_reads_the_combined_planes(matmul):
    """alpha = sum |W(reference read at t0)| / sum |W(at t)| over the layer's weights as the reads combine them
    (a slow loop over devices), and the compensated outputs are alpha times the uncompensated ones."""
    name, manifest = matmul
    op = manifest.graph.xbar_ops()[0]
    drift = ["nonideal.program_sigma_us=0.3", "adc.lossless=true", "nonideal.drift_nu=0.06",
             "nonideal.drift_time_s=10000"]
    be = _bind(manifest, 6, drift + ["nonideal.drift_compensation=global"])
    plain = _bind(manifest, 6, drift)
    chip = be.chip
    reference = np.asarray(program_arrays(be.graph, be.target), np.float64) \
        + (chip.instance.reference_us - chip.instance.target_us) / be.target.device.step_us
    alpha = np.abs(_physical_weights(be, op, reference)).sum() / np.abs(_physical_weights(be, op, chip.g_units)).sum()
    # drift lowers every device: bit-sliced |W| shrinks (alpha > 1); offset weights also shift down by the drift of
    # the zero level, which a global factor cannot undo (here |W| grows: alpha < 1), unless a reference column,
    # drifting with them, takes it off
    assert (alpha < 1) == (name in ("offset", "offset-rows"))
    assert be.plans[op.name].drift_scale[0] == pytest.approx(alpha, rel=1e-9)
    x = _codes(op, 5)
    np.testing.assert_allclose(be.mvm(op, x, len(x)), alpha * plain.mvm(op, x, len(x)).astype(np.float64),
                               rtol=1e-6)


# -- wire resistance (1T1R): the array's transfer matrix applies to whatever devices it holds ------------------------
from cimc.targets.ir_drop import read_currents  # noqa: E402


def test_wire_resistance_reads_equal_the_exact_circuit(matmul):
    """Ideal devices, a lossless ADC, 2 ohm per line segment and 3 kohm access transistors: each tile's lines
    solved exactly (nodal analysis of its whole array, every other row held at 0 V), converted to step units
    (g_min's part removed), shifted and added (or the offset subtracted) as the encoding says, give the backend's
    accumulators; `--layers`' fast-path error is rounding."""
    name, manifest = matmul
    op = manifest.graph.xbar_ops()[0]
    wires = ["nonideal.program_sigma_us=0", "nonideal.stuck_rate=0", "adc.lossless=true", "nonideal.wire_ohm=2",
             "nonideal.access_ohm=3000"]
    be = _bind(manifest, 0, wires)
    t, n = be.target, be.target.nonideal
    dev, v = t.device, t.input.read_voltage_v
    x = _codes(op, 4)
    want = np.zeros((len(x), op.cols))
    pairs = t.array.differential == "rows" and t.weights.encoding != "offset"
    for tl in op.tiles:
        p = tl.placements[0]
        planes = tile_planes(tl, p, t)
        every = np.arange(t.array.rows)
        u = x[:, tl.row_start:tl.row_start + tl.row_count].astype(np.float64)
        volts = np.zeros((len(x), t.array.rows))
        volts[:, every[planes[0][0]]] = u * v
        if pairs:
            volts[:, every[planes[1][0]]] = -u * v
        g_us = dev.g_min_us + program_arrays(be.graph, t)[p.array] * dev.step_us
        current = read_currents(g_us, volts, n.wire_ohm, n.access_ohm) / (v * dev.step_us)     # step units
        held = 0.0 if pairs else be.offset * u.sum(axis=1, keepdims=True)                       # g_min's part
        if t.weights.offset_reference == "column":        # the line minus the reference line (the last column)
            want[:, tl.col_start:tl.col_start + tl.col_count] += current[:, planes[0][1]] \
                - current[:, [t.array.cols - 1]]
            continue
        for k in range(0, len(planes), 2 if pairs else 1):
            cols = planes[k][1]
            line = current[:, cols] - held
            if t.weights.encoding == "offset":
                line = line - (dev.levels - 1) // 2 * u.sum(axis=1, keepdims=True)
            else:
                line = line * dev.levels ** (k // 2) * (1 if pairs or k % 2 == 0 else -1)
            want[:, tl.col_start:tl.col_start + tl.col_count] += line
    got = be.mvm(op, x, len(x)).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    ideal = _bind(manifest, 0, wires[:3]).mvm(op, x, len(x))
    assert np.abs(got - ideal).max() > 1e-3 * np.abs(ideal).max()          # the wires show
    diag = CrossbarBackend(overrides=wires, diagnostics=True)
    Session(manifest, backend=diag).run(next(iter(om.random_feeds(om.matmul(k=200, m=20), 3, 5).values())))
    assert diag.layer_stats()[0]["ir_approx_error"] < 1e-9


# -- the lut reader (numba table reads) ------------------------------------------------------------------------------
from cimc.backends import lut_reads  # noqa: E402

needs_numba = pytest.mark.skipif(not lut_reads.available(), reason="numba (in the dev extra) is not installed")


@needs_numba
@pytest.mark.parametrize("adc", [[], EFFECTS["adc"]], ids=["ideal-adc", "adc-gain-offset-inl"])
def test_lut_reads_equal_a_slow_loop_on_their_grid(matmul, adc):
    """Noisy devices and stuck cells (0.54 uS): the default reader is lut, and its fused table reads equal each
    line's conversion on the grid of step / q, shifted and added (or the offset subtracted), read by read; also
    through ADCs with gain, offset and INL errors (each line through its own column's ADC)."""
    name, manifest = matmul
    op = manifest.graph.xbar_ops()[0]
    be = _bind(manifest, 12, ["nonideal.program_sigma_us=0.54", "nonideal.stuck_rate=0.02", *adc])
    assert be.reader == "lut" and be.grid > 100 and "lut reads" in be.describe()["weights"]["reads"]
    x = _codes(op, 6)
    want = _slow_reads(be, op, x, grid=be.grid)
    np.testing.assert_allclose(be.mvm(op, x, len(x)), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@needs_numba
def test_lut_equals_float32_bit_for_bit_where_the_grid_is_exact(compiled):
    """Ideal levels with g_min = 0 lie on any grid; with q a power of two the kernel's ADC gain top / (FS q) is
    float32's top / FS scaled exactly, so the table reads (im2col rows of every conv, grouped and depthwise
    included, two copies of conv1) give the float32 reader's outputs bit for bit, and through a coarse ADC too."""
    name, manifest, calib, x = compiled
    for adc in ([], ["adc.bits=5"]):
        run = ["device.g_min_us=0", "nonideal.program_sigma_us=0", "nonideal.stuck_rate=0"] + adc
        lut = CrossbarBackend(seed=1, overrides=run, gemm="lut", conductance_grid=64)
        y = Session(manifest, backend=lut).run(x)
        assert lut.reader == "lut"
        np.testing.assert_array_equal(y, Session(manifest, backend=CrossbarBackend(seed=1, overrides=run,
                                                                                    gemm="float32")).run(x))


@needs_numba
@pytest.mark.parametrize("adc", [[], ["adc.gain_sigma_rel=0.03", "adc.offset_sigma_lsb=0.7", "adc.inl_lsb=1.5"]],
                         ids=["ideal-adc", "adc-gain-offset-inl"])
def test_int8_equals_lut_bit_for_bit_on_the_same_grid(compiled, adc):
    """Noisy devices, stuck cells, several copies, grouped and depthwise convs: the int8 reader (planes x
    MatMulInteger, adc_convert, Horner per line) and the lut kernel on its grid give the same lines' codes, combined
    the same way, so the same outputs bit for bit, clipping counts included (a third of the full scale: some clip);
    also through ADCs with gain, offset and INL errors (each slice line through the ADC of its own column)."""
    name, manifest, calib, x = compiled
    scales = {op.name: op.adc_full_scale_ua / 3 for op in manifest.graph.xbar_ops()}
    common = dict(seed=4, adc_full_scale=scales, overrides=["nonideal.stuck_rate=0.02", *adc])
    int8 = CrossbarBackend(gemm="int8", diagnostics=True, **common)
    y_int8 = Session(manifest, backend=int8).run(x)
    lut = CrossbarBackend(gemm="lut", conductance_grid=int8.grid, diagnostics=True, **common)
    y_lut = Session(manifest, backend=lut).run(x)
    assert (int8.reader, lut.reader) == ("int8", "lut") and 1 < int8.grid < 128
    np.testing.assert_array_equal(y_int8, y_lut)
    stats = [[(r["adc_clip_rate"], r["adc_conversions"]) for r in b.layer_stats()] for b in (int8, lut)]
    assert stats[0] == stats[1] and any(rate > 0 for rate, _ in stats[0])
