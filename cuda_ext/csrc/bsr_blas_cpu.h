// Gather + BLAS kernels of the portable path (see bsr_blas_cpu.cpp). fp32, contiguous operands,
// arguments already checked by bsr_cpu.cpp.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace tlc_bsr {

// Fewer tokens than this make each GEMM too small to beat the plain loops (bench/block_sparse.py --isa
// portable: at 8 tokens the GEMMs took 0.65-0.75 of the loops' time on 1024² and 1024×256 at 50% density).
constexpr int64_t kBlasMinTokens = 4;

// True when this call should take the BLAS kernels: the portable path is active, the dtype is fp32
// and `dense` (x or grad_y, [tokens, features]) has at least kBlasMinTokens rows.
bool use_blas_path(const at::Tensor& dense);

at::Tensor blas_forward(const at::Tensor& x, const at::Tensor& values, const at::Tensor& crow, const at::Tensor& col,
                        const at::Tensor& bias);
at::Tensor blas_grad_input(const at::Tensor& grad_y, const at::Tensor& values, const at::Tensor& crow,
                           const at::Tensor& col, int64_t in_features);
at::Tensor blas_grad_values(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& crow,
                            const at::Tensor& col, int64_t block_size);

}  // namespace tlc_bsr
