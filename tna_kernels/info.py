"""``python -m tna_kernels.info``: which backend serves each tna:: op, plus versions, CPU ISA, GPU."""

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


def main() -> None:
    import tna_kernels

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


if __name__ == "__main__":
    main()
