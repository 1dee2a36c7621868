"""Compile the same models with two `cimc` executables and compare what they write, file by file (run by hand when a
change must leave compile outputs byte-identical):

    python benchmarks/compare_compile_outputs.py BASE_CIMC NEW_CIMC     # e.g. /work/main/.venv/bin/cimc .venv/bin/cimc

Models: ResNet-56 (cimc.zoo, 200 seeded normal calibration inputs as in bench_compile.py) with fixed copies (conv1
x4) and with CP-SAT (--arrays 1000), and the mCNN example (examples/mcnn_mnist/artifacts). Compared: manifest.json
and replication.json as JSON without `created_utc` and any `*seconds*` field, every array of arrays.npz and
params.npz (name, dtype, shape, bytes: the zip's own timestamps differ), digital.onnx byte for byte. Exit 1 on any
difference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from cimc import zoo

MCNN = Path(__file__).resolve().parent.parent / "examples" / "mcnn_mnist" / "artifacts"


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k != "created_utc" and "seconds" not in k}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files}


def _same(a: Path, b: Path) -> bool:
    if a.suffix == ".json":
        return _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))
    if a.suffix == ".npz":
        return _arrays(a) == _arrays(b)
    return a.read_bytes() == b.read_bytes()


def main() -> int:
    base, new = (os.path.abspath(c) if os.sep in c else c for c in sys.argv[1:3])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx.save(zoo.resnet56(), work / "resnet56.onnx")
        np.savez(work / "calib.npz", x=np.random.default_rng(0).standard_normal((200, 3, 32, 32)).astype(np.float32))
        r56 = [str(work / "resnet56.onnx"), "--calibration", str(work / "calib.npz"), "--target", "yao2020-resnet"]
        cases = {"resnet56_fixed": r56 + ["--replicate", "conv1=4"], "resnet56_cpsat": r56 + ["--arrays", "1000"],
                 "mcnn": [str(MCNN / "mcnn.onnx"), "--calibration", str(MCNN / "calib_200.npz"),
                          "--target", "yao2020-mcnn"]}
        different = 0
        for name, args in cases.items():
            out = {}
            for tag, cimc in (("base", base), ("new", new)):
                out[tag] = work / f"{name}_{tag}"
                subprocess.run([cimc, "compile", *args, "-o", str(out[tag])], check=True, stdout=subprocess.DEVNULL,
                               cwd=tmp)
            files = sorted(p.name for p in out["base"].iterdir())
            if files != sorted(p.name for p in out["new"].iterdir()):
                print(f"{name}: different files {files} / {sorted(p.name for p in out['new'].iterdir())}")
                different += 1
                continue
            for f in files:
                same = _same(out["base"] / f, out["new"] / f)
                different += not same
                print(f"{name:15s} {f:17s} {'same' if same else 'DIFFERENT'}")
    print("all the same" if not different else f"{different} different")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
