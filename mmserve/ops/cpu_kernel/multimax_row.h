// Shared by the fused MultiMax CPU kernels (multimax_cpu.cpp: the row op; attention_cpu.cpp: fused
// attention): parameters, the scalar and vector math (seglu, exp), the row forward, mask
// addressing. Header-only (inline functions and templates), compiled into each translation unit.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <thread>
#include <type_traits>
#include <vector>

extern "C" {
// Fortran-interface BLAS sgemm (LP64), the one ATen's own CPU BLAS wrapper calls; PyTorch's CPU
// builds export it from libtorch_cpu (bundled MKL or OpenBLAS). Declared weak: when the running torch
// does not export it, has_blas() is false and Python keeps the eager paths.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
}

namespace mmserve_cpu {

constexpr int kMaxOrder = 16;         // ranges/ts of length up to 32
constexpr int64_t kRowsPerBlock = 8;  // backward: rows per deterministic partial-sum block
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------------------------
// Parameters of the modulator, read once per call.
template <typename acc_t>
struct Params {
  acc_t r[2 * kMaxOrder];
  acc_t t[2 * kMaxOrder];
  acc_t minus_2tr[2 * kMaxOrder];  // -2 t r: linear coefficient of an expanded square (vseglu_shifted)
  int order;
};

// ---------------------------------------------------------------------------------------------
// Constants of the vector exp (vexp_nonpos below): exp(x) for x <= 0 (softmax only evaluates
// exp(z - max)) as x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-5 polynomial, 2^n by writing the
// exponent bits. Below ln(FLT_MIN), including the -inf of masked entries, the result is exactly 0.
constexpr float kExpLo = -87.3365447505f;  // ln(FLT_MIN): 2^n stays a normal number above it
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
constexpr float kQ1 = 0.999999701f, kQ2 = 0.499991506f, kQ3 = 0.166676521f, kQ4 = 0.0418978221f,
                kQ5 = 0.00828929059f;

// seglu for one scalar (the float64 path, which is for checking, not for speed).
// ORDER >= 0: compile-time order (unrolled); ORDER == -1: run-time order.
template <int ORDER, typename acc_t>
inline acc_t seglu(acc_t x, const Params<acc_t>& p) {
  const int order = ORDER >= 0 ? ORDER : p.order;
  acc_t z = x;
  for (int n = 1; n <= order; ++n) {
    const acc_t b = std::max(p.r[2 * n - 2] - x, acc_t(0));
    const acc_t d = std::max(x - p.r[2 * n - 1], acc_t(0));
    acc_t bn = b, dn = d;
    for (int k = 1; k < n; ++k) {
      bn *= b;
      dn *= d;
    }
    z += p.t[2 * n - 2] * bn + p.t[2 * n - 1] * dn;
  }
  return z;
}

// ---------------------------------------------------------------------------------------------
// Float vectors of W lanes.
// The lane count follows the widest vector registers the build targets (-march): a vector type wider
// than the registers is split by the compiler, but values then travel through memory between
// functions it does not inline, which cost 8x with 64-byte vectors on an SSE2-only build.
#if defined(__AVX512F__)
#define MMSERVE_VEC_BYTES 64
#elif defined(__AVX__)
#define MMSERVE_VEC_BYTES 32
#else
#define MMSERVE_VEC_BYTES 16  // SSE2, NEON, and anything else GCC/Clang vectors map onto
#endif
constexpr int W = MMSERVE_VEC_BYTES / 4;
typedef float vf __attribute__((vector_size(MMSERVE_VEC_BYTES)));
typedef int32_t vi __attribute__((vector_size(MMSERVE_VEC_BYTES)));
typedef uint8_t vb __attribute__((vector_size(MMSERVE_VEC_BYTES / 4)));

inline vf splat(float s) { return vf{} + s; }
inline vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
#if defined(__AVX512F__)
inline float hsum(vf v) { return _mm512_reduce_add_ps(v); }
inline float hmax(vf v) { return _mm512_reduce_max_ps(v); }
#else
inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}
inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = std::max(m, v[i]);
  return m;
}
#endif

