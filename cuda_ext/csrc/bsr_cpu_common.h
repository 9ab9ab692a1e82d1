// Pieces every CPU kernel path shares: the table of kernels one SIMD path provides, scalar bf16
// conversions and the column (CSC) view of a BSR pattern. ISA-neutral: each per-ISA file includes
// this before it switches its target, so these functions are compiled for the baseline ISA in
// every translation unit (identical inline definitions, whichever copy the linker keeps).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "bsr_kernels_cpu.h"

namespace tlc_bsr {

// The six kernels of one SIMD path, with the signatures of bsr_kernels_cpu.h.
struct KernelTable {
  void (*forward_f32)(const BsrShape&, const float*, const float*, const int64_t*, const int64_t*, const float*,
                      float*);
  void (*forward_bf16)(const BsrShape&, const uint16_t*, const uint16_t*, const int64_t*, const int64_t*,
                       const uint16_t*, uint16_t*);
  void (*grad_input_f32)(const BsrShape&, const float*, const float*, const int64_t*, const int64_t*, float*);
  void (*grad_input_bf16)(const BsrShape&, const uint16_t*, const uint16_t*, const int64_t*, const int64_t*,
                          uint16_t*);
  void (*grad_values_f32)(const BsrShape&, const float*, const float*, const int64_t*, const int64_t*, float*);
  void (*grad_values_bf16)(const BsrShape&, const uint16_t*, const uint16_t*, const int64_t*, const int64_t*,
                           uint16_t*);
};

// One table per path; the x86 ones exist only in x86 builds (see bsr_kernels_cpu.cpp).
namespace portable { const KernelTable& kernels(); }
#if defined(__x86_64__) || defined(__i386__)
namespace avx2 { const KernelTable& kernels(); }
namespace avx512 { const KernelTable& kernels(); }
namespace avx512_bf16 { const KernelTable& kernels(); }
#endif

inline float bf16_to_float(uint16_t v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16(float v) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// Block-row of every block, and the blocks of each block-column in increasing row order (a CSC
// view), so grad_input can give each thread whole block-columns of grad_x and never race.
struct ColumnView {
  std::vector<int64_t> block_row, col_ptr, col_block;
};

inline ColumnView column_view(const BsrShape& s, const int64_t* crow, const int64_t* col) {
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

}  // namespace tlc_bsr
