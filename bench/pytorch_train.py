#!/usr/bin/env python3
"""PyTorch references for relushare (optional to run; needs `pip install torch numpy`).

Throughput (default): the paper's three networks as relushare-model specifies them (plain ReLU,
average pooling), batch 64, SGD with momentum, random inputs; prints images/s of
forward+backward+step with the given number of threads, as JSON.

    python3 bench/pytorch_train.py --threads 2 --steps 30

Training fidelity (`--fmnist-dir DIR`): trains the Fashion-MNIST network (`original`) on the
official IDX files under DIR/fashion-mnist with relushare's default recipe, seed by seed, and
prints the test accuracy on all 10,000 test images per seed, as JSON. The recipe is
`relushare train --arch fmnist --preset original --dataset fmnist --epochs E` (TrainConfig's
defaults): pixels / 255 normalised with mean 0.2860 and std 0.3530, PyTorch's default
initialisation, Adam (betas 0.9/0.999, no weight decay) at 1e-3 annealed to 0 by a per-step
cosine, batch 64 with the last partial batch kept, a fresh shuffle every epoch, dropout 0.5
before the first linear layer, cross-entropy, no augmentation. The random streams (init,
shuffles, dropout masks) are PyTorch's, so runs match relushare statistically, not bit for bit.

    python3 bench/pytorch_train.py --fmnist-dir /usr/share/datasets --epochs 10 --seeds 1,2,3
"""
import argparse
import json
import sys
import time

import torch
from torch import nn


def cifar10():
    c = lambda i, o, k, p: [nn.Conv2d(i, o, k, padding=p), nn.ReLU()]
    return nn.Sequential(
        *c(3, 64, 3, 1), *c(64, 64, 3, 1), nn.AvgPool2d(2),
        *c(64, 64, 3, 1), *c(64, 64, 3, 1), nn.AvgPool2d(2),
        *c(64, 64, 3, 1), *c(64, 64, 1, 0), *c(64, 16, 1, 0),
        nn.Flatten(), nn.Linear(1024, 10)), (3, 32, 32)


def svhn():
    return nn.Sequential(
        nn.Conv2d(3, 32, 4), nn.ReLU(), nn.AvgPool2d(3),
        nn.Conv2d(32, 64, 4), nn.ReLU(), nn.Flatten(), nn.Linear(2304, 10)), (3, 32, 32)


def fmnist():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10)), (1, 28, 28)


def idx(path):
    """An IDX file (gzipped or not) as a numpy array."""
    import gzip
    import numpy as np
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fmnist_split(root, prefix):
    import os
    d = os.path.join(root, "fashion-mnist")
    def find(name):
        for n in (name + ".gz", name):
            if os.path.exists(os.path.join(d, n)):
                return os.path.join(d, n)
        raise SystemExit(f"{d} has no {name}(.gz)")
    x = idx(find(f"{prefix}-images-idx3-ubyte")).astype("float32") / 255.0
    y = idx(find(f"{prefix}-labels-idx1-ubyte")).astype("int64")
    x = (x - 0.2860) / 0.3530
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def train_fmnist(args):
    import math
    xtr, ytr = fmnist_split(args.fmnist_dir, "train")
    xte, yte = fmnist_split(args.fmnist_dir, "t10k")
    out = {"torch": torch.__version__, "threads": args.threads, "epochs": args.epochs,
           "batch": args.batch, "train_images": len(ytr), "test_images": len(yte), "runs": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        torch.manual_seed(seed)
        net, _ = fmnist()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999))
        loss_fn = nn.CrossEntropyLoss()
        n = len(ytr)
        batches = math.ceil(n / args.batch)
        total = batches * args.epochs
        curve = []
        t0 = time.perf_counter()
        for epoch in range(args.epochs):
            net.train()
            order = torch.randperm(n)
            for b in range(batches):
                step = epoch * batches + b
                for g in opt.param_groups:
                    g["lr"] = 1e-3 * 0.5 * (1.0 + math.cos(math.pi * step / total))
                i = order[b * args.batch:(b + 1) * args.batch]
                opt.zero_grad()
                loss_fn(net(xtr[i]), ytr[i]).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                correct = sum(int((net(xte[j:j + 1000]).argmax(1) == yte[j:j + 1000]).sum())
                              for j in range(0, len(yte), 1000))
            curve.append(100.0 * correct / len(yte))
            print(f"seed {seed} epoch {epoch + 1}: test {curve[-1]:.2f}%", file=sys.stderr)
        out["runs"].append({"seed": seed, "test_accuracy": curve[-1], "curve": curve,
                            "seconds": time.perf_counter() - t0})
    accs = [r["test_accuracy"] for r in out["runs"]]
    mean = sum(accs) / len(accs)
    std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
    out["accuracy_mean"], out["accuracy_std"] = mean, std
    out["command"] = "python3 bench/pytorch_train.py " + " ".join(sys.argv[1:])
    print(json.dumps(out, indent=2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--fmnist-dir", help="train the Fashion-MNIST network on DIR/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="1,2,3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.fmnist_dir:
        train_fmnist(args)
        return
    out = {"threads": args.threads, "batch": args.batch, "torch": torch.__version__}
    for name, build in [("cifar10", cifar10), ("svhn", svhn), ("fmnist", fmnist)]:
        net, shape = build()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(args.batch, *shape)
        y = torch.randint(0, 10, (args.batch,))
        loss_fn = nn.CrossEntropyLoss()
        for i in range(args.steps + 3):
            if i == 3:
                t0 = time.perf_counter()
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
        dt = time.perf_counter() - t0
        out[name] = {"images_per_second": args.steps * args.batch / dt}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
