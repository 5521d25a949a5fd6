"""Decoupled strength equivalent to the paper's coupled coefficient, measured from a run's checkpoint.

Coupled: Adam steps on g + λc∇R, dividing by √v̂ (v̂ ≈ E[g²], dominated by the loss gradient), so the regularizer
moves a weight by ≈ lr·λc·∇R/√v̂. Decoupled: lr·λ·∇R. Hence λ ≈ λc/√v̂. This prints, per network, the median (and
10%/90% quantiles) over all matrix coordinates of √v̂ (bias-corrected, from the Adam state in checkpoint.pt) and the
implied λ for λc = 1e-4 (the paper's RL coefficient).

    python scripts/rl_strength_mapping.py runs/rl-short-cheetah/cheetah-run-spectral-s0 [--coupled 1e-4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--coupled", type=float, default=1e-4)
    args = p.parse_args()
    print("| run | step | net | median √v̂ (10%–90%) | implied decoupled λ (10%–90%) |\n|---|---|---|---|---|")
    for run in args.runs:
        ck = torch.load(Path(run) / "checkpoint.pt", map_location="cpu", weights_only=False)
        for net in ("actor", "critic"):
            opt = ck["agent"][f"{net}_opt"]
            beta2 = opt["param_groups"][0]["betas"][1]
            rms = []
            for s in opt["state"].values():
                if "exp_avg_sq" in s and s["exp_avg_sq"].ndim == 2:
                    v_hat = s["exp_avg_sq"] / (1 - beta2 ** float(s["step"]))
                    rms.append(v_hat.sqrt().flatten())
            if not rms:
                print(f"| {run} | {ck['step']} | {net} | no Adam state yet | |")
                continue
            r = torch.cat(rms)
            q10, q50, q90 = (float(torch.quantile(r, q)) for q in (0.1, 0.5, 0.9))
            lam = [args.coupled / q for q in (q90, q50, q10)]
            print(f"| {run} | {ck['step']} | {net} | {q50:.2e} ({q10:.1e}–{q90:.1e}) | {lam[1]:.3g} ({lam[0]:.2g}–{lam[2]:.2g}) |")


if __name__ == "__main__":
    main()
