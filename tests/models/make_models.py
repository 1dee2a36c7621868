"""Write the coverage suite's ONNX files (issue 15) into this folder: small models, random seeded weights.

Needs torch and torchvision, only when it runs (never in CI: the files it writes are committed):

    /work/torchvenv/bin/python tests/models/make_models.py

(a venv with torch==2.13.0, onnxscript, onnx, torchvision==0.28.0; see /work/shared/reference/tooling.md). Every
model is built under `torch.manual_seed(SEED)`, then made to behave like a trained net at unit activation scale
(its logits depend on the input) and to have no identity normalisation: random Linear weights, random values where
torch starts at zero, BatchNorm statistics measured on random inputs and then randomised, random BatchNorm and
LayerNorm affine parameters (randomise_linear, randomise_zeros, measure_batchnorm, randomise_normalisation). The
exports are deterministic: running the script again writes the same bytes (it prints a sha256 per file to check).

Files, `<model>_<exporter>[_b1].onnx`:
- exporter `dynamo`: torch.onnx.export(dynamo=True), the default (opset 20 here, ReduceMean for average pooling,
  LayerNormalization, Gelu). It has static shapes, so its files have a fixed batch of 1 (`_b1`, as the ONNX model
  zoo's), and the per-node metadata the exporter adds (stack traces with local paths) is dropped. All inline
  except `regnet_dynamo_b1.onnx`, which keeps its weights in `regnet_dynamo_b1.onnx.data` beside it (external
  data, read relative to the model file).
- exporter `legacy`: dynamo=False (TorchScript, opset 17): a symbolic batch axis "N" (and "T" for the sequence
  of the BERT-like encoder), except the `_b1` files, exported without dynamic axes.
Keep them small: all files together under ~3 MB (`du -ch tests/models/*.onnx*`).
"""
from __future__ import annotations

import hashlib
import io
import math
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from functools import partial
from pathlib import Path

import onnx
import torch
import torchvision
from torch import nn
from torchvision.models import efficientnet, mobilenetv3, regnet

SEED = 0
CLASSES = 10
LEGACY_OPSET = 17
HERE = Path(__file__).resolve().parent


# -- the models ---------------------------------------------------------------------------------------------------
def mobilenet_v3():
    """MobileNetV3-small (HardSwish, HardSigmoid in squeeze-excitation) at width 0.25 with the reduced tail."""
    setting, last = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25, reduced_tail=True)
    return mobilenetv3.MobileNetV3(setting, last, num_classes=CLASSES)


def shufflenet_v2():
    return torchvision.models.ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128], num_classes=CLASSES)


def mnasnet():
    """MnasNet-A at alpha 0.1 with a 128-channel head instead of torchvision's fixed 1280 (which alone would be
    160 KiB)."""
    model = torchvision.models.MNASNet(alpha=0.1, num_classes=CLASSES)
    head = 128
    model.layers[14] = nn.Conv2d(model.layers[14].in_channels, head, 1, bias=False)
    model.layers[15] = nn.BatchNorm2d(head)
    model.classifier[1] = nn.Linear(head, CLASSES)
    return model


def efficientnet_b0():
    """EfficientNet-B0's block list (MBConv, squeeze-excitation, SiLU) at a tenth of the width, half the depth."""
    setting, last = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.1, depth_mult=0.5)
    return efficientnet.EfficientNet(setting, dropout=0.2, num_classes=CLASSES, last_channel=last)


def regnet_x():
    """A RegNetX (grouped bottlenecks, no squeeze-excitation) of 4 stages, widths 8..64."""
    params = regnet.BlockParams.from_init_params(depth=6, w_0=8, w_a=8.0, w_m=2.0, group_width=8)
    return regnet.RegNet(params, num_classes=CLASSES, stem_width=8)


def vit_tiny():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=CLASSES)


class BertTiny(nn.Module):
    """A BERT-like encoder on embeddings: x [batch, seq, 32] (float: cimc takes float inputs, so the token
    embedding is the caller's) + a learned positional embedding looked up with Gather (positions 0..seq-1 from the
    input's shape), LayerNorm, 2 post-norm encoder layers with GELU, the first token's vector -> Linear."""

    def __init__(self, hidden=32, heads=2, mlp=64, layers=2, max_seq=16):
        super().__init__()
        self.position = nn.Embedding(max_seq, hidden)
        self.norm = nn.LayerNorm(hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, mlp, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x):
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.encoder(self.norm(x + self.position(positions)))
        return self.head(h[:, 0])


