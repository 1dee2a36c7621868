"""Layer sensitivity: how much the model's output moves when only one layer's weights are noisy.

For each crossbar layer that owns arrays, the integer reference (the ideal chip) is run on calibration inputs with
that layer's levels (and its shared-weight readers', which read the same devices) perturbed by a fixed Gaussian
error per weight, sigma = sqrt(2) x the target's programming error in conductance steps (a weight is the
difference of two devices; 1 step where the target sets none), every other layer exact. The sensitivity is the
relative mean squared error of the model outputs against the exact run, sum (y - y0)^2 / sum y0^2, averaged over
`trials` draws: an output error that needs no labels and grows with the noise variance, the proxy of a layer's
accuracy drop that `--copies-for accuracy|mix` uses (passes/copies_for.py). Draws: np.random.default_rng((seed,
layer index, trial)), so the same seed gives the same sensitivities.

`MeasureSensitivity` is the compile pass (before replicate, only with --copies-for accuracy or mix).
"""
from __future__ import annotations

import math

import numpy as np

from cimc.backends.reference import IntegerBackend
from cimc.graph_run import run_graph


class _OneNoisyLayer(IntegerBackend):
    """The integer reference with one layer's (and its readers') levels perturbed by `error` [K, N]."""

    def __init__(self, names: set[str], error: np.ndarray):
        super().__init__()
        self.names, self.error = names, error

    def bind(self, graph, arrays, target):
        super().bind(graph, arrays, target)
        for name in self.names:
            self.levels[name] = self.levels[name].astype(np.float64) + self.error
            self.sessions.pop(name, None)         # its convolution through im2col + mvm, in float64


def weight_sigma_levels(target) -> float:
    """The per-weight error of the noisy layer, in levels: sqrt(2) x programming error / step (1 if none)."""
    sigma = float(target.nonideal.program_sigma_us) / target.device.step_us
    return math.sqrt(2.0) * (sigma if sigma > 0 else 1.0)


def layer_sensitivity(graph, target, feeds: dict, seed: int = 0, trials: int = 2, samples: int = 64) -> dict:
    """{layer: relative output error when only that layer is noisy} for the layers that own arrays."""
    n = len(next(iter(feeds.values())))
    feeds = {k: v[:min(n, samples)] for k, v in feeds.items()}
    clean = IntegerBackend()
    clean.bind(graph, None, target)
    ref = run_graph(graph, feeds, clean)
    ref_sq = sum(float(np.square(np.asarray(v, np.float64)).sum()) for v in ref.values()) or 1.0
    sigma = weight_sigma_levels(target)
    out = {}
    for index, op in enumerate(graph.mapped_ops()):
        names = {op.name} | {r.name for r in graph.readers(op.name)}
        err = 0.0
        for trial in range(trials):
            rng = np.random.default_rng((seed, index, trial))
            noisy = _OneNoisyLayer(names, sigma * rng.standard_normal((op.rows, op.cols)))
            noisy.bind(graph, None, target)
            got = run_graph(graph, feeds, noisy)
            err += sum(float(np.square(np.asarray(got[k], np.float64) - ref[k]).sum()) for k in ref) / ref_sq
        out[op.name] = err / trials
    return out


class MeasureSensitivity:
    """Compile pass: ctx.sensitivity for --copies-for accuracy|mix (none otherwise: the default compile is as
    before). Needs the calibration inputs (ctx.calibration_feeds)."""
    NAME = "sensitivity"
    NEEDS_CALIBRATION = True

    def applies(self, ctx) -> bool:
        return ctx.options.copies_for[0] != "throughput"

    def run(self, graph, target, ctx):
        ctx.sensitivity = layer_sensitivity(graph, target, ctx.calibration_feeds)
        return graph
