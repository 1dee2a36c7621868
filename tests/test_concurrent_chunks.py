"""Session.run's batches side by side (cimc.concurrent_chunks): how the samples are cut, that worker threads each
read through a view of their own, that an error in one batch reaches the caller, and onnxruntime's thread count
per worker. (That the crossbar's table reads give the same outputs bit for bit whatever the workers:
test_lut_determinism.)"""
from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cimc
from cimc import Session, ort_session, zoo
from cimc.backends.reference import IntegerBackend
from cimc.concurrent_chunks import chunk_bounds
from cimc.errors import ConfigError


def test_chunk_bounds_by_hand():
    assert chunk_bounds(1000, 100, 1) == [(s, s + 100) for s in range(0, 1000, 100)]
    assert chunk_bounds(1000, 100, 2) == [(s, s + 100) for s in range(0, 1000, 100)]
    assert chunk_bounds(150, 100, 1) == [(0, 100), (100, 150)]
    assert chunk_bounds(150, 100, 2) == [(0, 75), (75, 150)]          # two workers finish together
    assert chunk_bounds(1100, 100, 2) == [(round(1100 * i / 12), round(1100 * (i + 1) / 12)) for i in range(12)]
    assert chunk_bounds(1, 100, 2) == [(0, 1)]
    assert chunk_bounds(0, 100, 2) == [(0, 0)]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), batch=st.integers(1, 300), workers=st.integers(1, 8))
def test_chunk_bounds_cover_the_samples_in_batches_of_at_most_batch_size(n, batch, workers):
    bounds = chunk_bounds(n, batch, workers)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [b - a for a, b in bounds]
    assert min(sizes) >= 1 and max(sizes) <= batch
    if workers > 1:
        assert max(sizes) - min(sizes) <= 1
        assert len(bounds) % workers == 0 or len(bounds) == n   # whole rounds of batches where the samples allow


class _Workers(IntegerBackend):
    """The integer backend, told it may run `count` batches at once: records which thread ran which samples
    through which view, and fails on sample `fail`."""

    def __init__(self, count: int, fail: int | None = None, meet: threading.Barrier | None = None):
        super().__init__()
        self.count, self.fail, self.meet = count, fail, meet
        self.log, self.entered = [], []

    def chunk_workers(self) -> int:
        return self.count

    def worker_view(self):
        view = _Workers(self.count, self.fail)
        view.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("samples",)})
        return view

    def enter_worker(self) -> None:
        self.entered.append(threading.current_thread().name)

    def mvm(self, op, x, batch):
        ids = self.samples
        if self.fail is not None and ids is not None and self.fail in ids:
            raise RuntimeError(f"sample {self.fail} failed")
        self.log.append((threading.current_thread().name, id(self), tuple(ids)))
        if self.meet is not None:               # each view's first read waits for the other's: both run at once
            meet, self.meet = self.meet, None
            meet.wait(timeout=60)
        return super().mvm(op, x, batch)


@pytest.fixture(scope="module")
def mlp_manifest(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlp")
    onnx.save(zoo.mlp((16, 12, 10), seed=1), d / "mlp.onnx")
    calib = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    return cimc.compile(d / "mlp.onnx", "ideal", calibration=calib)


def test_worker_threads_read_through_views_of_their_own(mlp_manifest):
    x = np.random.default_rng(1).standard_normal((10, 16)).astype(np.float32)
    want = Session(mlp_manifest, backend="integer", batch_size=4).run(x)
    backend = _Workers(2, meet=threading.Barrier(2))
    got = Session(mlp_manifest, backend=backend, batch_size=3).run(x)
    assert np.array_equal(got, want)
    assert len(backend.entered) == 2 and all(name.startswith("cimc-batch") for name in backend.entered)
    log = backend.log                      # the views log into the shared list
    assert {t for t, _, _ in log} <= set(backend.entered) and len({v for _, v, _ in log}) == 2
    seen = sorted({s for _, _, ids in log for s in ids})
    assert seen == list(range(10))          # every sample under its own index, in batches of at most 3
    assert max(len(ids) for _, _, ids in log) <= 3
    assert backend.samples is None          # the views, not the backend itself, held the batches


def test_one_worker_or_an_observer_runs_the_batches_in_the_calling_thread(mlp_manifest):
    x = np.random.default_rng(2).standard_normal((6, 16)).astype(np.float32)
    for options, observe in (({"workers": 1}, None), ({}, lambda op, xin: None)):
        backend = _Workers(2)
        Session(mlp_manifest, backend=backend, batch_size=2, **options).run(x, observe=observe)
        assert backend.entered == [] and {t for t, _, _ in backend.log} == {threading.current_thread().name}


def test_an_error_in_one_batch_reaches_the_caller(mlp_manifest):
    x = np.random.default_rng(3).standard_normal((12, 16)).astype(np.float32)
    with pytest.raises(RuntimeError, match="sample 7 failed"):
        Session(mlp_manifest, backend=_Workers(2, fail=7), batch_size=2).run(x)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_workers_are_refused(mlp_manifest, workers):
    with pytest.raises(ConfigError, match="workers="):
        Session(mlp_manifest, backend="integer", workers=workers)


def test_worker_threads_build_single_threaded_onnxruntime_sessions():
    from onnx import TensorProto, helper
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = ort_session.model(graph, [helper.make_opsetid("", 13)])
    seen = {}

    def worker():
        ort_session.use_threads(1)
        seen["count"] = ort_session.thread_count()
        seen["threads"] = ort_session.session(model).get_session_options().intra_op_num_threads

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"count": 1, "threads": 1}
    assert ort_session.thread_count() is None                     # this thread: onnxruntime's default
    assert ort_session.session(model).get_session_options().intra_op_num_threads == 0
