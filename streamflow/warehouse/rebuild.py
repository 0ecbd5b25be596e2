"""A full refresh is built beside the live warehouse, then swapped in.

Rebuilding snapshots and marts from the raw history (after ``ingest --rebuild``, a reloaded month, or
``build --full-refresh``) must never leave analysts, Feast or the API reading half-rebuilt tables. dbt builds
the whole history into shadow schemas (``staging__rebuild``, ``snapshots__rebuild``, ``marts__rebuild``: the
``schema_suffix`` var of ``generate_schema_name``), with a manifest and target folder of their own so the live
``target/manifest.json`` stays the live one. When every month is built, one transaction renames the live
schemas aside, the shadow ones into their place, and rewrites the build log and the month log; the old schemas
are dropped afterwards. A rebuild that fails or is killed leaves the live schemas exactly as they were (the
next build drops the leftover shadow schemas and starts over).

Grants follow the schemas: privileges belong to a schema and its tables, not to its name, so the swap hands
the live schemas' privileges to the ones swapped in (see :func:`_copy_privileges`).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from streamflow.core import runlog
from streamflow.core.names import MART_SCHEMA, SNAPSHOT_SCHEMA, STAGING_SCHEMA
from streamflow.core.settings import Settings
from streamflow.warehouse.runner import _exception_text, _parse_error, dbt_vars, ensure_packages, invoke

if TYPE_CHECKING:
    from dbt.contracts.graph.manifest import Manifest

SUFFIX = "__rebuild"
"""Appended to every schema dbt builds into while a full refresh runs (the ``schema_suffix`` var)."""
REPLACED = "__replaced"
"""The live schemas' names while they are swapped out, until they are dropped."""
SCHEMAS = (STAGING_SCHEMA, SNAPSHOT_SCHEMA, MART_SCHEMA)
"""The schemas dbt builds, swapped together."""


def shadow(schema: str) -> str:
    return f"{schema}{SUFFIX}"


def shadow_vars(settings: Settings, month: date | None = None) -> dict:
    """The dbt vars of a shadow run: the month's vars and the schema suffix."""
    return {**dbt_vars(settings, month), "schema_suffix": SUFFIX}


def target_path(settings: Settings) -> Path:
    """The shadow runs' dbt target folder (their manifest, run results and partial-parse state)."""
    return settings.dbt_target_dir / "rebuild"


def parse_shadow(settings: Settings) -> Manifest:
    """The manifest of the shadow build: every node's schema carries the suffix."""
    ensure_packages(settings)
    args = ["parse", "--quiet", "--log-level", "none", "--target-path", str(target_path(settings))]
    res = invoke(settings, [*args, "--vars", json.dumps(shadow_vars(settings))])
    if not res.success or res.result is None:
        raise _parse_error("the dbt project does not parse", settings, _exception_text(res))
    return res.result


def drop_leftovers(conn) -> list[str]:
    """Before a rebuild starts (under the pipeline lock): drop the shadow schemas a failed or killed rebuild left
    behind, and the schemas an earlier swap replaced. A replaced schema that views outside still depend on is
    renamed out of the way instead (``<schema>__replaced_<timestamp>``); returns a warning for each."""
    warnings = []
    for schema in SCHEMAS:
        if _exists(conn, shadow(schema)):
            conn.execute(f'drop schema "{shadow(schema)}" cascade')
        old = f"{schema}{REPLACED}"
        if not _exists(conn, old):
            continue
        outside = _dependents_outside(conn, old)
        if not outside:
            conn.execute(f'drop schema "{old}" cascade')
            continue
        stamp = conn.execute("select to_char(clock_timestamp(), 'YYYYMMDDHH24MISS')").fetchone()[0]
        conn.execute(f'alter schema "{old}" rename to "{old}_{stamp}"')
        warnings.append(f"{', '.join(outside[:5])} still depend on the schema {old}: kept it as {old}_{stamp}")
    return warnings


