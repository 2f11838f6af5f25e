// Autograd of the KD ops, for every backend (the Autograd dispatch key), as torchvision does
// for its C++ ops: no Python on the training step's hot path.
//
// The forward kernels already return d loss / d student scaled by the reduction's factor,
// so the backward only multiplies by the incoming gradient:
//   * eagerly, in place on the forward's buffer, which is then handed to autograd; when the
//     incoming gradient is exactly 1 (``kd.backward()``) the kernel skips even that;
//   * while torch.compile / AOTAutograd / make_fx trace (fake or functional tensors, or a
//     Python dispatch mode), out of place, so the traced graph stays functional;
//   * a second backward through the same graph (retain_graph=True, gradcheck) finds the
//     buffer handed over and recomputes the gradient from the saved inputs.
#include "kd_kl.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace asrkd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdResult = std::tuple<at::Tensor, at::Tensor>;

const c10::TypedOperatorHandle<FwdResult(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, double, c10::string_view, bool)>&
dense_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("asrkd::kd_kl_div_fwd", "")
                             .typed<FwdResult(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                              const std::optional<at::Tensor>&, double, c10::string_view, bool)>();
  return op;
}

const c10::TypedOperatorHandle<FwdResult(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double,
                                         c10::string_view, bool)>&
topk_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("asrkd::kd_kl_div_topk_fwd", "")
          .typed<FwdResult(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, double, c10::string_view, bool)>();
  return op;
}

const c10::TypedOperatorHandle<void(at::Tensor&, const at::Tensor&)>& scale_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("asrkd::kd_kl_scale_grad_", "")
                             .typed<void(at::Tensor&, const at::Tensor&)>();
  return op;
}

std::optional<at::Tensor> opt(const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; }

// True while a tracer is at work: fake / functional tensors, or a Python dispatch mode.
bool traced(const at::Tensor& t) {
  return c10::impl::TorchDispatchModeTLS::any_modes_set() ||
         t.key_set().has_any(c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize}));
}

// Shared backward: `recompute()` gives the unit gradient again for a second backward.
template <typename Recompute>
at::Tensor backward_common(AutogradContext* ctx, const at::Tensor& grad_loss, at::Tensor grad, Recompute recompute) {
  TORCH_CHECK(ctx->saved_data["compute_grad"].toBool(),
              "asrkd: the KD loss was computed without a student gradient (grad mode off or the student did not "
              "require grad at call time); compute it again with autograd enabled");
  const bool tracing = traced(grad) || traced(grad_loss);
  TORCH_CHECK(tracing || !at::GradMode::is_enabled(),
              "asrkd: double backward (create_graph=True) through kd_kl_div is not supported");
  const bool consumed = ctx->saved_data["consumed"].toBool();
  if (consumed) {
    at::AutoDispatchBelowADInplaceOrView below;
    grad = recompute();
  }
  if (tracing || consumed) {
    const at::Tensor scale = grad_loss.dim() == 2 ? grad_loss.unsqueeze(-1) : grad_loss;
    return grad * scale.to(grad.scalar_type());
  }
  // `variable_data()`: the same storage under a fresh version counter, so neither this
  // write nor autograd accumulating into the handed-over tensor invalidates saved inputs.
  at::Tensor buffer = grad.variable_data();
  {
    at::AutoDispatchBelowADInplaceOrView below;
    scale_op().call(buffer, grad_loss);
  }
  ctx->saved_data["consumed"] = true;
  return buffer;
}

void save_scalars(AutogradContext* ctx, double temperature, c10::string_view reduction, bool compute_grad) {
  // The gradient output is never differentiated: without this autograd would fill a
  // (B, T, V) tensor of zeros as its incoming gradient on every backward.
  ctx->set_materialize_grads(false);
  ctx->saved_data["temperature"] = temperature;
  ctx->saved_data["reduction"] = std::string(reduction);
  ctx->saved_data["compute_grad"] = compute_grad;
  ctx->saved_data["consumed"] = false;
}

class KdKlDense : public torch::autograd::Function<KdKlDense> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                               const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& weights,
                               double temperature, c10::string_view reduction, bool compute_grad) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grad] = dense_op().call(student, teacher, lengths, weights, temperature, reduction, compute_grad);
    ctx->mark_non_differentiable({grad});
    ctx->save_for_backward({grad, student, teacher, lengths.value_or(at::Tensor()), weights.value_or(at::Tensor())});
    save_scalars(ctx, temperature, reduction, compute_grad);
    return {loss, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list out(7);
    if (!grad_outputs[0].defined()) return out;
    const auto saved = ctx->get_saved_variables();
    out[0] = backward_common(ctx, grad_outputs[0], saved[0], [&] {
      const std::string reduction = ctx->saved_data["reduction"].toStringRef();
      return std::get<1>(dense_op().call(saved[1], saved[2], opt(saved[3]), opt(saved[4]),
                                         ctx->saved_data["temperature"].toDouble(), reduction, true));
    });
    return out;
  }
};

class KdKlTopk : public torch::autograd::Function<KdKlTopk> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& topk_idx,
                               const at::Tensor& topk_logprob, const std::optional<at::Tensor>& lengths,
                               const std::optional<at::Tensor>& weights, double temperature,
                               c10::string_view reduction, bool compute_grad) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grad] =
        topk_op().call(student, topk_idx, topk_logprob, lengths, weights, temperature, reduction, compute_grad);
    ctx->mark_non_differentiable({grad});
    ctx->save_for_backward(
        {grad, student, topk_idx, topk_logprob, lengths.value_or(at::Tensor()), weights.value_or(at::Tensor())});
    save_scalars(ctx, temperature, reduction, compute_grad);
    return {loss, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list out(8);
    if (!grad_outputs[0].defined()) return out;
    const auto saved = ctx->get_saved_variables();
    out[0] = backward_common(ctx, grad_outputs[0], saved[0], [&] {
      const std::string reduction = ctx->saved_data["reduction"].toStringRef();
      return std::get<1>(topk_op().call(saved[1], saved[2], saved[3], opt(saved[4]), opt(saved[5]),
                                        ctx->saved_data["temperature"].toDouble(), reduction, true));
    });
    return out;
  }
};

FwdResult dense_autograd(const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& lengths,
                         const std::optional<at::Tensor>& weights, double temperature, c10::string_view reduction,
                         bool compute_grad) {
  auto out = KdKlDense::apply(student, teacher, lengths, weights, temperature, reduction, compute_grad);
  return {out[0], out[1]};
}

FwdResult topk_autograd(const at::Tensor& student, const at::Tensor& topk_idx, const at::Tensor& topk_logprob,
                        const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& weights,
                        double temperature, c10::string_view reduction, bool compute_grad) {
  auto out = KdKlTopk::apply(student, topk_idx, topk_logprob, lengths, weights, temperature, reduction, compute_grad);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace asrkd

TORCH_LIBRARY_IMPL(asrkd, Autograd, m) {
  m.impl("kd_kl_div_fwd", &asrkd::dense_autograd);
  m.impl("kd_kl_div_topk_fwd", &asrkd::topk_autograd);
}
