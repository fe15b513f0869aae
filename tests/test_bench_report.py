"""benchmarks/report.py on hand-made pytest-benchmark JSON: same-run ratios, the allocator named in
each table's machine line, several runs of one section shown in turn, other sections kept."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"


def run_json(path: Path, tuned: bool, tna_s: float, peer_s: float) -> Path:
    rows = [{"fullname": f"benchmarks/bench_train_step.py::test_step[{p}]", "group": "step", "name": p,
             "extra_info": {"provider": p, "images": 32}, "stats": {"median": t, "min": t * 0.9}}
            for p, t in (("tna", tna_s), ("spikingjelly", peer_s))]
    path.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "CPU", "count": 2}, "torch": "2.x",
                                                 "tna_ternary_isa": "avx2", "tuned_malloc": tuned},
                                "datetime": "now", "benchmarks": rows}))
    return path


def test_two_runs_fill_one_section_in_order_and_keep_the_others(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# B\n\n<!-- report:lif:begin -->\nkept\n<!-- report:lif:end -->\n\n"
                   "<!-- report:train_step:begin -->\nSTALE-TABLE\n<!-- report:train_step:end -->\n")
    a = run_json(tmp_path / "a.json", False, 0.4, 1.0)
    b = run_json(tmp_path / "b.json", True, 0.35, 0.9)
    subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--out", str(doc)], check=True)
    text = doc.read_text()
    block = text.split("<!-- report:train_step:begin -->")[1].split("<!-- report:train_step:end -->")[0]
    assert "STALE-TABLE" not in block and "kept" in text
    assert block.index("default allocator") < block.index("glibc thresholds raised (tuned)")
    assert "| spikingjelly | 1000.00 | 900.00 | 2.50 | - | 32.0 |" in block
    assert "| spikingjelly | 900.00 | 810.00 | 2.57 | - | 35.6 |" in block
