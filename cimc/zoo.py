"""Reference ONNX models for the examples, tests and benchmarks, built with ``onnx.helper`` from seeded numpy weights.

All models take a float32 tensor named ``input`` with a symbolic batch dimension ``N`` and return ``logits``. Weights
come from ``np.random.default_rng(seed)``, so a seed gives the same model every time. They are untrained: they exist to
give the compiler real layer shapes, not to classify anything.

``resnet56``
    The CIFAR-10 ResNet-56 of He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2: a 3x3
    conv with 16 filters on the 3x32x32 image, then three stages of n = 9 basic blocks (two 3x3 convs each) with 16,
    32 and 64 filters on 32x32, 16x16 and 8x8 maps (the first block of stages 2 and 3 has stride 2), global average
    pooling and a 64 -> 10 fully-connected layer: 6n + 2 = 56 weighted layers (55 Conv + 1 Gemm). Shortcut "A" is
    the paper's option A: identity, and on downsampling ``x[:, :, ::2, ::2]`` zero-padded with planes // 4 channels on
    each side, as in the common CIFAR implementation. Shortcut "B" projects with a 1x1 stride-2 conv + BN instead.
``resnet20``
    The same family with n = 3 blocks per stage (20 weighted layers): the model of benchmarks/bench_peers.py.
``resnet50_imagenet``
    ResNet-50 (He et al. 2016, Table 1) for 3x224x224 ImageNet images, v1.5 variant as in torchvision (the stride of a
    downsampling bottleneck sits on its 3x3 conv): 7x7/2 conv stem + 3x3/2 max-pool, [3, 4, 6, 3] bottleneck blocks
    of widths 64..512 (x4 expansion) with 1x1 conv + BN projection shortcuts, global average pooling, 2048 -> 1000
    fully-connected layer; about 25.6 M parameters. Meant for compile-speed benchmarks.
``mcnn``
    The five-layer memristor CNN of Yao et al., "Fully hardware-implemented memristor convolutional neural network",
    Nature 577, 641 (2020), for 1x28x28 MNIST digits: C1 (8 3x3 kernels, 26x26) - ReLU - S2 (3x3/3 max-pool, 9x9) -
    C3 (12 3x3x8 kernels, 7x7) - ReLU - S4 (2x2/2 max-pool, 4x4) - FC (192 -> 10). The pools use ceil_mode so that
    26 -> 9 and 7 -> 4 as in the paper.
``mlp``
    Fully-connected Gemm-Relu-...-Gemm network; the default 64-54-10 is the two-layer perceptron of Li et al.,
    "Efficient and self-adaptive in-situ learning in multilayer memristor neural networks", Nat. Commun. 9, 2385
    (2018), on 8x8 digit images.

Weights are He-normal (std sqrt(2 / fan_in)); biases U(+-1/sqrt(fan_in)) as in PyTorch. BatchNormalization parameters
are realistic rather than raw noise: the builder pushes a small batch of random images through the network in numpy
while it builds, sets each BN's running mean and variance to the statistics it sees there (as a trained network's
would be), then perturbs them: running_mean = mean + N(0, 0.1) * std, running_var = var * U(0.5, 1.5), with
gamma ~ U(0.5, 1.5) and beta ~ N(0, 0.1). Activations thus stay O(1) through all 56 layers and different inputs give
different top-1 classes. Node names follow torchvision ("conv1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.add",
"layer2.0.shortcut.conv", "fc"); each node's output tensor has the node's name, except the last, ``logits``;
initializers are "<node>.weight", "<node>.bias", "<node>.running_mean", "<node>.running_var".
"""

from __future__ import annotations

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

__all__ = ["resnet56", "resnet20", "resnet50_imagenet", "mcnn", "mlp"]

_MIN_OPSET = 11  # Pad and Slice take their parameters as inputs from opset 11 (Slice from 10)


