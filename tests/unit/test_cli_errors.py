"""The one place the CLI renders errors a user can act on, and the progress bar it draws."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from streamflow.cli.console import RichProgress, StreamflowGroup
from streamflow.core.errors import StreamflowError


class DropRefused(StreamflowError):
    hint = "streamflow ingest --rebuild month_000 month_001"


def toy_app() -> typer.Typer:
    app = typer.Typer(cls=StreamflowGroup, add_completion=False)
    group = typer.Typer()
    app.add_typer(group, name="nested")

    @app.command("refuse")
    def refuse() -> None:
        raise DropRefused("month_001/users.csv, column signup_date, line 3: must be a date", details=["rule: date"])

    @group.command("fail")
    def fail_nested() -> None:
        raise StreamflowError("the warehouse database is not reachable")

    @app.command("crash")
    def crash() -> None:
        raise KeyError("a bug")

    return app


def test_an_error_a_user_can_act_on_is_printed_with_its_details_and_next_command_and_no_traceback():
    result = CliRunner().invoke(toy_app(), ["refuse"])
    assert result.exit_code == 1
    out = result.output
    assert "error: month_001/users.csv, column signup_date, line 3: must be a date" in out
    assert "rule: date" in out and "next: streamflow ingest --rebuild month_000 month_001" in out
    assert "Traceback" not in out and not isinstance(result.exception, StreamflowError)


def test_errors_of_nested_command_groups_are_rendered_the_same_way():
    result = CliRunner().invoke(toy_app(), ["nested", "fail"])
    assert result.exit_code == 1 and "error: the warehouse database is not reachable" in result.output


def test_a_bug_is_not_disguised_as_a_user_error():
    result = CliRunner().invoke(toy_app(), ["crash"])
    assert isinstance(result.exception, KeyError) and "error:" not in result.output


def test_the_bar_counts_what_library_code_reports_and_names_the_current_step():
    bar = RichProgress()
    with bar:
        bar.start("loading", total=3)
        bar.advance(1, "month_000/users.csv")
        (task,) = bar._bar.tasks
        assert (task.completed, task.total, task.description) == (1, 3, "loading: month_000/users.csv")
        bar.advance(2)
        assert task.completed == 3 and task.description == "loading"
    assert bar._task is None  # finished: the live display is gone
