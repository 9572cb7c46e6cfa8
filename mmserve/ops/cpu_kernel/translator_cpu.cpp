// Native CPU translator: the MultiMax encoder-decoder (mmserve.models.seq2seq) and its greedy / beam
// search (mmserve.models.decoding) as one C++ call per batch, float32, one thread per call.
//
// Why: on onnxruntime or eager torch a decoder step is ~290 graph nodes (MultiMax chains, masks,
// biases, KV concats) run one by one, and the search loop is Python + torch ops; at the bundled model's
// size that overhead, not arithmetic, is the cost (issue 14: 0.48x CTranslate2 greedy, 0.26x beam 4).
// Here a step is 6 GEMMs per layer (q/k/v stacked into one; engines measured per machine, see
// native_linear.h) plus plain loops (single-query attention through the MultiMax row kernel,
// LayerNorm, residuals with the biases fused in), the self-attention caches live in preallocated
// buffers and are never copied (rows keep their lineage, see Caches), beams of one sentence share its
// cross-attention keys (no expansion), and the search runs on plain arrays. Parallelism is across
// calls (decode workers, CTranslate2's inter_threads): the GEMMs use torch's thread count, which the
// thread policy sets to one per worker.
//
// The model is handed over once (`translator_create`: weights in a fixed order, see
// mmserve/models/native.py, which owns the packing) and referred to by an integer handle. Besides the
// whole search (`translator_search`) the step API (encode / cross_kv / decode_step) is exposed, so the
// server's continuous batcher, which interleaves requests between steps, uses the same kernels.
// The search reproduces mmserve.models.decoding's rules exactly (see that module's docstring); the
// Python tests compare both token for token.

#include "multimax_row.h"
#include "native_linear.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <string>

namespace mmserve_cpu {
namespace {

using native::Linear;
using native::linear;
using native::linear_into;
using native::use_torch_threads;

struct Norm {
  const float* g = nullptr;  // nullptr: no norm here
  const float* b = nullptr;
};

struct AttentionWeights {
  Linear q, k, v, o;
  Linear qkv;         // q, k, v stacked ([3D, D]): one sgemm for self-attention
  Params<float> p{};  // order 0 = plain SoftMax
};

struct EncoderLayer {
  Norm attn_norm, ffn_norm;
  AttentionWeights attn;
  Linear fc1, fc2;
};

struct DecoderLayer {
  Norm self_norm, cross_norm, ffn_norm;
  AttentionWeights self_attn, cross_attn;
  Linear fc1, fc2;
};

struct Model {
  std::vector<at::Tensor> tensors;  // keeps the weights alive
  int64_t D = 0, H = 0, Dh = 0, src_vocab = 0, tgt_vocab = 0, pos_rows = 0, pos_offset = 0, ffn_max = 0;
  bool enc_pre = true, dec_pre = true, gelu = false;
  float emb_scale = 1.0f, eps = 1e-5f, attn_scale = 1.0f;
  const float *src_emb = nullptr, *tgt_emb = nullptr, *src_pos = nullptr, *tgt_pos = nullptr;
  Norm src_emb_norm, tgt_emb_norm, enc_final, dec_final;
  std::vector<EncoderLayer> enc;
  std::vector<DecoderLayer> dec;
  Linear out;
  Params<float> head{};
  bool head_modulated = false;
  Linear cross_kv;  // every decoder layer's cross k, v stacked ([2 L D, D]): one sgemm per batch
};

// Stacks Linears with the same input into one ([sum out, in] weight), owned by the model.
Linear stack(Model& M, const std::vector<const Linear*>& parts) {
  int64_t rows = 0;
  const int in = parts.front()->in;
  for (const Linear* l : parts) rows += l->out;
  at::Tensor w = at::empty({rows, in}, at::TensorOptions().dtype(at::kFloat));
  at::Tensor b = at::empty({rows}, at::TensorOptions().dtype(at::kFloat));
  int64_t at_row = 0;
  for (const Linear* l : parts) {
    std::memcpy(w.mutable_data_ptr<float>() + at_row * in, l->w, sizeof(float) * l->out * in);
    float* bias = b.mutable_data_ptr<float>() + at_row;
    if (l->b) std::memcpy(bias, l->b, sizeof(float) * l->out); else std::fill(bias, bias + l->out, 0.0f);
    at_row += l->out;
  }
  M.tensors.push_back(w);
  M.tensors.push_back(b);
  Linear out;
  out.w = w.const_data_ptr<float>();
  out.b = b.const_data_ptr<float>();
  out.weight = w;
  out.bias = b;
  out.out = static_cast<int>(rows);
  out.in = in;
  return out;
}

// Every Linear the translator multiplies by (the stacked ones, not their parts).
template <typename ModelT>  // Model or const Model
auto linears(ModelT& M) {
  std::vector<std::conditional_t<std::is_const_v<ModelT>, const Linear*, Linear*>> all;
  for (auto& L : M.enc) {
    for (auto* l : {&L.attn.qkv, &L.attn.o, &L.fc1, &L.fc2}) all.push_back(l);
  }
  for (auto& L : M.dec) {
    for (auto* l : {&L.self_attn.qkv, &L.self_attn.o, &L.cross_attn.q, &L.cross_attn.o, &L.fc1, &L.fc2})
      all.push_back(l);
  }
  all.push_back(&M.out);
  all.push_back(&M.cross_kv);
  return all;
}

// ------------------------------------------------------------------------------ handle registry
// A translator: its weights (`base`, GEMM engines not chosen) and, per thread count it has run at, a
// copy whose Linears carry packed weights and the engines measured at that count. Per count because
// both depend on it: MKL's packed layout is made for the thread count that packs it (prepared at 2
// threads and run at 1, beam search ran 13 % slower), and so is which engine is fastest. The copy
// shares the weights; only the packed forms are per count.
struct Translator {
  std::shared_ptr<const Model> base;
  std::mutex lock;
  std::map<int, std::shared_ptr<const Model>> by_threads;
};

std::mutex g_models_lock;
std::map<int64_t, std::shared_ptr<Translator>> g_models;
int64_t g_next_handle = 1;

// The model prepared for the calling thread's torch thread count (prepared now if it is the first
// call at that count; concurrent callers at the same count wait for it). Every entry point starts
// here, so this is also where the calling thread takes torch's thread count (use_torch_threads).
std::shared_ptr<const Model> get_model(int64_t handle) {
  std::shared_ptr<Translator> translator;
  {
    std::lock_guard<std::mutex> guard(g_models_lock);
    auto it = g_models.find(handle);
    TORCH_CHECK(it != g_models.end(), "mmserve_cpu: no native translator with handle ", handle);
    translator = it->second;
  }
  use_torch_threads();
  std::lock_guard<std::mutex> guard(translator->lock);
  std::shared_ptr<const Model>& prepared = translator->by_threads[at::get_num_threads()];
  if (!prepared) {
    auto model = std::make_shared<Model>(*translator->base);
    native::choose_engines(linears(*model));
    prepared = model;
  }
  return prepared;
}

// Reads the packed weight list in order (mmserve/models/native.py writes it).
struct Cursor {
  const std::vector<at::Tensor>& list;
  size_t i = 0;
  const at::Tensor& next(const char* what) {
    TORCH_CHECK(i < list.size(), "mmserve_cpu: the weight list ends before ", what);
    const at::Tensor& t = list[i++];
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
                "mmserve_cpu: weight ", what, " must be a contiguous float32 CPU tensor");
    return t;
  }
  const float* ptr(const char* what, int64_t numel) {
    const at::Tensor& t = next(what);
    TORCH_CHECK(t.numel() == numel, "mmserve_cpu: weight ", what, " has ", t.numel(), " elements, expected ", numel);
    return t.const_data_ptr<float>();
  }
  Linear linear(const char* what, int64_t out, int64_t in, bool bias = true) {
    Linear l;
    l.out = static_cast<int>(out);
    l.in = static_cast<int>(in);
    l.w = ptr(what, out * in);
    l.weight = list[i - 1].view({out, in});
    if (bias) {
      l.b = ptr(what, out);
      l.bias = list[i - 1].view({out});
    }
    return l;
  }
  Norm norm(const char* what, int64_t D) {
    Norm n;
    n.g = ptr(what, D);
    n.b = ptr(what, D);
    return n;
  }
  Params<float> params(const char* what) {
    const at::Tensor& r = next(what);
    const at::Tensor& t = next(what);
    return read_params<float>(r, t);
  }
  // fc1 [hidden, D] and fc2 [D, hidden], hidden read from fc1's bias; returns hidden.
  int64_t feed_forward(const char* what, int64_t D, Linear& fc1, Linear& fc2) {
    const int64_t hidden = list.at(i + 1).numel();
    fc1 = linear(what, hidden, D);
    fc2 = linear(what, D, hidden);
    return hidden;
  }
  AttentionWeights attention(const char* what, int64_t D) {
    AttentionWeights a;
    a.q = linear(what, D, D);
    a.k = linear(what, D, D);
    a.v = linear(what, D, D);
    a.o = linear(what, D, D);
    a.p = params(what);
    return a;
  }
};

// ------------------------------------------------------------------------------ building blocks
// The GEMM engines (MKL sgemm, MKL packed, oneDNN) and their per-shape choice: native_linear.h.

// Sum of n floats in W-lane vectors (the last n % W lanes in one masked step).
inline float vector_sum(const float* x, int64_t n) {
  const int64_t full = n - n % W;
  vf acc = splat(0.0f);
  for (int64_t j = 0; j < full; j += W) acc += vload(x + j);
  if (n > full) acc += vload_tail(x + full, n - full, 0.0f);
  return hsum(acc);
}

// LayerNorm of m rows of D (biased variance, as torch), x -> y (may alias). Sums in explicit vectors:
// `omp simd` reductions compiled to a scalar sum through the stack.
void layer_norm(const Norm& n, const float* x, float* y, int64_t m, int64_t D, float eps) {
  const int64_t full = D - D % W;
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * D;
    float* yr = y + r * D;
    const float mean = vector_sum(xr, D) / static_cast<float>(D);
    vf acc = splat(0.0f);
    for (int64_t j = 0; j < full; j += W) {
      const vf c = vload(xr + j) - mean;
      acc += c * c;
    }
    if (D > full) {
      const vf c = keep_lanes(vload_tail(xr + full, D - full, 0.0f) - mean, D - full, 0.0f);
      acc += c * c;
    }
    const float inv = 1.0f / std::sqrt(hsum(acc) / static_cast<float>(D) + eps);
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] - mean) * inv * n.g[j] + n.b[j];
  }
}

