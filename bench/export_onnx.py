#!/usr/bin/env python3
"""Export PyTorch CNNs (with batch norm) to ONNX, plus PyTorch's logits on a few PNG images.

The files it writes are the fixtures of `crates/relushare-onnx/tests` (the importer must give
PyTorch's logits within 1e-4, relative) and models to try `relushare import` on:

    python3 bench/export_onnx.py                      # the committed fixture set (< 2 MB)
    python3 bench/export_onnx.py --all --out DIR      # also the paper's Fashion-MNIST net,
                                                      # a full-width ResNet-20 and ResNet-18
                                                      # (CIFAR-100 variant, ~45 MB)
    python3 bench/export_onnx.py --only resnet18_cifar100 --out DIR

Needs `torch` (2.x) and `onnx` (the exporter writes the file through it); optional: nothing in
the Rust build or CI runs it. Deterministic: fixed seeds, weights and batch-norm statistics
drawn from a seeded generator, images drawn from their own seeded generator and written as
8-bit PNGs by a small encoder below (zlib only), so re-running it gives the same images.

Models (eval mode, exported with the TorchScript exporter, dynamo=False, batch norm kept as
BatchNormalization nodes: training=PRESERVE):
  paper_cifar10   Table 2 of the paper (MiniONN-style, average pooling), 3x32x32
  paper_svhn      Table 3, 3x32x32
  paper_fmnist    Table 4, 1x28x28 (1.6 MB: --all only)
  resnet20_w8     ResNet-20 for CIFAR-10 at base width 8 (the committed, smaller one)
  resnet20        ResNet-20 for CIFAR-10, base width 16 (--all)
  resnet18_cifar100  ResNet-18, CIFAR-100 variant: 3x3 stem, no max-pool, 557,056 ReLUs at
                  32x32 (--all or --only; ~45 MB, never committed)
  small_maxpool   a small 1x28x28 CNN with max pooling (one padded), a Reshape and a
                  MatMul + Add classifier
Each model states its opset, whether its batch dimension is symbolic, its normalisation, its
ReLU count (comparisons, per image) and the logits of every image in fixtures.json.
"""

import argparse
import json
import os
import struct
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR_MEAN = [0.49, 0.48, 0.45]
CIFAR_STD = [0.25, 0.24, 0.26]
GRAY_MEAN = [0.29]
GRAY_STD = [0.35]


def conv_bn(cin, cout, k, pad, stride=1):
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=pad), nn.BatchNorm2d(cout), nn.ReLU()]


def paper_cifar10():
    # Table 2; our layer sizes are relushare-model's Arch::Cifar10.
    return nn.Sequential(
        *conv_bn(3, 64, 3, 1), *conv_bn(64, 64, 3, 1), nn.AvgPool2d(2, 2),
        *conv_bn(64, 64, 3, 1), *conv_bn(64, 64, 3, 1), nn.AvgPool2d(2, 2),
        *conv_bn(64, 64, 3, 1), *conv_bn(64, 64, 1, 0), *conv_bn(64, 16, 1, 0),
        nn.Flatten(), nn.Linear(1024, 10))


def paper_svhn():
    # Table 3.
    return nn.Sequential(
        *conv_bn(3, 32, 4, 0), nn.AvgPool2d(3, 3), *conv_bn(32, 64, 4, 0),
        nn.Flatten(), nn.Linear(2304, 10))


def paper_fmnist():
    # Table 4.
    return nn.Sequential(
        *conv_bn(1, 32, 3, 1), nn.AvgPool2d(2, 2), *conv_bn(32, 64, 3, 1), nn.AvgPool2d(2, 2),
        nn.Dropout(0.5), nn.Flatten(), nn.Linear(3136, 128), nn.BatchNorm1d(128), nn.ReLU(),
        nn.Linear(128, 10))


class BasicBlock(nn.Module):
    """conv-bn-relu, conv-bn, + shortcut (1x1 conv + bn when the shape changes), relu."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNets: 3x3 stem, no max-pool, stages at strides 1, 2, 2(, 2), global average
    pooling, one linear classifier."""

    def __init__(self, blocks, widths, classes):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, widths[0], 3, 1))
        layers, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


