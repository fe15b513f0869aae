// Every tna:: op schema, in one place. Kernels register per backend in csrc/cpu/*.cpp (C++) and
// tna_kernels/ops/*.py (Triton on CUDA); autograd and fake kernels live in tna_kernels/ops/*.py.
#include <torch/library.h>

TORCH_LIBRARY(tna, m) {
  // Multi-step LIF (SpikingJelly dynamics). x_seq: [T, *] floating; v0: [*] in the state dtype
  // (float32 for half/bf16 x, else x's dtype). Returns spikes [T, *] (x dtype), v_last [*]
  // (state dtype) and h_seq, the pre-spike membrane [T, *] in the state dtype when save_h, else
  // an empty tensor. detach_reset/surrogate/alpha only shape the backward; they are validated here.
  m.def(
      "lif_fwd(Tensor x_seq, Tensor v0, float tau, bool decay_input, float v_threshold, "
      "float v_reset, bool soft_reset, bool detach_reset, str surrogate, float alpha, "
      "bool save_h) -> (Tensor, Tensor, Tensor)");
  // Backward through time from the saved h_seq. Returns (grad_x_seq [T, N], grad_v0 [N]).
  m.def(
      "lif_bwd(Tensor grad_spikes, Tensor grad_v_last, Tensor h_seq, float tau, bool decay_input, "
      "float v_threshold, float v_reset, bool soft_reset, bool detach_reset, str surrogate, "
      "float alpha) -> (Tensor, Tensor)");

  // Fused twin loss: wa CE(logits_base) + wb CE(logits_twin) + lam MSE(logits_base, logits_twin),
  // loss and both logit gradients in one fused pass (formulas in csrc/cpu/twin_loss.cpp).
  // logits_*: [B, C] floating, same dtype; target: [B] int64, a class or ignore_index.
  // mse_reduction: 0 = mean over B*C elements (F.mse_loss), 1 = sum over classes / B.
  // Returns loss (0-dim) and parts [3] = (CE_base, CE_twin, MSE), unweighted, both float32 for
  // half/bf16 logits (else the logits' dtype); grad_base / grad_twin: dL/dlogits for
  // grad_output = 1 in the logits' dtype, or empty tensors where need_grad_* is false.
  m.def(
      "twin_loss_fwd(Tensor logits_base, Tensor logits_twin, Tensor target, float ce_weight_base, "
      "float ce_weight_twin, float mse_weight, int mse_reduction, float label_smoothing, "
      "int ignore_index, bool need_grad_base, bool need_grad_twin) -> (Tensor, Tensor, Tensor, "
      "Tensor)");
  // Backward of twin_loss_fwd: (grad_loss * grad_base, grad_loss * grad_twin) in the logits' dtype.
  // grad_loss: 0-dim in the loss dtype; an empty grad_base / grad_twin gives an empty result.
  m.def("twin_loss_bwd(Tensor grad_loss, Tensor grad_base, Tensor grad_twin) -> (Tensor, Tensor)");
}
