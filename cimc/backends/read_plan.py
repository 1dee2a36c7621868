"""What the crossbar backend builds at bind for each layer: its row tiles (conductances per copy, in step units, and
what each reader derives from them) and the read plan (input coding, ADC range and full scale, dtypes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RowTile:
    """One row tile of a layer: logical rows [r0, r1) and the outputs its tiles cover, with per-copy matrices."""
    r0: int
    r1: int
    cols: np.ndarray                                     # logical output indices, tiles in col_start order
    index: object = None                                 # cols as a slice where contiguous
    diff: list = field(default_factory=list)             # per copy [R, nb]: G'+ - G'- (step units)
    lines: list = field(default_factory=list)            # per copy [R, 2nb]: [o + G'+ | o + G'-] ("columns" only)
    quantised: list = field(default_factory=list)        # gemm="int8": per copy, lines (or diff) x grid as int8
    tables: dict = field(default_factory=dict)           # gemm="lut": per copy, lut_reads.table_pieces
    conv_tables: dict = field(default_factory=dict)      # gemm="lut", direct conv reads: per copy, of a conv_table
    conv_groups: tuple | None = None                     # ... and where its groups read (lut_reads.conv_groups)
    adc: list = field(default_factory=list)              # per copy: the AdcLines of its lines (non-ideal ADC only)
    reference: np.ndarray | None = None                  # offset reference column: per output, its tile's
    #                                                      reference line among those after the nb weight lines


@dataclass
class ReadPlan:
    name: str
    rows: int
    cols: int
    replicas: int
    bits: int
    signed: bool
    analog: bool
    bipolar: bool
    dtype: type                      # accumulator dtype: float32 while exact, else float64
    code_dtype: type
    blocks: list
    effective: list                  # per copy [K, N] in step units (G'+ - G'- where a tile sits, else 0)
    exact_levels: np.ndarray | None  # [K, N] the levels programmed (for diagnostics; None in ADC calibration)
    weights: np.ndarray              # plane weights
    unit_ua: float                   # one current unit (step units x V_read, / qmax for analog) in uA
    full_scale: float | None = None  # ADC full scale in current units (None for a lossless ADC)
    full_scale_source: str = "lossless"
    slice_full_scale: np.ndarray | None = None   # bit-sliced, adc.full_scale_per_slice: per slice, current units
    noise_lut: np.ndarray | None = None   # sum_j w_j^2 bit_j(q), indexed by q - qmin (bit-serial read noise)
    conv_sessions: dict = field(default_factory=dict)   # per copy: onnxruntime Conv of `effective` (single-product reads)
    qmin: int = 0
    qmax: int = 0
    channels: list | None = None     # per block, its input channels (c0, c1) where conv reads can skip im2col
    drift_scale: np.ndarray | None = None   # per copy: global drift compensation's alpha (None: off)
    conv_route: str | None = None    # how `conv` reads it, chosen at bind (reader_choice.conv_route)
    average: int = 1                 # copies read together and averaged per sample (groups of `average` copies)
