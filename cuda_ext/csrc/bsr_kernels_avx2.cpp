// The AVX2/FMA path: 8-lane register-blocked micro-kernels, compiled for AVX2 + FMA by a target
// region whatever the build's baseline; bsr_kernels_cpu.cpp calls them only on a CPU that has both.
// Sixteen 256-bit registers shape every tile: 6 tokens × 16 outputs = 12 accumulators, plus 2 weight
// vectors and 1 broadcast, the shape of the usual AVX2 SGEMM kernel (12 FMAs per 2 loads + 6
// broadcasts). Standard headers come first, so no library code is compiled for AVX2.
#include "bsr_cpu_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace tlc_bsr {
namespace avx2 {
namespace {

inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t v) { return bf16_to_float(v); }

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {  // 8 bf16 → 8 fp32 (exact: bf16 is the top half of fp32)
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(uint16_t* p, __m256 v) {  // fp32 → bf16, round to nearest even, NaN stays NaN
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
  // packus works per 128-bit lane ([r0..r3 r0..r3 | r4..r7 r4..r7]); values fit 16 bits, so it is exact
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

// acc[m][v] += a_m[p·a_step] · b[p·b_step + 8v .. +8] for p in [0, P): the outer-product step of a
// small GEMM, M broadcasts and NV loads feeding M·NV FMAs.
template <int M, int NV, typename T, typename U>
inline void rank1_tile(const T* const (&a)[M], int64_t a_step, const U* b, int64_t b_step, int64_t P,
                       __m256 (&acc)[M][NV]) {
  for (int64_t p = 0; p < P; ++p) {
    __m256 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load8(b + p * b_step + 8 * v);
    for (int m = 0; m < M; ++m) {
      const __m256 am = _mm256_set1_ps(to_f32(a[m][p * a_step]));
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm256_fmadd_ps(am, bv[v], acc[m][v]);
    }
  }
}

// Brings the bs elements at p into L1 ahead of their use.
template <typename T>
inline void prefetch_row(const T* p, int64_t bs) {
  for (int64_t j = 0; j < bs; j += 64 / int64_t(sizeof(T)))
    _mm_prefetch(reinterpret_cast<const char*>(p + j), _MM_HINT_T0);
}

// Lanes of the result: the horizontal sums of a0, a1, a2, a3.
inline __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// Forward in dot form for few tokens (no packing, which would double the weight traffic of a
// memory-bound call): 3 tokens × 4 weight rows of 8-lane partial sums run over every block of the
// block-row, then one horizontal sum per output.
template <typename T>
void forward_dot(const BsrShape& s, const T* x, const T* values, const int64_t* crow, const int64_t* col,
                 const T* bias, T* y) {
  constexpr int M = 3, N = 4;
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features, n_tok = s.tokens;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 1)
  for (int64_t r = 0; r < s.block_rows; ++r) {
    for (int64_t t0 = 0; t0 < n_tok; t0 += M) {
      const int64_t nt = std::min<int64_t>(M, n_tok - t0);
      const T* xr[M];  // a tail tile repeats its last token; only nt rows are stored
      for (int m = 0; m < M; ++m) xr[m] = x + std::min(t0 + m, n_tok - 1) * ld;
      for (int64_t i0 = 0; i0 < bs; i0 += N) {
        __m256 acc[M][N];
        for (auto& row : acc)
          for (auto& a : row) a = _mm256_setzero_ps();
        for (int64_t k = crow[r]; k < crow[r + 1]; ++k) {
          const int64_t c0 = col[k] * bs;
          const T* w = values + (k * bs + i0) * bs;
          for (int64_t j = 0; j < bs; j += 8) {
            __m256 xv[M];
            for (int m = 0; m < M; ++m) xv[m] = load8(xr[m] + c0 + j);
            for (int n = 0; n < N; ++n) {
              const __m256 wv = load8(w + n * bs + j);
              for (int m = 0; m < M; ++m) acc[m][n] = _mm256_fmadd_ps(xv[m], wv, acc[m][n]);
            }
          }
        }
        for (int64_t m = 0; m < nt; ++m) {
          alignas(16) float sums[4];
          _mm_store_ps(sums, hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));
          for (int n = 0; n < N; ++n) {
            const float b = bias ? to_f32(bias[r * bs + i0 + n]) : 0.f;
            const float v = sums[n] + b;
            if constexpr (std::is_same_v<T, float>) y[(t0 + m) * out + r * bs + i0 + n] = v;
            else y[(t0 + m) * out + r * bs + i0 + n] = float_to_bf16(v);
          }
        }
      }
    }
  }
}

// dst[c][r] = src[r][c] for an 8×8 fp32 tile (24 shuffles instead of 64 strided scalar moves).
inline void transpose_8x8(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {  // lane L: r_i[4L], r_{i+1}[4L], r_i[4L+1], r_{i+1}[4L+1] (lo) and +2, +3 (hi)
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 8; g += 4) {  // lane L of r[g + e]: rows g..g+3 at column 4L + e
    r[g + 0] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
    r[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
    r[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
    r[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
  }
  for (int e = 0; e < 4; ++e) {  // column e: lane 0 of rows 0..3 and 4..7; column 4 + e: lane 1
    _mm256_storeu_ps(dst + e * dst_stride, _mm256_permute2f128_ps(r[e], r[4 + e], 0x20));
    _mm256_storeu_ps(dst + (4 + e) * dst_stride, _mm256_permute2f128_ps(r[e], r[4 + e], 0x31));
  }
}

// Wᵀ of one block in fp32, [bs (j)][bs (i)], the layout the outer-product forward reads.
inline void pack_block_transposed(const float* w, int64_t bs, float* dst) {
  for (int64_t i = 0; i < bs; i += 8)
    for (int64_t j = 0; j < bs; j += 8) transpose_8x8(w + i * bs + j, bs, dst + j * bs + i, bs);
}
inline void pack_block_transposed(const uint16_t* w, int64_t bs, float* dst) {
  for (int64_t i = 0; i < bs; ++i)
    for (int64_t j = 0; j < bs; ++j) dst[j * bs + i] = bf16_to_float(w[i * bs + j]);
}

// Lane n of the result: the horizontal sum of a[n].
inline __m256 hsum8(const __m256 (&a)[8]) {
  // g0 lane n (n < 4): half of a[n]'s sum (its low 128 bits); lane 4 + n: the other half. g1: a[4..7].
  const __m256 g0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 g1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20), _mm256_permute2f128_ps(g0, g1, 0x31));
}

// Forward for one or two tokens, a matrix-vector product bound by reading W: each block is read
// whole and in order (bs·bs contiguous elements, which the hardware prefetcher follows), 8 rows at
// a time against the token's bs inputs held in registers; each group's 8 sums fold into the
// block-row's fp32 outputs.
template <typename T>
void forward_gemv(const BsrShape& s, const T* x, const T* values, const int64_t* crow, const int64_t* col,
                  const T* bias, T* y) {
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features, nv = bs / 8;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 1)
  for (int64_t r = 0; r < s.block_rows; ++r)
    for (int64_t t = 0; t < s.tokens; ++t) {
      alignas(32) float sums[64];  // the block-row's outputs for token t
      for (int64_t i = 0; i < bs; ++i) sums[i] = bias ? to_f32(bias[r * bs + i]) : 0.f;
      for (int64_t k = crow[r]; k < crow[r + 1]; ++k) {
        const T* xr = x + t * ld + col[k] * bs;
        __m256 xv[8];
        for (int64_t v = 0; v < nv; ++v) xv[v] = load8(xr + 8 * v);
        for (int64_t i0 = 0; i0 < bs; i0 += 8) {
          const T* w = values + (k * bs + i0) * bs;
          __m256 acc[8];
          for (int n = 0; n < 8; ++n) {
            acc[n] = _mm256_mul_ps(load8(w + n * bs), xv[0]);
            for (int64_t v = 1; v < nv; ++v) acc[n] = _mm256_fmadd_ps(load8(w + n * bs + 8 * v), xv[v], acc[n]);
          }
          _mm256_store_ps(sums + i0, _mm256_add_ps(_mm256_load_ps(sums + i0), hsum8(acc)));
        }
      }
      for (int64_t i = 0; i < bs; i += 8) store8(y + t * out + r * bs + i, _mm256_load_ps(sums + i));
    }
}

// Forward in outer-product form: y[t, r·bs + i] += x[t, c·bs + j] · Wᵀ_k[j, i]. Each thread packs
// the blocks of its block-row transposed, in fp32, into a panel [Σ_k bs (j)][bs (i)] that stays in
// L2, so a register tile's 16 outputs are contiguous and need no horizontal sums.
template <typename T>
void forward_packed(const BsrShape& s, const T* x, const T* values, const int64_t* crow, const int64_t* col,
                    const T* bias, T* y) {
  constexpr int M = 6, NV = 2, W = 8 * NV;  // 6 tokens × 16 outputs per tile
  const int64_t bs = s.bs, bb = bs * bs, out = s.block_rows * bs, ld = s.in_features, n_tok = s.tokens;
#pragma omp parallel num_threads(s.num_threads)
  {
    std::vector<float> panel;
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < s.block_rows; ++r) {
      const int64_t kb = crow[r], ke = crow[r + 1];
      panel.resize((ke - kb) * bb);
      for (int64_t k = kb; k < ke; ++k) pack_block_transposed(values + k * bb, bs, panel.data() + (k - kb) * bb);
      for (int64_t t0 = 0; t0 < n_tok; t0 += M) {
        const int64_t nt = std::min<int64_t>(M, n_tok - t0);
        const T* xrow[M];  // a tail tile repeats its last token; only nt rows are stored
        for (int m = 0; m < M; ++m) xrow[m] = x + std::min(t0 + m, n_tok - 1) * ld;
        for (int64_t i0 = 0; i0 < bs; i0 += W) {
          __m256 acc[M][NV];
          for (int v = 0; v < NV; ++v) {
            const __m256 b = bias ? load8(bias + r * bs + i0 + 8 * v) : _mm256_setzero_ps();
            for (int m = 0; m < M; ++m) acc[m][v] = b;
          }
          for (int64_t k = kb; k < ke; ++k) {
            const T* a[M];
            for (int m = 0; m < M; ++m) a[m] = xrow[m] + col[k] * bs;
            if (k + 1 < ke)  // x rows jump between blocks, beyond what hardware prefetchers follow
              for (int m = 0; m < M; ++m) prefetch_row(xrow[m] + col[k + 1] * bs, bs);
            rank1_tile<M, NV>(a, 1, panel.data() + (k - kb) * bb + i0, bs, bs, acc);
          }
          for (int64_t m = 0; m < nt; ++m)
            for (int v = 0; v < NV; ++v) store8(y + (t0 + m) * out + r * bs + i0 + 8 * v, acc[m][v]);
        }
      }
    }
  }
}

