// The portable CPU kernels: plain loops that the compiler vectorizes for whatever baseline the
// build targets (SSE2 on x86-64, NEON on AArch64), with no instruction-set assumptions. Large
// token counts on this path go to the gather + BLAS kernels of bsr_blas_cpu.cpp instead, which
// ride on torch's tuned GEMM; these loops serve small token counts and bf16 where BLAS lacks it.
#include "bsr_cpu_common.h"

namespace tlc_bsr {
namespace portable {
namespace {

inline float load(float v) { return v; }
inline float load(uint16_t v) { return bf16_to_float(v); }
inline void store(float* p, float v) { *p = v; }
inline void store(uint16_t* p, float v) { *p = float_to_bf16(v); }

// Each block is read whole and in order (bs·bs contiguous elements, which hardware prefetchers
// follow) and its row dot products fold into the block-row's fp32 outputs: with few tokens the
// call is bound by reading W, and row-by-row across blocks would jump between them.
template <typename T>
void forward(const BsrShape& s, const T* x, const T* values, const int64_t* crow, const int64_t* col, const T* bias,
             T* y) {
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 1)
  for (int64_t r = 0; r < s.block_rows; ++r)
    for (int64_t t = 0; t < s.tokens; ++t) {
      float sums[64];  // the block-row's outputs for token t
      for (int64_t i = 0; i < bs; ++i) sums[i] = bias ? load(bias[r * bs + i]) : 0.f;
      for (int64_t k = crow[r]; k < crow[r + 1]; ++k) {
        const T* __restrict__ xr = x + t * ld + col[k] * bs;
        for (int64_t i = 0; i < bs; ++i) {
          const T* __restrict__ w = values + (k * bs + i) * bs;
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < bs; ++j) acc += load(xr[j]) * load(w[j]);
          sums[i] += acc;
        }
      }
      for (int64_t i = 0; i < bs; ++i) store(y + t * out + r * bs + i, sums[i]);
    }
}

template <typename T>
void grad_input(const BsrShape& s, const T* gy, const T* values, const int64_t* crow, const int64_t* col, T* gx) {
  const ColumnView cv = column_view(s, crow, col);
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < ld / bs; ++c)
    for (int64_t t = 0; t < s.tokens; ++t) {
      float acc[64] = {0.f};
      for (int64_t p = cv.col_ptr[c]; p < cv.col_ptr[c + 1]; ++p) {
        const int64_t k = cv.col_block[p];
        for (int64_t i = 0; i < bs; ++i) {
          const float g = load(gy[t * out + cv.block_row[k] * bs + i]);
          const T* __restrict__ w = values + (k * bs + i) * bs;
#pragma omp simd
          for (int64_t j = 0; j < bs; ++j) acc[j] += g * load(w[j]);
        }
      }
      for (int64_t j = 0; j < bs; ++j) store(gx + t * ld + c * bs + j, acc[j]);
    }
}

template <typename T>
void grad_values(const BsrShape& s, const T* gy, const T* x, const int64_t* crow, const int64_t* col, T* gv) {
  const ColumnView cv = column_view(s, crow, col);
  const int64_t bs = s.bs, out = s.block_rows * bs, ld = s.in_features;
#pragma omp parallel for num_threads(s.num_threads) schedule(dynamic, 4)
  for (int64_t k = 0; k < s.nnz_blocks; ++k)
    for (int64_t i = 0; i < bs; ++i) {
      float acc[64] = {0.f};
      for (int64_t t = 0; t < s.tokens; ++t) {
        const float g = load(gy[t * out + cv.block_row[k] * bs + i]);
        const T* __restrict__ xr = x + t * ld + col[k] * bs;
#pragma omp simd
        for (int64_t j = 0; j < bs; ++j) acc[j] += g * load(xr[j]);
      }
      for (int64_t j = 0; j < bs; ++j) store(gv + (k * bs + i) * bs + j, acc[j]);
    }
}

const KernelTable kTable = {forward<float>,     forward<uint16_t>,     grad_input<float>,
                            grad_input<uint16_t>, grad_values<float>, grad_values<uint16_t>};

}  // namespace

const KernelTable& kernels() { return kTable; }

}  // namespace portable
}  // namespace tlc_bsr
