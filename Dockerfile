# syntax=docker/dockerfile:1
# One image for every StreamFlow container: api, airflow-*, mlflow and job.
# The environment is installed by `make venv`, the command `make test` runs, from the same uv.lock.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: create /app/.venv from the lock file ------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# make from the base image's Debian release (the build stage only; not in the final image)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
RUN --mount=type=cache,target=/root/.cache/uv make venv
# The DAG processor builds the monthly DAG's dbt tasks from the parsed manifest: parse it into the image.
# `dbt parse` opens no connection; the URL only fills the profile.
RUN STREAMFLOW_DATABASE_URL=postgresql://parse@localhost:5432/parse .venv/bin/streamflow dbt parse

# ---- runtime: the venv and the sources, run by an unprivileged user -------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=10001
RUN groupadd --system --gid ${APP_UID} streamflow \
    && useradd --system --uid ${APP_UID} --gid streamflow --home-dir /home/streamflow --create-home \
       --shell /usr/sbin/nologin streamflow \
    && mkdir -p /data /mlartifacts /opt/airflow/logs \
    && chown -R streamflow:streamflow /data /mlartifacts /opt/airflow
WORKDIR /app
# The sources belong to the app user (dbt writes dbt_project/target and logs); the venv stays
# root-owned, read-only for the app. .dockerignore keeps .venv, .env and local state out of `COPY .`.
COPY --chown=streamflow:streamflow . /app
COPY --from=build /app/.venv /app/.venv
COPY --from=build --chown=streamflow:streamflow /app/dbt_project/target/manifest.json /app/dbt_project/target/manifest.json
ENV PATH=/app/.venv/bin:$PATH \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AIRFLOW_HOME=/opt/airflow \
    STREAMFLOW_PROJECT_DIR=/app \
    STREAMFLOW_HOME=/data/streamflow
USER ${APP_UID}:${APP_UID}
ENTRYPOINT ["/app/ops/docker/entrypoint.sh"]
CMD ["streamflow", "--help"]
