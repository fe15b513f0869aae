"""Shared benchmark helpers: bounded pedantic runs and the extra_info every result carries."""


def run(benchmark, fn, *, provider, nbytes=None, flops=None, rounds=5, **info):
    """Times fn (warm-up once, then `rounds` single-call rounds) and tags the result so
    benchmarks/report.py can compute same-run ratios and achieved bandwidth."""
    benchmark.extra_info.update(provider=provider, **info)
    if nbytes is not None:
        benchmark.extra_info["bytes"] = int(nbytes)
    if flops is not None:
        benchmark.extra_info["flops"] = int(flops)
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
