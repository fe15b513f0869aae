"""``python -m tna_kernels.info``: which backend serves each tna:: op, plus versions, CPU ISA, GPU;
with ``--train-paths ARCH``, which training path (spike or dense) ``train_path="auto"`` picks for
each spike-input conv of a spiking VGG on this machine, with the measured times."""

import platform

import torch

from . import ops
from ._utils import HAS_TRITON, has_fake, is_composite, kernel_keys


def _cpu_isa() -> str:
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.machine()
    wanted = ("sse4_2", "avx", "avx2", "fma", "bmi2", "popcnt", "avx512f", "avx512_vpopcntdq")
    return " ".join(f for f in wanted if f in flags) or platform.machine()


def op_table() -> list[tuple[str, str, str, str]]:
    rows = []
    names = sorted({n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                    if n.startswith("tna::")})
    for name in names:
        qual = f"tna::{name}"
        if is_composite(qual):
            rows.append((name, "composite", "composite", "n/a"))
            continue
        keys = kernel_keys(qual)
        cpu = "C++" if "CPU" in keys else "-"
        cuda = ops.CUDA_BACKENDS.get(name, "CUDA C++" if "CUDA" in keys else "-")
        rows.append((name, cpu, cuda, "yes" if has_fake(qual) else "no"))
    return rows


def train_path_table(arch: str, batch: int, T: int = 4) -> list[str]:
    """Runs two forward + backward passes of a spiking VGG ``arch`` in training mode on random 32×32
    images (batch ``batch``, ``T`` steps) and returns one line per spike-input ternary conv: the training path
    ``train_path="auto"`` chose on this machine, the input's spike density and the two paths' measured
    forward + weight- and input-gradient times."""
    from .models import SpikingVGG
    from .nn import train_paths
    from .ops import spike_train

    torch.manual_seed(0)
    model = SpikingVGG(arch, T=T)
    spike_train.PATH_CHOICES.clear()
    spike_train.PATH_TIMES.clear()
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        model(torch.randn(batch, 3, 32, 32)).square().mean().backward()
    chosen = train_paths(model)
    lines = [f"training paths of SpikingVGG({arch!r}), batch {batch}, T={T}, {torch.get_num_threads()} thread(s) "
             f"(train_path='auto'): {chosen}"]
    for key, path in spike_train.PATH_CHOICES.items():
        x_shape, w_shape, *_, band = key
        t_spike, t_dense = spike_train.PATH_TIMES[key]
        lines.append(f"  input {list(x_shape)} weight {list(w_shape)} density <= {band}: {path} "
                     f"(spike {t_spike * 1e3:.1f} ms, dense {t_dense * 1e3:.1f} ms: forward + both gradients)")
    return lines


def main(argv: list[str] | None = None) -> None:
    import argparse

    import tna_kernels

    ap = argparse.ArgumentParser(prog="python -m tna_kernels.info", description=__doc__)
    ap.add_argument("--train-paths", metavar="ARCH", help="also measure which training path train_path='auto' "
                    "picks for each spike-input conv of SpikingVGG(ARCH) (tiny, small, medium, vgg11) here")
    ap.add_argument("--batch", type=int, default=32, help="batch for --train-paths (default 32)")
    args = ap.parse_args([] if argv is None else argv)  # called from code: no command line to read

    print(f"tna_kernels {tna_kernels.__version__}")
    print(f"torch       {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    if HAS_TRITON:
        import triton

        print(f"triton      {triton.__version__}")
    else:
        print("triton      not installed (no GPU kernels)")
    print(f"CPU         {platform.processor() or platform.machine()}; ISA: {_cpu_isa()}; "
          f"threads: {torch.get_num_threads()}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    print(f"GPU         {gpu}")
    print()
    rows = op_table()
    width = max(len("CUDA"), *(len(cuda) for _, _, cuda, _ in rows)) + 2  # labels such as "torch + triton ..."
    print(f"{'op':<28}{'CPU':<11}{'CUDA':<{width}}fake")
    for name, cpu, cuda, fake in rows:
        print(f"{name:<28}{cpu:<11}{cuda:<{width}}{fake}")
    from .nn import bn_lif

    print(f"\nBN + LIF layers on CUDA: {'the fused Triton pair' if bn_lif.CUDA_FUSED else 'unfused'} "
          f"(TNA_BN_LIF_CUDA_FUSED={int(bn_lif.CUDA_FUSED)}); on the CPU the fused pair for channels-last inputs")
    if args.train_paths:
        print()
        print("\n".join(train_path_table(args.train_paths, args.batch)))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
