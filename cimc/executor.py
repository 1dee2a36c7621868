"""`Session` runs a manifest (and nothing but the manifest) with a backend. The graph walk itself (operands,
activation quantisation, digital ops) is cimc.graph_run, re-exported here."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cimc.backends import Backend, make_backend
from cimc.column_calibration import other_chip_warning
from cimc.concurrent_chunks import run_chunks
from cimc.errors import ConfigError
from cimc.graph_run import check_feeds, output_scale, quantize_activation, run_graph, run_xbar

__all__ = ["Session", "check_feeds", "output_scale", "quantize_activation", "run_graph", "run_xbar"]


class Session:
    """`Session(manifest_or_dir, backend="integer", seed=None)`; `.run(x)` returns the model's output for a batch
    (an array for a single-output model, else a dict by output name). Runs in chunks of at most `batch_size`
    samples; `workers` chunks at once, each in a thread of its own (cimc.concurrent_chunks; None: as many as the
    backend uses by default, the crossbar's table reads one per numba thread; 1: one chunk at a time; a backend
    that cannot run chunks side by side runs one at a time). The outputs are the same whatever the chunks and
    workers.
    `.run(x, samples=...)` names the samples' global indices (their indices in your data set: an int for the first
    of consecutive ones, or one index per sample); by default they are numbered on from the samples this session
    ran before. The crossbar backend draws a sample's read noise, and picks its copy of a replicated layer, by that
    index alone, so a sample's output does not depend on the batch size or on the other samples of its batch."""

    def __init__(self, manifest, backend: str | Backend = "integer", seed: int | None = None,
                 batch_size: int = 128, workers: int | None = None, **backend_options):
        from cimc.manifest import Manifest, load
        self.manifest = manifest if isinstance(manifest, Manifest) else load(Path(manifest))
        if isinstance(backend, str):
            if seed is not None:
                backend_options["seed"] = seed
            backend = make_backend(backend, **backend_options)
        self.backend = backend
        self.batch_size = batch_size
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                    or workers < 1):
            raise ConfigError(f"workers={workers!r}: expected a whole number >= 1 (or None: as many as the backend "
                              "can use)")
        self.workers = None if workers is None else int(workers)
        self.graph = self.manifest.graph
        self.backend.bind(self.graph, self.manifest.arrays, self.manifest.target)
        # a tuned manifest on the chip instance it was tuned on
        self.backend.apply_tuning(self.manifest.provenance.get("tuning"), self.manifest.conductances)
        message = other_chip_warning(self.manifest.provenance, self.backend)
        if message:
            warnings.warn(message, stacklevel=2)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.graph.outputs]

    def run(self, x, samples=None, observe=None):
        """`observe(op, input)`: see each crossbar op's float input (as run_graph's)."""
        feeds = check_feeds(self.graph, x)
        n = len(next(iter(feeds.values())))
        ids = self.backend.number_samples(n, samples)
        chunks = run_chunks(self.graph, feeds, self.backend, ids, self.batch_size, observe, self.workers)
        outputs = {name: np.concatenate([c[name] for c in chunks]) for name in self.output_names}
        return outputs[self.output_names[0]] if len(outputs) == 1 else outputs
