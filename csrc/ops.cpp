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
}
