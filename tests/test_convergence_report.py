"""scripts/convergence_report.py on hand-made run folders: the table's statistics, the unfinished
runs, the λ choice and the figure."""

import csv
import sys
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convergence_report.py"
spec = importlib.util.spec_from_file_location("convergence_report", SCRIPT)
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def make_run(root: Path, name: str, val: list[float], train=None, twin=None, finished=True):
    run = root / f"cifar10_vgg_converge_{name}"
    run.mkdir(parents=True)
    rows = []
    for i, v in enumerate(val):
        row = {"epoch": i + 1, "val_acc": v, "epoch_seconds": 60.0, "images_per_s": 750.0}
        if train is not None:
            row["train_eval_acc"] = train[i]
        if twin is not None:
            row["twin_val_acc"] = twin[i]
        rows.append(row)
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if finished:
        (run / "base.json").write_text("{}")


@pytest.fixture
def study(tmp_path):
    make_run(tmp_path, "baseline_s0", [0.5, 0.60], train=[0.5, 0.70])
    make_run(tmp_path, "baseline_s1", [0.5, 0.62], train=[0.5, 0.70])
    make_run(tmp_path, "tna_s0", [0.5, 0.63], train=[0.5, 0.66], twin=[0.4, 0.61])
    make_run(tmp_path, "tna_s1", [0.5, 0.65], train=[0.5, 0.68], twin=[0.4, 0.62])
    make_run(tmp_path, "tna_lam0.02_s0", [0.5, 0.66], train=[0.5, 0.67], twin=[0.4, 0.6])
    make_run(tmp_path, "tna_lam0.1_s0", [0.5, 0.61], train=[0.5, 0.65], twin=[0.4, 0.6])
    make_run(tmp_path, "kd_s0", [0.5], finished=False)
    return tmp_path


def test_table_statistics_and_unfinished_runs(study, capsys):
    runs, unfinished = report.load_runs(study)
    assert sorted(runs) == ["baseline", "tna", "tna_lam0.02", "tna_lam0.1"]
    assert unfinished == ["cifar10_vgg_converge_kd_s0: epoch 1"]
    table = report.table(runs)
    # baseline: final 60 and 62 % -> 61.00 ± 1.41 (sample std); gap 70-60, 70-62 -> 9.00 ± 1.41
    assert ("| ternary baseline | 2 | 61.00 ± 1.41 | 61.00 ± 1.41 | – | 70.00 ± 0.00 | 9.00 ± 1.41 "
            "| 2 min | 750 |") in table
    assert "| ternary + TNA (λ = 0.005) | 2 | 64.00 ± 1.41 |" in table and "| 61.50 ± 0.71 |" in table
    assert "ternary + TNA (λ = 0.02) | 1 |" in table
    lines = report.comparisons(runs)
    assert any(line.startswith("- ternary + TNA (λ = 0.005) − ternary baseline, final val acc: +3.00 points, "
                               "Welch t = 2.12 (n = 2, 2)") for line in lines), lines


def test_best_lambda_counts_the_stage_one_run_for_the_default(study, tmp_path):
    assert report.best_lambda(report.load_runs(study)[0]) == "0.02"
    other = tmp_path / "other"
    make_run(other, "tna_s0", [0.7])
    make_run(other, "tna_lam0.1_s0", [0.6])
    assert report.best_lambda(report.load_runs(other)[0]) == "0.005"


def test_best_lambda_takes_a_known_score_only_where_no_record_exists(tmp_path, capsys):
    make_run(tmp_path, "tna_lam0.02_s0", [0.66])
    make_run(tmp_path, "tna_lam0.1_s0", [0.61])
    runs = report.load_runs(tmp_path)[0]
    assert report.best_lambda(runs) == "0.02"
    assert report.best_lambda(runs, {0.005: 0.7}) == "0.005"
    assert report.best_lambda(runs, {0.005: 0.6}) == "0.02"
    assert report.best_lambda(runs, {0.02: 0.1, 0.005: 0.65}) == "0.02"  # the record wins
    report.main([str(tmp_path), "--best-lambda", "--known", "0.005=0.7"])
    assert capsys.readouterr().out.strip() == "0.005"
    for bad in ("0.005", "0.005=73.6", "x=0.5"):
        with pytest.raises(SystemExit, match="--known"):
            report.main([str(tmp_path), "--best-lambda", "--known", bad])


