r"""Where a coupled baseline acts: its penalty gradient against the data gradient, on the studies' benchmark.

For a coupled regularizer Adam steps on :math:`\nabla J + \lambda\nabla P`, so :math:`\rho =
\lVert\lambda\nabla P\rVert / \lVert\nabla J\rVert` (global norms over every parameter) says whether it can act: at
ρ ≪ 1 the penalty barely moves the step, at ρ ≳ 1 it dominates. Trains the benchmark of ``python -m continual study
tuned`` (continual.studies.BENCHMARK: Fashion-MNIST random labels, MLP 4×256, Adam 1e-3, batch 512, 12,800
images, 40 epochs per task) for a few tasks at each strength of each coupled penalty's grid and records, per task,
the median and mean of ρ over the task's steps (ρ is measured at every step: the penalty's gradient by autograd,
the data gradient as the total gradient minus it)::

    python scripts/penalty_ratio.py --tasks 3 --out penalty_ratio.csv              # every coupled penalty's grid
    python scripts/penalty_ratio.py --mitigators ewc --strengths 1 100 1e4 --out ewc.csv
    python scripts/penalty_ratio.py --report results/studies/penalty-ratio/rows.csv --tuned results/studies/tuned/noln
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from continual.data import load_dataset
from continual.learner import Run
from continual.studies import BENCHMARK, GRIDS
from continual.config import RunConfig
from specopt import experiment

COUPLED = ("l2", "l2-init", "wasserstein", "ewc", "spectral-coupled")
"""The mitigators whose penalty enters the loss (their default, coupled form)."""
COLUMNS = ["mitigator", "strength", "layernorm", "seed", "task", "steps", "ratio_median", "ratio_mean",
           "data_grad_norm", "penalty_grad_norm", "train_accuracy", "commit", "dirty", "torch", "cpu"]


def measure(run: Run, tasks: int) -> list[dict[str, Any]]:
    """Train ``run`` for ``tasks`` tasks, recording ρ at every step; one row per task."""
    params = [p for p in run.model.parameters() if p.requires_grad]
    mit, steps, penalty_grads = run.mit, [], [None]
    penalty_of, after_step = mit.penalty, mit.after_step

    def penalty(model: torch.nn.Module) -> torch.Tensor | None:
        value = penalty_of(model)
        penalty_grads[0] = None if value is None else torch.autograd.grad(
            value, params, retain_graph=True, allow_unused=True)
        return value

    def after(step: int, x: torch.Tensor) -> None:
        pg = [torch.zeros_like(p) if g is None else g for p, g in zip(params, penalty_grads[0] or [None] * len(params))]
        data = torch.sqrt(sum(((p.grad - g) ** 2).sum() for p, g in zip(params, pg) if p.grad is not None)).item()
        pen = torch.sqrt(sum((g ** 2).sum() for g in pg)).item()
        steps.append((data, pen))
        after_step(step, x)

    mit.penalty, mit.after_step = penalty, after
    version = experiment.code_version(run.cfg.device)
    rows = []
    for t in range(tasks):
        steps.clear()
        row = run.train(t)[0]
        ratios = [pen / data if data > 0 else float("inf") for data, pen in steps]
        rows.append({"mitigator": run.name, "strength": run.strength, "layernorm": int(run.cfg.layernorm),
                     "seed": run.seed, "task": t + 1, "steps": len(steps),
                     "ratio_median": statistics.median(ratios), "ratio_mean": statistics.fmean(ratios),
                     "data_grad_norm": statistics.median(d for d, _ in steps),
                     "penalty_grad_norm": statistics.median(p for _, p in steps),
                     "train_accuracy": row["train_accuracy"],
                     **{k: version[k] for k in ("commit", "dirty", "torch", "cpu")}})
    return rows


def report(path: Path, task: int | None = None, tuned: Path | None = None) -> str:
    """The markdown table of a rows file: per mitigator and strength, ρ's median over the steps of the last task
    measured (or of ``task``), and its train accuracy; with ``tuned`` (a tuned study's variant folder,
    results/studies/tuned/noln) also the tuned study's last-5-task score at that strength (its report.json)."""
    import json

    scores: dict[tuple[str, float], str] = {}
    for summary in sorted(Path(tuned).glob("*/report.json")) if tuned else ():
        for e in json.loads(summary.read_text()).get("entries", []):
            if e["strength"] is not None:
                scores[(e["mitigator"], float(e["strength"]))] = experiment.mean_pm(e["last5"], e["last5_se"],
                                                                                    e["seeds"])
    rows = experiment.read_csv(path)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    last = task or max(int(r["task"]) for r in rows)
    keep = [r for r in rows if int(r["task"]) == last]
    lines = [f"| mitigator | λ | LN | seeds | ρ = ‖λ∇P‖ / ‖∇J‖, median over task {last}'s steps | "
             f"‖∇J‖ | task {last} train accuracy |" + (" tuned: last-5-task mean |" if tuned else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if tuned else "")]
    groups: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    for r in keep:
        groups.setdefault((r["mitigator"], float(r["strength"]), int(r["layernorm"])), []).append(r)
    order = {m: i for i, m in enumerate(COUPLED)}
    for (m, s, ln), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][2], kv[0][1])):
        ratio = statistics.fmean(float(r["ratio_median"]) for r in rs)
        data = statistics.fmean(float(r["data_grad_norm"]) for r in rs)
        acc = statistics.fmean(float(r["train_accuracy"]) for r in rs)
        lines.append(f"| {m} | {s:g} | {'yes' if ln else 'no'} | {len(rs)} | {ratio:.2g} | {data:.2g} | {acc:.3f} |"
                     + (f" {scores.get((m, s), '–')} |" if tuned else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mitigators", nargs="+", default=list(COUPLED), choices=COUPLED)
    p.add_argument("--strengths", nargs="+", type=float, help="instead of each mitigator's tuning grid")
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layernorm", action="store_true")
    p.add_argument("--epochs", type=int, default=BENCHMARK["epochs"])
    p.add_argument("--train-size", type=int, default=BENCHMARK["train_size"])
    p.add_argument("--dataset", default=BENCHMARK["dataset"])
    p.add_argument("--data-dir")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="rows file (CSV); finished (mitigator, strength) pairs are skipped")
    p.add_argument("--report", type=Path, metavar="ROWS", help="print the table of a rows file and exit")
    p.add_argument("--tuned", type=Path, metavar="FOLDER",
                   help="with --report: the tuned study's variant folder, for its score at each strength")
    args = p.parse_args(argv)
    try:
        if args.report:
            print(report(args.report, tuned=args.tuned))
            return 0
        if args.out is None:
            raise ValueError("give --out ROWS.csv (or --report ROWS.csv)")
        if args.tasks < 1:
            raise ValueError(f"--tasks must be >= 1, got {args.tasks}")
        torch.set_num_threads(args.threads)
        settings = {**BENCHMARK, "dataset": args.dataset, "epochs": args.epochs, "train_size": args.train_size,
                    "data_dir": args.data_dir, "layernorm": args.layernorm, "tasks": args.tasks,
                    "diagnostics": False, "seeds": [args.seed]}
        ds = load_dataset(args.dataset, Path(args.data_dir) if args.data_dir else None, args.train_size)
        rows = experiment.read_csv(args.out) if args.out.exists() else []
        done = {(r["mitigator"], float(r["strength"])) for r in rows if int(r["task"]) == args.tasks}
        for m in args.mitigators:
            for s in args.strengths or GRIDS[m]:
                if (m, float(s)) in done:
                    continue
                cfg = RunConfig(**{**settings, "mitigators": [m], "strength": s})
                cfg.validate()
                new = measure(Run(cfg, ds, m, args.seed), args.tasks)
                rows = [r for r in rows if (r["mitigator"], float(r["strength"])) != (m, float(s))] + new
                experiment.write_csv(args.out, rows, COLUMNS)
                print(f"{m} λ={s:g}: ρ median by task " + ", ".join(f"{r['ratio_median']:.2g}" for r in new),
                      flush=True)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
