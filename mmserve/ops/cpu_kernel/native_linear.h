// The native translator's linear layers (y = x W^T + b) and the GEMM engine each one runs on.
//
// Why several engines and a measurement: which GEMM is fastest for a decoder's small products depends on
// the CPU, and by a lot (`python benchmarks/bench_gemm.py`, 1 thread, the bundled model's shapes):
//   - on an AMD EPYC, MKL takes its generic path (88-99 GFLOP/s) and oneDNN's inner product with the
//     weight reordered once into its blocked layout reaches 121-214 from 128 rows up;
//   - on an Intel Xeon with AVX-512, MKL's sgemm beats blocked oneDNN at every shape (95-174 against
//     49-161), and MKL's packed GEMM (the weight packed once into MKL's internal layout, what
//     CTranslate2 does with MKL) is faster still (150-187): it saves MKL's per-call copy of the weight.
// A fixed rule would be wrong on one of them, so `choose_engines` times the candidates once per weight
// shape and thread count (translator_cpu.cpp prepares a model per count it runs at; a few ms for the
// bundled model), for small (decoder steps, up to kSmallRows) and large row counts (beams of a full
// batch, the encoder), and keeps the fastest. The choice is reported by `describe_engines` and can be
// forced with MMSERVE_NATIVE_GEMM=
// sgemm|packed|onednn (for measuring). All engines compute the same float32 products; their results
// differ in the last bits only (summation order).

#pragma once

#include "multimax_row.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

// MKL's packed GEMM (Fortran interface, 32-bit ints: the LP64 MKL that x86 torch builds link and
// export, like sgemm_). Weak: a torch without MKL (OpenBLAS on aarch64) leaves them null and the
// packed engine is simply not a candidate.
extern "C" {
size_t sgemm_pack_get_size_(const char* identifier, const int* m, const int* n, const int* k) __attribute__((weak));
void sgemm_pack_(const char* identifier, const char* trans, const int* m, const int* n, const int* k,
                 const float* alpha, const float* src, const int* ld, float* dest) __attribute__((weak));
void sgemm_compute_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* a,
                    const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc)
    __attribute__((weak));
}

namespace mmserve_cpu {
namespace native {

enum class Engine : uint8_t { Sgemm, MklPacked, OneDnn };

inline const char* engine_name(Engine e) {
  switch (e) {
    case Engine::MklPacked: return "mkl-packed";
    case Engine::OneDnn: return "onednn";
    default: return "sgemm";
  }
}

constexpr int64_t kSmallRows = 64;    // up to this many rows a product counts as small
constexpr int64_t kPackRows = 128;    // the row count packed layouts are prepared for (any works)

struct Linear {
  const float* w = nullptr;  // [out, in], row-major (torch's nn.Linear layout)
  const float* b = nullptr;  // [out] or nullptr
  int out = 0, in = 0;
  at::Tensor weight, bias;   // the same memory, for the oneDNN op (bias undefined when none)
  at::Tensor onednn_weight;  // the weight in oneDNN's blocked layout (undefined: none)
  std::shared_ptr<float> mkl_weight;  // the weight in MKL's packed layout (null: none)
  Engine small = Engine::Sgemm, large = Engine::Sgemm;  // per row count, see choose_engines
};

// ------------------------------------------------------------------------------ the engines
using LinearPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                   std::string_view, c10::List<std::optional<at::Scalar>>,
                                   std::optional<std::string_view>);

// torch's oneDNN ops, looked up once (absent in a torch built without oneDNN).
struct OneDnnOps {
  c10::optional<c10::OperatorHandle> linear, reorder;
  c10::optional<c10::TypedOperatorHandle<LinearPointwise>> typed;  // unboxed call when the signature matches
  OneDnnOps() {
    linear = c10::Dispatcher::singleton().findOp(c10::OperatorName("mkldnn::_linear_pointwise", ""));
    reorder = c10::Dispatcher::singleton().findOp(c10::OperatorName("mkldnn::_reorder_linear_weight", ""));
    if (!linear || !reorder) {
      linear = c10::nullopt;
      return;
    }
    try {
      typed = linear->typed<LinearPointwise>();
    } catch (const c10::Error&) {  // another torch's C++ signature: the boxed call still works
    }
  }
  bool available() const { return linear.has_value(); }

  // The weight in oneDNN's blocked layout, or an undefined tensor when it cannot be made.
  at::Tensor pack(const at::Tensor& weight) const {
    if (!available()) return {};
    try {
      torch::jit::Stack stack{weight, c10::IValue(kPackRows)};
      reorder->callBoxed(&stack);
      return stack[0].toTensor();
    } catch (const c10::Error&) {
      return {};
    }
  }

