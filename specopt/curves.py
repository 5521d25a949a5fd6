"""What every experiment's report computes and draws, whatever the package: a metric against progress (continual's
task, rl's env step), mean ± standard error over seeds, one curve per setting, panels side by side.

``python -m continual report`` and ``python -m rl report`` each read their own rows (:mod:`specopt.results`) and
name their own curves, then hand them here: :func:`over_seeds` makes a curve from seeds, :func:`draw` the figure,
:func:`seed_count` the seed cell of a table, :func:`write_report` the report's two files (the one report contract of
both packages). Like :mod:`specopt.experiment`, outside the optimizer's import path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .experiment import mean_se, save_figure, write_text

__all__ = ["Curve", "REPORT_FILES", "curve_entries", "draw", "over_seeds", "seed_count", "write_report"]

REPORT_FILES = ("report.md", "report.json")
"""What ``report --out DIR`` writes into DIR in both packages, beside its figures: the markdown summary (the table a
reader sees, the code versions under it) and the same numbers machine-readable."""


class Curve(NamedTuple):
    """One setting's metric over seeds: at each ``x``, the ``mean``, its standard error ``se`` and ``n``, the
    seeds that reached that x."""

    x: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    n: np.ndarray

    @property
    def seeds(self) -> int:
        """The seeds the curve was made from (the most at any x)."""
        return int(self.n.max())

    @property
    def at_last(self) -> int:
        """The seeds that reached the last x."""
        return int(self.n[-1])


def over_seeds(per_seed: Iterable[tuple[Sequence[float], Sequence[float]]]) -> Curve:
    r"""The curve of seeds given as (x values, metric values) each: at every x any seed reached, the mean and the
    standard error :math:`s/\sqrt n` (:func:`specopt.experiment.mean_se`) over the n seeds that reached it — a
    stopped or still-running seed ends its contribution early. A missing value is NaN and makes its x's mean NaN."""
    seeds = [(np.asarray(x, dtype=float), np.asarray(y, dtype=float)) for x, y in per_seed]
    if not seeds:
        raise ValueError("over_seeds of no seeds")
    xs = np.array(sorted({float(v) for x, _ in seeds for v in x}))
    mean, se, n = (np.zeros(len(xs)) for _ in range(3))
    for i, at in enumerate(xs):
        values = [y[x == at][0] for x, y in seeds if (x == at).any()]
        (mean[i], se[i]), n[i] = mean_se(values), len(values)
    return Curve(xs, mean, se, n)


def seed_count(seeds: int, at_last: int) -> str:
    """How many seeds a curve has, for a table or a legend: "3", or "2 of 3" when only 2 of the 3 seeds reached
    its last x."""
    return f"{seeds}" if at_last == seeds else f"{at_last} of {seeds}"


def draw(panels: Mapping[str, Mapping[str, Curve]], output: str | os.PathLike, *, xlabel: str, ylabel: str,
         integer_x: bool = False, thousands_x: bool = False, emphasize: Sequence[str] = ()) -> None:
    """The figure of every report: one panel per title of ``panels`` (four to a row), in each one line per label
    with its ±1 standard-error band and the seed count in the legend. Ten distinct colours, curves 11–20 dashed;
    curves whose label starts with a word of ``emphasize`` drawn thicker; a panel of more than three curves keeps
    its legend beside the axes. ``integer_x``: whole-number ticks (tasks); ``thousands_x``: 10k for 10000."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    widest = max(len(curves) for curves in panels.values())
    width = (7 + 2.5 * (widest > 3)) if len(panels) == 1 else 4.5
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, (4 if len(panels) == 1 else 3.4) * rows),
                             squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (title, curves) in zip(axes.flat, panels.items()):
        for i, (name, c) in enumerate(sorted(curves.items())):
            color = colors(i % 10)
            ax.plot(c.x, c.mean, color=color, ls="-" if i < 10 else "--",
                    lw=2.2 if name.split(" ")[0] in emphasize else 1.2,
                    label=f"{name}, {seed_count(c.seeds, c.at_last)} seed{'s' if c.seeds > 1 else ''}")
            ax.fill_between(c.x, c.mean - c.se, c.mean + c.se, color=color, alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tasks are whole numbers: no tick at 2.5
        if thousands_x:
            ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}k")
        if len(curves) > 3:  # many curves: the legend goes beside the axes, not over them
            ax.legend(fontsize=7 if len(panels) > 1 else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      borderaxespad=0.0)
        else:
            ax.legend(fontsize=7 if len(panels) > 1 else 8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, output)
    plt.close(fig)


def curve_entries(panels: Mapping[str, Mapping[str, Curve]]) -> list[dict]:
    """The curves of ``panels`` machine-readable: one entry per (panel, label) with its x, mean and standard error
    and its seed counts."""
    return [dict(panel=panel, label=label, seeds=c.seeds, at_last=c.at_last, x=c.x.tolist(), mean=c.mean.tolist(),
                 se=c.se.tolist()) for panel, curves in panels.items() for label, c in sorted(curves.items())]


def _plain(obj):
    """``obj`` with every non-finite float as None (JSON has no NaN) and tuples as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def write_report(out: str | os.PathLike, text: str, data: Mapping) -> list[str]:
    """Write :data:`REPORT_FILES` into the folder ``out`` (made if missing; each file atomically): ``text`` as
    report.md and ``data`` as report.json (a non-finite number as null). Returns their paths."""
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, js = (out / name for name in REPORT_FILES)
    write_text(md, text if text.endswith("\n") else text + "\n")
    write_text(js, json.dumps(_plain(data), indent=1, allow_nan=False) + "\n")
    return [str(md), str(js)]
