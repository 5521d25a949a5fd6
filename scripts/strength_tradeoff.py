"""The strength trade-off, drawn: drop-in cost (SAC as people run it, a supervised single task) against plasticity
benefit (the Fashion-MNIST random-label benchmark) for every spectral strength measured, from committed rows only.

    python scripts/strength_tradeoff.py                       # table to stdout, docs/figures/strength_tradeoff.png

Rows read:
  results/strength-sac/<run>/<agent>/results.csv           python -m rl train ... --strengths ... (docs/strength.md);
                                                           runs of one env (config.json's env) pool their seeds
  results/studies/supervised/fashion-mnist-mlp/ (a packed sweep: rows.csv)
  results/studies/tuned/{noln,ln}/spectral/ (packed)       the tuned-baselines study (2 seeds × 20 tasks)
  results/acceptance/{noln,ln}/{none,spectral}*.csv        Adam and λ = 1 (3 seeds × 30 tasks)

SAC: mean evaluation return over the evaluations in the last 10% of env steps, per agent, then mean ± standard error
over seeds, and its ratio to Adam's (`none`). Supervised: test accuracy after 20 epochs. Continual: the last-5-task
mean train accuracy and last-task / first-task train accuracy per seed (tuned study), and the latter again on the
30-task acceptance runs.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import specopt
from rl.plot import agent_folders, form_of as rl_form_of, last_fraction_returns
from specopt.experiment import mean_pm, mean_se, ratio_pm, read_csv, save_figure
from specopt.results import run_configs, run_rows

ROOT = Path(__file__).resolve().parents[1]
NAMED = {specopt.DEFAULT_STRENGTH: " (`DEFAULT_STRENGTH`)", specopt.CONTINUAL_STRENGTH: " (`CONTINUAL_STRENGTH`, old default)"}


def sac(results: Path, runs: list[Path] | None = None) -> dict[str, dict[float, tuple[float, float, int]]]:
    """{env: {strength (0 = Adam): (mean, s.e., seeds)}} of the last-10% evaluation return (of the run folders
    ``runs`` only, when given)."""
    agents = [a for run in (runs if runs is not None else [results]) for a in agent_folders(run)]  # packed or not
    return {env: {key[1]: value for key, value in by.items()} for env, by in last_fraction_returns(agents).items()}


def supervised(results: Path) -> dict[float, tuple[float, float, int]]:
    per: dict[float, list[float]] = defaultdict(list)
    for folder, _ in run_configs(results):  # run folders and packed runs alike
        for r in run_rows(folder, "results.csv"):
            per[float(r["strength"]) if r["mitigator"] == "spectral" else 0.0].append(float(r["test_accuracy"]))
    return {s: (*mean_se(v), len(v)) for s, v in sorted(per.items())}


def continual_tuned(results: Path) -> tuple[dict[str, dict[float, tuple[float, float, int]]],
                                            dict[str, dict[float, list[float]]]]:
    """({variant: {strength: last-5-task mean (mean, s.e., seeds)}}, {variant: {strength: [last / first per seed]}})."""
    out: dict[str, dict[float, tuple[float, float, int]]] = {}
    ratios: dict[str, dict[float, list[float]]] = {}
    for variant in ("noln", "ln"):
        per: dict[float, list[float]] = defaultdict(list)
        kept: dict[float, list[float]] = defaultdict(list)
        for folder, cfg in [*run_configs(results / variant / "spectral"), *run_configs(results / variant / "none")]:
            rows = run_rows(folder, "results.csv")
            if not rows or int(rows[-1]["task"]) < cfg["tasks"]:
                continue  # unfinished
            accuracy = [float(r["train_accuracy"]) for r in rows]
            strength = float(rows[0]["strength"]) if rows[0]["mitigator"] == "spectral" else 0.0
            per[strength].append(sum(accuracy[-5:]) / len(accuracy[-5:]))
            kept[strength].append(accuracy[-1] / accuracy[0])
        if per:
            out[variant] = {s: (*mean_se(v), len(v)) for s, v in sorted(per.items())}
            ratios[variant] = dict(kept)
    return out, ratios


def acceptance(results: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{variant: {mitigator: [(first-task, last-task train accuracy) per seed]}}."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(dict)
    for variant in ("noln", "ln"):
        for mitigator in ("none", "spectral"):
            pairs = []
            for path in sorted((results / variant).glob(f"{mitigator}*.csv")):
                by_seed: dict[str, list[float]] = defaultdict(list)
                for r in read_csv(path):
                    if r["mitigator"] == mitigator:
                        by_seed[r["seed"]].append(float(r["train_accuracy"]))
                pairs += [(acc[0], acc[-1]) for acc in by_seed.values()]
            if pairs:
                out[variant][mitigator] = pairs
    return out


def fmt(x: tuple[float, float, int] | None, digits: int = 1) -> str:
    """``mean ± s.e. (seeds)``; with fewer than 3 seeds no standard error is given: ``mean (seeds)``."""
    return "–" if x is None else f"{mean_pm(*x, digits)} ({x[2]})"


def ratio(a: tuple[float, float, int] | None, b: tuple[float, float, int] | None) -> str:
    """:func:`specopt.experiment.ratio_pm` of two entries, "–" when either is missing."""
    return "–" if a is None or b is None else ratio_pm(a, b)


FORMS = ROOT / "results/studies/forms"


def form_of(cfg: dict) -> str:
    """A continual run's form of the pull (its ``options.spectral``), named as :func:`rl.plot.form_of` names an
    agent's."""
    o = cfg.get("options", {}).get("spectral", {})
    return rl_form_of({"spectral_pull": o.get("pull", "two-sided"),
                       "spectral_precondition": o.get("precondition", False), "spectral_heads": o.get("heads", True)})


