"""The continual-learning run: data → task stream → model → mitigator/optimizer → metrics → results.

One run is (dataset, non-stationarity, model, mitigator, strength, seed); an experiment loops over mitigators and
seeds. Per step: ``zero_grad; loss = CE(model(x), y) [+ penalty]; backward; step; after_step``. At every task end
the runner records train accuracy/loss on the task's own training data (trainability), test accuracy where the
task has a test split, and the plasticity diagnostics, then checkpoints atomically; ``resume`` continues a killed
experiment and produces exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from specopt import experiment

from .data import Dataset, load_dataset
from .diagnostics import DIAGNOSTICS, task_end_diagnostics
from .mitigators import DEFAULT_STRENGTHS, MitigatorOptions, build_mitigator, model_activation
from .models import build_model
from .streams import Task, make_task

BASE_COLUMNS = ["dataset", "nonstationarity", "model", "layernorm", "width", "mitigator", "strength", "options",
                "lr", "batch_size", "train_size", "epochs", "seed", "task", "step", "train_accuracy", "train_loss",
                "test_accuracy"]  # everything that tells two runs apart, then the measurements
COLUMNS = BASE_COLUMNS + list(DIAGNOSTICS)


@dataclass
class RunConfig:
    dataset: str = "digits"  # the images (docs/continual.md: datasets)
    nonstationarity: str = "random-labels"  # how each task changes the data
    model: str = "mlp"  # the network
    mitigators: list[str] = field(default_factory=lambda: ["none", "spectral"])  # one run per mitigator and seed
    strength: float | None = None  # every mitigator's strength (None: each one's default, docs/mitigators.md)
    seeds: list[int] = field(default_factory=lambda: [0])  # one run per mitigator and seed
    tasks: int = 10  # tasks in the stream
    epochs: int = 10  # epochs per task
    batch_size: int = 128  # minibatch size
    train_size: int | None = None  # training images (None: all of the dataset's)
    lr: float = 1e-3  # Adam's learning rate
    layernorm: bool = False  # LayerNorm after each linear layer of the mlp
    width: int = 256  # the mlp's hidden width
    data_dir: str | None = None  # folder with the dataset's files (None: the default place, docs/continual.md)
    device: str = "cpu"  # torch device: cpu, cuda, cuda:1, ...
    diagnostics: bool = True  # the task-end plasticity diagnostics (rank, dead units, σ1, ...)
    probe_size: int = 256  # held-out inputs the diagnostics measure on
    options: MitigatorOptions = field(default_factory=MitigatorOptions)  # every mitigator's options (--spectral.k 4)
    out: str = "runs/default"  # output folder: results.csv, config.json, checkpoint.pt
    tensorboard: bool = False  # also log each task's row to TensorBoard under out/tensorboard (CSV stays the record)
    vectorize_seeds: bool = False  # train all seeds in one process (stacked parameters + vmap; continual.vmap_seeds)

    def __post_init__(self) -> None:
        # options may come as a mapping (config.json, or {"spectral": {"k": 4}} from Python): checked and completed
        self.options = MitigatorOptions.from_dict(self.options)

    def validate(self) -> None:
        """Raise a one-line ``ValueError`` for a setting no run can have (before anything is read or written):
        every number finite and in range, a device torch knows, a non-empty ``out``."""
        finite = isinstance(self.strength, (int, float)) and 0 <= self.strength < math.inf
        if self.strength is not None and not finite:
            raise ValueError(f"--strength must be a finite number >= 0, got {self.strength}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr}")
        for name in ("tasks", "epochs", "batch_size", "width", "probe_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"--train-size must be >= 1, got {self.train_size}")
        if not self.mitigators or not self.seeds:
            raise ValueError("give at least one --mitigator and one --seed")
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ValueError(f"--device {self.device!r} is not a torch device: use cpu, cuda, cuda:1, mps, ..."
                             ) from None
        if str(self.out).strip() == "":
            raise ValueError("--out is empty: give the run's folder (else it would write into the current directory)")


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


class Run:
    """One (mitigator, seed) run; its state is everything a checkpoint needs."""

    def __init__(self, cfg: RunConfig, ds: Dataset, mitigator: str, seed: int) -> None:
        self.cfg, self.ds, self.name, self.seed = cfg, ds, mitigator, seed
        self.strength = DEFAULT_STRENGTHS[mitigator] if cfg.strength is None else cfg.strength
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

    def train_task(self, task: Task, progress=None) -> dict[str, Any]:
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


# Where a run's files are, not what it computes: a run folder (or the data) may move between start and --resume.
LOCATION_SETTINGS = ("out", "data_dir", "tensorboard")  # settings that do not change a run's results


def changed_settings(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The settings of ``config`` that differ from ``saved`` (but :data:`LOCATION_SETTINGS`), sorted. A setting
    ``saved`` lacks (a run from before the field existed) counts as that field's default."""
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(RunConfig)}
    defaults["options"] = asdict(defaults["options"])
    # every option in full on both sides: a config.json from before an option existed lists fewer
    saved = {**saved, "options": asdict(MitigatorOptions.from_dict(saved.get("options")))}
    config = {**config, "options": asdict(MitigatorOptions.from_dict(config.get("options")))}
    return experiment.changed_settings(saved, config, defaults, ignore=LOCATION_SETTINGS)


CONVERT_COMMAND = "python -m continual convert-checkpoint --trust {out}"
"""How a user converts a checkpoint they trust that needs more than ``weights_only`` (docs/security.md)."""


