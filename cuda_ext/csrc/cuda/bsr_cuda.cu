// CUDA implementations of the tlc_bsr ops: check arguments, allocate outputs, launch the raw
// kernels of bsr_kernels.cu on the current stream. Built only when torch has CUDA. Index contents
// (sorted, in range) are not checked here, since reading them would synchronize with the device:
// BlockSparseLinear checks them once, when it is built.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../bsr_checks.h"
#include "bsr_kernels.h"

namespace tlc_bsr {
namespace {

tlc_bsr_cuda::DType cuda_dtype(const char* op, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return tlc_bsr_cuda::DType::kFloat32;
    case at::kHalf: return tlc_bsr_cuda::DType::kFloat16;
    case at::kBFloat16: return tlc_bsr_cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, op, ": CUDA kernels support float32, float16 and bfloat16, got ", t.scalar_type());
  }
}

void check_launch(const char* op, cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

at::Tensor bsr_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& crow,
                           const at::Tensor& col, const std::optional<at::Tensor>& bias) {
  const char* op = "bsr_linear";
  const int64_t bs = check_bsr_operands(op, x, "x", values, crow, col);
  TORCH_CHECK(x.size(1) % bs == 0, op, ": in_features (", x.size(1), ") must be a multiple of block_size (", bs, ")");
  const int64_t block_rows = crow.numel() - 1;
  check_bias(bias, values, block_rows * bs);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), vc = values.contiguous(), cc = crow.contiguous(), lc = col.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({x.size(0), block_rows * bs}, x.options());
  check_launch(op, tlc_bsr_cuda::bsr_forward(cuda_dtype(op, x), xc.data_ptr(), vc.data_ptr(), cc.data_ptr<int64_t>(),
                                             lc.data_ptr<int64_t>(), bc.defined() ? bc.data_ptr() : nullptr,
                                             y.data_ptr(), x.size(0), x.size(1), block_rows, static_cast<int>(bs),
                                             c10::cuda::getCurrentCUDAStream()));
  return y;
}

at::Tensor block_rows_of(const at::Tensor& crow, int64_t nnz) {  // block-row of every block
  const int64_t rows = crow.numel() - 1;
  return at::repeat_interleave(at::arange(rows, crow.options()), crow.diff(), /*dim=*/0, nnz);
}

at::Tensor bsr_linear_grad_input_cuda(const at::Tensor& grad_y, const at::Tensor& values, const at::Tensor& crow,
                                      const at::Tensor& col, int64_t in_features) {
  const char* op = "bsr_linear_grad_input";
  const int64_t bs = check_bsr_operands(op, grad_y, "grad_y", values, crow, col);
  TORCH_CHECK(in_features % bs == 0, op, ": in_features (", in_features, ") must be a multiple of block_size (", bs, ")");
  const int64_t out_features = (crow.numel() - 1) * bs, nnz = col.numel();
  TORCH_CHECK(grad_y.size(1) == out_features, op, ": grad_y must have out_features (", out_features, ") columns, got ",
              grad_y.size(1));
  const c10::cuda::CUDAGuard guard(grad_y.device());
  // CSC view, built on the device: blocks ordered by (column, row), and column offsets.
  const at::Tensor block_row = block_rows_of(crow.contiguous(), nnz);
  const at::Tensor col_block = at::argsort(col * (crow.numel() - 1) + block_row);
  const at::Tensor col_ptr = at::zeros({in_features / bs + 1}, crow.options());
  col_ptr.narrow(0, 1, in_features / bs).copy_(at::bincount(col, {}, in_features / bs).cumsum(0));
  const at::Tensor gc = grad_y.contiguous(), vc = values.contiguous();
  at::Tensor gx = at::empty({grad_y.size(0), in_features}, grad_y.options());
  check_launch(op, tlc_bsr_cuda::bsr_grad_input(cuda_dtype(op, grad_y), gc.data_ptr(), vc.data_ptr(),
                                                col_ptr.data_ptr<int64_t>(), col_block.data_ptr<int64_t>(),
                                                block_row.data_ptr<int64_t>(), gx.data_ptr(), grad_y.size(0),
                                                in_features, out_features, static_cast<int>(bs),
                                                c10::cuda::getCurrentCUDAStream()));
  return gx;
}

at::Tensor bsr_linear_grad_values_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& crow,
                                       const at::Tensor& col, int64_t block_size) {
  const char* op = "bsr_linear_grad_values";
  TORCH_CHECK(block_size == 16 || block_size == 32 || block_size == 64, op, ": block_size must be 16, 32 or 64, got ",
              block_size);
  TORCH_CHECK(grad_y.dim() == 2 && x.dim() == 2 && grad_y.size(0) == x.size(0), op,
              ": grad_y and x must be 2-D with the same number of tokens, got shapes ", grad_y.sizes(), " and ", x.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(), op, ": grad_y and x must have the same dtype, got ",
              grad_y.scalar_type(), " and ", x.scalar_type());
  TORCH_CHECK(crow.dim() == 1 && crow.numel() >= 1 && crow.scalar_type() == at::kLong && col.dim() == 1 &&
                  col.scalar_type() == at::kLong,
              op, ": crow_indices and col_indices must be 1-D int64 tensors");
  TORCH_CHECK(grad_y.device() == x.device() && crow.device() == x.device() && col.device() == x.device(), op,
              ": all tensors must be on one device, got grad_y on ", grad_y.device(), ", x on ", x.device(),
              ", crow_indices on ", crow.device(), ", col_indices on ", col.device());
  TORCH_CHECK(x.size(1) % block_size == 0, op, ": in_features (", x.size(1), ") must be a multiple of block_size (",
              block_size, ")");
  TORCH_CHECK(grad_y.size(1) == (crow.numel() - 1) * block_size, op, ": grad_y must have out_features (",
              (crow.numel() - 1) * block_size, ") columns, got ", grad_y.size(1));
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t nnz = col.numel();
  const at::Tensor block_row = block_rows_of(crow.contiguous(), nnz);
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous(), lc = col.contiguous();
  at::Tensor gv = at::empty({nnz, block_size, block_size}, x.options());
  check_launch(op, tlc_bsr_cuda::bsr_grad_values(cuda_dtype(op, x), gc.data_ptr(), xc.data_ptr(),
                                                 block_row.data_ptr<int64_t>(), lc.data_ptr<int64_t>(), gv.data_ptr(),
                                                 x.size(0), x.size(1), grad_y.size(1), nnz,
                                                 static_cast<int>(block_size), c10::cuda::getCurrentCUDAStream()));
  return gv;
}

}  // namespace
}  // namespace tlc_bsr

TORCH_LIBRARY_IMPL(tlc_bsr, CUDA, m) {
  m.impl("bsr_linear", &tlc_bsr::bsr_linear_cuda);
  m.impl("bsr_linear_grad_input", &tlc_bsr::bsr_linear_grad_input_cuda);
  m.impl("bsr_linear_grad_values", &tlc_bsr::bsr_linear_grad_values_cuda);
}
