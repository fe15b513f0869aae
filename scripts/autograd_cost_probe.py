"""What torch's register_autograd wrapper costs per call, for the record of issue 15's "no slowdown"
question (docs/BENCHMARKS.md, "Native core against the libtorch build").

    python scripts/autograd_cost_probe.py [--calls 3000] [--rounds 3]

tna::twin_loss_fwd's schema is defined again in a scratch namespace (``tnaproto::``, this process
only) on the library's CPU kernel, with its autograd registered on the Autograd key as a
hand-written ``autograd.Function`` instead of through ``register_autograd``. The script checks that
both give the same gradients, then times forward + backward (one thread, C = 10, B = 256 and 1024)
of the library's op (register_autograd), the prototype and the public ``F.twin_loss``: medians of
per-round medians. Not a library path: the library keeps one autograd per op, register_autograd's."""

import argparse
import statistics
import time

import torch

from tna_kernels import functional as F
from tna_kernels.ops import twin_loss as TL

SCHEMA = ("twin_loss_fwd(Tensor logits_base, Tensor logits_twin, Tensor target, float ce_weight_base, "
          "float ce_weight_twin, float mse_weight, int mse_reduction, float label_smoothing, int ignore_index, "
          "bool need_grad_base, bool need_grad_twin) -> (Tensor, Tensor, Tensor, Tensor)")
SCALARS = (1.0, 1.0, 0.005, 1, 0.0, -100, True, True)


def register_prototype():
    """tnaproto::twin_loss_fwd: the CPU kernel, and a hand-written autograd on the Autograd key."""
    lib = torch.library.Library("tnaproto", "DEF")
    lib.define(SCHEMA)
    lib.impl("twin_loss_fwd", TL._twin_loss_fwd_cpu, "CPU")
    op = torch.ops.tnaproto.twin_loss_fwd.default
    below = torch._C._after_autograd_keyset

    class TwinLossFwd(torch.autograd.Function):
        @staticmethod
        def forward(ctx, keyset, *args):
            with torch._C._AutoDispatchBelowAutograd():
                out = op.redispatch(keyset & below, *args)
            ctx.mark_non_differentiable(*out[1:])
            ctx.set_materialize_grads(False)
            ctx.save_for_backward(out[2], out[3])
            ctx.need = (args[9], args[10])
            return out

        @staticmethod
        def backward(ctx, grad_loss, *_):
            grad_base, grad_twin = ctx.saved_tensors
            if not TL._is_plain_one(grad_loss):
                grad_base, grad_twin = torch.ops.tna.twin_loss_bwd(grad_loss, grad_base, grad_twin)
            return (None, grad_base if ctx.need[0] else None, grad_twin if ctx.need[1] else None) + (None,) * 9

    def autograd_kernel(keyset, *args):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return TwinLossFwd.apply(keyset, *args)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & below, *args)

    lib.impl("twin_loss_fwd", autograd_kernel, "Autograd", with_keyset=True)
    return lib


def median_us(fn, calls: int, warmup: int = 300) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lib = register_prototype()  # noqa: F841 (kept alive: the registration lasts as long as lib)
    for B in (256, 1024):
        a = torch.randn(B, 10, requires_grad=True)
        b = torch.randn(B, 10, requires_grad=True)
        y = torch.randint(0, 10, (B,))

        def library_op():
            torch.ops.tna.twin_loss_fwd(a, b, y, *SCALARS)[0].backward()

        def prototype():
            torch.ops.tnaproto.twin_loss_fwd(a, b, y, *SCALARS)[0].backward()

        def public():
            F.twin_loss(a, b, y).backward()

        grads = []
        for fn in (library_op, prototype):
            a.grad = b.grad = None
            fn()
            grads.append((a.grad, b.grad))
        if not all(torch.equal(g, h) for g, h in zip(*grads, strict=True)):
            raise SystemExit("the prototype's gradients differ from the library op's")
        rounds = [[median_us(fn, args.calls) for fn in (library_op, prototype, public)] for _ in range(args.rounds)]
        lib_us, proto_us, public_us = (statistics.median(r[i] for r in rounds) for i in range(3))
        print(f"B={B}, C=10, forward + backward, one thread: op with register_autograd {lib_us:.1f} µs, "
              f"hand-written Autograd-key kernel {proto_us:.1f} µs, public F.twin_loss {public_us:.1f} µs")


if __name__ == "__main__":
    main()
