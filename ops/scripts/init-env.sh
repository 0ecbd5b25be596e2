#!/usr/bin/env bash
# Writes the .env of the compose stack from .env.example, giving every empty variable (the
# secrets) a fresh random value. Never overwrites an existing file.
#   usage: ops/scripts/init-env.sh [TARGET]      (default: .env at the repository root)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${1:-$root/.env}"
if [[ -e "$target" ]]; then
  echo "$target exists: left unchanged" >&2
  exit 0
fi
python3 - "$root/.env.example" "$target" <<'PY'
import base64
import os
import re
import secrets
import sys

source, target = sys.argv[1], sys.argv[2]
lines = []
with open(source, encoding="utf-8") as fh:
    for line in fh:
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=", line.rstrip("\n"))
        if match:
            name = match.group(1)
            if name.endswith("FERNET_KEY"):
                value = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
            else:
                value = secrets.token_hex(24)
            line = f"{name}={value}\n"
        lines.append(line)
fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as fh:
    fh.writelines(lines)
PY
echo "wrote $target (secrets generated; keep it out of version control)"
