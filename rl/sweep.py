"""``python -m rl sweep``: an rl grid larger than one process, split over processes — local or on a Ray cluster.

``python -m rl train`` trains every (mitigator, strength, seed) agent of a command together in one process, on one
device. A grid with more agents than one machine should carry goes to ``sweep``: its seeds are cut into groups of
``seeds_per_process`` and each group is one ``train`` process — every mitigator and strength of the grid for those
seeds — in its own folder ``<out>/seeds-<a>-<b>...``, run by the engine the continual sweeps use
(:mod:`specopt.runs`: a pool of local processes, or Ray tasks that bring their folders back). An agent's networks,
environments and draws depend on its own seed only (:mod:`rl.streams`), so it starts and is fed the same way
whichever process it shares; the batched update of another group of agents rounds differently in the last bits,
which reinforcement learning amplifies, so a grid split otherwise gives other returns for the same seed (compare
seeds as samples; the same grouping gives the same rows). Every process resumes from its checkpoint: running the
same sweep again finishes it. At the end the sweep
writes its report (:func:`rl.plot.report` over every group: report.md, report.json, returns.png).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from specopt import runs as engine
from specopt.experiment import claim_folder
from specopt.results import PACKED_RUNS, RUN_ROWS, pack_tree, packed_runs, rename_packed, run_name, run_rows

from .config import Config

EXECUTE = "rl.sweep:execute"


def plan(cfg: Config, seeds_per_process: int) -> list[Config]:
    """One finished :class:`Config` per process: ``cfg`` with a group of its seeds and ``out`` that group's folder."""
    if seeds_per_process < 1:
        raise ValueError(f"--seeds-per-process must be >= 1, got {seeds_per_process}")
    seeds = list(cfg.seeds)
    groups = [seeds[i:i + seeds_per_process] for i in range(0, len(seeds), seeds_per_process)]
    return [dataclasses.replace(cfg, seeds=tuple(g), out=str(Path(cfg.out) / ("seeds-" + "-".join(map(str, g)))))
            for g in groups]


def status(cfg: Config) -> str:
    """"finished" (every agent has its last evaluation, the one at the last multiple of ``eval_interval``),
    "partial" (the folder holds the run's config: resume it, from its checkpoint if it has one) or "new"."""
    from .train import agent_dir

    last = cfg.steps - cfg.steps % cfg.eval_interval
    done = []
    for agent in cfg.agents:
        rows = run_rows(agent_dir(cfg, agent), RUN_ROWS)  # its results.csv, or packed (python -m rl pack)
        done.append(bool(rows) and int(rows[-1]["step"]) >= last)
    if all(done):
        return "finished"
    return "partial" if (Path(cfg.out) / "config.json").exists() else "new"


def pack(root: Path) -> list[str]:
    """Pack every run at or below ``root`` (:func:`specopt.results.pack_tree`): each finished agent's folder — its
    config.json and results.csv, complete to its last evaluation — becomes lines of the run folder's ``rows.csv`` and
    ``runs.jsonl``. Unfinished agents stay folders; ``status``, ``rl plot``, the studies' tables and
    docs/strength.md's tables read packed agents as they read folders. ``python -m rl pack``."""

    def finished(config: dict[str, Any], rows: list[dict[str, str]]) -> bool:
        last = config["steps"] - config["steps"] % config["eval_interval"]
        return "replay_ratio" in config and bool(rows) and int(rows[-1]["step"]) >= last

    return pack_tree(root, RUN_ROWS, finished, "rl run")


def _new_name(old: str, config: dict[str, Any]) -> str:
    """An agent folder's name under :func:`specopt.results.run_name` from its name before it
    (``<mitigator>-s<seed>``, ``<mitigator>-<strength>-s<seed>``); a name already new is kept."""
    m, seed = config["mitigator"], config["seed"]
    if old == f"{m}-s{seed}":
        return run_name(m, None, seed)
    middle = old[len(m) + 1:-len(f"-s{seed}")] if old.startswith(f"{m}-") and old.endswith(f"-s{seed}") else ""
    try:
        return run_name(m, float(middle), seed)
    except ValueError:
        return old


