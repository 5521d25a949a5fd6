"""``python -m continual report``: the summary table, report.md + report.json and the figures of any set of runs; and
the tables it is made of — the table of finished sweep runs (each mitigator's best strength marked by
:data:`BEST_RULE`), the train-and-test table of the shift study. Used by ``python -m continual
report`` and ``study`` and the documentation's generated tables (scripts/docs_tables.py)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from specopt.curves import curve_entries
from specopt.experiment import mean_pm, mean_se, save_figure, versions_text, write_text
from specopt.results import run_configs

from .config import RunConfig, SweepRun
from .plot import check_metric, curves, figure, label, per_seed_table, per_task_table, read_rows, run_results, tables

# ----------------------------------------------------------------------------------------------------------------
# a sweep's entries, best strengths and sensitivity.png (written by :func:`report`)

BEST_RULE = ("the strength with the highest mean (over seeds) of the last-5-task mean train accuracy; a tie goes "
             "to the smaller strength")


def run_scores(rows: list[dict[str, str]], metric: str = "train_accuracy") -> tuple[float, float]:
    """(mean of ``metric`` over the last 5 tasks, ``metric`` at the last task) of one run's rows."""
    values = [float(r[metric]) for r in sorted(rows, key=lambda r: int(r["task"]))]
    tail = values[-5:]
    return sum(tail) / len(tail), values[-1]


def aggregate(runs: Iterable[SweepRun], out: Path) -> list[dict[str, Any]]:
    """One entry per (mitigator, strength) in sweep order: seeds, tasks, and mean ± standard error over seeds of
    the last-5-task mean and the last task of train accuracy. Runs without results are left out."""
    groups: dict[tuple[str, float | None], list[tuple[float, float, int]]] = {}
    for run in runs:
        rows = run_results(out / run.name)
        if rows:
            groups.setdefault((run.mitigator, run.strength), []).append((*run_scores(rows), len(rows)))
    entries = []
    for (mitigator, strength), scores in groups.items():
        last5, last_se = mean_se([s[0] for s in scores]), mean_se([s[1] for s in scores])
        entries.append(dict(mitigator=mitigator, strength=strength, seeds=len(scores),
                            tasks=min(s[2] for s in scores), last5=last5[0], last5_se=last5[1],
                            last=last_se[0], last_se=last_se[1]))
    return entries


