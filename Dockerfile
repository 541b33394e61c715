# The Labs Analytics image: one image for every role, chosen by the command.
#   docker build -t labs-analytics .
#   docker run --rm -e DATABASE_URL=... -e REDIS_URL=... -p 8000:8000 labs-analytics
#   docker run --rm -e DATABASE_URL=... -e REDIS_URL=... labs-analytics labs-analytics flusher
#   docker run --rm -e DATABASE_URL=...                 labs-analytics labs-analytics migrate
# docker-compose.yml wires these roles together with PostgreSQL and Redis.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a wheel of the project, installed into a self-contained venv ------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# The venv lives at the same path in both stages: its scripts' shebangs are absolute.
RUN python -m venv /opt/venv

WORKDIR /src
# Only what the wheel is made of (README.md is the package's readme metadata).
COPY pyproject.toml README.md ./
COPY src ./src
COPY alembic ./alembic
# The SDK's distribution: the service imports its wire contract module.
COPY clients/python ./clients/python

# The wheel force-includes alembic/ as labs_analytics/_alembic, so `migrate`
# works from the installed package without this checkout.
RUN python -m pip wheel --no-deps --wheel-dir /dist ./clients/python . \
    && /opt/venv/bin/pip install /dist/labs_analytics_client-*.whl /dist/labs_analytics-*.whl \
    && /opt/venv/bin/python -c "import labs_analytics.storage.migrations as m; assert (m.migrations_dir() / 'env.py').is_file(), m.migrations_dir()"

# --- runtime: the venv on a clean slim image, run as an unprivileged user ------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 labs \
    && useradd --system --uid 10001 --gid labs --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin labs

COPY --from=build /opt/venv /opt/venv

# The spool (events accepted while Redis is unreachable) needs a writable,
# persistent place: mount a volume here.
RUN mkdir -p /var/lib/labs-analytics/spool && chown -R labs:labs /var/lib/labs-analytics
ENV SPOOL_DIR=/var/lib/labs-analytics/spool
VOLUME ["/var/lib/labs-analytics/spool"]

# Settings also reads ./.env; the working directory is empty and read-only to
# the service user, so only the environment configures a container.
WORKDIR /app
USER labs:labs

EXPOSE 8000

# /healthz is liveness only (no Redis or PostgreSQL round trip); slim has no curl.
# Containers of this image that serve no HTTP (flusher, migrate) turn it off.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

CMD ["labs-analytics", "serve", "--host", "0.0.0.0", "--port", "8000"]
