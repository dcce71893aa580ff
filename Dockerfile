# The worker's container image: `docker build -t cameleer-merger .` (or podman/buildah).
#
# Two stages: the first builds a virtualenv with the package and its runtime
# dependencies only (no dev extras: no test tools, no downstream stores); the second
# is the same slim Python with that virtualenv, CA certificates and a non-root user.
# PYTHON_IMAGE may name any Debian-based image with python3.11 and its venv module
# (the official python:3.11-slim-bookworm by default).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# For a build behind a private index or a TLS-intercepting proxy (pip's own variables;
# a CA file given as PIP_CERT is mounted into the build, e.g. podman build --volume).
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3.11 -m venv /opt/cameleer-merger
WORKDIR /src
# Only what the installed package holds: the worker (app) and the simulator that
# `cameleer-merger simulate` runs. pyproject.toml's package list takes what is there.
COPY pyproject.toml README.md ./
COPY app ./app
COPY simulator ./simulator
# Compiled here: the Kubernetes manifest runs the image with a read-only root file system.
RUN /opt/cameleer-merger/bin/pip install . \
    && /opt/cameleer-merger/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
# CA certificates for TLS to brokers with public certificates (KAFKA_SSL_CAFILE unset).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cameleer \
    && useradd --system --uid 10001 --gid cameleer --home-dir /var/lib/cameleer-merger \
       --no-create-home --shell /usr/sbin/nologin cameleer \
    && install -d -o cameleer -g cameleer -m 0750 /var/lib/cameleer-merger
COPY --from=build /opt/cameleer-merger /opt/cameleer-merger
ENV PATH=/opt/cameleer-merger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CAMELEER_STATE_DIR=/var/lib/cameleer-merger \
    CAMELEER_WEB_HOST=0.0.0.0 \
    CAMELEER_WEB_PORT=6066
# The worker id and RocksDB live here: keep it across restarts (a named volume, or
# a persistent volume in Kubernetes), or the worker recovers its state from the
# changelog topic and takes a new transactional id.
VOLUME ["/var/lib/cameleer-merger"]
WORKDIR /var/lib/cameleer-merger
USER 10001:10001
EXPOSE 6066
# Exec form: cameleer-merger is PID 1 and gets SIGTERM itself; it finishes the batch
# in hand, commits, and exits (give it the seconds of a commit: Kubernetes'
# terminationGracePeriodSeconds, `docker stop -t`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["cameleer-merger"]
