#!/usr/bin/env bash
# Issue 18: the tiny-CIFAR TNA recipe (configs/cifar10_vgg_tna.yaml) trained on dense QAT (the
# training arithmetic before the spike path) and on train.train_path=auto (the spike path where it
# measures faster), same seeds, runs interleaved so a shared machine slows both alike. Each run
# writes runs/train_path/cifar10_vgg_tna_<path>_s<seed>/; the table (accuracy mean ± std over
# seeds, images/s) comes from scripts/summarize_cifar.py at the end.
#   THREADS=1 bash scripts/train_path_recipe.sh          # SEEDS="0 1 2" by default
#   PATHS=auto OUT=runs/train_path_now THREADS=1 bash scripts/train_path_recipe.sh   # one path only
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/train_path}
SEEDS=${SEEDS:-"0 1 2"}
PATHS=${PATHS:-"dense auto"}
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${THREADS:-${OMP_NUM_THREADS:-2}}
mkdir -p "$OUT"
for s in $SEEDS; do
  for path in $PATHS; do
    name="cifar10_vgg_tna_${path}_s$s"
    if [ -f "$OUT/$name/base.json" ]; then echo "skip $name (done)"; continue; fi
    echo "== $name start $(date -u +%FT%TZ) threads=$OMP_NUM_THREADS"
    /usr/bin/time -f "== $name wall %e s, peak RSS %M KB" \
      "$PYTHON" -m tna_kernels.cli train --config configs/cifar10_vgg_tna.yaml "seed=$s" "name=$name" \
      "train.train_path=$path" train.progress=false --out "$OUT" --resume auto
  done
done
"$PYTHON" scripts/summarize_cifar.py "$OUT"
