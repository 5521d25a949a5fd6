r"""``SpectralAdam(one_pass=True)``'s eager step on a CPU: Adam's update and the decoupled spectral step of every
float32 tensor of a plain Adam/AdamW group as one C++ loop per tensor (issue #31, docs/benchmarks.md).

Per matrix W (rows × cols, the same u, v, α as the two halves: :func:`specopt.functional.prepare`,
:func:`specopt.kernel.matrix_step`), one pass that reads p, g, m and v once and writes p, m and v once:

.. math::
    m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
    W \leftarrow W - \frac{\eta}{1-\beta_1^t}\,\frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon} - \alpha\,u v^\top

and, in the fused order (``fused_spectral=True``), the mat-vecs the next step starts from, accumulated while W is
written: :math:`s = W v_t` (a row sum) and :math:`r = W^\top u_t` (a column sum), so the step reads W once in all.
A bias or a scale takes Adam's update and its pull :math:`-f x` (x from :func:`specopt.functional.vector_terms`) in
the same way. Adam's L2 term, AdamW's decay and ``maximize`` are honoured; the rest keeps the two halves.

The loop is compiled once per machine by ``torch.utils.cpp_extension.load_inline`` (a C++ compiler and ninja, as
``torch.compile`` on a CPU needs; ``-O3 -march=native``, 512-bit vectors on AMD CPUs with AVX-512: :func:`flags`;
cached in torch's extension folder per CPU kind). Where it cannot be
built, :func:`extension` warns once and the step keeps its two halves.
"""

from __future__ import annotations

import operator
import warnings

import torch
from torch import Tensor

