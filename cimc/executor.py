"""`Session` runs a manifest (and nothing but the manifest) with a backend. The graph walk itself (operands,
activation quantisation, digital ops) is cimc.graph_run, re-exported here."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cimc.backends import Backend, make_backend
from cimc.column_calibration import other_chip_warning
from cimc.graph_run import check_feeds, output_scale, quantize_activation, run_graph, run_xbar

__all__ = ["Session", "check_feeds", "output_scale", "quantize_activation", "run_graph", "run_xbar"]


class Session:
    """`Session(manifest_or_dir, backend="integer", seed=None)`; `.run(x)` returns the model's output for a batch
    (an array for a single-output model, else a dict by output name). Runs in chunks of `batch_size` samples.
    `.run(x, samples=...)` names the samples' global indices (their indices in your data set: an int for the first
    of consecutive ones, or one index per sample); by default they are numbered on from the samples this session
    ran before. The crossbar backend draws a sample's read noise, and picks its copy of a replicated layer, by that
    index alone, so a sample's output does not depend on the batch size or on the other samples of its batch."""

    def __init__(self, manifest, backend: str | Backend = "integer", seed: int | None = None,
                 batch_size: int = 128, **backend_options):
        from cimc.manifest import Manifest, load
        self.manifest = manifest if isinstance(manifest, Manifest) else load(Path(manifest))
        if isinstance(backend, str):
            if seed is not None:
                backend_options["seed"] = seed
            backend = make_backend(backend, **backend_options)
        self.backend = backend
        self.batch_size = batch_size
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
        chunks = []
        for start in range(0, max(n, 1), self.batch_size):
            part = {k: v[start:start + self.batch_size] for k, v in feeds.items()}
            chunks.append(run_graph(self.graph, part, self.backend, observe=observe,
                                    samples=ids[start:start + self.batch_size]))
        outputs = {name: np.concatenate([c[name] for c in chunks]) for name in self.output_names}
        return outputs[self.output_names[0]] if len(outputs) == 1 else outputs
