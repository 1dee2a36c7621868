"""LSTM, GRU and RNN on the crossbar: the weight matrices on arrays, gates and state digital.

A recurrent node with constant W, R (B, P) and a static sequence length T becomes
* one crossbar op for the input projection of every time step at once: X arranged batch first [N, T, I] times
  [W_forward^T | W_reverse^T] -> [N, T, D*G*H] (positions T), bias W_b + R_b folded in (except GRU's R_bh with
  linear_before_reset=1, which belongs inside r * (...)); it does not depend on the recurrence;
* per direction and time step, one read of the recurrent matrix R^T with h_{t-1} [N, H] (bit-serial inputs like any
  other layer). The first read owns the arrays; the later steps' reads are shared-weight ops (`XbarOp.weights_of`)
  on the same arrays, each with its own input quantiser and read noise. No read at a step whose h_{t-1} is the
  implicit zero initial state. GRU with linear_before_reset=0 multiplies (r * h_{t-1}) by R_h: R_zr and R_h are
  then two matrices (two owners), still each on arrays once;
* ONNX nodes for the rest (Gather, Split, Add, Mul, the activations, Concat, Reshape, Transpose), run by onnxruntime
  like every digital op. They compute the ONNX spec's equations, with the outputs Y, Y_h, Y_c in the node's layout.

What stays digital (onnxruntime runs the node whole), and why (`why_digital`): W or R (or B, P) computed at run
time (a crossbar holds constant weights); an unknown sequence length; a sequence_lens input that is not a constant
equal to T for every sample (per-sample lengths make the output depend on the run-time lengths: padded steps must
give zeros in Y and keep the state, which this unrolled lowering does not do); `clip`, LSTM `input_forget`, and
activations other than the parameterless ones (Sigmoid, Tanh, Relu, Softsign, Softplus).
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from cimc.ir import DigitalOp, XbarOp

RECURRENT = ("LSTM", "GRU", "RNN")
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# activations that are ONNX ops without parameters (onnxruntime reads the names case-insensitively)
_PLAIN = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softsign": "Softsign", "softplus": "Softplus"}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _input(node, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def why_digital(imp, node) -> str | None:
    """None if the node can be lowered onto arrays, else the reason it stays digital."""
    a = imp.attrs(node)
    kind = node.op_type
    for index, what in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
        t = _input(node, index)
        if t and imp.const(t) is None:
            return f"{what} is computed at run time"
    for attr in ("clip", "activation_alpha", "activation_beta"):
        if attr in a:
            return f"attribute {attr!r} is set"
    if kind == "LSTM" and int(a.get("input_forget", 0)):
        return "attribute 'input_forget' is set"
    direction = _text(a.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional") or int(a.get("layout", 0)) not in (0, 1):
        return "unknown direction or layout"
    d = 2 if direction == "bidirectional" else 1
    acts = [_text(x) for x in a.get("activations", [])] or _DEFAULT_ACTIVATIONS[kind] * d
    if len(acts) != len(_DEFAULT_ACTIVATIONS[kind]) * d or any(x.lower() not in _PLAIN for x in acts):
        return f"activations {acts} (only {sorted(_PLAIN.values())} are lowered)"
    shape = imp.shape(node.input[0])
    layout = int(a.get("layout", 0))
    if shape is None or len(shape) != 3 or shape[layout] is None or shape[2] is None:
        return "the sequence length or input size is unknown after shape inference"
    steps = shape[layout]
    w, r = imp.const(node.input[1]), imp.const(node.input[2])
    if w.ndim != 3 or r.ndim != 3 or w.shape[0] != d or w.shape[1] % _GATES[kind] or \
            r.shape != (d, w.shape[1], w.shape[1] // _GATES[kind]) or w.shape[2] != shape[2]:
        return "W or R has an unexpected shape"        # onnxruntime gives its own error
    if "hidden_size" in a and int(a["hidden_size"]) != r.shape[2]:
        return f"attribute 'hidden_size' {a['hidden_size']} disagrees with R {list(r.shape)}"
    lens = _input(node, 4)
    if lens:
        value = imp.const(lens)
        if value is None or not np.all(np.asarray(value) == steps):
            return "sequence_lens is not a constant equal to the sequence length"
    return None


class _Emitter:
    """Appends the lowering's ops to the importer; tensor and constant names are `NODE/...`, all distinct."""

    def __init__(self, imp, name: str, source: str):
        self.imp, self.name, self.source = imp, name, source
        self.owners: dict[str, str] = {}
        self.matrices: dict[str, np.ndarray] = {}
        self.consts: dict[tuple, str] = {}

    def tensor(self, base: str) -> str:
        return self.imp.unique(f"{self.name}/{base}")       # one namespace with the constants: never the same

    def const(self, base: str, value: np.ndarray) -> str:
        """A constant tensor; equal values (the step indices, split sizes, shapes) are one constant."""
        key = (base, value.dtype.str, value.shape, value.tobytes())
        if key not in self.consts:
            self.consts[key] = self.imp.add_constant(f"{self.name}/{base}", value)
        return self.consts[key]

    def op(self, op_type: str, inputs: list[str], out: str | None = None, outputs: int = 1, **attrs):
        outs = [out] if out else [self.tensor(op_type.lower()) for _ in range(outputs)]
        self.imp.ops.append(DigitalOp(self.imp.unique(f"{self.name}/{op_type}"), op_type, list(inputs), outs,
                                      [helper.make_attribute(k, v) for k, v in attrs.items()], "", [self.source]))
        return outs[0] if outputs == 1 else outs

    def gather(self, x: str, index: int, axis: int) -> str:
        """x with `axis` indexed at `index` (the axis removed)."""
        return self.op("Gather", [x, self.const("index", np.array(index, np.int64))], axis=axis)

    def split(self, x: str, axis: int, size: int, parts: int) -> list[str]:
        if parts == 1:
            return [x]
        if self.imp.opset < 13:          # `split` is an attribute before opset 13, an input from 13 on
            return self.op("Split", [x], outputs=parts, axis=axis, split=[size] * parts)
        sizes = self.const("split", np.full(parts, size, np.int64))
        return self.op("Split", [x, sizes], outputs=parts, axis=axis)

    def add(self, x: str, y: str | None) -> str:
        return x if y is None else self.op("Add", [x, y])

    def read(self, key: str, matrix: np.ndarray, bias: np.ndarray | None, x: str, step: int, source_type: str) -> str:
        """x [N, rows] times `matrix` on the arrays: the first read of `key` owns them, later ones share them."""
        name = self.imp.unique(f"{self.name}/{key}/step{step}")
        out = self.tensor(f"{key}_read")
        owner = self.owners.setdefault(key, name)
        matrix = self.matrices.setdefault(key, matrix)          # every read holds the one matrix, not a copy
        self.imp.ops.append(XbarOp(name, source_type, [x], [out], matrix, bias, None, [self.source],
                                   weights_of=None if owner == name else owner))
        return out


