"""Einsum with one constant operand as a crossbar matmul: which einsums are `x @ W` after a transpose and reshape.

An einsum over a run-time x and a constant w is a product with a constant matrix when every index of w is either
contracted with x (summed, in x, not in the output) or free (only in w, kept in the output): then
y = reshape(transpose(x) [..., Kc] @ W[Kc, Nw]) with W = w's axes ordered (contracted, free). An index shared by x,
w and the output (a batched weight), an index summed over x alone, repeated indices (diagonals) and `...` in w
are left to onnxruntime (the op stays digital). x's first axis (the sample) must stay the output's first axis.
An index summed over w alone is summed into W first (w is constant).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EinsumPlan:
    x_perm: list[int]          # x's axes -> (free_x..., contracted...)
    free_x: int                # how many leading axes of the transposed x stay (sample first)
    matrix: np.ndarray         # Kc x Nw
    free_w_sizes: list[int]    # the w-only output axes, in the order the matrix columns hold them
    out_perm: list[int]        # (free_x..., free_w...) -> the equation's output order


def plan(equation: str, x_shape: tuple, w: np.ndarray, x_first: bool) -> EinsumPlan | None:
    """`x_first`: x is the equation's first operand. None if the einsum is not x @ constant (see module doc)."""
    text = equation.replace(" ", "")
    if "->" in text:
        inputs, out = text.split("->")
    else:
        inputs, out = text, None
    terms = inputs.split(",")
    if len(terms) != 2 or not x_shape or None in x_shape[1:]:     # only the sample axis may be symbolic
        return None
    tx, tw = (terms[0], terms[1]) if x_first else (terms[1], terms[0])
    if "." in tw:
        return None
    if "..." in tx:
        extra = len(x_shape) - (len(tx) - 3)
        if extra < 0:
            return None
        fresh = [chr(c) for c in range(0x100, 0x100 + extra)]        # letters no equation uses
        tx = tx.replace("...", "".join(fresh))
        out = None if out is None else out.replace("...", "".join(fresh))
    if out is None:   # implicit output: the indices that appear once, in alphabetical order (ONNX, numpy)
        letters = tx + tw
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if "." in out or len(tx) != len(x_shape) or len(tw) != w.ndim or len(set(tx)) != len(tx) \
            or len(set(tw)) != len(tw) or len(set(out)) != len(out):
        return None
    contracted = [c for c in tx if c in tw and c not in out]
    if any(c in tw and c in out for c in tx):             # a batched weight
        return None
    if any(c not in tw and c not in out for c in tx):     # a sum over x alone
        return None
    free_x = [c for c in tx if c not in tw]
    free_w = [c for c in tw if c not in tx and c in out]
    if not contracted or not free_x or out[0] != tx[0] or free_x[0] != tx[0]:
        return None
    summed = tuple(i for i, c in enumerate(tw) if c not in tx and c not in out)
    w = np.asarray(w, np.float64).sum(axis=summed) if summed else np.asarray(w, np.float64)
    tw = "".join(c for c in tw if c in tx or c in out)
    size = dict(zip(tx, x_shape))
    for c, d in zip(tw, w.shape):
        if c in size and size[c] is not None and size[c] != d:
            return None
    matrix = w.transpose([tw.index(c) for c in contracted + free_w]).reshape(
        int(np.prod([size[c] for c in contracted])), -1)
    produced = free_x + free_w
    return EinsumPlan([tx.index(c) for c in free_x + contracted], len(free_x), matrix.astype(np.float32),
                      [int(w.shape[tw.index(c)]) for c in free_w], [produced.index(c) for c in out])