def open_checkpoint(out: Path, config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The checkpoint in ``out`` when resuming (None if there is none yet), read under ``weights_only=True``
    (:func:`specopt.experiment.load_checkpoint`: nothing in the file runs; an unreadable or non-plain file is refused
    in one line). Refuses to resume with settings other than the checkpoint's (but :data:`LOCATION_SETTINGS`), and
    to start over a folder that already holds results."""
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        saved = experiment.load_checkpoint(ckpt_path, CONVERT_COMMAND.format(out=out))
        diff = changed_settings(saved["config"], config)
        if diff:
            raise ValueError(f"--resume with different settings than the checkpoint in {out} ({', '.join(diff)})")
        return saved
    if (out / "results.csv").exists() and not resume:
        raise ValueError(f"{out} already holds results: pass --resume to continue, or choose another --out")
    return None


def run_experiment(cfg: RunConfig, resume: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Run every (mitigator, seed) of ``cfg``, writing ``results.csv``, ``config.json`` and a checkpoint to
    ``cfg.out`` after every task; with ``resume``, continue from that checkpoint.

    The unit of work is a mitigator with a group of seeds: one seed at a time (a :class:`Run`), or with
    ``cfg.vectorize_seeds`` all seeds at once (:class:`continual.vmap_seeds.StackedSeeds`, stacked parameters and
    ``vmap``: the same rows up to floating-point reduction order). Either way the rows are written ordered by
    mitigator, seed and task."""
    cfg.validate()
    if cfg.vectorize_seeds:
        from .vmap_seeds import check_vectorizable

        check_vectorizable(cfg)
    with experiment.claim_folder(cfg.out, "continual run") as out:  # one run, one process per folder
        return _run_in(out, cfg, resume, progress)


def _run_in(out: Path, cfg: RunConfig, resume: bool, progress: bool) -> list[dict[str, Any]]:
    if cfg.vectorize_seeds:
        from .vmap_seeds import StackedSeeds
    ckpt_path = out / "checkpoint.pt"
    config = asdict(cfg)
    saved = open_checkpoint(out, config, resume)  # before anything is written: a refused file changes nothing
    ds = load_dataset(cfg.dataset, Path(cfg.data_dir) if cfg.data_dir else None, cfg.train_size).to(cfg.device)
    rows: list[dict[str, Any]] = saved["rows"] if saved is not None else []
    history = experiment.saved_provenance(out / "config.json") if saved is not None else []
    if len(rows) < len(cfg.mitigators) * len(cfg.seeds) * cfg.tasks:  # this process trains: record its code version
        history = experiment.add_version(history, cfg.device)
    experiment.write_json(out / "config.json", {**config, experiment.PROVENANCE: history})
    if saved is not None:  # the checkpoint's rows are the record: a damaged or missing results.csv is rebuilt
        experiment.write_csv(out / "results.csv", rows, COLUMNS)
    order = {key: i for i, key in enumerate((m, s) for m in cfg.mitigators for s in cfg.seeds)}
    bar = experiment.progress_bar(len(order) * cfg.tasks, len(rows), "task", progress)
    groups = ([(m, tuple(cfg.seeds)) for m in cfg.mitigators] if cfg.vectorize_seeds
              else [(m, (s,)) for m in cfg.mitigators for s in cfg.seeds])
    t0 = time.time()
    for mitigator, seeds in groups:
        done = min(sum(1 for r in rows if r["mitigator"] == mitigator and r["seed"] == s) for s in seeds)
        if done >= cfg.tasks:
            continue
        if cfg.vectorize_seeds:
            learner, key, name = StackedSeeds(cfg, ds, list(seeds)), (mitigator, seeds), f"×{len(seeds)} seeds"
            train = learner.train_task
        else:
            learner, key, name = Run(cfg, ds, mitigator, seeds[0]), (mitigator, seeds[0]), f"s{seeds[0]}"

            def train(t: int, bar, run: Run = learner) -> list[dict[str, Any]]:
                return [run.train_task(make_task(ds, cfg.nonstationarity, run.seed, t), bar)]
        if saved is not None and tuple(saved.get("current", ())) == key:
            learner.load_state_dict(saved["run"])
        elif done:
            raise RuntimeError(f"checkpoint in {out} lacks the state of ({mitigator}, seeds {list(seeds)})")
        boards = ({s: experiment.tensorboard_writer(out / "tensorboard" / f"{mitigator}-s{s}") for s in seeds}
                  if cfg.tensorboard else {})
        for t in range(learner.next_task, cfg.tasks):
            new = train(t, bar)
            rows = sorted(rows + new, key=lambda r: (order[(r["mitigator"], r["seed"])], r["task"]))
            for row in new if boards else ():
                experiment.log_scalars(boards[row["seed"]], row, t + 1)
            learner.next_task = t + 1
            state = {"config": config, "rows": rows, "current": key, "run": learner.state_dict()}
            experiment.save_checkpoint(ckpt_path, state)
            experiment.write_csv(out / "results.csv", rows, COLUMNS)
            bar.update(len(new))
            accuracy = sum(r["train_accuracy"] for r in new) / len(new)
            bar.set_description(f"{mitigator} {name} t{t + 1} acc {accuracy:.3f}")
    bar.close()
    if progress:
        print(f"{len(rows)} rows in {out / 'results.csv'} ({time.time() - t0:.0f} s)")
    return rows
