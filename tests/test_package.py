"""Package-level behaviour: loading the extension, the info report, the CPU/Triton backends."""

import json
import subprocess
import sys

import pytest
import torch

import tna_kernels
from tna_kernels import info


def test_mismatched_build_names_both_torch_versions(tmp_path):
    record = tmp_path / "_build_config.json"
    record.write_text(json.dumps({"torch": "1.0.0"}))
    with pytest.raises(ImportError) as err:
        tna_kernels._load_extension(record)
    assert "built for torch 1.0.0" in str(err.value)
    assert torch.__version__ in str(err.value) and "Rebuild" in str(err.value)


def test_info_lists_every_op_with_cpu_kernel_and_fake():
    rows = {name: (cpu, cuda, fake) for name, cpu, cuda, fake in info.op_table()}
    assert {"lif_fwd", "lif_bwd"} <= set(rows)
    for name, (cpu, _cuda, fake) in rows.items():
        if cpu == "composite":  # queries such as ternary_cpu_isa: no tensors, no fake needed
            continue
        assert cpu == "C++", name
        assert fake == "yes", name


def test_info_module_runs():
    out = subprocess.run([sys.executable, "-m", "tna_kernels.info"], capture_output=True, text=True,
                         check=True).stdout
    assert "torch" in out and "lif_fwd" in out and "ISA" in out


def test_import_without_triton_still_works():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, tna_kernels\n"
            "from tna_kernels import functional as F\n"
            "assert not tna_kernels._utils.HAS_TRITON\n"
            "print(F.lif(torch.ones(2, 3) * 3).sum().item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "6.0"
