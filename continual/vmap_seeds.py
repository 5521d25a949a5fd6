"""Several seeds of one unmitigated run in a single process: stacked parameters + ``torch.func.vmap``.

For mitigator ``none`` the S seeds of a run differ only in their initialisation, their task stream and their batch
order, so their S models can train as one: every parameter θ of shape (…) becomes a stacked tensor Θ of shape
(S, …), the forward pass is ``vmap(functional_call)`` over the seed axis, and the loss is

    L(Θ) = Σ_s CE(f(x_s; Θ_s), y_s)          (each term a mean over seed s's batch)

whose gradient with respect to Θ_s is exactly seed s's own gradient. Adam is element-wise, so ``torch.optim.Adam``
on the stacked tensors performs each seed's Adam step. Everything else is the sequential runner's: the same
initialisation (``torch.manual_seed(seed)`` then ``build_model``), the same task ``make_task(ds, ns, seed, t)``, the
same batch order ``batch_generator(seed, task, epoch)``, and the task-end row is measured by the runner's own
``Run.measure`` after copying seed s's slice back into its model. Rows therefore match the sequential runner's up
to floating-point reduction order (tested), not bit for bit.

Only ``mitigator == "none"`` and the MLP (no buffers) are supported: mitigators with a penalty, resets or their own
optimizer (SpectralAdam) would each need a stacked version.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .data import load_dataset
from .runner import Run, RunConfig, atomic_write, batch_generator, write_csv
from .streams import Task, make_task


def check_vectorizable(cfg: RunConfig) -> None:
    """Raise ValueError (a one-line CLI error) if ``cfg`` cannot run with stacked seeds."""
    if list(cfg.mitigators) != ["none"]:
        raise ValueError(f"--vectorize-seeds supports --mitigator none only, got {' '.join(cfg.mitigators)}")
    if cfg.model != "mlp":
        raise ValueError(f"--vectorize-seeds supports --model mlp only, got {cfg.model}")


def _stacked_batch(tasks: list[Task], idx: Tensor) -> tuple[Tensor, Tensor]:
    """Seed s's batch ``idx[s]`` (idx: (S, B)) of its own task → x: (S, B, C, H, W), y: (S, B)."""
    if all(t.x_train is tasks[0].x_train for t in tasks):  # random-labels, label-flip: images shared
        x = tasks[0].x_train[idx]
    else:
        x = torch.stack([t.x_train[i] for t, i in zip(tasks, idx)])
    y = torch.stack([t.y_train[i] for t, i in zip(tasks, idx)])
    return x, y


class StackedSeeds:
    """S models of one architecture trained as one; ``runs[s]`` is seed s's sequential-runner ``Run``."""

    def __init__(self, cfg: RunConfig, ds, seeds: list[int]) -> None:
        self.cfg, self.ds, self.seeds = cfg, ds, list(seeds)
        self.runs = [Run(cfg, ds, "none", seed) for seed in self.seeds]  # same init as the sequential runner
        params, buffers = stack_module_state([r.model for r in self.runs])
        if buffers:
            raise ValueError("--vectorize-seeds needs a model without buffers (the mlp)")
        self.params: dict[str, Tensor] = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        self.base = copy.deepcopy(self.runs[0].model).to("meta")
        self.optimizer = torch.optim.Adam(self.params.values(), lr=cfg.lr)
        self.step, self.next_task = 0, 0

        def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(self.base, p, (x,))

        self.forward = vmap(forward)

    def state_dict(self) -> dict[str, Any]:
        return {"params": {k: v.detach().clone() for k, v in self.params.items()},
                "optimizer": self.optimizer.state_dict(), "step": self.step, "next_task": self.next_task,
                "prev_reps": [r.prev_rep for r in self.runs], "init_params": [r.init_params for r in self.runs]}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in s["params"].items():
                self.params[k].copy_(v)
        self.optimizer.load_state_dict(s["optimizer"])
        self.step, self.next_task = s["step"], s["next_task"]
        for run, rep, init in zip(self.runs, s["prev_reps"], s["init_params"]):
            run.prev_rep, run.init_params = rep, init

    def train_task(self, t: int, progress=None) -> list[dict[str, Any]]:
        cfg = self.cfg
        tasks = [make_task(self.ds, cfg.nonstationarity, seed, t) for seed in self.seeds]
        n = tasks[0].x_train.shape[0]
        if any(task.x_train.shape[0] != n for task in tasks):
            raise ValueError("--vectorize-seeds needs tasks of equal size across seeds")
        for epoch in range(cfg.epochs):
            perms = torch.stack([torch.randperm(n, generator=batch_generator(seed, t, epoch))
                                 for seed in self.seeds]).to(cfg.device)
            for i in range(0, n, cfg.batch_size):
                x, y = _stacked_batch(tasks, perms[:, i: i + cfg.batch_size])
                self.optimizer.zero_grad(set_to_none=True)
                logits = self.forward(self.params, x)  # (S, B, classes)
                # Σ_s mean_b CE: the mean over all S·B terms, times S.
                loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()) * len(self.seeds)
                loss.backward()
                self.optimizer.step()
                self.step += 1
            if progress is not None:
                progress.set_postfix_str(f"none seeds {self.seeds} (vectorized) task {t + 1} epoch {epoch + 1}"
                                         f"/{cfg.epochs} loss {loss.item() / len(self.seeds):.3f}", refresh=False)
                progress.refresh()
        rows = []
        with torch.no_grad():
            for s, (run, task) in enumerate(zip(self.runs, tasks)):
                for name, p in run.model.named_parameters():
                    p.copy_(self.params[name][s])
                run.step = self.step
                rows.append(run.measure(task))
        self.next_task = t + 1
        return rows


