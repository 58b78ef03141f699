// d, MetaNet's task-level fast-weight generator, fused into one CPU kernel: an LSTM(2, H) and a
// linear readout H -> 1 run independently on every coordinate of a gradient (~150k per episode).
//
// Written out in PyTorch, every step makes [coordinates, 4H] gate tensors (48 MB at 152k
// coordinates) travel through main memory several times, forward and backward. Here each block
// of L coordinates (the lanes of one vector register: 16 floats with AVX-512, 8 with AVX2) runs
// all T steps in registers and L1, the backward recomputes its block's forward instead of saving it, and the weight
// gradients are summed per thread. The same arithmetic as model/fast_weights.py's lstm_cell
// (gate order input, forget, cell, output); the zero state is exact zeros.
//
// Ops (metanet_d::forward, metanet_d::backward, and metanet_d::lanes: L), float32, contiguous:
//   meta [N, T, P, 2] preprocessed gradients (constants: no gradient flows to them);
//   h0, c0 [N, P, H] or None (the zero state); w_ih [4H, 2]; w_hh [4H, H]; bias [4H];
//   head_w [H]; head_b [1].
//   forward -> (fast weights [N, P], h [N, P, H], c [N, P, H]);
//   backward(grad_out [N, P], ...) -> gradients of (w_ih, w_hh, bias, head_w, head_b).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

