#!/usr/bin/env bash
# GPU lane, one call on a machine with an NVIDIA GPU (H200 class) and a CUDA build of torch +
# Triton already installed: builds the extension for sm_90, runs the CUDA/Triton tests on the GPU
# and the GPU benchmarks, writes everything under $OUT (default gpu_results/) and prints a short
# table last. Usage: bash scripts/gpu_check.sh   (PYTHON=... to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-8} PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  $PYTHON -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

echo "== build" | tee "$OUT/build.log"
$PYTHON setup.py -q build_ext --inplace >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
$PYTHON -m tna_kernels.info | tee "$OUT/info.txt"

echo "== tests (cuda or triton)"
$PYTHON -m pytest -q -m "cuda or triton" tests --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log"
test_rc=${PIPESTATUS[0]}

echo "== benchmarks (GPU)"
$PYTHON -m pytest -q benchmarks --benchmark-only -k cuda --benchmark-json="$OUT/bench.json" \
  > "$OUT/bench.log" 2>&1
bench_rc=$?
[ -f "$OUT/bench.json" ] && $PYTHON benchmarks/report.py "$OUT/bench.json" | tee "$OUT/bench.md"

echo "== summary"
grep -E "passed|failed|error" "$OUT/tests.log" | tail -1
echo "tests rc=$test_rc bench rc=$bench_rc; results in $OUT/"
exit $(( test_rc != 0 && test_rc != 5 ))
