// Fused MultiMax for CPU tensors: y = softmax(seglu(x) [+ mask]) along the last, contiguous axis.
//
// One row at a time, each row staying in L1/L2 while it is worked on:
//   pass 1: z = seglu(x) (+ mask), stored in the output row (or a float row buffer), running max
//           (z up to a per-row constant, which the softmax cancels: see vseglu_shifted);
//   pass 2: e = exp(z - max), stored in place, running sum;
//   pass 3: y = e / sum (converted to the output dtype).
// Rows are split across threads with at::parallel_for (PyTorch's own OpenMP runtime: the loader links
// the libgomp that torch ships, never a second one).
//
// Vectorisation is explicit, with GCC/Clang vector extensions as wide as the target's registers
// (16 float lanes with AVX-512, 8 with AVX2, 4 with SSE2/NEON): the auto-vectoriser handled the
// multi-accumulator reductions of the backward poorly (stack round trips). A row's last L % W
// elements take one masked vector step (AVX-512 masked loads/stores; a small buffer on narrower
// targets), not a scalar loop. exp is a Cephes-style
// polynomial with 2^n scaling (no libm call, so it vectorises). float16/bfloat16 rows are converted
// to float per row; float64 runs a plain scalar path.
//
// Backward: dz = y * (g - sum(g*y)); dx = dz * seglu'(x); the 4N scalar gradients are reduced per
// fixed block of rows into a [blocks, 4N] float64 buffer and summed in block order, so the result does
// not depend on the number of threads (deterministic).
//
// Semantics shared with mmserve.ops.reference: the mask is applied after the modulator (bool: True =
// masked out; floating: added); masked entries get exactly 0; a fully masked row is all zeros; NaN in
// a row gives NaN for that row.

#include "multimax_row.h"

#include <mutex>
#include <set>
#include <thread>

