"""Which copy of a replicated layer reads which sample (the crossbar backend's replicas): the sample of global
index i reads copy i % replicas, whatever batch it is in, or every sample one forced copy; a layer compiled with
averaging copies (plan.average = a > 1) reads every copy of group i % (replicas / a) and averages them."""
from __future__ import annotations

import numpy as np

from cimc.backends.read_plan import ReadPlan


def copy_samples(plan: ReadPlan, ids: np.ndarray, copy: int | None, averaging: bool) -> list[tuple[int, object]]:
    """[(copy, the positions in the batch of the samples it reads)]: the sample of global index i reads copy
    i % replicas, whatever batch it is in; or every sample copy `copy`. An averaging layer (plan.average = a > 1,
    `averaging`) has replicas / a groups: the sample reads group g = i % groups, and the entry is g's first copy,
    g * a (`averaged` reads all a of them)."""
    groups = plan.replicas // plan.average if averaging else plan.replicas
    if groups == 1 or copy is not None or len(ids) == 0:
        return [(0 if copy is None else copy % plan.replicas, slice(None))]
    a = plan.replicas // groups
    copy_of = ids % groups
    if np.all(copy_of == copy_of[0]):
        return [(int(copy_of[0]) * a, slice(None))]
    return [(c * a, np.flatnonzero(copy_of == c)) for c in range(groups) if np.any(copy_of == c)]


def by_copy(plan: ReadPlan, x: np.ndarray, batch: int, run, ids: np.ndarray, copies: list) -> np.ndarray:
    """Each sample's rows of x [m, K] go through its copy (`copies`, of `copy_samples`): run(plan, c, rows, ids)
    -> [., N], ids: the global indices of the samples whose rows those are."""
    m = x.shape[0]
    if len(copies) == 1 or m == 0:
        return run(plan, copies[0][0], x, ids)
    positions = m // batch
    xs = x.reshape(batch, positions, x.shape[1])
    out = np.empty((batch, positions, plan.cols), plan.dtype)
    for c, samples in copies:
        sel = np.ascontiguousarray(xs[samples]).reshape(-1, x.shape[1])
        out[samples] = run(plan, c, sel, ids[samples]).reshape(-1, positions, plan.cols)
    return out.reshape(m, plan.cols)


def averaged(run):
    """run(plan, c, x, ids) over the plan's averaging group starting at copy c: every copy read (its own devices,
    its own read-noise streams), the accumulators (after the ADC and shift-and-add, before the executor's
    scale and bias) summed in float64 and divided by the group size. Equal copies give their own value exactly
    (a sum of a equal integers below 2^53, divided by a)."""
    def run_group(plan, c, x, ids):
        total = None
        for k in range(c, c + plan.average):
            acc = run(plan, k, x, ids)
            total = acc.astype(np.float64) if total is None else total + acc
        return (total / plan.average).astype(plan.dtype, copy=False)
    return run_group
