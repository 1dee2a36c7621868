"""Benchmark (run by hand, not a test): one layer under the `pcm-aihwkit` preset, side by side with aihwkit's own PCM
model on the same conductance targets (issue 12, item 4).

    .venv/bin/python benchmarks/bench_pcm_aihwkit.py [--seeds 20] [--json]
        [--aihwkit-python /tmp/aihwkit_venv/bin/python --aihwkit-src /tmp/aihwkit_src/aihwkit-1.2.0/src]

The layer: a 256 x 128 MatMul whose weights (seeded Gaussian) are quantised to the preset's 31 signed levels and
placed on one 256x256 array (g+ / g- on adjacent columns), g_T = |level| x 25/15 uS on one device of each pair and
0 uS on the other (aihwkit's single-pair converter). Inputs: 256 seeded 8-bit codes. For each time after
programming (aihwkit's t_inference; cimc's drift_time_s = t_inference + t0, t0 = 20 s) and each of `--seeds`
chip instances, the error of every output against the exact integer product x . W, divided by the exact outputs'
standard deviation, is collected; and per level, the conductances at that time. Three implementations, the same
statistics in:

* cimc:     CrossbarBackend(seed) with the pcm-aihwkit preset (lossless ADC, global drift compensation);
* aihwkit:  aihwkit's PCMLikeNoiseModel itself (src/aihwkit/inference/noise/pcm.py, run under torch in the given
            interpreter) on the same g_T tensors, then aihwkit's GlobalDriftCompensation rule (alpha = mean |W| at
            programming / mean |W| at t, one-hot reads: src/aihwkit/inference/compensation/drift.py) applied to
            the outputs. Only the noise model's modules are loaded (aihwkit's package __init__ files import its
            C++ simulator, which is not needed for the model and is not built here);
* numpy:    a direct numpy transcription of the same formulas (targets/device_stats.py states them), always.

Prints a markdown table (or one JSON object) with the machine and the date: per time, mean / std / 1st and 99th
percentile of the normalised output error and the two-sample Kolmogorov-Smirnov distance of cimc's errors to the
other two (scipy.stats.ks_2samp; the errors of one instance share devices, so its p-value is indicative only);
per level, the conductances' mean and std at that time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROWS, COLS, LEVELS, G_MAX, T0 = 256, 128, 16, 25.0, 20.0
TIMES = {"0 s": 0.0, "1 h": 3600.0, "1 d": 86400.0, "1 y": 365.25 * 86400.0}
SHOW_LEVELS = (1, 5, 10)


def layer(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(weight levels int8 [ROWS, COLS] in -15..15, input codes float32 [256, ROWS] in 0..255)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((ROWS, COLS))
    levels = np.clip(np.rint(w / np.abs(w).max() * (LEVELS - 1)), -(LEVELS - 1), LEVELS - 1).astype(np.int8)
    x = rng.integers(0, 256, (256, ROWS)).astype(np.float32)
    return levels, x


def targets_us(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    step = G_MAX / (LEVELS - 1)
    return np.maximum(levels, 0) * step, np.maximum(-levels, 0) * step


def summarise(errors: np.ndarray, conductances: dict) -> dict:
    return {"mean": float(errors.mean()), "std": float(errors.std()), "p01": float(np.percentile(errors, 1)),
            "p99": float(np.percentile(errors, 99)),
            "levels": {str(k): {"mean_us": float(np.mean(v)), "std_us": float(np.std(v))}
                       for k, v in conductances.items()}}


def _collect(outputs_and_conductances, levels, x):
    """Normalised output errors and per-level conductances of (y, gp, gm) triples (level units, uS)."""
    exact = x.astype(np.float64) @ levels.astype(np.float64)
    errs, cond = [], {k: [] for k in SHOW_LEVELS}
    for y, gp, gm in outputs_and_conductances:
        errs.append(((np.asarray(y, np.float64) - exact) / exact.std()).ravel())
        for k in SHOW_LEVELS:
            cond[k].append(gp[levels == k])
    return np.concatenate(errs), {k: np.concatenate(v) for k, v in cond.items()}


# -- cimc ---------------------------------------------------------------------------------------------------------
def run_cimc(seeds: int) -> dict:
    from cimc.backends.crossbar import CrossbarBackend
    from cimc.ir import ActQuant, Graph, Placement, TensorInfo, Tile, XbarOp
    from cimc.targets.registry import load_target
    levels, x = layer()
    op = XbarOp("fc", "MatMul", ["x"], ["y"], levels.astype(np.float32), None, input_quant=ActQuant(1.0, False, 8),
                levels=levels, weight_scales=np.ones(COLS, np.float32), tiles=[Tile(0, ROWS, 0, COLS, [Placement(0)])])
    graph = Graph([TensorInfo("x", (None, ROWS))], [TensorInfo("y", (None, COLS))], [op])
    out = {}
    for name, t in TIMES.items():
        target = load_target("pcm-aihwkit", [f"nonideal.drift_time_s={t + T0!r}"])
        runs = []
        for seed in range(seeds):
            be = CrossbarBackend(seed=seed)
            be.bind(graph, None, target)
            g = be.chip.conductance_us[0]
            runs.append((be.mvm(op, x, len(x)), g[:, 0::2], g[:, 1::2]))
        out[name] = _collect(runs, levels, x)
    return out


# -- numpy transcription of aihwkit's PCMLikeNoiseModel -------------------------------------------------------------
def run_numpy(seeds: int) -> dict:
    levels, x = layer()
    gp_t, gm_t = targets_us(levels)
    step = G_MAX / (LEVELS - 1)

    def program(g, rng):
        s = 0.26348 + 1.9650 * (g / G_MAX) - 1.1731 * (g / G_MAX) ** 2
        return np.maximum(g + s * rng.standard_normal(g.shape), 0.0)

    def nu_of(g, rng):
        lg = np.log(np.maximum(np.abs(g / G_MAX), 1e-7))
        mu, sd = np.clip(-0.0155 * lg + 0.0244, 0.049, 0.1), np.clip(-0.0125 * lg - 0.0059, 0.008, 0.045)
        return np.abs(mu + sd * rng.standard_normal(g.shape))

    def at(g_prog, nu, t_inf, rng):
        t = t_inf + T0
        g_d = g_prog * (t / T0) ** -nu if t > T0 else g_prog
        q = np.minimum(0.0088 / np.maximum((np.abs(g_prog) / G_MAX) ** 0.65, 1e-3), 0.2)
        sig = q * np.sqrt(np.log((t + 250e-9) / (2 * 250e-9)))
        return np.maximum(g_d + np.abs(g_d) * sig * rng.standard_normal(g_prog.shape), 0.0)

    out = {}
    for name, t_inf in TIMES.items():
        runs = []
        for seed in range(seeds):
            rng = np.random.default_rng(10_000 + seed)
            pp, pm = program(gp_t, rng), program(gm_t, rng)
            nup, num = nu_of(gp_t, rng), nu_of(gm_t, rng)
            ap, am = at(pp, nup, t_inf, rng), at(pm, num, t_inf, rng)
            w0, wt = (pp - pm) / step, (ap - am) / step
            alpha = np.abs(w0).mean() / max(np.abs(wt).mean(), 1e-4 / step)
            runs.append((alpha * (x.astype(np.float64) @ wt), ap, am))
        out[name] = _collect(runs, levels, x)
    return out


# -- aihwkit itself (runs in the interpreter that has torch) ---------------------------------------------------------
def aihwkit_worker(src: str, seeds: int, path: str) -> None:
    import types
    for name, sub in (("aihwkit", ""), ("aihwkit.inference", "/inference"),
                      ("aihwkit.inference.noise", "/inference/noise"),
                      ("aihwkit.inference.converter", "/inference/converter")):
        module = types.ModuleType(name)          # the packages without their __init__ (which imports the C++ part)
        module.__path__ = [f"{src}/aihwkit{sub}"]
        sys.modules[name] = module
    import torch
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
    levels, x = layer()
    gp_t, gm_t = (torch.from_numpy(g) for g in targets_us(levels))
    model = PCMLikeNoiseModel(g_max=G_MAX, t_0=T0, t_read=250e-9)
    step = G_MAX / (LEVELS - 1)
    arrays = {}
    for i, (name, t_inf) in enumerate(TIMES.items()):
        ys, gps = [], []
        for seed in range(seeds):
            torch.manual_seed(20_000 + seed)
            pp = model.apply_programming_noise_to_conductance(gp_t.clone())
            pm = model.apply_programming_noise_to_conductance(gm_t.clone())
            nup, num = model.generate_drift_coefficients(gp_t.clone()), model.generate_drift_coefficients(gm_t.clone())
            ap = model.apply_drift_noise_to_conductance(pp, nup, t_inf)
            am = model.apply_drift_noise_to_conductance(pm, num, t_inf)
            w0, wt = ((pp - pm) / step).numpy(), ((ap - am) / step).numpy()
            alpha = np.abs(w0).mean() / max(np.abs(wt).mean(), 1e-4 / step)     # GlobalDriftCompensation.readout
            ys.append(alpha * (x.astype(np.float64) @ wt))
            gps.append(ap.numpy())
        arrays[f"y{i}"], arrays[f"g{i}"] = np.stack(ys), np.stack(gps)
    import aihwkit.inference.noise.pcm as pcm
    arrays["version"] = np.array(Path(src, "aihwkit", "VERSION.txt").read_text().strip())
    arrays["torch"] = np.array(torch.__version__)
    arrays["module"] = np.array(pcm.__file__)
    np.savez(path, **arrays)


def run_aihwkit(python: str, src: str, seeds: int) -> tuple[dict, dict]:
    levels, x = layer()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "aihwkit.npz")
        subprocess.run([python, __file__, "--aihwkit-worker", src, "--seeds", str(seeds), "--out", path], check=True)
        z = np.load(path)
        out = {}
        for i, name in enumerate(TIMES):
            runs = [(y, g, None) for y, g in zip(z[f"y{i}"], z[f"g{i}"])]
            out[name] = _collect(runs, levels, x)
        info = {"aihwkit": str(z["version"]), "torch": str(z["torch"]), "module": str(z["module"])}
    return out, info


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.add_argument("--aihwkit-python", help="an interpreter with torch (aihwkit's dependency)")
    p.add_argument("--aihwkit-src", help="aihwkit's src/ folder (from its sdist)")
    p.add_argument("--aihwkit-worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.aihwkit_worker:
        aihwkit_worker(args.aihwkit_worker, args.seeds, args.out)
        return
    from scipy import stats
    results = {"cimc": run_cimc(args.seeds), "numpy": run_numpy(args.seeds)}
    info = None
    if args.aihwkit_python and args.aihwkit_src:
        results["aihwkit"], info = run_aihwkit(args.aihwkit_python, args.aihwkit_src, args.seeds)
    table = {}
    for name in TIMES:
        row = {impl: summarise(*results[impl][name]) for impl in results}
        for impl in results:
            if impl != "cimc":
                ks = stats.ks_2samp(results["cimc"][name][0], results[impl][name][0])
                row[impl]["ks_vs_cimc"] = {"D": float(ks.statistic), "p": float(ks.pvalue)}
        table[name] = row
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                          "python": platform.python_version(), "numpy": np.__version__},
              "aihwkit": info or "not run (give --aihwkit-python and --aihwkit-src)",
              "seeds": args.seeds, "outputs_per_seed": 256 * COLS, "results": table}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"# pcm-aihwkit, one 256x128 layer, {args.seeds} instances x {256 * COLS} outputs per time\n")
    print(f"{report['date']}; {report['machine']}; aihwkit: {report['aihwkit']}\n")
    impls = list(results)
    print("| t_inference | impl | error mean | error std | p01 | p99 | KS D vs cimc | " +
          " | ".join(f"g(level {k}) mean / std uS" for k in SHOW_LEVELS) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(SHOW_LEVELS))
    for name, row in table.items():
        for impl in impls:
            r = row[impl]
            ks = r.get("ks_vs_cimc")
            print(f"| {name} | {impl} | {r['mean']:+.4f} | {r['std']:.4f} | {r['p01']:+.4f} | {r['p99']:+.4f} | "
                  f"{'-' if ks is None else format(ks['D'], '.4f')} | " +
                  " | ".join(f"{r['levels'][str(k)]['mean_us']:.3f} / {r['levels'][str(k)]['std_us']:.3f}"
                             for k in SHOW_LEVELS) + " |")


if __name__ == "__main__":
    main()