namespace mmserve_cpu {
namespace {

template <int ORDER, typename scalar_t, typename acc_t>
void forward_impl(const at::Tensor& x, at::Tensor& y, const Params<acc_t>& p,
                  const c10::optional<at::Tensor>& mask_opt) {
  constexpr bool direct = std::is_same_v<scalar_t, acc_t>;  // no per-row dtype conversion
  const int64_t L = x.size(-1);
  const int64_t R = x.numel() / L;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();

  // Direct paths for bool / same-dtype additive masks whose last stride is 1 (key padding and causal
  // masks, also when expanded over heads/queries with zero strides); a per-row gather into an
  // additive buffer for everything else (zero or odd last strides, other dtypes).
  MaskKind kind = MaskKind::None;
  RowIndexer idx;
  int64_t last_stride = 0;
  const uint8_t* mb = nullptr;
  const acc_t* ma = nullptr;
  at::Tensor mask;
  if (mask_opt.has_value() && mask_opt->defined()) {
    mask = *mask_opt;
    TORCH_CHECK(mask.sizes() == x.sizes(), "mmserve_cpu: mask must be expanded to x's shape");
    TORCH_CHECK(mask.device().is_cpu(), "mmserve_cpu: mask must be on the CPU");
    TORCH_CHECK(mask.scalar_type() == at::kBool || at::isFloatingType(mask.scalar_type()),
                "mmserve_cpu: mask must be bool or floating point, got ", mask.scalar_type());
    for (int64_t d = 0; d + 1 < x.dim(); ++d) {
      idx.sizes.push_back(x.size(d));
      idx.strides.push_back(mask.stride(d));
    }
    last_stride = mask.stride(-1);
    if (mask.scalar_type() == at::kBool && last_stride == 1) {
      kind = MaskKind::BoolContig;
      mb = reinterpret_cast<const uint8_t*>(mask.const_data_ptr<bool>());
    } else if (mask.scalar_type() == c10::CppTypeToScalarType<acc_t>::value && last_stride == 1) {
      kind = MaskKind::AddContig;
      ma = mask.const_data_ptr<acc_t>();
    } else {
      kind = MaskKind::Buffered;
    }
  }

  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(L, 1));
  at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> in_buf(direct ? 0 : L), out_buf(direct ? 0 : L);
    std::vector<acc_t> mask_buf(kind == MaskKind::Buffered ? L : 0);
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* xr = xp + row * L;
      scalar_t* yr = yp + row * L;
      const acc_t* xin;
      acc_t* out;
      if constexpr (direct) {
        xin = xr;
        out = yr;
      } else {
        for (int64_t j = 0; j < L; ++j) in_buf[j] = static_cast<acc_t>(xr[j]);
        xin = in_buf.data();
        out = out_buf.data();
      }
      switch (kind) {
        case MaskKind::None:
          forward_row<ORDER, MaskKind::None, acc_t>(xin, out, L, p, nullptr, nullptr);
          break;
        case MaskKind::BoolContig:
          forward_row<ORDER, MaskKind::BoolContig, acc_t>(xin, out, L, p, mb + idx.offset(row), nullptr);
          break;
        case MaskKind::AddContig:
          forward_row<ORDER, MaskKind::AddContig, acc_t>(xin, out, L, p, nullptr, ma + idx.offset(row));
          break;
        case MaskKind::Buffered:
          gather_mask_row<acc_t>(mask, idx.offset(row), last_stride, L, mask_buf.data());
          forward_row<ORDER, MaskKind::Buffered, acc_t>(xin, out, L, p, nullptr, mask_buf.data());
          break;
      }
      if constexpr (!direct) {
        for (int64_t j = 0; j < L; ++j) yr[j] = static_cast<scalar_t>(out[j]);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward of one row, in passes over the (L1/L2-resident) row:
//   pass 0: s = sum g*y;  pass 1: dz = y*(g - s), dx = dz (the identity part of seglu');
//   pass n (one per order n): the 4 sums of order n, and dx += dz * (t_d n d^(n-1) - t_b n b^(n-1));
// The row's sums are added to acc_out[4(n-1) + k]:
//   k=0: sum dz*b^n (-> d_ts[2n-2])          k=1: sum dz*d^n (-> d_ts[2n-1])
//   k=2: sum dz*n b^(n-1) (-> d_ranges[2n-2] / ts[2n-2])   k=3: sum dz*n d^(n-1) (-> -d_ranges[2n-1] / ts[2n-1])
// with slope [b > 0] for n == 1 (autograd's relu'(0) = 0).
template <typename T>
struct OrderTerms {
  T bn, dn, bs, ds;
};

// b^n, d^n and the slopes n b^(n-1), n d^(n-1) (slope [b > 0] when n == 1). Works for float,
// double and vf (for vectors, `b > 0 ? 1 : 0` is a lane-wise select).
template <int NN, typename T, typename S>
inline OrderTerms<T> order_terms(T b, T d, int n_runtime, S one, S zero) {
  const int n = NN > 0 ? NN : n_runtime;
  OrderTerms<T> o;
  if (n == 1) {
    o.bs = b > zero ? T{} + one : T{} + zero;
    o.ds = d > zero ? T{} + one : T{} + zero;
    o.bn = b;
    o.dn = d;
  } else {
    T bp = b, dp = d;  // b^(n-1)
    for (int k = 2; k < n; ++k) {
      bp *= b;
      dp *= d;
    }
    const S nn = static_cast<S>(n);
    o.bs = bp * nn;
    o.ds = dp * nn;
    o.bn = bp * b;
    o.dn = dp * d;
  }
  return o;
}

template <int NN>
inline void order_pass_f32(const float* __restrict__ x, const float* __restrict__ dz, float* __restrict__ dx,
                           int64_t L, int n, const Params<float>& p, double* __restrict__ acc_out) {
  const float rb = p.r[2 * n - 2], rd = p.r[2 * n - 1], tb = p.t[2 * n - 2], td = p.t[2 * n - 1];
  const vf zero = splat(0.0f);
  vf a0 = zero, a1 = zero, a2 = zero, a3 = zero;
  int64_t j = 0;
  for (; j + W <= L; j += W) {
    const vf xv = vload(x + j);
    const vf dzj = vload(dz + j);
    const OrderTerms<vf> o = order_terms<NN, vf, float>(vmax(rb - xv, zero), vmax(xv - rd, zero), n, 1.0f, 0.0f);
    a0 += dzj * o.bn;
    a1 += dzj * o.dn;
    a2 += dzj * o.bs;
    a3 += dzj * o.ds;
    vstore(dx + j, vload(dx + j) + dzj * (td * o.ds - tb * o.bs));
  }
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (; j < L; ++j) {
    const float dzj = dz[j];
    const OrderTerms<float> o =
        order_terms<NN, float, float>(std::max(rb - x[j], 0.0f), std::max(x[j] - rd, 0.0f), n, 1.0f, 0.0f);
    s0 += dzj * o.bn;
    s1 += dzj * o.dn;
    s2 += dzj * o.bs;
    s3 += dzj * o.ds;
    dx[j] += dzj * (td * o.ds - tb * o.bs);
  }
  acc_out[0] += static_cast<double>(hsum(a0) + s0);
  acc_out[1] += static_cast<double>(hsum(a1) + s1);
  acc_out[2] += static_cast<double>(hsum(a2) + s2);
  acc_out[3] += static_cast<double>(hsum(a3) + s3);
}

// sum_j a[j] * b[j] of one float row (the softmax part of the backward: s = sum g*y).
inline float dot_f32(const float* __restrict__ a, const float* __restrict__ b, int64_t L) {
  vf sv = splat(0.0f);
  int64_t j = 0;
  for (; j + W <= L; j += W) sv += vload(a + j) * vload(b + j);
  if (j < L) sv += vload_tail(a + j, L - j, 0.0f) * vload_tail(b + j, L - j, 0.0f);
  return hsum(sv);
}

// float rows: g, y, x -> dx; `dz` is a scratch row.
inline void backward_row_f32(const float* __restrict__ g, const float* __restrict__ y, const float* __restrict__ x,
                             float* __restrict__ dx, float* __restrict__ dz, int64_t L, const Params<float>& p,
                             double* __restrict__ acc_out) {
  const float s = dot_f32(g, y, L);
  int64_t j = 0;
  for (; j + W <= L; j += W) {
    const vf d = vload(y + j) * (vload(g + j) - s);
    vstore(dz + j, d);
    vstore(dx + j, d);
  }
  for (; j < L; ++j) {
    const float d = y[j] * (g[j] - s);
    dz[j] = d;
    dx[j] = d;
  }
  for (int n = 1; n <= p.order; ++n) {
    double* acc = acc_out + 4 * (n - 1);
    switch (n) {
      case 1: order_pass_f32<1>(x, dz, dx, L, n, p, acc); break;
      case 2: order_pass_f32<2>(x, dz, dx, L, n, p, acc); break;
      case 3: order_pass_f32<3>(x, dz, dx, L, n, p, acc); break;
      case 4: order_pass_f32<4>(x, dz, dx, L, n, p, acc); break;
      default: order_pass_f32<-1>(x, dz, dx, L, n, p, acc); break;
    }
  }
}

// Single-pass variant for compile-time orders 0..4 (what models use): after s = sum g*y, one sweep
// reads g, y, x once, keeps the 4N sums in vector registers and writes dx. Measured ~2x faster than
// the per-order passes above, which remain for run-time orders. The row's last L % W elements take
// one masked vector step: their padding lanes have g = y = 0, so dz = 0 and they add nothing.
template <int ORDER>
inline void backward_row_f32_fused(const float* __restrict__ g, const float* __restrict__ y,
                                   const float* __restrict__ x, float* __restrict__ dx, int64_t L,
                                   const Params<float>& p, double* __restrict__ acc_out) {
  constexpr int kSums = ORDER > 0 ? 4 * ORDER : 1;
  const float s = dot_f32(g, y, L);
  const vf zero = splat(0.0f);
  vf acc[kSums];
  for (int i = 0; i < kSums; ++i) acc[i] = zero;
  auto step = [&](vf xv, vf yv, vf gv) {
    const vf dz = yv * (gv - s);
    vf slope = splat(1.0f);
#pragma GCC unroll 4
    for (int n = 1; n <= ORDER; ++n) {
      const OrderTerms<vf> o = order_terms<0, vf, float>(vmax(p.r[2 * n - 2] - xv, zero),
                                                          vmax(xv - p.r[2 * n - 1], zero), n, 1.0f, 0.0f);
      acc[4 * (n - 1) + 0] += dz * o.bn;
      acc[4 * (n - 1) + 1] += dz * o.dn;
      acc[4 * (n - 1) + 2] += dz * o.bs;
      acc[4 * (n - 1) + 3] += dz * o.ds;
      slope += p.t[2 * n - 1] * o.ds - p.t[2 * n - 2] * o.bs;
    }
    return dz * slope;
  };
  int64_t j = 0;
  for (; j + W <= L; j += W) vstore(dx + j, step(vload(x + j), vload(y + j), vload(g + j)));
  if (j < L) {
    const int64_t n = L - j;
    vstore_tail(dx + j, step(vload_tail(x + j, n, 0.0f), vload_tail(y + j, n, 0.0f), vload_tail(g + j, n, 0.0f)), n);
  }
  for (int i = 0; i < 4 * ORDER; ++i) acc_out[i] += static_cast<double>(hsum(acc[i]));
}

// float64 rows: plain scalar code.
inline void backward_row_f64(const double* g, const double* y, const double* x, double* dx, int64_t L,
                             const Params<double>& p, double* acc_out) {
  double s = 0.0;
  for (int64_t j = 0; j < L; ++j) s += g[j] * y[j];
  for (int64_t j = 0; j < L; ++j) {
    const double dz = y[j] * (g[j] - s);
    double slope = 1.0;
    for (int n = 1; n <= p.order; ++n) {
      const OrderTerms<double> o = order_terms<-1, double, double>(
          std::max(p.r[2 * n - 2] - x[j], 0.0), std::max(x[j] - p.r[2 * n - 1], 0.0), n, 1.0, 0.0);
      double* acc = acc_out + 4 * (n - 1);
      acc[0] += dz * o.bn;
      acc[1] += dz * o.dn;
      acc[2] += dz * o.bs;
      acc[3] += dz * o.ds;
      slope += p.t[2 * n - 1] * o.ds - p.t[2 * n - 2] * o.bs;
    }
    dx[j] = dz * slope;
  }
}

template <int ORDER, typename scalar_t, typename acc_t>
void backward_impl(const at::Tensor& g, const at::Tensor& y, const at::Tensor& x, at::Tensor& dx,
                   const Params<acc_t>& p, std::vector<double>& totals) {
  constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
  const int64_t L = x.size(-1);
  const int64_t R = x.numel() / L;
  const int sums = 4 * p.order;
  const int64_t stride = std::max(sums, 1);
  const int64_t blocks = (R + kRowsPerBlock - 1) / kRowsPerBlock;
  std::vector<double> partial(static_cast<size_t>(blocks * stride), 0.0);
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(L * kRowsPerBlock, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> buf(static_cast<size_t>((direct ? 1 : 5) * L));  // dz [, g, y, x, dx]
    acc_t* dz = buf.data();
    for (int64_t blk = b0; blk < b1; ++blk) {
      double* acc = partial.data() + blk * stride;
      const int64_t r1 = std::min(R, (blk + 1) * kRowsPerBlock);
      for (int64_t row = blk * kRowsPerBlock; row < r1; ++row) {
        const int64_t o = row * L;
        const acc_t *gr, *yr, *xr;
        acc_t* dxr;
        if constexpr (direct) {
          gr = gp + o;
          yr = yp + o;
          xr = xp + o;
          dxr = dxp + o;
        } else {
          acc_t* gb = dz + L;
          acc_t* yb = dz + 2 * L;
          acc_t* xb = dz + 3 * L;
          for (int64_t j = 0; j < L; ++j) {
            gb[j] = static_cast<acc_t>(gp[o + j]);
            yb[j] = static_cast<acc_t>(yp[o + j]);
            xb[j] = static_cast<acc_t>(xp[o + j]);
          }
          gr = gb;
          yr = yb;
          xr = xb;
          dxr = dz + 4 * L;
        }
        if constexpr (std::is_same_v<acc_t, float> && ORDER >= 0) {
          backward_row_f32_fused<ORDER>(gr, yr, xr, dxr, L, p, acc);
        } else if constexpr (std::is_same_v<acc_t, float>) {
          backward_row_f32(gr, yr, xr, dxr, dz, L, p, acc);
        } else {
          backward_row_f64(gr, yr, xr, dxr, L, p, acc);
        }
        if constexpr (!direct) {
          for (int64_t j = 0; j < L; ++j) dxp[o + j] = static_cast<scalar_t>(dxr[j]);
        }
      }
    }
  });
  totals.assign(std::max(sums, 0), 0.0);
  for (int64_t blk = 0; blk < blocks; ++blk)  // fixed order: deterministic for any thread count
    for (int i = 0; i < sums; ++i) totals[i] += partial[blk * stride + i];
}

template <typename F>
void dispatch_dtype(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "mmserve_cpu: unsupported dtype ", st);
  }
}

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "mmserve_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(x.is_contiguous(), "mmserve_cpu: ", name, " must be contiguous");
  TORCH_CHECK(x.dim() >= 1, "mmserve_cpu: ", name, " must have at least one dimension");
}

