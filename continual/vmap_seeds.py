r"""Several seeds of one run in a single process: stacked parameters + ``torch.func.vmap``.

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

The parameter regularizers ``l2``, ``l2-init`` and ``wasserstein``
(:class:`~continual.mitigators.ParameterRegularizer`) are supported by summing each seed's own term over its slice:
the stacked loss is
:math:`\sum_s \big(\mathrm{CE}_s + \lambda \sum_p r_p(\Theta_{p,s})\big)` with seed s's own anchors (its θ0), so
again the gradient with respect to Θ_s is seed s's own (in the decoupled form, each slice takes its own step after
Adam's).

``mitigator == "spectral"`` is supported too (:class:`StackedSpectral`): SpectralAdam is Adam followed by the
decoupled spectral step, which acts on each seed's slice on its own — a warm-started power iteration per seed
(:func:`specopt.functional.power_iteration` batched over the seed dimension, seed s's u_s and v_s stacked to
(S, out) and (S, in)), then SpectralAdam's truncated step
:math:`W_s \leftarrow W_s - \alpha_s u_s v_s^\top` (:func:`specopt.functional.matrix_step`), and the bias and
scale steps (:func:`specopt.functional.vector_fraction`). The MLP only (no buffers); the other mitigators (resets and noise from
their own generators, EWC's running Fisher, the coupled spectral penalty's per-module power iteration) would each
need a stacked version.
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

import specopt
from specopt import functional as SF

from .data import load_dataset
from .mitigators import DEFAULT_STRENGTHS, ParameterRegularizer
from .runner import Run, RunConfig, atomic_write, batch_generator, open_checkpoint, write_csv
from .streams import Task, make_task

VECTORIZABLE = ("none", "spectral", "l2", "l2-init", "wasserstein")


def check_vectorizable(cfg: RunConfig) -> None:
    """Raise ValueError (a one-line CLI error) if ``cfg`` cannot run with stacked seeds."""
    if len(cfg.mitigators) != 1 or cfg.mitigators[0] not in VECTORIZABLE:
        raise ValueError(f"--vectorize-seeds supports one --mitigator of {', '.join(VECTORIZABLE)}, "
                         f"got {' '.join(cfg.mitigators)}")
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


class StackedSpectral:
    r"""The decoupled spectral step of :class:`specopt.SpectralAdam` (defaults k = 2, one power iteration per step,
    ``init_iterations`` from the deterministic start) on stacked parameters: ``prepare`` computes ∇R at the
    pre-step weights of every seed, ``apply`` takes :math:`\theta_s \leftarrow \theta_s - \eta\lambda\nabla R(\theta_s)`
    after Adam's step. Roles come from :func:`specopt.named_roles` of one seed's model."""

    def __init__(self, model: nn.Module, strength: float, lr: float, k: float = 2, power_iterations: int = 1,
                 init_iterations: int = specopt.optim.DEFAULT_INIT_ITERATIONS) -> None:
        SF.check_hyperparameters(strength, k, power_iterations)
        self.roles = {n: r for n, _, r in specopt.named_roles(model) if r != "none"}
        self.strength, self.lr, self.k = strength, lr, k
        self.iterations, self.init_iterations = power_iterations, init_iterations
        self.u: dict[str, Tensor] = {}
        self.v: dict[str, Tensor] = {}

    @torch.no_grad()
    def prepare(self, params: dict[str, Tensor]) -> dict[str, tuple[Tensor, ...]]:
        """Per seed: (u, v, σ̂) of each matrix, (x_t, c) of each bias or scale (∇R = c·x_t), at the pre-step weights."""
        pending: dict[str, tuple[Tensor, ...]] = {}
        for name, role in self.roles.items():
            p = params[name].detach()
            if role == "matrix":
                w = p.reshape(p.shape[0], p.shape[1], -1).float()  # (S, out, in)
                if name in self.u:
                    u, v, n = self.u[name], self.v[name], self.iterations
                else:
                    u0, v0 = SF.initial_vectors(w.shape[1], w.shape[2], w.device)
                    u, v = u0.expand(w.shape[0], -1), v0.expand(w.shape[0], -1)
                    n = max(self.iterations, self.init_iterations)
                u, v, sigma, _ = SF.power_iteration(w, u, v, n)  # batched over the seed dimension
                pending[name] = (u, v, sigma)
            elif role == "bias":
                x = p.float().clone()
                norm2 = x.flatten(1).pow(2).sum(1)
                pending[name] = (x, 2.0 * self.k * norm2.pow(self.k - 1))
            else:
                pending[name] = (p.float() - 1.0, torch.full((p.shape[0],), 2.0, device=p.device))
        return pending

    @torch.no_grad()
    def apply(self, params: dict[str, Tensor], pending: dict[str, tuple[Tensor, ...]]) -> None:
        """SpectralAdam's truncated step per seed (:func:`specopt.functional.matrix_step`, ``vector_fraction``)."""
        lr_strength = self.lr * self.strength
        for name, values in pending.items():
            p = params[name]
            if len(values) == 3:
                u, v, sigma = values
                self.u[name], self.v[name] = u, v
                alpha = SF.matrix_step(sigma, self.k, lr_strength)
                p.sub_((alpha[:, None, None] * u[:, :, None] * v[:, None, :]).reshape(p.shape))
            else:
                x, coefficient = values
                fraction = SF.vector_fraction(coefficient, lr_strength)
                p.sub_(fraction.reshape(-1, *([1] * (x.dim() - 1))) * x)

    def state_dict(self) -> dict[str, Any]:
        return {"u": dict(self.u), "v": dict(self.v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.u, self.v = dict(state["u"]), dict(state["v"])


class StackedSeeds:
    """S models of one architecture trained as one; ``runs[s]`` is seed s's sequential-runner ``Run``."""

    def __init__(self, cfg: RunConfig, ds, seeds: list[int]) -> None:
        check_vectorizable(cfg)
        self.cfg, self.ds, self.seeds = cfg, ds, list(seeds)
        self.mitigator = cfg.mitigators[0]
        self.runs = [Run(cfg, ds, self.mitigator, seed) for seed in self.seeds]  # the sequential runner's init
        params, buffers = stack_module_state([r.model for r in self.runs])
        if buffers:
            raise ValueError("--vectorize-seeds needs a model without buffers (the mlp)")
        self.params: dict[str, Tensor] = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        self.base = copy.deepcopy(self.runs[0].model).to("meta")
        self.optimizer = torch.optim.Adam(self.params.values(), lr=cfg.lr)
        self.spectral: StackedSpectral | None = None
        if self.mitigator == "spectral":
            strength = DEFAULT_STRENGTHS["spectral"] if cfg.strength is None else cfg.strength
            self.spectral = StackedSpectral(self.runs[0].model, strength, cfg.lr)
        # l2, l2-init, wasserstein: each seed's own mitigator (anchors from its own θ0) acts on its slice
        self.regularizers = [r.mit for r in self.runs if isinstance(r.mit, ParameterRegularizer)]
        self.step, self.next_task = 0, 0

        def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(self.base, p, (x,))

        self.forward = vmap(forward)

    def penalty(self) -> Tensor | None:
        r""":math:`\sum_s \lambda \sum_p r_p(\Theta_{p,s})`, each seed's coupled term on its own slice (None: no
        coupled regularizer)."""
        terms = [reg.strength * torch.stack([reg.term(n, self.params[n][s]) for n in reg.named_params]).sum()
                 for s, reg in enumerate(self.regularizers) if not reg.decoupled and reg.strength != 0.0]
        return torch.stack(terms).sum() if terms else None

    @torch.no_grad()
    def decoupled_step(self) -> None:
        r"""The decoupled form: :math:`\Theta_{p,s} \leftarrow \Theta_{p,s} - \eta\lambda\nabla r_p(\Theta_{p,s})`."""
        for s, reg in enumerate(self.regularizers):
            if reg.decoupled and reg.strength != 0.0:
                for n in reg.named_params:
                    self.params[n][s].sub_(reg.direction(n, self.params[n][s]), alpha=reg.lr * reg.strength)

    def state_dict(self) -> dict[str, Any]:
        return {"params": {k: v.detach().clone() for k, v in self.params.items()},
                "mitigators": [r.mit.state_dict() for r in self.runs],
                "optimizer": self.optimizer.state_dict(), "step": self.step, "next_task": self.next_task,
                "prev_reps": [r.prev_rep for r in self.runs], "init_params": [r.init_params for r in self.runs],
                "spectral": None if self.spectral is None else self.spectral.state_dict()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in s["params"].items():
                self.params[k].copy_(v)
        self.optimizer.load_state_dict(s["optimizer"])
        for run, state in zip(self.runs, s.get("mitigators", [])):  # absent in checkpoints of before 2026-11-25
            run.mit.load_state_dict(state)
        if self.spectral is not None:
            self.spectral.load_state_dict(s["spectral"])
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
                penalty = self.penalty()
                if penalty is not None:
                    loss = loss + penalty
                loss.backward()
                pending = None if self.spectral is None else self.spectral.prepare(self.params)
                self.optimizer.step()
                if pending is not None:
                    self.spectral.apply(self.params, pending)
                self.decoupled_step()
                self.step += 1
            if progress is not None:
                progress.set_postfix_str(f"{self.mitigator} seeds {self.seeds} (vectorized) task {t + 1} "
                                         f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item() / len(self.seeds):.3f}",
                                         refresh=False)
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
    """Like :func:`continual.runner.run_experiment` for one mitigator of :data:`VECTORIZABLE`, all seeds at once.

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
    saved = open_checkpoint(out, config, resume)
    if saved is not None:
        stacked.load_state_dict(saved["stacked"])
        per_seed = saved["per_seed"]
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
        bar.set_description(f"{cfg.mitigators[0]} ×{len(cfg.seeds)} seeds t{t + 1} acc {sum(accs) / len(accs):.3f}")
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
