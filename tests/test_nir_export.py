"""NIR export: the graph written by `tna export --format nir`, read back with nir.read and run by a
small reference simulator, reproduces the model's eval-mode logits."""

import numpy as np
import pytest
import torch
from torch import nn

from tna_kernels.models import SpikingVGG
from tna_kernels.train.nir_export import export_nir, to_nir

nir = pytest.importorskip("nir")


def simulate(graph, image: torch.Tensor, T: int) -> torch.Tensor:
    """Runs a feed-forward NIR graph for T steps (Euler, dt = 1) on a held static input."""
    order, nxt = ["input"], dict(graph.edges)
    while order[-1] != "output":
        order.append(nxt[order[-1]])
    state, total = {}, 0
    for _ in range(T):
        x = image
        for name in order[1:-1]:
            node = graph.nodes[name]
            if isinstance(node, nir.Conv2d):
                x = nn.functional.conv2d(x, torch.from_numpy(node.weight), torch.from_numpy(node.bias),
                                         tuple(node.stride), tuple(node.padding), tuple(node.dilation))
            elif isinstance(node, nir.LIF):
                tau, r, leak, thr, reset = (torch.from_numpy(np.asarray(a)) for a in
                                            (node.tau, node.r, node.v_leak, node.v_threshold, node.v_reset))
                v = state.get(name, reset.expand_as(x).clone())
                h = v + ((leak - v) + r * x) / tau
                x = (h >= thr).float()
                state[name] = torch.where(x > 0, reset, h)
            elif isinstance(node, nir.SumPool2d):
                k = tuple(int(v) for v in node.kernel_size)
                x = nn.functional.avg_pool2d(x, k, tuple(int(v) for v in node.stride)) * (k[0] * k[1])
            elif isinstance(node, nir.Threshold):
                x = (x - torch.from_numpy(np.asarray(node.threshold)) >= 0).float()
            elif isinstance(node, nir.Flatten):
                x = x.flatten(1)
            elif isinstance(node, nir.Affine):
                x = x @ torch.from_numpy(node.weight).T + torch.from_numpy(node.bias)
        total = total + x
    return total / T


def test_nir_round_trip_reproduces_the_model(tmp_path):
    torch.manual_seed(0)
    model = SpikingVGG("tiny", T=3, neuron={"tau": 1.5})
    x = torch.randn(4, 3, 32, 32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    path = export_nir(model, tmp_path / "model.nir")
    graph = nir.read(path)
    assert {type(n).__name__ for n in graph.nodes.values()} >= {"Conv2d", "LIF", "SumPool2d", "Threshold", "Affine"}
    written = to_nir(model)
    for name, node in written.nodes.items():
        if isinstance(node, nir.Conv2d):
            np.testing.assert_array_equal(graph.nodes[name].weight, node.weight)
    with torch.no_grad():
        want = model(x)
    got = simulate(graph, x, T=3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_soft_reset_is_refused():
    with pytest.raises(ValueError, match="soft-reset"):
        to_nir(SpikingVGG("tiny", neuron={"v_reset": None}))
