// Raw-pointer launchers for the CUDA block-sparse linear kernels. No torch headers, so that
// `nvcc -c bsr_kernels.cu` compile-checks the kernels on machines without a CUDA torch.
// Layout as in ../bsr_kernels_cpu.h: x [tokens, in], y [tokens, out], values [nnz, bs, bs], all
// row-major and contiguous; indices int64 on the device. Every launch goes on `stream`.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace tlc_bsr_cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// y = x · Wᵀ + bias (bias may be null). fp16/bf16 use tensor cores (WMMA) on sm_80+, fp32 FMA.
cudaError_t bsr_forward(DType dtype, const void* x, const void* values, const int64_t* crow, const int64_t* col,
                        const void* bias, void* y, int64_t tokens, int64_t in_features, int64_t block_rows, int bs,
                        cudaStream_t stream);

// grad_x = grad_y · W, driven by a CSC view: blocks of block-column c are col_block[col_ptr[c] ..
// col_ptr[c+1]-1], and block_row[k] is the block-row of block k.
cudaError_t bsr_grad_input(DType dtype, const void* grad_y, const void* values, const int64_t* col_ptr,
                           const int64_t* col_block, const int64_t* block_row, void* grad_x, int64_t tokens,
                           int64_t in_features, int64_t out_features, int bs, cudaStream_t stream);

// grad_values[k] = grad_y[:, rows of k]ᵀ · x[:, cols of k].
cudaError_t bsr_grad_values(DType dtype, const void* grad_y, const void* x, const int64_t* block_row,
                            const int64_t* col, void* grad_values, int64_t tokens, int64_t in_features,
                            int64_t out_features, int64_t nnz_blocks, int bs, cudaStream_t stream);

}  // namespace tlc_bsr_cuda
