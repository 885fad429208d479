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
# Dependencies come from pyproject.toml's extras: `platform` (no torch) for the api image,
# `platform` + `model` for the worker.

FROM base AS api
COPY . .
RUN pip install -e ".[platform]" && python -c "import api.main, jobs, serve.cli, worker.celery_app" \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the api image'"
USER varedit
EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
# torch first and pinned, so nothing else decides which build is installed.
RUN pip install "torch==2.13.0"
COPY . .
RUN pip install -e ".[platform,model]"
USER varedit
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "edits.2B-512", "-c", "1", "-O", "fair", \
     "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle"]
