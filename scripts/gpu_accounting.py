"""Kernel launches and HBM bytes of one TNA training step of the GPU recipe, counted without a GPU.

    python scripts/gpu_accounting.py                      # the table for configs/cifar10_vgg11_tna.yaml
    python scripts/gpu_accounting.py --batch 64 --json out.json

The step is the trainer's (``Trainer._loss`` + backward + gradient clipping + SGD for base and
twin + the per-step bookkeeping) for spiking VGG-11 on CIFAR-10, T = 4, B = 256, bf16 autocast,
run on *fake* tensors (``FakeTensorMode``: shapes and dtypes, no data, no compute; CPU-typed,
see ``on_fake_gpu``).
A dispatch mode below autograd records every operator the step issues, with the shapes it sees.

Counting model (what a GPU would do, stated so the figures can be checked against a profile):

* our operators run as registered for CUDA (``tna_kernels.ops.CUDA_KERNELS``: the same Python
  launchers, on fake tensors), with every Triton kernel replaced by a recorder: each
  ``kernel[grid](...)`` is one launch moving the bytes of its tensor arguments; the torch
  operators a launcher issues (allocations, ``contiguous()`` copies, fills, the torch parts of
  composed implementations) are counted as ours too, since our code issues them;
* torch's launches: one per torch operator that computes something (views, ``empty*`` and other
  metadata-only operators launch nothing); ``_foreach_*`` operators one per call (CUDA's
  multi-tensor apply packs up to ~110 tensors per launch, more than a VGG-11 has);
  ``convolution_backward`` one per gradient it produces; cuDNN and cuBLAS may use more than one
  kernel for an operator, so torch's figure is a lower bound;
* bytes: each operator reads every input tensor once and writes every output once (an in-place
  operand counts as read and written): the least traffic of an unfused kernel. Convolutions and
  GEMMs re-read operands from L2, not HBM, at these sizes, so the model holds for them too.
* host syncs: operators that copy a value to the host (``_local_scalar_dense``: ``.item()``,
  ``bool(t)``; a device-to-host ``_to_copy``).

Time implied = bytes / 4.3 TB/s (the H200's achievable HBM bandwidth), the floor for a step
whose kernels are all memory-bound; launch overhead is shown beside it at 5 µs per torch launch
and 20 µs per Triton launch from Python (host-side costs that hide behind GPU work only when
the GPU is busier than the host)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's tna_kernels, also when another one is installed
HBM_BYTES_PER_S = 4.3e12
TORCH_LAUNCH_US, TRITON_LAUNCH_US = 5.0, 20.0

ZERO_TRAFFIC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh",
                "detach", "alias", "sym_size", "sym_stride", "sym_numel", "is_same_size",
                "set_"}


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _nbytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


class _KernelRecorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **kw)`` records one launch."""

    def __init__(self, name: str, recorder: StepRecorder):
        self.name, self.recorder = name, recorder

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            nbytes = _nbytes(_tensors((args, kwargs)))
            self.recorder.add("triton", self.name, 1, nbytes, False)
        return launch


@contextlib.contextmanager
def recorded_triton_kernels(recorder: StepRecorder):
    """Every ``*_kernel`` of tna_kernels.triton replaced by a :class:`_KernelRecorder`."""
    import triton

    from tna_kernels.triton import batch_norm, lif, spike_train, ternary, twin_loss

    kinds = (triton.runtime.jit.JITFunction, triton.runtime.autotuner.Autotuner)
    saved = [(m, k, v) for m in (batch_norm, lif, spike_train, ternary, twin_loss) for k, v in vars(m).items()
             if k.endswith("_kernel") and isinstance(v, kinds)]
    try:
        for m, k, _ in saved:
            setattr(m, k, _KernelRecorder(k, recorder))
        yield
    finally:
        for m, k, v in saved:
            setattr(m, k, v)