class SmallMaxPool(nn.Module):
    """1x28x28: conv-bn-relu-maxpool 2, conv-bn-relu-maxpool 3/2 pad 1, reshape, linear-relu,
    then a hand-written x @ W + b (exported as MatMul + Add)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(1, 8, 3, 1), nn.MaxPool2d(2, 2),
            *conv_bn(8, 16, 3, 1), nn.MaxPool2d(3, 2, padding=1))
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.drop = nn.Dropout(0.25)
        self.w = nn.Parameter(torch.empty(32, 10))
        self.b = nn.Parameter(torch.empty(10))

    def forward(self, x):
        x = self.features(x).reshape(-1, 16 * 7 * 7)
        x = self.drop(F.relu(self.fc1(x)))
        return torch.matmul(x, self.w) + self.b


# name: (constructor, input (c, h, w), mean, std, opset, symbolic batch, committed)
MODELS = {
    "small_maxpool": (SmallMaxPool, (1, 28, 28), GRAY_MEAN, GRAY_STD, 11, False, True),
    "paper_svhn": (paper_svhn, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, 13, True, True),
    "paper_cifar10": (paper_cifar10, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, 17, False, True),
    "resnet20_w8": (lambda: ResNet([3, 3, 3], [8, 16, 32], 10), (3, 32, 32), CIFAR_MEAN,
                    CIFAR_STD, 17, True, True),
    "paper_fmnist": (paper_fmnist, (1, 28, 28), GRAY_MEAN, GRAY_STD, 20, True, False),
    "resnet20": (lambda: ResNet([3, 3, 3], [16, 32, 64], 10), (3, 32, 32), CIFAR_MEAN,
                 CIFAR_STD, 17, True, False),
    "resnet18_cifar100": (lambda: ResNet([2, 2, 2, 2], [64, 128, 256, 512], 100), (3, 32, 32),
                          CIFAR_MEAN, CIFAR_STD, 17, True, False),
}


def randomize(model, seed):
    """Seeded weights, and non-trivial batch-norm statistics (so folding is exercised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                # He-style scale keeps deep stacks' activations in range.
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                n = m.num_features
                m.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        if isinstance(model, SmallMaxPool):
            model.w.copy_(torch.randn(32, 10, generator=g) * (2.0 / 32) ** 0.5)
            model.b.copy_(torch.randn(10, generator=g) * 0.1)


def png_bytes(pixels, c, h, w):
    """An 8-bit grayscale (c = 1) or RGB (c = 3) PNG of CHW uint8 `pixels`."""
    rows = b"".join(
        b"\x00" + bytes(pixels[k * h * w + y * w + x] for x in range(w) for k in range(c))
        for y in range(h))

    def chunk(tag, data):
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    color = 0 if c == 1 else 2
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


def make_images(c, h, w, n, seed):
    """`n` deterministic CHW uint8 images: a smooth pattern plus seeded noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ys = torch.arange(h).view(1, h, 1).float()
        xs = torch.arange(w).view(1, 1, w).float()
        ch = torch.arange(c).view(c, 1, 1).float()
        base = 127 + 90 * torch.sin((xs * (i + 1) + ys * (2 - i % 2) + 5 * ch) / 6.0)
        noise = torch.randint(-40, 41, (c, h, w), generator=g).float()
        out.append((base + noise).clamp(0, 255).to(torch.uint8))
    return out


def relu_count(model, x):
    """Comparisons of the plain network: elements through every ReLU, per image (nn.ReLU
    calls F.relu too, so counting F.relu counts both)."""
    total = [0]
    orig = F.relu

    def counting_relu(t, *a, **k):
        total[0] += t[0].numel()
        return orig(t, *a, **k)

    F.relu = counting_relu
    try:
        model(x)
    finally:
        F.relu = orig
    return total[0]


def export(name, out_dir):
    ctor, (c, h, w), mean, std, opset, symbolic, _ = MODELS[name]
    torch.manual_seed(0)
    model = ctor()
    randomize(model, seed=sum(map(ord, name)))
    model.eval()
    dummy = torch.zeros(1, c, h, w)
    path = os.path.join(out_dir, f"{name}.onnx")
    dyn = {"input": {0: "batch"}, "logits": {0: "batch"}} if symbolic else None
    torch.onnx.export(model, (dummy,), path, dynamo=False, opset_version=opset,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                      input_names=["input"], output_names=["logits"], dynamic_axes=dyn)
    images = []
    tag = "rgb32" if c == 3 else "gray28"
    for i, px in enumerate(make_images(c, h, w, 3 if c == 3 else 2, seed=1000 + c)):
        png = f"{tag}_{i}.png"
        with open(os.path.join(out_dir, png), "wb") as f:
            f.write(png_bytes(px.flatten().tolist(), c, h, w))
        x = (px.float() / 255.0 - torch.tensor(mean).view(c, 1, 1)) / torch.tensor(std).view(c, 1, 1)
        with torch.no_grad():
            logits = model(x.unsqueeze(0))[0]
        images.append({"png": png, "logits": [float(v) for v in logits]})
    with torch.no_grad():
        relus = relu_count(model, dummy)
    size = os.path.getsize(path)
    print(f"{name}: {path} ({size} bytes, opset {opset}, {relus} ReLUs)")
    return {
        "name": name,
        "onnx": f"{name}.onnx",
        "input": [c, h, w],
        "mean": mean,
        "std": std,
        "opset": opset,
        "symbolic_batch": symbolic,
        "relus": relus,
        "images": images,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "crates",
                                                  "relushare-onnx", "tests", "data"))
    ap.add_argument("--all", action="store_true", help="also the large, uncommitted models")
    ap.add_argument("--only", nargs="+", choices=sorted(MODELS), help="just these models")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    os.makedirs(a.out, exist_ok=True)
    names = a.only or [n for n, m in MODELS.items() if a.all or m[6]]
    entries = [export(n, a.out) for n in names]
    manifest = {"torch": torch.__version__, "models": entries}
    with open(os.path.join(a.out, "fixtures.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
