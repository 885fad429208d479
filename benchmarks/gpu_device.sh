#!/usr/bin/env bash
# The GPU check on a lent GPU machine, whose image holds PyTorch but not the platform's packages:
# installs the wheels of .gpu-kit/ (made here by benchmarks/gpu_kit.sh) ahead of the image's own, puts
# its redis-server on PATH, then runs benchmarks/gpu_check.sh with the given options. The report and the
# whole log go to $OUT (the device tool's folder that comes back), else to the current folder.
#
#   run: bash benchmarks/gpu_device.sh      carry: [".gpu-kit"]      timeout_s: 560
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
if ! compgen -G '.gpu-kit/wheels/*.whl' >/dev/null; then
  echo "no .gpu-kit/wheels here: run bash benchmarks/gpu_kit.sh first, and carry .gpu-kit" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu-kit-site \
  .gpu-kit/wheels/*.whl
export PYTHONPATH="/tmp/gpu-kit-site:$PWD" PATH="$PWD/.gpu-kit/bin:$PATH" PYTHONUNBUFFERED=1
bash benchmarks/gpu_check.sh --out "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
