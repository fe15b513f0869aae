// Every tna:: op schema, in one place. Kernels register per backend in csrc/cpu/*.cpp (C++) and
// tna_kernels/ops/*.py (Triton on CUDA); autograd and fake kernels live in tna_kernels/ops/*.py.
#include <torch/library.h>

TORCH_LIBRARY(tna, m) {
  // Multi-step LIF (SpikingJelly dynamics). x_seq: [T, *] floating; v0: [*] in the state dtype
  // (float32 for half/bf16 x, else x's dtype), or None = start at the reset value (v_reset, or 0
  // for soft reset). Returns spikes [T, *] (x dtype), v_last [*]
  // (state dtype) and h_seq, the pre-spike membrane [T, *] in the state dtype when save_h, else
  // an empty tensor. detach_reset/surrogate/alpha only shape the backward; they are validated here.
  m.def(
      "lif_fwd(Tensor x_seq, Tensor? v0, float tau, bool decay_input, float v_threshold, "
      "float v_reset, bool soft_reset, bool detach_reset, str surrogate, float alpha, "
      "bool save_h) -> (Tensor, Tensor, Tensor)");
  // Backward through time from the saved h_seq (grad_v_last None = zero). Returns
  // (grad_x_seq [T, *], grad_v0 [*]).
  m.def(
      "lif_bwd(Tensor grad_spikes, Tensor? grad_v_last, Tensor h_seq, float tau, bool decay_input, "
      "float v_threshold, float v_reset, bool soft_reset, bool detach_reset, str surrogate, "
      "float alpha) -> (Tensor, Tensor)");
  // The same backward without a saved h_seq: recomputes the membrane from the forward's inputs
  // (x_seq, v0) block by block in cache; equal to lif_bwd on lif_fwd's h_seq. A forward + backward
  // moves 20 B per neuron-step instead of 24 (no h_seq written; x_seq read in its own dtype).
  // grad_v0 is [*] when v0 is given, else an empty tensor (a constant start has no gradient).
  m.def(
      "lif_bwd_recompute(Tensor grad_spikes, Tensor? grad_v_last, Tensor x_seq, Tensor? v0, "
      "float tau, bool decay_input, float v_threshold, float v_reset, bool soft_reset, "
      "bool detach_reset, str surrogate, float alpha) -> (Tensor, Tensor)");
  // Inference LIF with packed output: x_seq [T, ..., C] float32 channels last (membrane from the
  // reset value) -> spikes bit-packed along C, int64 [T, ..., ceil(C/64)] (the pack_spikes layout).
  m.def(
      "lif_pack(Tensor x_seq, float tau, bool decay_input, float v_threshold, float v_reset, "
      "bool soft_reset) -> Tensor");

  // Ternary weights. Packed format v1 (csrc/cpu/ternary.h, docs/FORMAT.md): codes [..., K] int8 in
  // {-1, 0, +1} -> int64 words [..., 2, KW], KW = ceil(K/64), planes P (+1) and N (-1) along K,
  // little-endian bits, zero padding; spikes {0, 1} [..., K] -> [..., KW]. Every op that reads
  // packed words takes the format `version` and rejects any other. scale: float32 [N]; bias:
  // float32 [N] or None. Spike ops return float32; float ops return x's dtype.
  m.def("pack_ternary(Tensor codes) -> Tensor");
  m.def("unpack_ternary(Tensor packed, int K, int version) -> Tensor");
  m.def("pack_spikes(Tensor spikes, int dim=-1) -> Tensor");  // packs along dim, moved last
  m.def("unpack_spikes(Tensor bits, int K) -> Tensor");
  // Ternariser ("twn" | "absmean"), dim 0 = output channel: (codes int8 like w, scale float32 [N],
  // packed words of the codes along w's last axis, or an empty tensor when pack is false).
  m.def("ternarize(Tensor w, str method, bool per_channel, bool pack) -> (Tensor, Tensor, Tensor)");
  // x [..., K] floating, packed_w [N, 2, KW] -> [..., N]; grad_input: grad_y [..., N] -> [..., K].
  m.def("ternary_linear(Tensor x, Tensor packed_w, Tensor scale, Tensor? bias, int version) -> Tensor");
  m.def("ternary_linear_grad_input(Tensor grad_y, Tensor packed_w, Tensor scale, int K, int version) -> Tensor");
  // spike_bits [..., KW] int64 -> [..., N] float32, exact integer accumulation. kmajor: optional
  // cached ternary_kmajor(packed_w) for the event-driven (sparse) kernel; built per call if absent.
  m.def(
      "spike_ternary_linear(Tensor spike_bits, Tensor packed_w, Tensor scale, Tensor? bias, int K, "
      "int version, Tensor? kmajor=None) -> Tensor");
  // Conv2d, groups = 1: packed_w [N, kh, kw, 2, CW] (codes [N, kh, kw, C] packed along C);
  // x [B, C, H, W]; spike_bits [B, H, W, CW] (spikes packed along channels) -> [B, N, OH, OW].
  m.def(
      "ternary_conv2d(Tensor x, Tensor packed_w, Tensor scale, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] dilation, int version) -> Tensor");
  m.def(
      "ternary_conv2d_grad_input(Tensor grad_y, Tensor packed_w, Tensor scale, int[4] input_size, "
      "int[2] stride, int[2] padding, int[2] dilation, int version) -> Tensor");
  m.def(
      "spike_ternary_conv2d(Tensor spike_bits, Tensor packed_w, Tensor scale, Tensor? bias, int C, "
      "int[2] stride, int[2] padding, int[2] dilation, int version, Tensor? kmajor=None) -> Tensor");
  // spike_ternary_conv2d with the LIF of lif_pack in its epilogue: spike_bits [T*B, H, W, CW]
  // (time-major) -> packed spikes [T*B, OH, OW, ceil(N/64)]; the float current exists only per tile.
  m.def(
      "spike_ternary_conv2d_lif(Tensor spike_bits, Tensor packed_w, Tensor scale, Tensor? bias, int C, "
      "int[2] stride, int[2] padding, int[2] dilation, int version, int T, float tau, bool decay_input, "
      "float v_threshold, float v_reset, bool soft_reset, Tensor? kmajor=None) -> Tensor");
  // Backend-private K-major int8 copy of packed weights [K_padded, ceil(N/128)*128] (never serialised).
  m.def("ternary_kmajor(Tensor packed_w, int K, int version) -> Tensor");
  // Popcount kernel instruction set the CPU ops use now: "avx512" | "avx2" | "scalar" (the best
  // supported, or TNA_TERNARY_ISA when set).
  m.def("ternary_cpu_isa() -> str");
  // Max-pooling of 0/1 spikes keeping the input bit-packed (SpikeMaxPool2d in training):
  // x [N, C, H, W] floating, values 0 or 1 only -> (y = max_pool2d(x) [N, C, OH, OW], bits =
  // pack_spikes(x.reshape(N, -1)) int64 [N, ceil(C*H*W/64)]). The backward takes grad_y and bits
  // and returns grad_x [input_size], each output's gradient at the element max_pool2d's indices
  // pick (the window's first spike, else its first element).
  m.def(
      "spike_max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "spike_max_pool2d_backward(Tensor grad_y, Tensor bits, int[4] input_size, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
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
  // The loss with its autograd (csrc/autograd/twin_loss.cpp): (loss, parts) of twin_loss_fwd;
  // gradients reach the logits that require grad unless detach_base / detach_twin.
  m.def(
      "twin_loss(Tensor logits_base, Tensor logits_twin, Tensor target, float ce_weight_base, "
      "float ce_weight_twin, float mse_weight, int mse_reduction, float label_smoothing, "
      "int ignore_index, bool detach_base, bool detach_twin) -> (Tensor, Tensor)");
}
