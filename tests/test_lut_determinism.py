"""The default noisy read (numba table reads) on the benchmarks' network family: equal bit for bit to the int8 GEMM
reference on the same conductance grid, and the same whatever numba's thread count or the batch size."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import cimc
from cimc import Session, zoo
from cimc.backends import lut_reads
from cimc.backends.crossbar import CrossbarBackend, calibrate_adc_full_scale

pytestmark = pytest.mark.skipif(lut_reads.import_error() is not None, reason="numba cannot be imported here")


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    """ResNet-20 on Yao's ResNet target (0.54 uS programming error, 8-bit ADCs), conv1 on two copies, ADC full
    scales at half the calibrated ones (so that some reads clip)."""
    d = tmp_path_factory.mktemp("resnet20")
    onnx.save(zoo.resnet20(seed=2), d / "resnet20.onnx")
    rng = np.random.default_rng(3)
    calib = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    manifest = cimc.compile(d / "resnet20.onnx", "yao2020-resnet", calibration=calib, replicate={"conv1": 2})
    scales = {k: v / 2 for k, v in calibrate_adc_full_scale(manifest.graph, manifest.target, calib).items()}
    return manifest, scales, rng.standard_normal((5, 3, 32, 32)).astype(np.float32)


def _threads(n: int) -> int:
    import numba
    return min(n, numba.config.NUMBA_NUM_THREADS)


def test_table_reads_equal_the_int8_gemm_for_any_threads_and_batch(resnet20):
    """On the int8 grid the table reads (direct convolution reads, im2col reads for conv1 and the FC) equal
    onnxruntime's MatMulInteger reads bit for bit, with 1 or 2 numba threads and batches of 1, 2 or 5 samples."""
    import numba
    manifest, scales, x = resnet20
    common = dict(seed=1, adc_full_scale=scales)
    int8 = CrossbarBackend(gemm="int8", **common)
    want = Session(manifest, backend=int8, batch_size=5).run(x)
    before = numba.get_num_threads()
    try:
        for threads in (1, _threads(2)):
            numba.set_num_threads(threads)
            for batch in (1, 2, 5):
                be = CrossbarBackend(gemm="lut", conductance_grid=int8.grid, **common)
                got = Session(manifest, backend=be, batch_size=batch).run(x)
                assert be.reader == "lut" and np.array_equal(got.view(np.uint32), want.view(np.uint32)), \
                    (threads, batch)
    finally:
        numba.set_num_threads(before)


def test_the_default_read_is_the_same_for_any_threads_and_batch(resnet20):
    """The default reader (gemm=None: `lut` on its fine grid) gives one answer per seed, whatever the thread count,
    the batch size or the order of the samples (each keeps its index, so its copy of conv1)."""
    import numba
    manifest, scales, x = resnet20
    before = numba.get_num_threads()
    outs = []
    try:
        for threads in (1, _threads(2)):
            numba.set_num_threads(threads)
            for batch in (1, 2, 5):
                s = Session(manifest, backend="crossbar", seed=1, adc_full_scale=scales, batch_size=batch)
                outs.append(s.run(x))
                assert s.backend.reader == "lut"
            order = np.arange(len(x))[::-1]
            outs.append(s.run(x[order], samples=order)[::-1])
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(o.view(np.uint32), outs[0].view(np.uint32)) for o in outs)
    other = Session(manifest, backend="crossbar", seed=2, adc_full_scale=scales).run(x)
    assert not np.array_equal(other, outs[0])                      # the seed draws another chip


def test_batches_side_by_side_give_the_same_outputs(resnet20):
    """The table reads run one batch per worker thread (cimc.concurrent_chunks; by default one per numba thread,
    where numba's threading layer allows it): 1, 2 or 3 workers, batches of 1, 2 or 5 samples, samples in another
    order, give the int8 GEMM reference's outputs bit for bit (so, under its chosen grid, the same outputs as one
    batch at a time)."""
    import numba
    manifest, scales, x = resnet20
    x = np.concatenate([x, x[::-1] * 0.5])                         # 10 samples: several batches per worker
    common = dict(seed=1, adc_full_scale=scales)
    int8 = CrossbarBackend(gemm="int8", **common)
    want = Session(manifest, backend=int8, batch_size=10).run(x)
    for workers in (1, 2, 3):
        for batch in (1, 2, 5):
            be = CrossbarBackend(gemm="lut", conductance_grid=int8.grid, **common)
            got = Session(manifest, backend=be, batch_size=batch, workers=workers).run(x)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (workers, batch)
    order = np.arange(len(x))[::-1]
    be = CrossbarBackend(gemm="lut", conductance_grid=int8.grid, **common)
    got = Session(manifest, backend=be, batch_size=2, workers=2).run(x[order], samples=order)[::-1]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    if numba.threading_layer() in ("omp", "tbb"):
        assert be.chunk_workers() == numba.get_num_threads()      # the default: one batch per numba thread
    else:
        assert be.chunk_workers() == 1
