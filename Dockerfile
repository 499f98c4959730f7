# syntax=docker/dockerfile:1
# One image for every role of smedit (API replica, worker, embedded): the role is a setting
# (SMEDIT_ROLE=all|api|worker), not a different build.
#
#   docker build -t smedit .                                   # CPU (torch==2.13.0, CPU wheel)
#   docker build -t smedit:cuda --build-arg TORCH_VARIANT=cu128 .   # CUDA wheel (needs the NVIDIA
#                                                               # container toolkit at run time)
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# cpu, or a CUDA variant of the PyTorch wheel index (cu126, cu128, ...)
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SMEDIT_HOST=0.0.0.0 \
    SMEDIT_PORT=8000 \
    SMEDIT_DATA_DIR=/data \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

RUN groupadd --system smedit && useradd --system --gid smedit --home-dir /app --shell /usr/sbin/nologin smedit \
    && mkdir -p /data /models && chown smedit:smedit /data

# torch first, from the chosen wheel index (its own layer: it is by far the largest)
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /app
# dependencies before the source, so a code change does not reinstall them
COPY pyproject.toml README.md ./
RUN mkdir -p editor_core demo_world app smedit migrations \
    && touch editor_core/__init__.py app/__init__.py smedit/__init__.py migrations/__init__.py \
    && pip install -e ".[server]" \
    && rm -rf editor_core demo_world app smedit migrations
COPY editor_core ./editor_core
COPY demo_world ./demo_world
COPY app ./app
COPY smedit ./smedit
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-deps -e . && python -c "import app.main, editor_core.editor, demo_world.build, smedit.cli"

USER smedit
VOLUME ["/data"]
EXPOSE 8000
# /healthz: the process serves HTTP (a standby worker is healthy but not ready)
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"SMEDIT_PORT\", \"8000\")}/healthz', timeout=4)"
CMD ["smedit", "serve"]
