"""Tables of finished sweep runs: the table of a study or of any folder of sweeps (each mitigator's best strength
marked by :data:`continual.sweep.BEST_RULE`), and the train-and-test table of the shift study. Used by ``python -m
continual study``, ``scripts/study_report.py`` and the documentation's generated tables (scripts/docs_tables.py)."""

from __future__ import annotations

from pathlib import Path

from specopt.experiment import mean_pm, mean_se, versions_text
from specopt.results import run_configs

from .config import RunConfig
from .plot import label, run_results
from .sweep import SweepRun, aggregate, best_strengths, run_scores

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
    names = {run.name for run in finished_runs(root)[0]}
    configs = [c for folder, c in run_configs(root) if str(folder.relative_to(root)) in names]
    return f"Code versions (commit, from config.json): {versions_text(configs)}."


__all__ = ["REPORT_ORDER", "finished_runs", "options_table", "table", "train_test_table", "versions"]
