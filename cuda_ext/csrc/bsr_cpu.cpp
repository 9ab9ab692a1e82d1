// CPU implementations of the tlc_bsr ops: check arguments, allocate outputs, call the kernels.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "bsr_blas_cpu.h"
#include "bsr_checks.h"
#include "bsr_kernels_cpu.h"

namespace tlc_bsr {
namespace {

void check_cpu_dtype(const char* op, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, op,
              ": CPU kernels support float32 and bfloat16, got ", t.scalar_type());
}

template <typename T>
const uint16_t* bits(const at::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<T>());
}

// Below ~256K multiply-adds waking a second thread costs more than it saves (microseconds when
// idle, a scheduler time slice when the machine is busy).
constexpr int64_t kMinParallelMacs = int64_t(1) << 18;

BsrShape shape_of(int64_t tokens, int64_t in_features, const at::Tensor& crow, int64_t nnz, int64_t bs) {
  const int threads = tokens * nnz * bs * bs < kMinParallelMacs ? 1 : at::get_num_threads();
  return BsrShape{tokens, in_features, crow.numel() - 1, nnz, static_cast<int>(bs), threads};
}

at::Tensor bsr_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& crow,
                          const at::Tensor& col, const std::optional<at::Tensor>& bias) {
  const char* op = "bsr_linear";
  const int64_t bs = check_bsr_operands(op, x, "x", values, crow, col);
  check_cpu_dtype(op, x);
  check_bsr_indices(op, crow, col, x.size(1), bs);
  const int64_t out_features = (crow.numel() - 1) * bs;
  check_bias(bias, values, out_features);
  const at::Tensor xc = x.contiguous(), vc = values.contiguous(), cc = crow.contiguous(), lc = col.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  if (use_blas_path(xc)) return blas_forward(xc, vc, cc, lc, bc);
  at::Tensor y = at::empty({x.size(0), out_features}, x.options());
  const BsrShape s = shape_of(x.size(0), x.size(1), cc, vc.size(0), bs);
  const int64_t* cr = cc.data_ptr<int64_t>();
  const int64_t* cl = lc.data_ptr<int64_t>();
  if (x.scalar_type() == at::kFloat) {
    bsr_forward_f32(s, xc.data_ptr<float>(), vc.data_ptr<float>(), cr, cl, bc.defined() ? bc.data_ptr<float>() : nullptr,
                    y.data_ptr<float>());
  } else {
    bsr_forward_bf16(s, bits<at::BFloat16>(xc), bits<at::BFloat16>(vc), cr, cl,
                     bc.defined() ? bits<at::BFloat16>(bc) : nullptr,
                     reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()));
  }
  return y;
}

at::Tensor bsr_linear_grad_input_cpu(const at::Tensor& grad_y, const at::Tensor& values, const at::Tensor& crow,
                                     const at::Tensor& col, int64_t in_features) {
  const char* op = "bsr_linear_grad_input";
  const int64_t bs = check_bsr_operands(op, grad_y, "grad_y", values, crow, col);
  check_cpu_dtype(op, grad_y);
  check_bsr_indices(op, crow, col, in_features, bs);
  TORCH_CHECK(grad_y.size(1) == (crow.numel() - 1) * bs, op, ": grad_y must have out_features (",
              (crow.numel() - 1) * bs, ") columns, got ", grad_y.size(1));
  const at::Tensor gc = grad_y.contiguous(), vc = values.contiguous(), cc = crow.contiguous(), lc = col.contiguous();
  if (use_blas_path(gc)) return blas_grad_input(gc, vc, cc, lc, in_features);
  at::Tensor gx = at::empty({grad_y.size(0), in_features}, grad_y.options());
  const BsrShape s = shape_of(grad_y.size(0), in_features, cc, vc.size(0), bs);
  if (grad_y.scalar_type() == at::kFloat) {
    bsr_grad_input_f32(s, gc.data_ptr<float>(), vc.data_ptr<float>(), cc.data_ptr<int64_t>(), lc.data_ptr<int64_t>(),
                       gx.data_ptr<float>());
  } else {
    bsr_grad_input_bf16(s, bits<at::BFloat16>(gc), bits<at::BFloat16>(vc), cc.data_ptr<int64_t>(),
                        lc.data_ptr<int64_t>(), reinterpret_cast<uint16_t*>(gx.data_ptr<at::BFloat16>()));
  }
  return gx;
}

at::Tensor bsr_linear_grad_values_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& crow,
                                      const at::Tensor& col, int64_t block_size) {
  const char* op = "bsr_linear_grad_values";
  TORCH_CHECK(block_size == 16 || block_size == 32 || block_size == 64, op, ": block_size must be 16, 32 or 64, got ",
              block_size);
  TORCH_CHECK(grad_y.dim() == 2 && x.dim() == 2 && grad_y.size(0) == x.size(0), op,
              ": grad_y and x must be 2-D with the same number of tokens, got shapes ", grad_y.sizes(), " and ", x.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(), op, ": grad_y and x must have the same dtype, got ",
              grad_y.scalar_type(), " and ", x.scalar_type());
  check_cpu_dtype(op, x);
  TORCH_CHECK(crow.dim() == 1 && crow.numel() >= 1 && crow.scalar_type() == at::kLong && col.dim() == 1 &&
                  col.scalar_type() == at::kLong,
              op, ": crow_indices and col_indices must be 1-D int64 tensors");
  TORCH_CHECK(grad_y.size(1) == (crow.numel() - 1) * block_size, op, ": grad_y must have out_features (",
              (crow.numel() - 1) * block_size, ") columns, got ", grad_y.size(1));
  check_bsr_indices(op, crow, col, x.size(1), block_size);
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous(), cc = crow.contiguous(), lc = col.contiguous();
  if (use_blas_path(gc)) return blas_grad_values(gc, xc, cc, lc, block_size);
  at::Tensor gv = at::empty({col.numel(), block_size, block_size}, x.options());
  const BsrShape s = shape_of(x.size(0), x.size(1), cc, col.numel(), block_size);
  if (x.scalar_type() == at::kFloat) {
    bsr_grad_values_f32(s, gc.data_ptr<float>(), xc.data_ptr<float>(), cc.data_ptr<int64_t>(), lc.data_ptr<int64_t>(),
                        gv.data_ptr<float>());
  } else {
    bsr_grad_values_bf16(s, bits<at::BFloat16>(gc), bits<at::BFloat16>(xc), cc.data_ptr<int64_t>(),
                         lc.data_ptr<int64_t>(), reinterpret_cast<uint16_t*>(gv.data_ptr<at::BFloat16>()));
  }
  return gv;
}

}  // namespace
}  // namespace tlc_bsr

TORCH_LIBRARY_IMPL(tlc_bsr, CPU, m) {
  m.impl("bsr_linear", &tlc_bsr::bsr_linear_cpu);
  m.impl("bsr_linear_grad_input", &tlc_bsr::bsr_linear_grad_input_cpu);
  m.impl("bsr_linear_grad_values", &tlc_bsr::bsr_linear_grad_values_cpu);
}
