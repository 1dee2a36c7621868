"""The two reference backends: `float` (lowered float weights: proves the lowering against onnxruntime) and
`integer` (the ideal chip: exact integer products of quantised activations and the levels read back from the
physical arrays, so it also proves tiling and placement)."""
from __future__ import annotations

import numpy as np

from cimc.backends.base import Backend
from cimc.layout import read_levels

# float32 adds integers exactly while every partial sum stays below 2^24.
FLOAT32_EXACT = 1 << 24


class FloatBackend(Backend):
    name = "float"
    quantized = False

    def bind(self, graph, arrays, target):
        self.matrices = {op.name: op.matrix for op in graph.xbar_ops()}

    def mvm(self, op, x, batch):
        return x @ self.matrices[op.name]


class IntegerBackend(Backend):
    name = "integer"

    def bind(self, graph, arrays, target):
        self.levels = {}
        for op in graph.xbar_ops():
            levels = read_levels(op, arrays, target) if arrays is not None else op.levels
            bound = op.rows * max(abs(op.input_quant.qmin), op.input_quant.qmax) * target.device.max_level
            self.levels[op.name] = levels.astype(np.float32 if bound < FLOAT32_EXACT else np.float64)

    def mvm(self, op, x, batch):
        w = self.levels[op.name]
        return x.astype(w.dtype, copy=False) @ w