def _migrate_run(run: Path, legacy_rows: str) -> list[str]:
    """:func:`migrate` for one run folder: its agent folders, then its pack."""
    moved = []
    for rows in sorted(run.glob(f"*/{legacy_rows}")):
        agent = rows.parent
        if not (agent / "config.json").is_file() or (agent / RUN_ROWS).exists():
            continue
        new = agent.with_name(_new_name(agent.name, json.loads((agent / "config.json").read_text())))
        if new != agent and new.exists():
            raise ValueError(f"cannot rename {agent} to {new}: it exists already")
        rows.rename(agent / RUN_ROWS)
        agent.rename(new)
        moved.append(f"{agent} → {new}")
    packed = packed_runs(run)
    names = {old: _new_name(old, config) for old, (config, _) in packed.items()}
    names = {old: new for old, new in names.items() if new != old}
    if names:
        rename_packed(run, names)
        moved += [f"{run / old} → {run / new} (packed)" for old, new in names.items()]
    return moved


def migrate(root: Path) -> list[str]:
    """Rename the agents of rl runs at or below ``root`` written before both packages named runs alike: each agent
    folder ``<mitigator>-s<seed>`` → ``<mitigator>-seed<seed>`` (``<mitigator>-<strength>-s<seed>`` →
    ``<mitigator>-s<strength>-seed<seed>``) with its ``metrics.csv`` → ``results.csv``, and the same names inside
    packs (``rows.csv``'s ``run`` column, ``runs.jsonl``). Rows and configs are otherwise untouched; running it
    twice changes nothing. Returns the old → new paths. ``python -m rl migrate``."""
    from .train import LEGACY_ROWS

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: give an rl run's --out, or a folder of runs")
    runs = {p.parent.parent for p in root.rglob(LEGACY_ROWS)}
    runs |= {p.parent for p in root.rglob(PACKED_RUNS) if any("env" in c for c, _ in packed_runs(p.parent).values())}
    moved = []
    for run in sorted(runs):
        with claim_folder(run, "rl run"):  # not under a process still writing it
            moved += _migrate_run(run, LEGACY_ROWS)
    return moved


def execute(config: dict[str, Any], threads: int = 1) -> int:
    """Train (or resume) one process's agents in ``config["out"]``; the number of metrics rows. The unit of work
    of both backends."""
    from . import run

    cfg = Config.from_dict(dict(config, threads=threads))
    # a folder holding the run resumes: from its checkpoint, or from the start where none was taken yet (the rows
    # after a checkpoint are recomputed, as rl train --resume does)
    return len(run(cfg, resume=(Path(cfg.out) / "config.json").exists()))


def run_in_temp_folder(config: dict[str, Any], files: dict[str, bytes], threads: int = 1) -> dict[str, bytes]:
    """A Ray task's body (:func:`specopt.runs.in_temp_folder` of :func:`execute`)."""
    return engine.in_temp_folder(EXECUTE, config, files, threads)


def sweep(cfg: Config, seeds_per_process: int = 1, workers: int | None = None, threads: int = 1,
          backend: str = "local", ray_address: str | None = None, progress: bool = True) -> str:
    """Run every process of ``cfg``'s grid (:func:`plan`) into ``cfg.out``, skipping finished ones and resuming the
    others; write the report there (:func:`rl.plot.report`: report.md, report.json, returns.png) and return its text. ``progress``: a line per process
    (the processes themselves show no bars)."""
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}; valid names are local, ray")
    if ray_address and backend != "ray":
        raise ValueError("--ray-address needs --backend ray")
    if backend == "ray":
        engine.import_ray()
    cfg.validate()
    groups = [dataclasses.replace(g, progress=False) for g in plan(cfg, seeds_per_process)]  # no bars from workers
    for group in groups:
        group.validate()
    say = print if progress else (lambda *a, **k: None)
    with claim_folder(cfg.out, "rl sweep") as out:
        todo = [g for g in groups if status(g) != "finished"]
        say(f"sweep: {len(groups)} processes of {len(cfg.agents)} agents in {out}: {len(groups) - len(todo)} "
            f"finished, {len(todo)} to run ({backend})", flush=True)
        jobs = [engine.Job(Path(g.out).name, dataclasses.asdict(g), EXECUTE, RUN_ROWS) for g in todo]
        t0 = time.time()

        def done(job: engine.Job) -> None:
            say(f"{job.name}: done ({time.time() - t0:.0f} s)", flush=True)

        if backend == "local":
            engine.run_local(jobs, workers or os.cpu_count() or 1, threads, done)
        else:
            engine.run_ray(jobs, workers, threads, ray_address, done, body=run_in_temp_folder)
        from .plot import report

        text, _ = report([Path(g.out) for g in groups], out)
    return text


__all__ = ["execute", "plan", "status", "sweep"]
