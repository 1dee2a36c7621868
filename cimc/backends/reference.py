"""The two reference backends: `float` (lowered float weights: proves the lowering against onnxruntime) and
`integer` (the ideal chip: exact integer products of quantised activations and the levels read back from the
physical arrays, so it also proves tiling and placement)."""
from __future__ import annotations

import numpy as np

from cimc.backends.base import Backend
from cimc.ir import block_matmul, compact
from cimc.layout import read_levels

# float32 adds integers exactly while every partial sum stays below 2^24.
FLOAT32_EXACT = 1 << 24


class FloatBackend(Backend):
    name = "float"
    quantized = False

    def bind(self, graph, arrays, target):
        # float64 products rounded once to float32: a float32 GEMM's sums depend on the number of rows (and each
        # row's place) on some BLAS kernels, so a sample's outputs would depend on its batch; float64 sums of
        # float32 products differ between orders by ~1e-16 relative, which the one rounding to float32 absorbs
        # (the op's own matrix, read at each call: training's checks move its weights between runs)
        self.matrices = {op.name: op.matrix for op in graph.xbar_ops()}

    def mvm(self, op, x, batch):
        w = self.matrices[op.name].astype(np.float64)
        return block_matmul(x.astype(np.float64), w).astype(np.float32)


class IntegerBackend(Backend):
    """Convolutions whose sums stay exact in float32 run as one onnxruntime Conv on the integer codes and levels
    (every product and partial sum is an integer below 2^24, so any summation order gives the exact result);
    everything else is an exact matmul on the im2col matrix."""
    name = "integer"

    def bind(self, graph, arrays, target):
        self.levels, self.sessions = {}, {}
        for op in graph.xbar_ops():
            # a shared-weight reader reads its owner's devices
            levels = read_levels(graph.array_owner(op), arrays, target) if arrays is not None else op.levels
            bound = op.rows * max(abs(op.input_quant.qmin), op.input_quant.qmax) * target.max_weight_level
            exact32 = bound < FLOAT32_EXACT
            self.levels[op.name] = levels.astype(np.float32 if exact32 else np.float64)
            if op.conv is not None and op.conv.planar and exact32:   # onnxruntime Conv: 2-D (and lifted 1-D)
                self.sessions[op.name] = conv_session(op, levels)

    def mvm(self, op, x, batch):
        w = self.levels[op.name]
        return block_matmul(x.astype(w.dtype, copy=False), w)

    def conv(self, op, x):
        session = self.sessions.get(op.name)
        if session is None:
            return None
        return op.conv.unlift(session.run(None, {"x": op.conv.lift(x)})[0])


def conv_session(op, levels: np.ndarray):
    """An onnxruntime session computing the op's convolution with the given level matrix (K x N, or compact blocks
    [groups, K/groups, N/groups], cimc.ir) as its weight."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cimc import ort_session
    g = op.conv
    kh, kw = g.kernel
    groups, n = g.groups, op.cols
    kg, ng, cg = op.rows // groups, n // groups, g.in_channels // groups
    blocks = levels if levels.ndim == 3 else compact(levels, groups).reshape(groups, kg, ng)
    weight = blocks.transpose(0, 2, 1).reshape(n, cg, kh, kw).astype(np.float32)   # W[g*ng + j] = block g column j
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[kh, kw], strides=list(g.strides),
                            pads=list(g.pads), dilations=list(g.dilations), group=groups)
    graph = helper.make_graph([node], op.name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    return ort_session.session(model)     # quiet, no spin-waiting between the layers' runs
