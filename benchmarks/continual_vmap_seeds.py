"""Several seeds in one process (``continual.vmap_seeds``, stacked parameters + vmap) vs the sequential runner.

Both run the same mitigator (one of ``VECTORIZABLE``: none, spectral, l2, l2-init, wasserstein) on the same
settings (diagnostics off, so training dominates) and must produce the same rows; prints wall time, seeds·steps
per second, the speed-up and the largest row difference. Also times one seed alone (the runner with the first of
``--seeds``) and prints the issue's ratio: the wall time of the S vectorized seeds over the wall time of one seed
(target for S = 10: ≤ 4×; S× means no gain over running the seeds one after another).

    python benchmarks/continual_vmap_seeds.py [--threads 1] [--seeds 0 1 2 3] [--tasks 2] [--epochs 5]
                                              [--mitigator spectral]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import torch

import continual.runner
import continual.vmap_seeds
from continual.runner import RunConfig, run_experiment
from continual.vmap_seeds import VECTORIZABLE
from specopt.experiment import max_row_difference

# Read the dataset's files once: the timings are of training, not of loading (the same cost in every run,
# which would flatter the ratios to one seed).
continual.runner.load_dataset = continual.vmap_seeds.load_dataset = functools.cache(continual.runner.load_dataset)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--mitigator", choices=VECTORIZABLE, default="none")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = dict(dataset=args.dataset, nonstationarity="random-labels", model="mlp", mitigators=[args.mitigator],
                    seeds=args.seeds, tasks=args.tasks, epochs=args.epochs, batch_size=args.batch_size,
                    width=args.width, diagnostics=False)
    with tempfile.TemporaryDirectory() as tmp:
        run_experiment(RunConfig(out=str(Path(tmp, "warm")), **{**settings, "seeds": [0], "tasks": 1}),
                       progress=False)
        t = time.perf_counter()
        run_experiment(RunConfig(out=str(Path(tmp, "one")), **{**settings, "seeds": args.seeds[:1]}), progress=False)
        one = time.perf_counter() - t
        t0 = time.perf_counter()
        seq = run_experiment(RunConfig(out=str(Path(tmp, "seq")), **settings), progress=False)
        t1 = time.perf_counter()
        vec = run_experiment(RunConfig(out=str(Path(tmp, "vec")), vectorize_seeds=True, **settings), progress=False)
        t2 = time.perf_counter()
    steps = int(seq[-1]["step"]) * len(args.seeds)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dataset}, {args.mitigator}, "
          f"MLP 4×{args.width}, batch {args.batch_size}, {len(args.seeds)} seeds × {args.tasks} tasks × "
          f"{args.epochs} epochs")
    print("| loop | wall s | seed-steps/s |")
    print("|---|---|---|")
    print(f"| one seed (runner) | {one:.2f} | {steps / len(args.seeds) / one:.0f} |")
    print(f"| sequential runner | {t1 - t0:.2f} | {steps / (t1 - t0):.0f} |")
    print(f"| vectorized seeds | {t2 - t1:.2f} | {steps / (t2 - t1):.0f} |")
    print(f"speed-up {(t1 - t0) / (t2 - t1):.2f}×; largest row difference: train_accuracy "
          f"{max_row_difference(seq, vec, 'train_accuracy'):.2g}, train_loss "
          f"{max_row_difference(seq, vec, 'train_loss'):.2g}")
    print(f"{len(args.seeds)} vectorized seeds take {(t2 - t1) / one:.2f}× the wall time of one seed "
          f"(sequential: {(t1 - t0) / one:.2f}×)")


if __name__ == "__main__":
    main()
