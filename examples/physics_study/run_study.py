"""What wire resistance, ADC offset and programming error cost the shipped mCNN, in accuracy and in simulation time,
with and without hybrid training.

    python examples/physics_study/run_study.py                    # 200 test images, 3 chips per point: ~7 min on 2 loaded cores
    python examples/physics_study/run_study.py --limit 500 --seeds 10 --tune-limit 2000 --out study/   # bigger
    python examples/physics_study/run_study.py --resnet56 standin/ --limit 500 --tune-method affine --out r56/
        # the ResNet-56 stand-in that examples/resnet56_cifar10/train_mnist_standin.py trains into standin/

Steps:
1. Compiles `examples/mcnn_mnist/artifacts/mcnn.onnx` for `yao2020-mcnn` with its 200 calibration images, as
   examples/mcnn_mnist does (the shipped model and data; nothing is downloaded, nothing read from elsewhere).
2. Runs three `cimc sweep`s (the CLI, as a subprocess: the commands are printed and recorded), each over
   seeds 0..N-1 with `--tune-data` (hybrid training of the FC layer per chip instance, `cimc tune`'s defaults), so
   each point has the accuracy before and after tuning:
   - wire resistance per line segment, 0 / 1 / 2 / 5 ohm (1T1R), at Yao's 0.54 uS programming error;
   - ADC offset spread (`adc.offset_sigma_lsb`), 0 / 2 / 8 / 16 LSB of the 8-bit ADCs, at 0.54 uS;
   - programming error (`program_sigma`), 0 / 0.54 / 1 / 1.5 uS.
3. Times every point on one chip instance (seed 0) in this process, with the sweep's own task functions and the
   sweep's own chip options (cimc.commands.sweep_grid.grid_points): CPU seconds (process time) of one untuned run
   (bind + reads of the test images; the least of 3 repeats) and of one hybrid training (tune + the tuned chip's
   run; the least of 2), on one thread (numba and BLAS set to one thread in this process only). Wall time on a
   shared machine says more about the other jobs than about the simulator, and a parallel kernel's threads spin
   for CPU time when the cores are contended, so one-thread CPU time is what is recorded.
4. Writes into --out (a new or empty folder; default: a fresh temporary folder): the manifest `mcnn/`, the sweep
   folders `wire/`, `adc_offset/`, `program_sigma/` (each with its `index.html`: accuracy against the axis,
   95% error bars, tuned dashed), `plots/NAME.svg` (that plot alone), `study.json` (everything, with machine,
   date and load) and `summary.md` (one markdown table: accuracy mean +- std per point, untuned and tuned, and the
   CPU seconds, "-" with --no-timing). A study stopped part way resumes with the same command plus --resume: each
   sweep keeps its finished rows.

With --resnet56 DIR the model is the trained ResNet-56 stand-in in DIR (train_mnist_standin.py's output:
resnet56_mnist.onnx, calib_200.npz, test.npz, tune_2000.npz), compiled for `yao2020-resnet` (one copy of each layer) as
examples/resnet56_cifar10/README.md does; everything else is the same. --tune-method picks `cimc tune --method` for the tuned
rows (fc by default; on a deep network the FC layer alone recovers little: `affine` is the one that does).

Accuracies depend only on the options and seeds (the sweep's rows are the same bytes on any run); the seconds
depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ART = HERE.parent / "mcnn_mnist" / "artifacts"
sys.path.insert(0, str(HERE.parent))
from example_output import output_folder  # noqa: E402

from cimc.tune_defaults import AFFINE_TARGETS, DEFAULT_AFFINE_TARGET  # noqa: E402 (light: no backend imported)

# name: (axis, values, what the column shows, unit)
SWEEPS = {
    "wire": ("wire_resistance", ["0", "1ohm", "2ohm", "5ohm"], "wire resistance per segment"),
    "adc_offset": ("adc.offset_sigma_lsb", ["0", "2", "8", "16"], "ADC offset sigma (LSB)"),
    "program_sigma": ("program_sigma", ["0", "0.54uS", "1uS", "1.5uS"], "programming error sigma"),
}


def cimc_command() -> list[str]:
    """`cimc` of this interpreter's environment (the console script next to python), else `python -m cimc`."""
    script = Path(sys.executable).with_name("cimc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cimc"]