class StepRecorder(TorchDispatchMode):
    """Records (kind, operator, launches, bytes, host sync) for every operator dispatched. A tna::
    operator runs its registered CUDA implementation, whose own operators and kernel launches are
    recorded as ours (kind "ours")."""

    def __init__(self):
        super().__init__()
        self.records: list[dict] = []
        self.depth = 0  # > 0 inside one of our operators' implementations

    def add(self, kind: str, op: str, launches: int, nbytes: int, sync: bool) -> None:
        if kind == "aten" and self.depth:
            kind = "ours (torch op)"
        self.records.append({"kind": kind, "op": op, "launches": launches, "bytes": nbytes, "sync": sync})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from tna_kernels.ops import CUDA_KERNELS

        kwargs = kwargs or {}
        ns, name = func.namespace, func._schema.name.split("::")[-1]
        if name == "_local_scalar_dense":  # .item() / bool(): a host sync; a fake tensor has no value
            self.add("aten", name, 0, 0, True)
            return 1
        if ns == "tna" and name in CUDA_KERNELS:
            self.depth += 1
            try:
                with self:  # the implementation's own operators are recorded too
                    return CUDA_KERNELS[name](*args, **kwargs)
            finally:
                self.depth -= 1
        out = func(*args, **kwargs)
        if ns == "prim" or func.is_view or name in ZERO_TRAFFIC or name.startswith("sym_"):
            return out
        inputs = list(_tensors((args, kwargs)))
        written = [a for a, s in zip(args, func._schema.arguments, strict=False)
                   if s.alias_info is not None and s.alias_info.is_write]
        outputs = [] if written else list(_tensors(out))  # in place: the output is the input
        nbytes = _nbytes(inputs) + _nbytes(_tensors(written)) + _nbytes(outputs)
        launches = sum(bool(m) for m in args[-1]) if name == "convolution_backward" else 1
        # a device-to-host copy (never seen with the CPU-typed fake tensors: bool()/.item() show it)
        d2h = (name == "_to_copy" and kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu"
               and args[0].device.type != "cpu")
        self.add("tna" if ns == "tna" else "aten", f"{ns}::{name}", launches, nbytes, d2h)
        return out


