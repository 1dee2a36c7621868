"""Run a graph with a backend: the graph walk shared by the Session (cimc.executor), calibration and the crossbar
backend's own ADC calibration. It sits below the backends (it never imports them at run time), so a backend may run
a graph without an import circle.

For every crossbar op the operand is formed (im2col for a conv, the input's channels per position for a
ConvTranspose, the last axis for a matmul), and for a quantised backend the activation is quantised first:
q = clip(rint(x / s), qmin, qmax) in float32 (cimc.ir.ActQuant; a backend's `conv_output` may do it in its own first
pass, bit for bit). The backend multiplies; this module adds the rest:
y = acc * (s * weight_scale[n]) + bias[n] (float32); for a ConvTranspose y = acc * (s * weight_scale[n]), then the
overlap-add and the bias per output channel (cimc.overlap_add).
Digital ops run in onnxruntime (cimc.onnx_segments), with exact ONNX semantics at the model's opset; float32
activations, as the papers' digital periphery computed them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from cimc.batching import chunks, fixed_batch
from cimc.errors import DataError
from cimc.im2col import col2im, im2col
from cimc.ir import ActQuant, Graph, XbarOp
from cimc.onnx_segments import Plan, Segment, plan, run_segment
from cimc.overlap_add import input_rows, overlap_add

if TYPE_CHECKING:      # annotations only: importing cimc.backends here would run the backends package first
    from cimc.backends.base import Backend


def quantize_activation(x: np.ndarray, q: ActQuant) -> np.ndarray:
    """Integer codes held in float32 (exact: |q| < 2^16)."""
    t = x / np.float32(q.scale)                   # one new array, rounded and clipped in place
    np.rint(t, out=t)
    np.clip(t, q.qmin, q.qmax, out=t)
    return t.astype(np.float32, copy=False)


def output_scale(op: XbarOp) -> np.ndarray:
    return (np.float32(op.input_quant.scale) * op.weight_scales.astype(np.float32)).astype(np.float32)


def run_xbar(op: XbarOp, x: np.ndarray, backend: Backend) -> np.ndarray:
    whole = op.conv is not None and op.conv.planar and backend.quantized   # the backends' fast paths are 2-D
    if whole:
        y = backend.conv_output(op, x, output_scale(op), op.bias)
        if y is not None:   # the backend ran the whole convolution, the quantisation and the dequantisation below
            return y
    if backend.quantized:
        x = quantize_activation(x, op.input_quant)
    acc = backend.conv(op, x) if whole else None
    if acc is not None:   # the backend ran the whole convolution: accumulators [B, N, *spatial] (a new array)
        per_channel = (slice(None),) + (None,) * (acc.ndim - 2)
        y = acc.astype(np.float32, copy=False)
        np.multiply(y, output_scale(op)[per_channel], out=y)          # in place: the same float32 products
        if op.bias is not None:
            y += op.bias[per_channel]
        return y
    if op.conv is None:
        shape = x.shape[:-1]
        cols = x.reshape(-1, x.shape[-1])
    elif op.conv.transposed:       # one read per input position; the overlap-add below
        cols, shape = input_rows(x, op.conv)
    else:
        cols, shape = im2col(x, op.conv)
    y = backend.mvm(op, cols, batch=len(x))
    if backend.quantized:
        y = y.astype(np.float32) * output_scale(op)
    y = y.astype(np.float32, copy=False)
    if op.conv is not None and op.conv.transposed:
        return overlap_add(y, shape, op.conv, op.bias)
    if op.bias is not None:
        y = y + op.bias
    return col2im(y, shape, op.conv) if op.conv is not None else y.reshape(*shape, op.cols)


def run_graph(graph: Graph, feeds: dict[str, np.ndarray], backend: Backend,
              observe: Callable[[XbarOp, np.ndarray], None] | None = None,
              keep: set[str] | frozenset = frozenset(), samples=None) -> dict[str, np.ndarray]:
    """Execute the ops in order; `observe(op, input)` sees each crossbar op's float input (used by calibration).
    `samples`: the batch's global sample indices (Backend.number_samples; default: numbered on from the samples
    the backend ran before). Returns the graph outputs and the tensors named in `keep`."""
    n = len(next(iter(feeds.values()))) if feeds else 0
    ids = backend.number_samples(n, samples)
    batch = fixed_batch([t.shape for t in graph.inputs])
    try:
        if batch is None or n == batch:
            backend.samples = ids
            return _run_ops(graph, feeds, backend, observe, keep)
        # a fixed-batch model: chunks of its batch (cimc.batching), the padding dropped from what is seen and kept
        parts = []
        for part, part_ids, count in fixed_batch_runs(feeds, ids, batch):
            backend.samples = part_ids
            seen = observe if observe is None or count == batch else \
                (lambda op, x, count=count: observe(op, x[:count]))
            parts.append({k: v[:count] for k, v in _run_ops(graph, part, backend, seen, keep).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    finally:
        backend.samples = None


def fixed_batch_runs(feeds: dict[str, np.ndarray], ids: np.ndarray, batch: int):
    """A fixed-batch model's runs of the samples `ids`: (feeds of exactly `batch` samples, the backend's sample
    indices for them, real samples) per chunk (cimc.batching); a padded sample reads as the last real one."""
    for start, count, part in chunks(feeds, batch):
        yield part, np.concatenate([ids[start:start + count],
                                    np.repeat(ids[start + count - 1:start + count], batch - count)]), count


def run_item(graph: Graph, order: Plan, i: int, env: dict[str, np.ndarray], backend: Backend,
             keep: set[str] | frozenset, observe=None) -> None:
    """Run item i of `order` (plan(graph)) on the tensors in `env`, adding its outputs there; then drop the tensors
    no later item reads, except those in `keep` (which should hold the graph's outputs). One step of a run: a caller
    may step several batches through the plan side by side (cimc.column_calibration)."""
    item = order.items[i]
    if isinstance(item, Segment):
        env.update(run_segment(graph, item, env, keep))
    else:
        x = env[item.inputs[0]]
        if observe is not None:
            observe(item, x)
        env[item.outputs[0]] = run_xbar(item, x, backend)
    for t in item.inputs:
        if order.last_read.get(t) == i and t not in keep:
            env.pop(t, None)


def _run_ops(graph: Graph, feeds: dict[str, np.ndarray], backend: Backend, observe, keep) -> dict[str, np.ndarray]:
    env = dict(feeds)
    keep = {t.name for t in graph.outputs} | set(keep)
    order = plan(graph)
    for i in range(len(order.items)):
        run_item(graph, order, i, env, backend, keep, observe)
    return {name: env[name] for name in [t.name for t in graph.outputs] + sorted(keep) if name in env}


def check_feeds(graph: Graph, x, where: str = "input") -> dict[str, np.ndarray]:
    """Turn an array (single-input model) or dict into float32 feeds, checking names and non-batch shapes."""
    names = [t.name for t in graph.inputs]
    if not isinstance(x, dict):
        if len(names) != 1:
            raise DataError(f"{where}: the model has inputs {names}; pass a dict of arrays")
        x = {names[0]: x}
    missing = [n for n in names if n not in x]
    if missing:
        raise DataError(f"{where}: missing model input(s) {missing} (model inputs: {names})")
    feeds = {}
    batch = fixed_batch([t.shape for t in graph.inputs])
    for info in graph.inputs:
        value = np.asarray(x[info.name])
        expected = tuple(info.shape)
        if batch is not None:      # a fixed batch runs in chunks (run_graph): any number of samples
            expected = (None,) + expected[1:]
        if value.ndim != len(expected) or any(e is not None and e != d for e, d in zip(expected, value.shape)):
            shown = ["N" if d is None else d for d in expected]
            raise DataError(f"{where}: input {info.name!r} has shape {list(value.shape)}, the model expects {shown}")
        if not np.issubdtype(value.dtype, np.number):
            raise DataError(f"{where}: input {info.name!r} has non-numeric dtype {value.dtype}")
        feeds[info.name] = value.astype(np.float32, copy=False)
    counts = {name: v.shape[0] for name, v in feeds.items() if v.ndim}
    if len(set(counts.values())) > 1:
        raise DataError(f"{where}: the inputs hold different numbers of samples {counts}; give every input the "
                        "same number")
    return feeds
