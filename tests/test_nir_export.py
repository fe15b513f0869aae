"""NIR export: the graph written by `tna export --format nir`, read back with nir.read and run by a
small reference simulator, reproduces the model's eval-mode spikes and logits."""

from collections import defaultdict
from graphlib import TopologicalSorter

import numpy as np
import pytest
import torch
from torch import nn

from tna_kernels.models import SpikingResNet, SpikingVGG
from tna_kernels.nn.lif import LIF
from tna_kernels.nn.spiking import SeqToANN
from tna_kernels.train.nir_export import export_nir, to_nir

nir = pytest.importorskip("nir")


def simulate(graph, image: torch.Tensor, T: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Runs a feed-forward NIR graph for T steps (Euler, dt = 1) on a held static input. A node that
    several edges enter gets the sum of their outputs (NIR's semantics, how residual adds are
    written). Returns the time average of the output and each LIF node's spikes ``[T, B, ...]``."""
    preds = defaultdict(list)
    for src, dst in graph.edges:
        preds[dst].append(src)
    order = list(TopologicalSorter({name: preds[name] for name in graph.nodes}).static_order())
    state, spikes, total = {}, defaultdict(list), 0
    for _ in range(T):
        out = {}
        for name in order:
            node = graph.nodes[name]
            x = image if isinstance(node, nir.Input) else sum(out[p] for p in preds[name])
            if isinstance(node, nir.Conv2d):
                x = nn.functional.conv2d(x, torch.from_numpy(node.weight), torch.from_numpy(node.bias),
                                         tuple(node.stride), tuple(node.padding), tuple(node.dilation), node.groups)
            elif isinstance(node, nir.LIF):
                tau, r, leak, thr, reset = (torch.from_numpy(np.asarray(a)) for a in
                                            (node.tau, node.r, node.v_leak, node.v_threshold, node.v_reset))
                v = state.get(name, reset.expand_as(x).clone())
                h = v + ((leak - v) + r * x) / tau
                x = (h >= thr).float()
                state[name] = torch.where(x > 0, reset, h)
                spikes[name].append(x)
            elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
                k = tuple(int(v) for v in node.kernel_size)
                x = nn.functional.avg_pool2d(x, k, tuple(int(v) for v in node.stride),
                                             tuple(int(v) for v in node.padding))
                x = x * (k[0] * k[1]) if isinstance(node, nir.SumPool2d) else x
            elif isinstance(node, nir.Threshold):
                x = (x - torch.from_numpy(np.asarray(node.threshold)) >= 0).float()
            elif isinstance(node, nir.Flatten):
                x = x.flatten(1)
            elif isinstance(node, nir.Affine):
                x = x @ torch.from_numpy(node.weight).T + torch.from_numpy(node.bias)
            elif not isinstance(node, (nir.Input, nir.Output)):
                raise NotImplementedError(type(node).__name__)
            out[name] = x
        total = total + out["output"]
    return total / T, {name: torch.stack(s) for name, s in spikes.items()}


def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` in eval mode with batch-norm statistics measured on ``x`` (not the init 0/1)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def model_spikes(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eval logits and every LIF module's spikes, keyed by module path with "." → "_"."""
    spikes, hooks = {}, []
    for path, m in model.named_modules():
        if isinstance(m, LIF):
            key = path.replace(".", "_")
            hooks.append(m.register_forward_hook(lambda _m, _i, out, key=key: spikes.__setitem__(key, out)))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return logits, spikes


def test_nir_round_trip_reproduces_the_model(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    model = calibrated(SpikingVGG("tiny", T=3, neuron={"tau": 1.5}), x)
    path = export_nir(model, tmp_path / "model.nir")
    graph = nir.read(path)
    assert {type(n).__name__ for n in graph.nodes.values()} >= {"Conv2d", "LIF", "SumPool2d", "Threshold", "Affine"}
    written = to_nir(model)
    for name, node in written.nodes.items():
        if isinstance(node, nir.Conv2d):
            np.testing.assert_array_equal(graph.nodes[name].weight, node.weight)
    with torch.no_grad():
        want = model(x)
    got, _ = simulate(graph, x, T=3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_soft_reset_is_refused():
    with pytest.raises(ValueError, match="features.0: .*soft-reset"):
        to_nir(SpikingVGG("tiny", neuron={"v_reset": None}))
    with pytest.raises(ValueError, match="stem.neuron: .*soft-reset"):
        to_nir(SpikingResNet("resnet_tiny", neuron={"v_reset": None}))


def expected_resnet_edges(model: SpikingResNet) -> set[tuple[str, str]]:
    edges, prev = {("input", "stem"), ("stem", "stem_neuron")}, "stem_neuron"
    for i, block in enumerate(model.blocks):
        b = f"blocks_{i}"
        edges |= {(prev, f"{b}_conv1"), (f"{b}_conv1", f"{b}_conv1_neuron"), (f"{b}_conv1_neuron", f"{b}_conv2"),
                  (f"{b}_conv2", f"{b}_neuron")}
        if block.shortcut is None:
            edges.add((prev, f"{b}_neuron"))
        else:
            edges |= {(prev, f"{b}_shortcut"), (f"{b}_shortcut", f"{b}_neuron")}
        prev = f"{b}_neuron"
    return edges | {(prev, "pool"), ("pool", "flatten"), ("flatten", "readout"), ("readout", "output")}


def folded(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv layer's eval weight and bias with batch norm folded, from the module's own API."""
    w = layer.ternary_weight() if layer.ternary else layer.weight
    b = layer.bias if layer.bias is not None else torch.zeros(layer.out_channels)
    if layer.bn is not None:
        a = layer.bn.weight / torch.sqrt(layer.bn.running_var + layer.bn.eps)
        w, b = w * a.view(-1, 1, 1, 1), (b - layer.bn.running_mean) * a + layer.bn.bias
    return w.detach(), b.detach()


RESNETS = {
    "tiny": dict(arch="resnet_tiny"),
    "tiny-no-bn": dict(arch="resnet_tiny", bn=False, first_layer_fp=False, last_layer_fp=True,
                       neuron={"tau": 1.5, "decay_input": False, "v_threshold": 0.5}),
    "resnet20-narrow": dict(arch="resnet20", width_mult=0.25, neuron={"tau": 1.5}),
    "resnet19-narrow": dict(arch="resnet19", width_mult=1 / 16, neuron={"tau": 1.5, "v_reset": -0.25}),
}


@pytest.mark.parametrize("kind", sorted(RESNETS))
def test_resnet_round_trip_reproduces_the_model(tmp_path, kind):
    torch.manual_seed(0)
    T, x = 3, torch.randn(4, 3, 16, 16)
    model = calibrated(SpikingResNet(**RESNETS[kind], T=T, input_size=16), x)
    graph = nir.read(export_nir(model, tmp_path / "model.nir"))

    # Structure: every block is conv1 → LIF → conv2 → LIF, with the shortcut entering the same LIF.
    assert set(map(tuple, graph.edges)) == expected_resnet_edges(model)
    assert len(graph.edges) == len(expected_resnet_edges(model))
    n_down = sum(b.shortcut is not None for b in model.blocks)
    assert 0 < n_down < len(model.blocks)  # both identity and downsampling shortcuts are exercised
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert kinds.count("Conv2d") == 1 + 2 * len(model.blocks) + n_down
    assert kinds.count("LIF") == 1 + 2 * len(model.blocks)

    # Parameters: folded convs, exact LIF dynamics, whole-map average pool, readout.
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Conv2d):
            layer = model.get_submodule(name.replace("_", "."))
            w, b = folded(layer)
            torch.testing.assert_close(torch.from_numpy(node.weight), w, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(torch.from_numpy(node.bias), b, rtol=1e-5, atol=1e-5)
            assert tuple(node.stride) == layer.stride and tuple(node.padding) == layer.padding
        elif isinstance(node, nir.LIF):
            kw = model.get_submodule(name.replace("_", ".")).kwargs
            tau = kw["tau"] or 2.0
            np.testing.assert_array_equal(node.tau, tau)
            np.testing.assert_array_equal(node.r, 1.0 if kw["decay_input"] in (None, True) else tau)
            np.testing.assert_array_equal(node.v_threshold, kw["v_threshold"])
            np.testing.assert_array_equal(node.v_reset, kw["v_reset"])
            np.testing.assert_array_equal(node.v_leak, kw["v_reset"])
    final = graph.nodes[f"blocks_{len(model.blocks) - 1}_neuron"]
    np.testing.assert_array_equal(graph.nodes["pool"].kernel_size, final.tau.shape[1:])
    head = model.classifier
    w = head.ternary_weight() if hasattr(head, "ternary_weight") else head.weight
    np.testing.assert_array_equal(graph.nodes["readout"].weight, w.detach().numpy())

    # Dynamics: identical spikes in every LIF, logits within float tolerance.
    want, want_spikes = model_spikes(model, x)
    got, got_spikes = simulate(graph, x, T)
    assert set(got_spikes) == set(want_spikes)
    for name, s in want_spikes.items():
        assert 0 < s.mean() < 1, f"{name} is silent or saturated: the check would be vacuous"
        assert torch.equal(got_spikes[name], s), f"{name}: {(got_spikes[name] != s).sum()} spikes differ"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_unsupported_modules_are_named():
    model = SpikingResNet("resnet_tiny", input_size=16)
    model.pool = SeqToANN(nn.AdaptiveMaxPool2d(1))
    with pytest.raises(ValueError, match=r"^pool \(SeqToANN\) has no NIR mapping"):
        to_nir(model)
    model.blocks[1] = nn.Identity()
    with pytest.raises(ValueError, match=r"^blocks\.1 \(Identity\) has no NIR mapping"):
        to_nir(model)
    model.blocks[0].conv2 = nn.Conv2d(16, 16, 3, padding=1)
    with pytest.raises(ValueError, match=r"^blocks\.0\.conv2 \(Conv2d\) has no NIR mapping"):
        to_nir(model)
    with pytest.raises(ValueError, match="VGG and ResNet.*got Sequential"):
        to_nir(nn.Sequential(nn.Linear(2, 2)))