def forms() -> tuple[dict, dict, dict, dict]:
    """The forms study's rows (results/studies/forms): ({(form, λ): {env: (mean, s.e., seeds)}} of SAC with Adam
    under ("adam", 0.0), {(form, λ): {variant: (mean, s.e., seeds)}} of the last-5-task train accuracy,
    {(form, λ): {variant: [last / first task per seed]}}, {(form, λ): (mean, s.e., seeds)} of the supervised test
    accuracy) — every run of one code version (config.json's provenance)."""
    rl_rows: dict = defaultdict(dict)
    agents = agent_folders(FORMS / "sac")
    for env, by in last_fraction_returns(agents).items():
        for key, value in by.items():
            rl_rows[key][env] = value
    plastic: dict = defaultdict(dict)
    kept: dict = defaultdict(dict)
    for variant in ("noln", "ln"):
        for folder, cfg in run_configs(FORMS / "plasticity" / variant):
            rows = run_rows(folder, "results.csv")
            if not rows or int(rows[-1]["task"]) < cfg["tasks"]:
                continue  # unfinished
            key = ("adam", 0.0) if cfg["mitigators"] == ["none"] else (form_of(cfg), float(rows[0]["strength"]))
            by_seed: dict[str, list[float]] = defaultdict(list)
            for r in rows:
                by_seed[r["seed"]].append(float(r["train_accuracy"]))
            plastic[key][variant] = (*mean_se([sum(a[-5:]) / 5 for a in by_seed.values()]), len(by_seed))
            kept[key][variant] = [a[-1] / a[0] for a in by_seed.values()]
    per: dict = defaultdict(list)
    for folder, cfg in run_configs(FORMS / "supervised"):
        for r in run_rows(folder, "results.csv"):
            key = ("adam", 0.0) if r["mitigator"] == "none" else (form_of(cfg), float(r["strength"]))
            per[key].append(float(r["test_accuracy"]))
    sup = {key: (*mean_se(v), len(v)) for key, v in per.items()}
    return rl_rows, plastic, kept, sup


