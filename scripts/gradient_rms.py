"""Measure Adam's per-element gradient RMS √v̂ on the strength-sweep benchmark (maps coupled λ to decoupled λ).

Under Adam the coupled penalty's step is ≈ lr·λ_c·∇R/√v̂, the decoupled one lr·λ_d·∇R, so λ_d ≈ λ_c / √v̂.
Trains the Fashion-MNIST random-label MLP (no LayerNorm) with plain Adam for a few tasks and prints the median and
mean of √v̂ over each weight matrix's entries at each task end.

    python scripts/gradient_rms.py --tasks 3 --epochs 40
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from continual.data import DEBIAN_FMNIST, read_idx
from continual.models import MLP


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=DEBIAN_FMNIST, help="Fashion-MNIST's IDX files")
    p.add_argument("--train-size", type=int, default=12800)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = read_idx(args.data_dir / "train-images-idx3-ubyte.gz")[: args.train_size]
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    model = MLP(784, 10, width=256, depth=4, layernorm=False)  # the benchmark's MLP 4×256
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1000)
    for task in range(args.tasks):
        y = torch.randint(0, 10, (x.shape[0],), generator=gen)
        for _ in range(args.epochs):
            perm = torch.randperm(x.shape[0], generator=gen)
            for i in range(0, x.shape[0], 512):
                idx = perm[i : i + 512]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        rms = []
        for name, param in model.named_parameters():
            if param.ndim < 2:
                continue
            st = opt.state[param]
            vhat = st["exp_avg_sq"] / (1 - 0.999 ** float(st["step"]))
            rms.append((name, vhat.sqrt().median().item(), vhat.sqrt().mean().item()))
        print(f"task {task + 1}: " + ", ".join(f"{n} median {m:.2e} mean {a:.2e}" for n, m, a in rms), flush=True)


if __name__ == "__main__":
    main()
