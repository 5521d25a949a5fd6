"""Runner edge cases found by smoke runs: one-example batches with batch norm, class-incremental probes."""

from __future__ import annotations

import math

import torch

from continual.data import load_dataset
from continual.runner import Run, RunConfig
from continual.streams import make_task


def test_resnet_skips_a_trailing_one_example_batch_instead_of_crashing_batch_norm():
    ds = load_dataset("digits", train_size=64)
    task = make_task(ds, "class-incremental", 0, 0)
    n = task.x_train.shape[0]  # 33 images of classes 0-4 among the first 64 digits
    cfg = RunConfig(model="resnet18", mitigators=["none"], epochs=1, batch_size=n - 1, diagnostics=False,
                    nonstationarity="class-incremental")
    run = Run(cfg, ds, "none", 0)
    row = run.train_task(task)
    assert row["step"] == 1 and 0 <= row["train_accuracy"] <= 1


def test_class_incremental_diagnostics_use_one_probe_for_every_task():
    """Task data grow with the task; the representation change must still compare the same images."""
    ds = load_dataset("digits", train_size=64)
    cfg = RunConfig(nonstationarity="class-incremental", mitigators=["none"], epochs=1, batch_size=32, width=16,
                    probe_size=64)
    run = Run(cfg, ds, "none", 0)
    rows = [run.train_task(make_task(ds, "class-incremental", 0, t)) for t in range(2)]
    assert math.isnan(rows[0]["representation_change"]) and rows[1]["representation_change"] > 0
    assert run.prev_rep.shape[0] == int((ds.y_train < 5).sum())
    torch.testing.assert_close(run.prev_rep, run.model.features(ds.x_train[ds.y_train < 5]).detach())


def test_pixel_permutation_representation_change_compares_the_same_images():
    """Each task permutes the pixels anew; a model that did not change must show no representation change."""
    ds = load_dataset("digits", train_size=64)
    cfg = RunConfig(nonstationarity="pixel-permutation", mitigators=["none"], epochs=1, batch_size=32, width=16,
                    probe_size=64)
    run = Run(cfg, ds, "none", 0)
    first, second = (make_task(ds, "pixel-permutation", 0, t) for t in range(2))
    assert not torch.equal(first.x_train, second.x_train)
    run.measure(first)
    row = run.measure(second)  # no training in between: the same network on the same images
    assert row["representation_change"] == 0.0
    torch.testing.assert_close(run.prev_rep, run.model.eval().features(first.x_train).detach())
