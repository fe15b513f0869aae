import os
import shutil
import tempfile

# torch.compile tests get a fresh inductor cache per session: inductor's on-disk graph cache does not
# key on a custom op's fake, so a graph compiled before a change of this library (an op's output
# shape, say) would be reused with the old shapes baked in. Set before torch is imported.
_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="tna_inductor_")

import pytest  # noqa: E402
import torch  # noqa: E402

import tna_kernels  # noqa: E402, F401  (registers the tna:: ops)
from tna_kernels._utils import HAS_TRITON, triton_test_device  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

try:  # property-based tests (tests/test_properties.py); hypothesis is a dev dependency
    from hypothesis import HealthCheck, settings
except ImportError:
    pass
else:
    # "tna" (default): few examples, derandomized (the same examples on every run and machine), no
    # example database written into the tree. HYPOTHESIS_PROFILE=thorough: many random examples.
    settings.register_profile("tna", max_examples=25, deadline=None, derandomize=True, database=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("thorough", max_examples=1000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tna"))


def pytest_collection_modifyitems(config, items):
    """Triton tests need a GPU or the interpreter (a separate lane: TRITON_INTERPRET=1 must be set
    before triton is imported); gpu_path tests need the interpreter (they route the CPU dispatch to
    the Triton implementations); CUDA tests need a visible GPU."""
    skip_triton = pytest.mark.skip(reason="Triton lane: run with TRITON_INTERPRET=1 or on a GPU")
    skip_gpu_path = pytest.mark.skip(
        reason="gpu_path lane: needs Triton and TRITON_INTERPRET=1 (make test-gpu-path)" if HAS_TRITON
        else "gpu_path lane: Triton is not installed")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "triton" in item.keywords and not (INTERPRET or torch.cuda.is_available()):
            item.add_marker(skip_triton)
        if "gpu_path" in item.keywords and not (INTERPRET and HAS_TRITON):
            item.add_marker(skip_gpu_path)
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)



def triton_device() -> str:
    """Device for Triton-lane tests (see tna_kernels._utils.triton_test_device)."""
    return triton_test_device()


# Ternary kernel paths, shared by test_ternary.py and test_ternary_conv.py.
ISAS = ("scalar", "avx2", "avx512")


KERNELS = [(i, "popcount") for i in ISAS] + [("avx2", "event"), ("avx512", "event")]


@pytest.fixture(params=KERNELS, ids=lambda k: f"{k[0]}-{k[1]}")
def isa(request, monkeypatch):
    """Forces one kernel path: instruction set (TNA_TERNARY_ISA) x algorithm (TNA_TERNARY_ALGO,
    popcount or event-driven); skips the instruction sets this CPU lacks. Forcing never falls back."""
    isa, algo = request.param
    monkeypatch.setenv("TNA_TERNARY_ISA", isa)
    monkeypatch.setenv("TNA_TERNARY_ALGO", algo)
    try:
        got = torch.ops.tna.ternary_cpu_isa()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    assert got == isa
    return request.param


def pytest_sessionfinish(session, exitstatus):
    if _INDUCTOR_CACHE is not None:
        shutil.rmtree(_INDUCTOR_CACHE, ignore_errors=True)
