"""Compile-time benchmark (run by hand): `cimc compile` wall time for ResNet-56 (CIFAR-10, 200 calibration
samples) and an ImageNet ResNet-50 (16 calibration samples), each through the real CLI in a fresh process, with
onnxruntime's session creation + one batch on the same model beside it for scale. Each model is compiled with
fixed copies and with optimal replication (CP-SAT under an array budget, `--arrays`).

    python benchmarks/bench_compile.py [--repeat 3] [--skip-resnet50]

Prints one JSON object with the machine and date; README's performance section records the figures.

cimc's own modules are compiled to bytecode first (`compileall`, as `pip install` does): where
PYTHONDONTWRITEBYTECODE is set and the checkout has no __pycache__, every CLI run would otherwise compile ~80 cimc
modules from source, about 0.17 s of CPU (2026-12-02, loaded 2-core host), which no installed cimc pays."""
from __future__ import annotations

import argparse
import compileall
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from cimc import zoo


def _time_cli(args: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cimc.cli", *args], check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def _time_ort(model_path: Path, x: np.ndarray) -> float:
    start = time.perf_counter()
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    sess.run(None, {"input": x})
    return time.perf_counter() - start


def bench(name, model, shape, calib_n, target, replicate, repeat, work: Path, arrays: int | None = None) -> dict:
    model_path = work / f"{name}.onnx"
    if not model_path.exists():
        onnx.save(model, model_path)
    calib = np.random.default_rng(0).standard_normal((calib_n, *shape)).astype(np.float32)
    np.savez(work / f"{name}_calib.npz", x=calib)
    args = ["compile", str(model_path), "--calibration", str(work / f"{name}_calib.npz"), "-o", str(work / name),
            "--target", target] + sum((["--replicate", r] for r in replicate), []) + \
        ([] if arrays is None else ["--arrays", str(arrays)])
    seconds = _time_cli(args, repeat)
    count = json.loads(subprocess.run([sys.executable, "-m", "cimc.cli", "count", str(model_path), "--target", target,
                                       "--json"] + sum((["--replicate", r] for r in replicate), []) +
                                      ([] if arrays is None else ["--arrays", str(arrays)]),
                                      check=True, capture_output=True, text=True).stdout)["total_arrays"]
    return {"model": name, "replication": f"CP-SAT, --arrays {arrays}" if arrays else f"fixed {replicate}",
            "calibration_samples": calib_n, "target": target, "cimc_compile_seconds": round(seconds, 3),
            "onnxruntime_load_and_run_calibration_batch_seconds": round(_time_ort(model_path, calib), 3),
            "arrays": count}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-resnet50", action="store_true")
    args = p.parse_args()
    import cimc.passes
    import cimc.targets
    for package in (cimc.__path__[0], cimc.passes.__path__[0], cimc.targets.__path__[0]):
        compileall.compile_dir(package, quiet=1)     # bytecode, as an installed cimc has (module doc)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        r56 = zoo.resnet56()
        results.append(bench("resnet56", r56, (3, 32, 32), 200, "yao2020-resnet", ["conv1=4"], args.repeat, work))
        results.append(bench("resnet56", r56, (3, 32, 32), 200, "yao2020-resnet", [], args.repeat, work, 1000))
        if not args.skip_resnet50:
            r50 = zoo.resnet50_imagenet()
            results.append(bench("resnet50", r50, (3, 224, 224), 16, "yao2020-resnet", [], 1, work))
            results.append(bench("resnet50", r50, (3, 224, 224), 16, "yao2020-resnet", [], 1, work, 30000))
    print(json.dumps({"date": datetime.date.today().isoformat(), "machine": platform.platform(),
                      "cpu_count": os.cpu_count(), "python": platform.python_version(),
                      "load_average": os.getloadavg(), "bytecode": "cimc compiled first (compileall)",
                      "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
