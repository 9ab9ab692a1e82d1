// Autograd for tlc_bsr::bsr_linear, in C++ so that a call never enters the Python interpreter
// (a Python autograd registration costs ~5 µs per call, as much as a small layer's matmul).
//   grad_x = grad_y · W,   grad_values[k] = grad_y[:, rows of k]ᵀ · x[:, cols of k],   grad_bias = Σ_t grad_y
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

namespace tlc_bsr {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_op(const at::Tensor& x, const at::Tensor& values, const at::Tensor& crow, const at::Tensor& col,
                      const std::optional<at::Tensor>& bias) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tlc_bsr::bsr_linear", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const std::optional<at::Tensor>&)>();
  return op.call(x, values, crow, col, bias);
}

at::Tensor grad_op(const char* name, const at::Tensor& a, const at::Tensor& b, const at::Tensor& crow,
                   const at::Tensor& col, int64_t size) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<at::Tensor(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(a, b, crow, col, size);
}

class BsrLinearFunction : public torch::autograd::Function<BsrLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& values,
                            const at::Tensor& crow, const at::Tensor& col, const std::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({x, values, crow, col});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return forward_op(x, values, crow, col, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &values = saved[1], &crow = saved[2], &col = saved[3];
    const at::Tensor grad_y = grad_outputs[0].contiguous();
    at::Tensor grad_x, grad_values, grad_bias;
    if (ctx->needs_input_grad(0))
      grad_x = grad_op("tlc_bsr::bsr_linear_grad_input", grad_y, values, crow, col, x.size(1));
    if (ctx->needs_input_grad(1))
      grad_values = grad_op("tlc_bsr::bsr_linear_grad_values", grad_y, x, crow, col, values.size(1));
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(4))
      grad_bias = grad_y.sum(0, /*keepdim=*/false, at::kFloat).to(grad_y.scalar_type());
    return {grad_x, grad_values, at::Tensor(), at::Tensor(), grad_bias};
  }
};

at::Tensor bsr_linear_autograd(const at::Tensor& x, const at::Tensor& values, const at::Tensor& crow,
                               const at::Tensor& col, const std::optional<at::Tensor>& bias) {
  return BsrLinearFunction::apply(x, values, crow, col, bias);
}

}  // namespace
}  // namespace tlc_bsr

TORCH_LIBRARY_IMPL(tlc_bsr, Autograd, m) { m.impl("bsr_linear", &tlc_bsr::bsr_linear_autograd); }