def tna_step(config: Path, batch: int | None = None, T: int | None = None, bookkeeping: bool = True,
             fused_bn_lif: bool | None = None) -> StepRecorder:
    """One training step of ``config``'s recipe on fake CUDA tensors, recorded. ``fused_bn_lif``:
    whether the BN + LIF layers take the fused CUDA kernels (default: as a CUDA run would,
    ``tna_kernels.nn.bn_lif.CUDA_FUSED``)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from tna_kernels import functional as F
    from tna_kernels.models import build_model, make_twin
    from tna_kernels.nn import bn_lif
    from tna_kernels.train import load_config
    from tna_kernels.train.trainer import make_optimizer

    cfg = load_config(config, [f"data.batch_size={batch}"] if batch else [])
    if T:
        cfg["model"]["T"] = T
    B, amp = cfg["data"]["batch_size"], cfg["train"]["amp"]
    import tna_kernels._utils as utils

    recorder = StepRecorder()
    mode = FakeTensorMode()
    cpu_chunk_elems = utils.chunk_elems

    def on_fake_gpu(t: torch.Tensor) -> torch.Tensor:
        # Fake *CPU* tensors: autograd on a fake CUDA tensor needs CUDA's device guard, which a CPU
        # build of torch lacks. What differs: CPU autocast (its bf16 list has the convolutions and
        # GEMMs, as CUDA's does), and a LIF outside BN + LIF would keep x instead of h (same bytes).
        return FakeTensor(mode, t.to("meta"), torch.device("cpu"))

    with torch.device("meta"):  # architecture only: initial values do not change what a step moves
        base = build_model({**cfg["model"], "in_channels": 3, "input_size": 32, "num_classes": 10})
        twin = make_twin(base, cfg["seed"] + cfg["twin"]["seed_offset"])
    for m in (*base.modules(), *twin.modules()):
        for k, p in m._parameters.items():
            if p is not None:
                m._parameters[k] = torch.nn.Parameter(on_fake_gpu(p), requires_grad=p.requires_grad)
        for k, b in m._buffers.items():
            if b is not None:
                m._buffers[k] = on_fake_gpu(b)
    with mode:
        opts = [make_optimizer(m, cfg["optim"]) for m in (base, twin)]
        x = on_fake_gpu(torch.empty(B, 3, 32, 32))
        y = on_fake_gpu(torch.empty(B, dtype=torch.long))
        # the fake tensors are CPU-typed (above): take the GPU's slice sizes, as a CUDA run would
        utils.chunk_elems = lambda device: utils.GPU_CHUNK_ELEMS
        # ... and the BN + LIF layer's choice of the fused ops, as for CUDA tensors
        cpu_fused = bn_lif._fused_batch_norm_lif
        fused = bn_lif.CUDA_FUSED if fused_bn_lif is None else fused_bn_lif
        bn_lif._fused_batch_norm_lif = lambda x, *params: fused and bn_lif._cuda_fused_serves(x, *params)
        with contextlib.ExitStack() as undo, recorded_triton_kernels(recorder), recorder:
            undo.callback(setattr, utils, "chunk_elems", cpu_chunk_elems)
            undo.callback(setattr, bn_lif, "_fused_batch_norm_lif", cpu_fused)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits, twin_logits = base(x), twin(x)
                loss = F.twin_loss(logits, twin_logits, y, mse_weight=cfg["loss"]["mse_weight"],
                                   mse_reduction=cfg["loss"]["mse_reduction"])
            loss.backward()
            if bookkeeping:  # the trainer's per-step finite check and running sums: one copy to the host
                stats = torch.stack([torch.isfinite(loss.detach()).double(), loss.detach().double(),
                                     (logits.detach().argmax(1) == y).sum().double()]).cpu()
                bool(stats[0])
            if cfg["train"]["grad_clip"]:
                for m in (base, twin):
                    torch.nn.utils.clip_grad_norm_(m.parameters(), cfg["train"]["grad_clip"])
            for opt in opts:
                opt.step()
    return recorder


def summarize(rec: StepRecorder) -> dict:
    """Per kind ("triton": our kernels; "ours (torch op)": torch operators our implementations
    issue; "aten": the rest of the step) and per operator: calls, launches, bytes, syncs."""
    ops = defaultdict(lambda: {"kind": None, "calls": 0, "launches": 0, "bytes": 0, "syncs": 0})
    for r in rec.records:
        key = r["op"] if r["kind"] != "ours (torch op)" else f"{r['op']} (in our ops)"
        g = ops[key]
        g["kind"] = r["kind"]
        g["calls"] += 1
        g["launches"] += r["launches"]
        g["bytes"] += r["bytes"]
        g["syncs"] += r["sync"]
    kinds = defaultdict(lambda: {"launches": 0, "bytes": 0, "syncs": 0})
    for g in ops.values():
        for k in ("launches", "bytes", "syncs"):
            kinds[g["kind"]][k] += g[k]
    return {"ops": dict(ops), "kinds": dict(kinds)}


KIND_LABELS = {"triton": "our Triton kernels", "ours (torch op)": "torch ops inside our ops",
               "aten": "torch ops (the rest of the step)"}


def host_ms(s: dict) -> float:
    """The launch-overhead model's host time per step (ms)."""
    kinds = s["kinds"]
    launches = sum(k["launches"] for k in kinds.values())
    triton_launches = kinds.get("triton", {"launches": 0})["launches"]
    return (triton_launches * TRITON_LAUNCH_US + (launches - triton_launches) * TORCH_LAUNCH_US) / 1e3


def totals_line(s: dict, label: str) -> str:
    kinds = s["kinds"]
    return (f"{label}: {sum(k['launches'] for k in kinds.values())} launches, "
            f"{sum(k['bytes'] for k in kinds.values()) / 1e9:.2f} GB, {host_ms(s):.1f} ms of host time per step.")


