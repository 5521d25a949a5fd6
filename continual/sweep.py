"""``python -m continual sweep``: a grid of runs (mitigator × strength × seed), one run folder each.

Every run is one call of :func:`continual.run` with one mitigator and one seed, in its own folder
``<out>/<mitigator>[-s<strength>]-seed<seed>`` (the same ``results.csv``, ``config.json`` and ``checkpoint.pt`` as
``run``). Runs go to local processes (``backend="local"``) or to Ray tasks (``backend="ray"``): a Ray task runs the
experiment in a temporary folder on its worker, seeded with the run folder's files, and returns the folder's files
as bytes, which the driver writes (atomically) under ``out`` — so results come back from other machines, and a run
begun on one machine resumes on another. Running the same sweep again skips finished runs and resumes the others
from their checkpoints. At the end :func:`summarize` writes ``summary.md`` and ``sensitivity.png``.
:func:`pack` (``python -m continual pack``) folds finished run folders into the sweep's ``rows.csv`` and
``runs.jsonl``, the committed form; a packed run counts as finished and reads as its folder did.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from specopt import runs as engine
from specopt.experiment import claim_folder, mean_pm, mean_se, save_figure, write_text
from specopt.results import PACKED_RUNS, RUN_ROWS, pack_tree, packed_runs, run_name

from .config import LOCATION_SETTINGS, RunConfig, changed_settings
from .data import DataError
from .mitigators import NO_STRENGTH, strength_or_default
from .plot import run_results
from . import runner

BEST_RULE = ("the strength with the highest mean (over seeds) of the last-5-task mean train accuracy; a tie goes "
             "to the smaller strength")


@dataclass(frozen=True)
class SweepRun:
    name: str  # the run folder's name under the sweep's --out
    mitigator: str
    strength: float | None  # None: the mitigator has no strength
    seed: int
    config: RunConfig


def plan(base: RunConfig, strengths: list[float] | None) -> list[SweepRun]:
    """The runs of a sweep: every mitigator of ``base`` × (``strengths``, or its default strength; once for
    :data:`~continual.mitigators.NO_STRENGTH`) × seed, each a one-mitigator one-seed :class:`RunConfig` whose
    ``out`` is its folder."""
    if len(set(base.seeds)) != len(base.seeds):
        raise ValueError(f"--seeds repeats a seed: {' '.join(map(str, base.seeds))}")
    if strengths is not None and len(set(strengths)) != len(strengths):
        raise ValueError(f"--strengths repeats a value: {' '.join(f'{s:g}' for s in strengths)}")
    runs = []
    for mitigator in base.mitigators:
        grid: list[float | None]
        if mitigator in NO_STRENGTH:
            grid = [None]
        else:
            grid = list(strengths) if strengths else [strength_or_default(mitigator)]
        for strength in grid:
            for seed in base.seeds:
                name = run_name(mitigator, strength, seed)
                cfg = replace(base, mitigators=[mitigator], seeds=[seed], strength=strength,
                              out=str(Path(base.out) / name))
                runs.append(SweepRun(name, mitigator, strength, seed, cfg))
    return runs


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in LOCATION_SETTINGS}


def status(run: SweepRun) -> str:
    """"finished" (every task in results.csv, or packed), "partial" (something to resume) or "new". Raises ``ValueError`` when
    the folder holds a run with other settings (``--out`` and ``--data-dir`` may differ, as for ``run --resume``)."""
    folder = Path(run.config.out)
    config_path = folder / "config.json"
    packed = None if config_path.exists() else packed_runs(folder.parent).get(folder.name)
    if config_path.exists() or packed:
        try:
            saved = packed[0] if packed else json.loads(config_path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{config_path} is not valid JSON: remove the folder or choose another --out") from None
        diff = changed_settings(saved, _comparable(asdict(run.config)))
        if diff:
            where = f"{folder.parent / PACKED_RUNS} ({folder.name})" if packed else folder
            raise ValueError(f"{where} holds a run with different settings ({', '.join(diff)}): choose another "
                             f"--out, or remove the run")
    try:
        rows = run_results(folder)
    except ValueError:  # damaged: the run's resume rebuilds it from its checkpoint
        return "partial"
    if (config_path.exists() or packed) and len(rows) >= run.config.tasks:
        return "finished"
    return "partial" if folder.exists() and any(folder.iterdir()) else "new"


def execute(config: dict[str, Any], threads: int = 1) -> int:
    """Run (or resume) one run in ``config["out"]``; the number of rows. The unit of work of both backends (module
    level, so a worker process can import it; :func:`specopt.runs.call` sets the torch threads)."""
    return len(runner.run(RunConfig(**config), resume=True, progress=False))


EXECUTE = "continual.sweep:execute"


def run_in_temp_folder(config: dict[str, Any], files: dict[str, bytes], threads: int = 1) -> dict[str, bytes]:
    """A Ray task's body (:func:`specopt.runs.in_temp_folder` of :func:`execute`)."""
    return engine.in_temp_folder(EXECUTE, config, files, threads)


