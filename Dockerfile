# pg-health-exporter: a small runtime image that runs as a non-root user.
#
#   scripts/build-image            # buildah or docker, with the version labels filled in
#   docker build -t pg-health-exporter .
#   docker run -p 9187:9187 -e DATA_SOURCE_NAME='postgresql://monitor:...@db:5432/postgres' \
#       pg-health-exporter
#
# Stage 1 installs the package and its dependencies (binary wheels only: psycopg[binary]
# brings its own libpq) into a virtualenv; stage 2 copies that virtualenv onto a clean slim
# image, so no pip cache, wheel or build tool ends up in the runtime layers. The collector
# catalog (queries/*.toml) is package data inside the installed package; the Grafana
# dashboards and alert rules are copied to /usr/share/pg-health-exporter/dashboards.
#
# The base is any Debian-like image with python3 (3.11+) and its venv module: the default is
# the registry's python image; the test suite builds on a Debian 12 base made with debootstrap
# (python3, python3-venv), where the registry cannot be reached.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

# A CA bundle for pip, for builders behind a TLS-inspecting proxy: mount it into the build
# (buildah bud -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro) and pass
# --build-arg PIP_CERT=/run/host-ca.crt. Unset, pip uses its own bundle.
ARG PIP_CERT

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python3 -m venv /opt/pg-health-exporter

WORKDIR /src
# Only what the package is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
COPY queries/ queries/
COPY docs/ docs/
# --only-binary: no compiler in this image, and none needed (the project itself is built
# from source by setuptools, pure Python). pip compiles the bytecode, so the runtime user
# never needs to write any. check-config proves the catalog is inside the installed package.
# pip and setuptools leave afterwards: 25 MB the runtime never uses.
RUN /opt/pg-health-exporter/bin/pip install --only-binary=:all: . \
    && /opt/pg-health-exporter/bin/pg-health-exporter check-config \
    && /opt/pg-health-exporter/bin/pip uninstall --yes pip setuptools


FROM ${PYTHON_IMAGE}

# Filled in by scripts/build-image: the project's version (pyproject.toml), the commit and
# where its source is (the git remote).
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown

LABEL org.opencontainers.image.title="pg-health-exporter" \
      org.opencontainers.image.description="Prometheus exporter for PostgreSQL health" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"

# A fixed numeric UID/GID, so that runAsNonRoot policies can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid exporter --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin exporter

COPY --from=build /opt/pg-health-exporter /opt/pg-health-exporter
COPY dashboards/ /usr/share/pg-health-exporter/dashboards/
COPY config.example.toml /usr/share/pg-health-exporter/config.example.toml

# No PG_EXPORTER_LISTEN_ADDRESS here: the default is :9187 already, and an image default would
# win over postgres_exporter's PG_EXPORTER_WEB_LISTEN_ADDRESS in a deployment switching over.
ENV PATH=/opt/pg-health-exporter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001
EXPOSE 9187

# /healthz answers without credentials (basic auth exempts it); with TLS configured in the web
# config file the plain-HTTP attempt fails and the check retries over HTTPS (not verified: it
# asks the process itself). It asks the first address of PG_EXPORTER_LISTEN_ADDRESS, or of
# postgres_exporter's PG_EXPORTER_WEB_LISTEN_ADDRESS (127.0.0.1 when its host is empty or any).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as r\naddress = os.environ.get('PG_EXPORTER_LISTEN_ADDRESS') or os.environ.get('PG_EXPORTER_WEB_LISTEN_ADDRESS') or ':9187'\nhost, _, port = address.split(',')[0].strip().rpartition(':')\nhost = host.strip('[]')\nhost = '127.0.0.1' if host in ('', '0.0.0.0', '::') else host\nat = f'[{host}]:{port}' if ':' in host else f'{host}:{port}'\ntry:\n    r.urlopen(f'http://{at}/healthz', timeout=4)\nexcept Exception:\n    r.urlopen(f'https://{at}/healthz', timeout=4, context=ssl._create_unverified_context())"]

ENTRYPOINT ["pg-health-exporter"]
