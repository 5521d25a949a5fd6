"""Decoupled strength equivalent to the paper's coupled coefficient, measured from a run's checkpoint.

Coupled: Adam steps on g + λc∇R, dividing by √v̂ (v̂ ≈ E[g²], dominated by the loss gradient), so the regularizer
moves a weight by ≈ lr·λc·∇R/√v̂. Decoupled: lr·λ·∇R. Hence λ ≈ λc/√v̂. Per agent and network, the median (and
10%/90% quantiles) over all weight-matrix coordinates of √v̂ (bias-corrected, from the Adam state in the run's
checkpoint.pt) and the implied λ for λc = 1e-4 (the paper's RL coefficient), as rows; ``-o`` also writes them to a
CSV (rows of the same agent, env step and network already there are replaced, others kept: the checkpoint is not
committed, the rows are). ``--report`` prints the per-agent table of such rows, ``--summary`` the table of the
docs (each network and env step: the seeds' medians, the range of their 10%–90% quantiles).

    python scripts/rl_strength_mapping.py results/rl/short-cheetah/none-spectral1 --agents none \\
        -o results/rl/short-cheetah/strength-mapping.csv
    python scripts/rl_strength_mapping.py --summary results/rl/short-cheetah/strength-mapping.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from rl.config import Config
from rl.train import CONVERT_COMMAND
from specopt.experiment import load_checkpoint, read_csv, write_csv

BETA2 = 0.999  # Adam's β2 in rl (StackedSpectralAdam's default)


COLUMNS = ["agent", "mitigator", "seed", "env_step", "net", "coupled", "rms_q10", "rms_q50", "rms_q90", "lambda_q10",
           "lambda_q50", "lambda_q90"]
KEY = ("agent", "env_step", "net")


def measure(run: Path, coupled: float, mitigators: list[str] | None) -> list[dict[str, Any]]:
    """One row per (agent, network) of the run's checkpoint: the quantiles of √v̂ and of λ = ``coupled`` / √v̂ (λ's
    10% quantile is ``coupled`` over √v̂'s 90%)."""
    ck = load_checkpoint(run / "checkpoint.pt", CONVERT_COMMAND.format(out=run), "cpu")
    cfg = Config.from_dict(ck["config"])
    rows = []
    for a, agent in enumerate(cfg.agents):
        if mitigators and agent.mitigator not in mitigators:
            continue
        for net in ("actor", "critic"):
            rms = [(st["exp_avg_sq"][a] / (1 - BETA2 ** float(st["step"][a]))).sqrt().flatten()
                   for st in ck["agent"][f"{net}_opt"]["state"] if st["exp_avg_sq"].ndim == 3]  # (agents, out, in)
            r = torch.cat(rms)
            q10, q50, q90 = (float(torch.quantile(r, q)) for q in (0.1, 0.5, 0.9))
            rows.append(dict(agent=cfg.agent_name(agent), mitigator=agent.mitigator, seed=agent.seed,
                             env_step=ck["step"], net=net, coupled=coupled, rms_q10=q10, rms_q50=q50, rms_q90=q90,
                             lambda_q10=coupled / q90, lambda_q50=coupled / q50, lambda_q90=coupled / q10))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The per-agent table of ``rows`` (measured or read back from their CSV)."""
    lines = ["| agent | env step | net | median √v̂ (10%–90%) | implied decoupled λ (10%–90%) |", "|---|---|---|---|---|"]
    for r in rows:
        q = {k: float(r[k]) for k in COLUMNS[6:]}
        lines.append(f"| {r['agent']} | {r['env_step']} | {r['net']} | {q['rms_q50']:.2e} ({q['rms_q10']:.1e}–"
                     f"{q['rms_q90']:.1e}) | {q['lambda_q50']:.3g} ({q['lambda_q10']:.2g}–{q['lambda_q90']:.2g}) |")
    return "\n".join(lines)


def summary(rows: list[dict[str, str]]) -> str:
    """The docs' table: per network and env step, each seed's median √v̂ and implied λ (seeds in order, joined by
    " / ") and, in brackets, the range of their 10%–90% quantiles."""
    def e(x: float) -> str:
        return f"{x:.1e}".replace("e-0", "e-")

    groups: dict[tuple[int, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((int(r["env_step"]), r["net"]), []).append(r)
    (coupled,) = {float(r["coupled"]) for r in rows}
    lines = [f"| env step | net | seeds | median √v̂ per seed (10%–90% of coordinates) | implied λ for λc = {f'{coupled:.0e}'.replace('e-0', 'e-')}: "
             "median per seed (range) |", "|---|---|---|---|---|"]
    for (step, net), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: int(r["seed"]))
        f = {k: [float(r[k]) for r in rs] for k in COLUMNS[6:]}
        lines.append(f"| {step:,} | {net} | {' / '.join(r['seed'] for r in rs)} | "
                     f"{' / '.join(e(x) for x in f['rms_q50'])} ({e(min(f['rms_q10']))} – {e(max(f['rms_q90']))}) | "
                     f"{' / '.join(f'{x:.2f}' for x in f['lambda_q50'])} ({min(f['lambda_q10']):.2g} – "
                     f"{max(f['lambda_q90']):.2g}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="run folders (each with checkpoint.pt)")
    p.add_argument("--coupled", type=float, default=1e-4, help="the paper's coupled λc (default 1e-4)")
    p.add_argument("--agents", nargs="+", metavar="MITIGATOR", help="only these mitigators' agents")
    p.add_argument("-o", "--output", type=Path, help="also write the rows to this CSV (merged with its rows)")
    p.add_argument("--report", type=Path, metavar="CSV", help="the per-agent table of a CSV of rows")
    p.add_argument("--summary", type=Path, metavar="CSV", help="the docs' table of a CSV of rows")
    args = p.parse_args()
    if args.report or args.summary:
        if args.runs or args.output:
            p.error("--report and --summary read a CSV of rows: give no run folders and no -o")
        rows = read_csv(args.report or args.summary)
        if not rows:
            p.error(f"{args.report or args.summary} holds no rows")
        print(table(rows) if args.report else summary(rows))
        return
    if not args.runs:
        p.error("give run folders (each with checkpoint.pt), or --report / --summary CSV")
    rows = [row for run in args.runs for row in measure(run, args.coupled, args.agents)]
    print(table(rows))
    if args.output:
        new = {tuple(str(r[k]) for k in KEY) for r in rows}
        kept = [r for r in read_csv(args.output) if tuple(r[k] for k in KEY) not in new]
        write_csv(args.output, kept + rows, COLUMNS)


if __name__ == "__main__":
    main()
