// Fused MultiMax attention for CPU inference (float32):
//     out = softmax(seglu(q k^T * scale) masked) @ v       q [B,H,Tq,D], k [B,H,Tk,D], v [B,H,Tk,Dv]
//
// Why: the explicit path (score matmul, row op, matmul) writes and re-reads the [B,H,Tq,Tk] score
// tensor through memory and copies the strided q/k/v views the model produces into contiguous
// batches; SDPA's CPU flash kernel does neither. Here each work unit is one (batch, head, block of
// queries): scores for the block go to a small per-thread buffer that stays in L1/L2 (sgemm straight
// from the strided q/k views), the MultiMax row kernel normalises it in place (mask and causal rule
// applied after the modulator, fully masked rows -> 0), and a second sgemm writes the block's output
// rows straight into a [B, Tq, H, Dv] buffer (returned as a [B, H, Tq, Dv] view, the layout SDPA
// returns, so the model's transpose+reshape is free). With a causal mask only keys up to the block's
// last visible one are computed.
//
// Inference only (no autograd): the Python side uses the eager path when gradients are needed, when
// tracing/compiling (so graphs keep the mmserve::multimax node), and for other dtypes.

#include "multimax_row.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

namespace mmserve_cpu {

bool has_blas() { return sgemm_ != nullptr; }

namespace {

struct AttnMask {
  MaskKind kind = MaskKind::None;
  RowIndexer idx;  // over (B, H, Tq)
  int64_t last_stride = 0;
  const uint8_t* mb = nullptr;
  const float* ma = nullptr;
  at::Tensor tensor;
};

template <int ORDER>
void attention_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                    const Params<float>& p, const AttnMask& mask, bool is_causal, float scale) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Tk = k.size(2), Dv = v.size(3);
  const int64_t offset = Tk - Tq;  // causal rule aligned to the last key (KV cache)
  // Query block: keep the block's score tile around 64 KiB.
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(Tq, std::max<int64_t>(8, 16384 / std::max<int64_t>(Tk, 1))));
  const int64_t n_blocks = (Tq + block - 1) / block;
  const float* qp = q.const_data_ptr<float>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();  // [B, Tq, H, Dv] contiguous
  const int64_t out_row = H * Dv;

  at::parallel_for(0, B * H * n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(block * Tk));
    std::vector<float> mask_buf(mask.kind == MaskKind::Buffered ? Tk : 0);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t qb = unit % n_blocks;
      const int64_t bh = unit / n_blocks;
      const int64_t h = bh % H, b = bh / H;
      const int64_t q0 = qb * block;
      const int64_t nq = std::min(block, Tq - q0);
      float* o0 = op + (b * Tq + q0) * out_row + h * Dv;
      // keys any row of this block may see
      const int64_t kv_len = is_causal ? std::clamp<int64_t>(q0 + nq + offset, 0, Tk) : Tk;
      if (kv_len == 0) {
        for (int64_t i = 0; i < nq; ++i) std::memset(o0 + i * out_row, 0, sizeof(float) * Dv);
        continue;
      }
      const float* qbh = qp + b * q.stride(0) + h * q.stride(1) + q0 * q.stride(2);
      const float* kbh = kp + b * k.stride(0) + h * k.stride(1);
      const float* vbh = vp + b * v.stride(0) + h * v.stride(1);
      float* s = scores.data();
      const int ld = static_cast<int>(kv_len);
      gemm_rowmajor(static_cast<int>(nq), ld, static_cast<int>(D), scale, qbh, static_cast<int>(q.stride(2)), kbh,
                    static_cast<int>(k.stride(2)), /*b_transposed=*/true, s, ld);
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t qi = q0 + i;
        float* row = s + i * ld;
        const int64_t valid = is_causal ? std::clamp<int64_t>(qi + offset + 1, 0, kv_len) : kv_len;
        if (valid > 0) {
          const int64_t moff = mask.kind == MaskKind::None ? 0 : mask.idx.offset((b * H + h) * Tq + qi);
          switch (mask.kind) {
            case MaskKind::None:
              forward_row_f32<ORDER, MaskKind::None>(row, row, valid, p, nullptr, nullptr);
              break;
            case MaskKind::BoolContig:
              forward_row_f32<ORDER, MaskKind::BoolContig>(row, row, valid, p, mask.mb + moff, nullptr);
              break;
            case MaskKind::AddContig:
              forward_row_f32<ORDER, MaskKind::AddContig>(row, row, valid, p, nullptr, mask.ma + moff);
              break;
            case MaskKind::Buffered:
              gather_mask_row<float>(mask.tensor, moff, mask.last_stride, valid, mask_buf.data());
              forward_row_f32<ORDER, MaskKind::Buffered>(row, row, valid, p, nullptr, mask_buf.data());
              break;
          }
        }
        if (valid < kv_len) std::memset(row + std::max<int64_t>(valid, 0), 0, sizeof(float) * (kv_len - valid));
      }
      gemm_rowmajor(static_cast<int>(nq), static_cast<int>(Dv), ld, 1.0f, s, ld, vbh, static_cast<int>(v.stride(2)),
                    /*b_transposed=*/false, o0, static_cast<int>(out_row));
    }
  });
}

