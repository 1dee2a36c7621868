"""The IR: a small typed graph of two kinds of op, in execution order.

* `XbarOp` — a Conv/ConvTranspose/Gemm/MatMul with a constant weight, already lowered to a K x N float matrix.
  **im2col row order** (the one place it is defined): row k of a conv matrix is input channel c, kernel row i,
  kernel column j with k = (c * kh + i) * kw + j — the order of ONNX's weight W[cout, cin/groups, kh, kw] flattened;
  a Conv3d's rows are (c, kd, kh, kw) likewise, k = ((c * kd + a) * kh + i) * kw + j.
  A **ConvTranspose** is the transposed kernel: row c is input channel c, column n = cout * (kd*kh*kw) + kernel
  offset (ONNX's W[cin, cout/groups, *kernel] flattened per input channel). It is read once per *input* position;
  the run stage (cimc.overlap_add) adds each product's kernel offsets into the output (overlap-add), crops, and
  adds the bias once per output channel (its bias has out_channels entries, not N).
  A grouped conv (or ConvTranspose) is logically one block-diagonal matrix over all input channels (group g owns
  rows [g*K/groups, (g+1)*K/groups) and columns [g*N/groups, (g+1)*N/groups)); tiles that lie wholly outside the
  blocks hold only structural zeros and get no array, so depthwise layers pack many groups per array.
  **Compact blocks**: such an op's `matrix` (and `levels`, and the backends' per-layer level and conductance
  matrices) hold only the diagonal blocks, shape [groups, K/groups, N/groups], never the K x N zeros around them
  (a depthwise layer of C channels would hold C times its weights). An ungrouped op's are plain K x N. The helpers
  below (`block_slice`, `put_block_slice`, `block_matmul`, `dense`) are how code reads either form.
  A matmul op (`conv is None`) multiplies the last axis of its input: y[..., n] = sum_k x[..., k] W[k, n] + b[n];
  per-head weights make it block-diagonal, held as compact blocks like a grouped conv (its `groups` = blocks).
  **Shared weights** (`weights_of`): an op that reads another crossbar op's arrays (a recurrent op's h_{t-1} R^T,
  read once per time step from the same devices; cimc.recurrent_lowering). It has its own input, input quantiser,
  bias, ADC full scale and read-noise stream (each read is a new analog read), but no matrix, levels, tiles or
  copies of its own: its `matrix`, `levels` and `weight_scales` are the owner's, its tiles and placements are the
  owner's (`Graph.array_owner`), and the owner's replication applies to it. Passes that place arrays walk
  `Graph.mapped_ops()` (the owners); passes that run or calibrate reads walk `Graph.xbar_ops()` (every read).
* `DigitalOp` — everything else: the ONNX node itself (op type, domain, attributes and inputs as in the model,
  constant inputs named in `Graph.constants`), run by onnxruntime (cimc.onnx_segments), never re-implemented.

Passes fill in XbarOp fields: quantisation (`input_quant`, `levels`, `weight_scales`), tiles, replicas and placements.
The manifest is this graph serialised; `Graph.ops` is in topological (execution) order: the front end puts the
ONNX nodes in that order (networkx) before it builds the ops.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np


@dataclass
class TensorInfo:
    name: str
    shape: tuple            # ints; None for the symbolic batch (or any unknown) dimension
    dtype: str = "float32"


@dataclass
class ConvGeometry:
    """A convolution's geometry, per *run* axis: a Conv1d runs as a height-1 2-D conv (kernel, strides, dilations
    1 and no pads on the first axis; `spatial_rank` 1 says so), a Conv2d on its two axes, a Conv3d on three
    (depth, height, width). `transposed`: a ConvTranspose (see cimc.ir's module doc for its matrix), whose `pads`
    crop the full overlap-add result and whose `output_padding` appends zeros at the end of each axis."""
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]                  # begins..., ends... (ONNX order; 2-D: top, left, bottom, right)
    dilations: tuple[int, ...]
    groups: int
    in_channels: int
    out_channels: int
    spatial_rank: int = 2                  # axes of the tensor: 1 for Conv1d (run as height-1 2-D conv), 2, 3
    transposed: bool = False
    output_padding: tuple[int, ...] = ()   # transposed only, one per run axis

    @property
    def rank(self) -> int:
        """The run axes: 2 for a Conv1d or Conv2d, 3 for a Conv3d."""
        return len(self.kernel)

    @property
    def planar(self) -> bool:
        """A forward 2-D (or lifted 1-D) conv: what the backends' whole-convolution fast paths run."""
        return self.rank == 2 and not self.transposed

    def lift(self, x):
        """[B, C, W] -> [B, C, 1, W] for a Conv1d; other ranks unchanged (a view)."""
        return x[:, :, None, :] if self.spatial_rank == 1 else x

    def unlift(self, y):
        return y[:, :, 0, :] if self.spatial_rank == 1 else y

    def output_size(self, sizes) -> tuple[int, ...]:
        """Output sizes of the run axes from the input's (lifted) ones."""
        n = self.rank
        reach = [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]
        if self.transposed:   # the full overlap-add (size - 1) * s + reach, cropped by pads, zeros appended
            return tuple((size - 1) * s + r - self.pads[i] - self.pads[n + i] + self.output_padding[i]
                         for i, (size, s, r) in enumerate(zip(sizes, self.strides, reach)))
        return tuple((size + self.pads[i] + self.pads[n + i] - r) // s + 1
                     for i, (size, s, r) in enumerate(zip(sizes, self.strides, reach)))

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        return self.output_size((h, w))


@dataclass
class ActQuant:
    """Symmetric activation quantisation at a crossbar input: q = clip(rint(x / scale), qmin, qmax), zero point 0.
    Unsigned (0..2^bits-1) where calibration saw no negative value, else signed (-(2^(bits-1)-1)..2^(bits-1)-1)."""
    scale: float
    signed: bool
    bits: int

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def qmin(self) -> int:
        return -self.qmax if self.signed else 0


@dataclass
class Placement:
    """Where one copy of a tile sits: physical array id and the offset of the tile's first row/column on it."""
    array: int
    row_offset: int = 0
    col_offset: int = 0
    row_order: list[int] | None = None   # defect-aware placement: physical row (from row_offset) of each tile row


@dataclass
class Tile:
    """A block of the layer's logical K x N matrix: rows [row_start, row_start+row_count), outputs likewise."""
    row_start: int
    row_count: int
    col_start: int
    col_count: int
    placements: list[Placement] = field(default_factory=list)   # one per replica


@dataclass
class XbarOp:
    name: str
    op_type: str                   # source op: Conv, ConvTranspose, Gemm, MatMul, Einsum, or LSTM, GRU, RNN
    inputs: list[str]
    outputs: list[str]
    matrix: np.ndarray             # float32 K x N
    bias: np.ndarray | None        # float32, output_channels entries
    conv: ConvGeometry | None = None
    source_nodes: list[str] = field(default_factory=list)
    # quantize pass
    input_quant: ActQuant | None = None
    levels: np.ndarray | None = None          # int16 K x N, signed weight levels -max_level..max_level
    weight_scales: np.ndarray | None = None   # float32 N: weight = level * scale
    # tile / replicate / allocate passes
    tiles: list[Tile] = field(default_factory=list)
    replicas: int = 1
    positions: int = 1                        # reads per inference: output positions of a conv, input positions
                                              # of a ConvTranspose, 1 for a matmul
    adc_full_scale_ua: float | None = None    # calibrated ADC full scale (cimc.backends.crossbar)
    weights_of: str | None = None             # the op whose arrays this op reads (shared weights), or None
    average: int = 1                          # copies read together and averaged per sample (replicas = average x
                                              # pipeline groups; cimc.passes.copies_for)
    adc_slice_full_scale_ua: list | None = None   # bit-sliced: calibrated full scale per slice (None: a slice
                                                  # that never carries current), or None (not recorded)
    kind = "crossbar"

    def __post_init__(self):
        # a grouped conv given its K x N block-diagonal matrix keeps only the blocks (cimc.ir: compact blocks)
        if self.conv is not None and self.conv.groups > 1 and self.matrix.ndim == 2:
            self.matrix = compact(self.matrix, self.conv.groups)
            if self.levels is not None and self.levels.ndim == 2:
                self.levels = compact(self.levels, self.conv.groups)

    @property
    def groups(self) -> int:
        """Diagonal blocks of the matrix: a grouped conv's groups (its matrix is compact, [groups, K/g, N/g], unless
        built K x N by hand after construction: the slow dense form, which every pass still reads the same way)."""
        if self.matrix.ndim == 3:
            return int(self.matrix.shape[0])
        return int(self.conv.groups) if self.conv is not None else 1

    @property
    def rows(self) -> int:
        return block_rows(self.matrix)

    @property
    def cols(self) -> int:
        return block_cols(self.matrix)

    @property
    def output_channels(self) -> int:
        """Channels of the op's output, the length of its bias: N, except for a ConvTranspose (N / kernel size)."""
        return self.conv.out_channels if self.conv is not None else self.cols

    @property
    def structural_mask_blocks(self) -> list[tuple[int, int, int, int]]:
        """(row0, row1, col0, col1) blocks that may hold non-zero weights (one per group)."""
        groups = self.groups
        kg, ng = self.rows // groups, self.cols // groups
        return [(g * kg, (g + 1) * kg, g * ng, (g + 1) * ng) for g in range(groups)]


# -- block-diagonal matrices ---------------------------------------------------------------------------------------
# A matrix is either K x N (2-D) or the diagonal blocks [G, K/G, N/G] of a K x N block-diagonal matrix (3-D).
def block_rows(a: np.ndarray) -> int:
    return int(a.shape[0] * a.shape[1]) if a.ndim == 3 else int(a.shape[0])


def block_cols(a: np.ndarray) -> int:
    return int(a.shape[0] * a.shape[2]) if a.ndim == 3 else int(a.shape[1])


def _overlaps(a: np.ndarray, r0: int, r1: int, c0: int, c1: int):
    """(group, rows in the window, rows in the block, cols in the window, cols in the block) for every diagonal
    block that meets rows [r0, r1) x columns [c0, c1) of the block-diagonal matrix."""
    _, kg, ng = a.shape
    for g in range(max(r0 // kg, c0 // ng), min((r1 - 1) // kg, (c1 - 1) // ng) + 1):
        br0, br1 = max(r0, g * kg), min(r1, (g + 1) * kg)
        bc0, bc1 = max(c0, g * ng), min(c1, (g + 1) * ng)
        if br0 < br1 and bc0 < bc1:
            yield (g, slice(br0 - r0, br1 - r0), slice(br0 - g * kg, br1 - g * kg),
                   slice(bc0 - c0, bc1 - c0), slice(bc0 - g * ng, bc1 - g * ng))


def block_slice(a: np.ndarray, r0: int, r1: int, c0: int, c1: int, dtype=None) -> np.ndarray:
    """Rows [r0, r1) x columns [c0, c1) of the (logical) matrix, dense: structural zeros where no block lies."""
    if a.ndim == 2:
        return a[r0:r1, c0:c1] if dtype is None else a[r0:r1, c0:c1].astype(dtype)
    out = np.zeros((r1 - r0, c1 - c0), a.dtype if dtype is None else dtype)
    for g, wr, br, wc, bc in _overlaps(a, r0, r1, c0, c1):
        out[wr, wc] = a[g, br, bc]
    return out


def put_block_slice(a: np.ndarray, r0: int, c0: int, values: np.ndarray) -> None:
    """a[r0:, c0:] = values for a dense window of the logical matrix; in a compact matrix only the parts inside the
    diagonal blocks are kept (the rest is structural zeros: no weight is there)."""
    if a.ndim == 2:
        a[r0:r0 + values.shape[0], c0:c0 + values.shape[1]] = values
        return
    for g, wr, br, wc, bc in _overlaps(a, r0, r0 + values.shape[0], c0, c0 + values.shape[1]):
        a[g, br, bc] = values[wr, wc]


def block_matmul(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """x [m, K] @ the (logical) K x N matrix; group by group for a compact one (what a dense product with its
    structural zeros gives: exactly, for the integer sums of levels)."""
    if a.ndim == 2:
        return x @ a
    g, kg, ng = a.shape
    y = np.matmul(x.reshape(len(x), g, kg).transpose(1, 0, 2), a)      # [G, m, ng]
    return y.transpose(1, 0, 2).reshape(len(x), g * ng)


def per_column(values: np.ndarray, a: np.ndarray) -> np.ndarray:
    """A vector over the N columns shaped to broadcast against the matrix `a` (either form)."""
    return values.reshape(a.shape[0], 1, a.shape[2]) if a.ndim == 3 else values[None, :]


def dense(a: np.ndarray) -> np.ndarray:
    """The K x N matrix itself (materialises a compact one: small layers and slow references only)."""
    return a if a.ndim == 2 else block_slice(a, 0, block_rows(a), 0, block_cols(a))


def compact(matrix: np.ndarray, groups: int) -> np.ndarray:
    """The diagonal blocks [groups, K/groups, N/groups] of a K x N block-diagonal matrix (a copy); the matrix itself
    for groups == 1."""
    if groups == 1:
        return matrix
    kg, ng = matrix.shape[0] // groups, matrix.shape[1] // groups
    d = np.arange(groups)
    return np.ascontiguousarray(matrix.reshape(groups, kg, groups, ng)[d, :, d, :])


@dataclass
class DigitalOp:
    """An ONNX node kept as it is: `inputs` in ONNX order ("" for an omitted optional input; constant inputs are
    named in Graph.constants), `outputs` likewise, `attributes` the node's onnx.AttributeProto list, verbatim."""
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attributes: list = field(default_factory=list)      # onnx.AttributeProto
    domain: str = ""
    source_nodes: list[str] = field(default_factory=list)
    kind = "digital"

    def attr(self, name: str, default=None):
        """An attribute's Python value (onnx.helper.get_attribute_value), or `default`."""
        from onnx import helper
        for a in self.attributes:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default


class SessionCache:
    """onnxruntime sessions of a graph's digital segments (cimc.onnx_segments). Never copied or pickled: a copy
    of the graph starts with an empty cache and builds its sessions again when it first runs."""

    def __init__(self):
        self.sessions: dict = {}

    def __deepcopy__(self, memo):
        return SessionCache()

    def __copy__(self):
        return SessionCache()

    def __reduce__(self):
        return (SessionCache, ())


Op = Union[XbarOp, DigitalOp]


@dataclass
class Graph:
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: list[Op]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)   # constant inputs of digital ops, by tensor
    opsets: dict[str, int] = field(default_factory=lambda: {"": 17})  # the model's opset per domain ("" = ai.onnx)
    sessions: SessionCache = field(default_factory=SessionCache, compare=False, repr=False)

    def xbar_ops(self) -> list[XbarOp]:
        """Every crossbar op: every read of the arrays, shared-weight readers included."""
        return [op for op in self.ops if isinstance(op, XbarOp)]

    def mapped_ops(self) -> list[XbarOp]:
        """The crossbar ops that own arrays (tiles, copies, placements): all but the shared-weight readers."""
        return [op for op in self.ops if isinstance(op, XbarOp) and op.weights_of is None]

    def array_owner(self, op: XbarOp) -> XbarOp:
        """The op whose tiles and placements `op` reads: itself, or the op named by its `weights_of`."""
        return op if op.weights_of is None else self.op(op.weights_of)

    def readers(self, name: str) -> list[XbarOp]:
        """The shared-weight ops that read the arrays of op `name`."""
        return [op for op in self.ops if isinstance(op, XbarOp) and op.weights_of == name]

    def reads_per_inference(self, op: XbarOp) -> int:
        """Positions read per inference from the arrays of `op` (an owner): its own and its readers'."""
        return int(op.positions) + sum(int(r.positions) for r in self.readers(op.name))

    def share_weights(self) -> None:
        """Give every shared-weight reader its owner's matrix, levels, scales and copies (after a pass changed
        them on the owner)."""
        for op in self.xbar_ops():
            if op.weights_of is not None:
                owner = self.op(op.weights_of)
                op.matrix, op.levels, op.weight_scales, op.replicas = (owner.matrix, owner.levels,
                                                                       owner.weight_scales, owner.replicas)
                op.average = owner.average

    def op(self, name: str) -> Op:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(name)

    def producer(self, tensor: str) -> Op | None:
        for op in self.ops:
            if tensor in op.outputs:
                return op
        return None

    def consumers(self, tensor: str) -> list[Op]:
        return [op for op in self.ops if tensor in op.inputs]

    def is_graph_output(self, tensor: str) -> bool:
        return any(t.name == tensor for t in self.outputs)
