"""Non-stationarities: seeded, reproducible task streams over one dataset.

Task ``t`` of a stream is a function of (seed, t) only, so any task can be rebuilt after a resume.

* ``random-labels``: every task draws new uniformly random labels for the same training images.
* ``pixel-permutation``: every task applies a new fixed permutation to the pixels (the same for all images).
* ``label-flip``: every task applies a new permutation of the class ids.
* ``class-incremental``: task t trains on the images of the first 5 + 5·t classes (all classes at most).

The learner is task-agnostic; only the runner knows boundaries, to evaluate at each task end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .data import Dataset

NONSTATIONARITIES = ("random-labels", "pixel-permutation", "label-flip", "class-incremental")


@dataclass
class Task:
    index: int
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor | None
    y_test: Tensor | None


def _generator(seed: int, task: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * (seed + 1) + task)


def make_task(ds: Dataset, nonstationarity: str, seed: int, task: int) -> Task:
    """Task ``task`` (0-based) of the stream ``nonstationarity`` seeded by ``seed``; tensors on ``ds``'s device."""
    if nonstationarity not in NONSTATIONARITIES:
        raise ValueError(f"unknown non-stationarity {nonstationarity!r}; valid: {', '.join(NONSTATIONARITIES)}")
    g = _generator(seed, task)
    x, y, xt, yt = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    device = x.device
    if nonstationarity == "random-labels":
        y = torch.randint(0, ds.num_classes, (x.shape[0],), generator=g).to(device)
        xt = yt = None  # random labels have no test set
    elif nonstationarity == "pixel-permutation":
        perm = torch.randperm(x[0].numel(), generator=g).to(device)
        x = x.flatten(1)[:, perm].reshape(x.shape)
        if xt is not None:
            xt = xt.flatten(1)[:, perm].reshape(xt.shape)
    elif nonstationarity == "label-flip":
        mapping = torch.randperm(ds.num_classes, generator=g).to(device)
        y = mapping[y]
        if yt is not None:
            yt = mapping[yt]
    else:  # class-incremental
        classes = min(5 + 5 * task, ds.num_classes)
        keep = y < classes
        x, y = x[keep], y[keep]
        if xt is not None:
            keep_t = yt < classes
            xt, yt = xt[keep_t], yt[keep_t]
    return Task(task, x, y, xt, yt)
