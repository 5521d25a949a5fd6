"""The rl studies of docs/strength.md as data: ``python -m rl study NAME``.

A study is a list of ``python -m rl train`` processes, each a finished :class:`~rl.config.Config` in its own folder
below ``<out>/<study folder>/``, run by the engine the sweeps use (:mod:`specopt.runs`: local processes or Ray
tasks). A process whose agents all have their last evaluation is skipped; one whose folder holds the run resumes
(from its checkpoint); a folder holding other settings is refused before anything runs. At the end the study prints
its table: the mean evaluation return over the last 10% of env steps per agent, mean ± standard error over seeds,
and its ratio to Adam's (:func:`rl.plot.last_fraction_returns`), per env.

=============  ==================================================================================================
study          what it runs (SAC as people run it: twin critics, no LayerNorm, replay ratio 1, 5k random warm-up
               steps, 50k env steps, evaluation every 5k — :data:`DROP_IN`)
=============  ==================================================================================================
strength-sac   Adam against the spectral strengths 1, 0.01 and 0.001 on cheetah-run and walker-walk, 5 seeds
               (3 for λ = 1), into results/strength-sac (the trade-off table of docs/strength.md)
forms-sac      Adam against the preconditioned pull at λ = 1e-3, 5 seeds per env, and on cheetah-run the output
               layer exempt and the one-sided pull at λ = 1, into results/studies/forms/sac (docs/strength.md,
               "Forms of the pull")
short-cheetah  SAC + LayerNorm (rl's defaults) at replay ratio 4 for 20k env steps on a CPU (:data:`SHORT`): Adam and
               spectral λ = 1, seeds 0–1, and spectral λ = 0.1, seed 0, into results/rl/short-cheetah
               (docs/results.md, "Reinforcement learning")
rr16-gpu       the paper's setting (SAC + LayerNorm, replay ratio 16, 100k env steps) on a GPU: Adam and spectral
               λ = 1, 5 seeds, into results/rl/rr16-cheetah-run — what ``scripts/device_rl.sh`` runs in one device
               call (its committed rows stop at 15k steps: the study resumes them)
=============  ==================================================================================================

A study is ``(folder, processes)`` on :data:`DROP_IN`, or ``(folder, processes, base)`` on its own base settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specopt import runs as engine
from specopt.experiment import changed_settings, mean_pm, ratio_pm
from specopt.results import RUN_ROWS

from .config import RESUMABLE_OVERRIDES, Config
from .sweep import EXECUTE, run_in_temp_folder, status

DROP_IN: dict[str, Any] = dict(critics=2, layer_norm=False, replay_ratio=1, warmup_steps=5000, steps=50000,
                               eval_interval=5000, threads=1)
"""SAC as people usually run it (docs/strength.md): the settings the drop-in studies share."""
ENVS = ("cheetah-run", "walker-walk")
SHORT: dict[str, Any] = dict(env="cheetah-run", steps=20000, replay_ratio=4, warmup_steps=5000, eval_interval=2500,
                             eval_episodes=5, checkpoint_interval=5000, threads=1, env_workers=0)
"""The short CPU comparison's settings (rl's defaults otherwise: SAC + LayerNorm, one critic)."""

STUDIES: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {
    "strength-sac": ("strength-sac", [
        *((env, dict(env=env, mitigators=("none", "spectral"), strengths=(1.0, 0.01), seeds=(0, 1, 2)))
          for env in ENVS),
        *((f"{env}-seeds34", dict(env=env, mitigators=("none", "spectral"), strengths=(0.01,), seeds=(3, 4)))
          for env in ENVS),
        *((f"{env}-0.001", dict(env=env, mitigators=("spectral",), strengths=(0.001,), seeds=(0, 1, 2, 3, 4)))
          for env in ENVS),
    ]),
    "forms-sac": ("studies/forms/sac", [
        *((f"{env}-precondition", dict(env=env, mitigators=("none", "spectral"), strengths=(1e-3,),
                                       spectral_precondition=True, seeds=(0, 1, 2, 3, 4))) for env in ENVS),
        ("cheetah-run-no-heads", dict(env="cheetah-run", mitigators=("spectral",), strengths=(1.0,),
                                      spectral_heads=False, seeds=(0, 1, 2, 3, 4))),
        ("cheetah-run-one-sided", dict(env="cheetah-run", mitigators=("spectral",), strengths=(1.0,),
                                       spectral_pull="one-sided", seeds=(0, 1, 2, 3, 4))),
    ]),
    "short-cheetah": ("rl/short-cheetah", [
        ("none-spectral1", dict(mitigators=("none", "spectral"), spectral_strength=1.0, seeds=(0, 1))),
        ("spectral0.1", dict(mitigators=("spectral",), spectral_strength=0.1, seeds=(0,))),
    ], SHORT),
    "rr16-gpu": ("rl/rr16-cheetah-run", [
        ("", dict(mitigators=("none", "spectral"), spectral_strength=1.0, seeds=(0, 1, 2, 3, 4))),
    ], dict(env="cheetah-run", device="cuda", eval_interval=5000)),
}
"""Each study: its folder below ``--out``, its processes (folder, settings beyond the base) and, where it is not
:data:`DROP_IN`, its base settings."""


def configs(name: str, out: Path, overrides: Mapping[str, Any] | None = None) -> list[Config]:
    """Every process of study ``name`` as a finished config: :data:`DROP_IN`, the process's settings, then
    ``overrides`` (a tiny version for a test, another device)."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    folder, processes, *own = STUDIES[name]
    base = own[0] if own else DROP_IN
    out_configs = []
    for sub, settings in processes:
        cfg = Config(**{**base, **settings, **(overrides or {}), "out": str(out / folder / sub)})
        cfg.validate()
        out_configs.append(cfg)
    return out_configs


