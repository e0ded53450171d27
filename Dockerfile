# syntax=docker/dockerfile:1.7
# One image for every process; the command picks it:
#   docker run IMAGE                 -> exporter api        (default CMD)
#   docker run IMAGE worker          -> exporter worker
#   docker run IMAGE db migrate      -> exporter db migrate (the Helm pre-upgrade hook)
# Build: docker build -t exporter:dev .   (BuildKit; the pip cache mount keeps rebuilds fast)

# Pinned to a patch release so a rebuild does not silently change Python or Debian.
# Renovate/Dependabot bump it; pin the digest too (IMAGE@sha256:...) in the release pipeline.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

###############################################################################
# builder: resolve and build every wheel, install them into a self-contained venv
###############################################################################
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Same interpreter path as the runtime stage, so the venv's symlinks stay valid when copied.
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir "pip==25.2" "setuptools==80.9.0" "wheel==0.45.1"

WORKDIR /src
# README.md* : setup.cfg reads it for long_description when present.
COPY pyproject.toml setup.cfg requirements.lock README.md* ./
COPY src ./src

# Every dependency becomes a wheel in /wheels, at the versions requirements.lock pins (the
# same ones CI tests). All have manylinux wheels for cp311, so no compiler is needed; if one
# ever lacks a wheel, the build fails here, not at run time. The venv is then installed from
# those wheels only, byte-code compiled now because the runtime root filesystem is read-only.
RUN pip wheel --no-cache-dir --only-binary=:all: --constraint requirements.lock --wheel-dir /wheels . \
    && pip install --no-cache-dir --no-index --find-links /wheels --compile /wheels/exporter-*.whl \
    && pip uninstall --yes pip setuptools wheel \
    && python -c "import exporter.cli"

###############################################################################
# runtime: the slim base plus the venv, nothing else (no compilers, no caches, no pip)
###############################################################################
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.0.0+unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="exporter" \
      org.opencontainers.image.description="CSV export of a user's memberships, delivered by email (API + arq worker)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Proprietary"

# A fixed numeric UID/GID: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin exporter

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    EXPORTER_API__HOST=0.0.0.0 \
    EXPORTER_API__PORT=8080 \
    EXPORTER_LOG_JSON=true

WORKDIR /tmp
USER 10001:10001
EXPOSE 8080

# The slim image has no curl: ask /healthz with the standard library. Meaningful for the API
# only; docker-compose overrides it for the worker with `exporter worker --check`, and
# Kubernetes ignores HEALTHCHECK in favour of the chart's probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EXPORTER_API__PORT', '8080'), timeout=4)"]

ENTRYPOINT ["exporter"]
CMD ["api"]