def best_strengths(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Each mitigator's best strength by :data:`BEST_RULE` (mitigators with a strength only)."""
    best: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["strength"] is None:
            continue
        b = best.get(e["mitigator"])
        if b is None or e["last5"] > b["last5"] or (e["last5"] == b["last5"] and e["strength"] < b["strength"]):
            best[e["mitigator"]] = e
    return {m: e["strength"] for m, e in best.items()}


def sensitivity_plot(entries: list[dict[str, Any]], output: Path, title: str | None = None) -> None:
    """Last-5-task mean train accuracy against strength (log x), one line per mitigator with standard-error bars;
    mitigators without a strength (none, crelu) as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.get_cmap("tab10")
    mitigators = list(dict.fromkeys(e["mitigator"] for e in entries))
    for i, m in enumerate(mitigators):
        points = sorted((e for e in entries if e["mitigator"] == m), key=lambda e: e["strength"] or 0.0)
        color = colors(i % 10)
        if points[0]["strength"] is None:
            e = points[0]
            ax.axhline(e["last5"], color=color, ls="--" if m != "none" else "-", lw=1.5, label=f"{m} (no strength)")
            if e["last5_se"] > 0:
                ax.axhspan(e["last5"] - e["last5_se"], e["last5"] + e["last5_se"], color=color, alpha=0.15)
            continue
        ax.errorbar([e["strength"] for e in points], [e["last5"] for e in points],
                    yerr=[e["last5_se"] for e in points], color=color, marker="o", capsize=3, label=m)
    if any(e["strength"] is not None for e in entries):
        ax.set_xscale("log")
    ax.set_xlabel("strength")
    ax.set_ylabel("train accuracy, mean of last 5 tasks")
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 72)), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, output)
    plt.close(fig)


REPORT_ORDER = ["none", "spectral", "spectral-coupled", "l2", "l2-init", "shrink-perturb", "redo", "wasserstein", "ewc",
         "cbp", "crelu"]


def finished_runs(root: Path) -> tuple[list[SweepRun], int]:
    """(the finished runs under ``root`` as SweepRuns named by their path below it, the number left unfinished)."""
    runs, unfinished = [], 0
    for folder, config in run_configs(root):  # run folders and packed runs (``python -m continual pack``)
        if len(config.get("mitigators", [])) != 1 or len(config.get("seeds", [])) != 1:
            continue  # not a sweep's run folder
        if len(run_results(folder)) < config["tasks"]:
            unfinished += 1
            continue
        cfg = RunConfig(**{k: v for k, v in config.items() if k in RunConfig.__dataclass_fields__})
        mitigator = cfg.mitigators[0]
        runs.append(SweepRun(str(folder.relative_to(root)), mitigator, cfg.strength, cfg.seeds[0], cfg))
    return runs, unfinished


def train_test_table(runs: list[SweepRun], root: Path, rank: dict[str, int]) -> list[str]:
    """Markdown rows: per (mitigator, strength), train then test accuracy at the first task, at the last task (±
    standard error over seeds) and over the last 5 tasks (mean over seeds); the best test last-5 mean in bold."""
    groups: dict[tuple[str, float | None], list[list[dict[str, str]]]] = {}
    for run in runs:
        groups.setdefault((run.mitigator, run.strength), []).append(run_results(root / run.name))
    cells: dict[tuple[str, float | None], list[float]] = {}
    for key, seeds in groups.items():
        row = []
        for metric in ("train_accuracy", "test_accuracy"):
            first = mean_se(float(min(rows, key=lambda r: int(r["task"]))[metric]) for rows in seeds)[0]
            last5, last = zip(*(run_scores(rows, metric) for rows in seeds))
            row += [first, *mean_se(last), mean_se(last5)[0]]
        cells[key] = row
    best_test = max(c[-1] for c in cells.values())
    lines = ["| mitigator | seeds | train: first | train: last | train: last 5 | test: first | test: last | "
             "**test: last 5** |", "|---|---|---|---|---|---|---|---|"]
    for (mitigator, strength), c in sorted(cells.items(), key=lambda kv: (rank.get(kv[0][0], 99), kv[0][1] or 0)):
        name = label(groups[(mitigator, strength)][0][0])  # as `python -m continual plot` names it
        test5 = f"**{c[7]:.3f}**" if c[7] == best_test else f"{c[7]:.3f}"
        n = len(groups[(mitigator, strength)])
        lines.append(f"| {name} | {n} | {c[0]:.3f} | {mean_pm(c[1], c[2], n)} | "
                     f"{c[3]:.3f} | {c[4]:.3f} | {mean_pm(c[5], c[6], n)} | {test5} |")
    return lines


def table(root: Path, train_test: bool = False) -> tuple[str, list[dict]]:
    """(the markdown table of every finished run under ``root``, the aggregated entries); ``train_test``: the train and
    test accuracy table instead (entries then empty). ``ValueError`` when no run under ``root`` has finished."""
    runs, _ = finished_runs(root)
    if not runs:
        raise ValueError(f"no finished run under {root}")
    return runs_table(runs, root, train_test)


def runs_table(runs: list[SweepRun], root: Path, train_test: bool = False) -> tuple[str, list[dict]]:
    """:func:`table` of ``runs`` (their names relative to ``root``)."""
    rank = {m: i for i, m in enumerate(REPORT_ORDER)}
    if train_test:
        return "\n".join(train_test_table(runs, root, rank)), []
    entries = sorted(aggregate(runs, root), key=lambda e: (rank.get(e["mitigator"], 99), e["strength"] or 0))
    best = best_strengths(entries)
    lines = ["| mitigator | strength | seeds | tasks | last-5-task mean | last task |", "|---|---|---|---|---|---|"]
    for e in entries:
        strength = "–" if e["strength"] is None else f"{e['strength']:g}"
        cell = mean_pm(e["last5"], e["last5_se"], e["seeds"])
        if e["strength"] is not None and best.get(e["mitigator"]) == e["strength"]:
            cell = f"**{cell}**"
        lines.append(f"| {e['mitigator']} | {strength} | {e['seeds']} | {e['tasks']} | {cell} | "
                     f"{mean_pm(e['last'], e['last_se'], e['seeds'])} |")
    return "\n".join(lines), entries


def options_table(root: Path, folders: dict[str, str], name: str, default: str | None = None) -> str:
    """One row per sweep folder of a study whose sweeps differ in an option rather than a strength (the k study's
    ``k1`` … ``k8``): ``folders`` maps each folder below ``root`` to its row's label under column ``name``. Cells:
    first-task train accuracy (mean over seeds), last-5-task mean and last task (± standard error over seeds from 3
    seeds on); the best last-5-task mean in bold, ``default`` marked."""
    rows = []
    for folder, value in folders.items():
        runs, _ = finished_runs(root / folder)
        if not runs:
            continue
        (e,) = aggregate(runs, root / folder)
        first = mean_se(float(min(run_results(root / folder / r.name), key=lambda x: int(x["task"]))
                              ["train_accuracy"]) for r in runs)[0]
        rows.append((value, e, first))
    if not rows:
        raise ValueError(f"no finished run under {root}")
    best = max(e["last5"] for _, e, _ in rows)
    lines = [f"| {name} | seeds | tasks | first task | last-5-task mean | last task |", "|---|---|---|---|---|---|"]
    for value, e, first in rows:
        label = f"**{value}**" if e["last5"] == best else value
        label += " (default)" if value == default else ""
        cell = mean_pm(e["last5"], e["last5_se"], e["seeds"])
        cell = f"**{cell}**" if e["last5"] == best else cell
        lines.append(f"| {label} | {e['seeds']} | {e['tasks']} | {first:.3f} | {cell} | "
                     f"{mean_pm(e['last'], e['last_se'], e['seeds'])} |")
    return "\n".join(lines)


def versions(root: Path) -> str:
    """The code versions of the finished runs under ``root`` (:func:`specopt.experiment.versions_text`), as a line
    to print under their table."""
    return f"Code versions (commit, from config.json): {versions_text(run_configs_of(root, finished_runs(root)[0]))}."


def run_configs_of(root: Path, runs: list[SweepRun]) -> list[dict]:
    """The config.json (provenance included) of each of ``runs``, named relative to ``root`` as
    :func:`finished_runs` names them."""
    names = {run.name for run in runs}
    return [c for folder, c in run_configs(root) if str(folder.relative_to(root)) in names]


def report(paths: list[Path], out: Path | None = None, metric: str = "train_accuracy", train_test: bool = False,
           per_seed: bool = False, per_task: int | None = None, title: str | None = None,
           curves_figure: bool = True) -> tuple[str, str]:
    """The report of the runs in ``paths`` (run folders, sweeps, folders of sweeps, packed or not; results.csv files):
    (its text, a note for the reader). The text is the summary table, then the code versions of its runs: for sweep
    runs (one mitigator and one seed each) :func:`table` — each mitigator's best strength in bold — or with
    ``train_test`` its train-and-test form; for other runs (or another ``metric``) the accuracy-per-task table of
    ``python -m continual plot``, with ``per_seed`` / ``per_task`` its per-seed and per-task tables after it.

    With ``out``, writes there (:func:`specopt.curves.write_report`) report.md (the text and the note), report.json
    (the same numbers: the sweep entries and best strengths, every curve, the versions) and the figures:
    curves.png (``metric`` against task; not with ``curves_figure=False``) and, for sweep runs with a strength,
    sensitivity.png (``title`` above it, and as report.md's heading). A sweep ends with this report of its folder; a
    study that depends on another reads report.json's ``best`` (:class:`continual.studies.Context`).
    """
    from specopt.curves import write_report

    check_metric(metric)
    paths = [Path(p) for p in paths]
    rows = read_rows(paths)
    runs, unfinished, configs = [], 0, []
    for p in paths:
        if p.suffix == ".csv":
            continue
        found, left = finished_runs(p)
        runs += [SweepRun(str(p / r.name), r.mitigator, r.strength, r.seed, r.config) for r in found]
        unfinished += left
        configs += run_configs_of(p, found) if found else [c for _, c in run_configs(p)]
    sweep_table = bool(runs) and (metric == "train_accuracy" or train_test)
    if train_test and not runs:
        raise ValueError("--train-test needs sweep runs (one mitigator and one seed per run folder)")
    if sweep_table:
        summary, entries = runs_table(runs, Path("."), train_test)
        summary += ("\n\n" + per_seed_table(rows, metric) if per_seed else "") + (
            "\n\n" + per_task_table(rows, per_task, metric) if per_task is not None else "")
    else:
        summary, entries = tables(rows, metric, per_seed, per_task), []
    made_by = versions_text(configs) or "not recorded (results.csv files without their config.json)"
    text = f"{summary}\n\nCode versions (commit, from config.json): {made_by}."
    bold = "the best test accuracy over the last 5 tasks" if train_test else f"each mitigator's best strength ({BEST_RULE})"
    note = (f"Bold: {bold}. Unfinished runs left out of the table: {unfinished}." if sweep_table else
            "A run still going counts with the tasks it has finished.")
    if out is not None:
        out = Path(out)
        if curves_figure:
            figure(rows, out / "curves.png", metric)
        if entries and any(e["strength"] is not None for e in entries):
            sensitivity_plot(entries, out / "sensitivity.png", title)
        heading = f"# {title}\n\n" if title else ""
        write_report(out, f"{heading}{text}\n\n{note}\n", dict(
            metric=metric, table="train-test" if train_test else "sweep" if sweep_table else "curves",
            rule=BEST_RULE if sweep_table else None, best=best_strengths(entries), entries=entries,
            unfinished=unfinished, versions=made_by,
            curves=curve_entries({"curves": curves(rows, metric)})))
    return text, note


__all__ = ["BEST_RULE", "REPORT_ORDER", "aggregate", "best_strengths", "finished_runs", "options_table", "report",
           "run_scores", "runs_table", "sensitivity_plot", "table", "train_test_table", "versions"]
