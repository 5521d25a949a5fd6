"""Why one decoupled strength helps a classifier and cripples a critic: the output scale a network must reach.

A network whose every layer has σ1 ≈ 1 (and biases ≈ 0) is about 1-Lipschitz, so it cannot output values much
larger than its inputs. A classifier needs logits of a few units; an SAC critic needs Q-values in the hundreds.
This script fits a fixed random target function scaled by ``c`` (``y = c·f(x)``, Var f = 1) with an MLP 2×256
(an SAC critic's shape, no LayerNorm) under Adam and under SpectralAdam at several strengths, and records the
relative training error (MSE / Var y), the largest σ1 and the product of the layers' σ1 (a bound on the network's
Lipschitz constant), side by side in one run. Rows go to ``--out`` (CSV, written atomically); a table is printed.

    python scripts/strength_mechanism.py --out results/strength-mechanism/rows.csv

``--variants`` compares the pull's named forms instead (docs/strength.md, "Forms of the pull"): ``FORM:λ`` with FORM
``spectral`` (the paper's R, two-sided), ``no-heads`` (the output layer left alone), ``one-sided``, ``precondition``
(the step divided by Adam's √v̂ + ε), or several joined by ``+``; ``adam`` alone is plain Adam:

    python scripts/strength_mechanism.py --variants adam spectral:1 no-heads:1 one-sided:1 precondition:1e-4 \
        --out results/strength-mechanism/forms.csv
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

import specopt
from specopt.experiment import read_csv, write_csv


def target_function(dim: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Linear(dim, 64), nn.Tanh(), nn.Linear(64, 1))
    for p in f.parameters():
        p.requires_grad_(False)
    return f


FORMS = ("spectral", "no-heads", "one-sided", "precondition")


def parse_variant(text: str) -> tuple[str, float | None]:
    """``adam`` → ("adam", None); ``FORM[+FORM...]:λ`` → (forms, λ); one-line ``SystemExit`` otherwise."""
    if text == "adam":
        return text, None
    form, _, strength = text.partition(":")
    try:
        value = float(strength)
    except ValueError:
        raise SystemExit(f"--variants: {text!r} is not adam or FORM:λ (a number)") from None
    if not form or any(f not in FORMS for f in form.split("+")):
        raise SystemExit(f"--variants: {text!r} has an unknown form; forms: {', '.join(FORMS)} (joined by +)")
    return form, value


def optimizer(model: nn.Module, form: str, strength: float | None, lr: float) -> torch.optim.Optimizer:
    """Plain Adam (``strength`` None) or SpectralAdam in the named ``form``."""
    if strength is None:
        return torch.optim.Adam(model.parameters(), lr=lr)
    forms = set(form.split("+"))
    groups = specopt.param_groups(model, head=0.0 if "no-heads" in forms else None)
    return specopt.SpectralAdam(groups, lr=lr, strength=strength, pull="one-sided" if "one-sided" in forms else
                                "two-sided", precondition="precondition" in forms)


def fit(x: torch.Tensor, y: torch.Tensor, strength: float | None, steps: int, lr: float, seed: int,
        form: str = "spectral") -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))
    opt = optimizer(model, form, strength, lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=g)
        loss = nn.functional.mse_loss(model(x[idx]).squeeze(-1), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(x).squeeze(-1)
        mse = nn.functional.mse_loss(out, y).item()
        sigmas = [torch.linalg.matrix_norm(m.weight, ord=2).item() for m in model if isinstance(m, nn.Linear)]
    return {"relative_error": mse / y.var().item(), "sigma_max": max(sigmas), "sigma_product": math.prod(sigmas),
            "output_std": out.std().item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--report", type=Path, nargs="+", metavar="CSV",
                   help="print the table of committed --variants rows (no fitting)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    p.add_argument("--strengths", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=3e-4, help="Adam's learning rate (SAC's default)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", metavar="FORM:λ",
                   help="named forms to compare (adam, FORM:λ; see the docstring); rows get a form column")
    args = p.parse_args()
    if not args.report and args.out is None:
        p.error("--out is required (or --report CSV ... to print a table of committed rows)")
    if args.report:
        print(report_table([r for path in args.report for r in read_csv(path)]))
        return
    if args.variants:
        return compare_forms(args, [parse_variant(v) for v in args.variants])
    torch.set_num_threads(args.threads)
    f = target_function(32, 1234)
    x = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))
    base = f(x).squeeze(-1)
    base = (base - base.mean()) / base.std()
    rows = []
    for c in args.scales:
        for strength in [None, *args.strengths]:
            for seed in args.seeds:
                r = fit(x, c * base, strength, args.steps, args.lr, seed)
                rows.append({"scale": c, "optimizer": "adam" if strength is None else "spectral",
                             "strength": "" if strength is None else strength, "seed": seed, "steps": args.steps,
                             "lr": args.lr, **{k: round(v, 6) for k, v in r.items()}})
                print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    write_csv(args.out, rows)
    print("\n" + report_table(rows))


def strengths_table(rows: list[dict]) -> str:
    """The markdown table of the strength rows (no ``--variants``): per target scale and optimizer (Adam, then each
    strength, in the rows' order), the means over seeds of the relative error, the largest σ1, Π σ1 and the output's
    standard deviation."""
    lines = ["| target scale c | optimizer | seeds | relative training error (MSE / Var y) | largest σ1 | "
             "Π σ1 over the 3 layers | output std |", "|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((float(r["scale"]), str(r["strength"])) for r in rows))
    for c, strength in sorted(keys, key=lambda key: key[0]):
        sel = [r for r in rows if (float(r["scale"]), str(r["strength"])) == (c, strength)]
        mean = {k: sum(float(r[k]) for r in sel) / len(sel) for k in ("relative_error", "sigma_max",
                                                                       "sigma_product", "output_std")}
        name = "Adam" if strength == "" else f"SpectralAdam λ={float(strength):g}"
        lines.append(f"| {c:g} | {name} | {len(sel)} | {mean['relative_error']:.4f} | {mean['sigma_max']:.2f} | "
                     f"{mean['sigma_product']:.1f} | {mean['output_std']:.2f} |")
    return "\n".join(lines)


def report_table(rows: list[dict]) -> str:
    """The table of committed rows: the forms table for ``--variants`` rows (a ``form`` column), else the strengths
    table."""
    return forms_table(rows) if rows and "form" in rows[0] else strengths_table(rows)


def data(seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and the unit-variance target f(x) every fit uses."""
    f = target_function(32, seed)
    x = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))
    base = f(x).squeeze(-1)
    return x, (base - base.mean()) / base.std()