def lower(imp, node, name: str) -> None:
    """Append the node's lowering to the importer's ops (why_digital(imp, node) must be None)."""
    a = imp.attrs(node)
    kind = node.op_type
    layout = int(a.get("layout", 0))
    direction = _text(a.get("direction", "forward"))
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    w = imp.const(node.input[1]).astype(np.float32)
    r = imp.const(node.input[2]).astype(np.float32)
    d_count, gh, _ = w.shape
    g_count = _GATES[kind]
    hidden = gh // g_count
    b = imp.const(_input(node, 3))
    b = np.zeros((d_count, 2 * gh), np.float32) if b is None else b.astype(np.float32)
    p = imp.const(_input(node, 7)) if kind == "LSTM" else None
    steps = imp.shape(node.input[0])[layout]
    acts = [_PLAIN[_text(x).lower()] for x in a.get("activations", [])] or _DEFAULT_ACTIVATIONS[kind] * d_count
    per_dir = len(_DEFAULT_ACTIVATIONS[kind])
    lbr = kind == "GRU" and int(a.get("linear_before_reset", 0)) == 1
    em = _Emitter(imp, name, node.name or name)

    # the input projection of all steps and directions: one crossbar op on X batch first [N, T, I]
    x = imp.resolve(node.input[0])
    if layout == 0:
        x = em.op("Transpose", [x], perm=[1, 0, 2])
    wb, rb = b[:, :gh], b[:, gh:]
    in_bias = wb + rb
    if lbr:                       # R_bh is added to h_{t-1} R_h^T inside r * (...): it goes with the recurrent read
        in_bias[:, 2 * hidden:] = wb[:, 2 * hidden:]
    xw = em.tensor("XW")
    imp.ops.append(XbarOp(name, kind, [x], [xw], np.concatenate([w[d].T for d in range(d_count)], axis=1).copy(),
                          in_bias.reshape(-1).astype(np.float32), None, [node.name or name], positions=steps))
    xw_dirs = em.split(xw, 2, gh, d_count)

    init = {}
    for key, index in (("h", 5), ("c", 6)):
        t = _input(node, index)
        if t and (key == "h" or kind == "LSTM"):
            t = imp.resolve(t)
            if t in imp.consts:
                imp.constants[t] = imp.consts[t]
            init[key] = t

    def direction(d: int, dir_name: str):
        """One direction's steps; yields each crossbar read it needs as (key, matrix, bias, input, step) and gets
        the read's output tensor back. Returns (h_t by time, last h, last c)."""
        tag = "" if d_count == 1 else f"_{dir_name}"
        # R^T, and for GRU's linear_before_reset=0 its two parts R_zr^T and R_h^T
        r_all, r_zr, r_h = r[d].T.copy(), r[d, :2 * hidden].T.copy(), r[d, 2 * hidden:].T.copy()
        f_act, g_act, h_act = (acts[d * per_dir:(d + 1) * per_dir] + [None, None])[:3]
        h = em.gather(init["h"], d, layout) if "h" in init else None
        c = em.gather(init["c"], d, layout) if "c" in init else None
        peep = None
        if p is not None:
            peep = [em.const(f"P{n}", p[d, j * hidden:(j + 1) * hidden].astype(np.float32))
                    for j, n in enumerate("iof")]
        by_time = {}
        for k in range(steps):
            t = k if dir_name == "forward" else steps - 1 - k
            xg = em.gather(xw_dirs[d], t, 1)                              # [N, G*H]
            if kind == "LSTM":
                rec = (yield f"R{tag}", r_all, None, h, k) if h is not None else None
                i, o, f, cc = em.split(em.add(xg, rec), 1, hidden, 4)
                if c is not None and peep is not None:
                    i = em.op("Add", [i, em.op("Mul", [c, peep[0]])])
                    f = em.op("Add", [f, em.op("Mul", [c, peep[2]])])
                i, cc = em.op(f_act, [i]), em.op(g_act, [cc])
                c_new = em.op("Mul", [i, cc])
                if c is not None:
                    c_new = em.op("Add", [em.op("Mul", [em.op(f_act, [f]), c]), c_new])
                if peep is not None:
                    o = em.op("Add", [o, em.op("Mul", [c_new, peep[1]])])
                h, c = em.op("Mul", [em.op(f_act, [o]), em.op(h_act, [c_new])]), c_new
            elif kind == "GRU":
                xz, xr, xh = em.split(xg, 1, hidden, 3)
                if lbr:
                    rbh = rb[d, 2 * hidden:]
                    if h is not None:
                        rec_bias = np.concatenate([np.zeros(2 * hidden, np.float32), rbh])
                        rz, rr, rh = em.split((yield f"R{tag}", r_all, rec_bias, h, k), 1, hidden, 3)
                    else:
                        rz = rr = None
                        rh = em.const("Rbh", rbh.copy()) if np.any(rbh) else None
                    z, rg = em.op(f_act, [em.add(xz, rz)]), em.op(f_act, [em.add(xr, rr)])
                    hh = em.op(g_act, [em.add(xh, None if rh is None else em.op("Mul", [rg, rh]))])
                else:
                    rz = rr = rh = None
                    if h is not None:
                        rz, rr = em.split((yield f"Rzr{tag}", r_zr, None, h, k), 1, hidden, 2)
                    z, rg = em.op(f_act, [em.add(xz, rz)]), em.op(f_act, [em.add(xr, rr)])
                    if h is not None:
                        rh = yield f"Rh{tag}", r_h, None, em.op("Mul", [rg, h]), k
                    hh = em.op(g_act, [em.add(xh, rh)])
                one = em.const("one", np.array(1.0, np.float32))
                h_new = em.op("Mul", [em.op("Sub", [one, z]), hh])
                h = h_new if h is None else em.op("Add", [h_new, em.op("Mul", [z, h])])
            else:
                rec = (yield f"R{tag}", r_all, None, h, k) if h is not None else None
                h = em.op(f_act, [em.add(xg, rec)])
            by_time[t] = h
        return [by_time[t] for t in range(steps)], h, c

    # The directions advance in lock step: each one's digital ops up to its next read, then the reads of all of
    # them. So the digital ops between two rounds of reads form one onnxruntime segment (cimc.onnx_segments), not
    # one per direction.
    results = _lock_step([direction(d, name) for d, name in enumerate(dirs)], lambda request: em.read(*request, kind))
    ys, last_h, last_c = (list(x) for x in zip(*results))
    _outputs(imp, em, node, layout, steps, hidden, ys, last_h, last_c)


