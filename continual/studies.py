"""The studies of docs/results.md as data: ``python -m continual study NAME``.

A study is a list of sweeps (:func:`continual.sweep.sweep`) on the studies' benchmark — real Fashion-MNIST, MLP
4×256, Adam 1e-3, batch 512, the first 12,800 images, 40 epochs per task (:data:`BENCHMARK`) — each written to its
own folder ``<out>/<study>/<variant>/<mitigator>/`` (``variant``: ``noln`` or ``ln``, the MLP without or with
LayerNorm). Every sweep resumes: finished runs are skipped, partial ones continue from their checkpoints, so running
a study again after an interruption, on this machine or on a Ray cluster, finishes it. At the end the study writes
``<out>/<study>/report.md`` (every variant's table, :func:`report`) and one sensitivity figure per variant.

A study that depends on another reads the other's machine-readable report (``report.json`` of each sweep, written
by :func:`continual.report.report` at the sweep's end), never a markdown table:

=========  =====================================================================================================
study      what it runs
=========  =====================================================================================================
acceptance every mitigator at its default strength, 3 seeds (0–2) × 30 tasks, without and with LayerNorm (its
           criteria: :func:`acceptance_criteria`; the committed rows of 2026-11-25/26, results/acceptance, were made
           by the script this declaration replaced, one CSV per mitigator and seed)
tuned      every mitigator over its grid (:data:`GRIDS`), 2 seeds (0, 1) × 20 tasks, without and with LayerNorm
confirm    each mitigator at its tuned best (``tuned``'s report.json), 3 seeds (0–2) × 30 tasks; one at its default
           strength is left to the acceptance runs (results/acceptance), which ran exactly that
heldout    the held-out confirmation (issue #29): every mitigator at its tuned best, decoupled spectral also one grid
           step either side, on seeds 3–5 that no tuning run used, 30 tasks, both variants — one code version
long       the paper's 50 tasks (issue #29): none, spectral (decoupled and coupled) and the best baseline without
           LayerNorm (:data:`LONG_MITIGATORS`), each at its tuned best, on the held-out seeds 3–5, no LayerNorm
k          spectral's exponent k ∈ {1, 2, 4, 8} at its default strength, 3 seeds × 30 tasks, no LayerNorm
shift      the other non-stationarities: none, spectral and the two best tuned baselines (:data:`SHIFT_BASELINES`),
           3 seeds × 20 tasks, train and test accuracy
supervised Adam against spectral λ ∈ {0.001, 0.01, 1} on the supervised single task (:data:`SUPERVISED`), 3 seeds
           (docs/strength.md, the drop-in cost)
forms      the named forms of the pull (:data:`FORMS`): plasticity (30 tasks, 3 seeds) and the supervised single
           task; the SAC half is ``python -m rl study forms-sac`` into the same folder (docs/strength.md)
fused-     spectral λ = 1 with the power iteration's plain and fused order (issue #31), 3 seeds × 30 tasks, no
order      LayerNorm
device-    the first GPU call's continual runs: ResNet-18 and ViT-Tiny, random labels and class-incremental, Adam
check      and spectral, on ``cuda`` (:func:`device_check`; ``--device cpu`` to try it without one)
crelu-     CReLU against spectral (λ = 1) at 40 and 120 epochs per task, CReLU matched in parameters and not, no
epochs     LayerNorm (issue #29 item 3): single runs of seeds 0–2 (:attr:`Sweep.one_run`) and a 2-task sweep
=========  =====================================================================================================

The best strength of a sweep is :data:`continual.report.BEST_RULE`'s, fixed before any confirmation ran.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .mitigators import DEFAULT_STRENGTHS, NO_STRENGTH
from .plot import read_rows

BENCHMARK: dict[str, Any] = dict(dataset="fashion-mnist", model="mlp", epochs=40, batch_size=512, train_size=12800,
                                 lr=1e-3)
"""The settings every study shares (the paper's Appendix B MLP setting on Fashion-MNIST)."""

VARIANTS = ("noln", "ln")
ORDER = ("none", "crelu", "spectral", "l2-init", "shrink-perturb", "redo", "l2", "wasserstein", "ewc", "cbp",
         "spectral-coupled")
GRIDS: dict[str, tuple[float, ...]] = {
    "none": (), "crelu": (),  # no strength: one run per seed
    "spectral": (0.001, 0.01, 0.1, 0.3, 1, 3, 10),  # 0.01 and 0.001: the drop-in strengths of docs/strength.md
    "spectral-coupled": (1e-5, 1e-4, 1e-3, 1e-2),
    "l2": (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2),  # 1e-6, then 1e-7 and 1e-8 added: each best was the edge
    "l2-init": (1e-6, 1e-5, 1e-4, 1e-3, 1e-2),  # 1e-6 added: the best of the first four was 1e-5, the edge
    "shrink-perturb": (1e-5, 1e-4, 1e-3, 1e-2),
    "wasserstein": (1e-5, 1e-4, 1e-3, 1e-2),
    # 0.1 and 1 added, then 10..1e6 (issue #29): its Fisher term is g² ≈ (1e-5..1e-4)², so its penalty gradient is
    # ≈ 1e-6·λ of the data gradient; at λ ≤ 1 it cannot act
    "ewc": (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100, 1e3, 1e4, 1e5, 1e6),
    "cbp": (1e-5, 1e-4, 1e-3, 1e-2, 0.1),  # 0.1 added: the best of the first four was 1e-2, the edge
    "redo": (0.001, 0.01, 0.1, 0.3),
}
"""Each mitigator's tuning grid: ≥ 4 strengths over ≥ 2 decades around its default; a best at the edge grows it."""

SHIFT_BASELINES: tuple[tuple[str, float | None], ...] = (("crelu", None), ("redo", 0.1))
"""The two best tuned baselines without LayerNorm (results/studies/tuned/noln), run under the other shifts."""
SHIFTS = ("pixel-permutation", "label-flip", "class-incremental")
HELDOUT_SEEDS = (3, 4, 5)
"""Seeds no tuning or earlier confirmation run used (tuned: 0, 1; confirm and acceptance: 0–2)."""


@dataclass(frozen=True)
class Sweep:
    """One sweep of a study: its folder below the study's, the settings beyond :data:`BENCHMARK`, the strengths.
    ``one_run``: the folder is one ``continual run`` of every seed together (vectorized seeds,
    :func:`continual.run`), not a sweep of one-seed run folders; its strength is a setting. A study runs its single
    runs after its sweeps, on the same engine (:func:`continual.sweep.run_whole`: local processes or Ray)."""

    folder: str
    settings: Mapping[str, Any]
    strengths: tuple[float, ...] | None = None
    one_run: bool = False


@dataclass(frozen=True)
class Context:
    """What a study's declaration may read: the studies' root folder, the variants and mitigators asked for."""

    out: Path
    variants: tuple[str, ...] = VARIANTS
    only: tuple[str, ...] = ORDER

    def best(self, variant: str, mitigator: str) -> float | None:
        """The tuned study's best strength of ``mitigator`` (its sweep's report.json); None without a strength."""
        if mitigator in NO_STRENGTH:
            return None
        path = self.out / "tuned" / variant / mitigator / "report.json"
        if not path.exists():
            raise ValueError(f"{path} is missing: run `python -m continual study tuned` first (this study reads "
                             "the tuned study's best strengths)")
        best = json.loads(path.read_text())["best"]
        if mitigator not in best:
            raise ValueError(f"{path} has no best strength for {mitigator}")
        return float(best[mitigator])


def _ln(variant: str) -> dict[str, Any]:
    return {"layernorm": variant == "ln"}


def acceptance(ctx: Context) -> list[Sweep]:
    return [Sweep(f"{v}/{m}", dict(nonstationarity="random-labels", tasks=30, seeds=[0, 1, 2], mitigators=[m], **_ln(v)))
            for v in ctx.variants for m in ctx.only]


def acceptance_criteria(rows: Mapping[str, list[dict[str, str]]]) -> str:
    """The acceptance criteria table: one column per variant of ``rows`` (variant → its runs of ``none`` and
    ``spectral``; other mitigators ignored), each cell every seed's numbers and the verdict — unregularized Adam's
    last-task train accuracy below 0.2 on every seed; spectral's last task within 10% of its first (≥ 0.9 × first)
    on every seed."""
    def ends(per: dict[tuple[str, str], dict[int, float]], mitigator: str) -> tuple[list[float], list[float]]:
        seeds = sorted(s for m, s in per if m == mitigator)
        if not seeds:
            raise ValueError(f"no rows of {mitigator}")
        return ([per[(mitigator, s)][min(per[(mitigator, s)])] for s in seeds],
                [per[(mitigator, s)][max(per[(mitigator, s)])] for s in seeds])

    def cell(values: list[float]) -> str:
        return " / ".join(f"{v:.3f}" for v in values)

    adam_cells, spectral_cells, seeds = [], [], set()
    for variant_rows in rows.values():
        per: dict[tuple[str, str], dict[int, float]] = {}
        for r in variant_rows:
            per.setdefault((r["mitigator"], r["seed"]), {})[int(r["task"])] = float(r["train_accuracy"])
        (a_first, a_last), (s_first, s_last) = ends(per, "none"), ends(per, "spectral")
        seeds |= {len(a_last), len(s_last)}
        adam_cells.append(f"{cell(a_last)} (first task {cell(a_first)}): "
                          f"{'**met**' if all(v < 0.2 for v in a_last) else '**not met**'}")
        verdict = ("**above** it" if all(l > f for f, l in zip(s_first, s_last)) else "**within 10%**"
                   if all(l >= 0.9 * f for f, l in zip(s_first, s_last)) else "**not met**")
        spectral_cells.append(f"{cell(s_last)} vs {cell(s_first)}: {verdict}")
    n = "/".join(map(str, sorted(seeds)))
    names = {"noln": "without LayerNorm", "ln": "with LayerNorm"}
    return "\n".join([
        "| criterion | " + " | ".join(names.get(v, v) for v in rows) + " |", "|---" * (1 + len(rows)) + "|",
        f"| unregularized Adam's last-task train accuracy < 0.2 ({n} seeds) | " + " | ".join(adam_cells) + " |",
        f"| spectral (`continual`'s default λ = 1, `specopt.CONTINUAL_STRENGTH`): last task within 10% of its first "
        f"task ({n} seeds) | " + " | ".join(spectral_cells) + " |"])


def tuned(ctx: Context) -> list[Sweep]:
    return [Sweep(f"{v}/{m}", dict(nonstationarity="random-labels", tasks=20, seeds=[0, 1], mitigators=[m], **_ln(v)),
                  GRIDS[m] or None) for v in ctx.variants for m in ctx.only]


def confirm(ctx: Context) -> list[Sweep]:
    sweeps = []
    for v in ctx.variants:
        for m in ctx.only:
            best = ctx.best(v, m)
            if m in NO_STRENGTH or best == DEFAULT_STRENGTHS[m]:
                continue  # the acceptance runs (results/acceptance) ran exactly this
            sweeps.append(Sweep(f"{v}/{m}", dict(nonstationarity="random-labels", tasks=30, seeds=[0, 1, 2],
                                                 mitigators=[m], **_ln(v)), (best,)))
    return sweeps


def confirm_table(out: Path, variant: str) -> str:
    """The confirm study's table for ``variant``: each mitigator at the strength it was confirmed at (its tuned best
    then; the acceptance runs' default where that was the best), its tuned score (2 seeds × 20 tasks) and its 30-task
    score (3 seeds: the confirm study's run, or the acceptance run), last-5-task mean ± standard error over seeds,
    best first. History: seeds 0–1 of these runs are the tuning runs' (the held-out study replaces it)."""
    import glob

    from specopt.experiment import mean_pm, mean_se, read_csv

    from .report import finished_runs
    from .report import aggregate

    lines = []
    for m in ORDER:
        tuned_path = out / "tuned" / variant / m / "report.json"
        if not tuned_path.exists():
            continue
        tuned = json.loads(tuned_path.read_text()).get("entries", [])
        where = out / "confirm" / variant / m
        runs = finished_runs(where)[0] if where.is_dir() else []
        if runs:
            (e,) = aggregate(runs, where)
            strength, score, source = e["strength"], (e["last5"], e["last5_se"], e["seeds"]), "confirm"
        else:
            per: dict[str, list[float]] = {}
            for path in sorted(glob.glob(str(out.parent / "acceptance" / variant / f"{m}-seed*.csv"))):
                for r in read_csv(path):
                    if r["mitigator"] == m:
                        per.setdefault(r["seed"], []).append(float(r["train_accuracy"]))
            if not per:
                continue
            strength = None if m in NO_STRENGTH else float(DEFAULT_STRENGTHS[m])
            score, source = (*mean_se([sum(a[-5:]) / len(a[-5:]) for a in per.values()]), len(per)), "acceptance"
        at = [t for t in tuned if t["strength"] == strength]
        tuned_cell = mean_pm(at[0]["last5"], at[0]["last5_se"], at[0]["seeds"]) if at else "–"
        lines.append((score[0], f"| {m} | {'–' if strength is None else f'{strength:g}'} | {tuned_cell} | "
                                f"{mean_pm(*score)} | {source} |"))
    head = ["| mitigator | strength (tuned best when confirmed) | 2 seeds × 20 tasks (tuned) | 3 seeds × 30 tasks | "
            "rows |", "|---|---|---|---|---|"]
    return "\n".join(head + [line for _, line in sorted(lines, key=lambda x: -x[0])])


def neighbours(grid: tuple[float, ...], best: float) -> tuple[float, ...]:
    """``best`` and the grid's strengths one step either side of it (those that exist)."""
    i = grid.index(best)
    return tuple(grid[max(i - 1, 0):i + 2])


def heldout(ctx: Context) -> list[Sweep]:
    sweeps = []
    for v in ctx.variants:
        for m in ctx.only:
            best = ctx.best(v, m)
            strengths = None if best is None else (neighbours(GRIDS[m], best) if m == "spectral" else (best,))
            sweeps.append(Sweep(f"{v}/{m}", dict(nonstationarity="random-labels", tasks=30, seeds=list(HELDOUT_SEEDS),
                                                 mitigators=[m], **_ln(v)), strengths))
    return sweeps


def heldout_table(out: Path, variant: str) -> str:
    """The held-out study against the tuning runs its strengths were chosen from, for ``variant``: each mitigator
    and held-out strength, the tuning runs' score (seeds 0–1: the last 5 of their 20 tasks) and the held-out seeds'
    score over the same tasks (mean ± standard error over seeds 3–5), and their difference — the part of a tuned
    score that was the choice fitting its own seeds shows as a held-out score below it. (The held-out 30-task
    scores are the headline table's.)"""
    from specopt.experiment import mean_pm, mean_se

    from .plot import run_results
    from .report import finished_runs

    lines = []
    for m in ORDER:
        where, tuned_path = out / "heldout" / variant / m, out / "tuned" / variant / m / "report.json"
        if not where.is_dir() or not tuned_path.exists():
            continue
        summary = json.loads(tuned_path.read_text())
        tuned = {e["strength"]: e for e in summary.get("entries", [])}
        best = summary.get("best", {}).get(m)
        scores: dict[float | None, list[float]] = {}
        for run in finished_runs(where)[0]:
            t = tuned.get(run.strength)
            if t is None:
                continue
            window = [float(r["train_accuracy"]) for r in run_results(where / run.name)
                      if t["tasks"] - 5 < int(r["task"]) <= t["tasks"]]
            scores.setdefault(run.strength, []).append(sum(window) / len(window))
        for strength in sorted(scores, key=lambda x: -1.0 if x is None else x):
            t, (held, se), n = tuned[strength], mean_se(scores[strength]), len(scores[strength])
            diff = f"{held - t['last5']:+.3f} ± {se:.3f}" if n >= 3 else f"{held - t['last5']:+.3f}"
            name = "–" if strength is None else f"{strength:g}" + (" (tuned best)" if strength == best and
                                                                  m == "spectral" else "")
            lines.append(f"| {m} | {name} | {t['last5']:.3f} ({t['seeds']} seeds) | {mean_pm(held, se, n)} ({n} "
                         f"seeds) | {diff} |")
    head = ["| mitigator | strength | tuning runs, tasks 16–20 | held-out seeds, tasks 16–20 | held-out − tuning |",
            "|---|---|---|---|---|"]
    return "\n".join(head + lines)


LONG_MITIGATORS = ("none", "spectral", "spectral-coupled", "crelu")
"""The 50-task study's mitigators: Adam, both forms of spectral regularization and CReLU, the best baseline without
LayerNorm in the tuned and confirm studies."""


def long(ctx: Context) -> list[Sweep]:
    sweeps = []
    for m in LONG_MITIGATORS:
        best = ctx.best("noln", m)
        sweeps.append(Sweep(f"noln/{m}", dict(nonstationarity="random-labels", tasks=50, seeds=list(HELDOUT_SEEDS),
                                              mitigators=[m], layernorm=False), None if best is None else (best,)))
    return sweeps


CRELU_WIDTH = 334
"""The ``--width`` at which CReLU's MLP is *not* matched in parameters: ``continual.models.crelu_width`` turns width
334 into 256 hidden units (512 features after the concatenation, 600,074 parameters against the ReLU MLP's 400,906);
at the benchmark's width 256 it is matched (200 units, 401,610 parameters). Issue #29 item 3; docs/results.md."""


def crelu_epochs(ctx: Context) -> list[Sweep]:
    """CReLU against spectral (λ = 1) at 40 and 120 epochs per task, without LayerNorm: a 2-task first look (a sweep),
    then 5 tasks at each epoch count with CReLU matched in parameters (width 256) and unmatched (:data:`CRELU_WIDTH`),
    and 10 tasks at 120 epochs — each one run of seeds 0–2 (spectral's with vectorized seeds)."""
    common = dict(nonstationarity="random-labels", seeds=[0, 1, 2], layernorm=False)
    sweeps = [Sweep("t2-e120", dict(common, tasks=2, epochs=120, mitigators=["crelu", "spectral"], diagnostics=False),
                    (1.0,))]
    for tasks, epochs, wide in ((5, 40, True), (5, 120, True), (10, 120, False)):
        at = dict(common, tasks=tasks, epochs=epochs)
        folder = f"t{tasks}-e{epochs}"
        sweeps += [Sweep(f"{folder}/spectral", dict(at, mitigators=["spectral"], strength=1.0, vectorize_seeds=True),
                         one_run=True),
                   Sweep(f"{folder}/crelu", dict(at, mitigators=["crelu"]), one_run=True)]
        if wide:
            sweeps.append(Sweep(f"{folder}/crelu-w{CRELU_WIDTH}", dict(at, mitigators=["crelu"], width=CRELU_WIDTH),
                                one_run=True))
    return sweeps


SUPERVISED: dict[str, Any] = dict(nonstationarity="pixel-permutation", tasks=1, epochs=20, train_size=60000,
                                  seeds=[0, 1, 2], layernorm=False, diagnostics=False)
"""The supervised single task of docs/strength.md: one task of a pixel-permutation stream is ordinary training on
permuted pixels, all 60,000 training images, 20 epochs; test accuracy."""


def supervised(ctx: Context) -> list[Sweep]:
    """Adam against the spectral strengths 0.001, 0.01 and 1 on the supervised single task (the drop-in cost)."""
    return [Sweep("fashion-mnist-mlp", dict(SUPERVISED, mitigators=["none", "spectral"]), (0.001, 0.01, 1.0))]


FORMS: tuple[tuple[str, float, dict[str, Any]], ...] = (
    ("no-heads", 1.0, {"heads": False}), ("one-sided", 1.0, {"pull": "one-sided"}),
    ("precondition", 1e-3, {"precondition": True}))
"""The named forms of the pull the forms study measured on continual's side: (name, λ, spectral options)."""


def forms(ctx: Context) -> list[Sweep]:
    """The forms study's continual half (docs/strength.md, "Forms of the pull"; its SAC half is ``python -m rl study
    forms-sac``, into ``sac/`` beside): plasticity on the random-label benchmark (30 tasks, seeds 0–2 in one
    vectorized run) and the supervised single task (a sweep, Adam beside it for the preconditioned form), each form
    at its λ; the preconditioned form also at λ = 1e-4 (plasticity) and 1e-4, 3e-4 (supervised, "-weaker") and, at
    1e-3, with LayerNorm."""
    plastic = dict(nonstationarity="random-labels", tasks=30, seeds=[0, 1, 2], mitigators=["spectral"],
                   vectorize_seeds=True)
    sweeps = []
    for name, strength, spectral in FORMS:
        options = {"spectral": spectral}
        for variant, lam in (("noln", strength), *((("noln", 1e-4), ("ln", 1e-3)) if name == "precondition" else ())):
            sweeps.append(Sweep(f"plasticity/{variant}/{name}-{lam:.0e}".replace("e+00", "").replace("e-0", "e-"),
                                dict(plastic, strength=lam, options=options, **_ln(variant)), one_run=True))
        adam = ["none"] if name == "precondition" else []
        sweeps.append(Sweep(f"supervised/fashion-mnist-mlp-{name}",
                            dict(SUPERVISED, mitigators=[*adam, "spectral"], options=options), (strength,)))
    sweeps.append(Sweep("supervised/fashion-mnist-mlp-precondition-weaker",
                        dict(SUPERVISED, mitigators=["spectral"], options={"spectral": {"precondition": True}}),
                        (1e-4, 3e-4)))
    return sweeps


def fused_order(ctx: Context) -> list[Sweep]:
    """Issue #31's check of the fused order: decoupled spectral at ``continual``'s default λ = 1 with the plain order
    and with the fused order in one pass (``--spectral.fused-order``), the acceptance benchmark's setting without
    LayerNorm (seeds 0–2, 30 tasks), one commit, side by side."""
    common = dict(nonstationarity="random-labels", tasks=30, seeds=[0, 1, 2], mitigators=["spectral"],
                  layernorm=False)
    return [Sweep("plain", common, (1.0,)),
            Sweep("fused", dict(common, options={"spectral": {"fused_order": True}}), (1.0,))]


DEVICE_CHECK_MODELS = ("resnet18", "vit-tiny")


def device_check(ctx: Context) -> list[Sweep]:
    """The first GPU call's continual runs (``scripts/device_check.sh``, 2026-11-26; docs/results.md "GPU"):
    ResNet-18 and ViT-Tiny on real Fashion-MNIST, random labels and class-incremental, Adam and spectral at
    continual's default strength, 30 tasks × 8 epochs, batch 250, seed 0, on ``cuda`` — one run each (the
    committed ones ran all eight at once under a time budget and hold their first 2–5 tasks)."""
    return [Sweep(f"{model}-{ns}-{m}", dict(model=model, nonstationarity=ns, mitigators=[m], tasks=30, epochs=8,
                                            batch_size=250, seeds=[0], device="cuda"), one_run=True)
            for model in DEVICE_CHECK_MODELS for ns in ("random-labels", "class-incremental")
            for m in ("none", "spectral")]


def k_ablation(ctx: Context) -> list[Sweep]:
    return [Sweep(f"k{k}", dict(nonstationarity="random-labels", tasks=30, seeds=[0, 1, 2], mitigators=["spectral"],
                                layernorm=False, options={"spectral": {"k": k}})) for k in (1, 2, 4, 8)]


def shift(ctx: Context) -> list[Sweep]:
    sweeps = []
    for ns in SHIFTS:
        common = dict(nonstationarity=ns, tasks=20, seeds=[0, 1, 2], layernorm=False)
        sweeps.append(Sweep(f"{ns}/none-spectral", dict(common, mitigators=["none", "spectral"])))
        sweeps += [Sweep(f"{ns}/{m}", dict(common, mitigators=[m]), None if s is None else (s,))
                   for m, s in SHIFT_BASELINES]
    return sweeps


@dataclass(frozen=True)
class Study:
    name: str
    sweeps: Callable[[Context], list[Sweep]]
    variants: bool = True  # whether --variants and --only apply
    train_test: bool = False  # the report's table: train and test accuracy (the shifts)
    tables: tuple[str, ...] = field(default=())  # the folders below the study's whose tables the report shows
    figures: bool = True  # a sensitivity figure per table (strength on the x axis)
    # sweeps that differ in an option: (the option's name, {folder: value}, the default value), one table of them all
    options: tuple[str, Mapping[str, str], str] | None = None
    # a table per variant across the study's sweeps and the runs it builds on (the confirm study: confirm_table)
    overview: Callable[[Path, str], str] | None = None

    def options_table(self, root: Path) -> str:
        """The study's table across its option's values (:func:`continual.report.options_table`)."""
        from .report import options_table

        assert self.options is not None, f"study {self.name} has no option table"
        name, folders, default = self.options
        return options_table(root / self.name, dict(folders), name, default)


STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("acceptance", acceptance, tables=VARIANTS, figures=False, overview=lambda out, v: acceptance_criteria(
        {v: read_rows([out / "acceptance" / v])})),
    Study("tuned", tuned, tables=VARIANTS),
    Study("confirm", confirm, tables=VARIANTS, overview=confirm_table),
    Study("heldout", heldout, tables=VARIANTS, overview=heldout_table),
    Study("long", long, variants=False, tables=("noln",)),
    Study("k", k_ablation, variants=False, tables=("k1", "k2", "k4", "k8"), figures=False,
          options=("k", {"k1": "1", "k2": "2", "k4": "4", "k8": "8"}, "2")),
    Study("shift", shift, variants=False, train_test=True, tables=SHIFTS),
    Study("supervised", supervised, variants=False, train_test=True, tables=("fashion-mnist-mlp",), figures=False),
    Study("forms", forms, variants=False, train_test=True, figures=False, tables=(
        "supervised/fashion-mnist-mlp-no-heads", "supervised/fashion-mnist-mlp-one-sided",
        "supervised/fashion-mnist-mlp-precondition", "supervised/fashion-mnist-mlp-precondition-weaker",
        "plasticity/noln", "plasticity/ln")),
    Study("fused-order", fused_order, variants=False, tables=("plain", "fused"), figures=False),
    Study("device-check", device_check, variants=False, tables=("",), figures=False),
    Study("crelu-epochs", crelu_epochs, variants=False, tables=("t2-e120", "t5-e40", "t5-e120", "t10-e120"),
          figures=False),
)}


