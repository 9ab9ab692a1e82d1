// CPU kernels for the block-sparse linear: OpenMP over independent output tiles, AVX-512
// register-blocked micro-kernels where the compiler targets AVX-512, portable loops otherwise.
// See bsr_kernels_cpu.h for the layout.
#include "bsr_kernels_cpu.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include "bsr_simd_avx512.h"
#endif

namespace tlc_bsr {
namespace {

inline float to_float(float v) { return v; }
inline float to_float(uint16_t v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store_float(float* p, float v) { *p = v; }
inline void store_float(uint16_t* p, float v) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    *p = uint16_t((u >> 16) | 0x40);
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  *p = uint16_t(u >> 16);
}

// Block-row of every block, and the blocks of each block-column in increasing row order (a CSC
// view), so grad_input can give each thread whole block-columns of grad_x and never race.
struct ColumnView {
  std::vector<int64_t> block_row, col_ptr, col_block;
};
ColumnView column_view(const BsrShape& s, const int64_t* crow, const int64_t* col) {
  ColumnView v;
  const int64_t n_cols = s.in_features / s.bs;
  v.block_row.resize(s.nnz_blocks);
  v.col_ptr.assign(n_cols + 1, 0);
  v.col_block.resize(s.nnz_blocks);
  for (int64_t r = 0; r < s.block_rows; ++r)
    for (int64_t k = crow[r]; k < crow[r + 1]; ++k) {
      v.block_row[k] = r;
      ++v.col_ptr[col[k] + 1];
    }
  for (int64_t c = 0; c < n_cols; ++c) v.col_ptr[c + 1] += v.col_ptr[c];
  std::vector<int64_t> fill(v.col_ptr.begin(), v.col_ptr.end() - 1);
  for (int64_t k = 0; k < s.nnz_blocks; ++k) v.col_block[fill[col[k]]++] = k;
  return v;
}

#if defined(__AVX512F__)
using namespace simd;

// Each block-row is a small GEMM, y[:, rows] = X_r · B_rᵀ with X_r the gathered columns of x; it is
// blocked like one: a token chunk of x (~1 MiB) stays in L2 for every block-row; a panel of 16
// weight rows × 256 reduction elements stays in L1 while 4-token tiles of x stream past it; fp32
// partial sums of each k-panel go to a per-thread buffer of the chunk's y.
template <typename T>
void forward_impl(const BsrShape& s, const T* x, const T* values, const int64_t* crow, const int64_t* col,
                  const T* bias, T* y) {
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features, n_tok = s.tokens;
  const int64_t chunk = std::max<int64_t>(16, ((int64_t(1) << 20) / int64_t(sizeof(T) * ld)) & ~int64_t(3));
  const int64_t k_panel = 256 / bs;  // blocks per k-panel
  constexpr int64_t kRowGroup = 16;
#pragma omp parallel num_threads(s.num_threads)
  {
    std::vector<float> partial(std::min(chunk, n_tok) * bs);  // [chunk tokens, bs] fp32
    for (int64_t tc = 0; tc < n_tok; tc += chunk) {
      const int64_t tc_end = std::min(n_tok, tc + chunk);
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t r = 0; r < s.block_rows; ++r) {
        std::fill(partial.begin(), partial.end(), 0.f);
        for (int64_t kp = crow[r]; kp < crow[r + 1]; kp += k_panel) {
          const int64_t kp_end = std::min(crow[r + 1], kp + k_panel);
          for (int64_t ig = 0; ig < bs; ig += kRowGroup) {
            for (int64_t t0 = tc; t0 < tc_end; t0 += 4) {
              const int64_t nt = std::min<int64_t>(4, tc_end - t0);
              const T* xr[4];  // a tail tile repeats its last token; only nt rows are kept
              for (int m = 0; m < 4; ++m) xr[m] = x + std::min(t0 + m, tc_end - 1) * ld;
              for (int64_t i0 = ig; i0 < ig + kRowGroup; i0 += 4) {
                __m512 acc[4][4];
                for (auto& row : acc)
                  for (auto& a : row) a = _mm512_setzero_ps();
                for (int64_t k = kp; k < kp_end; ++k) {
                  const int64_t c0 = col[k] * bs;
                  const T* xk[4] = {xr[0] + c0, xr[1] + c0, xr[2] + c0, xr[3] + c0};
                  dot_tile_4x4(xk, values + (k * bs + i0) * bs, bs, bs, acc);
                }
                alignas(64) float sums[16];
                _mm512_store_ps(sums, reduce_4x4(acc));
                for (int64_t m = 0; m < nt; ++m)
                  for (int n = 0; n < 4; ++n) partial[(t0 - tc + m) * bs + i0 + n] += sums[4 * m + n];
              }
            }
          }
        }
        for (int64_t t = tc; t < tc_end; ++t)
          for (int64_t i = 0; i < bs; i += 16) {
            __m512 v = _mm512_loadu_ps(&partial[(t - tc) * bs + i]);
            if (bias) v = _mm512_add_ps(v, load16(bias + r * bs + i));
            store16(y + t * out + r * bs + i, v);
          }
      }
    }
  }
}

// Wᵀ of one block in the layout the outer-product kernel reads: fp32 as [bs (j)][bs (i)]; bf16 as
// VNNI pairs [bs/2 (j pair)][bs (i)] of (W[i][2p], W[i][2p+1]), the operand layout of VDPBF16PS.
inline void pack_block_transposed(const float* w, int64_t bs, float* dst) {
  for (int64_t i = 0; i < bs; i += 16)
    for (int64_t j = 0; j < bs; j += 16) transpose_16x16(w + i * bs + j, bs, dst + j * bs + i, bs);
}
inline void pack_block_transposed(const uint16_t* w, int64_t bs, uint32_t* dst) {
  const auto* pairs = reinterpret_cast<const uint32_t*>(w);  // [bs (i)][bs/2 (p)]: W[i][2p] | W[i][2p+1] << 16
  if (bs % 32 == 0) {  // the 32-bit pairs move bit-exactly through the fp32 shuffles
    for (int64_t i = 0; i < bs; i += 16)
      for (int64_t p = 0; p < bs / 2; p += 16)
        transpose_16x16(reinterpret_cast<const float*>(pairs + i * bs / 2 + p), bs / 2,
                        reinterpret_cast<float*>(dst + p * bs + i), bs);
  } else {
    for (int64_t p = 0; p < bs / 2; ++p)
      for (int64_t i = 0; i < bs; ++i) std::memcpy(dst + p * bs + i, pairs + i * bs / 2 + p, 4);
  }
}

template <int M, int NV>
inline void panel_tile(const float* const (&a)[M], const float* panel, int64_t bs, __m512 (&acc)[M][NV]) {
  rank1_tile<M, NV>(a, 1, panel, bs, bs, acc);
}
#if defined(__AVX512BF16__)
template <int M, int NV>
inline void panel_tile(const uint16_t* const (&a)[M], const uint32_t* panel, int64_t bs, __m512 (&acc)[M][NV]) {
  rank2_tile_bf16<M, NV>(a, panel, bs, bs / 2, acc);
}
#endif

// Forward in outer-product form: y[t, r·bs + i] += x[t, c·bs + j] · Wᵀ_k[j, i]. Each thread packs
// the blocks of its current block-row transposed into an L2-resident panel, so the 16·NV outputs
// of a register tile are contiguous: no horizontal sums, M·NV FMAs per NV loads + M broadcasts.
template <int M, int NV, typename T>
void forward_packed(const BsrShape& s, const T* x, const T* values, const int64_t* crow, const int64_t* col,
                    const T* bias, T* y) {
  using Packed = std::conditional_t<std::is_same_v<T, float>, float, uint32_t>;
  const int64_t bs = s.bs, bb = bs * bs, out = s.block_rows * bs, ld = s.in_features, n_tok = s.tokens;
  const int64_t packed_block = bb * int64_t(sizeof(T)) / int64_t(sizeof(Packed));
#pragma omp parallel num_threads(s.num_threads)
  {
    std::vector<Packed> panel;  // the packed blocks of one block-row
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < s.block_rows; ++r) {
      const int64_t kb = crow[r], ke = crow[r + 1];
      panel.resize((ke - kb) * packed_block);
      for (int64_t k = kb; k < ke; ++k) pack_block_transposed(values + k * bb, bs, panel.data() + (k - kb) * packed_block);
      for (int64_t t0 = 0; t0 < n_tok; t0 += M) {
        const int64_t nt = std::min<int64_t>(M, n_tok - t0);
        __m512 acc[M][NV];
        for (int v = 0; v < NV; ++v) {
          const __m512 b = bias ? load16(bias + r * bs + 16 * v) : _mm512_setzero_ps();
          for (int m = 0; m < M; ++m) acc[m][v] = b;
        }
        const T* xrow[M];  // a tail tile repeats its last token; only nt rows are stored
        for (int m = 0; m < M; ++m) xrow[m] = x + std::min(t0 + m, n_tok - 1) * ld;
        for (int64_t k = kb; k < ke; ++k) {
          const T* a[M];
          for (int m = 0; m < M; ++m) a[m] = xrow[m] + col[k] * bs;
          if (k + 1 < ke)  // x rows jump between blocks, beyond what hardware prefetchers follow
            for (int m = 0; m < M; ++m)
              for (int64_t j = 0; j < bs; j += 64 / int64_t(sizeof(T)))
                _mm_prefetch(reinterpret_cast<const char*>(xrow[m] + col[k + 1] * bs + j), _MM_HINT_T0);
          panel_tile<M, NV>(a, panel.data() + (k - kb) * packed_block, bs, acc);
        }
        for (int64_t m = 0; m < nt; ++m)
          for (int v = 0; v < NV; ++v) store16(y + (t0 + m) * out + r * bs + 16 * v, acc[m][v]);
      }
    }
  }
}