def study_model(resnet56: str | None) -> dict:
    """The model, its target and data: the shipped mCNN, or the ResNet-56 stand-in trained into `resnet56`."""
    if resnet56 is None:
        return {"name": "mcnn", "onnx": ART / "mcnn.onnx", "target": "yao2020-mcnn", "replicate": None,
                "calibration": ART / "calib_200.npz", "test": ART / "test_500.npz", "tune": ART / "train_2000.npz",
                "shown": "examples/mcnn_mnist/artifacts/mcnn.onnx"}
    folder = Path(resnet56)
    files = {"onnx": folder / "resnet56_mnist.onnx", "calibration": folder / "calib_200.npz",
             "test": folder / "test.npz", "tune": folder / "tune_2000.npz"}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        sys.exit(f"physics-study: error: --resnet56 {resnet56}: missing {', '.join(missing)}; train the stand-in "
                 "first: python examples/resnet56_cifar10/train_mnist_standin.py --data ... --out " + resnet56)
    return {"name": "resnet56", "target": "yao2020-resnet", "replicate": None,
            "shown": str(files["onnx"]), **files}


def run_sweep(name: str, manifest_dir: Path, out: Path, args, model: dict) -> tuple[list[str], float]:
    axis, values, _ = SWEEPS[name]
    cmd = [*cimc_command(), "sweep", str(manifest_dir), "--data", str(model["test"]), "--limit",
           str(args.limit), "--grid", f"{axis}={','.join(values)}", "--seeds", str(args.seeds), "--tune-data",
           str(model["tune"]), "--tune-limit", str(args.tune_limit), "--tune-method", args.tune_method,
           "-o", str(out / name), "--json"]
    if args.affine_target:
        cmd += ["--tune-affine-target", args.affine_target]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    result = json.loads(done.stdout)
    print(f"  {result['rows']} rows in {wall:.0f} s wall", flush=True)
    return cmd, wall


def time_points(name: str, manifest_dir: Path, test, tune_data, tune_method: str = "fc",
                repeats: tuple[int, int] = (3, 2), affine_target: str | None = None) -> list[dict]:
    """CPU seconds of each point's untuned run and hybrid training, chip instance 0, with the sweep's options."""
    from cimc.commands.sweep_grid import grid_points
    from cimc.executor import Session
    from cimc.manifest import load
    from cimc.sweep_tasks import files_digest, manifest_files, run_shard, run_tune
    axis, values, _ = SWEEPS[name]
    manifest = load(manifest_dir)
    _, points, _ = grid_points([(axis, values)], manifest.target)
    files = manifest_files(manifest_dir)
    digest = files_digest(files)
    out = []
    for point in points:
        run_s, tune_s = [], []
        for _ in range(repeats[0]):
            t0 = time.process_time()
            shard = run_shard(files, digest, test, 0, len(test), point["options"], 0, 100)
            run_s.append(time.process_time() - t0)
        for _ in range(repeats[1]):
            t0 = time.process_time()
            tuned = run_tune(files, digest, test, tune_data, point["options"], 0, 100,
                             {"epochs": 1, "method": tune_method,
                              "affine_target": affine_target or DEFAULT_AFFINE_TARGET})
            tune_s.append(time.process_time() - t0)
        out.append({"params": point["params"], "run_cpu_s": min(run_s), "tune_cpu_s": min(tune_s),
                    "run_cpu_s_all": run_s, "tune_cpu_s_all": tune_s,
                    "seed0_accuracy": shard["correct"] / shard["samples"],
                    "seed0_tuned_accuracy": tuned["tuned_correct"] / tuned["samples"],
                    "reader": Session(manifest, backend="crossbar", seed=0, **point["options"]).backend.reader})
    return out