// Below kPackMinTokens packing the block-row costs more than the horizontal sums it saves. Not tuned
// finely: at 8 tokens (dot form) and 32 (packed) both ran 1.4–6× faster than dense on 1024-wide weights.
constexpr int64_t kPackMinTokens = 16;

template <typename T>
void forward(const BsrShape& s, const T* x, const T* values, const int64_t* crow, const int64_t* col, const T* bias,
             T* y) {
  if (s.tokens >= kPackMinTokens) return forward_packed(s, x, values, crow, col, bias, y);
  if (s.tokens <= 2) return forward_gemv(s, x, values, crow, col, bias, y);
  forward_dot(s, x, values, crow, col, bias, y);
}

// grad_x[t, c·bs + j] = Σ_k Σ_i grad_y[t, row(k)·bs + i] · W_k[i, j] over the blocks k of block-column
// c: W_k's rows are already the contiguous 16-wide operand, so no packing. 6 tokens × 16 columns a tile.
template <typename T>
void grad_input(const BsrShape& s, const T* gy, const T* values, const int64_t* crow, const int64_t* col, T* gx) {
  constexpr int M = 6, NV = 2, W = 8 * NV;
  const ColumnView cv = column_view(s, crow, col);
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features, n_tok = s.tokens;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < ld / bs; ++c) {
    for (int64_t t0 = 0; t0 < n_tok; t0 += M) {
      const int64_t nt = std::min<int64_t>(M, n_tok - t0);
      for (int64_t j0 = 0; j0 < bs; j0 += W) {
        __m256 acc[M][NV];
        for (auto& row : acc)
          for (auto& a : row) a = _mm256_setzero_ps();
        for (int64_t p = cv.col_ptr[c]; p < cv.col_ptr[c + 1]; ++p) {
          const int64_t k = cv.col_block[p], r0 = cv.block_row[k] * bs;
          const T* a[M];
          for (int m = 0; m < M; ++m) a[m] = gy + std::min(t0 + m, n_tok - 1) * out + r0;
          if (p + 1 < cv.col_ptr[c + 1])  // as in forward_packed: the next block's rows of grad_y
            for (int m = 0; m < M; ++m) prefetch_row(a[m] - r0 + cv.block_row[cv.col_block[p + 1]] * bs, bs);
          rank1_tile<M, NV>(a, 1, values + k * bs * bs + j0, bs, bs, acc);
        }
        for (int64_t m = 0; m < nt; ++m)
          for (int v = 0; v < NV; ++v) store8(gx + (t0 + m) * ld + c * bs + j0 + 8 * v, acc[m][v]);
      }
    }
  }
}

