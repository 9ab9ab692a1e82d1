// Argument checks shared by the CPU and CUDA bindings of the tlc_bsr ops. Each failure names the
// argument and says what would be valid, because these errors reach users of BlockSparseLinear.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace tlc_bsr {

// Shapes, dtypes and devices of the BSR operands; returns the block size. `dense` is x or grad_y.
int64_t check_bsr_operands(const char* op, const at::Tensor& dense, const char* dense_name, const at::Tensor& values,
                           const at::Tensor& crow, const at::Tensor& col);

// Bias: 1-D, out_features long, same dtype and device as values.
void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& values, int64_t out_features);

// Index contents (needs host-readable indices): crow starts at 0, ends at nnz, never decreases;
// col within [0, in_features / bs) and strictly increasing inside each block-row.
void check_bsr_indices(const char* op, const at::Tensor& crow, const at::Tensor& col, int64_t in_features, int64_t bs);

}  // namespace tlc_bsr
