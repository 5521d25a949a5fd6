"""Return vs env steps per (environment, mitigator): mean over seeds with a standard-error band, plus a markdown
table of the last evaluation. ``python -m rl report runs/A runs/B ... --out DIR`` (the table, report.md + report.json
and returns.png, :func:`report`); ``python -m rl plot runs/A ... -o fig.png`` (the figure and table alone)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from specopt.curves import Curve, curve_entries, draw, over_seeds, write_report
from specopt.experiment import mean_pm, mean_se, read_csv, versions_text
from specopt.results import RUN_ROWS, packed_runs, run_configs


def read_agent(folder: Path) -> tuple[dict, list[dict[str, str]]]:
    """(an agent's config.json, its results.csv rows) — from its folder, or from its run folder's pack
    (``python -m rl pack``: the finished agents of a run as one rows.csv + runs.jsonl)."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text()), read_csv(folder / RUN_ROWS)
    packed = packed_runs(folder.parent).get(folder.name)
    if packed is None:
        raise FileNotFoundError(f"no agent (config.json + results.csv, or packed) at {folder}")
    return packed


def agent_folders(root: Path) -> list[Path]:
    """The agent folders at or below ``root`` (an agent's folder, a run's, or a folder of runs): each agent's own
    folder with its config.json and results.csv, or its place in a packed run; ``[]`` when there are none."""
    root = Path(root)
    if not root.exists() and not packed_runs(root.parent).get(root.name):
        return []
    return [folder for folder, cfg in run_configs(root) if "mitigator" in cfg
            and ((folder / RUN_ROWS).is_file() or not (folder / "config.json").is_file())]


def find_runs(paths: list[str]) -> list[Path]:
    """The agents (run directories holding config.json and results.csv, or packed) among ``paths`` and, recursively,
    below them."""
    runs: list[Path] = []
    for p in map(Path, paths):
        found = agent_folders(p)
        if not found and not p.exists():
            raise FileNotFoundError(f"no such run directory: {p}")
        runs += found
    if not runs:
        raise FileNotFoundError(f"no runs (config.json + results.csv) under {', '.join(paths)}")
    return runs


def label(cfg: dict) -> str:
    """Curve label: the mitigator, plus what distinguishes variants (bounded buffer, replay ratio, strength)."""
    name = cfg["mitigator"]
    if cfg["mitigator"] == "spectral":
        name += f" λ={cfg['spectral_strength']:g}"
    if cfg["buffer_size"] != 1_000_000:
        name += f" buffer {cfg['buffer_size'] // 1000}k"
    return f"{name} RR{cfg['replay_ratio']}"


def load(paths: list[str]) -> dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """{env: {label: [(steps, returns) per seed]}}"""
    return _load(find_runs(paths))[0]


def _load(runs: list[Path]) -> tuple[dict[str, dict[str, list]], list[dict]]:
    """(:func:`load`'s groups of ``runs``, their configs)."""
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    configs = []
    for run in runs:
        cfg, rows = read_agent(run)
        configs.append(cfg)
        if rows:
            steps = np.array([int(r["step"]) for r in rows])
            returns = np.array([float(r["eval_return_mean"]) for r in rows])
            groups[cfg["env"]][label(cfg)].append((steps, returns))
    return groups, configs


def _panels(groups: dict[str, dict[str, list]]) -> dict[str, dict[str, Curve]]:
    return {env: {name: over_seeds(groups[env][name]) for name in groups[env]} for env in sorted(groups)}


def _table(panels: dict[str, dict[str, Curve]]) -> str:
    """One row per curve, at its last evaluation; "seeds" = how many seeds reached that step."""
    table = ["| env | mitigator | seeds | env steps | return (mean ± s.e.) |", "|---|---|---|---|---|"]
    for env, curves in panels.items():
        for name, c in sorted(curves.items()):
            table.append(f"| {env} | {name} | {c.at_last} | {int(c.x[-1])} | {mean_pm(c.mean[-1], c.se[-1], c.at_last, 1)} |")
    return "\n".join(table)


def _draw(panels: dict[str, dict[str, Curve]], output: str | Path) -> None:
    draw(panels, output, xlabel="env steps", ylabel="evaluation return", thousands_x=True)


def plot(paths: list[str], output: str) -> str:
    """Draw the figure to ``output`` and return the markdown table (:func:`report`'s figure and table alone)."""
    panels = _panels(load(paths))
    _draw(panels, output)
    return _table(panels)


def report(paths: list[str], out: str | Path | None = None) -> tuple[str, str]:
    """The report of the agents at or below ``paths`` (agents, runs, sweeps, studies; packed or not): (its text, a
    note for the reader). The text is the table of :func:`plot` — each curve at its last evaluation — then the code
    versions of its agents (:func:`specopt.experiment.versions_text`). With ``out``, writes there
    (:func:`specopt.curves.write_report`) report.md, report.json (every row of the table, every curve, the versions)
    and returns.png."""
    groups, configs = _load(find_runs([str(p) for p in paths]))
    panels = _panels(groups)
    text = f"{_table(panels)}\n\nCode versions (commit, from config.json): {versions_text(configs)}."
    note = "Each curve at its last evaluation; seeds: the agents that reached it (an agent still going counts too)."
    if out is not None:
        out = Path(out)
        _draw(panels, out / "returns.png")
        entries = [dict(env=env, label=name, seeds=c.at_last, step=int(c.x[-1]), mean=float(c.mean[-1]),
                        se=float(c.se[-1])) for env, curves in panels.items() for name, c in sorted(curves.items())]
        write_report(out, f"{text}\n\n{note}\n", dict(entries=entries, versions=versions_text(configs),
                                                        curves=curve_entries(panels)))
    return text, note


__all__ = ["agent_folders", "find_runs", "load", "plot", "read_agent", "report"]


def last_fraction_returns(agents: list[Path], fraction: float = 0.1
                          ) -> dict[str, dict[tuple, tuple[float, float, int]]]:
    r"""{env: {(form, strength) of an agent (("adam", 0.0) for ``none``): (mean, s.e., seeds)}} of the mean
    evaluation return over the evaluations in the last ``fraction`` of env steps (step ≥ (1 − fraction)·steps), per
    agent, then over seeds — the measure of docs/strength.md. ``agents``: agent folders (their results.csv and the
    agent's own config.json); unfinished agents (last row before ``steps``) are left out."""
    per: dict[str, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for agent in agents:
        cfg, rows = read_agent(agent)
        if not rows or int(rows[-1]["step"]) < cfg["steps"]:
            continue  # unfinished
        last = [float(r["eval_return_mean"]) for r in rows if int(r["step"]) >= (1 - fraction) * cfg["steps"]]
        key = ("adam", 0.0) if cfg["mitigator"] == "none" else (form_of(cfg), float(cfg["spectral_strength"]))
        per[cfg["env"]][key].append(sum(last) / len(last))
    return {env: {k: (*mean_se(v), len(v)) for k, v in sorted(by.items())} for env, by in sorted(per.items())}


def form_of(cfg: dict) -> str:
    """An agent's form of the spectral pull from its run's config (``spectral`` for the paper's R; ``precondition``,
    ``one-sided``, ``no-heads`` joined by + otherwise)."""
    parts = [name for name, on in (("precondition", cfg.get("spectral_precondition", False)),
                                   ("one-sided", cfg.get("spectral_pull", "two-sided") == "one-sided"),
                                   ("no-heads", not cfg.get("spectral_heads", True))) if on]
    return "+".join(parts) or "spectral"

