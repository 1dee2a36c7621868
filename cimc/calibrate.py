"""Activation statistics for quantisation: run the float graph over the calibration set and record, for the
input of every crossbar op, its minimum, max |x| and (for the "percentile" rule) a percentile of |x| computed on a
deterministic strided subsample of at most 2^20 values per batch."""
from __future__ import annotations

import numpy as np

from cimc.backends.reference import FloatBackend
from cimc.executor import check_feeds, run_graph
from cimc.ir import Graph

_SUBSAMPLE = 1 << 20


def activation_stats(graph: Graph, data, percentile: float = 99.99, batch_size: int = 64,
                     where: str = "calibration data") -> dict[str, dict]:
    feeds = check_feeds(graph, data, where)
    n = len(next(iter(feeds.values())))
    backend = FloatBackend()
    backend.bind(graph, None, None)
    mins, maxs, samples = {}, {}, {}

    def observe(op, x):
        a = np.abs(x).ravel()
        mins[op.name] = min(mins.get(op.name, np.inf), float(x.min()))
        maxs[op.name] = max(maxs.get(op.name, 0.0), float(a.max()))
        samples.setdefault(op.name, []).append(a[::max(1, a.size // _SUBSAMPLE)])

    for start in range(0, n, batch_size):
        run_graph(graph, {k: v[start:start + batch_size] for k, v in feeds.items()}, backend, observe)
    return {name: {"min": mins[name], "absmax": maxs[name],
                   "percentile": float(np.percentile(np.concatenate(samples[name]), percentile))}
            for name in mins}
