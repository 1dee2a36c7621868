"""What every reader of the crossbar backend shares: the bound chip it reads (`ReadContext`) and the interface one
reader implements (`Reader`). The backend chooses one reader at bind (cimc.backends.crossbar) and never checks
which afterwards: float32 bit-plane GEMMs (plane_reader.py), int8 GEMMs (int8_reader.py), numba table reads
(table_reader.py), one product per layer for a lossless ADC (product_reader.py), or the ADC calibration's ideal
reads (record_reader.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.backends.read_plan import ReadPlan
from cimc.targets.devices import sample_generators
from cimc.weight_encoding import encoded


@dataclass
class ReadContext:
    """The bound chip a reader reads: the effective target, the chip instance, the seed of its per-read streams,
    each layer's stream key (`layer_index`), and the per-layer statistics that diagnostics add to (`stats`)."""
    target: object
    chip: object
    seed: int
    layer_index: dict
    stats: dict
    diagnostics: bool = False
    record_currents: bool = False

    @property
    def offset(self) -> float:
        return self.chip.offset                 # g_min in step units

    @property
    def read_sigma(self) -> float:
        return self.chip.read_sigma             # read noise in step units

    @property
    def sense_sigma(self) -> float:
        return self.chip.adc.noise_sigma_lsb    # the ADCs' sense noise in LSB

    def count(self, plan: ReadPlan, clipped: int, conversions: int) -> None:
        """Diagnostics: the ADC conversions of a read and how many of them clipped."""
        if self.diagnostics:
            self.stats[plan.name]["clipped"] += clipped
            self.stats[plan.name]["conversions"] += conversions

    def encoded_reads(self, plan: ReadPlan) -> bool:
        """Bit-serial reads through a real ADC whose inputs can be encoded before im2col (uint8 codes; diagnostics
        compare against the float codes, so they keep the executor's im2col)."""
        return (not self.target.adc.lossless and not plan.analog and plan.bits <= 8 and not self.diagnostics
                and not self.record_currents)

    def line_reads(self) -> bool:
        """Whether a finite ADC converts device lines one by one (differential "columns", or the lines of another
        weight encoding: cimc.backends.slice_lines) rather than +v/-v difference lines."""
        return (self.target.array.differential == "columns" or encoded(self.target)) and not self.target.adc.lossless


class Reader:
    """One way of reading a layer's copy. `read(plan, c, x, ids)`: x [m, K] (integer codes as floats) on copy c,
    ids the global indices of the samples whose rows x holds -> accumulators [m, N] in weight-level units.
    `read_codes`: the same from uint8 codes (cimc.backends.bit_planes.uint_codes: a convolution's im2col on codes).
    `adopt(plan)`: prepare a plan built after bind (new conductances written: `set_conductances`)."""
    name = "reader"
    grid = 1                # currents in units of step / grid (the int8 and lut readers' conductance grid)

    def __init__(self, ctx: ReadContext):
        self.ctx = ctx
        self.target = ctx.target

    def read(self, plan: ReadPlan, c: int, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def read_codes(self, plan: ReadPlan, c: int, xi: np.ndarray, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"the {self.name} reader reads no uint8 codes")

    def adopt(self, plan: ReadPlan) -> None:
        """Nothing to prepare by default."""

    def worker_view(self) -> "Reader":
        """This reader for one worker thread (cimc.concurrent_chunks); one that keeps no run state is shared."""
        return self

    def noise_generators(self, plan: ReadPlan, c: int, ids: np.ndarray) -> list:
        """One read-noise generator per sample: keyed by (chip seed, layer, copy, global sample index) alone."""
        return sample_generators(self.ctx.seed, (self.ctx.layer_index[plan.name], c), ids)
