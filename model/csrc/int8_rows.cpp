// W* = a^T M over each query's top-k rows of a task memory stored as int8 (model/compact.py), as
// one CPU kernel: the gather, the dequantization and the weighted sum in one pass.
//
// A row of M is one example's fast weights, P int8 coordinates split into layers of output rows,
// each output row with its own float32 scale. In PyTorch the read copies a query's k rows
// ([k, P] int8), converts them to float32 ([k, P], 4x the bytes) and then sums them: for 16 rows of
// 152k coordinates, 12 MB through main memory per query. Here 64 outputs at a time (4 AVX-512
// registers; 32 with AVX2) are summed over the k rows in registers: each int8 is read once, widened
// and multiplied by its row's coefficient (attention times scale) in one fused multiply-add, and
// each output is written once.
//
// Op metanet_rows::gather_sum(data, scales, ids, weights, rows, lengths), CPU, contiguous:
//   data int8 [N, P] rows; scales float32 [N, R], one per output row, R = sum(rows);
//   ids int64 [Q, K] rows each query reads (< N); weights float32 [Q, K] their attention;
//   rows, lengths: per layer, its output rows and their length, sum(rows * lengths) = P;
//   -> float32 [Q, P], out[q, c] = sum_k weights[q, k] * scales[ids[q, k], row(c)] * data[ids[q, k], c].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// Vector width (floats) and one step of the sum: acc += c * float(8-bit ints at p)
#if defined(__AVX512F__)
constexpr int64_t W = 16;
typedef __m512 vec;
inline vec zero() { return _mm512_setzero_ps(); }
inline vec splat(float c) { return _mm512_set1_ps(c); }
inline vec fma_int8(vec acc, vec c, const int8_t* p) {
  __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), acc);
}
inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t W = 8;
typedef __m256 vec;
inline vec zero() { return _mm256_setzero_ps(); }
inline vec splat(float c) { return _mm256_set1_ps(c); }
inline vec fma_int8(vec acc, vec c, const int8_t* p) {
  __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), acc);
}
inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
#else
constexpr int64_t W = 0;  // no vector path: the scalar loop below does everything
#endif

// out[0:n] = sum_j coef[j] * src[j][offset : offset + n], 4 vectors of outputs held in registers
// while the k rows are summed into them, so each int8 is read once and each output written once
inline void weighted_sum(float* out, const int8_t* const* src, const float* coef, int64_t k, int64_t offset,
                         int64_t n) {
  int64_t t = 0;
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  for (; t + 4 * W <= n; t += 4 * W) {
    vec a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
    for (int64_t j = 0; j < k; ++j) {
      const int8_t* p = src[j] + offset + t;
      const vec c = splat(coef[j]);
      a0 = fma_int8(a0, c, p);
      a1 = fma_int8(a1, c, p + W);
      a2 = fma_int8(a2, c, p + 2 * W);
      a3 = fma_int8(a3, c, p + 3 * W);
    }
    store(out + t, a0);
    store(out + t + W, a1);
    store(out + t + 2 * W, a2);
    store(out + t + 3 * W, a3);
  }
#endif
  for (; t < n; ++t) {
    float acc = 0.0f;
    for (int64_t j = 0; j < k; ++j) acc += coef[j] * static_cast<float>(src[j][offset + t]);
    out[t] = acc;
  }
}

at::Tensor gather_sum(const at::Tensor& data, const at::Tensor& scales, const at::Tensor& ids,
                      const at::Tensor& weights, at::IntArrayRef rows, at::IntArrayRef lengths) {
  TORCH_CHECK(data.device().is_cpu() && data.scalar_type() == at::kChar && data.dim() == 2 &&
                  data.is_contiguous(),
              "metanet_rows: data must be a contiguous int8 [N, P] CPU tensor");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.dim() == 2 && scales.is_contiguous() &&
                  scales.size(0) == data.size(0),
              "metanet_rows: scales must be a contiguous float32 [N, R] tensor");
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 2 && ids.is_contiguous(),
              "metanet_rows: ids must be a contiguous int64 [Q, K] tensor");
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.sizes() == ids.sizes() &&
                  weights.is_contiguous(),
              "metanet_rows: weights must be a contiguous float32 tensor shaped like ids");
  TORCH_CHECK(rows.size() == lengths.size(), "metanet_rows: one length per layer");
  const int64_t N = data.size(0), P = data.size(1), R = scales.size(1);
  const int64_t Q = ids.size(0), K = ids.size(1);
  int64_t coordinates = 0, total_rows = 0;
  for (size_t l = 0; l < rows.size(); ++l) {
    TORCH_CHECK(rows[l] >= 0 && lengths[l] >= 0, "metanet_rows: negative layer size");
    coordinates += rows[l] * lengths[l];
    total_rows += rows[l];
  }
  TORCH_CHECK(coordinates == P && total_rows == R,
              "metanet_rows: the layers cover ", coordinates, " coordinates in ", total_rows,
              " rows, the memory has ", P, " in ", R);
  const int64_t* id = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < Q * K; ++i)
    TORCH_CHECK(id[i] >= 0 && id[i] < N, "metanet_rows: row id ", id[i], " outside [0, ", N, ")");

  at::Tensor out = at::empty({Q, P}, weights.options());
  if (K == 0) return out.zero_();
  const int8_t* base = data.data_ptr<int8_t>();
  const float* scale = scales.data_ptr<float>();
  const float* weight = weights.data_ptr<float>();
  float* result = out.data_ptr<float>();
  at::parallel_for(0, Q, 1, [&](int64_t begin, int64_t end) {
    std::vector<const int8_t*> src(K);
    std::vector<float> coef(K);
    for (int64_t q = begin; q < end; ++q) {
      const int64_t* row_ids = id + q * K;
      const float* a = weight + q * K;
      for (int64_t j = 0; j < K; ++j) src[j] = base + row_ids[j] * P;
      float* o = result + q * P;
      int64_t offset = 0, row = 0;
      for (size_t l = 0; l < rows.size(); ++l) {
        const int64_t length = lengths[l];
        for (int64_t r = 0; r < rows[l]; ++r, ++row, offset += length) {
          for (int64_t j = 0; j < K; ++j) coef[j] = a[j] * scale[row_ids[j] * R + row];
          weighted_sum(o + offset, src.data(), coef.data(), K, offset, length);
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(metanet_rows, m) {
  m.def(
      "gather_sum(Tensor data, Tensor scales, Tensor ids, Tensor weights, int[] rows, int[] lengths) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(metanet_rows, CPU, m) { m.impl("gather_sum", &gather_sum); }