// act(x + b) over m rows of n (the fc1 bias, left out of the GEMM, added here).
void bias_activation(float* x, const float* b, int64_t m, int64_t n, bool gelu) {
  for (int64_t r = 0; r < m; ++r) {
    float* xr = x + r * n;
    if (gelu) {
      for (int64_t j = 0; j < n; ++j) {
        const float y = xr[j] + (b ? b[j] : 0.0f);
        xr[j] = 0.5f * y * (1.0f + std::erf(y * 0.70710678118654752f));
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float y = xr[j] + (b ? b[j] : 0.0f);
        xr[j] = y > 0.0f ? y : 0.0f;
      }
    }
  }
}

// Where attention finds key/value j (as an offset in floats from the buffer's start): evenly spaced
// (the encoder, cross-attention) or through a per-row table (decoder self-attention: the search's
// caches, whose rows are never moved, see Caches, and the step API's [B, P+1] buffers).
struct Strided {
  int64_t stride;
  int64_t operator()(int64_t j) const { return j * stride; }
};
struct Indexed {
  const int64_t* offsets;
  int64_t operator()(int64_t j) const { return offsets[j]; }
};

// One query row of one head over n >= 1 keys: out[Dh] = softmax(seglu(scale q.k_j) masked) @ v, key
// and value j at k + at(j), v + at(j); `scores` has room for n floats; mask: 1 = never attended.
// Templated on the modulator's order and the mask kind so that the row kernel inlines here, and on
// NV, the head width in vectors (Dh = NV * W; 0: any width, plain loops): callers pick the instance
// once per layer (`with_attention`), not per row and head.
// Why NV: a decoder attends over a handful of keys, so the per-key work is all there is. With q and
// the output accumulators held in NV registers, a key costs NV fused multiply-adds and one horizontal
// sum; the plain loops compiled to a scalar reduction through the stack per key and a load-add-store
// of `out` per key, and attention was a sixth of a beam search.
template <int ORDER, MaskKind MK, int NV>
struct Attend {
  template <typename KeyAt>
  void operator()(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, KeyAt at,
                  int64_t n, int64_t Dh, const uint8_t* mask, const Params<float>& p, float scale,
                  float* __restrict__ scores, float* __restrict__ out) const {
    if constexpr (NV > 0) {
      vf qv[NV], acc[NV];
      for (int c = 0; c < NV; ++c) qv[c] = vload(q + c * W);
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = k + at(j);
        vf dot = qv[0] * vload(kj);
        for (int c = 1; c < NV; ++c) dot += qv[c] * vload(kj + c * W);
        scores[j] = hsum(dot) * scale;
      }
      forward_row_f32<ORDER, MK>(scores, scores, n, p, mask, nullptr);
      for (int c = 0; c < NV; ++c) acc[c] = splat(0.0f);
      for (int64_t j = 0; j < n; ++j) {
        const float w = scores[j];
        if (w == 0.0f) continue;
        const float* vj = v + at(j);
        for (int c = 0; c < NV; ++c) acc[c] += w * vload(vj + c * W);
      }
      for (int c = 0; c < NV; ++c) vstore(out + c * W, acc[c]);
    } else {
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = k + at(j);
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < Dh; ++d) s += q[d] * kj[d];
        scores[j] = s * scale;
      }
      forward_row_f32<ORDER, MK>(scores, scores, n, p, mask, nullptr);
      std::fill(out, out + Dh, 0.0f);
      for (int64_t j = 0; j < n; ++j) {
        const float w = scores[j];
        if (w == 0.0f) continue;
        const float* vj = v + at(j);
#pragma omp simd
        for (int64_t d = 0; d < Dh; ++d) out[d] += w * vj[d];
      }
    }
  }
};

