"""The GPU evidence script's plumbing (scripts/gpu_bench.py, scripts/gpu_check.sh), without a GPU
and without running a step: marker selection, JUnit merging, the training-time plan, step records
and the check of the output folder. The whole script runs in `make gpu-check-dry`."""

import importlib.util
import json
import math
import shutil
import subprocess
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "scripts" / "gpu_bench.py")
gb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gb)


def test_marker_expression_uses_only_registered_markers(tmp_path):
    py = tmp_path / "pyproject.toml"
    py.write_text('[tool.pytest.ini_options]\nmarkers = [\n "triton: t", "cuda: needs a GPU", "slow: s"]\n')
    assert gb.registered_markers(py) == {"triton", "cuda", "slow"}
    assert gb.marker_expression({"triton", "cuda", "slow"}) == "cuda or triton"
    assert gb.marker_expression({"triton", "cuda", "gpu_path"}) == "cuda or triton or gpu_path"
    assert gb.marker_expression({"slow"}) is None
    assert gb.marker_expression(gb.registered_markers()).startswith("cuda or triton")


def test_gpu_test_files_finds_marked_files(tmp_path):
    (tmp_path / "test_a.py").write_text("import pytest\n@pytest.mark.triton\ndef test_x(): pass\n")
    (tmp_path / "test_b.py").write_text("def test_y(): pass\n")
    (tmp_path / "test_c.py").write_text("pytestmark = pytest.mark.cuda\n")
    (tmp_path / "test_d.py").write_text("x = pytest.mark.cudax\n")
    assert gb.gpu_test_files(tmp_path, gb.GPU_MARKERS, root=tmp_path) == ["test_a.py", "test_c.py"]
    assert "tests/test_twin_loss.py" in gb.gpu_test_files(ROOT / "tests", gb.GPU_MARKERS)


def test_merge_junit_keeps_suites_and_marks_dead_files(tmp_path):
    ok = tmp_path / "a.xml"
    ok.write_text('<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="1">'
                  '<testcase name="t1"/></testsuite></testsuites>')
    parts = [("tests/test_a.py", ok, 1, ""), ("tests/test_b.py", tmp_path / "missing.xml", 124, "timed out"),
             ("tests/test_c.py", tmp_path / "none.xml", 5, "")]
    totals = gb.merge_junit(parts, tmp_path / "all.xml")
    assert totals == {"tests": 4, "failures": 1, "errors": 1, "skipped": 1}
    text = (tmp_path / "all.xml").read_text()
    assert 'name="tests/test_b.py"' in text and "timed out" in text and "test_c" not in text


@pytest.mark.parametrize("seconds", [60, 150, 400])
def test_plan_runs_gives_both_runs_the_same_epochs_and_fits_them(seconds):
    costs = {"baseline": {"images_per_s": 8400.0, "epoch_overhead_s": 0.6, "setup_s": 2.0, "source": "warm-up"},
             "tna": {"images_per_s": 4400.0, "epoch_overhead_s": 1.2, "setup_s": 2.5, "source": "warm-up"}}
    plan = gb.plan_runs(seconds, costs, 256, 45000, dry=False)
    b, t = plan["baseline"], plan["tna"]
    assert (b["epochs"], b["limit_batches"], b["planned_images"]) == (t["epochs"], t["limit_batches"],
                                                                       t["planned_images"])
    assert b["epochs"] >= 2 and 1 <= b["limit_batches"] <= 45000 // 256
    assert b["estimated_s"] + t["estimated_s"] <= seconds or b["epochs"] == 2  # 2 epochs at least
    assert b["budget_s"] + t["budget_s"] == pytest.approx(seconds, abs=0.2)
    assert t["budget_s"] > b["budget_s"]  # the slower run gets the larger share of the time
    assert b["rate_source"] == t["rate_source"] == "warm-up"
    if seconds == 400:  # room for full epochs: every batch of the training split
        assert b["limit_batches"] == 45000 // 256 and b["epochs"] > 2
    guess = gb.plan_runs(100, {}, 256, 45000, dry=False)
    assert guess["tna"]["rate_source"] == "guess" and guess["tna"]["epochs"] == guess["baseline"]["epochs"]
    dry = gb.plan_runs(100, {}, 2, 40, dry=True)
    assert [(p["epochs"], p["limit_batches"], p["planned_images"]) for p in dry.values()] == [(1, 2, 4)] * 2


