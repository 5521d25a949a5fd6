"""One table and one sensitivity figure over several sweeps (the paper's Figure 4/10): every run folder
(config.json + results.csv) under the given folders, grouped by mitigator and strength, each mitigator's best
strength marked by the sweeps' rule.

    python scripts/study_report.py results/studies/tuned/noln -o docs/figures/tuned-noln.png --title "no LayerNorm"

Prints the markdown table; unfinished runs (fewer rows than their config's tasks) are left out and counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from continual.runner import RunConfig
from continual.sweep import BEST_RULE, SweepRun, aggregate, best_strengths, sensitivity_plot
from specopt.experiment import read_csv

ORDER = ["none", "spectral", "spectral-coupled", "l2", "l2-init", "shrink-perturb", "redo", "wasserstein", "ewc",
         "cbp", "crelu"]


def finished_runs(root: Path) -> tuple[list[SweepRun], int]:
    """(the finished runs under ``root`` as SweepRuns named by their path below it, the number left unfinished)."""
    runs, unfinished = [], 0
    for config_path in sorted(root.rglob("config.json")):
        folder = config_path.parent
        config = json.loads(config_path.read_text())
        if len(config.get("mitigators", [])) != 1 or len(config.get("seeds", [])) != 1:
            continue  # not a sweep's run folder
        if len(read_csv(folder / "results.csv")) < config["tasks"]:
            unfinished += 1
            continue
        cfg = RunConfig(**{k: v for k, v in config.items() if k in RunConfig.__dataclass_fields__})
        mitigator = cfg.mitigators[0]
        runs.append(SweepRun(str(folder.relative_to(root)), mitigator, cfg.strength, cfg.seeds[0], cfg))
    return runs, unfinished


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path, help="folder holding the sweeps' run folders (searched recursively)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the figure (png)")
    p.add_argument("--title", default=None)
    args = p.parse_args()
    runs, unfinished = finished_runs(args.root)
    if not runs:
        raise SystemExit(f"study_report: no finished run under {args.root}")
    rank = {m: i for i, m in enumerate(ORDER)}
    entries = sorted(aggregate(runs, args.root), key=lambda e: (rank.get(e["mitigator"], 99), e["strength"] or 0))
    best = best_strengths(entries)
    print("| mitigator | strength | seeds | tasks | last-5-task mean | last task |")
    print("|---|---|---|---|---|---|")
    for e in entries:
        strength = "–" if e["strength"] is None else f"{e['strength']:g}"
        cell = f"{e['last5']:.3f} ± {e['last5_se']:.3f}"
        if e["strength"] is not None and best.get(e["mitigator"]) == e["strength"]:
            cell = f"**{cell}**"
        print(f"| {e['mitigator']} | {strength} | {e['seeds']} | {e['tasks']} | {cell} | "
              f"{e['last']:.3f} ± {e['last_se']:.3f} |")
    print(f"\nBold: each mitigator's best strength ({BEST_RULE}). Unfinished runs left out: {unfinished}.")
    sensitivity_plot(entries, args.output, args.title)
    print(f"figure: {args.output}")


if __name__ == "__main__":
    main()
