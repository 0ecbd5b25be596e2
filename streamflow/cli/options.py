"""Typer callbacks shared by several commands."""

from __future__ import annotations

from datetime import date

import typer

from streamflow.core.months import parse_month


def month_option(value: str | None) -> date | None:
    """Typer callback: an as_of (YYYY-MM-DD, a month's last day; YYYY-MM also accepted)."""
    if value is None:
        return None
    try:
        return parse_month(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
