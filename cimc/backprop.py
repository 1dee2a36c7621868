"""The backward pass of hybrid training through several layers (`cimc tune --layers`).

The forward pass ran on the chip (its real, noisy reads); this module takes the tensors of that pass and the
gradient of the loss at the logits, and walks the ops back to the first tuned layer in float64:
* a digital op: its vector-Jacobian product (cimc.vjp);
* a crossbar op: y = V W + b with V = q(x) s_x the input the array saw and W the weights the chip holds
  (`chip_weights`: the programmed conductances of copy 0, combined as the weight encoding says, times the weight
  scales); dW = V^T dy (a conv: over every output position, via im2col), and dx = dy W^T through the activation
  quantiser as a straight-through estimator (zero where the input was clipped).
The gradient is what the chip's forward pass implies, not the float model's: the updates correct this chip.
"""
from __future__ import annotations

import numpy as np

from cimc.errors import ConfigError
from cimc.graph_run import quantize_activation
from cimc.im2col import im2col, im2col_adjoint
from cimc.ir import DigitalOp, Graph, XbarOp
from cimc.layout import tile_cells
from cimc.vjp import check_supported, vjp
from cimc.weight_encoding import combine, encoded, tile_planes

LOSS_HEADS = ("Softmax", "LogSoftmax", "Identity")   # ops after the logits that the loss (softmax CE) stands for


def logits_tensor(graph: Graph) -> str:
    """The tensor the loss reads as logits: the model output, before a final Softmax/LogSoftmax/Identity."""
    tensor = graph.outputs[0].name
    producer = graph.producer(tensor)
    while isinstance(producer, DigitalOp) and producer.op_type in LOSS_HEADS:
        tensor = producer.inputs[0]
        producer = graph.producer(tensor)
    return tensor


def path(graph: Graph, tuned: list[XbarOp], flag: str = "--layers") -> list:
    """The ops the gradient passes through, in execution order: from the first tuned layer to the logits, those
    that lie between them (read a tensor made on the path and feed the logits). Refuses, naming the node, an op
    without a backward pass."""
    logits = logits_tensor(graph)
    index = {id(op): i for i, op in enumerate(graph.ops)}
    first = min(index[id(op)] for op in tuned)
    made = {t for op in tuned for t in op.outputs}
    forward = []
    for op in graph.ops[first:]:
        if any(op is t for t in tuned) or any(t in made for t in op.inputs):
            forward.append(op)
            made.update(op.outputs)
    needed, result = {logits}, []
    for op in reversed(forward):
        if any(t in needed for t in op.outputs):
            result.append(op)
            needed.update(t for t in op.inputs if t)
    missing = [op.name for op in tuned if op not in result]
    if missing:
        raise ConfigError(f"{flag}: layer(s) {missing} do not feed the model output {logits!r}; tune layers whose "
                          "outputs reach the logits")
    for op in result:
        if isinstance(op, DigitalOp):
            check_supported(op, flag)
        elif op.weights_of is not None or graph.readers(op.name) or (op.conv is not None and op.conv.transposed):
            kind = "a ConvTranspose" if op.conv is not None and op.conv.transposed else "a recurrent layer"
            raise ConfigError(f"{flag}: layer {op.name!r} is {kind} between the tuned layers and the output; hybrid "
                              "training has no backward pass for it; tune only layers after it")
    return result[::-1]


def chip_weights(op: XbarOp, conductance_us: np.ndarray, target) -> np.ndarray:
    """The K x N weights copy 0 of `op` holds on the chip: (g+ - g-) / step per pair (other encodings: their planes
    combined, cimc.weight_encoding.combine), times the weight scales."""
    spec, step = target.array, target.device.step_us
    levels = np.zeros((op.rows, op.cols))
    for tile in op.tiles:
        g = conductance_us[tile.placements[0].array]
        if encoded(target):      # offset, bit-sliced: the planes combined as the reads combine them
            block = combine([(g[p] - target.device.g_min_us) / step
                             for p in tile_planes(tile, tile.placements[0], target)], target)
        else:
            plus, minus = tile_cells(tile, tile.placements[0], spec)
            block = (g[plus] - g[minus]) / step
        levels[tile.row_start:tile.row_start + tile.row_count, tile.col_start:tile.col_start + tile.col_count] = block
    return levels * op.weight_scales.astype(np.float64)[None, :]


def array_input(op: XbarOp, x: np.ndarray) -> np.ndarray:
    """V = q(x) * s_x, the input the array saw (float64)."""
    return quantize_activation(x, op.input_quant).astype(np.float64) * op.input_quant.scale


def xbar_vjp(op: XbarOp, x: np.ndarray, dy: np.ndarray, weights: np.ndarray | None):
    """(dW [K, N], dx or None) of y = V W + b at input x for output gradient dy; dx only when `weights` is given."""
    v = array_input(op, x)
    if op.conv is None:
        cols, dcols = v.reshape(-1, op.rows), dy.reshape(-1, op.cols)
    else:
        cols, _ = im2col(v, op.conv)
        dcols = np.moveaxis(op.conv.lift(dy), 1, -1).reshape(-1, op.cols)
    dw = cols.T @ dcols
    if weights is None:
        return dw, None
    dv = dcols @ weights.T
    dx = dv.reshape(x.shape) if op.conv is None else im2col_adjoint(dv, x.shape, op.conv)
    q = op.input_quant
    inside = (x >= (q.qmin - 0.5) * q.scale) & (x <= (q.qmax + 0.5) * q.scale)   # straight-through estimator
    return dw, dx * inside


def gradients(graph: Graph, ops: list, env: dict, dlogits: np.ndarray, tuned: list[XbarOp],
              weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """dLoss/dW (weight units, K x N) of each tuned layer, back through `ops` (from `path`) from the gradient at the
    logits. `env`: the forward tensors of the batch; `weights`: the chip's weights of every crossbar op on the path
    below the last tuned one that needs dx."""
    grads = {logits_tensor(graph): dlogits.reshape(np.shape(env[logits_tensor(graph)]))}
    names = {op.name for op in tuned}
    first = ops[0]
    result = {}
    for op in reversed(ops):
        dy = grads.pop(op.outputs[0], None)
        if dy is None:
            continue
        if isinstance(op, XbarOp):
            dw, dx = xbar_vjp(op, env[op.inputs[0]], dy, None if op is first else weights[op.name])
            if op.name in names:
                result[op.name] = dw
            parts = [dx]
        else:
            values = [None if not t else graph.constants[t] if t in graph.constants else env.get(t)
                      for t in op.inputs]
            parts = vjp(op, values, env.get(op.outputs[0]), dy, graph.opsets.get("", 17))
        for t, d in zip(op.inputs, parts):
            if d is not None and t and t not in graph.constants:
                grads[t] = grads[t] + d if t in grads else d
    return result
