"""tna::lif_pack: inference LIF with bit-packed spikes out, against pack_spikes(lif(x)) and the
pure-torch reference."""

import pytest
import torch

from tna_kernels import functional as F
from tna_kernels import reference as R

NEURONS = [
    dict(),
    dict(v_reset=None),
    dict(decay_input=False, tau=3.0),
    dict(beta=0.8, v_reset=0.0),
    dict(v_reset=-0.5, v_threshold=0.7, tau=1.5),
    dict(v_reset=None, decay_input=False, v_threshold=0.5),
]


@pytest.mark.parametrize("neuron", NEURONS, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 1), (4, 5, 63), (3, 2, 4, 64), (2, 7, 65), (5, 2, 130)], ids=str)
def test_equals_lif_then_pack(neuron, shape):
    x = torch.randn(shape) * 1.5 + 0.5
    bits = F.lif_pack(x, **neuron)
    C = shape[-1]
    assert bits.dtype == torch.int64 and bits.shape == (*shape[:-1], (C + 63) // 64)
    assert torch.equal(bits, F.pack_spikes(F.lif(x, **neuron), dim=-1))
    assert torch.equal(F.unpack_spikes(bits, C), F.lif(x, **neuron))


def test_matches_reference_and_fires():
    x = torch.randn(6, 4, 100) + 0.8
    bits = F.lif_pack(x, tau=2.0, v_reset=0.0)
    spikes = F.unpack_spikes(bits, 100)
    ref, _, _ = R.lif(x, torch.zeros(x.shape[1:]), tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0)
    assert torch.equal(spikes, ref)
    assert 0 < spikes.mean() < 1


def test_training_only_arguments_are_accepted_and_inert():
    x = torch.randn(3, 4, 70)
    base = F.lif_pack(x)
    assert torch.equal(F.lif_pack(x, surrogate="sigmoid", alpha=4.0, detach_reset=True), base)


def test_non_contiguous_input_and_input_unchanged():
    x = torch.randn(4, 70, 6).transpose(1, 2)  # [T, 6, 70], channels not contiguous in memory
    before = x.clone()
    assert torch.equal(F.lif_pack(x), F.pack_spikes(F.lif(x), dim=-1))
    assert torch.equal(x, before)


@pytest.mark.parametrize("i", range(2))
def test_opcheck(i):
    x = torch.randn(3, 5, 70)
    args = [(x, 2.0, True, 1.0, 0.0, False), (x, 1.5, False, 0.5, 0.0, True)][i]
    torch.library.opcheck(torch.ops.tna.lif_pack.default, args)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: F.lif_pack(torch.randn(3, 4).double()), TypeError, "x_seq must be a float32"),
    (lambda: F.lif_pack(torch.randn(4)), ValueError, r"x_seq must be \[T, \.\.\., C\]"),
    (lambda: F.lif_pack(torch.randn(3, 4), tau=0.0), ValueError, "tau must be"),
    (lambda: F.lif_pack(torch.randn(3, 4), surrogate="nope"), ValueError, "surrogate must be"),
    (lambda: torch.ops.tna.lif_pack(torch.randn(3, 4), -1.0, True, 1.0, 0.0, False), RuntimeError, "tau must be"),
])
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
