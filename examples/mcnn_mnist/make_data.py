"""Convert MNIST (the four IDX files, or an npz with uint8 x and y) into an npz that `cimc run` / `cimc compile` read.

    python examples/mcnn_mnist/make_data.py --data /path/to/mnist -o mnist_test.npz            # all 10,000 test images
    python examples/mcnn_mnist/make_data.py --data /path/to/mnist --split train --count 200 --seed 0 --no-labels \\
        -o calib.npz                                                                         # a calibration set
    cimc run out/mcnn --data mnist_test.npz --backend integer

--data: a directory with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
t10k-labels-idx1-ubyte (optionally .gz) or with mnist_train.npz / mnist_test.npz, or one such npz file (cimc.mnist).
The output holds x float32 [N, 1, 28, 28] = pixel / 255 (the input of examples/mcnn_mnist/artifacts/mcnn.onnx) and
y int64 labels, compressed. --count without --seed takes the first N images; with --seed a random choice (sorted).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cimc.errors import CimcError
from cimc.mnist import load_mnist, to_model_input


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="MNIST directory (IDX files or mnist_{train,test}.npz) or npz file")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--count", type=int, help="keep this many images (default: all)")
    p.add_argument("--seed", type=int, help="with --count: a seeded random choice instead of the first images")
    p.add_argument("--no-labels", action="store_true", help="write x only (a calibration file)")
    p.add_argument("-o", "--output", required=True, help="npz file to write")
    args = p.parse_args(argv)
    try:
        x, y = load_mnist(args.data, args.split)
    except CimcError as exc:
        print(f"make_data: error: {exc}", file=sys.stderr)
        return 2
    if args.count is not None:
        if not 0 < args.count <= len(x):
            p.error(f"--count must be between 1 and {len(x)}")
        idx = (np.sort(np.random.default_rng(args.seed).choice(len(x), args.count, replace=False))
               if args.seed is not None else np.arange(args.count))
        x, y = x[idx], y[idx]
    arrays = {"x": to_model_input(x)}
    if not args.no_labels:
        arrays["y"] = y
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {len(x)} {args.split} images as x float32 {list(arrays['x'].shape)}"
          + ("" if args.no_labels else ", y int64"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
