# syntax=docker/dockerfile:1
# Two images from one source tree:
#   target `api`     FastAPI, migrations, beat, webhook/maintenance worker; no torch (the API never
#                    imports it), so it is small and starts fast.
#   target `worker`  the GPU edit worker: the same code plus torch (PyPI's CUDA build) and the model stack.
#
#   docker build --target api -t varedit-serve-api .
#   docker build --target worker -t varedit-serve-worker .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 varedit
WORKDIR /app
# The dependency list is pyproject.toml's; the helper drops the model stack for the api image.
COPY pyproject.toml README.md ./
COPY scripts/requirements_for.py scripts/

FROM base AS api
RUN python scripts/requirements_for.py api > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY . .
RUN pip install --no-deps -e . && python -c "import api, jobs, worker.celery_app" \
    && python -c "import sys; assert 'torch' not in sys.modules"
USER varedit
EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
# torch first and pinned, so nothing else decides which build is installed.
RUN pip install "torch==2.13.0" \
    && python scripts/requirements_for.py worker > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY . .
RUN pip install --no-deps -e .
USER varedit
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "edits.2B-512", "-c", "1", "-O", "fair", \
     "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle"]