def markdown(s: dict, title: str, top: int = 14) -> str:
    gb, kinds = 1e9, s["kinds"]
    total_bytes = sum(k["bytes"] for k in kinds.values())
    lines = [f"**{title}**", "", "| | launches | HBM bytes | time at 4.3 TB/s |", "|---|---:|---:|---:|"]
    for kind, label in KIND_LABELS.items():
        k = kinds.get(kind, {"launches": 0, "bytes": 0})
        lines.append(f"| {label} | {k['launches']} | {k['bytes'] / gb:.2f} GB "
                     f"| {k['bytes'] / HBM_BYTES_PER_S * 1e3:.2f} ms |")
    launches = sum(k["launches"] for k in kinds.values())
    lines.append(f"| step | {launches} | {total_bytes / gb:.2f} GB | {total_bytes / HBM_BYTES_PER_S * 1e3:.2f} ms |")
    lines += ["", f"Host syncs per step: {sum(k['syncs'] for k in kinds.values())}. Launch overhead at "
              f"{TORCH_LAUNCH_US:g} µs per torch launch and {TRITON_LAUNCH_US:g} µs per Triton launch: "
              f"{host_ms(s):.1f} ms of host time per step.", "",
              "| kernel or operator | kind | calls | launches | HBM bytes | share of the step's bytes |",
              "|---|---|---:|---:|---:|---:|"]
    ranked = sorted(s["ops"].items(), key=lambda kv: -kv[1]["bytes"])
    for name, v in ranked[:top]:
        lines.append(f"| {name} | {v['kind']} | {v['calls']} | {v['launches']} | {v['bytes'] / gb:.3f} GB "
                     f"| {100 * v['bytes'] / total_bytes:.1f} % |")
    rest = ranked[top:]
    if rest:
        rb = sum(v["bytes"] for _, v in rest)
        lines.append(f"| {len(rest)} others | | {sum(v['calls'] for _, v in rest)} "
                     f"| {sum(v['launches'] for _, v in rest)} | {rb / gb:.3f} GB | {100 * rb / total_bytes:.1f} % |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "cifar10_vgg11_tna.yaml")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    ap.add_argument("--T", type=int, default=None, help="time steps (default: the config's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the per-operator figures here")
    ap.add_argument("--markdown", type=Path, default=None,
                    help="replace the text between <!-- gpu-accounting:begin/end --> in this file")
    ap.add_argument("--fused-bn-lif", choices=("default", "on", "off"), default="default",
                    help="the BN + LIF layers' fused CUDA kernels (default: tna_kernels.nn.bn_lif.CUDA_FUSED); "
                         "the other setting's totals are printed below the table")
    args = ap.parse_args(argv)
    from tna_kernels.nn import bn_lif

    fused = bn_lif.CUDA_FUSED if args.fused_bn_lif == "default" else args.fused_bn_lif == "on"
    s = summarize(tna_step(args.config, args.batch, args.T, fused_bn_lif=fused))
    other = summarize(tna_step(args.config, args.batch, args.T, fused_bn_lif=not fused))
    title = (f"One TNA training step of {args.config.name} (base + twin, bf16 autocast"
             + (f", B = {args.batch}" if args.batch else "")
             + f", fused BN + LIF kernels {'on' if fused else 'off'})")
    table = (markdown(s, title) + "\n\n"
             + totals_line(other, f"The same step with the fused BN + LIF kernels {'off' if fused else 'on'}"))
    print(table)
    if args.json:
        args.json.write_text(json.dumps(s, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.markdown:
        begin, end = "<!-- gpu-accounting:begin -->", "<!-- gpu-accounting:end -->"
        text = args.markdown.read_text()
        if begin not in text or end not in text:
            sys.exit(f"{args.markdown} has no {begin} ... {end} block")
        note = "<!-- generated by `python scripts/gpu_accounting.py --markdown docs/GPU.md`; do not edit by hand -->"
        head, rest = text.split(begin, 1)
        tmp = args.markdown.with_suffix(".tmp")
        tmp.write_text(f"{head}{begin}\n{note}\n\n{table}\n\n{end}{rest.split(end, 1)[1]}")
        tmp.replace(args.markdown)
        print(f"wrote {args.markdown}", file=sys.stderr)


if __name__ == "__main__":
    main()
