"""Issue #31: what each part of :mod:`specopt.native`'s fused-order loop costs on one matrix, against Adam's loop
alone (the same C++, the same flags: ``specopt.native.flags()``).

The product's loop (``specopt.native.SOURCE``, a matrix with its mat-vecs) takes two rows of W at a time: Adam's
update of both, the rank-one correction −α u vᵀ, the row sums s = W v (one per row) and the column sums r = Wᵀ u
(one array, read and written once per pair). Here each of those is added in turn, and two variants that did not
help are timed beside them (four rows at a time; 64-column chunks with software prefetch):

* ``Adam, flat``: Adam's update as one flat loop over the matrix (the floor);
* ``pair: Adam``: the same, two rows at a time; ``+ rank one``; ``+ rank one + s``; ``+ rank one + r``;
* ``pair: all (the product's loop)``; ``four rows: all``; ``pair, chunks + prefetch: all``.

Every loop is timed on its own copy of the matrix and its Adam state, alternating in rounds, one thread; printed:
the median time and the ratio to ``Adam, flat`` per round (mean ± s.e.).

    python benchmarks/one_pass_loop_parts.py [--shape 512x4608] [--rounds 31] [--threads 1] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specopt import native

SOURCE = r"""
#include <torch/extension.h>
#include <algorithm>
#include <cmath>

static inline float adam(float p, float g, float& m, float& v) {  // β = (0.9, 0.999), η = 1e-3, ε = 1e-8
  m = m + 0.1f * (g - m);
  v = 0.999f * v + 0.001f * g * g;
  return p - 1e-3f * m / (std::sqrt(v) + 1e-8f);
}

#define ARGS torch::Tensor p, torch::Tensor g, torch::Tensor m, torch::Tensor v, torch::Tensor u, torch::Tensor vr, \
             torch::Tensor n, torch::Tensor s, torch::Tensor r
#define SETUP float* P = p.data_ptr<float>(); const float* G = g.data_ptr<float>(); float* M = m.data_ptr<float>(); \
  float* V = v.data_ptr<float>(); const float* U = u.data_ptr<float>(); const float* Vr = vr.data_ptr<float>(); \
  const float* N = n.data_ptr<float>(); float* S = s.data_ptr<float>(); float* R = r.data_ptr<float>(); \
  const int64_t rows = u.numel(), cols = vr.numel(); const float alpha = 1e-3f;

void flat(ARGS) {
  SETUP
  const int64_t size = rows * cols;
  #pragma omp simd
  for (int64_t j = 0; j < size; ++j) { float mm = M[j], vv = V[j]; P[j] = adam(P[j], G[j], mm, vv); M[j] = mm; V[j] = vv; }
}

// parts: bit 1 rank one, bit 2 row sums s, bit 4 column sums r; chunk > 0: columns in chunks, prefetching ahead
template <int Parts>
static void pair_impl(ARGS, int64_t chunk) {
  SETUP
  if (Parts & 4) for (int64_t j = 0; j < cols; ++j) R[j] = 0.0f;
  const int64_t step = chunk > 0 ? chunk : cols;
  for (int64_t i = 0; i + 2 <= rows; i += 2) {
    const int64_t o0 = i * cols, o1 = o0 + cols;
    const float u0 = U[i], u1 = U[i + 1], a0 = (Parts & 1) ? alpha * u0 : 0.0f, a1 = (Parts & 1) ? alpha * u1 : 0.0f;
    float s0 = 0.0f, s1 = 0.0f;
    for (int64_t c = 0; c < cols; c += step) {
      const int64_t e = std::min(cols, c + step);
      if (chunk > 0)
        for (int64_t k = 0; k < chunk; k += 16) {
          const int64_t q0 = o0 + c + 256 + k, q1 = o1 + c + 256 + k;
          __builtin_prefetch(P + q0, 1); __builtin_prefetch(G + q0, 0); __builtin_prefetch(M + q0, 1);
          __builtin_prefetch(V + q0, 1); __builtin_prefetch(P + q1, 1); __builtin_prefetch(G + q1, 0);
          __builtin_prefetch(M + q1, 1); __builtin_prefetch(V + q1, 1);
        }
      #pragma omp simd reduction(+:s0, s1)
      for (int64_t j = c; j < e; ++j) {
        float m0 = M[o0 + j], v0 = V[o0 + j], m1 = M[o1 + j], v1 = V[o1 + j];
        float w0 = adam(P[o0 + j], G[o0 + j], m0, v0), w1 = adam(P[o1 + j], G[o1 + j], m1, v1);
        if (Parts & 1) { w0 -= a0 * Vr[j]; w1 -= a1 * Vr[j]; }
        M[o0 + j] = m0; V[o0 + j] = v0; P[o0 + j] = w0; M[o1 + j] = m1; V[o1 + j] = v1; P[o1 + j] = w1;
        if (Parts & 2) { s0 += w0 * N[j]; s1 += w1 * N[j]; }
        if (Parts & 4) R[j] += w0 * u0 + w1 * u1;
      }
    }
    if (Parts & 2) { S[i] = s0; S[i + 1] = s1; }
  }
}

