"""Issue #31's prototype: Adam and the whole spectral step written as one pass over each tensor, compiled, against
Adam compiled the same way — what a fused ``SpectralAdam`` step could cost on a CPU before it is built into the
product.

Contenders, each on its own copy of the parameter set, alternating in rounds (machine noise hits them alike), one
thread, only the optimizer step timed (gradients filled once):

* ``Adam``: ``torch.optim.Adam`` compiled by ``specopt.compile_step`` (the baseline).
* ``SpectralAdam``: the product today (``specopt.param_groups(model)``: matrices, biases and scales by name, as in
  optimizer_step.py), compiled by ``specopt.compile_step``.
* ``one pass``: the prototype — per tensor, Adam's moments and update, the rank-one correction −α u vᵀ of a matrix,
  the pull of a bias toward 0 or of a scale toward 1, all in one out-of-place expression written back once; the
  correction's factors are indexed from a flat ``arange`` (``u[i // n]·v[i % n]``) so Inductor keeps one 1-D loop
  (a broadcast ``u[:, None] * v[None, :]`` splits it into a 1-D and a 2-D loop with a full-size buffer between).
  The power iteration (plain order: Wᵀu, then W v, on the pre-step weights) runs before it, as in the product.
* ``one pass, fused order``: the estimate from the mat-vecs the previous step took on the weights it wrote
  (:mod:`specopt.kernel`'s fused order: σ̂ = ‖W v‖, the correction with the previous v), W·v taken in the loop that
  writes W, Wᵀu by one more read of it.
* ``one pass, no mat-vecs``: the same with u, v and σ̂ kept from the previous step — the floor of the fused write.

Before timing, one eager and two compiled steps of the prototype are checked against ``SpectralAdam`` (with
``fused_spectral=True`` for the fused order) from the same state (the largest absolute difference of any parameter
is printed; it must be at float32 rounding).

    python benchmarks/one_pass_prototype.py [--sets mlp,resnet18] [--rounds 15] [--threads 1] [--tiny]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import specopt
from specopt import kernel as K

from optimizer_step import mlp, paired_ratio, resnet18, tiny_convnet  # noqa: E402  (benchmarks/ is the script's folder)

LR, BETAS, EPS, STRENGTH, EXPONENT = 1e-3, (0.9, 0.999), 1e-8, specopt.DEFAULT_STRENGTH, 2
OPTIONS = {"realize_opcount_threshold": 4}  # specopt.COMPILE_OPTIONS: scalars computed once, not per element


class OnePass:
    """The prototype optimizer: its state (Adam's moments and step, a matrix's u and v) and its step."""

    def __init__(self, model: nn.Module, matvecs: bool = True, fused_order: bool = False) -> None:
        self.params, self.roles, self.states = [], [], []
        for _, p, role in specopt.named_roles(model):
            self.params.append(p)
            self.roles.append(role)
            st = {"m": torch.zeros_like(p), "v": torch.zeros_like(p), "step": torch.zeros(())}
            if role == "matrix":
                st["u"], st["vv"] = K.initial_vectors(p.shape[0], p[0].numel(), p.device)
                st["sigma"] = torch.zeros(())
                if fused_order:  # the previous step's mat-vecs, s = W v and r = Wᵀ u (specopt.kernel's fused order)
                    st["s"], st["r"] = torch.zeros(p.shape[0]), torch.zeros(p[0].numel())
            self.states.append(st)
        self.matvecs, self.fused_order = matvecs, fused_order
        self.compiled = torch.compile(self._step, fullgraph=True, options=OPTIONS)
        self.first = True

    def step(self) -> None:
        with torch.no_grad():
            if self.first:  # as compile_step: the first step (16 power iterations) runs eagerly
                self.first = False
                self._step(self.params, self.states, specopt.optim.DEFAULT_INIT_ITERATIONS, True)
            else:
                self.compiled(self.params, self.states, 1, self.matvecs)

    def _step(self, params: list[torch.Tensor], states: list[dict], iterations: int, matvecs: bool) -> None:
        b1, b2 = BETAS
        for p, role, st in zip(params, self.roles, states):
            g = p.grad
            st["step"] += 1
            step_size = LR / (1 - b1 ** st["step"])
            c2 = (1 - b2 ** st["step"]).sqrt()
            m = torch.lerp(st["m"], g, 1 - b1)
            v = st["v"] * b2 + g * g * (1 - b2)
            new = p - step_size * m / (v.sqrt() / c2 + EPS)
            if role == "matrix":
                rows, cols = p.shape[0], p[0].numel()
                w = p.view(rows, cols)
                u, vv = st["u"], st["vv"]
                if self.fused_order and iterations == 1:  # estimate from the mat-vecs the last step took
                    sigma = st["s"].norm()
                    u_t, v_t = st["s"] / sigma.clamp_min(1e-30), st["r"] / st["r"].norm().clamp_min(1e-30)
                    alpha = K.matrix_step(sigma, EXPONENT, LR * STRENGTH)
                    i = torch.arange(rows * cols, device=p.device)
                    new = new - ((alpha * u_t)[i // cols] * vv[i % cols]).view(p.shape)  # with v_{t-1}: W v = σ̂ u
                    st["s"].copy_((new.view(rows, cols) * v_t).sum(1))  # W·v in the loop that writes W
                    p.copy_(new)
                    st["r"].copy_((u_t.unsqueeze(0) @ w).squeeze(0))  # Wᵀu: one more read of the written W
                    st["u"].copy_(u_t)
                    st["vv"].copy_(v_t)
                    st["sigma"].copy_(sigma)
                    st["m"].copy_(m)
                    st["v"].copy_(v)
                    continue
                if matvecs:
                    for _ in range(iterations):  # the plain order: on the pre-step weights
                        t = (u.unsqueeze(0) @ w).squeeze(0)
                        vv = t / t.norm().clamp_min(1e-30)
                        s = (w @ vv.unsqueeze(1)).squeeze(1)
                        sigma = s.norm()
                        u = s / sigma.clamp_min(1e-30)
                    st["u"].copy_(u)
                    st["vv"].copy_(vv)
                    st["sigma"].copy_(sigma)
                alpha = K.matrix_step(st["sigma"], EXPONENT, LR * STRENGTH)
                i = torch.arange(rows * cols, device=p.device)
                new = new - ((alpha * u)[i // cols] * vv[i % cols]).view(p.shape)
            elif role in ("bias", "scale"):
                x = p if role == "bias" else p - 1.0
                c = (2.0 * EXPONENT) * p.square().sum().pow(EXPONENT - 1) if role == "bias" else torch.tensor(2.0)
                new = new - K.vector_fraction(c, LR * STRENGTH) * x
            p.copy_(new)
            st["m"].copy_(m)
            st["v"].copy_(v)
            if role == "matrix" and self.fused_order:  # the first (plain) step records the fused order's mat-vecs
                w = p.view(p.shape[0], -1)
                st["s"].copy_(w @ st["vv"])
                st["r"].copy_(w.t() @ st["u"])


def agreement(build: Callable[[], nn.Module], fused_order: bool = False) -> float:
    """The largest absolute parameter difference between the prototype and SpectralAdam (``fused_spectral`` for the
    fused order) after an eager and two compiled steps from the same weights and gradients."""
    torch.manual_seed(0)
    a = build()
    b = copy.deepcopy(a)
    for pa, pb in zip(a.parameters(), b.parameters()):
        pa.grad = torch.randn_like(pa) * 1e-3
        pb.grad = pa.grad.clone()
    ref = specopt.compile_step(specopt.SpectralAdam(specopt.param_groups(a), lr=LR, betas=BETAS, eps=EPS,
                                                    fused_spectral=fused_order))
    proto = OnePass(b, fused_order=fused_order)
    for _ in range(3):
        ref()
        proto.step()
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def race(name: str, build: Callable[[], nn.Module], steps: int, rounds: int) -> None:
    runners: list[tuple[str, Callable[[], None]]] = []
    for label in ("Adam", "SpectralAdam", "one pass", "one pass, fused order", "one pass, no mat-vecs"):
        model = with_gradients(build)
        if label == "Adam":
            runners.append((label, compiled_adam(model)))
        elif label == "SpectralAdam":
            runners.append((label, specopt.compile_step(specopt.SpectralAdam(specopt.param_groups(model), lr=LR))))
        else:
            runners.append((label, OnePass(model, matvecs=label != "one pass, no mat-vecs",
                                           fused_order=label == "one pass, fused order").step))
    time_runners(name, f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", runners, steps, rounds)


def with_gradients(build: Callable[[], nn.Module]) -> nn.Module:
    """A contender's own copy of the parameter set (the same initial weights for all), its gradients filled once."""
    torch.manual_seed(0)
    model = build()
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return model


