"""Regenerate the documentation's generated tables from the committed rows, or check that they are current.

A generated table sits between ``<!-- generated: COMMAND -->`` and ``<!-- end generated -->`` in a page under docs/;
COMMAND is what a reader runs to print it — ``python -m continual report PATHS [--train-test]`` (the table and
its code versions), ``python -m continual plot PATHS [--metric M] [--per-seed | --per-task SEED]`` (then: that table
only), ``python -m rl report PATHS`` or ``python -m rl plot PATHS`` (the table alone), ``python scripts/rl_run_table.py ROOT [--column C --steps S... --digits D]`` (paths relative to the
repository, globs expanded) — or one of :data:`FIXED`.
Nothing between the markers is written by hand.

    python scripts/docs_tables.py            # rewrite every generated block from the rows
    python scripts/docs_tables.py --check    # exit 1, naming the block, if a page differs from its rows (the tests)
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- generated: (?P<command>[^\n]*?) -->\n)(?P<body>(?:(?!<!-- generated: ).)*?)"
                   r"(\n?<!-- end generated -->)", re.S)
"""A generated block: its marker line, its body (empty in a new block; never another block's marker), its end."""


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _k_table() -> str:
    from continual.studies import STUDIES

    return STUDIES["k"].options_table(ROOT / "results/studies")


def _confirm_table(variant: str) -> str:
    from continual.studies import confirm_table

    return confirm_table(ROOT / "results/studies", variant)


def _heldout_table(variant: str) -> str:
    from continual.studies import heldout_table

    return heldout_table(ROOT / "results/studies", variant)


def _acceptance_criteria() -> str:
    from continual.plot import read_rows
    from continual.studies import acceptance_criteria

    return acceptance_criteria({v: read_rows(sorted((ROOT / "results/acceptance" / v).glob("*.csv")))
                                for v in ("noln", "ln")})


FIXED: dict[str, Callable[[], str]] = {
    "continual.studies.acceptance_criteria of results/acceptance/{noln,ln}/*.csv": _acceptance_criteria,
    "python -m continual study confirm --report (its noln overview)": lambda: _confirm_table("noln"),
    "python -m continual study confirm --report (its ln overview)": lambda: _confirm_table("ln"),
    "python -m continual study heldout --report (its noln overview)": lambda: _heldout_table("noln"),
    "python -m continual study heldout --report (its ln overview)": lambda: _heldout_table("ln"),
    "python scripts/strength_tradeoff.py (from the committed rows; tests/test_docs.py checks it)":
        lambda: _script("strength_tradeoff").report(),
    "python scripts/strength_tradeoff.py (forms table)": lambda: _script("strength_tradeoff").forms_table(),
    "python scripts/strength_tradeoff.py (the two named strengths)": lambda: _script("strength_tradeoff").summary_table(),
    "python -m continual study k --report (its table of every k)": _k_table,
}
"""Blocks whose command is one of these strings, and the function that produces each."""


def _paths(patterns: list[str]) -> list[Path]:
    """Shell-style patterns (relative to the repository) expanded as the shell would, sorted."""
    out: list[Path] = []
    for pattern in patterns:
        hits = sorted(ROOT.glob(pattern)) if any(c in pattern for c in "*?[") else [ROOT / pattern]
        if not hits:
            raise ValueError(f"{pattern!r} matches nothing")
        out += hits
    return out


def _continual_report(argv: list[str]) -> str:
    from continual.plot import METRICS
    from continual.report import report

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--train-test", action="store_true")
    parser.add_argument("--metric", default="train_accuracy", choices=METRICS)
    parser.add_argument("--per-seed", action="store_true")
    parser.add_argument("--per-task", type=int)
    parser.add_argument("--out")  # where the files go: the printed report does not depend on it
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    return report(_paths(args.runs), None, args.metric, args.train_test, args.per_seed, args.per_task)[0]


def _continual_plot(argv: list[str]) -> str:
    from continual.plot import METRICS, per_seed_table, per_task_table, read_rows, table

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--metric", default="train_accuracy", choices=METRICS)
    parser.add_argument("--per-seed", action="store_true")
    parser.add_argument("--per-task", type=int)
    parser.add_argument("-o", "--output")  # the figure's file: the table does not depend on it
    args = parser.parse_args(argv)
    rows = read_rows(_paths(args.runs))
    if args.per_task is not None:
        return per_task_table(rows, args.per_task, args.metric)
    return per_seed_table(rows, args.metric) if args.per_seed else table(rows, args.metric)


def _rl_plot(argv: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import tempfile

    from rl.plot import plot

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("-o", "--output")  # the figure's file: the table does not depend on it
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:  # the figure is drawn, into a scratch file
        return plot([str(p) for p in _paths(args.runs)], str(Path(tmp) / "fig.png"))


def _rl_report(argv: list[str]) -> str:
    from rl.plot import report

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out")  # where the files go: the printed report does not depend on it
    return report([str(p) for p in _paths(parser.parse_args(argv).runs)])[0]


def _rl_run_table(argv: list[str]) -> str:
    return _script("rl_run_table").table(_script("rl_run_table").parser().parse_args(
        [str(ROOT / argv[0]), *argv[1:]]), ROOT / argv[0])


def _mechanism(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--report", nargs="+", required=True)
    m = _script("strength_mechanism")
    return m.report_table([r for path in _paths(parser.parse_args(argv).report) for r in m.read_csv(path)])


def _sweep_report(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("csv", nargs="+")
    parser.add_argument("-o", "--output")  # the figure's file: the table does not depend on it
    return _script("sweep_report").table(_paths(parser.parse_args(argv).csv))


def _gradient_rms(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--report", required=True)
    return _script("gradient_rms").report(ROOT / parser.parse_args(argv).report)


def _strength_mapping(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--summary", required=True)
    m = _script("rl_strength_mapping")
    return m.summary(m.read_csv(ROOT / parser.parse_args(argv).summary))


def _penalty_ratio(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--report", required=True)
    parser.add_argument("--tuned")
    args = parser.parse_args(argv)
    return _script("penalty_ratio").report(ROOT / args.report, tuned=ROOT / args.tuned if args.tuned else None)


COMMANDS: dict[tuple[str, ...], Callable[[list[str]], str]] = {
    ("python", "scripts/penalty_ratio.py"): _penalty_ratio,
    ("python", "scripts/gradient_rms.py"): _gradient_rms,
    ("python", "scripts/strength_mechanism.py"): _mechanism,
    ("python", "scripts/sweep_report.py"): _sweep_report,
    ("python", "-m", "continual", "report"): _continual_report,
    ("python", "-m", "rl", "report"): _rl_report,
    ("python", "-m", "continual", "plot"): _continual_plot,
    ("python", "-m", "rl", "plot"): _rl_plot,
    ("python", "scripts/rl_run_table.py"): _rl_run_table,
    ("python", "scripts/rl_strength_mapping.py"): _strength_mapping,
}
"""Blocks whose command starts with one of these: the command's own table, from its arguments (as a user runs it)."""


def generate(command: str, page: str = "") -> str:
    """The table a generated block's ``command`` stands for. One-line ``ValueError`` for an unknown command."""
    if command in FIXED:
        return FIXED[command]()
    words = shlex.split(command)
    for prefix, make in COMMANDS.items():
        if tuple(words[:len(prefix)]) == prefix:
            return make(words[len(prefix):])
    known = [*FIXED, *(" ".join(k) + " ..." for k in COMMANDS)]
    raise ValueError(f"{page}: unknown generated block {command!r}; known: {'; '.join(known)}")


def regenerate(text: str, page: str) -> tuple[str, list[str]]:
    """``text`` with every generated block rewritten, and the commands of the blocks that changed. An unknown
    command raises ``ValueError`` naming the page."""
    changed: list[str] = []

    def body(match: re.Match) -> str:
        command = match.group("command")
        new = "\n" + generate(command, page).strip("\n") + "\n"  # blank lines: a table after the marker renders
        if new != match.group("body"):
            changed.append(command)
        return match.group(1) + new + "\n<!-- end generated -->"  # a new, empty block gains its blank line

    return BLOCK.sub(body, text), changed


def pages() -> list[Path]:
    return sorted((ROOT / "docs").glob("*.md"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a generated block is stale")
    args = p.parse_args()
    stale = []
    for page in pages():
        text = page.read_text()
        new, changed = regenerate(text, page.name)
        stale += [f"{page.relative_to(ROOT)}: {c}" for c in changed]
        if changed and not args.check:
            page.write_text(new)
    for line in stale:
        print(("stale: " if args.check else "rewritten: ") + line)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