// Calls body(Attend<ORDER, MK, NV>{}) with the instance for these parameters, mask presence and head
// width.
template <typename Body>
inline void with_attention(const Params<float>& p, bool masked, int64_t Dh, Body&& body) {
  const auto by_width = [&](auto mask_kind) {
    constexpr MaskKind MK = decltype(mask_kind)::value;
    dispatch_order(p.order, [&](auto order) {
      constexpr int O = decltype(order)::value;
      switch (Dh) {
        case W: body(Attend<O, MK, 1>{}); break;
        case 2 * W: body(Attend<O, MK, 2>{}); break;
        case 4 * W: body(Attend<O, MK, 4>{}); break;
        case 8 * W: body(Attend<O, MK, 8>{}); break;
        default: body(Attend<O, MK, 0>{}); break;
      }
    });
  };
  if (masked) {
    by_width(std::integral_constant<MaskKind, MaskKind::BoolContig>{});
  } else {
    by_width(std::integral_constant<MaskKind, MaskKind::None>{});
  }
}

// Residual sub-layer bookkeeping: pre-norm x + f(norm(x)), post-norm norm(x + f(x)); `bias` (the
// sub-layer's output bias, left out of its GEMM) is added here, nullptr when there is none.
void residual(float* x, const float* f, const float* bias, int64_t m, int64_t D, bool pre, const Norm& n, float eps) {
  for (int64_t r = 0; r < m; ++r) {
    float* xr = x + r * D;
    const float* fr = f + r * D;
    if (bias) {
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) xr[j] += fr[j] + bias[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) xr[j] += fr[j];
    }
  }
  if (!pre) layer_norm(n, x, x, m, D, eps);
}

// A linear sub-layer's output added to the residual stream: x += l(h), the bias fused into the add.
void add_linear(float* x, const Linear& l, const float* h, int64_t m, float* buffer, at::Tensor& holder, bool pre,
                const Norm& n, float eps) {
  const float* f = linear_into(l, h, m, buffer, holder, native::Bias::Leave);
  residual(x, f, l.b, m, l.out, pre, n, eps);
}

// x += fc2(act(fc1(h))) for m rows, both biases fused into the passes that read the products.
void add_feed_forward(const Model& M, float* x, const Linear& fc1, const Linear& fc2, const float* h, int64_t m,
                      float* hidden_buffer, float* out_buffer, at::Tensor& hold_hidden, at::Tensor& hold_out, bool pre,
                      const Norm& n) {
  float* hidden = linear_into(fc1, h, m, hidden_buffer, hold_hidden, native::Bias::Leave);
  bias_activation(hidden, fc1.b, m, fc1.out, M.gelu);
  add_linear(x, fc2, hidden, m, out_buffer, hold_out, pre, n, M.eps);
}

// Token + position embedding (x[m, D]); `offset` is the model's position offset.
void embed(const Model& M, const float* table, const float* pos_table, const Norm& norm, const int64_t* ids,
           const int64_t* positions, int64_t vocab, int64_t m, float* x) {
  const int64_t D = M.D;
  for (int64_t r = 0; r < m; ++r) {
    const int64_t id = ids[r];
    const int64_t pos = positions[r] + M.pos_offset;
    TORCH_CHECK(id >= 0 && id < vocab, "mmserve_cpu: token id ", id, " is outside the vocabulary of ", vocab);
    TORCH_CHECK(pos >= 0 && pos < M.pos_rows, "mmserve_cpu: position ", positions[r], " is beyond the model's ",
                M.pos_rows - M.pos_offset, " positions");
    const float* e = table + id * D;
    const float* p = pos_table + pos * D;
    float* xr = x + r * D;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) xr[j] = e[j] * M.emb_scale + p[j];
  }
  if (norm.g) layer_norm(norm, x, x, m, D, M.eps);
}

// ------------------------------------------------------------------------------ encoder
// memory[B*S, D] of right-padded sources (mask: 1 = padding).
void encode_into(const Model& M, const int64_t* ids, const uint8_t* mask, int64_t B, int64_t S, float* x) {
  const int64_t D = M.D, H = M.H, Dh = M.Dh, m = B * S;
  std::vector<int64_t> positions(static_cast<size_t>(m));
  for (int64_t r = 0; r < m; ++r) positions[r] = r % S;
  embed(M, M.src_emb, M.src_pos, M.src_emb_norm, ids, positions.data(), M.src_vocab, m, x);
  // scratch, every element written before it is read
  const auto buffer = [](int64_t n) { return std::unique_ptr<float[]>(new float[static_cast<size_t>(n)]); };
  auto h = buffer(m * D), qkv_buffer = buffer(m * 3 * D), ctx = buffer(m * D), f_buffer = buffer(m * D),
       hidden = buffer(m * M.ffn_max), scores = buffer(S);
  at::Tensor hold_qkv, hold_f, hold_hidden;
  for (const EncoderLayer& L : M.enc) {
    const float* in = x;
    if (M.enc_pre) {
      layer_norm(L.attn_norm, x, h.get(), m, D, M.eps);
      in = h.get();
    }
    const float* qkv = linear_into(L.attn.qkv, in, m, qkv_buffer.get(), hold_qkv);
    with_attention(L.attn.p, true, Dh, [&](auto attend_one) {
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t hd = 0; hd < H; ++hd) {
          const float* kb = qkv + b * S * 3 * D + D + hd * Dh;
          const float* vb = kb + D;
          for (int64_t i = 0; i < S; ++i) {
            attend_one(qkv + (b * S + i) * 3 * D + hd * Dh, kb, vb, Strided{3 * D}, S, Dh, mask + b * S, L.attn.p,
                       M.attn_scale, scores.get(), ctx.get() + (b * S + i) * D + hd * Dh);
          }
        }
      }
    });
    add_linear(x, L.attn.o, ctx.get(), m, f_buffer.get(), hold_f, M.enc_pre, L.attn_norm, M.eps);
    in = x;
    if (M.enc_pre) {
      layer_norm(L.ffn_norm, x, h.get(), m, D, M.eps);
      in = h.get();
    }
    add_feed_forward(M, x, L.fc1, L.fc2, in, m, hidden.get(), f_buffer.get(), hold_hidden, hold_f, M.enc_pre,
                     L.ffn_norm);
  }
  if (M.enc_final.g) layer_norm(M.enc_final, x, x, m, D, M.eps);
}

// ------------------------------------------------------------------------------ decoder step
// Where a step's attention reads its keys/values.
struct SelfCache {
  std::vector<float*> k, v;        // per layer, every layer laid out alike
  int64_t n = 0;                   // keys per row: the earlier slots and the new token's (the last)
  const int64_t* offsets = nullptr;  // [rows, n]: where row r's key/value j starts (floats); j = n-1 is written
  const uint8_t* mask = nullptr;   // [rows, n] (1 = padding) or nullptr
};

struct CrossCache {
  std::vector<const float*> k, v;  // per layer: element (s, h, j, d) at s*s_stride + h*h_stride + j*j_stride + d
  int64_t s_stride = 0, h_stride = 0, j_stride = 0;
  int64_t S = 0;
  const int64_t* row_source = nullptr;  // which source each row attends to (nullptr: row r -> source r)
  const uint8_t* mask = nullptr;        // [sources, S] (1 = padding)
};

// Per-call scratch buffers, sized for `rows` rows.
struct Workspace {
  std::vector<float> x, h, q, ctx, f, hidden, scores;  // q: room for stacked q, k, v
  at::Tensor hold_q, hold_f, hold_hidden;               // oneDNN results in use (see linear_into)
  void reserve(const Model& M, int64_t rows, int64_t keys) {
    const size_t n = static_cast<size_t>(rows * M.D);
    x.resize(n); h.resize(n); q.resize(3 * n); ctx.resize(n); f.resize(n);
    hidden.resize(static_cast<size_t>(rows * M.ffn_max));
    scores.resize(static_cast<size_t>(std::max<int64_t>(keys, 1)));
  }
};

