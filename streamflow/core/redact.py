"""Masking secrets in text a user or a log sees: database URLs and free text that contains them.

The one rule: a password never reaches a terminal, a log or an error message unless the user asked for
it (`--show-secrets`). Every place that prints a URL passes it through :func:`redacted`; every message
built from another program's output (PostgreSQL, dbt, Feast) passes through :func:`scrub`.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MASK = "***"

# scheme://user:password@host  (the password is everything between the first ':' after '//' and the last '@'
# of the authority; passwords with '@' or '/' are percent-encoded in a valid URL)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)(?P<password>[^@\s/]*)(?P<at>@)")
# key=value connection strings (libpq conninfo, psycopg's messages): password=... up to a space
_CONNINFO_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|[^\s']+)", re.IGNORECASE)


def redacted(url: str | None) -> str | None:
    """``url`` with its password (if any) replaced by ``***``. Something that is not quite a URL (no scheme,
    a bad port) has its password masked all the same. None stays None."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        if parts.password:
            user = parts.username or ""
            host = parts.netloc.rpartition("@")[2]
            return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
    except ValueError:
        pass
    return scrub(url, password_of(url))


def password_of(url: str | None) -> str | None:
    """The (decoded) password of a URL, or None: to mask it in messages built from that URL's errors."""
    if url and "://" not in url:
        url = "//" + url  # user:password@host/db without a scheme: what a mistyped setting looks like
    try:
        password = urlsplit(url).password if url else None
    except ValueError:
        return None
    return unquote(password) if password else None


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every password in a URL or a ``password=...`` pair masked, and every one of
    ``secrets`` (known passwords) masked wherever it appears."""
    out = _URL_PASSWORD.sub(lambda m: m["head"] + (MASK if m["password"] else "") + m["at"], text)
    out = _CONNINFO_PASSWORD.sub(lambda m: m["head"] + MASK, out)
    for secret in secrets:
        if secret:
            out = out.replace(secret, MASK)
            if quote(secret, safe="") != secret:  # as it appears inside a URL
                out = out.replace(quote(secret, safe=""), MASK)
    return out
