"""Issue #31's second prototype: the fused order's whole step — Adam's moments and update, the rank-one correction
and both mat-vecs — as one loop per tensor in C++ (``torch.utils.cpp_extension.load_inline``, built once and cached),
against Adam compiled by ``specopt.compile_step``.

The step is ``SpectralAdam(fused_spectral=True)``'s (docs/specopt.md, "The fused order"): from the mat-vecs the last
step stored, s = W v_{t−1} and r = Wᵀ u_{t−1}, σ̂ = ‖s‖, u_t = s/σ̂, v_t = r/‖r‖; then, in one pass over W,

    m ← β1 m + (1−β1) g,  v ← β2 v + (1−β2) g²,  W ← W − η m̂/(√v̂ + ε) − α(σ̂) u_t v_{t−1}ᵀ,
    s ← W v_t,  r ← Wᵀ u_t   (accumulated while W is written: a row sum and a column sum)

— p, g, m and v are read once and p, m, v written once: Adam's seven passes and nothing more. A bias or a scale
takes Adam's update and its pull (−f b or −f (γ − 1), f = min(1, ηλc), c from the pre-step weights) in the same way.
Inductor did not make this loop (benchmarks/one_pass_prototype.py: with both reductions in the write, it splits the
step into a 1-D loop, a 2-D loop and a column reduction over a temporary); a plain C loop, vectorized by the C++
compiler (``-O3 -march=native``, no errno from ``sqrt``), is one.

Before timing, the prototype is checked against ``SpectralAdam(fused_spectral=True)``: both take the same first
step (eager, the plain order that records the mat-vecs), then three steps each from the same state and gradients;
the largest absolute parameter difference is printed (float32 rounding). Contenders alternate in rounds, one thread,
only the optimizer step timed (gradients filled once). Plain Adam groups only (no weight decay, no amsgrad), float32
CPU tensors: a prototype, not the product.

    python benchmarks/one_pass_native.py [--sets mlp,resnet18] [--rounds 15] [--threads 1] [--tiny]
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

from optimizer_step import mlp, resnet18, tiny_convnet  # noqa: E402  (benchmarks/ is the script's folder)

LR, BETAS, EPS, STRENGTH, EXPONENT = 1e-3, (0.9, 0.999), 1e-8, specopt.DEFAULT_STRENGTH, 2
ROLE = {"matrix": 1, "bias": 2, "scale": 3}  # anything else: Adam alone

SOURCE = r"""
#include <torch/extension.h>
#include <algorithm>
#include <cmath>
#include <vector>

// α = clamp(ηλ c(σ̂), min(σ̂ − 1, 0), max(σ̂ − 1, 0)), c(σ) = 2k σ^{k−1}(σ^k − 1); 0 where σ̂ ≤ 0 (specopt.kernel).
static double matrix_step(double sigma, double k, double lr_strength) {
  if (!(sigma > 0.0)) return 0.0;
  const double pk1 = std::pow(sigma, k - 1.0);
  double step = lr_strength * 2.0 * k * pk1 * (pk1 * sigma - 1.0);
  if (std::isnan(step)) step = 0.0;
  const double gap = sigma - 1.0;
  return std::min(std::max(step, std::min(gap, 0.0)), std::max(gap, 0.0));
}

