"""torch.library.opcheck of every tna:: op of the ternary family on small CPU samples: schema,
fake (meta) kernel against the CPU kernel, autograd registration and, where an autograd formula
exists (ternary_linear, ternary_conv2d), the backward through AOT dispatch."""

import pytest
import torch

from tna_kernels import functional as F

OPS = torch.ops.tna


def _codes(*shape):
    return torch.randint(-1, 2, shape, dtype=torch.int8)


def _spikes(*shape, density=0.3):
    return (torch.rand(shape) < density).float()


def _samples():
    lin = F.pack_ternary(_codes(5, 70), scale=torch.rand(5) + 0.1, bias=torch.randn(5))
    conv = F.pack_ternary(_codes(4, 6, 3, 3), scale=torch.rand(4) + 0.1, bias=torch.randn(4))
    x = torch.randn(3, 70)
    xg = torch.randn(2, 3, 70, requires_grad=True)
    xc = torch.randn(2, 6, 7, 5)
    xcg = torch.randn(2, 6, 7, 5, requires_grad=True)
    bits = F.pack_spikes(_spikes(4, 70))
    cbits = F.pack_spikes(_spikes(4, 6, 7, 5), dim=1)  # [T*B = 4, 7, 5, 1]
    geo = ([1, 1], [1, 1], [1, 1])
    return {
        "pack_ternary": [(_codes(3, 4, 70),)],
        "unpack_ternary": [(lin.words, 70, 1)],
        "pack_spikes": [(_spikes(3, 70),), (_spikes(2, 70, 3, 2), 1), (_spikes(5, 9).to(torch.uint8), 0)],
        "unpack_spikes": [(bits, 70)],
        "ternarize": [(torch.randn(5, 70), "twn", True, True), (torch.randn(4, 6, 3, 3), "absmean", False, False)],
        "ternary_linear": [(x, lin.words, lin.scale, lin.bias, 1), (xg, lin.words, lin.scale, lin.bias, 1),
                           (torch.randn(20, 70, dtype=torch.float64), lin.words, lin.scale, None, 1)],
        "ternary_linear_grad_input": [(torch.randn(3, 5), lin.words, lin.scale, 70, 1)],
        "spike_ternary_linear": [(bits, lin.words, lin.scale, lin.bias, 70, 1),
                                 (bits, lin.words, lin.scale, None, 70, 1, OPS.ternary_kmajor(lin.words, 70, 1))],
        "ternary_conv2d": [(xc, conv.words, conv.scale, conv.bias, *geo, 1),
                           (xcg, conv.words, conv.scale, conv.bias, [2, 1], [0, 1], [1, 1], 1)],
        "ternary_conv2d_grad_input": [(torch.randn(2, 4, 7, 5), conv.words, conv.scale, [2, 6, 7, 5], *geo, 1)],
        "spike_ternary_conv2d": [(cbits, conv.words, conv.scale, conv.bias, 6, *geo, 1),
                                 (cbits, conv.words, conv.scale, None, 6, [2, 2], [0, 0], [1, 1], 1,
                                  OPS.ternary_kmajor(conv.words, 6, 1))],
        "spike_ternary_conv2d_lif": [(cbits, conv.words, conv.scale, conv.bias, 6, *geo, 1, 2, 2.0, True, 0.5,
                                      0.0, False)],
        "ternary_kmajor": [(lin.words, 70, 1), (conv.words, 6, 1)],
        "ternary_cpu_isa": [()],
    }


SAMPLES = _samples()


def test_every_op_of_the_family_has_samples():
    ternary_ops = {"pack_ternary", "unpack_ternary", "pack_spikes", "unpack_spikes", "ternarize", "ternary_linear",
                   "ternary_linear_grad_input", "spike_ternary_linear", "ternary_conv2d",
                   "ternary_conv2d_grad_input", "spike_ternary_conv2d", "spike_ternary_conv2d_lif",
                   "ternary_kmajor", "ternary_cpu_isa"}
    assert set(SAMPLES) == ternary_ops


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_opcheck(name):
    if name == "spike_ternary_conv2d_lif" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "tna::lif_pack", "CPU"):
        pytest.skip("tna::lif_pack has no CPU kernel in this build (LIF family not loaded)")
    op = getattr(OPS, name)
    # a str result cannot go through the AOT-dispatch comparison (opcheck compares tensors)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor") if name == "ternary_cpu_isa" \
        else torch.library._OPCHECK_DEFAULT_UTILS
    for args in SAMPLES[name]:
        torch.library.opcheck(op, args, test_utils=utils)


def test_cpu_kernels_are_the_native_core():
    # The ops of this family run tna_kernels._C on CPU tensors (Python registrations), not _C_legacy.
    from tna_kernels.ops import ternary

    for name in SAMPLES:
        if name == "ternary_cpu_isa":
            continue
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tna::{name}", "CPU")
    assert ternary.C.TERNARY_FORMAT_VERSION == ternary.FORMAT_VERSION
    assert OPS.ternary_cpu_isa() == ternary.C.ternary_cpu_isa()