def test_main_writes_the_figure(study, tmp_path, capsys):
    report.main([str(study), "--figures", str(tmp_path / "fig")])
    assert "ternary baseline" in capsys.readouterr().out
    assert (tmp_path / "fig" / "cifar10_convergence.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing")])
    report.main([str(study), "--figures", str(tmp_path / "fig"), "--figure-name", "later.png"])
    assert (tmp_path / "fig" / "later.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        report.main([str(study), "--figures", str(tmp_path / "fig"), "--figure-name", "../x.png"])


STUDY = SCRIPT.parent / "convergence_study.sh"
FAKE_TRAIN = """#!/usr/bin/env python3
# stands in for `python -m tna_kernels.cli train ...`: logs its arguments, writes a finished run
import json, sys
from pathlib import Path
args = sys.argv[1:]
with open(Path(__file__).with_name("calls.log"), "a") as f:
    f.write(" ".join(args) + "\\n")
name = next(a[5:] for a in args if a.startswith("name="))
run = Path(args[args.index("--out") + 1]) / name
run.mkdir(parents=True, exist_ok=True)
(run / "metrics.csv").write_text("epoch,val_acc\\n1,0.5\\n")
(run / "base.safetensors").write_bytes(b"weights")
(run / "base.json").write_text(json.dumps({"name": name}))
"""


def test_study_script_records_finished_runs_and_reuses_them(tmp_path):
    """convergence_study.sh copies each finished run's record (metrics, base.json; weights for
    the fp32 teachers) into RECORDS, does not run a recorded run again, and takes a KD teacher
    from its record once the run folders are gone."""
    import os
    import shutil
    import subprocess

    fake = tmp_path / "python"
    fake.write_text(FAKE_TRAIN)
    fake.chmod(0o755)
    out, records = tmp_path / "runs", tmp_path / "records"
    env = dict(os.environ, PYTHON=str(fake), OUT=str(out), RECORDS=str(records), STAGES="2", SEEDS="0")

    def study():
        return subprocess.run(["bash", str(STUDY)], env=env, capture_output=True, text=True, check=True).stdout

    study()
    fp, kd = "cifar10_vgg_converge_baseline_fp_s0", "cifar10_vgg_converge_kd_s0"
    assert sorted(p.name for p in (records / fp).iterdir()) == ["base.json", "base.safetensors", "metrics.csv"]
    assert sorted(p.name for p in (records / kd).iterdir()) == ["base.json", "metrics.csv"]
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 2 and f"loss.teacher={out}/{fp}/base.json" in calls[1]
    assert "skip" in study() and len((tmp_path / "calls.log").read_text().splitlines()) == 2

    shutil.rmtree(out)
    shutil.rmtree(records / kd)
    study()
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 3 and f"loss.teacher={records}/{fp}/base.json" in calls[2]


def test_a_single_run_has_no_spread():
    assert report._ms([0.5]) == "50.00"
    assert report._ms([0.5, 0.6]) == "55.00 ± 7.07"


def test_study_script_splits_the_sweep_and_chooses_lambda_only_when_it_is_complete(tmp_path):
    """STAGES=3 with LAMBDAS runs only those sweep runs; the best λ is chosen (and its seeds 1-2
    run) only once every sweep λ is recorded, counting stage 1's seed-0 score for 0.005."""
    import os
    import subprocess

    fake = tmp_path / "python"
    fake.write_text(FAKE_TRAIN)
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), OUT=str(tmp_path / "runs"), RECORDS=str(tmp_path / "records"),
               STAGES="3", LAMBDAS="0.001")
    out = subprocess.run(["bash", str(STUDY)], env=env, capture_output=True, text=True, check=True).stdout
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 1 and "loss.mse_weight=0.001" in calls[0]
    assert "λ sweep not finished (missing: 0.02 0.1)" in out
    env["LAMBDAS"] = "0.02 0.1"
    env["PYTHON"] = sys.executable  # the report runs with a real interpreter; training stays fake
    env["PATH"] = f"{tmp_path}:{env['PATH']}"
    script = tmp_path / "study.sh"  # the same script, with the stand-in trainer for `-m tna_kernels.cli`
    script.write_text(STUDY.read_text().replace('"$PYTHON" -m tna_kernels.cli train', f'"{fake}"')
                      .replace('cd "$(dirname "$0")/.."', f'cd "{SCRIPT.parent.parent}"'))
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True).stdout
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 3 and "best λ on seed 0: 0.005" in out  # stage 1's 73.64 % beats the stand-ins' 50 %


