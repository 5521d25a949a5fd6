"""Table and figure for scripts/strength_sweep.py results: task-end train accuracy per variant.

    python scripts/sweep_report.py runs/strength-sweep/*.csv -o docs/figures/strength_sweep.png
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from specopt.experiment import mean_se, read_csv, save_figure  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args()
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    sigma: dict[str, list[float]] = defaultdict(list)
    for path in args.csv:
        for row in read_csv(path):
            name = row["variant"] + (" +LN" if row.get("layernorm") == "1" else "")
            acc[name][int(row["task"])].append(float(row["train_accuracy"]))
            sigma[name].append(float(row["sigma_max"]))
    print("| variant | tasks | seeds | first task | last task | mean of last 5 | σ1 max at end |")
    print("|---|---|---|---|---|---|---|")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in sorted(acc):
        tasks = sorted(acc[name])
        mean, sem = (np.array(v) for v in zip(*(mean_se(acc[name][t]) for t in tasks)))
        ax.plot(tasks, mean, label=name)
        ax.fill_between(tasks, mean - sem, mean + sem, alpha=0.2)
        seeds = len(acc[name][tasks[0]])
        print(f"| {name} | {len(tasks)} | {seeds} | {mean[0]:.3f} | {mean[-1]:.3f} | {mean[-5:].mean():.3f} "
              f"| {sigma[name][-1]:.2f} |")
    ax.set_xlabel("task")
    ax.set_ylabel("train accuracy at task end")
    ax.set_title("Fashion-MNIST, random labels, MLP 4×256, Adam 1e-3")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, args.output)


if __name__ == "__main__":
    main()
