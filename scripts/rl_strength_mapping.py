"""Decoupled strength equivalent to the paper's coupled coefficient, measured from a run's checkpoint.

Coupled: Adam steps on g + λc∇R, dividing by √v̂ (v̂ ≈ E[g²], dominated by the loss gradient), so the regularizer
moves a weight by ≈ lr·λc·∇R/√v̂. Decoupled: lr·λ·∇R. Hence λ ≈ λc/√v̂. This prints, per agent and network, the
median (and 10%/90% quantiles) over all weight-matrix coordinates of √v̂ (bias-corrected, from the Adam state in
the run's checkpoint.pt) and the implied λ for λc = 1e-4 (the paper's RL coefficient); ``-o`` also writes the table
(the checkpoint is not committed, the table is).

    python scripts/rl_strength_mapping.py results/rl/short-cheetah/none-spectral1 --agents none \\
        -o results/rl/short-cheetah/strength-mapping.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rl.config import Config
from rl.train import CONVERT_COMMAND
from specopt.experiment import load_checkpoint, write_text

BETA2 = 0.999  # Adam's β2 in rl (StackedSpectralAdam's default)


def table(run: Path, coupled: float, mitigators: list[str] | None) -> list[str]:
    ck = load_checkpoint(run / "checkpoint.pt", CONVERT_COMMAND.format(out=run), "cpu")
    cfg = Config.from_dict(ck["config"])
    lines = []
    for a, agent in enumerate(cfg.agents):
        if mitigators and agent.mitigator not in mitigators:
            continue
        for net in ("actor", "critic"):
            rms = [(st["exp_avg_sq"][a] / (1 - BETA2 ** float(st["step"][a]))).sqrt().flatten()
                   for st in ck["agent"][f"{net}_opt"]["state"] if st["exp_avg_sq"].ndim == 3]  # (agents, out, in)
            r = torch.cat(rms)
            q10, q50, q90 = (float(torch.quantile(r, q)) for q in (0.1, 0.5, 0.9))
            lam = [coupled / q for q in (q90, q50, q10)]
            lines.append(f"| {cfg.agent_name(agent)} | {ck['step']} | {net} | {q50:.2e} ({q10:.1e}–{q90:.1e}) | "
                         f"{lam[1]:.3g} ({lam[0]:.2g}–{lam[2]:.2g}) |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each with checkpoint.pt)")
    p.add_argument("--coupled", type=float, default=1e-4, help="the paper's coupled λc (default 1e-4)")
    p.add_argument("--agents", nargs="+", metavar="MITIGATOR", help="only these mitigators' agents")
    p.add_argument("-o", "--output", type=Path, help="also write the table here")
    args = p.parse_args()
    lines = ["| agent | env step | net | median √v̂ (10%–90%) | implied decoupled λ (10%–90%) |",
             "|---|---|---|---|---|"]
    for run in args.runs:
        lines += table(run, args.coupled, args.agents)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        write_text(args.output, text)


if __name__ == "__main__":
    main()
