// Schemas of the tlc_bsr operators and the argument checks every backend shares.
// y = x · Wᵀ + bias with W (out × in) in BSR form; see cuda_ext/ops.py for the Python side.
#include <torch/library.h>

#include "bsr_checks.h"
#include "bsr_kernels_cpu.h"

namespace tlc_bsr {

int64_t check_bsr_operands(const char* op, const at::Tensor& dense, const char* dense_name, const at::Tensor& values,
                           const at::Tensor& crow, const at::Tensor& col) {
  TORCH_CHECK(values.dim() == 3 && values.size(1) == values.size(2), op,
              ": values must have shape [nnz_blocks, block_size, block_size], got ", values.sizes());
  const int64_t bs = values.size(1);
  TORCH_CHECK(bs == 16 || bs == 32 || bs == 64, op, ": block_size (values.shape[1]) must be 16, 32 or 64, got ", bs);
  TORCH_CHECK(dense.dim() == 2, op, ": ", dense_name, " must be 2-D [tokens, features], got shape ", dense.sizes());
  TORCH_CHECK(dense.scalar_type() == values.scalar_type(), op, ": ", dense_name, " and values must have the same dtype, got ",
              dense.scalar_type(), " and ", values.scalar_type());
  TORCH_CHECK(crow.dim() == 1 && crow.numel() >= 1 && crow.scalar_type() == at::kLong, op,
              ": crow_indices must be a 1-D int64 tensor of length out_features / block_size + 1, got ",
              crow.scalar_type(), " of shape ", crow.sizes());
  TORCH_CHECK(col.dim() == 1 && col.scalar_type() == at::kLong && col.numel() == values.size(0), op,
              ": col_indices must be a 1-D int64 tensor with one entry per block (", values.size(0), "), got ",
              col.scalar_type(), " of shape ", col.sizes());
  TORCH_CHECK(dense.device() == values.device() && crow.device() == values.device() && col.device() == values.device(),
              op, ": all tensors must be on one device, got ", dense_name, " on ", dense.device(), ", values on ",
              values.device(), ", crow_indices on ", crow.device(), ", col_indices on ", col.device());
  return bs;
}

void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& values, int64_t out_features) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "bsr_linear: bias must be 1-D of length out_features (",
              out_features, "), got shape ", bias->sizes());
  TORCH_CHECK(bias->scalar_type() == values.scalar_type() && bias->device() == values.device(),
              "bsr_linear: bias must match values in dtype and device (", values.scalar_type(), ", ", values.device(),
              "), got ", bias->scalar_type(), " on ", bias->device());
}

void check_bsr_indices(const char* op, const at::Tensor& crow, const at::Tensor& col, int64_t in_features, int64_t bs) {
  TORCH_CHECK(in_features % bs == 0, op, ": in_features (", in_features, ") must be a multiple of block_size (", bs, ")");
  const at::Tensor crow_c = crow.contiguous(), col_c = col.contiguous();
  const int64_t* cr = crow_c.data_ptr<int64_t>();
  const int64_t* cl = col_c.data_ptr<int64_t>();
  const int64_t rows = crow.numel() - 1, nnz = col.numel(), n_cols = in_features / bs;
  TORCH_CHECK(cr[0] == 0 && cr[rows] == nnz, op, ": crow_indices must start at 0 and end at nnz_blocks (", nnz,
              "), got ", cr[0], " and ", cr[rows]);
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(cr[r] <= cr[r + 1], op, ": crow_indices must be non-decreasing, but crow_indices[", r, "] = ", cr[r],
                " > crow_indices[", r + 1, "] = ", cr[r + 1]);
    for (int64_t k = cr[r]; k < cr[r + 1]; ++k) {
      TORCH_CHECK(cl[k] >= 0 && cl[k] < n_cols, op, ": col_indices[", k, "] = ", cl[k],
                  " is out of range; valid block columns are 0 .. ", n_cols - 1, " (in_features / block_size)");
      TORCH_CHECK(k == cr[r] || cl[k - 1] < cl[k], op, ": col_indices must be strictly increasing within a block-row, "
                  "but block-row ", r, " has ", cl[k - 1], " before ", cl[k], " (sort them, and merge duplicates)");
    }
  }
}

}  // namespace tlc_bsr

TORCH_LIBRARY(tlc_bsr, m) {
  // y[tokens, out] = x[tokens, in] · Wᵀ + bias
  m.def("bsr_linear(Tensor x, Tensor values, Tensor crow_indices, Tensor col_indices, Tensor? bias) -> Tensor");
  // grad_x[tokens, in] = grad_y[tokens, out] · W
  m.def("bsr_linear_grad_input(Tensor grad_y, Tensor values, Tensor crow_indices, Tensor col_indices, "
        "int in_features) -> Tensor");
  // grad_values[k] = grad_y[:, rows of block k]ᵀ · x[:, cols of block k]
  m.def("bsr_linear_grad_values(Tensor grad_y, Tensor x, Tensor crow_indices, Tensor col_indices, "
        "int block_size) -> Tensor");
  // The CPU kernel path in use ("avx512-bf16", "avx512", "avx2" or "portable"; TLC_BSR_ISA forces one),
  // and every path this CPU can run, best first.
  m.def("cpu_kernel_isa() -> str", [] { return std::string(tlc_bsr::cpu_kernel_isa()); });
  m.def("cpu_kernel_isas() -> str[]", [] { return tlc_bsr::cpu_kernel_isas(); });
}