SOURCE = r"""
#include <torch/extension.h>
#include <algorithm>
#include <cmath>
#include <vector>

// Adam's update of one element, and the new moments (no branch: the loops stay vectorized). l2: Adam's coupled
// decay (g + l2·p), keep: AdamW's factor 1 − η·w; sign: −1 to maximize.
template <bool General>
static inline float adam(float p, float g, float& m, float& v, float fb1, float beta2, float fb2, float step_size,
                         float inv_c2, float eps, float l2, float keep, float sign) {
  if constexpr (General) g = sign * g + l2 * p;  // (plain Adam: compiled without these three products)
  m = m + fb1 * (g - m);
  v = beta2 * v + fb2 * g * g;
  return (General ? keep * p : p) - step_size * m / (std::sqrt(v) * inv_c2 + eps);
}

#ifdef _OPENMP
#include <omp.h>
#define THREAD omp_get_thread_num()
#else
#define THREAD 0
#endif

// A tensor of fewer elements stays on one thread (a parallel region costs a few microseconds); a flat tensor is
// shared out in blocks of BLOCK elements.
static constexpr int64_t PARALLEL_MIN = 1 << 16;
static constexpr int64_t BLOCK = 1 << 12;

static inline int team(int64_t size, int threads) {
#ifdef _OPENMP
  return size >= PARALLEL_MIN && threads > 1 ? threads : 1;
#else
  return 1;
#endif
}

// One group's tensors. kinds: 0 Adam alone, 1 matrix (u, v, alpha; with record, s = W'·next and r = W'ᵀ·u into
// wv, wtu), 2 vector (x, f). steps: each tensor's Adam step count (already incremented).
template <bool General>
static void step_impl(const std::vector<torch::Tensor>& ps, const std::vector<torch::Tensor>& gs,
                      const std::vector<torch::Tensor>& ms, const std::vector<torch::Tensor>& vs,
                      const std::vector<double>& steps, const std::vector<int64_t>& kinds,
                      const std::vector<torch::Tensor>& us, const std::vector<torch::Tensor>& vvs,
                      const std::vector<double>& alphas, const std::vector<torch::Tensor>& nexts,
                      const std::vector<torch::Tensor>& wvs, const std::vector<torch::Tensor>& wtus,
                      const std::vector<torch::Tensor>& xs, const std::vector<double>& fractions, double b1, double b2,
                      double lr, double eps, double weight_decay, bool decoupled, bool maximize) {
  const float fb1 = 1.0f - (float)b1, fb2 = 1.0f - (float)b2, beta2 = (float)b2, feps = (float)eps;
  const float l2 = decoupled ? 0.0f : (float)weight_decay, keep = decoupled ? (float)(1.0 - lr * weight_decay) : 1.0f;
  const float sign = maximize ? -1.0f : 1.0f;
  const int threads = at::get_num_threads();  // torch's intra-op threads (torch.set_num_threads)
  int64_t a = 0, b = 0;
  for (size_t q = 0; q < ps.size(); ++q) {
    float* P = ps[q].data_ptr<float>(); const float* G = gs[q].data_ptr<float>();
    float* M = ms[q].data_ptr<float>(); float* V = vs[q].data_ptr<float>();
    const float step_size = (float)(lr / (1.0 - std::pow(b1, steps[q])));
    const float inv_c2 = (float)(1.0 / std::sqrt(1.0 - std::pow(b2, steps[q])));
    const int64_t size = ps[q].numel();
    const int nt = team(size, threads);
    if (kinds[q] == 1) {
      const float* U = us[a].data_ptr<float>(); const float* Vr = vvs[a].data_ptr<float>();
      const float alpha = (float)alphas[a];
      const int64_t rows = us[a].numel(), cols = vvs[a].numel();
      const bool record = nexts[a].numel() > 0;
      if (!record) {
        #pragma omp parallel for num_threads(nt) schedule(static) if(nt > 1)
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t o = i * cols;
          const float au = alpha * U[i];
          #pragma omp simd
          for (int64_t j = 0; j < cols; ++j) {
            float m = M[o + j], v = V[o + j];
            P[o + j] = adam<General>(P[o + j], G[o + j], m, v, fb1, beta2, fb2, step_size, inv_c2, feps, l2, keep,
                                     sign) - au * Vr[j];
            M[o + j] = m; V[o + j] = v;
          }
        }
        ++a;
        continue;
      }
      const float* N = nexts[a].data_ptr<float>();
      float* S = wvs[a].data_ptr<float>(); float* R = wtus[a].data_ptr<float>();
      for (int64_t j = 0; j < cols; ++j) R[j] = 0.0f;
      // Several threads: each takes a contiguous share of the row pairs and sums its own r, added up after.
      std::vector<float> partial(nt > 1 ? (size_t)nt * cols : 0, 0.0f);
      #pragma omp parallel num_threads(nt) if(nt > 1)
      {
        float* Rt = nt > 1 ? partial.data() + (size_t)THREAD * cols : R;
        #pragma omp for schedule(static)
        for (int64_t pair = 0; pair < rows / 2; ++pair) {  // two rows at a time: r read and written once per pair
          const int64_t i = 2 * pair, o0 = i * cols, o1 = o0 + cols;
          const float u0 = U[i], u1 = U[i + 1], a0 = alpha * u0, a1 = alpha * u1;
          float s0 = 0.0f, s1 = 0.0f;
          #pragma omp simd reduction(+:s0, s1)
          for (int64_t j = 0; j < cols; ++j) {
            float m0 = M[o0 + j], v0 = V[o0 + j], m1 = M[o1 + j], v1 = V[o1 + j];
            const float w0 = adam<General>(P[o0 + j], G[o0 + j], m0, v0, fb1, beta2, fb2, step_size, inv_c2, feps,
                                           l2, keep, sign) - a0 * Vr[j];
            const float w1 = adam<General>(P[o1 + j], G[o1 + j], m1, v1, fb1, beta2, fb2, step_size, inv_c2, feps,
                                           l2, keep, sign) - a1 * Vr[j];
            M[o0 + j] = m0; V[o0 + j] = v0; P[o0 + j] = w0;
            M[o1 + j] = m1; V[o1 + j] = v1; P[o1 + j] = w1;
            s0 += w0 * N[j];
            s1 += w1 * N[j];
            Rt[j] += w0 * u0 + w1 * u1;
          }
          S[i] = s0;
          S[i + 1] = s1;
        }
      }
      for (int t = 0; nt > 1 && t < nt; ++t) {
        const float* Rt = partial.data() + (size_t)t * cols;
        #pragma omp simd
        for (int64_t j = 0; j < cols; ++j) R[j] += Rt[j];
      }
      if (rows % 2) {  // the last row of an odd count
        const int64_t i = rows - 1, o = i * cols;
        const float ui = U[i], au = alpha * ui;
        float s = 0.0f;
        #pragma omp simd reduction(+:s)
        for (int64_t j = 0; j < cols; ++j) {
          float m = M[o + j], v = V[o + j];
          const float w = adam<General>(P[o + j], G[o + j], m, v, fb1, beta2, fb2, step_size, inv_c2, feps, l2,
                               keep, sign) - au * Vr[j];
          M[o + j] = m; V[o + j] = v; P[o + j] = w;
          s += w * N[j];
          R[j] += w * ui;
        }
        S[i] = s;
      }
      ++a;
      continue;
    }
    const float* X = kinds[q] == 0 ? nullptr : xs[b].data_ptr<float>();
    const float f = kinds[q] == 0 ? 0.0f : (float)fractions[b];
    const int64_t blocks = (size + BLOCK - 1) / BLOCK;
    #pragma omp parallel for num_threads(nt) schedule(static) if(nt > 1)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t lo = block * BLOCK, hi = std::min(size, lo + BLOCK);
      if (X == nullptr) {  // Adam alone
        #pragma omp simd
        for (int64_t j = lo; j < hi; ++j) {
          float m = M[j], v = V[j];
          P[j] = adam<General>(P[j], G[j], m, v, fb1, beta2, fb2, step_size, inv_c2, feps, l2, keep, sign);
          M[j] = m; V[j] = v;
        }
      } else {  // a bias or a scale: Adam and its pull −f·x
        #pragma omp simd
        for (int64_t j = lo; j < hi; ++j) {
          float m = M[j], v = V[j];
          P[j] = adam<General>(P[j], G[j], m, v, fb1, beta2, fb2, step_size, inv_c2, feps, l2, keep, sign) - f * X[j];
          M[j] = m; V[j] = v;
        }
      }
    }
    if (kinds[q] != 0) ++b;
  }
}

void step(std::vector<torch::Tensor> ps, std::vector<torch::Tensor> gs, std::vector<torch::Tensor> ms,
          std::vector<torch::Tensor> vs, std::vector<double> steps, std::vector<int64_t> kinds,
          std::vector<torch::Tensor> us, std::vector<torch::Tensor> vvs, std::vector<double> alphas,
          std::vector<torch::Tensor> nexts, std::vector<torch::Tensor> wvs, std::vector<torch::Tensor> wtus,
          std::vector<torch::Tensor> xs, std::vector<double> fractions, double b1, double b2, double lr, double eps,
          double weight_decay, bool decoupled, bool maximize) {
  if (weight_decay != 0.0 || maximize)
    step_impl<true>(ps, gs, ms, vs, steps, kinds, us, vvs, alphas, nexts, wvs, wtus, xs, fractions, b1, b2, lr, eps,
                    weight_decay, decoupled, maximize);
  else
    step_impl<false>(ps, gs, ms, vs, steps, kinds, us, vvs, alphas, nexts, wvs, wtus, xs, fractions, b1, b2, lr, eps,
                     weight_decay, decoupled, maximize);
  for (const auto& p : ps) torch::autograd::impl::bump_version(p);  // written in place: as an in-place op would
}

// α = clamp(ηλ c(σ̂), low, max(σ̂ − 1, 0)), c(σ) = 2k σ^{k−1}(σ^k − 1), low = min(σ̂ − 1, 0) (0 one-sided); 0 where
// σ̂ ≤ 0 — specopt.kernel.matrix_step.
static double matrix_step(double sigma, double k, double lr_strength, bool one_sided) {
  if (!(sigma > 0.0)) return 0.0;
  const double pk1 = std::pow(sigma, k - 1.0);
  double step = lr_strength * 2.0 * k * pk1 * (pk1 * sigma - 1.0);
  if (std::isnan(step)) step = 0.0;
  const double gap = sigma - 1.0, low = one_sided ? 0.0 : std::min(gap, 0.0);
  return std::min(std::max(step, low), std::max(gap, 0.0));
}

// The steady state of the fused order (every tensor of the group stepped here, every matrix with its stored
// mat-vecs): the estimate from s = W v_{t−1}, r = Wᵀ u_{t−1} (specopt.kernel.from_matvecs), α, the bias and scale
// coefficients, Adam's step counts — everything step() is handed by specopt.functional.prepare — then step()'s loop.
// kinds: 0 Adam alone, 1 matrix, 2 bias, 3 scale. steps: each tensor's step count (a float32 0-d tensor, +1 here).
void steady(std::vector<torch::Tensor> ps, std::vector<torch::Tensor> gs, std::vector<torch::Tensor> ms,
            std::vector<torch::Tensor> vs, std::vector<torch::Tensor> steps, std::vector<int64_t> kinds,
            std::vector<torch::Tensor> us, std::vector<torch::Tensor> vvs, std::vector<torch::Tensor> wvs,
            std::vector<torch::Tensor> wtus, std::vector<torch::Tensor> sigmas, double b1, double b2, double lr,
            double eps, double weight_decay, bool decoupled, bool maximize, double strength, double k,
            bool one_sided) {
  std::vector<double> step_counts, alphas, fractions;
  std::vector<torch::Tensor> nexts, xs, us_t, vs_prev;
  std::vector<std::vector<float>> buffers;  // u_t, v_{t−1}, v_t and the biases' and scales' x, wrapped (no copy)
  buffers.reserve(4 * ps.size());
  auto wrap = [&](std::vector<float>&& data) {
    buffers.push_back(std::move(data));
    return torch::from_blob(buffers.back().data(), {(int64_t)buffers.back().size()}, torch::kFloat32);
  };
  const double ls = lr * strength;
  size_t a = 0;
  for (size_t q = 0; q < ps.size(); ++q) {
    float* t = steps[q].data_ptr<float>();
    t[0] += 1.0f;
    step_counts.push_back((double)t[0]);
    if (kinds[q] == 1) {
      const float* S = wvs[a].data_ptr<float>(); const float* R = wtus[a].data_ptr<float>();
      const float* U = us[a].data_ptr<float>(); const float* V = vvs[a].data_ptr<float>();
      const int64_t rows = us[a].numel(), cols = vvs[a].numel();
      double sa = 0.0, sb = 0.0;
      for (int64_t i = 0; i < rows; ++i) sa += (double)S[i] * S[i];
      for (int64_t j = 0; j < cols; ++j) sb += (double)R[j] * R[j];
      const float sigma = (float)std::sqrt(sa), nr = (float)std::sqrt(sb);
      const double prod = (double)sigma * nr;
      const bool ok = prod > 1e-30 && std::isfinite(prod);
      std::vector<float> u_t(rows), v_t(cols);
      for (int64_t i = 0; i < rows; ++i) u_t[i] = ok ? S[i] / sigma : U[i];
      for (int64_t j = 0; j < cols; ++j) v_t[j] = ok ? R[j] / nr : V[j];
      const float used = ok ? sigma : 0.0f;
      sigmas[a].data_ptr<float>()[0] = used;
      alphas.push_back(matrix_step((double)used, k, ls, one_sided));
      us_t.push_back(wrap(std::move(u_t)));
      vs_prev.push_back(wrap(std::vector<float>(V, V + cols)));
      nexts.push_back(wrap(std::move(v_t)));
      ++a;
    } else if (kinds[q] >= 2) {
      const float* P = ps[q].data_ptr<float>();
      const int64_t size = ps[q].numel();
      std::vector<float> x(size);
      double n2 = 0.0;
      for (int64_t j = 0; j < size; ++j) {
        float value = kinds[q] == 2 ? P[j] : P[j] - 1.0f;
        if (kinds[q] == 3 && one_sided) value = std::max(value, 0.0f);
        x[j] = value;
        n2 += (double)value * value;
      }
      const double c = kinds[q] == 2 && k != 1.0 ? 2.0 * k * std::pow(std::sqrt(n2), 2.0 * k - 2.0) : 2.0;
      double f = ls * c;
      f = std::isnan(f) ? 0.0 : std::min(std::max(f, 0.0), 1.0);
      xs.push_back(wrap(std::move(x)));
      fractions.push_back(f);
    }
  }
  std::vector<int64_t> step_kinds(kinds.begin(), kinds.end());
  for (auto& kind : step_kinds) kind = kind == 1 ? 1 : (kind >= 2 ? 2 : 0);
  step(ps, gs, ms, vs, step_counts, step_kinds, us_t, vs_prev, alphas, nexts, wvs, wtus, xs, fractions, b1, b2, lr,
       eps, weight_decay, decoupled, maximize);
  for (size_t n = 0; n < us.size(); ++n) {  // the vectors the next step starts from: u_t, v_t
    std::copy_n(us_t[n].data_ptr<float>(), us[n].numel(), us[n].data_ptr<float>());
    std::copy_n(nexts[n].data_ptr<float>(), vvs[n].numel(), vvs[n].data_ptr<float>());
  }
}
"""

