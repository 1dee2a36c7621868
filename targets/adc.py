"""The ADC model beside `AdcSpec`: one conversion rule, and the ADC instances of a chip drawn from its seed.

**Conversion** (`adc_convert`): code = clip(rint(c), lo, top), c = current * (top / full_scale) rounded once to
float32, rint rounding half to even; LSB = full_scale / top (`adc_range`: 0..2^bits-1 unipolar, symmetric
-(2^(bits-1)-1)..2^(bits-1)-1 bipolar).

**Non-idealities** (`[adc]` fields, all in LSB or relative; all zero = the ideal conversion above, bit for bit).
ADC `k` of an array converts its physical columns k * columns_per_adc .. (k+1) * columns_per_adc - 1. Before rounding,

    c' = g_k * c + o_k + INL(g_k * c + o_k) + n,     code = clip(rint(c'), lo, top)

* gain error   g_k = 1 + gain_sigma_rel * z_gain[k]       (per ADC, drawn once per chip)
* offset       o_k = offset_sigma_lsb * z_offset[k]       (per ADC, LSB, drawn once per chip)
* INL          INL(v) = inl_lsb * 4 s (1 - s), s = (v - lo) / (top - lo) clipped to [0, 1]: the bow-shaped integral
               non-linearity of a converter, `inl_lsb` at mid-range, zero at both ends (the same curve in every
               ADC; its DNL is its slope, at most 4 inl_lsb / (top - lo) per code)
* sense noise  n ~ N(0, noise_sigma_lsb^2), a fresh draw per conversion.

**Seeds.** ADC instances come from their own stream of the chip seed: array a draws, from
`adc_generator(seed, a)` (spawn key (ADC_STREAM, a) of np.random.SeedSequence(seed)), z_gain then z_offset, one per ADC
of that array, always both and in that order, so turning one effect off leaves the other's draws unchanged and an
array's ADCs do not depend on how many arrays the chip has. Sense noise comes from per-sample generators keyed
(SENSE_STREAM, layer, copy, sample) (`sense_generators`), beside the read-noise streams (key 0): the same seed gives a
sample the same conversions whatever batch it runs in, and switching sense noise on does not move the read noise.
"""
from __future__ import annotations

import numpy as np

ADC_STREAM = 0xADC          # spawn key of the ADC instances' stream (read noise is key 0, cimc.targets.devices)
SENSE_STREAM = 0xADC + 1    # ... and of the per-sample sense-noise streams


def adc_range(bits: int, bipolar: bool) -> tuple[int, int]:
    """(lowest code, highest code): 0..2^bits-1 unipolar, symmetric -(2^(bits-1)-1)..2^(bits-1)-1 bipolar."""
    top = (1 << (bits - 1)) - 1 if bipolar else (1 << bits) - 1
    return (-top if bipolar else 0), top


def adc_convert(current: np.ndarray, bits: int, full_scale: float, bipolar: bool = False,
                out: np.ndarray | None = None, count: bool = True, lines=None,
                noise: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """An ADC: code = clip(rint(current * (top / full_scale)), lo, top), rint rounding half to even, LSB =
    full_scale / top. `current` and `full_scale` share one unit; the gain top / full_scale is rounded once to float32.
    `lines`: an `AdcLines` (per-line gain, offset and the INL, broadcast over the last axis) for a non-ideal ADC;
    `noise`: sense noise in LSB, of current's shape. Returns (codes as float32, clipped conversions; 0 unless
    `count`). With `out=current` it works in place."""
    lo, top = adc_range(bits, bipolar)
    t = np.multiply(current, np.float32(top / full_scale), out=out, dtype=np.float32)
    if lines is not None:
        lines.apply(t, lo, top)
    if noise is not None:
        t += noise
    np.rint(t, out=t)
    clipped = int(np.count_nonzero(t > top)) + int(np.count_nonzero(t < lo)) if count else 0
    np.clip(t, lo, top, out=t)
    return t, clipped


def adc_generator(seed: int | None, array: int) -> np.random.Generator:
    """The generator of array `array`'s ADC instances (see the module doc)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(ADC_STREAM, int(array)))))


def sense_generators(seed: int | None, key: tuple, samples) -> list[np.random.Generator]:
    """One sense-noise generator per sample (global indices): key (SENSE_STREAM, *key, i) of the seed."""
    return [np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        seed, spawn_key=(SENSE_STREAM,) + tuple(int(k) for k in key) + (int(i),)))) for i in samples]


class AdcLines:
    """The ADC seen by the lines of one read: gain and offset per line (float32, broadcast over the last axis) and
    the INL amplitude; `apply` adds them to code-domain values in place (float32)."""

    def __init__(self, gain: np.ndarray, offset: np.ndarray, inl_lsb: float):
        self.gain = None if np.all(gain == 1) else gain.astype(np.float32)
        self.offset = None if np.all(offset == 0) else offset.astype(np.float32)
        self.inl = float(inl_lsb)

    def apply(self, t: np.ndarray, lo: int, top: int) -> None:
        if self.gain is not None:
            t *= self.gain
        if self.offset is not None:
            t += self.offset
        if self.inl:
            s = (t - np.float32(lo)) * np.float32(1.0 / (top - lo))
            np.clip(s, 0, 1, out=s)
            s *= np.float32(1) - s
            t += s * np.float32(4 * self.inl)


class AdcModel:
    """`AdcModel(spec, seed, n_arrays, cols)`: the ADC instances of one chip (gain and offset per ADC of every
    array), drawn at once from the seed; `lines(arrays, columns)` gives the `AdcLines` of a read's lines, None when
    the ADC is ideal (then conversions are exactly `adc_convert`'s)."""

    def __init__(self, spec, seed: int | None, n_arrays: int, cols: int):
        self.spec = spec
        self.per_array = -(-cols // spec.columns_per_adc)
        shape = (n_arrays, self.per_array)
        self.gain, self.offset_lsb = np.ones(shape), np.zeros(shape)
        if spec.gain_sigma_rel or spec.offset_sigma_lsb:
            for a in range(n_arrays):
                rng = adc_generator(seed, a)
                z_gain, z_offset = rng.standard_normal(self.per_array), rng.standard_normal(self.per_array)
                self.gain[a] = 1.0 + spec.gain_sigma_rel * z_gain
                self.offset_lsb[a] = spec.offset_sigma_lsb * z_offset

    @property
    def ideal(self) -> bool:
        """No gain, offset or INL error (sense noise is separate: `noise_sigma_lsb`)."""
        s = self.spec
        return s.lossless or not (s.gain_sigma_rel or s.offset_sigma_lsb or s.inl_lsb)

    @property
    def noise_sigma_lsb(self) -> float:
        return 0.0 if self.spec.lossless else float(self.spec.noise_sigma_lsb)

    def adc_of(self, columns: np.ndarray) -> np.ndarray:
        """The ADC index (within its array) that converts each physical column."""
        return np.asarray(columns) // self.spec.columns_per_adc

    def lines(self, arrays: np.ndarray, columns: np.ndarray) -> AdcLines | None:
        """The ADCs converting lines on (array, physical column) pairs, or None for an ideal ADC."""
        if self.ideal:
            return None
        k = self.adc_of(columns)
        return AdcLines(self.gain[arrays, k], self.offset_lsb[arrays, k], self.spec.inl_lsb)