def run_vectorized(cfg: RunConfig, resume: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Like :func:`continual.runner.run_experiment` for ``mitigators == ["none"]``, all seeds at once.

    Writes the same ``results.csv`` (rows ordered by seed, then task, as the sequential runner), ``config.json``
    (with ``"vectorize_seeds": true``) and an atomic checkpoint after every task; ``resume`` continues it.
    """
    from tqdm import tqdm

    check_vectorizable(cfg)
    out = Path(cfg.out)
    ds = load_dataset(cfg.dataset, Path(cfg.data_dir) if cfg.data_dir else None, cfg.train_size).to(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    config = {**asdict(cfg), "vectorize_seeds": True}
    stacked = StackedSeeds(cfg, ds, cfg.seeds)
    per_seed: list[list[dict[str, Any]]] = [[] for _ in cfg.seeds]
    if resume and ckpt_path.exists():
        saved = torch.load(ckpt_path, weights_only=False)
        if saved["config"] != config:
            diff = sorted(k for k in config if config[k] != saved["config"].get(k))
            raise ValueError(f"--resume with different settings than the checkpoint in {out} ({', '.join(diff)})")
        stacked.load_state_dict(saved["stacked"])
        per_seed = saved["per_seed"]
    elif (out / "results.csv").exists() and not resume:
        raise ValueError(f"{out} already holds results: pass --resume to continue, or choose another --out")
    atomic_write(out / "config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=2)))
    bar = tqdm(total=cfg.tasks, initial=stacked.next_task, unit="task", disable=not progress, dynamic_ncols=True)
    t0 = time.time()
    for t in range(stacked.next_task, cfg.tasks):
        for rows, row in zip(per_seed, stacked.train_task(t, bar)):
            rows.append(row)
        state = {"config": config, "per_seed": per_seed, "stacked": stacked.state_dict()}
        atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))
        write_csv(out / "results.csv", [r for rows in per_seed for r in rows])
        bar.update(1)
        accs = [rows[-1]["train_accuracy"] for rows in per_seed]
        bar.set_description(f"none ×{len(cfg.seeds)} seeds t{t + 1} acc {sum(accs) / len(accs):.3f}")
    bar.close()
    flat = [r for rows in per_seed for r in rows]
    if progress:
        print(f"{len(flat)} rows in {out / 'results.csv'} ({time.time() - t0:.0f} s, {len(cfg.seeds)} seeds "
              f"vectorized)")
    return flat


def max_row_difference(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> float:
    """Largest |a[i][key] − b[i][key]| over paired rows (NaN pairs count as equal)."""
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        va, vb = float(ra[key]), float(rb[key])
        if not (math.isnan(va) and math.isnan(vb)):
            worst = max(worst, abs(va - vb))
    return worst
