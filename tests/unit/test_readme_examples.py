"""The example user ids of the README and of the API's /docs answer for a reader who copies them after
`make demo`: each one is an active subscriber in the demo's last month (generated here exactly as the demo
generates it), so /predict, /features and `features get` find current online features for it."""

from __future__ import annotations

import csv
import inspect
import re

import pytest

from serving import schemas
from streamflow.cli.demo import demo_cmd
from streamflow.drops.generator import params
from streamflow.drops.generator.run import generate
from tests.conftest import ROOT

USER_ID = re.compile(r"\b\d{4}-[A-Z]{5}\b")


def _demo_default(name: str):
    return inspect.signature(demo_cmd).parameters[name].default.default  # a typer.Option


@pytest.fixture(scope="module")
def demo_last_month(tmp_path_factory) -> set[str]:
    months, users, seed = (_demo_default(n) for n in ("months", "users", "seed"))
    out = tmp_path_factory.mktemp("demo_drops")
    generate(out, months=months, users=users, seed=seed)
    with open(out / params.drop_name(months - 1) / "subscriptions.csv", newline="") as f:
        return {row["user_id"] for row in csv.DictReader(f)}


def test_every_user_id_in_the_readme_is_active_in_the_demos_last_month(demo_last_month):
    ids = set(USER_ID.findall((ROOT / "README.md").read_text()))
    assert ids, "the README shows no example user"
    churned = sorted(ids - demo_last_month)
    assert not churned, f"README example users not active in the demo's last month: {churned}"


def test_the_request_examples_of_the_api_docs_are_active_in_the_demos_last_month(demo_last_month):
    examples = [
        *schemas.PredictRequest.model_config["json_schema_extra"]["examples"],
        *schemas.BatchPredictRequest.model_config["json_schema_extra"]["examples"],
    ]
    ids = set(USER_ID.findall(repr(examples)))
    assert schemas.EXAMPLE_USER in ids and len(ids) >= 2, ids
    assert not sorted(ids - demo_last_month), f"/docs examples not active in the demo's last month: {ids}"