// The last n (< W) floats of a row as one vector, the other lanes set to `fill`; and the store back
// of those n lanes. Rows of ViT attention are 197 long: with 16 lanes, 5 elements were left to a
// scalar loop (scalar exp included), a quarter of the row's time; one masked vector step replaces it.
#if defined(__AVX512F__)
inline __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline vf vload_tail(const float* p, int64_t n, float fill) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(n), p);
}
inline void vstore_tail(float* p, vf v, int64_t n) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
#else
inline vf vload_tail(const float* p, int64_t n, float fill) {
  float buf[W];
  for (int i = 0; i < W; ++i) buf[i] = i < n ? p[i] : fill;
  return vload(buf);
}
inline void vstore_tail(float* p, vf v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
}
#endif
// Lanes at or past n replaced by `fill` (bool masks and lane bookkeeping of a tail step).
inline vf keep_lanes(vf v, int64_t n, float fill) {
  vi lane;
  for (int i = 0; i < W; ++i) lane[i] = i;
  return lane < static_cast<int32_t>(n) ? v : splat(fill);
}

__attribute__((always_inline)) inline vf vexp_nonpos(vf x) {
  // Clamp from below with one max whose NaN operand wins (x86 max returns its second operand when
  // either is NaN), so a NaN input stays NaN through the polynomial; -inf and tiny inputs become 0
  // by the final select.
  const vf lo = splat(kExpLo);
  const vf xc = lo > x ? lo : x;
  const vf n = (xc * kLog2e + kRound) - kRound;
  vf r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  // Degree-5 minimax polynomial (the coefficients of ATen's Vectorized<float>::exp_u20, which
  // torch.softmax uses): ~3 ops fewer than the degree-6 scalar one, within the tests' 2e-6.
  vf p = splat(kQ5);
  p = p * r + kQ4;
  p = p * r + kQ3;
  p = p * r + kQ2;
  p = p * r + kQ1;
  p = p * r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  const vf res = p * reinterpret_cast<const vf&>(bits);
  return x < lo ? splat(0.0f) : res;  // NaN compares false: stays NaN
}

// seglu(x) minus a constant, for the softmax that follows (softmax(z + c) == softmax(z)): the
// constant parts of the order-1 and order-2 terms are dropped so that each term costs one min/max
// and one or two FMAs instead of sub, max, mul and FMA:
//   t0 max(r0 - x, 0)   = -t0 min(x, r0)            + t0 r0
//   t1 max(x - r1, 0)   =  t1 max(x, r1)            - t1 r1
//   t2 max(r2 - x, 0)^2 =  u (t2 u - 2 t2 r2)       + t2 r2^2,   u = min(x, r2)
//   t3 max(x - r3, 0)^2 =  v (t3 v - 2 t3 r3)       + t3 r3^2,   v = max(x, r3)
// The rounding error this adds to z is about eps * |t r^2|, negligible next to eps * |z| for the
// parameters models learn (|r| of order 1). Orders 3+ keep the direct form.
template <int ORDER>
__attribute__((always_inline)) inline vf vseglu_shifted(vf x, const Params<float>& p) {
  const int order = ORDER >= 0 ? ORDER : p.order;
  vf z = x;
  const vf zero = splat(0.0f);
  for (int n = 1; n <= order; ++n) {
    const int ib = 2 * n - 2, id = 2 * n - 1;
    if (n == 1) {
      const vf lo = splat(p.r[ib]), hi = splat(p.r[id]);
      z -= p.t[ib] * (x < lo ? x : lo);
      z += p.t[id] * (x > hi ? x : hi);
    } else if (n == 2) {
      const vf lo = splat(p.r[ib]), hi = splat(p.r[id]);
      const vf u = x < lo ? x : lo;
      const vf v = x > hi ? x : hi;
      z += u * (p.t[ib] * u + p.minus_2tr[ib]);
      z += v * (p.t[id] * v + p.minus_2tr[id]);
    } else {
      const vf b = vmax(p.r[ib] - x, zero);
      const vf d = vmax(x - p.r[id], zero);
      vf bn = b, dn = d;
      for (int k = 1; k < n; ++k) {
        bn *= b;
        dn *= d;
      }
      z += p.t[ib] * bn + p.t[id] * dn;
    }
  }
  return z;
}

// How a row's mask reaches the kernel.
enum class MaskKind { None, BoolContig, AddContig, Buffered };

