"""Pulsed conductance updates: what SET and RESET pulses do to a device (the target's `[pulse]`, spec.PulseSpec).

With x = (g - g_min) / (g_max - g_min) the device's place in its range, one pulse changes g by

    SET:   + dg_up   * u * (1 - x)^gamma_up   * (1 + c2c * N(0, 1))
    RESET: - dg_down * d *       x^gamma_down * (1 + c2c * N(0, 1))

and g stays in [g_min, g_max]. gamma is 0 for "linear" (a constant step up to hard bounds), 1 for "soft-bounds"
(the step shrinks linearly to zero at the bound; from g_0, n SET pulses give the closed form
G_n = G_max - (G_max - G_0)(1 - dg_up / (g_max - g_min))^n, and n RESET pulses
G_n = G_min + (G_0 - G_min)(1 - dg_down / (g_max - g_min))^n), the pulse fields for "power-step". These are
aihwkit's SoftBoundsDevice and PowStepDevice (Fusi & Abbott 2007) in conductance units: dg_up/dg_down are dw_min
with its up_down asymmetry, c2c is dw_min_std (multiplicative, per pulse), d2d is dw_min_dtod: the factors u and d,
max(0, 1 + d2d * N(0, 1)) per device and direction, drawn once per chip from its seed.

A write asks a device to reach a goal conductance. Open loop (`verify_tolerance_us` = 0): the controller fires, in
the goal's direction, the pulses after which the *nominal* model (no d2d, no c2c) is nearest the goal, computed from
the present conductance (`rounding = "stochastic"`: short of the goal, then one more pulse with the probability
that makes the mean nominal change the one asked for); write-verify: pulse, read (exactly), repeat - in whichever direction the read asks - until
the device is within the tolerance. Either way at most `max_pulses` per write.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.errors import TargetError

_GAMMA = {"linear": 0.0, "soft-bounds": 1.0}
PULSE_STREAM = 0x9015E      # spawn key of the d2d step factors (reads are key 0, ADCs 0xADC, drivers 0xDAC)


@dataclass(frozen=True)
class PulseModel:
    """The nominal pulse response of a target's devices (uS)."""
    kind: str
    g_min: float
    g_max: float
    dg_up: float
    dg_down: float
    gamma_up: float
    gamma_down: float
    c2c: float
    d2d: float
    tolerance: float
    max_pulses: int
    stochastic: bool = False

    @classmethod
    def from_target(cls, target) -> "PulseModel | None":
        """The target's model, or None for `pulse.model = "none"` (writes set conductances directly)."""
        p, dev = target.pulse, target.device
        if p.model == "none":
            return None
        span = dev.g_max_us - dev.g_min_us
        for name in ("dg_up_us", "dg_down_us"):
            if getattr(p, name) >= span:
                raise TargetError(f"pulse.{name} = {getattr(p, name)!r}: one pulse must move a device by less than "
                                  f"its range g_max - g_min = {span:g} uS")
        gu, gd = _GAMMA.get(p.model, p.gamma_up), _GAMMA.get(p.model, p.gamma_down)
        return cls(p.model, dev.g_min_us, dev.g_max_us, p.dg_up_us, p.dg_down_us, gu, gd, p.c2c_sigma_rel,
                   p.d2d_sigma_rel, p.verify_tolerance_us, p.max_pulses, p.rounding == "stochastic")

    @property
    def verify(self) -> bool:
        return self.tolerance > 0

    def step(self, g: np.ndarray, up: np.ndarray, u=1.0, d=1.0) -> np.ndarray:
        """Signed mean change of one pulse at conductance g (SET where `up`), with per-device factors u, d."""
        x = np.clip((g - self.g_min) / (self.g_max - self.g_min), 0.0, 1.0)
        return np.where(up, self.dg_up * u * (1.0 - x) ** self.gamma_up, -self.dg_down * d * x ** self.gamma_down)

    def pulse(self, g: np.ndarray, up: np.ndarray, u=1.0, d=1.0, rng: np.random.Generator | None = None):
        """g after one pulse (SET where `up`, RESET elsewhere), c2c noise drawn from rng, kept in [g_min, g_max]."""
        dg = self.step(g, up, u, d)
        if self.c2c and rng is not None:
            dg = dg * (1.0 + self.c2c * rng.standard_normal(np.shape(g)))
        return np.clip(g + dg, self.g_min, self.g_max)

    def planned(self, g: np.ndarray, goal: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Open loop: signed pulse counts (+SET, -RESET), one direction per write, at most max_pulses. "nearest"
        rounding: the count after which the nominal model is nearest `goal`. "stochastic": the pulses that stay
        short of the goal, plus one more with probability (what is left) / (the next pulse's step), one uniform
        draw from rng per device asked to change (flat order): the mean nominal change is then the change asked
        for, however small (as aihwkit's stochastic pulse trains), where "nearest" drops changes below half a step."""
        g, goal = np.asarray(g, np.float64).ravel(), np.asarray(goal, np.float64).ravel()
        up = goal > g
        n = np.zeros(g.shape, np.int64)
        pred = g.copy()
        asked = np.flatnonzero(goal != g)
        active = asked
        for _ in range(self.max_pulses):
            if not active.size:
                break
            cand = self.pulse(pred[active], up[active])
            if self.stochastic:          # short of (or exactly at) the goal
                keep = np.where(up[active], cand <= goal[active], cand >= goal[active]) & (cand != pred[active])
            else:
                keep = np.abs(goal[active] - cand) < np.abs(goal[active] - pred[active])
            active, cand = active[keep], cand[keep]
            pred[active] = cand
            n[active] += 1
        if self.stochastic and asked.size:
            step = np.abs(self.step(pred[asked], up[asked]))
            left = np.abs(goal[asked] - pred[asked])
            frac = np.divide(left, step, out=np.zeros_like(left), where=step > 0)
            extra = (rng.random(asked.size) < frac) & (n[asked] < self.max_pulses)
            n[asked[extra]] += 1
        return np.where(up, n, -n)

    def curve(self, g0: float, set_pulses: int, reset_pulses: int) -> np.ndarray:
        """The nominal conductance after each of `set_pulses` SET then `reset_pulses` RESET pulses from g0 (Li 2018's
        potentiation/depression cycle), g0 first."""
        g = [float(g0)]
        for k in range(set_pulses + reset_pulses):
            g.append(float(self.pulse(np.array(g[-1]), np.array(k < set_pulses))))
        return np.array(g)


def d2d_generator(seed: int | None) -> np.random.Generator:
    """The chip's stream of pulse-step factors: spawn key (PULSE_STREAM,) of np.random.SeedSequence(seed),
    independent of its devices, ADCs, drivers and reads."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(PULSE_STREAM,))))


class PulsedDevices:
    """A chip's devices under a pulse model: the per-device step factors (d2d) of chip `seed`, [shape] (the
    chip's [arrays, rows, cols] or one array's [rows, cols]), SET factors then RESET factors in C order from
    d2d_generator(seed). A device's factors depend on the seed and the shape only, never on what is written."""

    def __init__(self, model: PulseModel, shape, seed: int | None):
        self.model = model
        rng = d2d_generator(seed)
        self.up = np.maximum(1.0 + model.d2d * rng.standard_normal(shape), 0.0)
        self.down = np.maximum(1.0 + model.d2d * rng.standard_normal(shape), 0.0)
        self.set_pulses = self.reset_pulses = 0          # fired by `write` so far

    def counts(self) -> dict:
        """The pulses fired so far, as results report them."""
        return {"model": self.model.kind, "total": self.set_pulses + self.reset_pulses, "set": self.set_pulses,
                "reset": self.reset_pulses}

    @classmethod
    def for_target(cls, target, shape, seed: int | None) -> "PulsedDevices | None":
        """The target's pulsed devices, or None where `pulse.model = "none"`."""
        model = PulseModel.from_target(target)
        return None if model is None else cls(model, shape, seed)

    def write(self, g: np.ndarray, goal: np.ndarray, rng: np.random.Generator, index=...):
        """Drive devices `index` (any numpy index into the chip's shape; g and goal have the shape it selects)
        towards `goal`. Returns (new g, SET pulses, RESET pulses), the counts per device. c2c draws come from rng,
        one per pulse, pulse round by pulse round."""
        m = self.model
        shape = np.shape(g)
        g = np.asarray(g, np.float64).ravel().copy()
        goal = np.asarray(goal, np.float64).ravel()
        u, d = self.up[index].ravel(), self.down[index].ravel()
        n_set, n_reset = np.zeros(g.shape, np.int64), np.zeros(g.shape, np.int64)
        if m.verify:
            active = np.flatnonzero(np.abs(goal - g) > m.tolerance)
            for _ in range(m.max_pulses):
                if not active.size:
                    break
                up = goal[active] > g[active]
                g[active] = m.pulse(g[active], up, u[active], d[active], rng)
                n_set[active] += up
                n_reset[active] += ~up
                active = active[np.abs(goal[active] - g[active]) > m.tolerance]
        else:
            signed = m.planned(g, goal, rng)
            count, up_all = np.abs(signed), signed > 0
            active = np.flatnonzero(count)
            fired = 0
            while active.size:
                g[active] = m.pulse(g[active], up_all[active], u[active], d[active], rng)
                fired += 1
                active = active[count[active] > fired]
            n_set, n_reset = np.where(up_all, count, 0), np.where(up_all, 0, count)
        self.set_pulses += int(n_set.sum())
        self.reset_pulses += int(n_reset.sum())
        return g.reshape(shape), n_set.reshape(shape), n_reset.reshape(shape)
