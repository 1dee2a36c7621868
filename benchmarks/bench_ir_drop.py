"""Benchmark (run by hand, not a test): what wire and access resistance cost on the shipped mCNN.

    .venv/bin/python benchmarks/bench_ir_drop.py [--n 500] [--trials 3] [--json]

Compiles examples/mcnn_mnist (yao2020-mcnn, 0.54 uS programming error, 8-bit ADCs), then for each circuit (none,
1 and 5 ohm per segment, each also with a 5 kohm access transistor, and a passive 0T1R array at 1 ohm) runs the
test images on chip instances 0..trials-1 with the default reader: mean accuracy, agreement with the integer
backend, and the CPU seconds (process time, less sensitive to a loaded machine than wall time) of bind (where the
circuit's effective conductances are computed) and of the reads. Also the exact solver's cost for one 144 x 16
array: the effective conductances (cols solves) and one exact read. Prints markdown or one JSON object.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ART = ROOT / "examples" / "mcnn_mnist" / "artifacts"
CIRCUITS = {"none": [], "1 ohm": ["nonideal.wire_ohm=1"], "5 ohm": ["nonideal.wire_ohm=5"],
            "1 ohm + 5 kohm": ["nonideal.wire_ohm=1", "nonideal.access_ohm=5000"],
            "5 ohm + 5 kohm": ["nonideal.wire_ohm=5", "nonideal.access_ohm=5000"],
            "1 ohm, 0T1R": ["nonideal.wire_ohm=1", "nonideal.cell=0t1r"]}


def run_circuit(manifest, data, overrides, trials: int) -> dict:
    from cimc import Session
    accs, agree, bind, reads = [], [], 0.0, 0.0
    integer = Session(manifest, backend="integer").run(data["x"]).argmax(1)
    for seed in range(trials):
        t0 = time.process_time()
        s = Session(manifest, backend="crossbar", seed=seed, overrides=["nonideal.program_sigma_us=0.54", *overrides])
        t1 = time.process_time()
        top = s.run(data["x"]).argmax(1)
        t2 = time.process_time()
        bind, reads = bind + t1 - t0, reads + t2 - t1
        accs.append(float(np.mean(top == data["y"])))
        agree.append(float(np.mean(top == integer)))
    return {"accuracy": float(np.mean(accs)), "per_seed": accs, "agreement_with_integer": float(np.mean(agree)),
            "bind_cpu_s": bind / trials, "reads_cpu_s": reads / trials}


def solver_cost() -> dict:
    from cimc.targets.ir_drop import effective_conductance, read_currents
    g = np.random.default_rng(0).uniform(2.5, 20, (144, 16))
    v = 0.2 * (np.random.default_rng(1).random((1, 144)) < 0.5)
    effective_conductance(g, 1.0)
    t0 = time.process_time()
    for _ in range(10):
        effective_conductance(g, 1.0)
    t1 = time.process_time()
    for _ in range(10):
        read_currents(g, v, 1.0, cell="0t1r")
    t2 = time.process_time()
    return {"effective_conductance_144x16_ms": (t1 - t0) * 100, "exact_read_144x16_ms": (t2 - t1) * 100}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import cimc
    test = np.load(ART / "test_500.npz")
    data = {"x": test["x"][:args.n], "y": test["y"][:args.n]}
    manifest = cimc.compile(ART / "mcnn.onnx", "yao2020-mcnn", calibration=ART / "calib_200.npz")
    run_circuit(manifest, {k: v[:20] for k, v in data.items()}, [], 1)     # warm-up: numba loads its kernels
    rows = {name: run_circuit(manifest, data, over, args.trials) for name, over in CIRCUITS.items()}
    out = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(), "load": os.getloadavg(),
           "n": args.n, "trials": args.trials, "arrays": manifest.total_arrays, "circuits": rows, **solver_cost()}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"mCNN, {args.n} test images, chips 0..{args.trials - 1}, 0.54 uS programming error, {out['arrays']} "
          f"arrays; {out['date']}, {out['cpus']} CPUs, load {out['load'][0]:.1f}")
    print("| wire / access | accuracy | agreement with integer | bind CPU s | reads CPU s |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['accuracy']:.4f} | {r['agreement_with_integer']:.4f} | {r['bind_cpu_s']:.2f} | "
              f"{r['reads_cpu_s']:.2f} |")
    print(f"one 144x16 array: effective conductances {out['effective_conductance_144x16_ms']:.1f} ms, one exact "
          f"0T1R read {out['exact_read_144x16_ms']:.1f} ms (CPU)")


if __name__ == "__main__":
    main()