def test_comparability_note_flags_what_breaks_equal_conditions():
    plan = {m: {"epochs": 3, "limit_batches": 175} for m in gb.TRAIN_MODES}
    ok = {"plan": plan, "warmup": {m: {"status": "ok"} for m in gb.TRAIN_MODES},
          "runs": {m: {"status": "ok"} for m in gb.TRAIN_MODES}}
    note = gb.comparability_note(ok)
    assert note.startswith("both 3 epochs x 175 batches") and "NOT" not in note
    cold = {**ok, "warmup": {"baseline": {"status": "failed"}, "tna": {"status": "ok"}}}
    assert "NOT comparable: no warm-up for baseline" in gb.comparability_note(cold)
    stopped = {**ok, "runs": {"baseline": {"status": "stopped at its budget"}, "tna": {"status": "ok"}}}
    assert "NOT comparable: baseline stopped at its budget" in gb.comparability_note(stopped)


def test_lif_step_sizes_leave_the_host_cost_behind():
    first_run = 4 * 32 * 128 * 32 * 32  # host-bound on the H200: its copy took 39 µs
    gpu, dry = gb.SIZES["gpu"]["lif_shape"], gb.SIZES["dry"]["lif_shape"]
    assert math.prod(gpu) >= 10 * first_run and math.prod(gpu) < 2**31  # 32-bit element counts still hold
    assert math.prod(dry) <= 1024


def test_shim_removed_numpy_aliases_sets_only_what_is_missing():
    class NumpyWithoutInt(types.ModuleType):
        def __getattr__(self, name):  # as numpy >= 1.24 does for its removed aliases
            raise AttributeError(f"module 'numpy' has no attribute {name!r}")

    np_like = NumpyWithoutInt("numpy")
    np_like.bool = bool  # numpy 2 has np.bool again
    assert gb.shim_removed_numpy_aliases(np_like) == ["np.int = int"]
    assert np_like.int is int and np_like.bool is bool
    assert gb.shim_removed_numpy_aliases(np_like) == []


def test_module_to_device_moves_buffers_and_plain_tensor_attributes():
    torch = pytest.importorskip("torch")

    class Neuron(torch.nn.Module):  # a peer's neuron: a registered buffer and a tensor kept outside it
        def __init__(self):
            super().__init__()
            self.register_buffer("beta", torch.tensor(0.5))
            self.state = torch.zeros(3)

    outer = torch.nn.Sequential(Neuron())
    meta = torch.device("meta")
    moved = gb.module_to_device(outer, meta)
    assert moved[0].beta.device == meta and moved[0].state.device == meta


def test_host_split_cases_call_the_op_as_the_public_function_does():
    torch = pytest.importorskip("torch")
    from tna_kernels import functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 64, generator=g) * 1.5 + 0.6
    lb, lt = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    cases = gb.host_split_cases(x, lb, lt, y)
    assert len({c[2] for c in cases}) == len(cases)  # distinct case names
    levels = {split: [c[1] for c in cases if c[0] == split] for split in ("lif_fwd", "twin_loss")}
    assert levels == {"lif_fwd": ["public", "op", "cuda_kernel", "launcher", "outputs_empty"],
                      "twin_loss": ["public", "op", "triton"]}
    by_level = {(c[0], c[1]): c[3] for c in cases}
    with torch.no_grad():  # as the launch step runs them; the op levels must do the public call's work
        spikes, v_last, h_seq = by_level[("lif_fwd", "op")]()()
        assert torch.equal(spikes, F.lif(x, tau=2.0)) and h_seq.numel() == 0
        loss = by_level[("twin_loss", "op")]()()[0]
        assert torch.equal(loss, F.twin_loss(lb, lt, y, mse_weight=0.005))
        outputs = by_level[("lif_fwd", "outputs_empty")]()()
        assert [o.shape for o in outputs] == [spikes.shape, v_last.shape, h_seq.shape]


