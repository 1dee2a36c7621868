"""Benchmark (run by hand, not a test): one in-situ training batch on a passive 0T1R array with wire resistance.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_insitu_0t1r.py [--wire 1] [--batches 1] [--json]

The chip of `cimc insitu --set nonideal.cell=0t1r --wire-resistance 1ohm` (li2018, seed 0: 11% stuck at 10 uS, 2%
update variation), its initial weights programmed, then `--batches` batches of train_in_situ's loop (the fc2 weights
read back row by row, the forward pass of 50 digits, both layers' updates), alternated: twice with the chip's reads
(ir_drop.FloatingRowReads: one factorisation per array state, a small dense solve per drive pattern) and with the
exact solve per drive pattern (ir_drop.read_currents: one sparse LU per pattern, what every read cost before);
and once on a 1T1R array (I = v . T) for scale.
Prints the CPU seconds (process time: less sensitive to a loaded machine than wall time) of each and the largest
difference of the two runs' reads relative to the largest read.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import numpy as np


def batches(chip_cls, wire: float, n: int, cell: str = "0t1r"):
    from cimc.insitu import _batches, _softmax_grad, chip_for_target, init_weights, load_digits_split
    from cimc.targets.registry import load_target
    target = load_target("li2018", [f"nonideal.cell={cell}", f"nonideal.wire_ohm={wire!r}"])
    chip = chip_for_target(target, seed=0)
    chip.__class__ = chip_cls
    for k, w in enumerate(init_weights(0)):
        chip.program(k, w)
    data = load_digits_split(0)
    reads = []
    t0 = time.process_time()
    for idx in _batches(0, len(data.y_train), 1)[0][:n]:      # train_in_situ's loop
        x, y = data.x_train[idx], data.y_train[idx]
        w2 = chip.read_weights(1)
        z1, h, logits = chip.forward(x)
        d2 = _softmax_grad(logits, y)
        d1 = (d2 @ w2.T) * (z1 > 0)
        chip.apply_update(1, -0.1 * (h.T @ d2))
        chip.apply_update(0, -0.1 * (x.T @ d1))
        reads += [w2, z1, logits]
    return time.process_time() - t0, reads


def main() -> None:
    from cimc.insitu import InSituChip
    from cimc.targets.ir_drop import read_currents

    class ExactReads(InSituChip):
        """Every 0T1R read solved on its own: one sparse LU of the whole array per drive pattern."""
        def _sneak_currents(self, volts):
            return read_currents(self.g, volts, self.wire_ohm, 0.0, "0t1r")

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wire", type=float, default=1.0, help="ohm per segment (default 1)")
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    fast_s, fast = batches(InSituChip, args.wire, args.batches)
    exact_s, exact = batches(ExactReads, args.wire, args.batches)
    fast_again_s, _ = batches(InSituChip, args.wire, args.batches)
    held_s, _ = batches(InSituChip, args.wire, args.batches, "1t1r")
    rel = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(fast, exact, strict=True))
    out = {"date": datetime.date.today().isoformat(), "wire_ohm": args.wire, "batches": args.batches,
           "load_average": os.getloadavg()[0], "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
           "cpu_s_per_batch": {"floating_row_reads": [fast_s / args.batches, fast_again_s / args.batches],
                               "exact_per_pattern": exact_s / args.batches,
                               "1t1r": held_s / args.batches},
           "max_relative_difference": rel}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    c = out["cpu_s_per_batch"]
    print(f"one in-situ batch, li2018 0T1R at {args.wire:g} ohm ({args.batches} batch(es); load "
          f"{out['load_average']:.1f}): FloatingRowReads {c['floating_row_reads'][0]:.2f} / "
          f"{c['floating_row_reads'][1]:.2f} s CPU, exact solve per pattern {c['exact_per_pattern']:.1f} s CPU "
          f"(1T1R: {c['1t1r']:.2f} s); "
          f"reads differ by {rel:.1e} of the largest")


if __name__ == "__main__":
    main()