def resumed_folder(out: str | None, model: dict) -> Path:
    """--resume: --out must be a study of this model (its manifest folder, or nothing yet); the sweeps themselves
    refuse a folder another command wrote."""
    if out is None:
        sys.exit("physics-study: error: --resume needs --out, the folder of the study to resume")
    path = Path(out)
    if not path.is_dir():
        sys.exit(f"physics-study: error: --resume --out {out}: no such folder")
    other = [n for n in ("mcnn", "resnet56") if n != model["name"] and (path / n).exists()]
    if other:
        sys.exit(f"physics-study: error: --resume --out {out}: it holds a study of {other[0]}, not "
                 f"{model['name']}; resume it with the options it was started with")
    return path


def write_svgs(out: Path, names) -> list[Path]:
    """Each sweep's plot (the one inline SVG of its index.html, a standalone SVG) as out/plots/NAME.svg."""
    (out / "plots").mkdir(exist_ok=True)
    written = []
    for name in names:
        html = (out / name / "index.html").read_text()
        start, end = html.index("<svg "), html.index("</svg>") + len("</svg>")
        path = out / "plots" / f"{name}.svg"
        path.write_text(html[start:end] + "\n")
        written.append(path)
    return written


def _pct(mean, std) -> str:
    return "-" if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(study: dict) -> str:
    lines = ["| effect | value | accuracy, untuned (mean ± std, %) | after hybrid training | CPU s, one chip: run "
             f"({study['limit']} images) | CPU s: tune + tuned run |", "|---|---|---|---|---|---|"]
    for name, sweep in study["sweeps"].items():
        timings = sweep["timing"] or [{}] * len(sweep["summary"])       # --no-timing: no CPU columns
        for entry, timing in zip(sweep["summary"], timings):
            value = entry["params"][SWEEPS[name][0]]
            lines.append(f"| {SWEEPS[name][2]} | {value} | {_pct(entry['accuracy_mean'], entry['accuracy_std'])} | "
                         f"{_pct(entry.get('tuned_accuracy_mean'), entry.get('tuned_accuracy_std'))} | "
                         f"{_seconds(timing.get('run_cpu_s'))} | {_seconds(timing.get('tune_cpu_s'))} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=200, help="test images (the first N of the shipped 500; default 200)")
    p.add_argument("--seeds", type=int, default=3, help="chip instances per point, seeds 0..N-1 (default 3)")
    p.add_argument("--tune-limit", type=int, default=300,
                   help="tuning images (the first N of the shipped 2,000; the last 20%% held out; default 300)")
    p.add_argument("--workers", type=int, help="the sweeps' local Dask workers (default: one per core)")
    p.add_argument("--only", choices=sorted(SWEEPS), action="append", help="run only this sweep (repeatable)")
    p.add_argument("--no-timing", action="store_true", help="skip the per-point CPU timings")
    p.add_argument("--resnet56", metavar="DIR", help="study the ResNet-56 stand-in trained into DIR by "
                   "examples/resnet56_cifar10/train_mnist_standin.py instead of the shipped mCNN")
    p.add_argument("--tune-method", choices=("fc", "affine", "affine+fc"), default="fc",
                   help="how the tuned rows are tuned, as cimc tune --method (default fc)")
    p.add_argument("--affine-target", choices=AFFINE_TARGETS,
                   help="with an affine --tune-method: what the columns are fitted to, as cimc tune --affine-target "
                   "(default float; the recorded ResNet-56 outputs were made with ideal, the default until "
                   "2026-12-02 16:00)")
    p.add_argument("--out", help="a new or empty folder for the outputs (default: a fresh temporary folder)")
    p.add_argument("--resume", action="store_true", help="--out holds this same study, stopped part way: keep its "
                   "finished sweep rows (each sweep resumes) and write its study.json, summary.md and plots anew")
    args = p.parse_args(argv)
    model = study_model(args.resnet56)
    out = resumed_folder(args.out, model) if args.resume else output_folder(args.out, "physics-study")
    print(f"writing into {out}", flush=True)

    import numba
    import cimc
    from cimc.data import load_npz
    numba.set_num_threads(1)                    # the timings: one thread (the sweeps' subprocesses are untouched)
    try:
        from threadpoolctl import threadpool_limits     # installed with scipy's usual stack; else BLAS as it is
        threadpool_limits(1)
    except ImportError:
        pass
    load0 = os.getloadavg()
    start = time.perf_counter()
    manifest_dir = out / model["name"]
    if not (args.resume and manifest_dir.is_dir()):       # resumed: the sweeps check it is the same manifest
        manifest = cimc.compile(model["onnx"], model["target"], calibration=model["calibration"],
                                replicate=model["replicate"])
        manifest.save(manifest_dir)
    test = load_npz(model["test"], ["input"], limit=args.limit)
    tune_data = load_npz(model["tune"], ["input"], limit=args.tune_limit)
    # ResNet-56's point costs seconds, not milliseconds: one repeat each is enough to see the differences
    repeats = (3, 2) if model["name"] == "mcnn" else (1, 1)
    study = {"model": model["shown"], "target": model["target"], "limit": args.limit,
             "seeds": args.seeds, "tune_limit": args.tune_limit, "tune_method": args.tune_method,
             "affine_target": args.affine_target,
             "date": datetime.datetime.now(
                 datetime.timezone.utc).isoformat(timespec="minutes"),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
             "cimc": cimc.__version__, "sweeps": {}}
    if not args.no_timing:                      # numba compiles its kernels once per process: not a point's cost
        time_points("wire", manifest_dir, load_npz(model["test"], ["input"], limit=20),
                    load_npz(model["tune"], ["input"], limit=100), args.tune_method, (1, 1), args.affine_target)
    for name in SWEEPS:
        if args.only and name not in args.only:
            continue
        cmd, wall = run_sweep(name, manifest_dir, out, args, model)
        summary = json.loads((out / name / "summary.json").read_text())
        timing = [] if args.no_timing else time_points(name, manifest_dir, test, tune_data, args.tune_method,
                                                       repeats, args.affine_target)
        for t in timing:
            print(f"  {t['params']}: run {t['run_cpu_s']:.2f} s CPU, tune {t['tune_cpu_s']:.2f} s CPU, reader "
                  f"{t['reader']}", flush=True)
        shown = ["cimc", *cmd[cmd.index("sweep"):]]
        study["sweeps"][name] = {"axis": SWEEPS[name][0], "command": " ".join(shown), "wall_s": wall,
                                 "summary": summary["points"], "timing": timing}
    write_svgs(out, study["sweeps"])
    study["wall_s"] = time.perf_counter() - start
    study["load_average"] = {"start": load0, "end": os.getloadavg()}
    (out / "study.json").write_text(json.dumps(study, indent=1, default=float))
    md = table(study)
    md += (f"\n{model['shown']}, {args.limit} test images, seeds 0..{args.seeds - 1}, hybrid training "
           f"(--method {args.tune_method}) on the first {args.tune_limit} tuning images; {study['machine']}, "
           f"{study['date']}, load average {load0[0]:.1f} at start, {study['load_average']['end'][0]:.1f} at end; "
           f"{study['wall_s']:.0f} s wall{' (resumed)' if args.resume else ''}"
           f"{'; no CPU timings (--no-timing)' if args.no_timing else ''}.\n")
    (out / "summary.md").write_text(md)
    print(md)
    print(f"wrote {out / 'study.json'}; plots: " + ", ".join(str(out / n / "index.html") for n in study["sweeps"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
