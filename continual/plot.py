"""Accuracy versus task per mitigator (mean ± standard error across seeds), and a markdown summary table."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from specopt.experiment import mean_pm, mean_se, save_figure
from specopt.results import PACKED_RUNS, RUN_ROWS, packed_runs

from .diagnostics import DIAGNOSTICS
from .mitigators import NO_STRENGTH

METRICS = ("train_accuracy", "train_loss", "test_accuracy", *DIAGNOSTICS)
PER_SEED = ("sigma_max", "dormant_fraction", "grad_erank")  # the per-seed table's diagnostics, at the last task


REQUIRED = ("mitigator", "strength", "seed", "task", "train_accuracy")  # what every reader of the rows uses


def read_results(path: Path) -> list[dict[str, str]]:
    """The rows of one results.csv (``[]`` if it does not exist), checked: a file that is not CSV, lacks a column of
    :data:`REQUIRED` or has a cut-off row is a one-line ``ValueError`` naming it (resuming the run rebuilds it from
    its checkpoint)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        header = set(reader.fieldnames or ())
        intact = (not header or set(REQUIRED) <= header) and all(
            None not in r.values() and None not in r and int(r["task"]) >= 1 for r in rows)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError):
        intact = False
    if not intact:
        raise ValueError(f"{path} is damaged (not the rows a run writes): resume its run with --resume, which rebuilds "
                         "it from the checkpoint, or delete the run folder")
    return rows


def run_results(folder: Path) -> list[dict[str, str]]:
    """The rows of the run in ``folder``: its results.csv (checked, :func:`read_results`) or, for a run packed into
    its sweep's folder (``python -m continual pack``), the pack's rows; ``[]`` when there are none."""
    folder = Path(folder)
    if (folder / RUN_ROWS).exists():
        return read_results(folder / RUN_ROWS)
    packed = packed_runs(folder.parent).get(folder.name)
    return packed[1] if packed else []


def read_rows(run_dirs: list[Path]) -> list[dict[str, str]]:
    """The rows of every run in ``run_dirs``: each a run folder (its results.csv), a results.csv file, or a folder of
    run folders (a sweep's ``--out``: every results.csv below it and every packed sweep's rows)."""
    rows = []
    for d in map(Path, run_dirs):
        packs: list[Path] = []
        if (d / RUN_ROWS).exists():  # a run folder
            paths = [d / RUN_ROWS]
        elif d.is_dir():  # a folder of run folders, packed or not
            paths = sorted(d.rglob(RUN_ROWS))
            packs = sorted(p.parent for p in d.rglob(PACKED_RUNS))
        else:
            paths = [d] if d.suffix == ".csv" and d.exists() else []
        packed = run_results(d) if not (paths or packs) and not d.suffix else []
        if not (paths or packs or packed):
            raise FileNotFoundError(f"{d} is not a run folder (with results.csv), a folder of run folders or a "
                                    "results.csv file")
        for path in paths:
            rows += read_results(path)
        rows += packed + [r for pack in packs for _, run_rows in packed_runs(pack).values() for r in run_rows]
    if not rows:
        raise ValueError("the results hold no rows yet")
    return rows


def label(row: dict[str, str]) -> str:
    ln = " +LN" if row.get("layernorm") == "1" else ""
    options = f" {row['options']}" if row.get("options") else ""
    if row["mitigator"] in NO_STRENGTH:
        return f"{row['mitigator']}{options}{ln}"
    return f"{row['mitigator']} ({float(row['strength']):g}{options}){ln}"


def curves(rows: list[dict[str, str]], metric: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int, int]]:
    """label → (tasks, mean, standard error, seeds, seeds at the last task) of ``metric`` across seeds."""
    by: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        value = float(r[metric]) if r.get(metric) not in (None, "") else math.nan
        by[label(r)][int(r["task"])].append(value)
    out = {}
    for name, per_task in by.items():
        tasks = np.array(sorted(per_task))
        stats = [mean_se(per_task[t]) for t in tasks]
        mean, sem = np.array([m for m, _ in stats]), np.array([s for _, s in stats])
        counts = [len(per_task[t]) for t in tasks]
        out[name] = (tasks, mean, sem, max(counts), counts[-1])
    return out


def seed_count(seeds: int, at_last: int) -> str:
    """How many seeds a curve has: "3", or "2 of 3" when only 2 of the 3 started seeds reached its last task."""
    return f"{seeds}" if at_last == seeds else f"{at_last} of {seeds}"


