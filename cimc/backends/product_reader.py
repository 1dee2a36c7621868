"""The crossbar backend's `product` reader (a lossless ADC, no simulate_planes): every conversion is exact, so the
shift-and-add over the bit-planes is linear and a layer's reads are one product x . G' per copy, plus read noise
with the variance that the per-read noise of all planes adds up to; a convolution without read noise runs as one
onnxruntime Conv of the same matrix."""
from __future__ import annotations

import numpy as np

from cimc.backends.bit_planes import rowwise_matmul
from cimc.backends.read_plan import ReadPlan
from cimc.backends.reader import Reader
from cimc.backends.slice_lines import minus_reference, noise_lines_factor
from cimc.targets.devices import line_noise


def product(plan: ReadPlan, c: int, x: np.ndarray) -> np.ndarray:
    """x [m, K] times copy c's conductance differences: one product with the K x N matrix; a grouped op's (compact,
    cimc.ir) row tile by row tile, so the devices of its tiles outside the diagonal blocks are read too."""
    bound = max(abs(plan.qmin), abs(plan.qmax))        # the codes' largest magnitude
    if plan.effective[c].ndim == 2:
        return rowwise_matmul(x, plan.effective[c], bound)
    out = np.zeros((len(x), plan.cols), plan.dtype)
    for block in plan.blocks:
        out[:, block.index] += rowwise_matmul(np.ascontiguousarray(x[:, block.r0:block.r1]),
                                              block.diff[c].astype(plan.dtype, copy=False), bound)
    return out


class ProductReader(Reader):
    name = "product"

    def read(self, plan: ReadPlan, c: int, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        acc = product(plan, c, x.astype(plan.dtype, copy=False))
        if self.ctx.read_sigma > 0:
            self._lossless_noise(plan, c, x, acc, ids)
        return acc

    def _lossless_noise(self, plan: ReadPlan, c: int, x: np.ndarray, acc: np.ndarray, ids: np.ndarray) -> None:
        """Read noise of all planes of a lossless read, summed: per row tile and output line, g+ and g- (or the
        +u/-u row blocks) each add N(0, s^2 sum_r u_r^2) per plane, weighted by w_j: variance 2 s^2 sum_r f(q_r)
        (other encodings: each of their lines, shifted and added, `noise_lines_factor`; an offset reference
        column's line drawn once per tile and subtracted from each of its outputs' draws, so it is shared by them).
        Each sample's generator draws, row tile by row tile, its [positions, lines] block."""
        generators = self.noise_generators(plan, c, ids)
        samples = len(ids)
        factor = noise_lines_factor(self.target)        # 2.0 for the pair; other encodings: cimc.backends.slice_lines
        for block in plan.blocks:
            xb = x[:, block.r0:block.r1]
            if plan.analog:
                f = np.square(xb, dtype=np.float64).sum(axis=1)
            else:
                f = plan.noise_lut[xb.astype(np.int64) - plan.qmin].sum(axis=1)
            f = f.reshape(samples, -1, 1)
            nb = len(block.cols)
            width = nb if block.reference is None else nb + int(block.reference[-1]) + 1
            noise = line_noise(generators, factor * f, self.ctx.read_sigma, np.float64, f.shape[:2] + (width,))
            if block.reference is not None:
                noise = minus_reference(noise, nb, block.reference)
            acc[:, block.cols] += noise.reshape(len(x), -1).astype(acc.dtype)

    def conv(self, op, plan: ReadPlan, x: np.ndarray, copies: list) -> np.ndarray:
        """A whole convolution as one onnxruntime Conv of each copy's matrix (`copies`: [(copy, its samples)])."""
        from cimc.backends.reference import conv_session
        rank1 = op.conv.spatial_rank == 1
        xin = x[:, :, None, :] if rank1 else x
        out = None
        for c, samples in copies:
            if c not in plan.conv_sessions:
                plan.conv_sessions[c] = conv_session(op, plan.effective[c])
            part = xin if len(copies) == 1 else np.ascontiguousarray(xin[samples])
            y = plan.conv_sessions[c].run(None, {"x": part})[0]
            if len(copies) == 1:
                out = y
            else:
                if out is None:
                    out = np.empty((len(x),) + y.shape[1:], np.float32)
                out[samples] = y
        return out[:, :, 0, :] if rank1 else out
