#!/usr/bin/env bash
# The GPU evidence script: one command on one H200, <= 8 minutes of wall time, every result under
# $OUT. Prepare the payload here first (bash scripts/gpu_payload.sh), then on the GPU machine run
#     bash scripts/gpu_check.sh                 (the device tool: carry ["gpu_payload"])
#     bash scripts/gpu_check.sh --dry-run       the same steps on the CPU under TRITON_INTERPRET=1 at
#                                               tiny sizes (make gpu-check-dry; <= 2 minutes)
# Steps, each time-boxed (a step that fails or times out is recorded and the next one runs):
#   setup       carried wheels (SpikingJelly, snnTorch, loguru) into a private site dir; CIFAR-10 unpacked
#   build       the native core (setup.py build_ext --inplace); tna_kernels.info
#   tests       GPU tests (-m over the cuda/triton/gpu_path markers that exist), one pytest per file
#   launch      µs per call over 10 consecutive calls: lif, spike_ternary_linear, twin_loss
#   lif         LIF fwd+bwd vs SpikingJelly (Triton, CuPy) and torch.compile'd reference, % of HBM
#   ternary     spike x ternary and float x ternary GEMM / conv at VGG shapes vs bf16 cuBLAS / cuDNN
#   twin        fused twin loss vs CE + CE + lambda*MSE in torch
#   train_step  TNA training step (VGG-11, B=256, T=4, bf16 autocast) vs SpikingJelly: img/s, memory
#   training    ternary baseline vs ternary + TNA on CIFAR-10: both warmed up untimed, then the same
#               epochs x batches each, as many as fill the time left
# $OUT (8 files): run.log env_build.log tests.log tests.xml bench.json train.json summary.json summary.md
# Exit status: non-zero only when the build or the tests fail; with --dry-run also when any step
# fails or times out, or an output file is missing or malformed (summarize --strict).
# Knobs: PYTHON (default python3), GPU_CHECK_OUT (default $OUT, else gpu_results; dry run:
# build/gpu_check_dry), GPU_CHECK_BUDGET (s; 480, dry run 150), PAYLOAD (gpu_payload), GPU_CHECK_JOBS.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
PAYLOAD=${PAYLOAD:-gpu_payload}
if [ $DRY = 1 ]; then
  OUT=${GPU_CHECK_OUT:-build/gpu_check_dry}
  BUDGET=${GPU_CHECK_BUDGET:-150}
  rm -rf "$OUT"                       # our own folder: a dry run starts clean
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  DRYFLAG=(--dry-run)
else
  OUT=${GPU_CHECK_OUT:-${OUT:-gpu_results}}
  BUDGET=${GPU_CHECK_BUDGET:-480}
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
  unset TRITON_INTERPRET             # the real kernels, not the interpreter
  DRYFLAG=()
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/tna_gpu_check.XXXXXX")}
mkdir -p "$WORK/notes"
export GPU_CHECK_OUT=$OUT GPU_CHECK_WORK=$WORK PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
export TNA_CACHE=$WORK/cache PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BENCH=(scripts/gpu_bench.py)
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
FINAL=10          # seconds kept for the summary
exec > >(tee -a "$OUT/run.log") 2>&1
TEE_PID=$!
echo "gpu_check.sh $* : out $OUT, work $WORK, budget ${BUDGET}s, python $PYTHON, $(date -u +%FT%TZ)"

# Time-box floors (s): a step whose share of the budget would fall below its floor is skipped.
if [ $DRY = 1 ]; then F_SETUP=3 F_BUILD=5 F_TESTS=10 F_LAUNCH=8 F_LIF=8 F_TERN=8 F_TWIN=8 F_STEP=10 F_TRAIN=15
else F_SETUP=5 F_BUILD=30 F_TESTS=30 F_LAUNCH=15 F_LIF=20 F_TERN=20 F_TWIN=10 F_STEP=30 F_TRAIN=45; fi

record() {  # record STEP RC SECONDS TIMEOUT [extra args for gpu_bench.py record]
  local name=$1 rc=$2 secs=$3 t=$4; shift 4
  $PYTHON "${BENCH[@]}" record --out "$OUT" --step "$name" --rc "$rc" --seconds "$secs" --timeout "$t" \
    --note-file "$WORK/notes/$name.txt" "$@" || echo "could not record step $name"
}

