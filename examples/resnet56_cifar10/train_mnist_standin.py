"""Train the CIFAR ResNet-56 architecture on MNIST: a pretrained deep CNN to run cimc's accuracy chain on here.

No pretrained ResNet-56 or CIFAR-10 can be downloaded on the project's machine, so the deep-network checks of the
issues (ideal chip within 1 point of float, recovery at 0.54 uS) are run on this stand-in: the same 56-layer network
(He et al. 2016, option-A shortcuts, 3x32x32 input, 740 arrays on yao2020-resnet) trained on MNIST digits, padded
from 28x28 to 32x32 and repeated over the three input channels. MNIST is far easier than CIFAR-10, so the float
accuracy is near 99% and the chip has more margin to lose: read its figures as "the commands work on a deep trained
network", not as CIFAR-10 numbers.

    pip install -e '.[train]'
    python examples/resnet56_cifar10/train_mnist_standin.py --data ../shared/data --out r56_mnist

Writes to --out: resnet56_mnist.onnx (opset 13, input "input" [N, 3, 32, 32], output "logits" [N, 10]; legacy
exporter, so node names are torch's "/layer1/layer1.0/conv1/Conv"), calib_200.npz, tune_2000.npz (training images
not used for calibration) and test.npz (the first --test images of the MNIST test set), each x float32
[N, 3, 32, 32] normalised as the model expects and y int64; training.json with the settings and accuracies.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cimc.mnist import load_mnist

MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics on [0, 1]


def to_input(x_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 3, 32, 32]: pad 2 pixels of black each side, normalise, repeat channels."""
    x = np.pad(x_uint8.astype(np.float32) / 255.0, ((0, 0), (2, 2), (2, 2)))
    x = (x - MEAN) / STD
    return np.repeat(x[:, None], 3, axis=1).astype(np.float32)


class Block(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or cin != planes) else 0

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        # option A: identity, or x[:, :, ::2, ::2] zero-padded with planes // 4 channels on each side
        sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(y + sc)


class ResNet56(nn.Module):
    def __init__(self, n: int = 9, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                blocks.append(Block(cin, planes, 2 if stage > 0 and b == 0 else 1))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def evaluate(model, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            hits += int((model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
    return hits / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with mnist_train.npz / mnist_test.npz or the IDX files")
    p.add_argument("--out", required=True)
    p.add_argument("--train-images", type=int, default=30000, help="training images per epoch (seeded subset)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--test", type=int, default=2000, help="test images written to test.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    xtr, ytr = load_mnist(a.data, "train")
    xte, yte = load_mnist(a.data, "test")
    order = rng.permutation(len(xtr))
    calib, tune, train = order[:200], order[200:2200], order[2200:]
    model = ResNet56()
    steps = a.epochs * (min(a.train_images, len(train)) // 128)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.2)
    t0, step = time.time(), 0
    for epoch in range(a.epochs):
        idx = rng.permutation(train)[:a.train_images]
        model.train()
        for i in range(0, len(idx) - 127, 128):
            xb = torch.from_numpy(to_input(xtr[idx[i:i + 128]]))
            loss = F.cross_entropy(model(xb), torch.from_numpy(ytr[idx[i:i + 128]].astype(np.int64)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 20 == 0:
                print(f"epoch {epoch} step {step}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    x_test = to_input(xte[:a.test])
    y_test = yte[:a.test].astype(np.int64)
    acc = evaluate(model, x_test, y_test)
    print(f"test accuracy on {a.test} images: {acc:.4f}")
    model.eval()
    torch.onnx.export(model, torch.from_numpy(x_test[:2]), out / "resnet56_mnist.onnx", opset_version=13,
                      input_names=["input"], output_names=["logits"], dynamo=False,
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    np.savez(out / "calib_200.npz", x=to_input(xtr[calib]), index=calib)
    np.savez(out / "tune_2000.npz", x=to_input(xtr[tune]), y=ytr[tune].astype(np.int64), index=tune)
    np.savez(out / "test.npz", x=x_test, y=y_test)
    (out / "training.json").write_text(json.dumps({
        "seed": a.seed, "epochs": a.epochs, "train_images_per_epoch": a.train_images, "batch": 128,
        "optimiser": "SGD nesterov 0.9, one-cycle max lr 0.1, wd 1e-4", "test_images": a.test,
        "test_accuracy": acc, "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
        "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
