#!/usr/bin/env bash
# The install a user does: a fresh venv, torch, then `pip install .` with pip's defaults (build
# isolation on: the native core builds in a clean environment that holds no torch), then import
# the package from outside the checkout and run one op of each family on the installed build.
#   bash scripts/test_install.sh [TORCH_SPEC]      (default torch==2.13.0)
set -euo pipefail
TORCH_SPEC="${1:-torch==2.13.0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 -m venv "$WORK/venv"
PIP="$WORK/venv/bin/pip"
start=$(date +%s)
"$PIP" install -q "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
# A copy of the tree without build outputs (what a clone has, plus uncommitted changes).
mkdir -p "$WORK/src" && (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK/src")
build_start=$(date +%s)
"$PIP" install -q "$WORK/src" 2>&1 | grep -v "^WARNING: Location" || true
echo "test-install: pip install . (isolated build) took $(( $(date +%s) - build_start )) s"
cd "$WORK"
"$WORK/venv/bin/python" "$ROOT/scripts/smoke_ops.py"
so=$("$WORK/venv/bin/python" -c "import tna_kernels, pathlib; print(next(pathlib.Path(tna_kernels.__file__).parent.glob('_C*.so')))")
if readelf -d "$so" | grep -Ei "NEEDED.*(libtorch|libc10)"; then
  echo "test-install: FAIL: $so links libtorch/libc10" >&2
  exit 1
fi
echo "test-install: OK in $(( $(date +%s) - start )) s ($TORCH_SPEC; $so links no torch library)"
