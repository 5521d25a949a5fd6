"""Issue #31: ``SpectralAdam(one_pass=True, fused_spectral=True)``'s eager step on a CPU — the fused order's whole
step as one C++ loop per tensor (:mod:`specopt.native`) — against Adam compiled by ``specopt.compile_step``.

In the fused order the loop reads p, g, m and v once and writes p, m and v once: Adam's update, the rank-one
correction −α u_t v_{t−1}ᵀ and, accumulated while W is written, the mat-vecs the next step starts from (s = W v_t, a
row sum; r = Wᵀ u_t, a column sum). Inductor did not make this loop (benchmarks/one_pass_prototype.py: with both
reductions in the write it splits the step into a 1-D loop, a 2-D loop and a column reduction over a temporary);
a plain C++ loop, vectorized by the compiler, is one.

Contenders, each on its own copy of the parameter set, alternating in rounds, one thread, only the optimizer step
timed (gradients filled once):

* ``Adam``: ``torch.optim.Adam`` compiled by ``specopt.compile_step`` (the baseline).
* ``SpectralAdam(one_pass=True)``, compiled: the Inductor one pass.
* ``SpectralAdam(fused_spectral=True)``, compiled: the fused order's two halves.
* ``product, eager``: ``SpectralAdam(one_pass=True, fused_spectral=True)``'s eager step (after its first, its steady
  state: one C++ call per group behind a check of the groups, versions, state and gradients).
* ``the loop alone``: the same optimizer's steady-state call without that check (what the check costs).

Before timing, the eager step is checked against ``SpectralAdam(fused_spectral=True)``'s two halves from the same
weights and gradients over four steps (the largest absolute parameter difference is printed: float32 rounding).

    python benchmarks/one_pass_native.py [--sets mlp,resnet18] [--rounds 15] [--threads 1] [--tiny]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

import specopt
from specopt import native

from one_pass_prototype import (  # noqa: E402  (benchmarks/ is the script's folder)
    arguments, compiled_adam, races, time_runners, with_gradients)

LR = 1e-3


def fused(model: nn.Module, one_pass: bool) -> specopt.SpectralAdam:
    return specopt.SpectralAdam(specopt.param_groups(model), lr=LR, fused_spectral=True, one_pass=one_pass)


def agreement(build: Callable[[], nn.Module]) -> float:
    """The largest absolute parameter difference between the eager one pass and the two halves (fused order) after
    four steps from the same weights and gradients."""
    torch.manual_seed(0)
    a = build()
    b = build()
    b.load_state_dict(a.state_dict())
    oa, ob = fused(a, False), fused(b, True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.grad = torch.randn(pa.shape, generator=gen) * 1e-3
            pb.grad = pa.grad.clone()
        oa.step()
        ob.step()
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def loop_alone(model: nn.Module) -> Callable[[], None]:
    """The steady-state call of a one-pass optimizer of ``model``, without :meth:`SteadyPlan.valid`'s check."""
    opt = fused(model, True)
    opt.step()
    opt.step()
    steady = opt._steady
    if steady is None:
        raise SystemExit("one_pass_native: the optimizer did not reach the steady state (see specopt.native.plan)")
    grads = [[p.grad for p in params] for _, params, _, _, _ in steady.groups]

    def step() -> None:
        steady.grads = grads
        with torch.no_grad():
            steady.step()

    return step


def race(name: str, build: Callable[[], nn.Module], steps: int, rounds: int) -> None:
    runners: list[tuple[str, Callable[[], None]]] = []
    for label in ("Adam", "SpectralAdam(one_pass=True)", "SpectralAdam(fused_spectral=True)", "product, eager",
                  "the loop alone"):
        model = with_gradients(build)
        if label == "Adam":
            runners.append((label, compiled_adam(model)))
        elif label == "SpectralAdam(one_pass=True)":
            runners.append((label, specopt.compile_step(specopt.SpectralAdam(specopt.param_groups(model), lr=LR,
                                                                             one_pass=True))))
        elif label == "SpectralAdam(fused_spectral=True)":
            runners.append((label, specopt.compile_step(fused(model, False))))
        elif label == "product, eager":
            runners.append((label, fused(model, True).step))
        else:
            runners.append((label, loop_alone(model)))
    time_runners(name, f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", runners, steps, rounds)


def main() -> None:
    args, sets, chosen = arguments("one_pass_native", __doc__)
    t0 = time.perf_counter()
    if native.extension() is None:
        raise SystemExit("one_pass_native: specopt.native's loop could not be built here (see the warning above)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds; the loop built or loaded in "
          f"{time.perf_counter() - t0:.1f} s\n")
    for name in chosen:
        print(f"{name}: eager one pass vs the two halves (fused order), four steps from the same state, largest "
              f"|Δθ| = {agreement(sets[name]):.2e}")
    races(race, args, sets, chosen)


if __name__ == "__main__":
    main()