at::Tensor multimax_forward(const at::Tensor& x, const at::Tensor& ranges, const at::Tensor& ts,
                            const c10::optional<at::Tensor>& mask) {
  check_input(x, "x");
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return y;
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const Params<acc_t> p = read_params<acc_t>(ranges, ts);
    dispatch_order(p.order, [&](auto order) {
      forward_impl<decltype(order)::value, scalar_t, acc_t>(x, y, p, mask);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> multimax_backward(const at::Tensor& grad_y, const at::Tensor& y,
                                                                 const at::Tensor& x, const at::Tensor& ranges,
                                                                 const at::Tensor& ts) {
  check_input(x, "x");
  check_input(y, "y");
  check_input(grad_y, "grad_y");
  TORCH_CHECK(grad_y.sizes() == x.sizes() && y.sizes() == x.sizes(), "mmserve_cpu: grad_y, y, x shapes differ");
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type() && y.scalar_type() == x.scalar_type(),
              "mmserve_cpu: grad_y, y, x dtypes differ");
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n2 = ranges.numel();
  std::vector<double> totals(n2 * 2, 0.0);
  if (x.numel() > 0) {
    dispatch_dtype(x.scalar_type(), [&](auto tag) {
      using scalar_t = decltype(tag);
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      const Params<acc_t> p = read_params<acc_t>(ranges, ts);
      dispatch_order(p.order, [&](auto order) {
        backward_impl<decltype(order)::value, scalar_t, acc_t>(grad_y, y, x, dx, p, totals);
      });
    });
  }
  // totals -> d_ranges, d_ts (float64, then the parameters' dtype)
  const at::Tensor t = ts.detach().to(at::kCPU, at::kDouble).contiguous();
  at::Tensor d_ranges = at::zeros({n2}, at::TensorOptions().dtype(at::kDouble));
  at::Tensor d_ts = at::zeros({n2}, at::TensorOptions().dtype(at::kDouble));
  double* dr = d_ranges.mutable_data_ptr<double>();
  double* dt = d_ts.mutable_data_ptr<double>();
  const double* tv = t.const_data_ptr<double>();
  for (int64_t n = 1; n <= n2 / 2 && x.numel() > 0; ++n) {
    const double* a = totals.data() + 4 * (n - 1);
    dt[2 * n - 2] = a[0];
    dt[2 * n - 1] = a[1];
    dr[2 * n - 2] = tv[2 * n - 2] * a[2];
    dr[2 * n - 1] = -tv[2 * n - 1] * a[3];
  }
  return {dx, d_ranges.to(ranges.options()), d_ts.to(ts.options())};
}

// Number of distinct OS threads at::parallel_for ran on for a large range: lets the tests check that
// the extension really runs in parallel on PyTorch's thread pool (a build without OpenMP would not).
int64_t parallel_threads() {
  std::mutex mu;
  std::set<std::thread::id> ids;
  at::parallel_for(0, 1 << 20, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(ids.size());
}

}  // namespace
}  // namespace mmserve_cpu

// All schemas of the library live here; attention_cpu.cpp adds its CPU implementation.
TORCH_LIBRARY(mmserve_cpu, m) {
  m.def("multimax_forward(Tensor x, Tensor ranges, Tensor ts, Tensor? mask) -> Tensor");
  m.def("multimax_backward(Tensor grad_y, Tensor y, Tensor x, Tensor ranges, Tensor ts) -> (Tensor, Tensor, Tensor)");
  m.def(
      "attention_forward(Tensor q, Tensor k, Tensor v, Tensor ranges, Tensor ts, Tensor? mask, bool is_causal, "
      "float scale) -> Tensor");
  m.def("parallel_threads", &mmserve_cpu::parallel_threads);
  m.def("has_blas", &mmserve_cpu::has_blas);
}

TORCH_LIBRARY_IMPL(mmserve_cpu, CPU, m) {
  m.impl("multimax_forward", &mmserve_cpu::multimax_forward);
  m.impl("multimax_backward", &mmserve_cpu::multimax_backward);
}