class _Builder:
    """Accumulates nodes and initializers, and runs each layer on a calibration batch to set realistic BN stats."""

    def __init__(self, seed: int, opset: int, calib: np.ndarray):
        if opset < _MIN_OPSET:
            raise ValueError(f"opset {opset} is not supported by cimc.zoo (need >= {_MIN_OPSET})")
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.act = {"input": calib}  # tensor name -> float64 calibration activations

    # -- plumbing ------------------------------------------------------------------------------------------------
    def param(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, value: np.ndarray, out: str | None = None, **attrs) -> str:
        out = out or name
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        self.act[out] = value
        return out

    def _he(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))

    def _bias(self, n: int, fan_in: int) -> np.ndarray:
        bound = 1.0 / np.sqrt(fan_in)
        return self.rng.uniform(-bound, bound, n).astype(np.float32)

    # -- layers --------------------------------------------------------------------------------------------------
    def conv(self, x: str, name: str, cout: int, k: int, stride: int = 1, pad: int = 0, bias: bool = False) -> str:
        cin = self.act[x].shape[1]
        w = self._he((cout, cin, k, k), cin * k * k)
        inputs = [x, self.param(f"{name}.weight", w)]
        a = np.pad(self.act[x], ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        win = sliding_window_view(a, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # N, C, OH, OW, k, k
        y = np.einsum("nchwij,ocij->nohw", win, w.astype(np.float64), optimize=True)
        if bias:
            b = self._bias(cout, cin * k * k)
            inputs.append(self.param(f"{name}.bias", b))
            y = y + b[:, None, None]
        return self.node("Conv", inputs, name, y, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def bn(self, x: str, name: str) -> str:
        a = self.act[x]
        c = a.shape[1]
        mean, var = a.mean(axis=(0, 2, 3)), a.var(axis=(0, 2, 3))
        var = np.maximum(var, 1e-3 * var.mean() + 1e-12)
        gamma = self.rng.uniform(0.5, 1.5, c)
        beta = self.rng.normal(0.0, 0.1, c)
        run_mean = mean + self.rng.normal(0.0, 0.1, c) * np.sqrt(var)
        run_var = var * self.rng.uniform(0.5, 1.5, c)
        params = [gamma, beta, run_mean, run_var]
        names = [f"{name}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
        inputs = [x] + [self.param(n, p.astype(np.float32)) for n, p in zip(names, params)]
        eps = 1e-5
        gamma, beta, run_mean, run_var = (p.astype(np.float32).astype(np.float64)[:, None, None] for p in params)
        y = (a - run_mean) / np.sqrt(run_var + eps) * gamma + beta
        return self.node("BatchNormalization", inputs, name, y, epsilon=eps)

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name, np.maximum(self.act[x], 0.0))

    def add(self, a: str, b: str, name: str) -> str:
        return self.node("Add", [a, b], name, self.act[a] + self.act[b])

    def maxpool(self, x: str, name: str, k: int, stride: int, pad: int = 0, ceil: bool = False) -> str:
        a = self.act[x]
        h = a.shape[2] + 2 * pad - k
        extra = (-h) % stride if ceil else 0  # ceil_mode: a last, partial window
        a = np.pad(a, ((0, 0), (0, 0), (pad, pad + extra), (pad, pad + extra)), constant_values=-np.inf)
        y = sliding_window_view(a, (k, k), axis=(2, 3))[:, :, ::stride, ::stride].max(axis=(4, 5))
        return self.node("MaxPool", [x], name, y, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
                         ceil_mode=int(ceil))

    def shortcut_a(self, x: str, name: str, planes: int) -> str:
        """Option A downsampling shortcut: x[:, :, ::2, ::2] (Slice), then planes // 4 zero channels each side (Pad)."""
        a = self.act[x]
        h, w = a.shape[2:]
        sl = [self.param(f"{name}.slice.{k}", np.array(v, dtype=np.int64)) for k, v in
              (("starts", [0, 0]), ("ends", [h, w]), ("axes", [2, 3]), ("steps", [2, 2]))]
        s = self.node("Slice", [x, *sl], f"{name}.slice", a[:, :, ::2, ::2])
        p = planes // 4
        pads = self.param(f"{name}.pad.pads", np.array([0, p, 0, 0, 0, p, 0, 0], dtype=np.int64))
        y = np.pad(self.act[s], ((0, 0), (p, p), (0, 0), (0, 0)))
        return self.node("Pad", [s, pads], f"{name}.pad", y, mode="constant")

    def head(self, x: str, num_classes: int) -> str:
        """GlobalAveragePool - Flatten - Gemm "fc" -> logits."""
        g = self.node("GlobalAveragePool", [x], "avgpool", self.act[x].mean(axis=(2, 3), keepdims=True))
        f = self.node("Flatten", [g], "flatten", self.act[g].reshape(len(self.act[g]), -1), axis=1)
        return self.gemm(f, "fc", num_classes, out="logits")

    def gemm(self, x: str, name: str, cout: int, out: str | None = None) -> str:
        cin = self.act[x].shape[1]
        w, b = self._he((cout, cin), cin), self._bias(cout, cin)
        y = self.act[x] @ w.T.astype(np.float64) + b
        inputs = [x, self.param(f"{name}.weight", w), self.param(f"{name}.bias", b)]
        return self.node("Gemm", inputs, name, y, out=out, transB=1)

    def model(self, graph_name: str, input_shape: list, num_classes: int, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, graph_name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
            initializer=self.inits, doc_string=doc)
        return helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                             producer_name="cimc.zoo", doc_string=doc)


def _calibration_batch(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Normalised random images (zero mean, unit variance) that set the BN statistics; independent of the weights."""
    return np.random.default_rng([seed, 1]).standard_normal(shape)


def resnet56(seed: int = 0, shortcut: str = "A", opset: int = 13, num_classes: int = 10) -> onnx.ModelProto:
    """CIFAR-10 ResNet-56 (He et al. 2016): input [N, 3, 32, 32], output logits [N, num_classes]."""
    return _cifar_resnet(9, seed, shortcut, opset, num_classes)


def resnet20(seed: int = 0, shortcut: str = "A", opset: int = 13, num_classes: int = 10) -> onnx.ModelProto:
    """CIFAR-10 ResNet-20 (He et al. 2016, n = 3): resnet56 with three basic blocks per stage (19 Conv + 1 Gemm)."""
    return _cifar_resnet(3, seed, shortcut, opset, num_classes)


def _cifar_resnet(n: int, seed: int, shortcut: str, opset: int, num_classes: int) -> onnx.ModelProto:
    """The CIFAR ResNet of depth 6n + 2 (see the module doc)."""
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut must be 'A' or 'B', not {shortcut!r}")
    b = _Builder(seed, opset, _calibration_batch(seed, (8, 3, 32, 32)))
    x = b.relu(b.bn(b.conv("input", "conv1", 16, 3, pad=1), "bn1"), "relu")
    cin = 16
    for stage, planes in enumerate((16, 32, 64), start=1):
        for block in range(n):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = b.relu(b.bn(b.conv(x, f"{p}.conv1", planes, 3, stride, 1), f"{p}.bn1"), f"{p}.relu1")
            y = b.bn(b.conv(y, f"{p}.conv2", planes, 3, 1, 1), f"{p}.bn2")
            if stride == 1 and cin == planes:
                sc = x
            elif shortcut == "A":
                sc = b.shortcut_a(x, f"{p}.shortcut", planes)
            else:
                sc = b.bn(b.conv(x, f"{p}.shortcut.conv", planes, 1, stride), f"{p}.shortcut.bn")
            x = b.relu(b.add(y, sc, f"{p}.add"), f"{p}.relu2")
            cin = planes
    b.head(x, num_classes)
    depth = 6 * n + 2
    return b.model(f"resnet{depth}{shortcut.lower()}", [3, 32, 32], num_classes,
                   f"CIFAR-10 ResNet-{depth} (He et al. 2016), option-{shortcut} shortcuts, seed {seed}")


def resnet50_imagenet(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """ImageNet ResNet-50 v1.5: input [N, 3, 224, 224], output logits [N, 1000]."""
    # BN statistics are taken on 112x112 images (batch 2): the layers are the same, the calibration 4x cheaper.
    b = _Builder(seed, opset, _calibration_batch(seed, (2, 3, 112, 112)))
    x = b.relu(b.bn(b.conv("input", "conv1", 64, 7, 2, 3), "bn1"), "relu")
    x = b.maxpool(x, "maxpool", 3, 2, 1)
    cin = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = b.relu(b.bn(b.conv(x, f"{p}.conv1", width, 1), f"{p}.bn1"), f"{p}.relu1")
            y = b.relu(b.bn(b.conv(y, f"{p}.conv2", width, 3, stride, 1), f"{p}.bn2"), f"{p}.relu2")
            y = b.bn(b.conv(y, f"{p}.conv3", 4 * width, 1), f"{p}.bn3")
            if block == 0:
                x = b.bn(b.conv(x, f"{p}.shortcut.conv", 4 * width, 1, stride), f"{p}.shortcut.bn")
            x = b.relu(b.add(y, x, f"{p}.add"), f"{p}.relu3")
            cin = 4 * width
    assert cin == 2048
    b.head(x, 1000)
    return b.model("resnet50", [3, 224, 224], 1000, f"ImageNet ResNet-50 v1.5 (He et al. 2016), seed {seed}")


def mcnn(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """Yao et al. 2020 five-layer mCNN: input [N, 1, 28, 28], C1-S2-C3-S4-FC, output logits [N, 10]."""
    b = _Builder(seed, opset, _calibration_batch(seed, (2, 1, 28, 28)))
    x = b.maxpool(b.relu(b.conv("input", "C1", 8, 3, bias=True), "relu1"), "S2", 3, 3, ceil=True)   # 8x9x9
    x = b.maxpool(b.relu(b.conv(x, "C3", 12, 3, bias=True), "relu3"), "S4", 2, 2, ceil=True)        # 12x4x4
    x = b.node("Flatten", [x], "flatten", b.act[x].reshape(len(b.act[x]), -1), axis=1)               # 192
    b.gemm(x, "FC", 10, out="logits")
    return b.model("mcnn", [1, 28, 28], 10, f"Yao et al. 2020 five-layer mCNN for MNIST, seed {seed}")


def mlp(sizes: tuple[int, ...] = (64, 54, 10), seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """Fully-connected Gemm "fc1" - Relu "relu1" - ... - Gemm "fcK": input [N, sizes[0]], logits [N, sizes[-1]]."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError("mlp needs at least an input and an output size")
    b = _Builder(seed, opset, _calibration_batch(seed, (2, sizes[0])))
    x = "input"
    for i, n in enumerate(sizes[1:], start=1):
        last = i == len(sizes) - 1
        x = b.gemm(x, f"fc{i}", n, out="logits" if last else None)
        if not last:
            x = b.relu(x, f"relu{i}")
    doc = f"{'-'.join(map(str, sizes))} perceptron (Li et al. 2018), seed {seed}"
    return b.model("mlp", [sizes[0]], sizes[-1], doc)
