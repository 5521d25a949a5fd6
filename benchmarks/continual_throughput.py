"""Training throughput of the continual runner vs a bare hand-written torch loop, measured side by side.

Both train the same MLP 4×256 with Adam on the same in-memory data (Fashion-MNIST-sized random tensors, batch 512),
one task of E epochs each, alternating over several rounds; prints steps/s and the ratio runner/bare (target ≥ 0.9).

    python benchmarks/continual_throughput.py [--threads 2] [--rounds 5] [--epochs 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from continual.data import Dataset
from continual.models import build_model
from continual.runner import Run, RunConfig
from continual.streams import make_task


def bare_loop(x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int) -> int:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = 0
    for epoch in range(epochs):
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], batch):
            idx = perm[i: i + batch]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
    return steps


def runner_loop(ds: Dataset, cfg: RunConfig, mitigator: str) -> int:
    run = Run(cfg, ds, mitigator, seed=0)
    run.measure = lambda task: {}  # time training only, as the bare loop
    run.train_task(make_task(ds, "random-labels", 0, 0))
    return run.step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n", type=int, default=12800)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.n,), generator=g)
    ds = Dataset("bench", x, y, None, None, 10)
    cfg = RunConfig(dataset="bench", model="mlp", epochs=args.epochs, batch_size=512, diagnostics=False)
    results: dict[str, list[float]] = {"bare": [], "runner none": [], "runner spectral": []}
    for _ in range(args.rounds):
        for name in results:
            t0 = time.perf_counter()
            steps = bare_loop(x, y, args.epochs, 512) if name == "bare" else \
                runner_loop(ds, cfg, name.split()[1])
            results[name].append(steps / (time.perf_counter() - t0))
    bare = statistics.median(results["bare"])
    print(f"torch {torch.__version__}, {args.threads} threads, MLP 4×256, batch 512, median of {args.rounds} rounds")
    print("| loop | steps/s | ratio to bare |")
    print("|---|---|---|")
    for name, values in results.items():
        s = statistics.median(values)
        print(f"| {name} | {s:.1f} | {s / bare:.2f} |")


if __name__ == "__main__":
    main()
