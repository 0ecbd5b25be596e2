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
# Two more login roles read what they need and own nothing (warehouse-grants.sql, registry-grants.sql,
# the same SQL `streamflow stack up` runs on the embedded server):
#   streamflow_api  the API: reads ops and the online store, writes the push tables, reads the registry
#   analyst         reads marts and snapshots
set -euo pipefail

: "${WAREHOUSE_DB_PASSWORD:?set WAREHOUSE_DB_PASSWORD}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD}"
: "${FEAST_DB_PASSWORD:?set FEAST_DB_PASSWORD}"
: "${API_DB_PASSWORD:?set API_DB_PASSWORD}"
: "${ANALYST_DB_PASSWORD:?set ANALYST_DB_PASSWORD}"
sql_dir="${GRANTS_SQL_DIR:-$(dirname "${BASH_SOURCE[0]}")}"
psql_as_superuser=(psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}")

# The password is read by psql from the environment (\getenv), so it never appears on a command line.
create() {  # create ROLE DATABASE PASSWORD_VARIABLE
  "${psql_as_superuser[@]}" --dbname "${POSTGRES_DB:-postgres}" \
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

# The API's and the analysts' roles and their grants. These lines are idempotent: on a server initialised
# before the roles existed, run them by hand (ops/README.md, "Database roles").
"${psql_as_superuser[@]}" --dbname warehouse --file "$sql_dir/warehouse-grants.sql" >/dev/null
"${psql_as_superuser[@]}" --dbname feast --file "$sql_dir/registry-grants.sql" >/dev/null
password() {  # password ROLE PASSWORD_VARIABLE
  "${psql_as_superuser[@]}" --dbname "${POSTGRES_DB:-postgres}" -v role="$1" -v password_variable="$2" <<'SQL'
\getenv password :password_variable
alter role :"role" with password :'password';
SQL
}
password streamflow_api API_DB_PASSWORD
password analyst ANALYST_DB_PASSWORD