// One token per row on top of the caches: writes the new keys/values at `slot` and the modulated
// logits[rows, V] (seglu applied when the output layer is MultiMax).
void decoder_step(const Model& M, int64_t rows, const int64_t* tokens, const int64_t* positions, SelfCache& self,
                  const CrossCache& cross, Workspace& ws, float* logits) {
  const int64_t D = M.D, H = M.H, Dh = M.Dh, n_self = self.n;
  ws.reserve(M, rows, std::max(n_self, cross.S));
  float *x = ws.x.data(), *h = ws.h.data(), *ctx = ws.ctx.data();
  embed(M, M.tgt_emb, M.tgt_pos, M.tgt_emb_norm, tokens, positions, M.tgt_vocab, rows, x);
  for (size_t l = 0; l < M.dec.size(); ++l) {
    const DecoderLayer& L = M.dec[l];
    // self-attention over the cache
    const float* in = x;
    if (M.dec_pre) {
      layer_norm(L.self_norm, x, h, rows, D, M.eps);
      in = h;
    }
    // q, k, v without their bias: q's is added in place, k's and v's on the way into the cache
    float* q = linear_into(L.self_attn.qkv, in, rows, ws.q.data(), ws.hold_q, native::Bias::Leave);
    float* kc = self.k[l];
    float* vc = self.v[l];
    const float* bias = L.self_attn.qkv.b;
    for (int64_t r = 0; r < rows; ++r) {
      float* qr = q + r * 3 * D;
      const int64_t slot = self.offsets[r * n_self + n_self - 1];
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) {
        qr[j] += bias[j];
        kc[slot + j] = qr[D + j] + bias[D + j];
        vc[slot + j] = qr[2 * D + j] + bias[2 * D + j];
      }
    }
    with_attention(L.self_attn.p, self.mask != nullptr, Dh, [&](auto attend_one) {
      for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* mask = self.mask ? self.mask + r * n_self : nullptr;
        const Indexed at{self.offsets + r * n_self};
        for (int64_t hd = 0; hd < H; ++hd) {
          attend_one(q + r * 3 * D + hd * Dh, kc + hd * Dh, vc + hd * Dh, at, n_self, Dh, mask, L.self_attn.p,
                     M.attn_scale, ws.scores.data(), ctx + r * D + hd * Dh);
        }
      }
    });
    add_linear(x, L.self_attn.o, ctx, rows, ws.f.data(), ws.hold_f, M.dec_pre, L.self_norm, M.eps);
    // cross-attention over the source
    in = x;
    if (M.dec_pre) {
      layer_norm(L.cross_norm, x, h, rows, D, M.eps);
      in = h;
    }
    q = linear_into(L.cross_attn.q, in, rows, ws.q.data(), ws.hold_q);
    with_attention(L.cross_attn.p, true, Dh, [&](auto attend_one) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t src = cross.row_source ? cross.row_source[r] : r;
        const uint8_t* mask = cross.mask + src * cross.S;
        for (int64_t hd = 0; hd < H; ++hd) {
          const int64_t off = src * cross.s_stride + hd * cross.h_stride;
          attend_one(q + r * D + hd * Dh, cross.k[l] + off, cross.v[l] + off, Strided{cross.j_stride}, cross.S, Dh,
                     mask, L.cross_attn.p, M.attn_scale, ws.scores.data(), ctx + r * D + hd * Dh);
        }
      }
    });
    add_linear(x, L.cross_attn.o, ctx, rows, ws.f.data(), ws.hold_f, M.dec_pre, L.cross_norm, M.eps);
    // feed-forward
    in = x;
    if (M.dec_pre) {
      layer_norm(L.ffn_norm, x, h, rows, D, M.eps);
      in = h;
    }
    add_feed_forward(M, x, L.fc1, L.fc2, in, rows, ws.hidden.data(), ws.f.data(), ws.hold_hidden, ws.hold_f,
                     M.dec_pre, L.ffn_norm);
  }
  if (M.dec_final.g) layer_norm(M.dec_final, x, x, rows, D, M.eps);
  linear(M.out, x, rows, logits);
  if (M.head_modulated) {
    const int64_t n = rows * M.tgt_vocab;
    dispatch_order(M.head.order, [&](auto order) {
      constexpr int O = decltype(order)::value;
      for (int64_t i = 0; i < n; ++i) logits[i] = seglu<O, float>(logits[i], M.head);
    });
  }
}

// ------------------------------------------------------------------------------ search
struct Rules {
  bool fairseq = false;  // fairseq-generate: len ** alpha, forced EOS at the last step, stop when beam is full
  int64_t min_length = 0;
  int64_t unk_id = -1;
  float unk_penalty = 0.0f;
  float alpha = 0.0f;
  int64_t bos = 1, eos = 2, pad = 0;
  int64_t max_length = 1;

  double penalty(int64_t length) const {
    return fairseq ? std::pow(static_cast<double>(length), static_cast<double>(alpha))
                   : std::pow((5.0 + static_cast<double>(length)) / 6.0, static_cast<double>(alpha));
  }
};

// log_softmax of a logits row with PAD/BOS banned, then the rules (decoding._log_probs + SearchRules.adjust).
void log_probs(const float* logits, float* out, int64_t V, int64_t step, const Rules& R) {
  // max, then sum exp(x - max) with the row kernel's vector exp (exp of values <= 0; within a few
  // float ulps of std::exp), then x - max - log(sum): torch's log_softmax formula.
  const int64_t full = V - V % W;
  vf mv = splat(-kInf);
  for (int64_t j = 0; j < full; j += W) mv = vmax(mv, vload(logits + j));
  if (V > full) mv = vmax(mv, vload_tail(logits + full, V - full, -kInf));
  const float m = hmax(mv);
  vf acc = splat(0.0f);
  for (int64_t j = 0; j < full; j += W) acc += vexp_nonpos(vload(logits + j) - m);
  if (V > full) acc += vexp_nonpos(vload_tail(logits + full, V - full, -kInf) - m);
  const float shift = m + std::log(hsum(acc));
#pragma omp simd
  for (int64_t j = 0; j < V; ++j) out[j] = logits[j] - shift;
  for (int64_t id : {R.pad, R.bos}) {
    if (id != R.eos && id >= 0 && id < V) out[id] = -kInf;
  }
  if (R.unk_id >= 0 && R.unk_id < V && R.unk_penalty != 0.0f) out[R.unk_id] -= R.unk_penalty;
  if (R.fairseq && step >= R.max_length - 1) {
    const float eos = out[R.eos];
    for (int64_t j = 0; j < V; ++j) out[j] = -kInf;
    out[R.eos] = eos;
  }
  if (R.min_length > 0 && step < R.min_length) out[R.eos] = -kInf;
}

// A closed hypothesis. Scores are double because greedy search reports sum / penalty in double, as
// Python divides the float32 sum by a Python float; beam scores are float32 values, exact in double.
struct Hyp {
  double score = -std::numeric_limits<double>::infinity();
  std::vector<int64_t> tokens;
};