RAY_RETRIES = engine.RAY_RETRIES  # the driver reads it when it starts the tasks (a test lowers it)


def _job(run: SweepRun) -> engine.Job:
    return engine.Job(run.name, asdict(run.config), EXECUTE, RUN_ROWS)


def _run_local(todo: list[SweepRun], workers: int, threads: int, done: Callable[[SweepRun], None]) -> None:
    by_name = {run.name: run for run in todo}
    engine.run_local([_job(run) for run in todo], workers, threads, lambda job: done(by_name[job.name]))


def _run_ray(todo: list[SweepRun], workers: int | None, threads: int, address: str | None,
             done: Callable[[SweepRun], None]) -> None:
    by_name = {run.name: run for run in todo}
    engine.run_ray([_job(run) for run in todo], workers, threads, address, lambda job: done(by_name[job.name]),
                 body=run_in_temp_folder, refused=(ValueError, DataError), retries=RAY_RETRIES)


def sweep(base: RunConfig, strengths: list[float] | None = None, workers: int | None = None, threads: int = 1,
          backend: str = "local", ray_address: str | None = None, progress: bool = True) -> str:
    """Run the sweep of ``base`` (its mitigators and seeds) × ``strengths`` into ``base.out``; skip finished runs,
    resume partial ones; write ``summary.md`` and ``sensitivity.png`` there. Returns the summary's text.

    ``base`` is finished (the CLI builds it, :func:`continual.cli.config_from`); it is validated here, once, with the
    sweep's own settings, before anything runs."""
    if ray_address and backend != "ray":
        raise ValueError("--ray-address needs --backend ray")
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}; valid names are local, ray")
    if backend == "ray":
        engine.import_ray()  # before any work: a missing Ray is a one-line error
    base.validate()
    if strengths is not None and any(not (0 <= s < math.inf) for s in strengths):
        raise ValueError(f"--strengths must be finite numbers >= 0, got {' '.join(map(str, strengths))}")
    with claim_folder(base.out, "continual sweep") as out:  # one driver per sweep folder; each run locks its own
        return _sweep_in(out, base, strengths, workers, threads, backend, ray_address, progress)


def _sweep_in(out: Path, base: RunConfig, strengths: list[float] | None, workers: int | None, threads: int,
              backend: str, ray_address: str | None, progress: bool) -> str:
    runs = plan(base, strengths)
    states = {run.name: status(run) for run in runs}  # refuses changed settings before anything runs
    todo = [run for run in runs if states[run.name] != "finished"]
    say = print if progress else (lambda *a, **k: None)
    resumed = sum(states[r.name] == "partial" for r in todo)
    say(f"sweep: {len(runs)} runs in {out}: {len(runs) - len(todo)} finished, {resumed} to resume, "
        f"{len(todo) - resumed} to start ({backend})", flush=True)
    t0, count = time.time(), [len(runs) - len(todo)]

    def done(run: SweepRun) -> None:
        count[0] += 1
        rows = run_results(Path(run.config.out))
        last = float(rows[-1]["train_accuracy"]) if rows else math.nan
        say(f"[{count[0]}/{len(runs)}] {run.name}: {len(rows)} tasks, last-task train accuracy {last:.3f} "
            f"({time.time() - t0:.0f} s)", flush=True)

    if todo:
        if backend == "local":
            _run_local(todo, workers or os.cpu_count() or 1, threads, done)
        else:
            _run_ray(todo, workers, threads, ray_address, done)
    text = summarize(runs, out)
    say(f"summary: {out / 'summary.md'}\nfigure: {out / 'sensitivity.png'}", flush=True)
    return text