def _lock_step(directions: list, read) -> list:
    """Run generators that yield read requests, one round of reads at a time; their return values, in order."""
    results: list = [None] * len(directions)
    requests: dict = {}

    def advance(d, value):
        try:
            requests[d] = directions[d].send(value)
        except StopIteration as done:
            results[d] = done.value

    for d in range(len(directions)):
        advance(d, None)
    while requests:
        round_, requests = requests, {}
        outputs = {d: read(request) for d, request in round_.items()}
        for d, out in outputs.items():
            advance(d, out)
    return results


def _outputs(imp, em: _Emitter, node, layout: int, steps: int, hidden: int, ys, last_h, last_c) -> None:
    """Y [T, D, N, H] (layout 0) or [N, T, D, H] (layout 1); Y_h, Y_c [D, N, H] or [N, D, H]."""
    wanted = [t if t and t in imp.used else "" for t in list(node.output) + ["", "", ""]][:3]
    d_count = len(ys)
    if wanted[0]:
        shape = em.const("shape", np.array([0, steps, 1, hidden], np.int64))      # 0: the batch, as it is
        per_dir = [em.op("Reshape", [em.op("Concat", hs, axis=1), shape]) for hs in ys]
        y = per_dir[0] if d_count == 1 else em.op("Concat", per_dir, axis=2)
        if layout == 0:
            em.op("Transpose", [y], out=wanted[0], perm=[1, 2, 0, 3])
        else:
            em.op("Identity", [y], out=wanted[0])
    for out, states in ((wanted[1], last_h), (wanted[2], last_c)):
        if not out:
            continue
        shape = em.const("shape", np.array([0, d_count, hidden], np.int64))
        state = em.op("Reshape", [em.op("Concat", states, axis=1), shape])
        if layout == 0:
            em.op("Transpose", [state], out=out, perm=[1, 0, 2])
        else:
            em.op("Identity", [state], out=out)
