"""Vector-Jacobian products of the digital ops that hybrid training back-propagates through (`cimc tune --layers`).

The forward pass always runs in onnxruntime on the chip (cimc.onnx_segments); only the backward pass is written
here, in float64 numpy, from the forward tensors of the same batch. `vjp(op, inputs, output, grad)` returns the
gradient for each input of `op` (None for an input that takes none: constants, indices, shapes). Any other op type
on the path is refused up front by `check_supported`, naming the node and its op type.
"""
from __future__ import annotations

import itertools

import numpy as np

from cimc.errors import ConfigError
from cimc.ir import DigitalOp

_RESHAPES = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
SUPPORTED = sorted(_RESHAPES | {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Add", "Sub", "Mul", "Transpose",
                                "Concat", "Softmax", "LogSoftmax", "BatchNormalization", "MaxPool", "AveragePool",
                                "GlobalAveragePool", "Slice", "Pad"})


def check_supported(op: DigitalOp, flag: str = "--layers") -> None:
    mode = op.attr("mode", b"constant")
    if op.op_type == "Pad" and (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise ConfigError(f"{flag}: node {op.name!r} (Pad, mode {mode!r}) lies between the tuned layers and the model "
                          "output; hybrid training back-propagates only constant padding; tune only layers after it")
    if op.op_type not in SUPPORTED or op.domain not in ("", "ai.onnx"):
        raise ConfigError(f"{flag}: node {op.name!r} ({op.op_type}) lies between the tuned layers and the model "
                          f"output, and hybrid training has no backward pass for {op.op_type}; tune only layers "
                          f"after it (back-propagated ops: {', '.join(SUPPORTED)})")


def vjp(op: DigitalOp, inputs: list, output: np.ndarray, grad: np.ndarray, opset: int = 17) -> list:
    """Gradients for `op.inputs` given the gradient `grad` of its first output. `inputs`: the forward values
    (None for an omitted optional input), `output`: the forward value of its first output."""
    t, x = op.op_type, inputs[0]
    g = np.asarray(grad, np.float64)
    rest = [None] * (len(inputs) - 1)
    if t in _RESHAPES:
        return [g.reshape(np.shape(x))] + rest
    if t == "Relu":
        return [g * (x > 0)]
    if t == "LeakyRelu":
        return [g * np.where(x > 0, 1.0, op.attr("alpha", 0.01))]
    if t == "Sigmoid":
        y = np.asarray(output, np.float64)
        return [g * y * (1 - y)]
    if t == "Tanh":
        y = np.asarray(output, np.float64)
        return [g * (1 - y * y)]
    if t == "Clip":
        lo = op.attr("min") if len(inputs) < 2 or inputs[1] is None else inputs[1]
        hi = op.attr("max") if len(inputs) < 3 or inputs[2] is None else inputs[2]
        keep = np.ones(np.shape(x), bool)
        if lo is not None:
            keep &= x >= lo
        if hi is not None:
            keep &= x <= hi
        return [g * keep] + rest
    if t in ("Add", "Sub", "Mul"):
        a, b = inputs
        ga, gb = (g, g if t == "Add" else -g) if t != "Mul" else (g * b, g * a)
        return [_unbroadcast(ga, np.shape(a)), _unbroadcast(gb, np.shape(b))]
    if t == "Transpose":
        perm = op.attr("perm") or list(range(np.ndim(x)))[::-1]
        return [np.transpose(g, np.argsort(perm))]
    if t == "Concat":
        axis = op.attr("axis") % g.ndim
        bounds = np.cumsum([np.shape(v)[axis] for v in inputs])[:-1]
        return list(np.split(g, bounds, axis=axis))
    if t in ("Softmax", "LogSoftmax"):
        return [_softmax_vjp(t, op, output, g, opset)]
    if t == "BatchNormalization":
        scale, _, _, var = (np.asarray(v, np.float64) for v in inputs[1:5])
        k = scale / np.sqrt(var + op.attr("epsilon", 1e-5))
        return [g * k.reshape((1, -1) + (1,) * (g.ndim - 2))] + rest
    if t == "GlobalAveragePool":
        size = int(np.prod(np.shape(x)[2:]))
        return [np.broadcast_to(g / size, np.shape(x)).copy()]
    if t == "Slice":
        return [_slice_vjp(op, inputs, g)] + rest
    if t == "Pad":
        return [_pad_vjp(op, inputs, g)] + rest
    if t in ("MaxPool", "AveragePool"):
        return [_pool_vjp(op, np.asarray(x, np.float64), np.shape(output), g)] + rest
    raise ConfigError(f"node {op.name!r} ({t}): no backward pass")


def _unbroadcast(g: np.ndarray, shape) -> np.ndarray:
    """Sum a broadcast gradient back to an operand's shape (ONNX multidirectional broadcasting)."""
    while g.ndim > len(shape):
        g = g.sum(0)
    for axis, size in enumerate(shape):
        if size == 1 and g.shape[axis] != 1:
            g = g.sum(axis, keepdims=True)
    return g


def _softmax_vjp(t: str, op, output, g: np.ndarray, opset: int) -> np.ndarray:
    y = np.asarray(output, np.float64)
    shape = y.shape
    if opset < 13:                     # before opset 13 the input is coerced to 2-D at `axis` (default 1)
        axis = op.attr("axis", 1) % y.ndim
        y, g = y.reshape(int(np.prod(shape[:axis])), -1), g.reshape(int(np.prod(shape[:axis])), -1)
        axis = 1
    else:
        axis = op.attr("axis", -1) % y.ndim
    if t == "Softmax":
        out = y * (g - (g * y).sum(axis, keepdims=True))
    else:                              # y = log softmax: dx = g - softmax * sum(g)
        out = g - np.exp(y) * g.sum(axis, keepdims=True)
    return out.reshape(shape)


def _pool_vjp(op, x: np.ndarray, out_shape, g: np.ndarray) -> np.ndarray:
    """MaxPool (gradient to each window's first maximum) and AveragePool (to every counted position) over the
    spatial axes, with pads, strides, dilations, ceil_mode and auto_pad as ONNX defines them."""
    n = x.ndim - 2
    sizes, out = x.shape[2:], tuple(out_shape[2:])
    kernel = tuple(op.attr("kernel_shape"))
    strides = tuple(op.attr("strides") or (1,) * n)
    dil = tuple(op.attr("dilations") or (1,) * n)
    begins, ends = _pads(op, sizes, out, kernel, strides, dil)
    # the end is padded further where ceil_mode lets the last window run past the padded input
    extra = [max(0, (o - 1) * s + (k - 1) * d + 1 - (sz + b + e))
             for o, s, k, d, sz, b, e in zip(out, strides, kernel, dil, sizes, begins, ends)]
    full = tuple(sz + b + e + x_ for sz, b, e, x_ in zip(sizes, begins, ends, extra))
    inner = tuple(slice(b, b + sz) for b, sz in zip(begins, sizes))
    offsets = list(itertools.product(*(range(k) for k in kernel)))

    def window(offset):
        return (slice(None), slice(None)) + tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                                                  for i, d, o, s in zip(offset, dil, out, strides))
    grad = np.zeros(x.shape[:2] + full)
    if op.op_type == "MaxPool":
        padded = np.full(x.shape[:2] + full, -np.inf)
        padded[(slice(None), slice(None)) + inner] = x
        stack = np.stack([padded[window(o)] for o in offsets])
        first = stack.argmax(0)
        for k, o in enumerate(offsets):
            grad[window(o)] += g * (first == k)
    else:
        counted = np.zeros(full)
        counted[tuple(slice(0, sz + b + e) for sz, b, e in zip(sizes, begins, ends))
                if op.attr("count_include_pad", 0) else inner] = 1.0
        divisor = sum(counted[window(o)[2:]] for o in offsets)
        share = g / np.maximum(divisor, 1.0)
        for o in offsets:
            grad[window(o)] += share * counted[window(o)[2:]]
    return grad[(slice(None), slice(None)) + inner]