def _record(out, **kw):
    args = ["record", "--out", str(out)]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    assert gb.main(args) == 0
    return {s["name"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}


def test_record_status_from_exit_code_and_step_output(tmp_path):
    gb.write_json(tmp_path / "bench.json", {"steps": {"lif": {"status": "partial", "note": "n"},
                                                       "twin": {"status": "running"}}})
    got = _record(tmp_path, step="build", rc=1, seconds=3)
    assert got["build"]["status"] == "failed"
    got = _record(tmp_path, step="tests", rc=124, seconds=3)
    assert got["tests"]["status"] == "timeout"
    got = _record(tmp_path, step="tests", rc=3, seconds=3)  # some files out of time, none failed
    assert got["tests"]["status"] == "partial"
    got = _record(tmp_path, step="lif", rc=0, seconds=3)
    assert got["lif"]["status"] == "partial" and got["lif"]["note"] == "n"
    got = _record(tmp_path, step="twin", rc=137, seconds=3)
    assert got["twin"]["status"] == "timeout" and "killed while running" in got["twin"]["note"]
    got = _record(tmp_path, step="training", rc=0, seconds=0, skip=True, note="no time")
    assert got["training"]["status"] == "skipped"
    got = _record(tmp_path, step="build", rc=0, seconds=3)  # a step recorded twice keeps the last
    assert got["build"]["status"] == "ok" and len(got) == 5


def _complete_out(out: Path, status="ok"):
    gb.write_json(out / "summary.json", {"steps": [{"name": s, "status": status, "rc": 0, "seconds": 1,
                                                     "note": "why"} for s in gb.STEPS]})
    gb.write_json(out / "bench.json", {"steps": {s: {"status": "ok", "cases": []} for s in gb.BENCH_STEPS}})
    for name in ("tests.log", "tests.xml", "train.json", "run.log"):
        (out / name).write_text("{}")


def test_check_out_dir(tmp_path):
    _complete_out(tmp_path)
    assert gb.check_out_dir(tmp_path, dry=True) == []
    (tmp_path / "extra.txt").write_text("x")
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "a" / "b" / f"f{i}").write_text("x")
    problems = gb.check_out_dir(tmp_path, dry=False)
    assert any("the GPU tool returns 8" in p for p in problems)
    assert any("extra.txt" in p for p in problems)
    shutil.rmtree(tmp_path / "a")
    (tmp_path / "extra.txt").unlink()
    _complete_out(tmp_path, status="failed")
    assert gb.check_out_dir(tmp_path, dry=False) == []
    assert any("dry run: step 'setup' ended failed" in p for p in gb.check_out_dir(tmp_path, dry=True))
    _complete_out(tmp_path, status="skipped")
    assert gb.check_out_dir(tmp_path, dry=False) == []
    assert len(gb.check_out_dir(tmp_path, dry=True)) == len(gb.STEPS)
    gb.write_json(tmp_path / "summary.json", {"steps": []})
    assert len(gb.check_out_dir(tmp_path, dry=False)) == len(gb.STEPS)


def test_script_syntax_and_documented_outputs():
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    for name in gb.OUT_FILES:
        assert name in script
    assert len(gb.OUT_FILES) <= gb.MAX_OUT_FILES
    for sh in ("gpu_check.sh", "gpu_payload.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / sh)], check=True)
