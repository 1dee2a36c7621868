"""Digital (non-crossbar) ops of the executor, in numpy with ONNX semantics.

Every op arrives in the canonical form produced by the ONNX front end: constant
inputs have become attributes, defaults are filled in, and ``inputs`` holds only
the runtime tensors (batch first).  Negative axes are normalised here, against
the rank of the tensor they refer to.

Arithmetic ops return float32 (accumulating in float64 where that is needed to
stay within 1e-6 of onnxruntime); data-movement ops (Reshape, Slice, ...) keep
the dtype of their input.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np

__all__ = ["run_digital", "SUPPORTED"]

_F32 = np.float32


# --------------------------------------------------------------------------- helpers


def _attr(op: str, attrs: dict, name: str):
    """A required attribute, or ValueError naming the op and the attribute."""
    if name not in attrs or attrs[name] is None:
        raise ValueError(f"{op}: missing required attribute '{name}'")
    return attrs[name]


def _int_list(op: str, name: str, value, length: int | None = None) -> list[int]:
    try:
        out = [int(v) for v in value]
    except TypeError:
        raise ValueError(f"{op}: attribute '{name}' must be a list of ints, got {value!r}") from None
    if length is not None and len(out) != length:
        raise ValueError(f"{op}: attribute '{name}' must have {length} entries, got {out}")
    return out


def _axis(op: str, name: str, axis, rank: int) -> int:
    """Normalise a possibly negative axis against ``rank``."""
    a = int(axis)
    if not -rank <= a < rank:
        raise ValueError(f"{op}: attribute '{name}'={axis} out of range for rank {rank}")
    return a + rank if a < 0 else a


def _axes(op: str, name: str, axes, rank: int) -> list[int]:
    out = [_axis(op, name, a, rank) for a in _int_list(op, name, axes)]
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: attribute '{name}' has repeated axes {list(axes)}")
    return out


def _one_input(op: str, inputs: list[np.ndarray]) -> np.ndarray:
    if len(inputs) != 1:
        raise ValueError(f"{op}: expected 1 runtime input, got {len(inputs)}")
    return np.asarray(inputs[0])


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=_F32)


# --------------------------------------------------------------------------- activations


def _relu(inputs, attrs):
    x = _one_input("Relu", inputs)
    return _f32(np.maximum(x, 0))


def _sigmoid(inputs, attrs):
    x = _one_input("Sigmoid", inputs).astype(np.float64)
    # Numerically stable split: never exponentiate a large positive number.
    e = np.exp(-np.abs(x))
    return _f32(np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)))


def _identity(inputs, attrs):
    return _one_input("Identity", inputs).copy()


def _leaky_relu(inputs, attrs):
    x = _f32(_one_input("LeakyRelu", inputs))
    alpha = _F32(attrs.get("alpha", 0.01))
    return _f32(np.where(x >= 0, x, alpha * x))


def _clip(inputs, attrs):
    x = _f32(_one_input("Clip", inputs))
    lo, hi = attrs.get("min"), attrs.get("max")
    if lo is not None:
        x = np.maximum(x, _F32(lo))
    if hi is not None:
        x = np.minimum(x, _F32(hi))  # min > max: everything becomes max, as in ONNX
    return _f32(x)


# --------------------------------------------------------------------------- pooling


def _pool_output_size(op, n_in, k, s, d, pb, pe, ceil_mode):
    span = n_in + pb + pe - (d * (k - 1) + 1)
    if span < 0:  # (onnxruntime returns an empty axis here, shape inference says 1: reject)
        raise ValueError(
            f"{op}: attribute 'kernel_shape' (dilated extent {d * (k - 1) + 1}) "
            f"exceeds padded input size {n_in + pb + pe}"
        )
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    # ceil_mode: a window that would start in the end padding is dropped.
    if (out - 1) * s >= n_in + pb:
        out -= 1
    return out


def _pool(op: str, inputs, attrs, reduce: str):
    x = _one_input(op, inputs)
    nsp = x.ndim - 2
    if nsp < 1:
        raise ValueError(f"{op}: input must be (N, C, spatial...), got shape {x.shape}")
    k = _int_list(op, "kernel_shape", _attr(op, attrs, "kernel_shape"), nsp)
    s = _int_list(op, "strides", attrs.get("strides") or [1] * nsp, nsp)
    d = _int_list(op, "dilations", attrs.get("dilations") or [1] * nsp, nsp)
    pads = _int_list(op, "pads", attrs.get("pads") or [0] * (2 * nsp), 2 * nsp)
    ceil_mode = int(attrs.get("ceil_mode", 0))
    cip = int(attrs.get("count_include_pad", 0))
    for name, vals, lo in (("kernel_shape", k, 1), ("strides", s, 1), ("dilations", d, 1), ("pads", pads, 0)):
        if min(vals) < lo:
            raise ValueError(f"{op}: attribute '{name}' must be >= {lo}, got {vals}")
    if ceil_mode not in (0, 1):
        raise ValueError(f"{op}: attribute 'ceil_mode' must be 0 or 1, got {ceil_mode}")
    if cip not in (0, 1):
        raise ValueError(f"{op}: attribute 'count_include_pad' must be 0 or 1, got {cip}")

    outs, pad_width = [], [(0, 0), (0, 0)]
    n_valid, n_padded = [], []  # per axis: window positions on real input / inside declared pads
    for i in range(nsp):
        n_in, pb, pe = x.shape[2 + i], pads[i], pads[nsp + i]
        out = _pool_output_size(op, n_in, k[i], s[i], d[i], pb, pe, ceil_mode)
        # ceil_mode windows may run past the declared end padding: pad further.
        extra = max(0, (out - 1) * s[i] + d[i] * (k[i] - 1) + 1 - (n_in + pb + pe))
        pad_width.append((pb, pe + extra))
        outs.append(out)
        pos = np.arange(out)[:, None] * s[i] + np.arange(k[i])[None, :] * d[i]
        n_valid.append(((pos >= pb) & (pos < pb + n_in)).sum(axis=1))
        n_padded.append((pos < n_in + pb + pe).sum(axis=1))

    fill = -np.inf if reduce == "max" else 0.0
    work = x.astype(np.float64 if reduce == "avg" else _F32)
    xp = np.pad(work, pad_width, mode="constant", constant_values=fill)
    acc = None
    for off in itertools.product(*(range(kk) for kk in k)):
        idx = (slice(None), slice(None)) + tuple(
            slice(o * d[i], o * d[i] + (outs[i] - 1) * s[i] + 1, s[i]) for i, o in enumerate(off)
        )
        win = xp[idx]
        if acc is None:
            acc = win.copy()
        elif reduce == "max":
            np.maximum(acc, win, out=acc)
        else:
            acc += win

    # Windows are boxes, so the element count of each window factorises per axis.
    count = _outer(n_padded if (reduce == "avg" and cip) else n_valid)
    if reduce == "max":
        # onnxruntime starts from the lowest float: a window with no real element yields it.
        return _f32(np.where(count > 0, acc, np.finfo(_F32).min))
    # A window holding only padding averages to 0 (onnxruntime), not 0/0.
    return _f32(acc / np.maximum(count, 1))


def _outer(vectors: list[np.ndarray]) -> np.ndarray:
    out = np.ones((), dtype=np.int64)
    for v in vectors:
        out = np.multiply.outer(out, v)
    return out


def _max_pool(inputs, attrs):
    return _pool("MaxPool", inputs, attrs, "max")


def _average_pool(inputs, attrs):
    return _pool("AveragePool", inputs, attrs, "avg")


def _global_average_pool(inputs, attrs):
    x = _one_input("GlobalAveragePool", inputs)
    return _f32(x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)), keepdims=True))


def _global_max_pool(inputs, attrs):
    x = _one_input("GlobalMaxPool", inputs)
    return _f32(x.max(axis=tuple(range(2, x.ndim)), keepdims=True))


# --------------------------------------------------------------------------- elementwise binary


def _binary(op: str, fn: Callable, inputs, attrs):
    const = attrs.get("constant")
    if const is None:
        if len(inputs) != 2:
            raise ValueError(f"{op}: expected 2 runtime inputs (no 'constant' attribute), got {len(inputs)}")
        a, b = _f32(inputs[0]), _f32(inputs[1])
    else:
        x = _f32(_one_input(op, inputs))
        ci = int(attrs.get("constant_index", 1))
        if ci not in (0, 1):
            raise ValueError(f"{op}: attribute 'constant_index' must be 0 or 1, got {ci}")
        a, b = (_f32(const), x) if ci == 0 else (x, _f32(const))
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} are not broadcastable") from None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _f32(fn(a, b))


def _add(inputs, attrs):
    return _binary("Add", np.add, inputs, attrs)


def _sub(inputs, attrs):
    return _binary("Sub", np.subtract, inputs, attrs)


def _mul(inputs, attrs):
    return _binary("Mul", np.multiply, inputs, attrs)


def _div(inputs, attrs):
    return _binary("Div", np.divide, inputs, attrs)


# --------------------------------------------------------------------------- shape / data movement


def _concat(inputs, attrs):
    if not inputs:
        raise ValueError("Concat: expected at least 1 runtime input")
    xs = [np.asarray(t) for t in inputs]
    axis = _axis("Concat", "axis", _attr("Concat", attrs, "axis"), xs[0].ndim)
    try:
        return np.concatenate(xs, axis=axis)
    except ValueError as e:
        raise ValueError(f"Concat: cannot concatenate along axis {axis}: {e}") from None


def _flatten(inputs, attrs):
    x = _one_input("Flatten", inputs)
    axis = int(attrs.get("axis", 1))
    if not -x.ndim <= axis <= x.ndim:  # axis == rank is allowed here
        raise ValueError(f"Flatten: attribute 'axis'={axis} out of range for rank {x.ndim}")
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def _reshape(inputs, attrs):
    x = _one_input("Reshape", inputs)
    shape = _int_list("Reshape", "shape", _attr("Reshape", attrs, "shape"))
    allowzero = int(attrs.get("allowzero", 0))
    if shape.count(-1) > 1:
        raise ValueError(f"Reshape: attribute 'shape' has more than one -1: {shape}")
    if allowzero and 0 in shape and -1 in shape:
        raise ValueError(f"Reshape: attribute 'shape' {shape} has both 0 and -1 with allowzero=1")
    if not allowzero:
        # 0 copies the corresponding input dimension.
        for i, v in enumerate(shape):
            if v == 0:
                if i >= x.ndim:
                    raise ValueError(f"Reshape: attribute 'shape' {shape}: 0 at index {i} beyond input rank {x.ndim}")
                shape[i] = x.shape[i]
    if any(v < -1 for v in shape):
        raise ValueError(f"Reshape: attribute 'shape' has invalid entries: {shape}")
    try:
        return x.reshape(shape)
    except ValueError:
        raise ValueError(f"Reshape: cannot reshape {x.shape} to attribute 'shape' {shape}") from None


def _transpose(inputs, attrs):
    x = _one_input("Transpose", inputs)
    perm = attrs.get("perm")
    if perm is None:
        return np.transpose(x).copy()
    perm = _int_list("Transpose", "perm", perm, x.ndim)
    if sorted(perm) != list(range(x.ndim)):
        raise ValueError(f"Transpose: attribute 'perm' {perm} is not a permutation of range({x.ndim})")
    return np.transpose(x, perm).copy()


def _pad(inputs, attrs):
    x = _one_input("Pad", inputs)
    mode = attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ValueError(f"Pad: attribute 'mode' must be constant/reflect/edge/wrap, got {mode!r}")
    axes = attrs.get("axes")
    axes = list(range(x.ndim)) if axes is None else _axes("Pad", "axes", axes, x.ndim)
    raw = _int_list("Pad", "pads", _attr("Pad", attrs, "pads"), 2 * len(axes))
    begin, end = [0] * x.ndim, [0] * x.ndim
    for j, a in enumerate(axes):
        begin[a], end[a] = raw[j], raw[len(axes) + j]
    # Negative pads crop first; the positive pads then see the cropped tensor
    # (matters for reflect/edge/wrap when one side crops and the other pads).
    crop = tuple(slice(-min(b, 0), n + min(e, 0)) for b, e, n in zip(begin, end, x.shape))
    if any(sl.start > sl.stop for sl in crop):
        raise ValueError(f"Pad: attribute 'pads' {raw} crops more than the input shape {x.shape}")
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    if mode == "constant":
        value = attrs.get("value", 0.0)
        return np.pad(x, width, mode="constant", constant_values=0.0 if value is None else value)
    if mode == "reflect":
        for n, (b, e) in zip(x.shape, width):
            if (b or e) and max(b, e) >= n:
                raise ValueError(f"Pad: attribute 'pads' {raw}: reflect pad must be smaller than the dimension {n}")
    elif any((b or e) and n == 0 for n, (b, e) in zip(x.shape, width)):
        raise ValueError(f"Pad: cannot {mode}-pad an empty dimension (shape {x.shape})")
    return np.pad(x, width, mode=mode)


_INT64_MAX = np.iinfo(np.int64).max


def _slice(inputs, attrs):
    x = _one_input("Slice", inputs)
    starts = _int_list("Slice", "starts", _attr("Slice", attrs, "starts"))
    ends = _int_list("Slice", "ends", _attr("Slice", attrs, "ends"), len(starts))
    axes = attrs.get("axes")
    axes = list(range(len(starts))) if axes is None else _axes("Slice", "axes", axes, x.ndim)
    if len(axes) != len(starts):
        raise ValueError(f"Slice: attribute 'axes' must have {len(starts)} entries, got {axes}")
    steps = attrs.get("steps")
    steps = [1] * len(starts) if steps is None else _int_list("Slice", "steps", steps, len(starts))
    index = [slice(None)] * x.ndim
    for a, st, en, sp in zip(axes, starts, ends, steps):
        n = x.shape[a]
        if sp == 0:
            raise ValueError("Slice: attribute 'steps' must not contain 0")
        # ONNX: negative indices count from the end, then clamp to
        # [0, n] for positive steps and [-1, n-1] for negative steps.
        st = st + n if st < 0 else st
        en = en + n if en < 0 else en
        if sp > 0:
            st, en = min(max(st, 0), n), min(max(en, 0), n)
        else:
            st, en = min(max(st, -1), n - 1), min(max(en, -1), n - 1)
        index[a] = slice(st, None if en < 0 else en, sp)  # en == -1: run to the front
    return x[tuple(index)].copy()


def _squeeze(inputs, attrs):
    x = _one_input("Squeeze", inputs)
    axes = attrs.get("axes")
    if axes is None:
        return x.reshape([n for n in x.shape if n != 1])
    axes = _axes("Squeeze", "axes", axes, x.ndim)
    bad = [a for a in axes if x.shape[a] != 1]
    if bad:
        raise ValueError(f"Squeeze: attribute 'axes' names dims {bad} of shape {x.shape} that are not 1")
    return x.reshape([n for i, n in enumerate(x.shape) if i not in axes])


def _unsqueeze(inputs, attrs):
    x = _one_input("Unsqueeze", inputs)
    raw = _attr("Unsqueeze", attrs, "axes")
    axes = _axes("Unsqueeze", "axes", raw, x.ndim + len(_int_list("Unsqueeze", "axes", raw)))
    shape = list(x.shape)
    for a in sorted(axes):
        shape.insert(a, 1)
    return x.reshape(shape)


# --------------------------------------------------------------------------- normalisation


def _softmax_along(x: np.ndarray, axis: int) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return _f32(e / e.sum(axis=axis, keepdims=True))


def _softmax(inputs, attrs):
    x = _one_input("Softmax", inputs)
    legacy = bool(attrs.get("legacy", False))
    axis = attrs.get("axis", 1 if legacy else -1)
    if not legacy:
        return _softmax_along(x, _axis("Softmax", "axis", axis, x.ndim))
    # opset < 13: coerce to 2-D at `axis` and normalise over everything after it.
    axis = int(axis)
    if not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"Softmax: attribute 'axis'={axis} out of range for rank {x.ndim}")
    axis = axis + x.ndim if axis < 0 else axis
    flat = x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))
    return _softmax_along(flat, 1).reshape(x.shape)


def _batch_norm(inputs, attrs):
    op = "BatchNormalization"
    x = _one_input(op, inputs)
    if x.ndim < 2:
        raise ValueError(f"{op}: input must have a channel axis, got shape {x.shape}")
    c = x.shape[1]
    params = {}
    for name in ("scale", "bias", "mean", "var"):
        p = np.asarray(_attr(op, attrs, name), dtype=np.float64).reshape(-1)
        if p.shape != (c,):
            raise ValueError(f"{op}: attribute '{name}' must have {c} entries, got shape {p.shape}")
        params[name] = p.reshape((c,) + (1,) * (x.ndim - 2))
    eps = float(attrs.get("epsilon", 1e-5))
    y = (x.astype(np.float64) - params["mean"]) / np.sqrt(params["var"] + eps) * params["scale"] + params["bias"]
    return _f32(y)


# --------------------------------------------------------------------------- dispatch


_OPS: dict[str, Callable[[list[np.ndarray], dict], np.ndarray]] = {
    "Relu": _relu,
    "Sigmoid": _sigmoid,
    "Identity": _identity,
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
    "GlobalMaxPool": _global_max_pool,
    "Add": _add,
    "Sub": _sub,
    "Mul": _mul,
    "Div": _div,
    "Concat": _concat,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Pad": _pad,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Softmax": _softmax,
    "BatchNormalization": _batch_norm,
}

SUPPORTED: frozenset[str] = frozenset(_OPS)


def run_digital(op_type: str, inputs: list[np.ndarray], attrs: dict) -> np.ndarray:
    """Execute one digital op with ONNX semantics (latest opset)."""
    fn = _OPS.get(op_type)
    if fn is None:
        raise ValueError(f"unsupported digital op type {op_type!r}; supported: {sorted(SUPPORTED)}")
    return fn(list(inputs), dict(attrs or {}))
