"""Li et al. (Nat. Commun. 2018) in-situ training of a 64-54-10 MLP on one 128x64 array, with cimc.insitu.

    python examples/li2018_mlp/run_example.py                  # 5 chip instances (seeds 0-4), 30 epochs, ~80 s
    python examples/li2018_mlp/run_example.py --seeds 1 --epochs 10

For each seed (one chip instance = one set of stuck devices, initial weights and batch order):
  ideal simulation   in-situ training with no stuck devices and no update variation
  in situ            in-situ training with li2018's 11% of devices stuck at 10 uS and 2% update variation
  in situ, 8-bit ADC the same with the line currents rounded to 8 bits
  ex situ            float software training, weights transferred to the same defective chip
and the defect-tolerance curve: in situ vs ex situ at 0..50% of devices stuck OFF (g_min).
Writes results.json and defect_tolerance.svg into --out (a new or empty folder; default: a fresh temporary folder),
and prints where. The results.json and defect_tolerance.svg next to this script are the reference run README.md
quotes; the script never rewrites them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cimc import insitu
from cimc.targets.registry import load_target

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from example_output import output_folder  # noqa: E402

RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="chip instances (seeds 0..N-1), default 5")
    p.add_argument("--epochs", type=int, default=insitu.DEFAULT_EPOCHS)
    p.add_argument("--target", default="li2018")
    p.add_argument("--out", help="a new or empty folder for results.json and defect_tolerance.svg (default: a "
                   "fresh temporary folder)")
    args = p.parse_args(argv)
    out = output_folder(args.out, "li2018-example")
    print(f"writing into {out}", file=sys.stderr)
    target = load_target(args.target)
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()

    runs = {"ideal_simulation": [], "in_situ": [], "in_situ_adc8": [], "ex_situ": [], "software": []}
    for s in seeds:
        ideal = insitu.ideal_simulation(target, args.epochs, s)
        ins = insitu.train_in_situ(target, None, args.epochs, s)
        ins8 = insitu.train_in_situ(target, None, args.epochs, s, adc_bits=8)
        exs = insitu.train_ex_situ_and_transfer(target, None, args.epochs, s)
        runs["ideal_simulation"].append(ideal["final_accuracy"])
        runs["in_situ"].append(ins["final_accuracy"])
        runs["in_situ_adc8"].append(ins8["final_accuracy"])
        runs["ex_situ"].append(exs["final_accuracy"])
        runs["software"].append(exs["software_accuracy"])
        print(f"seed {s}: ideal {100 * ideal['final_accuracy']:.2f}%, in situ {100 * ins['final_accuracy']:.2f}% "
              f"({ins['stuck_devices']} stuck), 8-bit ADC {100 * ins8['final_accuracy']:.2f}%, ex situ "
              f"{100 * exs['final_accuracy']:.2f}%", file=sys.stderr)
    summary = {k: _stats(v) for k, v in runs.items()}
    gaps = [100 * (a - b) for a, b in zip(runs["ideal_simulation"], runs["in_situ"])]
    summary["gap_points"] = {"mean": float(np.mean(gaps)), "std": float(np.std(gaps)), "per_seed": gaps}

    curve = insitu.defect_tolerance(target, RATES, args.epochs, stuck_at="g_min", seeds=seeds,
                                    progress=lambda line: print(line, file=sys.stderr))
    seconds = time.perf_counter() - t0

    results = {
        "target": target.name, "epochs": args.epochs, "batch": insitu.BATCH, "lr": insitu.DEFAULT_LR,
        "w_max": insitu.DEFAULT_W_MAX, "seeds": seeds, "data": "sklearn load_digits, 1347 train / 450 test",
        "stuck_rate": target.nonideal.stuck_rate, "stuck_at": target.nonideal.stuck_at,
        "update_sigma_rel": target.nonideal.update_sigma_rel, "summary": summary, "defect_tolerance": curve,
        "paper": insitu.PAPER, "seconds": seconds, "machine": _machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "defect_tolerance.svg").write_text(svg(curve, len(seeds)))

    m = lambda k: f"{100 * summary[k]['mean']:.2f}% +- {100 * summary[k]['std']:.2f}"  # noqa: E731
    print(f"{target.name}, 64-54-10 MLP on sklearn digits, {args.epochs} epochs, batch {insitu.BATCH}, "
          f"{len(seeds)} chip instances (mean +- std over seeds)")
    print(f"{'':34s} {'cimc':>16s}   paper (8x8 MNIST)")
    print(f"{'ideal simulation':34s} {m('ideal_simulation'):>16s}   {insitu.PAPER['in_situ_11pct_accuracy'] + insitu.PAPER['gap_points']:.2f}% (91.71 + 2.4)")
    print(f"{'in situ, 11% stuck at 10 uS':34s} {m('in_situ'):>16s}   {insitu.PAPER['in_situ_11pct_accuracy']}%")
    print(f"{'  same, 8-bit ADC':34s} {m('in_situ_adc8'):>16s}")
    print(f"{'gap (points)':34s} {summary['gap_points']['mean']:>9.2f} +- {summary['gap_points']['std']:.2f}   "
          f"{insitu.PAPER['gap_points']}")
    print(f"{'ex situ, transferred (same chip)':34s} {m('ex_situ'):>16s}")
    print(f"{'software (float)':34s} {m('software'):>16s}")
    print("defect tolerance, devices stuck OFF (g_min):   in situ   ex situ")
    for row in curve:
        note = "   paper: in situ > 60%, ex situ collapses" if row["stuck_rate"] == 0.5 else ""
        print(f"{'':20s}{100 * row['stuck_rate']:>5.0f}% stuck {100 * row['in_situ']:>12.2f}% "
              f"{100 * row['ex_situ']:>8.2f}%{note}")
    print(f"wrote {out / 'results.json'} and {out / 'defect_tolerance.svg'} in {seconds:.1f} s")
    return 0


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()}, python {platform.python_version()}, "
            f"numpy {np.__version__}")


def _stats(values) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_seed": [float(v) for v in values]}


def svg(curve, n_seeds: int) -> str:
    """Accuracy vs stuck-OFF rate, in situ vs ex situ, as a standalone SVG (no plotting library)."""
    w, h, left, right, top, bottom = 560, 420, 64, 24, 60, 70
    pw, ph = w - left - right, h - top - bottom
    xmax = max(0.5, max(r["stuck_rate"] for r in curve))
    x = lambda r: left + pw * r / xmax           # noqa: E731
    y = lambda a: top + ph * (1 - a)              # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
             'font-family="Helvetica, Arial, sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="14">64-54-10 MLP on one 128x64 array '
             f'(li2018): devices stuck OFF</text>']
    for k in range(11):
        a = k / 10
        parts.append(f'<line x1="{left}" y1="{y(a):.1f}" x2="{left + pw}" y2="{y(a):.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 6}" y="{y(a) + 4:.1f}" text-anchor="end">{100 * a:.0f}</text>')
    for r in curve:
        parts.append(f'<line x1="{x(r["stuck_rate"]):.1f}" y1="{top + ph}" x2="{x(r["stuck_rate"]):.1f}" '
                     f'y2="{top + ph + 5}" stroke="black"/>')
        parts.append(f'<text x="{x(r["stuck_rate"]):.1f}" y="{top + ph + 18}" text-anchor="middle">'
                     f'{100 * r["stuck_rate"]:.0f}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    parts.append(f'<text x="{left + pw / 2}" y="{h - 28}" text-anchor="middle">devices stuck OFF (%)</text>')
    parts.append(f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 16 {top + ph / 2})">test accuracy (%)</text>')
    # the paper's claim at 50% stuck OFF: in situ above 60%
    parts.append(f'<line x1="{x(0.45):.1f}" y1="{y(0.6):.1f}" x2="{x(0.5):.1f}" y2="{y(0.6):.1f}" '
                 'stroke="#888" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{x(0.45) - 4:.1f}" y="{y(0.6) + 4:.1f}" text-anchor="end" fill="#666">'
                 'paper: in situ &gt; 60% at 50%</text>')
    for key, color in (("in_situ", "#1f77b4"), ("ex_situ", "#d62728")):
        pts = " ".join(f"{x(r['stuck_rate']):.1f},{y(r[key]):.1f}" for r in curve)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{x(r["stuck_rate"]):.1f}" cy="{y(r[key]):.1f}" r="3.5" fill="{color}"/>'
                     for r in curve)
    for i, (color, label) in enumerate((("#1f77b4", "in situ"), ("#d62728", "ex situ (transferred)"))):
        lx = left + 150 * i
        parts.append(f'<line x1="{lx}" y1="44" x2="{lx + 22}" y2="44" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<circle cx="{lx + 11}" cy="44" r="3.5" fill="{color}"/>')
        parts.append(f'<text x="{lx + 30}" y="48">{label}</text>')
    parts.append(f'<text x="{left + pw}" y="{h - 8}" text-anchor="end" fill="#666" font-size="10">sklearn digits, mean of '
                 f'{n_seeds} chip instance{"s" if n_seeds != 1 else ""}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