// The search's self-attention caches. Per decoder layer K and V are slot-major [cap, rows, D]: step t
// writes row r's key at (t * rows + r) * D and nothing is ever moved. When beams are reordered or
// finished rows leave the batch, a row's history is not copied (step + 1 keys and values per layer and
// row, once the largest memory traffic of a beam step); instead each live row keeps its lineage, the
// row index its ancestor had at every earlier step, and a reorder copies those step + 1 integers.
// Attention then finds slot s of row r at (s * rows + lineage[r][s]) * D (SelfCache::offsets).
struct Caches {
  int64_t rows = 0, cap = 0, D = 0;
  std::vector<std::unique_ptr<float[]>> k, v;  // uninitialised: attention reads only written slots
  std::vector<int64_t> lineage, lineage_next;  // [rows, cap]
  std::vector<int64_t> offsets;                // [rows, slot + 1] of the current step
  Caches(const Model& M, int64_t rows_, int64_t cap_) : rows(rows_), cap(cap_), D(M.D) {
    const size_t n = static_cast<size_t>(rows * cap * D);
    for (size_t l = 0; l < M.dec.size(); ++l) {
      k.emplace_back(new float[n]);
      v.emplace_back(new float[n]);
    }
    lineage.resize(static_cast<size_t>(rows * cap));
    lineage_next.resize(lineage.size());
    offsets.resize(lineage.size());
  }
  // Row i continues old row origin[i] (origin may repeat and permute); `used` slots are filled.
  void reorder(const std::vector<int64_t>& origin, int64_t used) {
    for (size_t i = 0; i < origin.size(); ++i) {
      std::copy_n(lineage.begin() + origin[i] * cap, used, lineage_next.begin() + static_cast<int64_t>(i) * cap);
    }
    std::swap(lineage, lineage_next);
  }
  // The step writing slot `slot` for `live` rows.
  SelfCache view(int64_t live, int64_t slot) {
    const int64_t n = slot + 1;
    for (int64_t r = 0; r < live; ++r) {
      lineage[r * cap + slot] = r;
      for (int64_t s = 0; s < n; ++s) offsets[r * n + s] = (s * rows + lineage[r * cap + s]) * D;
    }
    SelfCache c;
    for (auto& b : k) c.k.push_back(b.get());
    for (auto& b : v) c.v.push_back(b.get());
    c.n = n;
    c.offsets = offsets.data();
    return c;
  }
};

// Cross-attention keys/values of the memory, all layers from one sgemm: [B, S, L, 2, D] (layer l's
// keys at column 2 l D, values at (2 l + 1) D, head h at + h Dh).
struct CrossKV {
  std::vector<float> kv;
  int64_t width = 0;
  CrossKV(const Model& M, const float* memory, int64_t B, int64_t S) {
    width = M.cross_kv.out;
    kv.resize(static_cast<size_t>(B * S * width));
    linear(M.cross_kv, memory, B * S, kv.data());
  }
  CrossCache view(const Model& M, int64_t S, const uint8_t* mask, const int64_t* row_source) const {
    CrossCache c;
    for (size_t l = 0; l < M.dec.size(); ++l) {
      c.k.push_back(kv.data() + 2 * l * M.D);
      c.v.push_back(kv.data() + (2 * l + 1) * M.D);
    }
    c.s_stride = S * width;
    c.h_stride = M.Dh;
    c.j_stride = width;
    c.S = S;
    c.mask = mask;
    c.row_source = row_source;
    return c;
  }
};

// Greedy search: arg-max per step (first maximal id), as decoding.greedy_search.
std::vector<std::vector<Hyp>> greedy(const Model& M, const CrossKV& cross, const uint8_t* src_mask, int64_t B,
                                     int64_t S, const Rules& R) {
  const int64_t V = M.tgt_vocab, cap = R.max_length;
  std::vector<std::vector<Hyp>> results(static_cast<size_t>(B), std::vector<Hyp>(1));
  std::vector<int64_t> sentence(B), tokens(B, R.bos), positions(B);
  for (int64_t i = 0; i < B; ++i) sentence[i] = i;
  std::vector<float> sums(B, 0.0f), logits(B * V), logp(V);
  Caches caches(M, B, cap);
  Workspace ws;
  for (int64_t step = 0; step < R.max_length && !sentence.empty(); ++step) {
    const int64_t rows = static_cast<int64_t>(sentence.size());
    std::fill(positions.begin(), positions.begin() + rows, step);
    SelfCache self = caches.view(rows, step);
    const CrossCache cc = cross.view(M, S, src_mask, sentence.data());
    decoder_step(M, rows, tokens.data(), positions.data(), self, cc, ws, logits.data());
    std::vector<int64_t> keep;
    const double lp = R.penalty(step + 1);
    for (int64_t r = 0; r < rows; ++r) {
      log_probs(logits.data() + r * V, logp.data(), V, step, R);
      int64_t best = 0;
      for (int64_t j = 1; j < V; ++j)
        if (logp[j] > logp[best]) best = j;
      sums[r] += logp[best];
      Hyp& hyp = results[sentence[r]][0];
      hyp.tokens.push_back(best);
      tokens[r] = best;
      if (best == R.eos || step == R.max_length - 1) {
        hyp.score = static_cast<double>(sums[r]) / lp;
      } else {
        keep.push_back(r);
      }
    }
    if (static_cast<int64_t>(keep.size()) < rows) {
      std::vector<int64_t> next_sentence, next_tokens;
      std::vector<float> next_sums;
      for (int64_t r : keep) {
        next_sentence.push_back(sentence[r]);
        next_tokens.push_back(tokens[r]);
        next_sums.push_back(sums[r]);
      }
      caches.reorder(keep, step + 1);
      sentence = next_sentence;
      std::copy(next_tokens.begin(), next_tokens.end(), tokens.begin());
      std::copy(next_sums.begin(), next_sums.end(), sums.begin());
    }
  }
  return results;
}

struct Candidate {
  float score;
  int64_t index;  // beam * V + token
};