#ifdef __AVX512F__
constexpr int64_t L = 16;  // coordinates per block: one vector register of floats
#else
constexpr int64_t L = 8;  // AVX2: 16-float vectors, split in two by the compiler, ran ~5x slower
#endif
typedef float vf __attribute__((vector_size(L * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(L * sizeof(int32_t))));

inline vf splat(float s) { return vf{} + s; }

#ifdef __AVX512F__
// exp of each lane: Cephes' expf (reduction by ln 2, degree-6 polynomial), about 1 ulp; inputs are
// clamped to [-87, 88], so no lane overflows.
inline vf vexp(vf v) {
  const __m512 x =
      _mm512_max_ps(_mm512_min_ps((__m512)v, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return (vf)_mm512_scalef_ps(p, n);
}

// 1 / x of each lane, x >= 1: an approximate reciprocal (2^-14) refined by one Newton step.
inline vf vreciprocal(vf x) {
  const vf r = (vf)_mm512_rcp14_ps((__m512)x);
  return r * (2.0f - x * r);
}
#else
// The same exp in portable vector code, and a division.
inline vf vexp(vf x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  const vf round = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  vf n = (x * 1.44269504088896341f + round) - round;
  vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vi scale = __builtin_convertvector(n, vi) << 23;
  return (vf)((vi)p + scale);
}

inline vf vreciprocal(vf x) { return 1.0f / x; }
#endif

inline vf vsigmoid(vf x) { return vreciprocal(1.0f + vexp(-x)); }
inline vf vtanh(vf x) { return 2.0f * vreciprocal(1.0f + vexp(-2.0f * x)) - 1.0f; }

struct Params {
  const float* w_ih;    // [G, 2]
  const float* w_hh;    // [G, H]
  const float* bias;    // [G]
  const float* head_w;  // [H]
  float head_b;
  int64_t H, G, T, P;
};

// One block's trajectory, the scratch of one thread (reused block after block).
struct Trajectory {
  std::vector<vf> x0, x1;    // [T] the two input features
  std::vector<vf> h, c;      // [(T + 1) * H] states, h[0..H) / c[0..H) the initial one
  std::vector<vf> gates;     // [T * G] activations i, f, g, o
  std::vector<vf> tanh_c;    // [T * H]
  std::vector<vf> dgates;    // [T * G] gradients of the gate pre-activations (backward)

  explicit Trajectory(const Params& p)
      : x0(p.T), x1(p.T), h((p.T + 1) * p.H), c((p.T + 1) * p.H), gates(p.T * p.G),
        tanh_c(p.T * p.H), dgates(p.T * p.G) {}
};

// Runs the block of coordinates [p0, p0 + lanes) of one sequence (meta [T, P, 2], state [P, H]).
// Lanes past ``lanes`` are zeros and stay finite.
void forward_block(const Params& p, const float* meta, const float* h0, const float* c0, int64_t p0,
                   int64_t lanes, Trajectory& tr) {
  const int64_t H = p.H, G = p.G;
  for (int64_t t = 0; t < p.T; ++t) {
    const float* m = meta + (t * p.P + p0) * 2;
    vf a{}, b{};
    for (int64_t l = 0; l < lanes; ++l) {
      a[l] = m[2 * l];
      b[l] = m[2 * l + 1];
    }
    tr.x0[t] = a;
    tr.x1[t] = b;
  }
  const bool has_state = h0 != nullptr;
  for (int64_t k = 0; k < H; ++k) {
    vf hk{}, ck{};
    if (has_state) {
      for (int64_t l = 0; l < lanes; ++l) {
        hk[l] = h0[(p0 + l) * H + k];
        ck[l] = c0[(p0 + l) * H + k];
      }
    }
    tr.h[k] = hk;
    tr.c[k] = ck;
  }
  for (int64_t t = 0; t < p.T; ++t) {
    const bool recurrent = t > 0 || has_state;
    const vf* hp = &tr.h[t * H];
    const vf* cp = &tr.c[t * H];
    vf* g = &tr.gates[t * G];
    const vf x0 = tr.x0[t], x1 = tr.x1[t];
    for (int64_t j = 0; j < G; j += 4) {  // four gate rows at a time: each h[k] load feeds 4 FMAs
      vf a0 = p.bias[j] + p.w_ih[2 * j] * x0 + p.w_ih[2 * j + 1] * x1;
      vf a1 = p.bias[j + 1] + p.w_ih[2 * j + 2] * x0 + p.w_ih[2 * j + 3] * x1;
      vf a2 = p.bias[j + 2] + p.w_ih[2 * j + 4] * x0 + p.w_ih[2 * j + 5] * x1;
      vf a3 = p.bias[j + 3] + p.w_ih[2 * j + 6] * x0 + p.w_ih[2 * j + 7] * x1;
      if (recurrent) {
        const float* w = p.w_hh + j * H;
        for (int64_t k = 0; k < H; ++k) {
          const vf hk = hp[k];
          a0 += w[k] * hk;
          a1 += w[H + k] * hk;
          a2 += w[2 * H + k] * hk;
          a3 += w[3 * H + k] * hk;
        }
      }
      g[j] = a0;
      g[j + 1] = a1;
      g[j + 2] = a2;
      g[j + 3] = a3;
    }
    vf* hn = &tr.h[(t + 1) * H];
    vf* cn = &tr.c[(t + 1) * H];
    for (int64_t k = 0; k < H; ++k) {
      const vf i = vsigmoid(g[k]), f = vsigmoid(g[H + k]), gg = vtanh(g[2 * H + k]),
               o = vsigmoid(g[3 * H + k]);
      const vf ck = recurrent ? f * cp[k] + i * gg : i * gg;
      const vf tc = vtanh(ck);
      g[k] = i;
      g[H + k] = f;
      g[2 * H + k] = gg;
      g[3 * H + k] = o;
      cn[k] = ck;
      tr.tanh_c[t * H + k] = tc;
      hn[k] = o * tc;
    }
  }
}

void check_inputs(const at::Tensor& meta, const std::optional<at::Tensor>& h0,
                  const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                  const at::Tensor& bias, const at::Tensor& head_w, const at::Tensor& head_b) {
  for (const at::Tensor* t : {&meta, &w_ih, &w_hh, &bias, &head_w, &head_b}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "metanet_d: float32 contiguous CPU tensors only");
  }
  TORCH_CHECK(meta.dim() == 4 && meta.size(3) == 2, "metanet_d: meta must be [N, T, P, 2]");
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(H % 4 == 0 && w_hh.size(0) == 4 * H && w_ih.size(0) == 4 * H && w_ih.size(1) == 2 &&
                  bias.numel() == 4 * H && head_w.numel() == H && head_b.numel() == 1,
              "metanet_d: LSTM(2, H) weights with H a multiple of 4");
  TORCH_CHECK(H <= 64, "metanet_d: at most 64 hidden units");
  TORCH_CHECK(h0.has_value() == c0.has_value(), "metanet_d: give both h0 and c0, or neither");
  if (h0.has_value()) {
    for (const at::Tensor* t : {&*h0, &*c0}) {
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                      t->dim() == 3 && t->size(0) == meta.size(0) && t->size(1) == meta.size(2) &&
                      t->size(2) == H,
                  "metanet_d: h0 and c0 must be float32 contiguous [N, P, H]");
    }
  }
}

Params params_of(const at::Tensor& meta, const at::Tensor& w_ih, const at::Tensor& w_hh,
                 const at::Tensor& bias, const at::Tensor& head_w, const at::Tensor& head_b) {
  const int64_t H = w_hh.size(1);
  return Params{w_ih.data_ptr<float>(), w_hh.data_ptr<float>(), bias.data_ptr<float>(),
                head_w.data_ptr<float>(), head_b.item<float>(), H, 4 * H, meta.size(1), meta.size(2)};
}

// Calls fn(n, p0, lanes, trajectory) for every block of every sequence, in parallel; fn also gets
// the thread's index (for per-thread sums).
template <typename Fn>
void for_blocks(const Params& p, int64_t sequences, Fn fn) {
  const int64_t per_sequence = (p.P + L - 1) / L;
  at::parallel_for(0, sequences * per_sequence, 64, [&](int64_t begin, int64_t end) {
    Trajectory tr(p);
    const int thread = at::get_thread_num();
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n = block / per_sequence, p0 = (block % per_sequence) * L;
      fn(thread, n, p0, std::min(L, p.P - p0), tr);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> d_forward(
    const at::Tensor& meta, const std::optional<at::Tensor>& h0, const std::optional<at::Tensor>& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& bias, const at::Tensor& head_w,
    const at::Tensor& head_b) {
  check_inputs(meta, h0, c0, w_ih, w_hh, bias, head_w, head_b);
  const Params p = params_of(meta, w_ih, w_hh, bias, head_w, head_b);
  const int64_t N = meta.size(0), H = p.H;
  at::Tensor out = at::empty({N, p.P}, meta.options());
  at::Tensor h = at::empty({N, p.P, H}, meta.options());
  at::Tensor c = at::empty({N, p.P, H}, meta.options());
  const float* meta_ptr = meta.data_ptr<float>();
  const float* h0_ptr = h0.has_value() ? h0->data_ptr<float>() : nullptr;
  const float* c0_ptr = c0.has_value() ? c0->data_ptr<float>() : nullptr;
  float* out_ptr = out.data_ptr<float>();
  float* h_ptr = h.data_ptr<float>();
  float* c_ptr = c.data_ptr<float>();
  for_blocks(p, N, [&](int, int64_t n, int64_t p0, int64_t lanes, Trajectory& tr) {
    const int64_t state = n * p.P * H;
    forward_block(p, meta_ptr + n * p.T * p.P * 2, h0_ptr ? h0_ptr + state : nullptr,
                  c0_ptr ? c0_ptr + state : nullptr, p0, lanes, tr);
    const vf* hT = &tr.h[p.T * H];
    const vf* cT = &tr.c[p.T * H];
    vf fast = splat(p.head_b);
    for (int64_t k = 0; k < H; ++k) fast += p.head_w[k] * hT[k];
    for (int64_t l = 0; l < lanes; ++l) {
      out_ptr[n * p.P + p0 + l] = fast[l];
      for (int64_t k = 0; k < H; ++k) {
        h_ptr[state + (p0 + l) * H + k] = hT[k][l];
        c_ptr[state + (p0 + l) * H + k] = cT[k][l];
      }
    }
  });
  return {out, h, c};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> d_backward(
    const at::Tensor& grad_out, const at::Tensor& meta, const std::optional<at::Tensor>& h0,
    const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& bias, const at::Tensor& head_w, const at::Tensor& head_b) {
  check_inputs(meta, h0, c0, w_ih, w_hh, bias, head_w, head_b);
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat && grad_out.is_contiguous() &&
                  grad_out.numel() == meta.size(0) * meta.size(2),
              "metanet_d: grad_out must be float32 contiguous [N, P]");
  const Params p = params_of(meta, w_ih, w_hh, bias, head_w, head_b);
  const int64_t N = meta.size(0), H = p.H, G = p.G;
  // Per-thread sums, lane by lane: w_hh [G * H], w_ih [2G], bias [G], head_w [H], head_b [1].
  const int64_t width = G * H + 3 * G + H + 1;
  std::vector<std::vector<vf>> sums(at::get_num_threads(), std::vector<vf>(width));
  const float* meta_ptr = meta.data_ptr<float>();
  const float* h0_ptr = h0.has_value() ? h0->data_ptr<float>() : nullptr;
  const float* c0_ptr = c0.has_value() ? c0->data_ptr<float>() : nullptr;
  const float* grad_ptr = grad_out.data_ptr<float>();
  for_blocks(p, N, [&](int thread, int64_t n, int64_t p0, int64_t lanes, Trajectory& tr) {
    const int64_t state = n * p.P * H;
    const bool has_state = h0_ptr != nullptr;
    forward_block(p, meta_ptr + n * p.T * p.P * 2, has_state ? h0_ptr + state : nullptr,
                  has_state ? c0_ptr + state : nullptr, p0, lanes, tr);
    vf* s = sums[thread].data();
    vf* s_whh = s;
    vf* s_wih = s + G * H;
    vf* s_bias = s_wih + 2 * G;
    vf* s_head_w = s_bias + G;
    vf* s_head_b = s_head_w + H;

    vf go{};  // padded lanes get zero gradient, so they add nothing below
    for (int64_t l = 0; l < lanes; ++l) go[l] = grad_ptr[n * p.P + p0 + l];
    *s_head_b += go;
    vf dh[64], dc[64];  // H <= 64
    for (int64_t k = 0; k < H; ++k) {
      s_head_w[k] += go * tr.h[p.T * H + k];
      dh[k] = go * p.head_w[k];
      dc[k] = vf{};
    }
    for (int64_t t = p.T - 1; t >= 0; --t) {
      const bool recurrent = t > 0 || has_state;
      const vf* g = &tr.gates[t * G];
      const vf* cp = &tr.c[t * H];
      const vf* tc = &tr.tanh_c[t * H];
      vf* a = &tr.dgates[t * G];
      for (int64_t k = 0; k < H; ++k) {
        const vf i = g[k], f = g[H + k], gg = g[2 * H + k], o = g[3 * H + k];
        const vf dck = dc[k] + dh[k] * o * (1.0f - tc[k] * tc[k]);
        a[k] = dck * gg * i * (1.0f - i);
        a[H + k] = recurrent ? dck * cp[k] * f * (1.0f - f) : vf{};
        a[2 * H + k] = dck * i * (1.0f - gg * gg);
        a[3 * H + k] = dh[k] * tc[k] * o * (1.0f - o);
        dc[k] = dck * f;
      }
      if (t > 0) {  // dh of the previous step: w_hh^T a
        for (int64_t k = 0; k < H; ++k) dh[k] = vf{};
        for (int64_t j = 0; j < G; ++j) {
          const vf aj = a[j];
          const float* w = p.w_hh + j * H;
          for (int64_t k = 0; k < H; ++k) dh[k] += w[k] * aj;
        }
      }
      const vf x0 = tr.x0[t], x1 = tr.x1[t];
      for (int64_t j = 0; j < G; ++j) {
        s_bias[j] += a[j];
        s_wih[2 * j] += a[j] * x0;
        s_wih[2 * j + 1] += a[j] * x1;
      }
    }
    // w_hh's gradient, sum over steps of a_t h_{t-1}^T, in 4 x 4 tiles held in registers
    const int64_t first = has_state ? 0 : 1;  // with the zero state, h_{-1} = 0 adds nothing
    for (int64_t j = 0; j < G; j += 4) {
      for (int64_t k = 0; k < H; k += 4) {
        vf acc[4][4];
        for (int r = 0; r < 4; ++r)
          for (int q = 0; q < 4; ++q) acc[r][q] = s_whh[(j + r) * H + k + q];
        for (int64_t t = first; t < p.T; ++t) {
          const vf* a = &tr.dgates[t * G + j];
          const vf* hp = &tr.h[t * H + k];
          for (int r = 0; r < 4; ++r)
            for (int q = 0; q < 4; ++q) acc[r][q] += a[r] * hp[q];
        }
        for (int r = 0; r < 4; ++r)
          for (int q = 0; q < 4; ++q) s_whh[(j + r) * H + k + q] = acc[r][q];
      }
    }
  });
  std::vector<double> total(width, 0.0);
  for (const auto& thread : sums)
    for (int64_t i = 0; i < width; ++i)
      for (int64_t l = 0; l < L; ++l) total[i] += thread[i][l];
  auto take = [&](int64_t offset, at::IntArrayRef shape) {
    at::Tensor t = at::empty(shape, meta.options());
    float* ptr = t.data_ptr<float>();
    for (int64_t i = 0; i < t.numel(); ++i) ptr[i] = static_cast<float>(total[offset + i]);
    return t;
  };
  return {take(G * H, {G, 2}), take(0, {G, H}), take(G * H + 2 * G, {G}),
          take(G * H + 3 * G, {H}), take(G * H + 3 * G + H, {1})};
}

int64_t lanes() { return L; }

}  // namespace

TORCH_LIBRARY(metanet_d, m) {
  m.def("lanes() -> int", &lanes);  // coordinates per block, by the instruction set compiled for
  m.def(
      "forward(Tensor meta, Tensor? h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor bias, "
      "Tensor head_w, Tensor head_b) -> (Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_out, Tensor meta, Tensor? h0, Tensor? c0, Tensor w_ih, Tensor w_hh, "
      "Tensor bias, Tensor head_w, Tensor head_b) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(metanet_d, CPU, m) {
  m.impl("forward", &d_forward);
  m.impl("backward", &d_backward);
}