at::Tensor attention_forward(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                             const at::Tensor& ranges, const at::Tensor& ts, const c10::optional<at::Tensor>& mask_opt,
                             bool is_causal, double scale) {
  TORCH_CHECK(has_blas(), "mmserve_cpu: this torch build exports no BLAS sgemm; use the eager attention path");
  for (const at::Tensor* t : {&q_in, &k_in, &v_in}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 4,
                "mmserve_cpu: fused attention takes float32 CPU tensors [B, H, T, D]");
  }
  // sgemm needs unit stride along the head dim; the views ViT/translator blocks produce have it.
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const at::Tensor v = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Tk = k.size(2), Dv = v.size(3);
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D && v.size(0) == B && v.size(1) == H &&
                  v.size(2) == Tk,
              "mmserve_cpu: q, k, v shapes do not match");
  TORCH_CHECK(std::max({B * H, Tq, Tk, D, Dv, H * Dv, q.stride(2), k.stride(2), v.stride(2)}) < (int64_t{1} << 31),
              "mmserve_cpu: sizes exceed the BLAS int range");
  // every row is written below (sgemm or an explicit zero row), except when there are no keys at all
  at::Tensor out = Tk == 0 ? at::zeros({B, Tq, H, Dv}, q.options()) : at::empty({B, Tq, H, Dv}, q.options());
  if (B * H * Tq == 0 || Dv == 0) return out.permute({0, 2, 1, 3});
  const Params<float> p = read_params<float>(ranges, ts);

  AttnMask mask;
  if (mask_opt.has_value() && mask_opt->defined()) {
    mask.tensor = *mask_opt;
    TORCH_CHECK(mask.tensor.dim() == 4 && mask.tensor.size(0) == B && mask.tensor.size(1) == H &&
                    mask.tensor.size(2) == Tq && mask.tensor.size(3) == Tk,
                "mmserve_cpu: the attention mask must be expanded to [B, H, Tq, Tk]");
    TORCH_CHECK(mask.tensor.scalar_type() == at::kBool || at::isFloatingType(mask.tensor.scalar_type()),
                "mmserve_cpu: mask must be bool or floating point");
    mask.idx.sizes = {B, H, Tq};
    mask.idx.strides = {mask.tensor.stride(0), mask.tensor.stride(1), mask.tensor.stride(2)};
    mask.last_stride = mask.tensor.stride(3);
    if (mask.tensor.scalar_type() == at::kBool && mask.last_stride == 1) {
      mask.kind = MaskKind::BoolContig;
      mask.mb = reinterpret_cast<const uint8_t*>(mask.tensor.const_data_ptr<bool>());
    } else if (mask.tensor.scalar_type() == at::kFloat && mask.last_stride == 1) {
      mask.kind = MaskKind::AddContig;
      mask.ma = mask.tensor.const_data_ptr<float>();
    } else {
      mask.kind = MaskKind::Buffered;
    }
  }
  if (Tk > 0) {
    dispatch_order(p.order, [&](auto order) {
      attention_impl<decltype(order)::value>(q, k, v, out, p, mask, is_causal, static_cast<float>(scale));
    });
  }
  return out.permute({0, 2, 1, 3});
}

}  // namespace
}  // namespace mmserve_cpu

TORCH_LIBRARY_IMPL(mmserve_cpu, CPU, m) { m.impl("attention_forward", &mmserve_cpu::attention_forward); }
