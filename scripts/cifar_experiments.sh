#!/usr/bin/env bash
# Issue 8 evidence on real CIFAR-10 images (CPU budget recipe, configs/cifar10_vgg_*.yaml).
# Required set per seed: fp32 baseline (also the KD teacher), ternary baseline, ternary + TNA,
# ternary + KD. EXTENDED=1 adds ternary + DML, ternary + TNA with a full-precision twin, and
# fp32 + TNA. Every run writes runs/cifar/<config>_s<seed>/ (metrics.csv, curves.png, base.json).
#   bash scripts/cifar_experiments.sh            # SEEDS="0 1" by default
#   SEEDS="2" EXTENDED=1 bash scripts/cifar_experiments.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/cifar}
SEEDS=${SEEDS:-"0 1"}
TNA=${TNA:-.venv/bin/tna}
mkdir -p "$OUT"

run() {  # config seed [overrides...]
  local cfg=$1 seed=$2; shift 2
  local name="${cfg}_s${seed}"
  if [ -f "$OUT/$name/base.json" ]; then echo "skip $name (done)"; return; fi
  echo "== $name $(date -u +%H:%M:%S)"
  /usr/bin/time -f "$name wall %e s, peak RSS %M KB" \
    "$TNA" train --config "configs/$cfg.yaml" "seed=$seed" "name=$name" train.progress=false \
    --out "$OUT" --resume auto "$@"
}

for s in $SEEDS; do
  run cifar10_vgg_baseline_fp "$s"
  run cifar10_vgg_baseline "$s"
  run cifar10_vgg_tna "$s"
  run cifar10_vgg_kd "$s" "loss.teacher=$OUT/cifar10_vgg_baseline_fp_s$s/base.json"
done
if [ "${EXTENDED:-0}" = 1 ]; then
  for s in $SEEDS; do
    run cifar10_vgg_dml "$s"
    run cifar10_vgg_tna_fptwin "$s"
    run cifar10_vgg_tna_fp "$s"
  done
fi
