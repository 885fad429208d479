#!/usr/bin/env bash
# Set up the virtual environment (CPU torch) and run every test.
# Starts nothing by hand: the tests themselves use the running PostgreSQL/Redis
# when reachable and start throwaway servers when not.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The web page is tested in a real browser: Debian's chromium and its chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
  else
    echo "the browser test needs chromium and chromedriver: sudo apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned, so nothing pulls a CUDA build; then exactly the locked versions
# (requirements/dev.lock: torch==2.13.0 and no CUDA package; scripts/lock.sh remakes it), then the
# project itself, whose dependencies the lock already holds.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -r requirements/dev.lock
python -m pip install -q --no-deps -e .
# Lint and formatting first: a style slip fails fast, before the long suite.
ruff check .
ruff format --check .
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
