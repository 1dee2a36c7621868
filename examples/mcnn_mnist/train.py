"""Train Yao et al.'s five-layer mCNN on MNIST in PyTorch and export it to ONNX with the node names of cimc.zoo.mcnn.

    pip install -e '.[train]'                                  # torch==2.13.0 (CPU)
    python examples/mcnn_mnist/train.py --data /path/to/mnist --out examples/mcnn_mnist/artifacts

--data: a directory with the four MNIST IDX files (optionally .gz) or with mnist_train.npz / mnist_test.npz
(x uint8 [N, 28, 28], y); see cimc.mnist. Inputs are pixel / 255 (cimc.mnist.to_model_input), i.e. 8-bit inputs.

Network (Yao et al., Nature 577, 641 (2020)): C1 conv 3x3 1->8 + bias - ReLU - S2 max-pool 3x3/3 (ceil) -> 8x9x9 -
C3 conv 3x3 8->12 + bias - ReLU - S4 max-pool 2x2/2 (ceil) -> 12x4x4 - Flatten - FC 192->10 -> logits.
Training: Adam, batch 64, cosine learning-rate decay, no augmentation, seeded (torch, numpy), 2 CPU threads.

Writes to --out:
  mcnn.onnx        opset 13, input "input" [N, 1, 28, 28] float32, output "logits" [N, 10]; nodes C1, relu1, S2, C3,
                   relu3, S4, flatten, FC (each node's output tensor carries the node's name, as in cimc.zoo)
  test_500.npz     the first 500 test images (x float32 [500, 1, 28, 28], y int64)
  calib_200.npz    200 training images chosen with the seed (x float32), for `cimc compile --calibration`
  train_2000.npz   2,000 other training images (x float32, y int64), for in-situ tuning of the FC layer
                   (both also hold `index`: the images' positions in the 60,000-image training set)
  training.json    seed, epochs, optimiser, train/test accuracy on the full sets, versions, date, wall time
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from cimc.mnist import load_mnist, to_model_input


class MCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.C1 = nn.Conv2d(1, 8, 3)
        self.relu1 = nn.ReLU()
        self.S2 = nn.MaxPool2d(3, 3, ceil_mode=True)     # 26 -> 9
        self.C3 = nn.Conv2d(8, 12, 3)
        self.relu3 = nn.ReLU()
        self.S4 = nn.MaxPool2d(2, 2, ceil_mode=True)     # 7 -> 4
        self.flatten = nn.Flatten()
        self.FC = nn.Linear(192, 10)

    def forward(self, x):
        x = self.S2(self.relu1(self.C1(x)))
        x = self.S4(self.relu3(self.C3(x)))
        return self.FC(self.flatten(x))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def export(model: nn.Module, path: Path) -> list[str]:
    """Classic (TorchScript) exporter, opset 13, then rename "/C1/Conv" -> "C1" and its output tensor to "C1"."""
    model.eval()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True)
    m = onnx.load(str(path))
    graph_outputs = {o.name for o in m.graph.output}
    renamed = {}
    for node in m.graph.node:
        scope = node.name.strip("/").split("/")
        new = scope[0] if len(scope) == 2 else node.name.strip("/").replace("/", ".")
        node.name = new
        for i, out in enumerate(node.output):
            if out not in graph_outputs:
                renamed[out] = new if len(node.output) == 1 else f"{new}.{i}"
                node.output[i] = renamed[out]
    for node in m.graph.node:
        for i, inp in enumerate(node.input):
            node.input[i] = renamed.get(inp, inp)
    for vi in m.graph.value_info:
        vi.name = renamed.get(vi.name, vi.name)
    m.producer_name, m.producer_version = "cimc examples/mcnn_mnist/train.py", f"torch {torch.__version__}"
    m.graph.name = "mcnn"
    m.doc_string = "Yao et al. 2020 five-layer mCNN for MNIST, trained (examples/mcnn_mnist/train.py)"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return [f"{n.name}:{n.op_type}" for n in m.graph.node]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="MNIST: directory with the IDX files or mnist_{train,test}.npz")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="examples/mcnn_mnist/artifacts")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)

    x_train_u8, y_train = load_mnist(args.data, "train")
    x_test_u8, y_test = load_mnist(args.data, "test")
    x_train, x_test = to_model_input(x_train_u8), to_model_input(x_test_u8)
    print(f"MNIST: {len(x_train)} training, {len(x_test)} test images from {args.data}")
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xv, yv = torch.from_numpy(x_test), torch.from_numpy(y_test)

    model = MCNN()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = -(-len(xt) // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    t_train = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for i in range(0, len(xt), args.batch_size):
            idx = order[i:i + args.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch:2d}/{args.epochs}: loss {total / len(xt):.4f}, test accuracy "
              f"{100 * accuracy(model, xv, yv):.2f}%  ({time.perf_counter() - t0:.1f} s)", flush=True)
    train_s = time.perf_counter() - t_train
    train_acc, test_acc = accuracy(model, xt, yt), accuracy(model, xv, yv)
    print(f"float accuracy: train {100 * train_acc:.2f}% (60k), test {100 * test_acc:.2f}% (10k); "
          f"training took {train_s:.0f} s")

    nodes = export(model, out / "mcnn.onnx")
    print(f"wrote {out / 'mcnn.onnx'}: {', '.join(nodes)}")
    try:  # the exported graph must give the same answers as PyTorch
        import onnxruntime as ort
        sess = ort.InferenceSession(str(out / "mcnn.onnx"), providers=["CPUExecutionProvider"])
        logits = np.concatenate([sess.run(["logits"], {"input": x_test[i:i + 2000]})[0]
                                 for i in range(0, len(x_test), 2000)])
        onnx_acc = float((logits.argmax(1) == y_test).mean())
        print(f"onnxruntime test accuracy of mcnn.onnx: {100 * onnx_acc:.2f}%")
    except ImportError:
        onnx_acc = None

    # Small data sets that ship with the example (compressed: mostly zero pixels).
    pick = rng.permutation(len(x_train))
    calib_idx, tune_idx = np.sort(pick[:200]), np.sort(pick[200:2200])
    np.savez_compressed(out / "test_500.npz", x=x_test[:500], y=y_test[:500])
    np.savez_compressed(out / "calib_200.npz", x=x_train[calib_idx], index=calib_idx)
    np.savez_compressed(out / "train_2000.npz", x=x_train[tune_idx], y=y_train[tune_idx], index=tune_idx)

    info = {
        "model": "Yao et al. 2020 five-layer mCNN (C1 8x3x3 - S2 3x3/3 - C3 12x3x3x8 - S4 2x2/2 - FC 192x10)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
        "optimiser": f"Adam(lr={args.lr}), cosine decay to 0 over {args.epochs * steps_per_epoch} steps, "
                     "cross-entropy, no augmentation, no weight decay",
        "input": "pixel / 255 as float32 [N, 1, 28, 28] (cimc.mnist.to_model_input)",
        "train_accuracy": round(train_acc, 6), "test_accuracy": round(test_acc, 6),
        "onnxruntime_test_accuracy": None if onnx_acc is None else round(onnx_acc, 6),
        "train_samples": len(x_train), "test_samples": len(x_test),
        "artifacts": {"test_500.npz": "test images 0..499",
                      "calib_200.npz": "200 training images, rng(seed) permutation[:200], sorted",
                      "train_2000.npz": "2,000 training images, rng(seed) permutation[200:2200], sorted"},
        "torch_version": torch.__version__, "onnx_version": onnx.__version__, "numpy_version": np.__version__,
        "python": platform.python_version(), "threads": args.threads,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "train_wall_s": round(train_s, 1), "total_wall_s": round(time.perf_counter() - t_start, 1),
    }
    (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {out}/{{test_500,calib_200,train_2000}}.npz and training.json "
          f"({time.perf_counter() - t_start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