template <typename T>
void forward_packed_dispatch(const BsrShape& s, const T* x, const T* values, const int64_t* crow, const int64_t* col,
                             const T* bias, T* y) {
  if (s.bs == 16) forward_packed<24, 1>(s, x, values, crow, col, bias, y);
  else if (s.bs == 32) forward_packed<12, 2>(s, x, values, crow, col, bias, y);
  else forward_packed<6, 4>(s, x, values, crow, col, bias, y);
}

// M tokens × (16·NV) input features of grad_x per register tile; NV = bs / 16.
template <int M, int NV, typename T>
void grad_input_impl(const BsrShape& s, const T* gy, const T* values, const int64_t* crow, const int64_t* col, T* gx) {
  const ColumnView cv = column_view(s, crow, col);
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features, n_tok = s.tokens;
  const int64_t n_cols = ld / bs;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < n_cols; ++c) {
    for (int64_t t0 = 0; t0 < n_tok; t0 += M) {
      const int64_t nt = std::min<int64_t>(M, n_tok - t0);
      __m512 acc[M][NV];
      for (auto& row : acc)
        for (auto& a : row) a = _mm512_setzero_ps();
      for (int64_t p = cv.col_ptr[c]; p < cv.col_ptr[c + 1]; ++p) {
        const int64_t k = cv.col_block[p], r0 = cv.block_row[k] * bs;
        const T* a[M];
        for (int m = 0; m < M; ++m) a[m] = gy + std::min(t0 + m, n_tok - 1) * out + r0;
        rank1_tile<M, NV>(a, 1, values + k * bs * bs, bs, bs, acc);  // Σ_i gy[t, r0+i] · W_k[i, :]
      }
      for (int64_t m = 0; m < nt; ++m)
        for (int v = 0; v < NV; ++v) store16(gx + (t0 + m) * ld + c * bs + 16 * v, acc[m][v]);
    }
  }
}

