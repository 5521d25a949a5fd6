"""``python -m continual sweep``: a grid of runs (mitigator × strength × seed), one run folder each.

Every run is one call of :func:`continual.run` with one mitigator and one seed, in its own folder
``<out>/<mitigator>[-s<strength>]-seed<seed>`` (the same ``results.csv``, ``config.json`` and ``checkpoint.pt`` as
``run``). Runs go to local processes (``backend="local"``) or to Ray tasks (``backend="ray"``): a Ray task runs the
experiment in a temporary folder on its worker, seeded with the run folder's files, and returns the folder's files
as bytes, which the driver writes (atomically) under ``out`` — so results come back from other machines, and a run
begun on one machine resumes on another. Running the same sweep again skips finished runs and resumes the others
from their checkpoints. It ends with the report of every finished run in its folder (:func:`continual.report.report`:
``report.md``, ``report.json`` with each mitigator's best strength, and ``sensitivity.png``).
:func:`pack` (``python -m continual pack``) folds finished run folders into the sweep's ``rows.csv`` and
``runs.jsonl``, the committed form; a packed run counts as finished and reads as its folder did.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from specopt import runs as engine
from specopt.experiment import claim_folder
from specopt.results import PACKED_RUNS, RUN_ROWS, pack_tree, packed_runs, run_name

from .config import LOCATION_SETTINGS, RunConfig, SweepRun, changed_settings
from .data import DataError
from .mitigators import NO_STRENGTH, strength_or_default
from .plot import run_results
from .report import finished_runs, report
from . import runner

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


def _dispatch(jobs: list[engine.Job], backend: str, workers: int | None, threads: int, address: str | None,
              done: Callable[[engine.Job], None]) -> None:
    """``jobs`` on local processes (``workers``, default one per core) or Ray tasks, ``done(job)`` as each ends."""
    if backend == "local":
        engine.run_local(jobs, workers or os.cpu_count() or 1, threads, done)
    else:
        engine.run_ray(jobs, workers, threads, address, done, body=run_in_temp_folder, refused=(ValueError, DataError),
                       retries=RAY_RETRIES)


def run_whole(configs: list[RunConfig], workers: int | None = None, threads: int = 1, backend: str = "local",
              ray_address: str | None = None, progress: bool = True) -> None:
    """Run or resume whole runs — each one ``continual run`` folder of all its seeds (a study's single runs,
    :attr:`continual.studies.Sweep.one_run`) — on the sweep's engine: local processes or Ray tasks. Each run
    resumes from its checkpoint (a finished one trains nothing) and refuses changed settings, as ``run --resume``."""
    if backend == "ray":
        engine.import_ray()
    say = print if progress else (lambda *a, **k: None)
    t0 = time.time()

    def done(job: engine.Job) -> None:
        rows = run_results(Path(job.config["out"]))
        say(f"run {job.name}: {len(rows)} rows ({time.time() - t0:.0f} s)", flush=True)

    _dispatch([engine.Job(cfg.out, asdict(cfg), EXECUTE, RUN_ROWS) for cfg in configs], backend, workers, threads,
              ray_address, done)


def sweep(base: RunConfig, strengths: list[float] | None = None, workers: int | None = None, threads: int = 1,
          backend: str = "local", ray_address: str | None = None, progress: bool = True) -> str:
    """Run the sweep of ``base`` (its mitigators and seeds) × ``strengths`` into ``base.out``; skip finished runs,
    resume partial ones; end with its report there (:func:`continual.report.report`: report.md, report.json — each
    mitigator's best strength — and sensitivity.png). Returns the report's text.

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
        by_name = {run.name: run for run in todo}
        _dispatch([_job(run) for run in todo], backend, workers, threads, ray_address, lambda j: done(by_name[j.name]))
    if not finished_runs(out)[0]:
        raise ValueError(f"no results in {out}")
    text, _ = report([out], out, title=sweep_title(base), curves_figure=False)
    say(f"report: {out / 'report.md'}\nfigure: {out / 'sensitivity.png'}", flush=True)
    return text


def sweep_title(c: RunConfig) -> str:
    """The heading of a sweep's report: its benchmark and the settings its runs share."""
    ln = " + LayerNorm" if c.layernorm else ""
    return (f"{c.dataset}, {c.nonstationarity}, {c.model}{ln}; {c.tasks} tasks × {c.epochs} epochs, batch size "
            f"{c.batch_size}, lr {c.lr:g}")


def pack(root: Path) -> list[str]:
    """Pack every sweep folder at or below ``root`` (:func:`specopt.results.pack_runs`): each finished run folder
    — config.json, results.csv with every task of its mitigators and seeds, checkpoint.pt — becomes lines of the
    sweep's ``rows.csv`` and ``runs.jsonl``, the committed form of results/ (one rows file per sweep instead of a
    folder per run). Unfinished runs stay as they are, and every reader (the sweep's resume, its report, ``plot``,
    the studies' reports) reads packed and unpacked runs alike. Returns the packed runs' paths; a sweep another
    process is writing is refused (its lock)."""

    def finished(config: dict[str, Any], rows: list[dict[str, str]]) -> bool:
        return "nonstationarity" in config and len(rows) >= config["tasks"] * len(config["mitigators"]) * len(
            config["seeds"])

    return pack_tree(root, RUN_ROWS, finished, "continual sweep")