// One step of every tensor of a plain Adam group. roles: 0 Adam alone, 1 matrix (fused order), 2 bias, 3 scale.
// For the n-th matrix: us[n] = u_{t−1}, vs[n] = v_{t−1}, wvs[n] = W v_{t−1}, wtus[n] = Wᵀ u_{t−1}; on return
// u_t, v_t, W' v_t, W'ᵀ u_t and sigmas[n] = σ̂ (the previous vectors kept and σ̂ = 0 where a norm is 0 or not finite).
void step(std::vector<torch::Tensor> ps, std::vector<torch::Tensor> gs, std::vector<torch::Tensor> ms,
          std::vector<torch::Tensor> vs2, std::vector<int64_t> roles, std::vector<torch::Tensor> us,
          std::vector<torch::Tensor> vs, std::vector<torch::Tensor> wvs, std::vector<torch::Tensor> wtus,
          torch::Tensor sigmas, double b1, double b2, double lr, double eps, double strength, double k, int64_t t) {
  const float fb1 = 1.0f - (float)b1, fb2 = 1.0f - (float)b2, beta2 = (float)b2, feps = (float)eps;
  const float step_size = (float)(lr / (1.0 - std::pow(b1, (double)t)));
  const float inv_c2 = (float)(1.0 / std::sqrt(1.0 - std::pow(b2, (double)t)));
  float* S = sigmas.data_ptr<float>();
  std::vector<float> u_t, v_t;
  int64_t n = 0;
  for (size_t q = 0; q < ps.size(); ++q) {
    float* P = ps[q].data_ptr<float>(); const float* G = gs[q].data_ptr<float>();
    float* M = ms[q].data_ptr<float>(); float* V = vs2[q].data_ptr<float>();
    if (roles[q] == 1) {
      float* U = us[n].data_ptr<float>(); float* Vp = vs[n].data_ptr<float>();
      float* A = wvs[n].data_ptr<float>(); float* B = wtus[n].data_ptr<float>();
      const int64_t rows = us[n].numel(), cols = vs[n].numel();
      double sa = 0.0, sb = 0.0;
      for (int64_t i = 0; i < rows; ++i) sa += (double)A[i] * A[i];
      for (int64_t j = 0; j < cols; ++j) sb += (double)B[j] * B[j];
      const double sigma_d = std::sqrt(sa), nb = std::sqrt(sb), prod = sigma_d * nb;
      const bool ok = prod > 1e-30 && std::isfinite(prod);
      const float sigma = ok ? (float)sigma_d : 0.0f;
      u_t.resize(rows); v_t.resize(cols);
      for (int64_t i = 0; i < rows; ++i) u_t[i] = ok ? A[i] / (float)sigma_d : U[i];
      for (int64_t j = 0; j < cols; ++j) v_t[j] = ok ? B[j] / (float)nb : Vp[j];
      const float alpha = (float)matrix_step(sigma, k, lr * strength);
      for (int64_t j = 0; j < cols; ++j) B[j] = 0.0f;
      const float* vt = v_t.data();
      int64_t i = 0;
      for (; i + 2 <= rows; i += 2) {  // two rows at a time: Wᵀu's partial sums read and written once per pair
        const int64_t o0 = i * cols, o1 = o0 + cols;
        const float u0 = u_t[i], u1 = u_t[i + 1], a0 = alpha * u0, a1 = alpha * u1;
        float acc0 = 0.0f, acc1 = 0.0f;
        #pragma omp simd reduction(+:acc0, acc1)
        for (int64_t j = 0; j < cols; ++j) {
          const float g0 = G[o0 + j], g1 = G[o1 + j];
          const float m0 = M[o0 + j] + fb1 * (g0 - M[o0 + j]), m1 = M[o1 + j] + fb1 * (g1 - M[o1 + j]);
          const float v0 = beta2 * V[o0 + j] + fb2 * g0 * g0, v1 = beta2 * V[o1 + j] + fb2 * g1 * g1;
          const float w0 = P[o0 + j] - step_size * m0 / (std::sqrt(v0) * inv_c2 + feps) - a0 * Vp[j];
          const float w1 = P[o1 + j] - step_size * m1 / (std::sqrt(v1) * inv_c2 + feps) - a1 * Vp[j];
          M[o0 + j] = m0; V[o0 + j] = v0; P[o0 + j] = w0;
          M[o1 + j] = m1; V[o1 + j] = v1; P[o1 + j] = w1;
          acc0 += w0 * vt[j];
          acc1 += w1 * vt[j];
          B[j] += w0 * u0 + w1 * u1;
        }
        A[i] = acc0;
        A[i + 1] = acc1;
      }
      for (; i < rows; ++i) {
        const int64_t o = i * cols;
        const float au = alpha * u_t[i], ui = u_t[i];
        float acc = 0.0f;
        #pragma omp simd reduction(+:acc)
        for (int64_t j = 0; j < cols; ++j) {
          const float g = G[o + j];
          const float m = M[o + j] + fb1 * (g - M[o + j]);
          const float v = beta2 * V[o + j] + fb2 * g * g;
          const float w = P[o + j] - step_size * m / (std::sqrt(v) * inv_c2 + feps) - au * Vp[j];
          M[o + j] = m; V[o + j] = v; P[o + j] = w;
          acc += w * vt[j];
          B[j] += w * ui;
        }
        A[i] = acc;
      }
      for (int64_t i = 0; i < rows; ++i) U[i] = u_t[i];
      for (int64_t j = 0; j < cols; ++j) Vp[j] = v_t[j];
      S[n] = sigma;
      ++n;
      continue;
    }
    const int64_t size = ps[q].numel();
    float f = 0.0f, target = roles[q] == 3 ? 1.0f : 0.0f;
    if (roles[q] == 2 || roles[q] == 3) {
      double c = 2.0;  // a scale: ∇(γ − 1)² = 2(γ − 1); a bias: 2k‖b‖^{2k−2} b
      if (roles[q] == 2) {
        double s2 = 0.0;
        for (int64_t j = 0; j < size; ++j) s2 += (double)P[j] * P[j];
        c = 2.0 * k * std::pow(s2, k - 1.0);
      }
      double fd = lr * strength * c;
      f = std::isnan(fd) ? 0.0f : (float)std::min(std::max(fd, 0.0), 1.0);
    }
    #pragma omp simd
    for (int64_t j = 0; j < size; ++j) {
      const float g = G[j];
      const float m = M[j] + fb1 * (g - M[j]);
      const float v = beta2 * V[j] + fb2 * g * g;
      P[j] = P[j] - step_size * m / (std::sqrt(v) * inv_c2 + feps) - f * (P[j] - target);
      M[j] = m; V[j] = v;
    }
  }
}
"""

_EXT = None


def native():
    """The compiled extension (built on first use, then loaded from torch's extension cache)."""
    global _EXT
    if _EXT is None:
        from torch.utils.cpp_extension import load_inline

        _EXT = load_inline("specopt_one_pass_native_r2", cpp_sources=SOURCE, functions=["step"], verbose=False,
                           extra_cflags=["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno"])
    return _EXT


class Native:
    """The prototype: the state of a ``SpectralAdam(fused_spectral=True)`` after its first step (Adam's moments,
    u, v and the stored mat-vecs), stepped by one C++ call."""

    def __init__(self, opt: specopt.SpectralAdam, model: nn.Module) -> None:
        self.ps, self.roles = [], []
        state = opt.state
        for _, p, role in specopt.named_roles(model):
            self.ps.append(p)
            self.roles.append(ROLE.get(role, 0))
        st = [state[p] for p in self.ps]
        self.ms = [s["exp_avg"] for s in st]
        self.vs2 = [s["exp_avg_sq"] for s in st]
        mats = [s for s, r in zip(st, self.roles) if r == 1]
        self.us, self.vs = [s["spectral_u"] for s in mats], [s["spectral_v"] for s in mats]
        self.wvs, self.wtus = [s["spectral_wv"] for s in mats], [s["spectral_wtu"] for s in mats]
        self.sigmas = torch.zeros(len(mats))
        self.t = int(st[0]["step"])
        self.ext = native()

    def step(self) -> None:
        self.t += 1
        with torch.no_grad():
            self.ext.step(self.ps, [p.grad for p in self.ps], self.ms, self.vs2, self.roles, self.us, self.vs,
                          self.wvs, self.wtus, self.sigmas, BETAS[0], BETAS[1], LR, EPS, STRENGTH, float(EXPONENT),
                          self.t)


def fused_reference(model: nn.Module) -> specopt.SpectralAdam:
    """``SpectralAdam(fused_spectral=True)`` after its first (eager, plain-order) step, which stores the mat-vecs."""
    opt = specopt.SpectralAdam(specopt.param_groups(model), lr=LR, betas=BETAS, eps=EPS, fused_spectral=True)
    opt.step()
    return opt


def agreement(build: Callable[[], nn.Module]) -> float:
    """The largest absolute parameter difference between the prototype and ``SpectralAdam(fused_spectral=True)``
    after three steps from the same state (the reference's first step) and gradients."""
    torch.manual_seed(0)
    a = build()
    for p in a.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    ref = fused_reference(a)
    b = copy.deepcopy(a)
    proto_opt = copy.deepcopy(ref)  # the same state, keyed by b's parameters
    proto_opt.state = {pb: copy.deepcopy(ref.state[pa]) for pa, pb in zip(a.parameters(), b.parameters())}
    for pa, pb in zip(a.parameters(), b.parameters()):
        pb.grad = pa.grad.clone()
    proto = Native(proto_opt, b)
    for _ in range(3):
        ref.step()
        proto.step()
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def race(name: str, build: Callable[[], nn.Module], steps: int, rounds: int) -> None:
    runners: list[tuple[str, Callable[[], None]]] = []
    for label in ("Adam", "SpectralAdam(one_pass=True)", "SpectralAdam(fused_spectral=True)", "native one pass"):
        torch.manual_seed(0)
        model = build()
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        if label == "Adam":
            runners.append((label, specopt.compile_step(torch.optim.Adam(model.parameters(), lr=LR, foreach=True))))
        elif label == "SpectralAdam(one_pass=True)":
            runners.append((label, specopt.compile_step(specopt.SpectralAdam(specopt.param_groups(model), lr=LR,
                                                                             one_pass=True))))
        elif label == "SpectralAdam(fused_spectral=True)":
            runners.append((label, specopt.compile_step(specopt.SpectralAdam(specopt.param_groups(model), lr=LR,
                                                                             fused_spectral=True))))
        else:
            runners.append((label, Native(fused_reference(model), model).step))
    size = f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"
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
    for (label, _), med, f in zip(runners, medians, first):
        print(f"| {name} | {size} | {label} | {med * 1e3:.3f} | {f:.2f} | {med / medians[0]:.2f}× |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        raise SystemExit(f"one_pass_native: unknown set {bad[0] if bad else '(none)'!r}; valid: mlp, resnet18")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    native()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds; the extension built or loaded "
          f"in {time.perf_counter() - t0:.1f} s\n")
    for name in chosen:
        print(f"{name}: prototype vs SpectralAdam(fused_spectral=True), three steps from the same state, largest "
              f"|Δθ| = {agreement(sets[name]):.2e}")
    print("\n| set | parameters | step | ms (median) | first 3 steps (s) | vs compiled Adam |\n|---|---|---|---|---|---|")
    for name in chosen:
        steps = 2 if args.tiny else (20 if name == "mlp" else 3)
        race(name, sets[name], steps, 2 if args.tiny else args.rounds)


if __name__ == "__main__":
    main()