// M weight rows × (16·NV) weight columns of one block per register tile, reduced over all tokens.
template <int M, int NV, typename T>
void grad_values_impl(const BsrShape& s, const T* gy, const T* x, const int64_t* crow, const int64_t* col, T* gv) {
  const ColumnView cv = column_view(s, crow, col);
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features, n_tok = s.tokens;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 4)
  for (int64_t k = 0; k < s.nnz_blocks; ++k) {
    const int64_t r0 = cv.block_row[k] * bs, c0 = col[k] * bs;
    for (int64_t i0 = 0; i0 < bs; i0 += M) {
      for (int64_t j0 = 0; j0 < bs; j0 += 16 * NV) {
        __m512 acc[M][NV];
        for (auto& row : acc)
          for (auto& a : row) a = _mm512_setzero_ps();
        const T* a[M];
        for (int m = 0; m < M; ++m) a[m] = gy + r0 + i0 + m;
        rank1_tile<M, NV>(a, out, x + c0 + j0, ld, n_tok, acc);  // Σ_t gy[t, r0+i] · x[t, c0+j]
        for (int m = 0; m < M; ++m)
          for (int v = 0; v < NV; ++v) store16(gv + (k * bs + i0 + m) * bs + j0 + 16 * v, acc[m][v]);
      }
    }
  }
}

template <typename T>
void grad_input_dispatch(const BsrShape& s, const T* gy, const T* values, const int64_t* crow, const int64_t* col,
                         T* gx) {
  if (s.bs == 16) grad_input_impl<24, 1>(s, gy, values, crow, col, gx);
  else if (s.bs == 32) grad_input_impl<12, 2>(s, gy, values, crow, col, gx);
  else grad_input_impl<6, 4>(s, gy, values, crow, col, gx);
}

template <typename T>
void grad_values_dispatch(const BsrShape& s, const T* gy, const T* x, const int64_t* crow, const int64_t* col, T* gv) {
  if (s.bs == 16) grad_values_impl<16, 1>(s, gy, x, crow, col, gv);
  else if (s.bs == 32) grad_values_impl<8, 2>(s, gy, x, crow, col, gv);
  else grad_values_impl<4, 4>(s, gy, x, crow, col, gv);
}

#else  // portable loops: the compiler vectorizes the innermost reductions

