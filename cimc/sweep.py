"""Monte-Carlo sweeps on Dask (`cimc sweep`): every (grid point, seed) is one chip instance run on the test set, on
a local Dask cluster of worker processes or on an existing one (`--scheduler`).

- Tasks. Each (point, seed) is one task per shard of the test set (`shard_size` samples, each run under its index
  in the data set, so the shards add up to exactly one whole run), plus with `tune_data` one task that tunes that
  chip instance and scores it (cimc.sweep_tasks). A row is written (cimc.sweep_store) as soon as all its tasks are
  done; rows finish roughly in order (task priorities), so a killed sweep loses little.
- Data. The manifest's files, the test set and the tuning set are scattered to the workers once
  (`broadcast=True`); the tasks refer to them, so nothing large travels with a task. A worker loads the manifest
  itself (cimc.manifest.load), once per process.
- Determinism. A chip instance depends only on (point options, seed): it is `cimc run --backend crossbar --seed S`
  with the point's options, whichever worker runs it and in whatever order. Shard results are integer counts,
  summed; rows are written sorted. So the results are the same bytes for any cluster, and a task rerun after a
  worker dies gives what the lost one would have.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

from cimc.data import Dataset
from cimc.errors import ConfigError
from cimc.evaluate import Progress
from cimc.sweep_results import rows_csv, rows_jsonl, summarise, tune_warning_summary
from cimc.sweep_store import SweepFolder
from cimc.sweep_tasks import files_digest, manifest_files, run_shard, run_tune

DEFAULT_SHARD = 1000          # samples per task: one point's accuracy on a big test set spreads over the cluster
CONNECT_TIMEOUT_S = 10


@dataclass
class SweepRequest:
    """points: [{"params": {axis: value text}, "options": CrossbarBackend keywords (plain data),
    "run_flags": the equivalent `cimc run` flags}] in grid order; seeds 0..seeds-1 for each."""
    manifest_dir: str
    data: Dataset
    points: list[dict]
    axes: list[dict]          # [{"name", "label", "values": [text], "numbers": [float or None]}], grid order
    seeds: int
    tune_data: Dataset | None = None
    tune_options: dict = field(default_factory=dict)
    batch_size: int = 100
    shard_size: int = DEFAULT_SHARD


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None):
    """A distributed Client: to `scheduler` (tcp://HOST:PORT), or to a new local cluster of `workers` processes
    (default: one per core) with one thread each, closed on the way out."""
    from distributed import Client, LocalCluster
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler there ({exc}); start one "
                              "with `dask scheduler` and workers with `dask worker ADDRESS`, or leave --scheduler "
                              "out to run on local processes") from None
        with client:
            yield client
        return
    import os
    n = workers or os.cpu_count() or 1
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, Client(cluster) as client:
        yield client


def plan(request: SweepRequest, done: dict) -> list[tuple[int, int]]:
    """The (point, seed) still to run, in grid order."""
    return [(p, s) for p in range(len(request.points)) for s in range(request.seeds) if (p, s) not in done]


def shards(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def run_sweep(request: SweepRequest, folder: SweepFolder, connect=dask_client, progress: bool = True) -> dict:
    """Run what `folder` does not hold yet on the client that `connect()` opens (a context manager; not opened
    when every row is done), writing each row as it finishes; then write the results. Returns {"summary", "rows",
    "computed", "resumed", "seconds", "warnings"}."""
    start = time.perf_counter()
    total = len(request.points) * request.seeds
    messages: list[str] = []
    with contextlib.ExitStack() as stack:
        # connect first, and only when there is work: a scheduler that cannot be reached leaves OUT untouched
        client = stack.enter_context(connect()) if plan(request, folder.finished()) else None
        done = folder.open()
        stack.callback(folder.close)
        todo = plan(request, done)
        # finished/total of the rows this run computes (rows resumed from OUT would skew the ETA)
        bar = Progress("cimc sweep", len(todo), progress)
        if todo:
            client = client or stack.enter_context(connect())
            _compute(request, folder, client, todo, done, bar, messages)
        bar.close()
        rows = list(done.values())
        messages.extend(tune_warning_summary(rows))
        summary = summarise(request.points, rows)
        _write_results(request, folder, rows, summary)
    return {"summary": summary, "rows": len(rows), "computed": len(todo), "resumed": total - len(todo),
            "seconds": time.perf_counter() - start, "warnings": messages}


def _compute(request, folder, client, todo, done, bar, messages) -> None:
    from distributed import as_completed
    resumed = len(done)
    total = len(request.points) * request.seeds
    files = manifest_files(request.manifest_dir)
    digest = files_digest(files)
    [files_f, data_f] = client.scatter([files, request.data], broadcast=True, hash=False)
    tune_f = None
    if request.tune_data is not None:
        [tune_f] = client.scatter([request.tune_data], broadcast=True, hash=False)
    parts = shards(len(request.data), request.shard_size)
    data_id = [digest, request.data.sha256, len(request.data)]
    futures, meta, pending = [], {}, {}
    for order, (p, s) in enumerate(todo):
        point = request.points[p]
        options = point["options"]
        keys = []
        for k, (a, b) in enumerate(parts):
            f = client.submit(run_shard, files_f, digest, data_f, a, b, options, s, request.batch_size,
                              key=_key(f"p{p}-s{s}-shard{k}", data_id, options, s, a, b, request.batch_size),
                              priority=-order, pure=False)
            meta[f.key] = (p, s)
            futures.append(f)
            keys.append(f.key)
        if tune_f is not None:
            f = client.submit(run_tune, files_f, digest, data_f, tune_f, options, s, request.batch_size,
                              request.tune_options, priority=-order, pure=False,
                              key=_key(f"p{p}-s{s}-tune", data_id, options, s, request.tune_data.sha256,
                                       len(request.tune_data), request.tune_options, request.batch_size))
            meta[f.key] = (p, s)
            futures.append(f)
            keys.append(f.key)
        pending[(p, s)] = {"left": len(keys), "correct": 0, "samples": 0, "tune": None}
    try:
        for future in as_completed(futures):
            result = future.result()              # a task's CimcError is raised here, naming its cause
            p, s = meta[future.key]
            future.release()
            for message in result.pop("warnings"):
                if message not in messages:
                    messages.append(message)
            acc = pending[(p, s)]
            if "tuned_correct" in result:
                acc["tune"] = result
            else:
                acc["correct"] += result["correct"]
                acc["samples"] += result["samples"]
            acc["left"] -= 1
            if acc["left"] == 0:
                row = _row(request, p, s, pending.pop((p, s)))
                folder.write_row(row)
                done[(p, s)] = row
                bar.update(len(done) - resumed, f"({len(done)} of {total} rows in {folder.shown})")
    finally:
        client.cancel([f for f in futures if not f.done()])


def _key(name: str, *what) -> str:
    """A task key naming what the task computes, not just its place in this grid: two sweeps sharing a cluster
    never take each other's results (equal keys are equal tasks, whose results are equal)."""
    return f"cimc-sweep-{name}-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]}"


def _row(request, p: int, s: int, acc: dict) -> dict:
    if acc["samples"] != len(request.data):      # the shards must cover the test set exactly once
        raise RuntimeError(f"sweep point {p} seed {s}: shards ran {acc['samples']} of {len(request.data)} samples")
    row = {"point": p, "params": dict(request.points[p]["params"]), "seed": s, "samples": acc["samples"],
           "correct": acc["correct"], "accuracy": acc["correct"] / acc["samples"]}
    tune = acc["tune"]
    if tune is not None:
        row.update({"tuned_correct": tune["tuned_correct"], "tuned_accuracy": tune["tuned_correct"] / tune["samples"],
                    "tune_holdout_before": tune["tune_holdout_before"],
                    "tune_holdout_after": tune["tune_holdout_after"], "tune_writes": tune["tune_writes"],
                    "tune_pulses": tune["tune_pulses"], "tune_warnings": tune["tune_warnings"]})
    return row


# what a sweep's tuned accuracy is after, per --tune-method (the report's words)
TUNED_KIND = {"fc": "hybrid training", "affine": "column calibration",
              "affine+fc": "column calibration and hybrid training"}


def _write_results(request, folder, rows, summary) -> None:
    from cimc.sweep_html import render_sweep
    folder.write_text("rows.jsonl", rows_jsonl(rows))
    folder.write_text("rows.csv", rows_csv(rows, [a["name"] for a in request.axes]))
    folder.write_text("summary.json", json.dumps({"axes": request.axes, "seeds": request.seeds,
                                                  "samples": len(request.data), "points": summary}, indent=1) + "\n")
    folder.write_text("index.html", render_sweep(request.axes, request.points, summary, request.seeds,
                                                 len(request.data), request.tune_data is not None,
                                                 TUNED_KIND[request.tune_options.get("method", "fc")]))