# step NAME CAP FLOOR RESERVE LOG -- command...: runs the command with a time box of
# min(CAP, time left - RESERVE) (RESERVE: the floors of the steps after it), output to LOG too.
# Returns the command's exit status, or 99 when the time box would fall below FLOOR (skipped).
step() {
  local name=$1 cap=$2 floor=$3 reserve=$4 log=$5; shift 6
  local now left t rc s0 secs
  now=$(date +%s)
  left=$((DEADLINE - FINAL - reserve - now))
  t=$(( cap < left ? cap : left ))
  if (( t < floor )); then
    echo "== $name: skipped (${left}s left for it, needs ${floor}s)"
    record "$name" 0 0 0 --skip --note "skipped: ${left}s of the ${BUDGET}s budget left for it, its floor is ${floor}s"
    return 99
  fi
  echo "== $name (time box ${t}s; $((now - T0))s elapsed)"
  s0=$(date +%s.%N)
  GPU_CHECK_STEP_DEADLINE=$((now + t)) timeout -k 10 "$t" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  secs=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "== $name: TIMED OUT after ${t}s"
  record "$name" "$rc" "$secs" "$t"
  return "$rc"
}

# ---- step functions run under timeout (exported: timeout runs them in a fresh bash)
setup_payload() {
  set -u
  echo "== environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "nvidia-smi: none"
  [ -f "$PAYLOAD/MANIFEST.txt" ] && { echo "== payload manifest"; cat "$PAYLOAD/MANIFEST.txt"; }
  local note=""
  if compgen -G "$PAYLOAD/wheels/*.whl" > /dev/null; then
    echo "== carried wheels -> $WORK/site"
    if $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
        "$PAYLOAD"/wheels/*.whl; then note="wheels: $(cd "$PAYLOAD/wheels" && echo *.whl)"
    else note="wheel install FAILED"; fi
  else
    note="no $PAYLOAD/wheels (peers only if already installed)"
  fi
  if compgen -G "$PAYLOAD/wheels-sj014/*.whl" > /dev/null; then
    echo "== SpikingJelly 0.0.0.0.14 (CuPy LIF) -> $WORK/site_sj014"
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site_sj014" \
      "$PAYLOAD"/wheels-sj014/*.whl && note="$note + SpikingJelly 0.0.0.0.14 apart" || note="$note; sj014 install FAILED"
  fi
  if [ $DRY = 1 ]; then
    $PYTHON "$BENCH_PY" tiny-data "$WORK/cifar10-jpeg" --per-class 5 && note="$note; tiny image folder (50 random JPEGs)"
  elif [ -f "$PAYLOAD/cifar10-jpeg.tar.gz" ]; then
    echo "== CIFAR-10 -> $WORK/cifar10-jpeg"
    tar xzf "$PAYLOAD/cifar10-jpeg.tar.gz" -C "$WORK" && \
      note="$note; CIFAR-10: $(find "$WORK/cifar10-jpeg/train" -name '*.jpg' | wc -l) training JPEGs"
  else
    note="$note; no $PAYLOAD/cifar10-jpeg.tar.gz, training will be skipped"
  fi
  echo "$note" | tee "$WORK/notes/setup.txt"
}

build_native() {
  set -u
  echo "== build"
  if [ $DRY = 1 ]; then
    # 2 cores would take minutes: the Makefile's build target has built it; check it imports and
    # matches csrc/ (the loader compares the compiled source hash with the checkout's).
    echo "dry run: no compile; checking the built native core" | tee "$WORK/notes/build.txt"
    $PYTHON "$BENCH_PY" env --info || return 1
  else
    $PYTHON "$BENCH_PY" env
    local s0=$SECONDS
    $PYTHON setup.py -q build_ext --inplace || {
      echo "BUILD FAILED"; echo "build failed: setup.py build_ext, see env_build.log" > "$WORK/notes/build.txt"; return 1; }
    echo "built in $((SECONDS - s0)) s with MAX_JOBS=$MAX_JOBS" | tee "$WORK/notes/build.txt"
    $PYTHON -m tna_kernels.info || return 1
  fi
}
export -f setup_payload build_native
export DRY PYTHON PAYLOAD WORK OUT
export BENCH_PY=${BENCH[0]}

# ---- the steps (reserves: the floors of every later step)
R_TRAIN=$F_TRAIN
R_STEP=$((R_TRAIN + F_STEP)); R_TWIN=$((R_STEP + F_TWIN)); R_TERN=$((R_TWIN + F_TERN))
R_LIF=$((R_TERN + F_LIF)); R_LAUNCH=$((R_LIF + F_LAUNCH)); R_TESTS=$((R_LAUNCH + F_TESTS))
R_BUILD=$((R_TESTS + F_BUILD))

$PYTHON "${BENCH[@]}" record --out "$OUT" --meta "{\"dry_run\": $([ $DRY = 1 ] && echo true || echo false), \"budget_s\": $BUDGET, \"started\": $T0}"
step setup 60 "$F_SETUP" "$R_BUILD" "$OUT/env_build.log" -- bash -c setup_payload
[ -d "$WORK/site" ] && export PYTHONPATH="$PYTHONPATH:$WORK/site"
[ -d "$WORK/site_sj014" ] && export GPU_CHECK_SJ014=$WORK/site_sj014
[ -d "$WORK/cifar10-jpeg/train" ] && export GPU_CHECK_DATA=$WORK/cifar10-jpeg

step build 180 "$F_BUILD" "$R_TESTS" "$OUT/env_build.log" -- bash -c build_native
build_rc=$?

test_rc=0
if [ $build_rc != 0 ]; then
  echo "== build failed or did not run: the remaining steps need the native core; stopping"
  for s in tests launch lif ternary twin train_step training; do
    record "$s" 0 0 0 --skip --note "skipped: no native core (build rc $build_rc)"
  done
else
  if [ $DRY = 1 ]; then  # a small subset: the interpreter lanes of make test run them all
    TESTS=(tests/test_twin_loss.py -k "test_triton_matches_cpu_kernel and 0-10" --jobs 1)
  else
    TESTS=(--jobs "${GPU_CHECK_JOBS:-8}")
  fi
  step tests 150 "$F_TESTS" "$R_LAUNCH" /dev/null -- $PYTHON "${BENCH[@]}" tests "${TESTS[@]}" "${DRYFLAG[@]}"
  test_rc=$?
  # 3: some files ran out of time but none failed; 124/137: the whole step was stopped (its own
  # per-file time-outs should come first). Neither is a test failure.
  case $test_rc in 3|99|124|137) test_rc=0 ;; esac   # 99: skipped, no time left
  step launch 45 "$F_LAUNCH" "$R_LIF" /dev/null -- $PYTHON "${BENCH[@]}" launch "${DRYFLAG[@]}"
  step lif 75 "$F_LIF" "$R_TERN" /dev/null -- $PYTHON "${BENCH[@]}" lif "${DRYFLAG[@]}"
  step ternary 90 "$F_TERN" "$R_TWIN" /dev/null -- $PYTHON "${BENCH[@]}" ternary "${DRYFLAG[@]}"
  step twin 40 "$F_TWIN" "$R_STEP" /dev/null -- $PYTHON "${BENCH[@]}" twin "${DRYFLAG[@]}"
  step train_step 100 "$F_STEP" "$R_TRAIN" /dev/null -- $PYTHON "${BENCH[@]}" train_step "${DRYFLAG[@]}"
  step training "$BUDGET" "$F_TRAIN" 0 /dev/null -- $PYTHON "${BENCH[@]}" training "${DRYFLAG[@]}"
fi

# ---- summary
$PYTHON "${BENCH[@]}" record --out "$OUT" --meta "{\"wall_s\": $(( $(date +%s) - T0 )), \"build_rc\": $build_rc, \"tests_rc\": $test_rc}"
rm -f "$OUT"/.*.tmp
STRICT=()
[ $DRY = 1 ] && STRICT=(--strict)
$PYTHON "${BENCH[@]}" summarize --out "$OUT" "${DRYFLAG[@]}" "${STRICT[@]}"
sum_rc=$?
echo "wall $(( $(date +%s) - T0 ))s; build rc=$build_rc, tests rc=$test_rc, output check rc=$sum_rc"
rc=0
[ $build_rc = 0 ] && [ $test_rc = 0 ] && [ $sum_rc = 0 ] || rc=1
[ $DRY = 1 ] && [ $rc = 0 ] && rm -rf "$WORK"
exec >&- 2>&-          # let tee write the last lines of run.log before the script returns
wait "$TEE_PID" 2>/dev/null
exit $rc
