"""Measure Adam's per-element gradient RMS √v̂ on the strength-sweep benchmark (maps coupled λ to decoupled λ).

Under Adam the coupled penalty's step is ≈ lr·λ_c·∇R/√v̂, the decoupled one lr·λ_d·∇R, so λ_d ≈ λ_c / √v̂.
Trains the Fashion-MNIST random-label MLP (no LayerNorm) with plain Adam for a few tasks and prints the median and
mean of √v̂ over each weight matrix's entries at each task end; ``--out`` also writes them as rows (one per task and
weight matrix, with the code version), ``--report`` prints the table of such rows (docs/strength.md).

    python scripts/gradient_rms.py --tasks 2 --epochs 20 --out results/strength-mapping/gradient-rms.csv
    python scripts/gradient_rms.py --report results/strength-mapping/gradient-rms.csv
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from continual.data import DEBIAN_FMNIST, read_idx
from continual.models import MLP
from specopt.experiment import code_version, read_csv, write_csv


def report(path: Path) -> str:
    """The table of ``path``'s rows: each task end and weight matrix, its shape (in × out), median and mean √v̂."""
    rows = read_csv(path)
    lines = ["| task | layer | shape | median √v̂ | mean √v̂ |", "|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['layer']} | {r['shape']} | {float(r['median_rms']):.1e} | {float(r['mean_rms']):.1e} |"
              for r in rows]
    commits = sorted({r["commit"][:7] + ("+dirty" if r["commit"].endswith("+dirty") else "") for r in rows})
    return "\n".join(lines) + f"\n\nCode version: {', '.join(commits)}; {rows[0]['epochs']} epochs per task."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=DEBIAN_FMNIST, help="Fashion-MNIST's IDX files")
    p.add_argument("--train-size", type=int, default=12800)
    p.add_argument("--out", type=Path, help="also write the rows (CSV) here")
    p.add_argument("--report", type=Path, metavar="CSV", help="train nothing: print the table of these rows")
    args = p.parse_args()
    if args.report:
        print(report(args.report))
        return
    version = code_version()
    commit = f"{version['commit']}{'+dirty' if version['dirty'] else ''}"
    out_rows = []
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
            out_rows.append(dict(task=task + 1, layer=name, shape="×".join(map(str, param.shape[::-1])),
                                 median_rms=rms[-1][1], mean_rms=rms[-1][2], epochs=args.epochs,
                                 train_size=args.train_size, commit=commit, torch=version["torch"],
                                 cpu=version["cpu"]))
        print(f"task {task + 1}: " + ", ".join(f"{n} median {m:.2e} mean {a:.2e}" for n, m, a in rms), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(args.out, out_rows)


if __name__ == "__main__":
    main()
