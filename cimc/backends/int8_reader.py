"""The crossbar backend's `int8` reader (gemm="int8"): the float32 reader's bit-plane GEMMs as onnxruntime
MatMulInteger (uint8 planes x int8 conductances, exact int32 sums) on a conductance grid of step / grid; and that
grid and session, which the ADC calibration's exact reads share (record_reader.py)."""
from __future__ import annotations

import warnings

import numpy as np

from cimc.backends.plane_reader import PlaneReader
from cimc.backends.read_plan import ReadPlan
from cimc.backends.reader import ReadContext
from cimc.errors import ConfigError
from cimc.weight_encoding import encoded


class Int8Reader(PlaneReader):
    """Bit-plane reads on the int8 grid (`int8_grid`); analog reads stay float32 GEMMs."""
    name = "int8"

    def __init__(self, ctx: ReadContext, plans: dict, grid: int):
        super().__init__(ctx)
        self.grid = grid
        for plan in plans.values():
            self.adopt(plan)
        self.session = matmul_integer_session()

    def quantised(self, plan: ReadPlan) -> bool:
        return not plan.analog

    def adopt(self, plan: ReadPlan) -> None:
        quantise_plan(plan, self.target, self.grid)


def int8_grid(plans: dict, target, grid: int | None = None) -> int | None:
    """gemm="int8": read conductances on a grid of step / grid, grid = floor(127 / largest |conductance|) in steps
    (14 for Yao's devices with 0.54 uS programming error: a 0.18 uS grid), so that bit-planes (uint8) times
    conductances (int8) run as onnxruntime's MatMulInteger with exact int32 sums. Ideal levels stay exact. None
    (float32 reads) where no layer reads bit-planes, or a conductance does not fit int8 (with a warning)."""
    columns = target.array.differential == "columns" or encoded(target)     # lines of other encodings
    mats = [m for p in plans.values() if not p.analog for b in p.blocks
            for m in (b.lines if columns else b.diff)]
    if not mats:
        return None
    largest = max(float(np.abs(m).max(initial=0.0)) for m in mats)
    if largest > 127:
        warnings.warn(f"crossbar backend: a conductance of {largest:.0f} steps (device.levels="
                      f"{target.device.levels}) does not fit gemm='int8'; using float32", stacklevel=4)
        return None
    if grid is not None and grid * largest > 127:
        raise ConfigError(f"conductance_grid={grid}: a conductance of {largest:.2f} steps does not fit int8 on "
                          f"that grid; at most {int(127 // largest)} for gemm='int8'")
    return grid or max(1, int(127 // max(largest, 1e-30)))


def quantise_plan(plan: ReadPlan, target, grid: int) -> None:
    """A layer's conductances (lines, or differences) on the int8 grid chosen at bind (also after
    `set_conductances` rewrote them: hybrid training with gemm='int8')."""
    if plan.analog:
        return
    columns = target.array.differential == "columns" or encoded(target)   # lines of other encodings
    for b in plan.blocks:
        mats = [np.rint(np.asarray(m, np.float64) * grid) for m in (b.lines if columns else b.diff)]
        if any(np.abs(m).max(initial=0.0) > 127 for m in mats):
            raise ConfigError(f"gemm='int8': conductances written to layer {plan.name!r} no longer fit the int8 "
                              f"grid of step / {grid} chosen at bind; choose gemm='float32' or 'lut'")
        b.quantised = [m.astype(np.int8) for m in mats]


def matmul_integer_session():
    """onnxruntime MatMulInteger: uint8 planes [M, K] x int8 conductances [K, N] -> int32 [M, N]."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    g = helper.make_graph([node], "planes_x_conductances",
                          [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", "K"]),
                           helper.make_tensor_value_info("B", TensorProto.INT8, ["K", "N"])],
                          [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", "N"])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