def table(rows: list[dict[str, str]], metric: str = "train_accuracy") -> str:
    """Per mitigator: seeds, tasks, the mean over seeds at the first and last task (± standard error from 3 seeds
    on: :func:`specopt.experiment.mean_pm`) and over the last 5 tasks. When some seeds stopped early, ``seeds`` reads
    "k of n": k seeds reached the last task."""
    lines = ["| mitigator | seeds | tasks | first task | last task | mean of last 5 tasks |",
             "|---|---|---|---|---|---|"]
    for name, (tasks, mean, sem, seeds, at_last) in sorted(curves(rows, metric).items()):
        last5 = mean[-5:].mean()
        lines.append(f"| {name} | {seed_count(seeds, at_last)} | {len(tasks)} | {mean[0]:.3f} "
                     f"| {mean_pm(mean[-1], sem[-1], at_last)} | {last5:.3f} |")
    return "\n".join(lines)


def per_seed_table(rows: list[dict[str, str]], metric: str = "train_accuracy") -> str:
    """One line per (mitigator, seed): ``metric`` at the first and last task, and the :data:`PER_SEED` diagnostics
    at the last task."""
    by: dict[tuple[str, int], dict[int, dict[str, str]]] = defaultdict(dict)
    for r in rows:
        by[(label(r), int(r["seed"]))][int(r["task"])] = r
    cols = " | ".join(f"{d} (last)" for d in PER_SEED)
    lines = [f"| mitigator | seed | tasks | first task | last task | {cols} |", "|---" * (5 + len(PER_SEED)) + "|"]

    def fmt(row: dict[str, str], key: str) -> str:
        value = row.get(key)
        return "–" if value in (None, "") or math.isnan(float(value)) else f"{float(value):.3g}"

    for (name, seed), per_task in sorted(by.items()):
        first, last = per_task[min(per_task)], per_task[max(per_task)]
        diags = " | ".join(fmt(last, d) for d in PER_SEED)
        lines.append(f"| {name} | {seed} | {len(per_task)} | {fmt(first, metric)} | {fmt(last, metric)} | {diags} |")
    return "\n".join(lines)


def per_task_table(rows: list[dict[str, str]], seed: int, metric: str = "train_accuracy", chunk: int = 10) -> str:
    """One line per mitigator: ``metric`` at every task end of seed ``seed`` (2 decimals), ``chunk`` tasks a
    column."""
    by: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if int(r["seed"]) == seed:
            by[label(r)][int(r["task"])] = float(r[metric])
    if not by:
        raise ValueError(f"no rows of seed {seed}")
    last = max(t for tasks in by.values() for t in tasks)
    spans = [(a, min(a + chunk - 1, last)) for a in range(1, last + 1, chunk)]
    lines = ["| run | " + " | ".join(f"tasks {a}–{b}" for a, b in spans) + " |", "|---" * (1 + len(spans)) + "|"]
    for name, tasks in sorted(by.items()):
        cells = [" ".join(f"{tasks[t]:.2f}" if t in tasks else "–" for t in range(a, b + 1)) for a, b in spans]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(run_dirs: list[Path], output: Path, metric: str = "train_accuracy", per_seed: bool = False,
         per_task: int | None = None) -> str:
    """Draw ``metric`` versus task for every mitigator in ``run_dirs`` into ``output``; return the table (and the
    per-seed table after it with ``per_seed``, the per-task table of seed ``per_task`` with that)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid names are {', '.join(METRICS)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_rows(run_dirs)
    lines = sorted(curves(rows, metric).items())
    fig, ax = plt.subplots(figsize=(7 + 2.5 * (len(lines) > 3), 4))
    colors = plt.get_cmap("tab10")  # ten distinct colours; curves 11-20 reuse them dashed
    for i, (name, (tasks, mean, sem, seeds, at_last)) in enumerate(lines):
        color = colors(i % 10)
        ax.plot(tasks, mean, color=color, ls="-" if i < 10 else "--",
                lw=2.2 if name.split(" ")[0] in ("none", "spectral") else 1.2,
                label=f"{name}, {seed_count(seeds, at_last)} seed{'s' if seeds > 1 else ''}")
        ax.fill_between(tasks, mean - sem, mean + sem, color=color, alpha=0.2)
    r = rows[0]
    ln = " + LayerNorm" if all(x.get("layernorm") == "1" for x in rows) else ""
    ax.set_title(f"{r['dataset']}, {r['nonstationarity']}, {r['model']}{ln}")
    ax.set_xlabel("task")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tasks are whole numbers: no tick at 2.5
    ax.set_ylabel(metric.replace("_", " ") + " at task end")
    if len(lines) > 3:  # many curves: the legend goes beside the axes, not over them
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, output)
    plt.close(fig)
    return table(rows, metric) + ("\n\n" + per_seed_table(rows, metric) if per_seed else "") + (
        "\n\n" + per_task_table(rows, per_task, metric) if per_task is not None else "")