class RecurrentClassifier(nn.Module):
    """LSTM or GRU over x [batch, 6 steps, 8 features]; the last step's hidden state -> Linear."""

    def __init__(self, cell, features=8, hidden=16):
        super().__init__()
        self.rnn = cell(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UNetTiny(nn.Module):
    """Two levels: down by MaxPool, up by ConvTranspose (stride 2) and by Upsample (-> Resize), skip Concats;
    per-pixel logits for 2 classes on a 32x32 image."""

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2, self.mid = _conv_bn_relu(3, 8), _conv_bn_relu(8, 16), _conv_bn_relu(16, 16)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.dec2 = _conv_bn_relu(32, 8)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = _conv_bn_relu(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)                       # 8 x 32 x 32
        e2 = self.enc2(self.pool(e1))           # 16 x 16 x 16
        m = self.mid(self.pool(e2))             # 16 x 8 x 8
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))       # 8 x 16 x 16
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))      # 8 x 32 x 32
        return self.out(d1)


def conv1d_net():
    """x [batch, 4 channels, 64 steps]."""
    return nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(8, 16, 3, stride=2, dilation=2, padding=2, groups=2), nn.BatchNorm1d(16),
                         nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, CLASSES))


def conv3d_net():
    """x [batch, 2 channels, 8 frames, 16, 16]."""
    return nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.MaxPool3d(2),
                         nn.Conv3d(8, 8, 3, stride=(1, 2, 2), padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, CLASSES))


IMAGE32, IMAGE64 = (3, 32, 32), (3, 64, 64)
# name -> (builder, one sample's shape, names of the axes after the batch that are symbolic in legacy exports)
MODELS = {
    "mobilenet_v3_small": (mobilenet_v3, IMAGE32, {}),
    "shufflenet_v2": (shufflenet_v2, IMAGE32, {}),
    "mnasnet": (mnasnet, IMAGE32, {}),
    "efficientnet_b0": (efficientnet_b0, IMAGE64, {}),
    "regnet": (regnet_x, IMAGE32, {}),
    "vit_tiny": (vit_tiny, IMAGE32, {}),
    "bert_tiny": (BertTiny, (8, 32), {1: "T"}),
    "lstm": (partial(RecurrentClassifier, nn.LSTM), (6, 8), {}),
    "gru": (partial(RecurrentClassifier, nn.GRU), (6, 8), {}),
    "unet_tiny": (UNetTiny, IMAGE32, {}),
    "conv1d_net": (conv1d_net, (4, 64), {}),
    "conv3d_net": (conv3d_net, (2, 8, 16, 16), {}),
}
# file name -> (model, exporter, fixed batch of 1?)
FILES = {
    "mobilenet_v3_small_legacy.onnx": ("mobilenet_v3_small", "legacy", False),
    "mobilenet_v3_small_dynamo_b1.onnx": ("mobilenet_v3_small", "dynamo", True),
    "shufflenet_v2_legacy.onnx": ("shufflenet_v2", "legacy", False),
    "shufflenet_v2_dynamo_b1.onnx": ("shufflenet_v2", "dynamo", True),
    "mnasnet_legacy_b1.onnx": ("mnasnet", "legacy", True),
    "efficientnet_b0_dynamo_b1.onnx": ("efficientnet_b0", "dynamo", True),
    "regnet_legacy.onnx": ("regnet", "legacy", False),
    "regnet_dynamo_b1.onnx": ("regnet", "dynamo", True),          # + regnet_dynamo_b1.onnx.data
    "vit_tiny_legacy.onnx": ("vit_tiny", "legacy", False),
    "vit_tiny_dynamo_b1.onnx": ("vit_tiny", "dynamo", True),
    "bert_tiny_legacy.onnx": ("bert_tiny", "legacy", False),
    "bert_tiny_dynamo_b1.onnx": ("bert_tiny", "dynamo", True),
    "lstm_legacy.onnx": ("lstm", "legacy", False),
    "lstm_dynamo_b1.onnx": ("lstm", "dynamo", True),
    "gru_legacy.onnx": ("gru", "legacy", False),
    "gru_dynamo_b1.onnx": ("gru", "dynamo", True),
    "unet_tiny_legacy.onnx": ("unet_tiny", "legacy", False),
    "unet_tiny_dynamo_b1.onnx": ("unet_tiny", "dynamo", True),
    "conv1d_net_legacy.onnx": ("conv1d_net", "legacy", False),
    "conv3d_net_legacy.onnx": ("conv3d_net", "legacy", False),
}
EXTERNAL_DATA = {"regnet_dynamo_b1.onnx"}
# both exporters fold eval-mode BatchNorm into the Conv before it; without constant folding the legacy exporter
# keeps BatchNormalization nodes, so cimc's own folding is tested too
KEEP_BATCHNORM = {"unet_tiny_legacy.onnx", "conv1d_net_legacy.onnx", "conv3d_net_legacy.onnx"}