def forms_table() -> str:
    """The forms study's table: every form at every λ measured, SAC as people run it (return and ratio to Adam's,
    with standard errors) and plasticity (last-5-task mean, last / first task per seed), no LN and with LN."""
    rl_rows, plastic, kept, sup = forms()
    if not rl_rows and not plastic and not sup:
        return "No run of this study has finished yet."
    keys = sorted(set(rl_rows) | set(plastic) | set(sup), key=lambda k: (k != ("adam", 0.0), k[0], k[1]))
    envs = sorted({e for by in rl_rows.values() for e in by})
    head = ["form", "λ"] + [f"SAC {e}: return, last 10% (seeds)" for e in envs] + [f"SAC {e} / Adam" for e in envs]
    head += ["supervised test accuracy (seeds)", "continual, last-5-task train accuracy: no LN", "with LN",
             "last / first task per seed: no LN", "with LN"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    adam = rl_rows.get(("adam", 0.0), {})
    for key in keys:
        form, lam = key
        cells = ["Adam (none)" if key == ("adam", 0.0) else form, "" if key == ("adam", 0.0) else f"{lam:g}"]
        cells += [fmt(rl_rows.get(key, {}).get(e)) for e in envs]
        cells += [("1×" if key == ("adam", 0.0) and e in adam else ratio(rl_rows.get(key, {}).get(e), adam.get(e)))
                  for e in envs]
        cells += [fmt(sup.get(key), 4)] + [fmt(plastic.get(key, {}).get(v), 3) for v in ("noln", "ln")]
        cells += [" / ".join(f"{r:.2f}" for r in kept.get(key, {}).get(v, [])) or "–" for v in ("noln", "ln")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + bars(rl_rows, plastic, kept, sup))


def continual_reference(variant: str) -> tuple[tuple[float, float, int], str]:
    """What ``CONTINUAL_STRENGTH`` reaches on the plasticity benchmark (last-5-task mean over seeds) and where that
    comes from: this study's own λ = 1 run when it has one (one code version), else the acceptance runs."""
    _, plastic, _, _ = forms()
    if variant in plastic.get(("spectral", 1.0), {}):
        return plastic[("spectral", 1.0)][variant], "this study's λ = 1 run"
    per = []
    for path in sorted((ROOT / "results/acceptance" / variant).glob("spectral-seed*.csv")):
        by_seed: dict[str, list[float]] = defaultdict(list)
        for r in read_csv(path):
            if r["mitigator"] == "spectral":
                by_seed[r["seed"]].append(float(r["train_accuracy"]))
        per += [sum(a[-5:]) / 5 for a in by_seed.values()]
    return (*mean_se(per), len(per)), "the acceptance runs (2026-11-25/26: another code version)"


def bars(rl_rows: dict, plastic: dict, kept: dict, sup: dict) -> list[str]:
    """Issue #30's bars for every form measured: SAC ≥ 0.9× Adam (each env), supervised within 1 point of Adam,
    plasticity ≥ 0.9× what CONTINUAL_STRENGTH reaches and every seed's last task ≥ 0.9× its first (each variant)."""
    lines = []
    adam_rl, adam_sup = rl_rows.get(("adam", 0.0), {}), sup.get(("adam", 0.0))
    for key in sorted((set(rl_rows) | set(plastic) | set(sup)) - {("adam", 0.0), ("spectral", 1.0)}):
        checks = []
        for env, value in sorted(rl_rows.get(key, {}).items()):
            if env in adam_rl:
                r = value[0] / adam_rl[env][0]
                checks.append(f"SAC {env} {ratio(value, adam_rl[env])} {'≥' if r >= 0.9 else '<'} 0.9×")
        if key in sup and adam_sup is not None:
            gap = sup[key][0] - adam_sup[0]
            checks.append(f"supervised {gap * 100:+.1f} points {'within' if gap >= -0.01 else 'beyond'} 1")
        for variant in ("noln", "ln"):
            if variant in plastic.get(key, {}):
                ref, where = continual_reference(variant)
                r = plastic[key][variant][0] / ref[0]
                worst = min(kept[key][variant])
                checks.append(f"plasticity {variant} {ratio(plastic[key][variant], ref)} λ = 1's {ref[0]:.3f} ({where}) "
                              f"{'≥' if r >= 0.9 else '<'} 0.9×, worst seed's last / first {worst:.2f} "
                              f"{'≥' if worst >= 0.9 else '<'} 0.9")
        lines.append(f"- **{key[0]} λ = {key[1]:g}**: " + ("; ".join(checks) or "nothing finished yet"))
    return lines


def committed() -> tuple[dict, dict, dict, dict, dict]:
    """The rows every table here reads: (SAC :func:`sac`, supervised :func:`supervised`, the tuned study's
    last-5-task means and last / first ratios :func:`continual_tuned`, the acceptance runs :func:`acceptance`)."""
    tuned, kept = continual_tuned(ROOT / "results/studies/tuned")
    return (sac(ROOT / "results/strength-sac"), supervised(ROOT / "results/studies/supervised/fashion-mnist-mlp"),
            tuned, kept, acceptance(ROOT / "results/acceptance"))


def summary_table() -> str:
    """strength.md's first table: the two named strengths, what each is for, and its measured benefit and cost, every
    number from the rows :func:`report` reads (SAC: results/strength-sac, all without LayerNorm; supervised:
    results/studies/supervised; plasticity: the tuned study's last / first task per seed for the drop-in strength,
    the 30-task acceptance runs for the continual one)."""
    rl, sup, _, kept, accept = committed()
    envs = sorted(rl)

    def span(values: list[float]) -> str:
        return f"{min(values):.2f}–{max(values):.2f}×"

    def cost(s: float) -> str:
        seeds = sorted({rl[e][s][2] for e in envs if s in rl[e]})
        sac_part = " / ".join(ratio(rl[e].get(s), rl[e].get(0.0)) for e in envs)
        points = f"{(sup[s][0] - sup[0.0][0]) * 100:+.1f}".replace("-", "−")
        return (f"SAC {sac_part} Adam's return ({' / '.join(envs)}, {'/'.join(map(str, seeds))} seeds, no LayerNorm), "
                f"supervised {points} points")

    def kept_ratios(mitigator: str) -> list[float]:
        return [last / first for by in accept.values() for first, last in by[mitigator]]

    drop_in, continual = specopt.DEFAULT_STRENGTH, specopt.CONTINUAL_STRENGTH
    rows = [("`specopt.DEFAULT_STRENGTH` (the default of `SpectralAdam`, `Spectral` and `rl`)", drop_in,
             "swapping into ordinary training",
             f"keeps a little of the plasticity Adam loses (last task {span(kept['noln'][drop_in])} the first, Adam "
             f"{span(kept['noln'][0.0])}; random labels, no LayerNorm, the tuned study's 20 tasks)"),
            ("`specopt.CONTINUAL_STRENGTH` (the default of `continual`'s `spectral`)", continual,
             "continual learning over many tasks",
             f"keeps plasticity: last task {span(kept_ratios('spectral'))} the first on every seed, with and without "
             f"LayerNorm (Adam: {span(kept_ratios('none'))}; the acceptance runs, 30 tasks)")]
    lines = ["| name | λ | what it is for | measured benefit | measured cost (against plain Adam) |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {s:g} | {use} | {benefit} | {cost(s)} |" for name, s, use, benefit in rows]
    return "\n".join(lines)


def report() -> str:
    """The strength table, the acceptance runs' last / first ratios, and the forms study's table (markdown): what
    docs/strength.md shows, regenerated from the committed rows (a test compares them)."""
    rl, sup, tuned, kept, accept = committed()
    strengths = sorted({s for d in rl.values() for s in d} | set(sup) | {s for d in tuned.values() for s in d})
    envs = sorted(rl)
    head = ["strength λ"] + [f"SAC {e}: return, last 10% (seeds)" for e in envs] + [f"SAC {e} / Adam" for e in envs]
    head += ["supervised test accuracy (seeds)", "continual, last-5-task train accuracy: no LN", "with LN",
             "continual, last / first task per seed: no LN"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in strengths:
        name = "Adam (none)" if s == 0 else f"{s:g}" + NAMED.get(s, "")
        cells = [name] + [fmt(rl[e].get(s)) for e in envs]
        cells += [("1×" if s == 0 and s in rl[e] else ratio(rl[e].get(s), rl[e].get(0.0))) for e in envs]
        cells += [fmt(sup.get(s), 4)] + [fmt(tuned.get(v, {}).get(s), 3) for v in ("noln", "ln")]
        cells += [" / ".join(f"{r:.2f}" for r in kept.get("noln", {}).get(s, [])) or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for variant, by in accept.items():
        for mitigator, pairs in by.items():
            ratios = " / ".join(f"{last / first:.2f}" for first, last in pairs)
            lines.append(f"- acceptance ({variant}, 30 tasks), {mitigator}: last / first task train accuracy per seed "
                         f"{ratios}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--figure", type=Path, default=ROOT / "docs/figures/strength_tradeoff.png")
    args = p.parse_args()
    print(report())
    print("\nForms of the pull (results/studies/forms):\n")
    print(forms_table())
    rl, sup, tuned, _, _ = committed()
    strengths = sorted({s for d in rl.values() for s in d} | set(sup) | {s for d in tuned.values() for s in d})
    envs = sorted(rl)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.3))
    x = [s if s > 0 else min(x for x in strengths if x > 0) / 10 for s in strengths]
    for e in envs:
        pts = [(xi, rl[e][s][0] / rl[e][0.0][0]) for xi, s in zip(x, strengths) if s in rl[e] and 0.0 in rl[e]]
        axes[0].plot(*zip(*pts), "o-", label=e)
    axes[0].axhline(0.9, color="grey", ls=":", label="0.9× (no-harm bar)")
    axes[0].set_title("drop-in cost: SAC return / Adam's")
    pts = [(xi, sup[s][0]) for xi, s in zip(x, strengths) if s in sup]
    axes[1].plot(*zip(*pts), "o-", label="paper's form")
    if 0.0 in sup:
        axes[1].axhline(sup[0.0][0] - 0.01, color="grey", ls=":", label="Adam − 1 point (no-harm bar)")
    axes[1].set_title("drop-in cost: supervised test accuracy")
    for variant in tuned:
        pts = [(xi, tuned[variant][s][0]) for xi, s in zip(x, strengths) if s in tuned[variant]]
        axes[2].plot(*zip(*pts), "o-", label={"noln": "no LayerNorm", "ln": "LayerNorm"}[variant] + " (tuned, 20 tasks)")
    axes[2].set_title("plasticity: last-5-task train accuracy")
    # every other form of the pull (the forms study, results/studies/forms), beside the paper's form
    rl_forms, plastic, _, sup_forms = forms()
    adam_rl = rl_forms.get(("adam", 0.0), {})
    markers = {"precondition": "s", "no-heads": "^", "one-sided": "v"}
    for form in sorted({k[0] for k in (*rl_forms, *plastic, *sup_forms)} - {"adam"}):
        mark = markers.get(form, "D")
        keys = sorted(k for k in {*rl_forms, *plastic, *sup_forms} if k[0] == form)
        for e in envs:
            pts = [(lam, rl_forms[k][e][0] / adam_rl[e][0]) for k in keys for lam in [k[1]]
                   if e in rl_forms.get(k, {}) and e in adam_rl]
            if pts:
                axes[0].plot(*zip(*pts), mark, ms=9, mfc="none", label=f"{form}: {e}")
        pts = [(k[1], sup_forms[k][0]) for k in keys if k in sup_forms]
        if pts:
            axes[1].plot(*zip(*pts), mark, ms=9, mfc="none", label=form)
        for variant in ("noln", "ln"):
            pts = [(k[1], plastic[k][variant][0]) for k in keys if variant in plastic.get(k, {})]
            if pts:
                axes[2].plot(*zip(*pts), mark, ms=9, mfc="none", label=f"{form}, {variant} (30 tasks)")
    # drop-in cost against plasticity, one point per candidate measured on both
    env = "cheetah-run" if "cheetah-run" in envs else (envs[0] if envs else None)
    cands = [(f"λ={s:g}", rl[env][s][0] / rl[env][0.0][0], tuned["noln"][s][0], "o")
             for s in strengths if env and s > 0 and s in rl[env] and 0.0 in rl[env] and s in tuned.get("noln", {})]
    cands += [(f"{k[0]} λ={k[1]:g}", rl_forms[k][env][0] / adam_rl[env][0], plastic[k]["noln"][0],
               markers.get(k[0], "D")) for k in rl_forms if k[0] != "adam" and env in rl_forms[k]
              and env in adam_rl and "noln" in plastic.get(k, {})]
    for name, cost, keep, mark in cands:
        axes[3].plot(cost, keep, mark, ms=9, mfc="none" if mark != "o" else None, color="C3" if mark != "o" else "C0")
        axes[3].annotate(name, (cost, keep), textcoords="offset points", xytext=(5, 4), fontsize=7)
    axes[3].axvline(0.9, color="grey", ls=":")
    ref = continual_reference("noln")[0][0]
    axes[3].axhline(0.9 * ref, color="grey", ls=":")
    axes[3].fill_between([0.9, max(1.15, *(c[1] + 0.05 for c in cands))], 0.9 * ref, 0.7, color="green", alpha=0.07,
                         label="both bars met")
    axes[3].legend(fontsize=7, loc="lower left")
    axes[3].set_xlabel(f"SAC {env} return / Adam's (drop-in cost)")
    axes[3].set_ylabel("last-5-task train accuracy, no LN (plasticity)")
    axes[3].set_title("every candidate: cost against plasticity")
    for ax in axes[:3]:
        for lam, ls in ((specopt.DEFAULT_STRENGTH, "--"), (specopt.CONTINUAL_STRENGTH, "-.")):
            ax.axvline(lam, color="lightgrey", ls=ls, zorder=0)
        ax.set_xscale("log")
        ax.set_xlabel("spectral strength λ (leftmost point: Adam)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle("circles: the paper's form; open markers: the other forms (square preconditioned, triangle up "
                 "output layer exempt, triangle down one-sided); dashed: DEFAULT_STRENGTH, dash-dot: "
                 "CONTINUAL_STRENGTH", fontsize=9)
    fig.tight_layout()
    save_figure(fig, args.figure)
    print(f"\nfigure: {args.figure.relative_to(ROOT) if args.figure.is_relative_to(ROOT) else args.figure}")


if __name__ == "__main__":
    main()