void pair(ARGS, int64_t parts, int64_t chunk) {
  switch (parts) {
    case 0: pair_impl<0>(p, g, m, v, u, vr, n, s, r, chunk); break;
    case 1: pair_impl<1>(p, g, m, v, u, vr, n, s, r, chunk); break;
    case 3: pair_impl<3>(p, g, m, v, u, vr, n, s, r, chunk); break;
    case 5: pair_impl<5>(p, g, m, v, u, vr, n, s, r, chunk); break;
    default: pair_impl<7>(p, g, m, v, u, vr, n, s, r, chunk); break;
  }
}

void four(ARGS) {
  SETUP
  for (int64_t j = 0; j < cols; ++j) R[j] = 0.0f;
  for (int64_t i = 0; i + 4 <= rows; i += 4) {
    const int64_t o0 = i * cols, o1 = o0 + cols, o2 = o1 + cols, o3 = o2 + cols;
    const float u0 = U[i], u1 = U[i + 1], u2 = U[i + 2], u3 = U[i + 3];
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    #pragma omp simd reduction(+:s0, s1, s2, s3)
    for (int64_t j = 0; j < cols; ++j) {
      float m0 = M[o0 + j], v0 = V[o0 + j], m1 = M[o1 + j], v1 = V[o1 + j];
      float m2 = M[o2 + j], v2 = V[o2 + j], m3 = M[o3 + j], v3 = V[o3 + j];
      const float b = Vr[j], c = N[j];
      const float w0 = adam(P[o0 + j], G[o0 + j], m0, v0) - alpha * u0 * b;
      const float w1 = adam(P[o1 + j], G[o1 + j], m1, v1) - alpha * u1 * b;
      const float w2 = adam(P[o2 + j], G[o2 + j], m2, v2) - alpha * u2 * b;
      const float w3 = adam(P[o3 + j], G[o3 + j], m3, v3) - alpha * u3 * b;
      M[o0 + j] = m0; V[o0 + j] = v0; P[o0 + j] = w0; M[o1 + j] = m1; V[o1 + j] = v1; P[o1 + j] = w1;
      M[o2 + j] = m2; V[o2 + j] = v2; P[o2 + j] = w2; M[o3 + j] = m3; V[o3 + j] = v3; P[o3 + j] = w3;
      s0 += w0 * c; s1 += w1 * c; s2 += w2 * c; s3 += w3 * c;
      R[j] += (w0 * u0 + w1 * u1) + (w2 * u2 + w3 * u3);
    }
    S[i] = s0; S[i + 1] = s1; S[i + 2] = s2; S[i + 3] = s3;
  }
}
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="512x4608", help="rows x cols of the matrix (ResNet-18's largest: 512x4608)")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the loops themselves run on one)")
    p.add_argument("--tiny", action="store_true", help="a small matrix and 3 rounds (the tests' rehearsal)")
    args = p.parse_args()
    try:
        rows, cols = (int(x) for x in ("8x64" if args.tiny else args.shape).lower().split("x"))
        if rows < 4 or rows % 4 or cols < 1:
            raise ValueError
    except ValueError:
        raise SystemExit(f"one_pass_loop_parts: --shape must be ROWSxCOLS with rows a positive multiple of 4, "
                         f"got {args.shape!r}") from None
    rounds = 3 if args.tiny else args.rounds
    torch.set_num_threads(args.threads)
    from torch.utils.cpp_extension import load_inline

    ext = load_inline(f"specopt_loop_parts_{native._machine()}", cpp_sources=SOURCE,
                      functions=["flat", "pair", "four"], extra_cflags=native.flags())
    loops = {"Adam, flat": lambda a: ext.flat(*a), "pair: Adam": lambda a: ext.pair(*a, 0, 0),
             "pair: + rank one": lambda a: ext.pair(*a, 1, 0), "pair: + rank one + s": lambda a: ext.pair(*a, 3, 0),
             "pair: + rank one + r": lambda a: ext.pair(*a, 5, 0),
             "pair: all (the product's loop)": lambda a: ext.pair(*a, 7, 0),
             "four rows: all": lambda a: ext.four(*a),
             "pair, chunks + prefetch: all": lambda a: ext.pair(*a, 7, 64)}
    gen = torch.Generator().manual_seed(0)

    def matrix() -> list[torch.Tensor]:
        w = torch.randn(rows, cols, generator=gen)
        return [w, torch.randn(rows, cols, generator=gen) * 1e-3, torch.zeros_like(w), torch.zeros_like(w),
                torch.randn(rows, generator=gen), torch.randn(cols, generator=gen), torch.randn(cols, generator=gen),
                torch.zeros(rows), torch.zeros(cols)]

    data = {name: matrix() for name in loops}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, run in loops.items():
            t0 = time.perf_counter()
            for _ in range(5):
                run(data[name])
            times[name].append((time.perf_counter() - t0) / 5)
    print(f"torch {torch.__version__}, one thread (the loops), {rows}×{cols} float32, {rounds} rounds, flags "
          f"{' '.join(native.flags())}\n")
    print("| loop | ms (median) | vs Adam, flat (per round, mean ± s.e.) |")
    print("|---|---|---|")
    base = times["Adam, flat"]
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t, base)]
        err = statistics.stdev(ratios) / len(ratios) ** 0.5
        print(f"| {name} | {statistics.median(t) * 1e3:.3f} | {statistics.mean(ratios):.2f} ± {err:.2f}× |")


if __name__ == "__main__":
    main()