def randomise_linear(model: nn.Module, generator: torch.Generator) -> None:
    """Every Linear weight ~ N(0, 1 / fan_in) and bias ~ N(0, 0.1): torchvision starts classifier heads near zero
    (MobileNetV3: N(0, 0.01^2); ViT: zeros), so the logits would hardly depend on the image."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(m.in_features ** -0.5 * torch.randn(m.weight.shape, generator=generator))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))


def randomise_zeros(model: nn.Module, generator: torch.Generator) -> None:
    """Other parameters torch starts at zero (conv biases, ViT's class token) get N(0, 0.1) (vectors) or
    N(0, 1 / fan_in) (the rest)."""
    with torch.no_grad():
        for p in model.parameters():
            if bool((p == 0).all()):
                std = 0.1 if p.dim() == 1 else p[0].numel() ** -0.5
                p.copy_(std * torch.randn(p.shape, generator=generator))


def measure_batchnorm(model: nn.Module, shape: tuple[int, ...], generator: torch.Generator) -> None:
    """Each BatchNorm's running statistics measured on 32 random N(0, 1) inputs (BatchNorms in training mode, the
    rest in eval mode: no dropout), as training would leave them: activations keep about unit scale through the
    net. With torch's initial statistics (mean 0, var 1) a random deep net's signal vanishes and its output is a
    constant."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                   # a cumulative average: after one batch, exactly its statistics
        m.train()
    with torch.no_grad():
        model(torch.randn((32, *shape), generator=generator))
    for m in norms:
        m.momentum = 0.1


def randomise_normalisation(model: nn.Module, generator: torch.Generator) -> None:
    """No normalisation is an identity, so folding or running it is really tested. BatchNorm: gamma ~ U(0.5, 1.5),
    beta ~ N(0, 0.1), the measured mean moved by N(0, 0.1^2) standard deviations, the variance scaled by
    U(0.8, 1.25); LayerNorm: the same gamma and beta."""
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
            shape = m.weight.shape
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                m.bias.copy_(0.1 * torch.randn(shape, generator=generator))
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(shape, generator=generator))
                    m.running_var.mul_(0.8 + 0.45 * torch.rand(shape, generator=generator))


def save_without_node_metadata(model: onnx.ModelProto, path: Path, external: bool) -> None:
    """The dynamo exporter annotates every node with metadata_props (its Python stack trace, with this machine's
    paths, and torch's module scopes): nearly half of a file, and no part of the model's meaning. Drop them."""
    for node in model.graph.node:
        del node.metadata_props[:]
    if external:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, path)


def build(name: str) -> tuple[nn.Module, tuple[int, ...], dict]:
    builder, shape, axes = MODELS[name]
    torch.manual_seed(SEED)
    model = builder()
    generator = torch.Generator().manual_seed(SEED + 1)
    randomise_linear(model, generator)
    randomise_zeros(model, generator)
    measure_batchnorm(model, shape, generator)
    randomise_normalisation(model, generator)
    return model.eval(), shape, axes


def export(file: str) -> None:
    name, exporter, fixed = FILES[file]
    model, shape, axes = build(name)
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(SEED + 2))
    path = HERE / file
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    # no torch.no_grad(): under it eval-mode attention takes a fused fast path the legacy exporter cannot write
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(model, (x,), input_names=["input"], output_names=["logits"], dynamo=True)
            save_without_node_metadata(program.model_proto, path, file in EXTERNAL_DATA)
        else:
            dynamic = None if fixed else {"input": {0: "N", **axes}, "logits": {0: "N"}}
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=LEGACY_OPSET,
                              input_names=["input"], output_names=["logits"], dynamic_axes=dynamic,
                              do_constant_folding=file not in KEEP_BATCHNORM)


def main(argv: list[str]) -> None:
    files = argv or list(FILES)
    for file in files:
        export(file)
        written = sorted(HERE.glob(file + "*"))
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in written)).hexdigest()[:12]
        size = sum(p.stat().st_size for p in written)
        print(f"{file:40s} {math.ceil(size / 1024):6d} KiB  sha256 {digest}")


if __name__ == "__main__":
    main(sys.argv[1:])