def _pads(op, sizes, out, kernel, strides, dil) -> tuple[list[int], list[int]]:
    n = len(sizes)
    auto = op.attr("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (o - 1) * s + (k - 1) * d + 1 - sz) for o, s, k, d, sz in zip(out, strides, kernel, dil, sizes)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        return (small, big) if auto == "SAME_UPPER" else (big, small)
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = list(op.attr("pads") or [0] * (2 * n))
    return pads[:n], pads[n:]


def _slice_vjp(op, inputs, g: np.ndarray) -> np.ndarray:
    """The gradient scattered back into the sliced positions (numpy's slice clamping is ONNX's)."""
    x = inputs[0]
    if len(inputs) > 1:          # opset >= 10: starts, ends[, axes[, steps]] as inputs
        starts, ends = inputs[1], inputs[2]
        axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
        steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    else:
        starts, ends = op.attr("starts"), op.attr("ends")
        axes, steps = op.attr("axes") or range(len(starts)), [1] * len(starts)
    index = [slice(None)] * np.ndim(x)
    for a, b, e, s in zip(axes, starts, ends, steps):
        index[int(a) % np.ndim(x)] = slice(int(b), int(e), int(s))
    out = np.zeros(np.shape(x))
    out[tuple(index)] = g
    return out


def _pad_vjp(op, inputs, g: np.ndarray) -> np.ndarray:
    """Constant padding: each input position's gradient is the output's at its padded place (a negative pad crops:
    those positions get none)."""
    x = inputs[0]
    n = np.ndim(x)
    pads = list(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else list(op.attr("pads"))
    axes = [int(a) % n for a in inputs[3]] if len(inputs) > 3 and inputs[3] is not None else list(range(n))
    begins = dict(zip(axes, pads[:len(axes)]))
    for axis in range(n):
        where = np.arange(np.shape(x)[axis]) + int(begins.get(axis, 0))
        valid = (where >= 0) & (where < g.shape[axis])
        g = np.take(g, np.clip(where, 0, g.shape[axis] - 1), axis=axis)
        g = g * valid.reshape([-1 if i == axis else 1 for i in range(n)])
    return g
