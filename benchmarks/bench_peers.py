"""Benchmark (run by hand, not a test): cimc on issue 16's peer protocol, against plain PyTorch in the same process.

    .venv/bin/python benchmarks/bench_peers.py --torch-venv /work/torchvenv [--repeats 3] [--json]

The protocol (the one the issue's author measured CrossSim and aihwkit with): ResNet-20 for CIFAR-10
(cimc.zoo.resnet20, seed 0, random weights), one batch of 100 random CIFAR-shaped images, 2 threads (`--threads`:
torch's and numba's; cimc's own onnxruntime sessions for digital ops keep onnxruntime's default, one per core),
and the slowdown against plain PyTorch running the same model, with the same weights, in the same process (an
nn.Module of Conv2d / BatchNorm2d / ReLU / Linear in eval mode under inference_mode). cimc runs the noisy chip of
bench_crossbar.py: the yao2020-resnet target (0.54 uS programming error, 8-bit ADCs with a full scale calibrated
on 64 other random images, every bit-plane read), seed 0, with each reader of `--gemms` ("default": gemm=None,
what `cimc run --backend crossbar` does). Each is warmed up on two images (numba loads its kernels from its disk
cache, or compiles them on a machine's first run), then the batch runs `--repeats` times; the table gives the
median and the ratio of medians, in wall-clock time (the protocol) and in CPU time of the process (which a
machine loaded by other jobs disturbs less; with `--threads 1` it is the work each side does). The PyTorch model
is checked against onnxruntime on the same batch before anything is timed.

PyTorch is not a dependency of cimc: `--torch-venv` names a virtual environment that has it (the same Python
version), whose site-packages are added after cimc's own (so numpy, onnx and onnxruntime are cimc's). Prints
markdown (or JSON) with the machine, its load average and the date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

def _require_torch():
    try:
        import torch
    except ImportError as exc:
        print(f"bench_peers.py: PyTorch cannot be imported ({exc}); name an environment that has it with "
              "--torch-venv (see the module doc)", file=sys.stderr)
        raise SystemExit(2)
    return torch


def torch_model(model, torch):
    """The zoo's CIFAR ResNet (option-A shortcuts) as a plain PyTorch module, with the ONNX model's weights."""
    from onnx import numpy_helper
    nn, F = torch.nn, torch.nn.functional
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}

    def conv(name, stride):
        weight = w[f"{name}.weight"]
        c = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], stride, weight.shape[2] // 2, bias=False)
        c.weight.data.copy_(weight)
        return c

    def bn(name):
        b = nn.BatchNorm2d(len(w[f"{name}.weight"]), eps=1e-5)
        for p in ("weight", "bias", "running_mean", "running_var"):
            getattr(b, p).data.copy_(w[f"{name}.{p}"])
        return b

    class Block(nn.Module):
        def __init__(self, p, stride, pad):
            super().__init__()
            self.conv1, self.bn1 = conv(f"{p}.conv1", stride), bn(f"{p}.bn1")
            self.conv2, self.bn2 = conv(f"{p}.conv2", 1), bn(f"{p}.bn2")
            self.pad = pad                         # option A: x[:, :, ::2, ::2], zero channels each side

        def forward(self, x):
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
            return F.relu(y + sc)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = conv("conv1", 1), bn("bn1")
            names = sorted({n.name.rsplit(".", 1)[0] for n in model.graph.node if n.name.startswith("layer")
                            and n.name.endswith(".conv1")})
            blocks = []
            for p in names:                        # layerS.B, in order (B < 10)
                stage, block = (int(v) for v in p[len("layer"):].split("."))
                first = stage > 1 and block == 0
                blocks.append(Block(p, 2 if first else 1, 4 * 2 ** (stage - 1) if first else 0))
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(w["fc.weight"].shape[1], w["fc.weight"].shape[0])
            self.fc.weight.data.copy_(w["fc.weight"])
            self.fc.bias.data.copy_(w["fc.bias"])

        def forward(self, x):
            x = self.blocks(F.relu(self.bn1(self.conv1(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return ResNet().eval()


def _median_seconds(f, repeats: int) -> tuple[float, float]:
    """Median wall-clock and median CPU seconds (this process, all threads) of `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        f()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch, numba and onnxruntime threads (the protocol: 2)")
    p.add_argument("--gemms", default="default,float32", help="cimc readers to time: default, lut, int8, float32")
    p.add_argument("--json", action="store_true")
    p.add_argument("--torch-venv", help="a virtual environment with PyTorch, when cimc's has none")
    args = p.parse_args(argv)
    if args.torch_venv:
        import site
        site.addsitedir(str(Path(args.torch_venv) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
                            / "site-packages"))
    torch = _require_torch()
    import numba
    import onnx
    import onnxruntime as ort

    import cimc
    from cimc import zoo
    from cimc.backends.crossbar import calibrate_adc_full_scale
    warnings.simplefilter("ignore")
    threads = args.threads
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    start_load = os.getloadavg()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    calib = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    model = zoo.resnet20(seed=0)

    net = torch_model(model, torch)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    want = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    with torch.inference_mode():
        got = net(torch.from_numpy(x)).numpy()
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max())):
        raise SystemExit(f"the PyTorch model differs from onnxruntime (max |diff| {np.abs(got - want).max():.3g})")

    def run_torch():
        with torch.inference_mode():
            net(torch.from_numpy(x))

    run_torch()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, Path(tmp) / "resnet20.onnx")
        manifest = cimc.compile(Path(tmp) / "resnet20.onnx", "yao2020-resnet", calibration=calib)
        scales = calibrate_adc_full_scale(manifest.graph, manifest.target, calib)
        for name in args.gemms.split(","):
            session = cimc.Session(manifest, backend="crossbar", seed=0, adc_full_scale=scales,
                                   batch_size=args.batch, gemm=None if name == "default" else name)
            session.run(x[:2])                                             # warm up (numba: cache load)
            torch_s, torch_cpu = _median_seconds(run_torch, args.repeats)
            cimc_s, cimc_cpu = _median_seconds(lambda: session.run(x), args.repeats)
            rows.append({"cimc": name, "reader": session.backend.reader, "cimc_seconds": cimc_s,
                         "torch_seconds": torch_s, "slowdown": cimc_s / torch_s, "cimc_cpu_seconds": cimc_cpu,
                         "torch_cpu_seconds": torch_cpu, "cpu_slowdown": cimc_cpu / torch_cpu})
            print(f"# {rows[-1]}", file=sys.stderr)
    from bench_crossbar import cpu_model
    result = {"machine": {"platform": platform.platform(), "processor": cpu_model(),
                          "cpu_count": os.cpu_count(), "load_average_at_start": start_load,
                          "load_average_at_end": os.getloadavg(), "torch": torch.__version__,
                          "numba": numba.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
                          "cimc": cimc.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds")},
              "protocol": f"ResNet-20 (cimc.zoo, seed 0), one batch of {args.batch} random CIFAR-shaped images, "
                          f"{threads} thread{'s' if threads > 1 else ''}, median of {args.repeats}",
              "runs": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    m = result["machine"]
    print(f"## cimc against PyTorch (issue 16's peer protocol) — {m['date']}\n")
    print(f"{m['platform']}, {m['cpu_count']} CPUs ({m['processor']}), torch {m['torch']}, numba {m['numba']}, "
          f"onnxruntime {m['onnxruntime']}; load average {m['load_average_at_start'][0]:.1f} at start, "
          f"{m['load_average_at_end'][0]:.1f} at end; {result['protocol']}\n")
    print("| cimc reader | reads with | cimc s | PyTorch s | slowdown | cimc CPU s | PyTorch CPU s | CPU ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cimc']} | {r['reader']} | {r['cimc_seconds']:.2f} | {r['torch_seconds']:.3f} | "
              f"{r['slowdown']:.1f}x | {r['cimc_cpu_seconds']:.2f} | {r['torch_cpu_seconds']:.3f} | "
              f"{r['cpu_slowdown']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