// Beam search, as decoding.beam_search (see its comments for the rules reproduced here).
std::vector<std::vector<Hyp>> beam(const Model& M, const CrossKV& cross, const uint8_t* src_mask, int64_t B,
                                   int64_t S, const Rules& R, int64_t K, int64_t n_best) {
  const int64_t V = M.tgt_vocab, cap = R.max_length;
  const int64_t width = std::min<int64_t>(2 * K, K * V);
  std::vector<std::vector<Hyp>> results(static_cast<size_t>(B));
  std::vector<int64_t> sentence(B);
  for (int64_t i = 0; i < B; ++i) sentence[i] = i;
  std::vector<float> live(B * K, -kInf);
  for (int64_t i = 0; i < B; ++i) live[i * K] = 0.0f;
  // Generated tokens per live row (row i*K+b = beam b of live sentence i), cap slots each; the
  // reorder gathers into `history_next` and swaps.
  std::vector<int64_t> history(B * K * cap), history_next(B * K * cap);
  std::vector<std::vector<Hyp>> closed(B);  // K best closed per live sentence, best first
  Caches caches(M, B * K, cap);
  Workspace ws;
  std::vector<float> logits(B * K * V), logp(B * K * V);
  std::vector<int64_t> tokens(B * K, R.bos), positions(B * K), row_source(B * K);
  std::vector<Candidate> top;
  top.reserve(width + 1);
  // Per new live row: the cache row and history row it continues, its token and score.
  std::vector<int64_t> origin, parent, next_tokens;
  std::vector<float> next_live;
  std::vector<char> finished;
  std::vector<Hyp> fresh;
  auto hypothesis = [&](int64_t parent_row, int64_t step, int64_t last, double score) {
    Hyp h;
    h.score = score;
    h.tokens.assign(history.begin() + parent_row * cap, history.begin() + parent_row * cap + step);
    h.tokens.push_back(last);
    return h;
  };
  auto merge = [&](std::vector<Hyp>& done, std::vector<Hyp>& add) {
    if (add.empty()) return;
    for (auto& h : add) done.push_back(std::move(h));
    add.clear();
    std::stable_sort(done.begin(), done.end(), [](const Hyp& a, const Hyp& b) { return a.score > b.score; });
    if (static_cast<int64_t>(done.size()) > K) done.resize(K);
  };
  for (int64_t step = 0; step < R.max_length && !sentence.empty(); ++step) {
    const int64_t n = static_cast<int64_t>(sentence.size());
    // step 0: the K beams of a sentence are identical, decode one row per sentence
    const int64_t per = step == 0 ? 1 : K;
    const int64_t rows = n * per;
    for (int64_t r = 0; r < rows; ++r) {
      positions[r] = step;
      row_source[r] = sentence[r / per];
    }
    SelfCache self = caches.view(rows, step);
    const CrossCache cc = cross.view(M, S, src_mask, row_source.data());
    decoder_step(M, rows, tokens.data(), positions.data(), self, cc, ws, logits.data());
    for (int64_t r = 0; r < rows; ++r) log_probs(logits.data() + r * V, logp.data() + r * V, V, step, R);
    const double lp = R.penalty(step + 1);
    const float lpf = static_cast<float>(lp);
    origin.clear();
    parent.clear();
    next_tokens.clear();
    next_live.clear();
    finished.assign(n, 0);
    for (int64_t i = 0; i < n; ++i) {
      // the `width` best (beam, token) continuations, ties in index order
      top.clear();
      for (int64_t b = 0; b < K; ++b) {
        const float base = live[i * K + b];
        if (base == -kInf && static_cast<int64_t>(top.size()) == width) continue;
        const float* row = logp.data() + (i * per + (step == 0 ? 0 : b)) * V;
        for (int64_t t = 0; t < V; ++t) {
          const float s = base + row[t];
          if (static_cast<int64_t>(top.size()) == width && !(s > top.back().score)) continue;
          const Candidate c{s, b * V + t};
          auto pos = std::upper_bound(top.begin(), top.end(), c,
                                      [](const Candidate& a, const Candidate& e) { return a.score > e.score; });
          top.insert(pos, c);
          if (static_cast<int64_t>(top.size()) > width) top.pop_back();
        }
      }
      // EOS continuations among the first K close their hypothesis
      std::vector<Hyp>& done = closed[i];
      for (int64_t rank = 0; rank < std::min<int64_t>(K, width); ++rank) {
        const Candidate& c = top[rank];
        if (c.index % V != R.eos || !std::isfinite(c.score)) continue;
        fresh.push_back(hypothesis(i * K + c.index / V, step, R.eos, c.score / lpf));  // float32 division, as torch
      }
      merge(done, fresh);
      // the K best non-EOS continuations stay live
      float best_live = -kInf;
      int64_t kept = 0;
      for (const Candidate& c : top) {
        if (kept == K) break;
        if (c.index % V == R.eos) continue;
        const int64_t b = c.index / V;
        origin.push_back(step == 0 ? i : i * K + b);
        parent.push_back(i * K + b);
        next_tokens.push_back(c.index % V);
        next_live.push_back(c.score);
        best_live = std::max(best_live, c.score);
        ++kept;
      }
      TORCH_CHECK(kept == K, "mmserve_cpu: beam search found fewer than K live continuations");
      int64_t full = 0;
      for (const Hyp& h : done) full += std::isinf(h.score) ? 0 : 1;
      bool is_done = full >= K && (R.fairseq || best_live / lpf <= done.back().score);
      if (step == R.max_length - 1) {  // out of room: the live beams close as they are
        for (int64_t j = i * K; j < (i + 1) * K; ++j)
          fresh.push_back(hypothesis(parent[j], step, next_tokens[j], next_live[j] / lpf));
        merge(done, fresh);
        is_done = true;
      }
      finished[i] = is_done;
    }
    // finished sentences leave the batch; the others' rows are gathered in order
    int64_t kept_sentences = 0;
    std::vector<int64_t> cache_rows;
    for (int64_t i = 0; i < n; ++i) {
      if (finished[i]) {
        std::vector<Hyp>& out = results[sentence[i]];
        for (int64_t j = 0; j < static_cast<int64_t>(closed[i].size()) && j < n_best; ++j) {
          if (std::isinf(closed[i][j].score)) break;
          out.push_back(std::move(closed[i][j]));
        }
        continue;
      }
      const int64_t to = kept_sentences++;
      sentence[to] = sentence[i];
      if (to != i) closed[to] = std::move(closed[i]);
      for (int64_t b = 0; b < K; ++b) {
        const int64_t from = i * K + b, row = to * K + b;
        cache_rows.push_back(origin[from]);
        std::copy(history.begin() + parent[from] * cap, history.begin() + parent[from] * cap + step,
                  history_next.begin() + row * cap);
        history_next[row * cap + step] = next_tokens[from];
        live[row] = next_live[from];
        tokens[row] = next_tokens[from];
      }
    }
    if (kept_sentences == 0) break;
    sentence.resize(kept_sentences);
    closed.resize(kept_sentences);
    std::swap(history, history_next);
    caches.reorder(cache_rows, step + 1);
  }
  return results;
}

// ------------------------------------------------------------------------------ tensor boundary
struct Sources {
  at::Tensor ids, mask;  // int64 [B, S], uint8 [B, S]
  int64_t B = 0, S = 0;
};

Sources read_sources(const Model& M, const at::Tensor& ids_in, const at::Tensor& mask_in) {
  TORCH_CHECK(ids_in.dim() == 2 && mask_in.sizes() == ids_in.sizes(),
              "mmserve_cpu: src_ids and src_pad_mask must both be [B, S]");
  TORCH_CHECK(ids_in.device().is_cpu() && mask_in.device().is_cpu(), "mmserve_cpu: the native translator runs on the CPU");
  Sources s;
  s.ids = ids_in.to(at::kLong).contiguous();
  s.mask = mask_in.to(at::kByte).contiguous();
  s.B = ids_in.size(0);
  s.S = ids_in.size(1);
  TORCH_CHECK(s.S <= M.pos_rows - M.pos_offset, "mmserve_cpu: sources of ", s.S, " tokens exceed the model's ",
              M.pos_rows - M.pos_offset, " positions");
  return s;
}

