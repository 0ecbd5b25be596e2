"""Reading the compose stack as Docker Compose does: YAML with merge keys, then `${VAR}`
interpolation from an env file. Shared by the compose and observability tests."""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROJECT_IMAGE_PREFIX = "streamflow:"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ${NAME+alt}, $NAME
_VAR = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(KeyError):
    """A `${VAR:?...}` variable is unset or empty: compose refuses to start."""


@cache
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services(doc: dict | None = None) -> dict[str, dict]:
    return (doc or raw_compose())["services"]


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=VALUE lines of a .env file (comments and blank lines ignored), as compose reads them."""
    values = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"not a NAME=VALUE line in {path}: {line!r}"
        values[name.strip()] = value.strip()
    return values


def variables_in(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every variable reference in a string (`$$` is a literal `$`)."""
    out = []
    for m in _VAR.finditer(text.replace("$$", "")):
        if m.group("bare"):
            out.append((m.group("bare"), None, ""))
        else:
            out.append((m.group("braced"), m.group("op"), m.group("arg")))
    return out


def interpolate_string(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op in (":-", "-"):
            unset = value is None or (op == ":-" and value == "")
            return arg if unset else value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            set_ = value is not None and (op == "+" or value != "")
            return arg if set_ else ""
        return value or ""

    parts = text.split("$$")
    return "$".join(_VAR.sub(sub, part) for part in parts)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_string(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def all_strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from all_strings(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from all_strings(value)


def command_argv(command: Any) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(command)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def project_services(doc: dict | None = None) -> dict[str, dict]:
    """Services that run the project's own image."""
    return {name: svc for name, svc in services(doc).items() if svc.get("image", "").startswith(PROJECT_IMAGE_PREFIX)}


def option_value(argv: list[str], option: str) -> str:
    """Value of `--option VALUE` or `--option=VALUE` in an argv."""
    for i, arg in enumerate(argv):
        if arg == option:
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    raise KeyError(option)