def test_study_script_carries_an_unfinished_run_over_in_a_snapshot(tmp_path):
    """`snapshot` copies an unfinished run's last checkpoint and its metrics up to that epoch into
    PARTIAL; a later invocation without the run folder resumes from it, and the snapshot goes
    once the run is recorded."""
    import json
    import os
    import subprocess

    fake = tmp_path / "python"
    fake.write_text(FAKE_TRAIN.replace('run.mkdir(parents=True, exist_ok=True)\n', (
        'run.mkdir(parents=True, exist_ok=True)\n'
        'rows = (run / "metrics.csv").read_text() if (run / "metrics.csv").exists() else ""\n'
        'with open(Path(__file__).with_name("resumed.log"), "a") as f:\n'
        '    f.write(f"{(run / \'checkpoints\' / \'last.json\').exists()} {rows.count(chr(10))}\\n")\n')))
    fake.chmod(0o755)
    out, records, partial = tmp_path / "runs", tmp_path / "records", tmp_path / "records" / "partial"
    name = "cifar10_vgg_converge_tna_lam0.001_s0"
    ckpt = out / name / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.json").write_text(json.dumps({"meta": {"epoch": 2}}))
    (ckpt / "last.safetensors").write_bytes(b"state")
    (out / name / "metrics.csv").write_text("epoch,val_acc\n1,0.3\n2,0.4\n3,0.5\n")  # epoch 3: after the checkpoint
    (out / "finished_s0").mkdir()
    (out / "finished_s0" / "base.json").write_text("{}")
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), RECORDS=str(records), STAGES="3", LAMBDAS="0.001")
    got = subprocess.run(["bash", str(STUDY), "snapshot"], env=env, capture_output=True, text=True, check=True)
    assert f"snapshot {name}: epoch 2" in got.stdout
    assert sorted(p.name for p in partial.iterdir()) == [name]  # the finished run is not carried
    assert (partial / name / "metrics.csv").read_text().splitlines() == ["epoch,val_acc", "1,0.3", "2,0.4"]
    assert (partial / name / "checkpoints" / "last.safetensors").read_bytes() == b"state"

    import shutil
    shutil.rmtree(out)
    env["PYTHON"] = str(fake)
    got = subprocess.run(["bash", str(STUDY)], env=env, capture_output=True, text=True, check=True)
    assert f"resume {name} from its snapshot" in got.stdout
    assert (tmp_path / "resumed.log").read_text() == "True 3\n"  # the checkpoint and the header + 2 rows
    assert (records / name / "base.json").is_file() and not (partial / name).exists()


def test_subset_runs_are_compared_with_the_subset_baseline_and_methods_filter(study, capsys):
    make_run(study, "subset250_baseline_s0", [0.4, 0.50], train=[0.5, 0.80])
    make_run(study, "subset250_baseline_s1", [0.4, 0.52], train=[0.5, 0.82])
    make_run(study, "subset250_tna_s0", [0.4, 0.55], train=[0.5, 0.75], twin=[0.4, 0.54])
    make_run(study, "subset250_tna_s1", [0.4, 0.57], train=[0.5, 0.77], twin=[0.4, 0.56])
    runs = report.load_runs(study)[0]
    assert report.reference_of("subset250_tna") == "subset250_baseline"
    assert report.reference_of("tna_lam0.1") == "baseline"
    lines = report.comparisons(runs)
    assert any(line.startswith("- ternary + TNA (λ = 0.005), 2,500-image subset − ternary baseline, 2,500-image "
                               "subset, final val acc: +5.00 points") for line in lines), lines
    assert not any("subset250_baseline" in line or line.startswith("- ternary baseline, 2,500") for line in lines)
    report.main([str(study), "--methods", "^subset250_"])
    out = capsys.readouterr().out
    assert "2,500-image subset" in out and "| ternary baseline |" not in out and "λ = 0.02" not in out
    with pytest.raises(SystemExit):
        report.main([str(study), "--methods", "("])
