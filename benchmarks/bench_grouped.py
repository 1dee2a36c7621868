"""Front-end benchmark on depthwise-conv nets (run by hand): `cimc count` and `cimc compile` wall time and peak
memory for torchvision models at 64x64 (random weights, seed 0), each through the real CLI in a fresh process.

    python benchmarks/bench_grouped.py [--models efficientnet_b0 mobilenet_v3_small] [--repeat 2]
                                       [--torch-python /path/to/venv/bin/python] [--onnx-dir DIR]

torch and torchvision are not cimc dependencies: the models are exported by another interpreter that has them
(--torch-python, default $CIMC_TORCH_PYTHON, else /work/torchvenv/bin/python, else this one); with none, or with
--onnx-dir holding NAME.onnx already, nothing is exported (a model that is not there is skipped, and said so).
Calibration: 32 standard-normal inputs (seed 0). Prints one JSON object with the machine, date and load average;
README's Performance section records the figures."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EXPORT = """
import sys, torch, torchvision
torch.manual_seed(0)
name, path = sys.argv[1], sys.argv[2]
m = getattr(torchvision.models, name)(weights=None).eval()
torch.onnx.export(m, torch.randn(1, 3, 64, 64), path, dynamo=False, input_names=["x"], output_names=["y"],
                  dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17)
"""

# runs one command and prints its peak resident memory (kB, the largest RSS of the waited child) and its CPU
# seconds (user + system; not the onnx checker's fork server and child, which it does not wait for)
MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_maxrss, r.ru_utime + r.ru_stime)
"""


def _torch_python(given: str | None) -> str | None:
    for candidate in (given, os.environ.get("CIMC_TORCH_PYTHON"), "/work/torchvenv/bin/python", sys.executable):
        if candidate and shutil.which(candidate) and subprocess.run(
                [candidate, "-c", "import torch, torchvision"], capture_output=True).returncode == 0:
            return candidate
    return None


def _run(args: list[str], repeat: int) -> tuple[float, float, float]:
    """(best wall seconds, peak RSS in GB, least CPU seconds over the runs) of `cimc ARGS` in a fresh process."""
    best, peak, cpu = float("inf"), 0.0, float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "cimc.cli", *args], check=True,
                             capture_output=True, text=True).stdout.split()
        best = min(best, time.perf_counter() - start)
        peak, cpu = max(peak, int(out[-2]) / 1e6), min(cpu, float(out[-1]))
    return best, peak, cpu


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["efficientnet_b0"])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--torch-python")
    p.add_argument("--onnx-dir", help="where NAME.onnx is (or is exported to); default a temporary folder")
    args = p.parse_args()
    results, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = Path(args.onnx_dir) if args.onnx_dir else work
        calib = work / "calib.npz"
        np.savez(calib, x=np.random.default_rng(0).standard_normal((32, 3, 64, 64)).astype(np.float32))
        exporter = None
        for name in args.models:
            path = models / f"{name}.onnx"
            if not path.exists():
                exporter = exporter or _torch_python(args.torch_python)
                if exporter is None:
                    skipped.append(f"{name}: no {path} and no Python with torch and torchvision to export it")
                    continue
                subprocess.run([exporter, "-c", EXPORT, name, str(path)], check=True, capture_output=True)
            load = os.getloadavg()[0]
            count_s, count_gb, count_cpu = _run(["count", str(path)], args.repeat)
            compile_s, compile_gb, compile_cpu = _run(["compile", str(path), "--calibration", str(calib), "-o",
                                                       str(work / f"{name}_out")], args.repeat)
            arrays = json.loads(subprocess.run([sys.executable, "-m", "cimc.cli", "count", str(path), "--json"],
                                               check=True, capture_output=True, text=True).stdout)["total_arrays"]
            results.append({"model": f"{name} 64x64", "arrays": arrays, "count_seconds": round(count_s, 2),
                            "count_cpu_seconds": round(count_cpu, 2), "count_peak_rss_gb": round(count_gb, 2),
                            "compile_seconds": round(compile_s, 2), "compile_cpu_seconds": round(compile_cpu, 2),
                            "compile_peak_rss_gb": round(compile_gb, 2),
                            "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)]})
    print(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                      "machine": platform.platform(), "cpus": os.cpu_count(), "results": results,
                      "skipped": skipped}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
