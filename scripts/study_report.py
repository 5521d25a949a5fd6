"""One table and one sensitivity figure over several sweeps (the paper's Figure 4/10): every run folder
(config.json + results.csv) under the given folders, grouped by mitigator and strength, each mitigator's best
strength marked by the sweeps' rule.

    python scripts/study_report.py results/studies/tuned/noln -o docs/figures/tuned-noln.png --title "no LayerNorm"
    python scripts/study_report.py results/studies/shift/label-flip --train-test   # the shift study's table

Prints the markdown table; unfinished runs (fewer rows than their config's tasks) are left out and counted.
``--train-test`` prints train and test accuracy side by side instead (first task, last task ± standard error over
seeds, mean over the last 5 tasks), the generalization table of the shift study; it draws no figure
(``python -m continual plot FOLDER --metric test_accuracy`` does).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from continual.report import finished_runs, table, versions
from continual.sweep import BEST_RULE, sensitivity_plot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path, help="folder holding the sweeps' run folders (searched recursively)")
    p.add_argument("-o", "--output", type=Path, help="the sensitivity figure (png); required without --train-test")
    p.add_argument("--title", default=None)
    p.add_argument("--train-test", action="store_true", help="the train and test accuracy table, no figure")
    args = p.parse_args()
    if args.output is None and not args.train_test:
        p.error("-o/--output is required (the sensitivity figure), unless --train-test")
    try:
        text, entries = table(args.root, args.train_test)
    except ValueError as err:
        raise SystemExit(f"study_report: {err}") from None
    unfinished = finished_runs(args.root)[1]
    print(text + "\n\n" + versions(args.root))
    if args.train_test:
        print(f"\nBold: the best test accuracy over the last 5 tasks. Unfinished runs left out: {unfinished}.")
        return
    print(f"\nBold: each mitigator's best strength ({BEST_RULE}). Unfinished runs left out: {unfinished}.")
    sensitivity_plot(entries, args.output, args.title)
    print(f"figure: {args.output}")


if __name__ == "__main__":
    main()
