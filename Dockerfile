# syntax=docker/dockerfile:1
# latency-adapter container image.
#
#   docker build -t ghcr.io/latency-adapter/latency-adapter:0.1.0 .
#
# Two stages: the builder turns the project and its dependencies into wheels and installs them into a
# virtual environment; the final image holds only that environment on python:3.11-slim (no compilers,
# no pip cache, no sources). It runs as the numeric non-root user 65532 and writes nothing outside /tmp,
# so it works with a read-only root filesystem (mount an emptyDir or tmpfs at /tmp).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# Bytecode is compiled here, at install: the final image's filesystem is read-only at run time.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/latency-adapter
# Only what the build needs (.dockerignore keeps the rest out of the context): the package metadata
# (pyproject.toml reads README.md) and the package.
COPY pyproject.toml README.md ./
COPY adapter ./adapter
# Wheels for the project and every dependency (binary wheels preferred: the final stage has no
# compiler), then an offline install of exactly those wheels.
RUN python -m pip wheel --prefer-binary --wheel-dir /wheels . \
    && /opt/latency-adapter/bin/python -m pip install --no-index --find-links /wheels /wheels/*.whl \
    && /opt/latency-adapter/bin/latency-adapter version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="latency-adapter" \
      org.opencontainers.image.description="Kubernetes external metrics adapter: p95 latency, CPU and a dual-signal ratio for HPAs" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/latency-adapter/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/latency-adapter /opt/latency-adapter
WORKDIR /tmp
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# 6443 external metrics API (HTTPS), 4318 OTLP/HTTP receiver, 9464 /metrics, /healthz, /readyz, /livez.
EXPOSE 6443 4318 9464
ENTRYPOINT ["latency-adapter"]
# With no --tls-cert-file the API's self-signed certificate goes to --cert-dir, by default
# /tmp/latency-adapter/certs: under /tmp, the one writable place.
CMD ["serve"]