template <typename T>
void forward_impl(const BsrShape& s, const T* x, const T* values, const int64_t* crow, const int64_t* col,
                  const T* bias, T* y) {
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 1)
  for (int64_t r = 0; r < s.block_rows; ++r)
    for (int64_t t = 0; t < s.tokens; ++t)
      for (int64_t i = 0; i < bs; ++i) {
        float acc = bias ? to_float(bias[r * bs + i]) : 0.f;
        for (int64_t k = crow[r]; k < crow[r + 1]; ++k) {
          const T* __restrict__ xr = x + t * ld + col[k] * bs;
          const T* __restrict__ w = values + (k * bs + i) * bs;
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < bs; ++j) acc += to_float(xr[j]) * to_float(w[j]);
        }
        store_float(y + t * out + r * bs + i, acc);
      }
}

template <typename T>
void grad_input_dispatch(const BsrShape& s, const T* gy, const T* values, const int64_t* crow, const int64_t* col,
                         T* gx) {
  const ColumnView cv = column_view(s, crow, col);
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < ld / bs; ++c)
    for (int64_t t = 0; t < s.tokens; ++t) {
      float acc[64] = {0.f};
      for (int64_t p = cv.col_ptr[c]; p < cv.col_ptr[c + 1]; ++p) {
        const int64_t k = cv.col_block[p];
        for (int64_t i = 0; i < bs; ++i) {
          const float g = to_float(gy[t * out + cv.block_row[k] * bs + i]);
          const T* __restrict__ w = values + (k * bs + i) * bs;
#pragma omp simd
          for (int64_t j = 0; j < bs; ++j) acc[j] += g * to_float(w[j]);
        }
      }
      for (int64_t j = 0; j < bs; ++j) store_float(gx + t * ld + c * bs + j, acc[j]);
    }
}

template <typename T>
void grad_values_dispatch(const BsrShape& s, const T* gy, const T* x, const int64_t* crow, const int64_t* col, T* gv) {
  const ColumnView cv = column_view(s, crow, col);
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 4)
  for (int64_t k = 0; k < s.nnz_blocks; ++k)
    for (int64_t i = 0; i < bs; ++i) {
      float acc[64] = {0.f};
      for (int64_t t = 0; t < s.tokens; ++t) {
        const float g = to_float(gy[t * out + cv.block_row[k] * bs + i]);
        const T* __restrict__ xr = x + t * ld + col[k] * bs;
#pragma omp simd
        for (int64_t j = 0; j < bs; ++j) acc[j] += g * to_float(xr[j]);
      }
      for (int64_t j = 0; j < bs; ++j) store_float(gv + (k * bs + i) * bs + j, acc[j]);
    }
}
#endif

}  // namespace

// Below kPackMinTokens the per-call packing costs more than the horizontal sums it saves.
constexpr int64_t kPackMinTokens = 64;

void bsr_forward_f32(const BsrShape& s, const float* x, const float* values, const int64_t* crow, const int64_t* col,
                     const float* bias, float* y) {
#if defined(__AVX512F__)
  if (s.tokens >= kPackMinTokens) return forward_packed_dispatch(s, x, values, crow, col, bias, y);
#endif
  forward_impl(s, x, values, crow, col, bias, y);
}
void bsr_forward_bf16(const BsrShape& s, const uint16_t* x, const uint16_t* values, const int64_t* crow,
                      const int64_t* col, const uint16_t* bias, uint16_t* y) {
#if defined(__AVX512BF16__)
  if (s.tokens >= kPackMinTokens) return forward_packed_dispatch(s, x, values, crow, col, bias, y);
#endif
  forward_impl(s, x, values, crow, col, bias, y);
}
void bsr_grad_input_f32(const BsrShape& s, const float* grad_y, const float* values, const int64_t* crow,
                        const int64_t* col, float* grad_x) {
  grad_input_dispatch(s, grad_y, values, crow, col, grad_x);
}
void bsr_grad_input_bf16(const BsrShape& s, const uint16_t* grad_y, const uint16_t* values, const int64_t* crow,
                         const int64_t* col, uint16_t* grad_x) {
  grad_input_dispatch(s, grad_y, values, crow, col, grad_x);
}
void bsr_grad_values_f32(const BsrShape& s, const float* grad_y, const float* x, const int64_t* crow,
                         const int64_t* col, float* grad_values) {
  grad_values_dispatch(s, grad_y, x, crow, col, grad_values);
}
void bsr_grad_values_bf16(const BsrShape& s, const uint16_t* grad_y, const uint16_t* x, const int64_t* crow,
                          const int64_t* col, uint16_t* grad_values) {
  grad_values_dispatch(s, grad_y, x, crow, col, grad_values);
}

const char* cpu_kernel_isa() {
#if defined(__AVX512BF16__)
  return "avx512-bf16";
#elif defined(__AVX512F__)
  return "avx512";
#else
  return "portable";
#endif
}

}  // namespace tlc_bsr