def compare_forms(args: argparse.Namespace, variants: list[tuple[str, float | None]]) -> None:
    """Every variant at every scale and seed, side by side in this process; rows to ``--out``; a table printed."""
    torch.set_num_threads(args.threads)
    x, base = data()
    rows = []
    for c in args.scales:
        for form, strength in variants:
            for seed in args.seeds:
                r = fit(x, c * base, strength, args.steps, args.lr, seed, form)
                rows.append({"scale": c, "form": form, "strength": "" if strength is None else strength, "seed": seed,
                             "steps": args.steps, "lr": args.lr, **{k: round(v, 6) for k, v in r.items()}})
                print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(args.out, rows)
    print("\n" + forms_table(rows))


def forms_table(rows: list[dict]) -> str:
    """The markdown table of ``--variants`` rows: per target scale and variant (in the rows' order), the means over
    seeds of the relative error, the largest σ1, Π σ1 and the output's standard deviation."""
    lines = ["| target scale c | form | λ | seeds | relative error (mean over seeds) | σ1 max | Π σ1 | output std |",
             "|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((float(r["scale"]), r["form"], str(r["strength"])) for r in rows))
    for c, form, strength in sorted(keys, key=lambda key: key[0]):  # stable: the variants keep their order
        sel = [r for r in rows if (float(r["scale"]), r["form"], str(r["strength"])) == (c, form, strength)]
        mean = {k: sum(float(r[k]) for r in sel) / len(sel) for k in ("relative_error", "sigma_max",
                                                                       "sigma_product", "output_std")}
        lam = f"{float(strength):g}" if strength else ""
        lines.append(f"| {c:g} | {form} | {lam} | {len(sel)} | {mean['relative_error']:.4f} | {mean['sigma_max']:.2f} "
                     f"| {mean['sigma_product']:.1f} | {mean['output_std']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
