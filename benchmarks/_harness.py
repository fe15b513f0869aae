"""Shared benchmark helpers: bounded pedantic runs and the extra_info every result carries."""


def run(benchmark, fn, *, provider, nbytes=None, flops=None, rounds=5, warmup=3, **info):
    """Times fn (`warmup` untimed calls, then `rounds` single-call rounds) and tags the result so
    benchmarks/report.py can compute same-run ratios and achieved bandwidth. Three warm-up calls:
    a LIF forward + backward on a CIFAR activation took 330-410 ms, then 24-82, then 11-19 ms
    before settling at ~10.5 ms, while glibc's heap reached the size that the step's freed outputs
    and gradients refill."""
    benchmark.extra_info.update(provider=provider, **info)
    if nbytes is not None:
        benchmark.extra_info["bytes"] = int(nbytes)
    if flops is not None:
        benchmark.extra_info["flops"] = int(flops)
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