def pack(root: Path) -> list[str]:
    """Pack every sweep folder at or below ``root`` (:func:`specopt.results.pack_runs`): each finished run folder
    — config.json, results.csv with every task of its mitigators and seeds, checkpoint.pt — becomes lines of the
    sweep's ``rows.csv`` and ``runs.jsonl``, the committed form of results/ (one rows file per sweep instead of a
    folder per run). Unfinished runs stay as they are, and every reader (the sweep's resume, its summary, ``plot``,
    the studies' reports) reads packed and unpacked runs alike. Returns the packed runs' paths; a sweep another
    process is writing is refused (its lock)."""

    def finished(config: dict[str, Any], rows: list[dict[str, str]]) -> bool:
        return "nonstationarity" in config and len(rows) >= config["tasks"] * len(config["mitigators"]) * len(
            config["seeds"])

    return pack_tree(root, RUN_ROWS, finished, "continual sweep")


# ----------------------------------------------------------------------------------------------------------------
# summary.md and sensitivity.png


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


def summary_markdown(entries: list[dict[str, Any]], base: RunConfig | None = None) -> str:
    best = best_strengths(entries)
    lines = ["# Sweep summary", ""]
    if base is not None:
        ln = " + LayerNorm" if base.layernorm else ""
        lines += [f"{base.dataset}, {base.nonstationarity}, {base.model}{ln}; {base.tasks} tasks × {base.epochs} "
                  f"epochs, batch size {base.batch_size}, lr {base.lr:g}.", ""]
    lines += ["Train accuracy at task end: mean (± standard error over seeds, from 3 seeds on) of each run's mean "
              "over its last 5 tasks, and of its last task. Strength – : the mitigator has none.", "",
              "| mitigator | strength | seeds | tasks | last-5-task mean | last task | best |",
              "|---|---|---|---|---|---|---|"]
    for e in entries:
        strength = "–" if e["strength"] is None else f"{e['strength']:g}"
        mark = "best" if e["strength"] is not None and best.get(e["mitigator"]) == e["strength"] else ""
        lines.append(f"| {e['mitigator']} | {strength} | {e['seeds']} | {e['tasks']} | "
                     f"{mean_pm(e['last5'], e['last5_se'], e['seeds'], 4)} | "
                     f"{mean_pm(e['last'], e['last_se'], e['seeds'], 4)} | {mark} |")
    lines += ["", f"Best strength per mitigator: {BEST_RULE}.", ""]
    lines += [f"* {m}: {s:g}" for m, s in best.items()] or ["* (no mitigator with a strength in this sweep)"]
    return "\n".join(lines) + "\n"


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
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, output)
    plt.close(fig)


def summarize(runs: list[SweepRun], out: Path) -> str:
    entries = aggregate(runs, out)
    if not entries:
        raise ValueError(f"no results in {out}")
    text = summary_markdown(entries, runs[0].config)
    write_text(out / "summary.md", text)
    best = best_strengths(entries)  # the machine-readable summary a later study reads (continual.studies)
    write_text(out / "summary.json", json.dumps({"rule": BEST_RULE, "best": best, "entries": entries}, indent=1) + "\n")
    c = runs[0].config
    title = f"{c.dataset}, {c.nonstationarity}, {c.model}{' + LayerNorm' if c.layernorm else ''}"
    sensitivity_plot(entries, out / "sensitivity.png", title)
    return text
