"""The run's settings: :class:`RunConfig`, built once at the edge (the CLI, or a Python caller), validated once by
:func:`continual.run`, then handed down finished to everything below (the learners, the loop, a sweep's runs).

``strength`` stays as given (None: each mitigator's default); the one place that fills the default in is
:func:`continual.mitigators.strength_or_default`, where a run builds its mitigator.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from specopt import experiment

from .mitigators import MitigatorOptions


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
        every number finite and in range, a device torch knows (an empty ``out``: refused by
        :func:`specopt.experiment.claim_folder`)."""
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
        if self.vectorize_seeds and "spectral" in self.mitigators and self.options.spectral.fused_order:
            raise ValueError("--spectral.fused-order is not available with --vectorize-seeds (StackedSpectralAdam has "
                             "no fused order); run the seeds without --vectorize-seeds")
        experiment.check_device(self.device)  # an empty --out: experiment.claim_folder, before anything is written


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


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep (:func:`continual.sweep.plan`): one mitigator, strength and seed, its finished config."""

    name: str  # the run folder's name under the sweep's --out
    mitigator: str
    strength: float | None  # None: the mitigator has no strength
    seed: int
    config: RunConfig
