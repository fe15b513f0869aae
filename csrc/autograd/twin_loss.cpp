// tna::twin_loss: the fused twin loss with its autograd in C++, one dispatcher call from Python.
//
// The forward runs tna::twin_loss_fwd (CPU kernel or the CUDA/Triton one, whichever the logits'
// device selects) below autograd, which returns the loss, its parts and both logit gradients for
// grad_output = 1; the node saves those two gradients and its backward is tna::twin_loss_bwd (a
// scale by grad_output), or on CPU with grad_output = 1 the saved gradients themselves. The same autograd written in Python (autograd.Function) cost ~60 us of
// interpreter time per forward+backward, more than the whole kernel at B = 1024, C = 100.
#include <torch/autograd.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

namespace tna {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_fwd(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& y, double wa, double wb,
    double lam, int64_t reduction, double smoothing, int64_t ignore_index, bool need_a,
    bool need_b) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("tna::twin_loss_fwd", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double,
              int64_t, double, int64_t, bool, bool)>();
  return op.call(a, b, y, wa, wb, lam, reduction, smoothing, ignore_index, need_a, need_b);
}

std::tuple<at::Tensor, at::Tensor> call_bwd(const at::Tensor& g, const at::Tensor& ga,
                                            const at::Tensor& gb) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tna::twin_loss_bwd", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(g, ga, gb);
}

// A CPU tensor with real data (not a fake / functional / traced one, whose value is unknown).
bool is_plain_cpu(const at::Tensor& t) {
  constexpr c10::DispatchKeySet kTraced({c10::DispatchKey::Python, c10::DispatchKey::Functionalize,
                                         c10::DispatchKey::PythonTLSSnapshot});
  return t.is_cpu() && !t.key_set().has_any(kTraced);
}

class TwinLossNode : public torch::autograd::Function<TwinLossNode> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                               const at::Tensor& y, double wa, double wb, double lam,
                               int64_t reduction, double smoothing, int64_t ignore_index,
                               bool need_a, bool need_b) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, parts, grad_a, grad_b] =
        call_fwd(a, b, y, wa, wb, lam, reduction, smoothing, ignore_index, need_a, need_b);
    ctx->mark_non_differentiable({parts});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({grad_a, grad_b});
    ctx->saved_data["need_a"] = need_a;
    ctx->saved_data["need_b"] = need_b;
    return {loss, parts};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // create_graph=True would need the gradients' own graph, which the fused kernel does not keep
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "tna_kernels twin_loss does not support double backward (create_graph=True); use "
                "tna_kernels.reference.twin_loss for that");
    variable_list out(11);
    if (!grads[0].defined()) return out;  // only the parts were used: nothing flows back
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_a, grad_b;
    if (is_plain_cpu(grads[0]) && grads[0].item<double>() == 1.0) {
      // loss.backward(): the saved gradients are the answer. Returned as they are, no copy: once
      // the engine releases this node's saved tensors (no retain_graph), AccumulateGrad adopts
      // them; with retain_graph it copies them, and an in-place change to a returned gradient is
      // caught by the saved tensors' version counter.
      grad_a = saved[0];
      grad_b = saved[1];
    } else {
      std::tie(grad_a, grad_b) = call_bwd(grads[0], saved[0], saved[1]);
    }
    if (ctx->saved_data["need_a"].toBool()) out[0] = grad_a;
    if (ctx->saved_data["need_b"].toBool()) out[1] = grad_b;
    return out;
  }
};

// A detached input (detach_base / detach_twin, or grad mode off, or no requires_grad) gets no
// gradient buffer at all; the kernel skips it.
std::tuple<at::Tensor, at::Tensor> twin_loss_autograd(
    const at::Tensor& logits_base, const at::Tensor& logits_twin, const at::Tensor& target,
    double ce_weight_base, double ce_weight_twin, double mse_weight, int64_t mse_reduction,
    double label_smoothing, int64_t ignore_index, bool detach_base, bool detach_twin) {
  const bool grad_on = at::GradMode::is_enabled();
  const bool need_a = grad_on && !detach_base && logits_base.requires_grad();
  const bool need_b = grad_on && !detach_twin && logits_twin.requires_grad();
  const at::Tensor a = detach_base ? logits_base.detach() : logits_base;
  const at::Tensor b = detach_twin ? logits_twin.detach() : logits_twin;
  const auto out = TwinLossNode::apply(a, b, target, ce_weight_base, ce_weight_twin, mse_weight,
                                       mse_reduction, label_smoothing, ignore_index, need_a,
                                       need_b);
  return {out[0], out[1]};
}

// Below autograd (inference mode, tracing): the loss and parts only, no gradient buffers.
std::tuple<at::Tensor, at::Tensor> twin_loss_plain(
    const at::Tensor& logits_base, const at::Tensor& logits_twin, const at::Tensor& target,
    double ce_weight_base, double ce_weight_twin, double mse_weight, int64_t mse_reduction,
    double label_smoothing, int64_t ignore_index, bool /*detach_base*/, bool /*detach_twin*/) {
  auto [loss, parts, grad_a, grad_b] =
      call_fwd(logits_base, logits_twin, target, ce_weight_base, ce_weight_twin, mse_weight,
               mse_reduction, label_smoothing, ignore_index, false, false);
  return {loss, parts};
}

}  // namespace

TORCH_LIBRARY_IMPL(tna, Autograd, m) { m.impl("twin_loss", &twin_loss_autograd); }
TORCH_LIBRARY_IMPL(tna, CompositeExplicitAutograd, m) { m.impl("twin_loss", &twin_loss_plain); }

}  // namespace tna
