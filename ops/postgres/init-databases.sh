#!/usr/bin/env bash
# Creates StreamFlow's databases and roles on the compose PostgreSQL. The official postgres image
# runs this once, on an empty data directory, as the superuser (POSTGRES_USER).
#
#   database   owner role   used by
#   warehouse  streamflow   dbt, ingestion, Feast offline and online (postgres) tables, the API
#   mlflow     mlflow       the MLflow tracking server
#   airflow    airflow      Airflow's metadata database
#   feast      feast        Feast's SQL registry
#
# Least privilege: each role logs in with its own password (from .env), owns only its database,
# cannot create roles or databases, and no other role (PUBLIC) may connect to that database.
set -euo pipefail

: "${WAREHOUSE_DB_PASSWORD:?set WAREHOUSE_DB_PASSWORD}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD}"
: "${FEAST_DB_PASSWORD:?set FEAST_DB_PASSWORD}"

# The password is read by psql from the environment (\getenv), so it never appears on a command line.
create() {  # create ROLE DATABASE PASSWORD_VARIABLE
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v role="$1" -v db="$2" -v password_variable="$3" <<'SQL'
\getenv password :password_variable
create role :"role" with login nosuperuser nocreatedb nocreaterole password :'password';
create database :"db" with owner :"role" encoding 'UTF8' template template0;
revoke all on database :"db" from public;
grant connect, temporary on database :"db" to :"role";
SQL
}

create streamflow warehouse WAREHOUSE_DB_PASSWORD
create mlflow mlflow MLFLOW_DB_PASSWORD
create airflow airflow AIRFLOW_DB_PASSWORD
create feast feast FEAST_DB_PASSWORD