int64_t translator_create(at::TensorList weights, std::vector<int64_t> ints, std::vector<double> floats) {
  TORCH_CHECK(has_blas(), "mmserve_cpu: this torch build exports no BLAS sgemm; the native translator needs it");
  TORCH_CHECK(ints.size() == 13 && floats.size() == 2, "mmserve_cpu: translator_create takes 13 ints and 2 floats");
  auto model = std::make_shared<Model>();
  Model& M = *model;
  M.tensors.assign(weights.begin(), weights.end());
  M.D = ints[0];
  M.H = ints[1];
  const int64_t enc_layers = ints[2], dec_layers = ints[3];
  M.src_vocab = ints[4];
  M.tgt_vocab = ints[5];
  M.pos_rows = ints[6];
  M.pos_offset = ints[7];
  M.enc_pre = ints[8] != 0;
  M.dec_pre = ints[9] != 0;
  M.gelu = ints[10] != 0;
  const bool emb_norm = ints[11] != 0;
  M.head_modulated = ints[12] != 0;
  M.emb_scale = static_cast<float>(floats[0]);
  M.eps = static_cast<float>(floats[1]);
  TORCH_CHECK(M.H > 0 && M.D % M.H == 0, "mmserve_cpu: d_model must be divisible by the heads");
  M.Dh = M.D / M.H;
  M.attn_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(M.Dh)));
  const int64_t D = M.D;
  Cursor c{M.tensors};
  M.src_emb = c.ptr("src_embedding", M.src_vocab * D);
  M.tgt_emb = c.ptr("tgt_embedding", M.tgt_vocab * D);
  M.src_pos = c.ptr("src_positions", M.pos_rows * D);
  M.tgt_pos = c.ptr("tgt_positions", M.pos_rows * D);
  if (emb_norm) {
    M.src_emb_norm = c.norm("src_layernorm_embedding", D);
    M.tgt_emb_norm = c.norm("tgt_layernorm_embedding", D);
  }
  if (M.enc_pre) M.enc_final = c.norm("encoder_norm", D);
  if (M.dec_pre) M.dec_final = c.norm("decoder_norm", D);
  for (int64_t i = 0; i < enc_layers; ++i) {
    EncoderLayer L;
    L.attn_norm = c.norm("encoder attn_norm", D);
    L.attn = c.attention("encoder self_attn", D);
    L.ffn_norm = c.norm("encoder ffn_norm", D);
    M.ffn_max = std::max(M.ffn_max, c.feed_forward("encoder fc1/fc2", D, L.fc1, L.fc2));
    M.enc.push_back(L);
  }
  for (int64_t i = 0; i < dec_layers; ++i) {
    DecoderLayer L;
    L.self_norm = c.norm("decoder self_attn_norm", D);
    L.self_attn = c.attention("decoder self_attn", D);
    L.cross_norm = c.norm("decoder cross_attn_norm", D);
    L.cross_attn = c.attention("decoder cross_attn", D);
    L.ffn_norm = c.norm("decoder ffn_norm", D);
    M.ffn_max = std::max(M.ffn_max, c.feed_forward("decoder fc1/fc2", D, L.fc1, L.fc2));
    M.dec.push_back(L);
  }
  for (EncoderLayer& L : M.enc) L.attn.qkv = stack(M, {&L.attn.q, &L.attn.k, &L.attn.v});
  std::vector<const Linear*> cross_parts;
  for (DecoderLayer& L : M.dec) {
    L.self_attn.qkv = stack(M, {&L.self_attn.q, &L.self_attn.k, &L.self_attn.v});
    cross_parts.push_back(&L.cross_attn.k);
    cross_parts.push_back(&L.cross_attn.v);
  }
  M.out = c.linear("output_projection", M.tgt_vocab, D, /*bias=*/false);
  M.head = c.params("output ranges/ts");
  TORCH_CHECK(c.i == weights.size(), "mmserve_cpu: ", weights.size() - c.i, " weights left over");
  M.cross_kv = stack(M, cross_parts);
  auto translator = std::make_shared<Translator>();
  translator->base = model;
  int64_t handle = 0;
  {
    std::lock_guard<std::mutex> guard(g_models_lock);
    handle = g_next_handle++;
    g_models[handle] = translator;
  }
  get_model(handle);  // prepared for the current thread count now rather than on the first request
  return handle;
}

void translator_release(int64_t handle) {
  std::lock_guard<std::mutex> guard(g_models_lock);
  g_models.erase(handle);
}

// Which GEMM engine each weight shape runs on, small / large row counts (native_linear.h).
std::string translator_gemm_engines(int64_t handle) {
  const auto model = get_model(handle);
  return native::describe_engines(linears(*model));
}

at::Tensor translator_encode(int64_t handle, const at::Tensor& src_ids, const at::Tensor& src_pad_mask) {
  const auto model = get_model(handle);
  const Sources s = read_sources(*model, src_ids, src_pad_mask);
  at::Tensor memory = at::empty({s.B, s.S, model->D}, at::TensorOptions().dtype(at::kFloat));
  encode_into(*model, s.ids.const_data_ptr<int64_t>(), s.mask.const_data_ptr<uint8_t>(), s.B, s.S,
              memory.mutable_data_ptr<float>());
  return memory;
}

// Per layer (k, v) as [B, H, S, Dh] views of [B, S, D] buffers (the step API's layout).
std::vector<at::Tensor> translator_cross_kv(int64_t handle, const at::Tensor& memory_in) {
  const auto model = get_model(handle);
  const Model& M = *model;
  TORCH_CHECK(memory_in.dim() == 3 && memory_in.size(2) == M.D, "mmserve_cpu: memory must be [B, S, D]");
  const at::Tensor memory = memory_in.to(at::kFloat).contiguous();
  const int64_t B = memory.size(0), S = memory.size(1);
  std::vector<at::Tensor> out;
  for (const DecoderLayer& L : M.dec) {
    for (const Linear* lin : {&L.cross_attn.k, &L.cross_attn.v}) {
      at::Tensor t = at::empty({B, S, M.D}, memory.options());
      linear(*lin, memory.const_data_ptr<float>(), B * S, t.mutable_data_ptr<float>());
      out.push_back(t.view({B, S, M.H, M.Dh}).permute({0, 2, 1, 3}));
    }
  }
  return out;
}

