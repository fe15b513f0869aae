"""One op of each family on an installed tna_kernels, checked against tna_kernels.reference:
what scripts/test_install.sh runs after a user-style `pip install .`. Exits non-zero on any
mismatch. Prints where the package and its native core were loaded from."""

import sys

import torch

import tna_kernels
from tna_kernels import functional as F
from tna_kernels import reference as R


def main() -> int:
    torch.manual_seed(0)
    print(f"tna_kernels from {tna_kernels.__file__}; native core {tna_kernels._C.__file__}; "
          f"torch {torch.__version__}")
    failures = []

    def check(name, ok):
        print(f"  {name:<22}{'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(name)

    # lif: forward spikes and the surrogate gradient against the reference's autograd
    x = (torch.randn(4, 3, 50) * 2).requires_grad_()
    s = F.lif(x)
    s.sum().backward()
    xr = x.detach().clone().requires_grad_()
    sr, _, _ = R.lif(xr, torch.zeros(3, 50))
    sr.sum().backward()
    check("lif fwd+bwd", torch.equal(s, sr) and torch.allclose(x.grad, xr.grad, atol=1e-6))

    # lif_pack: packed spikes equal packing the LIF's spikes
    xc = torch.randn(4, 2, 70) * 2
    check("lif_pack", torch.equal(F.lif_pack(xc), R.pack_spikes(R.lif(xc, torch.zeros(2, 70))[0])))

    # ternary: pack + spike x ternary linear, exact integers x scale
    w = torch.randn(16, 100)
    packed = F.quantize_pack(w)
    codes, scale = R.ternarize(w)
    spikes = (torch.rand(5, 100) < 0.3).float()
    y = F.spike_ternary_linear(F.pack_spikes(spikes), packed)
    check("spike_ternary_linear", torch.equal(y, R.spike_ternary_linear(spikes, codes, scale)))

    # spike_pool: max-pool of 0/1 spikes and its packed input
    sp = (torch.rand(2, 3, 8, 8) < 0.4).float()
    yp, bits = torch.ops.tna.spike_max_pool2d(sp, [2, 2], [2, 2], [0, 0], [1, 1], False)
    yr, br = R.spike_max_pool2d(sp, 2, 2, 0, 1, False)
    check("spike_max_pool2d", torch.equal(yp, yr) and torch.equal(bits, br))

    # twin_loss: fused loss against the unfused reference
    a, b = torch.randn(8, 10), torch.randn(8, 10)
    t = torch.randint(0, 10, (8,))
    loss = F.twin_loss(a, b, t)
    ref, _ = R.twin_loss(a, b, t)
    check("twin_loss", torch.allclose(loss, ref, rtol=1e-5, atol=1e-6))

    # batch_norm: training batch norm with torch's bits (the installed torch's rounding, probed at import)
    from tna_kernels.ops import batch_norm
    xb = torch.randn(6, 12, 5, 5) * 2 + 1
    want = torch.native_batch_norm(xb, None, None, None, None, True, 0.1, 1e-5)
    got = torch.ops.tna.batch_norm_forward(xb, None, None, None, None, 0.1, 1e-5)
    same = all(torch.equal(g, e) for g, e in zip(got, want, strict=True))
    check("batch_norm_forward", batch_norm.reproduces_torch() and same)

    print("smoke_ops:", "FAILED " + ", ".join(failures) if failures else "all families ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