  at::Tensor run(const at::Tensor& input, const Linear& l, bool add_bias) const {
    const std::optional<at::Tensor> bias =
        add_bias && l.bias.defined() ? std::optional<at::Tensor>(l.bias) : std::nullopt;
    if (typed) return typed->call(input, l.onednn_weight, bias, "none", c10::List<std::optional<at::Scalar>>(), std::string_view(""));
    torch::jit::Stack stack{input, l.onednn_weight, bias ? c10::IValue(*bias) : c10::IValue(), c10::IValue(std::string("none")),
                            c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue(std::string(""))};
    linear->callBoxed(&stack);
    return stack[0].toTensor();
  }
};

inline const OneDnnOps& onednn_ops() {
  static const OneDnnOps ops;
  return ops;
}

inline bool has_mkl_packed() { return sgemm_pack_get_size_ && sgemm_pack_ && sgemm_compute_; }

// The weight in MKL's packed layout. Column-major view of the product (as gemm_rowmajor): y^T[out, m] =
// W[out, in] x^T[in, m], W being op(A) = A^T of the row-major [out, in] weight read column-major.
inline std::shared_ptr<float> mkl_pack(const Linear& l) {
  if (!has_mkl_packed()) return nullptr;
  const int m = l.out, n = static_cast<int>(kPackRows), k = l.in;
  const size_t bytes = sgemm_pack_get_size_("A", &m, &n, &k);
  if (bytes == 0) return nullptr;
  void* memory = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!memory) return nullptr;
  std::shared_ptr<float> packed(static_cast<float*>(memory), [](float* p) { std::free(p); });
  const float one = 1.0f;
  sgemm_pack_("A", "T", &m, &n, &k, &one, l.w, &k, packed.get());
  return packed;
}

// Threads a call may use: torch's setting (torch.set_num_threads, the thread policy). OpenMP's and
// MKL's thread counts are per calling thread and a decode worker is a fresh thread, so without this its
// oneDNN / MKL calls would start teams of every core and two workers would oversubscribe the CPU.
// ATen does the same lazily for its own parallel ops.
inline void use_torch_threads() {
  thread_local int applied = 0;
  const int wanted = at::get_num_threads();
  if (applied != wanted) {
    at::init_num_threads();
    applied = wanted;
  }
}

// Whether a product includes the bias. `Leave` returns x W^T alone, for a caller that adds the bias
// where it reads the result anyway (the residual add, the activation, the cache write): one pass over
// the output fewer, and MKL computes C = A B (beta 0) instead of reading C back.
enum class Bias { Add, Leave };

// x[m, in] W^T (+ b) on one engine, written into y (sgemm, packed) or left in the oneDNN op's result,
// kept alive by `holder` (no copy); returns where the result is.
inline float* run_engine(Engine engine, const Linear& l, const float* x, int64_t m, float* y, at::Tensor& holder,
                         Bias bias) {
  const bool add = bias == Bias::Add && l.b != nullptr;
  if (engine == Engine::OneDnn) {
    const at::Tensor input = at::from_blob(const_cast<float*>(x), {m, l.in}, at::TensorOptions().dtype(at::kFloat));
    holder = onednn_ops().run(input, l, add);
    return holder.mutable_data_ptr<float>();
  }
  if (add) {
    for (int64_t r = 0; r < m; ++r) std::memcpy(y + r * l.out, l.b, sizeof(float) * l.out);
  }
  const float beta = add ? 1.0f : 0.0f;
  if (engine == Engine::MklPacked) {
    const int rows = static_cast<int>(m);
    sgemm_compute_("P", "N", &l.out, &rows, &l.in, l.mkl_weight.get(), &l.in, x, &l.in, &beta, y, &l.out);
  } else {
    gemm_rowmajor(static_cast<int>(m), l.out, l.in, 1.0f, x, l.in, l.w, l.in, /*b_transposed=*/true, y, l.out, beta);
  }
  return y;
}

// x[m, in] W^T (+ b), contiguous [m, out], on the engine chosen for this row count: written into
// `buffer` or left in a oneDNN result kept alive by `holder`; returns where it is. The result may be
// modified in place.
inline float* linear_into(const Linear& l, const float* x, int64_t m, float* buffer, at::Tensor& holder,
                          Bias bias = Bias::Add) {
  if (m == 0) return buffer;
  return run_engine(m <= kSmallRows ? l.small : l.large, l, x, m, buffer, holder, bias);
}

// The same into y (row stride l.out), for results that must land in a given buffer.
inline void linear(const Linear& l, const float* x, int64_t m, float* y) {
  at::Tensor holder;
  const float* r = linear_into(l, x, m, y, holder);
  if (r != y) std::memcpy(y, r, sizeof(float) * m * l.out);
}

