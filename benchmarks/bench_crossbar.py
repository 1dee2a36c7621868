"""Benchmark (run by hand, not a test): the crossbar backend on ResNet-56 against onnxruntime on the same inputs.

    .venv/bin/python benchmarks/bench_crossbar.py [--n 1000] [--batch-size 100] [--json] [--skip-gemm] [--threads N]
        [--rounds R]

For each configuration — `integer` (the reference), `crossbar-ideal` (ideal devices, lossless ADC) and
`crossbar-noisy` (the yao2020-resnet target: 0.54 uS programming error, 8-bit ADC with a calibrated full scale,
every bit-plane read; float32 GEMMs), `crossbar-noisy-int8` (the same with gemm="int8"), `crossbar-noisy-lut`
(the same with gemm="lut": numba table reads with the ADC fused), `crossbar-noisy-default` (the same naming no
reader: what `cimc run --backend crossbar` and `Session(m, "crossbar")` read with) and, on request, `crossbar-noisy-adc` (crossbar-noisy
with ADC gain, offset, INL and sense noise: the cost of the ADC model; float32 GEMMs, as sense noise is drawn per
conversion), `crossbar-noisy-adc-static` (the same without sense noise: the default reader, table reads with the
ADC's per-line gain, offset and INL fused), and on request `bitsliced-float32` /
`bitsliced-lut` (ResNet-56 compiled for `resnet-bitsliced`: 8-bit weights on 2-bit cells x 4 slices, 0.54 uS
programming error, its compile-calibrated ADC full scale; each slice line converted, read by that reader) — a fresh
worker process loads the manifest, warms
both up on two inputs (numba compiles on first use, then loads from its disk cache), times onnxruntime and the
backend on the same n
inputs, and reports the ratio and its peak resident memory (ru_maxrss, the whole process). Then a GEMM
micro-benchmark compares, on the shapes of one layer's bit-plane reads ([8*M, 144] @ [144, lines]): numpy float32
(BLAS), onnxruntime float32 MatMul, onnxruntime MatMulInteger (u8 x s8 -> int32) and numpy's int32 matmul (no BLAS).
Prints markdown (or one JSON object) with the machine (platform, CPU count, load average) and the date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def prepare(workdir: Path, n: int, seed: int = 0, bitsliced: bool = False) -> None:
    import onnx

    import cimc
    from cimc import zoo
    from cimc.backends.crossbar import calibrate_adc_full_scale
    onnx.save(zoo.resnet56(seed=0), workdir / "resnet56.onnx")
    rng = np.random.default_rng(seed)
    calib = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    manifest = cimc.compile(workdir / "resnet56.onnx", "yao2020-resnet", calibration=calib,
                            replicate={"conv1": 4})
    manifest.save(workdir / "manifest")
    scales = calibrate_adc_full_scale(manifest.graph, manifest.target, calib)
    (workdir / "adc_full_scale.json").write_text(json.dumps(scales))
    if bitsliced:         # compile calibrates every slice line's ADC full scale (cimc.weight_encoding)
        cimc.compile(workdir / "resnet56.onnx", "resnet-bitsliced", calibration=calib,
                     overrides=["nonideal.program_sigma_us=0.54"]).save(workdir / "manifest_bitsliced")
    np.save(workdir / "x.npy", rng.standard_normal((n, 3, 32, 32)).astype(np.float32))


# crossbar-noisy-adc: crossbar-noisy plus every ADC non-ideality (cimc.targets.adc): float32 GEMMs (sense noise is
# drawn per conversion); crossbar-noisy-adc-static: the static ones alone (gain, offset, INL), read by the default
STATIC_ADC_EFFECTS = ["adc.gain_sigma_rel=0.01", "adc.offset_sigma_lsb=0.5", "adc.inl_lsb=0.5"]
ADC_EFFECTS = STATIC_ADC_EFFECTS + ["adc.noise_sigma_lsb=0.3"]


def _gemm(config: str) -> str | None:
    """crossbar-noisy: float32; crossbar-noisy-int8 / -lut: that reader; crossbar-noisy-default: None (the default)."""
    if config.count("-") != 2:
        return "float32"
    name = config.rsplit("-", 1)[1]
    return None if name == "default" else name


def worker(workdir: Path, config: str, batch_size: int, threads: int = 0, rounds: int = 1) -> dict:
    import warnings

    import onnxruntime as ort

    import cimc
    warnings.simplefilter("ignore")
    x = np.load(workdir / "x.npy")
    manifest = cimc.load(workdir / "manifest")
    options = ort.SessionOptions()
    if threads:                                # --threads: onnxruntime's intra-op threads too (numba's: env)
        options.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(workdir / "resnet56.onnx"), options, providers=["CPUExecutionProvider"])
    sess.run(None, {"input": x[:batch_size]})                                 # warm up

    def run_ort():
        return np.concatenate([sess.run(None, {"input": x[s:s + batch_size]})[0]
                               for s in range(0, len(x), batch_size)])
    t0, c0 = time.perf_counter(), time.process_time()
    ref = run_ort()
    ort_s, ort_cpu = time.perf_counter() - t0, time.process_time() - c0
    if config == "integer":
        session = cimc.Session(manifest, backend="integer", batch_size=batch_size)
    elif config == "crossbar-ideal":
        session = cimc.Session(manifest, backend="crossbar", ideal=True, batch_size=batch_size)
    elif config.startswith("bitsliced-"):
        session = cimc.Session(cimc.load(workdir / "manifest_bitsliced"), backend="crossbar", seed=0,
                               batch_size=batch_size, gemm=config.split("-")[1])
    elif config in ("crossbar-noisy-adc", "crossbar-noisy-adc-static"):
        scales = json.loads((workdir / "adc_full_scale.json").read_text())
        session = cimc.Session(manifest, backend="crossbar", seed=0, adc_full_scale=scales, batch_size=batch_size,
                               overrides=ADC_EFFECTS if config == "crossbar-noisy-adc" else STATIC_ADC_EFFECTS)
    else:
        scales = json.loads((workdir / "adc_full_scale.json").read_text())
        session = cimc.Session(manifest, backend="crossbar", seed=0, adc_full_scale=scales, batch_size=batch_size,
                               gemm=_gemm(config))
    session.run(x[:2])                                                        # warm up (and compile, for lut)
    reader = getattr(session.backend, "reader", None)
    t0, c0 = time.perf_counter(), time.process_time()
    y = session.run(x)
    backend_s, backend_cpu = time.perf_counter() - t0, time.process_time() - c0
    # --rounds: more rounds, onnxruntime then the backend each time, in this process: a shared host's slow spells
    # then fall on both sides of some rounds, and the spread of the ratios shows how much one run can say
    ratios = [backend_s / ort_s]
    for _ in range(rounds - 1):
        t0 = time.perf_counter()
        run_ort()
        o = time.perf_counter() - t0
        t0 = time.perf_counter()
        session.run(x)
        ratios.append((time.perf_counter() - t0) / o)
    np.save(workdir / f"y_{config}.npy", y)
    return {"config": config, "n": int(len(x)), "backend_seconds": backend_s, "onnxruntime_seconds": ort_s,
            "ratio": backend_s / ort_s, "backend_cpu_seconds": backend_cpu, "onnxruntime_cpu_seconds": ort_cpu,
            "cpu_ratio": backend_cpu / ort_cpu, "peak_rss_mb": _peak_rss_mb(), "reader": reader,
            "round_ratios": ratios, "median_ratio": float(np.median(ratios)), "best_ratio": min(ratios),
            "top1_agreement_with_onnxruntime": float(np.mean(y.argmax(1) == ref.argmax(1)))}


def gemm_bench(rows: int = 8 * 12800, k: int = 144, widths=(32, 128), repeats: int = 3) -> list[dict]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def session(integer: bool, m: int, n: int):
        ta, tb, ty = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32) if integer else (TensorProto.FLOAT,) * 3
        node = helper.make_node("MatMulInteger" if integer else "MatMul", ["A", "B"], ["Y"])
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", ta, [m, k]),
                                            helper.make_tensor_value_info("B", tb, [k, n])],
                              [helper.make_tensor_value_info("Y", ty, [m, n])])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def best(f):
        f()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    rng = np.random.default_rng(0)
    out = []
    for n in widths:
        planes = (rng.random((rows, k)) < 0.25).astype(np.float32)
        g = rng.uniform(2.5, 20, (k, n)).astype(np.float32)
        p8, g8 = planes.astype(np.uint8), rng.integers(-127, 128, (k, n)).astype(np.int8)
        s_f, s_i = session(False, rows, n), session(True, rows, n)
        flops = 2.0 * rows * k * n
        small = rows // 16
        p32, g32 = p8[:small].astype(np.int32), g8.astype(np.int32)
        t_np_int = best(lambda: p32 @ g32) * 16
        seconds = {"numpy_float32": best(lambda: planes @ g),
                   "ort_float32": best(lambda: s_f.run(None, {"A": planes, "B": g})),
                   "ort_u8s8": best(lambda: s_i.run(None, {"A": p8, "B": g8})),
                   "ort_u8s8_plus_to_float32": best(lambda: s_i.run(None, {"A": p8, "B": g8})[0].astype(np.float32)),
                   "numpy_int32": t_np_int}                      # extrapolated from 1/16 of the rows
        rec = {"shape": f"[{rows}, {k}] @ [{k}, {n}]"}
        rec.update({f"{name}_s": v for name, v in seconds.items()})
        rec.update({f"{name}_gops": flops / v / 1e9 for name, v in seconds.items()})
        out.append(rec)
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; platform.processor() is empty on Linux): runs on different hosts differ."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import onnxruntime

    import cimc
    return {"platform": platform.platform(), "processor": cpu_model(),
            "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "cimc": cimc.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.add_argument("--skip-gemm", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="numba and onnxruntime threads (default: all cores); "
                   "--threads 1 with the CPU ratio column is the figure a loaded machine disturbs least")
    p.add_argument("--rounds", type=int, default=1, help="alternated rounds of onnxruntime and the backend per "
                   "configuration, in one process (default 1); the table adds the median and best round ratio")
    p.add_argument("--configs", default="integer,crossbar-ideal,crossbar-noisy,crossbar-noisy-int8,crossbar-noisy-lut,"
                   "crossbar-noisy-default")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.dir), args.worker, args.batch_size, args.threads, args.rounds)))
        return 0
    result = {"machine": machine(), "model": "ResNet-56 (cimc.zoo, conv1 x4) on yao2020-resnet", "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare(workdir, args.n, bitsliced="bitsliced" in args.configs)
        for config in args.configs.split(","):
            cmd = [sys.executable, __file__, "--worker", config, "--dir", tmp, "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads), "--rounds", str(args.rounds)]
            env = dict(os.environ, **({"NUMBA_NUM_THREADS": str(args.threads)} if args.threads else {}))
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            result["runs"].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"# {result['runs'][-1]}", file=sys.stderr)
        if (workdir / "y_integer.npy").exists() and (workdir / "y_crossbar-ideal.npy").exists():
            result["ideal_equals_integer_bit_for_bit"] = bool(np.array_equal(np.load(workdir / "y_integer.npy"),
                                                                         np.load(workdir / "y_crossbar-ideal.npy")))
        for noisy in ("crossbar-noisy", "crossbar-noisy-int8", "crossbar-noisy-lut", "crossbar-noisy-default"):
            if (workdir / "y_integer.npy").exists() and (workdir / f"y_{noisy}.npy").exists():
                a, b = np.load(workdir / "y_integer.npy"), np.load(workdir / f"y_{noisy}.npy")
                result[f"{noisy}_top1_agreement_with_integer"] = float(np.mean(a.argmax(1) == b.argmax(1)))
    if not args.skip_gemm:
        result["gemm"] = gemm_bench()
    result["machine"]["load_average_at_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    m = result["machine"]
    print(f"## crossbar backend benchmark — {m['date']}\n")
    print(f"{m['platform']}, {m['cpu_count']} CPUs ({m['processor']}), numpy {m['numpy']}, onnxruntime "
          f"{m['onnxruntime']}; load average {m['load_average_at_start'][0]:.1f} at start, "
          f"{m['load_average_at_end'][0]:.1f} at end\n")
    print(f"threads: {args.threads or 'all'}\n")
    rounds = f" | ratio over {args.rounds} rounds: median / best" if args.rounds > 1 else ""
    print("| configuration | reader | inputs | backend s | onnxruntime s | ratio | CPU s (backend / onnxruntime) | "
          f"CPU ratio | peak RSS MB{rounds} |")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if rounds else ""))
    for r in result["runs"]:
        spread = f" | {r['median_ratio']:.1f}x / {r['best_ratio']:.1f}x" if rounds else ""
        print(f"| {r['config']} | {r['reader'] or '-'} | {r['n']} | {r['backend_seconds']:.1f} | "
              f"{r['onnxruntime_seconds']:.2f} | {r['ratio']:.1f}x | {r['backend_cpu_seconds']:.1f} / "
              f"{r['onnxruntime_cpu_seconds']:.2f} | {r['cpu_ratio']:.1f}x | {r['peak_rss_mb']:.0f}{spread} |")
    for key in ("ideal_equals_integer_bit_for_bit", "crossbar-noisy_top1_agreement_with_integer",
                "crossbar-noisy-int8_top1_agreement_with_integer", "crossbar-noisy-lut_top1_agreement_with_integer",
                "crossbar-noisy-default_top1_agreement_with_integer"):
        if key in result:
            print(f"\n{key}: {result[key]}")
    if "gemm" in result:
        print("\n| GEMM | numpy f32 GFLOP/s | ort f32 | ort u8 x s8 | ort u8 x s8 + to f32 | numpy int32 |")
        print("|---|---|---|---|---|---|")
        for g in result["gemm"]:
            print(f"| {g['shape']} | {g['numpy_float32_gops']:.0f} | {g['ort_float32_gops']:.0f} | "
                  f"{g['ort_u8s8_gops']:.0f} | {g['ort_u8s8_plus_to_float32_gops']:.0f} | "
                  f"{g['numpy_int32_gops']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
