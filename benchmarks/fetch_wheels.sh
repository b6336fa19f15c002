#!/usr/bin/env bash
# Run on a machine WITH internet, from the repository root, before carrying the tree to the offline GPU machine:
# downloads kornia and pytorch_optimizer (pure Python) and kornia_rs (compiled, one wheel per Python version) into benchmarks/wheels/,
# which gpu_check.sh installs from. Pass the GPU machine's Python versions if they are not among the defaults.
#   bash benchmarks/fetch_wheels.sh [3.10 3.11 3.12 3.13]
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-pip}
DEST=benchmarks/wheels
VERSIONS=${*:-3.10 3.11 3.12 3.13}
mkdir -p "$DEST"
$PIP download "kornia==0.9.0" --no-deps -d "$DEST"
$PIP download "pytorch_optimizer==4.1.0" --no-deps -d "$DEST"   # optimizer.sam (pure Python)
for v in $VERSIONS; do
  $PIP download "kornia_rs==0.2.0" --no-deps --only-binary=:all: --python-version "$v" \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST" || echo "no kornia_rs wheel for $v"
done
ls -la "$DEST"
