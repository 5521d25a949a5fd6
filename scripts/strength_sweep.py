"""Sweep of the decoupled spectral strength on the paper's Fashion-MNIST random-label benchmark.

Real Fashion-MNIST (first 12,800 training images), a new random labelling per task, MLP 4×256 ReLU (optionally
LayerNorm), Adam lr 1e-3, batch 512, 40 epochs per task; the measure is train accuracy at each task's end
(trainability). Self-contained (specopt + torch only) so that it pins down the optimizer's default independently
of the ``continual`` package. Writes one CSV row per (variant, seed, task), atomically after every task.

    python scripts/strength_sweep.py --variants none coupled:1e-4 decoupled:0.1 decoupled:1 --tasks 30 \
        --out runs/strength-sweep/results.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import specopt
from continual.data import DEBIAN_FMNIST, read_idx
from continual.models import MLP
from specopt.experiment import write_csv


def run(variant: str, seed: int, args, x: torch.Tensor, writer_rows: list[dict], flush) -> None:
    kind, _, value = variant.partition(":")
    strength = float(value) if value else 0.0
    torch.manual_seed(seed)
    model = MLP(784, 10, width=256, depth=4, layernorm=args.layernorm)  # the benchmark's MLP 4×256
    if kind == "decoupled":
        opt = specopt.SpectralAdam(specopt.param_groups(model), lr=args.lr, strength=strength)
    elif kind in ("none", "coupled"):
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        sys.exit(f"unknown variant {variant!r}; use none, coupled:LAMBDA or decoupled:LAMBDA")
    penalty = specopt.SpectralPenalty(model) if kind == "coupled" else None
    gen = torch.Generator().manual_seed(1000 + seed)
    n = x.shape[0]
    for task in range(args.tasks):
        y = torch.randint(0, 10, (n,), generator=gen)
        t0 = time.time()
        for _ in range(args.epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, args.batch_size):
                idx = perm[i : i + args.batch_size]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                if penalty is not None:
                    loss = loss + strength * penalty()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            logits = model(x)
            acc = (logits.argmax(1) == y).float().mean().item()
            tl = nn.functional.cross_entropy(logits, y).item()
            sig = specopt.spectral_norms(model)
        row = dict(variant=variant, layernorm=int(args.layernorm), seed=seed, task=task + 1,
                   train_accuracy=round(acc, 4), train_loss=round(tl, 4),
                   sigma_max=round(max(float(s) for s in sig.values()), 4),
                   sigma_mean=round(float(torch.stack(list(sig.values())).mean()), 4))
        writer_rows.append(row)
        flush()
        print(f"{variant:16s} seed {seed} task {task + 1:3d} acc {acc:.3f} loss {tl:.3f} "
              f"σmax {row['sigma_max']:.2f} ({time.time() - t0:.0f}s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["none", "coupled:1e-4", "decoupled:0.1", "decoupled:1"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--tasks", type=int, default=30)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--train-size", type=int, default=12800)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layernorm", action="store_true")
    p.add_argument("--data-dir", type=Path, default=DEBIAN_FMNIST)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = args.data_dir / "train-images-idx3-ubyte.gz"
    if not images.exists():
        sys.exit(f"Fashion-MNIST not found at {images}; apt-get install dataset-fashion-mnist or pass --data-dir")
    x = torch.from_numpy(read_idx(images)[: args.train_size].astype(np.float32) / 255.0)
    rows: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def flush() -> None:
        write_csv(args.out, rows)

    for variant in args.variants:
        for seed in args.seeds:
            run(variant, seed, args, x, rows, flush)


if __name__ == "__main__":
    main()
