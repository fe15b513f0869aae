"""Per-layer activity, operation counts, an energy estimate and storage of a spiking network.

Counting rules (per inference of one sample, all T steps):
- a layer whose input is spikes does accumulate-only synaptic operations:
  SynOps = dense MACs per step × T × input firing rate;
- a layer with float input (the first layer under direct encoding) does MACs; with a static image
  it runs once, not T times (the same current feeds every step);
- energy uses 45 nm CMOS figures (Horowitz, "Computing's energy problem", ISSCC 2014): a 32-bit
  float multiply-accumulate 4.6 pJ (3.7 mult + 0.9 add), a 32-bit float add 0.9 pJ — the figures
  commonly used in SNN papers. Memory access energy is not modelled.
- storage: float32 = 4 bytes per weight; packed ternary = 2 bits per weight + a float32 scale per
  output channel (+ float32 bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .nn.spiking import TernaryLIFConv2d, TernaryLIFLinear
from .nn.ternary import TernaryConv2d, TernaryLinear

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


@dataclass
class LayerReport:
    name: str
    kind: str
    ternary: bool
    input_is_spikes: bool
    input_rate: float  # mean of the input (the firing rate when the input is spikes)
    output_rate: float | None  # firing rate of the layer's neurons (None: no neuron)
    dense_macs: int  # per sample, summed over the steps it runs
    synops: float
    macs: float
    weight_bytes_fp32: int
    weight_bytes_packed: int


def _dense_macs(module: nn.Module, x: Tensor, out: Tensor) -> int:
    """Dense multiply-accumulates of one call. A spiking layer fed a static input computes its
    affine map once and repeats the result over T, so only one step of its output counts."""
    per_output = module.weight[0].numel()  # in_channels·kh·kw, or in_features
    sample_dims = 3 if isinstance(module, nn.Conv2d) else 1
    static = isinstance(module, (TernaryLIFConv2d, TernaryLIFLinear)) and x.dim() == sample_dims + 1
    return int(out[0].numel() if static else out.numel()) * per_output


def _storage(module: nn.Module, ternary: bool) -> tuple[int, int]:
    n, out_ch = module.weight.numel(), module.weight.shape[0]
    extra = 4 * out_ch if module.bias is not None else 0
    fp32 = 4 * n + extra
    packed = ((n + 3) // 4 + 4 * out_ch + extra) if ternary else fp32
    return fp32, packed


@torch.no_grad()
def report(model: nn.Module, sample: Tensor) -> list[LayerReport]:
    """Runs ``model`` once on ``sample`` (eval mode, one or more samples) and reports every
    conv/linear layer. Counts are per sample."""
    kinds = (TernaryConv2d, TernaryLinear, nn.Conv2d, nn.Linear)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    stats: dict[str, dict] = {}
    hooks = []
    batch = sample.shape[1] if sample.dim() == 5 else sample.shape[0]

    def affine_hook(name, module):
        def hook(_m, args, out):
            x = args[0]
            s = stats.setdefault(name, {})
            for key in ("macs", "synops", "float_macs"):
                s.setdefault(key, 0.0)
            spikes = bool(((x == 0) | (x == 1)).all())
            macs = _dense_macs(module, x, out) / batch  # per sample
            s["macs"] += macs
            rate = x.float().mean().item()
            s["rate"] = rate
            s["spikes"] = spikes
            if spikes:
                s["synops"] += macs * rate
            else:
                s["float_macs"] += macs
        return hook

    for name, m in layers:
        hooks.append(m.register_forward_hook(affine_hook(name, m)))
        if isinstance(m, (TernaryLIFConv2d, TernaryLIFLinear)) and m.neuron is not None:
            hooks.append(m.neuron.register_forward_hook(
                lambda _m, _a, out, name=name: stats.setdefault(name, {}).__setitem__(
                    "out_rate", out.float().mean().item())))
    was_training = model.training
    model.eval()
    try:
        model(sample)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    rows = []
    for name, m in layers:
        s = stats.get(name)
        if s is None or "macs" not in s:
            continue
        ternary = bool(getattr(m, "ternary", isinstance(m, (TernaryConv2d, TernaryLinear))))
        fp32, packed = _storage(m, ternary)
        kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
        rows.append(LayerReport(name, kind, ternary, s["spikes"], s["rate"], s.get("out_rate"),
                                int(s["macs"]), s["synops"], s["float_macs"], fp32, packed))
    return rows


def summarize(rows: list[LayerReport]) -> dict:
    synops = sum(r.synops for r in rows)
    macs = sum(r.macs for r in rows)
    fp32 = sum(r.weight_bytes_fp32 for r in rows)
    packed = sum(r.weight_bytes_packed for r in rows)
    return {"synops": synops, "macs": macs, "energy_uj": (synops * E_AC_PJ + macs * E_MAC_PJ) * 1e-6,
            "weight_bytes_fp32": fp32, "weight_bytes_packed": packed,
            "compression": fp32 / packed if packed else float("nan")}


def format_report(rows: list[LayerReport]) -> str:
    lines = [f"{'layer':<22}{'kind':<7}{'tern':<6}{'in rate':>9}{'out rate':>10}{'SynOps':>13}{'MACs':>13}"
             f"{'fp32 B':>11}{'packed B':>10}"]
    for r in rows:
        out_rate = "-" if r.output_rate is None else f"{r.output_rate:.3f}"
        lines.append(f"{r.name:<22}{r.kind:<7}{'yes' if r.ternary else 'no':<6}{r.input_rate:>9.3f}{out_rate:>10}"
                     f"{r.synops:>13,.0f}{r.macs:>13,.0f}{r.weight_bytes_fp32:>11,}{r.weight_bytes_packed:>10,}")
    s = summarize(rows)
    lines.append(f"total: {s['synops']:,.0f} SynOps + {s['macs']:,.0f} MACs per sample ≈ {s['energy_uj']:.3f} µJ "
                 f"(45 nm: AC {E_AC_PJ} pJ, MAC {E_MAC_PJ} pJ); conv/linear weights {s['weight_bytes_fp32']:,} B "
                 f"float32 → {s['weight_bytes_packed']:,} B packed ({s['compression']:.1f}× smaller)")
    return "\n".join(lines)
