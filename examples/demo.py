"""Loss of plasticity, and spectral regularization preventing it, in a few minutes on a CPU.

An MLP (4×256, ReLU) learns scikit-learn's bundled 8×8 digits (1,797 images, no download) with a new random
labelling every task; it must memorise each new labelling from scratch. Adam and SpectralAdam start from the same
initialisation and see the same label streams. Prints a markdown table of task-end train accuracy and writes a PNG.

    python examples/demo.py [--tasks 30] [--epochs 30] [--out runs/demo]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

import specopt  # noqa: E402


def mlp(in_features: int, classes: int, width: int = 256, depth: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(width, classes))


def run(name: str, x: torch.Tensor, args: argparse.Namespace) -> list[float]:
    torch.manual_seed(args.seed)
    model = mlp(x.shape[1], 10)
    if name == "spectral":
        opt = specopt.SpectralAdam(specopt.param_groups(model), lr=args.lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    n, accuracies = x.shape[0], []
    for task in range(args.tasks):
        y = torch.randint(0, 10, (n,), generator=gen)
        for _ in range(args.epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, args.batch_size):
                idx = perm[i : i + args.batch_size]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            accuracies.append((model(x).argmax(1) == y).float().mean().item())
        print(f"\r{name:8s} task {task + 1}/{args.tasks}  train accuracy {accuracies[-1]:.3f}", end="", flush=True)
    print()
    return accuracies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=30)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = p.parse_args()
    for name in ("tasks", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    t0 = time.time()
    results = {name: run(name, x, args) for name in ("adam", "spectral")}
    print(f"\n| optimizer | first task | last task | mean of last 5 tasks |  ({time.time() - t0:.0f} s)")
    print("|---|---|---|---|")
    for name, acc in results.items():
        print(f"| {name} | {acc[0]:.3f} | {acc[-1]:.3f} | {sum(acc[-5:]) / len(acc[-5:]):.3f} |")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, acc in results.items():
        ax.plot(range(1, len(acc) + 1), acc, label={"adam": "Adam", "spectral": "SpectralAdam"}[name])
    ax.set_xlabel("task (new random labels)")
    ax.set_ylabel("train accuracy at task end")
    ax.set_title("digits, random labels: trainability across tasks")
    ax.legend()
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "demo.png.tmp"
    fig.savefig(tmp, dpi=120, format="png")
    os.replace(tmp, args.out / "demo.png")
    print(f"figure: {args.out / 'demo.png'}")


if __name__ == "__main__":
    main()
