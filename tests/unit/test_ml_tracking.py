"""Where MLflow lives for a configuration, how its URI is shown, and the git commit in the lineage."""

from __future__ import annotations

from ml.tracking import artifact_root, display_uri, git_commit, tracking_uri, ui_server
from tests.conftest import make_settings

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_embedded_stack_tracks_in_the_mlflow_database_and_keeps_artifacts_under_home(tmp_path):
    s = make_settings(tmp_path / "home", mlflow_db="mlflow_x")
    uri = tracking_uri(s)
    assert uri.startswith("postgresql+psycopg2://") and uri.endswith(f":{s.pg_port}/mlflow_x")
    assert artifact_root(s) == (tmp_path / "home" / "mlartifacts").resolve().as_uri()


def test_a_configured_tracking_server_is_used_as_is_and_nothing_is_served(tmp_path):
    s = make_settings(tmp_path / "home", mlflow_tracking_uri="http://mlflow:5000")
    assert tracking_uri(s) == "http://mlflow:5000"
    assert artifact_root(s) is None  # the server decides where artifacts go
    assert ui_server(s, 5000) == (None, {}, "http://mlflow:5000")


def test_printed_uris_never_show_the_password():
    shown = display_uri("postgresql+psycopg2://streamflow:s3cret@127.0.0.1:5432/mlflow")
    assert "s3cret" not in shown and shown.endswith("@127.0.0.1:5432/mlflow")
    assert display_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_git_commit_follows_the_branch_ref(tmp_path):
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(COMMIT + "\n")
    assert git_commit(tmp_path) == COMMIT


def test_git_commit_reads_packed_refs_and_detached_heads(tmp_path):
    git = tmp_path / ".git"
    git.mkdir()
    (git / "HEAD").write_text("ref: refs/heads/release\n")
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{COMMIT} refs/heads/release\n")
    assert git_commit(tmp_path) == COMMIT
    (git / "HEAD").write_text(COMMIT[::-1] + "\n")
    assert git_commit(tmp_path) == COMMIT[::-1]


def test_git_commit_is_unknown_outside_a_checkout(tmp_path):
    assert git_commit(tmp_path) == "unknown"
