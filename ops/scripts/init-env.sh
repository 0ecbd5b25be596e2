#!/usr/bin/env bash
# Writes the .env of the compose stack from .env.example, giving every empty variable (the
# secrets) a fresh random value. An existing file keeps every value it has: only the variables
# it lacks (new secrets after an upgrade, such as API_DB_PASSWORD) are appended.
#   usage: ops/scripts/init-env.sh [TARGET]      (default: .env at the repository root)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${1:-$root/.env}"
python3 - "$root/.env.example" "$target" <<'PY'
import base64
import os
import re
import secrets
import sys

source, target = sys.argv[1], sys.argv[2]
VARIABLE = re.compile(r"([A-Z][A-Z0-9_]*)=(.*)")


def value_for(name: str) -> str:
    if name.endswith("FERNET_KEY"):
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_hex(24)


existing, text = None, ""
if os.path.exists(target):
    with open(target, encoding="utf-8") as fh:
        text = fh.read()
    existing = {m.group(1) for m in map(VARIABLE.fullmatch, text.splitlines()) if m}
lines, added = [], []
with open(source, encoding="utf-8") as fh:
    for line in fh:
        match = VARIABLE.fullmatch(line.rstrip("\n"))
        if match and match.group(2) == "":
            line = f"{match.group(1)}={value_for(match.group(1))}\n"
        if existing is None:
            lines.append(line)
        elif match and match.group(1) not in existing:
            lines.append(line)
            added.append(match.group(1))
if existing is None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    print(f"wrote {target} (secrets generated; keep it out of version control)")
elif added:
    with open(target, "a", encoding="utf-8") as fh:
        fh.writelines(["\n" if text and not text.endswith("\n") else "", *lines])
    print(f"{target}: added {', '.join(added)} (existing values left unchanged)", file=sys.stderr)
else:
    print(f"{target} exists and has every variable: left unchanged", file=sys.stderr)
PY
