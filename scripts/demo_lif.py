"""`make demo` (until the training layer lands): the fused LIF on a CIFAR spiking-VGG activation,
checked against the pure-torch reference and timed against it, on this machine's CPU."""

import time

import torch

import tna_kernels
from tna_kernels import functional as F
from tna_kernels import info, reference


def best_ms(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    torch.manual_seed(0)
    shape = (4, 16, 128, 32, 32)  # [T, B, C, H, W]: a first-block activation of a spiking VGG
    x = (torch.randn(shape) * 1.5 + 0.6).requires_grad_()
    grad = torch.randn(shape)
    print(f"tna_kernels {tna_kernels.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; LIF over {tuple(shape)}")

    spikes = F.lif(x, surrogate="atan")
    (gx,) = torch.autograd.grad(spikes, x, grad)
    ref_spikes, _, _ = reference.lif(x, torch.zeros(shape[1:]))
    (ref_gx,) = torch.autograd.grad(ref_spikes, x, grad)
    mismatched = (spikes != ref_spikes).float().mean().item()
    grad_err = (gx - ref_gx).abs().max().item()
    print(f"firing rate {spikes.mean().item():.3f}; spikes differing from reference: "
          f"{mismatched:.2e}; max |grad - reference grad|: {grad_err:.2e}")

    def fused():
        torch.autograd.grad(F.lif(x), x, grad)

    def ref():
        torch.autograd.grad(reference.lif(x, torch.zeros(shape[1:]))[0], x, grad)

    t_fused, t_ref = best_ms(fused), best_ms(ref)
    print(f"forward+backward: fused {t_fused:.1f} ms, reference torch loop {t_ref:.1f} ms "
          f"({t_ref / t_fused:.1f}x)")
    print()
    info.main()


if __name__ == "__main__":
    main()