def configs(name: str, out: Path, overrides: Mapping[str, Any] | None = None, variants: tuple[str, ...] = VARIANTS,
            only: tuple[str, ...] = ORDER, strengths: tuple[float, ...] | None = None, one_run: bool = False
            ) -> list[tuple[RunConfig, tuple[float, ...] | None]]:
    """Every sweep of study ``name`` as (its finished base config, its strengths): :data:`BENCHMARK`, then the
    sweep's settings, then ``overrides`` (what the command line set: e.g. a tiny dataset for a test); ``strengths``
    replaces the grid of every sweep that has one. With ``one_run``, the study's single runs instead
    (:attr:`Sweep.one_run`; strengths None)."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    bad = [v for v in variants if v not in VARIANTS] + [m for m in only if m not in ORDER]
    if bad:
        raise ValueError(f"unknown variant or mitigator {bad[0]!r}; variants: {', '.join(VARIANTS)}; mitigators: "
                         f"{', '.join(ORDER)}")
    ctx = Context(out, tuple(variants), tuple(m for m in ORDER if m in only))
    out_study = out / name
    result = []
    for sweep in STUDIES[name].sweeps(ctx):
        if sweep.one_run != one_run:
            continue
        settings = {**BENCHMARK, **sweep.settings, **(overrides or {}), "out": str(out_study / sweep.folder)}
        cfg = RunConfig(**settings)
        cfg.validate()
        result.append((cfg, strengths if strengths and sweep.strengths else sweep.strengths))
    return result


def run_study(name: str, out: Path, overrides: Mapping[str, Any] | None = None, variants: tuple[str, ...] = VARIANTS,
              only: tuple[str, ...] = ORDER, workers: int | None = None, threads: int = 1, backend: str = "local",
              ray_address: str | None = None, progress: bool = True,
              strengths: tuple[float, ...] | None = None) -> str:
    """Run (or finish) every sweep of study ``name`` under ``out``, then write and return its report. Every sweep's
    settings are checked before the first runs."""
    from .sweep import run_whole, sweep

    runs = [cfg for cfg, _ in configs(name, out, overrides, variants, only, one_run=True)]
    for cfg, grid in configs(name, out, overrides, variants, only, strengths):
        sweep(cfg, strengths=list(grid) if grid else None, workers=workers, threads=threads,
              backend=backend, ray_address=ray_address, progress=progress)
    if runs:
        run_whole(runs, workers=workers, threads=threads, backend=backend, ray_address=ray_address, progress=progress)
    return report(name, out)


def report(name: str, out: Path) -> str:
    """The study's tables (one per variant, shift or k folder; unfinished runs left out) and sensitivity figures,
    written to ``<out>/<name>/report.md`` and ``<out>/<name>/<folder>.png``."""
    from specopt.experiment import write_text

    from specopt.results import run_configs

    from .report import BEST_RULE, finished_runs, sensitivity_plot, table, versions
    from .report import report as report_of

    study = STUDIES[name]
    root = out / name
    parts = [f"# Study `{name}`", "", f"`python -m continual study {name}`; best strength: {BEST_RULE}.", ""]
    if study.options is not None and any(finished_runs(root / f)[0] for f in study.options[1] if (root / f).is_dir()):
        parts += [f"## every {study.options[0]}", "", study.options_table(out), ""]
    for variant in (study.tables if study.overview is not None else ()):
        if (root / variant).is_dir():
            parts += [f"## {variant}: every mitigator", "", study.overview(out, variant), ""]
    for folder in study.tables:
        where = root / folder
        runs, unfinished = finished_runs(where) if where.is_dir() else ([], 0)
        if not runs:
            if where.is_dir() and any(run_configs(where)):  # single runs (Sweep.one_run): accuracy per task
                text, _ = report_of([where])
                parts += [f"## {folder or name}", "", text, ""]
            continue
        text, entries = table(where, study.train_test)
        parts += [f"## {folder or name}", "", text, "", f"Unfinished runs left out: {unfinished}. {versions(where)}",
                  ""]
        if entries and study.figures:
            sensitivity_plot(entries, root / f"{folder or name}.png", f"{name} {folder}".strip())
    text = "\n".join(parts)
    write_text(root / "report.md", text)
    return text


__all__ = ["BENCHMARK", "GRIDS", "STUDIES", "Study", "Sweep", "acceptance_criteria", "configs", "confirm_table",
           "heldout_table", "report", "run_study"]
