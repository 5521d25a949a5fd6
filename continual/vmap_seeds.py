r"""Several seeds of one run in a single process: stacked parameters + ``torch.func.vmap``.

For mitigator ``none`` the S seeds of a run differ only in their initialisation, their task stream and their batch
order, so their S models can train as one: every parameter θ of shape (…) becomes a stacked tensor Θ of shape
(S, …), the forward pass is ``vmap(functional_call)`` over the seed axis, and the loss is

    L(Θ) = Σ_s CE(f(x_s; Θ_s), y_s)          (each term a mean over seed s's batch)

whose gradient with respect to Θ_s is exactly seed s's own gradient. Adam is element-wise, so ``torch.optim.Adam``
on the stacked tensors performs each seed's Adam step (:class:`specopt.StackedSpectralAdam`, strength 0). Everything else is the sequential runner's: the same
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

``mitigator == "spectral"`` is supported too: :class:`specopt.StackedSpectralAdam` is, slice by slice,
SpectralAdam — Adam followed by the decoupled spectral step on each seed's slice on its own (a warm-started power
iteration per seed, batched over the seed dimension, then the truncated matrix, bias and scale steps). The MLP
only (no buffers); the other mitigators (resets and noise from
their own generators, EWC's running Fisher, the coupled spectral penalty's per-module power iteration) would each
need a stacked version.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

import specopt

from .config import RunConfig
from .data import Dataset
from .learner import Run, batch_generator
from .mitigators import ParameterRegularizer
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


class StackedSeeds:
    """S models of one architecture trained as one; ``runs[s]`` is seed s's sequential-runner ``Run``. A
    :class:`~continual.learner.Learner`, as one ``Run`` is: the run loop trains either the same way."""

    def __init__(self, cfg: RunConfig, ds: Dataset, seeds: list[int]) -> None:
        check_vectorizable(cfg)
        self.cfg, self.ds, self.seeds = cfg, ds, list(seeds)
        self.mitigator = cfg.mitigators[0]
        self.key, self.label = (self.mitigator, tuple(self.seeds)), f"×{len(self.seeds)} seeds"
        self.runs = [Run(cfg, ds, self.mitigator, seed) for seed in self.seeds]  # the sequential runner's init
        params, buffers = stack_module_state([r.model for r in self.runs])
        if buffers:
            raise ValueError("--vectorize-seeds needs a model without buffers (the mlp)")
        self.params: dict[str, Tensor] = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        self.base = copy.deepcopy(self.runs[0].model).to("meta")
        # Adam per seed, and for spectral SpectralAdam's decoupled step per seed (specopt.StackedSpectralAdam)
        spectral = self.mitigator == "spectral"
        model, form = self.runs[0].model, cfg.options.spectral
        roles = {name: role for name, _, role in specopt.named_roles(model)}
        if not form.heads:  # the output layer left alone, as SpectralAdam over param_groups(model, head=0)
            head = specopt.output_layer(model)
            roles.update({name: "none" for name in roles if name.rpartition(".")[0] == head})
        strength = self.runs[0].strength if spectral else 0.0  # every Run's: cfg.strength or spectral's default
        self.optimizer = specopt.StackedSpectralAdam(
            list(self.params.values()), [roles[name] if spectral else "none" for name in self.params], lr=cfg.lr,
            strength=strength, k=form.k, pull=form.pull, precondition=form.precondition)
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
                "prev_reps": [r.prev_rep for r in self.runs], "init_params": [r.init_params for r in self.runs]}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in s["params"].items():
                self.params[k].copy_(v)
        self.optimizer.load_state_dict(s["optimizer"])
        for run, state in zip(self.runs, s.get("mitigators", [])):  # absent in older checkpoints
            run.mit.load_state_dict(state)
        self.step, self.next_task = s["step"], s["next_task"]
        for run, rep, init in zip(self.runs, s["prev_reps"], s["init_params"]):
            run.prev_rep, run.init_params = rep, init

    def train(self, t: int, progress: Any = None) -> list[dict[str, Any]]:
        return self.train_task(t, progress)

    def train_task(self, t: int, progress: Any = None) -> list[dict[str, Any]]:
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
                for p in self.params.values():
                    p.grad = None
                logits = self.forward(self.params, x)  # (S, B, classes)
                # Σ_s mean_b CE: the mean over all S·B terms, times S.
                loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()) * len(self.seeds)
                penalty = self.penalty()
                if penalty is not None:
                    loss = loss + penalty
                loss.backward()
                self.optimizer.step()
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
