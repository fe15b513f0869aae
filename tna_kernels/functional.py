"""User-facing functions, re-exported from their op family's home (``tna_kernels/ops/<family>.py``,
where each is defined with its argument checker). Each validates its arguments (errors name the
argument), never modifies the caller's tensors, and calls a tna:: op, which runs the native C++
kernel on CPU tensors and the Triton kernel on CUDA tensors."""

from .formats import FORMAT_VERSION as TERNARY_FORMAT_VERSION
from .formats import MSE_REDUCTIONS, SURROGATES
from .ops.lif import lif, tau_from_beta
from .ops.lif_pack import lif_pack
from .ops.spike_train import spike_ternary_conv2d_ste, spike_ternary_linear_ste
from .ops.ternary import (
    PackedTernary,
    pack_spikes,
    pack_ternary,
    quantize_pack,
    spike_ternary_conv2d,
    spike_ternary_conv2d_lif,
    spike_ternary_linear,
    ternarize,
    ternary_conv2d,
    ternary_linear,
    ternary_ste,
    unpack_spikes,
    unpack_ternary,
)
from .ops.twin_loss import dml_loss, kd_loss, twin_loss

__all__ = ["lif", "tau_from_beta", "SURROGATES",
           "TERNARY_FORMAT_VERSION", "PackedTernary", "ternarize", "ternary_ste", "quantize_pack",
           "pack_ternary", "unpack_ternary", "pack_spikes", "unpack_spikes", "ternary_linear",
           "spike_ternary_linear", "ternary_conv2d", "spike_ternary_conv2d", "lif_pack",
           "spike_ternary_conv2d_lif", "spike_ternary_conv2d_ste", "spike_ternary_linear_ste",
           "twin_loss", "kd_loss", "dml_loss", "MSE_REDUCTIONS"]
