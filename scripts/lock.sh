#!/usr/bin/env bash
# Regenerate the pinned dependency sets in requirements/ from pyproject.toml (pip-tools, pip's resolver):
#   dev.lock       what CI and developers install (scripts/test.sh): every extra, CPU torch
#   platform.lock  the API / light-worker image: [platform], no torch
#   worker.lock    the GPU worker image: [platform,model]; the image picks the CUDA torch build itself
# torch must resolve to the CPU wheel (pip's find-links or an extra index with CPU builds), so that no
# nvidia-*/triton package lands in a lock; its local version label (+cpu) is dropped, so the same line
# accepts the CUDA build in the worker image. No hashes: a hash would tie the line to one torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PY" -m venv "$tools"
"$tools/bin/python" -m pip install -q "pip-tools==7.6.2"
compile() {
  local out=$1
  shift
  CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$tools/bin/pip-compile" --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
    --no-emit-trusted-host --output-file "$out" "$@" pyproject.toml
  # The project itself (pulled in by its self-referencing extras) is installed from the tree, not the lock.
  sed -i -E -e 's/^torch==([0-9.]+)\+[a-z0-9]+$/torch==\1/' \
    -e '/^varedit-serve @ /,/^[^ ]/{/^varedit-serve @ /d;/^    #/d}' "$out"
  if grep -E -i '^(nvidia-|triton|cuda)' "$out"; then
    echo "$out pins CUDA packages: torch did not resolve to the CPU wheel" >&2
    exit 1
  fi
}
compile requirements/dev.lock --extra dev
# The images' sets are subsets of what CI tests, at the same versions.
compile requirements/platform.lock --extra platform --constraint requirements/dev.lock
compile requirements/worker.lock --extra platform --extra model --constraint requirements/dev.lock