// One M-row tile of a block's grad_values over tc tokens: rows i0.. of gy_strip ([tc][bs]) against NP
// 16-column panels of x ([tc][16] each, the block's columns j0.., j0 + 16, ...), added to (or stored in)
// block_sums [bs][bs]. M·2·NP accumulators: 6 × 1 panel is the main tile; 2 × 2 panels keeps a 2-row
// remainder at 8 independent FMA chains, where 2 × 1 would wait on FMA latency. Forced inline: called
// through the shared driver's lambda, GCC left it out of line, 1–3% slower.
template <int M, int NP>
__attribute__((always_inline)) inline void grad_values_tile(const float* gy_strip, const float* const (&x_panels)[NP],
                                                            int64_t tc, int64_t bs, int64_t i0, int64_t j0,
                                                            bool accumulate, float* block_sums) {
  constexpr int NV = 2 * NP;
  __m256 acc[M][NV];
  for (int m = 0; m < M; ++m)
    for (int v = 0; v < NV; ++v)
      acc[m][v] = accumulate ? _mm256_loadu_ps(block_sums + (i0 + m) * bs + j0 + 8 * v) : _mm256_setzero_ps();
  for (int64_t p = 0; p < tc; ++p) {
    __m256 xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = _mm256_loadu_ps(x_panels[v / 2] + p * 16 + 8 * (v % 2));
    for (int m = 0; m < M; ++m) {
      const __m256 g = _mm256_set1_ps(gy_strip[p * bs + i0 + m]);
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm256_fmadd_ps(g, xv[v], acc[m][v]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(block_sums + (i0 + m) * bs + j0 + 8 * v, acc[m][v]);
}

#include "bsr_grad_values.inc"

// grad_values[k][i, j] = Σ_t grad_y[t, row(k)·bs + i] · x[t, col(k)·bs + j] over packed operands
// (bsr_grad_values.inc): 6 weight rows × one 16-column panel a tile; the rest of a block is 4 rows × 16
// columns (bs 16 and 64) or 2 rows × 32 columns (bs 32).
template <typename T>
void grad_values(const BsrShape& s, const T* gy, const T* x, const int64_t* crow, const int64_t* col, T* gv) {
  constexpr int64_t W = 16;
  const int64_t bs = s.bs;
  auto block = [bs](const float* g, const float* panels, int64_t tc, bool acc, float* block_sums) {
    for (int64_t i0 = 0; i0 + 6 <= bs; i0 += 6)
      for (int64_t j0 = 0; j0 < bs; j0 += W) {
        const float* p[1] = {panels + j0 * tc};
        grad_values_tile<6, 1>(g, p, tc, bs, i0, j0, acc, block_sums);
      }
    const int64_t i0 = bs - bs % 6;
    if (bs % 6 == 4)
      for (int64_t j0 = 0; j0 < bs; j0 += W) {
        const float* p[1] = {panels + j0 * tc};
        grad_values_tile<4, 1>(g, p, tc, bs, i0, j0, acc, block_sums);
      }
    if (bs % 6 == 2)
      for (int64_t j0 = 0; j0 < bs; j0 += 2 * W) {
        const float* p[2] = {panels + j0 * tc, panels + (j0 + W) * tc};
        grad_values_tile<2, 2>(g, p, tc, bs, i0, j0, acc, block_sums);
      }
  };
  auto to_out = [](T* dst, const float* src, int64_t n) {
    for (int64_t e = 0; e < n; e += 8) store8(dst + e, _mm256_loadu_ps(src + e));
  };
  grad_values_packed<W>(s, gy, x, crow, col, gv, block, to_out);
}

const KernelTable kTable = {forward<float>,     forward<uint16_t>,     grad_input<float>,
                            grad_input<uint16_t>, grad_values<float>, grad_values<uint16_t>};

}  // namespace

const KernelTable& kernels() { return kTable; }

}  // namespace avx2
}  // namespace tlc_bsr

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86
