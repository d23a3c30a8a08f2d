# syntax=docker/dockerfile:1
# modelgate: one image for the gateway, the workers and the autoscaler (pick one with the
# command: `gateway` is the default; `worker --model NAME`; `autoscaler --backend ...`).
#
#   docker build -t modelgate:latest .
#
# Stages: `builder` makes a virtualenv with modelgate and its docker/kubernetes/mlflow extras;
# `models` builds the demo model repository (it needs scikit-learn, which the runtime does
# not, so it stays out of the final image); the final stage holds only the venv and /models.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Build tools for any dependency without a wheel for this platform. Debian's package versions
# are not pinned: the base image tag fixes the release, and pins would break on every point
# update of the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/modelgate
ENV PATH=/opt/modelgate/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY modelgate ./modelgate
# The absolute path (= `.`) tells hadolint this is the local project, not an unpinned package.
RUN pip install "/src[docker,kubernetes,mlflow]"

FROM builder AS models
# scikit-learn and skl2onnx are only needed to convert the iris demo model.
RUN pip install "/src[demo]" \
    && modelgate demo --out /models

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="modelgate" \
      org.opencontainers.image.description="ONNX model-serving gateway, workers and autoscaler" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/modelgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 modelgate \
    && useradd --system --uid 10001 --gid modelgate --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin modelgate
COPY --from=builder /opt/modelgate /opt/modelgate
COPY --from=models /models /models
# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001
# HTTP and gRPC (the Open Inference Protocol's two transports).
EXPOSE 8080 8081
# Checks the gateway (the default command), on MODELGATE_PORT if set. Workers serve no HTTP:
# Compose and the docker backend turn it off for them, and Compose gives the autoscaler its
# own check on its metrics port. (Kubernetes ignores it and uses the manifests' probes.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('MODELGATE_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["modelgate"]
CMD ["gateway", "--host", "0.0.0.0", "--models", "/models"]