def swap(conn, log: str, built: dict[date, str]) -> list[str]:
    """Swap the shadow schemas in and record ``built`` ({as_of: drop version}) as what the warehouse holds, in
    one transaction; then drop the schemas swapped out. Returns warnings (objects outside these schemas that
    depended on the old tables keep them alive under ``<schema>__replaced``)."""
    with conn.transaction():
        for schema in SCHEMAS:
            live = _exists(conn, schema)
            if live:
                conn.execute(f'alter schema "{schema}" rename to "{schema}{REPLACED}"')
            conn.execute(f'alter schema "{shadow(schema)}" rename to "{schema}"')
            if live:
                _copy_privileges(conn, f"{schema}{REPLACED}", schema)
        conn.execute(f"delete from {log}")
        for as_of, version in sorted(built.items()):
            conn.execute(f"insert into {log} (as_of, drop_version) values (%s, %s)", (as_of, version))
        runlog.forget_months(conn, states=("built",))
        for as_of, version in sorted(built.items()):
            runlog.record_month(conn, as_of, "built", {"drop_version": version, "full_refresh": True})
    return _drop_replaced(conn)


def _drop_replaced(conn) -> list[str]:
    warnings = []
    for schema in SCHEMAS:
        old = f"{schema}{REPLACED}"
        if not _exists(conn, old):
            continue
        outside = _dependents_outside(conn, old)
        if outside:
            warnings.append(
                f"kept the previous {schema} tables as schema {old}: {', '.join(outside[:5])} still depend on them "
                f"(recreate those against {schema}, then `drop schema {old} cascade`)"
            )
            continue
        conn.execute(f'drop schema "{old}" cascade')
    return warnings


def _exists(conn, schema: str) -> bool:
    return conn.execute("select 1 from pg_namespace where nspname = %s", (schema,)).fetchone() is not None


def _dependents_outside(conn, schema: str) -> list[str]:
    """Views (or other relations) outside ``schema`` and the schemas being swapped that depend on its relations."""
    rows = conn.execute(
        """select distinct dn.nspname || '.' || dc.relname
           from pg_depend d
           join pg_rewrite r on r.oid = d.objid
           join pg_class dc on dc.oid = r.ev_class
           join pg_namespace dn on dn.oid = dc.relnamespace
           join pg_class c on c.oid = d.refobjid
           join pg_namespace n on n.oid = c.relnamespace
           where n.nspname = %s and dc.oid <> c.oid and not (dn.nspname = any(%s))
           order by 1""",
        (schema, [*SCHEMAS, *(f"{s}{REPLACED}" for s in SCHEMAS)]),
    ).fetchall()
    return [r[0] for r in rows]


def _copy_privileges(conn, source: str, target: str) -> None:
    """Give schema ``target`` and its tables the privileges other roles held on schema ``source`` and its
    tables, and the default privileges set for ``source`` (so a role that read the live marts reads the
    rebuilt ones)."""
    for grantee, privilege in conn.execute(
        """select a.grantee::regrole::text, a.privilege_type
           from pg_namespace n, aclexplode(n.nspacl) a
           where n.nspname = %s and a.grantee <> n.nspowner and a.grantee <> 0""",
        (source,),
    ).fetchall():
        conn.execute(f'grant {privilege} on schema "{target}" to {grantee}')
    for grantee, privilege in conn.execute(
        """select distinct a.grantee::regrole::text, a.privilege_type
           from pg_class c join pg_namespace n on n.oid = c.relnamespace, aclexplode(c.relacl) a
           where n.nspname = %s and a.grantee <> c.relowner and a.grantee <> 0""",
        (source,),
    ).fetchall():
        conn.execute(f'grant {privilege} on all tables in schema "{target}" to {grantee}')
    for owner, kind, grantee, privilege in conn.execute(
        """select d.defaclrole::regrole::text, d.defaclobjtype, a.grantee::regrole::text, a.privilege_type
           from pg_default_acl d join pg_namespace n on n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
           where n.nspname = %s and a.grantee <> 0""",
        (source,),
    ).fetchall():
        objects = {"r": "tables", "S": "sequences", "f": "functions", "T": "types"}.get(kind)
        if objects:
            conn.execute(
                f'alter default privileges for role {owner} in schema "{target}" grant {privilege} on {objects} '
                f"to {grantee}"
            )
