"""The backend interface. The executor does everything around the matrix product (im2col, activation
quantisation, dequantisation, bias, digital ops); a backend does only the product of one crossbar op:

* an unquantised backend gets float activations [M, K] and returns float [M, N];
* a quantised backend gets integer-valued activations [M, K] (float32 holding q in qmin..qmax) and returns the
  integer accumulators acc[m, n] = sum_k q[m, k] * level[k, n] as floats. The executor then forms
  y = acc * (input_scale * weight_scale[n]) + bias[n] in float32, identically for every quantised backend, so two
  backends that return equal accumulators give bit-identical outputs.

Every sample has a global index (`number_samples`): its index in the caller's data set, or by default the count of
samples the backend read before it. Whatever a backend draws per read (the crossbar backend's read noise) and the
copy a replicated layer reads for a sample follow that index, so a sample's result never depends on the batch it
runs in.
"""
from __future__ import annotations

import numpy as np

from cimc.errors import DataError
from cimc.ir import Graph, XbarOp


class Backend:
    name = "base"
    quantized = True
    samples: np.ndarray | None = None     # global indices of the batch being run (set by cimc.graph_run.run_graph)
    samples_seen: int = 0                 # the next default index: one past the highest index run so far

    def __init__(self, seed: int | None = None):
        self.seed = seed  # the reference backends draw nothing; the seed is only recorded

    def bind(self, graph: Graph, arrays: np.ndarray | None, target) -> None:
        """Prepare per-op state from the manifest's graph, its physical arrays and target."""

    def number_samples(self, n: int, samples=None) -> np.ndarray:
        """The global indices of a batch of n samples: `samples` (an int: the first of n consecutive indices, or n
        indices), by default the n indices after the highest run so far. Advances that count past them."""
        if samples is None:
            ids = np.arange(self.samples_seen, self.samples_seen + n, dtype=np.int64)
        elif isinstance(samples, (int, np.integer)) and not isinstance(samples, bool):
            ids = np.arange(int(samples), int(samples) + n, dtype=np.int64)
        else:
            ids = np.asarray(samples)
            if ids.shape != (n,) or (n and not np.issubdtype(ids.dtype, np.integer)):
                raise DataError(f"samples: expected {n} integer sample indices (one per sample of the batch), got "
                                f"{ids.dtype} {list(ids.shape)}")
            ids = ids.astype(np.int64)
        if n and int(ids.min()) < 0:
            raise DataError(f"samples: sample indices must be >= 0, got {int(ids.min())}")
        if n:
            self.samples_seen = max(self.samples_seen, int(ids.max()) + 1)
        return ids

    def mvm(self, op: XbarOp, x: np.ndarray, batch: int) -> np.ndarray:
        """x: [M, K] with M = batch * positions; rows of sample b are [b*M/batch, (b+1)*M/batch)."""
        raise NotImplementedError

    def apply_tuning(self, tuning: dict | None, conductances: dict | None) -> bool:
        """Use a tuned manifest's programmed conductances where they belong to this backend's chip instance.
        Backends without conductances (float, integer) read the manifest's levels and return False."""
        return False

    def conv(self, op: XbarOp, x: np.ndarray) -> np.ndarray | None:
        """Optionally run a whole quantised convolution: integer codes [B, C, *spatial] -> accumulators
        [B, N, *out_spatial] equal to what `mvm` on the im2col matrix gives, in a new array that the executor may
        overwrite (it scales it in place). None: use im2col + mvm. Offered only 2-D (and lifted 1-D) forward
        convolutions (`ConvGeometry.planar`); a Conv3d or ConvTranspose always runs through mvm."""
        return None

    def conv_output(self, op: XbarOp, x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None) -> np.ndarray | None:
        """Optionally run a whole quantised convolution with its quantisation and dequantisation in one go: x is
        the float input, quantised as cimc.graph_run.quantize_activation does (op.input_quant); returns what the
        executor forms from `conv`'s accumulators, y = float32(acc) * scale[n] (+ bias[n]) in float32, bit for bit.
        None: the executor quantises x and uses `conv`."""
        return None

    def chunk_workers(self) -> int:
        """How many batches this backend can run at once, each in a thread of its own through a worker_view
        (cimc.concurrent_chunks); 1: one batch at a time."""
        return 1

    def worker_view(self) -> "Backend":
        """The backend as one worker thread runs it: the same bound chip, with run state of its own (the batch's
        sample indices, work arrays). Only for backends whose chunk_workers() is above 1."""
        raise NotImplementedError(f"the {self.name} backend runs one batch at a time")

    def enter_worker(self) -> None:
        """Called once in each worker thread before its first batch (the crossbar's kernels: one thread each)."""

    def describe(self) -> dict:
        """What this backend was, for reports (seeds, options)."""
        return {"backend": self.name, "seed": self.seed}