_EXTENSION: object = None  # the loaded module; False once it could not be built
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno"]  # no errno from sqrt: the loops vectorize
# On AMD CPUs with AVX-512 (Zen 4 on): 512-bit vectors in every loop and its remainder (measured side by side on this
# project's VM, ResNet-18's set: the product's step 3-6% faster, docs/benchmarks.md). Not on Intel, whose older
# AVX-512 chips lower their clock for 512-bit work (GCC's own default there is 256).
WIDE = ["-mprefer-vector-width=512"]
OPENMP = ["-fopenmp"]
"""The loop's threads: each large tensor shared out over ``torch.get_num_threads()`` threads (``at::get_num_threads``;
tensors under 65,536 elements stay on one; a matrix's column sums r per thread, added up after)."""


def _cpuinfo() -> str:
    """This CPU's vendor and instruction-set lines ("" where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("vendor_id", "flags", "Features")))[:4096]
    except OSError:
        return ""


def flags(cpuinfo: str | None = None) -> list[str]:
    """The compiler flags of the loop on this CPU (``cpuinfo``: /proc/cpuinfo's text; read here when None)."""
    import platform

    info = _cpuinfo() if cpuinfo is None else cpuinfo
    amd512 = ("AuthenticAMD" in info and " avx512f" in info
              and platform.machine().lower() in ("x86_64", "amd64"))
    return FLAGS + (WIDE if amd512 else [])


def _machine() -> str:
    """A short name of this CPU's instruction set: the cache of a ``-march=native`` build is per CPU kind (a home
    folder shared by a cluster's different machines must not hand one machine's build to another)."""
    import hashlib
    import platform

    info = _cpuinfo()
    kind = platform.machine() + (next((line for line in info.splitlines() if line.startswith(("flags", "Features"))),
                                      "") if info else platform.processor())
    return hashlib.sha1(kind.encode()).hexdigest()[:10]


BUILD_NOTE_AFTER = 3.0
"""Seconds after which a build still running says so (once, on the ``specopt`` logger: a first step that takes half
a minute should not look hung; loading a cached build takes a fraction of a second and says nothing)."""


def extension():
    """The compiled loop (built on first use, then loaded from torch's extension cache), or None where it cannot be
    built here (one warning saying why; the step then keeps its two halves)."""
    global _EXTENSION
    if _EXTENSION is None:
        import logging
        import threading

        note = threading.Timer(BUILD_NOTE_AFTER, logging.getLogger("specopt").warning,
                               ("specopt: building SpectralAdam(one_pass=True)'s CPU loop (once per machine and "
                                "torch version, about 30 s)",))
        note.daemon = True
        note.start()
        try:
            quiet = logging.getLogger("torch.utils.cpp_extension")  # its import warns of CUDA on every CPU machine
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                from torch.utils.cpp_extension import load_inline
            finally:
                quiet.setLevel(level)
            name = f"specopt_one_pass_{_machine()}"
            try:  # with OpenMP, as Inductor's CPU kernels are built: the loop takes torch's intra-op threads
                _EXTENSION = load_inline(name, cpp_sources=SOURCE, functions=["step", "steady"], verbose=False,
                                         extra_cflags=flags() + OPENMP, extra_ldflags=list(OPENMP))  # (a copy:
                # torch appends its libraries to extra_ldflags in place, and a changed OPENMP would rebuild)
            except Exception:  # a compiler without OpenMP (Apple's clang): the same loop on one thread
                _EXTENSION = load_inline(f"{name}_serial", cpp_sources=SOURCE, functions=["step", "steady"],
                                         verbose=False, extra_cflags=flags())
        except Exception as err:  # no compiler, no ninja, a read-only cache: the two halves still work
            _EXTENSION = False
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            warnings.warn(f"specopt: SpectralAdam(one_pass=True)'s CPU loop could not be built "
                          f"({type(err).__name__}: {reason}); its eager steps take the two halves",
                          RuntimeWarning, stacklevel=3)
        finally:
            note.cancel()
    return _EXTENSION or None


def usable(*tensors: Tensor | None) -> bool:
    """Whether the loop can read and write every one of ``tensors`` (a parameter, its gradient, Adam's moments):
    dense, contiguous float32 CPU tensors (DTensors are left to the two halves by the caller)."""
    return all(t is not None and t.layout == torch.strided and t.dtype == torch.float32 and t.device.type == "cpu"
               and t.is_contiguous() for t in tensors)


class SteadyPlan:
    """The steady state of an optimizer whose every tensor the loop steps in the fused order: the lists the C++
    ``steady`` call takes, built once (:func:`plan`) and checked before each step (:meth:`valid`), so that a step
    is one call per group with no per-step Python bookkeeping — :func:`specopt.functional.prepare`'s estimate, α
    and the bias and scale coefficients are computed in the loop's call (the same formulas). Anything that would
    change them — another parameter or group, a changed group setting, a missing or non-float32 gradient, a weight
    changed in place outside the step (its version), state replaced by ``load_state_dict`` — sends the step back
    to the general path, which rebuilds the plan when it can."""

    SETTINGS = ("spectral_strength", "k", "power_iterations", "spectral_pull", "spectral_precondition", "role",
                "roles", "amsgrad", "differentiable", "fused", "capturable")

    def __init__(self, groups: list[tuple[dict, list[Tensor], list[int], list[dict]]], written: dict) -> None:
        self.groups = []
        for group, params, kinds, states in groups:
            mats = [st for st, kind in zip(states, kinds) if kind == 1]
            lists = ([st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],
                     [st["step"] for st in states], kinds, *([st[key] for st in mats] for key in (
                         "spectral_u", "spectral_v", "spectral_wv", "spectral_wtu", "spectral_sigma")))
            self.groups.append((group, list(params), states, self._settings(group), lists))
        self.written = written
        self.versions = [[p._version for p in params] for _, params, _, _, _ in self.groups]
        self.grads: list[list[Tensor]] = []

    @classmethod
    def _settings(cls, group: dict) -> tuple:
        return tuple(repr(group.get(key)) for key in cls.SETTINGS)

    def valid(self, optimizer) -> bool:
        """Whether the plan still describes the optimizer (and every gradient is one the loop can read); keeps the
        gradients for :meth:`step`."""
        if len(optimizer.param_groups) != len(self.groups):
            return False
        grads = []
        for group, (cached, params, states, settings, _), versions in zip(optimizer.param_groups, self.groups,
                                                                          self.versions):
            current = group["params"]
            if (group is not cached or len(current) != len(params) or not all(map(operator.is_, current, params))
                    or [p._version for p in params] != versions or self._settings(group) != settings
                    or not all(map(operator.is_, map(optimizer.state.get, params), states))):
                return False
            gs = [p.grad for p in params]
            if not all(g is not None and g.dtype == torch.float32 and g.layout == torch.strided
                       and g.device.type == "cpu" and g.is_contiguous() for g in gs):
                return False
            grads.append(gs)
        self.grads = grads
        return True

    def step(self) -> None:
        """One step: one C++ call per group (after :meth:`valid`)."""
        ext = extension()
        for n, ((group, params, _, _, (ms, vs, steps, kinds, us, vvs, wvs, wtus, sigmas)), grads) in enumerate(
                zip(self.groups, self.grads)):
            ext.steady(params, grads, ms, vs, steps, kinds, us, vvs, wvs, wtus, sigmas, float(group["betas"][0]),
                       float(group["betas"][1]), float(group["lr"]), float(group["eps"]),
                       float(group["weight_decay"]), bool(group["decoupled_weight_decay"]), bool(group["maximize"]),
                       float(group["spectral_strength"]), float(group["k"]), group["spectral_pull"] == "one-sided")
            versions = self.versions[n] = [p._version for p in params]  # (the loop bumped them, as in-place ops do)
            for p, kind, version in zip(params, kinds, versions):
                if kind == 1:
                    self.written[p] = version  # the fused order's stale check: these mat-vecs are fresh
        self.grads = []


STEADY_ROLES = {"matrix": 1, "bias": 2, "scale": 3, "none": 0}


def plan(optimizer, written: dict) -> SteadyPlan | None:
    """The optimizer's :class:`SteadyPlan`, or None unless every tensor of every group can take the steady step:
    the fused order with one power iteration, a positive strength, no preconditioning, plain Adam/AdamW (no
    amsgrad, differentiable, fused or capturable), roles matrix, bias, scale or none (not qkv), and every parameter,
    gradient, moment and stored vector a dense, contiguous float32 CPU tensor, each matrix with its mat-vecs."""
    from .functional import _is_dtensor
    from .roles import roles_and_layouts

    if not optimizer.defaults.get("fused_spectral"):
        return None
    groups = []
    for group in optimizer.param_groups:
        if (group.get("power_iterations", 1) != 1 or not group.get("spectral_strength") or group.get("amsgrad")
                or group.get("differentiable") or group.get("fused") or group.get("capturable")
                or group.get("spectral_precondition")):
            return None
        roles, layouts = roles_and_layouts(group, optimizer.defaults.get("role", "auto"))
        kinds, states = [], []
        for p, role, layout in zip(group["params"], roles, layouts):
            st = optimizer.state.get(p)
            if role not in STEADY_ROLES or layout is not None or _is_dtensor(p) or not st:
                return None
            need = ("exp_avg", "exp_avg_sq") + (("spectral_u", "spectral_v", "spectral_wv", "spectral_wtu",
                                                 "spectral_sigma") if role == "matrix" else ())
            step = st.get("step")
            if (not usable(p, p.grad, *(st.get(key) for key in need)) or not isinstance(step, Tensor)
                    or step.dtype != torch.float32 or step.numel() != 1 or step.device.type != "cpu"):
                return None
            kinds.append(STEADY_ROLES[role])
            states.append(st)
        groups.append((group, group["params"], kinds, states))
    return SteadyPlan(groups, written)


__all__ = ["BUILD_NOTE_AFTER", "FLAGS", "OPENMP", "SOURCE", "WIDE", "STEADY_ROLES", "SteadyPlan", "extension", "flags", "plan", "usable"]
