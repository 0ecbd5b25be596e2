"""Passwords never reach a message: URLs, conninfo pairs and known secrets are masked."""

from __future__ import annotations

import pytest

from streamflow.core import lock
from streamflow.core.redact import MASK, password_of, redacted, scrub
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://streamflow:s3cr3t@127.0.0.1:5432/streamflow",
            "postgresql://streamflow:***@127.0.0.1:5432/streamflow",
        ),
        (
            "postgresql+psycopg://u:p%40ss%2Fw@db:5432/feast?sslmode=require",
            "postgresql+psycopg://u:***@db:5432/feast?sslmode=require",
        ),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),  # no password: unchanged
        ("postgresql://u:@/db?host=/tmp/s", "postgresql://u:@/db?host=/tmp/s"),  # empty password: nothing to hide
        ("/work/dbt_project", "/work/dbt_project"),
        ("team:pw@127.0.0.1/streamflow", "team:***@127.0.0.1/streamflow"),  # no scheme
        ("postgresql://u:pw@h:notaport/db", "postgresql://u:***@h:notaport/db"),  # a bad port
        (None, None),
    ],
)
def test_redacted_masks_the_password_of_a_url_and_nothing_else(url, expected):
    assert redacted(url) == expected


def test_password_of_decodes_the_url_password():
    assert password_of("postgresql://u:p%40ss@h/db") == "p@ss"
    assert password_of("postgresql://u@h/db") is None
    assert password_of(None) is None
    assert password_of("u:typo-pw@h/db") == "typo-pw"  # a URL without its scheme


def test_scrub_masks_urls_conninfo_pairs_and_known_secrets_in_free_text():
    text = (
        "could not reach postgresql://a:topsecret@h:1/x; "
        "conninfo host=h password=alsosecret port=1; "
        'missing "=" after "a:known-one@h/db" in connection info string; '
        "encoded p%40known"
    )
    out = scrub(text, "known-one", "p@known", None)
    for secret in ("topsecret", "alsosecret", "known-one", "p%40known"):
        assert secret not in out
    assert out.count(MASK) == 4
    assert "postgresql://a:***@h:1/x" in out
    assert (
        scrub("no secrets here: http://127.0.0.1:8080/api/v2/dags")
        == "no secrets here: http://127.0.0.1:8080/api/v2/dags"
    )


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://streamflow:pw-never-shown@127.0.0.1:{free_port()}/streamflow",  # nothing listens there
        "streamflow:pw-never-shown@127.0.0.1/streamflow",  # not a URL: psycopg echoes the string it got
    ],
    ids=["a URL nothing listens on", "not a URL"],  # the same names in every pytest worker
)
def test_the_locks_not_reachable_message_never_contains_the_password(url):
    with pytest.raises(lock.DatabaseUnreachable) as info:
        lock._connect(url, connect_timeout=2)
    message = info.value.render() + (info.value.hint or "")
    assert "not reachable" in message
    assert "pw-never-shown" not in message
