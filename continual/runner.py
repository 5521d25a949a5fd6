"""The continual-learning run: data → task stream → model → mitigator/optimizer → metrics → results.

One run is (dataset, non-stationarity, model, mitigator, strength, seed); an experiment loops over mitigators and
seeds. :func:`run` takes a finished :class:`~continual.config.RunConfig` and trains one
:class:`~continual.learner.Learner` at a time — one seed (:class:`~continual.learner.Run`) or, with
``vectorize_seeds``, all seeds of a mitigator at once (:class:`~continual.vmap_seeds.StackedSeeds`) — through the
same loop: at every task end it writes the rows and checkpoints atomically; ``resume`` continues a killed experiment
and produces exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from specopt import experiment
from specopt.results import RUN_ROWS, run_name

from .config import LOCATION_SETTINGS, RunConfig, changed_settings
from .data import Dataset, load_dataset
from .learner import BASE_COLUMNS, COLUMNS, Learner, Run, batch_generator, evaluate, options_text
from .vmap_seeds import StackedSeeds, check_vectorizable

__all__ = ["BASE_COLUMNS", "COLUMNS", "CONVERT_COMMAND", "LOCATION_SETTINGS", "Learner", "Run", "RunConfig",
           "batch_generator", "changed_settings", "evaluate", "make_learner", "open_checkpoint", "options_text",
           "run", "run_experiment"]  # RunConfig, Run and the row columns stay importable from here, where they lived


CONVERT_COMMAND = "python -m continual convert-checkpoint --trust {out}"
"""How a user converts a checkpoint they trust that needs more than ``weights_only`` (docs/security.md)."""


def open_checkpoint(out: Path, config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The checkpoint in ``out`` when resuming (None if there is none yet), read under ``weights_only=True``
    (:func:`specopt.experiment.load_checkpoint`: nothing in the file runs; an unreadable or non-plain file is refused
    in one line). Refuses to resume with settings other than the checkpoint's (but :data:`LOCATION_SETTINGS`), and
    to start over a folder that already holds results."""
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        saved = experiment.load_checkpoint(ckpt_path, CONVERT_COMMAND.format(out=out))
        diff = changed_settings(saved["config"], config)
        if diff:
            raise ValueError(f"--resume with different settings than the checkpoint in {out} ({', '.join(diff)})")
        return saved
    if (out / RUN_ROWS).exists() and not resume:
        raise ValueError(f"{out} already holds results: pass --resume to continue, or choose another --out")
    return None


def run(cfg: RunConfig, resume: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Run every (mitigator, seed) of ``cfg``, writing ``results.csv``, ``config.json`` and a checkpoint to
    ``cfg.out`` after every task; with ``resume``, continue from that checkpoint. Returns the rows (one per
    mitigator, seed and task, as results.csv holds them; :data:`COLUMNS`). ``continual.run``; ``python -m continual
    run`` is this call on the config its flags build. ``cfg`` is validated here, once.

    The unit of work is a mitigator with a group of seeds: one seed at a time (a :class:`Run`), or with
    ``cfg.vectorize_seeds`` all seeds at once (:class:`continual.vmap_seeds.StackedSeeds`, stacked parameters and
    ``vmap``: the same rows up to floating-point reduction order). Either way the rows are written ordered by
    mitigator, seed and task."""
    cfg.validate()
    if cfg.vectorize_seeds:
        check_vectorizable(cfg)
    with experiment.claim_folder(cfg.out, "continual run") as out:  # one run, one process per folder
        return _run_in(out, cfg, resume, progress)


run_experiment = run  # the name it had first (scripts, tests)


def make_learner(cfg: RunConfig, ds: Dataset, mitigator: str, seeds: tuple[int, ...]) -> Learner:
    """The learner of one group of the loop: all ``seeds`` at once with ``cfg.vectorize_seeds``, else one seed."""
    return StackedSeeds(cfg, ds, list(seeds)) if cfg.vectorize_seeds else Run(cfg, ds, mitigator, seeds[0])


def _run_in(out: Path, cfg: RunConfig, resume: bool, progress: bool) -> list[dict[str, Any]]:
    ckpt_path = out / "checkpoint.pt"
    config = asdict(cfg)
    saved = open_checkpoint(out, config, resume)  # before anything is written: a refused file changes nothing
    ds = load_dataset(cfg.dataset, Path(cfg.data_dir) if cfg.data_dir else None, cfg.train_size).to(cfg.device)
    rows: list[dict[str, Any]] = saved["rows"] if saved is not None else []
    history = experiment.saved_provenance(out / "config.json") if saved is not None else []
    if len(rows) < len(cfg.mitigators) * len(cfg.seeds) * cfg.tasks:  # this process trains: record its code version
        history = experiment.add_version(history, cfg.device)
    experiment.write_json(out / "config.json", {**config, experiment.PROVENANCE: history})
    if saved is not None:  # the checkpoint's rows are the record: a damaged or missing results.csv is rebuilt
        experiment.write_csv(out / RUN_ROWS, rows, COLUMNS)
    order = {key: i for i, key in enumerate((m, s) for m in cfg.mitigators for s in cfg.seeds)}
    bar = experiment.progress_bar(len(order) * cfg.tasks, len(rows), "task", progress)
    groups = ([(m, tuple(cfg.seeds)) for m in cfg.mitigators] if cfg.vectorize_seeds
              else [(m, (s,)) for m in cfg.mitigators for s in cfg.seeds])
    t0 = time.time()
    for mitigator, seeds in groups:
        done = min(sum(1 for r in rows if r["mitigator"] == mitigator and r["seed"] == s) for s in seeds)
        if done >= cfg.tasks:
            continue
        current = make_learner(cfg, ds, mitigator, seeds)
        if saved is not None and tuple(saved.get("current", ())) == current.key:
            current.load_state_dict(saved["run"])
        elif done:
            raise RuntimeError(f"checkpoint in {out} lacks the state of ({mitigator}, seeds {list(seeds)})")
        boards = ({s: experiment.tensorboard_writer(out / "tensorboard" / run_name(mitigator, None, s)) for s in seeds}
                  if cfg.tensorboard else {})
        for t in range(current.next_task, cfg.tasks):
            new = current.train(t, bar)
            rows = sorted(rows + new, key=lambda r: (order[(r["mitigator"], r["seed"])], r["task"]))
            for row in new if boards else ():
                experiment.log_scalars(boards[row["seed"]], row, t + 1)
            current.next_task = t + 1
            state = {"config": config, "rows": rows, "current": current.key, "run": current.state_dict()}
            experiment.save_checkpoint(ckpt_path, state)
            experiment.write_csv(out / RUN_ROWS, rows, COLUMNS)
            bar.update(len(new))
            accuracy = sum(r["train_accuracy"] for r in new) / len(new)
            bar.set_description(f"{mitigator} {current.label} t{t + 1} acc {accuracy:.3f}")
    bar.close()
    if progress:
        print(f"{len(rows)} rows in {out / RUN_ROWS} ({time.time() - t0:.0f} s)")
    return rows
