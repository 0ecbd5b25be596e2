"""The data contract of a monthly drop: files, columns, types and id format.

The generator writes exactly this, ingestion checks exactly this, and the raw tables are
created from it. Business rules that need SQL (ranges, accepted values, relationships)
belong to the dbt quality gate, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ID_PATTERN = r"^[0-9]{4}-[A-Z]{5}$"
ID_RE = re.compile(ID_PATTERN)

# column type -> PostgreSQL type in raw.*
PG_TYPES = {
    "id": "text",
    "text": "text",
    "int": "integer",
    "decimal": "numeric(12,2)",
    "float": "double precision",  # the aggregated layout's windowed values
    "bool": "boolean",
    "date": "date",
    "timestamp": "timestamptz",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a key of PG_TYPES
    nullable: bool = False  # empty field allowed (loaded as NULL)


@dataclass(frozen=True)
class FileSpec:
    table: str
    filename: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # unique per as_of

    @property
    def header(self) -> list[str]:
        return [c.name for c in self.columns]


def _cols(*spec: str) -> tuple[Column, ...]:
    out = []
    for item in spec:
        name, _, typ = item.partition(":")
        nullable = typ.endswith("?")
        out.append(Column(name, typ.rstrip("?"), nullable))
    return tuple(out)


FILES: dict[str, FileSpec] = {
    "users": FileSpec(
        "users",
        "users.csv",
        _cols(
            "user_id:id", "signup_date:date", "gender:text", "senior_citizen:bool", "partner:bool", "dependents:bool"
        ),
        ("user_id",),
    ),
    "subscriptions": FileSpec(
        "subscriptions",
        "subscriptions.csv",
        _cols(
            "user_id:id",
            "contract_type:text",
            "months_active:int",
            "monthly_fee:decimal",
            "paperless_billing:bool",
            "payment_method:text",
            "net_service:text",
            "plan_stream_tv:bool",
            "plan_stream_movies:bool",
            "add_on_security:bool",
            "add_on_backup:bool",
            "add_on_device_protection:bool",
            "add_on_tech_support:bool",
        ),
        ("user_id",),
    ),
    "sessions": FileSpec(
        "sessions",
        "sessions.csv",
        _cols(
            "session_id:text",
            "user_id:id",
            "started_at:timestamp",
            "device_id:text",
            "minutes:decimal",
            "skips:int",
            "rebuffer_events:int",
        ),
        ("session_id",),
    ),
    "payments": FileSpec(
        "payments",
        "payments.csv",
        _cols("payment_id:text", "user_id:id", "attempted_at:timestamp", "amount:decimal", "status:text"),
        ("payment_id",),
    ),
    "tickets": FileSpec(
        "tickets",
        "tickets.csv",
        _cols("ticket_id:text", "user_id:id", "opened_at:timestamp", "resolved_at:timestamp?", "category:text"),
        ("ticket_id",),
    ),
    "labels": FileSpec(
        "labels",
        "labels.csv",
        _cols("user_id:id", "period_start:date", "churn_label:bool"),
        ("user_id", "period_start"),
    ),
}

# Accepted values, used by the generator and mirrored in the dbt quality gate.
CONTRACT_TYPES = ("Month-to-month", "One year", "Two year")
NET_SERVICES = ("DSL", "Fiber optic", "No")
PAYMENT_METHODS = (
    "Electronic check",
    "Mailed check",
    "Bank transfer (automatic)",
    "Credit card (automatic)",
)
PAYMENT_STATUSES = ("succeeded", "failed")
TICKET_CATEGORIES = ("billing", "playback", "account", "content", "device")
GENDERS = ("Female", "Male")