// One token per row: (logits [B, 1, V], per layer (k, v) [B, H, P+1, Dh]).
std::tuple<at::Tensor, std::vector<at::Tensor>> translator_decode_step(
    int64_t handle, const at::Tensor& tokens_in, const at::Tensor& positions_in, at::TensorList self_kv,
    const at::Tensor& self_pad_mask, at::TensorList cross_kv, const at::Tensor& src_pad_mask) {
  const auto model = get_model(handle);
  const Model& M = *model;
  const int64_t layers = static_cast<int64_t>(M.dec.size());
  TORCH_CHECK(tokens_in.dim() == 2 && tokens_in.size(1) == 1 && positions_in.sizes() == tokens_in.sizes(),
              "mmserve_cpu: the native decode_step takes one new token per row ([B, 1] tokens and positions)");
  const int64_t B = tokens_in.size(0);
  TORCH_CHECK(self_kv.empty() || static_cast<int64_t>(self_kv.size()) == 2 * layers,
              "mmserve_cpu: self_kv must hold (k, v) for each of the ", layers, " decoder layers");
  TORCH_CHECK(static_cast<int64_t>(cross_kv.size()) == 2 * layers, "mmserve_cpu: cross_kv must hold (k, v) per layer");
  const int64_t P = self_kv.empty() ? 0 : self_kv[0].size(2);
  TORCH_CHECK(self_pad_mask.dim() == 2 && self_pad_mask.size(0) == B && self_pad_mask.size(1) == P + 1,
              "mmserve_cpu: self_pad_mask must be [B, P+1]");
  const at::Tensor tokens = tokens_in.to(at::kLong).contiguous();
  const at::Tensor positions = positions_in.to(at::kLong).contiguous();
  const at::Tensor self_mask = self_pad_mask.to(at::kByte).contiguous();
  const at::Tensor src_mask = src_pad_mask.to(at::kByte).contiguous();
  const int64_t S = src_mask.size(1);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  // The grown caches: [B, P+1, H, Dh] buffers, the old P slots copied in, the new one written by the step.
  std::vector<at::Tensor> grown;
  SelfCache self;
  self.n = P + 1;
  self.mask = self_mask.const_data_ptr<uint8_t>();
  std::vector<int64_t> offsets(static_cast<size_t>(B * (P + 1)));
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t j = 0; j <= P; ++j) offsets[r * (P + 1) + j] = (r * (P + 1) + j) * M.D;
  }
  self.offsets = offsets.data();
  for (int64_t i = 0; i < 2 * layers; ++i) {
    at::Tensor buffer = at::empty({B, P + 1, M.H, M.Dh}, f32);
    if (P) {
      TORCH_CHECK(self_kv[i].dim() == 4 && self_kv[i].size(0) == B && self_kv[i].size(1) == M.H &&
                      self_kv[i].size(2) == P && self_kv[i].size(3) == M.Dh,
                  "mmserve_cpu: self_kv tensors must be [B, H, P, Dh]");
      buffer.narrow(1, 0, P).copy_(self_kv[i].permute({0, 2, 1, 3}));
    }
    (i % 2 ? self.v : self.k).push_back(buffer.mutable_data_ptr<float>());
    grown.push_back(buffer);
  }
  // Cross keys/values in the [B, S, H, Dh] layout translator_cross_kv returns (and the Python
  // wrapper's reorder_kv keeps); anything else is copied into it.
  CrossCache cross;
  std::vector<at::Tensor> cross_kept;
  cross.s_stride = S * M.D;
  cross.h_stride = M.Dh;
  cross.j_stride = M.D;
  for (int64_t i = 0; i < 2 * layers; ++i) {
    at::Tensor t = cross_kv[i];
    TORCH_CHECK(t.dim() == 4 && t.size(0) == B && t.size(1) == M.H && t.size(2) == S && t.size(3) == M.Dh &&
                    t.scalar_type() == at::kFloat && t.device().is_cpu(),
                "mmserve_cpu: cross_kv tensors must be float32 CPU [B, H, S, Dh]");
    if (!t.permute({0, 2, 1, 3}).is_contiguous()) t = t.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
    (i % 2 ? cross.v : cross.k).push_back(t.const_data_ptr<float>());
    cross_kept.push_back(t);
  }
  cross.S = S;
  cross.mask = src_mask.const_data_ptr<uint8_t>();
  at::Tensor logits = at::empty({B, 1, M.tgt_vocab}, f32);
  Workspace ws;
  if (B) {
    decoder_step(M, B, tokens.const_data_ptr<int64_t>(), positions.const_data_ptr<int64_t>(), self, cross, ws,
                 logits.mutable_data_ptr<float>());
  }
  std::vector<at::Tensor> out;
  for (auto& g : grown) out.push_back(g.permute({0, 2, 1, 3}));
  return {logits, out};
}

// The whole search for a batch: (tokens [B, n_best, max_length] padded with pad, lengths [B, n_best]
// (-1: no hypothesis), scores [B, n_best] float64).
std::tuple<at::Tensor, at::Tensor, at::Tensor> translator_search(
    int64_t handle, const at::Tensor& src_ids, const at::Tensor& src_pad_mask, int64_t bos, int64_t eos, int64_t pad,
    int64_t max_length, int64_t beam_size, double alpha, int64_t n_best, bool fairseq, int64_t min_length,
    int64_t unk_id, double unk_penalty) {
  const auto model = get_model(handle);
  const Model& M = *model;
  TORCH_CHECK(beam_size >= 1 && n_best >= 1 && n_best <= beam_size,
              "mmserve_cpu: need beam_size >= 1 and 1 <= n_best <= beam_size");
  TORCH_CHECK(max_length >= 1 && max_length <= M.pos_rows - M.pos_offset, "mmserve_cpu: max_length ", max_length,
              " is outside 1..", M.pos_rows - M.pos_offset);
  TORCH_CHECK(eos >= 0 && eos < M.tgt_vocab, "mmserve_cpu: eos id outside the vocabulary");
  const Sources s = read_sources(M, src_ids, src_pad_mask);
  Rules R;
  R.fairseq = fairseq;
  R.min_length = min_length;
  R.unk_id = unk_id;
  R.unk_penalty = static_cast<float>(unk_penalty);
  R.alpha = static_cast<float>(alpha);
  R.bos = bos;
  R.eos = eos;
  R.pad = pad;
  R.max_length = max_length;
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  at::Tensor tokens = at::full({s.B, n_best, max_length}, pad, i64);
  at::Tensor lengths = at::full({s.B, n_best}, -1, i64);
  at::Tensor scores = at::full({s.B, n_best}, -std::numeric_limits<double>::infinity(),
                               at::TensorOptions().dtype(at::kDouble));
  if (s.B == 0) return {tokens, lengths, scores};
  std::vector<float> memory(static_cast<size_t>(s.B * s.S * M.D));
  const uint8_t* mask = s.mask.const_data_ptr<uint8_t>();
  encode_into(M, s.ids.const_data_ptr<int64_t>(), mask, s.B, s.S, memory.data());
  const CrossKV cross(M, memory.data(), s.B, s.S);
  const auto hyps = beam_size == 1 ? greedy(M, cross, mask, s.B, s.S, R) : beam(M, cross, mask, s.B, s.S, R, beam_size, n_best);
  int64_t* tp = tokens.mutable_data_ptr<int64_t>();
  int64_t* lp = lengths.mutable_data_ptr<int64_t>();
  double* sp = scores.mutable_data_ptr<double>();
  for (int64_t b = 0; b < s.B; ++b) {
    for (size_t j = 0; j < hyps[b].size() && static_cast<int64_t>(j) < n_best; ++j) {
      const Hyp& h = hyps[b][j];
      const int64_t at = b * n_best + static_cast<int64_t>(j);
      lp[at] = static_cast<int64_t>(h.tokens.size());
      sp[at] = h.score;
      std::copy(h.tokens.begin(), h.tokens.end(), tp + at * max_length);
    }
  }
  return {tokens, lengths, scores};
}

}  // namespace
}  // namespace mmserve_cpu

TORCH_LIBRARY_FRAGMENT(mmserve_cpu, m) {
  m.def("translator_create(Tensor[] weights, int[] ints, float[] floats) -> int", &mmserve_cpu::translator_create);
  m.def("translator_release(int handle) -> ()", &mmserve_cpu::translator_release);
  m.def("translator_gemm_engines(int handle) -> str", &mmserve_cpu::translator_gemm_engines);
  m.def("translator_encode(int handle, Tensor src_ids, Tensor src_pad_mask) -> Tensor",
        &mmserve_cpu::translator_encode);
  m.def("translator_cross_kv(int handle, Tensor memory) -> Tensor[]", &mmserve_cpu::translator_cross_kv);
  m.def(
      "translator_decode_step(int handle, Tensor tokens, Tensor positions, Tensor[] self_kv, Tensor self_pad_mask, "
      "Tensor[] cross_kv, Tensor src_pad_mask) -> (Tensor, Tensor[])",
      &mmserve_cpu::translator_decode_step);
  m.def(
      "translator_search(int handle, Tensor src_ids, Tensor src_pad_mask, int bos, int eos, int pad, int max_length, "
      "int beam_size, float alpha, int n_best, bool fairseq, int min_length, int unk_id, float unk_penalty) "
      "-> (Tensor, Tensor, Tensor)",
      &mmserve_cpu::translator_search);
}
