"""The command line's output in a log: written to a pipe, rich tables are as wide as their content, so a long
path or URL appears whole (not wrapped or cut at 80 columns); `COLUMNS` still sets a width when given."""

from __future__ import annotations

import subprocess

from tests.conftest import ROOT, STREAMFLOW, make_settings, settings_env

LONG = "a-folder-name-long-enough-to-pass-eighty-columns-" * 3


def _status(tmp_path, **extra: str) -> tuple[str, str]:
    home = tmp_path / LONG / "home"
    settings = make_settings(home)
    env = settings_env(settings)
    env.pop("COLUMNS", None)  # as in a log file written by `make demo > demo.log`
    env.update(extra)
    proc = subprocess.run(  # stdout is a pipe, as when the demo's output goes to a log file
        [STREAMFLOW, "stack", "status"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode in (0, 1), proc.stderr  # not running: status says so
    return proc.stdout, str(settings.home)


def test_a_table_written_to_a_pipe_shows_a_long_path_whole(tmp_path):
    out, home = _status(tmp_path)
    assert len(home) > 160
    assert f"{home}/pgdata" in out, out
    assert f"{home}/logs/postgres.log" in out, out


def test_columns_still_sets_the_width_of_piped_output(tmp_path):
    out, home = _status(tmp_path, COLUMNS="60")
    assert f"{home}/pgdata" not in out
    table = [line for line in out.splitlines() if not line.startswith("url:")]
    assert table and max(len(line) for line in table) <= 60, out
