#!/usr/bin/env python3
"""PyTorch CPU training throughput of the paper's three networks (reference for `relushare bench`).

Optional to run (needs `pip install torch`). Same architectures as relushare-model's specs
(plain ReLU, average pooling), batch 64, SGD with momentum, random inputs; prints images/s of
forward+backward+step with the given number of threads, as JSON.

    python3 bench/pytorch_train.py --threads 2 --steps 30
"""
import argparse
import json
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