// ------------------------------------------------------------------------------ the choice
// Seconds per call of `engine` on these inputs: the best of 3 rounds, each timing enough calls for
// about 2M multiply-adds (up to 64 calls; the clock's resolution and call overhead then do not decide).
inline double seconds_per_call(Engine engine, const Linear& l, const float* x, int64_t m, float* y) {
  at::Tensor holder;
  const double work = static_cast<double>(m) * l.in * l.out;
  const int reps = static_cast<int>(std::clamp(2.0e6 / work, 1.0, 64.0));
  double best = 1e30;
  for (int round = 0; round < 3; ++round) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) run_engine(engine, l, x, m, y, holder, Bias::Leave);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / reps);
  }
  return best;
}

// The fastest of `candidates` for m rows. MKL's sgemm stays unless another engine is 3 % faster, so
// that near-ties (where the choice is noise) keep the plain, reproducible path.
inline Engine fastest(const std::vector<Engine>& candidates, const Linear& l, int64_t m) {
  std::vector<float> x(static_cast<size_t>(m * l.in)), y(static_cast<size_t>(m * l.out));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7919) % 1000) * 1e-3f - 0.5f;
  std::vector<double> best(candidates.size(), 1e30);
  for (Engine e : candidates) seconds_per_call(e, l, x.data(), m, y.data());  // warm-up (JIT, caches)
  for (int pass = 0; pass < 2; ++pass) {  // interleaved, so a noisy moment does not favour one engine
    for (size_t c = 0; c < candidates.size(); ++c)
      best[c] = std::min(best[c], seconds_per_call(candidates[c], l, x.data(), m, y.data()));
  }
  size_t pick = 0;  // candidates[0] is sgemm
  for (size_t c = 1; c < candidates.size(); ++c) {
    if (best[c] < 0.97 * best[0] && best[c] < best[pick]) pick = c;
  }
  return candidates[pick];
}

// Whether `l` can run on `engine` (its packed weight was made).
inline bool prepared_for(const Linear& l, Engine engine) {
  if (engine == Engine::MklPacked) return l.mkl_weight != nullptr;
  if (engine == Engine::OneDnn) return l.onednn_weight.defined();
  return true;
}

// Prepares the packed weights and picks each Linear's engines (see the top of this file). Linears of
// the same shape share one measurement, and only the first of them packs for every engine: the others
// pack only for the engines chosen.
inline void choose_engines(const std::vector<Linear*>& layers) {
  use_torch_threads();
  const char* env = std::getenv("MMSERVE_NATIVE_GEMM");
  const std::string mode = env ? env : "auto";
  TORCH_CHECK(mode == "auto" || mode == "sgemm" || mode == "packed" || mode == "onednn",
              "mmserve_cpu: MMSERVE_NATIVE_GEMM must be auto, sgemm, packed or onednn, not '", mode, "'");
  std::map<std::tuple<int, int, bool>, std::pair<Engine, Engine>> measured;
  for (Linear* l : layers) {
    const auto key = std::make_tuple(l->out, l->in, l->b != nullptr);
    auto it = mode == "auto" ? measured.find(key) : measured.end();
    const bool known = it != measured.end();
    const auto wanted = [&](Engine e, const char* forced) {
      if (mode != "auto") return mode == forced;
      return !known || it->second.first == e || it->second.second == e;
    };
    if (wanted(Engine::MklPacked, "packed")) l->mkl_weight = mkl_pack(*l);
    if (wanted(Engine::OneDnn, "onednn")) l->onednn_weight = onednn_ops().pack(l->weight);
    std::vector<Engine> candidates{Engine::Sgemm};
    if (l->mkl_weight) candidates.push_back(Engine::MklPacked);
    if (l->onednn_weight.defined()) candidates.push_back(Engine::OneDnn);
    if (mode != "auto") {  // forced: that engine where it exists, sgemm otherwise
      l->small = l->large = candidates.back();
      continue;
    }
    if (!known) {
      it = measured.emplace(key, std::make_pair(fastest(candidates, *l, 32), fastest(candidates, *l, kPackRows))).first;
    }
    std::tie(l->small, l->large) = it->second;
    if (!prepared_for(*l, l->small)) l->small = Engine::Sgemm;  // its packing failed where the first's worked
    if (!prepared_for(*l, l->large)) l->large = Engine::Sgemm;
    if (l->small != Engine::MklPacked && l->large != Engine::MklPacked) l->mkl_weight.reset();
    if (l->small != Engine::OneDnn && l->large != Engine::OneDnn) l->onednn_weight = at::Tensor();
  }
}

// "out x in: small-engine / large-engine" per distinct shape, for benchmarks and logs.
inline std::string describe_engines(const std::vector<const Linear*>& layers) {
  std::map<std::pair<int, int>, std::string> seen;
  for (const Linear* l : layers) {
    seen.emplace(std::make_pair(l->out, l->in),
                 std::string(engine_name(l->small)) + "/" + engine_name(l->large));
  }
  std::ostringstream out;
  for (const auto& [shape, engines] : seen) {
    if (out.tellp() > 0) out << ", ";
    out << shape.first << "x" << shape.second << ": " << engines;
  }
  return out.str();
}

}  // namespace native
}  // namespace mmserve_cpu
