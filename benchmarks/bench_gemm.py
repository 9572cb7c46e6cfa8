"""GEMM throughput on this CPU for the native translator's linear layers (x W^T, the bias left to the
pass that reads the product, as the translator does): MKL sgemm (what ATen's own BLAS calls), MKL's
packed GEMM (the weight packed once into MKL's layout, sgemm_pack / sgemm_compute, as CTranslate2
does with MKL), and oneDNN's inner product (torch's mkldnn::_linear_pointwise op) with the weight as
given and reordered once into oneDNN's blocked layout (mkldnn::_reorder_linear_weight, for 128 rows).

Timed in C++ (a small extension compiled here with torch.utils.cpp_extension, ~40 s the first time) so
that Python's call overhead does not hide the small products; 1 thread, best of 5 x 1000 calls, same
inputs, every engine's result checked against torch.mm. The native translator does not read this
table: it times the engines itself per weight shape and thread count when it first runs
(mmserve/ops/cpu_kernel/native_linear.h) and `NativeTranslator.gemm_engines()` says what it chose;
this table shows why no fixed rule would do (on an AMD EPYC blocked oneDNN won from 128 rows, on an
Intel Xeon with AVX-512 MKL won everywhere):

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
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*);
size_t sgemm_pack_get_size_(const char*, const int*, const int*, const int*);
void sgemm_pack_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                 const int*, float*);
void sgemm_compute_(const char*, const char*, const int*, const int*, const int*, const float*, const int*,
                    const float*, const int*, const float*, float*, const int*);
}
using LinearPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                   std::string_view, c10::List<std::optional<at::Scalar>>,
                                   std::optional<std::string_view>);
std::vector<double> bench(int64_t M, int64_t N, int64_t K, int64_t reps) {
  at::init_num_threads();
  auto x = torch::rand({M, K}), w = torch::rand({N, K}), y = torch::empty({M, N});
  at::Tensor result;
  static auto linear = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                           .typed<LinearPointwise>();
  static auto reorder = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "")
                            .typed<at::Tensor(const at::Tensor&, std::optional<int64_t>)>();
  auto blocked = reorder.call(w, 128);
  auto call = [&](const at::Tensor& weight) {
    return linear.call(x, weight, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::string_view(""));
  };
  int m = M, n = N, k = K, pack_rows = 128;
  float one = 1, zero = 0;
  char ta = 'T', tb = 'N';
  // column-major view, as the translator: y^T[N, M] = W[N, K] x^T[K, M], W packed as matrix A
  auto packed = torch::empty({static_cast<int64_t>(sgemm_pack_get_size_("A", &n, &pack_rows, &k) / 4 + 16)});
  sgemm_pack_("A", "T", &n, &pack_rows, &k, &one, w.data_ptr<float>(), &k, packed.data_ptr<float>());
  std::function<void()> runs[4] = {
      [&] { sgemm_(&ta, &tb, &n, &m, &k, &one, w.data_ptr<float>(), &k, x.data_ptr<float>(), &k, &zero, y.data_ptr<float>(), &n); },
      [&] { sgemm_compute_("P", "N", &n, &m, &k, packed.data_ptr<float>(), &k, x.data_ptr<float>(), &k, &zero, y.data_ptr<float>(), &n); },
      [&] { result = call(w); },  // used where oneDNN leaves it, as the translator does
      [&] { result = call(blocked); }};
  auto want = at::mm(x, w.t());
  for (int f = 0; f < 4; ++f) {
    runs[f]();
    TORCH_CHECK(((f < 2 ? y : result) - want).abs().max().item<float>() < 1e-3, "an engine's result differs from torch.mm");
  }
  std::vector<double> best(4, 1e30);
  for (int i = 0; i < 50; ++i) for (auto& f : runs) f();
  for (int round = 0; round < 5; ++round) {
    for (int f = 0; f < 4; ++f) {
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


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    module = load_inline("mmserve_bench_gemm_v2", cpp_sources=SOURCE, functions=["bench"], extra_cflags=["-O2"])
    torch.set_num_threads(1)
    print(f"{cpu_model()}, 1 thread")
    names = ("MKL sgemm", "MKL packed", "oneDNN", "oneDNN blocked")
    print(f"{'rows x out x in':>18}  " + "  ".join(f"{n:>18}" for n in names) + "   (us, GFLOP/s)")
    for m, n, k in SHAPES:
        times = module.bench(m, n, k, 1000)
        cells = [f"{t * 1e6:7.1f} ({2 * m * n * k / t / 1e9:4.0f})" for t in times]
        print(f"{m:>6} x {n:>4} x {k:>4}  " + "  ".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
