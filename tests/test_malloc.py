"""tna_kernels.malloc: the opt-in glibc settings keep freed memory in the process. Each check runs
in a fresh interpreter: the settings are process-wide and cannot be undone."""

import platform
import subprocess
import sys
import textwrap

import pytest

from tna_kernels import malloc

# A training step's allocation pattern: buffers of 4-40 MiB allocated, written and freed, six
# times; prints the minor page faults of steps 3-6 (what each step pays again when its memory went
# back to the system).
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from tna_kernels import malloc
    tuned = malloc.tune_malloc() if sys.argv[1] == "tuned" else None
    sizes = [(mib << 20) // 4 for mib in (40, 16, 33, 8, 4, 16)]
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ts = [torch.ones(n) for n in sizes]
        del ts
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(tuned, malloc.malloc_tuning() is not None, sum(faults[2:]))
""")


def probe(mode: str) -> tuple[str, str, int]:
    tuned, state, faults = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                                          check=True).stdout.split()
    return tuned, state, int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                    reason="glibc only")
def test_tuned_process_reuses_freed_memory_without_page_faults():
    tuned, state, faults = probe("tuned")
    assert tuned == "True" and state == "True"
    _, default_state, default_faults = probe("default")
    assert default_state == "False"
    if default_faults < 16384:  # e.g. transparent huge pages for every allocation: nothing to compare
        pytest.skip(f"glibc's defaults fault only {default_faults} times here")
    assert faults * 4 < default_faults, (faults, default_faults)


@pytest.mark.parametrize("kwargs,match", [({"mmap_threshold": -1}, "mmap_threshold must be"),
                                          ({"trim_threshold": 1.5}, "trim_threshold must be"),
                                          ({"mmap_threshold": True}, "mmap_threshold must be")])
def test_bad_thresholds_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        malloc.tune_malloc(**kwargs)


def test_importing_the_library_changes_nothing():
    out = subprocess.run([sys.executable, "-c", "import tna_kernels, tna_kernels.train; "
                          "from tna_kernels import malloc; print(malloc.malloc_tuning())"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"
