"""One results.csv column per agent and env step, as a markdown table, from rl run folders (committed rows only).

    python scripts/rl_run_table.py results/rl/short-cheetah                          # evaluation return
    python scripts/rl_run_table.py results/rl/short-cheetah --column sigma1_critic_mean --steps 7500 10000 20000

Rows: agents (`<run>/<agent>`), columns: env steps (default: every evaluation step of the first agent).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rl.plot import agent_folders, read_agent


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path, help="a folder of rl runs (its agents: <agent>/results.csv, or packed)")
    p.add_argument("--column", default="eval_return_mean", help="the results.csv column (default eval_return_mean)")
    p.add_argument("--steps", type=int, nargs="+", help="env steps to show (default: all)")
    p.add_argument("--digits", type=int, default=1)
    p.add_argument("--columns", nargs="+", metavar="COLUMN:DIGITS",
                   help="instead of --column: one row per column (its digits after the colon), one cell per agent "
                        "holding the values at --steps joined by ' / '")
    return p


def table(args: argparse.Namespace, root: Path) -> str:
    """The markdown table: one row per agent under ``root`` (named by its path below it), one cell per step; with
    ``--columns`` one row per column and one cell per agent instead."""
    agents = agent_folders(root)
    if not agents:
        raise SystemExit(f"rl_run_table: no agents (results.csv, or packed) under {root}")
    tables = {a.relative_to(root): {int(r["step"]): r for r in read_agent(a)[1]} for a in agents}
    first = next(iter(tables.values()))
    columns = [c.partition(":") for c in args.columns or [f"{args.column}:{args.digits}"]]
    for column, _, _ in columns:
        if column not in next(iter(first.values())):
            raise SystemExit(f"rl_run_table: no column {column!r}; valid: {', '.join(next(iter(first.values())))}")
    steps = args.steps or sorted(first)
    if args.columns:
        lines = [f"| column (at {' / '.join(f'{s / 1000:g}k' for s in steps)}) | "
                 + " | ".join(str(n) for n in tables) + " |", "|---|" + "---|" * len(tables)]
        for column, _, digits in columns:
            cells = [" / ".join(f"{float(rows[s][column]):.{int(digits or 1)}f}" if s in rows else "–" for s in steps)
                     for rows in tables.values()]
            lines.append(f"| `{column}` | " + " | ".join(cells) + " |")
        return "\n".join(lines)
    lines = [f"| agent ({args.column}) | " + " | ".join(f"{s / 1000:g}k" for s in steps) + " |",
             "|---|" + "---|" * len(steps)]
    for name, rows in tables.items():
        cells = [f"{float(rows[s][args.column]):.{args.digits}f}" if s in rows else "–" for s in steps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parser().parse_args()
    print(table(args, args.root))


if __name__ == "__main__":
    main()
