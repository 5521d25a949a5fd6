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


def curves(paths: list[Path]) -> tuple[dict[str, dict[int, list[float]]], dict[str, list[float]]]:
    """({variant: {task: train accuracy per seed}}, {variant: σ1 max of each row}) of strength_sweep.py's rows."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    sigma: dict[str, list[float]] = defaultdict(list)
    for path in paths:
        for row in read_csv(path):
            name = row["variant"] + (" +LN" if row.get("layernorm") == "1" else "")
            acc[name][int(row["task"])].append(float(row["train_accuracy"]))
            sigma[name].append(float(row["sigma_max"]))
    return acc, sigma


def table(paths: list[Path]) -> str:
    """Per variant: tasks, seeds, first task, last task and mean of the last 5 (means over seeds), σ1 at the end."""
    acc, sigma = curves(paths)
    lines = ["| variant | tasks | seeds | first task | last task | mean of last 5 | σ1 max at end |",
             "|---|---|---|---|---|---|---|"]
    for name in sorted(acc):
        tasks = sorted(acc[name])
        mean = np.array([mean_se(acc[name][t])[0] for t in tasks])
        lines.append(f"| {name} | {len(tasks)} | {len(acc[name][tasks[0]])} | {mean[0]:.3f} | {mean[-1]:.3f} | "
                     f"{mean[-5:].mean():.3f} | {sigma[name][-1]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args()
    print(table(args.csv))
    acc, _ = curves(args.csv)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in sorted(acc):
        tasks = sorted(acc[name])
        mean, sem = (np.array(v) for v in zip(*(mean_se(acc[name][t]) for t in tasks)))
        ax.plot(tasks, mean, label=name)
        ax.fill_between(tasks, mean - sem, mean + sem, alpha=0.2)
    ax.set_xlabel("task")
    ax.set_ylabel("train accuracy at task end")
    ax.set_title("Fashion-MNIST, random labels, MLP 4×256, Adam 1e-3")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, args.output)


if __name__ == "__main__":
    main()
