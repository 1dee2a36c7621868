"""The crossbar backend's readers are objects that read a chip instance through a ReadContext alone, no backend:
built straight from a Chip and its read plans they give the integer backend's products where the chip is ideal and
the ADC lossless, lut equals int8 on int8's grid, and each reads a non-ideal chip as the backend that chose it."""
from __future__ import annotations

import numpy as np
import onnx_models as om
import pytest

import cimc
from cimc.backends import lut_reads
from cimc.backends.chip import Chip
from cimc.backends.crossbar import CrossbarBackend
from cimc.backends.full_scale import resolve_full_scales
from cimc.backends.int8_reader import Int8Reader, int8_grid
from cimc.backends.layer_stats import new_stats
from cimc.backends.plan_builder import PlanBuilder
from cimc.backends.plane_reader import PlaneReader
from cimc.backends.product_reader import ProductReader
from cimc.backends.reader import ReadContext
from cimc.backends.reference import IntegerBackend
from cimc.backends.run_target import effective_target
from cimc.backends.table_reader import TableReader, lut_grid

SAMPLES = 4


@pytest.fixture(scope="module")
def small():
    """Grouped and depthwise convolutions and an FC layer on Yao's 144 x 16 arrays (differential columns)."""
    model = om.small_cnn()
    return cimc.compile(model, "yao2020-resnet", calibration=om.random_feeds(model, batch=8, seed=0),
                        overrides=["chip.chips=0"])


def _bound(manifest, target, seed: int = 0):
    """A chip instance of `target`, its read plans with their ADC full scales, and the context readers read."""
    chip = Chip(target, manifest.arrays, seed)
    builder = PlanBuilder(manifest.graph, manifest.arrays, chip)
    plans = {op.name: builder.build(op) for op in manifest.graph.xbar_ops()}
    resolve_full_scales(plans, manifest.graph, target, chip.offset, {}, None)
    ctx = ReadContext(target, chip, seed, {name: i for i, name in enumerate(plans)}, new_stats(plans, False))
    return plans, ctx


def _integer(manifest) -> IntegerBackend:
    backend = IntegerBackend()
    backend.bind(manifest.graph, manifest.arrays, manifest.target)
    return backend


def _codes(op, seed: int) -> np.ndarray:
    """One row of random input codes per sample, over the op's whole code range."""
    q = op.input_quant
    return np.random.default_rng(seed).integers(q.qmin, q.qmax + 1, (SAMPLES, op.rows)).astype(np.float32)


def test_ideal_lossless_readers_equal_the_integer_backend(small):
    target = effective_target(small.target, ideal=True)          # ideal devices, a lossless ADC
    plans, ctx = _bound(small, target)
    integer = _integer(small)
    for op in small.graph.xbar_ops():
        x = _codes(op, 1)
        want = integer.mvm(op, x, SAMPLES).astype(np.float64)
        for reader in (ProductReader(ctx), PlaneReader(ctx)):   # one product; every bit-plane (simulate_planes)
            got = reader.read(plans[op.name], 0, x, np.arange(SAMPLES))
            np.testing.assert_array_equal(got.astype(np.float64), want, err_msg=f"{reader.name} on {op.name}")


@pytest.mark.skipif(lut_reads.import_error() is not None, reason="numba cannot be imported here")
def test_table_reads_on_the_int8_grid_equal_the_int8_reader(small):
    """The documented equality of two readers built alone: lut on int8's grid reads the same codes as int8's
    MatMulInteger, on a chip with programming error (through an 8-bit ADC that rounds: not the exact product)."""
    plans, ctx = _bound(small, effective_target(small.target, ["nonideal.program_sigma_us=0.54"]))
    grid = int8_grid(plans, ctx.target)
    int8, lut = Int8Reader(ctx, plans, grid), TableReader(ctx, lut_grid(ctx, plans, grid))
    assert (int8.name, lut.name, lut.grid) == ("int8", "lut", grid) and grid > 1
    integer, inexact = _integer(small), 0
    for op in small.graph.xbar_ops():
        x, plan = _codes(op, 2), plans[op.name]
        want = int8.read(plan, 0, x, np.arange(SAMPLES))
        np.testing.assert_array_equal(lut.read(plan, 0, x, np.arange(SAMPLES)), want, err_msg=op.name)
        inexact += int(np.any(want != integer.mvm(op, x, SAMPLES)))
    assert inexact > 0


@pytest.mark.parametrize("gemm", ["float32", "int8"])
def test_a_reader_built_alone_reads_as_the_backend(small, gemm):
    overrides = ["nonideal.program_sigma_us=0.54", "nonideal.read_noise_sigma_us=0.1"]
    backend = CrossbarBackend(seed=3, overrides=overrides, gemm=gemm, copy=0)
    backend.bind(small.graph, small.arrays, small.target)
    assert backend.reader == gemm
    plans, ctx = _bound(small, backend.target, seed=3)
    reader = PlaneReader(ctx) if gemm == "float32" else Int8Reader(ctx, plans, int8_grid(plans, ctx.target))
    for op in small.graph.xbar_ops():
        x = _codes(op, 3)
        np.testing.assert_array_equal(reader.read(plans[op.name], 0, x, np.arange(SAMPLES)),
                                      backend.mvm(op, x, SAMPLES), err_msg=op.name)
