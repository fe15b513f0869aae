"""scripts/gpu_accounting.py: one TNA step of the GPU recipe on fake tensors, its CUDA kernels
recorded instead of launched. Checks the counts the docs quote against the network's structure."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("triton")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_accounting.py"
spec = importlib.util.spec_from_file_location("gpu_accounting", SCRIPT)
acc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(acc)


@pytest.fixture(scope="module")
def step():
    return acc.summarize(acc.tna_step(SCRIPT.parents[1] / "configs" / "cifar10_vgg11_tna.yaml", batch=16))


def test_counts_follow_the_network(step):
    ops, kinds = step["ops"], step["kinds"]
    # VGG-11: 8 conv layers with BN + LIF, in base and twin: one forward and one recompute backward
    # kernel each (on a GPU the backward is not sliced), and one spike pool + backward per pool layer
    assert ops["_lif_fwd_kernel"]["launches"] == 16
    assert ops["_lif_bwd_recompute_kernel"]["launches"] == 16
    assert "_lif_bwd_kernel" not in ops  # no h saved or reloaded
    assert ops["aten::max_pool2d_with_indices_backward (in our ops)"]["calls"] == ops["aten::max_pool2d (in our ops)"][
        "calls"]
    assert ops["_twin_loss_fwd_kernel"]["launches"] == 1
    assert sum(k["syncs"] for k in kinds.values()) == 1  # the trainer's one copy to the host per step
    assert all(k["bytes"] > 0 and k["launches"] > 0 for k in kinds.values())


def test_markdown_block_is_replaced(tmp_path, step):
    doc = tmp_path / "GPU.md"
    doc.write_text("intro\n<!-- gpu-accounting:begin -->\nold\n<!-- gpu-accounting:end -->\noutro\n")
    acc.main(["--batch", "16", "--markdown", str(doc)])
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| step |" in text and "_lif_bwd_recompute_kernel" in text
    doc.write_text("no markers")
    with pytest.raises(SystemExit):
        acc.main(["--batch", "16", "--markdown", str(doc)])


def test_the_step_leaves_the_library_as_it_was(step):
    from tna_kernels import _utils
    from tna_kernels.triton import lif

    assert _utils.chunk_elems(None) == _utils.CHUNK_ELEMS  # the GPU slice sizes were only borrowed
    assert type(lif._lif_fwd_kernel).__name__ != "_KernelRecorder"