// ---------------------------------------------------------------------------------------------
// Forward of one float row: x -> out (may be the same buffer: every loop is elementwise in place).
// For MaskKind::Buffered `madd` holds the row's additive mask with bool already mapped to -inf/0.
// z is seglu(x) up to a per-row constant (vseglu_shifted), which the softmax cancels. A row's last
// L % W elements take one masked vector step.
template <MaskKind MK>
inline vf apply_mask(vf z, int64_t j, int64_t n, const uint8_t* __restrict__ mbool,
                     const float* __restrict__ madd) {
  if constexpr (MK == MaskKind::BoolContig) {
    vb mb{};
    std::memcpy(&mb, mbool + j, static_cast<size_t>(n));
    return __builtin_convertvector(mb, vi) != 0 ? splat(-kInf) : z;
  } else if constexpr (MK == MaskKind::AddContig || MK == MaskKind::Buffered) {
    return z + (n == W ? vload(madd + j) : vload_tail(madd + j, n, 0.0f));
  } else {
    return z;
  }
}

template <int ORDER, MaskKind MK>
inline void forward_row_f32(const float* x, float* out, int64_t L,
                            const Params<float>& p, const uint8_t* __restrict__ mbool,
                            const float* __restrict__ madd) {
  if (L <= W) {  // one vector (decoder attention over a few keys): the same steps, all in one register
    const vf z = keep_lanes(apply_mask<MK>(vseglu_shifted<ORDER>(vload_tail(x, L, 0.0f), p), 0, L, mbool, madd), L, -kInf);
    const float m = hmax(z);
    if (m == -kInf) {
      std::memset(out, 0, sizeof(float) * L);
      return;
    }
    const vf e = vexp_nonpos(z - m);  // lanes past L: exp(-inf) = 0
    vstore_tail(out, e * (1.0f / hsum(e)), L);
    return;
  }
  const int64_t full = L - L % W, rest = L - full;
  vf mv = splat(-kInf);
  for (int64_t j = 0; j < full; j += W) {
    const vf z = apply_mask<MK>(vseglu_shifted<ORDER>(vload(x + j), p), j, W, mbool, madd);
    vstore(out + j, z);
    mv = vmax(mv, z);
  }
  if (rest) {
    vf z = apply_mask<MK>(vseglu_shifted<ORDER>(vload_tail(x + full, rest, 0.0f), p), full, rest, mbool, madd);
    vstore_tail(out + full, z, rest);
    mv = vmax(mv, keep_lanes(z, rest, -kInf));
  }
  const float m = hmax(mv);
  if (m == -kInf) {  // fully masked: zeros, never NaN from -inf - -inf
    std::memset(out, 0, sizeof(float) * L);
    return;
  }
  vf sv = splat(0.0f);
  for (int64_t j = 0; j < full; j += W) {
    const vf e = vexp_nonpos(vload(out + j) - m);
    vstore(out + j, e);
    sv += e;
  }
  if (rest) {
    const vf e = vexp_nonpos(vload_tail(out + full, rest, -kInf) - m);  // fill lanes: exp(-inf) = 0
    vstore_tail(out + full, e, rest);
    sv += e;
  }
  const float inv = 1.0f / hsum(sv);
  for (int64_t j = 0; j < full; j += W) vstore(out + j, vload(out + j) * inv);
  if (rest) vstore_tail(out + full, vload_tail(out + full, rest, 0.0f) * inv, rest);
}

// Forward of one float64 row (plain scalar code: float64 is for checking, not for speed).
template <int ORDER, MaskKind MK>
inline void forward_row_f64(const double* __restrict__ x, double* __restrict__ out, int64_t L,
                            const Params<double>& p, const uint8_t* __restrict__ mbool,
                            const double* __restrict__ madd) {
  const double ninf = -std::numeric_limits<double>::infinity();
  double m = ninf;
  for (int64_t j = 0; j < L; ++j) {
    double z = seglu<ORDER>(x[j], p);
    if constexpr (MK == MaskKind::BoolContig) {
      z = mbool[j] ? ninf : z;
    } else if constexpr (MK == MaskKind::AddContig || MK == MaskKind::Buffered) {
      z += madd[j];
    }
    out[j] = z;
    m = (z != z || m != m) ? std::numeric_limits<double>::quiet_NaN() : std::max(m, z);
  }
  if (m == ninf) {
    std::memset(out, 0, sizeof(double) * L);
    return;
  }
  double sum = 0.0;
  for (int64_t j = 0; j < L; ++j) {
    const double e = std::exp(out[j] - m);
    out[j] = e;
    sum += e;
  }
  const double inv = 1.0 / sum;
  for (int64_t j = 0; j < L; ++j) out[j] *= inv;
}

