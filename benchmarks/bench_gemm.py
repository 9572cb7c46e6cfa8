"""GEMM throughput on this CPU for the native translator's linear layers: MKL sgemm (what ATen's own BLAS
calls) against oneDNN's inner product (torch's mkldnn::_linear_pointwise op) with the weight as given
and reordered once into oneDNN's blocked layout (mkldnn::_reorder_linear_weight, packed for 128 rows).

Timed in C++ (a small extension compiled here with torch.utils.cpp_extension, ~40 s the first time) so
that Python's call overhead does not hide the small products; 1 thread, best of 5 x 1000 calls, same
inputs, each oneDNN result checked against torch.addmm. The native translator's GEMM choice
(mmserve/ops/cpu_kernel/translator_cpu.cpp, kOneDnnWork) comes from this table:

    python benchmarks/bench_gemm.py
"""

from __future__ import annotations

import torch
from torch.utils.cpp_extension import load_inline

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <chrono>
#include <functional>
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*);
using LinearPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                   std::string_view, c10::List<std::optional<at::Scalar>>,
                                   std::optional<std::string_view>);
std::vector<double> bench(int64_t M, int64_t N, int64_t K, int64_t reps) {
  at::init_num_threads();
  auto x = torch::rand({M, K}), w = torch::rand({N, K}), b = torch::rand({N}), y = torch::empty({M, N});
  static auto linear = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                           .typed<LinearPointwise>();
  static auto reorder = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "")
                            .typed<at::Tensor(const at::Tensor&, std::optional<int64_t>)>();
  auto packed = reorder.call(w, 128);
  auto call = [&](const at::Tensor& weight) {
    return linear.call(x, weight, b, "none", c10::List<std::optional<at::Scalar>>(), std::string_view(""));
  };
  auto want = at::addmm(b, x, w.t());
  TORCH_CHECK((call(w) - want).abs().max().item<float>() < 1e-3 && (call(packed) - want).abs().max().item<float>() < 1e-3,
              "oneDNN result differs from addmm");
  int m = M, n = N, k = K;
  float one = 1;
  char ta = 'T', tb = 'N';
  std::function<void()> runs[3] = {
      [&] {
        for (int r = 0; r < m; ++r) std::memcpy(y.data_ptr<float>() + r * n, b.data_ptr<float>(), sizeof(float) * n);
        sgemm_(&ta, &tb, &n, &m, &k, &one, w.data_ptr<float>(), &k, x.data_ptr<float>(), &k, &one, y.data_ptr<float>(), &n);
      },
      [&] { call(w); },
      [&] { call(packed); }};
  std::vector<double> best(3, 1e30);
  for (int i = 0; i < 50; ++i) for (auto& f : runs) f();
  for (int round = 0; round < 5; ++round) {
    for (int f = 0; f < 3; ++f) {
      auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i) runs[f]();
      best[f] = std::min(best[f], std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / reps);
    }
  }
  return best;
}
"""

SHAPES = [  # rows x outputs x inputs: the bundled translator's layers at greedy (32), beam 4 (128), encoder (300)
    (32, 384, 128), (32, 128, 128), (32, 512, 128), (32, 128, 512), (32, 320, 128),
    (128, 384, 128), (128, 128, 128), (128, 512, 128), (128, 128, 512), (300, 384, 128), (300, 512, 128),
]


def main() -> None:
    module = load_inline("mmserve_bench_gemm", cpp_sources=SOURCE, functions=["bench"], extra_cflags=["-O2"])
    torch.set_num_threads(1)
    print(f"{'rows x out x in':>18}  {'MKL sgemm':>18}  {'oneDNN':>18}  {'oneDNN blocked':>18}   (us, GFLOP/s)")
    for m, n, k in SHAPES:
        times = module.bench(m, n, k, 1000)
        cells = [f"{t * 1e6:7.1f} ({2 * m * n * k / t / 1e9:4.0f})" for t in times]
        print(f"{m:>6} x {n:>4} x {k:>4}  " + "  ".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
