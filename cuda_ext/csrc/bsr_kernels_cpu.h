// Block-sparse (BSR) linear kernels for the CPU, in plain C++ with no torch headers.
//
// Layout shared by every kernel (row-major, contiguous):
//   x       [tokens, in_features]
//   y       [tokens, out_features]            y = x · Wᵀ + bias
//   values  [nnz_blocks, bs, bs]              values[k][i][j] = W[row(k)*bs + i, col[k]*bs + j]
//   crow    [out_features/bs + 1]             blocks of block-row r are crow[r] .. crow[r+1]-1
//   col     [nnz_blocks]                      block-column of each block, sorted within a row
// bf16 tensors are passed as uint16_t bit patterns; every kernel accumulates in fp32.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tlc_bsr {

struct BsrShape {
  int64_t tokens;       // rows of x / y
  int64_t in_features;  // columns of x
  int64_t block_rows;   // out_features / bs
  int64_t nnz_blocks;
  int bs;               // 16, 32 or 64
  int num_threads;     // OpenMP threads for this call
};

// y = x · Wᵀ + bias (bias may be null).
void bsr_forward_f32(const BsrShape& s, const float* x, const float* values, const int64_t* crow,
                     const int64_t* col, const float* bias, float* y);
void bsr_forward_bf16(const BsrShape& s, const uint16_t* x, const uint16_t* values, const int64_t* crow,
                      const int64_t* col, const uint16_t* bias, uint16_t* y);

// grad_x = grad_y · W   ([tokens, out] × [out, in]); every element of grad_x is written.
void bsr_grad_input_f32(const BsrShape& s, const float* grad_y, const float* values, const int64_t* crow,
                        const int64_t* col, float* grad_x);
void bsr_grad_input_bf16(const BsrShape& s, const uint16_t* grad_y, const uint16_t* values, const int64_t* crow,
                         const int64_t* col, uint16_t* grad_x);

// grad_values[k] = grad_y[:, rows of k]ᵀ · x[:, cols of k]   (sampled dense-dense product).
void bsr_grad_values_f32(const BsrShape& s, const float* grad_y, const float* x, const int64_t* crow,
                         const int64_t* col, float* grad_values);
void bsr_grad_values_bf16(const BsrShape& s, const uint16_t* grad_y, const uint16_t* x, const int64_t* crow,
                          const int64_t* col, uint16_t* grad_values);

// The kernel paths, one per instruction set. The active one is the best this CPU can run, unless the
// environment variable TLC_BSR_ISA (auto, avx512-bf16, avx512, avx2, portable) names another; naming
// an unknown path or one this CPU lacks throws std::runtime_error.
enum class Isa { kPortable, kAvx2, kAvx512, kAvx512Bf16 };
Isa active_isa();
const char* cpu_kernel_isa();               // the active path's name
std::vector<std::string> cpu_kernel_isas();  // every path this CPU can run, best first

}  // namespace tlc_bsr
