"""Session.run's batches, several at once where the backend can (Backend.chunk_workers): the crossbar backend's
table reads use every core by running one batch per core, each batch's kernels on one thread, rather than one
batch at a time with every kernel split over the cores. On 2 cores (ResNet-56, 1,000 inputs) the parallel kernels
scaled 1.6-1.7x from one thread: each of the ~130 reads per batch waits for its slowest thread, and the work
between them (digital segments, plane words, Python) ran on one core. Batches side by side have no such
barriers, and one batch's serial work overlaps the other's reads.

A sample's result depends only on its global index (cimc.backends.base), never on its batch, so cutting the
samples into other batches, or running them in any order, gives the same outputs bit for bit. Each worker thread
reads through a view of the backend with its own run state (Backend.worker_view) and onnxruntime sessions of one
intra-op thread (cimc.ort_session.use_threads)."""
from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cimc import ort_session
from cimc.graph_run import run_graph


def chunk_bounds(n: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) of the batches of n samples: ceil(n / batch_size) batches one at a time; with several workers
    at least one batch per worker, their number a multiple of the workers where the samples allow, and their sizes
    equal to within one (no batch over batch_size), so that the workers finish together."""
    if n <= 0:
        return [(0, 0)]
    count = -(-n // batch_size)
    if workers > 1:
        count = min(n, -(-count // workers) * workers)
        edges = np.linspace(0, n, count + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    return [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def run_chunks(graph, feeds: dict[str, np.ndarray], backend, ids: np.ndarray, batch_size: int, observe=None,
               workers: int | None = None) -> list[dict[str, np.ndarray]]:
    """The graph's outputs for each batch of `feeds` (cimc.graph_run.run_graph), in order, the samples numbered
    `ids`. `workers`: how many batches run at once (None: the backend's chunk_workers()); always 1 where that is 1
    (the backend cannot), and with `observe` (its callback expects one caller)."""
    n = len(next(iter(feeds.values())))
    can = backend.chunk_workers()
    workers = 1 if observe is not None or can <= 1 else can if workers is None else workers
    bounds = chunk_bounds(n, batch_size, workers)

    def part(a: int, b: int) -> dict[str, np.ndarray]:
        return {k: v[a:b] for k, v in feeds.items()}

    if workers <= 1 or len(bounds) == 1:
        return [run_graph(graph, part(a, b), backend, observe=observe, samples=ids[a:b]) for a, b in bounds]
    views: queue.SimpleQueue = queue.SimpleQueue()     # one backend view per worker thread at a time
    for _ in range(workers):
        views.put(backend.worker_view())

    def run(bound):
        a, b = bound
        view = views.get()
        try:
            return run_graph(graph, part(a, b), view, samples=ids[a:b])
        finally:
            views.put(view)

    with ThreadPoolExecutor(workers, thread_name_prefix="cimc-batch", initializer=_enter_worker,
                            initargs=(backend,)) as pool:
        futures = [pool.submit(run, bound) for bound in bounds]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _enter_worker(backend) -> None:
    """In each worker thread: the backend's kernels on this thread alone, onnxruntime's sessions on one thread."""
    backend.enter_worker()
    ort_session.use_threads(1)