def compiled_adam(model: nn.Module) -> Callable[[], None]:
    """The baseline: ``torch.optim.Adam`` (foreach) compiled by ``specopt.compile_step``."""
    return specopt.compile_step(torch.optim.Adam(model.parameters(), lr=LR, foreach=True))


def time_runners(name: str, size: str, runners: list[tuple[str, Callable[[], None]]], steps: int, rounds: int) -> None:
    """Time ``runners`` (label, step) alternating in rounds; one row each: median ms, the first three steps' wall
    time, the ratio to the first runner (compiled Adam): of the medians, and per round (mean ± s.e.)."""
    first = []
    for _, run in runners:
        t0 = time.perf_counter()
        for _ in range(3):
            run()
        first.append(time.perf_counter() - t0)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for t, (_, run) in zip(times, runners):
            t0 = time.perf_counter()
            for _ in range(steps):
                run()
            t.append((time.perf_counter() - t0) / steps)
    medians = [statistics.median(t) for t in times]
    for (label, _), t, med, f in zip(runners, times, medians, first):
        print(f"| {name} | {size} | {label} | {med * 1e3:.3f} | {f:.2f} | {med / medians[0]:.2f}× | "
              f"{paired_ratio(t, times[0])} |", flush=True)


def arguments(prog: str, doc: str) -> tuple[argparse.Namespace, dict[str, Callable[[], nn.Module]], list[str]]:
    """(the command line of a one-pass benchmark, its parameter sets by name, the chosen ones); sets the threads."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--sets", default="mlp,resnet18", help="parameter sets, comma-separated: mlp, resnet18")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="tiny models (the tests' rehearsal)")
    args = p.parse_args()
    sets = {"mlp": (lambda: mlp(16, 32)) if args.tiny else mlp,
            "resnet18": tiny_convnet if args.tiny else resnet18}
    chosen = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in chosen if s not in sets]
    if bad or not chosen:
        raise SystemExit(f"{prog}: unknown set {bad[0] if bad else '(none)'!r}; valid: mlp, resnet18")
    torch.set_num_threads(args.threads)
    return args, sets, chosen


def main() -> None:
    args, sets, chosen = arguments("one_pass_prototype", __doc__)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds\n")
    for name in chosen:
        for fused_order in (False, True):
            print(f"{name}: prototype vs SpectralAdam{'(fused_spectral=True)' if fused_order else ''} after an eager "
                  f"and two compiled steps, largest |Δθ| = {agreement(sets[name], fused_order):.2e}")
    races(race, args, sets, chosen)


def races(race: Callable, args: argparse.Namespace, sets: dict[str, Callable[[], nn.Module]],
          chosen: list[str]) -> None:
    """The timing table of a one-pass benchmark: its header, then ``race`` of every chosen set (fewer steps and
    rounds with ``--tiny``)."""
    print("\n| set | parameters | step | ms (median) | first 3 steps (s) | vs compiled Adam (medians) | per round "
          "(mean ± s.e.) |")
    print("|---|---|---|---|---|---|---|")
    for name in chosen:
        steps = 2 if args.tiny else (20 if name == "mlp" else 3)
        race(name, sets[name], steps, 2 if args.tiny else args.rounds)


if __name__ == "__main__":
    main()
