#!/usr/bin/env bash
# Entry point of the StreamFlow image. When the container is given an Airflow UI password
# (AIRFLOW_ADMIN_PASSWORD, from .env) and a SimpleAuthManager passwords file, it writes that file
# (mode 0600) so the UI login is the one in .env rather than a generated one. Then it runs the command.
set -euo pipefail

if [[ -n "${AIRFLOW_ADMIN_PASSWORD:-}" && -n "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}" ]]; then
  python - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
user = os.environ.get("AIRFLOW_ADMIN_USER") or "admin"
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as fh:
    json.dump({user: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, fh)
PY
fi

exec "$@"
