#!/usr/bin/env bash
# Builds gpu_payload/ (ignored by git): what scripts/gpu_check.sh needs on the GPU machine, which
# has no network and Python 3.12 with torch, Triton and CuPy but no SNN peers:
#   gpu_payload/wheels/          spikingjelly 2.0.0 (Triton LIF; needs loguru), snntorch 1.0.0, loguru
#   gpu_payload/wheels-sj014/    spikingjelly 0.0.0.0.14 apart: the last release with the CuPy LIF
#                                backend (same package name, so gpu_check.sh installs it on its own
#                                path and runs its case in a separate process)
#   gpu_payload/cifar10-jpeg.tar.gz   the CIFAR-10 training JPEGs (cifar10-jpeg/train/<class>/*.jpg,
#                                the ImageFolder layout tna_kernels.data reads), deterministic
#                                (sorted, fixed mtime and owner, gzip -n): `tar xzf` gives a root
#                                for data.root
#   gpu_payload/MANIFEST.txt     sizes and sha256 of the above
# All wheels are pure Python (py3-none-any), fetched with pip download for Python 3.12 / manylinux
# x86_64. Then send the working tree with carry ["gpu_payload"] and run `bash scripts/gpu_check.sh`.
# Usage: bash scripts/gpu_payload.sh [CIFAR10_JPEG_DIR]   (default ../shared/data/cifar10-jpeg)
#   PYTHON=... (a python with pip), PAYLOAD=... (default gpu_payload), FORCE=1 rebuilds everything.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PAYLOAD=${PAYLOAD:-gpu_payload}
DATA=${1:-${CIFAR10_JPEG:-../shared/data/cifar10-jpeg}}
PEERS=(spikingjelly==2.0.0 snntorch==1.0.0 loguru==0.7.3)
OLD_SJ=spikingjelly==0.0.0.0.14
LIMIT_MIB=64

[ "${FORCE:-0}" = 1 ] && rm -rf "$PAYLOAD"
mkdir -p "$PAYLOAD/wheels" "$PAYLOAD/wheels-sj014"

fetch() {  # fetch DEST SPEC...: pure-Python wheels for CPython 3.12 on manylinux x86_64, no deps
  local dest=$1; shift
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest" "$@"
}
have() { compgen -G "$1" > /dev/null; }
need=()
for spec in "${PEERS[@]}"; do
  name=${spec%%==*} ver=${spec#*==}
  have "$PAYLOAD/wheels/${name}-${ver}-*.whl" || need+=("$spec")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "pip download ${need[*]}"
  fetch "$PAYLOAD/wheels" "${need[@]}" || {
    echo "gpu_payload.sh: pip download failed: no package index reachable from here? Copy the wheels of" \
         "${PEERS[*]} into $PAYLOAD/wheels/ and $OLD_SJ into $PAYLOAD/wheels-sj014/ by other means." >&2
    exit 1; }
fi
if ! have "$PAYLOAD/wheels-sj014/spikingjelly-0.0.0.0.14-*.whl"; then
  echo "pip download $OLD_SJ"
  fetch "$PAYLOAD/wheels-sj014" "$OLD_SJ" || { echo "gpu_payload.sh: could not fetch $OLD_SJ" >&2; exit 1; }
fi
# one version of each package per folder (pip install refuses two)
for d in wheels wheels-sj014; do
  dup=$(cd "$PAYLOAD/$d" && ls ./*.whl | sed 's,^\./,,; s,-[0-9].*,,' | sort | uniq -d)
  [ -z "$dup" ] || { echo "gpu_payload.sh: two versions of $dup in $PAYLOAD/$d; remove one" >&2; exit 1; }
done

archive=$PAYLOAD/cifar10-jpeg.tar.gz
if [ ! -f "$archive" ]; then
  [ -d "$DATA/train" ] || { echo "gpu_payload.sh: $DATA has no train/ folder (CIFAR-10 JPEGs: train/<class>/*.jpg)" >&2; exit 1; }
  n=$(find "$DATA/train" -name '*.jpg' | wc -l)
  echo "archiving $n images from $DATA"
  parent=$(cd "$DATA/.." && pwd) base=$(basename "$(cd "$DATA" && pwd)")
  tar --sort=name --mtime='2020-01-01 00:00Z' --owner=0 --group=0 --numeric-owner --format=gnu \
    --transform "s,^$base,cifar10-jpeg," -C "$parent" -cf - "$base" | gzip -n -6 > "$archive.tmp"
  mv "$archive.tmp" "$archive"
  got=$(tar tzf "$archive" | grep -c '\.jpg$')
  [ "$got" = "$n" ] || { echo "gpu_payload.sh: archive holds $got images, the folder $n" >&2; rm -f "$archive"; exit 1; }
fi

{
  echo "# gpu_payload/ made by scripts/gpu_payload.sh on $(date -u +%FT%TZ)"
  (cd "$PAYLOAD" && find . -type f ! -name MANIFEST.txt | sort | while read -r f; do
     printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "${f#./}"; done)
} > "$PAYLOAD/MANIFEST.txt"
cat "$PAYLOAD/MANIFEST.txt"

# What the device tool would send: tracked + untracked-not-ignored files, plus the carried payload.
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
pay=$(du -sb "$PAYLOAD" | cut -f1)
total=$((tree + pay))
awk -v p="$pay" -v t="$tree" -v l=$LIMIT_MIB 'BEGIN { m = 1048576;
  printf "payload %.1f MiB + working tree %.1f MiB = %.1f MiB (limit %d MiB)\n", p / m, t / m, (p + t) / m, l }'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_payload.sh: over the $LIMIT_MIB MiB the device tool sends" >&2
  exit 1
fi
echo "ready: run bash scripts/gpu_check.sh on the GPU machine with carry [\"$PAYLOAD\"]"
