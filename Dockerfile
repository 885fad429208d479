# syntax=docker/dockerfile:1
# Two images from one source tree, each installed from a locked dependency set (requirements/*.lock,
# made by scripts/lock.sh):
#   target `api`     FastAPI, migrations, beat, webhook/maintenance worker (platform.lock): no torch
#                    (the API never imports it), no tests, no model folders, no compilers.
#   target `worker`  the GPU edit worker: the same code plus the model stack (worker.lock) and torch's
#                    CUDA build.
#
#   docker build --target api -t varedit-serve-api .
#   docker build --target worker -t varedit-serve-worker .
#   docker build --target worker --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
#
# Which torch build the worker gets is decided here alone: TORCH_INDEX_URL names the PyTorch index of
# one CUDA version, searched besides PyPI; its build (2.13.0+cu128) ranks above PyPI's 2.13.0, and the
# lock's `torch==2.13.0` accepts either. CI builds no image: it installs the CPU wheel (scripts/test.sh).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 varedit
WORKDIR /app

# Wheels of every locked dependency (but torch), built where the compilers are, plus the build backend
# (the lock's setuptools) that installs the project itself in the final images without the network.
FROM base AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
COPY requirements/platform.lock requirements/worker.lock requirements/
RUN grep -v '^torch==' requirements/worker.lock > /tmp/worker-without-torch.txt \
    && pip wheel --wheel-dir /wheels -r requirements/platform.lock \
    && pip wheel --wheel-dir /wheels -r /tmp/worker-without-torch.txt \
    && pip wheel --wheel-dir /wheels "$(grep '^setuptools==' requirements/worker.lock)"

# The code, and only the code: the packages, the migrations and what the build reads. Installed
# editable, so it runs from /app, where jobs/db.py finds alembic.ini and migrations/ beside it.
FROM base AS source
COPY pyproject.toml README.md alembic.ini ./
COPY migrations/ migrations/
COPY api/ api/
COPY jobs/ jobs/
COPY worker/ worker/
COPY serve/ serve/
COPY varedit/ varedit/
COPY varedit_client/ varedit_client/

FROM source AS api
COPY requirements/platform.lock requirements/
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels -r requirements/platform.lock \
    && pip install --no-index --find-links /wheels --no-deps -e . \
    && python -c "import api.main, jobs, serve.cli, worker.celery_app" \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the api image'"
USER varedit
EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]

FROM source AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
COPY requirements/worker.lock requirements/
# torch first, at the lock's version, from the CUDA index (its nvidia-* runtime libraries come with it).
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -c requirements/worker.lock torch \
    && python -c "import torch; assert torch.version.cuda, 'a CPU-only torch in the worker image'"
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels -r requirements/worker.lock \
    && pip install --no-index --find-links /wheels --no-deps -e . \
    && python -c "import api.main, varedit, worker.celery_app, worker.pool"
USER varedit
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "edits.2B-512", "-c", "1", "-O", "fair", \
     "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle"]
