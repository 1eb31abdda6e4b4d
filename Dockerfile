# syntax=docker/dockerfile:1
# The IQA gateway image: FastAPI + ONNX Runtime (+ the Triton gRPC client for IQA_BACKEND=triton), the
# default model inside, no PyTorch. docs/DEPLOY.md. Build and run:
#   docker build -t robust-iqa-gateway:0.1.0 .        (linux/amd64: the lock's hashes are for x86_64 wheels)
#   docker run --rm -p 8080:8080 robust-iqa-gateway:0.1.0
# Every gateway setting is an IQA_* environment variable (docs/SERVING.md).
# tests/test_deploy_image.py lints this file (hadolint), replays its COPY and RUN steps in a fresh venv
# and serves the result; keep the RUN steps in deploy/install-gateway.sh.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VENV=/opt/venv
WORKDIR /src
# 1. dependencies: pinned and hashed (requirements/gateway.lock, written by deploy/lock-gateway.sh)
COPY requirements/gateway.lock requirements/gateway.lock
COPY deploy/install-gateway.sh deploy/install-gateway.sh
RUN --mount=type=cache,target=/root/.cache/pip \
    PYTHON=python3.11 deploy/install-gateway.sh "$VENV" deps
# 2. the project itself (serving + training.preprocessing are what the gateway imports)
COPY pyproject.toml README.md ./
COPY serving serving
COPY training training
COPY export export
COPY clients clients
COPY bench bench
RUN --mount=type=cache,target=/root/.cache/pip \
    PYTHON=python3.11 deploy/install-gateway.sh "$VENV" project

FROM ${PYTHON_IMAGE} AS runtime
# The version of model_repository/iqa baked in: the repository's latest (a test keeps them equal).
ARG MODEL_VERSION=2
LABEL org.opencontainers.image.title="robust-iqa-gateway" \
      org.opencontainers.image.description="No-reference image-quality gateway (FastAPI, ONNX Runtime)" \
      org.opencontainers.image.version="0.1.0"
RUN groupadd --system --gid 10001 iqa \
    && useradd --system --uid 10001 --gid iqa --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin iqa
COPY --from=builder /opt/venv /opt/venv
COPY model_repository/iqa/${MODEL_VERSION}/model.onnx model_repository/iqa/${MODEL_VERSION}/metadata.json \
     /app/model_repository/iqa/${MODEL_VERSION}/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IQA_HOST=0.0.0.0 \
    IQA_PORT=8080 \
    IQA_MODEL_REPOSITORY=/app/model_repository \
    IQA_MODEL_NAME=iqa \
    IQA_MODEL_VERSION=latest
WORKDIR /app
# numeric, so that Kubernetes' runAsNonRoot can verify it; the files above stay root-owned, read-only
USER 10001:10001
EXPOSE 8080
# liveness: the process answers (readiness, /readyz, is the orchestrator's probe: docs/DEPLOY.md)
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck", "/healthz"]
# SIGTERM: in-flight requests finish within IQA_GRACEFUL_SHUTDOWN_S, new ones get 503
STOPSIGNAL SIGTERM
CMD ["python", "-m", "serving"]
