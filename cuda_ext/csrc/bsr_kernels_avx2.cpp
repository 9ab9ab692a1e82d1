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
      for (int64_t k = kb; k < ke; ++k) {
        const T* w = values + k * bb;
        float* dst = panel.data() + (k - kb) * bb;
        for (int64_t i = 0; i < bs; ++i)
          for (int64_t j = 0; j < bs; ++j) dst[j * bs + i] = to_f32(w[i * bs + j]);
      }
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
            rank1_tile<M, NV>(a, 1, panel.data() + (k - kb) * bb + i0, bs, bs, acc);
          }
          for (int64_t m = 0; m < nt; ++m)
            for (int v = 0; v < NV; ++v) store8(y + (t0 + m) * out + r * bs + i0 + 8 * v, acc[m][v]);
        }
      }
    }
  }
}

// Below kPackMinTokens packing the block-row costs more than the horizontal sums it saves.
constexpr int64_t kPackMinTokens = 16;

template <typename T>
void forward(const BsrShape& s, const T* x, const T* values, const int64_t* crow, const int64_t* col, const T* bias,
             T* y) {
  if (s.tokens >= kPackMinTokens) return forward_packed(s, x, values, crow, col, bias, y);
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
          rank1_tile<M, NV>(a, 1, values + k * bs * bs + j0, bs, bs, acc);
        }
        for (int64_t m = 0; m < nt; ++m)
          for (int v = 0; v < NV; ++v) store8(gx + (t0 + m) * ld + c * bs + j0 + 8 * v, acc[m][v]);
      }
    }
  }
}

// grad_values[k][i, j] = Σ_t grad_y[t, row(k)·bs + i] · x[t, col(k)·bs + j]: 4 weight rows × 16
// columns a tile, reduced over every token (the token strip of x stays in L1 across the row tiles).
template <typename T>
void grad_values(const BsrShape& s, const T* gy, const T* x, const int64_t* crow, const int64_t* col, T* gv) {
  constexpr int M = 4, NV = 2, W = 8 * NV;
  const ColumnView cv = column_view(s, crow, col);
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features, n_tok = s.tokens;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 4)
  for (int64_t k = 0; k < s.nnz_blocks; ++k) {
    const int64_t r0 = cv.block_row[k] * bs, c0 = col[k] * bs;
    for (int64_t j0 = 0; j0 < bs; j0 += W)
      for (int64_t i0 = 0; i0 < bs; i0 += M) {
        __m256 acc[M][NV];
        for (auto& row : acc)
          for (auto& a : row) a = _mm256_setzero_ps();
        const T* a[M];
        for (int m = 0; m < M; ++m) a[m] = gy + r0 + i0 + m;
        rank1_tile<M, NV>(a, out, x + c0 + j0, ld, n_tok, acc);
        for (int m = 0; m < M; ++m)
          for (int v = 0; v < NV; ++v) store8(gv + (k * bs + i0 + m) * bs + j0 + 8 * v, acc[m][v]);
      }
  }
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
