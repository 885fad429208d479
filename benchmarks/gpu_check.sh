#!/usr/bin/env bash
# One check of a GPU machine in under 8 minutes; writes a JSON report and prints a summary.
#
#   bash benchmarks/gpu_check.sh                               # CUDA: full-size models, pytest -m gpu, e2e
#   bash benchmarks/gpu_check.sh --device cpu --out r.json     # tiny configs, GPU-only parts skipped
#
# Options are benchmarks/gpu_check.py's (--out, --device, --total-s, --only, --cold, --keep); the
# report goes to --out, default gpu_check.json (under $OUT when set). Exit status 1 when a section failed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
  . .venv/bin/activate
fi
exec python benchmarks/gpu_check.py "$@"
