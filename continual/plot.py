"""Accuracy versus task per mitigator (mean ± standard error across seeds), and a markdown summary table."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from specopt.curves import Curve, draw, over_seeds, seed_count
from specopt.experiment import mean_pm
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


NAMING = ("dataset", "model", "nonstationarity", "epochs", "width", "lr", "batch_size", "train_size")
"""Settings that name a curve when they differ among the rows of one table (a study that varies them; runs of several
models or streams shown together)."""


def label(row: dict[str, str], naming: tuple[str, ...] = ()) -> str:
    """A curve's name: the mitigator, its strength and options, +LN, and each setting of ``naming`` (the table's
    :func:`varying` settings) as ``name=value``."""
    ln = " +LN" if row.get("layernorm") == "1" else ""
    options = f" {row['options']}" if row.get("options") else ""
    settings = "".join(f" {k}={row.get(k) or '?'}" for k in naming)
    if row["mitigator"] in NO_STRENGTH:
        return f"{row['mitigator']}{options}{settings}{ln}"
    return f"{row['mitigator']} ({float(row['strength']):g}{options}){settings}{ln}"


def varying(rows: list[dict[str, str]]) -> tuple[str, ...]:
    """The :data:`NAMING` settings that take more than one value among the ``rows`` that record them (rows written
    before a column existed do not make it vary)."""
    return tuple(k for k in NAMING if len({r[k] for r in rows if r.get(k) not in (None, "")}) > 1)


def curves(rows: list[dict[str, str]], metric: str) -> dict[str, Curve]:
    """label → ``metric`` against task, over seeds (:func:`specopt.curves.over_seeds`; a missing value is NaN; a seed
    given twice, by two runs of one label, counts twice)."""
    by: dict[str, dict[tuple[str, int], tuple[list[int], list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: ([], [])))
    names = varying(rows)
    for r in rows:
        per_seed, task, again = by[label(r, names)], int(r["task"]), 0
        while task in per_seed[(r["seed"], again)][0]:  # the same seed from another run: a sample of its own
            again += 1
        tasks, values = per_seed[(r["seed"], again)]
        tasks.append(task)
        values.append(float(r[metric]) if r.get(metric) not in (None, "") else math.nan)
    return {name: over_seeds(per_seed.values()) for name, per_seed in by.items()}


def table(rows: list[dict[str, str]], metric: str = "train_accuracy") -> str:
    """Per mitigator: seeds, tasks, the mean over seeds at the first and last task (± standard error from 3 seeds
    on: :func:`specopt.experiment.mean_pm`) and over the last 5 tasks. When some seeds stopped early, ``seeds`` reads
    "k of n": k seeds reached the last task."""
    lines = ["| mitigator | seeds | tasks | first task | last task | mean of last 5 tasks |",
             "|---|---|---|---|---|---|"]
    for name, c in sorted(curves(rows, metric).items()):
        lines.append(f"| {name} | {seed_count(c.seeds, c.at_last)} | {len(c.x)} | {c.mean[0]:.3f} "
                     f"| {mean_pm(c.mean[-1], c.se[-1], c.at_last)} | {c.mean[-5:].mean():.3f} |")
    return "\n".join(lines)


def per_seed_table(rows: list[dict[str, str]], metric: str = "train_accuracy") -> str:
    """One line per (mitigator, seed): ``metric`` at the first and last task, and the :data:`PER_SEED` diagnostics
    at the last task."""
    by: dict[tuple[str, int], dict[int, dict[str, str]]] = defaultdict(dict)
    names = varying(rows)
    for r in rows:
        by[(label(r, names), int(r["seed"]))][int(r["task"])] = r
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
    names = varying(rows)
    for r in rows:
        if int(r["seed"]) == seed:
            by[label(r, names)][int(r["task"])] = float(r[metric])
    if not by:
        raise ValueError(f"no rows of seed {seed}")
    last = max(t for tasks in by.values() for t in tasks)
    spans = [(a, min(a + chunk - 1, last)) for a in range(1, last + 1, chunk)]
    lines = ["| run | " + " | ".join(f"tasks {a}–{b}" for a, b in spans) + " |", "|---" * (1 + len(spans)) + "|"]
    for name, tasks in sorted(by.items()):
        cells = [" ".join(f"{tasks[t]:.2f}" if t in tasks else "–" for t in range(a, b + 1)) for a, b in spans]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: list[dict[str, str]], output: Path, metric: str = "train_accuracy") -> None:
    """Draw ``metric`` versus task, one curve per :func:`label` (mean ± standard error over seeds), into ``output``."""
    r = rows[0]
    ln = " + LayerNorm" if all(x.get("layernorm") == "1" for x in rows) else ""
    draw({f"{r['dataset']}, {r['nonstationarity']}, {r['model']}{ln}": curves(rows, metric)}, output, xlabel="task",
         ylabel=metric.replace("_", " ") + " at task end", integer_x=True, emphasize=("none", "spectral"))


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid names are {', '.join(METRICS)}")


def tables(rows: list[dict[str, str]], metric: str = "train_accuracy", per_seed: bool = False,
           per_task: int | None = None) -> str:
    """:func:`table`, then with ``per_seed`` :func:`per_seed_table`, with ``per_task`` the seed's
    :func:`per_task_table`."""
    return table(rows, metric) + ("\n\n" + per_seed_table(rows, metric) if per_seed else "") + (
        "\n\n" + per_task_table(rows, per_task, metric) if per_task is not None else "")


def plot(run_dirs: list[Path], output: Path, metric: str = "train_accuracy", per_seed: bool = False,
         per_task: int | None = None) -> str:
    """Draw ``metric`` versus task for every mitigator in ``run_dirs`` into ``output``; return the table (and the
    per-seed table after it with ``per_seed``, the per-task table of seed ``per_task`` with that). The figure and
    first table of ``python -m continual report`` (:func:`continual.report.report`), alone."""
    check_metric(metric)
    rows = read_rows(run_dirs)
    figure(rows, output, metric)
    return tables(rows, metric, per_seed, per_task)
