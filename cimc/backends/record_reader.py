"""The ADC calibration's reader (`record`): ideal reads that record the largest line current of every layer
(cimc.backends.crossbar.calibrate_adc_full_scales), exact in int8 where the levels and g_min allow (one
MatMulInteger per run of row tiles of one shape, the accumulators as the codes' own product), else float line
currents formed exactly and rounded once (bit_planes.rowwise_matmul: the same peaks whatever the threads or chunks)
with the accumulators from one product per layer (cimc.backends.product_reader)."""
from __future__ import annotations

import numpy as np

from cimc.backends.bit_planes import (CHUNK_ELEMENTS, CURRENT_ELEMENTS, bit_planes_uint, plane_weights,
                                      rowwise_matmul, signed_values, uint_codes)
from cimc.backends.int8_reader import int8_grid, matmul_integer_session, quantise_plan
from cimc.backends.product_reader import product
from cimc.backends.read_plan import ReadPlan
from cimc.backends.reader import ReadContext, Reader
from cimc.backends.slice_lines import line_slices
from cimc.weight_encoding import encoded


class RecordReader(Reader):
    """Reads of the ideal chip (levels and g_min in step units) that record each layer's peak line current
    (`peaks`, step units; bit-sliced weights also each slice's: `slice_peaks`)."""
    name = "record"

    def __init__(self, ctx: ReadContext, plans: dict):
        super().__init__(ctx)
        target = self.target
        self.session = None
        if float(ctx.offset).is_integer() and ctx.offset + target.device.max_level <= 127 and not encoded(target):
            grid = int8_grid(plans, target, grid=1)     # ideal levels + integer g_min: exact in int8
            if grid is not None:
                self.grid = grid
                for plan in plans.values():
                    quantise_plan(plan, target, grid)
                self.session = matmul_integer_session()
        self.peaks = {name: 0.0 for name in plans}
        self.slice_peaks = {name: np.zeros(target.weights.slices) for name in plans} \
            if target.weights.encoding == "bit-sliced" else {}
        self._batched_session, self._record_cache = None, {}
        self._fused_sessions, self._planes_memory = {}, None

    def read(self, plan: ReadPlan, c: int, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self.exact(plan):
            return self.record_exact(plan, c, uint_codes(x, plan.bits, plan.signed))
        self.record(plan, c, x)
        return product(plan, c, x.astype(plan.dtype, copy=False))

    def read_codes(self, plan: ReadPlan, c: int, xi: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self.record_exact(plan, c, xi)

    def adopt(self, plan: ReadPlan) -> None:
        if self.session is not None:
            quantise_plan(plan, self.target, self.grid)

    def exact(self, plan: ReadPlan) -> bool:
        """Calibration reads can run exactly in int8 (ideal levels and an integer g_min, 8-bit planes)."""
        return self.session is not None and self.grid == 1 and not plan.analog and plan.bits <= 8

    def record_exact(self, plan: ReadPlan, c: int, xi: np.ndarray) -> np.ndarray:
        """Ideal reads of uint8 codes [m, r]: every bit-plane of a row tile in one MatMulInteger, the peak line
        current recorded, and the exact accumulators: the codes' product with the same int8 matrices, equal to
        shift-and-add of the plane currents (which forms them where int32 could overflow); the g_min parts cancel
        in g+ - g-. Row tiles of the same shape go in one batched MatMulInteger (a depthwise layer
        has dozens of small ones: one call each cost more than their products)."""
        columns = self.target.array.differential == "columns"
        n = plan.bits
        w = plane_weights(n, plan.signed).astype(np.int64)
        out = np.zeros((len(xi), plan.cols), np.int64)
        peak = self.peaks[plan.name]
        for blocks, mats in self._record_groups(plan, c, len(xi)):
            r, lines, nb = blocks[0].r1 - blocks[0].r0, mats.shape[2], len(blocks)
            chunk = max(1, min(CHUNK_ELEMENTS // (n * r * nb), CURRENT_ELEMENTS // (n * lines * nb)))
            # |current| <= 127 r per plane, at most 2^n times that over the planes: int32 while that fits
            wide = np.int32 if 127 * r << n < 1 << 31 else np.int64
            for s in range(0, len(xi), chunk):
                xb = np.stack([xi[s:s + chunk, b.r0:b.r1] for b in blocks])          # [nb, rows, r]
                planes = bit_planes_uint(xb, n, self._planes_buffer((n,) + xb.shape))  # [n, nb, rows, r]
                if wide is np.int32 and lines:
                    # one onnxruntime call: the planes' currents (for the peak) and the accumulators as the codes'
                    # own product (sum_j w_j planes_j is the code: the same integers as shift-and-add of the
                    # currents, for 1/n of the products; numpy's int einsum over the planes cost more than them)
                    cur, acc = self._fused_record_session(plan.signed).run(
                        None, {"A": planes, "X": signed_values(xb, n) if plan.signed else xb, "B": mats})
                    peak = max(peak, float(cur.max()), 0.0 if columns else -float(cur.min()))
                else:
                    cur = self._batched_int_session().run(None, {"A": planes, "B": mats})[0]   # [n, nb, rows, lines]
                    if cur.size:
                        peak = max(peak, float(cur.max()), 0.0 if columns else -float(cur.min()))
                    acc = np.einsum("jbmn,j->bmn", cur.astype(wide, copy=False), w.astype(wide))
                for i, block in enumerate(blocks):
                    k = len(block.cols)
                    out[s:s + chunk, block.index] += acc[i, :, :k] - acc[i, :, k:] if columns else acc[i]
        self.peaks[plan.name] = peak
        return out.astype(plan.dtype)

    def _record_groups(self, plan: ReadPlan, c: int, m: int) -> list:
        """Copy c's row tiles in runs of the same shape, each [(blocks, their int8 matrices stacked)], at most as
        many tiles per run as keep one read of all m rows within the chunk limits (cached per plan and copy)."""
        key = (id(plan.blocks), c, m)
        cache = self._record_cache
        if key not in cache:
            n, groups, run = plan.bits, [], []
            for b in plan.blocks:
                if run and (b.r1 - b.r0, b.quantised[c].shape) != (run[0].r1 - run[0].r0, run[0].quantised[c].shape):
                    groups.append(run)
                    run = []
                run.append(b)
            if run:
                groups.append(run)
            cache[key] = []
            for run in groups:
                r, lines = run[0].r1 - run[0].r0, run[0].quantised[c].shape[1]
                most = max(1, min(CHUNK_ELEMENTS // (n * r * max(m, 1)), CURRENT_ELEMENTS // (n * lines * max(m, 1))))
                for i in range(0, len(run), most):
                    part = run[i:i + most]
                    cache[key].append((part, np.stack([b.quantised[c] for b in part])))
        return cache[key]

    def _planes_buffer(self, shape: tuple) -> np.ndarray:
        """A uint8 buffer for the bit-planes, reused across reads (fresh pages for each read cost as much as
        writing the planes)."""
        size = int(np.prod(shape))
        if self._planes_memory is None or self._planes_memory.size < size:
            self._planes_memory = np.empty(size, np.uint8)
        return self._planes_memory[:size].reshape(shape)

    def _fused_record_session(self, signed: bool):
        """planes [n, b, m, k] uint8, codes [b, m, k] (int8 if signed, else uint8), matrices [b, k, lines] int8 ->
        the plane currents [n, b, m, lines] and the accumulators codes x matrices [b, m, lines], int32, in one
        onnxruntime run (its own ReduceMax/ReduceMin of the currents were slower than numpy's)."""
        if signed not in self._fused_sessions:
            from onnx import TensorProto, helper

            from cimc import ort_session
            nodes = [helper.make_node("MatMulInteger", ["A", "B"], ["currents"]),
                     helper.make_node("MatMulInteger", ["X", "B"], ["acc"])]
            g = helper.make_graph(nodes, "planes_and_codes_x_conductances",
                                  [helper.make_tensor_value_info("A", TensorProto.UINT8, ["J", "B", "M", "K"]),
                                   helper.make_tensor_value_info("X", TensorProto.INT8 if signed else TensorProto.UINT8,
                                                                 ["B", "M", "K"]),
                                   helper.make_tensor_value_info("B", TensorProto.INT8, ["B", "K", "N"])],
                                  [helper.make_tensor_value_info("currents", TensorProto.INT32, ["J", "B", "M", "N"]),
                                   helper.make_tensor_value_info("acc", TensorProto.INT32, ["B", "M", "N"])])
            self._fused_sessions[signed] = ort_session.session(helper.make_model(g, opset_imports=[
                helper.make_opsetid("", 13)]))
        return self._fused_sessions[signed]

    def _batched_int_session(self):
        """MatMulInteger of uint8 planes [n, b, m, k] and int8 matrices [b, k, lines] (numpy's matmul broadcasting)."""
        if self._batched_session is None:
            from onnx import TensorProto, helper

            from cimc import ort_session
            node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
            g = helper.make_graph([node], "batched_planes_x_conductances",
                                  [helper.make_tensor_value_info("A", TensorProto.UINT8, ["J", "B", "M", "K"]),
                                   helper.make_tensor_value_info("B", TensorProto.INT8, ["B", "K", "N"])],
                                  [helper.make_tensor_value_info("Y", TensorProto.INT32, ["J", "B", "M", "N"])])
            # no spin-waiting (cimc.ort_session): between its many short reads the idle threads would burn the cores
            self._batched_session = ort_session.session(helper.make_model(g, opset_imports=[
                helper.make_opsetid("", 13)]))
        return self._batched_session

    def record(self, plan: ReadPlan, c: int, x: np.ndarray) -> None:
        """Largest ideal line current (step units, magnitude) over all reads: the calibrated ADC full scale; for
        bit-sliced weights also each slice's own (`slice_peaks`, the lines of slice s: slice_lines.line_slices)."""
        columns = self.target.array.differential == "columns"
        n_planes = 1 if plan.analog else plan.bits
        xi = x if plan.analog else uint_codes(x, plan.bits, plan.signed)
        peak = self.peaks[plan.name]
        per_slice = self.slice_peaks.get(plan.name)
        for block in plan.blocks:
            r = block.r1 - block.r0
            # device lines ("columns"), or another encoding's lines (cimc.backends.slice_lines), else +v/-v pairs
            mat = block.lines[c] if columns or encoded(self.target) else block.diff[c].astype(np.float32)
            chunk = max(1, CHUNK_ELEMENTS // (n_planes * max(r, mat.shape[1])))
            int8 = self.session is not None and not plan.analog
            for s in range(0, len(x), chunk):
                xb = xi[s:s + chunk, block.r0:block.r1]
                # float sums formed exactly and rounded once (rowwise_matmul): a BLAS sgemm's order depends on the
                # rows beside a read and on its threads, and the peak of a non-integer line (256 levels: no int8)
                # moved in its last bits with OPENBLAS_NUM_THREADS and the chunk size
                if plan.analog:
                    cur = rowwise_matmul(xb.astype(np.float32), mat, max(abs(plan.qmin), plan.qmax))
                elif int8:
                    u = bit_planes_uint(xb, n_planes, np.empty((n_planes,) + xb.shape, np.uint8))
                    cur = self.session.run(None, {"A": u.reshape(-1, r), "B": block.quantised[c]})[0]
                else:
                    cur = rowwise_matmul(bit_planes_uint(xb, n_planes).reshape(-1, r), mat, 1.0)
                if cur.size:
                    peak = max(peak, float(cur.max()), -float(cur.min()))
                    if per_slice is not None:          # [reads, line planes, outputs] -> each slice's peak
                        by_plane = np.abs(cur.reshape(len(cur), -1, len(block.cols))).max(axis=(0, 2))
                        np.maximum.at(per_slice, line_slices(self.target), by_plane)
        self.peaks[plan.name] = peak
