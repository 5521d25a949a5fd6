"""The learners: what the run loop (:mod:`continual.runner`) trains, task by task, behind one protocol.

A :class:`Learner` trains its seeds on task ``t`` and returns their task-end rows; its state is everything a checkpoint
needs. :class:`Run` is one (mitigator, seed); :class:`continual.vmap_seeds.StackedSeeds` is one mitigator with all
its seeds trained as one stacked model. Per step of a :class:`Run`: ``zero_grad; loss = CE(model(x), y) [+ penalty];
backward; step; after_step``. At every task end it records train accuracy/loss on the task's own training data
(trainability), test accuracy where the task has a test split, and the plasticity diagnostics.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .config import RunConfig
from .data import Dataset
from .diagnostics import DIAGNOSTICS, task_end_diagnostics
from .mitigators import build_mitigator, model_activation, strength_or_default
from .models import build_model
from .streams import Task, make_task

BASE_COLUMNS = ["dataset", "nonstationarity", "model", "layernorm", "width", "mitigator", "strength", "options",
                "lr", "batch_size", "train_size", "epochs", "seed", "task", "step", "train_accuracy", "train_loss",
                "test_accuracy"]  # everything that tells two runs apart, then the measurements
COLUMNS = BASE_COLUMNS + list(DIAGNOSTICS)


def options_text(options: dict[str, Any]) -> str:
    """A mitigator's options that differ from the defaults as a row cell: ``k=4 decoupled=True`` (sorted; empty for
    the defaults; numbers as ``%g``, so ``k=4`` whether it was given as 4 or 4.0)."""
    return " ".join(f"{k}={options[k]:g}" if isinstance(options[k], float) else f"{k}={options[k]}"
                    for k in sorted(options))


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 2048) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    correct, loss = 0.0, 0.0
    for i in range(0, x.shape[0], chunk):
        logits = model(x[i: i + chunk])
        correct += (logits.argmax(1) == y[i: i + chunk]).sum().item()
        loss += nn.functional.cross_entropy(logits, y[i: i + chunk], reduction="sum").item()
    model.train(was_training)
    return correct / x.shape[0], loss / x.shape[0]


def batch_generator(seed: int, task: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(7_919 * (seed + 1) + 104_729 * task + epoch)


class Learner(Protocol):
    """What the run loop trains: one seed (:class:`Run`) or several at once
    (:class:`continual.vmap_seeds.StackedSeeds`)."""

    key: tuple  # (mitigator, seed) or (mitigator, seeds): the checkpoint's "current", the learner it holds
    label: str  # for the progress bar: "s0", "×3 seeds"
    next_task: int  # the first task not trained yet (a resumed learner's comes from its state)

    def train(self, t: int, progress: Any = None) -> list[dict[str, Any]]:
        """Train every seed on task ``t``; their task-end rows, in seed order."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Run:
    """One (mitigator, seed) run; its state is everything a checkpoint needs."""

    def __init__(self, cfg: RunConfig, ds: Dataset, mitigator: str, seed: int) -> None:
        self.cfg, self.ds, self.name, self.seed = cfg, ds, mitigator, seed
        self.strength = strength_or_default(mitigator, cfg.strength)  # the mitigator's default when None
        self.key, self.label = (mitigator, seed), f"s{seed}"
        torch.manual_seed(seed)
        self.model = build_model(cfg.model, ds.in_shape, ds.num_classes, cfg.layernorm,
                                 model_activation(mitigator), width=cfg.width).to(cfg.device)
        self.init_params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.mit = build_mitigator(mitigator, self.model, cfg.lr, self.strength, seed=seed,
                                   **cfg.options.of(mitigator))
        self.step, self.next_task = 0, 0
        self.prev_rep: Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.mit.optimizer.state_dict(),
                "mitigator": self.mit.state_dict(), "step": self.step, "next_task": self.next_task,
                "prev_rep": self.prev_rep, "init_params": self.init_params}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.mit.optimizer.load_state_dict(s["optimizer"])
        self.mit.load_state_dict(s["mitigator"])
        self.step, self.next_task, self.prev_rep = s["step"], s["next_task"], s["prev_rep"]
        self.init_params = s["init_params"]

    def train(self, t: int, progress: Any = None) -> list[dict[str, Any]]:
        return [self.train_task(make_task(self.ds, self.cfg.nonstationarity, self.seed, t), progress)]

    def train_task(self, task: Task, progress: Any = None) -> dict[str, Any]:
        cfg, model, mit = self.cfg, self.model, self.mit
        opt = mit.optimizer
        model.train()
        n = task.x_train.shape[0]
        for epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=batch_generator(self.seed, task.index, epoch)).to(cfg.device)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i: i + cfg.batch_size]
                if idx.numel() == 1 and self.has_batchnorm:  # batch norm cannot train on one example: skip it
                    continue
                x, y = task.x_train[idx], task.y_train[idx]
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x), y)
                penalty = mit.penalty(model)
                if penalty is not None:
                    loss = loss + penalty
                loss.backward()
                opt.step()
                mit.after_step(self.step, x)
                self.step += 1
            if progress is not None:
                progress.set_postfix_str(f"{self.name} seed {self.seed} task {task.index + 1} epoch {epoch + 1}"
                                         f"/{cfg.epochs} loss {loss.item():.3f}", refresh=False)
                progress.refresh()
        return self.measure(task)

    def measure(self, task: Task) -> dict[str, Any]:
        cfg = self.cfg
        acc, loss = evaluate(self.model, task.x_train, task.y_train)
        test_acc = evaluate(self.model, task.x_test, task.y_test)[0] if task.x_test is not None and \
            task.x_test.shape[0] else math.nan
        row: dict[str, Any] = {"dataset": cfg.dataset, "nonstationarity": cfg.nonstationarity, "model": cfg.model,
                               "layernorm": int(cfg.layernorm), "width": cfg.width, "mitigator": self.name,
                               "strength": self.strength, "options": options_text(cfg.options.changed(self.name)),
                               "lr": cfg.lr, "batch_size": cfg.batch_size, "train_size": len(self.ds.y_train),
                               "epochs": cfg.epochs, "seed": self.seed, "task": task.index + 1, "step": self.step,
                               "train_accuracy": round(acc, 6), "train_loss": round(loss, 6),
                               "test_accuracy": round(test_acc, 6)}
        if cfg.diagnostics:
            probe = slice(0, cfg.probe_size)
            x_probe, y_probe = task.x_train[probe], task.y_train[probe]
            x_rep = None  # the representation change compares the same images at every task end
            if cfg.nonstationarity == "class-incremental":
                # Task t's data grow with t; the first task's images (its classes stay in every task) are the
                # same probe at every task end.
                first = make_task(self.ds, cfg.nonstationarity, self.seed, 0)
                x_probe, y_probe = first.x_train[probe], first.y_train[probe]
            elif cfg.nonstationarity == "pixel-permutation":
                # Every task permutes the pixels anew: gradients and dormant units on this task's images, the
                # representation on the first task's (the same images every time).
                x_rep = make_task(self.ds, cfg.nonstationarity, self.seed, 0).x_train[probe]
            diag, self.prev_rep = task_end_diagnostics(self.model, self.init_params, x_probe, y_probe,
                                                       self.prev_rep, representation_x=x_rep)
            row.update({k: round(float(v), 6) for k, v in diag.items()})
        else:
            row.update({k: math.nan for k in DIAGNOSTICS})
        return row
