"""What a Dask worker runs for `cimc sweep` (cimc.sweep): one shard of the test set on one chip instance, or hybrid
training on one chip instance followed by the tuned chip's accuracy.

These functions take only plain data: the manifest arrives as its files' bytes (`manifest_files`) and is loaded here
with cimc.manifest.load, once per worker process and manifest digest. A Graph or a Session is never pickled (a graph
may hold caches that cannot be). A chip instance is made exactly as `cimc run --backend crossbar --seed S` makes it,
`Session(manifest, backend="crossbar", seed=S, **options)`, and each sample is run under its index in the data set,
so a shard's samples read exactly what they read in one whole run.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from cimc.data import Dataset

_MANIFESTS: dict[str, object] = {}     # digest -> Manifest, per worker process
_LOCK = threading.Lock()
_KEEP = 4                              # manifests kept per worker process


def manifest_files(directory) -> dict[str, bytes]:
    """Every regular file of a manifest folder, by name (what a worker needs to load it anywhere)."""
    folder = Path(directory)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def files_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def load_manifest(files: dict[str, bytes], digest: str):
    """The manifest of these files, loaded once per worker process (from a private temporary folder)."""
    from cimc.manifest import load
    with _LOCK:
        manifest = _MANIFESTS.get(digest)
        if manifest is None:
            folder = Path(tempfile.mkdtemp(prefix="cimc-sweep-manifest-"))
            try:
                for name, blob in files.items():
                    (folder / name).write_bytes(blob)
                manifest = load(folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            while len(_MANIFESTS) >= _KEEP:
                _MANIFESTS.pop(next(iter(_MANIFESTS)))
            _MANIFESTS[digest] = manifest
    return manifest


def _correct(session, data: Dataset, start: int, stop: int) -> int:
    """Samples start..stop-1 on the session's chip, each under its index in the data set: how many it classifies
    right (top-1 of the first output against the label, as cimc.evaluate counts)."""
    feeds = {k: v[start:stop] for k, v in data.inputs.items()}
    y = session.run(feeds, samples=start)
    if isinstance(y, dict):
        y = y[session.output_names[0]]
    top = y.reshape(len(y), -1).argmax(axis=1)
    return int(np.count_nonzero(top == data.labels[start:stop]))


def run_shard(files: dict[str, bytes], digest: str, data: Dataset, start: int, stop: int, options: dict,
              seed: int, batch_size: int) -> dict:
    """Chip instance `seed` with backend `options` (CrossbarBackend keywords) on samples start..stop-1."""
    from cimc.executor import Session
    manifest = load_manifest(files, digest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = Session(manifest, backend="crossbar", seed=seed, batch_size=batch_size, **options)
        correct = _correct(session, data, start, stop)
    return {"correct": correct, "samples": stop - start, "warnings": [str(w.message) for w in caught]}


def run_tune(files: dict[str, bytes], digest: str, data: Dataset, tune_data: Dataset, options: dict, seed: int,
             batch_size: int, tune_options: dict) -> dict:
    """`cimc tune --seed S` on chip instance `seed` (tune's defaults, `tune_options` over them; its "method", fc when
    absent, as `cimc tune --method`), then the tuned chip on the whole test set: what `cimc tune ... -o T` then
    `cimc run T --backend crossbar --seed S` gives."""
    from cimc.column_calibration import calibrate
    from cimc.executor import Session
    from cimc.training import tune
    manifest = load_manifest(files, digest)
    fc_options = {k: v for k, v in tune_options.items() if k not in ("method", "affine_target")}
    method = tune_options.get("method", "fc")
    chip = {"overrides": options.get("overrides"), "ideal": options.get("ideal", False), "gemm": options.get("gemm")}
    result = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned = manifest
        if method.startswith("affine"):
            tuned, _ = calibrate(tuned, tune_data, seed=seed, target=tune_options.get("affine_target", "ideal"),
                                 **chip)
        if method.endswith("fc"):
            tuned, result = tune(tuned, tune_data, seed=seed, progress=False, **chip, **fc_options)
        session = Session(tuned, backend="crossbar", seed=seed, batch_size=batch_size, **options)
        correct = _correct(session, data, 0, len(data))
    # tuning's own warnings (one chip's) go into its row, for one summary line per kind at the end of the sweep
    tune_warnings = [] if result is None else [str(m) for m in result.warnings]
    holdout = {} if result is None else result.holdout        # column calibration holds nothing out
    return {"tuned_correct": correct, "samples": len(data), "tune_writes": 0 if result is None else int(result.writes),
            "tune_pulses": 0 if result is None else int(result.pulses),
            "tune_holdout_before": holdout.get("accuracy_before"),
            "tune_holdout_after": holdout.get("accuracy_after"), "tune_warnings": tune_warnings,
            "warnings": [str(w.message) for w in caught if str(w.message) not in tune_warnings]}
