"""The ML commands of the real `streamflow` CLI on user mistakes: clear messages, no traceback, no services."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import make_settings, run_cli


@pytest.fixture()
def down_settings(tmp_path):
    """Settings whose embedded PostgreSQL is not running (a free port, an empty home)."""
    return make_settings(tmp_path / "home")


def _clear_error(proc, code: int, *phrases: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    assert "Traceback" not in out
    for phrase in phrases:
        assert phrase in " ".join(out.split()), out


def test_a_month_argument_that_is_not_a_month_end_is_refused_with_a_hint(down_settings):
    proc = run_cli(down_settings, "train", "--as-of", "2024-02-15", check=False)
    _clear_error(proc, 2, "did you mean 2024-02-29")


@pytest.mark.parametrize(
    "args",
    [
        ("train", "--as-of", "2024-03-31"),
        ("promote",),
        ("model", "show", "--json"),
        ("score", "--as-of", "2024-03"),
    ],
)
def test_ml_commands_say_how_to_start_the_stack_when_it_is_down(down_settings, args):
    proc = run_cli(down_settings, *args, check=False)
    _clear_error(proc, 1, "streamflow stack up")


def test_evaluate_names_a_missing_oracle_folder(down_settings, tmp_path):
    proc = run_cli(
        down_settings, "evaluate", "--as-of", "2024-04-30", "--oracle", str(tmp_path / "nowhere"), check=False
    )
    _clear_error(proc, 1, "does not exist", "--oracle")


def test_the_cli_starts_without_importing_the_ml_libraries():
    code = (
        "import sys, streamflow.cli.main; heavy = [m for m in ('mlflow', 'sklearn', 'evidently', 'ml.train', 'feast')"
        " if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