template <int ORDER, MaskKind MK, typename acc_t>
inline void forward_row(const acc_t* x, acc_t* out, int64_t L, const Params<acc_t>& p, const uint8_t* mbool,
                        const acc_t* madd) {
  if constexpr (std::is_same_v<acc_t, float>) {
    forward_row_f32<ORDER, MK>(x, out, L, p, mbool, madd);
  } else {
    forward_row_f64<ORDER, MK>(x, out, L, p, mbool, madd);
  }
}

// Element offset of row `row` of a mask expanded to x's shape (any strides, zeros included).
struct RowIndexer {
  std::vector<int64_t> sizes;    // leading dims of x (all but the last)
  std::vector<int64_t> strides;  // the mask's strides for those dims
  int64_t offset(int64_t row) const {
    int64_t off = 0;
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      const int64_t i = row % sizes[d];
      row /= sizes[d];
      off += i * strides[d];
    }
    return off;
  }
};

template <typename acc_t>
Params<acc_t> read_params(const at::Tensor& ranges, const at::Tensor& ts) {
  TORCH_CHECK(ranges.dim() == 1 && ts.dim() == 1 && ranges.numel() == ts.numel() && ranges.numel() % 2 == 0,
              "mmserve_cpu: ranges and ts must be 1-D with the same even length");
  const int64_t n2 = ranges.numel();
  TORCH_CHECK(n2 <= 2 * kMaxOrder, "mmserve_cpu: order above ", kMaxOrder, " is not supported");
  Params<acc_t> p{};
  p.order = static_cast<int>(n2 / 2);
  const at::Tensor r = ranges.detach().to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor t = ts.detach().to(at::kCPU, at::kDouble).contiguous();
  for (int64_t i = 0; i < n2; ++i) {
    p.r[i] = static_cast<acc_t>(r.const_data_ptr<double>()[i]);
    p.t[i] = static_cast<acc_t>(t.const_data_ptr<double>()[i]);
    p.minus_2tr[i] = static_cast<acc_t>(-2.0 * t.const_data_ptr<double>()[i] * r.const_data_ptr<double>()[i]);
  }
  return p;
}

// One row of a mask (any dtype, any last-dim stride) as additive acc_t values.
template <typename acc_t>
void gather_mask_row(const at::Tensor& mask, int64_t off, int64_t stride, int64_t L, acc_t* dst) {
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  switch (mask.scalar_type()) {
    case at::kBool: {
      const bool* b = mask.const_data_ptr<bool>() + off;
      for (int64_t j = 0; j < L; ++j) dst[j] = b[j * stride] ? ninf : acc_t(0);
      break;
    }
    case at::kFloat: {
      const float* b = mask.const_data_ptr<float>() + off;
      for (int64_t j = 0; j < L; ++j) dst[j] = static_cast<acc_t>(b[j * stride]);
      break;
    }
    case at::kDouble: {
      const double* b = mask.const_data_ptr<double>() + off;
      for (int64_t j = 0; j < L; ++j) dst[j] = static_cast<acc_t>(b[j * stride]);
      break;
    }
    case at::kHalf: {
      const c10::Half* b = mask.const_data_ptr<c10::Half>() + off;
      for (int64_t j = 0; j < L; ++j) dst[j] = static_cast<acc_t>(static_cast<float>(b[j * stride]));
      break;
    }
    case at::kBFloat16: {
      const c10::BFloat16* b = mask.const_data_ptr<c10::BFloat16>() + off;
      for (int64_t j = 0; j < L; ++j) dst[j] = static_cast<acc_t>(static_cast<float>(b[j * stride]));
      break;
    }
    default:
      TORCH_CHECK(false, "mmserve_cpu: mask must be bool or floating point, got ", mask.scalar_type());
  }
}

// ---------------------------------------------------------------------------------------------
template <typename F>
void dispatch_order(int order, F&& f) {
  switch (order) {
    case 0: f(std::integral_constant<int, 0>{}); break;
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, -1>{}); break;
  }
}

// Defined in attention_cpu.cpp: whether the BLAS sgemm the fused attention calls is present.
bool has_blas();

// Row-major C[m x n] = alpha * A[m x k] * op(B) + beta * C with A's rows `lda` apart; B is either
// row-major [k x n] (b_transposed = false) or row-major [n x k] used transposed (true, the layout of
// a Linear weight). Column-major sgemm on the transposed problem: C^T = op(B)^T A^T.
inline void gemm_rowmajor(int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
                          bool b_transposed, float* c, int ldc, float beta = 0.0f) {
  const char ta = b_transposed ? 'T' : 'N';
  const char tb = 'N';
  sgemm_(&ta, &tb, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

}  // namespace mmserve_cpu