def check_settings(cfg: Config) -> None:
    """A one-line ``ValueError`` if ``cfg.out`` holds a run with other settings than ``cfg`` (those a resume may
    change, the folder, and ``spectral_strength`` where a ``strengths`` grid gives every agent its own, aside)."""
    saved_path = Path(cfg.out) / "config.json"
    if not saved_path.exists():
        return
    saved = Config.from_dict(json.loads(saved_path.read_text())).to_dict()
    unused = {"spectral_strength"} if saved["strengths"] and cfg.strengths else set()  # the grid is every agent's
    differs = changed_settings(saved, cfg.to_dict(), ignore={*RESUMABLE_OVERRIDES, "out", *unused})
    if differs:
        raise ValueError(f"{cfg.out} holds a run with other settings ({', '.join(differs)}): this study would not "
                         "continue it; choose another --out")


def run_study(name: str, out: Path, overrides: Mapping[str, Any] | None = None, workers: int | None = None,
              threads: int = 1, backend: str = "local", ray_address: str | None = None, progress: bool = True) -> str:
    """Run (or finish) every process of study ``name`` under ``out``; return its table."""
    cfgs = [dataclasses.replace(c, progress=False) for c in configs(name, out, overrides)]
    for cfg in cfgs:
        check_settings(cfg)
    todo = [c for c in cfgs if status(c) != "finished"]
    say = print if progress else (lambda *a, **k: None)
    say(f"study {name}: {len(cfgs)} processes, {len(cfgs) - len(todo)} finished, {len(todo)} to run ({backend})",
        flush=True)
    jobs = [engine.Job(Path(c.out).name, dataclasses.asdict(c), EXECUTE, RUN_ROWS) for c in todo]

    def done(job: engine.Job) -> None:
        say(f"{job.name}: done", flush=True)

    if backend == "local":
        engine.run_local(jobs, workers or os.cpu_count() or 1, threads, done)
    elif backend == "ray":
        engine.run_ray(jobs, workers, threads, ray_address, done, body=run_in_temp_folder)
    else:
        raise ValueError(f"unknown backend {backend!r}; valid names are local, ray")
    return table(name, out, overrides)


def table(name: str, out: Path, overrides: Mapping[str, Any] | None = None) -> str:
    """The study's table from its finished agents: per env and (form, λ), the last-10% evaluation return (mean ±
    s.e. over seeds, from 3 seeds on) and its ratio to Adam's; then the code versions of its agents and how many
    are still unfinished (``python -m rl report`` shows those at their last evaluation)."""
    from specopt.experiment import versions_text

    from .plot import agent_folders, last_fraction_returns, read_agent

    agents = [a for c in configs(name, out, overrides) for a in agent_folders(Path(c.out))]
    lines = ["| env | form | λ | seeds | return, last 10% of steps | ratio to Adam |", "|---|---|---|---|---|---|"]
    for env, by in last_fraction_returns(agents).items():
        adam = by.get(("adam", 0.0))
        for (form, lam), (mean, se, n) in by.items():
            ratio = "1×" if (form, lam) == ("adam", 0.0) else (ratio_pm((mean, se, n), adam) if adam else "–")
            lines.append(f"| {env} | {'Adam' if form == 'adam' else form} | {'' if form == 'adam' else f'{lam:g}'} "
                         f"| {n} | {mean_pm(mean, se, n, 1)} | {ratio} |")
    agent_data = [read_agent(a) for a in agents]
    unfinished = sum(1 for cfg, rows in agent_data if not rows or int(rows[-1]["step"]) < cfg["steps"])
    lines += ["", f"Code versions (commit, from config.json): {versions_text(c for c, _ in agent_data) or 'none yet'}."
                  f" Unfinished agents left out: {unfinished}."]
    return "\n".join(lines)


__all__ = ["DROP_IN", "STUDIES", "configs", "run_study", "table"]
